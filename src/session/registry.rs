//! Session id → session, and the session limits (global and per client).
//!
//! A concurrent map, so the message path never takes a global lock: a
//! handler looks its session up once and then works on the session alone.
//! Guards of the map are never held across an `.await`.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;

use super::Session;
use super::budget::ReplayBudget;
use crate::error::BridgeError;

/// Random bytes in a session id: 128 bits from the OS CSPRNG.
const ID_BYTES: usize = 16;
/// Length of an id as text (base64url, no padding).
pub const ID_LEN: usize = 22;
/// Length of a cluster id (`[cluster]`: owner tag and MAC added).
pub const CLUSTER_ID_LEN: usize = 40;
/// What a client is told to wait when the session limits are reached.
const RETRY_AFTER_FULL: Duration = Duration::from_secs(5);

pub struct Registry {
    sessions: DashMap<Box<str>, Arc<Session>>,
    counts: Arc<Counts>,
    /// `replay.max_total_bytes`, shared by every session through its slot.
    budget: Arc<ReplayBudget>,
}

/// Open (not lingering) sessions, in all and per client address; shared with
/// every [`Slot`] so a slot can give itself back from anywhere.
struct Counts {
    active: AtomicUsize,
    per_client: DashMap<IpAddr, usize>,
    max_sessions: usize,
    /// 0 = no limit.
    max_per_client: usize,
}

/// One open session's place in the limits; dropping it gives the place back.
pub struct Slot {
    counts: Arc<Counts>,
    client: IpAddr,
    /// The replay budget the session draws from; it outlives the slot
    /// (lingering sessions keep drawing), so the session takes a clone.
    budget: Arc<ReplayBudget>,
}

impl Slot {
    pub fn budget(&self) -> &Arc<ReplayBudget> {
        &self.budget
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counts.active.fetch_sub(1, Ordering::AcqRel);
        if self.counts.max_per_client > 0
            && let dashmap::Entry::Occupied(mut e) = self.counts.per_client.entry(self.client)
        {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

impl Registry {
    /// `max_total_bytes` is `replay.max_total_bytes`, the replay budget all
    /// sessions share.
    pub fn new(max_sessions: usize, max_per_client: usize, max_total_bytes: usize) -> Self {
        Registry {
            budget: Arc::new(ReplayBudget::new(max_total_bytes)),
            sessions: DashMap::new(),
            counts: Arc::new(Counts {
                active: AtomicUsize::new(0),
                per_client: DashMap::new(),
                max_sessions,
                max_per_client,
            }),
        }
    }

    /// Takes a place for a new session from `client`, or says why not.
    pub fn reserve(&self, client: IpAddr) -> Result<Slot, BridgeError> {
        let full = || BridgeError::Unavailable {
            code: "session_limit",
            retry_after: RETRY_AFTER_FULL,
        };
        let counts = &self.counts;
        if counts.active.fetch_add(1, Ordering::AcqRel) >= counts.max_sessions {
            counts.active.fetch_sub(1, Ordering::AcqRel);
            return Err(full());
        }
        if counts.max_per_client > 0 {
            let mut n = counts.per_client.entry(client).or_insert(0);
            if *n >= counts.max_per_client {
                drop(n);
                counts.active.fetch_sub(1, Ordering::AcqRel);
                return Err(full());
            }
            *n += 1;
        }
        Ok(Slot {
            counts: Arc::clone(counts),
            client,
            budget: Arc::clone(&self.budget),
        })
    }

    pub fn insert(&self, session: Arc<Session>) {
        self.sessions.insert(session.id.as_str().into(), session);
    }

    /// Looks a session up. Unknown and malformed ids alike are `None`.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        if !id_len_ok(id) {
            return None;
        }
        self.sessions.get(id).map(|s| Arc::clone(s.value()))
    }

    pub fn remove(&self, id: &str) {
        self.sessions.remove(id);
    }

    /// Open sessions (lingering ones excluded).
    pub fn active(&self) -> usize {
        self.counts.active.load(Ordering::Acquire)
    }

    /// The replay budget all sessions share.
    pub fn budget(&self) -> &Arc<ReplayBudget> {
        &self.budget
    }

    /// Every session, for metrics and drain. Clones the handles so no map
    /// guard outlives the call.
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.sessions
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect()
    }
}

/// Whether `id` has the length of an id of either form (a lone replica's
/// or a cluster's): anything else is unknown without a lookup.
pub fn id_len_ok(id: &str) -> bool {
    id.len() == ID_LEN || id.len() == CLUSTER_ID_LEN
}

/// A fresh session id: 128 bits from the OS CSPRNG, base64url.
pub fn new_id() -> String {
    let mut bytes = [0u8; ID_BYTES];
    // The OS generator failing is not something a proxy can recover from
    // safely; a predictable id would be worse than stopping.
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_long_url_safe_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), ID_LEN);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn limits_global_and_per_client() {
        let r = Registry::new(3, 2, 1 << 20);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = r.reserve(a).unwrap();
        let _s2 = r.reserve(a).unwrap();
        assert!(r.reserve(a).is_err(), "per-client limit");
        let _s3 = r.reserve(b).unwrap();
        assert!(r.reserve(b).is_err(), "global limit");
        drop(s1);
        assert_eq!(r.active(), 2);
        assert!(r.reserve(a).is_ok());
    }
}
