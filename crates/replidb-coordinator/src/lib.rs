//! Coordination: who leads, and fencing of whoever no longer does.
//!
//! Two coordinators:
//! - **static** — the leader is named in configuration; operators promote a
//!   follower (`POST /admin/promote`), and the promoted node tells its peers
//!   (`POST /admin/fence`) so the others re-point and a returning old leader
//!   steps down. Nothing here runs a loop; see the server's admin routes.
//! - **etcd** — automatic, in the style of Patroni ([`EtcdCoordinator`]):
//!   every member holds a session lease and publishes its position under
//!   it; the leader also holds the leader key under that lease. When the key
//!   vanishes, the members agree on the best candidate ([`election`]) and it
//!   takes the key in one compare-and-swap that also bumps the cluster epoch.
//!
//! The loop talks to etcd only through [`CoordStore`] (grant, keep-alive,
//! revoke, put, get, range, transaction): [`EtcdClient`] implements it over
//! etcd's JSON gateway, and `replidb-sim` implements it with a simulated
//! etcd on a simulated network, so elections, leases and fencing run in the
//! deterministic simulation unchanged. The loop reads time only through
//! [`Member::mono_ms`], the node's monotonic clock, and waits only with
//! `tokio::time`: a wall clock stepped back must not extend a lease.
//!
//! # Keys (under `/{cluster}/`)
//! | key | lease | value |
//! | --- | --- | --- |
//! | `leader` | leader's session | `{"id","url","epoch"}` |
//! | `epoch` | none | highest epoch ever granted |
//! | `members/{id}` | member's session | [`MemberInfo`] |
//! | `nodes/{id}` | none | URL: the registry that sizes the quorum |
//! | `switchover` | none | id of a planned switchover's target |
//!
//! # Fencing (invariant 3)
//! A leader may accept writes only until `keepalive sent + TTL − margin`: the
//! lease cannot expire (so no successor can be elected) before that moment,
//! because etcd started the TTL after we sent. A leader that cannot renew
//! stops writing before its lease can expire. A new leader's epoch is
//! strictly higher (the CAS bumps `epoch`), and replication refuses streams
//! from lower epochs.
//!
//! # Left out
//! etcd watches (we poll the leader key every tick: simpler, and on loopback
//! a 100 ms tick costs nothing); TLS to etcd; etcd authentication.

pub mod election;
pub mod etcd;
mod runner;
pub mod store;

pub use election::{choose, MemberInfo, NoWinner};
pub use etcd::EtcdClient;
pub use runner::{CoordinatorStatus, EtcdCoordinator, EtcdOptions, LeaderKey};
pub use store::CoordStore;

use std::future::Future;
use std::pin::Pin;

use replidb_core::Epoch;

/// A boxed future for object-safe async trait methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Coordination failures.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// No etcd endpoint answered.
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// etcd answered with an error.
    #[error("etcd: {0}")]
    Etcd(String),
    /// Bad settings.
    #[error("coordinator configuration: {0}")]
    Config(String),
    /// A request that cannot be honoured now (e.g. switchover to an
    /// unknown node).
    #[error("{0}")]
    Refused(String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, CoordinatorError>;

/// Who decides leadership: the one interface both coordinators offer the
/// node (`--coordinator static|etcd`).
pub trait Coordinator: Send + Sync + 'static {
    /// `static` or `etcd`.
    fn kind(&self) -> &'static str;
    /// True when leadership changes only through the coordinator, so an
    /// operator's manual promote or follow would fight it and is refused.
    fn automatic(&self) -> bool;
    /// What `/status` shows under `coordinator`.
    fn status(&self) -> serde_json::Value;
    /// Planned switchover, called on the leader once the target (`id` at
    /// `url`) holds every record: make the target the leader. Afterwards
    /// this node follows it.
    fn hand_over<'a>(
        &'a self,
        target_id: &'a str,
        target_url: &'a str,
    ) -> BoxFuture<'a, Result<()>>;
}

/// What the coordinator needs from the node it coordinates.
pub trait Member: Send + Sync + 'static {
    /// What to publish about this node.
    fn info(&self) -> MemberInfo;
    /// Whether the node currently acts as leader.
    fn is_leader(&self) -> bool;
    /// URL of the leader the node follows (`None` when leading or idle).
    fn following(&self) -> Option<String>;
    /// Become the leader of `epoch`.
    fn promote(&self, epoch: Epoch) -> BoxFuture<'_, std::result::Result<(), String>>;
    /// Follow the leader at `url`, which leads `epoch`.
    fn follow(&self, url: String, epoch: Epoch) -> BoxFuture<'_, std::result::Result<(), String>>;
    /// Writes are allowed until this time on the node's monotonic clock
    /// ([`Member::mono_ms`]); 0 = not allowed.
    fn set_write_deadline(&self, deadline_ms: u64);
    /// The coordinator's registry holds `n` members (sizes `w=majority`).
    fn set_cluster_size(&self, n: usize);
    /// The node's monotonic clock in ms (arbitrary origin): the clock its
    /// leader checks the write deadline against. Never a wall clock, which
    /// an NTP step could move back past a lease's end.
    fn mono_ms(&self) -> u64;
    /// Check-quorum: `false` when this node leads but has not heard from a
    /// majority of voters recently. The coordinator then gives up the
    /// leader key and calls [`Member::step_down`].
    fn has_quorum(&self) -> bool {
        true
    }
    /// Stop leading (check-quorum failed) and stay out of elections for a
    /// cool-down.
    fn step_down(&self) {}
    /// Whether this node has proof that the process of the leader at
    /// `leader_url` is gone, so its session lease may be revoked without
    /// waiting for the TTL.
    ///
    /// Proof means: this node follows, its replication stream from that
    /// leader is down, and fresh TCP connects to the leader's listening
    /// address are *refused* twice, a few tens of ms apart (a live process
    /// never refuses connections on its listening port). A timeout, an
    /// unreachable host or any other error is a partition or an overload,
    /// not a dead process, and must answer `false`. The default proves
    /// nothing.
    fn leader_process_gone<'a>(&'a self, _leader_url: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async { false })
    }
}
