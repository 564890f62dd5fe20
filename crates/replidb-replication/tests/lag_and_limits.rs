//! Scenarios for lag that tells the truth, clocks that do not matter,
//! snapshots of large values, and acknowledgements that are not trusted.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use replidb_core::{
    Clock, DurationRange, Epoch, EpochHistory, Lsn, Op, SkewedClock, SystemClock, WriteConcern,
};
use replidb_engine::{Engine, Proposal};
use replidb_replication::transport::BoxFuture;
use replidb_replication::{
    BoxIo, Follower, FollowerOptions, Frame, FrameCodec, Leader, LeaderOptions, NotWritable,
    ReplicaState, Transport,
};
use replidb_storage::Backend;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

mod support;
use support::engine;

/// A stream that can be frozen like a `kill -STOP`ped process: once
/// `stopped`, it neither reads nor writes (and never wakes).
struct Freezable {
    inner: tokio::io::DuplexStream,
    stopped: Arc<AtomicBool>,
}

impl AsyncRead for Freezable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stopped.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Freezable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.stopped.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.stopped.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Connects the follower to the leader's session over an in-memory pipe
/// that the test can freeze.
struct PipeTransport {
    leader: Arc<Leader>,
    stopped: Arc<AtomicBool>,
}

impl Transport for PipeTransport {
    fn connect<'a>(&'a self, _url: &'a str) -> BoxFuture<'a, io::Result<BoxIo>> {
        Box::pin(async move {
            let (a, b) = tokio::io::duplex(64 * 1024);
            tokio::spawn(self.leader.clone().serve(Box::new(b)));
            Ok(Box::new(Freezable {
                inner: a,
                stopped: self.stopped.clone(),
            }) as BoxIo)
        })
    }
}

struct Pair {
    leader: Arc<Leader>,
    le: Arc<Engine>,
    follower: Arc<Follower>,
    fe: Arc<Engine>,
    stopped: Arc<AtomicBool>,
    cancel: CancellationToken,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn pair(
    opts: LeaderOptions,
    follower_clock: Arc<dyn Clock>,
    delay: DurationRange,
    backend: Backend,
) -> Pair {
    let ldir = tempfile::tempdir().unwrap();
    let fdir = tempfile::tempdir().unwrap();
    let le = engine(ldir.path(), "leader", backend).await;
    le.begin_epoch(Epoch(1)).await.unwrap();
    let leader = Leader::new(
        "leader",
        le.clone(),
        Arc::new(SystemClock),
        opts,
        WriteConcern::One,
    );
    let fe = engine(fdir.path(), "follower", backend).await;
    let stopped = Arc::new(AtomicBool::new(false));
    let transport = Arc::new(PipeTransport {
        leader: leader.clone(),
        stopped: stopped.clone(),
    });
    let mut fo = FollowerOptions::new("follower", "mem://follower");
    fo.backoff_base = Duration::from_millis(5);
    fo.backoff_max = Duration::from_millis(50);
    fo.delay = delay;
    let follower = Follower::new(fe.clone(), transport, follower_clock, fo, "mem://leader");
    let cancel = CancellationToken::new();
    tokio::spawn(follower.clone().run(cancel.clone()));
    Pair {
        leader,
        le,
        follower,
        fe,
        stopped,
        cancel,
        _dirs: (ldir, fdir),
    }
}

async fn put(e: &Engine, key: &str, value: Vec<u8>) -> Lsn {
    e.propose(Proposal::new(Op::Put {
        key: key.into(),
        value,
    }))
    .await
    .unwrap()
    .lsn
}

async fn wait_applied(e: &Engine, lsn: Lsn, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while e.positions().applied_lsn < lsn {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck at {:?}, want {lsn}",
            e.positions()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_stopped_follower_shows_growing_lag_then_disconnects() {
    let p = pair(
        LeaderOptions {
            heartbeat_interval: Duration::from_millis(20),
            ack_timeout: Duration::from_millis(800),
            ..LeaderOptions::default()
        },
        Arc::new(SystemClock),
        DurationRange::default(),
        Backend::Memory,
    )
    .await;
    let lsn = put(&p.le, "a", b"1".to_vec()).await;
    wait_applied(&p.fe, lsn, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = &p.leader.replicas()[0];
    assert_eq!(
        (r.state, r.lag_ms, r.lag_records),
        (ReplicaState::Streaming, 0, 0)
    );

    // kill -STOP: the follower reads nothing and answers nothing.
    p.stopped.store(true, Ordering::SeqCst);
    put(&p.le, "b", b"2".to_vec()).await;
    put(&p.le, "c", b"3".to_vec()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = &p.leader.replicas()[0];
    assert_eq!(r.lag_records, 2);
    assert!(r.lag_ms >= 350, "lag in time must grow: {r:?}");
    assert_eq!(
        r.state,
        ReplicaState::Streaming,
        "not yet past the ack timeout"
    );

    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = &p.leader.replicas()[0];
    assert_eq!(
        r.state,
        ReplicaState::Disconnected,
        "silent past the bound: {r:?}"
    );
    assert!(r.lag_ms >= 1_100, "{r:?}");
    p.cancel.cancel();
}

/// A follower whose wall clock is `offset_ms` off applies after a 1.2 s
/// artificial delay; its lag, seen by itself, must be about the real lag.
async fn follower_lag_with_wall_offset(offset_ms: i64) {
    let clock = Arc::new(SkewedClock::new(SystemClock, offset_ms));
    let p = pair(
        LeaderOptions {
            heartbeat_interval: Duration::from_millis(20),
            ..LeaderOptions::default()
        },
        clock,
        DurationRange::fixed(Duration::from_millis(1_200)),
        Backend::Memory,
    )
    .await;
    // Connected and idle first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(p.follower.lag_ms(), 0, "idle follower, offset {offset_ms}");
    let lsn = put(&p.le, "k", b"v".to_vec()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let lag = p.follower.lag_ms();
    assert!(
        (500..1_200).contains(&lag),
        "offset {offset_ms} ms: lag {lag} ms, expected about 700"
    );
    wait_applied(&p.fe, lsn, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(p.follower.lag_ms(), 0, "caught up, offset {offset_ms}");
    p.cancel.cancel();
}

#[tokio::test]
async fn follower_lag_ignores_a_wall_clock_30s_behind() {
    follower_lag_with_wall_offset(-30_000).await;
}

#[tokio::test]
async fn follower_lag_ignores_a_wall_clock_30s_ahead() {
    follower_lag_with_wall_offset(30_000).await;
}

#[tokio::test]
async fn write_deadline_holds_when_the_wall_clock_steps_back() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), "leader", Backend::Memory).await;
    e.begin_epoch(Epoch(1)).await.unwrap();
    let clock = Arc::new(SkewedClock::new(SystemClock, 0));
    let leader = Leader::new(
        "leader",
        e,
        clock.clone(),
        LeaderOptions::default(),
        WriteConcern::One,
    );
    // A lease good for 200 ms from now, as the coordinator computes it.
    leader.set_write_deadline(clock.mono_ms() + 200);
    assert_eq!(leader.writable(), Ok(()));
    // NTP steps the wall clock back a minute; the lease must still end.
    clock.set_wall_offset_ms(-60_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(leader.writable(), Err(NotWritable::Fenced));
}

#[tokio::test]
async fn a_snapshot_of_large_values_completes() {
    // 700 values of 100 KB: 70 MB, more than a frame held when chunks were
    // counted in entries (1000 per chunk, 64 MiB per frame).
    let p = {
        let ldir = tempfile::tempdir().unwrap();
        let le = engine(ldir.path(), "leader", Backend::Memory).await;
        le.begin_epoch(Epoch(1)).await.unwrap();
        let value = vec![7u8; 100 * 1024];
        let mut last = Lsn::ZERO;
        for i in 0..700 {
            last = put(&le, &format!("k{i:04}"), value.clone()).await;
        }
        // Trim the WAL: a new follower must get a snapshot.
        le.checkpoint(Lsn(u64::MAX)).await.unwrap();
        assert!(le.positions().first_lsn > Lsn(1));
        (ldir, le, last)
    };
    let (ldir, le, last) = p;
    let leader = Leader::new(
        "leader",
        le.clone(),
        Arc::new(SystemClock),
        LeaderOptions::default(),
        WriteConcern::One,
    );
    let fdir = tempfile::tempdir().unwrap();
    let fe = engine(fdir.path(), "follower", Backend::Memory).await;
    let transport = Arc::new(PipeTransport {
        leader: leader.clone(),
        stopped: Arc::new(AtomicBool::new(false)),
    });
    let mut fo = FollowerOptions::new("follower", "mem://follower");
    fo.backoff_base = Duration::from_millis(5);
    fo.backoff_max = Duration::from_millis(50);
    let follower = Follower::new(
        fe.clone(),
        transport,
        Arc::new(SystemClock),
        fo,
        "mem://leader",
    );
    let cancel = CancellationToken::new();
    tokio::spawn(follower.clone().run(cancel.clone()));
    wait_applied(&fe, last, Duration::from_secs(60)).await;
    // The count follows the switch to the new table by a moment.
    for _ in 0..100 {
        if follower.status().snapshots_installed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = follower.status();
    assert_eq!(s.snapshots_installed, 1);
    // On a loaded machine a slow debug build may time out an attempt and
    // retry; what must never happen is a frame the limits cannot carry.
    let last_error = s.last_error.unwrap_or_default();
    assert!(!last_error.contains("too big"), "{last_error}");
    assert_eq!(fe.table().digest().unwrap(), le.table().digest().unwrap());
    cancel.cancel();
    drop(ldir);
}

#[tokio::test]
async fn an_ack_beyond_what_was_sent_is_refused_and_ends_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), "leader", Backend::Memory).await;
    e.begin_epoch(Epoch(1)).await.unwrap();
    for i in 0..3 {
        put(&e, &format!("k{i}"), b"v".to_vec()).await;
    }
    let leader = Leader::new(
        "leader",
        e.clone(),
        Arc::new(SystemClock),
        LeaderOptions {
            cluster_size: Some(3),
            ..LeaderOptions::default()
        },
        WriteConcern::One,
    );
    let (a, b) = tokio::io::duplex(64 * 1024);
    tokio::spawn(leader.clone().serve(Box::new(b)));
    let mut f = Framed::new(a, FrameCodec::default());
    f.send(Frame::Hello {
        node_id: "liar".into(),
        addr: "mem://liar".into(),
        epoch: Epoch(1),
        flush_lsn: Lsn::ZERO,
        applied_lsn: Lsn::ZERO,
        last_epoch: Epoch(0),
        history: EpochHistory::default(),
        topology: String::new(),
        // An old-style hello: plain frames only.
        compression: replidb_replication::Offer::default(),
    })
    .await
    .unwrap();
    assert!(matches!(f.next().await, Some(Ok(Frame::Welcome { .. }))));
    // Wait for the three records, then claim a thousand.
    loop {
        match f.next().await {
            Some(Ok(Frame::Records { records, .. }))
                if records.last().map(|r| r.lsn) == Some(Lsn(3)) =>
            {
                break
            }
            Some(Ok(_)) => continue,
            other => panic!("stream ended early: {other:?}"),
        }
    }
    f.send(Frame::Ack {
        flush_lsn: Lsn(1_000),
        applied_lsn: Lsn(1_000),
        lag_ms: 0,
        echo_mono_ms: 0,
    })
    .await
    .unwrap();
    // The leader closes the session...
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match f.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "session still open after a lying ack");
    // ...and never counted the lie.
    let r = &leader.replicas()[0];
    assert_eq!((r.flush_lsn, r.applied_lsn), (Lsn::ZERO, Lsn::ZERO));
    assert_eq!(leader.acks_for(Lsn(1_000)), 0);
    assert_eq!(leader.commit_lsn(), Lsn::ZERO);
}
