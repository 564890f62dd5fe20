//! The table: the materialized state of replidb's write-ahead log.
//!
//! The log (replidb-wal) is the source of truth. A [`Table`] is what you get by
//! applying the log's records, in LSN order, to an empty map of
//! `key -> Versioned { value, lsn, epoch }`. Everything in this crate follows
//! from that one sentence.
//!
//! # The contract
//!
//! - **Gapless application.** [`Table::apply`] takes a contiguous run of
//!   records starting at exactly `applied_lsn() + 1`. Anything else is
//!   refused with [`StorageError::NotContiguous`] and nothing is applied, so a
//!   table can never silently skip or repeat a record.
//! - **Atomic with its position.** The data changes of one `apply` call and the
//!   new `applied_lsn` become visible (and, for redb, are committed) together.
//!   A reader never sees half a batch, and after a crash the table knows
//!   exactly which prefix of the log it holds, so recovery replays only the
//!   WAL tail after it.
//! - **Applied is not durable.** `apply` may keep its changes in memory or in
//!   the page cache; the WAL already holds them durably. [`Table::checkpoint`]
//!   makes everything applied so far durable and advances `durable_lsn`. After
//!   a crash a table reopens exactly at its last checkpoint (`applied_lsn ==
//!   durable_lsn` then), and the caller replays the WAL from
//!   `applied_lsn + 1`. A clean close may keep more (dropping a [`RedbTable`]
//!   lets redb make pending commits durable; dropping a [`MemoryTable`] keeps
//!   nothing past its checkpoint), so callers must always trust the reopened
//!   `applied_lsn`, never remember one. The WAL may be truncated only up to
//!   `durable_lsn`.
//! - **Snapshots are point in time.** [`Table::snapshot`] returns a view at the
//!   `applied_lsn` of the moment it was taken; later applies never show
//!   through. Snapshots are read in key-ordered chunks, which is how a
//!   follower that fell too far behind gets a full copy.
//! - **Restore is all or nothing, and invisible until it is done.**
//!   `begin_restore` starts an empty *staging* copy beside the live table
//!   and durably marks the table as restoring; `restore_chunk` fills the
//!   staging copy; `finish_restore` swaps it in atomically and durably,
//!   together with its `applied_lsn`, and clears the mark. The live table —
//!   its contents and its `applied_lsn` — is untouched until that swap, so
//!   readers (`get`, `scan`, `snapshot`, `digest`, `len`) keep seeing the old,
//!   consistent state throughout and then the new one, never a mix.
//!   `abort_restore` drops the staging copy. A crash before the swap leaves
//!   the mark, and the next open drops the staging copy and clears the mark:
//!   the table comes back with its old contents at its old `applied_lsn`
//!   (consistent with the old log), and [`Table::needs_restore`] is false.
//! - **Digest.** [`Table::digest`] is a SHA-256 over every `(key, value, lsn,
//!   epoch)` in key order plus the entry count. It depends only on the
//!   contents, so the two backends — and two replicas — agree on it exactly
//!   when their contents agree.
//!
//! # Concurrency
//!
//! Many reader threads, one applier. Implementations serialize writers
//! internally (a second concurrent `apply` waits and is then checked for
//! contiguity like any other) and never hold a lock that readers need across
//! file IO.
//!
//! # Backends
//!
//! - [`MemoryTable`]: a `BTreeMap` behind a lock; optionally persisted by
//!   writing a checksummed snapshot file on `checkpoint`. A restore fills a
//!   second map and swaps it in after writing it as the snapshot file.
//! - [`RedbTable`]: a redb file with a data table and a meta table written in
//!   the same transaction, plus a staging table during a restore that
//!   `finish_restore` renames over the data table. `apply` commits without
//!   fsync; `checkpoint` commits with fsync.
//!
//! # Left out
//!
//! - No MVCC history: a key holds only its latest version, and a delete leaves
//!   no tombstone (deletes replicate through the WAL, not through the table).
//! - No key validation: keys were validated before they reached the log.
//! - No WAL replay: the caller owns the log and replays it after `open`.
//! - No compaction or size management of the redb file beyond what redb does.
//!   Pages freed by non-durable commits are reclaimed only after the next
//!   durable one, so the file grows between checkpoints: checkpoint regularly.
//! - `apply` during a restore is not refused (it is a caller bug): it changes
//!   the live table, which `finish_restore` then replaces. Only the restore
//!   calls themselves check the protocol.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use replidb_core::{Lsn, Record, Versioned};

mod causal;
mod digest;
mod memory;
mod memtable;
mod redb_table;

pub use causal::{CausalStats, CONFLICT_LOG_ENTRIES_MAX};
pub use memory::MemoryTable;
pub use memtable::{MEMTABLE_BYTES_DEFAULT, MEMTABLE_ENTRY_OVERHEAD_BYTES};
pub use redb_table::RedbTable;

/// File name of the redb table inside a data directory.
pub const REDB_FILE_NAME: &str = "table.redb";

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An IO error on a file of the table.
    #[error("io error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The backend (redb) failed; the message says what was being done.
    #[error("storage backend error: {0}")]
    Backend(String),
    /// Stored data failed a consistency check, or a snapshot stream broke the
    /// restore protocol.
    #[error("corruption: {0}")]
    Corruption(String),
    /// `apply` was given a record that does not follow `applied_lsn`.
    /// Records of another origin that do not continue its applied position.
    #[error("records of origin {origin} not contiguous: expected lsn {expected}, got {got}")]
    OriginNotContiguous {
        /// The origin.
        origin: String,
        /// Its applied position plus one.
        expected: Lsn,
        /// The first LSN offered.
        got: Lsn,
    },
    #[error("records not contiguous: expected lsn {expected}, got {got}")]
    NotContiguous {
        /// The LSN that had to come next.
        expected: Lsn,
        /// The LSN that came instead.
        got: Lsn,
    },
}

/// Result of a storage operation.
pub type Result<T> = std::result::Result<T, StorageError>;

/// Keys read from one applied state by [`Table::get_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManyRead {
    /// One entry per key read, in the keys' order; `None`: absent. Every
    /// key when not [`cut`](Self::cut).
    pub entries: Vec<Option<Versioned>>,
    /// The applied LSN of the state read: no record after it is in the
    /// entries, and every record up to it is.
    pub applied: Lsn,
    /// The values reached the byte limit: `entries` stops before the key
    /// whose value passed it.
    pub cut: bool,
    /// Bytes of values in `entries`.
    value_bytes: usize,
}

impl ManyRead {
    /// No entries yet, of the state at `applied`, for `keys` keys.
    pub fn new(applied: Lsn, keys: usize) -> ManyRead {
        ManyRead {
            entries: Vec::with_capacity(keys),
            applied,
            cut: false,
            value_bytes: 0,
        }
    }

    /// Add the next key's entry, unless its value takes the values read
    /// past `bytes_max`: then mark the read [`cut`](Self::cut) and return
    /// false (the caller stops reading).
    pub fn push_within(&mut self, found: Option<Versioned>, bytes_max: usize) -> bool {
        let bytes = found.as_ref().map_or(0, |v| v.value.len());
        self.value_bytes = self.value_bytes.saturating_add(bytes);
        if self.value_bytes > bytes_max {
            self.cut = true;
            return false;
        }
        self.entries.push(found);
        true
    }
}

/// The table: the materialized state of the log.
pub trait Table: Send + Sync + 'static {
    /// Apply records in order, atomically together with the new applied_lsn.
    /// `records[0].lsn` must be `applied_lsn() + 1` and the slice contiguous
    /// (else `NotContiguous`, nothing applied). Put sets
    /// `Versioned { value, lsn: rec.lsn, epoch: rec.epoch }`; Delete removes the
    /// key; Batch applies its leaves in order. Not necessarily durable: see
    /// [`Table::checkpoint`]. An empty slice is a no-op.
    fn apply(&self, records: &[Record]) -> Result<()>;

    /// The current version of `key` in the live table, if present (a staged
    /// restore is never visible).
    fn get(&self, key: &str) -> Result<Option<Versioned>>;

    /// The current versions of `keys`, in their order, all read from one
    /// applied state: an apply (a round of records, so a whole batch such
    /// as an `MSET`) is seen either entirely or not at all, as Redis's
    /// `MGET` never sees half of an `MSET`. Several [`Table::get`] calls
    /// could each see a different state.
    ///
    /// With `values` false, a present key's `value` comes back empty (its
    /// LSN, epoch and `causal` flag are kept): what a presence check needs,
    /// without copying values. Reading stops at the key whose value takes
    /// the values read past `bytes_max` bytes ([`ManyRead::cut`]), so a
    /// request naming many large keys cannot make the node copy them all.
    fn get_many(&self, keys: &[&str], values: bool, bytes_max: usize) -> Result<ManyRead>;

    /// One page of the live table's keys starting with `prefix`, in key
    /// order, strictly after `start_after` if given: at most `keys_max`
    /// entries, and no more once the page's keys and values reach
    /// `bytes_max` bytes (the entry that reaches it is included, so a page
    /// holds at least one entry when any is left; at most `bytes_max` plus
    /// one entry). [`ScanPage::cut_by_bytes`] says the byte budget, not the
    /// end of the range or `keys_max`, ended the page.
    fn scan_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        keys_max: usize,
        bytes_max: usize,
    ) -> Result<ScanPage>;

    /// [`Table::scan_page`] with no byte budget: every value of up to
    /// `limit` entries is held at once, so a server answering requests
    /// uses `scan_page`; this is for tests, tools and bounded tables.
    fn scan(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>> {
        Ok(self
            .scan_page(prefix, start_after, limit, usize::MAX)?
            .entries)
    }

    /// LSN of the last applied record (0 if none): the live table's, which
    /// a staged restore changes only when it is finished.
    fn applied_lsn(&self) -> Lsn;

    /// LSN of the last checkpoint: everything up to it survives a crash.
    fn durable_lsn(&self) -> Lsn;

    /// Make everything applied so far durable; returns the new durable_lsn.
    fn checkpoint(&self) -> Result<Lsn>;

    /// A consistent, point-in-time view at `applied_lsn()` as of the call;
    /// later applies don't affect it.
    fn snapshot(&self) -> Result<Box<dyn TableSnapshot>>;

    /// Start replacing the whole contents from a snapshot stream: starts an
    /// empty staging copy (discarding any earlier one) and durably marks the
    /// table "restoring". The live contents, `applied_lsn` and `durable_lsn`
    /// are untouched, and reads keep seeing them until
    /// [`Table::finish_restore`]. If the process crashes before then, the
    /// next open drops the staging copy and clears the mark: the table
    /// reopens with its old contents at its old `applied_lsn`, and
    /// `needs_restore() == false`.
    fn begin_restore(&self) -> Result<()>;

    /// Add entries of the snapshot stream to the staging copy (never to the
    /// live table). Keys must ascend, within and across chunks (else
    /// `Corruption`, nothing of the chunk staged). Only valid between begin
    /// and finish.
    fn restore_chunk(&self, entries: &[(String, Versioned)]) -> Result<()>;

    /// End the restore: atomically replaces the live contents with the
    /// staging copy and sets applied_lsn = durable_lsn = `lsn`, clearing the
    /// mark. Readers see either the old state or the new one, never a mix;
    /// the new one is durable when this returns. Only valid after begin.
    fn finish_restore(&self, lsn: Lsn) -> Result<()>;

    /// Give up a restore: drops the staging copy and clears the mark. The
    /// live table is untouched. A no-op when no restore is under way.
    fn abort_restore(&self) -> Result<()>;

    /// True between [`Table::begin_restore`] and
    /// [`Table::finish_restore`]/[`Table::abort_restore`]: a staged copy
    /// exists that will replace the live contents. Always false right after
    /// open (an interrupted restore is dropped then).
    fn needs_restore(&self) -> bool;

    /// Hex digest over (key, value, lsn, epoch) in key order plus the entry
    /// count, of the live table; equal contents ⇔ equal digest (w.h.p.),
    /// across backends.
    fn digest(&self) -> Result<String>;

    /// Number of keys in the live table.
    fn len(&self) -> Result<u64>;

    /// True if the table holds no keys.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Backend name for /status: "memory" or "redb".
    fn backend_name(&self) -> &'static str;

    /// Apply records of another node's log (multi-leader): `records[0].lsn`
    /// must be `origin_positions()[origin] + 1` and the slice contiguous
    /// (else `OriginNotContiguous`). The data and the origin's new position
    /// commit in one durable transaction (PostgreSQL's replication
    /// origins), so after a crash the peer resends exactly what is missing.
    /// `applied_lsn` (this node's own log) is untouched.
    fn apply_origin(&self, origin: &str, records: &[Record]) -> Result<()>;

    /// Join whole causal states into the table (a peer's snapshot in
    /// multi-leader) and raise `origin`'s position to `lsn`, durably.
    fn merge_states(&self, origin: &str, entries: &[(String, Versioned)], lsn: Lsn) -> Result<()>;

    /// Per origin, the last LSN of its log applied here (own log excluded:
    /// that is `applied_lsn`).
    fn origin_positions(&self) -> std::collections::BTreeMap<String, Lsn>;

    /// The newest resolved conflicts whose key starts with `prefix`, newest
    /// first, at most `limit`.
    fn conflicts(&self, prefix: &str, limit: usize) -> Result<Vec<replidb_causal::Conflict>>;

    /// Conflict counters since this process started.
    fn causal_stats(&self) -> CausalStats;

    /// `false` only if no causal key (register, counter, set or map written
    /// through the causal path) has ever been stored here, so a plain
    /// write cannot land on a typed key and the writer may skip looking the
    /// key up. A hint that may err only towards `true`: the default.
    fn may_hold_causal_keys(&self) -> bool {
        true
    }
}

/// A frozen view of a table, read in key-ordered chunks.
pub trait TableSnapshot: Send + Sync {
    /// The applied_lsn the view reflects.
    fn lsn(&self) -> Lsn;

    /// Next entries in key order strictly after `start_after` (None = from the
    /// start), at most `max_entries`. Empty = done.
    fn read_chunk(
        &self,
        start_after: Option<&str>,
        max_entries: usize,
    ) -> Result<Vec<(String, Versioned)>> {
        self.read_chunk_bounded(start_after, max_entries, usize::MAX)
    }

    /// Like [`TableSnapshot::read_chunk`], and also stop before the entries'
    /// [`entry_bytes`] would exceed `bytes_max`; the first entry is always
    /// returned, whatever its size, so a chunk is at most
    /// `max(bytes_max, one entry)`.
    fn read_chunk_bounded(
        &self,
        start_after: Option<&str>,
        entries_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<(String, Versioned)>>;
}

/// Bytes an entry's encoding may take beyond its key and value (length
/// prefixes and the varint LSN and epoch of postcard), an upper bound.
pub const ENTRY_OVERHEAD_BYTES: usize = 32;

/// The size [`TableSnapshot::read_chunk_bounded`] counts for one entry: an
/// upper bound on its encoded size.
pub fn entry_bytes(key: &str, value: &Versioned) -> usize {
    key.len() + value.value.len() + ENTRY_OVERHEAD_BYTES
}

/// Whether a chunk of `used` bytes that already holds an entry can take
/// another of `next` bytes within `bytes_max`.
fn fits(chunk_len: usize, used: usize, next: usize, bytes_max: usize) -> bool {
    chunk_len == 0 || used.saturating_add(next) <= bytes_max
}

/// Which table implementation a node uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    /// [`MemoryTable`], persisted by snapshot files.
    Memory,
    /// [`RedbTable`].
    #[default]
    Redb,
}

impl Backend {
    /// The name used on the command line and in /status.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redb => "redb",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend name that is neither "memory" nor "redb".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown storage backend {0:?}: expected \"memory\" or \"redb\"")]
pub struct UnknownBackend(pub String);

impl FromStr for Backend {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "memory" => Ok(Backend::Memory),
            "redb" => Ok(Backend::Redb),
            _ => Err(UnknownBackend(s.to_string())),
        }
    }
}

/// Default limit of the redb backend's page cache, in bytes (redb's own
/// default is 1 GiB). It is most of what a node with a large table keeps
/// in memory: everything else a node holds is bounded per request, per
/// batch or per snapshot chunk, not per key. The OS page cache still holds
/// the file, so a read that misses costs a copy, not a disk read, while
/// memory allows.
pub const TABLE_CACHE_BYTES_DEFAULT: usize = 256 * 1024 * 1024;

/// Open (creating if needed) the persistent table of `backend` in the data
/// directory `dir`: `dir/table.redb` for redb, snapshot files in `dir` for
/// memory. The redb page cache gets [`TABLE_CACHE_BYTES_DEFAULT`].
pub fn open_table(backend: Backend, dir: &Path) -> Result<Arc<dyn Table>> {
    open_table_with_cache(backend, dir, TABLE_CACHE_BYTES_DEFAULT)
}

/// [`open_table`] with the redb page cache limited to `cache_bytes` (the
/// memory backend holds every entry in memory and ignores it).
pub fn open_table_with_cache(
    backend: Backend,
    dir: &Path,
    cache_bytes: usize,
) -> Result<Arc<dyn Table>> {
    std::fs::create_dir_all(dir).map_err(|source| StorageError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(match backend {
        Backend::Memory => Arc::new(MemoryTable::open(dir)?),
        Backend::Redb => Arc::new(RedbTable::open_with_cache(
            &dir.join(REDB_FILE_NAME),
            cache_bytes,
        )?),
    })
}

/// Check that `records` continue gaplessly from `applied`.
fn check_contiguous(applied: Lsn, records: &[Record]) -> Result<()> {
    let mut expected = applied.next();
    for rec in records {
        if rec.lsn != expected {
            return Err(StorageError::NotContiguous {
                expected,
                got: rec.lsn,
            });
        }
        expected = expected.next();
    }
    Ok(())
}

/// Check that restore entries ascend strictly, and come after `last_key`
/// (the largest key restored so far).
fn check_restore_order(last_key: Option<&str>, entries: &[(String, Versioned)]) -> Result<()> {
    let mut prev = last_key;
    for (key, _) in entries {
        if let Some(p) = prev {
            if key.as_str() <= p {
                return Err(StorageError::Corruption(format!(
                    "restore chunk keys not ascending: {key:?} after {p:?}"
                )));
            }
        }
        prev = Some(key);
    }
    Ok(())
}

/// The restore-protocol violation of calling chunk/finish outside a restore.
fn not_restoring(what: &str) -> StorageError {
    StorageError::Corruption(format!("{what} called without begin_restore"))
}

/// One page of [`Table::scan_page`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScanPage {
    /// The entries, in key order.
    pub entries: Vec<(String, Versioned)>,
    /// The page ended because its keys and values reached the byte budget:
    /// more entries may follow its last key even if it holds fewer than
    /// the keys asked for.
    pub cut_by_bytes: bool,
}

impl ScanPage {
    /// Whether entries may follow this page's last key: it is as long as
    /// `keys_max`, or the byte budget ended it. A page for which this is
    /// false ended with the range.
    pub fn may_continue(&self, keys_max: usize) -> bool {
        self.cut_by_bytes || self.entries.len() >= keys_max
    }
}

/// Adds an entry's key and value to a page's running byte count, the
/// measure [`Table::scan_page`]'s budget is in.
pub(crate) fn count_entry(bytes: &mut usize, key: &str, value: &Versioned) {
    *bytes = bytes.saturating_add(key.len() + value.value.len());
}

/// Lower bound for a prefix scan: the later of `prefix` (inclusive) and
/// `start_after` (exclusive).
fn scan_lower_bound<'a>(prefix: &'a str, start_after: Option<&'a str>) -> std::ops::Bound<&'a str> {
    use std::ops::Bound;
    match start_after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_round_trip() {
        for b in [Backend::Memory, Backend::Redb] {
            assert_eq!(b.to_string().parse::<Backend>().unwrap(), b);
        }
        assert_eq!("REDB".parse::<Backend>().unwrap(), Backend::Redb);
        assert!("rocksdb".parse::<Backend>().is_err());
        assert_eq!(Backend::default(), Backend::Redb);
    }

    #[test]
    fn lower_bound_picks_the_later_start() {
        use std::ops::Bound;
        assert_eq!(scan_lower_bound("b", None), Bound::Included("b"));
        assert_eq!(scan_lower_bound("b", Some("a")), Bound::Included("b"));
        assert_eq!(scan_lower_bound("b", Some("b")), Bound::Excluded("b"));
        assert_eq!(scan_lower_bound("b", Some("bz")), Bound::Excluded("bz"));
    }
}
