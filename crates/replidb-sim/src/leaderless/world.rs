//! One leaderless run at one (R, W): a discrete-event loop over simulated
//! milliseconds. Nodes, links and the client are plain data; every
//! decision about a request is the shared coordinator's
//! (`replidb_leaderless::coordinator`), fed by the messages this loop
//! delivers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replidb_causal::{CausalWrite, KeyState, PolicySet, VersionVector};
use replidb_leaderless::{
    antientropy, route, Delivery, Placement, ReadRound, ReadStatus, Ring, Route, WriteRound,
    WriteStatus,
};

use super::faults::{Fault, FaultKind};
use super::node::{HeldHint, SimNode, SimTime};
use super::workload::{Op, OpKind};
use super::LeaderlessConfig;

/// How long a node waits for another before calling it unreachable
/// (the server's `INTERNAL_TIMEOUT`).
pub const INTERNAL_TIMEOUT_MS: u64 = 2000;
/// A request's deadline (the client's `timeout_ms` / `wait_ms`).
pub const REQUEST_TIMEOUT_MS: u64 = 1000;
/// How often hints are offered to their owners (the server's
/// `HINT_DELIVERY_INTERVAL`).
pub const HINT_INTERVAL_MS: u64 = 500;
/// How often every node runs an anti-entropy round.
pub const AE_INTERVAL_MS: u64 = 1000;
/// Time a local durable write takes (one group-commit fsync).
pub const FSYNC_MS: u64 = 1;
/// Salt of the network's random stream.
const NET_SALT: u64 = 0x6e65_7477;

/// A message between nodes.
#[derive(Clone, Debug)]
enum Msg {
    /// A write's state for `to` (an owner, or a fallback keeping a hint).
    Push {
        req: usize,
        delivery: usize,
        key: String,
        state: KeyState,
        hint_for: Option<usize>,
    },
    /// The answer to a push (`ok`: durable there).
    PushReply {
        req: usize,
        delivery: usize,
        ok: bool,
    },
    /// A read's question.
    Fetch { req: usize, key: String },
    /// A read's answer (`Err`: the replica did not answer).
    FetchReply {
        req: usize,
        replica: usize,
        state: Result<Option<KeyState>, ()>,
    },
    /// A read repair (fire and forget).
    Repair { key: String, state: KeyState },
}

#[derive(Clone, Debug)]
enum Ev {
    Start(usize),
    Arrive { from: usize, to: usize, msg: Msg },
    Deadline(usize),
    HintTick,
    AeTick,
    FaultBegin(usize),
    FaultEnd(usize),
}

/// What became of one client request.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The operation.
    pub op: Op,
    /// The node that coordinated it (writes: the replica that made the
    /// version).
    pub coordinator: Option<usize>,
    /// Whether the write was made durable at its coordinator (then it is
    /// never undone, acknowledged or not).
    pub applied: bool,
    /// When it was answered successfully (ms), if it was.
    pub answered_ms: Option<u64>,
    /// A write's state at its coordinator right after it.
    pub state: Option<KeyState>,
    /// A put's dot counter (the coordinator's LSN).
    pub dot: Option<u64>,
    /// A set remove's context (the coordinator's set clock before it).
    pub rm_context: Option<VersionVector>,
    /// A write whose quorum counted a hint holder.
    pub sloppy: bool,
    /// A read's merged state.
    pub read: Option<KeyState>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Story text of its placements or answers.
    pub detail: String,
}

struct Pending {
    write: Option<(WriteRound, Vec<Delivery>, KeyState)>,
    read: Option<ReadRound>,
    /// Whether the read has answered (late replies still arrive).
    done: bool,
}

/// A whole run's state.
pub struct World {
    pub(crate) cfg: LeaderlessConfig,
    pub(crate) r: usize,
    pub(crate) w: usize,
    pub(crate) now: u64,
    time: Arc<AtomicU64>,
    pub(crate) nodes: Vec<SimNode>,
    pub(crate) names: Vec<String>,
    pub(crate) ring: Ring,
    pub(crate) policies: PolicySet,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Ev>,
    next_ev: u64,
    rng: StdRng,
    /// One-way lag range per ordered pair (ms).
    link_ms: Vec<Vec<(u64, u64)>>,
    pub(crate) down: Vec<bool>,
    pub(crate) partitioned: Vec<bool>,
    slow: Vec<bool>,
    pub(crate) ops: Vec<Op>,
    pub(crate) outcomes: Vec<Outcome>,
    pending: BTreeMap<usize, Pending>,
    /// The causal context of the client's last read, per key.
    contexts: BTreeMap<String, VersionVector>,
    pub(crate) faults: Vec<Fault>,
    pub(crate) story: Vec<(u64, String)>,
    pub(crate) read_repairs: u64,
    pub(crate) hints_delivered: u64,
    pub(crate) hints_stored: u64,
    pub(crate) ae_repairs: u64,
    pub(crate) problems: Vec<String>,
    /// When the last fault healed and the last request ended (ms).
    pub(crate) healed_ms: u64,
}

impl World {
    /// A world for `cfg` at `(r, w)`, with the seed's workload and faults.
    pub fn new(
        cfg: &LeaderlessConfig,
        r: usize,
        w: usize,
        ops: Vec<Op>,
        faults: Vec<Fault>,
        link_ms: Vec<Vec<(u64, u64)>>,
    ) -> World {
        let names = cfg.node_names();
        let time = Arc::new(AtomicU64::new(0));
        let nodes = names
            .iter()
            .map(|n| SimNode::new(n, SimTime(time.clone())))
            .collect();
        let ring = Ring::new(&names, cfg.replicas).unwrap_or_else(|e| {
            // Names are n1..n9: a ring of them always builds.
            panic!("ring of {names:?}: {e}")
        });
        let n = names.len();
        let mut world = World {
            cfg: cfg.clone(),
            r,
            w,
            now: 0,
            time,
            nodes,
            names,
            ring,
            policies: super::policies(),
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_ev: 0,
            rng: StdRng::seed_from_u64(cfg.seed ^ NET_SALT),
            link_ms,
            down: vec![false; n],
            partitioned: vec![false; n],
            slow: vec![false; n],
            outcomes: ops
                .iter()
                .map(|op| Outcome {
                    op: op.clone(),
                    coordinator: None,
                    applied: false,
                    answered_ms: None,
                    state: None,
                    dot: None,
                    rm_context: None,
                    sloppy: false,
                    read: None,
                    error: None,
                    detail: String::new(),
                })
                .collect(),
            ops,
            pending: BTreeMap::new(),
            contexts: BTreeMap::new(),
            faults,
            story: Vec::new(),
            read_repairs: 0,
            hints_delivered: 0,
            hints_stored: 0,
            ae_repairs: 0,
            problems: Vec::new(),
            healed_ms: 0,
        };
        for i in 0..world.ops.len() {
            let at = world.ops[i].at_ms;
            world.schedule(at, Ev::Start(i));
        }
        for i in 0..world.faults.len() {
            let f = &world.faults[i];
            let (b, e) = (f.at_ms, f.at_ms + f.for_ms);
            world.schedule(b, Ev::FaultBegin(i));
            world.schedule(e, Ev::FaultEnd(i));
        }
        world.schedule(HINT_INTERVAL_MS, Ev::HintTick);
        world.schedule(AE_INTERVAL_MS, Ev::AeTick);
        world
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        let id = self.next_ev;
        self.next_ev += 1;
        self.events.insert(id, ev);
        self.queue.push(Reverse((at, id)));
    }

    fn say(&mut self, line: String) {
        self.story.push((self.now, line));
    }

    /// Run until the workload is done, every fault healed, and hints and
    /// anti-entropy had time to converge the replicas.
    pub fn run(&mut self) {
        let last_op = self.ops.last().map(|o| o.at_ms).unwrap_or(0);
        let last_fault = self
            .faults
            .iter()
            .map(|f| f.at_ms + f.for_ms)
            .max()
            .unwrap_or(0);
        self.healed_ms = (last_op + REQUEST_TIMEOUT_MS + INTERNAL_TIMEOUT_MS).max(last_fault);
        // Three anti-entropy rounds after the heal (one would do; the
        // margin covers a round that starts just before a repair lands).
        let end = self.healed_ms + 3 * AE_INTERVAL_MS + INTERNAL_TIMEOUT_MS;
        while let Some(Reverse((at, id))) = self.queue.pop() {
            if at > end {
                break;
            }
            self.now = at;
            self.time.store(at, Ordering::Relaxed);
            let Some(ev) = self.events.remove(&id) else {
                continue;
            };
            self.step(ev);
        }
        self.now = end;
        self.time.store(end, Ordering::Relaxed);
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Start(i) => self.start(i),
            Ev::Arrive { from, to, msg } => self.arrive(from, to, msg),
            Ev::Deadline(i) => self.deadline(i),
            Ev::HintTick => {
                self.deliver_hints();
                let t = self.now + HINT_INTERVAL_MS;
                self.schedule(t, Ev::HintTick);
            }
            Ev::AeTick => {
                self.anti_entropy();
                let t = self.now + AE_INTERVAL_MS;
                self.schedule(t, Ev::AeTick);
            }
            Ev::FaultBegin(i) => self.fault(i, true),
            Ev::FaultEnd(i) => self.fault(i, false),
        }
    }

    fn fault(&mut self, i: usize, begin: bool) {
        let f = self.faults[i].clone();
        let n = f.node;
        match f.kind {
            FaultKind::Crash => self.down[n] = begin,
            FaultKind::Partition => self.partitioned[n] = begin,
            FaultKind::Delay => self.slow[n] = begin,
        }
        let what = if begin {
            f.describe(&self.names)
        } else {
            format!("heal {} ({})", self.names[n], f.kind)
        };
        self.say(format!("fault    {what}"));
    }

    /// Whether `to` can be reached from `from` now.
    fn reachable(&self, from: usize, to: usize) -> bool {
        if self.down[to] || self.down[from] {
            return false;
        }
        from == to || !(self.partitioned[from] || self.partitioned[to])
    }

    /// Whether the client reaches node `n`.
    fn client_reaches(&self, n: usize) -> bool {
        !self.down[n] && !self.partitioned[n]
    }

    fn lag(&mut self, from: usize, to: usize) -> u64 {
        if from == to {
            return 0;
        }
        let (lo, hi) = self.link_ms[from][to];
        let mut ms = self.rng.random_range(lo..=hi);
        if self.slow[from] || self.slow[to] {
            ms += self.rng.random_range(200..=600);
        }
        ms
    }

    /// Send `msg`; if `to` cannot be reached, the sender learns it after a
    /// refused connection (down) or its internal timeout (partitioned).
    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        let lag = self.lag(from, to);
        if self.reachable(from, to) {
            self.schedule(self.now + lag, Ev::Arrive { from, to, msg });
            return;
        }
        if self.down[from] {
            return;
        }
        match msg {
            // A reply that cannot get through: the coordinator waits out
            // its internal timeout and counts the replica as failed.
            Msg::PushReply { req, delivery, .. } => {
                let msg = Msg::PushReply {
                    req,
                    delivery,
                    ok: false,
                };
                self.schedule(self.now + INTERNAL_TIMEOUT_MS, Ev::Arrive { from, to, msg });
            }
            Msg::FetchReply { req, replica, .. } => {
                let msg = Msg::FetchReply {
                    req,
                    replica,
                    state: Err(()),
                };
                self.schedule(self.now + INTERNAL_TIMEOUT_MS, Ev::Arrive { from, to, msg });
            }
            msg => {
                // A refused connection is quick; a partition is waited out.
                let after = if self.down[to] && !self.partitioned[from] && !self.partitioned[to] {
                    2 * lag
                } else {
                    INTERNAL_TIMEOUT_MS
                };
                if let Some(reply) = failure_reply(to, &msg) {
                    self.schedule(
                        self.now + after,
                        Ev::Arrive {
                            from: to,
                            to: from,
                            msg: reply,
                        },
                    );
                }
            }
        }
    }

    fn arrive(&mut self, from: usize, to: usize, msg: Msg) {
        if self.down[to] {
            // Lost with the crash; the sender times out.
            if let Some(reply) = failure_reply(to, &msg) {
                let t = self.now + INTERNAL_TIMEOUT_MS;
                self.schedule(
                    t,
                    Ev::Arrive {
                        from: to,
                        to: from,
                        msg: reply,
                    },
                );
            }
            return;
        }
        match msg {
            Msg::Push {
                req,
                delivery,
                key,
                state,
                hint_for,
            } => {
                let ok = match hint_for {
                    None => self.merge_at(to, &key, &state),
                    Some(owner) => {
                        self.nodes[to].hints.push(HeldHint { owner, key, state });
                        self.hints_stored += 1;
                        true
                    }
                };
                self.send(to, from, Msg::PushReply { req, delivery, ok });
            }
            Msg::PushReply { req, delivery, ok } => self.on_push_reply(req, delivery, ok),
            Msg::Fetch { req, key } => {
                let state = self.nodes[to].state(&key);
                self.send(
                    to,
                    from,
                    Msg::FetchReply {
                        req,
                        replica: to,
                        state: Ok(state),
                    },
                );
            }
            Msg::FetchReply {
                req,
                replica,
                state,
            } => self.on_fetch_reply(req, replica, state),
            Msg::Repair { key, state } => {
                if self.merge_at(to, &key, &state) {
                    self.read_repairs += 1;
                }
            }
        }
    }

    fn merge_at(&mut self, node: usize, key: &str, state: &KeyState) -> bool {
        match self.nodes[node].merge(key, state) {
            Ok(()) => true,
            Err(e) => {
                self.problems.push(format!(
                    "{} refused a state of {key}: {e}",
                    self.names[node]
                ));
                false
            }
        }
    }

    fn start(&mut self, i: usize) {
        let op = self.ops[i].clone();
        // The client's load balancer: a node it can reach, from the op's
        // drawn entry on.
        let n = self.nodes.len();
        let Some(entry) = (0..n)
            .map(|k| (op.entry + k) % n)
            .find(|&k| self.client_reaches(k))
        else {
            self.fail(i, "no node reachable".into());
            return;
        };
        let pref = self.pref(&op.key);
        if op.kind.is_read() {
            self.start_read(i, entry, &pref);
        } else {
            // A non-replica hands the write to the first replica that
            // answers (one round trip each way).
            let coordinator = match route(&self.pref_names(&pref), &self.names[entry]) {
                Route::Local => Some(entry),
                Route::HandTo(_) => pref.iter().copied().find(|&p| self.reachable(entry, p)),
            };
            let Some(c) = coordinator else {
                self.fail(i, "no replica answered the hand-off".into());
                return;
            };
            self.start_write(i, c, &pref);
        }
        let t = self.now + REQUEST_TIMEOUT_MS;
        self.schedule(t, Ev::Deadline(i));
    }

    fn pref(&self, key: &str) -> Vec<usize> {
        self.ring
            .preference_list(key)
            .into_iter()
            .map(|u| self.index(u))
            .collect()
    }

    fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).unwrap_or(0)
    }

    fn pref_names(&self, pref: &[usize]) -> Vec<String> {
        pref.iter().map(|&p| self.names[p].clone()).collect()
    }

    fn start_write(&mut self, i: usize, c: usize, pref: &[usize]) {
        let op = self.ops[i].clone();
        let policy = self.policies.policy_for(&op.key);
        let before = self.nodes[c].state(&op.key);
        let write = match &op.kind {
            OpKind::Put { value, context } => CausalWrite::Put {
                value: value.clone().into_bytes(),
                context: self.context_for(&op.key, *context),
            },
            OpKind::Delete { context } => CausalWrite::Delete {
                context: self.context_for(&op.key, *context),
            },
            OpKind::Incr(delta) => CausalWrite::Counter { delta: *delta },
            OpKind::SetAdd(m) => CausalWrite::Set {
                add: vec![m.clone()],
                remove: Vec::new(),
            },
            OpKind::SetRemove(m) => CausalWrite::Set {
                add: Vec::new(),
                remove: vec![m.clone()],
            },
            OpKind::Get => return,
        };
        self.outcomes[i].coordinator = Some(c);
        let (state, dot) = match self.nodes[c].write(&op.key, write, policy) {
            Ok(x) => x,
            Err(e) => {
                self.fail(i, format!("refused: {e}"));
                return;
            }
        };
        let out = &mut self.outcomes[i];
        out.applied = true;
        out.state = Some(state.clone());
        out.dot = Some(dot);
        if matches!(op.kind, OpKind::SetRemove(_)) {
            out.rm_context = Some(before.map(|s| s.context()).unwrap_or_default());
        }
        let walk: Vec<String> = self
            .ring
            .walk(&op.key)
            .into_iter()
            .map(String::from)
            .collect();
        let (round, deliveries) = WriteRound::new(
            &self.pref_names(pref),
            &walk,
            &self.names[c],
            self.w,
            !self.cfg.strict,
        );
        for (d, delivery) in deliveries.iter().enumerate() {
            let a = delivery.attempt();
            let to = self.index(&a.to);
            let msg = Msg::Push {
                req: i,
                delivery: d,
                key: op.key.clone(),
                state: state.clone(),
                hint_for: a.hint_for.as_deref().map(|o| self.index(o)),
            };
            // The local fsync comes first.
            self.now += FSYNC_MS;
            self.send(c, to, msg);
            self.now -= FSYNC_MS;
        }
        self.pending.insert(
            i,
            Pending {
                write: Some((round, deliveries, state)),
                read: None,
                done: false,
            },
        );
        self.check_write(i);
    }

    /// The causal context the client last read for `key`, if it sends one.
    fn context_for(&self, key: &str, send: bool) -> Option<VersionVector> {
        if send {
            self.contexts.get(key).cloned()
        } else {
            None
        }
    }

    fn on_push_reply(&mut self, i: usize, d: usize, ok: bool) {
        let Some(c) = self.outcomes[i].coordinator else {
            return;
        };
        if self.down[c] {
            return;
        }
        let Some(p) = self.pending.get_mut(&i) else {
            return;
        };
        let Some((round, deliveries, state)) = p.write.as_mut() else {
            return;
        };
        let Some(delivery) = deliveries.get_mut(d) else {
            return;
        };
        match delivery.on_result(ok) {
            Some(placement) => {
                round.on_placement(placement);
            }
            None => {
                let a = delivery.attempt();
                let key = self.ops[i].key.clone();
                let state = state.clone();
                let to = self.index(&a.to);
                let hint_for = a.hint_for.as_deref().map(|o| self.index(o));
                self.send(
                    c,
                    to,
                    Msg::Push {
                        req: i,
                        delivery: d,
                        key,
                        state,
                        hint_for,
                    },
                );
            }
        }
        self.check_write(i);
    }

    fn check_write(&mut self, i: usize) {
        let Some(p) = self.pending.get(&i) else {
            return;
        };
        let Some((round, _, _)) = p.write.as_ref() else {
            return;
        };
        if p.done {
            return;
        }
        let status = round.status();
        let detail = round
            .placements()
            .iter()
            .map(|pl| match pl {
                Placement::Stored(o) => o.clone(),
                Placement::Hinted { owner, holder } => format!("{holder}(hint for {owner})"),
                Placement::Failed(o) => format!("!{o}"),
            })
            .collect::<Vec<_>>()
            .join(",");
        let sloppy = round.sloppy();
        match status {
            WriteStatus::Pending => {}
            WriteStatus::Met => {
                if let Some(p) = self.pending.get_mut(&i) {
                    p.done = true;
                }
                let answered = self.now + FSYNC_MS;
                let out = &mut self.outcomes[i];
                out.answered_ms = Some(answered);
                out.sloppy = sloppy;
                out.detail = detail;
                self.tell(i);
            }
            WriteStatus::Failed => {
                if let Some(p) = self.pending.get_mut(&i) {
                    p.done = true;
                }
                self.outcomes[i].detail = detail;
                self.fail(i, "fewer than w replicas hold it".into());
            }
        }
    }

    fn start_read(&mut self, i: usize, c: usize, pref: &[usize]) {
        let key = self.ops[i].key.clone();
        self.outcomes[i].coordinator = Some(c);
        let round = ReadRound::new(&key, &self.pref_names(pref), self.r);
        self.pending.insert(
            i,
            Pending {
                write: None,
                read: Some(round),
                done: false,
            },
        );
        for &p in pref {
            if p == c {
                let state = self.nodes[c].state(&key);
                self.on_fetch_reply(i, c, Ok(state));
            } else {
                self.send(
                    c,
                    p,
                    Msg::Fetch {
                        req: i,
                        key: key.clone(),
                    },
                );
            }
        }
    }

    fn on_fetch_reply(&mut self, i: usize, replica: usize, state: Result<Option<KeyState>, ()>) {
        let Some(c) = self.outcomes[i].coordinator else {
            return;
        };
        if self.down[c] {
            return;
        }
        let name = self.names[replica].clone();
        let Some(p) = self.pending.get_mut(&i) else {
            return;
        };
        let Some(round) = p.read.as_mut() else {
            return;
        };
        let status = match state {
            Ok(s) => round.on_answer(&name, s),
            Err(()) => round.on_failure(&name),
        };
        if !p.done {
            match status {
                ReadStatus::Pending => {}
                ReadStatus::Ready => {
                    p.done = true;
                    let merged = round.merged();
                    let detail = round.answered().join(",");
                    if let Some(m @ KeyState::Register(_)) = &merged {
                        self.contexts.insert(self.ops[i].key.clone(), m.context());
                    }
                    let out = &mut self.outcomes[i];
                    out.read = merged;
                    out.answered_ms = Some(self.now);
                    out.detail = detail;
                    self.tell(i);
                }
                ReadStatus::Failed => {
                    p.done = true;
                    self.fail(i, "fewer than r replicas answered".into());
                }
            }
        }
        self.maybe_repair(i);
    }

    /// Once every replica answered or failed: push the merged state to the
    /// ones behind (read repair, as the server's background task does).
    fn maybe_repair(&mut self, i: usize) {
        let Some(p) = self.pending.get(&i) else {
            return;
        };
        let Some(round) = p.read.as_ref() else {
            return;
        };
        if !p.done || round.heard_from() < self.ring.replicas() {
            return;
        }
        let Some(c) = self.outcomes[i].coordinator else {
            return;
        };
        let merged = self.outcomes[i].read.clone();
        let repairs = round.repairs(merged.as_ref());
        self.pending.remove(&i);
        let (Some(m), key) = (merged, self.ops[i].key.clone()) else {
            return;
        };
        for u in repairs {
            let to = self.index(&u);
            if to == c {
                if self.merge_at(c, &key, &m) {
                    self.read_repairs += 1;
                }
            } else {
                self.send(
                    c,
                    to,
                    Msg::Repair {
                        key: key.clone(),
                        state: m.clone(),
                    },
                );
            }
        }
    }

    fn deadline(&mut self, i: usize) {
        let Some(p) = self.pending.get_mut(&i) else {
            return;
        };
        if p.done {
            return;
        }
        p.done = true;
        if let Some((round, _, _)) = p.write.as_mut() {
            round.expire();
        }
        if let Some(round) = p.read.as_mut() {
            round.expire();
        }
        self.fail(i, "deadline passed".into());
    }

    fn fail(&mut self, i: usize, why: String) {
        self.outcomes[i].error = Some(why);
        self.tell(i);
    }

    /// A story line for request `i`'s outcome.
    fn tell(&mut self, i: usize) {
        let out = &self.outcomes[i];
        let op = &out.op;
        let via = out
            .coordinator
            .map(|c| self.names[c].clone())
            .unwrap_or_else(|| "-".into());
        let took = out
            .answered_ms
            .map(|t| format!("{}ms", t - op.at_ms))
            .unwrap_or_default();
        let line = match (&out.error, op.kind.is_read()) {
            (Some(e), _) => format!(
                "client   {} via {via}: FAILED ({e}){}",
                op.describe(),
                if out.detail.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", out.detail)
                }
            ),
            (None, false) => format!(
                "client   {} via {via}: acked by {} in {took}{}",
                op.describe(),
                out.detail,
                if out.sloppy { " (sloppy)" } else { "" }
            ),
            (None, true) => format!(
                "client   {} via {via}: {} from {} in {took}",
                op.describe(),
                render(out.read.as_ref()),
                out.detail
            ),
        };
        self.say(line);
    }

    fn deliver_hints(&mut self) {
        for holder in 0..self.nodes.len() {
            if self.down[holder] || self.nodes[holder].hints.is_empty() {
                continue;
            }
            let hints = std::mem::take(&mut self.nodes[holder].hints);
            let mut kept = Vec::new();
            for h in hints {
                if self.reachable(holder, h.owner) && self.merge_at(h.owner, &h.key, &h.state) {
                    self.hints_delivered += 1;
                } else {
                    kept.push(h);
                }
            }
            self.nodes[holder].hints = kept;
        }
    }

    /// Every node compares hash-tree leaves with every peer it reaches,
    /// then the keys of differing leaves, and joins those (the server's
    /// `anti_entropy_round`, with the exchange taken as instantaneous).
    fn anti_entropy(&mut self) {
        let n = self.nodes.len();
        for a in 0..n {
            for b in 0..n {
                if a == b || !self.reachable(a, b) {
                    continue;
                }
                let mine = self.shared_entries(a, b);
                let theirs = self.shared_entries(b, a);
                let la = antientropy::leaves(mine.iter().map(|(k, h)| (k.as_str(), *h)));
                let lb = antientropy::leaves(theirs.iter().map(|(k, h)| (k.as_str(), *h)));
                if antientropy::differing(&la, &lb).is_empty() {
                    continue;
                }
                for key in antientropy::differing_keys(&mine, &theirs) {
                    let sa = self.nodes[a].state(&key);
                    let sb = self.nodes[b].state(&key);
                    let Some(rec) = replidb_leaderless::reconcile(&key, sa.as_ref(), sb.as_ref())
                    else {
                        continue;
                    };
                    if rec.to_mine {
                        self.merge_at(a, &key, &rec.merged);
                    }
                    if rec.to_theirs {
                        self.merge_at(b, &key, &rec.merged);
                    }
                    if rec.to_mine || rec.to_theirs {
                        self.ae_repairs += 1;
                    }
                }
            }
        }
    }

    /// Entry hashes of the keys `a` holds that it and `b` both replicate.
    fn shared_entries(&self, a: usize, b: usize) -> BTreeMap<String, u64> {
        let (na, nb) = (&self.names[a], &self.names[b]);
        let mut out = BTreeMap::new();
        for key in super::workload::KEYS {
            if !self.ring.holds(na, key) || !self.ring.holds(nb, key) {
                continue;
            }
            if let Some(s) = self.nodes[a].state(key) {
                out.insert(
                    key.to_string(),
                    antientropy::entry_hash(key, &s.canonical_bytes()),
                );
            }
        }
        out
    }
}

/// What the sender of `msg` hears when `to` cannot be reached.
fn failure_reply(to: usize, msg: &Msg) -> Option<Msg> {
    match msg {
        Msg::Push { req, delivery, .. } => Some(Msg::PushReply {
            req: *req,
            delivery: *delivery,
            ok: false,
        }),
        Msg::Fetch { req, .. } => Some(Msg::FetchReply {
            req: *req,
            replica: to,
            state: Err(()),
        }),
        _ => None,
    }
}

/// A state as the story prints it.
pub fn render(state: Option<&KeyState>) -> String {
    match state {
        None => "absent".into(),
        Some(KeyState::Register(r)) => {
            let live: Vec<String> = r
                .live()
                .map(|v| {
                    String::from_utf8_lossy(v.value.as_deref().unwrap_or_default()).into_owned()
                })
                .collect();
            match live.len() {
                0 => "deleted".into(),
                1 => live[0].clone(),
                _ => format!("siblings [{}]", live.join(", ")),
            }
        }
        Some(s @ KeyState::Counter(_)) => format!("{}", s.counter_value().unwrap_or_default()),
        Some(s @ KeyState::Set(_)) => {
            format!("{{{}}}", s.set_members().unwrap_or_default().join(","))
        }
        Some(s) => s.render().to_string(),
    }
}
