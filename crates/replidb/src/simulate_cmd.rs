//! `replidb simulate`: the deterministic simulation of a leader and N
//! followers (crate `replidb-sim`), printed as a story and a summary;
//! with `--topology multi-leader`, of N nodes that each lead their own log
//! under clock skew (`replidb_sim::multi`); with `--topology leaderless`,
//! of quorum reads and writes at four (R, W) settings under lag and a
//! failing node (`replidb_sim::leaderless`).
//!
//! One seed prints the same bytes on every run; a failed invariant prints
//! the command line that reproduces it and exits 1. `--seeds A..B` runs a
//! batch (soak) and prints only failing seeds and a tally.

use std::ops::RangeInclusive;

use anyhow::Context as _;
use clap::Args;
use std::time::Duration;

use replidb_core::text::count_s;
use replidb_core::DurationRange;
use replidb_sim::leaderless::LeaderlessConfig;
use replidb_sim::multi::MultiConfig;
use replidb_sim::{FaultMode, SimConfig};

use crate::UsageError;

/// `replidb simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// single-leader (a leader and followers), multi-leader (every node
    /// leads its own log and applies every peer's) or leaderless (quorums
    /// on a ring, compared at (R,W) = (1,1), (1,2), (2,2), (1,3)).
    #[arg(long, default_value = "single-leader", value_parser = ["single-leader", "multi-leader", "leaderless"])]
    pub topology: String,
    /// Multi-leader and leaderless: number of nodes (leaderless: N = 3
    /// replicas per key whatever the count).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Leaderless: client requests per (R, W) setting (half reads).
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Leaderless: no hinted handoff (no sloppy quorum).
    #[arg(long)]
    pub strict_quorum: bool,
    /// Multi-leader: largest wall-clock skew of a node, either direction.
    #[arg(long, default_value = "5s", value_parser = parse_skew)]
    pub skew: Duration,
    /// Number of followers.
    #[arg(long, default_value_t = 3)]
    pub followers: usize,
    /// Artificial apply lag of each follower: DUR or DUR..DUR.
    #[arg(long, default_value = "100ms..500ms")]
    pub lag: DurationRange,
    /// Writes the client makes (default 20; multi-leader 80).
    #[arg(long)]
    pub writes: Option<usize>,
    /// Follower reads per write, on average.
    #[arg(long, default_value_t = 3.0)]
    pub read_ratio: f64,
    /// Seed of the run: the same seed prints the same output.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Faults to inject: none, partition, crash, delay, failover or all
    /// (multi-leader and leaderless: all but failover). Default none;
    /// leaderless: crash (a failing node).
    #[arg(long)]
    pub faults: Option<FaultMode>,
    /// Run every seed in A..B (inclusive) and report only failures (soak)
    /// [default: none: one run of --seed]
    #[arg(long, value_parser = parse_seed_range, conflicts_with = "seed")]
    pub seeds: Option<RangeInclusive<u64>>,
    /// Story lines to print before eliding (0 = all; faults always print).
    #[arg(long, default_value_t = 40)]
    pub story_lines: usize,
    /// Single-leader: also write typed keys (counter increments, set adds,
    /// deletes) between the plain writes.
    #[arg(long)]
    pub typed_keys: bool,
}

/// `A..B` (inclusive) or a single seed.
fn parse_seed_range(s: &str) -> Result<RangeInclusive<u64>, String> {
    let num = |x: &str| {
        x.trim()
            .parse::<u64>()
            .map_err(|_| format!("invalid seed range {s:?}: expected A..B"))
    };
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (num(a)?, num(b.trim_start_matches('='))?),
        None => (num(s)?, num(s)?),
    };
    if b < a {
        return Err(format!(
            "invalid seed range {s:?}: the range is reversed ({a} is more than {b}); write the lower seed first, like {b}..{a}"
        ));
    }
    Ok(a..=b)
}

/// `--skew DUR`.
fn parse_skew(s: &str) -> Result<Duration, String> {
    replidb_core::parse_duration(s).map_err(|e| e.to_string())
}

/// Run the command.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    if args.topology == "leaderless" {
        let cfg = LeaderlessConfig {
            seed: args.seed,
            nodes: args.nodes,
            replicas: 3,
            ops: args.requests,
            faults: args.faults.unwrap_or(FaultMode::Crash),
            strict: args.strict_quorum,
            story_lines: args.story_lines,
        };
        cfg.validate()
            .map_err(|e| anyhow::Error::new(UsageError(e.to_string())))?;
        let seeds = args.seeds;
        return tokio::task::spawn_blocking(move || quiet(|| simulate_leaderless(cfg, seeds)))
            .await
            .context("the simulation thread failed")?;
    }
    if args.topology == "multi-leader" {
        let cfg = MultiConfig {
            seed: args.seed,
            nodes: args.nodes,
            writes: args.writes.unwrap_or(80),
            skew: args.skew,
            faults: args.faults.unwrap_or_default(),
            story_lines: args.story_lines,
        };
        cfg.validate()
            .map_err(|e| anyhow::Error::new(UsageError(e.to_string())))?;
        let seeds = args.seeds;
        return tokio::task::spawn_blocking(move || quiet(|| simulate_multi(cfg, seeds)))
            .await
            .context("the simulation thread failed")?;
    }
    let cfg = SimConfig {
        seed: args.seed,
        followers: args.followers,
        lag: args.lag,
        writes: args.writes.unwrap_or(20),
        read_ratio: args.read_ratio,
        faults: args.faults.unwrap_or_default(),
        story_lines: args.story_lines,
        typed_keys: args.typed_keys,
    };
    cfg.validate()
        .map_err(|e| anyhow::Error::new(UsageError(e.to_string())))?;
    let seeds = args.seeds;
    // turmoil drives its own single-threaded runtimes: run it on a thread
    // of its own, outside this runtime.
    tokio::task::spawn_blocking(move || quiet(|| simulate(cfg, seeds)))
        .await
        .context("the simulation thread failed")?
}

/// The protocol's own log lines are not part of the story: they are
/// dropped unless RUST_LOG asks for them (on stderr, stamped with the
/// simulated time, `sim_ms=`, and the node, to be read beside the story).
fn quiet<T>(f: impl FnOnce() -> T) -> T {
    if std::env::var_os("RUST_LOG").is_some() {
        let subscriber = crate::logging::sim_subscriber(replidb_sim::sim_elapsed);
        return tracing::subscriber::with_default(subscriber, f);
    }
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), f)
}

fn simulate(cfg: SimConfig, seeds: Option<RangeInclusive<u64>>) -> anyhow::Result<()> {
    let what = format!("faults {}", cfg.faults);
    simulate_with(
        cfg,
        seeds,
        &what,
        |c, seed| SimConfig { seed, ..c.clone() },
        |c| c.seed,
        replidb_sim::run,
        SimConfig::command_line,
    )
}

fn simulate_multi(cfg: MultiConfig, seeds: Option<RangeInclusive<u64>>) -> anyhow::Result<()> {
    let what = format!("topology multi-leader, faults {}", cfg.faults);
    simulate_with(
        cfg,
        seeds,
        &what,
        |c, seed| MultiConfig { seed, ..c.clone() },
        |c| c.seed,
        replidb_sim::multi::run,
        MultiConfig::command_line,
    )
}

fn simulate_leaderless(
    cfg: LeaderlessConfig,
    seeds: Option<RangeInclusive<u64>>,
) -> anyhow::Result<()> {
    let what = format!("topology leaderless, faults {}", cfg.faults);
    simulate_with(
        cfg,
        seeds,
        &what,
        |c, seed| LeaderlessConfig { seed, ..c.clone() },
        |c| c.seed,
        replidb_sim::leaderless::run,
        LeaderlessConfig::command_line,
    )
}

/// One run of `cfg` (its story, or the failing invariants and how to
/// replay them), or a soak over `seeds` (failing seeds only, a summary
/// line naming `what` ran, and each failing seed's replay command). The
/// same for every topology.
fn simulate_with<C>(
    cfg: C,
    seeds: Option<RangeInclusive<u64>>,
    what: &str,
    with_seed: impl Fn(&C, u64) -> C,
    seed_of: impl Fn(&C) -> u64,
    run: impl Fn(&C) -> Result<replidb_sim::SimReport, replidb_sim::SimError>,
    command_line: impl Fn(&C) -> String,
) -> anyhow::Result<()> {
    let Some(seeds) = seeds else {
        let report = run(&cfg)?;
        crate::output::text(&report.output)?;
        if report.passed() {
            return Ok(());
        }
        anyhow::bail!(
            "invariant violated with seed {}; reproduce with: {}",
            seed_of(&cfg),
            command_line(&cfg)
        );
    };
    let (first, last) = (*seeds.start(), *seeds.end());
    let soak = replidb_sim::soak(
        seeds,
        |seed| with_seed(&cfg, seed),
        &run,
        &command_line,
        |r| {
            if !r.passed() {
                // A closed stdout fails the command at the summary below.
                let _ = crate::output::line(&format!(
                    "seed {}: FAIL: {}",
                    r.seed,
                    r.failures.join("; ")
                ));
            }
        },
    )?;
    crate::output::line(&format!(
        "seeds {first}..{last} ({what}): {}, {} failed",
        count_s(soak.runs, "run"),
        soak.failed.len()
    ))?;
    if soak.failed.is_empty() {
        return Ok(());
    }
    for (_, _, cmd) in &soak.failed {
        crate::output::line(&format!("reproduce with: {cmd}"))?;
    }
    anyhow::bail!(
        "{} of {} failed",
        soak.failed.len(),
        count_s(soak.runs, "seed")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges() {
        assert_eq!(parse_seed_range("1..10000").unwrap(), 1..=10000);
        assert_eq!(parse_seed_range("3..=5").unwrap(), 3..=5);
        assert_eq!(parse_seed_range("7").unwrap(), 7..=7);
        let reversed = parse_seed_range("5..1").unwrap_err();
        assert!(
            reversed.contains("reversed") && reversed.contains("1..5"),
            "{reversed}"
        );
        assert!(parse_seed_range("a..b").is_err());
    }
}
