//! The peer set: who the other replicas are, by the tag their ids carry.
//! Rebuilt from `peers` or `peers_dns` every [`DISCOVERY_INTERVAL`]; a
//! request is only ever forwarded to an address found here.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::id::Tag;
use crate::config::PeerSource;

/// How often the peer set is resolved again: a replica that joins is found,
/// and one that leaves is forgotten, within this long.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(3);

/// The most peers kept: a DNS answer larger than this is cut (a cluster of
/// sidecars this large wants a broker, not a mesh).
const MAX_PEERS: usize = 1024;

pub struct Peers {
    me: SocketAddr,
    /// Replaced whole on each discovery; the lock is held for a clone of
    /// the `Arc` only, never across an await.
    set: RwLock<Arc<HashMap<Tag, SocketAddr>>>,
}

impl Peers {
    pub fn new(me: SocketAddr) -> Peers {
        Peers {
            me,
            set: RwLock::new(Arc::default()),
        }
    }

    /// The peer with this tag, if it is in the set now.
    pub fn get(&self, tag: Tag) -> Option<SocketAddr> {
        self.snapshot().get(&tag).copied()
    }

    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    fn snapshot(&self) -> Arc<HashMap<Tag, SocketAddr>> {
        Arc::clone(&self.set.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Makes `addrs` (this replica left out) the peer set; says whether it
    /// changed.
    pub fn replace(&self, addrs: impl IntoIterator<Item = SocketAddr>) -> bool {
        let mut set = HashMap::new();
        for addr in addrs.into_iter().filter(|a| *a != self.me).take(MAX_PEERS) {
            if let Some(other) = set.insert(Tag::of(addr), addr)
                && other != addr
            {
                tracing::warn!(%addr, %other, "two peers share an owner tag; one of them cannot be reached");
            }
        }
        let mut current = self.set.write().unwrap_or_else(|p| p.into_inner());
        if **current == set {
            return false;
        }
        *current = Arc::new(set);
        true
    }
}

/// Every address the source names now. A name that does not resolve is
/// skipped (logged); the caller keeps the old set when nothing resolves.
pub async fn resolve(source: &PeerSource) -> io::Result<Vec<SocketAddr>> {
    let names: Vec<&str> = match source {
        PeerSource::Static(list) => list.iter().map(String::as_str).collect(),
        PeerSource::Dns(name) => vec![name.as_str()],
    };
    let server = std::env::var(super::dns::SERVER_ENV)
        .ok()
        .and_then(|s| s.parse::<SocketAddr>().ok());
    let mut out = Vec::new();
    let mut last_error = None;
    for name in names {
        let found = match (server, name.rsplit_once(':')) {
            (Some(server), Some((host, port))) if host.parse::<std::net::IpAddr>().is_err() => {
                let port = port.parse().unwrap_or(0);
                super::dns::lookup(server, host, port).await
            }
            _ => tokio::net::lookup_host(name).await.map(Iterator::collect),
        };
        match found {
            Ok(addrs) => out.extend::<Vec<SocketAddr>>(addrs),
            Err(e) => {
                tracing::debug!(peer = name, error = %e, "peer did not resolve");
                last_error = Some(e);
            }
        }
    }
    match (out.is_empty(), last_error, source) {
        // A failed lookup of the one name is not "no peers": keep the set.
        (true, Some(e), PeerSource::Dns(_)) => Err(e),
        _ => {
            out.sort();
            out.dedup();
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_leaves_this_replica_out_and_reports_changes() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let peers = Peers::new(a("10.0.0.1:8081"));
        assert!(peers.replace([a("10.0.0.1:8081"), a("10.0.0.2:8081")]));
        assert_eq!(peers.len(), 1);
        assert_eq!(
            peers.get(Tag::of(a("10.0.0.2:8081"))),
            Some(a("10.0.0.2:8081"))
        );
        assert_eq!(peers.get(Tag::of(a("10.0.0.1:8081"))), None);
        assert!(!peers.replace([a("10.0.0.2:8081")]));
        assert!(peers.replace([a("10.0.0.3:8081")]));
        assert_eq!(peers.get(Tag::of(a("10.0.0.2:8081"))), None);
    }
}
