//! Property test: random op sequences applied to both backends agree with a
//! plain BTreeMap model, and with each other, on every key and on the digest.

mod common;

use std::collections::BTreeMap;

use common::rec;
use proptest::prelude::*;
use replidb_core::{Epoch, Lsn, Op, Record, Versioned};
use replidb_storage::{MemoryTable, RedbTable, Table, REDB_FILE_NAME};

/// Few distinct keys so puts, overwrites and deletes collide often.
fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "ab", "b", "ba", "c", "k/1", "k/2", "k/10"])
        .prop_map(str::to_string)
}

fn leaf() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (key(), prop::collection::vec(any::<u8>(), 0..6))
            .prop_map(|(key, value)| Op::Put { key, value }),
        1 => key().prop_map(|key| Op::Delete { key }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => leaf(),
        1 => prop::collection::vec(leaf(), 0..5).prop_map(Op::Batch),
    ]
}

/// Apply calls, each a run of ops with an epoch.
fn calls() -> impl Strategy<Value = Vec<(Vec<Op>, u64)>> {
    prop::collection::vec((prop::collection::vec(op(), 1..5), 1..4u64), 1..15)
}

fn model_apply(model: &mut BTreeMap<String, Versioned>, r: &Record) {
    let leaves: Vec<Op> = match &r.op {
        Op::Batch(ops) => ops.clone(),
        other => vec![other.clone()],
    };
    for leaf in leaves {
        match leaf {
            Op::Put { key, value } => {
                model.insert(
                    key,
                    Versioned {
                        value,
                        lsn: r.lsn,
                        epoch: r.epoch,
                        causal: false,
                    },
                );
            }
            Op::Delete { key } => {
                model.remove(&key);
            }
            Op::Batch(_) => unreachable!("no nested batches"),
            Op::Merge { .. } => unreachable!("the model writes no causal keys"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn backends_match_model(
        calls in calls(),
        checkpoint_every in prop_oneof![1..4usize, Just(1000)],
        start_after in prop::option::of(key()),
        limit in 1..6usize,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mem = MemoryTable::new();
        // The default memtable holds every write of a case until a
        // checkpoint; a 150-byte one flushes into the B-tree every few
        // applies, so reads merge both.
        let redb = RedbTable::open(&dir.path().join(REDB_FILE_NAME)).unwrap();
        let small_dir = tempfile::tempdir().unwrap();
        let redb_small = RedbTable::open_with_options(
            &small_dir.path().join(REDB_FILE_NAME),
            replidb_storage::TABLE_CACHE_BYTES_DEFAULT,
            150,
        )
        .unwrap();
        let tables: [&dyn Table; 3] = [&mem, &redb, &redb_small];
        let mut model = BTreeMap::new();
        let mut lsn = 0u64;
        for (i, (ops, epoch)) in calls.into_iter().enumerate() {
            let records: Vec<Record> = ops
                .into_iter()
                .map(|op| {
                    lsn += 1;
                    rec(lsn, epoch, op)
                })
                .collect();
            for r in &records {
                model_apply(&mut model, r);
            }
            for t in tables {
                t.apply(&records).unwrap();
                if i % checkpoint_every == 0 {
                    t.checkpoint().unwrap();
                }
            }
        }
        let all_keys = ["a", "ab", "b", "ba", "c", "k/1", "k/2", "k/10", "zz"];
        for t in tables {
            prop_assert_eq!(t.applied_lsn(), Lsn(lsn));
            // Reads first: counting flushes the memtable.
            for k in all_keys {
                prop_assert_eq!(t.get(k).unwrap(), model.get(k).cloned(), "key {}", k);
            }
            let scanned = t.scan("", None, usize::MAX).unwrap();
            let expected: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(&scanned, &expected);
            let prefixed = t.scan("k/", None, usize::MAX).unwrap();
            let expected_k: Vec<_> =
                expected.iter().filter(|(k, _)| k.starts_with("k/")).cloned().collect();
            prop_assert_eq!(prefixed, expected_k);
            let page = t.scan("", start_after.as_deref(), limit).unwrap();
            let expected_page: Vec<_> = expected
                .iter()
                .filter(|(k, _)| start_after.as_deref().is_none_or(|s| k.as_str() > s))
                .take(limit)
                .cloned()
                .collect();
            prop_assert_eq!(page, expected_page);
            prop_assert_eq!(t.len().unwrap(), model.len() as u64);
        }
        prop_assert_eq!(mem.digest().unwrap(), redb.digest().unwrap());
        prop_assert_eq!(mem.digest().unwrap(), redb_small.digest().unwrap());

        // The digest really depends on the contents: a table built directly
        // from the model matches, and one with any entry's epoch bumped doesn't.
        if let Some((first_key, _)) = model.iter().next() {
            let first_key = first_key.clone();
            let rebuilt = MemoryTable::new();
            let mut tampered_model = model.clone();
            if let Some(v) = tampered_model.get_mut(&first_key) {
                v.epoch = Epoch(v.epoch.0 + 1);
            }
            let tampered = MemoryTable::new();
            for (t, m) in [(&rebuilt, &model), (&tampered, &tampered_model)] {
                t.begin_restore().unwrap();
                let entries: Vec<_> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                t.restore_chunk(&entries).unwrap();
                t.finish_restore(Lsn(lsn)).unwrap();
            }
            prop_assert_eq!(rebuilt.digest().unwrap(), redb.digest().unwrap());
            prop_assert_ne!(tampered.digest().unwrap(), redb.digest().unwrap());
        }
    }
}
