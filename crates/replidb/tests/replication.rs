//! Replication end to end, real processes (a leader `n1`
//! and followers `n2`, `n3`): convergence under concurrent load, catch-up
//! after follower and leader crashes, snapshot bootstrap after WAL
//! retention, write concerns, the seed endpoints, per-request read
//! consistency on a lagging follower, write redirection and forwarding,
//! large and binary values, garbage from peers, and replication latency.
//!
//! Convergence is checked with `/internal/digest`: at equal `applied_lsn`
//! every replica's table must be identical (DESIGN.md invariant 4).

mod common;

use std::time::{Duration, Instant};

use common::{wait_for, wait_until, Cluster, Node};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Concurrent writes to the leader: `clients` tasks, `total` operations
/// over `keyspace` keys under `prefix`, about 1 in 10 a delete, values of
/// varied size. Every write must be answered 200. Returns the highest LSN.
async fn load(
    leader: &Node,
    clients: usize,
    total: usize,
    keyspace: usize,
    prefix: &str,
    seed: u64,
) -> u64 {
    load_url(&leader.url(), clients, total, keyspace, prefix, seed).await
}

async fn load_url(
    leader: &str,
    clients: usize,
    total: usize,
    keyspace: usize,
    prefix: &str,
    seed: u64,
) -> u64 {
    let per_client = total / clients;
    assert_eq!(per_client * clients, total, "total must divide evenly");
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let url = leader.to_string();
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let http = common::http();
                let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(c as u64));
                let mut max_lsn = 0;
                for i in 0..per_client {
                    let key = format!("{prefix}{:05}", rng.random_range(0..keyspace));
                    let url = format!("{url}/v1/kv/{key}");
                    let req = if rng.random_ratio(1, 10) {
                        http.delete(&url)
                    } else {
                        let pad = "v".repeat(rng.random_range(0..200));
                        http.put(&url).body(format!("{c}:{i}:{pad}"))
                    };
                    let resp = req
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("write {key}: {e}"));
                    let status = resp.status();
                    let body: Value = resp.json().await.expect("write answer");
                    assert_eq!(status, 200, "write {key}: {body}");
                    max_lsn = max_lsn.max(body["lsn"].as_u64().unwrap());
                }
                max_lsn
            })
        })
        .collect();
    let mut max_lsn = 0;
    for t in tasks {
        max_lsn = max_lsn.max(t.await.expect("load task"));
    }
    max_lsn
}

fn seed() -> u64 {
    let seed = std::env::var("REPLIDB_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (replay with REPLIDB_TEST_SEED={seed})");
    seed
}

/// POST a JSON body; (status, JSON answer).
async fn post_json(node: &Node, path: &str, body: &Value) -> (u16, Value) {
    let r = node
        .http()
        .post(node.at(path))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {text}"));
    (status, v)
}

/// GET returning (status, JSON answer or Null).
async fn get_json_any(node: &Node, path: &str) -> (u16, Value) {
    let r = node.http().get(node.at(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("header {name} missing: {:?}", r.headers()))
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_after_10k_concurrent_writes() {
    let seed = seed();
    let cluster = Cluster::start(2, &[], &[]).await;
    let started = Instant::now();
    let last = load(&cluster.leader, 16, 10_000, 2_000, "k/", seed).await;
    println!("10k writes in {:?}", started.elapsed());
    assert_eq!(last, 10_000, "one LSN per write, gapless");

    let digest = cluster.wait_converged(Duration::from_secs(30)).await;
    assert_eq!(digest["applied_lsn"], 10_000, "{digest}");
    assert!(digest["keys"].as_u64().unwrap() > 0, "{digest}");

    // The leader's view of its followers agrees.
    let s = cluster.leader.status().await;
    assert_eq!(s["commit_lsn"], 10_000, "{s}");
    let followers = s["followers"].as_array().unwrap();
    let ids: Vec<&str> = followers
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["n2", "n3"], "followers listed in id order: {s}");
    wait_until(
        "leader sees both followers fully applied",
        Duration::from_secs(10),
        async || {
            let s = cluster.leader.status().await;
            s["followers"].as_array().unwrap().iter().all(|f| {
                f["state"] == "streaming" && f["flush_lsn"] == 10_000 && f["applied_lsn"] == 10_000
            })
        },
    )
    .await;
    let s = cluster.leader.status().await;
    for f in s["followers"].as_array().unwrap() {
        for field in [
            "id",
            "addr",
            "state",
            "sent_lsn",
            "flush_lsn",
            "applied_lsn",
            "lag_records",
            "lag_ms",
            "sync",
        ] {
            assert!(f.get(field).is_some(), "follower entry lacks {field}: {f}");
        }
        assert_eq!(f["lag_records"], 0, "{f}");
    }
    // Each follower reports itself consistently.
    for f in &cluster.followers {
        wait_until(
            &format!("{} reports applied_lsn 10000", f.id),
            Duration::from_secs(5),
            async || f.status().await["applied_lsn"] == 10_000,
        )
        .await;
        let s = f.status().await;
        assert_eq!(s["role"], "follower", "{s}");
        assert_eq!(s["connected"], true, "{s}");
        let r = f.http().get(f.at("/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let h: Value = r.json().await.unwrap();
        assert_eq!(
            (h["healthy"].as_bool(), h["role"].as_str()),
            (Some(true), Some("follower")),
            "{h}"
        );
    }
    // And the same scan comes back from every node.
    let want = cluster
        .leader
        .get_json("/v1/kv?prefix=k/&limit=10000")
        .await;
    for f in &cluster.followers {
        let got = f
            .get_json("/v1/kv?prefix=k/&limit=10000&consistency=eventual")
            .await;
        assert!(got == want, "scan on {} differs from the leader's", f.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_follower_catches_up_after_restart() {
    let seed = seed();
    let mut cluster = Cluster::start(
        2,
        &[],
        &["--backoff-base", "50ms", "--backoff-max", "500ms"],
    )
    .await;
    load(&cluster.leader, 4, 400, 300, "a/", seed).await;
    cluster.wait_converged(Duration::from_secs(20)).await;

    // SIGKILL n2 in the middle of a load: it misses the rest.
    let leader_url = cluster.leader.url();
    let background = tokio::spawn(async move {
        let leader = LeaderHandle(leader_url);
        leader.load(8, 1_600, 500, "b/", seed + 1).await
    });
    let n2 = &mut cluster.followers[0];
    wait_until(
        "n2 applies some of the load",
        Duration::from_secs(20),
        async || n2.status().await["applied_lsn"].as_u64().unwrap() > 600,
    )
    .await;
    n2.kill9();
    let last = background.await.expect("load");
    assert_eq!(last, 400 + 1_600, "one LSN per write");
    // The surviving follower kept up; the killed one has missed writes.
    wait_converged_one(&cluster.leader, &cluster.followers[1]).await;
    let s = cluster.leader.status().await;
    let n2_entry = s["followers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "n2")
        .cloned();
    assert!(
        n2_entry
            .is_some_and(|f| f["state"] != "streaming" && f["flush_lsn"].as_u64().unwrap() < last),
        "the leader shows n2 behind and not streaming: {s}"
    );

    cluster.followers[0].restart().await;
    let digest = cluster.wait_converged(Duration::from_secs(30)).await;
    assert_eq!(digest["applied_lsn"], last, "{digest}");
    cluster.wait_streaming().await;

    // It keeps streaming new writes after catching up.
    let w = cluster.leader.put("after", "catch-up").await;
    let lsn = w["lsn"].as_u64().unwrap();
    let f = &cluster.followers[0];
    let (status, body) = f
        .get_raw(
            "after",
            &format!("min_lsn={lsn}&fallback=error&wait_ms=5000"),
        )
        .await;
    assert_eq!((status, body), (200, b"catch-up".to_vec()));
    cluster.wait_converged(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_under_load_restarts_and_the_cluster_converges() {
    let seed = seed();
    let mut cluster = Cluster::start(
        2,
        &[],
        &["--backoff-base", "50ms", "--backoff-max", "500ms"],
    )
    .await;
    load(&cluster.leader, 4, 200, 100, "p/", seed).await;

    // Writers that record what was acknowledged, until the leader dies.
    let url = cluster.leader.url();
    let writers: Vec<_> = (0..8)
        .map(|c| {
            let url = url.clone();
            tokio::spawn(async move {
                let http = common::http();
                let mut acked = Vec::new();
                for i in 0.. {
                    let key = format!("q/{c}/{i:05}");
                    let value = format!("{seed}:{c}:{i}");
                    let Ok(r) = http
                        .put(format!("{url}/v1/kv/{key}"))
                        .body(value.clone())
                        .send()
                        .await
                    else {
                        break;
                    };
                    if r.status() != 200 {
                        break;
                    }
                    let Ok(body) = r.json::<Value>().await else {
                        break;
                    };
                    acked.push((key, value, body["lsn"].as_u64().unwrap()));
                }
                acked
            })
        })
        .collect();
    let leader = &cluster.leader;
    wait_until(
        "the load is under way",
        Duration::from_secs(20),
        async || leader.status().await["applied_lsn"].as_u64().unwrap() > 400,
    )
    .await;
    cluster.leader.kill9();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    assert!(!acked.is_empty());

    cluster.leader.restart().await;
    cluster.wait_streaming().await;
    let digest = cluster.wait_converged(Duration::from_secs(30)).await;
    println!(
        "{} writes acknowledged before the kill; converged at {digest}",
        acked.len()
    );
    for (key, value, lsn) in &acked {
        for node in std::iter::once(&cluster.leader).chain(&cluster.followers) {
            let v = node
                .get_json(&format!("/v1/kv/{key}?format=json&consistency=eventual"))
                .await;
            assert_eq!(
                (v["value"].as_str(), v["lsn"].as_u64()),
                (Some(value.as_str()), Some(*lsn)),
                "{key} on {}",
                node.id
            );
        }
    }
    // Writes continue at the next LSN and reach everyone.
    let applied = digest["applied_lsn"].as_u64().unwrap();
    let w = cluster.leader.put_q("after-crash", "w=all", "x").await;
    assert_eq!(w["lsn"], applied + 1, "{w}");
    assert_eq!(w["acks"], 3, "{w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_killed_repeatedly_under_load_applies_each_record_once() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(
        2,
        &[
            "--wal-segment-bytes",
            "16384",
            "--checkpoint-interval",
            "200ms",
        ],
        &[
            "--backoff-base",
            "20ms",
            "--backoff-max",
            "200ms",
            "--checkpoint-interval",
            "100ms",
        ],
    )
    .await;
    let url = cluster.leader.url();
    let background = tokio::spawn(async move { load_url(&url, 8, 2_400, 300, "c/", seed).await });
    // SIGKILL n2 five times at random moments while the load runs; every
    // restart resumes from whatever it had durably written (a resent batch
    // must be skipped, never applied twice).
    for round in 0..5 {
        let pause = Duration::from_millis(rng.random_range(50..400));
        tokio::time::sleep(pause).await; // the random crash moment
        cluster.followers[0].kill9();
        cluster.followers[0].restart().await;
        println!("round {round}: killed n2 after {pause:?}, restarted");
    }
    let last = background.await.expect("load");
    assert_eq!(last, 2_400);
    let digest = cluster.wait_converged(Duration::from_secs(30)).await;
    assert_eq!(digest["applied_lsn"], last, "{digest}");
    let n2 = &cluster.followers[0];
    wait_until(
        "n2 reports the last LSN applied",
        Duration::from_secs(5),
        async || n2.status().await["applied_lsn"] == last,
    )
    .await;
}

/// A leader's URL, for loads run from a spawned task.
struct LeaderHandle(String);

impl LeaderHandle {
    async fn load(
        &self,
        clients: usize,
        total: usize,
        keyspace: usize,
        prefix: &str,
        seed: u64,
    ) -> u64 {
        load_url(&self.0, clients, total, keyspace, prefix, seed).await
    }
}

async fn wait_converged_one(leader: &Node, follower: &Node) -> Value {
    common::wait_converged(leader, std::iter::once(follower), Duration::from_secs(30)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_behind_trimmed_wal_bootstraps_from_a_snapshot() {
    let seed = seed();
    let leader_args = [
        "--wal-segment-bytes",
        "4096",
        "--wal-retention-bytes",
        "16384",
        "--checkpoint-interval",
        "100ms",
    ];
    let mut cluster = Cluster::start(
        2,
        &leader_args,
        &["--backoff-base", "50ms", "--backoff-max", "500ms"],
    )
    .await;
    load(&cluster.leader, 4, 200, 100, "s/", seed).await;
    cluster.wait_converged(Duration::from_secs(20)).await;

    let stopped_at = cluster.followers[0].status().await["flush_lsn"]
        .as_u64()
        .unwrap();
    let status = cluster.followers[0].stop().await;
    assert!(status.success(), "follower SIGTERM exit: {status}");

    // Far more than the retention limit of WAL while it is away.
    let last = load(&cluster.leader, 8, 2_000, 800, "s/", seed + 1).await;
    let first = wait_for(
        "the leader trims its WAL past the stopped follower",
        Duration::from_secs(20),
        async || {
            let s = cluster.leader.status().await;
            let first = s["first_lsn"].as_u64().expect("first_lsn in /status");
            (first > stopped_at + 1).then_some(first)
        },
    )
    .await;
    println!(
        "stopped follower at lsn {stopped_at}; leader WAL now starts at {first}, ends at {last}"
    );
    // The follower that stayed connected keeps up (it may itself have
    // needed a snapshot if it lagged more than the tiny retention limit
    // behind while the machine was busy; that is by design).
    wait_converged_one(&cluster.leader, &cluster.followers[1]).await;

    cluster.followers[0].restart().await;
    let digest = cluster.wait_converged(Duration::from_secs(30)).await;
    assert_eq!(digest["applied_lsn"], last, "{digest}");
    // The counter is bumped just after the table is switched over (which
    // is what the digest sees): wait for it rather than race it.
    let n2 = &cluster.followers[0];
    wait_until(
        "n2 reports the snapshot it installed",
        Duration::from_secs(5),
        async || {
            n2.status().await["snapshots_installed"]
                .as_u64()
                .expect("snapshots_installed in follower /status")
                >= 1
        },
    )
    .await;

    // After the snapshot it streams like any follower, and survives a
    // restart of its own (the snapshot was made durable).
    load(&cluster.leader, 4, 200, 100, "t/", seed + 2).await;
    cluster.wait_converged(Duration::from_secs(20)).await;
    cluster.followers[0].kill9();
    cluster.followers[0].restart().await;
    let put = cluster.leader.put("final", "x").await;
    let digest = cluster.wait_converged(Duration::from_secs(30)).await;
    assert_eq!(digest["applied_lsn"], put["lsn"], "{digest}");
}

/// KNOWN BUG (reported; see the report of the e2e tests): while a follower
/// installs a snapshot, its table is first emptied and then refilled in key
/// order, and reads are served from it throughout. An eventual read can
/// then answer 404 for a key the follower had already applied (and that
/// the leader never changed) — a state that is no prefix of the log — and
/// `/internal/digest` reports `applied_lsn: 0` for a non-empty table.
/// Expected: the old state keeps being served until the snapshot is
/// switched in (or reads wait / fall back while restoring).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_never_serves_a_half_installed_snapshot() {
    let leader_args = [
        "--wal-segment-bytes",
        "4096",
        "--wal-retention-bytes",
        "16384",
        "--checkpoint-interval",
        "100ms",
    ];
    // Two followers: with one stopped the leader still hears from a
    // majority, so check-quorum lets it take the load.
    let mut cluster = Cluster::start(
        2,
        &leader_args,
        &["--backoff-base", "50ms", "--backoff-max", "500ms"],
    )
    .await;
    // Keys that sort after everything written later, so a snapshot sends
    // them last; they never change after this.
    for i in 0..20 {
        cluster
            .leader
            .put(&format!("zz-stable/{i:02}"), format!("s{i}"))
            .await;
    }
    cluster.wait_converged(Duration::from_secs(20)).await;
    assert!(cluster.followers[0].stop().await.success());
    // Enough data that the snapshot takes a while to install.
    load(&cluster.leader, 8, 2_000, 2_000, "a/", 7).await;
    let stopped = 20;
    wait_until(
        "the leader trims its WAL past the stopped follower",
        Duration::from_secs(20),
        async || cluster.leader.status().await["first_lsn"].as_u64().unwrap() > stopped + 1,
    )
    .await;

    cluster.followers[0].restart().await;
    let f = &cluster.followers[0];
    let mut bad = Vec::new();
    let started = Instant::now();
    // Poll the stable keys and the digest until the snapshot is in.
    loop {
        for i in [0, 19] {
            let (status, body) = f
                .get_raw(&format!("zz-stable/{i:02}"), "consistency=eventual")
                .await;
            if status != 200 || body != format!("s{i}").into_bytes() {
                bad.push(format!(
                    "{:?}: zz-stable/{i:02} answered {status} {}",
                    started.elapsed(),
                    String::from_utf8_lossy(&body)
                ));
            }
        }
        let d = f.digest().await;
        if d["applied_lsn"] == 0 && d["keys"].as_u64().unwrap() > 0 {
            bad.push(format!("{:?}: digest {d}", started.elapsed()));
        }
        let s = f.status().await;
        if s["snapshots_installed"].as_u64().unwrap_or(0) >= 1
            && d["applied_lsn"].as_u64() >= Some(2_020)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "snapshot not installed in 30 s: {s}"
        );
    }
    cluster.wait_converged(Duration::from_secs(20)).await;
    bad.truncate(10);
    assert!(
        bad.is_empty(),
        "the follower served a half-installed snapshot (first answers shown):\n{}",
        bad.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_binary_values_and_transactions_replicate() {
    let cluster = Cluster::start(2, &[], &[]).await;
    let leader = &cluster.leader;
    // Values at the 1 MiB default limit, binary values, unicode keys.
    let big: Vec<u8> = (0..(1usize << 20))
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    for i in 0..4 {
        let mut v = big.clone();
        v[0] = i as u8;
        leader.put(&format!("big/{i}"), v).await;
    }
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    leader.put("bin", binary.clone()).await;
    leader.put("caf%C3%A9/%E2%9C%93", "unicode").await;
    // A transaction of 1000 operations is one record, applied atomically.
    let ops: Vec<Value> = (0..1000)
        .map(|i| json!({"op": "put", "key": format!("txn/{i:04}"), "value": format!("t{i}")}))
        .collect();
    let (status, t) = post_json(leader, "/v1/txn?w=all", &json!({"ops": ops})).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(
        (t["committed"].as_bool(), t["acks"].as_u64()),
        (Some(true), Some(3)),
        "{t}"
    );
    let txn_lsn = t["lsn"].as_u64().unwrap();
    let ops: Vec<Value> = (0..500)
        .map(|i| json!({"op": "delete", "key": format!("txn/{:04}", i * 2)}))
        .collect();
    let (status, t) = post_json(
        leader,
        "/v1/txn",
        &json!({"if": [{"key": "txn/0001", "lsn": txn_lsn}], "ops": ops}),
    )
    .await;
    assert_eq!(status, 200, "{t}");

    let digest = cluster.wait_converged(Duration::from_secs(30)).await;
    assert_eq!(digest["keys"], 4 + 1 + 1 + 500, "{digest}");
    for f in &cluster.followers {
        let (status, body) = f.get_raw("big/3", "consistency=eventual").await;
        assert_eq!(status, 200);
        assert_eq!(body.len(), big.len());
        assert!(
            body[0] == 3 && body[1..] == big[1..],
            "1 MiB value differs on {}",
            f.id
        );
        assert_eq!(
            f.get_raw("bin", "consistency=eventual").await,
            (200, binary.clone())
        );
        assert_eq!(
            f.get_raw("caf%C3%A9/%E2%9C%93", "consistency=eventual")
                .await,
            (200, b"unicode".to_vec())
        );
        let txn = f
            .get_json("/v1/kv?prefix=txn/&limit=10000&consistency=eventual")
            .await;
        let txn = txn.as_array().unwrap();
        assert_eq!(txn.len(), 500, "{}", f.id);
        assert!(
            txn.iter().all(|e| e["lsn"] == txn_lsn),
            "the batch shares one LSN on {}",
            f.id
        );
    }
}

/// DESIGN.md invariant 7, peer side: garbage on the replication stream,
/// in either direction, crashes no node and corrupts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_peers_crashes_no_node() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut rng = StdRng::seed_from_u64(seed());
    let mut cluster = Cluster::start(
        2,
        &[],
        &["--backoff-base", "20ms", "--backoff-max", "100ms"],
    )
    .await;
    cluster.leader.put("before", "ok").await;

    // A fake follower: the upgrade, then junk of several shapes.
    let addr = cluster
        .leader
        .url()
        .trim_start_matches("http://")
        .to_string();
    let mut payloads: Vec<Vec<u8>> = vec![
        (0..5000).map(|_| rng.random()).collect(),
        [&0xFFFF_FFFFu32.to_be_bytes()[..], b"xxxx"].concat(),
        [&8u32.to_be_bytes()[..], &[0u8; 8]].concat(), // bad checksum
        0u32.to_be_bytes().to_vec(),
        [&100u32.to_be_bytes()[..], b"abc"].concat(), // cut short
    ];
    payloads.push(Vec::new()); // upgrade, then hang up
    for payload in &payloads {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(
            b"GET /v1/replication HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: replidb-repl/1\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
        let _ = s.write_all(payload).await;
        // The leader drops the session (EOF or a reset), or waits for the
        // rest of a cut-short frame until its read timeout: no need to wait.
        let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
    }
    let w = cluster.leader.put_q("after", "w=all", "ok").await;
    assert_eq!(w["acks"], 3, "real followers unaffected: {w}");

    // A fake leader: n3 is re-pointed at a listener that answers the
    // upgrade and then sends junk, several times over (it retries).
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_url = format!("http://{}", fake.local_addr().unwrap());
    let junk: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
    let server = tokio::spawn(async move {
        for i in 0..6 {
            let (mut s, _) = fake.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: replidb-repl/1\r\n\r\n")
                .await;
            let _ = match i % 3 {
                0 => s.write_all(&junk).await,
                1 => {
                    s.write_all(&[&0xFFFF_FFFFu32.to_be_bytes()[..], &junk[..64]].concat())
                        .await
                }
                _ => {
                    s.write_all(&[&16u32.to_be_bytes()[..], &junk[..16]].concat())
                        .await
                }
            };
            let _ = s.shutdown().await;
        }
    });
    let n3 = &mut cluster.followers[1];
    n3.kill9();
    n3.set_args(&[
        "--follow",
        &fake_url,
        "--backoff-base",
        "20ms",
        "--backoff-max",
        "100ms",
    ]);
    n3.restart().await;
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("n3 keeps reconnecting to the fake leader")
        .unwrap();
    let s = n3.status().await;
    assert!(s["error_count"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(
        n3.get_raw("after", "consistency=eventual").await,
        (200, b"ok".to_vec())
    );
    // Back to the real leader: nothing was corrupted.
    let leader_url = cluster.leader.url();
    n3.set_args(&[
        "--follow",
        &leader_url,
        "--backoff-base",
        "20ms",
        "--backoff-max",
        "100ms",
    ]);
    n3.restart().await;
    cluster.leader.put("later", "ok").await;
    cluster.wait_converged(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_concerns_majority_all_and_timeouts() {
    let mut cluster = Cluster::start(
        2,
        &[],
        &["--backoff-base", "50ms", "--backoff-max", "500ms"],
    )
    .await;
    let leader = &cluster.leader;

    let w = leader.put_q("m1", "w=majority", "v").await;
    assert_eq!(w["committed"], true, "{w}");
    assert!(w["acks"].as_u64().unwrap() >= 2, "w=majority: {w}");
    assert_eq!(w["w"], "majority", "{w}");
    let w = leader.put_q("m2", "w=all", "v").await;
    assert_eq!(
        (w["committed"].as_bool(), w["acks"].as_u64()),
        (Some(true), Some(3)),
        "w=all: {w}"
    );
    let w = leader.put_q("m3", "w=3", "v").await;
    assert_eq!(
        (w["committed"].as_bool(), w["acks"].as_u64()),
        (Some(true), Some(3)),
        "w=3: {w}"
    );
    let r = leader
        .http()
        .delete(leader.at("/v1/kv/m3?w=majority"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // With both followers down a majority cannot be reached: 504 after
    // about timeout_ms, committed:false, acks:1 — and not undone.
    for f in &mut cluster.followers {
        assert!(f.stop().await.success());
    }
    let leader = &cluster.leader;
    let started = Instant::now();
    let r = leader
        .http()
        .put(leader.at("/v1/kv/lonely?w=majority&timeout_ms=300"))
        .body("alone")
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["committed"], false, "{body}");
    assert_eq!(body["acks"], 1, "{body}");
    assert!(
        body["lsn"].as_u64().is_some(),
        "the 504 still says which LSN: {body}"
    );
    assert!(
        elapsed >= Duration::from_millis(250),
        "answered before the timeout: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(1), "504 took {elapsed:?}");
    let lonely_lsn = body["lsn"].as_u64().unwrap();
    assert_eq!(
        leader.get_raw("lonely", "").await,
        (200, b"alone".to_vec()),
        "a timed-out write is not undone"
    );

    // w=all and w=2 time out the same way; txn and delete too.
    let r = leader
        .http()
        .put(leader.at("/v1/kv/x?w=all&timeout_ms=100"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let r = leader
        .http()
        .delete(leader.at("/v1/kv/x?w=2&timeout_ms=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let r = leader
        .http()
        .post(leader.at("/v1/txn?w=majority&timeout_ms=100"))
        .json(&json!({"ops": [{"op": "put", "key": "t", "value": "1"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        (b["committed"].as_bool(), b["acks"].as_u64()),
        (Some(false), Some(1)),
        "{b}"
    );

    // w=1 is unaffected.
    let started = Instant::now();
    let w = leader.put_q("single", "w=1", "ok").await;
    assert_eq!(
        (w["committed"].as_bool(), w["acks"].as_u64()),
        (Some(true), Some(1)),
        "{w}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "w=1 took {:?}",
        started.elapsed()
    );
    let w = leader.put("default-w", "ok").await;
    assert_eq!(w["committed"], true, "{w}");

    // The followers come back and receive what they missed, including the
    // write that timed out.
    for f in &mut cluster.followers {
        f.restart().await;
    }
    cluster.wait_streaming().await;
    let digest = cluster.wait_converged(Duration::from_secs(20)).await;
    assert!(digest["applied_lsn"].as_u64().unwrap() > lonely_lsn);
    for f in &cluster.followers {
        assert_eq!(
            f.get_raw("lonely", "consistency=eventual").await,
            (200, b"alone".to_vec())
        );
    }
    let w = cluster.leader.put_q("back", "w=majority", "v").await;
    assert!(w["acks"].as_u64().unwrap() >= 2, "{w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_endpoints_follower_read_repair_and_quorum() {
    // replica=1 is n2, which applies everything 300 ms late; n3 is prompt.
    let cluster = Cluster::start_with(2, &[], |i| {
        if i == 0 {
            vec!["--replication-delay".into(), "300ms".into()]
        } else {
            vec![]
        }
    })
    .await;
    let leader = &cluster.leader;

    // follower-read: 404 right after the write, the value once applied.
    let (status, w) = post_json(leader, "/write", &json!({"key": "seed/k", "value": "v1"})).await;
    assert_eq!(status, 200, "{w}");
    let acked = Instant::now();
    let lsn = w["lsn"].as_u64().expect("lsn in /write answer");
    let (status, body) = get_json_any(leader, "/follower-read?key=seed/k&replica=1").await;
    if acked.elapsed() < Duration::from_millis(200) {
        assert_eq!(
            status, 404,
            "the delayed follower cannot have it yet: {body}"
        );
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    } else {
        println!(
            "warning: too slow to observe the delayed follower's 404 ({:?})",
            acked.elapsed()
        );
    }
    let took = wait_until(
        "follower 1 serves seed/k",
        Duration::from_secs(5),
        async || {
            let (status, body) = get_json_any(leader, "/follower-read?key=seed/k&replica=1").await;
            status == 200 && body["value"] == "v1" && body["lsn"] == lsn
        },
    )
    .await;
    assert!(
        acked.elapsed() >= Duration::from_millis(250),
        "follower 1 applied the write {took:?} after it was acknowledged; its delay is 300ms"
    );
    let (status, body) = get_json_any(leader, "/follower-read?key=seed/k&replica=2").await;
    assert_eq!(
        (status, body["value"].as_str()),
        (200, Some("v1")),
        "the prompt follower: {body}"
    );
    let (status, body) = get_json_any(leader, "/follower-read?key=seed/k&replica=3").await;
    assert!(
        (400..500).contains(&status),
        "there is no replica 3: {status} {body}"
    );

    // read-with-repair: newest value at once, and the stale follower is
    // brought up to date before the answer.
    let (status, w) = post_json(
        leader,
        "/write",
        &json!({"key": "seed/r", "value": "fresh"}),
    )
    .await;
    assert_eq!(status, 200, "{w}");
    let acked = Instant::now();
    let r_lsn = w["lsn"].as_u64().unwrap();
    let v = leader.get_json("/read-with-repair?key=seed/r").await;
    let in_window = acked.elapsed() < Duration::from_millis(200);
    assert_eq!(v["value"], "fresh", "{v}");
    assert_eq!(v["lsn"], r_lsn, "{v}");
    let repaired = v["repaired"].as_array().expect("repaired list");
    if in_window {
        assert!(
            repaired.iter().any(|id| id == "n2"),
            "the lagging n2 is repaired: {v}"
        );
    }
    assert!(
        !repaired.iter().any(|id| id == "n1"),
        "the leader is not repaired: {v}"
    );
    // Right after the repair, n2 serves the key without waiting.
    let (status, body) = cluster.followers[0]
        .get_raw("seed/r", "consistency=eventual")
        .await;
    assert_eq!((status, body), (200, b"fresh".to_vec()), "n2 after repair");
    if in_window {
        assert!(
            acked.elapsed() < Duration::from_millis(300),
            "checked within the delay window"
        );
    }

    // write-with-quorum.
    let (status, q) = post_json(
        leader,
        "/write-with-quorum",
        &json!({"key": "seed/q", "value": "qv", "w": 2}),
    )
    .await;
    assert_eq!(status, 200, "{q}");
    assert_eq!(q["committed"], true, "{q}");
    assert!(q["acks"].as_u64().unwrap() >= 2, "{q}");
    let (status, q) = post_json(
        leader,
        "/write-with-quorum",
        &json!({"key": "seed/q", "value": "qv2", "w": "majority"}),
    )
    .await;
    assert_eq!((status, q["committed"].as_bool()), (200, Some(true)), "{q}");
    let v = leader.get_json("/read?key=seed/q").await;
    assert_eq!(v["value"], "qv2");

    // /read on a follower is the leader's answer.
    let (status, w) = post_json(
        leader,
        "/write",
        &json!({"key": "seed/p", "value": "proxied"}),
    )
    .await;
    assert_eq!(status, 200, "{w}");
    let v = cluster.followers[0].get_json("/read?key=seed/p").await;
    assert_eq!(v["value"], "proxied", "/read via the delayed follower: {v}");

    // The repair did not break n2's stream: it ends identical to the leader.
    cluster.wait_converged(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_consistency_on_a_lagging_follower() {
    let cluster = Cluster::start_with(2, &[], |i| {
        if i == 0 {
            vec!["--replication-delay".into(), "300ms".into()]
        } else {
            vec![]
        }
    })
    .await;
    let leader = &cluster.leader;
    let slow = &cluster.followers[0];

    let v1 = leader.put("c/k", "v1").await["lsn"].as_u64().unwrap();
    let (status, body) = slow
        .get_raw("c/k", &format!("min_lsn={v1}&wait_ms=5000"))
        .await;
    assert_eq!((status, body), (200, b"v1".to_vec()));

    // Eventual may be stale.
    let w = leader.put("c/k", "v2").await;
    let acked = Instant::now();
    let v2 = w["lsn"].as_u64().unwrap();
    let r = slow
        .http()
        .get(slow.at("/v1/kv/c/k?consistency=eventual"))
        .send()
        .await
        .unwrap();
    let in_window = acked.elapsed() < Duration::from_millis(200);
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-replidb-node"), "n2");
    assert_eq!(header(&r, "x-replidb-role"), "follower");
    let served_lsn: u64 = header(&r, "x-replidb-lsn").parse().unwrap();
    header(&r, "x-replidb-lag-ms")
        .parse::<u64>()
        .expect("lag header is a number");
    let body = r.bytes().await.unwrap();
    if in_window {
        assert_eq!(
            &body[..],
            b"v1",
            "an eventual read on the lagging follower is stale"
        );
        assert!(
            served_lsn < v2,
            "X-Replidb-Lsn shows the staleness: {served_lsn}"
        );
    } else {
        println!(
            "warning: too slow to observe the stale read ({:?})",
            acked.elapsed()
        );
        assert!(&body[..] == b"v1" || &body[..] == b"v2");
    }

    // min_lsn makes the follower wait until it has applied v2, and serve it
    // itself.
    let r = slow
        .http()
        .get(slow.at(&format!("/v1/kv/c/k?min_lsn={v2}&wait_ms=5000")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-replidb-node"),
        "n2",
        "served by the follower after waiting"
    );
    assert!(header(&r, "x-replidb-lsn").parse::<u64>().unwrap() >= v2);
    assert_eq!(&r.bytes().await.unwrap()[..], b"v2");

    // Too short a wait with fallback=error: 503 with Retry-After.
    let v3 = leader.put("c/k", "v3").await["lsn"].as_u64().unwrap();
    let acked = Instant::now();
    let r = slow
        .http()
        .get(slow.at(&format!(
            "/v1/kv/c/k?min_lsn={v3}&fallback=error&wait_ms=10"
        )))
        .send()
        .await
        .unwrap();
    if acked.elapsed() < Duration::from_millis(250) {
        assert_eq!(r.status(), 503);
        assert!(
            r.headers().get("retry-after").is_some(),
            "503 carries Retry-After: {:?}",
            r.headers()
        );
        let e: Value = r.json().await.unwrap();
        assert!(e["error"]["code"].is_string(), "{e}");
    } else {
        println!(
            "warning: too slow to observe the 503 ({:?})",
            acked.elapsed()
        );
    }
    // The same token in the header, falling back to the leader (default):
    // the leader's answer, relayed with the leader's identity.
    let v4 = leader.put("c/k", "v4").await["lsn"].as_u64().unwrap();
    let acked = Instant::now();
    let r = slow
        .http()
        .get(slow.at("/v1/kv/c/k?wait_ms=10"))
        .header("X-Replidb-Min-Lsn", v4.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    if acked.elapsed() < Duration::from_millis(250) {
        assert_eq!(
            header(&r, "x-replidb-node"),
            "n1",
            "fallback=leader is served by the leader"
        );
    }
    assert_eq!(
        &r.bytes().await.unwrap()[..],
        b"v4",
        "never older than the token"
    );

    // leader and strong consistency on a follower are the leader's state.
    for c in ["leader", "strong"] {
        leader.put("c/k", format!("v5-{c}")).await;
        let (status, body) = slow.get_raw("c/k", &format!("consistency={c}")).await;
        assert_eq!(
            (status, body),
            (200, format!("v5-{c}").into_bytes()),
            "consistency={c}"
        );
    }
    // bounded with a generous bound is served by the follower.
    let (status, _) = slow
        .get_raw("c/k", "consistency=bounded&max_staleness_ms=100000")
        .await;
    assert_eq!(status, 200, "bounded with a generous bound is served");

    // The stale read was counted.
    let metrics = slow
        .http()
        .get(slow.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("replidb_stale_reads_total"),
        "stale reads are counted:\n{metrics}"
    );

    // Writes to a follower are redirected to the leader's same path.
    let r = slow
        .http()
        .put(slow.at("/v1/kv/c/w?w=1"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(
        header(&r, "location"),
        format!("{}/v1/kv/c/w?w=1", leader.url())
    );
    let r = slow
        .http()
        .post(slow.at("/v1/txn"))
        .json(&json!({"ops": [{"op": "delete", "key": "c/k"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(header(&r, "location"), format!("{}/v1/txn", leader.url()));
    let r = slow
        .http()
        .delete(slow.at("/v1/kv/c/k"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(
        leader.get_raw("c/w", "").await.0,
        404,
        "a redirected write is not applied"
    );
    assert_eq!(
        leader.get_raw("c/k", "").await.0,
        200,
        "a redirected delete is not applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_writes_and_write_visibility_latency() {
    // n3 forwards writes instead of redirecting.
    let cluster = Cluster::start_with(2, &[], |i| {
        if i == 1 {
            vec!["--forward-writes".into()]
        } else {
            vec![]
        }
    })
    .await;
    let leader = &cluster.leader;
    let f = &cluster.followers[0];

    let fwd = &cluster.followers[1];
    let r = fwd
        .http()
        .put(fwd.at("/v1/kv/fwd"))
        .body("forwarded")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "a forwarding follower answers the write itself"
    );
    let w: Value = r.json().await.unwrap();
    assert_eq!(w["committed"], true, "{w}");
    assert_eq!(
        leader.get_raw("fwd", "").await,
        (200, b"forwarded".to_vec())
    );

    // Write → visible on a follower, 200 times, measured from the ack.
    let mut lat = Vec::with_capacity(200);
    for i in 0..200 {
        let value = format!("lat-{i}");
        leader.put(&format!("lat/{i:03}"), value.clone()).await;
        let acked = Instant::now();
        let url = f.at(&format!("/v1/kv/lat/{i:03}?consistency=eventual"));
        loop {
            let r = f.http().get(&url).send().await.unwrap();
            if r.status() == 200 {
                assert_eq!(r.bytes().await.unwrap(), value.as_bytes());
                break;
            }
            assert!(
                acked.elapsed() < Duration::from_secs(5),
                "write {i} not visible on n2 after 5 s"
            );
        }
        lat.push(acked.elapsed());
    }
    lat.sort();
    let p50 = lat[lat.len() / 2];
    let p99 = lat[lat.len() * 99 / 100];
    println!(
        "write->visible on a follower: p50 {p50:?}, p99 {p99:?}, max {:?}",
        lat[lat.len() - 1]
    );
    assert!(
        p50 < Duration::from_millis(50),
        "p50 write->visible {p50:?}"
    );
}
