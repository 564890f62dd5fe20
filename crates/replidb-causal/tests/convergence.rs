//! Property: nodes that write concurrently and deliver each other's writes
//! in any interleaving (each origin's writes in its order, with duplicates)
//! end with equal states, counters add up exactly, and every lww loser is
//! in some node's conflict log or causally superseded.

use std::collections::BTreeMap;

use proptest::prelude::*;
use replidb_causal::{
    merge, prepare, CausalWrite, KeyKind, KeyState, Operand, Policy, PrepareError, WriteStamp,
};
use replidb_core::Hlc;

const NODES: [&str; 3] = ["a", "b", "c"];
const KEYS: [&str; 3] = ["k1", "k2", "k3"];

#[derive(Clone, Debug)]
enum Step {
    /// Node writes key: 0 put, 1 delete, 2 counter, 3 set add, 4 set rm,
    /// 5 map, 6 set clear, 7 map clear.
    Write {
        node: usize,
        key: usize,
        what: u8,
        arg: u8,
    },
    /// Node applies the next undelivered write of origin.
    Deliver { node: usize, origin: usize },
    /// Node re-applies an already delivered write of origin (duplicate).
    Duplicate { node: usize, origin: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3usize, 0..3usize, 0..8u8, any::<u8>()).prop_map(|(node, key, what, arg)| {
            Step::Write {
                node,
                key,
                what,
                arg,
            }
        }),
        (0..3usize, 0..3usize).prop_map(|(node, origin)| Step::Deliver { node, origin }),
        (0..3usize, 0..3usize).prop_map(|(node, origin)| Step::Duplicate { node, origin }),
    ]
}

struct Node {
    data: BTreeMap<(usize, String), KeyState>,
    /// Next write to apply per origin.
    next: [usize; 3],
    hlc: Hlc,
    lsn: u64,
}

/// Keys are written as one kind per key slot so kinds do not clash: slot =
/// (kind group, key).
fn kind_group(what: u8) -> usize {
    match what {
        0 | 1 => 0,
        2 => 1,
        3 | 4 | 6 => 2,
        _ => 3,
    }
}

fn run(steps: Vec<Step>, policy: Policy, skew: [u64; 3]) {
    let mut nodes: Vec<Node> = (0..3)
        .map(|_| Node {
            data: BTreeMap::new(),
            next: [0; 3],
            hlc: Hlc::default(),
            lsn: 0,
        })
        .collect();
    let mut logs: Vec<Vec<((usize, String), Operand)>> = vec![Vec::new(), Vec::new(), Vec::new()];
    let mut expected_counter: BTreeMap<String, i64> = BTreeMap::new();
    let mut conflicts = 0usize;
    let apply = |node: &mut Node, slot: (usize, String), op: Operand, conflicts: &mut usize| {
        if let Operand::Register { version, .. } = &op {
            // Receiving advances the HLC (Kulkarni et al.).
            node.hlc = node.hlc.max(version.hlc);
        }
        let existing = node.data.remove(&slot);
        let m = merge(&slot.1, existing, op);
        *conflicts += m.conflicts.len();
        node.data.insert(slot, m.state);
    };
    for (t, s) in steps.into_iter().enumerate() {
        match s {
            Step::Write {
                node,
                key,
                what,
                arg,
            } => {
                let n = &mut nodes[node];
                n.lsn += 1;
                let wall = t as u64 * 3 + skew[node];
                n.hlc = if wall > n.hlc.wall_ms {
                    Hlc {
                        wall_ms: wall,
                        logical: 0,
                    }
                } else {
                    Hlc {
                        wall_ms: n.hlc.wall_ms,
                        logical: n.hlc.logical + 1,
                    }
                };
                let stamp = WriteStamp {
                    origin: NODES[node].to_string(),
                    lsn: n.lsn,
                    hlc: n.hlc,
                };
                let slot = (kind_group(what), KEYS[key].to_string());
                let write = match what {
                    0 => CausalWrite::Put {
                        value: vec![arg],
                        context: None,
                    },
                    1 => CausalWrite::Delete { context: None },
                    2 => {
                        let delta = arg as i64 - 128;
                        *expected_counter.entry(slot.1.clone()).or_default() += delta;
                        CausalWrite::Counter { delta }
                    }
                    3 => CausalWrite::Set {
                        add: vec![format!("m{}", arg % 4)],
                        remove: vec![],
                    },
                    4 => CausalWrite::Set {
                        add: vec![],
                        remove: vec![format!("m{}", arg % 4)],
                    },
                    6 => CausalWrite::Clear { kind: KeyKind::Set },
                    7 => CausalWrite::Clear { kind: KeyKind::Map },
                    _ => CausalWrite::Map {
                        fields: [(
                            format!("f{}", arg % 3),
                            if arg % 5 == 0 {
                                None
                            } else {
                                Some(serde_json::json!(arg))
                            },
                        )]
                        .into_iter()
                        .collect(),
                    },
                };
                let op = match prepare(&slot.1, n.data.get(&slot), write, policy, &stamp) {
                    Ok(op) => op,
                    Err(_) => {
                        // Too many siblings: refused, nothing logged.
                        n.lsn -= 1;
                        if what == 2 {
                            *expected_counter.entry(slot.1.clone()).or_default() -=
                                arg as i64 - 128;
                        }
                        continue;
                    }
                };
                logs[node].push((slot.clone(), op.clone()));
                n.next[node] += 1;
                apply(n, slot, op, &mut conflicts);
            }
            Step::Deliver { node, origin } => {
                let n = &mut nodes[node];
                if let Some((slot, op)) = logs[origin].get(n.next[origin]).cloned() {
                    n.next[origin] += 1;
                    apply(n, slot, op, &mut conflicts);
                }
            }
            Step::Duplicate { node, origin } => {
                let n = &mut nodes[node];
                if n.next[origin] > 0 {
                    let (slot, op) = logs[origin][n.next[origin] - 1].clone();
                    apply(n, slot, op, &mut conflicts);
                }
            }
        }
    }
    // Finish delivery, each node in its own origin order.
    for (i, n) in nodes.iter_mut().enumerate() {
        for k in 0..3 {
            let origin = (i + k) % 3;
            while let Some((slot, op)) = logs[origin].get(n.next[origin]).cloned() {
                n.next[origin] += 1;
                apply(n, slot, op, &mut conflicts);
            }
        }
    }
    let canon = |n: &Node| -> Vec<(String, Vec<u8>)> {
        n.data
            .iter()
            .map(|((g, k), s)| (format!("{g}/{k}"), s.canonical_bytes()))
            .collect()
    };
    assert_eq!(canon(&nodes[0]), canon(&nodes[1]));
    assert_eq!(canon(&nodes[0]), canon(&nodes[2]));
    for (key, want) in expected_counter {
        let got = nodes[0]
            .data
            .get(&(1, key))
            .and_then(KeyState::counter_value)
            .unwrap_or(0);
        assert_eq!(got, want);
    }
    if policy == Policy::Lww {
        for s in nodes[0].data.values() {
            if let KeyState::Register(r) = s {
                assert!(r.versions.len() <= 1);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn lww_replicas_converge(steps in prop::collection::vec(step(), 1..120), skew in prop::array::uniform3(0u64..50)) {
        run(steps, Policy::Lww, skew);
    }

    #[test]
    fn sibling_replicas_converge(steps in prop::collection::vec(step(), 1..120), skew in prop::array::uniform3(0u64..50)) {
        run(steps, Policy::Siblings, skew);
    }
}

#[test]
fn seed_003_alice_and_alicia() {
    // Written on two nodes at once: lww keeps one everywhere and logs the
    // other; siblings keeps both.
    for policy in [Policy::Lww, Policy::Siblings] {
        let a = prepare(
            "user:1:name",
            None,
            CausalWrite::Put {
                value: b"Alice".to_vec(),
                context: None,
            },
            policy,
            &WriteStamp {
                origin: "n1".into(),
                lsn: 1,
                hlc: Hlc {
                    wall_ms: 1000,
                    logical: 0,
                },
            },
        )
        .unwrap();
        let b = prepare(
            "user:1:name",
            None,
            CausalWrite::Put {
                value: b"Alicia".to_vec(),
                context: None,
            },
            policy,
            &WriteStamp {
                origin: "n2".into(),
                lsn: 1,
                hlc: Hlc {
                    wall_ms: 1001,
                    logical: 0,
                },
            },
        )
        .unwrap();
        let on_n1 = merge(
            "user:1:name",
            Some(merge("user:1:name", None, a.clone()).state),
            b.clone(),
        );
        let on_n2 = merge("user:1:name", Some(merge("user:1:name", None, b).state), a);
        assert_eq!(on_n1.state.canonical_bytes(), on_n2.state.canonical_bytes());
        let KeyState::Register(r) = &on_n1.state else {
            panic!("register")
        };
        match policy {
            Policy::Lww => {
                assert_eq!(r.versions.len(), 1);
                assert_eq!(r.versions[0].value.as_deref(), Some(&b"Alicia"[..]));
                assert_eq!(on_n1.conflicts.len(), 1);
                assert_eq!(on_n2.conflicts.len(), 1);
                assert_eq!(
                    on_n1.conflicts[0].versions[1].value.as_deref(),
                    Some(&b"Alice"[..])
                );
            }
            Policy::Siblings => {
                assert_eq!(r.versions.len(), 2);
                assert!(on_n1.conflicts.is_empty());
            }
        }
    }
}

/// A stamp for `origin`'s write number `lsn` at `wall_ms`.
fn stamp(origin: &str, lsn: u64, wall_ms: u64) -> WriteStamp {
    WriteStamp {
        origin: origin.into(),
        lsn,
        hlc: Hlc {
            wall_ms,
            logical: 0,
        },
    }
}

/// `write` prepared on `origin` against `state` and merged there.
fn write_on(state: &mut Option<KeyState>, write: CausalWrite, s: &WriteStamp) -> Operand {
    let op = prepare("k", state.as_ref(), write, Policy::Lww, s).unwrap();
    *state = Some(merge("k", state.take(), op.clone()).state);
    op
}

/// Clearing a counter, set or map (`DELETE /v1/{kind}/{key}` in the causal
/// topologies) removes what the clearing node had seen and nothing else:
/// an addition made concurrently on another node survives on every node,
/// in either delivery order, and the counter's total is exactly that
/// addition.
#[test]
fn a_clear_removes_what_it_saw_and_a_concurrent_addition_survives() {
    let counter = (
        CausalWrite::Counter { delta: 5 },
        CausalWrite::Counter { delta: 3 },
        KeyKind::Counter,
    );
    let set = (
        CausalWrite::Set {
            add: vec!["seen".into()],
            remove: vec![],
        },
        CausalWrite::Set {
            add: vec!["concurrent".into()],
            remove: vec![],
        },
        KeyKind::Set,
    );
    let map = (
        CausalWrite::Map {
            fields: [("seen".to_string(), Some(serde_json::json!(1)))].into(),
        },
        CausalWrite::Map {
            fields: [("concurrent".to_string(), Some(serde_json::json!(2)))].into(),
        },
        KeyKind::Map,
    );
    for (first, concurrent, kind) in [counter, set, map] {
        // a writes; b receives it; then a clears while b adds.
        let mut a = None;
        let w1 = write_on(&mut a, first, &stamp("a", 1, 10));
        let mut b = Some(merge("k", None, w1).state);
        let clear = write_on(&mut a, CausalWrite::Clear { kind }, &stamp("a", 2, 30));
        let add = write_on(&mut b, concurrent, &stamp("b", 1, 20));
        let a = merge("k", a, add).state;
        let b = merge("k", b, clear).state;
        assert_eq!(a.canonical_bytes(), b.canonical_bytes(), "{kind}");
        match kind {
            KeyKind::Counter => assert_eq!(a.counter_value(), Some(3)),
            KeyKind::Set => assert_eq!(a.set_members(), Some(vec!["concurrent".to_string()])),
            _ => assert_eq!(
                a.map_object()
                    .map(|m| m.keys().cloned().collect::<Vec<_>>()),
                Some(vec!["concurrent".to_string()])
            ),
        }
    }
}

/// Found by trying it as a new user: when a higher kind replaced a key, the
/// node that merged it logged the clash with an empty state as the one
/// kept (`{"counter":0}` for a counter of 7) and at time 0, so nodes' logs
/// disagreed about the same event and it sorted as the oldest.
#[test]
fn a_clash_of_kinds_logs_the_state_kept_and_when() {
    let mut value = None;
    write_on(
        &mut value,
        CausalWrite::Put {
            value: b"val".to_vec(),
            context: None,
        },
        &stamp("a", 1, 10),
    );
    let mut counter = None;
    let op = write_on(
        &mut counter,
        CausalWrite::Counter { delta: 7 },
        &stamp("b", 1, 20),
    );
    let m = merge("k", value, op);
    assert_eq!(m.state.counter_value(), Some(7));
    let c = &m.conflicts[0];
    assert_eq!(c.policy, "type");
    assert_eq!(
        c.versions[0].value.as_deref(),
        Some(br#"{"counter":7}"#.as_slice()),
        "the kept state"
    );
    assert_eq!(c.at.wall_ms, 10, "dated by the newest stamp involved");
}

/// Found by a new user: two nodes each adding `i64::MAX` concurrently take
/// the counter past the range (reads show the bound). A decrement was then
/// refused as "would leave the range" too, so the counter was stuck until
/// deleted; a delta toward the range is taken, one away from it is not.
#[test]
fn a_counter_past_the_range_takes_deltas_back_toward_it() {
    let max = CausalWrite::Counter { delta: i64::MAX };
    let mut a = None;
    let mut b = None;
    let from_a = write_on(&mut a, max.clone(), &stamp("a", 1, 1));
    let from_b = write_on(&mut b, max, &stamp("b", 1, 1));
    let mut both = Some(merge("k", a, from_b).state);
    both = Some(merge("k", both, from_a).state);
    assert_eq!(
        both.as_ref().and_then(KeyState::counter_value),
        Some(i64::MAX)
    );
    let up = prepare(
        "k",
        both.as_ref(),
        CausalWrite::Counter { delta: 1 },
        Policy::Lww,
        &stamp("a", 2, 2),
    );
    assert!(
        matches!(up, Err(PrepareError::CounterOverflow { .. })),
        "{up:?}"
    );
    write_on(
        &mut both,
        CausalWrite::Counter { delta: -1 },
        &stamp("a", 2, 2),
    );
    assert_eq!(
        both.as_ref().and_then(KeyState::counter_value),
        Some(i64::MAX)
    );
    write_on(
        &mut both,
        CausalWrite::Counter {
            delta: i64::MIN + 1,
        },
        &stamp("a", 3, 3),
    );
    write_on(
        &mut both,
        CausalWrite::Counter { delta: -1 },
        &stamp("a", 4, 4),
    );
    assert_eq!(
        both.as_ref().and_then(KeyState::counter_value),
        Some(i64::MAX - 2)
    );
}
