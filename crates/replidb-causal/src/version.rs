//! A stored version of a plain key, and the register of a key's versions.

use replidb_core::Hlc;
use serde::{Deserialize, Serialize};

use crate::vector::{join, vector_covers, with_dot, Dot, VersionVector};
use crate::{Conflict, ConflictVersion, Policy};

/// Most concurrent versions a `siblings` key may hold from local writes
/// (DESIGN.md: default 16). A local write that would add one more is
/// refused with an error naming the key; versions arriving from peers are
/// always kept (each peer enforced the limit on its own writes), so a key
/// holds at most this many per origin.
pub const SIBLINGS_MAX: usize = 16;

/// One version of a plain key: its dot, what its writer had seen, its
/// origin's HLC time and the value (`None`: a tombstone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The write that made this version.
    pub dot: Dot,
    /// The versions its writer had seen (never includes `dot` itself).
    pub context: VersionVector,
    /// The origin's hybrid-logical-clock time of the write.
    pub hlc: Hlc,
    /// The value; `None` for a delete. Encoded as bytes, not as a
    /// sequence of `u8` (the same postcard bytes, far faster).
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

impl Version {
    /// This version's full vector: its context plus its own dot.
    pub fn vector(&self) -> VersionVector {
        with_dot(&self.context, &self.dot)
    }

    /// Whether this version has seen `other` (or is `other`).
    pub fn covers(&self, other: &Version) -> bool {
        self.dot == other.dot || vector_covers(&self.context, &other.dot)
    }

    /// The last-writer-wins order: `(hlc, origin)`.
    pub fn lww_rank(&self) -> (Hlc, &str) {
        (self.hlc, self.dot.origin.as_str())
    }

    /// Whether this is a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    pub(crate) fn as_conflict_version(&self) -> ConflictVersion {
        ConflictVersion {
            value: self.value.clone(),
            origin: self.dot.origin.clone(),
            hlc: self.hlc,
            version: self.vector(),
        }
    }
}

/// The versions of one plain key: under `lww` at most one; under
/// `siblings` every version no other has seen, ordered by dot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// The key's policy (the same on every node: peers compare policies).
    pub policy: Policy,
    /// The current versions.
    pub versions: Vec<Version>,
}

impl Register {
    /// An empty register under `policy`.
    pub fn new(policy: Policy) -> Self {
        Register {
            policy,
            versions: Vec::new(),
        }
    }

    /// The causal context of a read: every version's vector joined.
    pub fn context(&self) -> VersionVector {
        let mut vv = VersionVector::new();
        for v in &self.versions {
            join(&mut vv, &v.vector());
        }
        vv
    }

    /// Versions that are not tombstones.
    pub fn live(&self) -> impl Iterator<Item = &Version> {
        self.versions.iter().filter(|v| !v.is_tombstone())
    }

    /// Merge one version in; a conflict `lww` resolved is pushed to
    /// `conflicts`. Returns how many concurrent versions the key holds now
    /// beyond the first (0 when nothing is concurrent).
    ///
    /// Order and duplicates do not matter: under `siblings` the result is
    /// the set of versions no other covers (the DVV sync of Preguiça et
    /// al.); under `lww` it is the version with the highest `(hlc, origin)`
    /// ever merged, because a version that covers another was written by a
    /// node that had applied it, so its HLC is higher (HLC time respects
    /// causality: Kulkarni et al., "Logical Physical Clocks", 2014).
    pub fn merge(&mut self, key: &str, incoming: Version, conflicts: &mut Vec<Conflict>) -> usize {
        if self.versions.iter().any(|s| s.covers(&incoming)) {
            return self.versions.len().saturating_sub(1);
        }
        self.versions.retain(|s| !incoming.covers(s));
        match self.policy {
            Policy::Siblings => {
                self.versions.push(incoming);
                self.versions.sort_by(|a, b| a.dot.cmp(&b.dot));
            }
            Policy::Lww => {
                let winner = match self.versions.pop() {
                    None => incoming,
                    Some(held) => {
                        let (win, lose) = if incoming.lww_rank() > held.lww_rank() {
                            (incoming, held)
                        } else {
                            (held, incoming)
                        };
                        conflicts.push(Conflict {
                            key: key.to_string(),
                            policy: "lww".to_string(),
                            at: win.hlc,
                            versions: vec![win.as_conflict_version(), lose.as_conflict_version()],
                            kept: Some(win.dot.clone()),
                        });
                        // Anything else held was concurrent with both and
                        // lost earlier; under lww there is at most one.
                        self.versions.clear();
                        win
                    }
                };
                self.versions.push(winner);
            }
        }
        self.versions.len().saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Version` as stored before its value went through `serde_bytes`.
    #[derive(Serialize, Deserialize)]
    struct OldVersion {
        dot: Dot,
        context: VersionVector,
        hlc: Hlc,
        value: Option<Vec<u8>>,
    }

    #[test]
    fn the_value_keeps_the_encoding_states_already_hold() {
        for value in [Some((0..=255).collect::<Vec<u8>>()), Some(vec![]), None] {
            let old = OldVersion {
                dot: Dot::new("n1", 3),
                context: VersionVector::default(),
                hlc: Hlc {
                    wall_ms: 5,
                    logical: 1,
                },
                value: value.clone(),
            };
            let bytes = postcard::to_stdvec(&old).unwrap();
            let new: Version = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(new.value, value);
            assert_eq!(postcard::to_stdvec(&new).unwrap(), bytes);
        }
    }
}
