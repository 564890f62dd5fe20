//! Micro-benchmarks of the WAL: the record codec, and appending with and
//! without an fsync per batch (group commit amortises that fsync over the
//! batch: compare `append_sync/1` with `append_sync/64`).
//!
//! `cargo bench -p replidb-wal` (not part of the test suite).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use replidb_core::{Epoch, Hlc, Lsn, Op, Record};
use replidb_wal::codec::{decode_record, encode_record};
use replidb_wal::{FsyncPolicy, Wal, WalOptions};

/// A `Put` of a 16-byte key and a `value_bytes` value at `lsn`.
fn put(lsn: u64, value_bytes: usize) -> Record {
    Record {
        lsn: Lsn(lsn),
        epoch: Epoch(1),
        hlc: Hlc {
            wall_ms: 1_790_000_000_000 + lsn,
            logical: 0,
        },
        op: Op::Put {
            key: format!("key:{lsn:012}"),
            value: vec![b'v'; value_bytes],
        },
    }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for value_bytes in [16usize, 100, 4096] {
        let rec = put(42, value_bytes);
        let mut framed = Vec::new();
        encode_record(&rec, &mut framed).expect("encode");
        g.throughput(Throughput::Bytes(framed.len() as u64));
        g.bench_with_input(BenchmarkId::new("encode", value_bytes), &rec, |b, rec| {
            let mut out = Vec::with_capacity(framed.len());
            b.iter(|| {
                out.clear();
                encode_record(black_box(rec), &mut out).expect("encode");
            })
        });
        g.bench_with_input(
            BenchmarkId::new("decode", value_bytes),
            &framed,
            |b, framed| b.iter(|| decode_record(black_box(framed)).expect("decode")),
        );
    }
    g.finish();
}

/// Append `batch` records of 100 bytes, then one `sync` (an fsync with
/// `FsyncPolicy::Always`): the per-record cost of a group commit round.
fn append_sync(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_sync");
    g.sample_size(20);
    for batch in [1usize, 8, 64] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(BenchmarkId::from_parameter(batch), |b| {
            let dir = tempfile::tempdir().expect("temp dir");
            let (mut wal, _) = Wal::open(
                dir.path(),
                WalOptions {
                    fsync: FsyncPolicy::Always,
                    ..WalOptions::default()
                },
            )
            .expect("open");
            let mut lsn = 0u64;
            b.iter_batched(
                || {
                    (0..batch)
                        .map(|_| {
                            lsn += 1;
                            put(lsn, 100)
                        })
                        .collect::<Vec<_>>()
                },
                |records| {
                    for r in &records {
                        wal.append(r).expect("append");
                    }
                    wal.sync().expect("sync");
                },
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

criterion_group!(benches, codec, append_sync);
criterion_main!(benches);
