//! Applying causal writes ([`Op::Merge`](replidb_core::Op::Merge)) and
//! what the table keeps beside the data for them: per-origin applied
//! positions, the conflict log and conflict counters. Both backends call
//! [`merge_leaf`], so they store the same bytes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use replidb_causal::{Conflict, KeyState, Operand};
use replidb_core::{Epoch, Lsn, Versioned};

/// Newest conflicts the conflict log keeps per node; older ones are
/// dropped (their count stays in `replidb_conflicts_total`).
pub const CONFLICT_LOG_ENTRIES_MAX: usize = 10_000;

/// What merging one causal write did.
pub(crate) struct LeafOutcome {
    /// The key's new stored value.
    pub value: Versioned,
    /// Conflicts a policy resolved.
    pub conflicts: Vec<Conflict>,
    /// Concurrent versions now held beyond the first.
    pub siblings: usize,
}

/// Merge the encoded operand into `existing`. `None` when the operand does
/// not decode: a record from a newer or broken peer must not stop the
/// node, so the write is skipped and logged (it stays in its origin's log).
pub(crate) fn merge_leaf(
    key: &str,
    existing: Option<Versioned>,
    operand: &[u8],
    lsn: Lsn,
    epoch: Epoch,
) -> Option<LeafOutcome> {
    let operand = match Operand::decode(operand) {
        Ok(op) => op,
        Err(e) => {
            tracing::warn!(key, lsn = lsn.0, error = %e, "causal write does not decode; skipped");
            return None;
        }
    };
    // A plain value under a causal write: only a bug gets here (the writer
    // refuses typed writes to plain keys); the typed state replaces it.
    let state = existing
        .filter(|v| v.causal)
        .and_then(|v| KeyState::decode(&v.value).ok());
    let merged = replidb_causal::merge(key, state, operand);
    for c in &merged.conflicts {
        // One line per resolution, enough to find the versions again in
        // `/v1/conflicts`: who was kept, and each loser's origin and HLC.
        let kept = c
            .kept
            .as_ref()
            .map_or_else(|| "-".to_string(), ToString::to_string);
        let discarded = c
            .versions
            .iter()
            .skip(1)
            .map(|v| format!("{}@{}.{}", v.origin, v.hlc.wall_ms, v.hlc.logical))
            .collect::<Vec<_>>()
            .join(",");
        tracing::debug!(key, policy = %c.policy, kept, discarded, "conflict resolved");
    }
    Some(LeafOutcome {
        value: Versioned {
            value: merged.state.encode(),
            lsn,
            epoch,
            causal: true,
        },
        conflicts: merged.conflicts,
        siblings: merged.siblings,
    })
}

/// Conflict counters and the sibling high-water mark, for metrics.
#[derive(Default)]
pub struct CausalCounters {
    lww: AtomicU64,
    kind: AtomicU64,
    siblings: AtomicU64,
    siblings_max: AtomicU64,
}

/// A reading of the table's conflict counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CausalStats {
    /// Conflicts resolved per policy (`lww`, `siblings`, `type`) since start.
    pub conflicts: BTreeMap<String, u64>,
    /// Most concurrent versions seen on one key since start.
    pub siblings_max: u64,
}

impl CausalCounters {
    pub(crate) fn note(&self, out: &LeafOutcome) {
        for c in &out.conflicts {
            match c.policy.as_str() {
                "lww" => self.lww.fetch_add(1, Ordering::Relaxed),
                _ => self.kind.fetch_add(1, Ordering::Relaxed),
            };
        }
        if out.siblings > 0 {
            self.siblings.fetch_add(1, Ordering::Relaxed);
            self.siblings_max
                .fetch_max(out.siblings as u64 + 1, Ordering::Relaxed);
        }
    }

    pub(crate) fn read(&self) -> CausalStats {
        let mut conflicts = BTreeMap::new();
        conflicts.insert("lww".into(), self.lww.load(Ordering::Relaxed));
        conflicts.insert("siblings".into(), self.siblings.load(Ordering::Relaxed));
        conflicts.insert("type".into(), self.kind.load(Ordering::Relaxed));
        CausalStats {
            conflicts,
            siblings_max: self.siblings_max.load(Ordering::Relaxed),
        }
    }
}

/// An in-memory conflict log (the memory backend's; redb keeps its own in
/// the file), newest last, bounded by [`CONFLICT_LOG_ENTRIES_MAX`].
#[derive(Default)]
pub(crate) struct ConflictLog {
    entries: Mutex<VecDeque<Conflict>>,
}

impl ConflictLog {
    pub(crate) fn push(&self, conflicts: Vec<Conflict>) {
        if conflicts.is_empty() {
            return;
        }
        let mut e = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        e.extend(conflicts);
        while e.len() > CONFLICT_LOG_ENTRIES_MAX {
            e.pop_front();
        }
    }

    pub(crate) fn newest(&self, prefix: &str, limit: usize) -> Vec<Conflict> {
        let e = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        e.iter()
            .rev()
            .filter(|c| c.key.starts_with(prefix))
            .take(limit)
            .cloned()
            .collect()
    }
}

/// Check that `records` continue origin `origin` at `applied + 1`.
pub(crate) fn check_origin_contiguous(
    origin: &str,
    applied: Lsn,
    records: &[replidb_core::Record],
) -> crate::Result<()> {
    for (i, r) in records.iter().enumerate() {
        let expected = Lsn(applied.0 + 1 + i as u64);
        if r.lsn != expected {
            return Err(crate::StorageError::OriginNotContiguous {
                origin: origin.to_string(),
                expected,
                got: r.lsn,
            });
        }
    }
    Ok(())
}

/// The bytes the digest hashes for a stored value: a causal state's
/// canonical encoding with no LSN or epoch (those are where *this* node
/// applied it, which differs between replicas), else the value as stored.
pub(crate) fn digest_parts(
    value: &[u8],
    lsn: Lsn,
    epoch: Epoch,
    causal: bool,
) -> (Vec<u8>, Lsn, Epoch) {
    if causal {
        if let Ok(state) = KeyState::decode(value) {
            return (state.canonical_bytes(), Lsn::ZERO, Epoch(0));
        }
    }
    (value.to_vec(), lsn, epoch)
}
