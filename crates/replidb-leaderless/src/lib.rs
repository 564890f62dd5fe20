//! Placement and repair for replidb's leaderless topology (Dynamo-style;
//! DeCandia et al., "Dynamo: Amazon's Highly Available Key-value Store",
//! SOSP 2007):
//!
//! - [`ring`]: the consistent-hash ring and preference lists;
//! - [`hints`]: the durable, bounded hint store of hinted handoff;
//! - [`antientropy`]: the hash-tree summaries replicas compare.
//!
//! The versions and their merge are `replidb-causal`'s, shared with the
//! multi-leader topology; coordination (quorums, read repair) is in the
//! server, over HTTP.

pub mod antientropy;
pub mod hints;
pub mod ring;

pub use hints::{Hint, HintError, HintStore, HINTS_MAX, HINT_BYTES_MAX};
pub use ring::{ring_hash, Ring, RingError, RING_MEMBERS_MAX, VNODES_PER_MEMBER};
