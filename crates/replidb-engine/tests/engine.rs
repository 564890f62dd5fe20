//! Engine behaviour: group commit, recovery, follower append/apply.

use std::sync::Arc;
use std::time::Duration;

use replidb_core::{Epoch, Hlc, Lsn, Op, Record, SystemClock};
use replidb_engine::{Engine, EngineError, EngineOptions, Proposal};
use replidb_storage::Backend;

fn put(k: &str, v: &str) -> Op {
    Op::Put {
        key: k.to_string(),
        value: v.as_bytes().to_vec(),
    }
}

async fn open(dir: &std::path::Path, backend: Backend) -> Arc<Engine> {
    let mut o = EngineOptions::new(dir, "t");
    o.backend = backend;
    let e = Engine::open(o, Arc::new(SystemClock)).await.unwrap();
    if e.meta().epoch == Epoch(0) {
        e.begin_epoch(Epoch(1)).await.unwrap();
    }
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), Backend::Redb).await;
    let n = 400;
    let mut tasks = Vec::new();
    for i in 0..n {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            e.propose(Proposal::new(put(&format!("k{i}"), "v")))
                .await
                .unwrap()
        }));
    }
    let mut lsns: Vec<u64> = Vec::new();
    for t in tasks {
        lsns.push(t.await.unwrap().lsn.0);
    }
    lsns.sort_unstable();
    // Gapless, each write got its own LSN.
    assert_eq!(lsns, (1..=n).collect::<Vec<u64>>());
    let rounds = e.sync_count();
    assert!(
        rounds < n / 2,
        "{n} concurrent writes took {rounds} fsyncs: group commit is not batching"
    );
    assert_eq!(e.positions().applied_lsn, Lsn(n));
}

#[tokio::test]
async fn recovery_replays_wal_past_checkpoint() {
    for backend in [Backend::Redb, Backend::Memory] {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = open(dir.path(), backend).await;
            for i in 0..10 {
                e.propose(Proposal::new(put(&format!("k{i}"), "a")))
                    .await
                    .unwrap();
            }
            e.checkpoint(Lsn(u64::MAX)).await.unwrap();
            for i in 0..10 {
                e.propose(Proposal::new(put(&format!("k{i}"), "b")))
                    .await
                    .unwrap();
            }
            // No shutdown: like a crash after the fsync.
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let e = open(dir.path(), backend).await;
        assert_eq!(e.positions().applied_lsn, Lsn(20), "{backend:?}");
        assert_eq!(e.table().get("k3").unwrap().unwrap().value, b"b");
    }
}

#[tokio::test]
async fn conditions_see_earlier_writes_and_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), Backend::Memory).await;
    let c = e.propose(Proposal::new(put("a", "1"))).await.unwrap();
    let ok = e
        .propose(Proposal::in_epoch(
            Op::Batch(vec![put("a", "2"), put("b", "2")]),
            vec![("a".into(), c.lsn), ("b".into(), Lsn::ZERO)],
            Epoch(1),
        ))
        .await
        .unwrap();
    let err = e
        .propose(Proposal::in_epoch(
            put("b", "3"),
            vec![("b".into(), Lsn::ZERO)],
            Epoch(1),
        ))
        .await
        .unwrap_err();
    // The failure names the state it was checked against (`as_of`), so the
    // API can wait until that state is committed before revealing it.
    assert!(
        matches!(err, EngineError::ConditionFailed { actual, as_of, .. } if actual == ok.lsn && as_of == ok.lsn)
    );
    // The failed proposal took no LSN.
    let next = e.propose(Proposal::new(put("c", "1"))).await.unwrap();
    assert_eq!(next.lsn, ok.lsn.next());
    let del = e
        .propose(Proposal::new(Op::Delete { key: "zz".into() }))
        .await
        .unwrap();
    assert_eq!(del.existed, Some(false));
}

fn rec(lsn: u64) -> Record {
    Record {
        lsn: Lsn(lsn),
        epoch: Epoch(1),
        hlc: Hlc {
            wall_ms: lsn,
            logical: 0,
        },
        op: put(&format!("k{lsn}"), "v"),
    }
}

/// A fence or a promote records a newer epoch; a batch still on its way
/// from the old leader's stream must then be refused, not appended (and
/// acknowledged to that leader, which would count it toward a majority
/// the new leader never sees).
#[tokio::test]
async fn an_append_from_an_older_epochs_stream_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), Backend::Redb).await;
    e.append_replicated((1..=3).map(rec).collect(), Epoch(1))
        .await
        .unwrap();
    let history = e.meta().history;
    e.adopt_history_from(Epoch(2), history, None).await.unwrap();
    for apply_early in [false, true] {
        let batch: Vec<Record> = (4..=5).map(rec).collect();
        let r = if apply_early {
            e.append_and_apply(batch, Epoch(1))
                .await
                .map(|a| a.flush_lsn)
        } else {
            e.append_replicated(batch, Epoch(1)).await
        };
        assert!(
            matches!(r, Err(EngineError::NotLeaderOfEpoch { .. })),
            "apply_early={apply_early}: {r:?}"
        );
    }
    assert_eq!(
        e.positions().flush_lsn,
        Lsn(3),
        "nothing of the old stream appended"
    );
    // The new epoch's stream appends as before.
    let flush = e
        .append_replicated((4..=5).map(rec).collect(), Epoch(2))
        .await
        .unwrap();
    assert_eq!(flush, Lsn(5));
}

/// Found by a new user (two forced promotes 30 ms apart): a promote that
/// landed between a rewind's truncation and its table rebuild began the
/// new epoch at an LSN the table already counted as applied, so the new
/// leader never showed its own writes and served rolled-back ones. A new
/// epoch now refuses to begin while the table is past the log's end.
#[tokio::test]
async fn a_new_epoch_does_not_begin_while_the_table_is_past_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), Backend::Redb).await;
    e.append_replicated((1..=5).map(rec).collect(), Epoch(1))
        .await
        .unwrap();
    e.apply_up_to(Lsn(5)).await.unwrap();
    // A rewind cuts the log back to 3; its rebuild has not run yet.
    e.truncate_after(Lsn(3)).await.unwrap();
    let r = e.begin_epoch_led_by(Epoch(2), "http://me".into()).await;
    assert!(
        matches!(r, Err(EngineError::TableAheadOfLog { .. })),
        "{r:?}"
    );
    assert_eq!(e.meta().epoch, Epoch(1), "no epoch began");
    // Once the table is rebuilt (here: from nothing), the epoch begins.
    e.restore_begin().await.unwrap();
    e.restore_finish(Lsn::ZERO).await.unwrap();
    e.begin_epoch_led_by(Epoch(2), "http://me".into())
        .await
        .unwrap();
    assert_eq!(e.meta().epoch, Epoch(2));
}

#[tokio::test]
async fn follower_append_is_idempotent_and_apply_is_separate() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), Backend::Redb).await;
    let flush = e
        .append_replicated((1..=5).map(rec).collect(), Epoch(1))
        .await
        .unwrap();
    assert_eq!(flush, Lsn(5));
    assert_eq!(e.positions().applied_lsn, Lsn(0), "append must not apply");
    // A resent, overlapping batch is skipped where it overlaps.
    let flush = e
        .append_replicated((3..=8).map(rec).collect(), Epoch(1))
        .await
        .unwrap();
    assert_eq!(flush, Lsn(8));
    // A gap is refused.
    assert!(e.append_replicated(vec![rec(10)], Epoch(1)).await.is_err());
    assert_eq!(e.apply_up_to(Lsn(6)).await.unwrap(), Lsn(6));
    assert_eq!(e.apply_up_to(Lsn(100)).await.unwrap(), Lsn(8));
    assert!(e.table().get("k8").unwrap().is_some());
}

/// A follower without an artificial delay applies what it receives at
/// once (before its fsync) when the table holds everything before it;
/// behind a backlog it leaves the batch to the regular apply, in order.
#[tokio::test]
async fn follower_applies_on_receipt_only_in_order() {
    for backend in [Backend::Redb, Backend::Memory] {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path(), backend).await;
        let out = e
            .append_and_apply((1..=5).map(rec).collect(), Epoch(1))
            .await
            .unwrap();
        assert_eq!(
            (out.flush_lsn, out.applied_early),
            (Lsn(5), 5),
            "{backend:?}"
        );
        assert!(e.table().get("k5").unwrap().is_some(), "{backend:?}");
        // A resent, overlapping batch applies only what is new.
        let out = e
            .append_and_apply((4..=7).map(rec).collect(), Epoch(1))
            .await
            .unwrap();
        assert_eq!(
            (out.flush_lsn, out.applied_early),
            (Lsn(7), 2),
            "{backend:?}"
        );
        // Appended without applying (a delayed follower), then a batch on
        // receipt: it must wait for the backlog, never skip it.
        e.append_replicated((8..=9).map(rec).collect(), Epoch(1))
            .await
            .unwrap();
        let out = e.append_and_apply(vec![rec(10)], Epoch(1)).await.unwrap();
        assert_eq!(
            (out.flush_lsn, out.applied_early),
            (Lsn(10), 0),
            "{backend:?}"
        );
        assert_eq!(e.positions().applied_lsn, Lsn(7), "{backend:?}");
        assert_eq!(
            e.apply_up_to(Lsn(10)).await.unwrap(),
            Lsn(10),
            "{backend:?}"
        );
        assert!(e.table().get("k10").unwrap().is_some(), "{backend:?}");
    }
}

fn staged(key: &str, lsn: u64) -> (String, replidb_core::Versioned) {
    (
        key.to_string(),
        replidb_core::Versioned {
            value: b"snap".to_vec(),
            lsn: Lsn(lsn),
            epoch: Epoch(2),
            causal: false,
        },
    )
}

/// A follower's snapshot install: the live table keeps serving (and stays
/// a prefix of the WAL) while the snapshot is staged; a crash or an abort
/// drops the staged copy and applying resumes from the WAL; a finish
/// switches the table and restarts the WAL after it.
#[tokio::test]
async fn snapshot_install_is_staged_until_finished() {
    for backend in [Backend::Redb, Backend::Memory] {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = open(dir.path(), backend).await;
            e.append_replicated((1..=5).map(rec).collect(), Epoch(1))
                .await
                .unwrap();
            assert_eq!(e.apply_up_to(Lsn(3)).await.unwrap(), Lsn(3));
            e.checkpoint(Lsn::ZERO).await.unwrap();
            e.restore_begin().await.unwrap();
            e.restore_chunk(vec![staged("a", 40)]).await.unwrap();
            // Applies wait for the switch; reads see the old table.
            assert_eq!(e.apply_up_to(Lsn(5)).await.unwrap(), Lsn(3));
            assert_eq!(e.positions().applied_lsn, Lsn(3), "{backend:?}");
            assert!(e.table().get("k1").unwrap().is_some());
            assert!(e.table().get("a").unwrap().is_none());
            assert_eq!(e.table().len().unwrap(), 3);
            // No shutdown: a crash mid-install.
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let e = open(dir.path(), backend).await;
        assert!(!e.table().needs_restore(), "{backend:?}");
        let p = e.positions();
        assert_eq!(
            (p.flush_lsn, p.applied_lsn),
            (Lsn(5), Lsn(5)),
            "{backend:?}"
        );
        assert!(e.table().get("k5").unwrap().is_some());
        assert!(e.table().get("a").unwrap().is_none());

        // Abort: the skipped apply is caught up by the next one.
        e.append_replicated((6..=8).map(rec).collect(), Epoch(1))
            .await
            .unwrap();
        e.restore_begin().await.unwrap();
        e.restore_chunk(vec![staged("a", 40)]).await.unwrap();
        assert_eq!(e.apply_up_to(Lsn(8)).await.unwrap(), Lsn(5));
        e.restore_abort().await.unwrap();
        assert!(!e.table().needs_restore());
        assert!(e.table().get("a").unwrap().is_none());
        assert_eq!(e.apply_up_to(Lsn(8)).await.unwrap(), Lsn(8));
        assert_eq!(e.table().len().unwrap(), 8);

        // Finish: the table switches to the snapshot; the WAL restarts
        // right after it.
        e.restore_begin().await.unwrap();
        e.restore_chunk(vec![staged("a", 40), staged("b", 41)])
            .await
            .unwrap();
        assert_eq!(e.table().len().unwrap(), 8);
        e.restore_finish(Lsn(50)).await.unwrap();
        let p = e.positions();
        assert_eq!(
            (p.first_lsn, p.flush_lsn, p.applied_lsn, p.durable_lsn),
            (Lsn(51), Lsn(50), Lsn(50), Lsn(50)),
            "{backend:?}"
        );
        assert!(e.table().get("k1").unwrap().is_none());
        assert_eq!(e.table().len().unwrap(), 2);
        e.append_replicated(vec![rec(51)], Epoch(1)).await.unwrap();
        assert_eq!(e.apply_up_to(Lsn(51)).await.unwrap(), Lsn(51));
        drop(e);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let e = open(dir.path(), backend).await;
        assert_eq!(e.positions().applied_lsn, Lsn(51), "{backend:?}");
        assert_eq!(e.table().len().unwrap(), 3);

        // Restoring nothing at LSN 0 (a rewind's rebuild) empties the table
        // and restarts the WAL at 1.
        e.restore_begin().await.unwrap();
        e.restore_finish(Lsn::ZERO).await.unwrap();
        let p = e.positions();
        assert_eq!(
            (p.first_lsn, p.flush_lsn, p.applied_lsn),
            (Lsn(1), Lsn(0), Lsn(0)),
            "{backend:?}"
        );
        assert!(e.table().is_empty().unwrap());
        e.append_replicated(vec![rec(1)], Epoch(1)).await.unwrap();
        assert_eq!(e.apply_up_to(Lsn(1)).await.unwrap(), Lsn(1));
    }
}

/// Regression for the reliability issue's "a fenced old leader writes in
/// the new leader's epoch": a leader of epoch 1 that adopts epoch 2 (a fence
/// arrived between its write check and the append) must not stamp the
/// write with epoch 2, or write at all.
#[tokio::test]
async fn proposals_of_an_old_epoch_are_refused_after_adopting_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), Backend::Memory).await;
    e.propose(Proposal::in_epoch(put("a", "1"), Vec::new(), Epoch(1)))
        .await
        .unwrap();
    e.adopt_history(Epoch(2), e.meta().history).await.unwrap();
    let err = e
        .propose(Proposal::in_epoch(put("a", "2"), Vec::new(), Epoch(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::NotLeaderOfEpoch { .. }), "{err}");
    // Nor may it write in epoch 2, which its own history does not open.
    let err = e
        .propose(Proposal::in_epoch(put("a", "2"), Vec::new(), Epoch(2)))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::NotLeaderOfEpoch { .. }), "{err}");
    assert_eq!(e.positions().flush_lsn, Lsn(1));
}

/// A clock that panics once armed: a stand-in for any bug that panics
/// inside a writer round (the writer reads the clock to stamp a write).
struct PanickingClock(std::sync::atomic::AtomicBool);

impl replidb_core::Clock for PanickingClock {
    fn now_ms(&self) -> u64 {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("injected clock panic");
        }
        replidb_core::Clock::now_ms(&SystemClock)
    }
    fn mono_ms(&self) -> u64 {
        replidb_core::Clock::mono_ms(&SystemClock)
    }
}

#[tokio::test]
async fn a_panicked_writer_is_recorded_as_the_engine_failure() {
    for inline_io in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(PanickingClock(Default::default()));
        let mut o = EngineOptions::new(dir.path(), "t");
        o.inline_io = inline_io;
        let e = Engine::open(o, clock.clone()).await.unwrap();
        e.begin_epoch(Epoch(1)).await.unwrap();
        e.propose(Proposal::new(put("a", "1"))).await.unwrap();
        assert_eq!(e.failure(), None);
        clock.0.store(true, std::sync::atomic::Ordering::SeqCst);
        let r = e.propose(Proposal::new(put("b", "2"))).await;
        assert!(
            matches!(r, Err(EngineError::Stopped(_))),
            "inline_io={inline_io}: {r:?}"
        );
        // The round's replies are dropped while it unwinds, a moment before
        // the writer task records the panic: wait for it, with a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let why = loop {
            if let Some(why) = e.failure() {
                break why;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "inline_io={inline_io}: the panic was not recorded as the engine failure"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert!(
            why.contains("panicked") && why.contains("injected clock panic"),
            "inline_io={inline_io}: {why}"
        );
        // Later writes keep failing, with the same recorded reason.
        assert!(e.propose(Proposal::new(put("c", "3"))).await.is_err());
    }
}

/// The leader of the newest epoch is kept with the epoch, in the same
/// write, and survives a restart: a newer epoch heard of without its
/// leader has none on record, and only a name replaces the current one.
#[tokio::test]
async fn the_leader_of_the_epoch_is_recorded_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), Backend::Memory).await;
    assert_eq!(e.meta().leader, "", "begin_epoch names no leader");
    e.begin_epoch_led_by(Epoch(2), "http://me".into())
        .await
        .unwrap();
    assert_eq!(e.meta().leader, "http://me");
    // The same epoch without a name keeps it; with one replaces it.
    e.adopt_history(Epoch(2), e.meta().history).await.unwrap();
    assert_eq!(e.meta().leader, "http://me");
    e.adopt_history_from(Epoch(2), e.meta().history, Some("http://b".into()))
        .await
        .unwrap();
    assert_eq!(e.meta().leader, "http://b");
    // An older epoch's name changes nothing.
    e.adopt_history_from(Epoch(1), e.meta().history, Some("http://old".into()))
        .await
        .unwrap();
    assert_eq!(
        (e.meta().epoch, e.meta().leader.as_str()),
        (Epoch(2), "http://b")
    );
    // A newer epoch: its leader, or none when unnamed.
    e.adopt_history_from(Epoch(3), e.meta().history, Some("http://c".into()))
        .await
        .unwrap();
    assert_eq!(
        (e.meta().epoch, e.meta().leader.as_str()),
        (Epoch(3), "http://c")
    );
    // On disk, in the same file as the epoch.
    let on_disk = std::fs::read_to_string(dir.path().join("meta.json")).unwrap();
    assert!(on_disk.contains("\"leader\": \"http://c\""), "{on_disk}");
    e.adopt_history(Epoch(4), e.meta().history).await.unwrap();
    assert_eq!(e.meta().leader, "");
}
