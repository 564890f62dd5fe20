//! [`MemoryTable`]: a `BTreeMap` behind a lock, optionally persisted as a
//! snapshot file written on every checkpoint.
//!
//! The map lives in an `Arc` so that a snapshot, a digest or a checkpoint can
//! take the current version in O(1) and work on it without holding the lock.
//! The applier mutates in place while nobody else holds the `Arc`; while a
//! snapshot does, the next apply copies the map once (outside the lock, so
//! readers never wait for the copy) and carries on with its own copy.
//!
//! On disk (only with [`MemoryTable::open`]), in the data directory:
//! - `table.snapshot`: `MAGIC (8 bytes) | crc32c(payload) u32 LE |
//!   payload length u64 LE | payload`, payload = postcard of
//!   `(applied_lsn, map)`. Written to `table.snapshot.tmp`, fsynced, renamed
//!   over, and the directory fsynced, so a crash leaves either the old or the
//!   new file, never a torn one.
//! - `table.restoring`: an empty marker present from `begin_restore` until
//!   `finish_restore` or `abort_restore`. The restore itself is staged in a
//!   second map in memory, beside the live one; `finish_restore` writes it as
//!   the new `table.snapshot` (the atomic rename is the durable switch), then
//!   swaps it in as the live map, then removes the marker. A marker found on
//!   open only means a restore was cut off: the snapshot file still holds a
//!   consistent state (the old one, or the new one if the crash came after
//!   the rename), which is loaded as usual, and the marker is removed.

use std::collections::BTreeMap;
use std::fs;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use replidb_core::{Lsn, Op, Record, Versioned};
use serde::{Deserialize, Serialize};

use crate::digest::TableDigest;
use crate::{
    check_contiguous, check_restore_order, count_entry, not_restoring, scan_lower_bound, ManyRead,
    Result, ScanPage, StorageError, Table, TableSnapshot,
};

type Map = BTreeMap<String, Versioned>;

const SNAPSHOT_FILE: &str = "table.snapshot";
const SNAPSHOT_TMP: &str = "table.snapshot.tmp";
const RESTORING_MARKER: &str = "table.restoring";
const MAGIC: &[u8; 8] = b"RDBMEMT1";
const HEADER_LEN: usize = 8 + 4 + 8;

/// In-memory table; see the module docs.
pub struct MemoryTable {
    /// The current map. `applied` is only stored while this is write-locked,
    /// so reading both under one read lock gives a consistent pair.
    map: RwLock<Arc<Map>>,
    applied: AtomicU64,
    durable: AtomicU64,
    /// True while `writer` holds a staged restore (readable without it).
    restoring: AtomicBool,
    /// Serializes writers (apply and restore), so contiguity checks and the
    /// copy-on-write decision see a map nobody else is changing. Holds the
    /// staged restore, if one is under way: only writers touch it, and
    /// readers never see it.
    writer: Mutex<Option<Map>>,
    /// Serializes the operations that write files (checkpoint, begin/finish
    /// restore), so `durable_lsn` always matches the files. Lock order:
    /// `writer` before `persist`; checkpoint takes only `persist`, so applies
    /// continue while a checkpoint writes.
    persist: Mutex<()>,
    /// Data directory; `None` for a purely in-memory table.
    dir: Option<PathBuf>,
    /// Per-origin applied positions (multi-leader). Kept in memory only: after
    /// a restart they start at zero and peers resend their logs, which the
    /// merge absorbs (it is idempotent); redb keeps them in the file.
    origins: Mutex<BTreeMap<String, Lsn>>,
    conflict_log: crate::causal::ConflictLog,
    counters: crate::causal::CausalCounters,
}

/// Borrowed form of the snapshot payload, so writing needs no copy.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    applied_lsn: Lsn,
    map: &'a Map,
}

#[derive(Deserialize)]
struct SnapshotOwned {
    applied_lsn: Lsn,
    map: Map,
}

impl Default for MemoryTable {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryTable {
    /// A table with no persistence (simulation, tests). Its `checkpoint` only
    /// advances `durable_lsn`: with no files, "durable" means "for the life of
    /// this object".
    pub fn new() -> MemoryTable {
        Self::with_state(None, Map::new(), Lsn::ZERO)
    }

    /// A persistent table in data directory `dir`: loads the last checkpoint's
    /// snapshot file if there is one. The caller then replays the WAL from
    /// `applied_lsn() + 1`. An interrupted restore left nothing but its
    /// marker: the table is whatever the snapshot file holds, and
    /// [`Table::needs_restore`] is false.
    pub fn open(dir: &Path) -> Result<MemoryTable> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        // A leftover temp file is a checkpoint that never got renamed: garbage.
        let tmp = dir.join(SNAPSHOT_TMP);
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(io_err(&tmp))?;
        }
        let path = dir.join(SNAPSHOT_FILE);
        let (lsn, map) = match fs::read(&path) {
            Ok(bytes) => decode_snapshot(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Lsn::ZERO, Map::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let marker = dir.join(RESTORING_MARKER);
        if marker.exists() {
            tracing::warn!(
                dir = %dir.display(),
                applied_lsn = lsn.0,
                "interrupted restore found; staged copy dropped, table unchanged"
            );
            remove_marker(dir)?;
        }
        Ok(Self::with_state(Some(dir.to_path_buf()), map, lsn))
    }

    fn with_state(dir: Option<PathBuf>, map: Map, lsn: Lsn) -> MemoryTable {
        MemoryTable {
            map: RwLock::new(Arc::new(map)),
            applied: AtomicU64::new(lsn.0),
            durable: AtomicU64::new(lsn.0),
            restoring: AtomicBool::new(false),
            writer: Mutex::new(None),
            persist: Mutex::new(()),
            dir,
            origins: Mutex::new(BTreeMap::new()),
            conflict_log: Default::default(),
            counters: Default::default(),
        }
    }

    // Poisoning is ignored throughout: the critical sections are plain map
    // updates that do not panic short of allocation failure, which aborts.
    fn read_map(&self) -> RwLockReadGuard<'_, Arc<Map>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_map(&self) -> RwLockWriteGuard<'_, Arc<Map>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_writer(&self) -> MutexGuard<'_, Option<Map>> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_persist(&self) -> MutexGuard<'_, ()> {
        self.persist.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current map and its LSN, consistently.
    fn current(&self) -> (Arc<Map>, Lsn) {
        let guard = self.read_map();
        (
            Arc::clone(&guard),
            Lsn(self.applied.load(Ordering::Acquire)),
        )
    }

    /// Write the snapshot file for `(lsn, map)` durably.
    fn write_snapshot(&self, dir: &Path, lsn: Lsn, map: &Map) -> Result<()> {
        // Encoded once, after room for the header, which is filled in
        // place: one serialized copy of the table in memory, not two.
        let mut bytes = postcard::to_extend(
            &SnapshotRef {
                applied_lsn: lsn,
                map,
            },
            vec![0u8; HEADER_LEN],
        )
        .map_err(|e| StorageError::Backend(format!("encoding table snapshot: {e}")))?;
        let (header, payload) = bytes.split_at_mut(HEADER_LEN);
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        header[12..].copy_from_slice(&(payload.len() as u64).to_le_bytes());

        let path = dir.join(SNAPSHOT_FILE);
        replidb_core::durable::write_atomic(&path, &bytes).map_err(io_err(&path))
    }
}

fn decode_snapshot(path: &Path, bytes: &[u8]) -> Result<(Lsn, Map)> {
    let corrupt =
        |what: &str| StorageError::Corruption(format!("table snapshot {}: {what}", path.display()));
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(corrupt("bad magic or truncated header"));
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[8..12]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[12..20]);
    let payload = &bytes[HEADER_LEN..];
    if u64::from_le_bytes(len) != payload.len() as u64 {
        return Err(corrupt("length mismatch (truncated?)"));
    }
    if crc32c::crc32c(payload) != u32::from_le_bytes(crc) {
        return Err(corrupt("checksum mismatch"));
    }
    let snap: SnapshotOwned =
        postcard::from_bytes(payload).map_err(|e| corrupt(&format!("decoding: {e}")))?;
    Ok((snap.applied_lsn, snap.map))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Remove the restore marker in `dir` (if there) durably.
fn remove_marker(dir: &Path) -> Result<()> {
    let marker = dir.join(RESTORING_MARKER);
    match fs::remove_file(&marker) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(&marker)(e)),
    }
}

/// fsync a directory so a rename or create/remove in it is durable.
fn sync_dir(dir: &Path) -> Result<()> {
    replidb_core::durable::sync_dir(dir).map_err(io_err(dir))
}

/// Apply the leaves of `records` to `map`; the outcomes of causal writes
/// go to `outcomes`.
fn apply_to(map: &mut Map, records: &[Record], outcomes: &mut Vec<crate::causal::LeafOutcome>) {
    for rec in records {
        rec.op.for_each_leaf(&mut |leaf| match leaf {
            Op::Put { key, value } => {
                map.insert(
                    key.clone(),
                    Versioned {
                        value: value.clone(),
                        lsn: rec.lsn,
                        epoch: rec.epoch,
                        causal: false,
                    },
                );
            }
            Op::Delete { key } => {
                map.remove(key);
            }
            Op::Merge { key, operand } => {
                let existing = map.get(key).cloned();
                if let Some(out) =
                    crate::causal::merge_leaf(key, existing, operand, rec.lsn, rec.epoch)
                {
                    map.insert(key.clone(), out.value.clone());
                    outcomes.push(out);
                }
            }
            // for_each_leaf never yields a batch.
            Op::Batch(_) => {}
        });
    }
}

impl MemoryTable {
    /// Apply with copy-on-write when a snapshot shares the map; `after` runs
    /// under the map's write lock (positions that must change with it).
    fn apply_map(&self, f: impl FnOnce(&mut Map), after: impl FnOnce()) {
        let current = Arc::clone(&self.read_map());
        // Ours plus the table's: anything more is a snapshot sharing the map.
        if Arc::strong_count(&current) > 2 {
            // Copy outside the lock so readers keep going; only we (holding
            // `writer`) could change the map meanwhile, and we don't.
            let mut fresh = Map::clone(&current);
            drop(current);
            f(&mut fresh);
            let mut guard = self.write_map();
            *guard = Arc::new(fresh);
            after();
        } else {
            drop(current);
            let mut guard = self.write_map();
            // Copies only if a snapshot was taken since the check above.
            f(Arc::make_mut(&mut guard));
            after();
        }
    }

    fn note_outcomes(&self, outcomes: Vec<crate::causal::LeafOutcome>) {
        for out in outcomes {
            self.counters.note(&out);
            self.conflict_log.push(out.conflicts);
        }
    }
}

impl Table for MemoryTable {
    fn apply(&self, records: &[Record]) -> Result<()> {
        let _w = self.lock_writer();
        let Some(last) = records.last() else {
            return Ok(());
        };
        check_contiguous(self.applied_lsn(), records)?;
        let mut outcomes = Vec::new();
        self.apply_map(
            |map| apply_to(map, records, &mut outcomes),
            || self.applied.store(last.lsn.0, Ordering::Release),
        );
        self.note_outcomes(outcomes);
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
        let mut outcomes = Vec::new();
        self.apply_map(
            |map| apply_to(map, records, &mut outcomes),
            || {
                self.origins
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(origin.to_string(), last.lsn);
            },
        );
        self.note_outcomes(outcomes);
        Ok(())
    }

    fn merge_states(&self, origin: &str, entries: &[(String, Versioned)], lsn: Lsn) -> Result<()> {
        let _w = self.lock_writer();
        let mut outcomes = Vec::new();
        self.apply_map(
            |map| {
                for (key, v) in entries.iter().filter(|(_, v)| v.causal) {
                    let Ok(state) = replidb_causal::KeyState::decode(&v.value) else {
                        continue;
                    };
                    let op = replidb_causal::Operand::State(state).encode();
                    let existing = map.get(key).cloned();
                    if let Some(out) = crate::causal::merge_leaf(key, existing, &op, v.lsn, v.epoch)
                    {
                        map.insert(key.clone(), out.value.clone());
                        outcomes.push(out);
                    }
                }
            },
            || {
                let mut o = self.origins.lock().unwrap_or_else(|e| e.into_inner());
                let e = o.entry(origin.to_string()).or_default();
                *e = (*e).max(lsn);
            },
        );
        self.note_outcomes(outcomes);
        Ok(())
    }

    fn origin_positions(&self) -> BTreeMap<String, Lsn> {
        self.origins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn conflicts(&self, prefix: &str, limit: usize) -> Result<Vec<replidb_causal::Conflict>> {
        Ok(self.conflict_log.newest(prefix, limit))
    }

    fn causal_stats(&self) -> crate::CausalStats {
        self.counters.read()
    }

    fn get(&self, key: &str) -> Result<Option<Versioned>> {
        Ok(self.read_map().get(key).cloned())
    }

    fn get_many(&self, keys: &[&str], values: bool, bytes_max: usize) -> Result<ManyRead> {
        // One guard: an apply holds the write lock for its whole slice and
        // stores the applied LSN under it.
        let map = self.read_map();
        let mut read = ManyRead::new(self.applied_lsn(), keys.len());
        for key in keys {
            let found = map.get(*key).map(|v| Versioned {
                value: if values { v.value.clone() } else { Vec::new() },
                lsn: v.lsn,
                epoch: v.epoch,
                causal: v.causal,
            });
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
        let guard = self.read_map();
        let lower = scan_lower_bound(prefix, start_after);
        let mut page = ScanPage::default();
        let mut bytes = 0usize;
        for (k, v) in guard
            .range::<str, _>((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(keys_max)
        {
            if bytes >= bytes_max {
                page.cut_by_bytes = true;
                break;
            }
            count_entry(&mut bytes, k, v);
            page.entries.push((k.clone(), v.clone()));
        }
        Ok(page)
    }

    fn applied_lsn(&self) -> Lsn {
        Lsn(self.applied.load(Ordering::Acquire))
    }

    fn durable_lsn(&self) -> Lsn {
        Lsn(self.durable.load(Ordering::Acquire))
    }

    fn checkpoint(&self) -> Result<Lsn> {
        let _p = self.lock_persist();
        // The live map only: a staged restore becomes durable when it is
        // finished, by its own snapshot file.
        let (map, lsn) = self.current();
        if lsn == self.durable_lsn() {
            return Ok(lsn);
        }
        if let Some(dir) = &self.dir {
            self.write_snapshot(dir, lsn, &map)?;
        }
        self.durable.store(lsn.0, Ordering::Release);
        Ok(lsn)
    }

    fn snapshot(&self) -> Result<Box<dyn TableSnapshot>> {
        let (map, lsn) = self.current();
        Ok(Box::new(MemorySnapshot { map, lsn }))
    }

    fn begin_restore(&self) -> Result<()> {
        let mut staging = self.lock_writer();
        let _p = self.lock_persist();
        if let Some(dir) = &self.dir {
            let marker = dir.join(RESTORING_MARKER);
            replidb_core::durable::write_atomic(&marker, b"").map_err(io_err(&marker))?;
        }
        *staging = Some(Map::new());
        self.restoring.store(true, Ordering::Release);
        Ok(())
    }

    fn restore_chunk(&self, entries: &[(String, Versioned)]) -> Result<()> {
        let mut staging = self.lock_writer();
        let Some(map) = staging.as_mut() else {
            return Err(not_restoring("restore_chunk"));
        };
        let last = map.last_key_value().map(|(k, _)| k.as_str());
        check_restore_order(last, entries)?;
        for (k, v) in entries {
            map.insert(k.clone(), v.clone());
        }
        Ok(())
    }

    fn finish_restore(&self, lsn: Lsn) -> Result<()> {
        let mut staging = self.lock_writer();
        let _p = self.lock_persist();
        let Some(restored) = staging.take() else {
            return Err(not_restoring("finish_restore"));
        };
        if let Some(dir) = &self.dir {
            // The rename inside is the durable switch: a crash before it
            // reopens the old table, after it the restored one.
            if let Err(e) = self.write_snapshot(dir, lsn, &restored) {
                // Still staged: the caller may retry or abort.
                *staging = Some(restored);
                return Err(e);
            }
        }
        {
            let mut guard = self.write_map();
            *guard = Arc::new(restored);
            self.applied.store(lsn.0, Ordering::Release);
            self.durable.store(lsn.0, Ordering::Release);
        }
        self.restoring.store(false, Ordering::Release);
        if let Some(dir) = &self.dir {
            // Only a hint now (open ignores it but for a warning), so the
            // restore is not failed over it.
            if let Err(e) = remove_marker(dir) {
                tracing::warn!(error = %e, "restore finished; could not remove its marker");
            }
        }
        Ok(())
    }

    fn abort_restore(&self) -> Result<()> {
        let mut staging = self.lock_writer();
        let _p = self.lock_persist();
        if let Some(dir) = &self.dir {
            remove_marker(dir)?;
        }
        *staging = None;
        self.restoring.store(false, Ordering::Release);
        Ok(())
    }

    fn needs_restore(&self) -> bool {
        self.restoring.load(Ordering::Acquire)
    }

    fn digest(&self) -> Result<String> {
        let (map, _) = self.current();
        let mut d = TableDigest::new();
        for (k, v) in map.iter() {
            let (bytes, lsn, epoch) =
                crate::causal::digest_parts(&v.value, v.lsn, v.epoch, v.causal);
            d.entry(k, &bytes, lsn, epoch);
        }
        Ok(d.finish())
    }

    fn len(&self) -> Result<u64> {
        Ok(self.read_map().len() as u64)
    }

    fn backend_name(&self) -> &'static str {
        "memory"
    }
}

/// A frozen version of the map.
struct MemorySnapshot {
    map: Arc<Map>,
    lsn: Lsn,
}

impl TableSnapshot for MemorySnapshot {
    fn lsn(&self) -> Lsn {
        self.lsn
    }

    fn read_chunk_bounded(
        &self,
        start_after: Option<&str>,
        entries_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<(String, Versioned)>> {
        let lower = start_after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = Vec::new();
        let mut used = 0usize;
        for (k, v) in self
            .map
            .range::<str, _>((lower, Bound::Unbounded))
            .take(entries_max)
        {
            let n = crate::entry_bytes(k, v);
            if !crate::fits(out.len(), used, n, bytes_max) {
                break;
            }
            used += n;
            out.push((k.clone(), v.clone()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `get_many` on the in-memory backend: keys' order, the applied LSN,
    /// presence without values, and the byte limit.
    #[test]
    fn get_many_reads_keys_in_order_and_stops_at_the_byte_limit() {
        let t = MemoryTable::new();
        let put = |lsn: u64, key: &str| Record {
            lsn: Lsn(lsn),
            epoch: replidb_core::Epoch(1),
            hlc: Default::default(),
            op: Op::Put {
                key: key.into(),
                value: b"vv".to_vec(),
            },
        };
        t.apply(&[put(1, "a"), put(2, "b")]).unwrap();
        let read = t.get_many(&["b", "none", "a"], true, usize::MAX).unwrap();
        assert_eq!(read.applied, Lsn(2));
        let lsns: Vec<_> = read
            .entries
            .iter()
            .map(|v| v.as_ref().map(|v| v.lsn.0))
            .collect();
        assert_eq!(lsns, [Some(2), None, Some(1)]);
        assert!(!read.cut);
        let bare = t.get_many(&["b", "a"], false, 0).unwrap();
        assert!(bare
            .entries
            .iter()
            .all(|v| v.as_ref().is_some_and(|v| v.value.is_empty())));
        let cut = t.get_many(&["b", "a"], true, 3).unwrap();
        assert!(cut.cut);
        assert_eq!(cut.entries.len(), 1);
    }

    #[test]
    fn corrupt_snapshot_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let t = MemoryTable::open(dir.path()).unwrap();
        let rec = Record {
            lsn: Lsn(1),
            epoch: replidb_core::Epoch(1),
            hlc: Default::default(),
            op: Op::Put {
                key: "k".into(),
                value: b"v".to_vec(),
            },
        };
        t.apply(&[rec]).unwrap();
        t.checkpoint().unwrap();
        drop(t);
        let path = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            MemoryTable::open(dir.path()),
            Err(StorageError::Corruption(_))
        ));
        fs::write(&path, &bytes[..10]).unwrap();
        assert!(matches!(
            MemoryTable::open(dir.path()),
            Err(StorageError::Corruption(_))
        ));
    }

    /// A crash after the restored snapshot file was renamed into place but
    /// before the marker was removed: the file is the restored table, and
    /// reopening serves it (the WAL restarts after it in the engine).
    #[test]
    fn marker_left_after_the_switch_reopens_the_restored_table() {
        let dir = tempfile::tempdir().unwrap();
        let t = MemoryTable::open(dir.path()).unwrap();
        t.begin_restore().unwrap();
        let v = Versioned {
            value: b"new".to_vec(),
            lsn: Lsn(7),
            epoch: replidb_core::Epoch(2),
            causal: false,
        };
        t.restore_chunk(&[("k".to_string(), v.clone())]).unwrap();
        t.finish_restore(Lsn(7)).unwrap();
        assert!(!dir.path().join(RESTORING_MARKER).exists());
        drop(t);
        std::fs::File::create(dir.path().join(RESTORING_MARKER)).unwrap();
        let t = MemoryTable::open(dir.path()).unwrap();
        assert!(!t.needs_restore());
        assert_eq!(t.applied_lsn(), Lsn(7));
        assert_eq!(t.get("k").unwrap(), Some(v));
        assert!(!dir.path().join(RESTORING_MARKER).exists());
    }
}
