//! What one simulation run does: cluster shape, workload, faults.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use replidb_core::DurationRange;

/// Which faults a run injects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultMode {
    /// A healthy network and no crashes: only the artificial apply lag.
    #[default]
    None,
    /// Partitions between the leader and single followers, then repair.
    Partition,
    /// Follower crashes (the host's tasks and memory vanish; files stay)
    /// and restarts.
    Crash,
    /// Slow links (turmoil latency) and duplicated or cut replication
    /// streams (the fault transport, see [`crate::net`]).
    Delay,
    /// Leader failover: crash the leader, or cut it off from every node
    /// and from etcd, then restart or heal it. Nodes `n1`.. elect their
    /// leader through a simulated etcd (the real `EtcdCoordinator` loop).
    Failover,
    /// All of the above (with an elected leader).
    All,
}

impl FaultMode {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultMode::None => "none",
            FaultMode::Partition => "partition",
            FaultMode::Crash => "crash",
            FaultMode::Delay => "delay",
            FaultMode::Failover => "failover",
            FaultMode::All => "all",
        }
    }

    /// Whether the cluster elects its leader through the simulated etcd
    /// (nodes `n1`..) rather than running a fixed `leader`.
    pub fn elected(self) -> bool {
        matches!(self, FaultMode::Failover | FaultMode::All)
    }

    pub(crate) fn partitions(self) -> bool {
        matches!(self, FaultMode::Partition | FaultMode::All)
    }

    pub(crate) fn crashes(self) -> bool {
        matches!(self, FaultMode::Crash | FaultMode::All)
    }

    pub(crate) fn delays(self) -> bool {
        matches!(self, FaultMode::Delay | FaultMode::All)
    }
}

impl fmt::Display for FaultMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown `--faults` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fault mode {0:?}: expected none, partition, crash, delay, failover or all")]
pub struct FaultModeError(pub String);

impl FromStr for FaultMode {
    type Err = FaultModeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "none" => FaultMode::None,
            "partition" => FaultMode::Partition,
            "crash" => FaultMode::Crash,
            "delay" => FaultMode::Delay,
            "failover" => FaultMode::Failover,
            "all" => FaultMode::All,
            other => return Err(FaultModeError(other.to_string())),
        })
    }
}

/// One run's parameters. Two runs with equal configs print the same bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Seed of everything random: workload, faults, network latency, the
    /// followers' delay samplers.
    pub seed: u64,
    /// Number of followers (the leader is one more node; with an elected
    /// leader, the cluster is `followers + 1` nodes `n1`..).
    pub followers: usize,
    /// Artificial apply lag of each follower (`--replication-delay`).
    pub lag: DurationRange,
    /// Writes the client makes.
    pub writes: usize,
    /// Reads per write, on average (reads go to followers).
    pub read_ratio: f64,
    /// Faults to inject.
    pub faults: FaultMode,
    /// Story lines printed before eliding (0 = all); fault lines are always
    /// printed.
    pub story_lines: usize,
    /// Also write typed keys (`t*`: counter increments, set adds, and
    /// deletes of either) between the plain writes, so the writer's typed-key
    /// checks, merges and deletes run under the same faults and invariants
    /// (logs, digests at equal LSNs, convergence).
    pub typed_keys: bool,
}

impl SimConfig {
    /// Seed 000's setup: three followers, 100..500 ms of lag, no faults.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            followers: 3,
            lag: DurationRange {
                lo: Duration::from_millis(100),
                hi: Duration::from_millis(500),
            },
            writes: 20,
            read_ratio: 3.0,
            faults: FaultMode::None,
            story_lines: 40,
            typed_keys: false,
        }
    }

    /// The command line that reproduces this run.
    pub fn command_line(&self) -> String {
        format!(
            "replidb simulate --seed {} --followers {} --lag {}..{} --writes {} --read-ratio {} --faults {}{}",
            self.seed,
            self.followers,
            fmt_duration(self.lag.lo),
            fmt_duration(self.lag.hi),
            self.writes,
            self.read_ratio,
            self.faults,
            if self.typed_keys { " --typed-keys" } else { "" }
        )
    }

    /// Refuse shapes the simulation cannot run.
    pub fn validate(&self) -> Result<(), crate::SimError> {
        let bad = |m: &str| Err(crate::SimError::Config(m.to_string()));
        if self.followers == 0 || self.followers > 16 {
            return bad("--followers must be 1..=16");
        }
        if self.writes == 0 || self.writes > 100_000 {
            return bad("--writes must be 1..=100000");
        }
        if !(0.0..=100.0).contains(&self.read_ratio) || self.read_ratio.is_nan() {
            return bad("--read-ratio must be between 0 and 100");
        }
        if self.lag.hi > Duration::from_secs(60) {
            return bad("--lag above 60s is not useful in a simulation");
        }
        Ok(())
    }

    /// Names of the follower hosts: `f1`, `f2`, ...
    pub(crate) fn follower_names(&self) -> Vec<String> {
        (1..=self.followers).map(|i| format!("f{i}")).collect()
    }

    /// Names of the hosts that replicate: `leader`, `f1`.. with a fixed
    /// leader; `n1`, `n2`.. with an elected one.
    pub(crate) fn node_names(&self) -> Vec<String> {
        if self.faults.elected() {
            (1..=self.followers + 1).map(|i| format!("n{i}")).collect()
        } else {
            let mut v = vec![crate::cluster::LEADER.to_string()];
            v.extend(self.follower_names());
            v
        }
    }

    /// The hosts clients read from: the followers with a fixed leader,
    /// every node with an elected one (any of them may lead).
    pub(crate) fn read_targets(&self) -> Vec<String> {
        if self.faults.elected() {
            self.node_names()
        } else {
            self.follower_names()
        }
    }
}

/// `250ms`, `2s`: the shortest exact spelling.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms > 0 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_modes_round_trip() {
        for m in ["none", "partition", "crash", "delay", "failover", "all"] {
            assert_eq!(m.parse::<FaultMode>().unwrap().as_str(), m);
        }
        assert!("chaos".parse::<FaultMode>().is_err());
    }

    #[test]
    fn command_line_names_every_knob() {
        let c = SimConfig::new(7);
        assert_eq!(
            c.command_line(),
            "replidb simulate --seed 7 --followers 3 --lag 100ms..500ms --writes 20 --read-ratio 3 --faults none"
        );
        assert!(c.validate().is_ok());
    }
}
