//! Replicas without sticky sessions (`[cluster]`): any replica serves any
//! request, forwarding those of sessions another replica owns to it.
//!
//! - `id`: session ids that name their owner, MAC'd with the secret.
//! - `auth`: the header by which peers know each other.
//! - `peers`: the discovered peer set, by owner tag.
//! - `dns`: a minimal DNS client, for a nameserver other than the system's.
//! - `forward`: the pooled h2c client and the relay of readers' bodies.
//!
//! The front (`http`) asks [`Cluster::owner`] for each session request and
//! forwards with [`Cluster::forward`]; the internal listener (`net`) takes
//! peers' requests after [`Cluster::authenticate`]. See docs/cluster.md.

mod auth;
mod dns;
mod forward;
mod id;
mod peers;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, Method, Request, Response};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::auth::AuthKey;
use self::forward::Forwarder;
pub use self::forward::Kind;
use self::id::{IdKey, Tag};
use self::peers::{DISCOVERY_INTERVAL, Peers};
use crate::body::{Body, RequestBody, status_only};
use crate::config::{ClusterConfig, Config};
use crate::error::BridgeError;
use crate::metrics::Metrics;
use crate::routing::ChannelPart;

/// Who holds a session, by its id.
#[derive(Debug, PartialEq, Eq)]
pub enum Owner {
    /// This replica: serve it here.
    Local,
    /// A peer in the discovered set.
    Peer(SocketAddr),
    /// A genuine id whose owner is no longer among the peers.
    Gone(String),
    /// Forged, altered, foreign or malformed: the unknown-id answer.
    Invalid,
}

pub struct Cluster {
    config: ClusterConfig,
    me: Tag,
    ids: IdKey,
    auth: AuthKey,
    peers: Peers,
    forwarder: Forwarder,
    /// For the relay's bound on a partial event.
    max_upstream_frame: usize,
    /// One token per peer request being answered (its body included): the
    /// drain waits for them.
    inflight: TaskTracker,
}

impl Cluster {
    pub fn new(config: &Config) -> Option<Arc<Cluster>> {
        let c = config.cluster.as_ref()?;
        Some(Arc::new(Cluster {
            me: Tag::of(c.advertise),
            ids: IdKey::new(&c.secret.0),
            auth: AuthKey::new(&c.secret.0),
            peers: Peers::new(c.advertise),
            forwarder: Forwarder::new(config.sessions.heartbeat),
            max_upstream_frame: config.limits.max_upstream_frame_bytes,
            inflight: TaskTracker::new(),
            config: c.clone(),
        }))
    }

    /// A fresh id owned by this replica.
    pub fn new_id(&self) -> String {
        self.ids.mint_random(self.me)
    }

    pub fn owner(&self, id: &str) -> Owner {
        match self.ids.owner(id) {
            None => Owner::Invalid,
            Some(tag) if tag == self.me => Owner::Local,
            Some(tag) => match self.peers.get(tag) {
                Some(addr) => Owner::Peer(addr),
                None => Owner::Gone(tag.to_string()),
            },
        }
    }

    /// The original client's address, when the request is a peer's.
    pub fn authenticate(&self, method: &Method, pq: &str, headers: &HeaderMap) -> Option<IpAddr> {
        self.auth
            .verify(headers.get(auth::HEADER), method.as_str(), pq)
    }

    /// Holds the drain open until a peer's response has been sent whole.
    pub fn track(&self, resp: Response<Body>) -> Response<Body> {
        let token = self.inflight.token();
        resp.map(|body| {
            body.map_frame(move |frame| {
                let _held = &token;
                frame
            })
            .boxed_unsync()
        })
    }

    /// Resolves once every peer request taken so far is answered.
    pub async fn drained(&self) {
        self.inflight.close();
        self.inflight.wait().await;
    }

    /// Resolves the peers now and then every [`DISCOVERY_INTERVAL`], for
    /// the life of the process.
    pub async fn discover(self: Arc<Self>, metrics: Arc<Metrics>) {
        let mut tick = tokio::time::interval(DISCOVERY_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match peers::resolve(&self.config.peers).await {
                Ok(addrs) => {
                    if self.peers.replace(addrs.iter().copied()) {
                        tracing::info!(peers = ?addrs, me = %self.config.advertise, "cluster peers changed");
                    }
                    metrics.set_cluster_peers(self.peers.len());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "peer discovery failed; keeping the last peer set")
                }
            }
        }
    }

    /// Forwards a session or channel request to the replica that owns it
    /// (`Err`: it is gone). A session reader whose owner cannot be reached
    /// gets a close event 1006; a send, `410` with that close; a close,
    /// `204` (it is closed). A channel request gets `404 unknown_channel`
    /// (a DELETE `204`): the channel ended with its owner.
    pub async fn forward(
        &self,
        kind: Kind,
        owner: Result<SocketAddr, String>,
        req: Request<RequestBody>,
        client: IpAddr,
        metrics: &Metrics,
        drain: CancellationToken,
    ) -> Result<Response<Body>, BridgeError> {
        // A channel reader resumes each session from `?cursors`; only a
        // session reader's cursor goes into a synthesised close.
        let cursor = if kind.reads_session() {
            resume_cursor(&req)
        } else {
            0
        };
        let req_method_delete = req.method() == http::Method::DELETE;
        let failure = match owner {
            Ok(peer) => {
                let start = Instant::now();
                match self.forwarder.send(peer, req, client, &self.auth).await {
                    Ok(resp) => {
                        metrics.forward_latency(kind.name(), start.elapsed());
                        metrics.forwarded(kind.name(), "ok");
                        tracing::debug!(owner = %peer, endpoint = kind.name(), status = resp.status().as_u16(), "forwarded");
                        return Ok(forward::relay(
                            resp,
                            kind,
                            cursor,
                            self.max_upstream_frame,
                            drain,
                        ));
                    }
                    Err(e) => {
                        tracing::warn!(owner = %peer, endpoint = kind.name(), error = %e, "owner replica unreachable");
                        "unreachable"
                    }
                }
            }
            Err(tag) => {
                tracing::info!(owner = %tag, endpoint = kind.name(), "owner replica is not among the peers");
                "gone"
            }
        };
        metrics.forwarded(kind.name(), failure);
        match kind {
            Kind::Sse | Kind::Stream | Kind::Poll => Ok(forward::lost(kind, cursor)),
            Kind::Send => Err(BridgeError::SessionClosed {
                code: 1006,
                reason: "the replica holding this session is unreachable".into(),
            }),
            Kind::Close => Ok(status_only(http::StatusCode::NO_CONTENT)),
            // A channel whose owner is lost has ended with it (its sessions
            // lived there): a DELETE has nothing left to end, anything else
            // gets the ended channel's answer.
            Kind::Channel(ChannelPart::Root) if req_method_delete => {
                Ok(status_only(http::StatusCode::NO_CONTENT))
            }
            Kind::Channel(_) => Err(BridgeError::UnknownChannel),
        }
    }
}

/// The cursor a reader resumes from, as the owner would read it (0 when
/// malformed: the owner, if reachable, answers 400 itself).
fn resume_cursor(req: &Request<RequestBody>) -> u64 {
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    crate::transport::resume_cursor(&query, req.headers()).unwrap_or(0)
}
