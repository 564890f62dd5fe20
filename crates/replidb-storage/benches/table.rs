//! Micro-benchmarks of the table: applying a writer round's records, point
//! reads from the memtable and from redb's B-tree, and the checkpoint that
//! makes applied records durable.
//!
//! `cargo bench -p replidb-storage` (not part of the test suite). The
//! batch sizes bracket what a writer round applies under load: one record
//! (an idle node), 24 (one node, 50 clients, `--fsync always`) and 256.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use replidb_core::{Epoch, Hlc, Lsn, Op, Record};
use replidb_storage::{RedbTable, Table};

/// Distinct keys the benchmarks write and read: random keys among them
/// land in different B-tree leaves, as a load generator's do.
const KEYS: u64 = 10_000;
const VALUE_BYTES: usize = 16;

fn key(i: u64) -> String {
    format!("key:{i:012}")
}

fn put(lsn: u64, key: String) -> Record {
    Record {
        lsn: Lsn(lsn),
        epoch: Epoch(1),
        hlc: Hlc {
            wall_ms: 1_790_000_000_000 + lsn,
            logical: 0,
        },
        op: Op::Put {
            key,
            value: vec![b'v'; VALUE_BYTES],
        },
    }
}

/// A table in a temporary directory holding every key once, flushed to
/// the B-tree, and the next LSN to apply.
fn loaded_table() -> (tempfile::TempDir, RedbTable, u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let table = RedbTable::open(&dir.path().join("table.redb")).expect("open");
    let records: Vec<Record> = (0..KEYS).map(|i| put(i + 1, key(i))).collect();
    for chunk in records.chunks(1_000) {
        table.apply(chunk).expect("load");
    }
    table.checkpoint().expect("checkpoint");
    (dir, table, KEYS + 1)
}

/// `batch` puts of random keys at the LSNs from `*lsn` on (advanced past
/// them).
fn random_puts(rng: &mut rand::rngs::StdRng, lsn: &mut u64, batch: u64) -> Vec<Record> {
    (0..batch)
        .map(|_| {
            let r = put(*lsn, key(rng.random_range(0..KEYS)));
            *lsn += 1;
            r
        })
        .collect()
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("table_apply");
    for batch in [1u64, 24, 256] {
        g.throughput(Throughput::Elements(batch));
        g.bench_function(BenchmarkId::from_parameter(batch), |b| {
            let (_dir, table, mut lsn) = loaded_table();
            let mut rng = rand::rngs::StdRng::seed_from_u64(batch);
            b.iter_batched(
                || random_puts(&mut rng, &mut lsn, batch),
                |records| table.apply(black_box(&records)).expect("apply"),
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

fn get(c: &mut Criterion) {
    let mut g = c.benchmark_group("table_get");
    let (_dir, table, lsn) = loaded_table();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // Built outside the timed loop: a read's cost, not a format!'s.
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    // Every key is in the B-tree and the memtable is empty.
    g.bench_function("btree", |b| {
        b.iter(|| {
            table
                .get(black_box(&keys[rng.random_range(0..keys.len())]))
                .expect("get")
        })
    });
    // Rewrite a tenth of the keys: reads of them are answered from the
    // memtable (the rest still go to the B-tree).
    let hot: Vec<Record> = (0..KEYS / 10).map(|i| put(lsn + i, key(i))).collect();
    table.apply(&hot).expect("apply");
    g.bench_function("memtable", |b| {
        b.iter(|| {
            table
                .get(black_box(&keys[rng.random_range(0..keys.len() / 10)]))
                .expect("get")
        })
    });
    g.finish();
}

/// A checkpoint after a round of `batch` applied records: flushes the
/// memtable into the B-tree and commits it durably (redb's durable commit,
/// which syncs the table file).
fn checkpoint(c: &mut Criterion) {
    let mut g = c.benchmark_group("table_checkpoint");
    g.sample_size(20);
    for batch in [24u64, 1_000] {
        g.throughput(Throughput::Elements(batch));
        g.bench_function(BenchmarkId::from_parameter(batch), |b| {
            let (_dir, table, mut lsn) = loaded_table();
            let mut rng = rand::rngs::StdRng::seed_from_u64(batch);
            b.iter_batched(
                || {
                    let records = random_puts(&mut rng, &mut lsn, batch);
                    table.apply(&records).expect("apply");
                },
                |()| table.checkpoint().expect("checkpoint"),
                BatchSize::PerIteration,
            );
        });
    }
    g.finish();
}

criterion_group!(benches, apply, get, checkpoint);
criterion_main!(benches);
