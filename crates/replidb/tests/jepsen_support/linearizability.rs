//! A linearizability checker for one register (one key), in the style of
//! Wing & Gong's search with Lowe's memoization — the algorithm Knossos
//! and Porcupine use.
//!
//! A history is a set of operations, each with a call time and, when the
//! client learned the outcome, a return time. The search tries to order
//! the operations so that each takes effect at one instant between its call
//! and its return and the register model accepts every step:
//!
//! - the history is a doubly linked list of call and return events sorted
//!   by time; at each point, any operation whose call is before the first
//!   remaining return may be linearized next ("lifted" out of the list);
//! - reaching a return whose operation has not been linearized means the
//!   current choice was wrong: backtrack to the last choice;
//! - every (set of linearized operations, register state) configuration is
//!   remembered, so a configuration reached by a different order is not
//!   explored twice (Lowe's memoization; without it the search is
//!   exponential in the concurrency).
//!
//! Operations whose outcome is unknown (the client timed out or the
//! connection broke) may have taken effect at any point after their call, or
//! never: they have no return event, so the search may linearize them
//! whenever it helps and need not linearize them at all.
//!
//! Left out: the search is per key (registers compose: a history is
//! linearizable iff each key's sub-history is), and it stops after a budget
//! of explored configurations, reporting "unknown" instead of running for
//! hours on a pathological history.

use std::collections::{HashMap, HashSet};
use std::fmt;

/// Milliseconds since the start of the test.
pub type Millis = u64;

/// What an operation did, as the client saw it. Values are unique per write
/// (the workload guarantees it), `None` is "absent".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Wrote the value.
    Write(String),
    /// Read this value (`None`: the key was absent).
    Read(Option<String>),
    /// Compare-and-set that succeeded: the register held `expected`, and
    /// now holds `new`.
    Cas {
        /// The value the condition named.
        expected: Option<String>,
        /// The value written.
        new: String,
    },
    /// Compare-and-set refused (409): the register did not hold `expected`.
    CasRefused {
        /// The value the condition named.
        expected: Option<String>,
    },
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// The client (process) that ran it.
    pub process: usize,
    /// When the client sent it.
    pub call: Millis,
    /// When the client learned the outcome; `None` when it never did
    /// (timeout, broken connection, 5xx): the op may or may not have taken
    /// effect. Reads with unknown outcome should be dropped, not recorded.
    pub ret: Option<Millis>,
    /// What it did.
    pub kind: OpKind,
    /// Free text for the report (which node answered, at what epoch and
    /// LSN); ignored by the checker.
    pub note: String,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| match v {
            Some(s) => format!("{s:?}"),
            None => "absent".to_string(),
        };
        let ret = match self.ret {
            Some(r) => format!("{r:>7}ms"),
            None => "      ? ".to_string(),
        };
        write!(f, "p{} [{:>7}ms ..{ret}] ", self.process, self.call)?;
        let indeterminate = if self.ret.is_none() {
            " (outcome unknown)"
        } else {
            ""
        };
        match &self.kind {
            OpKind::Write(v) => write!(f, "write {v:?}{indeterminate}"),
            OpKind::Read(v) => write!(f, "read -> {}", show(v)),
            OpKind::Cas { expected, new } => {
                write!(f, "cas {} -> {new:?}{indeterminate}", show(expected))
            }
            OpKind::CasRefused { expected } => write!(f, "cas {} refused", show(expected)),
        }?;
        if !self.note.is_empty() {
            write!(f, "  [{}]", self.note)?;
        }
        Ok(())
    }
}

/// The checker's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    NotLinearizable,
    /// The search hit its budget first.
    Unknown,
}

/// Configurations explored before giving up with [`Outcome::Unknown`].
pub const SEARCH_BUDGET: usize = 20_000_000;

/// Interned register states: 0 is "absent", 1 stands for every value that
/// no operation ever observes (they are indistinguishable to the model, so
/// merging them shrinks the search without changing its answer).
const ABSENT: u32 = 0;
const UNOBSERVED: u32 = 1;

#[derive(Clone, Copy, Debug)]
enum Step {
    Write(u32),
    Read(u32),
    Cas(u32, u32),
    CasRefused(u32),
}

impl Step {
    /// The model: the next state, or `None` when the op cannot happen in
    /// `state`. An op with unknown outcome is only ever linearized when it
    /// took effect (not taking effect = never linearizing it).
    fn apply(self, state: u32) -> Option<u32> {
        match self {
            Step::Write(v) => Some(v),
            Step::Read(v) => (v == state).then_some(state),
            Step::Cas(exp, new) => (exp == state).then_some(new),
            Step::CasRefused(exp) => (exp != state).then_some(state),
        }
    }
}

/// Intern every value, merging the never-observed ones.
fn compile(ops: &[Op]) -> Vec<Step> {
    let mut observed: HashSet<&str> = HashSet::new();
    for op in ops {
        match &op.kind {
            OpKind::Read(Some(v))
            | OpKind::Cas {
                expected: Some(v), ..
            }
            | OpKind::CasRefused { expected: Some(v) } => {
                observed.insert(v);
            }
            _ => {}
        }
    }
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut id = |v: &Option<String>| -> u32 {
        match v {
            None => ABSENT,
            Some(s) if !observed.contains(s.as_str()) => UNOBSERVED,
            Some(s) => {
                let next = ids.len() as u32 + 2;
                *ids.entry(s.clone()).or_insert(next)
            }
        }
    };
    ops.iter()
        .map(|op| match &op.kind {
            OpKind::Write(v) => Step::Write(id(&Some(v.clone()))),
            OpKind::Read(v) => Step::Read(id(v)),
            OpKind::Cas { expected, new } => Step::Cas(id(expected), id(&Some(new.clone()))),
            OpKind::CasRefused { expected } => Step::CasRefused(id(expected)),
        })
        .collect()
}

/// One call or return event in the linked list.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// The matching return (for a call with a known outcome).
    partner: Option<usize>,
    prev: usize,
    next: usize,
}

/// A well-mixed 128-bit value for `i` (two rounds of splitmix64).
fn splitmix128(i: u64) -> u128 {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let a = mix(i.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1));
    let b = mix(a ^ 0xd1b5_4a32_d192_ed03);
    (u128::from(a) << 64) | u128::from(b)
}

/// Whether `ops` (one key, starting absent) is linearizable.
pub fn check(ops: &[Op]) -> Outcome {
    check_with_budget(ops, SEARCH_BUDGET).0
}

/// [`check`], also returning how many ops the deepest attempt linearized
/// and the op whose return it could not get past.
fn check_with_budget(ops: &[Op], budget: usize) -> (Outcome, Option<usize>) {
    let steps = compile(ops);
    // Events in time order; at equal times returns come after calls, so
    // ops that touch at an instant count as concurrent (the lenient side:
    // the checker must never report a violation that is not one).
    let mut order: Vec<(Millis, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, false, i));
        if let Some(r) = op.ret {
            order.push((r, true, i));
        }
    }
    order.sort();
    // Index 0 is the list head (a sentinel).
    let mut ev: Vec<Event> = Vec::with_capacity(order.len() + 1);
    ev.push(Event {
        op: usize::MAX,
        is_call: false,
        partner: None,
        prev: 0,
        next: 1,
    });
    let mut call_at = vec![0usize; ops.len()];
    for (pos, &(_, is_return, op)) in order.iter().enumerate() {
        let idx = pos + 1;
        ev.push(Event {
            op,
            is_call: !is_return,
            partner: None,
            prev: idx - 1,
            next: idx + 1,
        });
        if is_return {
            ev[call_at[op]].partner = Some(idx);
        } else {
            call_at[op] = idx;
        }
    }
    let end = ev.len(); // "null"
    if let Some(last) = ev.last_mut() {
        last.next = end;
    }
    if ev.len() == 1 {
        return (Outcome::Linearizable, None);
    }

    // The set of linearized ops is remembered by a Zobrist hash: a random
    // 128-bit key per op, XORed in and out, so a step costs O(1) and an
    // entry 20 bytes whatever the history's length (a collision, at 2^-128
    // odds per pair, could only hide a configuration, never invent one).
    let keys: Vec<u128> = (0..ops.len()).map(|i| splitmix128(i as u64)).collect();
    let mut linearized: u128 = 0;
    let mut cache: HashSet<(u128, u32)> = HashSet::new();
    let mut stack: Vec<(usize, u32)> = Vec::new();
    let mut state = ABSENT;
    let mut entry = ev[0].next;
    let mut deepest = (0usize, None);

    // Remove a call and its return from the list / put them back.
    fn lift(ev: &mut [Event], end: usize, i: usize) {
        let (p, n) = (ev[i].prev, ev[i].next);
        ev[p].next = n;
        if n != end {
            ev[n].prev = p;
        }
        if let Some(r) = ev[i].partner {
            let (p, n) = (ev[r].prev, ev[r].next);
            ev[p].next = n;
            if n != end {
                ev[n].prev = p;
            }
        }
    }
    fn unlift(ev: &mut [Event], end: usize, i: usize) {
        if let Some(r) = ev[i].partner {
            let (p, n) = (ev[r].prev, ev[r].next);
            ev[p].next = r;
            if n != end {
                ev[n].prev = r;
            }
        }
        let (p, n) = (ev[i].prev, ev[i].next);
        ev[p].next = i;
        if n != end {
            ev[n].prev = i;
        }
    }

    loop {
        if entry == end {
            // Only calls of ops with unknown outcome remain: they need not
            // take effect.
            return (Outcome::Linearizable, None);
        }
        let e = ev[entry];
        if e.is_call {
            if let Some(next_state) = steps[e.op].apply(state) {
                let with = linearized ^ keys[e.op];
                if cache.insert((with, next_state)) {
                    if cache.len() > budget {
                        return (Outcome::Unknown, deepest.1);
                    }
                    stack.push((entry, state));
                    state = next_state;
                    linearized = with;
                    lift(&mut ev, end, entry);
                    if stack.len() > deepest.0 {
                        deepest.0 = stack.len();
                    }
                    entry = ev[0].next;
                    continue;
                }
            }
            entry = e.next;
        } else {
            // A return whose op is not linearized yet: undo the last choice.
            if stack.len() >= deepest.0 {
                deepest.1 = Some(e.op);
            }
            let Some((back, prev_state)) = stack.pop() else {
                return (Outcome::NotLinearizable, deepest.1);
            };
            linearized ^= keys[ev[back].op];
            state = prev_state;
            unlift(&mut ev, end, back);
            entry = ev[back].next;
        }
    }
}

/// A readable witness of a violation: a sub-history that is still not
/// linearizable, and the time the search could not get past.
pub struct Violation {
    /// The ops of the witness, by call time.
    pub ops: Vec<Op>,
    /// The return (ms) the search could not linearize past.
    pub stuck_at: Option<Millis>,
}

/// Shrink a non-linearizable history to a witness.
///
/// Only *constraints* are removed — reads and refused cas, which change no
/// state — because removing one can never make a linearizable history
/// non-linearizable: whatever violation remains is one the full history
/// has. Writes (and successful or unknown cas) all stay, since dropping a
/// write can invent a violation (a refused cas it explained). First the
/// history is cut after the return the search could not get past (kept
/// only if still non-linearizable), then constraints go in ever smaller
/// chunks (delta debugging) while the rest stays non-linearizable. Stops
/// after `checks` searches.
pub fn minimal_violation(ops: &[Op], checks: usize) -> Violation {
    let fails = |h: &[Op]| check_with_budget(h, SEARCH_BUDGET / 10).0 == Outcome::NotLinearizable;
    let mut core: Vec<Op> = ops.to_vec();
    core.sort_by_key(|o| (o.call, o.ret));
    let (_, stuck) = check_with_budget(&core, SEARCH_BUDGET / 10);
    let stuck_at = stuck.and_then(|i| core[i].ret);
    if let Some(r) = stuck_at {
        let prefix: Vec<Op> = core.iter().filter(|o| o.call <= r).cloned().collect();
        if fails(&prefix) {
            core = prefix;
        }
    }
    let is_constraint =
        |o: &Op| o.ret.is_some() && matches!(o.kind, OpKind::Read(_) | OpKind::CasRefused { .. });
    let mut budget = checks;
    let mut chunk = core
        .iter()
        .filter(|o| is_constraint(o))
        .count()
        .div_ceil(2)
        .max(1);
    loop {
        let mut start = 0;
        loop {
            let constraints: Vec<usize> = (0..core.len())
                .filter(|&i| is_constraint(&core[i]))
                .collect();
            if start >= constraints.len() || budget == 0 {
                break;
            }
            let end = (start + chunk).min(constraints.len());
            let drop: std::collections::HashSet<usize> =
                constraints[start..end].iter().copied().collect();
            let candidate: Vec<Op> = core
                .iter()
                .enumerate()
                .filter(|(i, _)| !drop.contains(i))
                .map(|(_, o)| o.clone())
                .collect();
            budget -= 1;
            if fails(&candidate) {
                core = candidate;
            } else {
                start = end;
            }
        }
        if chunk == 1 || budget == 0 {
            return Violation {
                ops: core,
                stuck_at,
            };
        }
        chunk = chunk.div_ceil(2);
    }
}

impl Violation {
    /// The witness for a report: every remaining constraint, and the
    /// writes from `context_ms` before the first of them on (older writes
    /// are counted, not listed; they set the stage but are not in doubt).
    pub fn render(&self, context_ms: Millis) -> String {
        let first_constraint = self
            .ops
            .iter()
            .filter(|o| matches!(o.kind, OpKind::Read(_) | OpKind::CasRefused { .. }))
            .map(|o| o.call)
            .min()
            .unwrap_or(0);
        let from = first_constraint.saturating_sub(context_ms);
        let (shown, hidden): (Vec<&Op>, Vec<&Op>) = self
            .ops
            .iter()
            .partition(|o| o.ret.is_none_or(|r| r >= from) || o.call >= from);
        let mut out = String::new();
        if !hidden.is_empty() {
            out.push_str(&format!(
                "    ({} earlier writes not shown; all completed before {from}ms)\n",
                hidden.len()
            ));
        }
        for op in shown {
            out.push_str(&format!("    {op}\n"));
        }
        if let Some(t) = self.stuck_at {
            out.push_str(&format!(
                "    (no linearization gets past the return at {t}ms)\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: usize, call: Millis, ret: Option<Millis>, kind: OpKind) -> Op {
        Op {
            process,
            call,
            ret,
            kind,
            note: String::new(),
        }
    }
    fn w(v: &str) -> OpKind {
        OpKind::Write(v.into())
    }
    fn r(v: Option<&str>) -> OpKind {
        OpKind::Read(v.map(String::from))
    }
    fn cas(e: Option<&str>, n: &str) -> OpKind {
        OpKind::Cas {
            expected: e.map(String::from),
            new: n.into(),
        }
    }

    #[test]
    fn empty_and_sequential_histories_are_linearizable() {
        assert_eq!(check(&[]), Outcome::Linearizable);
        let h = [
            op(0, 0, Some(1), r(None)),
            op(0, 2, Some(3), w("a")),
            op(1, 4, Some(5), r(Some("a"))),
            op(1, 6, Some(7), cas(Some("a"), "b")),
            op(
                0,
                8,
                Some(9),
                OpKind::CasRefused {
                    expected: Some("a".into()),
                },
            ),
            op(0, 10, Some(11), r(Some("b"))),
        ];
        assert_eq!(check(&h), Outcome::Linearizable);
    }

    #[test]
    fn concurrent_ops_may_take_effect_in_either_order() {
        // The read overlaps both writes: "b" then "a" is a valid order.
        let h = [
            op(0, 0, Some(10), w("a")),
            op(1, 1, Some(9), w("b")),
            op(2, 2, Some(8), r(Some("a"))),
            op(2, 11, Some(12), r(Some("a"))),
        ];
        assert_eq!(check(&h), Outcome::Linearizable);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_rejected() {
        // The classic violation: "b" was acknowledged before the read began,
        // yet the read returns the older "a".
        let h = [
            op(0, 0, Some(1), w("a")),
            op(0, 2, Some(3), w("b")),
            op(1, 4, Some(5), r(Some("a"))),
        ];
        assert_eq!(check(&h), Outcome::NotLinearizable);
    }

    #[test]
    fn reads_may_not_go_back_in_time() {
        // Two readers, both after w(b) was called; one sees b, a later one
        // sees a again although nothing rewrote a.
        let h = [
            op(0, 0, Some(1), w("a")),
            op(0, 2, Some(100), w("b")),
            op(1, 3, Some(4), r(Some("b"))),
            op(2, 5, Some(6), r(Some("a"))),
        ];
        assert_eq!(check(&h), Outcome::NotLinearizable);
    }

    #[test]
    fn cas_refused_must_be_explained_by_another_value() {
        // The register held "a" throughout; a refused cas(a) is impossible.
        let h = [
            op(0, 0, Some(1), w("a")),
            op(
                1,
                2,
                Some(3),
                OpKind::CasRefused {
                    expected: Some("a".into()),
                },
            ),
            op(0, 4, Some(5), r(Some("a"))),
        ];
        assert_eq!(check(&h), Outcome::NotLinearizable);
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened() {
        // A timed-out write is seen later: it happened.
        let h = [
            op(0, 0, None, w("a")),
            op(1, 5, Some(6), r(Some("a"))),
            op(1, 7, Some(8), r(Some("a"))),
        ];
        assert_eq!(check(&h), Outcome::Linearizable);
        // ... or never seen: it did not.
        let h = [op(0, 0, None, w("a")), op(1, 5, Some(6), r(None))];
        assert_eq!(check(&h), Outcome::Linearizable);
        // But it cannot take effect before its call.
        let h = [op(1, 0, Some(1), r(Some("a"))), op(0, 5, None, w("a"))];
        assert_eq!(check(&h), Outcome::NotLinearizable);
        // Nor twice: seen, overwritten, then seen again.
        let h = [
            op(0, 0, None, w("a")),
            op(1, 1, Some(2), r(Some("a"))),
            op(1, 3, Some(4), w("b")),
            op(1, 5, Some(6), r(Some("a"))),
        ];
        assert_eq!(check(&h), Outcome::NotLinearizable);
    }

    #[test]
    fn a_lost_acknowledged_write_is_rejected_and_shrunk() {
        // "b" was acknowledged, then the final read shows "a": lost. Noise
        // from another client around it must be shrunk away.
        let mut h = vec![
            op(0, 0, Some(1), w("a")),
            op(1, 2, Some(3), r(Some("a"))),
            op(0, 4, Some(5), w("b")),
        ];
        for i in 0..20 {
            h.push(op(2, 6 + i, Some(6 + i), r(Some("b"))));
        }
        h.push(op(1, 40, Some(41), r(Some("a"))));
        assert_eq!(check(&h), Outcome::NotLinearizable);
        let v = minimal_violation(&h, 100);
        assert_eq!(check(&v.ops), Outcome::NotLinearizable);
        assert!(v.ops.len() <= 4, "not shrunk: {:#?}", v.ops);
        assert!(v.ops.iter().any(|o| o.kind == w("b")));
        let text = v.render(1000);
        assert!(text.contains("write \"b\""), "{text}");
    }

    #[test]
    fn shrinking_never_drops_the_write_that_explains_a_refused_cas() {
        // cas(a) refused is explained by the concurrent write of "c"; the
        // violation is elsewhere (the last read). A shrinker that dropped
        // the write of "c" would blame the refused cas instead.
        let h = vec![
            op(0, 0, Some(1), w("a")),
            op(1, 2, Some(10), w("c")),
            op(
                2,
                3,
                Some(9),
                OpKind::CasRefused {
                    expected: Some("a".into()),
                },
            ),
            op(0, 11, Some(12), w("d")),
            op(2, 13, Some(14), r(Some("c"))),
        ];
        assert_eq!(check(&h), Outcome::NotLinearizable);
        let v = minimal_violation(&h, 100);
        assert!(v.ops.iter().any(|o| o.kind == w("c")));
        assert!(v.ops.iter().any(|o| o.kind == r(Some("c"))));
    }

    #[test]
    fn many_concurrent_writers_stay_tractable() {
        // 300 ops in overlapping groups of 6: the memoization keeps this fast.
        let mut h = Vec::new();
        for g in 0..50u64 {
            let t = g * 10;
            for p in 0..5 {
                h.push(op(p, t, Some(t + 8), w(&format!("v{g}-{p}"))));
            }
            h.push(op(9, t + 1, Some(t + 9), r(Some(&format!("v{g}-3")))));
        }
        assert_eq!(check(&h), Outcome::Linearizable);
    }
}
