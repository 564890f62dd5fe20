//! Placement and repair for replidb's leaderless topology (Dynamo-style;
//! DeCandia et al., "Dynamo: Amazon's Highly Available Key-value Store",
//! SOSP 2007):
//!
//! - [`ring`]: the consistent-hash ring and preference lists;
//! - [`coordinator`]: the coordinator's decisions without IO — routing,
//!   when a W/R quorum is met or failed, which fallback keeps a hint, how
//!   replies merge, which replicas need read repair — driven by the
//!   server's HTTP handlers and by the simulator alike;
//! - [`hints`]: the durable, bounded hint store of hinted handoff;
//! - [`antientropy`]: the hash-tree summaries replicas compare.
//!
//! The versions and their merge are `replidb-causal`'s, shared with the
//! multi-leader topology. The IO around the coordinator (HTTP between
//! nodes, timers, the local engine) is the driver's: `replidb-server`'s
//! `api::leaderless` on real sockets, `replidb-sim`'s leaderless mode on a
//! simulated network and clock.

pub mod antientropy;
pub mod coordinator;
pub mod hints;
pub mod ring;

pub use coordinator::{
    quorum_count, reconcile, route, Attempt, Delivery, Placement, QuorumError, ReadRound,
    ReadStatus, Reconcile, Route, WriteRound, WriteStatus,
};
pub use hints::{Hint, HintError, HintStore, HINTS_MAX, HINT_BYTES_MAX};
pub use ring::{ring_hash, Ring, RingError, RING_MEMBERS_MAX, VNODES_PER_MEMBER};
