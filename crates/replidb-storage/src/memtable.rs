//! [`Memtable`]: plain writes the redb table has applied but not yet
//! written into its B-tree.
//!
//! Why: redb is a copy-on-write B-tree, so a transaction that inserts a
//! handful of random keys copies a leaf (and its branch path) per key, and
//! each writer round paid that on the reply path (about 40% of the
//! instructions of a durable HTTP write, see ARCHITECTURE.md). Collecting
//! plain puts and deletes in memory and writing them into the B-tree in one
//! sorted transaction when the memtable fills (or before anything that
//! reads the file directly: a checkpoint, a snapshot, a digest) copies each
//! touched leaf once per flush instead of once per write. This is the
//! memtable of an LSM tree (RocksDB, LevelDB; O'Neil et al., "The
//! Log-Structured Merge-Tree", 1996), with the node's WAL as its log: what
//! the memtable holds is always covered by WAL records after the table's
//! `applied_lsn` in the file, which recovery replays.

use std::collections::BTreeMap;

/// Bytes counted per memtable entry beyond its key and stored value (the
/// map node, the `String` and `Vec` headers), an estimate.
pub const MEMTABLE_ENTRY_OVERHEAD_BYTES: usize = 64;

/// Default limit of the redb backend's memtable, in bytes (keys, stored
/// values and [`MEMTABLE_ENTRY_OVERHEAD_BYTES`] per entry). Reaching it
/// writes the memtable into the B-tree within the same apply; a larger
/// memtable copies fewer pages per write but makes that one apply longer.
pub const MEMTABLE_BYTES_DEFAULT: usize = 4 * 1024 * 1024;

/// Keys and their newest stored encodings, `None` for a delete (a delete
/// must hide an older value still in the B-tree).
#[derive(Default)]
pub(crate) struct Memtable {
    entries: BTreeMap<String, Option<Vec<u8>>>,
    bytes: usize,
}

impl Memtable {
    fn entry_bytes(key: &str, stored: &Option<Vec<u8>>) -> usize {
        key.len() + stored.as_ref().map_or(0, Vec::len) + MEMTABLE_ENTRY_OVERHEAD_BYTES
    }

    /// Record `key`'s newest stored encoding (`None`: deleted).
    pub(crate) fn set(&mut self, key: &str, stored: Option<Vec<u8>>) {
        let add = Self::entry_bytes(key, &stored);
        // Look up by `&str` first so an overwrite does not allocate a key.
        if let Some(slot) = self.entries.get_mut(key) {
            self.bytes -= Self::entry_bytes(key, slot);
            *slot = stored;
        } else {
            self.entries.insert(key.to_string(), stored);
        }
        self.bytes += add;
    }

    /// `Some(None)`: deleted here; `Some(Some(bytes))`: its stored
    /// encoding; `None`: not in the memtable (ask the B-tree).
    pub(crate) fn get(&self, key: &str) -> Option<Option<&[u8]>> {
        self.entries.get(key).map(|v| v.as_deref())
    }

    /// Entries from `lower` on, in key order.
    pub(crate) fn range<'a>(
        &'a self,
        lower: std::ops::Bound<&'a str>,
    ) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        self.entries
            .range::<str, _>((lower, std::ops::Bound::Unbounded))
            .map(|(k, v)| (k.as_str(), v.as_deref()))
    }

    /// Every entry in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.range(std::ops::Bound::Unbounded)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes counted against the limit.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_follow_overwrites_and_deletes() {
        let mut m = Memtable::default();
        m.set("k", Some(vec![0; 10]));
        assert_eq!(m.bytes(), 1 + 10 + MEMTABLE_ENTRY_OVERHEAD_BYTES);
        m.set("k", Some(vec![0; 4]));
        assert_eq!(m.bytes(), 1 + 4 + MEMTABLE_ENTRY_OVERHEAD_BYTES);
        m.set("k", None);
        assert_eq!(m.bytes(), 1 + MEMTABLE_ENTRY_OVERHEAD_BYTES);
        assert_eq!(m.get("k"), Some(None));
        assert_eq!(m.get("x"), None);
        m.clear();
        assert!(m.is_empty());
        assert_eq!(m.bytes(), 0);
    }
}
