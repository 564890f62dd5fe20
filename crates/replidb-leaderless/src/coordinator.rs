//! The coordinator's decisions, without IO (Dynamo §4.5–4.6): the server's
//! HTTP handlers and the simulator both drive these state machines, so a
//! rule the simulator checks is the rule the server runs.
//!
//! # Protocol
//! - **Routing** ([`route`]): a write is coordinated by a replica of its
//!   key (its dot must come from a node that has seen its earlier
//!   versions); any other node hands it to the key's replicas in
//!   preference order.
//! - **A write** ([`WriteRound`]): the coordinator has made the new state
//!   durable locally (it counts as the first acknowledgement), then sends
//!   the whole state to every other replica. Each send is a [`Delivery`]:
//!   first to the owner; if the owner does not take it and the quorum is
//!   sloppy, to fallback nodes in ring order after the preference list
//!   (each owner starting at a different fallback), as a hint naming the
//!   owner. The round is [`WriteStatus::Met`] once W replicas (hint holders
//!   included) hold the state, [`WriteStatus::Failed`] once every delivery
//!   has ended below W; the driver's deadline ends it too
//!   ([`WriteRound::expire`]).
//! - **A read** ([`ReadRound`]): ask every replica; once R answered
//!   (a replica without the key answers "absent"), merge those answers
//!   with `replidb_causal::merge` and answer. Every answer — those R and the
//!   later ones — that differs from the merged state names a replica to
//!   read-repair ([`ReadRound::repairs`]).
//! - **Anti-entropy and hints** ([`reconcile`]): joining two replicas'
//!   states of a key says which side must take the join.
//!
//! # Invariants
//! - A write is `Met` only with at least W distinct holders, the
//!   coordinator included; [`WriteRound::sloppy`] says whether a hint
//!   holder was among them (then `W + R > N` promises nothing about the
//!   next read).
//! - A read is `Ready` only with R answers from distinct replicas of the
//!   preference list; a failed or duplicate reply is never counted.
//! - Merging is a join (commutative, idempotent), so the order replies
//!   arrive in does not change the merged state, and a repair never takes
//!   anything away from a replica.
//!
//! # Left out
//! Timers and the network (the driver's), durability of hints (the
//! [`HintStore`](crate::HintStore)), and tombstone collection.

use replidb_causal::{merge, KeyState, Operand};

/// Why a quorum parameter (`w=`, `r=`) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?}: expected 1..={n}, quorum or all (this key has {n} replicas)")]
pub struct QuorumError {
    /// What the request said.
    pub given: String,
    /// The key's replica count N.
    pub n: usize,
}

/// How many of `n` replicas a `w=`/`r=` value asks for: `None`, `quorum`
/// or `majority` → `n / 2 + 1`; `all` → `n`; a number `1..=n`.
pub fn quorum_count(spec: Option<&str>, n: usize) -> Result<usize, QuorumError> {
    match spec {
        None | Some("quorum") | Some("majority") => Ok(n / 2 + 1),
        Some("all") => Ok(n),
        Some(v) => match v.parse::<usize>() {
            Ok(k) if (1..=n).contains(&k) => Ok(k),
            _ => Err(QuorumError {
                given: v.to_string(),
                n,
            }),
        },
    }
}

/// Who coordinates a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node is a replica of the key: it coordinates.
    Local,
    /// Hand the request to these replicas, in this order, until one
    /// answers.
    HandTo(Vec<String>),
}

/// Route a write of a key with preference list `pref` arriving at `me`.
pub fn route(pref: &[String], me: &str) -> Route {
    if pref.iter().any(|p| p == me) {
        Route::Local
    } else {
        Route::HandTo(pref.to_vec())
    }
}

/// One send of a write's state: to `to`, as a hint for `hint_for` when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The node to send the state to.
    pub to: String,
    /// `Some(owner)`: `to` is a fallback that keeps a hint for `owner`.
    pub hint_for: Option<String>,
}

/// Where one replica's copy of a write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The owner holds it durably.
    Stored(String),
    /// A fallback holds a hint for the owner (sloppy quorum).
    Hinted {
        /// The replica the state is for.
        owner: String,
        /// The node keeping the hint.
        holder: String,
    },
    /// Neither the owner nor a fallback took it.
    Failed(String),
}

impl Placement {
    /// The replica this placement is about.
    pub fn owner(&self) -> &str {
        match self {
            Placement::Stored(o) | Placement::Failed(o) => o,
            Placement::Hinted { owner, .. } => owner,
        }
    }

    /// How the write's answer lists it (`"url"` or `"holder (hint for
    /// owner)"`); `None` when it failed.
    pub fn describe(&self) -> Option<String> {
        match self {
            Placement::Stored(o) => Some(o.clone()),
            Placement::Hinted { owner, holder } => Some(format!("{holder} (hint for {owner})")),
            Placement::Failed(_) => None,
        }
    }
}

/// The sends for one replica of a write: the owner first, then (sloppy)
/// each fallback in turn until one takes a hint.
#[derive(Debug, Clone)]
pub struct Delivery {
    owner: String,
    fallbacks: Vec<String>,
    /// Index of the current attempt: 0 the owner, i > 0 `fallbacks[i-1]`.
    at: usize,
}

impl Delivery {
    /// The replica this delivery is for.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The send to make now.
    pub fn attempt(&self) -> Attempt {
        match self.at {
            0 => Attempt {
                to: self.owner.clone(),
                hint_for: None,
            },
            i => Attempt {
                to: self.fallbacks[i - 1].clone(),
                hint_for: Some(self.owner.clone()),
            },
        }
    }

    /// The current attempt ended (`ok`: the node made it durable). Returns
    /// where the copy ended, or `None` when the next [`Delivery::attempt`]
    /// should be made.
    pub fn on_result(&mut self, ok: bool) -> Option<Placement> {
        if ok {
            let a = self.attempt();
            return Some(match a.hint_for {
                None => Placement::Stored(a.to),
                Some(owner) => Placement::Hinted {
                    owner,
                    holder: a.to,
                },
            });
        }
        if self.at < self.fallbacks.len() {
            self.at += 1;
            return None;
        }
        Some(Placement::Failed(self.owner.clone()))
    }
}

/// Where a write round stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStatus {
    /// Fewer than W holders yet, and deliveries still under way.
    Pending,
    /// W holders (or more): answer 200.
    Met,
    /// Every delivery ended (or the deadline passed) below W: answer 504;
    /// the write is not undone.
    Failed,
}

/// One coordinated write, from the local durable copy to W holders.
#[derive(Debug, Clone)]
pub struct WriteRound {
    w: usize,
    n: usize,
    placements: Vec<Placement>,
    outstanding: usize,
    expired: bool,
}

impl WriteRound {
    /// A write of a key whose preference list is `pref` (N = its length),
    /// coordinated by `me` (a replica, already holding the new state),
    /// waiting for `w` holders. `walk` is the ring order from the key
    /// (`Ring::walk`): the nodes after the first N are the fallbacks a
    /// sloppy quorum may hint; `sloppy == false` (`--strict-quorum`) sends
    /// only to owners. Returns the round and one [`Delivery`] per other
    /// replica, to drive.
    pub fn new(
        pref: &[String],
        walk: &[String],
        me: &str,
        w: usize,
        sloppy: bool,
    ) -> (WriteRound, Vec<Delivery>) {
        let n = pref.len();
        let fallbacks: Vec<String> = if sloppy {
            walk.iter().skip(n).cloned().collect()
        } else {
            Vec::new()
        };
        let deliveries: Vec<Delivery> = pref
            .iter()
            .filter(|u| *u != me)
            .enumerate()
            .map(|(i, owner)| {
                // Each unreachable replica tries a different fallback first.
                let mut order = fallbacks.clone();
                if !order.is_empty() {
                    let len = order.len();
                    order.rotate_left(i % len);
                }
                Delivery {
                    owner: owner.clone(),
                    fallbacks: order,
                    at: 0,
                }
            })
            .collect();
        let round = WriteRound {
            w: w.clamp(1, n.max(1)),
            n,
            placements: vec![Placement::Stored(me.to_string())],
            outstanding: deliveries.len(),
            expired: false,
        };
        (round, deliveries)
    }

    /// A delivery ended with `placement`.
    pub fn on_placement(&mut self, placement: Placement) -> WriteStatus {
        if self.expired {
            return self.status();
        }
        self.outstanding = self.outstanding.saturating_sub(1);
        self.placements.push(placement);
        self.status()
    }

    /// The driver's deadline passed: whatever has not arrived does not
    /// count.
    pub fn expire(&mut self) -> WriteStatus {
        if self.status() == WriteStatus::Pending {
            self.expired = true;
        }
        self.status()
    }

    /// Where the round stands.
    pub fn status(&self) -> WriteStatus {
        if self.holders() >= self.w {
            WriteStatus::Met
        } else if self.outstanding == 0 || self.expired {
            WriteStatus::Failed
        } else {
            WriteStatus::Pending
        }
    }

    /// Nodes holding the state so far (owners and hint holders).
    pub fn holders(&self) -> usize {
        self.placements
            .iter()
            .filter(|p| !matches!(p, Placement::Failed(_)))
            .count()
    }

    /// Whether a hint holder counts among the holders (a sloppy quorum).
    pub fn sloppy(&self) -> bool {
        self.placements
            .iter()
            .any(|p| matches!(p, Placement::Hinted { .. }))
    }

    /// W.
    pub fn w(&self) -> usize {
        self.w
    }

    /// N.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Every placement so far, the coordinator's first.
    pub fn placements(&self) -> &[Placement] {
        &self.placements
    }

    /// Owners whose copy failed.
    pub fn failed(&self) -> Vec<String> {
        self.placements
            .iter()
            .filter_map(|p| match p {
                Placement::Failed(o) => Some(o.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Where a read round stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// Fewer than R answers, and replicas still to hear from.
    Pending,
    /// R answers: merge and answer.
    Ready,
    /// Too many replicas failed (or the deadline passed) to reach R: 503.
    Failed,
}

/// One coordinated read: R answers merged, the ones behind repaired.
#[derive(Debug, Clone)]
pub struct ReadRound {
    key: String,
    pref: Vec<String>,
    r: usize,
    /// Answers in arrival order; the first `r` are the ones merged.
    answers: Vec<(String, Option<KeyState>)>,
    failed: Vec<String>,
    expired: bool,
}

impl ReadRound {
    /// A read of `key` from its preference list `pref`, answering after
    /// `r` replicas (clamped to `1..=N`). Ask every member of `pref`.
    pub fn new(key: &str, pref: &[String], r: usize) -> ReadRound {
        ReadRound {
            key: key.to_string(),
            pref: pref.to_vec(),
            r: r.clamp(1, pref.len().max(1)),
            answers: Vec::new(),
            failed: Vec::new(),
            expired: false,
        }
    }

    fn heard(&self, from: &str) -> bool {
        self.answers.iter().any(|(u, _)| u == from) || self.failed.iter().any(|u| u == from)
    }

    /// `from` answered with its state (`None`: it holds nothing for the
    /// key). Replies from non-replicas and repeated replies are ignored.
    /// Answers after `Ready` are kept for [`ReadRound::repairs`].
    pub fn on_answer(&mut self, from: &str, state: Option<KeyState>) -> ReadStatus {
        if self.pref.iter().any(|p| p == from) && !self.heard(from) {
            self.answers.push((from.to_string(), state));
        }
        self.status()
    }

    /// `from` did not answer (error or timeout).
    pub fn on_failure(&mut self, from: &str) -> ReadStatus {
        if self.pref.iter().any(|p| p == from) && !self.heard(from) {
            self.failed.push(from.to_string());
        }
        self.status()
    }

    /// The driver's deadline passed before R answers.
    pub fn expire(&mut self) -> ReadStatus {
        if self.status() == ReadStatus::Pending {
            self.expired = true;
        }
        self.status()
    }

    /// Where the round stands.
    pub fn status(&self) -> ReadStatus {
        if self.answers.len() >= self.r {
            ReadStatus::Ready
        } else if self.expired || self.pref.len() - self.failed.len() < self.r {
            ReadStatus::Failed
        } else {
            ReadStatus::Pending
        }
    }

    /// Replicas that did not answer (an error or a timeout), in the order
    /// they failed.
    pub fn failed(&self) -> Vec<String> {
        self.failed.clone()
    }

    /// Replicas heard from so far (answers and failures): the read repair
    /// waits for all N.
    pub fn heard_from(&self) -> usize {
        self.answers.len() + self.failed.len()
    }

    /// R.
    pub fn r(&self) -> usize {
        self.r
    }

    /// The replicas whose answers are merged (the first R), in arrival
    /// order.
    pub fn answered(&self) -> Vec<String> {
        self.answers
            .iter()
            .take(self.r)
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// The join of the first R answers (`None`: none of them held the key).
    pub fn merged(&self) -> Option<KeyState> {
        join_all(&self.key, self.answers.iter().take(self.r).map(|(_, s)| s))
    }

    /// Replicas whose answer (any, the late ones included) differs from
    /// `merged`: push `merged` to them (read repair). Empty when nothing
    /// was merged.
    pub fn repairs(&self, merged: Option<&KeyState>) -> Vec<String> {
        let Some(m) = merged else {
            return Vec::new();
        };
        let canon = m.canonical_bytes();
        self.answers
            .iter()
            .filter(|(_, s)| s.as_ref().map(KeyState::canonical_bytes) != Some(canon.clone()))
            .map(|(u, _)| u.clone())
            .collect()
    }
}

/// The join of `states` (absent ones skipped).
pub fn join_all<'a>(
    key: &str,
    states: impl IntoIterator<Item = &'a Option<KeyState>>,
) -> Option<KeyState> {
    let mut merged: Option<KeyState> = None;
    for s in states.into_iter().flatten() {
        merged = Some(match merged {
            None => s.clone(),
            Some(m) => merge(key, Some(m), Operand::State(s.clone())).state,
        });
    }
    merged
}

/// What joining two replicas' states of a key calls for.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconcile {
    /// The join of both.
    pub merged: KeyState,
    /// Whether the local side lacks something of it.
    pub to_mine: bool,
    /// Whether the other side lacks something of it.
    pub to_theirs: bool,
}

/// Join `mine` and `theirs` (anti-entropy, hint delivery): `None` when
/// neither holds the key.
pub fn reconcile(
    key: &str,
    mine: Option<&KeyState>,
    theirs: Option<&KeyState>,
) -> Option<Reconcile> {
    let merged = join_all(key, [&mine.cloned(), &theirs.cloned()])?;
    let canon = merged.canonical_bytes();
    let differs = |s: Option<&KeyState>| s.map(KeyState::canonical_bytes) != Some(canon.clone());
    Some(Reconcile {
        to_mine: differs(mine),
        to_theirs: differs(theirs),
        merged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use replidb_causal::{prepare, CausalWrite, Policy, WriteStamp};
    use replidb_core::Hlc;

    fn urls(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn put(origin: &str, lsn: u64, value: &str, base: Option<&KeyState>) -> KeyState {
        let stamp = WriteStamp {
            origin: origin.into(),
            lsn,
            hlc: Hlc {
                wall_ms: 1000 + lsn,
                logical: 0,
            },
        };
        let op = prepare(
            "k",
            base,
            CausalWrite::Put {
                value: value.as_bytes().to_vec(),
                context: None,
            },
            Policy::Lww,
            &stamp,
        )
        .unwrap();
        merge("k", base.cloned(), op).state
    }

    #[test]
    fn quorum_counts() {
        assert_eq!(quorum_count(None, 3), Ok(2));
        assert_eq!(quorum_count(Some("quorum"), 5), Ok(3));
        assert_eq!(quorum_count(Some("all"), 3), Ok(3));
        assert_eq!(quorum_count(Some("1"), 3), Ok(1));
        assert!(quorum_count(Some("4"), 3).is_err());
        assert!(quorum_count(Some("0"), 3).is_err());
        assert!(quorum_count(Some("most"), 3).is_err());
    }

    #[test]
    fn a_non_replica_hands_the_write_on() {
        let pref = urls(&["a", "b", "c"]);
        assert_eq!(route(&pref, "b"), Route::Local);
        assert_eq!(route(&pref, "d"), Route::HandTo(pref.clone()));
    }

    #[test]
    fn a_write_is_met_at_w_counting_the_coordinator() {
        let pref = urls(&["a", "b", "c"]);
        let (mut round, ds) = WriteRound::new(&pref, &pref, "a", 2, true);
        assert_eq!(ds.len(), 2);
        assert_eq!(round.status(), WriteStatus::Pending);
        assert_eq!(
            round.on_placement(Placement::Failed("b".into())),
            WriteStatus::Pending
        );
        assert_eq!(
            round.on_placement(Placement::Stored("c".into())),
            WriteStatus::Met
        );
        assert!(!round.sloppy());
        // W=1: met by the local copy alone.
        let (round, _) = WriteRound::new(&pref, &pref, "a", 1, true);
        assert_eq!(round.status(), WriteStatus::Met);
    }

    #[test]
    fn a_write_fails_once_every_delivery_ended_below_w() {
        let pref = urls(&["a", "b", "c"]);
        let (mut round, _) = WriteRound::new(&pref, &pref, "a", 3, false);
        round.on_placement(Placement::Stored("b".into()));
        assert_eq!(
            round.on_placement(Placement::Failed("c".into())),
            WriteStatus::Failed
        );
        assert_eq!(round.failed(), vec!["c".to_string()]);
        // The deadline ends a pending round; a late placement changes
        // nothing.
        let (mut round, _) = WriteRound::new(&pref, &pref, "a", 2, false);
        assert_eq!(round.expire(), WriteStatus::Failed);
        assert_eq!(
            round.on_placement(Placement::Stored("b".into())),
            WriteStatus::Failed
        );
    }

    #[test]
    fn sloppy_deliveries_walk_distinct_fallbacks_strict_ones_do_not() {
        let pref = urls(&["a", "b", "c"]);
        let walk = urls(&["a", "b", "c", "d", "e"]);
        let (_, mut ds) = WriteRound::new(&pref, &walk, "a", 2, true);
        // b tries d first, c tries e first.
        assert_eq!(ds[0].on_result(false), None);
        assert_eq!(
            ds[0].attempt(),
            Attempt {
                to: "d".into(),
                hint_for: Some("b".into())
            }
        );
        assert_eq!(ds[1].on_result(false), None);
        assert_eq!(ds[1].attempt().to, "e");
        assert_eq!(
            ds[1].on_result(true),
            Some(Placement::Hinted {
                owner: "c".into(),
                holder: "e".into()
            })
        );
        // b's fallbacks both refuse: failed.
        assert_eq!(ds[0].on_result(false), None);
        assert_eq!(ds[0].on_result(false), Some(Placement::Failed("b".into())));

        let (_, mut strict) = WriteRound::new(&pref, &walk, "a", 2, false);
        assert_eq!(
            strict[0].on_result(false),
            Some(Placement::Failed("b".into()))
        );
    }

    #[test]
    fn a_hinted_holder_makes_the_quorum_sloppy() {
        let pref = urls(&["a", "b", "c"]);
        let (mut round, _) = WriteRound::new(&pref, &pref, "a", 2, true);
        round.on_placement(Placement::Hinted {
            owner: "b".into(),
            holder: "d".into(),
        });
        assert_eq!(round.status(), WriteStatus::Met);
        assert!(round.sloppy());
        assert_eq!(
            round.placements()[1].describe().as_deref(),
            Some("d (hint for b)")
        );
    }

    #[test]
    fn a_read_merges_r_answers_and_repairs_the_ones_behind() {
        let pref = urls(&["a", "b", "c"]);
        let old = put("a", 1, "old", None);
        let new = put("a", 2, "new", Some(&old));
        let mut round = ReadRound::new("k", &pref, 2);
        assert_eq!(round.on_answer("b", Some(old.clone())), ReadStatus::Pending);
        // A repeated or foreign reply does not count.
        assert_eq!(round.on_answer("b", Some(new.clone())), ReadStatus::Pending);
        assert_eq!(round.on_answer("z", Some(new.clone())), ReadStatus::Pending);
        assert_eq!(round.on_answer("a", Some(new.clone())), ReadStatus::Ready);
        let merged = round.merged();
        assert_eq!(merged.as_ref(), Some(&new));
        assert_eq!(round.repairs(merged.as_ref()), vec!["b".to_string()]);
        // A late answer that lacks the key is repaired too.
        round.on_answer("c", None);
        assert_eq!(
            round.repairs(merged.as_ref()),
            vec!["b".to_string(), "c".to_string()]
        );
        assert_eq!(round.answered(), vec!["b".to_string(), "a".to_string()]);
    }

    #[test]
    fn a_read_fails_when_too_few_replicas_can_answer() {
        let pref = urls(&["a", "b", "c"]);
        let mut round = ReadRound::new("k", &pref, 2);
        assert_eq!(round.on_failure("a"), ReadStatus::Pending);
        assert_eq!(round.on_failure("b"), ReadStatus::Failed);
        let mut round = ReadRound::new("k", &pref, 1);
        assert_eq!(round.on_answer("c", None), ReadStatus::Ready);
        assert_eq!(round.merged(), None);
        assert!(round.repairs(None).is_empty());
        let mut round = ReadRound::new("k", &pref, 3);
        round.on_answer("a", None);
        assert_eq!(round.expire(), ReadStatus::Failed);
    }

    #[test]
    fn reconcile_says_which_side_lacks_the_join() {
        let a = put("a", 1, "x", None);
        let b = put("b", 1, "y", None);
        assert_eq!(reconcile("k", None, None), None);
        let r = reconcile("k", Some(&a), None).unwrap();
        assert!(!r.to_mine && r.to_theirs);
        let r = reconcile("k", Some(&a), Some(&a)).unwrap();
        assert!(!r.to_mine && !r.to_theirs);
        // Concurrent lww versions: both sides take the winner.
        let r = reconcile("k", Some(&a), Some(&b)).unwrap();
        let winner = reconcile("k", Some(&b), Some(&a)).unwrap().merged;
        assert_eq!(r.merged, winner);
    }
}
