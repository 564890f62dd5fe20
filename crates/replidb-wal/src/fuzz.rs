//! Fuzz-style runs of the decoders that read bytes a disk (or a peer
//! shipping WAL frames) controls: the record codec and the segment header.
//!
//! Each input is random bytes or a mutation of a valid encoding (bit flips,
//! overwritten, inserted and removed bytes, truncation, a random length
//! field, and, often, a checksum recomputed afterwards so the mutation
//! reaches the payload decoder instead of stopping at the CRC). A seeded
//! RNG makes every failure reproducible from the seed printed with it.
//!
//! The normal test suite runs 20,000 inputs. The long run:
//!
//! ```text
//! REPLIDB_FUZZ_ITERATIONS=1000000 cargo test --release -p replidb-wal \
//!     fuzz_long -- --ignored --nocapture
//! ```

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use replidb_core::{Epoch, Hlc, Lsn, Op, Record};

use crate::codec::{decode_record, encode_record, FRAME_HEADER_LEN};
use crate::segment::SegmentHeader;

/// Inputs of the long run, unless `REPLIDB_FUZZ_ITERATIONS` says otherwise.
const LONG_RUN_ITERATIONS: u64 = 1_000_000;

/// A valid record with random fields and a random put, delete or batch.
pub fn sample_record(rng: &mut StdRng) -> Record {
    let key = |rng: &mut StdRng| {
        let n = rng.random_range(1..40);
        (0..n)
            .map(|_| rng.random_range(b'a'..=b'z') as char)
            .collect::<String>()
    };
    let value = |rng: &mut StdRng| {
        let mut v = vec![0u8; rng.random_range(0..300)];
        rng.fill_bytes(&mut v);
        v
    };
    let op = match rng.random_range(0..3) {
        0 => Op::Put {
            key: key(rng),
            value: value(rng),
        },
        1 => Op::Delete { key: key(rng) },
        _ => Op::Batch(
            (0..rng.random_range(0..6))
                .map(|_| Op::Put {
                    key: key(rng),
                    value: value(rng),
                })
                .collect(),
        ),
    };
    Record {
        lsn: Lsn(rng.random()),
        epoch: Epoch(rng.random()),
        hlc: Hlc {
            wall_ms: rng.random(),
            logical: rng.random(),
        },
        op,
    }
}

/// Apply one to a few random mutations to `buf`: bit flips, overwritten,
/// inserted and removed bytes, truncation, interesting small integers,
/// random tails. Shared by every decoder's fuzz run.
pub fn mutate(rng: &mut StdRng, buf: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..4) {
        match rng.random_range(0..7) {
            0 if !buf.is_empty() => {
                let i = rng.random_range(0..buf.len());
                buf[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !buf.is_empty() => {
                let i = rng.random_range(0..buf.len());
                buf[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=buf.len());
                buf.insert(i, rng.random());
            }
            3 if !buf.is_empty() => {
                let i = rng.random_range(0..buf.len());
                buf.remove(i);
            }
            4 => {
                let n = rng.random_range(0..=buf.len());
                buf.truncate(n);
            }
            5 => {
                // Interesting small integers, where lengths and tags live.
                let i = rng.random_range(0..=buf.len());
                let v = [0u8, 1, 2, 3, 0x7f, 0x80, 0xff][rng.random_range(0..7)];
                buf.insert(i, v);
            }
            _ => {
                let n = rng.random_range(0..16);
                let mut extra = vec![0u8; n];
                rng.fill_bytes(&mut extra);
                buf.extend_from_slice(&extra);
            }
        }
    }
}

/// Make the record frame at the start of `buf` carry a length and checksum
/// that match its payload, so the decoder reaches the payload.
fn fix_record_frame(buf: &mut [u8]) {
    if buf.len() < FRAME_HEADER_LEN {
        return;
    }
    let len = (buf.len() - FRAME_HEADER_LEN) as u32;
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&buf[FRAME_HEADER_LEN..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// One fuzz input for the record decoder.
fn record_input(rng: &mut StdRng) -> Vec<u8> {
    if rng.random_ratio(1, 5) {
        let mut b = vec![0u8; rng.random_range(0..128)];
        rng.fill_bytes(&mut b);
        if rng.random_bool(0.5) {
            fix_record_frame(&mut b);
        }
        return b;
    }
    let mut b = Vec::new();
    // A record whose op postcard accepts: never refused.
    if encode_record(&sample_record(rng), &mut b).is_err() {
        return b;
    }
    mutate(rng, &mut b);
    if rng.random_bool(0.6) {
        fix_record_frame(&mut b);
    }
    b
}

/// One fuzz input for the segment header decoder.
fn header_input(rng: &mut StdRng) -> Vec<u8> {
    let header = SegmentHeader {
        generation: rng.random(),
        first_lsn: Lsn(rng.random()),
        prev_epoch: Epoch(rng.random()),
    };
    let mut b = header.encode().to_vec();
    mutate(rng, &mut b);
    if b.len() >= 44 && rng.random_bool(0.5) {
        let crc = crc32c::crc32c(&b[0..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
    }
    b
}

/// Feed `iterations` inputs from `seed` to every decoder; they must return
/// (anything) without panicking. A successfully decoded record must survive
/// a round trip of its own.
pub(crate) fn run(seed: u64, iterations: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let path = std::path::Path::new("fuzz.wal");
    for i in 0..iterations {
        let input = record_input(&mut rng);
        let decoded = std::panic::catch_unwind(|| decode_record(&input));
        match decoded {
            Err(_) => panic!("decode_record panicked: seed {seed}, input {i}: {input:02x?}"),
            Ok(Ok(Some((rec, _)))) => {
                let mut again = Vec::new();
                encode_record(&rec, &mut again).expect("a decoded record re-encodes");
                let back = decode_record(&again).ok().flatten().map(|(r, _)| r);
                assert_eq!(back, Some(rec), "seed {seed}, input {i}: round trip");
            }
            Ok(_) => {}
        }
        let input = header_input(&mut rng);
        if std::panic::catch_unwind(|| SegmentHeader::decode(&input, path)).is_err() {
            panic!("SegmentHeader::decode panicked: seed {seed}, input {i}: {input:02x?}");
        }
    }
}

#[test]
fn fuzz_short() {
    run(0x5EED, 20_000);
}

/// A long fuzz run of `run(seed, iterations)`: `REPLIDB_FUZZ_ITERATIONS`
/// inputs (default 1,000,000) from `REPLIDB_FUZZ_SEED` (default 1), timed
/// and reported under `what`. Shared by every decoder's `fuzz_long`.
pub fn long_run(what: &str, run: impl FnOnce(u64, u64)) {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    let iterations = env("REPLIDB_FUZZ_ITERATIONS").unwrap_or(LONG_RUN_ITERATIONS);
    let seed = env("REPLIDB_FUZZ_SEED").unwrap_or(1);
    let started = std::time::Instant::now();
    run(seed, iterations);
    println!(
        "{what}: {iterations} inputs, seed {seed}, in {:?}",
        started.elapsed()
    );
}

/// The long run; see the module documentation.
#[test]
#[ignore = "long: run with --ignored (REPLIDB_FUZZ_ITERATIONS, default 1,000,000)"]
fn fuzz_long() {
    long_run("wal decoders (record and segment header)", run);
}

#[test]
fn deeply_nested_batch_is_refused_not_a_stack_overflow() {
    // Op::Batch is variant 2; a batch of one element, a million times.
    let mut payload = vec![0u8; 28];
    for _ in 0..1_000_000 {
        payload.extend_from_slice(&[2, 1]);
    }
    payload.extend_from_slice(&[1, 1, b'k']);
    let mut frame = vec![0u8; FRAME_HEADER_LEN];
    frame.extend_from_slice(&payload);
    fix_record_frame(&mut frame);
    assert!(matches!(
        decode_record(&frame),
        Err(crate::codec::DecodeError::Malformed(_))
    ));
}
