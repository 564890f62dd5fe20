//! The leaderless simulation as a test: determinism, the story and the
//! table, and seeds with every fault at the four (R, W) settings (the
//! 1000-seed soak is `scripts/test.sh`, on the release build). A
//! failing seed is named with the command line that reproduces it.

use replidb_sim::leaderless::{run, run_seeds, LeaderlessConfig};
use replidb_sim::FaultMode;

fn must_pass(c: &LeaderlessConfig) -> String {
    let r = run(c).expect("run starts");
    assert!(
        r.passed(),
        "seed {} failed {:?}; reproduce with: {}\n{}",
        c.seed,
        r.failures,
        c.command_line(),
        r.output
    );
    r.output
}

fn soak(first: u64, last: u64, base: LeaderlessConfig) {
    let soak = run_seeds(&base, first..=last, |_| {}).expect("runs start");
    assert_eq!(soak.runs, last - first + 1);
    let failed: Vec<String> = soak
        .failed
        .iter()
        .map(|(seed, why, cmd)| format!("seed {seed}: {why:?}; reproduce with: {cmd}"))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn the_same_seed_prints_the_same_bytes() {
    let mut c = LeaderlessConfig::new(7);
    c.story_lines = 0;
    assert_eq!(must_pass(&c), must_pass(&c));
}

#[test]
fn different_seeds_tell_different_stories() {
    assert_ne!(
        must_pass(&LeaderlessConfig::new(1)),
        must_pass(&LeaderlessConfig::new(2))
    );
}

#[test]
fn the_report_compares_every_setting() {
    let out = must_pass(&LeaderlessConfig::new(3));
    for needle in [
        "leaderless simulation, seed 3: 3 nodes (n1 n2 n3), N=3",
        "faults   at ",
        "crash n",
        "--- R=1 W=1 ---",
        "--- R=1 W=3 ---",
        "  R  W  W+R>N  stale reads",
        "  1  1  no ",
        "  2  2  yes ",
        "  1  3  yes ",
        "ok    R=2 W=2: reads after an acknowledged write see it",
        "ok    R=1 W=3: convergence",
        "result: PASS (seed 3)",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
}

#[test]
fn without_faults_every_request_is_answered_and_fresh_reads_hold() {
    let c = LeaderlessConfig {
        faults: FaultMode::None,
        ..LeaderlessConfig::new(5)
    };
    let out = must_pass(&c);
    assert!(out.contains("100.0%"), "{out}");
}

#[test]
fn seeds_1_to_15_with_every_fault_pass() {
    soak(1, 15, LeaderlessConfig::new(0));
}

#[test]
fn five_nodes_with_sloppy_quorums_pass() {
    soak(
        1,
        6,
        LeaderlessConfig {
            nodes: 5,
            ..LeaderlessConfig::new(0)
        },
    );
}

#[test]
fn five_nodes_with_strict_quorums_pass() {
    soak(
        1,
        4,
        LeaderlessConfig {
            nodes: 5,
            strict: true,
            ..LeaderlessConfig::new(0)
        },
    );
}

#[test]
fn w_plus_r_at_most_n_does_return_stale_reads() {
    // The freshness check is not vacuous: the same requests that are
    // always fresh at W+R>N are sometimes stale at R=1, W=1.
    let stale_somewhere = (1..=5).any(|seed| {
        must_pass(&LeaderlessConfig::new(seed))
            .lines()
            .any(|l| l.starts_with("  1  1  no ") && !l.contains(" 0.0% "))
    });
    assert!(stale_somewhere, "no stale read at R=1 W=1 in seeds 1..5");
}
