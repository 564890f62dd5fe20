//! Streaming replication: how a leader's WAL reaches its followers.
//!
//! # The protocol
//! A follower opens one long-lived stream to its leader (an HTTP/1.1
//! upgrade on the node's single port, see [`transport`]) and speaks
//! [`Frame`]s:
//!
//! 1. Follower → `Hello { flush_lsn, epoch, history }`.
//! 2. The leader compares logs ([`decide_start`]): if the follower's last
//!    record has the same epoch in the leader's history, the follower is a
//!    prefix and streaming starts at `flush_lsn + 1` (`Welcome`); if the
//!    leader no longer holds that LSN, a table snapshot is sent first
//!    (`SnapshotBegin`/`Chunk`/`End`); if the follower has records the
//!    leader lacks, `Diverged { common_lsn }` tells it to rewind.
//! 3. The leader pushes `Records` batches as soon as they are durable
//!    (woken by the engine's position watch: no polling) and `Heartbeat`s
//!    when idle, both carrying its last LSN, commit LSN and clock.
//! 4. The follower appends each batch with the leader's LSNs, fsyncs,
//!    answers `Ack { flush_lsn, applied_lsn }`, and applies it (after the
//!    artificial delay, if configured), acknowledging again.
//!
//! `Hello` lists the codecs the connecting side decodes; `Welcome` names
//! the one the serving side compresses `Records` and `SnapshotChunk` frames
//! with (its own `--replication-compression` if the other side decodes it,
//! else none; see [`compress`]).
//!
//! The leader counts acknowledgements per LSN for write concerns
//! ([`Leader::wait_for`]) and computes `commit_lsn` (durable on a majority).
//!
//! # Invariants
//! - A follower appends only records contiguous with its log (the engine
//!   refuses gaps) and applies them once, in order.
//! - A follower never accepts a stream from an epoch lower than one it has
//!   seen; a leader refuses a follower that has seen a higher epoch.
//! - Nothing is removed from a log without being written to a rollback
//!   file first.
//!
//! # Left out
//! Flow control beyond TCP's (a slow follower
//! slows only its own session).

pub mod backoff;
mod bounded;
mod coalesce;
pub mod compress;
pub mod decide;
mod delay;
pub mod follower;
pub mod frame;
#[cfg(test)]
mod fuzz;
pub mod lag;
pub mod leader;
pub mod peer;
pub mod rollback;
pub mod transport;

pub use compress::{Codec, Offer};
pub use decide::{decide_start, LogPosition, StartDecision};
pub use follower::{Follower, FollowerOptions, FollowerStatus};
pub use frame::{Frame, FrameCodec, FrameError};
pub use leader::{Leader, LeaderOptions, NotWritable, ReplicaInfo, ReplicaState};
pub use peer::{PeerOptions, PeerStatus, PeerStream, PEER_PENDING_BATCHES_MAX};
pub use transport::{BoxIo, Reach, TcpTransport, Transport};

/// Replication failures.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The stream broke or could not be opened.
    #[error("stream: {0}")]
    Stream(#[from] std::io::Error),
    /// A frame was damaged or malformed.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The peer refused us.
    #[error("refused by leader: {0}")]
    Refused(String),
    /// An epoch check failed: someone is stale.
    #[error("fenced: {0}")]
    Fenced(String),
    /// Local storage failed.
    #[error("engine: {0}")]
    Engine(#[from] replidb_engine::EngineError),
    /// Local storage failed.
    #[error("table: {0}")]
    Storage(#[from] replidb_storage::StorageError),
    /// Local WAL read failed.
    #[error("wal: {0}")]
    Wal(#[from] replidb_wal::WalError),
    /// Local file IO failed.
    #[error("io: {0}")]
    Io(String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, ReplicationError>;

/// Run blocking file IO off the async runtime (tokio's blocking pool), or
/// inline when the engine runs its IO inline (the deterministic simulation,
/// where another thread would make runs irreproducible).
pub(crate) async fn run_blocking<T: Send + 'static>(
    inline: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    if inline {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ReplicationError::Io(format!("blocking file task failed: {e}")))
}
