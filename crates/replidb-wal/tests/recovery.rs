//! Reopening: multi-segment logs, torn tails, corruption, reset.

mod common;

use std::fs::{self, OpenOptions};

use common::*;
use replidb_core::{Epoch, Lsn};
use replidb_wal::{codec, FsyncPolicy, Wal, WalError, SEGMENT_HEADER_LEN};

#[test]
fn many_segments_survive_reopen_and_cursor_follows_rollover() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, report) = Wal::open(dir.path(), opts(4096, FsyncPolicy::Always)).unwrap();
    assert_eq!((report.first_lsn, report.last_lsn), (Lsn(1), Lsn(0)));
    assert_eq!(wal.first_lsn(), Lsn(1));

    // A live cursor that follows the writer across rollovers.
    let reader = wal.reader();
    let mut live = reader.cursor(Lsn(1)).unwrap();
    let mut seen = Vec::new();
    for chunk in 0..60 {
        write_range(&mut wal, chunk * 10 + 1, chunk * 10 + 10);
        loop {
            let b = live.next_batch(4, 200).unwrap();
            if b.is_empty() {
                break;
            }
            seen.extend(b);
        }
    }
    let expected: Vec<_> = (1..=600).map(rec).collect();
    assert_eq!(seen, expected);
    assert_eq!(live.next_lsn(), Lsn(601));
    let segs = wal.segment_count();
    assert!(segs >= 5, "only {segs} segments");
    assert_eq!(segment_files(dir.path()).len(), segs);
    // Sealed segments end at their last frame; the active one may end in
    // preallocated zeros, which `size_bytes` does not count.
    let files = segment_files(dir.path());
    let sealed_on_disk: u64 = files[..segs - 1]
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    let active_on_disk = fs::metadata(&files[segs - 1]).unwrap().len();
    let active_log = offset_of(first_of(&files[segs - 1]), 601);
    assert_eq!(wal.size_bytes(), sealed_on_disk + active_log);
    assert!(active_on_disk >= active_log && active_on_disk <= 4096);
    // Every segment but the last respects the size limit.
    for p in &files[..segs - 1] {
        assert!(fs::metadata(p).unwrap().len() <= 4096);
    }
    assert_eq!(
        segment_files(dir.path())[0].file_name().unwrap(),
        "00000000000000000001.wal"
    );
    drop(wal);

    let (mut wal, report) = Wal::open(dir.path(), opts(4096, FsyncPolicy::Always)).unwrap();
    assert_eq!(report.first_lsn, Lsn(1));
    assert_eq!(report.last_lsn, Lsn(600));
    assert_eq!(report.last_epoch, Epoch(7));
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.segments, segs);
    assert_eq!(wal.flushed_lsn(), Lsn(600));
    assert_eq!(read_all(&wal.reader(), 1), expected);
    // Starting in the middle of a later segment.
    assert_eq!(read_all(&wal.reader(), 333), expected[332..].to_vec());
    // Starting exactly at a segment boundary.
    let second = first_of(&segment_files(dir.path())[1]);
    assert_eq!(
        read_all(&wal.reader(), second),
        expected[second as usize - 1..].to_vec()
    );
    write_range(&mut wal, 601, 610);
    assert_eq!(read_all(&wal.reader(), 595).len(), 16);
    assert!(wal.reader().read_range(Lsn(611), 10).unwrap().is_empty());
}

#[test]
fn torn_tail_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(1 << 20, FsyncPolicy::Always)).unwrap();
    write_range(&mut wal, 1, 10);
    drop(wal);
    let last = segment_files(dir.path()).pop().unwrap();
    let good_len = offset_of(1, 11);
    assert!(
        fs::metadata(&last).unwrap().len() > good_len,
        "zeros preallocated"
    );

    // Half of record 11's frame over the preallocated zeros, as a crash
    // mid-write would leave it.
    let mut frame = Vec::new();
    codec::encode_record(&rec(11), &mut frame).unwrap();
    let half = &frame[..frame.len() / 2];
    write_at(&last, good_len, half);

    let (mut wal, report) = Wal::open(dir.path(), opts(1 << 20, FsyncPolicy::Always)).unwrap();
    assert_eq!(report.last_lsn, Lsn(10));
    // Counted up to its last non-zero byte; the zeros after are space.
    let torn = half.iter().rposition(|b| *b != 0).unwrap() + 1;
    assert_eq!(report.truncated_bytes, torn as u64);
    assert_eq!(fs::metadata(&last).unwrap().len(), good_len);
    write_range(&mut wal, 11, 15);
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), opts(1 << 20, FsyncPolicy::Always)).unwrap();
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(
        read_all(&wal.reader(), 1),
        (1..=15).map(rec).collect::<Vec<_>>()
    );
}

#[test]
fn zero_and_garbage_tails_are_cut() {
    for tail in [
        vec![0u8; 5000],
        b"\x13\x00\x00\x00garbage!".to_vec(),
        vec![0xFF; 3],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), opts(1 << 20, FsyncPolicy::Never)).unwrap();
        write_range(&mut wal, 1, 5);
        drop(wal);
        let last = segment_files(dir.path()).pop().unwrap();
        // Over the preallocated zeros, and past them.
        write_at(&last, offset_of(1, 6), &tail);
        let end = fs::metadata(&last).unwrap().len();
        write_at(&last, end, &tail);
        let (mut wal, report) = Wal::open(dir.path(), opts(1 << 20, FsyncPolicy::Never)).unwrap();
        assert_eq!(report.last_lsn, Lsn(5));
        assert_eq!(fs::metadata(&last).unwrap().len(), offset_of(1, 6));
        // Zeros are preallocated space, not counted as torn.
        let counted = if tail.iter().all(|b| *b == 0) {
            0
        } else {
            end - offset_of(1, 6) + tail.len() as u64
        };
        assert_eq!(report.truncated_bytes, counted);
        wal.append(&rec(6)).unwrap();
        wal.sync().unwrap();
    }
}

#[test]
fn damaged_last_record_with_nothing_after_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(1 << 20, FsyncPolicy::Never)).unwrap();
    write_range(&mut wal, 1, 10);
    drop(wal);
    let last = segment_files(dir.path()).pop().unwrap();
    flip_byte(&last, offset_of(1, 10) + 20);
    let (wal, report) = Wal::open(dir.path(), opts(1 << 20, FsyncPolicy::Never)).unwrap();
    assert_eq!(wal.last_lsn(), Lsn(9));
    assert_eq!(report.truncated_bytes, frame_len(&rec(10)));
}

/// Write 1..=n with 1 KiB segments and return the segment files.
fn multi_segment_log(dir: &std::path::Path, n: u64) -> Vec<std::path::PathBuf> {
    let (mut wal, _) = Wal::open(dir, opts(1024, FsyncPolicy::Never)).unwrap();
    write_range(&mut wal, 1, n);
    assert!(wal.segment_count() >= 3);
    segment_files(dir)
}

fn expect_corruption(dir: &std::path::Path) -> (std::path::PathBuf, u64, String) {
    match Wal::open(dir, opts(1024, FsyncPolicy::Never)) {
        Err(e @ WalError::Corruption { .. }) => {
            let msg = e.to_string();
            let WalError::Corruption { file, offset, .. } = e else {
                unreachable!()
            };
            (file, offset, msg)
        }
        Err(e) => panic!("expected corruption, got {e}"),
        Ok((wal, _)) => panic!("opened a corrupt log: {wal:?}"),
    }
}

#[test]
fn corruption_in_an_early_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let segs = multi_segment_log(dir.path(), 100);
    let offset = offset_of(1, 3);
    flip_byte(&segs[0], offset + 12);
    let (file, at, msg) = expect_corruption(dir.path());
    assert_eq!(file, segs[0]);
    assert_eq!(at, offset);
    assert!(msg.contains("00000000000000000001.wal"), "{msg}");
    assert!(msg.contains(&format!("offset {offset}")), "{msg}");
}

#[test]
fn damage_mid_last_segment_with_valid_records_after_refuses_to_open() {
    // Payload damage (chain intact) and length damage (chain broken).
    for (delta, what) in [(20u64, "payload"), (1, "length")] {
        let dir = tempfile::tempdir().unwrap();
        let segs = multi_segment_log(dir.path(), 100);
        let last = segs.last().unwrap();
        let first = first_of(last);
        assert!(100 - first >= 3, "last segment too short for the test");
        let offset = offset_of(first, first + 1);
        flip_byte(last, offset + delta);
        let (file, at, msg) = expect_corruption(dir.path());
        assert_eq!(&file, last, "{what}");
        assert_eq!(at, offset, "{what}: {msg}");
    }
}

#[test]
fn reset_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(1024, FsyncPolicy::Always)).unwrap();
    write_range(&mut wal, 1, 60);
    let old_first = segment_files(dir.path())[0].clone();
    let stale = fs::read(&old_first).unwrap();
    wal.append(&rec(61)).unwrap(); // unsynced: discarded by the reset
    wal.reset(Lsn(500)).unwrap();
    assert_eq!((wal.first_lsn(), wal.last_lsn()), (Lsn(500), Lsn(499)));
    assert_eq!(wal.flushed_lsn(), Lsn(499));
    assert_eq!(wal.segment_count(), 1);
    assert_eq!(wal.last_epoch(), Epoch(1));
    assert!(matches!(
        wal.append(&rec(62)),
        Err(WalError::NotContiguous {
            expected: Lsn(500),
            got: Lsn(62)
        })
    ));
    assert!(matches!(
        wal.reader().cursor(Lsn(10)),
        Err(WalError::Compacted {
            first_available: Lsn(500),
            ..
        })
    ));
    drop(wal);
    assert_eq!(segment_files(dir.path()).len(), 1);

    // A segment of the previous generation left behind by a crash mid-reset
    // is ignored and removed.
    fs::write(&old_first, stale).unwrap();
    let (mut wal, report) = Wal::open(dir.path(), opts(1024, FsyncPolicy::Always)).unwrap();
    assert_eq!((report.first_lsn, report.last_lsn), (Lsn(500), Lsn(499)));
    assert_eq!(report.last_epoch, Epoch(1));
    assert!(!old_first.exists());
    write_range(&mut wal, 500, 502);
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), opts(1024, FsyncPolicy::Always)).unwrap();
    assert_eq!((report.first_lsn, report.last_lsn), (Lsn(500), Lsn(502)));
    assert_eq!(
        read_all(&wal.reader(), 500),
        (500..=502).map(rec).collect::<Vec<_>>()
    );
}

#[test]
fn reset_to_a_lower_lsn_replaces_a_same_named_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), opts(1 << 20, FsyncPolicy::Never)).unwrap();
    write_range(&mut wal, 1, 30);
    wal.reset(Lsn(1)).unwrap();
    assert_eq!(wal.last_lsn(), Lsn(0));
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), opts(1 << 20, FsyncPolicy::Never)).unwrap();
    assert_eq!((report.first_lsn, report.last_lsn), (Lsn(1), Lsn(0)));
    assert_eq!(
        fs::metadata(&segment_files(dir.path())[0]).unwrap().len(),
        SEGMENT_HEADER_LEN
    );
    drop(wal);
}

#[test]
fn a_second_open_of_the_same_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (_wal, _) = Wal::open(dir.path(), opts(1024, FsyncPolicy::Never)).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), opts(1024, FsyncPolicy::Never)),
        Err(WalError::Io { .. })
    ));
}

/// Overwrite `bytes` at `offset` of `path` (extending it if needed), as a
/// crash part way through a write might leave them.
fn write_at(path: &std::path::Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, offset)
        .unwrap();
}
