//! The storage engine of one node: the write-ahead log, the table, and the
//! single writer that keeps them in step.
//!
//! # The writer
//! Every change to a node's durable state goes through one task, the
//! writer, fed by a bounded channel of `Command`s (in `writer.rs`). It owns the
//! [`Wal`](replidb_wal::Wal) outright, and it is the only caller of
//! [`Table::apply`](replidb_storage::Table::apply). Having one owner makes the
//! invariants local:
//!
//! - LSNs are assigned in one place, so they are gapless and increasing.
//! - Records reach the table exactly once, in LSN order, and only after the
//!   fsync that covers them (a leader never shows a write it could lose).
//! - **Group commit**: while one fsync runs, new commands queue in the
//!   channel; the next round drains them all and covers them with a single
//!   fsync. Nothing is acknowledged before that fsync returns.
//!
//! On a leader, [`Engine::propose`] assigns the LSN, appends, syncs and
//! applies in one round. On a follower, [`Engine::append_replicated`] appends
//! and syncs records that carry the leader's LSNs, and [`Engine::apply_up_to`]
//! applies them later (a follower may hold records back to simulate lag).
//!
//! The writer runs on a thread of its own, so its blocking file IO never
//! stalls the runtime (or, for a deterministic simulation, as a task that
//! does its IO inline).
//!
//! # Recovery
//! [`Engine::open`] opens the WAL (which truncates a torn tail and refuses
//! corruption), opens the table at its last checkpoint, and replays the WAL
//! records past the table's `applied_lsn`. Checkpoints make the table durable
//! and let WAL segments below them go (subject to the replication retention
//! the caller passes in).
//!
//! # Left out
//! Undo of applied records: a rewind that must remove records the table has
//! already applied rebuilds the table from a snapshot instead.

mod engine;
mod error;
mod meta;
mod writer;

pub use engine::{
    Appended, CausalProposal, Committed, Engine, EngineOptions, Positions, Proposal, RestoreSink,
};
pub use error::{EngineError, Result};
pub use meta::NodeMeta;
