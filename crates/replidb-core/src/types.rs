//! Positions, terms, names and the contents of a log record.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::Hlc;

/// Log sequence number: gapless and strictly increasing within a node's log.
/// `Lsn(0)` means "nothing": the first record of a fresh cluster is `Lsn(1)`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The position before any record.
    pub const ZERO: Lsn = Lsn(0);

    /// The next LSN. Panics on overflow, which 2^64 writes will not reach.
    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }

    /// The previous LSN, saturating at zero.
    pub fn prev(self) -> Lsn {
        Lsn(self.0.saturating_sub(1))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Leadership term. Every promotion creates a higher epoch; every record
/// carries the epoch in which it was written.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The next epoch.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

/// How far above a node's own epoch an announced epoch may be. A real
/// leader is at most a few elections ahead; an epoch near `u64::MAX` can
/// only come from a broken or hostile peer, and would leave no room for
/// the next election (`Epoch::next` would overflow).
pub const EPOCH_JUMP_MAX: u64 = 1_000_000;

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A node's name, unique within a cluster (`--id`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl NodeId {
    /// Borrow the name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.to_string())
    }
}

/// Longest key accepted, in bytes of UTF-8 (API.md: 1..=1024).
pub const MAX_KEY_BYTES: usize = 1024;

/// Largest value, in bytes, any node may be configured to accept
/// (`--max-value-bytes` is capped here). The WAL record, stream frame and
/// snapshot chunk limits are sized from it and checked against it at
/// compile time (`replidb_wal::codec`, `replidb_replication::frame`).
pub const VALUE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// How many values' worth of bytes one transaction may carry (its body is
/// limited to this many times `--max-value-bytes`).
pub const TXN_VALUES_MAX: usize = 4;

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The empty string is not a key.
    #[error("key must not be empty")]
    Empty,
    /// Longer than [`MAX_KEY_BYTES`].
    #[error("key is {len} bytes; the limit is {MAX_KEY_BYTES}")]
    TooLong {
        /// Length of the refused key.
        len: usize,
    },
    /// `.` or `..`: URL parsers (WHATWG, the `url` crate, browsers, curl)
    /// remove such a path segment, `%2e` spellings included, so
    /// `/v1/kv/..` would reach another endpoint; no client could address
    /// the key.
    #[error("key {0:?} is a dot segment, which URL clients remove from a path")]
    DotSegment(String),
}

/// Check a key against the contract's limits.
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong { len: key.len() });
    }
    Ok(())
}

/// [`validate_key`] for a key that travels as a URL path segment
/// (`/v1/kv/{key}`): also not `.` or `..`, which URL parsers remove. Only
/// new keys are refused this way (writes, and clients building a URL):
/// keys stored before, or through the Redis protocol, a transaction or the
/// seed endpoints, where the key is not a path segment, stay readable and
/// deletable wherever they can be named.
pub fn validate_path_key(key: &str) -> Result<(), KeyError> {
    validate_key(key)?;
    if key == "." || key == ".." {
        return Err(KeyError::DotSegment(key.to_string()));
    }
    Ok(())
}

/// One change to the table. A `Batch` is applied atomically and holds only
/// `Put` and `Delete` (never a nested batch).
///
/// Decoding enforces that: a nested batch is an error. Without the check a
/// peer or a damaged file could nest batches a million deep in a few
/// megabytes and overflow the decoder's stack (found by the decoder fuzz
/// run: `replidb-wal`'s `fuzz` tests).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The new value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove `key` (a no-op if absent).
    Delete {
        /// The key.
        key: String,
    },
    /// Several puts and deletes applied as one.
    Batch(Vec<Op>),
    /// Merge a causal write into `key`'s state (multi-leader and leaderless
    /// keys, and the counter/set/map types in any topology). `operand` is an
    /// encoded `replidb_causal::Operand`; the table applies it with
    /// `replidb_causal::merge`.
    Merge {
        /// The key.
        key: String,
        /// The encoded operand.
        #[serde(with = "serde_bytes")]
        operand: Vec<u8>,
    },
}

/// The wire form of [`Op`] for decoding: the same variants in the same
/// order (so the same bytes), with a batch of leaves only.
#[derive(Deserialize)]
#[serde(rename = "Op")]
enum OpWire {
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    Batch(Vec<LeafWire>),
    Merge {
        key: String,
        #[serde(with = "serde_bytes")]
        operand: Vec<u8>,
    },
}

/// A batch member on the wire: `Put`, `Delete` or `Merge`; a nested
/// `Batch` (the third variant) fails to decode.
#[derive(Deserialize)]
#[serde(rename = "Op")]
enum LeafWire {
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    Batch(NoBatch),
    Merge {
        key: String,
        #[serde(with = "serde_bytes")]
        operand: Vec<u8>,
    },
}

/// Decodes from nothing: a nested batch is always an error.
enum NoBatch {}

impl<'de> Deserialize<'de> for NoBatch {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<NoBatch, D::Error> {
        Err(serde::de::Error::custom("a batch inside a batch"))
    }
}

impl From<LeafWire> for Op {
    fn from(w: LeafWire) -> Op {
        match w {
            LeafWire::Put { key, value } => Op::Put { key, value },
            LeafWire::Delete { key } => Op::Delete { key },
            LeafWire::Batch(never) => match never {},
            LeafWire::Merge { key, operand } => Op::Merge { key, operand },
        }
    }
}

impl<'de> Deserialize<'de> for Op {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Op, D::Error> {
        Ok(match OpWire::deserialize(d)? {
            OpWire::Put { key, value } => Op::Put { key, value },
            OpWire::Delete { key } => Op::Delete { key },
            OpWire::Batch(leaves) => Op::Batch(leaves.into_iter().map(Op::from).collect()),
            OpWire::Merge { key, operand } => Op::Merge { key, operand },
        })
    }
}

impl Op {
    /// Visit every put/delete in order, flattening a batch.
    pub fn for_each_leaf<'a>(&'a self, f: &mut impl FnMut(&'a Op)) {
        match self {
            Op::Batch(ops) => ops.iter().for_each(|op| op.for_each_leaf(f)),
            leaf => f(leaf),
        }
    }

    /// Approximate payload size, used for batching limits.
    pub fn size_bytes(&self) -> usize {
        match self {
            Op::Put { key, value } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
            Op::Batch(ops) => ops.iter().map(Op::size_bytes).sum(),
            Op::Merge { key, operand } => key.len() + operand.len(),
        }
    }

    /// The key a leaf writes (`None` for a batch).
    pub fn key(&self) -> Option<&str> {
        match self {
            Op::Put { key, .. } | Op::Delete { key } | Op::Merge { key, .. } => Some(key),
            Op::Batch(_) => None,
        }
    }
}

/// A write-ahead-log record: what the leader decided, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the log.
    pub lsn: Lsn,
    /// Term in which the leader wrote it.
    pub epoch: Epoch,
    /// Hybrid logical clock timestamp at the leader.
    pub hlc: Hlc,
    /// The change.
    pub op: Op,
}

/// A value as stored in the table, with the record that last wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    /// The value bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// LSN of the record that wrote this value.
    pub lsn: Lsn,
    /// Epoch of that record.
    pub epoch: Epoch,
    /// Whether `value` is an encoded causal state (`replidb_causal::KeyState`:
    /// a multi-leader or leaderless key, or a counter/set/map) rather than
    /// the raw bytes a client wrote.
    #[serde(default)]
    pub causal: bool,
}

/// A point in a log: the epoch of the record at `lsn` and `lsn` itself.
///
/// Two logs are compared by `(epoch, lsn)`, epoch first — the up-to-date
/// rule of Raft (§5.4.1: the log whose last entry has the later term is more
/// up to date; equal terms, the longer log) and of PostgreSQL timelines. An
/// LSN alone says nothing across epochs: a deposed leader's unacknowledged
/// tail can be longer than the committed history that replaced it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// Epoch of the record at `lsn` (0 for an empty log). Compared first.
    pub epoch: Epoch,
    /// The LSN.
    pub lsn: Lsn,
}

impl Position {
    /// The position `(epoch, lsn)`.
    pub fn new(epoch: Epoch, lsn: Lsn) -> Self {
        Position { epoch, lsn }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {})", self.epoch.0, self.lsn.0)
    }
}

/// A node's epoch history: `(epoch, first_lsn)` pairs in increasing order,
/// like PostgreSQL's timeline history. Epoch `e` covers LSNs from its
/// `first_lsn` up to (excluding) the next entry's `first_lsn`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochHistory {
    /// `(epoch, first LSN written in that epoch)`, strictly increasing in both.
    pub entries: Vec<(Epoch, Lsn)>,
}

impl EpochHistory {
    /// The epoch that covers `lsn`, if any entry starts at or before it.
    pub fn epoch_at(&self, lsn: Lsn) -> Option<Epoch> {
        self.entries
            .iter()
            .rev()
            .find(|(_, first)| *first <= lsn)
            .map(|(e, _)| *e)
    }

    /// The position of the record at `lsn` in a log with this history:
    /// `(epoch covering lsn, lsn)`, or epoch 0 when no entry covers it (an
    /// empty log).
    pub fn position_of(&self, lsn: Lsn) -> Position {
        Position::new(self.epoch_at(lsn).unwrap_or_default(), lsn)
    }

    /// The newest epoch in the history.
    pub fn last_epoch(&self) -> Epoch {
        self.entries.last().map(|(e, _)| *e).unwrap_or_default()
    }

    /// Record that `epoch` starts at `first_lsn`. Ignores a repeat of the
    /// newest entry's epoch; entries at or past `first_lsn` of an older epoch
    /// are dropped (they were never written, or were rewound).
    pub fn push(&mut self, epoch: Epoch, first_lsn: Lsn) {
        if self.last_epoch() >= epoch && !self.entries.is_empty() {
            return;
        }
        self.entries.retain(|(_, first)| *first < first_lsn);
        self.entries.push((epoch, first_lsn));
    }

    /// First LSN *after* `epoch` ended in this history: the first LSN of the
    /// next newer entry, or `None` if `epoch` is the newest (still open).
    pub fn end_of(&self, epoch: Epoch) -> Option<Lsn> {
        self.entries
            .iter()
            .find(|(e, _)| *e > epoch)
            .map(|(_, first)| *first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Op` and `Versioned` as they were written before their byte fields
    /// went through `serde_bytes` (a sequence of `u8`, which postcard
    /// encodes as a length and one byte each: the same bytes, ~30x slower
    /// to encode for a 4 KiB value).
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    enum OldOp {
        Put { key: String, value: Vec<u8> },
        Delete { key: String },
        Batch(Vec<OldOp>),
        Merge { key: String, operand: Vec<u8> },
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct OldVersioned {
        value: Vec<u8>,
        lsn: Lsn,
        epoch: Epoch,
        causal: bool,
    }

    #[test]
    fn byte_fields_keep_the_encoding_logs_and_tables_already_hold() {
        let old = OldOp::Batch(vec![
            OldOp::Put {
                key: "k".into(),
                value: (0..=255).collect(),
            },
            OldOp::Merge {
                key: "m".into(),
                operand: vec![1, 2, 3],
            },
            OldOp::Delete { key: "d".into() },
        ]);
        let new = Op::Batch(vec![
            Op::Put {
                key: "k".into(),
                value: (0..=255).collect(),
            },
            Op::Merge {
                key: "m".into(),
                operand: vec![1, 2, 3],
            },
            Op::Delete { key: "d".into() },
        ]);
        let old_bytes = postcard::to_allocvec(&old).unwrap();
        assert_eq!(postcard::to_allocvec(&new).unwrap(), old_bytes);
        assert_eq!(postcard::from_bytes::<Op>(&old_bytes).unwrap(), new);

        let v = Versioned {
            value: vec![0, 1, 254, 255],
            lsn: Lsn(7),
            epoch: Epoch(2),
            causal: true,
        };
        let o = OldVersioned {
            value: vec![0, 1, 254, 255],
            lsn: Lsn(7),
            epoch: Epoch(2),
            causal: true,
        };
        let bytes = postcard::to_allocvec(&o).unwrap();
        assert_eq!(postcard::to_allocvec(&v).unwrap(), bytes);
        assert_eq!(postcard::from_bytes::<Versioned>(&bytes).unwrap(), v);
        // JSON (snapshots over HTTP, tools) keeps its shape too.
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            serde_json::to_value(&o).unwrap()
        );
    }

    #[test]
    fn key_limits() {
        assert_eq!(validate_key(""), Err(KeyError::Empty));
        assert!(validate_key("a").is_ok());
        assert!(validate_path_key("...").is_ok() && validate_path_key("a/..").is_ok());
        for dots in [".", ".."] {
            assert!(validate_key(dots).is_ok());
            assert_eq!(
                validate_path_key(dots),
                Err(KeyError::DotSegment(dots.into()))
            );
        }
        assert!(validate_key(&"x".repeat(1024)).is_ok());
        assert_eq!(
            validate_key(&"x".repeat(1025)),
            Err(KeyError::TooLong { len: 1025 })
        );
    }

    #[test]
    fn epoch_history_lookup() {
        let mut h = EpochHistory::default();
        h.push(Epoch(1), Lsn(1));
        h.push(Epoch(2), Lsn(10));
        h.push(Epoch(4), Lsn(15));
        assert_eq!(h.epoch_at(Lsn(0)), None);
        assert_eq!(h.epoch_at(Lsn(1)), Some(Epoch(1)));
        assert_eq!(h.epoch_at(Lsn(9)), Some(Epoch(1)));
        assert_eq!(h.epoch_at(Lsn(10)), Some(Epoch(2)));
        assert_eq!(h.epoch_at(Lsn(100)), Some(Epoch(4)));
        assert_eq!(h.end_of(Epoch(1)), Some(Lsn(10)));
        assert_eq!(h.end_of(Epoch(2)), Some(Lsn(15)));
        assert_eq!(h.end_of(Epoch(3)), Some(Lsn(15)));
        assert_eq!(h.end_of(Epoch(4)), None);
        // Repeating the newest epoch changes nothing.
        h.push(Epoch(4), Lsn(20));
        assert_eq!(h.entries.len(), 3);
    }

    #[test]
    fn batch_leaves_flatten() {
        let op = Op::Batch(vec![
            Op::Put {
                key: "a".into(),
                value: b"1".to_vec(),
            },
            Op::Delete { key: "b".into() },
        ]);
        let mut keys = vec![];
        op.for_each_leaf(&mut |leaf| match leaf {
            Op::Put { key, .. } | Op::Delete { key } | Op::Merge { key, .. } => {
                keys.push(key.clone())
            }
            Op::Batch(_) => unreachable!("flattened"),
        });
        assert_eq!(keys, vec!["a", "b"]);
        assert_eq!(op.size_bytes(), 3);
    }

    #[test]
    fn merge_ops_round_trip_alone_and_in_batches_but_batches_never_nest() {
        let merge = Op::Merge {
            key: "k".into(),
            operand: vec![1, 2, 3],
        };
        let batch = Op::Batch(vec![merge.clone(), Op::Delete { key: "d".into() }]);
        for op in [merge, batch] {
            let bytes = postcard::to_stdvec(&op).unwrap();
            assert_eq!(postcard::from_bytes::<Op>(&bytes).unwrap(), op);
        }
        let nested = Op::Batch(vec![Op::Batch(vec![])]);
        let bytes = postcard::to_stdvec(&nested).unwrap();
        assert!(postcard::from_bytes::<Op>(&bytes).is_err());
    }
}

/// How many nodes (leader included) must hold a record durably before the
/// write is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WriteConcern {
    /// The leader alone (`w=1`, asynchronous replication).
    #[default]
    One,
    /// Exactly this many nodes (`w=k`).
    Nodes(usize),
    /// A majority of the voting nodes.
    Majority,
    /// Every known node.
    All,
}

impl WriteConcern {
    /// The number of acknowledgements needed in a cluster of `voters` nodes.
    pub fn required(&self, voters: usize) -> usize {
        match self {
            WriteConcern::One => 1,
            WriteConcern::Nodes(k) => (*k).max(1),
            WriteConcern::Majority => voters / 2 + 1,
            WriteConcern::All => voters.max(1),
        }
    }
}

impl fmt::Display for WriteConcern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteConcern::One => f.write_str("1"),
            WriteConcern::Nodes(k) => write!(f, "{k}"),
            WriteConcern::Majority => f.write_str("majority"),
            WriteConcern::All => f.write_str("all"),
        }
    }
}

/// Why a write concern string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid write concern {0:?}: expected a number >= 1, \"majority\" (or \"quorum\") or \"all\""
)]
pub struct WriteConcernError(pub String);

impl std::str::FromStr for WriteConcern {
    type Err = WriteConcernError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            // `quorum` is the causal topologies' name for it (API.md) and
            // Cassandra's; one meaning, accepted everywhere.
            "majority" | "quorum" => Ok(WriteConcern::Majority),
            "all" => Ok(WriteConcern::All),
            n => match n.parse::<usize>() {
                Ok(1) => Ok(WriteConcern::One),
                Ok(k) if k > 1 => Ok(WriteConcern::Nodes(k)),
                _ => Err(WriteConcernError(s.to_string())),
            },
        }
    }
}

#[cfg(test)]
mod wc_tests {
    use super::*;

    #[test]
    fn write_concern_parse_and_quorum() {
        assert_eq!("1".parse::<WriteConcern>().unwrap(), WriteConcern::One);
        assert_eq!("3".parse::<WriteConcern>().unwrap(), WriteConcern::Nodes(3));
        assert!("0".parse::<WriteConcern>().is_err());
        assert!("most".parse::<WriteConcern>().is_err());
        assert_eq!(
            "quorum".parse::<WriteConcern>().unwrap(),
            WriteConcern::Majority
        );
        assert_eq!(WriteConcern::Majority.required(3), 2);
        assert_eq!(WriteConcern::Majority.required(4), 3);
        assert_eq!(WriteConcern::Majority.required(1), 1);
        assert_eq!(WriteConcern::All.required(3), 3);
    }
}
