//! The sans-IO routing core: what the router believes about each node, and
//! where a request goes. Nothing here reads the clock, the network or a
//! random number generator: time (`now`) and the tie-breaking number
//! (`spin`) are passed in, so every decision is a plain function that unit
//! tests drive directly.
//!
//! - [`RouterState`] is fed by health checks ([`RouterState::record_success`],
//!   [`RouterState::record_failure`]) and by hints from proxied answers
//!   ([`RouterState::hint_leader`]); it recomputes the leader after each.
//! - [`choose`] maps a [`RequestKind`] to a [`Target`].
//!
//! # Two topologies
//!
//! - **Single-leader**: writes go to the leader (the healthy node claiming
//!   leadership in the highest epoch); reads to an eligible follower.
//! - **Multi-leader** (any node's `/status` says `"topology":
//!   "multi-leader"`): every node is a writer, so there is no leader to
//!   find. A write goes to its session's *home* node when that is healthy,
//!   else to the healthy node with the fewest requests in flight (which the
//!   proxy then remembers as the session's new home); a read goes to any
//!   eligible node (healthy, lag within `max_lag`) by the read strategy.
//!   The sticky window means nothing there and is ignored;
//!   `consistency=strong|leader|bounded` is passed on, and the node
//!   refuses it with 400 `not_supported`.

use std::time::{Duration, Instant};

/// How a read picks among eligible followers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStrategy {
    /// In turn (`spin` is a counter).
    RoundRobin,
    /// Uniformly at random (`spin` is a random number).
    Random,
    /// The smallest reported lag; ties in turn (`spin` is a counter).
    LeastLag,
}

impl std::str::FromStr for ReadStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round-robin" => Ok(ReadStrategy::RoundRobin),
            "random" => Ok(ReadStrategy::Random),
            "least-lag" => Ok(ReadStrategy::LeastLag),
            other => Err(format!(
                "unknown read strategy {other:?}: expected round-robin, random or least-lag"
            )),
        }
    }
}

impl std::fmt::Display for ReadStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReadStrategy::RoundRobin => "round-robin",
            ReadStrategy::Random => "random",
            ReadStrategy::LeastLag => "least-lag",
        })
    }
}

/// The knobs of a routing decision.
#[derive(Clone, Debug)]
pub struct Policy {
    /// How reads pick a follower.
    pub strategy: ReadStrategy,
    /// A follower reporting more lag than this gets no reads.
    pub max_lag_ms: u64,
    /// This many failed checks (or requests) in a row make a node unhealthy.
    pub failure_threshold: u32,
    /// After a session writes, its reads go to the leader for this long.
    pub sticky_window: Duration,
}

/// A node's role as its `/status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRole {
    /// Takes writes.
    Leader,
    /// Applies the leader's log; serves reads.
    Follower,
}

impl NodeRole {
    /// `leader` / `follower`, as in the node's API.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Leader => "leader",
            NodeRole::Follower => "follower",
        }
    }
}

/// What one successful `/status` call said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The node's `--id`.
    pub id: String,
    /// Its role.
    pub role: NodeRole,
    /// Its epoch (leadership term).
    pub epoch: u64,
    /// Its applied LSN.
    pub applied_lsn: u64,
    /// Its own lag estimate (0 on a single-leader leader; on a multi-leader
    /// node the largest lag behind any peer).
    pub lag_ms: u64,
    /// Whether every node is a writer: the multi-leader or the leaderless
    /// topology.
    pub multi_leader: bool,
    /// Whether it runs the leaderless topology (then `multi_leader` too):
    /// any node coordinates any request, and freshness comes from the
    /// request's `r`/`w`, so there is no session home and no token.
    pub leaderless: bool,
}

/// What the router knows about one node.
#[derive(Clone, Debug)]
pub struct NodeState {
    /// Base URL from `--nodes`, without a trailing slash.
    pub url: String,
    /// The last successful observation; `None` until the first one.
    pub seen: Option<Observation>,
    /// Failed checks or requests since the last success.
    pub consecutive_failures: u32,
    /// When the last check succeeded.
    pub last_ok: Option<Instant>,
    /// Why the last check failed, if it did.
    pub last_error: Option<String>,
    /// Requests sent to it and not answered yet (multi-leader writes
    /// without a home go to the node with the fewest).
    pub in_flight: u32,
    /// Whether it was in the read rotation when last reported by
    /// [`RouterState::rotation_changes`] (logged on every change).
    pub in_rotation: bool,
}

/// A node that left or (re)joined the read rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationChange {
    /// Its index in [`RouterState::nodes`].
    pub index: usize,
    /// Whether it is in the rotation now.
    pub joined: bool,
    /// Why it left (failed checks, lag, now the leader), or why it is back.
    pub reason: String,
}

impl NodeState {
    /// The node's id once known, else its URL (for headers and labels).
    pub fn name(&self) -> &str {
        self.seen.as_ref().map_or(self.url.as_str(), |o| &o.id)
    }
}

/// Everything routing decisions read.
#[derive(Clone, Debug)]
pub struct RouterState {
    policy: Policy,
    nodes: Vec<NodeState>,
    leader: Option<usize>,
}

/// A request as the routing decision sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Must reach the leader (single-leader), or the session's home node
    /// (multi-leader; `home` is ignored in single-leader).
    Write {
        /// The session's home node, if it has one.
        home: Option<usize>,
    },
    /// A read.
    Read {
        /// The node API serves it only from the leader (`strong`, `leader`,
        /// or a seed read): a follower would only proxy it.
        leader_only: bool,
        /// When the request's session last wrote, if it did.
        session_wrote_at: Option<Instant>,
    },
}

/// Why a target was chosen (drives counters and metrics labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A write.
    Write,
    /// A read served by a follower picked by the strategy.
    Follower,
    /// The read asked for the leader.
    LeaderRequested,
    /// The session wrote within the sticky window.
    Sticky,
    /// No follower is eligible.
    NoEligibleFollower,
    /// Multi-leader: a write to the session's home node.
    Home,
    /// Multi-leader: a write with no (healthy) home, to the least-loaded
    /// node, which becomes the session's home.
    NewHome,
    /// Multi-leader: a read, to a node picked by the read strategy.
    AnyNode,
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Node `index` (into [`RouterState::nodes`]).
    Node {
        /// Which node.
        index: usize,
        /// Why.
        reason: Reason,
    },
    /// No leader is known and no follower may serve (multi-leader: no
    /// node is healthy): answer 503.
    NoLeader,
}

impl RouterState {
    /// A state for `urls` about which nothing is known yet.
    pub fn new(urls: &[String], policy: Policy) -> Self {
        let nodes = urls
            .iter()
            .map(|u| NodeState {
                url: u.trim_end_matches('/').to_string(),
                seen: None,
                consecutive_failures: 0,
                last_ok: None,
                last_error: None,
                in_flight: 0,
                in_rotation: false,
            })
            .collect();
        RouterState {
            policy,
            nodes,
            leader: None,
        }
    }

    /// The policy decisions follow.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Every node, in `--nodes` order.
    pub fn nodes(&self) -> &[NodeState] {
        &self.nodes
    }

    /// The current leader's index, if one is known.
    pub fn leader(&self) -> Option<usize> {
        self.leader
    }

    /// The index of the node whose base URL is `url` (scheme, host, port).
    pub fn index_of_url(&self, url: &str) -> Option<usize> {
        let url = url.trim_end_matches('/');
        self.nodes.iter().position(|n| n.url == url)
    }

    /// The index of the node named `name`: its `--id` as its `/status`
    /// reports it, or its base URL (`http://` may be left out).
    pub fn index_of_name(&self, name: &str) -> Option<usize> {
        let name = name.trim();
        self.nodes
            .iter()
            .position(|n| n.seen.as_ref().is_some_and(|o| o.id == name))
            .or_else(|| self.index_of_url(name))
            .or_else(|| self.index_of_url(&format!("http://{name}")))
    }

    /// Whether the cluster runs the multi-leader topology, as the last
    /// observation of any node says.
    pub fn multi_leader(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| n.seen.as_ref().is_some_and(|o| o.multi_leader))
    }

    /// Whether the cluster runs the leaderless topology, as the last
    /// observation of any node says.
    pub fn leaderless(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| n.seen.as_ref().is_some_and(|o| o.leaderless))
    }

    /// Whether every node takes writes (multi-leader or leaderless): there
    /// is no single leader to find.
    pub fn causal(&self) -> bool {
        self.multi_leader() || self.leaderless()
    }

    /// The topology's name as nodes report it.
    pub fn topology(&self) -> &'static str {
        if self.leaderless() {
            "leaderless"
        } else if self.multi_leader() {
            "multi-leader"
        } else {
            "single-leader"
        }
    }

    /// A request to node `i` was sent.
    pub fn begin_request(&mut self, i: usize) {
        if let Some(n) = self.nodes.get_mut(i) {
            n.in_flight = n.in_flight.saturating_add(1);
        }
    }

    /// A request to node `i` was answered (or failed).
    pub fn end_request(&mut self, i: usize) {
        if let Some(n) = self.nodes.get_mut(i) {
            n.in_flight = n.in_flight.saturating_sub(1);
        }
    }

    /// This state with node `i` counted as down: for choosing where a
    /// request goes after `i` failed it.
    pub fn without(&self, i: usize) -> RouterState {
        let mut s = self.clone();
        if let Some(n) = s.nodes.get_mut(i) {
            n.consecutive_failures = n.consecutive_failures.max(s.policy.failure_threshold);
        }
        s.recompute_leader();
        s
    }

    /// A `/status` call to node `i` succeeded.
    pub fn record_success(&mut self, i: usize, obs: Observation, now: Instant) {
        let Some(n) = self.nodes.get_mut(i) else {
            return;
        };
        n.seen = Some(obs);
        n.consecutive_failures = 0;
        n.last_ok = Some(now);
        n.last_error = None;
        self.recompute_leader();
    }

    /// A check of (or a request to) node `i` failed.
    pub fn record_failure(&mut self, i: usize, error: String) {
        let Some(n) = self.nodes.get_mut(i) else {
            return;
        };
        n.consecutive_failures = n.consecutive_failures.saturating_add(1);
        n.last_error = Some(error);
        self.recompute_leader();
    }

    /// A node's 307 named node `i` as the leader: believe it until the
    /// next health round says otherwise.
    pub fn hint_leader(&mut self, i: usize) {
        if i < self.nodes.len() && !self.causal() {
            self.leader = Some(i);
        }
    }

    /// Answered its last checks: seen at least once and fewer than
    /// `failure_threshold` failures since.
    pub fn is_healthy(&self, i: usize) -> bool {
        self.nodes.get(i).is_some_and(|n| {
            n.seen.is_some() && n.consecutive_failures < self.policy.failure_threshold
        })
    }

    /// May serve reads chosen by the strategy: a healthy follower (or any
    /// healthy multi-leader node) whose lag is within `max_lag`.
    pub fn is_eligible(&self, i: usize) -> bool {
        self.is_healthy(i)
            && self.nodes[i].seen.as_ref().is_some_and(|o| {
                (o.role == NodeRole::Follower || o.multi_leader)
                    && o.lag_ms <= self.policy.max_lag_ms
            })
    }

    /// Why node `i` is not in the read rotation ([`Self::is_eligible`]),
    /// or `None` when it is.
    pub fn out_of_rotation_reason(&self, i: usize) -> Option<String> {
        let n = self.nodes.get(i)?;
        if n.consecutive_failures >= self.policy.failure_threshold {
            let why = n.last_error.as_deref().unwrap_or("no answer");
            return Some(format!(
                "{} failed health {} in a row (last: {why})",
                n.consecutive_failures,
                plural(u64::from(n.consecutive_failures), "check", "checks"),
            ));
        }
        let Some(o) = &n.seen else {
            return Some("not checked yet".into());
        };
        if o.role == NodeRole::Leader && !o.multi_leader {
            return Some("it is the leader".into());
        }
        if o.lag_ms > self.policy.max_lag_ms {
            return Some(format!(
                "lag {} ms exceeds --max-lag {} ms",
                o.lag_ms, self.policy.max_lag_ms
            ));
        }
        None
    }

    /// The nodes whose place in the read rotation changed since the last
    /// call (a node never seen before counts as out of it). The first
    /// report of a node that was never in it and is not now (a leader, an
    /// unreachable node) is not a change.
    pub fn rotation_changes(&mut self) -> Vec<RotationChange> {
        let mut out = Vec::new();
        for i in 0..self.nodes.len() {
            let now = self.is_eligible(i);
            if now == self.nodes[i].in_rotation {
                continue;
            }
            let reason = match self.out_of_rotation_reason(i) {
                Some(why) => why,
                None => {
                    let lag = self.nodes[i].seen.as_ref().map_or(0, |o| o.lag_ms);
                    format!("healthy, lag {lag} ms within --max-lag")
                }
            };
            self.nodes[i].in_rotation = now;
            out.push(RotationChange {
                index: i,
                joined: now,
                reason,
            });
        }
        out
    }

    /// The leader is the healthy node claiming leadership in the highest
    /// epoch (a deposed leader that has not noticed yet claims a lower one).
    /// Among equals the current leader stays, else the first listed. The
    /// causal topologies have none: every node reports `leader` there, and
    /// naming one in `/status` or logging "leader changed" would be false.
    fn recompute_leader(&mut self) {
        if self.causal() {
            self.leader = None;
            return;
        }
        let best = (0..self.nodes.len())
            .filter(|&i| self.is_healthy(i))
            .filter_map(|i| {
                let o = self.nodes[i].seen.as_ref()?;
                (o.role == NodeRole::Leader).then_some((i, o.epoch))
            })
            .max_by(|a, b| {
                a.1.cmp(&b.1)
                    .then_with(|| (Some(a.0) == self.leader).cmp(&(Some(b.0) == self.leader)))
                    .then_with(|| b.0.cmp(&a.0))
            });
        self.leader = best.map(|(i, _)| i);
    }
}

/// Where to send `req`. `spin` breaks ties and drives round-robin (a
/// counter) or random (a random number) choice; `now` measures the sticky
/// window.
pub fn choose(state: &RouterState, req: &RequestKind, now: Instant, spin: u64) -> Target {
    if state.multi_leader() {
        return choose_multi_leader(state, req, spin);
    }
    let to_leader = |reason| match state.leader {
        Some(index) => Target::Node { index, reason },
        None => Target::NoLeader,
    };
    let (leader_only, wrote_at) = match *req {
        RequestKind::Write { .. } => return to_leader(Reason::Write),
        RequestKind::Read {
            leader_only,
            session_wrote_at,
        } => (leader_only, session_wrote_at),
    };
    if leader_only {
        return to_leader(Reason::LeaderRequested);
    }
    let sticky =
        wrote_at.is_some_and(|t| now.saturating_duration_since(t) < state.policy.sticky_window);
    if sticky && state.leader.is_some() {
        return to_leader(Reason::Sticky);
    }
    match pick_follower(state, spin) {
        Some(index) => Target::Node {
            index,
            reason: Reason::Follower,
        },
        None => to_leader(Reason::NoEligibleFollower),
    }
}

/// Multi-leader: writes to the home (else the least-loaded healthy
/// node), reads to any eligible node (else any healthy one).
fn choose_multi_leader(state: &RouterState, req: &RequestKind, spin: u64) -> Target {
    let least_loaded = |reason| {
        (0..state.nodes.len())
            .filter(|&i| state.is_healthy(i))
            // Fewest in flight; ties in turn, from `spin`.
            .min_by_key(|&i| {
                let n = state.nodes.len() as u64;
                let turn = (i as u64 + n - spin % n) % n;
                (state.nodes[i].in_flight, turn)
            })
            .map_or(Target::NoLeader, |index| Target::Node { index, reason })
    };
    match *req {
        RequestKind::Write {
            home: Some(index), ..
        } if state.is_healthy(index) => Target::Node {
            index,
            reason: Reason::Home,
        },
        // Leaderless: any node coordinates, so there is no home to keep.
        RequestKind::Write { .. } if state.leaderless() => least_loaded(Reason::AnyNode),
        RequestKind::Write { .. } => least_loaded(Reason::NewHome),
        RequestKind::Read { .. } => match pick_follower(state, spin) {
            Some(index) => Target::Node {
                index,
                reason: Reason::AnyNode,
            },
            None => least_loaded(Reason::AnyNode),
        },
    }
}

fn pick_follower(state: &RouterState, spin: u64) -> Option<usize> {
    let mut eligible: Vec<usize> = (0..state.nodes.len())
        .filter(|&i| state.is_eligible(i))
        .collect();
    if state.policy.strategy == ReadStrategy::LeastLag {
        let lag = |i: usize| state.nodes[i].seen.as_ref().map_or(u64::MAX, |o| o.lag_ms);
        let least = eligible.iter().map(|&i| lag(i)).min()?;
        eligible.retain(|&i| lag(i) == least);
    }
    if eligible.is_empty() {
        return None;
    }
    // `spin % len` fits in usize because len does.
    let k = (spin % eligible.len() as u64) as usize;
    Some(eligible[k])
}

/// `n` with the singular or plural word.
fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(strategy: ReadStrategy) -> Policy {
        Policy {
            strategy,
            max_lag_ms: 1000,
            failure_threshold: 3,
            sticky_window: Duration::from_secs(5),
        }
    }

    fn obs(id: &str, role: NodeRole, epoch: u64, lag_ms: u64) -> Observation {
        Observation {
            id: id.into(),
            role,
            epoch,
            applied_lsn: 0,
            lag_ms,
            multi_leader: false,
            leaderless: false,
        }
    }

    const WRITE: RequestKind = RequestKind::Write { home: None };

    /// n1 leader (epoch 1), n2 and n3 followers with the given lags.
    fn cluster(strategy: ReadStrategy, lag2: u64, lag3: u64) -> (RouterState, Instant) {
        let urls: Vec<String> = (1..=3).map(|i| format!("http://n{i}:7000/")).collect();
        let mut s = RouterState::new(&urls, policy(strategy));
        let now = Instant::now();
        s.record_success(0, obs("n1", NodeRole::Leader, 1, 0), now);
        s.record_success(1, obs("n2", NodeRole::Follower, 1, lag2), now);
        s.record_success(2, obs("n3", NodeRole::Follower, 1, lag3), now);
        (s, now)
    }

    const READ: RequestKind = RequestKind::Read {
        leader_only: false,
        session_wrote_at: None,
    };

    /// Followers leaving and rejoining the read rotation are reported once
    /// each, with the reason; a leader is never "in" it.
    #[test]
    fn rotation_changes_name_the_node_and_the_reason() {
        let (mut s, now) = cluster(ReadStrategy::LeastLag, 10, 20);
        let first = s.rotation_changes();
        assert_eq!(
            first
                .iter()
                .map(|c| (c.index, c.joined))
                .collect::<Vec<_>>(),
            vec![(1, true), (2, true)]
        );
        assert!(s.rotation_changes().is_empty(), "nothing changed");
        for _ in 0..3 {
            s.record_failure(1, "connection failed".into());
        }
        s.record_success(2, obs("n3", NodeRole::Follower, 1, 5000), now);
        let changes = s.rotation_changes();
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(!changes[0].joined);
        assert_eq!(
            changes[0].reason,
            "3 failed health checks in a row (last: connection failed)"
        );
        assert_eq!(changes[1].reason, "lag 5000 ms exceeds --max-lag 1000 ms");
        s.record_success(1, obs("n2", NodeRole::Follower, 1, 0), now);
        let back = s.rotation_changes();
        assert_eq!(back.len(), 1);
        assert!(back[0].joined && back[0].index == 1, "{back:?}");
        assert!(back[0].reason.starts_with("healthy"), "{back:?}");
    }

    fn picks(s: &RouterState, now: Instant, spins: std::ops::Range<u64>) -> Vec<usize> {
        spins
            .map(|spin| match choose(s, &READ, now, spin) {
                Target::Node { index, .. } => index,
                Target::NoLeader => usize::MAX,
            })
            .collect()
    }

    #[test]
    fn writes_go_to_the_leader_and_fail_without_one() {
        let (s, now) = cluster(ReadStrategy::LeastLag, 0, 0);
        assert_eq!(
            choose(&s, &RequestKind::Write { home: Some(2) }, now, 7),
            Target::Node {
                index: 0,
                reason: Reason::Write
            }
        );
        let empty = RouterState::new(&["http://a:1".into()], policy(ReadStrategy::LeastLag));
        assert_eq!(choose(&empty, &WRITE, now, 0), Target::NoLeader);
        assert_eq!(choose(&empty, &READ, now, 0), Target::NoLeader);
    }

    #[test]
    fn round_robin_alternates_between_followers() {
        let (s, now) = cluster(ReadStrategy::RoundRobin, 900, 0);
        assert_eq!(picks(&s, now, 0..4), vec![1, 2, 1, 2]);
    }

    #[test]
    fn least_lag_prefers_the_freshest_and_alternates_on_ties() {
        let (s, now) = cluster(ReadStrategy::LeastLag, 300, 20);
        assert_eq!(picks(&s, now, 0..3), vec![2, 2, 2]);
        let (s, now) = cluster(ReadStrategy::LeastLag, 0, 0);
        assert_eq!(picks(&s, now, 0..4), vec![1, 2, 1, 2]);
    }

    #[test]
    fn random_only_picks_eligible_followers() {
        let (mut s, now) = cluster(ReadStrategy::Random, 0, 5000);
        assert!(picks(&s, now, 0..50).iter().all(|&i| i == 1));
        s.record_success(2, obs("n3", NodeRole::Follower, 1, 10), now);
        let seen = picks(&s, now, 0..50);
        assert!(seen.contains(&1) && seen.contains(&2));
    }

    #[test]
    fn lagging_followers_are_skipped_and_none_left_means_leader() {
        let (s, now) = cluster(ReadStrategy::RoundRobin, 1001, 5);
        assert_eq!(picks(&s, now, 0..3), vec![2, 2, 2]);
        let (s, now) = cluster(ReadStrategy::RoundRobin, 1001, 2000);
        assert_eq!(
            choose(&s, &READ, now, 0),
            Target::Node {
                index: 0,
                reason: Reason::NoEligibleFollower
            }
        );
    }

    #[test]
    fn failed_checks_exclude_a_follower_until_it_answers_again() {
        let (mut s, now) = cluster(ReadStrategy::RoundRobin, 0, 0);
        s.record_failure(1, "connection refused".into());
        s.record_failure(1, "connection refused".into());
        assert!(s.is_eligible(1), "two failures are below the threshold");
        s.record_failure(1, "connection refused".into());
        assert!(!s.is_eligible(1));
        assert_eq!(picks(&s, now, 0..4), vec![2, 2, 2, 2]);
        s.record_success(1, obs("n2", NodeRole::Follower, 1, 0), now);
        assert_eq!(picks(&s, now, 0..2), vec![1, 2]);
    }

    #[test]
    fn strong_and_leader_reads_go_to_the_leader() {
        let (s, now) = cluster(ReadStrategy::LeastLag, 0, 0);
        let req = RequestKind::Read {
            leader_only: true,
            session_wrote_at: None,
        };
        assert_eq!(
            choose(&s, &req, now, 1),
            Target::Node {
                index: 0,
                reason: Reason::LeaderRequested
            }
        );
    }

    #[test]
    fn sticky_window_sends_a_recent_writer_to_the_leader() {
        let (s, now) = cluster(ReadStrategy::LeastLag, 0, 0);
        let wrote = now;
        let read_at = |after_ms: u64| {
            let req = RequestKind::Read {
                leader_only: false,
                session_wrote_at: Some(wrote),
            };
            choose(&s, &req, wrote + Duration::from_millis(after_ms), 0)
        };
        assert_eq!(
            read_at(4999),
            Target::Node {
                index: 0,
                reason: Reason::Sticky
            }
        );
        assert!(matches!(
            read_at(5000),
            Target::Node {
                reason: Reason::Follower,
                ..
            }
        ));
    }

    #[test]
    fn the_leader_is_the_highest_epoch_claimant_and_failures_demote_it() {
        let (mut s, now) = cluster(ReadStrategy::LeastLag, 0, 0);
        assert_eq!(s.leader(), Some(0));
        // n3 was promoted; n1 has not noticed yet.
        s.record_success(2, obs("n3", NodeRole::Leader, 2, 0), now);
        assert_eq!(s.leader(), Some(2));
        for _ in 0..3 {
            s.record_failure(2, "down".into());
        }
        assert_eq!(s.leader(), Some(0), "the only healthy claimant");
        for _ in 0..3 {
            s.record_failure(0, "down".into());
        }
        assert_eq!(s.leader(), None);
    }

    #[test]
    fn a_redirect_hint_names_the_leader_until_the_next_observation() {
        let (mut s, now) = cluster(ReadStrategy::LeastLag, 0, 0);
        assert_eq!(s.index_of_url("http://n2:7000"), Some(1));
        s.hint_leader(1);
        assert_eq!(s.leader(), Some(1));
        s.record_success(1, obs("n2", NodeRole::Leader, 2, 0), now);
        assert_eq!(s.leader(), Some(1));
        s.record_success(0, obs("n1", NodeRole::Follower, 2, 0), now);
        assert_eq!(s.leader(), Some(1));
    }

    /// Three multi-leader nodes (all report `leader`), lags as given.
    fn multi(lags: [u64; 3]) -> (RouterState, Instant) {
        let urls: Vec<String> = (1..=3).map(|i| format!("http://n{i}:7000")).collect();
        let mut s = RouterState::new(&urls, policy(ReadStrategy::RoundRobin));
        let now = Instant::now();
        for (i, lag) in lags.into_iter().enumerate() {
            let mut o = obs(&format!("n{}", i + 1), NodeRole::Leader, 0, lag);
            o.multi_leader = true;
            s.record_success(i, o, now);
        }
        (s, now)
    }

    fn at(t: Target) -> (usize, Reason) {
        match t {
            Target::Node { index, reason } => (index, reason),
            Target::NoLeader => panic!("no target"),
        }
    }

    #[test]
    fn leaderless_writes_and_reads_go_to_any_node_without_a_home() {
        let (mut s, now) = multi([0, 0, 0]);
        for i in 0..3 {
            let mut o = obs(&format!("n{}", i + 1), NodeRole::Leader, 1, 0);
            o.multi_leader = true;
            o.leaderless = true;
            s.record_success(i, o, now);
        }
        assert!(s.leaderless());
        assert_eq!(s.topology(), "leaderless");
        s.begin_request(0);
        s.begin_request(1);
        assert_eq!(at(choose(&s, &WRITE, now, 0)), (2, Reason::AnyNode));
        let picked: Vec<usize> = (0..3).map(|k| at(choose(&s, &READ, now, k)).0).collect();
        assert_eq!(picked, vec![0, 1, 2], "reads in turn over every node");
    }

    #[test]
    fn multi_leader_writes_go_home_else_to_the_least_loaded_node() {
        let (mut s, now) = multi([0, 0, 0]);
        assert!(s.multi_leader());
        // Every node reports `leader`; none is *the* leader.
        assert_eq!(s.leader(), None);
        s.hint_leader(1);
        assert_eq!(s.leader(), None);
        let home = |h| RequestKind::Write { home: Some(h) };
        assert_eq!(at(choose(&s, &home(1), now, 0)), (1, Reason::Home));
        assert_eq!(at(choose(&s, &home(2), now, 5)), (2, Reason::Home));
        // No home: the fewest requests in flight.
        s.begin_request(0);
        s.begin_request(0);
        s.begin_request(2);
        assert_eq!(at(choose(&s, &WRITE, now, 0)), (1, Reason::NewHome));
        s.end_request(0);
        s.end_request(0);
        s.end_request(0);
        assert_eq!(s.nodes()[0].in_flight, 0, "never below zero");
        // Ties go in turn.
        s.end_request(2);
        let picked: Vec<usize> = (0..3).map(|k| at(choose(&s, &WRITE, now, k)).0).collect();
        assert_eq!(picked, vec![0, 1, 2]);
        // A home that is down: the least-loaded other node.
        for _ in 0..3 {
            s.record_failure(1, "down".into());
        }
        assert_eq!(at(choose(&s, &home(1), now, 1)), (2, Reason::NewHome));
        assert_eq!(
            at(choose(&s.without(2), &home(1), now, 1)),
            (0, Reason::NewHome)
        );
        let none = s.without(0).without(2);
        assert_eq!(choose(&none, &WRITE, now, 0), Target::NoLeader);
    }

    #[test]
    fn multi_leader_reads_go_to_any_node_by_strategy() {
        let (s, now) = multi([0, 9000, 0]);
        // n2 lags beyond max_lag; leader-only and sticky mean nothing here.
        let req = RequestKind::Read {
            leader_only: true,
            session_wrote_at: Some(now),
        };
        let picked: Vec<(usize, Reason)> = (0..4).map(|k| at(choose(&s, &req, now, k))).collect();
        assert_eq!(
            picked,
            vec![
                (0, Reason::AnyNode),
                (2, Reason::AnyNode),
                (0, Reason::AnyNode),
                (2, Reason::AnyNode)
            ]
        );
        // Every node lagging: still served, by a healthy node.
        let (s, now) = multi([9000, 9000, 9000]);
        assert!(matches!(choose(&s, &READ, now, 0), Target::Node { .. }));
    }

    #[test]
    fn nodes_are_named_by_id_or_url() {
        let (s, _) = multi([0, 0, 0]);
        assert_eq!(s.index_of_name("n2"), Some(1));
        assert_eq!(s.index_of_name("http://n3:7000/"), Some(2));
        assert_eq!(s.index_of_name("n1:7000"), Some(0));
        assert_eq!(s.index_of_name("n4"), None);
    }

    #[test]
    fn strategies_parse_and_print() {
        for s in ["round-robin", "random", "least-lag"] {
            assert_eq!(s.parse::<ReadStrategy>().unwrap().to_string(), s);
        }
        assert!("fastest".parse::<ReadStrategy>().is_err());
    }
}
