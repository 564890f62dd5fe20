//! truncate_after, remove_segments_before, append checks, cursor errors.

mod common;

use std::fs;

use common::*;
use replidb_core::{Epoch, Lsn};
use replidb_wal::{FsyncPolicy, Wal, WalError};

#[test]
fn append_requires_the_next_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(1024, FsyncPolicy::Never)).unwrap();
    assert!(matches!(
        wal.append(&rec(2)),
        Err(WalError::NotContiguous {
            expected: Lsn(1),
            got: Lsn(2)
        })
    ));
    wal.append(&rec(1)).unwrap();
    assert!(matches!(
        wal.append(&rec(1)),
        Err(WalError::NotContiguous {
            expected: Lsn(2),
            got: Lsn(1)
        })
    ));
    // Appended but unsynced records are invisible to readers.
    assert_eq!(wal.last_lsn(), Lsn(1));
    assert_eq!(wal.flushed_lsn(), Lsn(0));
    assert!(wal.reader().read_range(Lsn(1), 10).unwrap().is_empty());
    let stats = wal.sync().unwrap();
    assert_eq!(stats.records, 1);
    assert_eq!(stats.bytes, frame_len(&rec(1)));
    assert_eq!(wal.reader().flushed_lsn(), Lsn(1));
    assert_eq!(wal.reader().read_range(Lsn(1), 10).unwrap(), vec![rec(1)]);
    assert_eq!(wal.sync().unwrap().records, 0);
}

#[test]
fn truncate_after_returns_removed_records_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(1024, FsyncPolicy::Always)).unwrap();
    write_range(&mut wal, 1, 100);
    // Unsynced records are part of the log and come back too.
    for l in 101..=105 {
        wal.append(&rec(l)).unwrap();
    }
    let before = wal.segment_count();
    let removed = wal.truncate_after(Lsn(37)).unwrap();
    assert_eq!(removed, (38..=105).map(rec).collect::<Vec<_>>());
    assert_eq!((wal.last_lsn(), wal.flushed_lsn()), (Lsn(37), Lsn(37)));
    assert_eq!(wal.last_epoch(), Epoch(1));
    assert!(wal.segment_count() < before);
    assert_eq!(segment_files(dir.path()).len(), wal.segment_count());
    assert!(wal.truncate_after(Lsn(37)).unwrap().is_empty());
    assert!(wal.truncate_after(Lsn(50)).unwrap().is_empty());

    // The log continues with different records at the same LSNs.
    wal.append(&rec_in_epoch(38, Epoch(9))).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), opts(1024, FsyncPolicy::Always)).unwrap();
    assert_eq!(report.last_lsn, Lsn(38));
    assert_eq!(report.last_epoch, Epoch(9));
    let mut expected: Vec<_> = (1..=37).map(rec).collect();
    expected.push(rec_in_epoch(38, Epoch(9)));
    assert_eq!(read_all(&wal.reader(), 1), expected);
}

#[test]
fn truncate_at_a_segment_boundary_keeps_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(1024, FsyncPolicy::Never)).unwrap();
    for l in 1..=80 {
        wal.append(&rec_in_epoch(l, Epoch(l))).unwrap();
    }
    wal.sync().unwrap();
    let second = first_of(&segment_files(dir.path())[1]);
    let removed = wal.truncate_after(Lsn(second - 1)).unwrap();
    assert_eq!(removed.first().unwrap().lsn, Lsn(second));
    assert_eq!(wal.last_epoch(), Epoch(second - 1));
    assert_eq!(wal.segment_count(), 2); // the emptied segment stays, active
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), opts(1024, FsyncPolicy::Never)).unwrap();
    assert_eq!(report.last_lsn, Lsn(second - 1));
    assert_eq!(report.last_epoch, Epoch(second - 1));
    // Everything removed: first_lsn == last_lsn + 1.
    let mut wal = wal;
    wal.truncate_after(Lsn(0)).unwrap();
    assert_eq!((wal.first_lsn(), wal.last_lsn()), (Lsn(1), Lsn(0)));
    assert_eq!(wal.last_epoch(), Epoch(0));
    assert_eq!(wal.segment_count(), 1);
}

#[test]
fn cursors_see_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(1024, FsyncPolicy::Never)).unwrap();
    write_range(&mut wal, 1, 60);
    let reader = wal.reader();
    let mut ahead = reader.cursor(Lsn(1)).unwrap();
    assert_eq!(ahead.next_batch(50, usize::MAX).unwrap().len(), 50);
    let mut behind = reader.cursor(Lsn(1)).unwrap();
    assert_eq!(behind.next_batch(40, usize::MAX).unwrap().len(), 40);

    wal.truncate_after(Lsn(40)).unwrap();
    for l in 41..=45 {
        wal.append(&rec_in_epoch(l, Epoch(7))).unwrap();
    }
    wal.sync().unwrap();
    for _ in 0..2 {
        assert!(matches!(
            ahead.next_batch(10, usize::MAX),
            Err(WalError::Truncated {
                requested: Lsn(51),
                last_lsn: Lsn(40)
            })
        ));
    }
    let b = behind.next_batch(100, usize::MAX).unwrap();
    assert_eq!(
        b,
        (41..=45)
            .map(|l| rec_in_epoch(l, Epoch(7)))
            .collect::<Vec<_>>()
    );

    // Reset above a cursor's position truncates it, below compacts it.
    let mut at_46 = reader.cursor(Lsn(46)).unwrap();
    let mut at_10 = reader.cursor(Lsn(10)).unwrap();
    assert_eq!(behind.next_lsn(), Lsn(46));
    wal.reset(Lsn(30)).unwrap();
    assert!(matches!(
        at_46.next_batch(1, 1),
        Err(WalError::Truncated {
            requested: Lsn(46),
            last_lsn: Lsn(29)
        })
    ));
    assert!(matches!(
        at_10.next_batch(1, 1),
        Err(WalError::Compacted {
            requested: Lsn(10),
            first_available: Lsn(30)
        })
    ));
    let mut at_30 = reader.cursor(Lsn(30)).unwrap();
    wal.append(&rec(30)).unwrap();
    wal.sync().unwrap();
    assert_eq!(at_30.next_batch(5, usize::MAX).unwrap(), vec![rec(30)]);
}

#[test]
fn truncate_below_the_first_lsn_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(1 << 20, FsyncPolicy::Never)).unwrap();
    wal.reset(Lsn(100)).unwrap();
    write_range(&mut wal, 100, 110);
    assert!(matches!(
        wal.truncate_after(Lsn(50)),
        Err(WalError::Compacted {
            requested: Lsn(51),
            first_available: Lsn(100)
        })
    ));
    assert_eq!(wal.truncate_after(Lsn(99)).unwrap().len(), 11);
    assert_eq!((wal.first_lsn(), wal.last_lsn()), (Lsn(100), Lsn(99)));
}

#[test]
fn remove_segments_before_deletes_only_whole_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(1024, FsyncPolicy::Always)).unwrap();
    write_range(&mut wal, 1, 200);
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 6);
    let firsts: Vec<u64> = segs.iter().map(|p| first_of(p)).collect();
    let reader = wal.reader();
    let mut old_cursor = reader.cursor(Lsn(2)).unwrap();
    assert_eq!(old_cursor.next_batch(1, usize::MAX).unwrap(), vec![rec(2)]);

    // A bound inside segment 3 removes segments 0..3 only.
    let bound = firsts[3] + 1;
    let expected_freed: u64 = segs[..3]
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(
        wal.remove_segments_before(Lsn(bound)).unwrap(),
        expected_freed
    );
    assert_eq!(segment_files(dir.path()), segs[3..].to_vec());
    assert_eq!(wal.first_lsn(), Lsn(firsts[3]));
    assert_eq!(reader.first_lsn(), Lsn(firsts[3]));
    assert!(matches!(
        reader.cursor(Lsn(firsts[3] - 1)),
        Err(WalError::Compacted { .. })
    ));
    assert!(matches!(
        old_cursor.next_batch(10, usize::MAX),
        Err(WalError::Compacted {
            requested: Lsn(3),
            ..
        })
    ));
    assert_eq!(
        read_all(&reader, firsts[3]),
        (firsts[3]..=200).map(rec).collect::<Vec<_>>()
    );
    assert_eq!(wal.remove_segments_before(Lsn(bound)).unwrap(), 0);

    // Never the active segment, even with a bound past the end.
    wal.remove_segments_before(Lsn(1_000)).unwrap();
    assert_eq!(wal.segment_count(), 1);
    assert_eq!(wal.last_lsn(), Lsn(200));
    let active_first = first_of(&segment_files(dir.path())[0]);
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), opts(1024, FsyncPolicy::Always)).unwrap();
    assert_eq!(report.first_lsn, Lsn(active_first));
    assert_eq!(report.last_lsn, Lsn(200));
    assert_eq!(wal.first_lsn(), Lsn(active_first));
}

#[test]
fn batches_respect_limits_but_return_at_least_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(1024, FsyncPolicy::Never)).unwrap();
    write_range(&mut wal, 1, 30);
    let mut c = wal.reader().cursor(Lsn(5)).unwrap();
    assert_eq!(c.next_batch(1, 0).unwrap(), vec![rec(5)]);
    assert_eq!(c.next_batch(3, usize::MAX).unwrap().len(), 3);
    let limit = (frame_len(&rec(9)) + 1) as usize;
    assert_eq!(c.next_batch(100, limit).unwrap().len(), 2);
    assert_eq!(c.next_lsn(), Lsn(11));
    // A cursor beyond the end waits for the log to get there.
    let mut future = wal.reader().cursor(Lsn(32)).unwrap();
    assert!(future.next_batch(10, usize::MAX).unwrap().is_empty());
    write_range(&mut wal, 31, 33);
    assert_eq!(
        future.next_batch(10, usize::MAX).unwrap(),
        vec![rec(32), rec(33)]
    );
}
