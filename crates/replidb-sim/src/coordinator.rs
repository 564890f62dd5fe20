//! Extension point for failover (issue part 5): a simulated coordinator
//! with etcd-like lease semantics.
//!
//! Not wired into runs yet: today the leader is fixed and never crashed.
//! When failover lands, the plan is:
//!
//! 1. A `coordinator` turmoil host owns a [`LeaseStore`] and answers
//!    campaign / keep-alive / get requests over the simulated network, so a
//!    partition can cut a node off from the coordinator (the interesting
//!    case: a leader that can still reach followers but not the lease).
//! 2. Each node runs the failover code's candidate loop against a
//!    [`Coordinator`] client; the node that holds the lease calls
//!    `engine.begin_epoch(lease.epoch)` and starts `Leader`, the others
//!    follow the holder's URL (`Follower::set_leader`).
//! 3. The fault schedule gains `FaultKind`s that crash or isolate the
//!    leader, and the checks gain "at most one leader per epoch" and
//!    "no acknowledged `w=majority` write lost across a failover".
//!
//! Everything here is driven by the simulation's clock, so lease expiry
//! is as deterministic as the rest of a run.

use std::collections::BTreeMap;
use std::sync::Mutex;

use replidb_core::Epoch;

/// A granted leadership lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Node that holds it.
    pub holder: String,
    /// The epoch (etcd: the key's create revision) the holder leads in.
    pub epoch: Epoch,
    /// When it lapses unless renewed (ms since the run began).
    pub expires_ms: u64,
}

/// What a failover implementation needs from a coordinator.
pub trait Coordinator: Send + Sync {
    /// Take the leadership key if it is free or lapsed, or renew it if
    /// `node` already holds it. Returns the lease `node` now holds, if any.
    fn campaign(&self, node: &str, now_ms: u64, ttl_ms: u64) -> Option<Lease>;
    /// The current, unexpired lease.
    fn leader(&self, now_ms: u64) -> Option<Lease>;
    /// Give the lease up (clean switchover).
    fn resign(&self, node: &str);
}

/// An in-memory lease store: one leadership key, a TTL, and an epoch that
/// grows with every new holder (never reused, even after a resign).
#[derive(Debug, Default)]
pub struct LeaseStore {
    state: Mutex<StoreState>,
}

#[derive(Debug, Default)]
struct StoreState {
    current: Option<Lease>,
    last_epoch: u64,
    /// Every lease ever granted, by epoch: the history a check reads.
    granted: BTreeMap<u64, String>,
}

impl LeaseStore {
    /// An empty store (no leader yet, next epoch 1).
    pub fn new() -> Self {
        LeaseStore::default()
    }

    /// Holder of every epoch granted so far.
    pub fn history(&self) -> BTreeMap<u64, String> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .granted
            .clone()
    }
}

impl Coordinator for LeaseStore {
    fn campaign(&self, node: &str, now_ms: u64, ttl_ms: u64) -> Option<Lease> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &mut s.current {
            Some(l) if l.expires_ms > now_ms && l.holder == node => {
                l.expires_ms = now_ms + ttl_ms;
                return Some(l.clone());
            }
            Some(l) if l.expires_ms > now_ms => return None,
            _ => {}
        }
        s.last_epoch += 1;
        let lease = Lease {
            holder: node.to_string(),
            epoch: Epoch(s.last_epoch),
            expires_ms: now_ms + ttl_ms,
        };
        let epoch = s.last_epoch;
        s.granted.insert(epoch, node.to_string());
        s.current = Some(lease.clone());
        Some(lease)
    }

    fn leader(&self, now_ms: u64) -> Option<Lease> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.current.clone().filter(|l| l.expires_ms > now_ms)
    }

    fn resign(&self, node: &str) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.current.as_ref().is_some_and(|l| l.holder == node) {
            s.current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_expire_renew_and_never_reuse_an_epoch() {
        let c = LeaseStore::new();
        let a = c.campaign("n1", 0, 1000).unwrap();
        assert_eq!(a.epoch, Epoch(1));
        assert!(c.campaign("n2", 500, 1000).is_none(), "held by n1");
        assert_eq!(c.campaign("n1", 900, 1000).unwrap().expires_ms, 1900);
        assert!(c.leader(1899).is_some());
        assert!(c.leader(1900).is_none(), "lapsed");
        let b = c.campaign("n2", 1900, 1000).unwrap();
        assert_eq!(b.epoch, Epoch(2));
        c.resign("n2");
        assert_eq!(c.campaign("n1", 2000, 1000).unwrap().epoch, Epoch(3));
        assert_eq!(c.history().len(), 3);
    }
}
