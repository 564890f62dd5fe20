//! Crash safety (DESIGN.md invariants 1 and 6): SIGKILL a node at a random
//! moment under concurrent write load, restart it on the same data
//! directory, and check that
//! - every write acknowledged with 200 is there, with its exact value and
//!   the LSN it was acknowledged with;
//! - nothing is there that no client wrote (no garbage, no phantom);
//! - state recovered once never goes backwards after a later crash (the
//!   kill is a process crash: the page cache survives it);
//! - the log is gapless: every key is written exactly once, so the table
//!   holds exactly `applied_lsn` keys, and the next write gets
//!   `applied_lsn + 1`.
//!
//! The schedule (kill moments, value sizes) comes from a seeded RNG; the
//! seed is printed, and `REPLIDB_CRASH_SEED=<seed>` replays it (thread
//! timing still varies between runs).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::Node;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const WRITERS: usize = 8;

/// What one writer did in one round.
#[derive(Default)]
struct WriterLog {
    /// Every key it sent, with the value (acknowledged or not).
    attempted: Vec<(String, String)>,
    /// Keys answered 200 committed, with their LSN.
    acked: Vec<(String, u64)>,
}

/// Write unique keys until the node stops answering.
async fn writer(url: String, round: usize, id: usize, seed: u64) -> WriterLog {
    let http = common::http();
    let mut rng = StdRng::seed_from_u64(seed ^ ((round as u64) << 32) ^ id as u64);
    let mut log = WriterLog::default();
    for seq in 0.. {
        let key = format!("r{round:02}/w{id}/{seq:06}");
        // Values of varied size so records straddle write and segment
        // boundaries in different places.
        let pad: String = "x".repeat(rng.random_range(0..600));
        let value = format!("{seed}:{round}:{id}:{seq}:{pad}");
        log.attempted.push((key.clone(), value.clone()));
        let resp = match http
            .put(format!("{url}/v1/kv/{key}"))
            .body(value)
            .send()
            .await
        {
            Ok(r) => r,
            Err(_) => break, // killed
        };
        if resp.status() != 200 {
            // An answer that is not a success acknowledges nothing.
            break;
        }
        let Ok(body) = resp.json::<Value>().await else {
            break;
        };
        assert_eq!(body["committed"], true, "200 means committed: {body}");
        log.acked.push((key, body["lsn"].as_u64().expect("lsn")));
    }
    log
}

/// Every entry under `prefix` (a round holds far fewer than the limit).
async fn scan(node: &Node, prefix: &str) -> Vec<Value> {
    let v = node
        .get_json(&format!("/v1/kv?prefix={prefix}&limit=10000"))
        .await;
    let items = v.as_array().expect("scan answers a list").clone();
    assert!(items.len() < 10_000, "round too big for one scan");
    items
}

async fn crash_rounds(name: &str, args: &[&str], rounds: usize) {
    let seed: u64 = std::env::var("REPLIDB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{name}: seed {seed} (replay with REPLIDB_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut node = Node::start("crash", args).await;

    // key -> value, for everything any writer ever sent.
    let mut attempted: HashMap<String, String> = HashMap::new();
    // key -> lsn, for everything acknowledged.
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    // key -> (value, lsn) for everything seen after some restart.
    let mut seen: HashMap<String, (String, u64)> = HashMap::new();
    let started = Instant::now();

    for round in 0..rounds {
        let kill_after = Duration::from_millis(rng.random_range(50..=300));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|id| tokio::spawn(writer(node.url(), round, id, seed)))
            .collect();
        // The crash moment is the point of this sleep, not a wait for a
        // condition.
        tokio::time::sleep(kill_after).await;
        node.kill9();
        let mut acked_now = 0;
        for t in tasks {
            let log = t.await.expect("writer task");
            acked_now += log.acked.len();
            attempted.extend(log.attempted);
            acked.extend(log.acked);
        }

        node.restart().await;
        let status = node.status().await;
        let applied = status["applied_lsn"].as_u64().expect("applied_lsn");
        assert_eq!(
            status["last_lsn"], applied,
            "round {round}: recovered log fully applied: {status}"
        );

        // Everything present was written by a client, once, at a distinct
        // LSN within the log.
        let mut lsns = HashSet::new();
        let mut present = 0u64;
        for r in 0..=round {
            for e in scan(&node, &format!("r{r:02}/")).await {
                let key = e["key"].as_str().unwrap().to_string();
                let value = e["value"].as_str().unwrap().to_string();
                let lsn = e["lsn"].as_u64().unwrap();
                let sent = attempted
                    .get(&key)
                    .unwrap_or_else(|| panic!("round {round} (seed {seed}): phantom key {key}"));
                assert_eq!(&value, sent, "round {round} (seed {seed}): value of {key}");
                assert!(
                    lsn >= 1 && lsn <= applied,
                    "round {round}: {key} at lsn {lsn} > applied {applied}"
                );
                assert!(lsns.insert(lsn), "round {round}: lsn {lsn} used twice");
                if let Some((v, l)) = seen.get(&key) {
                    assert_eq!(
                        (v, *l),
                        (&value, lsn),
                        "round {round} (seed {seed}): {key} changed"
                    );
                }
                seen.insert(key, (value, lsn));
                present += 1;
            }
        }
        // What was seen once must still be there.
        let seen_now = seen.len() as u64;
        assert_eq!(
            present, seen_now,
            "round {round} (seed {seed}): a key recovered earlier is gone"
        );

        // Every acknowledged write is present at the LSN it was given.
        for (key, lsn) in &acked {
            let Some((_, got)) = seen.get(key) else {
                panic!(
                    "round {round} (seed {seed}): acknowledged write {key} (lsn {lsn}) lost; applied_lsn {applied}"
                );
            };
            assert_eq!(
                got, lsn,
                "round {round} (seed {seed}): {key} acknowledged at {lsn}"
            );
            assert!(*lsn <= applied);
        }

        // Gapless: one key per LSN, so the table has exactly `applied` keys.
        let digest = node.digest().await;
        assert_eq!(digest["applied_lsn"], applied, "{digest}");
        assert_eq!(
            digest["keys"].as_u64().unwrap(),
            applied,
            "round {round} (seed {seed}): {applied} records but {} keys: a hole or a double apply",
            digest["keys"]
        );
        assert_eq!(
            present + round as u64, // one probe key per earlier round
            applied,
            "round {round} (seed {seed}): keys vs LSNs"
        );
        // And the log continues right after its end.
        let w = node.put(&format!("probe/{round:02}"), "p").await;
        assert_eq!(
            w["lsn"],
            applied + 1,
            "round {round}: first write after recovery: {w}"
        );
        println!(
            "{name} round {round:2}: killed after {kill_after:?}, {acked_now} acked this round, applied_lsn {applied}, {} acked in all",
            acked.len()
        );
    }
    assert!(
        acked.len() >= rounds,
        "the load hardly ran ({} writes acknowledged in {rounds} rounds); the test proves little",
        acked.len()
    );
    println!("{name}: {rounds} rounds in {:?}", started.elapsed());
}

/// The main crash test: default settings with fsync always.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    crash_rounds("default", &["--fsync", "always"], 20).await;
}

/// The same with small WAL segments and frequent checkpoints, so crashes
/// land during segment rolls, checkpoints and WAL trimming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_during_checkpoints() {
    crash_rounds(
        "checkpointing",
        &[
            "--fsync",
            "always",
            "--wal-segment-bytes",
            "8192",
            "--checkpoint-interval",
            "50ms",
        ],
        10,
    )
    .await;
}
