//! Readers on other threads never see records past the flushed LSN.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use common::*;
use replidb_core::Lsn;
use replidb_wal::{FsyncPolicy, Wal};

#[test]
fn readers_never_pass_flushed_lsn() {
    const N: u64 = 4000;
    let dir = tempfile::tempdir().unwrap();
    // Small segments: every roll writes unsynced records into the sealed
    // file, so a reader that ignored flushed_lsn would find them.
    let (mut wal, _) = Wal::open(dir.path(), opts(2048, FsyncPolicy::Never)).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|i| {
            let reader = wal.reader();
            let done = Arc::clone(&done);
            thread::spawn(move || {
                let mut c = reader.cursor(Lsn(1)).unwrap();
                let mut next = 1;
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let batch = c.next_batch(3 + i * 50, 4096).unwrap();
                    let flushed = reader.flushed_lsn();
                    for r in &batch {
                        assert!(
                            r.lsn <= flushed,
                            "{:?} read past flushed {flushed:?}",
                            r.lsn
                        );
                        assert_eq!(*r, rec(next));
                        next += 1;
                    }
                    if batch.is_empty() && finished && next > N {
                        return;
                    }
                    if batch.is_empty() {
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();

    let mut l = 1;
    while l <= N {
        let end = (l + (l % 17)).min(N);
        for x in l..=end {
            wal.append(&rec(x)).unwrap();
            assert!(wal.reader().flushed_lsn() < Lsn(x));
        }
        wal.sync().unwrap();
        l = end + 1;
    }
    done.store(true, Ordering::Release);
    for r in readers {
        r.join().unwrap();
    }
    assert!(wal.segment_count() > 20);
}
