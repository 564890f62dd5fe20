//! Anti-entropy summaries (Dynamo §4.7, Cassandra's repair): two replicas
//! compare a hash tree of the keys they share instead of the keys, and
//! exchange only keys in the leaves that differ. The tree here has two
//! levels: [`BUCKETS`] leaves by key hash, each the wrapping sum of its
//! keys' hashes (order-free, so no sort), and the root the list of leaves.

use std::collections::BTreeMap;

use crate::ring::ring_hash;

/// Leaves of the tree.
pub const BUCKETS: usize = 64;

/// The leaf a key falls in.
pub fn bucket_of(key: &str) -> usize {
    (ring_hash(key.as_bytes()) >> 58) as usize % BUCKETS
}

/// The hash of one key's state (its canonical bytes).
pub fn entry_hash(key: &str, canonical_state: &[u8]) -> u64 {
    let mut b = Vec::with_capacity(key.len() + canonical_state.len() + 8);
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(canonical_state);
    ring_hash(&b)
}

/// Leaves of the tree over `entries` (key, entry hash).
pub fn leaves<'a>(entries: impl IntoIterator<Item = (&'a str, u64)>) -> Vec<u64> {
    let mut out = vec![0u64; BUCKETS];
    for (k, h) in entries {
        add_to_leaves(&mut out, k, h);
    }
    out
}

/// Fold one entry into `leaves` (of [`BUCKETS`] elements, zero to start):
/// a leaf is the wrapping sum of its entries' hashes, so entries can be
/// added one at a time, in any order, without holding them.
pub fn add_to_leaves(leaves: &mut [u64], key: &str, hash: u64) {
    if let Some(leaf) = leaves.get_mut(bucket_of(key)) {
        *leaf = leaf.wrapping_add(hash);
    }
}

/// Leaves that differ between two trees.
pub fn differing(a: &[u64], b: &[u64]) -> Vec<usize> {
    (0..BUCKETS).filter(|i| a.get(*i) != b.get(*i)).collect()
}

/// Keys whose entry hash differs (or that one side lacks).
pub fn differing_keys(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> Vec<String> {
    let mut out: Vec<String> = a
        .iter()
        .filter(|(k, h)| b.get(*k) != Some(h))
        .map(|(k, _)| k.clone())
        .collect();
    out.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_folded_one_entry_at_a_time_equal_leaves_of_the_set() {
        let entries: Vec<(String, u64)> = (0..5000u64)
            .map(|i| (format!("key:{i}"), i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect();
        let mut folded = vec![0u64; BUCKETS];
        for (k, h) in entries.iter().rev() {
            add_to_leaves(&mut folded, k, *h);
        }
        assert_eq!(
            folded,
            leaves(entries.iter().map(|(k, h)| (k.as_str(), *h)))
        );
        assert!(folded.iter().all(|l| *l != 0));
    }

    #[test]
    fn equal_sets_have_equal_leaves_whatever_the_order() {
        let a = leaves([("x", 1), ("y", 2), ("z", 3)]);
        let b = leaves([("z", 3), ("x", 1), ("y", 2)]);
        assert_eq!(a, b);
        let c = leaves([("x", 1), ("y", 2)]);
        assert_eq!(differing(&a, &c), vec![bucket_of("z")]);
    }

    #[test]
    fn differing_keys_finds_changed_and_missing() {
        let a: BTreeMap<String, u64> = [("a".into(), 1), ("b".into(), 2)].into_iter().collect();
        let b: BTreeMap<String, u64> = [("b".into(), 3), ("c".into(), 4)].into_iter().collect();
        assert_eq!(differing_keys(&a, &b), vec!["a", "b", "c"]);
    }
}
