//! Fuzz-style run of the stream frame decoder: everything a peer sends
//! goes through [`FrameCodec`] first.
//!
//! Inputs are random bytes or mutations of valid frames of every kind (bit
//! flips, overwritten, inserted and removed bytes, truncation), usually
//! with the checksum and length recomputed afterwards so the mutation
//! reaches postcard instead of stopping at the CRC. Frames are encoded
//! with a random codec (none, LZ4, zstd), and large compressible batches
//! and chunks are common, so mutations also reach the decompressors and
//! the compressed envelope's header. Seeded: a failure
//! prints the seed and input number that reproduce it.
//!
//! The normal test suite runs 20,000 inputs. The long run:
//!
//! ```text
//! REPLIDB_FUZZ_ITERATIONS=1000000 cargo test --release -p replidb-replication \
//!     fuzz_long -- --ignored --nocapture
//! ```

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use replidb_core::{Epoch, EpochHistory, Lsn, Versioned};
use tokio_util::codec::{Decoder, Encoder};

use crate::compress::{Codec, Offer};
use crate::frame::{Frame, FrameCodec};
use replidb_wal::fuzz::{mutate, sample_record as record};

fn word(rng: &mut StdRng) -> String {
    let n = rng.random_range(0..24);
    (0..n)
        .map(|_| rng.random_range(b'a'..=b'z') as char)
        .collect()
}

fn bytes(rng: &mut StdRng) -> Vec<u8> {
    if rng.random_bool(0.5) {
        // Compressible: a short random pattern repeated, long enough that
        // the frame crosses the compression threshold.
        let mut pattern = vec![0u8; rng.random_range(1..16)];
        rng.fill_bytes(&mut pattern);
        let n = rng.random_range(0..1200);
        return pattern.iter().copied().cycle().take(n).collect();
    }
    let mut v = vec![0u8; rng.random_range(0..200)];
    rng.fill_bytes(&mut v);
    v
}

fn codec(rng: &mut StdRng) -> Codec {
    Codec::ALL[rng.random_range(0..Codec::ALL.len())]
}

fn history(rng: &mut StdRng) -> EpochHistory {
    EpochHistory {
        entries: (0..rng.random_range(0..4))
            .map(|_| (Epoch(rng.random()), Lsn(rng.random())))
            .collect(),
    }
}

/// A valid frame of a random kind.
fn sample_frame(rng: &mut StdRng) -> Frame {
    match rng.random_range(0..10) {
        0 => Frame::Hello {
            node_id: word(rng),
            addr: word(rng),
            epoch: Epoch(rng.random()),
            flush_lsn: Lsn(rng.random()),
            applied_lsn: Lsn(rng.random()),
            last_epoch: Epoch(rng.random()),
            history: history(rng),
            topology: word(rng),
            compression: Offer {
                decodes: (0..rng.random_range(0..4)).map(|_| codec(rng)).collect(),
                prefer: codec(rng),
            },
        },
        1 => Frame::Ack {
            flush_lsn: Lsn(rng.random()),
            applied_lsn: Lsn(rng.random()),
            lag_ms: rng.random(),
            echo_mono_ms: rng.random(),
        },
        2 => Frame::Welcome {
            leader_id: word(rng),
            epoch: Epoch(rng.random()),
            history: history(rng),
            start_lsn: Lsn(rng.random()),
            compression: codec(rng),
        },
        3 => Frame::Diverged {
            common_lsn: Lsn(rng.random()),
            epoch: Epoch(rng.random()),
        },
        4 => Frame::Refused {
            reason: word(rng),
            epoch: Epoch(rng.random()),
        },
        5 => Frame::SnapshotBegin {
            lsn: Lsn(rng.random()),
        },
        6 => Frame::SnapshotChunk {
            entries: (0..rng.random_range(0..4))
                .map(|_| {
                    (
                        word(rng),
                        Versioned {
                            value: bytes(rng),
                            lsn: Lsn(rng.random()),
                            epoch: Epoch(rng.random()),
                            causal: false,
                        },
                    )
                })
                .collect(),
        },
        7 => Frame::SnapshotEnd {
            lsn: Lsn(rng.random()),
        },
        8 => Frame::Records {
            records: (0..rng.random_range(0..4))
                .map(|_| {
                    let mut r = record(rng);
                    if let replidb_core::Op::Put { value, .. } = &mut r.op {
                        *value = bytes(rng);
                    }
                    r
                })
                .collect(),
            last_lsn: Lsn(rng.random()),
            commit_lsn: Lsn(rng.random()),
            first_age_ms: rng.random(),
            behind_age_ms: rng.random(),
            sent_mono_ms: rng.random(),
        },
        _ => Frame::Heartbeat {
            last_lsn: Lsn(rng.random()),
            commit_lsn: Lsn(rng.random()),
            lacking_age_ms: rng.random(),
            epoch: Epoch(rng.random()),
            peers: (0..rng.random_range(0..3)).map(|_| word(rng)).collect(),
            sent_mono_ms: rng.random(),
        },
    }
}

/// Give a wire frame (`[u32 len BE][u32 crc LE][body]`) a length and
/// checksum that match its body.
fn fix_frame(buf: &mut [u8]) {
    if buf.len() < 8 {
        return;
    }
    let len = (buf.len() - 4) as u32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&buf[8..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn input(rng: &mut StdRng) -> Vec<u8> {
    if rng.random_ratio(1, 5) {
        let mut b = vec![0u8; rng.random_range(0..128)];
        rng.fill_bytes(&mut b);
        // Keep the announced length small: a huge one only makes the codec
        // wait for more bytes (after reserving room), which is not a bug.
        if b.len() >= 4 {
            let n = rng.random_range(0..256u32);
            b[0..4].copy_from_slice(&n.to_be_bytes());
        }
        if rng.random_bool(0.5) {
            fix_frame(&mut b);
        }
        return b;
    }
    let mut buf = BytesMut::new();
    let mut encoder = FrameCodec::default();
    encoder.set_send(codec(rng), "fuzz");
    encoder
        .encode(sample_frame(rng), &mut buf)
        .expect("a sample frame encodes");
    let mut b = buf.to_vec();
    mutate(rng, &mut b);
    if rng.random_bool(0.7) {
        fix_frame(&mut b);
    } else if b.len() >= 4 {
        // A wrong checksum, but a length that stays within the input.
        let len = (b.len() - 4) as u32;
        b[0..4].copy_from_slice(&len.to_be_bytes());
    }
    b
}

/// Feed `iterations` inputs from `seed` to the frame codec; it must return
/// (a frame, an error, or "need more") without panicking, and a decoded
/// frame must survive a round trip of its own.
pub(crate) fn run(seed: u64, iterations: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..iterations {
        let bytes = input(&mut rng);
        let decoded = std::panic::catch_unwind(|| {
            let mut src = BytesMut::from(&bytes[..]);
            FrameCodec::accepting_all().decode(&mut src)
        });
        match decoded {
            Err(_) => panic!("frame decoder panicked: seed {seed}, input {i}: {bytes:02x?}"),
            Ok(Ok(Some(frame))) => {
                let mut codec = FrameCodec::accepting_all();
                codec.set_send(Codec::Zstd, "fuzz");
                let mut again = BytesMut::new();
                codec.encode(frame.clone(), &mut again).expect("re-encodes");
                let back = codec.decode(&mut again).ok().flatten();
                assert_eq!(back, Some(frame), "seed {seed}, input {i}: round trip");
            }
            Ok(_) => {}
        }
    }
}

#[test]
fn fuzz_short() {
    run(0x5EED, 20_000);
}

/// The long run; see the module documentation.
#[test]
#[ignore = "long: run with --ignored (REPLIDB_FUZZ_ITERATIONS, default 1,000,000)"]
fn fuzz_long() {
    replidb_wal::fuzz::long_run("frame decoder", run);
}
