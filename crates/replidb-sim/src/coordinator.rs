//! The simulated etcd: an in-memory store with etcd's semantics, driven by
//! the simulation's clock.
//!
//! It is what the real coordinator (`replidb_coordinator::EtcdCoordinator`)
//! needs from etcd, and nothing more: a revision counter bumped by every
//! change (`create_revision`, `mod_revision`), leases that expire `ttl`
//! after the last keep-alive and delete the keys attached to them, and
//! transactions that compare then put/delete atomically, all changes of one
//! transaction sharing one revision. Comparing the `mod_revision` of an
//! absent key compares against 0, as etcd does.
//!
//! [`EtcdState`] is pure: every call takes `now_ms`. The `etcd` host
//! ([`crate::etcd`]) owns one, expires leases lazily before each request
//! (indistinguishable from expiring them on time, since nobody can look in
//! between) and stamps each expiry's story line with the time it was due.

use std::collections::BTreeMap;

use replidb_coordinator::etcd::{Compare, KeyValue, LeaseId, TxnOp};
use serde::{Deserialize, Serialize};

/// The first lease id granted (etcd's ids are large; any fixed start keeps
/// runs deterministic).
const FIRST_LEASE: LeaseId = 0x7e57_0000;

/// A request to the simulated etcd (one line of JSON on the wire).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Grant a lease of this many seconds.
    Grant(i64),
    /// Renew a lease.
    KeepAlive(LeaseId),
    /// Revoke a lease.
    Revoke(LeaseId),
    /// Put a key, optionally under a lease.
    Put(String, Vec<u8>, Option<LeaseId>),
    /// Read one key.
    Get(String),
    /// Read every key under a prefix.
    GetPrefix(String),
    /// Compare-and-swap.
    Txn(Vec<Compare>, Vec<TxnOp>),
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A granted lease and its TTL in seconds.
    Granted(LeaseId, i64),
    /// The renewed TTL, or `None` when the lease had expired.
    KeptAlive(Option<i64>),
    /// A put or revoke succeeded.
    Done,
    /// One key, if present.
    Value(Option<KeyValue>),
    /// Keys in key order.
    Values(Vec<KeyValue>),
    /// Whether a transaction's comparisons held (and its ops ran).
    Txn(bool),
    /// etcd refused the request.
    Error(String),
}

/// A lease that lapsed and the keys it took with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    /// The lease.
    pub lease: LeaseId,
    /// When it lapsed (ms since the run began).
    pub at_ms: u64,
    /// Keys deleted with it, in key order.
    pub keys: Vec<String>,
}

#[derive(Clone, Debug)]
struct Lease {
    ttl_s: i64,
    expires_ms: u64,
}

/// etcd's keyspace and leases.
#[derive(Debug)]
pub struct EtcdState {
    revision: i64,
    next_lease: LeaseId,
    kvs: BTreeMap<String, KeyValue>,
    leases: BTreeMap<LeaseId, Lease>,
}

impl Default for EtcdState {
    fn default() -> Self {
        EtcdState {
            revision: 1,
            next_lease: FIRST_LEASE,
            kvs: BTreeMap::new(),
            leases: BTreeMap::new(),
        }
    }
}

impl EtcdState {
    /// An empty store at revision 1 (etcd's first revision).
    pub fn new() -> Self {
        EtcdState::default()
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Drop every lease whose TTL ran out by `now_ms`, with its keys (one
    /// revision per lease that had keys), in lease-id order.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Expired> {
        let due: Vec<(LeaseId, u64)> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires_ms <= now_ms)
            .map(|(id, l)| (*id, l.expires_ms))
            .collect();
        due.into_iter()
            .map(|(lease, at_ms)| Expired {
                lease,
                at_ms,
                keys: self.drop_lease(lease),
            })
            .collect()
    }

    fn drop_lease(&mut self, id: LeaseId) -> Vec<String> {
        self.leases.remove(&id);
        let keys: Vec<String> = self
            .kvs
            .values()
            .filter(|kv| kv.lease == id)
            .map(|kv| kv.key.clone())
            .collect();
        if !keys.is_empty() {
            self.revision += 1;
            for k in &keys {
                self.kvs.remove(k);
            }
        }
        keys
    }

    /// Keys attached to `lease`, in key order.
    pub fn keys_under(&self, lease: LeaseId) -> Vec<String> {
        self.kvs
            .values()
            .filter(|kv| kv.lease == lease)
            .map(|kv| kv.key.clone())
            .collect()
    }

    fn put_at(&mut self, key: &str, value: &[u8], lease: Option<LeaseId>, revision: i64) {
        KeyValue::put_into(&mut self.kvs, key, value, lease, revision);
    }

    fn holds(&self, c: &Compare) -> bool {
        match c {
            Compare::Absent(k) => !self.kvs.contains_key(k),
            Compare::ValueEquals(k, v) => self.kvs.get(k).is_some_and(|kv| kv.value == *v),
            Compare::ModRevision(k, r) => {
                self.kvs.get(k).map(|kv| kv.mod_revision).unwrap_or(0) == *r
            }
        }
    }

    fn lease_missing(&self, lease: Option<LeaseId>) -> bool {
        lease.is_some_and(|l| !self.leases.contains_key(&l))
    }

    /// Answer `req` at `now_ms`. Call [`EtcdState::expire`] first.
    pub fn apply(&mut self, req: Request, now_ms: u64) -> Response {
        match req {
            Request::Grant(ttl_s) => {
                let ttl_s = ttl_s.max(1);
                let id = self.next_lease;
                self.next_lease += 1;
                self.leases.insert(
                    id,
                    Lease {
                        ttl_s,
                        expires_ms: now_ms + ttl_s as u64 * 1000,
                    },
                );
                Response::Granted(id, ttl_s)
            }
            Request::KeepAlive(id) => match self.leases.get_mut(&id) {
                Some(l) => {
                    l.expires_ms = now_ms + l.ttl_s as u64 * 1000;
                    Response::KeptAlive(Some(l.ttl_s))
                }
                None => Response::KeptAlive(None),
            },
            Request::Revoke(id) => {
                if !self.leases.contains_key(&id) {
                    return Response::Error("etcdserver: requested lease not found".into());
                }
                self.drop_lease(id);
                Response::Done
            }
            Request::Put(key, value, lease) => {
                if self.lease_missing(lease) {
                    return Response::Error("etcdserver: requested lease not found".into());
                }
                self.revision += 1;
                self.put_at(&key, &value, lease, self.revision);
                Response::Done
            }
            Request::Get(key) => Response::Value(self.kvs.get(&key).cloned()),
            Request::GetPrefix(prefix) => Response::Values(
                self.kvs
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, kv)| kv.clone())
                    .collect(),
            ),
            Request::Txn(compare, ops) => {
                if !compare.iter().all(|c| self.holds(c)) {
                    return Response::Txn(false);
                }
                let missing = ops
                    .iter()
                    .any(|op| matches!(op, TxnOp::Put(_, _, l) if self.lease_missing(*l)));
                if missing {
                    return Response::Error("etcdserver: requested lease not found".into());
                }
                if !ops.is_empty() {
                    self.revision += 1;
                }
                let rev = self.revision;
                for op in ops {
                    match op {
                        TxnOp::Put(k, v, l) => self.put_at(&k, &v, l, rev),
                        TxnOp::Delete(k) => {
                            self.kvs.remove(&k);
                        }
                    }
                }
                Response::Txn(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(s: &mut EtcdState, now: u64) -> LeaseId {
        match s.apply(Request::Grant(1), now) {
            Response::Granted(id, 1) => id,
            other => panic!("{other:?}"),
        }
    }

    /// The election's compare-and-swap, as the coordinator runs it.
    fn elect(s: &mut EtcdState, lease: LeaseId, epoch_rev: i64, epoch: u64) -> bool {
        let r = s.apply(
            Request::Txn(
                vec![
                    Compare::Absent("/c/leader".into()),
                    Compare::ModRevision("/c/epoch".into(), epoch_rev),
                ],
                vec![
                    TxnOp::Put("/c/leader".into(), b"x".to_vec(), Some(lease)),
                    TxnOp::Put("/c/epoch".into(), epoch.to_string().into_bytes(), None),
                ],
            ),
            0,
        );
        r == Response::Txn(true)
    }

    fn epoch_rev(s: &mut EtcdState) -> i64 {
        match s.apply(Request::Get("/c/epoch".into()), 0) {
            Response::Value(v) => v.map(|kv| kv.mod_revision).unwrap_or(0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn leases_expire_after_the_last_keepalive_and_take_their_keys() {
        let mut s = EtcdState::new();
        let a = grant(&mut s, 0);
        assert_eq!(
            s.apply(Request::Put("/c/m/a".into(), b"1".to_vec(), Some(a)), 0),
            Response::Done
        );
        assert_eq!(
            s.apply(Request::KeepAlive(a), 900),
            Response::KeptAlive(Some(1))
        );
        assert!(s.expire(1899).is_empty(), "renewed at 900: lives to 1900");
        let gone = s.expire(1900);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].at_ms, 1900);
        assert_eq!(gone[0].keys, vec!["/c/m/a".to_string()]);
        assert_eq!(
            s.apply(Request::KeepAlive(a), 1901),
            Response::KeptAlive(None)
        );
        assert_eq!(
            s.apply(Request::Get("/c/m/a".into()), 1901),
            Response::Value(None)
        );
        assert!(matches!(
            s.apply(Request::Put("/k".into(), vec![], Some(a)), 1901),
            Response::Error(_)
        ));
    }

    #[test]
    fn the_election_cas_admits_one_winner_per_epoch() {
        let mut s = EtcdState::new();
        let (a, b) = (grant(&mut s, 0), grant(&mut s, 0));
        let rev = epoch_rev(&mut s);
        assert_eq!(rev, 0, "absent key compares as revision 0");
        assert!(elect(&mut s, a, rev, 1));
        assert!(!elect(&mut s, b, rev, 1), "leader key present");
        // a's lease lapses: the key goes, the epoch stays.
        s.expire(5000);
        let _ = grant(&mut s, 5000);
        assert!(!elect(&mut s, b, rev, 2), "b's lease lapsed too");
        let c = grant(&mut s, 5000);
        assert!(!elect(&mut s, c, rev, 2), "stale epoch revision");
        let rev2 = epoch_rev(&mut s);
        assert!(elect(&mut s, c, rev2, 2));
        match s.apply(Request::Get("/c/leader".into()), 5000) {
            Response::Value(Some(kv)) => {
                assert_eq!(kv.lease, c);
                assert_eq!(kv.mod_revision, s.revision());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn revisions_and_prefix_ranges() {
        let mut s = EtcdState::new();
        for k in ["/c/nodes/n2", "/c/nodes/n1", "/c/nodesx", "/c/leader"] {
            s.apply(Request::Put(k.into(), k.as_bytes().to_vec(), None), 0);
        }
        s.apply(
            Request::Put("/c/nodes/n1".into(), b"again".to_vec(), None),
            0,
        );
        let Response::Values(v) = s.apply(Request::GetPrefix("/c/nodes/".into()), 0) else {
            panic!()
        };
        let keys: Vec<&str> = v.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["/c/nodes/n1", "/c/nodes/n2"]);
        assert_eq!(v[0].create_revision, 3);
        assert_eq!(v[0].mod_revision, 6);
        assert_eq!(s.revision(), 6);
    }
}
