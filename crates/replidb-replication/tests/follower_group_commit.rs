//! A follower's group commit: batches that are already waiting in the
//! socket when the follower reads go to its WAL together, in one writer
//! round and one fsync, instead of one fsync per batch (which let a
//! follower under load fall behind its leader and grow the time from a
//! write's acknowledgement to its visibility there).

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::SinkExt;
use replidb_core::{Epoch, EpochHistory, Lsn, Op, Record, SystemClock};
use replidb_replication::transport::BoxFuture;
use replidb_replication::{BoxIo, Codec, Follower, FollowerOptions, Frame, FrameCodec, Transport};
use replidb_storage::Backend;
use tokio::io::DuplexStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

mod support;
use support::engine;

/// Hands the follower one connection whose leader side was written in
/// full before the follower read a byte; later connects are refused.
struct Prewritten(Mutex<Option<DuplexStream>>);

impl Transport for Prewritten {
    fn connect<'a>(&'a self, _url: &'a str) -> BoxFuture<'a, io::Result<BoxIo>> {
        let io = self.0.lock().unwrap().take();
        Box::pin(async move {
            match io {
                Some(s) => Ok(Box::new(s) as BoxIo),
                None => Err(io::Error::new(io::ErrorKind::ConnectionRefused, "used")),
            }
        })
    }
}

const FRAMES: u64 = 50;
const RECORDS_PER_FRAME: u64 = 2;

fn frame(first: u64) -> Frame {
    let records = (first..first + RECORDS_PER_FRAME)
        .map(|l| Record {
            lsn: Lsn(l),
            epoch: Epoch(1),
            hlc: Default::default(),
            op: Op::Put {
                key: format!("k{l}"),
                value: l.to_le_bytes().to_vec(),
            },
        })
        .collect();
    Frame::Records {
        records,
        last_lsn: Lsn(FRAMES * RECORDS_PER_FRAME),
        commit_lsn: Lsn::ZERO,
        first_age_ms: 0,
        behind_age_ms: 0,
        sent_mono_ms: 0,
    }
}

#[tokio::test]
async fn batches_already_in_the_socket_share_one_fsync() {
    // The leader's side: a welcome, then 50 batches of 2 records, all
    // written before the follower connects.
    let (follower_end, leader_end) = tokio::io::duplex(1 << 20);
    let mut leader = Framed::new(leader_end, FrameCodec::default());
    leader
        .send(Frame::Welcome {
            leader_id: "leader".into(),
            epoch: Epoch(1),
            history: EpochHistory {
                entries: vec![(Epoch(1), Lsn(1))],
            },
            start_lsn: Lsn(1),
            compression: Codec::None,
        })
        .await
        .unwrap();
    for i in 0..FRAMES {
        leader.send(frame(1 + i * RECORDS_PER_FRAME)).await.unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let fe = engine(dir.path(), "follower", Backend::Memory).await;
    let syncs_before = fe.sync_count();
    let follower = Follower::new(
        fe.clone(),
        Arc::new(Prewritten(Mutex::new(Some(follower_end)))),
        Arc::new(SystemClock),
        FollowerOptions::new("follower", "mem://follower"),
        "mem://leader",
    );
    let cancel = CancellationToken::new();
    tokio::spawn(follower.clone().run(cancel.clone()));

    let last = Lsn(FRAMES * RECORDS_PER_FRAME);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fe.positions().flush_lsn < last || fe.positions().applied_lsn < last {
        assert!(
            tokio::time::Instant::now() < deadline,
            "follower did not take the batches: {:?}",
            fe.positions()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every record is there, in order.
    for l in 1..=last.0 {
        let v = fe
            .table()
            .get(&format!("k{l}"))
            .unwrap()
            .expect("record applied");
        assert_eq!(v.value, l.to_le_bytes().to_vec());
    }
    // One round for all of them, not one per batch (50 before the
    // follower coalesced what was waiting).
    let syncs = fe.sync_count() - syncs_before;
    assert!(syncs <= 2, "{syncs} fsyncs for {FRAMES} waiting batches");
    cancel.cancel();
    drop(leader);
}
