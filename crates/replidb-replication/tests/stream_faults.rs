//! Model test of the stream protocol under faults: connections cut at
//! random byte offsets (mid-frame, mid-snapshot), refused connects, resent
//! records after reconnects, and WAL retention forcing snapshots — with a
//! leader writing throughout. At the end the follower must hold exactly the
//! leader's log suffix and table (invariants 1 and 4).

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use replidb_core::{Epoch, Lsn, Op, SystemClock, WriteConcern};
use replidb_engine::Proposal;
use replidb_replication::transport::BoxFuture;
use replidb_replication::{BoxIo, Follower, FollowerOptions, Leader, LeaderOptions, Transport};
use replidb_storage::Backend;
use tokio_util::sync::CancellationToken;

mod support;
use support::{engine, CutStream};

/// Connects the follower straight to the leader's session over an
/// in-memory pipe, with random cuts and refusals.
struct FaultyTransport {
    leader: Arc<Leader>,
    rng: Mutex<rand::rngs::StdRng>,
}

impl Transport for FaultyTransport {
    fn connect<'a>(&'a self, _url: &'a str) -> BoxFuture<'a, io::Result<BoxIo>> {
        Box::pin(async move {
            let (refuse, budget) = {
                let mut rng = self.rng.lock().unwrap();
                (rng.random_bool(0.1), rng.random_range(50..40_000))
            };
            if refuse {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "injected refusal",
                ));
            }
            let (a, b) = tokio::io::duplex(16 * 1024);
            tokio::spawn(self.leader.clone().serve(Box::new(b)));
            Ok(Box::new(CutStream {
                inner: a,
                left: budget,
                cut_writes: true,
            }) as BoxIo)
        })
    }
}

async fn run_seed(seed: u64) {
    let ldir = tempfile::tempdir().unwrap();
    let fdir = tempfile::tempdir().unwrap();
    let le = engine(ldir.path(), "leader", Backend::Memory).await;
    le.begin_epoch(Epoch(1)).await.unwrap();
    let leader = Leader::new(
        "leader",
        le.clone(),
        Arc::new(SystemClock),
        LeaderOptions {
            heartbeat_interval: Duration::from_millis(20),
            batch_max_records: 7,
            snapshot_chunk_entries: 5,
            ..LeaderOptions::default()
        },
        WriteConcern::One,
    );
    let fe = engine(fdir.path(), "follower", Backend::Memory).await;
    let transport = Arc::new(FaultyTransport {
        leader: leader.clone(),
        rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
    });
    let mut fo = FollowerOptions::new("follower", "mem://follower");
    fo.backoff_base = Duration::from_millis(1);
    fo.backoff_max = Duration::from_millis(10);
    fo.idle_timeout = Duration::from_millis(300);
    let follower = Follower::new(
        fe.clone(),
        transport,
        Arc::new(SystemClock),
        fo,
        "mem://leader",
    );
    let cancel = CancellationToken::new();
    tokio::spawn(follower.clone().run(cancel.clone()));

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xfeed);
    for i in 0..600u32 {
        let key = format!("k{}", rng.random_range(0..50));
        let op = if rng.random_bool(0.15) {
            Op::Delete { key }
        } else {
            Op::Put {
                key,
                value: i.to_le_bytes().to_vec(),
            }
        };
        le.propose(Proposal::new(op)).await.unwrap();
        if i % 97 == 0 {
            // Retention ignoring the follower: forces snapshots when it is
            // behind.
            le.checkpoint(Lsn(u64::MAX)).await.unwrap();
        }
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let target = le.positions().applied_lsn;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // Applied is not enough: a follower applies what it receives before
    // its own fsync, and the log comparison below reads synced records.
    while fe.positions().applied_lsn < target || fe.positions().flush_lsn < target {
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: follower stuck at {:?} of {target}",
            fe.positions()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    assert_eq!(
        fe.table().digest().unwrap(),
        le.table().digest().unwrap(),
        "seed {seed}: tables differ"
    );
    // Log matching: every record the follower still holds equals the
    // leader's record at that LSN.
    let ffirst = fe.positions().first_lsn;
    let lfirst = le.positions().first_lsn;
    let from = ffirst.max(lfirst);
    let theirs = fe.wal_reader().read_range(from, 10_000).unwrap();
    let ours = le.wal_reader().read_range(from, 10_000).unwrap();
    assert_eq!(theirs, ours, "seed {seed}: logs differ from {from}");
    let snapshots = follower.status().snapshots_installed;
    eprintln!(
        "seed {seed}: ok, {} reconnects, {snapshots} snapshots",
        follower.status().error_count
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_survives_cuts_refusals_and_retention() {
    for seed in 1..=8 {
        run_seed(seed).await;
    }
}
