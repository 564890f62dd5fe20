//! Engine errors, grouped by how a caller reacts.

use replidb_core::{Epoch, Lsn};

/// What went wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The log failed (IO, corruption at open, non-contiguous append).
    #[error("wal: {0}")]
    Wal(#[from] replidb_wal::WalError),
    /// The table failed.
    #[error("table: {0}")]
    Storage(#[from] replidb_storage::StorageError),
    /// Metadata file could not be read or written.
    #[error("metadata {path}: {reason}")]
    Meta {
        /// File.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The proposal came from the leader of an epoch this node no longer
    /// writes in (it adopted a newer one); nothing was written.
    #[error("not the leader of epoch {proposed}: this node is at epoch {current} (history ends in epoch {history_last})")]
    NotLeaderOfEpoch {
        /// The epoch the proposing leader leads.
        proposed: Epoch,
        /// This node's current epoch.
        current: Epoch,
        /// The newest epoch in this node's history.
        history_last: Epoch,
    },
    /// A transaction condition did not hold; nothing was written.
    #[error("condition failed on key {key:?}: expected lsn {expected}, found {actual}")]
    ConditionFailed {
        /// The key whose condition failed.
        key: String,
        /// The LSN the request expected (0 = absent).
        expected: Lsn,
        /// The LSN the key actually has (0 = absent).
        actual: Lsn,
        /// The last LSN sequenced when the condition was checked: the state
        /// it was checked against is everything up to here, some of which
        /// may not be durable yet. A caller must not reveal `actual` before
        /// this LSN is committed as strongly as its request asked.
        as_of: Lsn,
    },
    /// A causal write the key's state refuses (another kind of key, too
    /// many siblings); nothing was written. A 409.
    #[error("{0}")]
    Causal(#[from] replidb_causal::PrepareError),
    /// A plain put to a key that holds a counter, set or map (a delete
    /// removes any kind). A 409.
    #[error("key {key:?} is a {kind}; write it through /v1/{kind}/{key} (a delete removes it)")]
    TypedKey {
        /// The key.
        key: String,
        /// Its kind.
        kind: replidb_causal::KeyKind,
    },
    /// The table and the WAL do not line up (the WAL lost records the
    /// table never saw): refuse rather than serve a hole.
    #[error("recovery gap: table is at lsn {table}, but the wal starts at {wal_first}")]
    RecoveryGap {
        /// Table's applied LSN.
        table: Lsn,
        /// WAL's first LSN.
        wal_first: Lsn,
    },
    /// A new epoch asked to start while the table shows records the WAL
    /// no longer has: a rewind cut the log and has not rebuilt the table
    /// yet. Leading now would write new records at LSNs the table counts
    /// as applied, and never show them. Retry once the resync is done.
    #[error("the table is at lsn {table}, past the end of the log at {wal_last} (a rewind's resync is in progress); cannot start epoch {epoch} now")]
    TableAheadOfLog {
        /// Table's applied LSN.
        table: Lsn,
        /// WAL's last LSN.
        wal_last: Lsn,
        /// The epoch that was to begin.
        epoch: Epoch,
    },
    /// The engine was shut down, or its writer died after an IO error (a
    /// node must not go on after a failed fsync: the page cache state is
    /// unknown).
    #[error("engine stopped: {0}")]
    Stopped(String),
}

/// Result alias for the engine.
pub type Result<T> = std::result::Result<T, EngineError>;
