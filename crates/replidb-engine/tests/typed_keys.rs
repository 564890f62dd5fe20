//! A plain write never lands on a counter, set or map: not in the group
//! that creates the typed key, not in a later one, not after a restart.
//! The writer skips the key lookup while the table holds no causal key at
//! all, so these cases pin down when that shortcut may be taken.

use std::sync::Arc;

use replidb_causal::{CausalWrite, Policy};
use replidb_core::{Clock, Epoch, Op, SystemClock};
use replidb_engine::{Engine, EngineError, EngineOptions, Proposal};

/// Open the engine in `dir`, waiting (up to 10 s) for a previous engine's
/// writer task, which releases the table file as it ends, to let go.
async fn open(dir: &std::path::Path) -> Arc<Engine> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let e = loop {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        match Engine::open(EngineOptions::new(dir, "n1"), clock).await {
            Ok(e) => break e,
            Err(err) if std::time::Instant::now() < deadline => {
                assert!(err.to_string().contains("already open"), "{err}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(err) => panic!("{err}"),
        }
    };
    if e.meta().epoch == Epoch(0) {
        e.begin_epoch(Epoch(1)).await.unwrap();
    }
    e
}

fn incr(key: &str) -> Proposal {
    counter_delta(key, 1)
}

fn counter_delta(key: &str, delta: i64) -> Proposal {
    Proposal::causal(
        key.to_string(),
        CausalWrite::Counter { delta },
        Policy::Lww,
        Some(Epoch(1)),
    )
}

fn put(key: &str) -> Proposal {
    let op = Op::Put {
        key: key.to_string(),
        value: b"plain".to_vec(),
    };
    Proposal::in_epoch(op, Vec::new(), Epoch(1))
}

fn delete(key: &str) -> Proposal {
    let op = Op::Delete {
        key: key.to_string(),
    };
    Proposal::in_epoch(op, Vec::new(), Epoch(1))
}

fn counter_value(r: Result<replidb_engine::Committed, EngineError>) -> Option<i64> {
    r.unwrap().state.and_then(|s| s.counter_value())
}

fn is_typed(r: Result<replidb_engine::Committed, EngineError>) -> bool {
    matches!(r, Err(EngineError::TypedKey { .. }))
}

#[tokio::test]
async fn a_plain_write_to_a_counter_is_refused_in_its_group_later_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = open(dir.path()).await;
        e.propose(put("plain")).await.unwrap();
        // The counter and a plain write to it, proposed together: they can
        // share one group, before the table holds any causal key.
        // `biased`: polled in this order, so queued in this order (an
        // unbiased join starts each poll with the next future).
        let (a, b) = tokio::join!(biased; e.propose(incr("likes")), e.propose(put("likes")));
        a.unwrap();
        assert!(
            is_typed(b),
            "a plain write replaced a counter in its own group"
        );
        assert!(is_typed(e.propose(put("likes")).await));
        e.checkpoint(replidb_core::Lsn(u64::MAX)).await.unwrap();
        e.shutdown().await;
    }
    let e = open(dir.path()).await;
    assert!(
        is_typed(e.propose(put("likes")).await),
        "a plain write replaced a counter after a restart"
    );
    e.propose(put("plain")).await.unwrap();
}

/// Found by trying it as a new user: a counter, set or map could not be
/// deleted by any path (DEL over the Redis protocol and DELETE both said
/// `wrong_type`). In the single leader's one order a delete removes a key
/// of any kind; the key is then free for a plain value or a new counter,
/// and a counter created in the same group as the delete starts from zero
/// (it used to be refused there as a plain key).
#[tokio::test]
async fn a_delete_removes_a_typed_key_and_frees_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path()).await;
    e.propose(counter_delta("likes", 41)).await.unwrap();
    let gone = e.propose(delete("likes")).await.unwrap();
    assert_eq!(gone.existed, Some(true));
    assert!(e.table().get("likes").unwrap().is_none());
    e.propose(put("likes")).await.unwrap();
    assert!(!e.table().get("likes").unwrap().unwrap().causal);

    e.propose(delete("likes")).await.unwrap();
    assert_eq!(counter_value(e.propose(incr("likes")).await), Some(1));
    // A delete and a new counter in one group: the counter starts again.
    e.propose(counter_delta("views", 10)).await.unwrap();
    let (d, c) = tokio::join!(biased; e.propose(delete("views")), e.propose(incr("views")));
    d.unwrap();
    assert_eq!(counter_value(c), Some(1));
}

/// A delta that takes a counter out of the `i64` range is refused, as
/// Redis's INCRBY refuses it; the value stays. It used to be accepted and
/// then shown saturated, so that later deltas appeared to do nothing.
#[tokio::test]
async fn a_counter_delta_past_the_i64_range_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path()).await;
    let add = |delta: i64| counter_delta("c", delta);
    e.propose(add(i64::MAX)).await.unwrap();
    for delta in [1, i64::MAX] {
        let err = e.propose(add(delta)).await.unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::Causal(replidb_causal::PrepareError::CounterOverflow { .. })
            ),
            "{err}"
        );
    }
    e.propose(add(i64::MIN)).await.unwrap(); // -1
    let err = e.propose(add(i64::MIN)).await.unwrap_err();
    assert!(err.to_string().contains("64-bit"), "{err}");
    e.propose(add(i64::MIN + 1)).await.unwrap(); // i64::MIN
    assert!(e.propose(add(-1)).await.is_err());
    let done = e.propose(add(5)).await.unwrap();
    let value = done.state.and_then(|s| s.counter_value());
    assert_eq!(value, Some(i64::MIN + 5));
    // The value swings back and forth within range, but this node's
    // running total of increments (a u64) would pass its bound: refused
    // rather than wrapped (release) or panicking the writer (debug).
    let d = dir.path().join("swing");
    let e = open(&d).await;
    let swing = |delta: i64| counter_delta("s", delta);
    e.propose(swing(i64::MAX)).await.unwrap();
    e.propose(swing(-i64::MAX)).await.unwrap();
    e.propose(swing(i64::MAX)).await.unwrap();
    e.propose(swing(-i64::MAX)).await.unwrap();
    let err = e.propose(swing(i64::MAX)).await.unwrap_err();
    assert!(err.to_string().contains("64-bit"), "{err}");
}
