//! [`RedbTable`]: the table in a redb file.
//!
//! Layout (one file, e.g. `data_dir/table.redb`):
//! - table `data`: `&str -> &[u8]`, the value encoded as
//!   `lsn u64 LE | epoch u64 LE | value bytes`.
//! - table `meta`: `&str -> u64` with `applied_lsn`, `restoring` (0/1),
//!   `checkpoint_lsn` and `format_version`.
//!   The top bit of the epoch field marks a causal state
//!   (`Versioned::causal`); epochs never reach it (`EPOCH_JUMP_MAX`).
//! - table `origins`: `&str -> u64`, per origin the last LSN of its log
//!   applied here (multi-leader), committed with the data it covers.
//! - table `conflicts`: `u64 -> &[u8]`, the conflict log (sequence number →
//!   encoded `replidb_causal::Conflict`), at most
//!   [`CONFLICT_LOG_ENTRIES_MAX`](crate::CONFLICT_LOG_ENTRIES_MAX) newest.
//! - table `restore_staging` (same layout as `data`), only while `restoring`
//!   is 1: the snapshot being installed.
//!
//! Every write transaction updates `data` and `meta.applied_lsn` together, so
//! whatever commit redb recovers to, the file says exactly which log prefix it
//! holds.
//!
//! Restore: `begin_restore` creates an empty `restore_staging` and sets
//! `restoring = 1`; `restore_chunk` writes only there; `finish_restore`, in
//! one transaction, deletes `data`, renames `restore_staging` to `data` and
//! sets `applied_lsn`, `checkpoint_lsn` and `restoring = 0`. Readers run on
//! redb's MVCC snapshots, so until that commit they see the old `data`, after
//! it the new one. `open` drops a leftover `restore_staging`.
//!
//! Memtable: `apply` of plain puts and deletes only records them in a
//! [`Memtable`](crate::memtable) and raises the in-memory `applied_lsn`;
//! they reach `data` (with `meta.applied_lsn`) in one sorted transaction
//! when the memtable reaches its byte limit, and before anything that reads
//! or writes `data` as a whole (a merge, a checkpoint, a snapshot, a digest,
//! a count, a restore). Reads look in the memtable first. So `data` and
//! `meta.applied_lsn` still match at every commit, and what the memtable
//! holds is in the WAL after that LSN.
//!
//! Durability: `apply` and `restore_chunk` commit with [`Durability::None`]:
//! visible to readers at once, no fsync, and after a crash redb reopens at the
//! last durable commit as if they never happened (the WAL replays them; a
//! staged restore is dropped anyway). `checkpoint`, `begin_restore`,
//! `finish_restore`, `abort_restore` and `open` commit with
//! [`Durability::Immediate`] and quick-repair on, which records redb's
//! allocator state in that commit so reopening after a crash does not walk
//! the whole file.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use replidb_core::{Epoch, Lsn, Op, Record, Versioned};

use crate::digest::TableDigest;
use crate::memtable::{Memtable, MEMTABLE_BYTES_DEFAULT};
use crate::{
    check_contiguous, check_restore_order, count_entry, not_restoring, scan_lower_bound, ManyRead,
    Result, ScanPage, StorageError, Table, TableSnapshot,
};

const DATA: TableDefinition<&str, &[u8]> = TableDefinition::new("data");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Where a restore is staged until `finish_restore` renames it to `data`.
const STAGING: TableDefinition<&str, &[u8]> = TableDefinition::new("restore_staging");
const ORIGINS: TableDefinition<&str, u64> = TableDefinition::new("origins");
const CONFLICTS: TableDefinition<u64, &[u8]> = TableDefinition::new("conflicts");
/// Marks a causal state in the stored epoch field.
const CAUSAL_BIT: u64 = 1 << 63;
const _: () = assert!(replidb_core::EPOCH_JUMP_MAX < CAUSAL_BIT / 2);
const META_APPLIED: &str = "applied_lsn";
const META_RESTORING: &str = "restoring";
const META_CHECKPOINT: &str = "checkpoint_lsn";
const META_VERSION: &str = "format_version";
/// 1 once a causal value has been stored (see `Table::may_hold_causal_keys`);
/// never reset. Absent in tables written before it existed.
const META_CAUSAL: &str = "causal_keys";
const FORMAT_VERSION: u64 = 1;
/// Bytes of `lsn | epoch` in front of each stored value.
const VALUE_HEADER: usize = 16;

/// Table stored in a redb file; see the module docs.
pub struct RedbTable {
    /// A read transaction on `data` as of its latest commit, shared by
    /// point reads: `data` changes only when the memtable is flushed (or a
    /// merge, a peer's batch or a restore commits), so a read need not
    /// begin a transaction and open the table (about half of a point
    /// read's instructions). Replaced after every commit to `data`, before
    /// the memtable is emptied or `applied_lsn` moves; it pins at most the
    /// pages of one older commit.
    ///
    /// Declared first so it is dropped before `db`: the database then
    /// closes with no read transaction of ours open.
    view: RwLock<Arc<DataView>>,
    db: Database,
    path: PathBuf,
    /// Mirrors `meta.applied_lsn` of the latest commit, for cheap reads.
    applied: AtomicU64,
    durable: AtomicU64,
    /// Mirrors `meta.restoring`: a staging table exists.
    restoring: AtomicBool,
    /// Serializes write transactions with their contiguity check and the
    /// update of the atomics, so those always match the last commit.
    writer: Mutex<()>,
    /// Mirrors the `origins` table of the latest commit.
    origins: Mutex<std::collections::BTreeMap<String, Lsn>>,
    counters: crate::causal::CausalCounters,
    /// In memory copy of `META_CAUSAL`.
    causal_keys: AtomicBool,
    /// Plain writes applied but not yet in `data`; only the holder of
    /// `writer` changes it.
    mem: RwLock<Memtable>,
    /// Flush the memtable into `data` once it holds this many bytes.
    memtable_bytes_max: usize,
}

/// `data` in a read transaction (the table keeps its transaction alive).
type DataView = ReadOnlyTable<&'static str, &'static [u8]>;

/// Where a redb error came from, for its message.
struct Ctx<'a> {
    path: &'a Path,
    what: &'static str,
}

impl Ctx<'_> {
    fn map<E: Into<redb::Error>>(&self, e: E) -> StorageError {
        match e.into() {
            redb::Error::Io(source) => StorageError::Io {
                path: self.path.to_path_buf(),
                source,
            },
            redb::Error::Corrupted(msg) => {
                StorageError::Corruption(format!("{} ({}): {msg}", self.what, self.path.display()))
            }
            other => {
                StorageError::Backend(format!("{} ({}): {other}", self.what, self.path.display()))
            }
        }
    }
}

fn encode_value(buf: &mut Vec<u8>, value: &[u8], lsn: Lsn, epoch: Epoch, causal: bool) {
    buf.clear();
    buf.extend_from_slice(&lsn.0.to_le_bytes());
    let epoch = if causal {
        epoch.0 | CAUSAL_BIT
    } else {
        epoch.0
    };
    buf.extend_from_slice(&epoch.to_le_bytes());
    buf.extend_from_slice(value);
}

/// Whether `op` is only puts and deletes (no merge), which the memtable
/// can take without reading the key's current state.
fn is_plain(op: &Op) -> bool {
    match op {
        Op::Put { .. } | Op::Delete { .. } => true,
        Op::Merge { .. } => false,
        Op::Batch(ops) => ops.iter().all(is_plain),
    }
}

/// Split a stored value into `(value, lsn, epoch, causal)` without copying.
fn decode_parts<'a>(key: &str, bytes: &'a [u8]) -> Result<(&'a [u8], Lsn, Epoch, bool)> {
    if bytes.len() < VALUE_HEADER {
        return Err(StorageError::Corruption(format!(
            "stored value of key {key:?} is {} bytes, shorter than its {VALUE_HEADER}-byte header",
            bytes.len()
        )));
    }
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&bytes[..8]);
    let mut epoch = [0u8; 8];
    epoch.copy_from_slice(&bytes[8..16]);
    let epoch = u64::from_le_bytes(epoch);
    Ok((
        &bytes[VALUE_HEADER..],
        Lsn(u64::from_le_bytes(lsn)),
        Epoch(epoch & !CAUSAL_BIT),
        epoch & CAUSAL_BIT != 0,
    ))
}

/// [`decode_value`], or with `value` left empty unless `with_value`.
fn decode_versioned(key: &str, bytes: &[u8], with_value: bool) -> Result<Versioned> {
    let (value, lsn, epoch, causal) = decode_parts(key, bytes)?;
    Ok(Versioned {
        value: if with_value {
            value.to_vec()
        } else {
            Vec::new()
        },
        lsn,
        epoch,
        causal,
    })
}

fn decode_value(key: &str, bytes: &[u8]) -> Result<Versioned> {
    let (value, lsn, epoch, causal) = decode_parts(key, bytes)?;
    Ok(Versioned {
        value: value.to_vec(),
        lsn,
        epoch,
        causal,
    })
}

impl RedbTable {
    /// Open or create the table file at `path` (its directory must exist).
    /// The table comes back at its last durable commit. If a restore was
    /// interrupted, its staging table is dropped and the table keeps its old
    /// contents and `applied_lsn`; [`Table::needs_restore`] is false.
    pub fn open(path: &Path) -> Result<RedbTable> {
        Self::open_with_cache(path, crate::TABLE_CACHE_BYTES_DEFAULT)
    }

    /// [`open`](Self::open) with redb's page cache (read cache and write
    /// buffer together) limited to `cache_bytes`. Beyond the cache, reads
    /// go to the file (the OS page cache), so the limit trades the memory
    /// a large table costs against read speed; it does not limit the table.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<RedbTable> {
        Self::open_with_options(path, cache_bytes, MEMTABLE_BYTES_DEFAULT)
    }

    /// [`open_with_cache`](Self::open_with_cache) with the memtable's byte
    /// limit (see the module docs; at least one entry is always held, so
    /// `0` flushes after every apply).
    pub fn open_with_options(
        path: &Path,
        cache_bytes: usize,
        memtable_bytes_max: usize,
    ) -> Result<RedbTable> {
        let ctx = |what| Ctx { path, what };
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| ctx("opening database").map(e))?;
        let mut txn = db
            .begin_write()
            .map_err(|e| ctx("starting open transaction").map(e))?;
        txn.set_quick_repair(true);
        // A staging table only exists while a restore is under way: any
        // found now belongs to one a crash interrupted.
        let staged = txn
            .delete_table(STAGING)
            .map_err(|e| ctx("dropping restore staging table").map(e))?;
        let (applied, legacy_restore) = {
            // Opening a table in a write transaction creates it, so readers
            // can always open both afterwards.
            let mut meta = txn
                .open_table(META)
                .map_err(|e| ctx("opening meta table").map(e))?;
            let read = |meta: &redb::Table<&str, u64>, key| {
                meta.get(key)
                    .map(|g| g.map(|g| g.value()))
                    .map_err(|e| ctx("reading meta table").map(e))
            };
            let write = |meta: &mut redb::Table<&str, u64>, key, value| {
                meta.insert(key, value)
                    .map(drop)
                    .map_err(|e| ctx("writing meta table").map(e))
            };
            match read(&meta, META_VERSION)? {
                None => write(&mut meta, META_VERSION, FORMAT_VERSION)?,
                Some(FORMAT_VERSION) => {}
                Some(v) => {
                    return Err(StorageError::Corruption(format!(
                        "{}: table format version {v}, this build reads {FORMAT_VERSION}",
                        path.display()
                    )))
                }
            }
            let restoring = read(&meta, META_RESTORING)? == Some(1);
            let mut applied = read(&meta, META_APPLIED)?.unwrap_or(0);
            if restoring {
                write(&mut meta, META_RESTORING, 0)?;
            }
            // Marked but nothing staged: written by a build that restored
            // into the data table itself (and set applied_lsn to 0 when it
            // began), so the data table holds part of a snapshot.
            let legacy = restoring && !staged;
            if legacy {
                write(&mut meta, META_APPLIED, 0)?;
                applied = 0;
            }
            if restoring && !legacy {
                tracing::warn!(
                    path = %path.display(),
                    applied_lsn = applied,
                    "interrupted restore found; staged copy dropped, table unchanged"
                );
            }
            (applied, legacy)
        };
        if legacy_restore {
            tracing::warn!(path = %path.display(), "interrupted in-place restore found; table cleared");
            clear_data(&txn, &ctx("clearing data table"))?;
        } else {
            txn.open_table(DATA)
                .map_err(|e| ctx("opening data table").map(e))?;
        }
        // Tables from before the flag: any data may include causal keys.
        let causal_keys = {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| ctx("opening meta table").map(e))?;
            let flag = meta
                .get(META_CAUSAL)
                .map_err(|e| ctx("reading meta table").map(e))?
                .map(|g| g.value());
            match flag {
                Some(v) => v != 0,
                None => {
                    let data = txn
                        .open_table(DATA)
                        .map_err(|e| ctx("opening data table").map(e))?;
                    let any = !data
                        .is_empty()
                        .map_err(|e| ctx("reading data table").map(e))?;
                    meta.insert(META_CAUSAL, u64::from(any))
                        .map_err(|e| ctx("writing meta table").map(e))?;
                    any
                }
            }
        };
        let mut origins = std::collections::BTreeMap::new();
        {
            let t = txn
                .open_table(ORIGINS)
                .map_err(|e| ctx("opening origins table").map(e))?;
            for item in t.iter().map_err(|e| ctx("reading origins").map(e))? {
                let (k, v) = item.map_err(|e| ctx("reading origins").map(e))?;
                origins.insert(k.value().to_string(), Lsn(v.value()));
            }
            txn.open_table(CONFLICTS)
                .map_err(|e| ctx("opening conflicts table").map(e))?;
        }
        txn.commit()
            .map_err(|e| ctx("committing open transaction").map(e))?;
        let view = db
            .begin_read()
            .map_err(|e| ctx("opening the read view").map(e))?
            .open_table(DATA)
            .map_err(|e| ctx("opening the read view").map(e))?;
        Ok(RedbTable {
            db,
            path: path.to_path_buf(),
            applied: AtomicU64::new(applied),
            durable: AtomicU64::new(applied),
            restoring: AtomicBool::new(false),
            writer: Mutex::new(()),
            origins: Mutex::new(origins),
            counters: Default::default(),
            causal_keys: AtomicBool::new(causal_keys),
            mem: RwLock::new(Memtable::default()),
            memtable_bytes_max,
            view: RwLock::new(Arc::new(view)),
        })
    }

    /// Bytes the memtable holds now (see [`MEMTABLE_BYTES_DEFAULT`]).
    pub fn memtable_bytes(&self) -> usize {
        self.mem_read().bytes()
    }

    fn mem_read(&self) -> RwLockReadGuard<'_, Memtable> {
        // Only `writer`'s holder mutates it, between consistent states.
        self.mem.read().unwrap_or_else(|e| e.into_inner())
    }

    fn mem_write(&self) -> RwLockWriteGuard<'_, Memtable> {
        self.mem.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Write the memtable into `data` (with `meta.applied_lsn`) in one
    /// non-durable transaction, then empty it. The caller holds `writer`.
    /// Readers see each key in the memtable until the commit and in `data`
    /// after it: the memtable is emptied only once the commit is visible.
    fn flush_locked(&self) -> Result<()> {
        {
            let mem = self.mem_read();
            if mem.is_empty() {
                return Ok(());
            }
            let txn = self.begin_write(Durability::None)?;
            {
                let mut data = txn
                    .open_table(DATA)
                    .map_err(|e| self.ctx("opening data table").map(e))?;
                for (key, stored) in mem.iter() {
                    let res = match stored {
                        Some(bytes) => data.insert(key, bytes).map(drop),
                        None => data.remove(key).map(drop),
                    };
                    res.map_err(|e| self.ctx("flushing the memtable").map(e))?;
                }
            }
            self.set_meta(&txn, &[(META_APPLIED, self.applied_lsn().0)])?;
            self.commit(txn)?;
            self.refresh_view()?;
        }
        self.mem_write().clear();
        Ok(())
    }

    /// [`flush_locked`](Self::flush_locked), taking `writer`; returns the
    /// guard so the caller can read `data` before another apply.
    fn flush(&self) -> Result<MutexGuard<'_, ()>> {
        let w = self.lock_writer();
        self.flush_locked()?;
        Ok(w)
    }

    /// Apply `records` of plain puts and deletes to the memtable only, and
    /// move the applied LSN to `applied` under the same lock, so a reader
    /// holding the memtable's read lock (`get_many`) sees the two agree.
    fn apply_to_memtable(&self, records: &[Record], applied: Lsn) -> Result<()> {
        // Encode before taking the lock, so readers wait only for the
        // map updates.
        let mut leaves: Vec<(&str, Option<Vec<u8>>)> = Vec::with_capacity(records.len());
        for rec in records {
            rec.op.for_each_leaf(&mut |leaf| match leaf {
                Op::Put { key, value } => {
                    let mut buf = Vec::with_capacity(VALUE_HEADER + value.len());
                    encode_value(&mut buf, value, rec.lsn, rec.epoch, false);
                    leaves.push((key, Some(buf)));
                }
                Op::Delete { key } => leaves.push((key, None)),
                // Callers check `is_plain` first; a batch's leaves are
                // never batches.
                Op::Merge { .. } | Op::Batch(_) => {}
            });
        }
        let mut mem = self.mem_write();
        for (key, stored) in leaves {
            mem.set(key, stored);
        }
        self.applied.store(applied.0, Ordering::Release);
        Ok(())
    }
    /// Bytes redb's page cache holds now (read cache and write buffer), at
    /// most the limit given to [`open_with_cache`](Self::open_with_cache).
    pub fn cache_used_bytes(&self) -> usize {
        self.db.cache_stats().used_bytes()
    }

    /// Apply the leaves of `records` inside `txn`, logging conflicts there.
    fn apply_in(&self, txn: &WriteTransaction, records: &[Record]) -> Result<()> {
        let mut outcomes = Vec::new();
        {
            let mut data = txn
                .open_table(DATA)
                .map_err(|e| self.ctx("opening data table").map(e))?;
            let mut buf = Vec::new();
            let mut failed: Option<StorageError> = None;
            for rec in records {
                rec.op.for_each_leaf(&mut |leaf| {
                    if failed.is_some() {
                        return;
                    }
                    let res = match leaf {
                        Op::Put { key, value } => {
                            encode_value(&mut buf, value, rec.lsn, rec.epoch, false);
                            data.insert(key.as_str(), buf.as_slice()).map(drop)
                        }
                        Op::Delete { key } => data.remove(key.as_str()).map(drop),
                        Op::Merge { key, operand } => {
                            let existing = match data.get(key.as_str()) {
                                Ok(g) => {
                                    match g.map(|g| decode_value(key, g.value())).transpose() {
                                        Ok(v) => v,
                                        Err(e) => {
                                            failed = Some(e);
                                            return;
                                        }
                                    }
                                }
                                Err(e) => {
                                    failed = Some(self.ctx("reading key").map(e));
                                    return;
                                }
                            };
                            match crate::causal::merge_leaf(
                                key, existing, operand, rec.lsn, rec.epoch,
                            ) {
                                Some(out) => {
                                    encode_value(
                                        &mut buf,
                                        &out.value.value,
                                        rec.lsn,
                                        rec.epoch,
                                        true,
                                    );
                                    let r = data.insert(key.as_str(), buf.as_slice()).map(drop);
                                    outcomes.push(out);
                                    r
                                }
                                None => Ok(()),
                            }
                        }
                        // for_each_leaf never yields a batch.
                        Op::Batch(_) => Ok(()),
                    };
                    if let Err(e) = res {
                        failed = Some(self.ctx("applying records").map(e));
                    }
                });
                if let Some(e) = failed.take() {
                    // Dropping the uncommitted transaction aborts it.
                    return Err(e);
                }
            }
        }
        self.log_conflicts(txn, &outcomes)?;
        if !outcomes.is_empty() {
            self.note_causal(txn)?;
        }
        for out in &outcomes {
            self.counters.note(out);
        }
        Ok(())
    }

    /// Record in `txn` that a causal value is stored (once per table).
    fn note_causal(&self, txn: &WriteTransaction) -> Result<()> {
        if !self.causal_keys.load(Ordering::Acquire) {
            self.set_meta(txn, &[(META_CAUSAL, 1)])?;
            // Set before the commit: a flag that is true too early only
            // costs the writer a lookup.
            self.causal_keys.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Append the conflicts of `outcomes` to the conflict log in `txn`.
    fn log_conflicts(
        &self,
        txn: &WriteTransaction,
        outcomes: &[crate::causal::LeafOutcome],
    ) -> Result<()> {
        if outcomes.iter().all(|o| o.conflicts.is_empty()) {
            return Ok(());
        }
        let mut log = txn
            .open_table(CONFLICTS)
            .map_err(|e| self.ctx("opening conflicts table").map(e))?;
        let first = log
            .last()
            .map_err(|e| self.ctx("reading conflicts").map(e))?
            .map(|(k, _)| k.value() + 1)
            .unwrap_or(1);
        for (seq, c) in (first..).zip(outcomes.iter().flat_map(|o| &o.conflicts)) {
            log.insert(seq, c.encode().as_slice())
                .map_err(|e| self.ctx("logging conflict").map(e))?;
        }
        let len = log
            .len()
            .map_err(|e| self.ctx("counting conflicts").map(e))?;
        let excess = len.saturating_sub(crate::CONFLICT_LOG_ENTRIES_MAX as u64);
        for _ in 0..excess {
            log.pop_first()
                .map_err(|e| self.ctx("trimming conflicts").map(e))?;
        }
        Ok(())
    }

    /// Raise `origin`'s position to `lsn` inside `txn`.
    fn set_origin(&self, txn: &WriteTransaction, origin: &str, lsn: Lsn) -> Result<()> {
        let mut t = txn
            .open_table(ORIGINS)
            .map_err(|e| self.ctx("opening origins table").map(e))?;
        t.insert(origin, lsn.0)
            .map_err(|e| self.ctx("writing origins").map(e))?;
        Ok(())
    }

    fn ctx(&self, what: &'static str) -> Ctx<'_> {
        Ctx {
            path: &self.path,
            what,
        }
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        // A panic while holding it leaves at most an aborted transaction.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn begin_write(&self, durability: Durability) -> Result<WriteTransaction> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| self.ctx("starting write transaction").map(e))?;
        if matches!(durability, Durability::Immediate) {
            // Durable commits record the allocator state, so reopening after
            // a crash (which lands on the last durable commit) skips the
            // full-file repair.
            txn.set_quick_repair(true);
        }
        txn.set_durability(durability)
            .map_err(|e| self.ctx("setting durability").map(e))?;
        Ok(txn)
    }

    fn set_meta(&self, txn: &WriteTransaction, entries: &[(&str, u64)]) -> Result<()> {
        let mut meta = txn
            .open_table(META)
            .map_err(|e| self.ctx("opening meta table").map(e))?;
        for (k, v) in entries {
            meta.insert(*k, *v)
                .map_err(|e| self.ctx("writing meta table").map(e))?;
        }
        Ok(())
    }

    fn commit(&self, txn: WriteTransaction) -> Result<()> {
        txn.commit().map_err(|e| self.ctx("committing").map(e))
    }

    /// Replace the shared read view with one of `data`'s latest commit.
    /// Called after every commit that changes `data`.
    fn refresh_view(&self) -> Result<()> {
        self.refresh_view_at(None)
    }

    /// [`refresh_view`](Self::refresh_view), moving the applied LSN to
    /// `applied` under the view's write lock: a reader that takes the view
    /// and reads the applied LSN under its read lock (`get_many`) sees the
    /// two agree.
    fn refresh_view_at(&self, applied: Option<Lsn>) -> Result<()> {
        let (_txn, table) = self.read_data()?;
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        *view = Arc::new(table);
        if let Some(lsn) = applied {
            self.applied.store(lsn.0, Ordering::Release);
        }
        Ok(())
    }

    fn read_data(&self) -> Result<(ReadTransaction, ReadOnlyTable<&'static str, &'static [u8]>)> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.ctx("starting read transaction").map(e))?;
        let table = txn
            .open_table(DATA)
            .map_err(|e| self.ctx("opening data table").map(e))?;
        Ok((txn, table))
    }
}

/// Empty the data table (delete and recreate: cheaper than removing keys).
fn clear_data(txn: &WriteTransaction, ctx: &Ctx<'_>) -> Result<()> {
    clear_table(txn, DATA, ctx)
}

/// Empty (creating if needed) `table`: delete and recreate.
fn clear_table(
    txn: &WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    ctx: &Ctx<'_>,
) -> Result<()> {
    txn.delete_table(table).map_err(|e| ctx.map(e))?;
    txn.open_table(table).map_err(|e| ctx.map(e))?;
    Ok(())
}

impl Table for RedbTable {
    fn apply(&self, records: &[Record]) -> Result<()> {
        let _w = self.lock_writer();
        let Some(last) = records.last() else {
            return Ok(());
        };
        check_contiguous(self.applied_lsn(), records)?;
        if records.iter().all(|r| is_plain(&r.op)) {
            self.apply_to_memtable(records, last.lsn)?;
            let full = self.mem_read().bytes() >= self.memtable_bytes_max;
            if full {
                self.flush_locked()?;
            }
            return Ok(());
        }
        // A merge reads the key's current state from `data`.
        self.flush_locked()?;
        // The WAL is the durable copy, so no fsync here; a crash rolls the
        // file back to the last checkpoint and the WAL tail is replayed.
        let txn = self.begin_write(Durability::None)?;
        self.apply_in(&txn, records)?;
        self.set_meta(&txn, &[(META_APPLIED, last.lsn.0)])?;
        self.commit(txn)?;
        self.refresh_view_at(Some(last.lsn))?;
        Ok(())
    }

    fn apply_origin(&self, origin: &str, records: &[Record]) -> Result<()> {
        let _w = self.lock_writer();
        let Some(last) = records.last() else {
            return Ok(());
        };
        let applied = self
            .origin_positions()
            .get(origin)
            .copied()
            .unwrap_or_default();
        crate::causal::check_origin_contiguous(origin, applied, records)?;
        self.flush_locked()?;
        // These records are in no local WAL: this commit is their only
        // durable copy here, so it is fsynced (and makes every earlier
        // commit durable with it).
        let txn = self.begin_write(Durability::Immediate)?;
        self.apply_in(&txn, records)?;
        self.set_origin(&txn, origin, last.lsn)?;
        self.commit(txn)?;
        self.refresh_view()?;
        self.origins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(origin.to_string(), last.lsn);
        Ok(())
    }

    fn merge_states(&self, origin: &str, entries: &[(String, Versioned)], lsn: Lsn) -> Result<()> {
        let _w = self.lock_writer();
        self.flush_locked()?;
        let records: Vec<Record> = entries
            .iter()
            .filter(|(_, v)| v.causal)
            .filter_map(|(key, v)| {
                let state = replidb_causal::KeyState::decode(&v.value).ok()?;
                Some(Record {
                    lsn: v.lsn,
                    epoch: v.epoch,
                    hlc: Default::default(),
                    op: Op::Merge {
                        key: key.clone(),
                        operand: replidb_causal::Operand::State(state).encode(),
                    },
                })
            })
            .collect();
        let txn = self.begin_write(Durability::Immediate)?;
        self.apply_in(&txn, &records)?;
        let current = self
            .origin_positions()
            .get(origin)
            .copied()
            .unwrap_or_default();
        let lsn = current.max(lsn);
        self.set_origin(&txn, origin, lsn)?;
        self.commit(txn)?;
        self.refresh_view()?;
        self.origins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(origin.to_string(), lsn);
        Ok(())
    }

    fn origin_positions(&self) -> std::collections::BTreeMap<String, Lsn> {
        self.origins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn conflicts(&self, prefix: &str, limit: usize) -> Result<Vec<replidb_causal::Conflict>> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.ctx("starting read transaction").map(e))?;
        let log = txn
            .open_table(CONFLICTS)
            .map_err(|e| self.ctx("opening conflicts table").map(e))?;
        let mut out = Vec::new();
        for item in log
            .iter()
            .map_err(|e| self.ctx("reading conflicts").map(e))?
            .rev()
        {
            if out.len() >= limit {
                break;
            }
            let (_, v) = item.map_err(|e| self.ctx("reading conflicts").map(e))?;
            match replidb_causal::Conflict::decode(v.value()) {
                Ok(c) if c.key.starts_with(prefix) => out.push(c),
                Ok(_) => {}
                Err(e) => return Err(StorageError::Corruption(format!("conflict log: {e}"))),
            }
        }
        Ok(out)
    }

    fn causal_stats(&self) -> crate::CausalStats {
        self.counters.read()
    }

    fn may_hold_causal_keys(&self) -> bool {
        self.causal_keys.load(Ordering::Acquire)
    }

    fn get(&self, key: &str) -> Result<Option<Versioned>> {
        if let Some(stored) = self.mem_read().get(key) {
            return stored.map(|b| decode_value(key, b)).transpose();
        }
        // Not in the memtable: the view holds the key's newest applied
        // state (a flush replaces the view before it empties the
        // memtable), or a newer one flushed since, never an older one.
        let view = self.view.read().unwrap_or_else(|e| e.into_inner()).clone();
        let guard = view.get(key).map_err(|e| self.ctx("reading key").map(e))?;
        guard.map(|g| decode_value(key, g.value())).transpose()
    }

    fn get_many(&self, keys: &[&str], values: bool, bytes_max: usize) -> Result<ManyRead> {
        // As `scan_page`: the memtable's read lock, held while the view is
        // taken and read, pins one applied state. A plain round updates
        // the memtable and the applied LSN under its write lock in one go;
        // a round with merges first flushes (which needs that lock), then
        // replaces the view and the applied LSN under the view's lock.
        let mem = self.mem_read();
        let (view, applied) = {
            let guard = self.view.read().unwrap_or_else(|e| e.into_inner());
            (guard.clone(), self.applied_lsn())
        };
        let mut read = ManyRead::new(applied, keys.len());
        for key in keys {
            let found = match mem.get(key) {
                Some(stored) => stored
                    .map(|b| decode_versioned(key, b, values))
                    .transpose()?,
                None => view
                    .get(*key)
                    .map_err(|e| self.ctx("reading key").map(e))?
                    .map(|g| decode_versioned(key, g.value(), values))
                    .transpose()?,
            };
            if !read.push_within(found, bytes_max) {
                break;
            }
        }
        Ok(read)
    }

    fn scan_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        keys_max: usize,
        bytes_max: usize,
    ) -> Result<ScanPage> {
        let mut out = Vec::new();
        if keys_max == 0 {
            return Ok(ScanPage::default());
        }
        let mut bytes = 0usize;
        // Holding the memtable's read lock while `data` is opened and
        // read pins one applied state: an apply waits for the lock, and a
        // flush commits only what the memtable already shows.
        let mem = self.mem_read();
        let (_txn, table) = self.read_data()?;
        let lower = scan_lower_bound(prefix, start_after);
        let mut stored = table
            .range::<&str>((lower, Bound::Unbounded))
            .map_err(|e| self.ctx("scanning").map(e))?
            .map(|item| {
                item.map(|(k, v)| (k.value().to_string(), v.value().to_vec()))
                    .map_err(|e| self.ctx("scanning").map(e))
            })
            .take_while(|item| item.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
            .peekable();
        let mut recent = mem
            .range(lower)
            .take_while(|(k, _)| k.starts_with(prefix))
            .peekable();
        while out.len() < keys_max {
            if bytes >= bytes_max {
                return Ok(ScanPage {
                    entries: out,
                    cut_by_bytes: true,
                });
            }
            let from_mem = match (recent.peek(), stored.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((mk, _)), Some(Ok((dk, _)))) => *mk <= dk.as_str(),
                (Some(_), Some(Err(_))) => false,
            };
            if from_mem {
                let Some((key, value)) = recent.next() else {
                    break;
                };
                // The memtable's entry replaces (or deletes) the file's.
                if matches!(stored.peek(), Some(Ok((dk, _))) if dk == key) {
                    stored.next();
                }
                if let Some(stored_bytes) = value {
                    let value = decode_value(key, stored_bytes)?;
                    count_entry(&mut bytes, key, &value);
                    out.push((key.to_string(), value));
                }
            } else if let Some(item) = stored.next() {
                let (key, stored_bytes) = item?;
                let value = decode_value(&key, &stored_bytes)?;
                count_entry(&mut bytes, &key, &value);
                out.push((key, value));
            }
        }
        Ok(ScanPage {
            entries: out,
            cut_by_bytes: false,
        })
    }

    fn applied_lsn(&self) -> Lsn {
        Lsn(self.applied.load(Ordering::Acquire))
    }

    fn durable_lsn(&self) -> Lsn {
        Lsn(self.durable.load(Ordering::Acquire))
    }

    fn checkpoint(&self) -> Result<Lsn> {
        let _w = self.flush()?;
        let applied = self.applied_lsn();
        // A staged restore needs no checkpoint: it is dropped on open
        // unless finished, and finishing is durable by itself.
        if applied == self.durable_lsn() {
            return Ok(applied);
        }
        // An Immediate commit makes every earlier Durability::None commit
        // durable with it. Writing checkpoint_lsn keeps the commit non-empty.
        let txn = self.begin_write(Durability::Immediate)?;
        self.set_meta(&txn, &[(META_CHECKPOINT, applied.0)])?;
        self.commit(txn)?;
        self.durable.store(applied.0, Ordering::Release);
        Ok(applied)
    }

    fn snapshot(&self) -> Result<Box<dyn TableSnapshot>> {
        // The snapshot reads `data` alone: flush, and open the read
        // transaction before another apply can start.
        let w = self.flush()?;
        let (txn, data) = self.read_data()?;
        drop(w);
        // Read the LSN in the same transaction as the data, not from the
        // atomic: an apply may commit between begin_read and the load.
        let meta = txn
            .open_table(META)
            .map_err(|e| self.ctx("opening meta table").map(e))?;
        let lsn = meta
            .get(META_APPLIED)
            .map_err(|e| self.ctx("reading meta table").map(e))?
            .map_or(0, |g| g.value());
        Ok(Box::new(RedbSnapshot {
            _txn: txn,
            data,
            lsn: Lsn(lsn),
            path: self.path.clone(),
        }))
    }

    fn begin_restore(&self) -> Result<()> {
        let _w = self.flush()?;
        let txn = self.begin_write(Durability::Immediate)?;
        clear_table(&txn, STAGING, &self.ctx("clearing restore staging table"))?;
        self.set_meta(&txn, &[(META_RESTORING, 1)])?;
        self.commit(txn)?;
        self.restoring.store(true, Ordering::Release);
        Ok(())
    }

    fn restore_chunk(&self, entries: &[(String, Versioned)]) -> Result<()> {
        let _w = self.lock_writer();
        if !self.restoring.load(Ordering::Acquire) {
            return Err(not_restoring("restore_chunk"));
        }
        // Not durable: a crash drops the staging table anyway.
        let txn = self.begin_write(Durability::None)?;
        {
            let mut staging = txn
                .open_table(STAGING)
                .map_err(|e| self.ctx("opening restore staging table").map(e))?;
            let last = staging
                .last()
                .map_err(|e| self.ctx("reading last staged key").map(e))?
                .map(|(k, _)| k.value().to_string());
            check_restore_order(last.as_deref(), entries)?;
            let mut buf = Vec::new();
            for (key, v) in entries {
                encode_value(&mut buf, &v.value, v.lsn, v.epoch, v.causal);
                staging
                    .insert(key.as_str(), buf.as_slice())
                    .map_err(|e| self.ctx("staging restore entries").map(e))?;
            }
        }
        if entries.iter().any(|(_, v)| v.causal) {
            self.note_causal(&txn)?;
        }
        self.commit(txn)
    }

    fn finish_restore(&self, lsn: Lsn) -> Result<()> {
        let _w = self.lock_writer();
        if !self.restoring.load(Ordering::Acquire) {
            return Err(not_restoring("finish_restore"));
        }
        // One durable transaction: readers see the old data table up to
        // this commit and the restored one after it, and a crash leaves
        // one or the other.
        // Readers wait on the memtable while the restored table is swapped
        // in, so none sees a memtable entry over the restored data. A
        // restore replaces the whole state, memtable included.
        let mut mem = self.mem_write();
        let txn = self.begin_write(Durability::Immediate)?;
        let swap = self.ctx("swapping in the restored table");
        txn.delete_table(DATA).map_err(|e| swap.map(e))?;
        txn.rename_table(STAGING, DATA).map_err(|e| swap.map(e))?;
        self.set_meta(
            &txn,
            &[
                (META_APPLIED, lsn.0),
                (META_RESTORING, 0),
                (META_CHECKPOINT, lsn.0),
            ],
        )?;
        self.commit(txn)?;
        self.refresh_view()?;
        mem.clear();
        // Under the memtable's write lock, as every apply's.
        self.applied.store(lsn.0, Ordering::Release);
        drop(mem);
        self.durable.store(lsn.0, Ordering::Release);
        self.restoring.store(false, Ordering::Release);
        Ok(())
    }

    fn abort_restore(&self) -> Result<()> {
        let _w = self.lock_writer();
        if !self.restoring.load(Ordering::Acquire) {
            return Ok(());
        }
        let txn = self.begin_write(Durability::Immediate)?;
        txn.delete_table(STAGING)
            .map_err(|e| self.ctx("dropping restore staging table").map(e))?;
        self.set_meta(&txn, &[(META_RESTORING, 0)])?;
        self.commit(txn)?;
        self.restoring.store(false, Ordering::Release);
        Ok(())
    }

    fn needs_restore(&self) -> bool {
        self.restoring.load(Ordering::Acquire)
    }

    fn digest(&self) -> Result<String> {
        let w = self.flush()?;
        let (_txn, table) = self.read_data()?;
        drop(w);
        let mut d = TableDigest::new();
        let range = table
            .range::<&str>(..)
            .map_err(|e| self.ctx("digesting").map(e))?;
        for item in range {
            let (k, v) = item.map_err(|e| self.ctx("digesting").map(e))?;
            let key = k.value();
            let (value, lsn, epoch, causal) = decode_parts(key, v.value())?;
            let (bytes, lsn, epoch) = crate::causal::digest_parts(value, lsn, epoch, causal);
            d.entry(key, &bytes, lsn, epoch);
        }
        Ok(d.finish())
    }

    fn len(&self) -> Result<u64> {
        let w = self.flush()?;
        let (_txn, table) = self.read_data()?;
        drop(w);
        table.len().map_err(|e| self.ctx("counting keys").map(e))
    }

    fn backend_name(&self) -> &'static str {
        "redb"
    }
}

impl Drop for RedbTable {
    /// Write the memtable into the file on a clean close, as the
    /// non-durable commits of `apply` were before it existed (redb keeps
    /// them when the database is dropped). Not needed for correctness: the
    /// WAL replays whatever a crash loses.
    fn drop(&mut self) {
        if let Err(e) = self.flush_locked() {
            tracing::warn!(path = %self.path.display(), error = %e, "flushing the memtable on close");
        }
    }
}

/// A redb read transaction held open: redb's MVCC keeps its pages alive, so
/// the view never changes.
struct RedbSnapshot {
    // Kept alongside the table so the view's lifetime is explicit, even
    // though the table's own guard would keep the transaction alive.
    _txn: ReadTransaction,
    data: ReadOnlyTable<&'static str, &'static [u8]>,
    lsn: Lsn,
    path: PathBuf,
}

impl TableSnapshot for RedbSnapshot {
    fn lsn(&self) -> Lsn {
        self.lsn
    }

    fn read_chunk_bounded(
        &self,
        start_after: Option<&str>,
        entries_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<(String, Versioned)>> {
        let ctx = Ctx {
            path: &self.path,
            what: "reading snapshot",
        };
        let mut out = Vec::new();
        if entries_max == 0 {
            return Ok(out);
        }
        let mut used = 0usize;
        let lower = start_after.map_or(Bound::Unbounded, Bound::Excluded);
        let range = self
            .data
            .range::<&str>((lower, Bound::Unbounded))
            .map_err(|e| ctx.map(e))?;
        for item in range {
            let (k, v) = item.map_err(|e| ctx.map(e))?;
            let key = k.value();
            let raw = v.value();
            // The stored encoding holds the value and more: an upper bound,
            // known before decoding (and copying) a large value.
            let n = key.len() + raw.len() + crate::ENTRY_OVERHEAD_BYTES;
            if !crate::fits(out.len(), used, n, bytes_max) {
                break;
            }
            used += n;
            out.push((key.to_string(), decode_value(key, raw)?));
            if out.len() >= entries_max {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(lsn: u64, key: &str) -> Record {
        Record {
            lsn: Lsn(lsn),
            epoch: Epoch(1),
            hlc: Default::default(),
            op: Op::Put {
                key: key.into(),
                value: b"v".to_vec(),
            },
        }
    }

    fn put_sized(lsn: u64, key: &str, value_bytes: usize) -> Record {
        Record {
            lsn: Lsn(lsn),
            epoch: Epoch(1),
            hlc: Default::default(),
            op: Op::Put {
                key: key.into(),
                value: vec![(lsn % 251) as u8; value_bytes],
            },
        }
    }

    /// `get_many` answers in the keys' order, from the memtable and the
    /// B-tree alike (a key flushed, then rewritten or deleted in the
    /// memtable), as `get` does key by key.
    #[test]
    fn get_many_reads_the_memtable_over_the_b_tree() {
        let dir = tempfile::tempdir().unwrap();
        let t = RedbTable::open(&dir.path().join(crate::REDB_FILE_NAME)).unwrap();
        t.apply(&[put(1, "a"), put(2, "b"), put(3, "c")]).unwrap();
        drop(t.flush().unwrap());
        let delete_b = Record {
            lsn: Lsn(5),
            epoch: Epoch(1),
            hlc: Default::default(),
            op: Op::Delete { key: "b".into() },
        };
        t.apply(&[put(4, "c"), delete_b, put(6, "d")]).unwrap();
        let keys = ["d", "c", "b", "a", "none", "a"];
        let many = t.get_many(&keys, true, usize::MAX).unwrap();
        assert_eq!(many.applied, Lsn(6));
        assert!(!many.cut);
        let one: Vec<_> = keys.iter().map(|k| t.get(k).unwrap()).collect();
        assert_eq!(many.entries, one);
        let lsns: Vec<_> = many
            .entries
            .iter()
            .map(|v| v.as_ref().map(|v| v.lsn.0))
            .collect();
        assert_eq!(lsns, [Some(6), Some(4), None, Some(1), None, Some(1)]);
        // Presence only: no value copied.
        let bare = t.get_many(&keys, false, 0).unwrap();
        assert!(!bare.cut);
        let lsns: Vec<_> = bare
            .entries
            .iter()
            .map(|v| v.as_ref().map(|v| (v.lsn.0, v.value.len())))
            .collect();
        assert_eq!(
            lsns,
            [
                Some((6, 0)),
                Some((4, 0)),
                None,
                Some((1, 0)),
                None,
                Some((1, 0))
            ]
        );
        // A byte limit stops the read at the key that passes it ("v" is 1 byte).
        let cut = t.get_many(&keys, true, 2).unwrap();
        assert!(cut.cut);
        assert_eq!(
            cut.entries.len(),
            3,
            "d, c, then b (absent); a passes 2 bytes"
        );
    }

    /// Readers racing applies through a memtable that flushes on every
    /// round (the B-tree view and the applied LSN change at each), and a
    /// round with merges: every `get_many` sees one whole round, and never
    /// a round past the applied LSN it reports.
    #[test]
    fn get_many_sees_whole_rounds_while_rounds_flush() {
        const KEYS: usize = 8;
        let dir = tempfile::tempdir().unwrap();
        let t = Arc::new(
            RedbTable::open_with_options(&dir.path().join(crate::REDB_FILE_NAME), 1 << 20, 0)
                .unwrap(),
        );
        let names: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
        let round = |first: u64| -> Vec<Record> {
            (0..KEYS as u64)
                .map(|i| put_sized(first + i, &format!("k{i}"), 1))
                .collect()
        };
        t.apply(&round(1)).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (t, stop, names) = (t.clone(), stop.clone(), names.clone());
            std::thread::spawn(move || {
                let keys: Vec<&str> = names.iter().map(String::as_str).collect();
                let mut reads = 0;
                while !stop.load(Ordering::Acquire) {
                    let r = t.get_many(&keys, true, usize::MAX).unwrap();
                    let lsns: Vec<u64> = r
                        .entries
                        .iter()
                        .map(|v| v.as_ref().unwrap().lsn.0)
                        .collect();
                    // One round: keys written at first, first+1, ... first+KEYS-1.
                    let first = lsns[0];
                    for (i, l) in lsns.iter().enumerate() {
                        assert_eq!(*l, first + i as u64, "a torn read: {lsns:?}");
                    }
                    assert!(
                        lsns[KEYS - 1] <= r.applied.0,
                        "saw {lsns:?} past the applied LSN {}",
                        r.applied
                    );
                    reads += 1;
                }
                reads
            })
        };
        for n in 1..300u64 {
            t.apply(&round(1 + n * KEYS as u64)).unwrap();
        }
        stop.store(true, Ordering::Release);
        assert!(reader.join().unwrap() > 0);
    }

    /// A table many times its page cache is written, read whole as a
    /// snapshot in bounded chunks, digested, and restored into a second
    /// table with the same limit: neither cache ever holds more than its
    /// limit (redb's default would have kept the whole table, about 16
    /// times the limit here), and every chunk stays within its bounds.
    #[test]
    fn a_table_larger_than_the_cache_stays_within_the_cache_limit() {
        const CACHE: usize = 1 << 20;
        const KEYS: u64 = 16_000;
        const VALUE: usize = 1000;
        let dir = tempfile::tempdir().unwrap();
        let within = |t: &RedbTable| {
            let used = t.cache_used_bytes();
            assert!(used <= CACHE, "cache holds {used} bytes, limit {CACHE}");
        };
        let src = RedbTable::open_with_cache(&dir.path().join("src.redb"), CACHE).unwrap();
        let mut lsn = 0;
        while lsn < KEYS {
            let batch: Vec<Record> = (lsn + 1..=(lsn + 500).min(KEYS))
                .map(|l| put_sized(l, &format!("key:{l:08}"), VALUE))
                .collect();
            lsn += batch.len() as u64;
            src.apply(&batch).unwrap();
            within(&src);
        }
        src.checkpoint().unwrap();

        let dst = RedbTable::open_with_cache(&dir.path().join("dst.redb"), CACHE).unwrap();
        dst.begin_restore().unwrap();
        let snap = src.snapshot().unwrap();
        let (entries_max, bytes_max) = (300, 64 * 1024);
        let (mut after, mut total, mut chunks) = (None::<String>, 0u64, 0);
        loop {
            let chunk = snap
                .read_chunk_bounded(after.as_deref(), entries_max, bytes_max)
                .unwrap();
            let Some(last) = chunk.last() else { break };
            after = Some(last.0.clone());
            let bytes: usize = chunk.iter().map(|(k, v)| crate::entry_bytes(k, v)).sum();
            assert!(
                chunk.len() <= entries_max && bytes <= bytes_max,
                "{bytes} bytes"
            );
            total += chunk.len() as u64;
            chunks += 1;
            dst.restore_chunk(&chunk).unwrap();
            within(&src);
            within(&dst);
        }
        assert_eq!(total, KEYS);
        assert!(
            chunks >= (KEYS as usize * VALUE) / bytes_max,
            "{chunks} chunks"
        );
        dst.finish_restore(snap.lsn()).unwrap();
        assert_eq!(dst.digest().unwrap(), src.digest().unwrap());
        within(&src);
        within(&dst);
        assert_eq!(dst.len().unwrap(), KEYS);
    }

    /// A file left by a build that restored into the data table itself:
    /// marked restoring, applied_lsn 0, part of a snapshot in `data`, no
    /// staging table. It must not reopen as a table that claims LSN 0 yet
    /// holds keys.
    #[test]
    fn interrupted_in_place_restore_reopens_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::REDB_FILE_NAME);
        drop(RedbTable::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(META_APPLIED, 0).unwrap();
                meta.insert(META_RESTORING, 1).unwrap();
                let mut data = txn.open_table(DATA).unwrap();
                let mut buf = Vec::new();
                encode_value(&mut buf, b"half", Lsn(9), Epoch(1), false);
                data.insert("a", buf.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let t = RedbTable::open(&path).unwrap();
        assert!(!t.needs_restore());
        assert_eq!(t.applied_lsn(), Lsn(0));
        assert!(t.is_empty().unwrap());
        t.apply(&[put(1, "k")]).unwrap();
        drop(t);
        let t = RedbTable::open(&path).unwrap();
        assert_eq!(t.get("k").unwrap().map(|v| v.lsn), Some(Lsn(1)));
    }

    fn counter(lsn: u64, key: &str) -> Record {
        let stamp = replidb_causal::WriteStamp {
            origin: "n1".into(),
            lsn,
            hlc: Default::default(),
        };
        let operand = replidb_causal::prepare(
            key,
            None,
            replidb_causal::CausalWrite::Counter { delta: 1 },
            replidb_causal::Policy::Lww,
            &stamp,
        )
        .unwrap();
        Record {
            lsn: Lsn(lsn),
            epoch: Epoch(1),
            hlc: Default::default(),
            op: Op::Merge {
                key: key.into(),
                operand: operand.encode(),
            },
        }
    }

    /// The writer skips its typed-key lookup while this is false, so it
    /// must turn true with the first causal value, stay true across a
    /// restart, and be true for a non-empty table written before the flag.
    #[test]
    fn causal_keys_flag_is_never_false_while_a_causal_key_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::REDB_FILE_NAME);
        let t = RedbTable::open(&path).unwrap();
        assert!(!t.may_hold_causal_keys());
        t.apply(&[put(1, "plain")]).unwrap();
        assert!(!t.may_hold_causal_keys());
        t.apply(&[counter(2, "likes")]).unwrap();
        assert!(t.may_hold_causal_keys());
        drop(t);
        let t = RedbTable::open(&path).unwrap();
        assert!(t.may_hold_causal_keys());
        drop(t);

        // A table from before the flag: no meta entry, data present.
        let old = dir.path().join("old.redb");
        drop(RedbTable::open(&old).unwrap());
        {
            let db = Database::create(&old).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.remove(META_CAUSAL).unwrap();
                let mut data = txn.open_table(DATA).unwrap();
                let mut buf = Vec::new();
                encode_value(&mut buf, b"?", Lsn(0), Epoch(1), true);
                data.insert("a", buf.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        assert!(RedbTable::open(&old).unwrap().may_hold_causal_keys());

        // A snapshot carrying a causal value, staged then installed.
        let fresh = RedbTable::open(&dir.path().join("fresh.redb")).unwrap();
        fresh.begin_restore().unwrap();
        let v = Versioned {
            value: b"state".to_vec(),
            lsn: Lsn(3),
            epoch: Epoch(1),
            causal: true,
        };
        fresh.restore_chunk(&[("likes".to_string(), v)]).unwrap();
        fresh.finish_restore(Lsn(3)).unwrap();
        assert!(fresh.may_hold_causal_keys());
    }
}
