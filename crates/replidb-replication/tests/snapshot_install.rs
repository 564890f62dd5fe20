//! A snapshot install cut off mid-stream: while the snapshot is staged and
//! after the cut, the follower keeps serving its old, consistent table (never
//! an empty or half-filled one); the next session drops the staged copy and
//! applies what it had flushed but not yet applied; a later session installs
//! the whole snapshot and the follower converges.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use replidb_core::{DurationRange, Epoch, Lsn, Op, SystemClock, WriteConcern};
use replidb_engine::{Engine, Proposal};
use replidb_replication::transport::BoxFuture;
use replidb_replication::{BoxIo, Follower, FollowerOptions, Leader, LeaderOptions, Transport};
use replidb_storage::Backend;
use tokio_util::sync::CancellationToken;

mod support;
use support::{engine, CutStream};

/// Connects straight to the leader's session. With `cut_first`, the first
/// connection is cut after that many bytes and later ones are refused
/// until `open` is set.
struct Scripted {
    leader: Arc<Leader>,
    cut_first: Option<usize>,
    connects: AtomicUsize,
    open: AtomicBool,
}

impl Scripted {
    fn new(leader: &Arc<Leader>, cut_first: Option<usize>) -> Arc<Scripted> {
        Arc::new(Scripted {
            leader: leader.clone(),
            cut_first,
            connects: AtomicUsize::new(0),
            open: AtomicBool::new(cut_first.is_none()),
        })
    }
}

impl Transport for Scripted {
    fn connect<'a>(&'a self, _url: &'a str) -> BoxFuture<'a, io::Result<BoxIo>> {
        Box::pin(async move {
            let n = self.connects.fetch_add(1, Ordering::SeqCst);
            let cut = match self.cut_first {
                Some(budget) if n == 0 => Some(budget),
                _ if !self.open.load(Ordering::SeqCst) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        "injected refusal",
                    ))
                }
                _ => None,
            };
            let (a, b) = tokio::io::duplex(16 * 1024);
            tokio::spawn(self.leader.clone().serve(Box::new(b)));
            Ok(match cut {
                Some(left) => Box::new(CutStream {
                    inner: a,
                    left,
                    cut_writes: false,
                }) as BoxIo,
                None => Box::new(a) as BoxIo,
            })
        })
    }
}

/// Run a follower of `leader` over `transport` until the returned token is
/// cancelled.
/// A running follower: its state, and the way to stop it.
struct Running {
    follower: Arc<Follower>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stop the follower and wait until its task has ended: a cancelled
    /// session may still be inside a writer round (appending and, without
    /// a delay, applying what it received), so a test that writes more on
    /// the leader straight after `cancel()` could see it applied by this
    /// follower rather than by the next one.
    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

fn follow(fe: &Arc<Engine>, transport: Arc<Scripted>, delay: Duration) -> Running {
    let mut fo = FollowerOptions::new("follower", "mem://follower");
    fo.backoff_base = Duration::from_millis(100);
    fo.backoff_max = Duration::from_millis(100);
    fo.idle_timeout = Duration::from_millis(500);
    fo.delay = DurationRange::fixed(delay);
    let follower = Follower::new(
        fe.clone(),
        transport,
        Arc::new(SystemClock),
        fo,
        "mem://leader",
    );
    let cancel = CancellationToken::new();
    let task = tokio::spawn(follower.clone().run(cancel.clone()));
    Running {
        follower,
        cancel,
        task,
    }
}

async fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn put(le: &Engine, key: String, value: String) {
    le.propose(Proposal::new(Op::Put {
        key,
        value: value.into_bytes(),
    }))
    .await
    .unwrap();
}

async fn cut_snapshot_keeps_serving_the_old_table(backend: Backend) {
    let ldir = tempfile::tempdir().unwrap();
    let fdir = tempfile::tempdir().unwrap();
    let le = engine(ldir.path(), "leader", backend).await;
    le.begin_epoch(Epoch(1)).await.unwrap();
    let leader = Leader::new(
        "leader",
        le.clone(),
        Arc::new(SystemClock),
        LeaderOptions {
            heartbeat_interval: Duration::from_millis(20),
            snapshot_chunk_entries: 5,
            ..LeaderOptions::default()
        },
        WriteConcern::One,
    );
    let fe = engine(fdir.path(), "follower", backend).await;

    // 1. The follower holds and has applied 20 keys that never change.
    for i in 0..20 {
        put(&le, format!("stable/{i:02}"), format!("s{i}")).await;
    }
    let first = follow(&fe, Scripted::new(&leader, None), Duration::ZERO);
    wait("follower applies the stable keys", || {
        fe.positions().applied_lsn == Lsn(20)
    })
    .await;
    first.stop().await;

    // 2. It receives 10 more but stops before applying them.
    for i in 0..10 {
        put(&le, format!("pending/{i}"), "p".into()).await;
    }
    let second = follow(&fe, Scripted::new(&leader, None), Duration::from_secs(3600));
    wait("follower flushes the pending keys", || {
        fe.positions().flush_lsn == Lsn(30)
    })
    .await;
    second.stop().await;
    let flushed = fe.positions().flush_lsn;
    assert_eq!(fe.positions().applied_lsn, Lsn(20));

    // 3. The leader moves on and drops the log the follower would need.
    for i in 0..300 {
        put(&le, format!("bulk/{i:03}"), format!("{i:0>40}")).await;
    }
    le.checkpoint(Lsn(u64::MAX)).await.unwrap();
    assert!(
        le.positions().first_lsn > flushed.next(),
        "{:?}",
        le.positions()
    );
    assert_eq!(fe.positions().flush_lsn, flushed);

    // 4. The snapshot stream is cut part way; reconnects are refused.
    let stop = Arc::new(AtomicBool::new(false));
    let saw_restoring = Arc::new(AtomicBool::new(false));
    let reader = {
        let (fe, stop, saw) = (fe.clone(), stop.clone(), saw_restoring.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = fe.table();
                if t.needs_restore() {
                    saw.store(true, Ordering::Relaxed);
                }
                for i in [0, 19] {
                    let got = t.get(&format!("stable/{i:02}")).unwrap();
                    assert_eq!(
                        got.map(|v| v.value),
                        Some(format!("s{i}").into_bytes()),
                        "stable/{i:02} during the install"
                    );
                }
                let applied = t.applied_lsn();
                assert!(applied >= Lsn(20), "applied_lsn fell to {applied}");
                let snap = t.snapshot().unwrap();
                assert!(snap.lsn() >= Lsn(20), "snapshot at {}", snap.lsn());
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let transport = Scripted::new(&leader, Some(3000));
    let third = follow(&fe, transport.clone(), Duration::ZERO);
    let follower = third.follower.clone();
    // The session after the cut (refused at connect) has dropped the
    // staged copy and applied what was flushed.
    wait("a reconnect after the cut", || {
        follower.status().error_count >= 2
    })
    .await;
    assert!(
        saw_restoring.load(Ordering::Relaxed),
        "the cut did not come mid-snapshot"
    );
    wait("the flushed records are applied", || {
        fe.positions().applied_lsn == flushed
    })
    .await;
    assert!(!fe.table().needs_restore());
    assert_eq!(follower.status().snapshots_installed, 0);
    // Every LSN wrote a new key.
    assert_eq!(fe.table().len().unwrap(), flushed.0);

    // 5. Connections work again: the whole snapshot goes in.
    transport.open.store(true, Ordering::SeqCst);
    let target = le.positions().applied_lsn;
    wait("the follower installs the snapshot and converges", || {
        follower.status().snapshots_installed == 1 && fe.positions().applied_lsn == target
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    third.stop().await;
    assert_eq!(fe.table().digest().unwrap(), le.table().digest().unwrap());
    assert_eq!(fe.table().len().unwrap(), 330);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_snapshot_keeps_serving_the_old_table_redb() {
    cut_snapshot_keeps_serving_the_old_table(Backend::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_snapshot_keeps_serving_the_old_table_memory() {
    cut_snapshot_keeps_serving_the_old_table(Backend::Memory).await;
}
