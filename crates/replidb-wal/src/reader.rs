//! Readers: state shared with the writer, [`WalReader`] and [`WalCursor`].
//!
//! Concurrency protocol:
//! - `flushed` (an atomic) is raised by `Wal::sync` only after the bytes are
//!   written, so a cursor that loads it and then reads the file sees every
//!   record up to it complete. Cursors never decode past it.
//! - The segment list, `first_lsn` and the rewind history sit behind an
//!   `RwLock`. A cursor holds the read lock for a whole batch; the writer
//!   takes the write lock only to roll, truncate, reset or drop segments, so
//!   appends and syncs never wait for readers, while a truncation never
//!   changes bytes under a cursor that is reading them.
//! - The newest flushed records are also kept decoded in memory, in the
//!   [`Tail`] (at most [`TAIL_CACHE_BYTES_MAX`]): `Wal::sync` adds what it
//!   publishes *before* raising `flushed`, and a truncation or reset
//!   empties it under the state's write lock. A cursor serves a record
//!   from the tail when it is there, so a leader streaming to followers
//!   that keep up never reads a segment file (etcd's raft and TiKV keep
//!   such an entry cache for the same reason).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use std::path::PathBuf;

use replidb_core::{Lsn, Record};

use crate::segment::{corruption, SegReader};
use crate::{Result, WalError};

/// Most bytes of records (their frames' size plus their in-memory
/// header) the WAL's in-memory tail of newest flushed records keeps by
/// default ([`WalOptions::tail_cache_bytes`](crate::WalOptions)); older
/// records are read from the files. Bounds the leader's memory for it; a follower that
/// is further behind than this reads from disk, as before.
pub const TAIL_CACHE_BYTES_MAX: usize = 4 << 20;

/// The newest flushed records, decoded, contiguous in LSN order.
pub(crate) struct Tail {
    /// The limit, [`Tail::cost`] of all records kept.
    max_bytes: usize,
    /// Each record with the size of its frame in the log.
    records: VecDeque<(Record, usize)>,
    /// What the records cost, by [`Tail::cost`].
    bytes: usize,
}

impl Tail {
    /// An empty tail of at most `max_bytes`.
    pub(crate) fn new(max_bytes: usize) -> Tail {
        Tail {
            max_bytes,
            records: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Keep `rec` (the record after the newest one kept, or the first one
    /// after a gap, which drops the rest), evicting the oldest records
    /// beyond the limit.
    pub(crate) fn push(&mut self, rec: Record, frame_bytes: usize) {
        if self
            .records
            .back()
            .is_some_and(|(last, _)| last.lsn.next() != rec.lsn)
        {
            self.clear();
        }
        self.records.push_back((rec, frame_bytes));
        self.bytes += Self::cost(frame_bytes);
        while self.bytes > self.max_bytes {
            match self.records.pop_front() {
                Some((_, n)) => self.bytes -= Self::cost(n),
                None => break,
            }
        }
    }

    /// What a record of `frame_bytes` costs the cache: its frame's size
    /// (about its heap bytes) and its in-memory header.
    pub(crate) fn cost(frame_bytes: usize) -> usize {
        frame_bytes + std::mem::size_of::<Record>()
    }

    /// Forget everything (the log was cut or replaced).
    pub(crate) fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }

    /// The record `lsn` and its frame's size, if kept.
    fn get(&self, lsn: Lsn) -> Option<&(Record, usize)> {
        let first = self.records.front()?.0.lsn;
        let idx = lsn.0.checked_sub(first.0)?;
        self.records.get(usize::try_from(idx).ok()?)
    }
}

/// State the writer shares with every reader and cursor.
pub(crate) struct Shared {
    /// Highest LSN that is written (and fsynced under `FsyncPolicy::Always`).
    pub(crate) flushed: AtomicU64,
    pub(crate) state: RwLock<SharedState>,
    /// The newest flushed records, decoded (see the module docs).
    pub(crate) tail: Mutex<Tail>,
}

/// The part of the shared state that changes together.
pub(crate) struct SharedState {
    /// `(first_lsn, path)` of every live segment, in LSN order, never empty.
    pub(crate) segments: Vec<(Lsn, PathBuf)>,
    /// Lowest LSN still held.
    pub(crate) first_lsn: Lsn,
    /// Bumped by every `truncate_after` and `reset`.
    pub(crate) change_seq: u64,
    /// `(change_seq, last LSN kept)` for every rewind, so a cursor can tell
    /// whether any record it already returned was removed. One entry per
    /// failover or snapshot install: small enough to keep forever.
    pub(crate) rewinds: Vec<(u64, Lsn)>,
}

impl Shared {
    pub(crate) fn new(segments: Vec<(Lsn, PathBuf)>, flushed: Lsn, tail_bytes: usize) -> Shared {
        let first_lsn = segments.first().map(|s| s.0).unwrap_or(Lsn(1));
        Shared {
            flushed: AtomicU64::new(flushed.0),
            state: RwLock::new(SharedState {
                segments,
                first_lsn,
                change_seq: 0,
                rewinds: Vec::new(),
            }),
            tail: Mutex::new(Tail::new(tail_bytes)),
        }
    }

    pub(crate) fn flushed(&self) -> Lsn {
        Lsn(self.flushed.load(Ordering::Acquire))
    }

    pub(crate) fn set_flushed(&self, lsn: Lsn) {
        self.flushed.store(lsn.0, Ordering::Release);
    }

    // A poisoned lock means a panic elsewhere mid-update; the writer keeps
    // the shared state consistent at every step, so carrying on is sound.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, SharedState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, SharedState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn tail(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SharedState {
    /// Index of the segment that holds (or will hold) `lsn`, if any.
    fn segment_for(&self, lsn: Lsn) -> Option<usize> {
        let after = self.segments.partition_point(|(first, _)| *first <= lsn);
        after.checked_sub(1)
    }

    /// The lowest "last kept" LSN among rewinds after `seq`.
    fn lowest_rewind_since(&self, seq: u64) -> Option<Lsn> {
        self.rewinds
            .iter()
            .filter(|(s, _)| *s > seq)
            .map(|(_, kept)| *kept)
            .min()
    }
}

/// A cheap, cloneable handle for reading the log from other threads.
#[derive(Clone)]
pub struct WalReader {
    pub(crate) shared: Arc<Shared>,
}

impl WalReader {
    /// Highest LSN readers may see: the last one published by `Wal::sync`.
    pub fn flushed_lsn(&self) -> Lsn {
        self.shared.flushed()
    }

    /// Lowest LSN still held in the log.
    pub fn first_lsn(&self) -> Lsn {
        self.shared.read().first_lsn
    }

    /// A cursor whose first record will be `from`. Fails with
    /// [`WalError::Compacted`] if `from` was already removed. A cursor past
    /// the end simply returns nothing until the log reaches it.
    pub fn cursor(&self, from: Lsn) -> Result<WalCursor> {
        let state = self.shared.read();
        if from < state.first_lsn {
            return Err(WalError::Compacted {
                requested: from,
                first_available: state.first_lsn,
            });
        }
        Ok(WalCursor {
            shared: Arc::clone(&self.shared),
            next_lsn: from,
            seen_seq: state.change_seq,
            pos: None,
            rewound_to: None,
        })
    }

    /// Up to `max_records` flushed records starting at `from`.
    pub fn read_range(&self, from: Lsn, max_records: usize) -> Result<Vec<Record>> {
        self.cursor(from)?.next_batch(max_records, usize::MAX)
    }
}

impl fmt::Debug for WalReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalReader")
            .field("first_lsn", &self.first_lsn())
            .field("flushed_lsn", &self.flushed_lsn())
            .finish()
    }
}

/// Where a positioned cursor is.
struct Position {
    /// First LSN of the segment being read.
    seg_first: Lsn,
    reader: SegReader,
}

/// An iterator over flushed records that follows the log as it grows.
///
/// Holds an open segment file and byte offset, so sequential batches cost
/// one read each; positioning at the start LSN scans its segment once, the
/// first time records are requested.
pub struct WalCursor {
    shared: Arc<Shared>,
    next_lsn: Lsn,
    /// `change_seq` the position was computed under.
    seen_seq: u64,
    pos: Option<Position>,
    /// Set once records this cursor returned were removed; it is then dead.
    rewound_to: Option<Lsn>,
}

impl fmt::Debug for WalCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalCursor")
            .field("next_lsn", &self.next_lsn)
            .field("positioned", &self.pos.is_some())
            .finish_non_exhaustive()
    }
}

impl WalCursor {
    /// LSN of the next record this cursor will return.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The records from `next_lsn()` up to the flushed LSN, at most
    /// `max_records` and roughly `max_bytes` of frames (at least one record
    /// when any is available). Empty when caught up. Errors:
    /// [`WalError::Compacted`] if `next_lsn()` was removed by retention or a
    /// reset, [`WalError::Truncated`] if records this cursor already returned
    /// were removed by `truncate_after` or `reset` (the cursor stays dead).
    pub fn next_batch(&mut self, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let batch = self.batch(max_records, max_bytes, false)?;
        Ok(batch.unwrap_or_default())
    }

    /// Like [`WalCursor::next_batch`], but only if no segment file has to
    /// be read: `Ok(None)` when the next record is flushed but no longer
    /// held in memory. Cheap enough to call on an async task (it takes two
    /// short locks and clones records), so a caller can keep blocking
    /// reads for when a follower is behind.
    pub fn next_batch_in_memory(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<Record>>> {
        self.batch(max_records, max_bytes, true)
    }

    fn batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        memory_only: bool,
    ) -> Result<Option<Vec<Record>>> {
        let shared = Arc::clone(&self.shared);
        let state = shared.read();
        if state.change_seq != self.seen_seq {
            if let Some(kept) = state.lowest_rewind_since(self.seen_seq) {
                if self.next_lsn.prev() > kept {
                    self.rewound_to = Some(kept);
                }
            }
            // Files may have been cut or replaced: find our place again.
            self.pos = None;
            self.seen_seq = state.change_seq;
        }
        if let Some(last_lsn) = self.rewound_to {
            return Err(WalError::Truncated {
                requested: self.next_lsn,
                last_lsn,
            });
        }
        if self.next_lsn < state.first_lsn {
            self.pos = None;
            return Err(WalError::Compacted {
                requested: self.next_lsn,
                first_available: state.first_lsn,
            });
        }
        let flushed = shared.flushed();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let max_records = max_records.max(1);
        let room = |out: &Vec<Record>, bytes: usize| {
            out.len() < max_records && (out.is_empty() || bytes < max_bytes)
        };
        while self.next_lsn <= flushed && room(&out, bytes) {
            // From memory while the tail holds the records (the tail never
            // holds a record past `flushed`: it gets them before the flush
            // point moves).
            {
                let tail = shared.tail();
                while self.next_lsn <= flushed && room(&out, bytes) {
                    let Some((rec, n)) = tail.get(self.next_lsn) else {
                        break;
                    };
                    debug_assert_eq!(rec.lsn, self.next_lsn);
                    bytes += n;
                    out.push(rec.clone());
                    self.next_lsn = self.next_lsn.next();
                    // The file position no longer matches `next_lsn`.
                    self.pos = None;
                }
            }
            if self.next_lsn > flushed || !room(&out, bytes) {
                break;
            }
            if memory_only {
                if out.is_empty() {
                    return Ok(None);
                }
                break;
            }
            let (rec, n) = self.read_one(&state)?;
            bytes += n;
            out.push(rec);
            self.next_lsn = self.next_lsn.next();
        }
        if let Some(p) = &mut self.pos {
            p.reader.discard_read_ahead();
        }
        Ok(Some(out))
    }

    /// Decode record `next_lsn`, which is known to be flushed, positioning
    /// or switching segments first if needed.
    fn read_one(&mut self, state: &SharedState) -> Result<(Record, usize)> {
        let idx = state
            .segment_for(self.next_lsn)
            .ok_or(WalError::Compacted {
                requested: self.next_lsn,
                first_available: state.first_lsn,
            })?;
        let (seg_first, path) = &state.segments[idx];
        let p = match self.pos.take() {
            Some(p) if p.seg_first == *seg_first => self.pos.insert(p),
            _ => {
                let (mut reader, _) = SegReader::open(path, *seg_first)?;
                // Records before next_lsn in this segment are all flushed,
                // since next_lsn itself is; skip them along the length chain.
                let mut lsn = *seg_first;
                while lsn < self.next_lsn {
                    reader.skip_frame(lsn)?;
                    lsn = lsn.next();
                }
                self.pos.insert(Position {
                    seg_first: *seg_first,
                    reader,
                })
            }
        };
        let off = p.reader.offset();
        let Some((rec, n)) = p.reader.next_record()? else {
            return Err(corruption(
                p.reader.path(),
                off,
                format!("flushed record {} is missing", self.next_lsn),
            ));
        };
        if rec.lsn != self.next_lsn {
            return Err(corruption(
                p.reader.path(),
                off,
                format!("record has LSN {}, expected {}", rec.lsn, self.next_lsn),
            ));
        }
        Ok((rec, n))
    }
}
