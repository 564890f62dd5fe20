//! The writer: [`Wal`].

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use replidb_core::{Epoch, Lsn, Record};

use crate::codec;
use crate::reader::{Shared, Tail, WalReader};
use crate::recovery::{self, SegMeta};
use crate::segment::{self, corruption, io_err, SegReader, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::{FsyncPolicy, RecoveryReport, Result, SyncStats, WalError, WalOptions};

/// Name of the lock file that keeps two processes from writing one log.
const LOCK_FILE: &str = "LOCK";

/// Unsynced frames beyond this are written to the file early (without an
/// fsync and without publishing them) to bound memory between syncs.
const MAX_BUFFERED: usize = 4 * 1024 * 1024;

/// The segment being appended to.
struct Active {
    first_lsn: Lsn,
    path: PathBuf,
    /// Header plus every frame appended, including those still buffered.
    bytes: u64,
    /// File offset of the next write: `bytes` minus the buffered frames.
    written: u64,
    /// The file's length: `written` plus preallocated zeros after it, or
    /// `u64::MAX` once a failed preallocation left the length unknown.
    allocated: u64,
    /// Written with positioned writes at `written`.
    file: File,
}

impl Active {
    /// A segment whose file holds exactly `bytes` (header and frames).
    fn new(first_lsn: Lsn, path: PathBuf, bytes: u64, file: File) -> Active {
        Active {
            first_lsn,
            path,
            bytes,
            written: bytes,
            allocated: bytes,
            file,
        }
    }
}

/// The write-ahead log, owned by a single writer thread.
///
/// Appends are buffered in memory; [`Wal::sync`] writes them, fsyncs
/// (per [`FsyncPolicy`]) and only then makes them visible to readers.
/// Records appended but not synced are lost when the `Wal` is dropped.
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    shared: Arc<Shared>,
    /// Full segments before the active one, in LSN order.
    sealed: Vec<SegMeta>,
    active: Active,
    /// Encoded frames not yet written to `active.file`.
    buf: Vec<u8>,
    generation: u64,
    last_lsn: Lsn,
    last_epoch: Epoch,
    flushed_lsn: Lsn,
    unsynced_records: usize,
    unsynced_bytes: u64,
    /// Records appended since the last sync, with their frame sizes, for
    /// the readers' tail cache once they are flushed.
    unsynced_tail: VecDeque<(Record, usize)>,
    /// [`Tail::cost`] of `unsynced_tail`, at most `tail_cache_bytes`: older
    /// records beyond it would be evicted by the push anyway.
    unsynced_tail_bytes: usize,
    /// Bytes were written to the active file since its last fsync.
    needs_fsync: bool,
    /// An I/O error left memory and disk possibly disagreeing (and after a
    /// failed fsync the page cache cannot be trusted); refuse further writes.
    poisoned: bool,
    /// Held for the lifetime of the `Wal`; the OS releases it on exit.
    _lock: File,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("first_lsn", &self.first_lsn())
            .field("last_lsn", &self.last_lsn)
            .field("flushed_lsn", &self.flushed_lsn)
            .field("segments", &self.segment_count())
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Open (creating if missing) the log in `dir` and recover it: verify
    /// every record, cut a torn tail off the last segment, and refuse with
    /// [`WalError::Corruption`] if damage is found anywhere else. Everything
    /// recovered counts as flushed.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, RecoveryReport)> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = lock_dir(dir)?;
        let durable = opts.fsync == FsyncPolicy::Always;
        let rec = recovery::recover(dir, durable)?;
        let mut segments = rec.segments;
        let Some(last) = segments.pop() else {
            return Err(corruption(dir, 0, "recovery found no segment"));
        };
        // Recovery cut the last segment to its frames (preallocated zeros
        // included), so the file holds exactly `last.bytes`.
        let file = segment::open_write(&last.path)?;
        let active = Active::new(last.first_lsn, last.path, last.bytes, file);
        let mut listed: Vec<_> = segments
            .iter()
            .map(|s| (s.first_lsn, s.path.clone()))
            .collect();
        listed.push((active.first_lsn, active.path.clone()));
        let tail_cache_bytes = opts.tail_cache_bytes;
        let wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            shared: Arc::new(Shared::new(listed, rec.last_lsn, tail_cache_bytes)),
            sealed: segments,
            active,
            buf: Vec::new(),
            generation: rec.generation,
            last_lsn: rec.last_lsn,
            last_epoch: rec.last_epoch,
            flushed_lsn: rec.last_lsn,
            unsynced_records: 0,
            unsynced_bytes: 0,
            unsynced_tail: VecDeque::new(),
            unsynced_tail_bytes: 0,
            needs_fsync: false,
            poisoned: false,
            _lock: lock,
        };
        let report = RecoveryReport {
            first_lsn: wal.first_lsn(),
            last_lsn: wal.last_lsn,
            last_epoch: wal.last_epoch,
            truncated_bytes: rec.truncated_bytes,
            segments: wal.segment_count(),
        };
        tracing::info!(
            dir = %dir.display(),
            first_lsn = report.first_lsn.0,
            last_lsn = report.last_lsn.0,
            last_epoch = report.last_epoch.0,
            truncated_bytes = report.truncated_bytes,
            segments = report.segments,
            "WAL opened"
        );
        Ok((wal, report))
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// LSN of the last appended record (maybe not yet synced), or
    /// `first_lsn() - 1` when the log holds none.
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    /// LSN of the last synced record, the highest readers can see.
    pub fn flushed_lsn(&self) -> Lsn {
        self.flushed_lsn
    }

    /// Lowest LSN still held; `last_lsn() + 1` when the log holds none.
    pub fn first_lsn(&self) -> Lsn {
        self.sealed
            .first()
            .map_or(self.active.first_lsn, |s| s.first_lsn)
    }

    /// Epoch of the last record, kept across truncation and reset (and
    /// `Epoch(0)` if the log never held one).
    pub fn last_epoch(&self) -> Epoch {
        self.last_epoch
    }

    /// Buffer `rec`, which must carry `last_lsn() + 1` (else
    /// [`WalError::NotContiguous`]). Rolls to a new segment first if this
    /// record would take a non-empty active segment past `segment_bytes`.
    pub fn append(&mut self, rec: &Record) -> Result<()> {
        self.check_usable()?;
        let expected = self.last_lsn.next();
        if rec.lsn != expected {
            return Err(WalError::NotContiguous {
                expected,
                got: rec.lsn,
            });
        }
        let start = self.buf.len();
        codec::encode_record(rec, &mut self.buf)?;
        let frame = (self.buf.len() - start) as u64;
        let has_records = self.active.first_lsn <= self.last_lsn;
        if has_records && self.active.bytes + frame > self.opts.segment_bytes {
            let rolled = self.roll(start, rec.lsn);
            if rolled.is_err() {
                self.buf.clear();
            }
            self.guard(rolled)?;
        } else if self.buf.len() >= MAX_BUFFERED {
            let written = self.write_buf();
            self.guard(written)?;
        }
        self.active.bytes += frame;
        self.last_lsn = rec.lsn;
        self.last_epoch = rec.epoch;
        self.unsynced_records += 1;
        self.unsynced_bytes += frame;
        self.keep_for_tail(rec, frame as usize);
        Ok(())
    }

    /// Write buffered records, fsync them unless [`FsyncPolicy::Never`], and
    /// publish the new flushed LSN to readers. The stats cover the records
    /// appended since the previous sync.
    pub fn sync(&mut self) -> Result<SyncStats> {
        self.check_usable()?;
        let started = Instant::now();
        let done = self.sync_files();
        self.guard(done)?;
        self.flushed_lsn = self.last_lsn;
        // Into the readers' cache before they may read these records.
        if !self.unsynced_tail.is_empty() {
            let mut tail = self.shared.tail();
            self.unsynced_tail_bytes = 0;
            for (rec, n) in self.unsynced_tail.drain(..) {
                tail.push(rec, n);
            }
        }
        self.shared.set_flushed(self.last_lsn);
        let stats = SyncStats {
            records: self.unsynced_records,
            bytes: self.unsynced_bytes,
            duration: started.elapsed(),
        };
        self.unsynced_records = 0;
        self.unsynced_bytes = 0;
        Ok(stats)
    }

    /// Keep a copy of `rec` for the readers' tail cache, within its limit.
    /// A record the cache cannot hold is not copied at all (and leaves a
    /// gap, which empties the cache at the next push: correct, since it
    /// would have evicted everything older).
    fn keep_for_tail(&mut self, rec: &Record, frame_bytes: usize) {
        let cost = Tail::cost(frame_bytes);
        if cost > self.opts.tail_cache_bytes {
            self.unsynced_tail.clear();
            self.unsynced_tail_bytes = 0;
            return;
        }
        self.unsynced_tail.push_back((rec.clone(), frame_bytes));
        self.unsynced_tail_bytes += cost;
        while self.unsynced_tail_bytes > self.opts.tail_cache_bytes {
            match self.unsynced_tail.pop_front() {
                Some((_, n)) => self.unsynced_tail_bytes -= Tail::cost(n),
                None => break,
            }
        }
    }

    /// A handle for reading flushed records from other threads.
    pub fn reader(&self) -> WalReader {
        WalReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Durably remove every record after `lsn`, across segments, and return
    /// them in LSN order (a rewind after failover). A no-op if `lsn >=
    /// last_lsn()`; [`WalError::Compacted`] if records at or before `lsn`
    /// are already gone. Cursors that returned a removed record fail with
    /// [`WalError::Truncated`] from then on.
    pub fn truncate_after(&mut self, lsn: Lsn) -> Result<Vec<Record>> {
        self.check_usable()?;
        if lsn >= self.last_lsn {
            return Ok(Vec::new());
        }
        let first = self.first_lsn();
        if lsn.next() < first {
            return Err(WalError::Compacted {
                requested: lsn.next(),
                first_available: first,
            });
        }
        let done = self.truncate_files(lsn);
        self.guard(done)
    }

    /// Retention: delete whole segments all of whose records are below
    /// `lsn`, oldest first, never the active one. Returns the bytes freed.
    /// Cursors that still need a deleted record fail with
    /// [`WalError::Compacted`].
    pub fn remove_segments_before(&mut self, lsn: Lsn) -> Result<u64> {
        self.check_usable()?;
        let next_firsts = self
            .sealed
            .iter()
            .skip(1)
            .map(|s| s.first_lsn)
            .chain(std::iter::once(self.active.first_lsn));
        // `next_firsts` yields one item per sealed segment (the first LSN
        // of the segment after it), except when there are none: then it
        // yields the active segment's, which must not count.
        let count = next_firsts
            .take(self.sealed.len())
            .take_while(|next| *next <= lsn)
            .count();
        if count == 0 {
            return Ok(0);
        }
        let removed: Vec<SegMeta> = self.sealed.drain(..count).collect();
        let first = self.first_lsn();
        {
            let mut state = self.shared.write();
            state.segments.drain(..count);
            state.first_lsn = first;
        }
        let durable = self.durable();
        let mut freed = 0;
        for seg in removed {
            let gone = fs::remove_file(&seg.path).map_err(io_err(&seg.path));
            self.guard(gone)?;
            // One directory sync per file: if an older segment came back
            // after a crash while a newer one stayed deleted, the log would
            // have a hole.
            if durable {
                let synced = segment::sync_dir(&self.dir);
                self.guard(synced)?;
            }
            freed += seg.bytes;
        }
        tracing::debug!(freed, first_lsn = first.0, "removed old WAL segments");
        Ok(freed)
    }

    /// Delete the whole log; the next append must carry `next_lsn` (used
    /// after installing a snapshot at `next_lsn - 1`). `Lsn(0)` counts as
    /// `Lsn(1)`. Unsynced appends are discarded. Atomic and durable: a new
    /// empty segment named `next_lsn` with a higher generation is created
    /// first, and recovery ignores segments of older generations, so after a
    /// restart `last_lsn() == next_lsn - 1` and `first_lsn() == next_lsn`.
    pub fn reset(&mut self, next_lsn: Lsn) -> Result<()> {
        self.check_usable()?;
        let next = next_lsn.max(Lsn(1));
        let done = self.reset_files(next);
        self.guard(done)
    }

    /// Total bytes of all segments, headers and not-yet-synced records
    /// included (preallocated zeros are not).
    pub fn size_bytes(&self) -> u64 {
        self.sealed.iter().map(|s| s.bytes).sum::<u64>() + self.active.bytes
    }

    /// Number of segment files (at least 1).
    pub fn segment_count(&self) -> usize {
        self.sealed.len() + 1
    }

    fn durable(&self) -> bool {
        self.opts.fsync == FsyncPolicy::Always
    }

    fn check_usable(&self) -> Result<()> {
        if self.poisoned {
            return Err(WalError::Io {
                path: self.dir.clone(),
                source: io::Error::other("WAL unusable after an earlier I/O failure; reopen it"),
            });
        }
        Ok(())
    }

    /// Pass `r` through, poisoning the log if it failed on disk.
    fn guard<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(WalError::Io { .. } | WalError::Corruption { .. }) = &r {
            self.poisoned = true;
        }
        r
    }

    /// Write the buffered frames to the active file (no fsync), keeping
    /// `preallocate_bytes` of zeros ahead of them.
    fn write_buf(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.write_frames(self.buf.len())?;
        self.buf.clear();
        let a = &mut self.active;
        if a.written > a.allocated {
            // The size changed anyway: this fsync pays for a journal commit,
            // so let it cover the next `preallocate_bytes` too.
            let target = (a.written + self.opts.preallocate_bytes)
                .min(self.opts.segment_bytes)
                .max(a.written);
            match segment::write_zeros(&a.file, &a.path, a.written, target - a.written) {
                Ok(()) => a.allocated = target,
                // Only an optimisation: a full disk must not refuse a record
                // that fits. How far the zeros got is unknown, so stop
                // preallocating this segment and trim it when it is sealed.
                Err(e) => {
                    tracing::warn!(error = %e, "WAL preallocation failed; continuing without");
                    a.allocated = u64::MAX;
                }
            }
        }
        debug_assert!(self.active.allocated >= self.active.written);
        Ok(())
    }

    /// Write the first `n` buffered bytes at the active file's write offset.
    fn write_frames(&mut self, n: usize) -> Result<()> {
        let a = &mut self.active;
        a.file
            .write_all_at(&self.buf[..n], a.written)
            .map_err(io_err(&a.path))?;
        a.written += n as u64;
        self.needs_fsync = true;
        Ok(())
    }

    fn sync_files(&mut self) -> Result<()> {
        self.write_buf()?;
        if self.needs_fsync && self.durable() {
            self.active
                .file
                .sync_data()
                .map_err(io_err(&self.active.path))?;
        }
        self.needs_fsync = false;
        Ok(())
    }

    /// Seal the active segment with the first `split` buffered bytes, and
    /// start a new one at `first_lsn`. The old segment is made durable
    /// before the new file exists, which is what lets recovery treat damage
    /// in any segment but the last as corruption.
    fn roll(&mut self, split: usize, first_lsn: Lsn) -> Result<()> {
        self.write_frames(split)?;
        self.buf.drain(..split);
        // A sealed segment ends at its last frame: recovery reads zeros in
        // any segment but the last as damage. The fsync below makes the new
        // size durable too (`fdatasync` flushes a size change).
        let a = &mut self.active;
        if a.allocated > a.written {
            a.file.set_len(a.written).map_err(io_err(&a.path))?;
            a.allocated = a.written;
        }
        // Only the sealed segment's bytes: the buffer now holds the record
        // that goes into the new segment.
        if self.durable() {
            self.active
                .file
                .sync_data()
                .map_err(io_err(&self.active.path))?;
        }
        self.needs_fsync = false;
        let header = SegmentHeader {
            generation: self.generation,
            first_lsn,
            prev_epoch: self.last_epoch,
        };
        let (file, path) = segment::create_segment(&self.dir, &header, self.durable())?;
        self.shared.write().segments.push((first_lsn, path.clone()));
        let old = std::mem::replace(
            &mut self.active,
            Active::new(first_lsn, path, SEGMENT_HEADER_LEN, file),
        );
        self.sealed.push(SegMeta {
            first_lsn: old.first_lsn,
            path: old.path,
            bytes: old.bytes,
        });
        Ok(())
    }

    fn truncate_files(&mut self, lsn: Lsn) -> Result<Vec<Record>> {
        // Put every appended record in the files, unpublished, so that the
        // removed ones can be read back and the kept ones are fsynced below.
        self.write_buf()?;
        let shared = Arc::clone(&self.shared);
        let mut state = shared.write();
        shared.set_flushed(self.flushed_lsn.min(lsn));
        // Cached records may be among those removed: the files answer
        // from here on, until the next sync fills the cache again.
        self.unsynced_tail.clear();
        self.unsynced_tail_bytes = 0;
        shared.tail().clear();

        let mut all = self.sealed.clone();
        all.push(SegMeta {
            first_lsn: self.active.first_lsn,
            path: self.active.path.clone(),
            bytes: self.active.bytes,
        });
        let cut_lsn = lsn.next();
        let k = all
            .partition_point(|s| s.first_lsn <= cut_lsn)
            .checked_sub(1)
            .ok_or(WalError::Compacted {
                requested: cut_lsn,
                first_available: self.first_lsn(),
            })?;

        // Read back what goes, noting where segment k must be cut and the
        // epoch of the record that becomes the last.
        let mut removed = Vec::new();
        let mut cut_offset = None;
        let mut kept_epoch = self.last_epoch;
        for (j, seg) in all[k..].iter().enumerate() {
            let (mut reader, header) = SegReader::open(&seg.path, seg.first_lsn)?;
            // Everything appended is in the file now, followed perhaps by
            // preallocated zeros.
            reader.set_end(seg.bytes);
            if j == 0 {
                kept_epoch = header.prev_epoch;
            }
            let mut expected = seg.first_lsn;
            loop {
                let off = reader.offset();
                let Some((rec, _)) = reader.next_record()? else {
                    break;
                };
                if rec.lsn != expected {
                    return Err(corruption(
                        &seg.path,
                        off,
                        format!("record has LSN {}, expected {expected}", rec.lsn),
                    ));
                }
                expected = expected.next();
                if rec.lsn <= lsn {
                    kept_epoch = rec.epoch;
                } else {
                    if j == 0 && cut_offset.is_none() {
                        cut_offset = Some(off);
                    }
                    removed.push(rec);
                }
            }
        }
        let Some(cut_offset) = cut_offset else {
            return Err(corruption(
                &all[k].path,
                all[k].bytes,
                format!("record {cut_lsn} not found while truncating"),
            ));
        };

        // Newest segments go first, each durably, so that a crash part way
        // leaves a contiguous (if too long) log rather than one with a hole.
        let durable = self.durable();
        state.segments.truncate(k + 1);
        for seg in all[k + 1..].iter().rev() {
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            if durable {
                segment::sync_dir(&self.dir)?;
            }
        }
        let seg = &all[k];
        let f = OpenOptions::new()
            .write(true)
            .open(&seg.path)
            .map_err(io_err(&seg.path))?;
        f.set_len(cut_offset).map_err(io_err(&seg.path))?;
        if durable {
            // sync_all: the size change is metadata.
            f.sync_all().map_err(io_err(&seg.path))?;
        }
        self.active = Active::new(
            seg.first_lsn,
            seg.path.clone(),
            cut_offset,
            segment::open_write(&seg.path)?,
        );
        self.sealed.truncate(k);
        self.last_lsn = lsn;
        self.last_epoch = kept_epoch;
        // Records up to `lsn` are durable now: earlier segments were synced
        // when sealed and segment k just now.
        self.flushed_lsn = lsn;
        self.unsynced_records = 0;
        self.unsynced_bytes = 0;
        self.needs_fsync = false;
        shared.set_flushed(lsn);
        state.change_seq += 1;
        let seq = state.change_seq;
        state.rewinds.push((seq, lsn));
        tracing::info!(after = lsn.0, removed = removed.len(), "WAL truncated");
        Ok(removed)
    }

    fn reset_files(&mut self, next: Lsn) -> Result<()> {
        self.buf.clear();
        let shared = Arc::clone(&self.shared);
        let mut state = shared.write();
        shared.set_flushed(self.flushed_lsn.min(next.prev()));
        self.unsynced_tail.clear();
        self.unsynced_tail_bytes = 0;
        shared.tail().clear();
        let header = SegmentHeader {
            generation: self.generation + 1,
            first_lsn: next,
            prev_epoch: self.last_epoch,
        };
        // The commit point: once this file exists, recovery sees the reset.
        let (file, path) = segment::create_segment(&self.dir, &header, self.durable())?;
        self.generation += 1;
        let old: Vec<PathBuf> = self
            .sealed
            .drain(..)
            .map(|s| s.path)
            .chain(std::iter::once(self.active.path.clone()))
            .filter(|p| *p != path)
            .collect();
        state.segments = vec![(next, path.clone())];
        state.first_lsn = next;
        state.change_seq += 1;
        let seq = state.change_seq;
        state.rewinds.push((seq, next.prev()));
        self.active = Active::new(next, path, SEGMENT_HEADER_LEN, file);
        self.last_lsn = next.prev();
        self.flushed_lsn = next.prev();
        self.unsynced_records = 0;
        self.unsynced_bytes = 0;
        self.needs_fsync = false;
        shared.set_flushed(next.prev());
        drop(state);

        // Cleanup only: recovery would delete these too.
        for p in &old {
            if let Err(e) = fs::remove_file(p) {
                tracing::warn!(path = %p.display(), error = %e, "could not remove old WAL segment");
            }
        }
        if self.durable() && !old.is_empty() {
            if let Err(e) = segment::sync_dir(&self.dir) {
                tracing::warn!(error = %e, "could not sync WAL directory after reset");
            }
        }
        tracing::info!(next_lsn = next.0, "WAL reset");
        Ok(())
    }
}

/// Take an exclusive advisory lock on `dir/LOCK`, so that a second `Wal` on
/// the same directory (in this process or another) fails instead of
/// interleaving writes.
fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(WalError::Io {
            path,
            source: io::Error::new(
                io::ErrorKind::WouldBlock,
                "the WAL directory is already open by another Wal",
            ),
        }),
        // Some filesystems cannot lock; run without the guard there.
        Err(TryLockError::Error(e)) if e.kind() == io::ErrorKind::Unsupported => Ok(file),
        Err(TryLockError::Error(source)) => Err(WalError::Io { path, source }),
    }
}

#[cfg(test)]
mod retention_edge_tests {
    use super::*;
    use replidb_core::{Epoch, Hlc, Op, Record};

    #[test]
    fn retention_with_only_the_active_segment_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        for i in 1..=3 {
            wal.append(&Record {
                lsn: Lsn(i),
                epoch: Epoch(1),
                hlc: Hlc::default(),
                op: Op::Delete { key: "k".into() },
            })
            .unwrap();
        }
        wal.sync().unwrap();
        assert_eq!(wal.remove_segments_before(Lsn(u64::MAX)).unwrap(), 0);
        assert_eq!(wal.first_lsn(), Lsn(1));
        assert_eq!(wal.segment_count(), 1);
    }
}

#[cfg(test)]
mod tail_cache_tests {
    use super::*;
    use crate::TAIL_CACHE_BYTES_MAX;
    use replidb_core::{Epoch, Hlc, Op, Record};

    fn put(i: u64, value: &str) -> Record {
        Record {
            lsn: Lsn(i),
            epoch: Epoch(1),
            hlc: Hlc::default(),
            op: Op::Put {
                key: format!("k{i}"),
                value: value.as_bytes().to_vec(),
            },
        }
    }

    fn write(wal: &mut Wal, lsns: std::ops::RangeInclusive<u64>, value: &str) {
        for i in lsns {
            wal.append(&put(i, value)).unwrap();
        }
        wal.sync().unwrap();
    }

    /// A cursor that keeps up is served from memory, and what it gets is
    /// what the files hold.
    #[test]
    fn a_cursor_that_keeps_up_reads_from_memory_the_same_records() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let mut live = wal.reader().cursor(Lsn(1)).unwrap();
        assert_eq!(
            live.next_batch_in_memory(100, usize::MAX).unwrap(),
            Some(vec![])
        );
        write(&mut wal, 1..=20, "a");
        let from_memory = live.next_batch_in_memory(100, usize::MAX).unwrap();
        let from_files: Vec<Record> = {
            drop(wal);
            let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
            let mut c = wal.reader().cursor(Lsn(1)).unwrap();
            // A reopened log has nothing in memory yet.
            assert_eq!(c.next_batch_in_memory(100, usize::MAX).unwrap(), None);
            c.next_batch(100, usize::MAX).unwrap()
        };
        assert_eq!(from_memory, Some(from_files));
    }

    /// Records older than the cache holds come from the files, then the
    /// cursor goes on from memory: one contiguous run either way.
    #[test]
    fn a_cursor_behind_the_cache_reads_the_files_then_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let big = "v".repeat(64 << 10);
        // Far more than the cache keeps.
        let n = (2 * TAIL_CACHE_BYTES_MAX / big.len()) as u64;
        write(&mut wal, 1..=n, &big);
        let mut c = wal.reader().cursor(Lsn(1)).unwrap();
        assert_eq!(c.next_batch_in_memory(10, usize::MAX).unwrap(), None);
        let mut seen = 0;
        while let Ok(batch) = c.next_batch(7, usize::MAX) {
            if batch.is_empty() {
                break;
            }
            for r in batch {
                seen += 1;
                assert_eq!(r, put(seen, &big));
            }
        }
        assert_eq!(seen, n);
        write(&mut wal, n + 1..=n + 3, "b");
        let more = c.next_batch_in_memory(10, usize::MAX).unwrap().unwrap();
        assert_eq!(
            more,
            (n + 1..=n + 3).map(|i| put(i, "b")).collect::<Vec<_>>()
        );
    }

    /// What waits for the next sync to enter the cache stays within the
    /// cache's limit, and a record larger than the cache is not copied;
    /// cursors still read every record, the big one from the files.
    #[test]
    fn copies_kept_for_the_cache_stay_within_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            tail_cache_bytes: 4096,
            ..WalOptions::default()
        };
        let (mut wal, _) = Wal::open(dir.path(), opts).unwrap();
        let mut c = wal.reader().cursor(Lsn(1)).unwrap();
        for i in 1..=200 {
            wal.append(&put(i, "0123456789")).unwrap();
            assert!(wal.unsynced_tail_bytes <= 4096);
        }
        let kept = wal.unsynced_tail.len() as u64;
        assert!(kept > 0 && kept < 200);
        assert_eq!(wal.unsynced_tail.back().map(|(r, _)| r.lsn), Some(Lsn(200)));
        wal.sync().unwrap();
        let big = "b".repeat(8192);
        wal.append(&put(201, &big)).unwrap();
        assert!(wal.unsynced_tail.is_empty());
        wal.append(&put(202, "after")).unwrap();
        wal.sync().unwrap();
        let mut seen = Vec::new();
        while seen.len() < 202 {
            let batch = c.next_batch(50, usize::MAX).unwrap();
            assert!(!batch.is_empty());
            seen.extend(batch);
        }
        assert_eq!(seen[200], put(201, &big));
        assert_eq!(seen[201], put(202, "after"));
        assert_eq!(seen[199], put(200, "0123456789"));
    }

    /// After a rewind the same LSNs carry other records: the cache must
    /// never serve the removed ones.
    #[test]
    fn a_rewound_log_never_serves_removed_records_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        write(&mut wal, 1..=10, "old");
        wal.truncate_after(Lsn(4)).unwrap();
        write(&mut wal, 5..=7, "new");
        let mut c = wal.reader().cursor(Lsn(1)).unwrap();
        let mut all = Vec::new();
        loop {
            let batch = c.next_batch(100, usize::MAX).unwrap();
            if batch.is_empty() {
                break;
            }
            all.extend(batch);
        }
        let expected: Vec<Record> = (1..=4)
            .map(|i| put(i, "old"))
            .chain((5..=7).map(|i| put(i, "new")))
            .collect();
        assert_eq!(all, expected);
        wal.reset(Lsn(100)).unwrap();
        write(&mut wal, 100..=101, "reset");
        let mut c = wal.reader().cursor(Lsn(100)).unwrap();
        assert_eq!(
            c.next_batch_in_memory(10, usize::MAX).unwrap(),
            Some(vec![put(100, "reset"), put(101, "reset")])
        );
    }
}
