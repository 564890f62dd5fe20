//! The codec handshake against a real `Leader` session: a node of this
//! build gets the leader's codec, a node that predates compression (a
//! `Hello` without the extension) gets plain frames, and a compressed
//! frame is refused by a side that did not agree to its codec.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use replidb_core::{Epoch, EpochHistory, Lsn, Op, SystemClock, WriteConcern};
use replidb_engine::{Engine, Proposal};
use replidb_replication::frame::FrameError;
use replidb_replication::{Codec, Frame, FrameCodec, Leader, LeaderOptions, Offer};
use replidb_storage::Backend;
use tokio_util::codec::Framed;

mod support;
use support::engine;

/// A leader with `codec` holding 20 compressible records.
async fn leader(dir: &std::path::Path, codec: Codec) -> (Arc<Engine>, Arc<Leader>) {
    let e = engine(dir, "leader", Backend::Memory).await;
    e.begin_epoch(Epoch(1)).await.unwrap();
    for i in 0..20 {
        let value = format!(r#"{{"id":{i},"user":"alice","tags":["a","b","c"],"ok":true}}"#)
            .repeat(8)
            .into_bytes();
        e.propose(Proposal::new(Op::Put {
            key: format!("k{i:03}"),
            value,
        }))
        .await
        .unwrap();
    }
    let l = Leader::new(
        "leader",
        e.clone(),
        Arc::new(SystemClock),
        LeaderOptions {
            cluster_size: Some(2),
            compression: codec,
            ..LeaderOptions::default()
        },
        WriteConcern::One,
    );
    (e, l)
}

fn hello(compression: Offer) -> Frame {
    Frame::Hello {
        node_id: "f".into(),
        addr: "mem://f".into(),
        epoch: Epoch(1),
        flush_lsn: Lsn::ZERO,
        applied_lsn: Lsn::ZERO,
        last_epoch: Epoch(0),
        history: EpochHistory::default(),
        topology: String::new(),
        compression,
    }
}

/// Connect with `offer`, accept `accept` after the welcome; the codec the
/// leader chose and the first data frame's outcome.
async fn session(
    leader: &Arc<Leader>,
    offer: Offer,
    accept: &[Codec],
) -> (Codec, Result<Frame, FrameError>) {
    let (a, b) = tokio::io::duplex(1 << 20);
    tokio::spawn(leader.clone().serve(Box::new(b)));
    let mut f = Framed::new(a, FrameCodec::default());
    f.send(hello(offer)).await.unwrap();
    let chosen = match f.next().await {
        Some(Ok(Frame::Welcome { compression, .. })) => compression,
        other => panic!("expected welcome, got {other:?}"),
    };
    f.codec_mut().set_accept(accept);
    let first = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match f.next().await {
                Some(Ok(Frame::Heartbeat { .. })) => continue,
                Some(r) => return r,
                None => panic!("stream ended"),
            }
        }
    })
    .await
    .expect("a data frame within 5 s");
    (chosen, first)
}

#[tokio::test]
async fn a_new_follower_gets_the_leaders_codec_and_an_old_one_plain_frames() {
    let dir = tempfile::tempdir().unwrap();
    let (_e, l) = leader(dir.path(), Codec::Zstd).await;

    let (chosen, first) = session(&l, Offer::all(Codec::None), &[Codec::Zstd]).await;
    assert_eq!(chosen, Codec::Zstd);
    match first {
        Ok(Frame::Records { records, .. }) => assert_eq!(records.len(), 20),
        other => panic!("{other:?}"),
    }
    let info = l.replicas();
    assert_eq!(info[0].compression, Codec::Zstd);

    // A node that predates compression sends no offer: plain frames, which
    // it decodes without knowing any codec.
    let (chosen, first) = session(&l, Offer::default(), &[]).await;
    assert_eq!(chosen, Codec::None);
    assert!(matches!(first, Ok(Frame::Records { .. })), "{first:?}");

    // A follower that decodes only lz4 gets plain frames from a zstd leader.
    let lz4_only = Offer {
        decodes: vec![Codec::Lz4],
        prefer: Codec::Lz4,
    };
    let (chosen, first) = session(&l, lz4_only, &[Codec::Lz4]).await;
    assert_eq!(chosen, Codec::None);
    assert!(matches!(first, Ok(Frame::Records { .. })), "{first:?}");
}

#[tokio::test]
async fn a_compressed_frame_of_a_codec_not_agreed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_e, l) = leader(dir.path(), Codec::Lz4).await;
    // The leader sends lz4; this side (wrongly) accepts nothing compressed.
    let (chosen, first) = session(&l, Offer::all(Codec::Lz4), &[]).await;
    assert_eq!(chosen, Codec::Lz4);
    assert!(matches!(first, Err(FrameError::Compressed(_))), "{first:?}");
}
