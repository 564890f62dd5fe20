//! The in-memory tail and the preallocated files against a model of the
//! log: whatever mix of appends, syncs, rewinds, resets and reopens, with a
//! tail small enough to evict and segments that end in preallocated zeros,
//! cursors (through the files or from memory only) return exactly the
//! flushed records of the current log, in order, and never a removed one.

use proptest::prelude::*;
use replidb_core::{Epoch, Hlc, Lsn, Op, Record};
use replidb_wal::{FsyncPolicy, Wal, WalCursor, WalError, WalOptions};

#[derive(Clone, Debug)]
enum Step {
    /// Append this many records (not synced).
    Append(u8),
    Sync,
    /// Truncate after `last - n` (clamped to what is still held).
    Rewind(u8),
    /// Reset the log to start after a gap of this many LSNs.
    Reset(u8),
    /// Close the log (losing what was not synced) and recover it.
    Reopen,
    /// Read with cursor `which` at most `max` records; from memory only?
    Read {
        which: bool,
        max: u8,
        memory_only: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u8..20).prop_map(Step::Append),
        3 => Just(Step::Sync),
        1 => (0u8..30).prop_map(Step::Rewind),
        1 => (0u8..5).prop_map(Step::Reset),
        1 => Just(Step::Reopen),
        6 => (any::<bool>(), 1u8..40, any::<bool>())
            .prop_map(|(which, max, memory_only)| Step::Read { which, max, memory_only }),
    ]
}

/// Records differ by `generation` so a stale copy of an LSN is caught.
fn record(lsn: u64, generation: u32) -> Record {
    Record {
        lsn: Lsn(lsn),
        epoch: Epoch(1),
        hlc: Hlc::default(),
        op: Op::Put {
            key: format!("k{lsn}"),
            value: format!("g{generation}-{}", "x".repeat((lsn % 50) as usize)).into_bytes(),
        },
    }
}

/// The log as it should be: records `first..=last`, flushed up to `flushed`.
struct Model {
    first: u64,
    records: Vec<Record>,
    flushed: u64,
    generation: u32,
}

impl Model {
    fn get(&self, lsn: u64) -> &Record {
        &self.records[(lsn - self.first) as usize]
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn cursors_return_exactly_the_flushed_log(steps in prop::collection::vec(step(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            segment_bytes: 2048,
            fsync: FsyncPolicy::Never,
            // A few records: every run evicts.
            tail_cache_bytes: 1024,
            // Less than a segment: some segments are sealed with zeros
            // still ahead of their last frame, some fill up first.
            preallocate_bytes: 700,
        };
        let (mut wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
        let mut model = Model { first: 1, records: Vec::new(), flushed: 0, generation: 0 };
        let mut cursors: [WalCursor; 2] = [
            wal.reader().cursor(Lsn(1)).unwrap(),
            wal.reader().cursor(Lsn(1)).unwrap(),
        ];
        for step in steps {
            match step {
                Step::Append(n) => {
                    for _ in 0..n {
                        let lsn = model.first + model.records.len() as u64;
                        let r = record(lsn, model.generation);
                        wal.append(&r).unwrap();
                        model.records.push(r);
                    }
                }
                Step::Sync => {
                    wal.sync().unwrap();
                    model.flushed = model.first + model.records.len() as u64 - 1;
                }
                Step::Rewind(n) => {
                    let lowest = model.first - 1;
                    let last = model.first + model.records.len() as u64 - 1;
                    let to = last.saturating_sub(n as u64).max(lowest);
                    if to >= last {
                        continue; // nothing to remove: a no-op
                    }
                    wal.truncate_after(Lsn(to)).unwrap();
                    model.records.truncate((to + 1 - model.first) as usize);
                    model.flushed = to;
                    model.generation += 1;
                }
                Step::Reset(gap) => {
                    let next = model.first + model.records.len() as u64 + gap as u64;
                    wal.reset(Lsn(next)).unwrap();
                    model.first = next;
                    model.records.clear();
                    model.flushed = next - 1;
                    model.generation += 1;
                }
                Step::Reopen => {
                    drop(cursors);
                    drop(wal);
                    let (reopened, report) = Wal::open(dir.path(), opts.clone()).unwrap();
                    wal = reopened;
                    // Preallocated zeros are cut, never reported as torn.
                    prop_assert_eq!(report.truncated_bytes, 0);
                    // Unsynced records may survive (a sealed segment's were
                    // written out when it rolled), synced ones always do.
                    let last = report.last_lsn.0;
                    let appended = model.first + model.records.len() as u64 - 1;
                    prop_assert!(last >= model.flushed && last <= appended, "recovered up to {}", last);
                    prop_assert_eq!(report.first_lsn.0, model.first);
                    model.records.truncate((last + 1 - model.first) as usize);
                    model.flushed = last;
                    cursors = [
                        wal.reader().cursor(Lsn(model.first)).unwrap(),
                        wal.reader().cursor(Lsn(model.first)).unwrap(),
                    ];
                }
                Step::Read { which, max, memory_only } => {
                    let cursor = &mut cursors[which as usize];
                    let next = cursor.next_lsn().0;
                    let got = if memory_only {
                        cursor.next_batch_in_memory(max as usize, usize::MAX)
                    } else {
                        cursor.next_batch(max as usize, usize::MAX).map(Some)
                    };
                    match got {
                        // A removed start, or records it returned removed:
                        // the caller starts over from what the log holds.
                        Err(WalError::Compacted { .. } | WalError::Truncated { .. }) => {
                            *cursor = wal.reader().cursor(Lsn(model.first)).unwrap();
                        }
                        Err(e) => panic!("{e}"),
                        // Not in memory: allowed only if there is something to read.
                        Ok(None) => prop_assert!(next <= model.flushed, "None with nothing to read"),
                        Ok(Some(batch)) => {
                            let available = model.flushed.saturating_sub(next - 1).min(max as u64);
                            if memory_only {
                                prop_assert!(batch.len() as u64 <= available);
                                prop_assert!(available == 0 || !batch.is_empty());
                            } else {
                                prop_assert_eq!(batch.len() as u64, available);
                            }
                            for (i, r) in batch.iter().enumerate() {
                                let lsn = next + i as u64;
                                prop_assert!(lsn >= model.first && lsn <= model.flushed);
                                prop_assert_eq!(r, model.get(lsn));
                            }
                        }
                    }
                }
            }
        }
    }
}
