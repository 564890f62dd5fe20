//! What a causal key holds ([`KeyState`]), what a write carries
//! ([`Operand`]), and the merge every node runs when it applies one.

use std::collections::BTreeMap;

use crdts::{CmRDT, CvRDT, LWWReg, Orswot, PNCounter};
use replidb_core::Hlc;
use serde::{Deserialize, Serialize};

use crate::vector::{Dot, VersionVector};
use crate::version::{Register, Version, SIBLINGS_MAX};
use crate::{Conflict, ConflictVersion, Policy};

/// Order of a map field's writes: `(hlc, origin)`.
pub type Marker = (Hlc, String);

/// A map field: its JSON text, or `None` once removed.
pub type Field = LWWReg<Option<String>, Marker>;

/// The kind of a causal key, chosen by the endpoint that created it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum KeyKind {
    /// A plain key (`/v1/kv`): versions under the key's policy.
    Register,
    /// A PN-counter (`/v1/counter`).
    Counter,
    /// An observed-remove set of strings (`/v1/set`).
    Set,
    /// A map of LWW-on-HLC fields (`/v1/map`).
    Map,
}

impl KeyKind {
    /// `kv`, `counter`, `set` or `map`, as the endpoints name them.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Register => "kv",
            KeyKind::Counter => "counter",
            KeyKind::Set => "set",
            KeyKind::Map => "map",
        }
    }
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a causal key holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KeyState {
    /// A plain key's versions.
    Register(Register),
    /// A PN-counter: per node, increments and decrements
    /// (`crdts::PNCounter`, from riak_dt).
    Counter(PNCounter<String>),
    /// An observed-remove set without tombstones (`crdts::Orswot`, riak_dt's
    /// ORSWOT): an add wins over a concurrent remove.
    Set(Orswot<String, String>),
    /// Fields, each an LWW register on `(hlc, origin)`; a removed field
    /// stays as a `None` register so an older concurrent set loses to it.
    Map(BTreeMap<String, Field>),
}

/// What a write carries in the log: built by the origin from its state at
/// the moment of the write, applied the same way by every node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Operand {
    /// A new version of a plain key.
    Register {
        /// The key's policy at the origin.
        policy: Policy,
        /// The version.
        version: Version,
    },
    /// A counter change (`crdts::pncounter::Op`).
    Counter(crdts::pncounter::Op<String>),
    /// Set adds and removes, applied in order.
    Set(Vec<crdts::orswot::Op<String, String>>),
    /// Map fields to set (`Some` JSON text) or remove (`None`).
    Map {
        /// Field → new JSON text or `None`.
        fields: BTreeMap<String, Option<String>>,
        /// The write's `(hlc, origin)`.
        marker: Marker,
    },
    /// A whole state to join in (snapshots, repair).
    State(KeyState),
}

impl Operand {
    /// The kind of key this operand writes.
    pub fn kind(&self) -> KeyKind {
        match self {
            Operand::Register { .. } => KeyKind::Register,
            Operand::Counter(_) => KeyKind::Counter,
            Operand::Set(_) => KeyKind::Set,
            Operand::Map { .. } => KeyKind::Map,
            Operand::State(s) => s.kind(),
        }
    }

    /// Encode for a log record.
    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain data into a Vec cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decode from a log record.
    pub fn decode(bytes: &[u8]) -> Result<Operand, DecodeError> {
        postcard::from_bytes(bytes).map_err(|e| DecodeError(e.to_string()))
    }
}

/// Bytes that are not an encoded state or operand (damage or a bug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable causal value: {0}")]
pub struct DecodeError(pub String);

/// The result of applying an operand to a key.
#[derive(Debug)]
pub struct Merged {
    /// The key's new state.
    pub state: KeyState,
    /// Conflicts resolved on the way (to the conflict log).
    pub conflicts: Vec<Conflict>,
    /// Concurrent versions held beyond the first (siblings), for metrics.
    pub siblings: usize,
}

impl KeyState {
    /// An empty state of `kind` (a register under `policy`).
    pub fn empty(kind: KeyKind, policy: Policy) -> KeyState {
        match kind {
            KeyKind::Register => KeyState::Register(Register::new(policy)),
            KeyKind::Counter => KeyState::Counter(PNCounter::new()),
            KeyKind::Set => KeyState::Set(Orswot::new()),
            KeyKind::Map => KeyState::Map(BTreeMap::new()),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> KeyKind {
        match self {
            KeyState::Register(_) => KeyKind::Register,
            KeyState::Counter(_) => KeyKind::Counter,
            KeyState::Set(_) => KeyKind::Set,
            KeyState::Map(_) => KeyKind::Map,
        }
    }

    /// Encode for the table.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decode from the table.
    pub fn decode(bytes: &[u8]) -> Result<KeyState, DecodeError> {
        postcard::from_bytes(bytes).map_err(|e| DecodeError(e.to_string()))
    }

    /// Bytes equal on every node that holds an equal state (the table
    /// digest hashes these): the set's members are sorted here because
    /// `Orswot` keeps them in a `HashMap`, whose order differs per process.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        match self {
            KeyState::Set(set) => {
                let mut members: Vec<(String, std::collections::BTreeMap<String, u64>)> = set
                    .iter()
                    .map(|c| (c.val.clone(), c.rm_clock.dots.clone()))
                    .collect();
                members.sort();
                postcard::to_stdvec(&("set", set.clock(), members)).unwrap_or_default()
            }
            other => other.encode(),
        }
    }

    /// Whether a read finds nothing here (only tombstones, or empty).
    pub fn is_absent(&self) -> bool {
        match self {
            KeyState::Register(r) => r.live().next().is_none(),
            _ => false,
        }
    }

    /// The causal context of a read of this key.
    pub fn context(&self) -> VersionVector {
        match self {
            KeyState::Register(r) => r.context(),
            KeyState::Counter(_) | KeyState::Map(_) => VersionVector::new(),
            KeyState::Set(s) => s.clock(),
        }
    }

    /// A counter's value (saturating at the `i64` range).
    pub fn counter_value(&self) -> Option<i64> {
        use num_traits::{Signed, ToPrimitive};
        match self {
            KeyState::Counter(c) => {
                let v = c.read();
                Some(
                    v.to_i64()
                        .unwrap_or(if v.is_negative() { i64::MIN } else { i64::MAX }),
                )
            }
            _ => None,
        }
    }

    /// A set's members, sorted.
    pub fn set_members(&self) -> Option<Vec<String>> {
        match self {
            KeyState::Set(s) => {
                let mut m: Vec<String> = s.read().val.into_iter().collect();
                m.sort();
                Some(m)
            }
            _ => None,
        }
    }

    /// A map's live fields as a JSON object.
    pub fn map_object(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        match self {
            KeyState::Map(fields) => Some(
                fields
                    .iter()
                    .filter_map(|(k, reg)| {
                        let text = reg.val.as_ref()?;
                        let v = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
                        Some((k.clone(), v))
                    })
                    .collect(),
            ),
            _ => None,
        }
    }

    /// The latest HLC stamp in the state (versions of a plain key, a map's
    /// field markers); counters and sets carry none. A node absorbs it
    /// before writing the key, so its write orders after what it saw.
    pub fn latest_stamp(&self) -> Option<Hlc> {
        match self {
            KeyState::Register(r) => r.versions.iter().map(|v| v.hlc).max(),
            KeyState::Map(fields) => fields.values().map(|f| f.marker.0).max(),
            KeyState::Counter(_) | KeyState::Set(_) => None,
        }
    }

    /// A JSON rendering of any kind (conflict log entries of a type clash).
    pub fn render(&self) -> serde_json::Value {
        match self {
            KeyState::Register(r) => serde_json::json!({
                "versions": r.versions.iter().map(|v| v.value.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())).collect::<Vec<_>>()
            }),
            KeyState::Counter(_) => serde_json::json!({"counter": self.counter_value()}),
            KeyState::Set(_) => serde_json::json!({"set": self.set_members()}),
            KeyState::Map(_) => serde_json::json!({"map": self.map_object()}),
        }
    }

    /// Join another state of any kind into this one (see [`merge`]).
    fn join_state(&mut self, key: &str, other: KeyState, conflicts: &mut Vec<Conflict>) -> usize {
        match (self, other) {
            (KeyState::Register(a), KeyState::Register(b)) => {
                let mut n = 0;
                for v in b.versions {
                    n = a.merge(key, v, conflicts);
                }
                n
            }
            (KeyState::Counter(a), KeyState::Counter(b)) => {
                a.merge(b);
                0
            }
            (KeyState::Set(a), KeyState::Set(b)) => {
                a.merge(b);
                0
            }
            (KeyState::Map(a), KeyState::Map(b)) => {
                for (k, reg) in b {
                    match a.get_mut(&k) {
                        Some(mine) => mine.merge(reg),
                        None => {
                            a.insert(k, reg);
                        }
                    }
                }
                0
            }
            // Kinds differ: the caller resolved that before.
            _ => 0,
        }
    }
}

/// Apply `operand` to `key`'s state `existing` (absent: `None`).
///
/// Deterministic, commutative across origins, and idempotent: every node
/// that applies the same operands, in any interleaving of origins and with
/// duplicates, ends with equal states (the property tests check it).
///
/// A kind clash (a counter created on one node while the key was written as
/// a plain key on another) keeps the kind ranked higher in
/// `Register < Counter < Set < Map` and logs the other as a conflict with
/// policy `type`: a rule every node applies alike, so they converge.
pub fn merge(key: &str, existing: Option<KeyState>, operand: Operand) -> Merged {
    let mut conflicts = Vec::new();
    let policy_hint = match &operand {
        Operand::Register { policy, .. } => *policy,
        Operand::State(KeyState::Register(r)) => r.policy,
        _ => Policy::Lww,
    };
    let kind = operand.kind();
    // A state of a lower kind the operand's replaces, logged once the
    // operand is in: the entry shows the state kept, not an empty one.
    let mut replaced = None;
    let mut state = match existing {
        None => KeyState::empty(kind, policy_hint),
        Some(s) if s.kind() == kind => s,
        Some(s) if s.kind() > kind => {
            conflicts.push(type_conflict(key, &s, &operand_state(operand, policy_hint)));
            return Merged {
                state: s,
                conflicts,
                siblings: 0,
            };
        }
        Some(s) => {
            replaced = Some(s);
            KeyState::empty(kind, policy_hint)
        }
    };
    let siblings = match (&mut state, operand) {
        (KeyState::Register(r), Operand::Register { version, .. }) => {
            r.merge(key, version, &mut conflicts)
        }
        (KeyState::Counter(c), Operand::Counter(op)) => {
            c.apply(op);
            0
        }
        (KeyState::Set(s), Operand::Set(ops)) => {
            for op in ops {
                s.apply(op);
            }
            0
        }
        (KeyState::Map(m), Operand::Map { fields, marker }) => {
            for (name, val) in fields {
                let reg = LWWReg {
                    val,
                    marker: marker.clone(),
                };
                match m.get_mut(&name) {
                    Some(mine) => mine.merge(reg),
                    None => {
                        m.insert(name, reg);
                    }
                }
            }
            0
        }
        (st, Operand::State(other)) => st.join_state(key, other, &mut conflicts),
        // Same kind by construction above.
        _ => 0,
    };
    if let Some(lost) = replaced {
        conflicts.insert(0, type_conflict(key, &state, &lost));
    }
    Merged {
        state,
        conflicts,
        siblings,
    }
}

/// The state an operand would make of an absent key (for conflict logs).
fn operand_state(operand: Operand, _policy: Policy) -> KeyState {
    merge("", None, operand).state
}

fn type_conflict(key: &str, kept: &KeyState, lost: &KeyState) -> Conflict {
    // A state has no single origin; its newest stamp (values and map
    // fields carry one, counters and sets none) dates it.
    let as_version = |s: &KeyState| ConflictVersion {
        value: Some(s.render().to_string().into_bytes()),
        origin: String::new(),
        hlc: s.latest_stamp().unwrap_or_default(),
        version: s.context(),
    };
    Conflict {
        key: key.to_string(),
        policy: "type".to_string(),
        at: kept
            .latest_stamp()
            .max(lost.latest_stamp())
            .unwrap_or_default(),
        versions: vec![as_version(kept), as_version(lost)],
        kept: None,
    }
}

/// A write as a client asked for it, before the origin turns it into an
/// [`Operand`] against its current state.
#[derive(Clone, Debug, PartialEq)]
pub enum CausalWrite {
    /// Set a plain key. `context`: the causal context the client read
    /// (`X-Replidb-Context`); `None`: a blind write.
    Put {
        /// The value.
        value: Vec<u8>,
        /// What the client had seen.
        context: Option<VersionVector>,
    },
    /// Delete a plain key (a tombstone version).
    Delete {
        /// What the client had seen.
        context: Option<VersionVector>,
    },
    /// Add `delta` to a counter.
    Counter {
        /// Signed change.
        delta: i64,
    },
    /// Add and remove set members (removes see only what this node has).
    Set {
        /// Members to add.
        add: Vec<String>,
        /// Members to remove.
        remove: Vec<String>,
    },
    /// Set (`Some` JSON) or remove (`None`) map fields.
    Map {
        /// Field → JSON value or `None`.
        fields: BTreeMap<String, Option<serde_json::Value>>,
    },
    /// Empty a counter, set or map of everything this node has seen of it:
    /// the counter goes back by its value and the set removes every member
    /// it holds (observed-remove, as Riak resets a data type: what another
    /// origin adds concurrently is not observed, so it survives); the map
    /// removes every field it holds, each a last-writer-wins register on
    /// HLC time, so a field written concurrently with a later stamp
    /// survives and one with an earlier stamp does not. The key keeps its
    /// kind. The engine writes nothing to a key it does not hold (an empty
    /// state would create the key as this kind).
    Clear {
        /// The kind the request clears (`wrong_type` if the key is another).
        kind: KeyKind,
    },
}

impl CausalWrite {
    /// The kind of key it writes.
    pub fn kind(&self) -> KeyKind {
        match self {
            CausalWrite::Put { .. } | CausalWrite::Delete { .. } => KeyKind::Register,
            CausalWrite::Counter { .. } => KeyKind::Counter,
            CausalWrite::Set { .. } => KeyKind::Set,
            CausalWrite::Map { .. } => KeyKind::Map,
            CausalWrite::Clear { kind } => *kind,
        }
    }
}

/// Why the origin refused a write (a 409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    /// The key exists as another kind.
    #[error(
        "key {key:?} is a {existing}; use its own endpoint (this request writes a {requested})"
    )]
    WrongType {
        /// The key.
        key: String,
        /// What it is.
        existing: KeyKind,
        /// What the request writes.
        requested: KeyKind,
    },
    /// One more sibling than [`SIBLINGS_MAX`].
    #[error("key {key:?} already holds {count} concurrent versions (the limit is {SIBLINGS_MAX}); read it and write with its X-Replidb-Context to resolve them")]
    TooManySiblings {
        /// The key.
        key: String,
        /// How many it holds.
        count: usize,
    },
    /// The counter's value, as this node holds it, plus the delta leaves
    /// the `i64` range (Redis: "increment or decrement would overflow").
    /// Increments merged from other origins concurrently can still pass
    /// it; [`KeyState::counter_value`] then saturates.
    ///
    /// The message leaves the value out: it is answered to the writer,
    /// whose token may not have the right to read it (read it with `GET`).
    #[error("adding {delta} to counter {key:?} would leave the 64-bit signed range (of its value, or of the total this node has added to or taken from it)")]
    CounterOverflow {
        /// The key.
        key: String,
        /// Its value here, saturated to `i64`.
        value: i64,
        /// The refused delta.
        delta: i64,
    },
}

/// Who writes, where in its log, and when.
#[derive(Clone, Debug)]
pub struct WriteStamp {
    /// The origin (this node's id).
    pub origin: String,
    /// The LSN the write's record will have in the origin's log.
    pub lsn: u64,
    /// The origin's HLC time for it.
    pub hlc: Hlc,
}

/// Whether `origin` may add `delta` to `c`: the value must stay an `i64`,
/// and the origin's own running totals (a PN-counter keeps one `u64` of
/// increments and one of decrements per origin, which only grow) must stay
/// `u64`s; `crdts` adds them unchecked, which would panic or wrap.
///
/// A value already past the range (concurrent adds on several nodes, each
/// within it alone) takes a delta toward the range: refusing it too left
/// such a counter stuck at its bound until deleted.
fn counter_delta_fits(c: &PNCounter<String>, origin: &str, delta: i64) -> bool {
    use num_traits::ToPrimitive;
    let Some(old) = c.read().to_i128() else {
        // Past even i128: only a step toward the range can help.
        return false;
    };
    let in_range = |v: i128| i64::try_from(v).is_ok();
    let value = match old.checked_add(i128::from(delta)) {
        Some(new) if in_range(new) => true,
        Some(_) => {
            (old > i128::from(i64::MAX) && delta < 0) || (old < i128::from(i64::MIN) && delta > 0)
        }
        None => false,
    };
    value && counter_steps_fit(c, origin, delta >= 0, delta.unsigned_abs())
}

/// Whether `origin`'s running total of increments (`up`) or decrements
/// stays a `u64` after `steps` more.
fn counter_steps_fit(c: &PNCounter<String>, origin: &str, up: bool, steps: u64) -> bool {
    // Adding 0 steps reads the origin's current total without changing it.
    let total = if up {
        c.inc_many(origin.to_string(), 0).dot.counter
    } else {
        c.dec_many(origin.to_string(), 0).dot.counter
    };
    total.checked_add(steps).is_some()
}

/// The operand that empties `existing` of what this node holds
/// ([`CausalWrite::Clear`]).
fn clear_operand(
    key: &str,
    kind: KeyKind,
    existing: Option<&KeyState>,
    stamp: &WriteStamp,
) -> Result<Operand, PrepareError> {
    use num_traits::ToPrimitive;
    let origin = stamp.origin.clone();
    Ok(match kind {
        KeyKind::Counter => {
            let empty = PNCounter::new();
            let c = match existing {
                Some(KeyState::Counter(c)) => c,
                _ => &empty,
            };
            // Back by the exact value, which concurrent merges may have
            // taken past the i64 range.
            let value = c.read().to_i128().unwrap_or(i128::MAX);
            let steps = u64::try_from(value.unsigned_abs()).ok();
            let up = value < 0;
            match steps {
                Some(steps) if counter_steps_fit(c, &origin, up, steps) => {
                    if up {
                        Operand::Counter(c.inc_many(origin, steps))
                    } else {
                        Operand::Counter(c.dec_many(origin, steps))
                    }
                }
                _ => {
                    let back =
                        i64::try_from(-value).unwrap_or(if up { i64::MAX } else { i64::MIN });
                    return Err(PrepareError::CounterOverflow {
                        key: key.to_string(),
                        value: KeyState::Counter(c.clone())
                            .counter_value()
                            .unwrap_or_default(),
                        delta: back,
                    });
                }
            }
        }
        KeyKind::Set => match existing {
            Some(KeyState::Set(s)) => {
                let members: Vec<String> = s.read().val.into_iter().collect();
                if members.is_empty() {
                    Operand::Set(Vec::new())
                } else {
                    Operand::Set(vec![s.rm_all(members, s.read_ctx().derive_rm_ctx())])
                }
            }
            _ => Operand::Set(Vec::new()),
        },
        KeyKind::Map => Operand::Map {
            fields: match existing {
                Some(KeyState::Map(fields)) => fields
                    .iter()
                    .filter(|(_, reg)| reg.val.is_some())
                    .map(|(k, _)| (k.clone(), None))
                    .collect(),
                _ => BTreeMap::new(),
            },
            marker: (stamp.hlc, origin),
        },
        KeyKind::Register => {
            return register_operand(key, existing, None, None, Policy::Lww, stamp);
        }
    })
}

/// Turn a client's write into the operand the origin logs, against the
/// key's current state at the origin. Blind writes (no context) to an `lww`
/// key are taken to have seen what this node holds (a node overwrites its
/// own state, as in single-leader mode); to a `siblings` key they have seen
/// nothing, and add a sibling (Riak's behaviour without a vclock).
pub fn prepare(
    key: &str,
    existing: Option<&KeyState>,
    write: CausalWrite,
    policy: Policy,
    stamp: &WriteStamp,
) -> Result<Operand, PrepareError> {
    if let Some(s) = existing {
        if s.kind() != write.kind() {
            return Err(PrepareError::WrongType {
                key: key.to_string(),
                existing: s.kind(),
                requested: write.kind(),
            });
        }
    }
    let origin = stamp.origin.clone();
    Ok(match write {
        CausalWrite::Put { value, context } => {
            register_operand(key, existing, Some(value), context, policy, stamp)?
        }
        CausalWrite::Delete { context } => {
            register_operand(key, existing, None, context, policy, stamp)?
        }
        CausalWrite::Counter { delta } => {
            let empty = PNCounter::new();
            let c = match existing {
                Some(KeyState::Counter(c)) => c,
                _ => &empty,
            };
            if !counter_delta_fits(c, &origin, delta) {
                return Err(PrepareError::CounterOverflow {
                    key: key.to_string(),
                    value: KeyState::Counter(c.clone())
                        .counter_value()
                        .unwrap_or_default(),
                    delta,
                });
            }
            let steps = delta.unsigned_abs();
            if delta >= 0 {
                Operand::Counter(c.inc_many(origin, steps))
            } else {
                Operand::Counter(c.dec_many(origin, steps))
            }
        }
        CausalWrite::Set { add, remove } => {
            let empty = Orswot::new();
            let s = match existing {
                Some(KeyState::Set(s)) => s,
                _ => &empty,
            };
            let mut ops = Vec::new();
            if !remove.is_empty() {
                ops.push(s.rm_all(remove, s.read_ctx().derive_rm_ctx()));
            }
            if !add.is_empty() {
                ops.push(s.add_all(add, s.read_ctx().derive_add_ctx(origin)));
            }
            Operand::Set(ops)
        }
        CausalWrite::Clear { kind } => clear_operand(key, kind, existing, stamp)?,
        CausalWrite::Map { fields } => Operand::Map {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k, v.map(|v| v.to_string())))
                .collect(),
            marker: (stamp.hlc, origin),
        },
    })
}

fn register_operand(
    key: &str,
    existing: Option<&KeyState>,
    value: Option<Vec<u8>>,
    context: Option<VersionVector>,
    policy: Policy,
    stamp: &WriteStamp,
) -> Result<Operand, PrepareError> {
    let held = match existing {
        Some(KeyState::Register(r)) => Some(r),
        _ => None,
    };
    let context = match (context, policy) {
        (Some(c), _) => c,
        (None, Policy::Lww) => held.map(Register::context).unwrap_or_default(),
        (None, Policy::Siblings) => VersionVector::new(),
    };
    let version = Version {
        dot: Dot::new(stamp.origin.clone(), stamp.lsn),
        context,
        hlc: stamp.hlc,
        value,
    };
    if let (Some(r), Policy::Siblings) = (held, policy) {
        let remaining = r.versions.iter().filter(|s| !version.covers(s)).count();
        if remaining >= SIBLINGS_MAX {
            return Err(PrepareError::TooManySiblings {
                key: key.to_string(),
                count: remaining,
            });
        }
    }
    Ok(Operand::Register { policy, version })
}

#[cfg(test)]
mod tests {
    use super::PrepareError;

    /// Found by a new user: a write-only token read a counter through the
    /// overflow error its write was answered with.
    #[test]
    fn a_counter_overflow_does_not_reveal_the_value() {
        let e = PrepareError::CounterOverflow {
            key: "c".into(),
            value: 424_242,
            delta: i64::MAX,
        };
        let text = e.to_string();
        assert!(!text.contains("424242"), "{text}");
        assert!(
            text.contains("would leave the 64-bit signed range"),
            "{text}"
        );
    }
}
