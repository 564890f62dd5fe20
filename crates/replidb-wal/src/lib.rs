//! The write-ahead log of replidb: a durable, gapless sequence of
//! [`Record`](replidb_core::Record)s, appended by one writer and read
//! concurrently by replication senders.
//!
//! # On-disk format
//!
//! A WAL directory holds segment files named by the LSN of their first
//! record, zero padded to 20 digits (`00000000000000000001.wal`), plus a
//! `LOCK` file. Each segment is a 48-byte header (see
//! [`SEGMENT_HEADER_LEN`]: magic `RPLDBWAL`, version, generation, first LSN,
//! the epoch of the record before it, and a CRC-32C of the header) followed
//! by frames:
//!
//! ```text
//! [u32 len][u32 crc32c(payload)][payload: lsn u64 | epoch u64 | wall_ms u64 | logical u32 | postcard(Op)]
//! ```
//!
//! all little-endian; see [`codec`] for the byte layout. Payloads are capped at
//! [`codec::RECORD_BYTES_MAX`] (64 MiB) so that a damaged length never makes
//! a reader allocate gigabytes.
//!
//! # Invariants
//!
//! - LSNs are contiguous within a segment and across segments: segment `i+1`
//!   starts at the LSN after the last record of segment `i`. Only the last
//!   (active) segment may be empty.
//! - A segment is written and (under [`FsyncPolicy::Always`]) fsynced before
//!   the next one is created, and a new segment appears atomically (written
//!   as a temporary file, renamed into place, directory fsynced). So only
//!   the last segment can end in a torn write.
//! - Readers never see a record above the flushed LSN, which `Wal::sync`
//!   raises only after the bytes are written and fsynced.
//! - `reset` bumps a generation stored in every header; recovery deletes
//!   segments of an older generation, so a reset interrupted by a crash is
//!   either fully visible or not at all.
//!
//! # Recovery and the torn-tail rule
//!
//! [`Wal::open`] reads every segment in order and verifies each frame's
//! length, checksum and LSN. In the last segment, a partial or bad frame at
//! offset `X` is a torn tail (the file is cut at `X`, fsynced, and the bytes
//! reported as `truncated_bytes`) only if no later offset in the file starts
//! a frame with a plausible length, a plausible later LSN and a valid
//! checksum. A run of zero bytes therefore counts as tail. If a valid frame
//! does follow, or a bad frame is found in any earlier segment, `open` fails
//! with [`WalError::Corruption`] naming the file and the byte offset of the
//! bad frame: durable records were damaged, and guessing would lose
//! acknowledged writes. A frame whose checksum matches but does not decode is
//! always corruption.
//!
//! # Left out
//!
//! - No O_DIRECT; writes go through the page cache and `fdatasync`. The
//!   active segment keeps [`WalOptions::preallocate_bytes`] of zeros
//!   written ahead of its last frame (trimmed when it is sealed, cut by
//!   recovery), so most fsyncs do not change the file's size.
//! - Recovery reads each segment wholly into memory (bounded by the segment
//!   size plus one record).
//! - No compression or encryption, no repair tool: a corrupt log must be
//!   fixed by hand or replaced from a peer/snapshot.
//! - Under [`FsyncPolicy::Never`] nothing is fsynced (file data, new
//!   segments, truncations, resets): a process crash loses nothing that was
//!   synced, a machine crash may lose anything.
//! - Deleting a segment a cursor still has open relies on Unix semantics
//!   (the open handle stays readable); cursors report `Compacted` once their
//!   position falls below `first_lsn` anyway.

#![warn(missing_docs)]

pub mod codec;
#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(not(test), allow(dead_code))]
pub mod fuzz;
mod reader;
mod recovery;
mod segment;
mod wal;

use std::path::PathBuf;
use std::time::Duration;

use replidb_core::{Epoch, Lsn};

pub use reader::{WalCursor, WalReader, TAIL_CACHE_BYTES_MAX};
pub use segment::{segment_file_name, SEGMENT_HEADER_LEN};
pub use wal::Wal;

/// When [`Wal::sync`] forces data to stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` on every sync (and fsync files and the directory on
    /// segment creation, truncation and reset).
    Always,
    /// Never fsync: fast, for tests and benchmarks; survives process crashes
    /// but not machine crashes.
    Never,
}

/// Tunables of a [`Wal`].
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// A new segment is started when the next record would take the active
    /// one past this many bytes (a single larger record gets a segment of
    /// its own).
    pub segment_bytes: u64,
    /// Durability of [`Wal::sync`].
    pub fsync: FsyncPolicy,
    /// Most bytes of newest flushed records kept decoded in memory for
    /// cursors that keep up (see [`TAIL_CACHE_BYTES_MAX`], the default).
    pub tail_cache_bytes: usize,
    /// Bytes of zeros kept written ahead of the active segment's last
    /// frame (0: none; capped so a segment never grows past
    /// `segment_bytes` for it). An append then rarely changes the file's
    /// size, so the `fdatasync` after it flushes data only, without an
    /// ext4 journal commit for the size. Default
    /// [`PREALLOCATE_BYTES_DEFAULT`].
    pub preallocate_bytes: u64,
}

/// Default [`WalOptions::preallocate_bytes`]: 1 MiB, so one `fdatasync` in
/// about a MiB of log pays for a size change (and for writing the zeros).
/// PostgreSQL zero-fills whole WAL segments for the same reason.
pub const PREALLOCATE_BYTES_DEFAULT: u64 = 1024 * 1024;

impl Default for WalOptions {
    /// 64 MiB segments, fsync on every sync, a 4 MiB tail cache, 1 MiB
    /// of zeros written ahead.
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 * 1024 * 1024,
            fsync: FsyncPolicy::Always,
            tail_cache_bytes: TAIL_CACHE_BYTES_MAX,
            preallocate_bytes: PREALLOCATE_BYTES_DEFAULT,
        }
    }
}

/// Everything that can go wrong in the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An operating-system error on `path`.
    #[error("WAL I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Damaged bytes that are not a torn tail.
    #[error("WAL corruption in {} at byte offset {offset}: {reason}", file.display())]
    Corruption {
        /// The segment file.
        file: PathBuf,
        /// Byte offset of the bad frame (or header field) in the file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An appended record does not carry the next LSN.
    #[error("record LSN {got} does not follow the log: expected {expected}")]
    NotContiguous {
        /// `last_lsn() + 1`.
        expected: Lsn,
        /// The LSN offered.
        got: Lsn,
    },
    /// The requested records were removed by retention or a reset.
    #[error("LSN {requested} is no longer in the WAL; the first available is {first_available}")]
    Compacted {
        /// The LSN asked for.
        requested: Lsn,
        /// The lowest LSN still held.
        first_available: Lsn,
    },
    /// Records a cursor already returned were removed by `truncate_after`
    /// or `reset`; the cursor must be recreated.
    #[error("WAL cursor at LSN {requested} is past the end ({last_lsn}) after a truncation")]
    Truncated {
        /// The cursor's next LSN.
        requested: Lsn,
        /// The last LSN the truncation kept.
        last_lsn: Lsn,
    },
    /// A record could not be encoded (for example, it is too large).
    #[error("cannot encode WAL record: {0}")]
    Encode(String),
}

/// Result with a [`WalError`].
pub type Result<T> = std::result::Result<T, WalError>;

/// What [`Wal::open`] found.
#[derive(Debug, Clone)]
pub struct RecoveryReport {
    /// Lowest LSN held (`last_lsn + 1` if the log is empty).
    pub first_lsn: Lsn,
    /// Last valid LSN (`first_lsn - 1` if the log is empty).
    pub last_lsn: Lsn,
    /// Epoch of the last record.
    pub last_epoch: Epoch,
    /// Bytes of torn tail cut off the last segment, up to its last
    /// non-zero byte: zeros after the last frame are preallocated space
    /// (see [`WalOptions::preallocate_bytes`]) and are cut without being
    /// counted.
    pub truncated_bytes: u64,
    /// Segment files in the log.
    pub segments: usize,
}

/// What one [`Wal::sync`] covered.
#[derive(Debug, Clone, Default)]
pub struct SyncStats {
    /// Records appended since the previous sync.
    pub records: usize,
    /// Their framed size in bytes.
    pub bytes: u64,
    /// Time spent writing and fsyncing.
    pub duration: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn thread_safety_promised_by_the_api() {
        assert_send::<Wal>();
        assert_send::<WalCursor>();
        assert_send_sync::<WalReader>();
        assert_send_sync::<WalError>();
    }

    #[test]
    fn errors_name_file_and_offset() {
        let e = WalError::Corruption {
            file: PathBuf::from("/d/00000000000000000007.wal"),
            offset: 123,
            reason: "record checksum mismatch".into(),
        };
        let msg = e.to_string();
        assert!(msg.contains("/d/00000000000000000007.wal") && msg.contains("offset 123"));
        let d = WalOptions::default();
        assert_eq!((d.segment_bytes, d.fsync), (64 << 20, FsyncPolicy::Always));
    }
}
