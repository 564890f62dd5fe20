//! Failover with real processes and a real etcd: leases, elections, fencing,
//! rewind, switchover, and the static coordinator's manual promote.
//!
//! etcd is Debian's `etcd-server` (installed by the README's test command);
//! each test starts its own on free loopback ports with a short election
//! timeout, so a 1 s lease TTL is allowed (etcd's minimum TTL is 1.5 × its
//! election timeout).

mod common;

use common::signal;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{wait_for, wait_until, Node};
use serde_json::Value;

/// Failover tests run one at a time: each runs etcd and three nodes, and
/// several at once on two cores starve etcd past the 1 s lease TTL — which
/// replidb rightly treats as a lost leader, but it is not what a test means
/// to exercise.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Write `key` to whichever node leads now, retrying (through elections)
/// until a 200; returns the answer.
async fn put_to_leader(nodes: &[Node], key: &str, query: &str, value: &str) -> Value {
    let http = common::http();
    wait_for(
        &format!("a leader accepts {key}"),
        Duration::from_secs(20),
        async || {
            for n in nodes {
                let url = n.at(&format!("/v1/kv/{key}?{query}"));
                if let Ok(r) = http.put(&url).body(value.to_string()).send().await {
                    if r.status() == 200 {
                        return r.json::<Value>().await.ok();
                    }
                }
            }
            None
        },
    )
    .await
}

fn etcd_args(etcd: &Etcd, cluster: &str) -> Vec<String> {
    [
        "--coordinator",
        "etcd",
        "--etcd",
        &etcd.url,
        "--cluster",
        cluster,
        "--backoff-base",
        "50ms",
        "--backoff-max",
        "500ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn start_etcd_cluster(etcd: &Etcd, cluster: &str, n: usize) -> Vec<Node> {
    let args = etcd_args(etcd, cluster);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut nodes = Vec::new();
    for i in 1..=n {
        nodes.push(Node::start(&format!("n{i}"), &args).await);
        if i == 1 {
            // The first node elects itself before the others register, so
            // the test knows who leads at the start.
            wait_leader(&nodes, Duration::from_secs(10)).await;
        }
    }
    let leader = wait_leader(&nodes, Duration::from_secs(10)).await;
    wait_followers_streaming(&nodes[leader], n - 1).await;
    nodes
}

/// How long after `killed_at` a `w=majority` write is first acknowledged
/// by one of `survivors` (each try may wait 200 ms for the majority).
async fn first_majority_write(
    nodes: &[Node],
    survivors: &[usize],
    key: &str,
    killed_at: Instant,
) -> Duration {
    let http = common::http();
    wait_until(
        "a survivor acknowledges a w=majority write",
        Duration::from_secs(15),
        async || {
            for &i in survivors {
                let url = nodes[i].at(&format!("/v1/kv/{key}?w=majority&timeout_ms=200"));
                if matches!(http.put(&url).body("p").send().await, Ok(r) if r.status() == 200) {
                    return true;
                }
            }
            false
        },
    )
    .await;
    killed_at.elapsed()
}

/// Leases the coordinators of `members` revoked because a leader's
/// process was gone.
async fn leases_revoked(nodes: &[Node], members: &[usize]) -> u64 {
    let mut n = 0;
    for &i in members {
        n += nodes[i].status().await["coordinator"]["state"]["leases_revoked"]
            .as_u64()
            .unwrap_or(0);
    }
    n
}

/// Index (among `candidates`) of a node that says it leads and accepts
/// writes.
async fn wait_leader_among(nodes: &[Node], candidates: &[usize], timeout: Duration) -> usize {
    wait_for("a new leader", timeout, async || {
        for &i in candidates {
            if let Some(s) = nodes[i].try_status().await {
                if s["role"] == "leader" && s["writable"] == true {
                    return Some(i);
                }
            }
        }
        None
    })
    .await
}

/// Index of the node that says it leads and accepts writes.
async fn wait_leader(nodes: &[Node], timeout: Duration) -> usize {
    wait_for("a writable leader", timeout, async || {
        for (i, n) in nodes.iter().enumerate() {
            if let Some(s) = n.try_status().await {
                if s["role"] == "leader" && s["writable"] == true {
                    return Some(i);
                }
            }
        }
        None
    })
    .await
}

/// The arguments of a static follower of `leader`, reconnecting fast.
fn follower_args(leader: &Node) -> Vec<String> {
    [
        "--follow",
        &leader.url(),
        "--backoff-base",
        "50ms",
        "--backoff-max",
        "500ms",
    ]
    .map(String::from)
    .to_vec()
}

/// A static cluster: n1 leads, n2 and n3 follow it and stream.
async fn static_trio() -> (Node, Node, Node) {
    let leader = Node::start("n1", &[]).await;
    let args = follower_args(&leader);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let f1 = Node::start("n2", &args).await;
    let f2 = Node::start("n3", &args).await;
    wait_followers_streaming(&leader, 2).await;
    (leader, f1, f2)
}

/// Wait until `node` is a follower in `epoch`.
async fn wait_follower_in_epoch(node: &Node, epoch: u64, what: &str, within: Duration) {
    wait_until(what, within, async || {
        node.try_status()
            .await
            .is_some_and(|s| s["role"] == "follower" && s["epoch"] == epoch)
    })
    .await;
}

/// Wait until `follower` has `voter` in its voting set (heartbeats carry
/// the member list a promoted follower announces to and counts).
async fn wait_voter_known(follower: &Node, voter: &Node) {
    wait_until(
        "a follower learned of another",
        Duration::from_secs(5),
        async || {
            follower
                .try_status()
                .await
                .is_some_and(|s| s["voting_set"].to_string().contains(&voter.url()))
        },
    )
    .await;
}

/// Wait until `follower` streams from `leader`.
async fn wait_streams_from(follower: &Node, leader: &Node, what: &str) {
    wait_until(what, Duration::from_secs(10), async || {
        follower
            .try_status()
            .await
            .is_some_and(|s| s["leader"] == leader.url().as_str() && s["connected"] == true)
    })
    .await;
}

/// `POST /admin/switchover {"to": to}` on `leader`, expecting 200.
async fn switch_over(leader: &Node, to: &str) -> Value {
    let r = leader
        .http()
        .post(leader.at("/admin/switchover"))
        .json(&serde_json::json!({ "to": to }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap_or_default();
    assert_eq!(status, 200, "{body}");
    body
}

async fn wait_followers_streaming(leader: &Node, n: usize) {
    wait_until(
        &format!("{n} followers streaming"),
        Duration::from_secs(20),
        async || {
            let Some(s) = leader.try_status().await else {
                return false;
            };
            s["followers"]
                .as_array()
                .map(|f| f.iter().filter(|x| x["state"] == "streaming").count() >= n)
                .unwrap_or(false)
        },
    )
    .await;
}

/// Writers that keep writing unique keys to whichever node leads, and
/// record every write acknowledged as committed.
struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(urls: Vec<String>, w: &'static str, writers: usize) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let tasks = (0..writers)
            .map(|t| {
                let (stop, acked, urls) = (stop.clone(), acked.clone(), urls.clone());
                tokio::spawn(async move {
                    let http = common::http_builder()
                        .redirect(reqwest::redirect::Policy::none())
                        .timeout(Duration::from_secs(3))
                        .build()
                        .expect("client");
                    let mut target = 0usize;
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let key = format!("load-{t}-{i}");
                        let value = format!("v{t}-{i}");
                        let url = format!("{}/v1/kv/{key}?w={w}&timeout_ms=1000", urls[target]);
                        match http.put(&url).body(value.clone()).send().await {
                            Ok(r) if r.status() == 200 => {
                                let v: Value = r.json().await.unwrap_or_default();
                                if v["committed"] == true {
                                    acked.lock().unwrap().insert(key, value);
                                }
                                i += 1;
                            }
                            _ => {
                                // Not the leader (307/503), dead, or timed
                                // out: try the next node. A write that
                                // timed out is not counted as acknowledged.
                                target = (target + 1) % urls.len();
                                i += 1;
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Load { stop, acked, tasks }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn finish(self) -> BTreeMap<String, String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

async fn assert_has_all(node: &Node, acked: &BTreeMap<String, String>) {
    for (k, v) in acked {
        let (status, body) = node.get_raw(k, "").await;
        assert_eq!(status, 200, "acknowledged write {k} missing on {}", node.id);
        assert_eq!(
            String::from_utf8_lossy(&body),
            *v,
            "value of {k} on {}",
            node.id
        );
    }
}

async fn wait_all_converged(nodes: &[Node]) {
    wait_until(
        "all nodes have equal digests",
        Duration::from_secs(30),
        async || {
            let mut digests = Vec::new();
            for n in nodes {
                match n.try_status().await {
                    Some(_) => digests.push(n.digest().await),
                    None => return false,
                }
            }
            digests.windows(2).all(|w| w[0] == w[1])
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_leader_under_majority_load_loses_no_acknowledged_write() {
    let _serial = SERIAL.lock().await;
    let etcd = Etcd::start().await;
    let mut nodes = start_etcd_cluster(&etcd, "majority", 3).await;
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let load = Load::start(urls, "majority", 4);
    wait_until(
        "some writes acknowledged",
        Duration::from_secs(10),
        async || load.count() > 50,
    )
    .await;
    let old = wait_leader(&nodes, Duration::from_secs(1)).await;
    nodes[old].kill9();
    let killed_at = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = wait_leader_among(&nodes, &survivors, Duration::from_secs(10)).await;
    eprintln!(
        "new leader {} after {:?}",
        nodes[new].id,
        killed_at.elapsed()
    );
    let before = load.count();
    wait_until(
        "writes continue on the new leader",
        Duration::from_secs(10),
        async || load.count() > before + 50,
    )
    .await;
    let acked = load.finish().await;
    assert_has_all(&nodes[new], &acked).await;
    nodes[old].restart().await;
    wait_all_converged(&nodes).await;
    let s = nodes[old].status().await;
    assert_eq!(
        s["role"], "follower",
        "the old leader must come back as a follower"
    );
}

/// The failover target: after a leader's `kill -9`, the first
/// `w=majority` write on a survivor is acknowledged within 1.5 s, because
/// the followers see its port refuse connections and revoke its lease
/// instead of waiting for the lease to expire; and every acknowledged
/// write survives. Three kills, at different points of the lease's
/// keep-alive cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_is_replaced_within_a_second_and_a_half() {
    let _serial = SERIAL.lock().await;
    let etcd = Etcd::start().await;
    let mut nodes = start_etcd_cluster(&etcd, "revoke", 3).await;
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let load = Load::start(urls, "majority", 2);
    let mut times = Vec::new();
    for round in 0..3u64 {
        let old = wait_leader(&nodes, Duration::from_secs(15)).await;
        wait_followers_streaming(&nodes[old], 2).await;
        let before = load.count();
        wait_until(
            "writes acknowledged before the kill",
            Duration::from_secs(10),
            async || load.count() > before + 10,
        )
        .await;
        let survivors: Vec<usize> = (0..3).filter(|i| *i != old).collect();
        let revoked_before = leases_revoked(&nodes, &survivors).await;
        tokio::time::sleep(Duration::from_millis(100 + round * 330)).await;
        nodes[old].kill9();
        let killed_at = Instant::now();
        let took =
            first_majority_write(&nodes, &survivors, &format!("revoke-{round}"), killed_at).await;
        times.push(took);
        assert!(
            leases_revoked(&nodes, &survivors).await > revoked_before,
            "no survivor revoked the dead leader's lease (round {round})"
        );
        // Back as a follower; the next round waits until it streams. (No
        // digest comparison while the writers run: it would chase them.)
        nodes[old].restart().await;
    }
    eprintln!("kill -9 to the first w=majority write: {times:?}");
    for (round, t) in times.iter().enumerate() {
        assert!(
            *t <= Duration::from_millis(1500),
            "round {round}: first w=majority write {t:?} after the kill (all: {times:?})"
        );
    }
    let acked = load.finish().await;
    assert!(!acked.is_empty());
    let leader = wait_leader(&nodes, Duration::from_secs(15)).await;
    assert_has_all(&nodes[leader], &acked).await;
    wait_all_converged(&nodes).await;
}

/// Kill both followers, write at w=1 to the leader (acknowledged, on the
/// leader only), kill the leader, restart the followers: they elect a
/// leader without those writes. (Freezing the followers would not do: the
/// kernel still buffers what the leader sends, and they would apply it on
/// waking.) When the old leader returns it must rewind them
/// into its rollback file — and nothing else may differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w1_writes_lost_in_failover_land_in_the_rollback_file() {
    let _serial = SERIAL.lock().await;
    let etcd = Etcd::start().await;
    let mut nodes = start_etcd_cluster(&etcd, "rewind", 3).await;
    let old = wait_leader(&nodes, Duration::from_secs(1)).await;
    for i in 0..20 {
        nodes[old].put_q(&format!("kept-{i}"), "w=all", "x").await;
    }
    let followers: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    for &f in &followers {
        nodes[f].kill9();
    }
    let mut lost = BTreeMap::new();
    for i in 0..7 {
        let v = nodes[old]
            .put_q(&format!("lost-{i}"), "w=1", format!("gone{i}"))
            .await;
        lost.insert(v["lsn"].as_u64().unwrap(), format!("lost-{i}"));
    }
    nodes[old].kill9();
    for &f in &followers {
        nodes[f].restart().await;
    }
    let _new = wait_leader_among(&nodes, &followers, Duration::from_secs(15)).await;
    put_to_leader(&nodes, "after-failover", "w=majority", "y").await;
    nodes[old].restart().await;
    wait_all_converged(&nodes).await;
    // The lost writes are gone from every node ...
    for key in lost.values() {
        let (status, _) = nodes[old].get_raw(key, "").await;
        assert_eq!(status, 404, "{key} should have been rolled back");
    }
    // ... and recorded, every one, in the old leader's rollback file.
    let dir = nodes[old].data_dir().join("rollback");
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("rollback dir exists") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        lines.extend(
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("json line")),
        );
    }
    let rolled: BTreeMap<u64, String> = lines
        .iter()
        .map(|l| {
            (
                l["lsn"].as_u64().unwrap(),
                l["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(rolled, lost, "rollback file holds exactly the lost writes");
    let metrics = nodes[old]
        .http()
        .get(nodes[old].at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("replidb_rollback_records_total{node_id=\"") && metrics.contains("} 7"),
        "rollback counter: {metrics}"
    );
    // Everything acknowledged at w=all survived.
    for i in 0..20 {
        assert_eq!(nodes[old].get_raw(&format!("kept-{i}"), "").await.0, 200);
    }
}

/// The reliability issue's election example, with real processes and etcd:
/// the old leader's log ends at a higher LSN (unacknowledged `w=1` writes of
/// epoch 1) than the `w=majority` writes of epoch 2 that its successor got
/// acknowledged. When it returns and the epoch-2 leader dies, the election
/// must pick the member holding epoch 2 — compared by LSN alone, the old
/// leader won and the acknowledged writes ended in rollback files.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_longer_log_of_an_older_epoch_never_wins_an_election() {
    let _serial = SERIAL.lock().await;
    let etcd = Etcd::start().await;
    let mut nodes = start_etcd_cluster(&etcd, "upto", 3).await;
    let old = wait_leader(&nodes, Duration::from_secs(1)).await;
    for i in 0..5 {
        nodes[old].put_q(&format!("base-{i}"), "w=all", "x").await;
    }
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    for &f in &others {
        nodes[f].kill9();
    }
    // Inside the check-quorum window the old leader still takes w=1 writes.
    let mut tail = 0;
    for i in 0..10 {
        let r = nodes[old]
            .http()
            .put(nodes[old].at(&format!("/v1/kv/tail-{i}?w=1")))
            .body("unacked")
            .send()
            .await
            .expect("PUT reaches the old leader");
        if r.status() == 200 {
            tail += 1;
        }
    }
    assert!(tail > 0, "the old leader took no w=1 write at all");
    nodes[old].kill9();
    for &f in &others {
        nodes[f].restart().await;
    }
    let second = wait_leader_among(&nodes, &others, Duration::from_secs(15)).await;
    let mut acked = BTreeMap::new();
    for i in 0..3 {
        let key = format!("acked-{i}");
        let v = put_to_leader(&nodes, &key, "w=majority", "kept").await;
        assert_eq!(v["committed"], true, "{v}");
        acked.insert(key, "kept".to_string());
    }
    nodes[second].kill9();
    nodes[old].restart().await;
    let third = others.iter().copied().find(|i| *i != second).unwrap();
    let winner = wait_leader(&nodes, Duration::from_secs(20)).await;
    assert_eq!(
        winner, third,
        "the member holding epoch 2 must win, not the longer epoch-1 log"
    );
    nodes[second].restart().await;
    wait_all_converged(&nodes).await;
    for n in &nodes {
        assert_has_all(n, &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_leader_is_replaced_and_refuses_writes_when_it_wakes() {
    let _serial = SERIAL.lock().await;
    let etcd = Etcd::start().await;
    let nodes = start_etcd_cluster(&etcd, "freeze", 3).await;
    let old = wait_leader(&nodes, Duration::from_secs(1)).await;
    let old_epoch = nodes[old].status().await["epoch"].as_u64().unwrap();
    signal(&nodes[old], libc::SIGSTOP);
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = wait_leader_among(&nodes, &others, Duration::from_secs(15)).await;
    let s = nodes[new].status().await;
    assert!(
        s["epoch"].as_u64().unwrap() > old_epoch,
        "new epoch is higher"
    );
    signal(&nodes[old], libc::SIGCONT);
    // The moment it wakes, its lease is long gone: it must refuse writes.
    let r = nodes[old]
        .http()
        .put(nodes[old].at("/v1/kv/late"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 200, "a woken stale leader accepted a write");
    wait_until(
        "the old leader steps down",
        Duration::from_secs(10),
        async || {
            nodes[old]
                .try_status()
                .await
                .is_some_and(|s| s["role"] == "follower")
        },
    )
    .await;
    put_to_leader(&nodes, "after", "w=majority", "z").await;
    wait_all_converged(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_loses_nothing_and_pauses_briefly() {
    let _serial = SERIAL.lock().await;
    let etcd = Etcd::start().await;
    let nodes = start_etcd_cluster(&etcd, "switch", 3).await;
    let old = wait_leader(&nodes, Duration::from_secs(1)).await;
    let target = (old + 1) % 3;
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let load = Load::start(urls, "1", 4);
    wait_until("some writes", Duration::from_secs(10), async || {
        load.count() > 50
    })
    .await;
    let r = nodes[old]
        .http()
        .post(nodes[old].at("/admin/switchover"))
        .json(&serde_json::json!({"to": nodes[target].id}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "switchover: {body}");
    assert!(body["write_pause_ms"].as_u64().unwrap() < 5000, "{body}");
    let new = wait_leader(&nodes, Duration::from_secs(10)).await;
    assert_eq!(new, target);
    let before = load.count();
    wait_until("writes continue", Duration::from_secs(10), async || {
        load.count() > before + 50
    })
    .await;
    let acked = load.finish().await;
    // w=1 writes acknowledged by the old leader all survived: a switchover
    // waits for the target to hold everything.
    assert_has_all(&nodes[target], &acked).await;
    wait_all_converged(&nodes).await;
    let rollback = nodes[old].data_dir().join("rollback");
    assert!(
        !rollback.exists(),
        "a switchover must not roll anything back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failovers_in_a_row_keep_converging() {
    let _serial = SERIAL.lock().await;
    let etcd = Etcd::start().await;
    let mut nodes = start_etcd_cluster(&etcd, "five", 3).await;
    let mut times = Vec::new();
    let mut acked = BTreeMap::new();
    for round in 0..5 {
        for i in 0..10 {
            let key = format!("r{round}-{i}");
            put_to_leader(&nodes, &key, "w=majority", &key).await;
            acked.insert(key.clone(), key);
        }
        let leader = wait_leader(&nodes, Duration::from_secs(15)).await;
        nodes[leader].kill9();
        let t = Instant::now();
        let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
        let new = wait_leader_among(&nodes, &others, Duration::from_secs(15)).await;
        // The new leader must also take a w=majority write.
        let http = nodes[new].http().clone();
        let url = nodes[new].at(&format!("/v1/kv/probe{round}?w=majority&timeout_ms=300"));
        wait_until(
            "a majority write succeeds",
            Duration::from_secs(10),
            async || matches!(http.put(&url).body("p").send().await, Ok(r) if r.status() == 200),
        )
        .await;
        times.push(t.elapsed());
        // The Rust client (through the CLI), given every node with the dead
        // leader first, finds the new leader on its own.
        let urls: Vec<String> = std::iter::once(leader)
            .chain(others.iter().copied())
            .map(|i| nodes[i].url())
            .collect();
        let key = format!("cli{round}");
        let (code, out, err) = common::cli(&[
            "--url",
            &urls.join(","),
            "put",
            &key,
            "c",
            "--w",
            "majority",
        ]);
        assert_eq!(code, 0, "cli put after failover: {out} {err}");
        acked.insert(key, "c".to_string());
        nodes[leader].restart().await;
        wait_all_converged(&nodes).await;
    }
    for n in &nodes {
        assert_has_all(n, &acked).await;
    }
    eprintln!("failover times: {times:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_promote_fences_the_old_leader_when_it_returns() {
    let _serial = SERIAL.lock().await;
    let (mut leader, f1, f2) = static_trio().await;
    for i in 0..10 {
        leader.put_q(&format!("k{i}"), "w=all", "v").await;
    }
    // Heartbeats carry the peer list a promoted follower announces to.
    wait_voter_known(&f1, &f2).await;
    leader.kill9();
    let body = f1.promote().await;
    assert_eq!(body["promoted"], true, "{body}");
    assert_eq!(body["epoch"], 2);
    // n3 is told and re-points.
    wait_streams_from(&f2, &f1, "n3 follows n2").await;
    f1.put_q("after", "w=majority", "new").await;
    // The old leader returns believing it leads epoch 1 ...
    leader.restart().await;
    // ... and takes no write meanwhile: it resumed an epoch nobody
    // confirmed, so check-quorum holds writes until a majority acks it,
    // and none will. (It answered 200 under epoch 1 until the fence came,
    // and those writes went to its rollback file.)
    for i in 0..20 {
        let r = leader
            .http()
            .put(leader.at(&format!("/v1/kv/early{i}")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 200, "write {i} taken by a replaced leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ... and is fenced: it steps down, follows n2, and converges.
    wait_follower_in_epoch(&leader, 2, "old leader follows n2", Duration::from_secs(10)).await;
    let r = leader
        .http()
        .put(leader.at("/v1/kv/x"))
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307, "a fenced old leader redirects writes");
    // Streaming again, it shows no error from before (its first stream
    // may have been refused while the fence was on its way).
    wait_streams_from(&leader, &f1, "the old leader streams from n2").await;
    let s = leader.status().await;
    assert_eq!(s["last_error"], Value::Null, "{s}");
    wait_all_converged(&[leader, f1, f2]).await;
}

/// A replaced leader that its successor no longer fences: the successor
/// forgot it (it was gone), then restarted, so no announcement to it is
/// pending. The old leader comes back believing it leads epoch 1; its own
/// announcements are refused (409, stale epoch) and, before the fix, it
/// stayed a leader refusing every write for good. Now it asks its voters,
/// learns of epoch 2 and its leader, and follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_old_leader_finds_the_new_one_when_it_returns() {
    let _serial = SERIAL.lock().await;
    let (mut leader, mut f1, f2) = static_trio().await;
    leader.put_q("before", "w=all", "v").await;
    wait_voter_known(&f1, &f2).await;
    leader.kill9();
    let body = f1.promote().await;
    assert_eq!(body["promoted"], true, "{body}");
    wait_streams_from(&f2, &f1, "n3 follows n2").await;
    let r = f1
        .http()
        .post(f1.at("/admin/forget"))
        .json(&serde_json::json!({"member": leader.url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    // A restart drops the promote's announcements, the old leader's
    // among them; the new leader announces only to the voters it knows.
    // (Restarted as the leader it now is: without `--follow n1`.)
    f1.set_args(&["--backoff-base", "50ms", "--backoff-max", "500ms"]);
    f1.restart().await;
    wait_streams_from(&f2, &f1, "n3 follows the restarted n2").await;
    f1.put_q("after", "w=majority", "new").await;
    leader.restart().await;
    wait_follower_in_epoch(
        &leader,
        2,
        "the forgotten old leader follows n2",
        Duration::from_secs(15),
    )
    .await;
    wait_streams_from(&leader, &f1, "the old leader streams from n2").await;
    wait_all_converged(&[leader, f1, f2]).await;
}

/// Found by a new user: a follower pointed at an address outside the
/// voting set (a typo in `/admin/follow`, or a cut link's address) counted
/// that address as one more voter when promoted, so with its leader gone
/// a majority of three (itself and the third node) was refused as "2 of 4".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_target_outside_the_voting_set_does_not_raise_the_majority() {
    let _serial = SERIAL.lock().await;
    let (mut leader, f1, f2) = static_trio().await;
    leader.put_q("k", "w=all", "v").await;
    wait_voter_known(&f1, &f2).await;
    let r = f1
        .http()
        .post(f1.at("/admin/follow"))
        .json(&serde_json::json!({"leader": "127.0.0.1:1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    leader.kill9();
    let body = f1.promote().await;
    assert_eq!(body["promoted"], true, "{body}");
    assert_eq!(
        (&body["voters"], &body["members_answered"]),
        (&serde_json::json!(3), &serde_json::json!(2)),
        "{body}"
    );
    wait_streams_from(&f2, &f1, "n3 follows n2").await;
    f1.put_q("after", "w=majority", "new").await;
}

/// Failover timing for the README: `cargo test -p replidb --test failover
/// -- --ignored failover_timing --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn failover_timing() {
    let _serial = SERIAL.lock().await;
    let etcd = Etcd::start().await;
    let mut nodes = start_etcd_cluster(&etcd, "timing", 3).await;
    let mut times = Vec::new();
    for round in 0..12 {
        let leader = wait_leader(&nodes, Duration::from_secs(15)).await;
        wait_followers_streaming(&nodes[leader], 2).await;
        // Kill at a random point of the lease's keepalive cycle.
        tokio::time::sleep(Duration::from_millis(100 + (round * 97) % 900)).await;
        nodes[leader].kill9();
        let t = Instant::now();
        let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
        times.push(first_majority_write(&nodes, &others, &format!("t{round}"), t).await);
        nodes[leader].restart().await;
        wait_all_converged(&nodes).await;
    }
    times.sort();
    eprintln!(
        "failover to a w=majority write, {} runs: p50 {:?}, max {:?}, all {:?}",
        times.len(),
        times[times.len() / 2],
        times[times.len() - 1],
        times
    );
}

/// A follower that joined the old leader moments before a switchover is
/// unknown to the new leader: no heartbeat had yet carried its URL to the
/// other followers, so the new leader's announcement left it out. It kept
/// dialling the old leader, which answered `421 not_leader`, and never
/// found the new one (CI, `static_switchover_hands_over_without_loss`).
/// The old leader now passes the news on to every member it knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_the_new_leader_never_heard_of_is_told_by_the_old_one() {
    let _serial = SERIAL.lock().await;
    // One heartbeat when a follower connects, the next only after 30 s:
    // n2 hears of the members before n3 joins, and not again in this test.
    let leader = Node::start(
        "n1",
        &[
            "--heartbeat-interval",
            "30s",
            "--lease-ttl",
            "60s",
            "--health-max-lag",
            "60s",
        ],
    )
    .await;
    let args = follower_args(&leader);
    let f_args: Vec<&str> = args.iter().map(String::as_str).collect();
    let f1 = Node::start("n2", &f_args).await;
    wait_followers_streaming(&leader, 1).await;
    let f2 = Node::start("n3", &f_args).await;
    wait_followers_streaming(&leader, 2).await;
    leader.put_q("before", "w=all", "x").await;
    let known = f1.status().await["voting_set"].to_string();
    assert!(
        !known.contains(&f2.url()),
        "the premise: n2 must not know n3 yet, but its voting set is {known}"
    );
    switch_over(&leader, "n2").await;
    wait_streams_from(&f2, &f1, "n3 follows n2").await;
    f1.put_q("after", "w=all", "y").await;
    let nodes = [leader, f1, f2];
    wait_all_converged(&nodes).await;
}

/// After a switchover, a follower restarted with its old command line
/// (`--follow` still naming the old leader) dials a node that now follows.
/// It used to retry that node's `421 not_leader` forever; the answer now
/// names the leader, and the follower re-points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_restarted_with_the_old_leader_in_its_flags_finds_the_new_one() {
    let _serial = SERIAL.lock().await;
    let (leader, f1, mut f2) = static_trio().await;
    switch_over(&leader, "n2").await;
    wait_streams_from(&f2, &f1, "n3 follows n2").await;
    f2.restart().await;
    wait_streams_from(&f2, &f1, "restarted n3 follows n2 again").await;
    f1.put_q("after-restart", "w=all", "z").await;
    let nodes = [leader, f1, f2];
    wait_all_converged(&nodes).await;
}

/// After a switchover, nodes restarted with the command lines they were
/// first started with keep one leader. The old leader, started again
/// without `--follow`, used to lead the epoch it had handed over: two
/// leaders in epoch 2, whose logs differed at the same `(epoch, lsn)`
/// where nothing could see it, and a `w=majority` write of the real
/// leader was overwritten on every follower once they re-pointed. Now it
/// follows the leader it has on record. The leader, restarted with
/// `--follow` naming a node that follows it, follows as told: no leader
/// until an operator promotes it, never two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_with_the_original_command_lines_after_a_switchover_keep_one_leader() {
    let _serial = SERIAL.lock().await;
    let (mut n1, mut n2, n3) = static_trio().await;
    switch_over(&n1, "n2").await;
    wait_streams_from(&n1, &n2, "n1 follows n2").await;
    n1.kill9();
    n2.put_q("k1", "w=majority", "from-n2").await;
    // n1's original line has no --follow.
    n1.restart().await;
    wait_streams_from(&n1, &n2, "restarted n1 follows n2").await;
    let s = n1.status().await;
    assert_eq!(
        (s["role"].as_str(), s["epoch"].as_u64()),
        (Some("follower"), Some(2)),
        "{s}"
    );
    // n2's original line follows n1, which follows n2: no leader, but no
    // second one either; the operator promotes n2 (a majority answers and
    // none is ahead), and everyone follows it in epoch 3.
    n2.restart().await;
    let body = n2.promote().await;
    assert_eq!(
        (body["promoted"].as_bool(), body["epoch"].as_u64()),
        (Some(true), Some(3)),
        "{body}"
    );
    wait_streams_from(&n1, &n2, "n1 follows the promoted n2").await;
    wait_streams_from(&n3, &n2, "n3 follows the promoted n2").await;
    n2.put_q("k2", "w=all", "after").await;
    let nodes = [n1, n2, n3];
    wait_all_converged(&nodes).await;
    for n in &nodes {
        assert_eq!(
            n.get_raw("k1", "consistency=eventual").await,
            (200, b"from-n2".to_vec())
        );
        assert!(
            !n.data_dir().join("rollback").exists(),
            "nothing was rewound"
        );
    }
}

/// A follower told who leads (a fence or a follow) dials it at once, even
/// in the middle of a reconnect backoff: it used to wait the backoff out,
/// disconnected and serving stale reads, for up to `--backoff-max`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_told_who_leads_stops_waiting_out_its_backoff() {
    let _serial = SERIAL.lock().await;
    let mut n1 = Node::start("n1", &[]).await;
    let url = n1.url();
    let f = Node::start(
        "n2",
        &[
            "--follow",
            &url,
            "--backoff-base",
            "20s",
            "--backoff-max",
            "20s",
        ],
    )
    .await;
    wait_followers_streaming(&n1, 1).await;
    n1.kill9();
    wait_until("n2 noticed", Duration::from_secs(10), async || {
        f.try_status()
            .await
            .is_some_and(|s| s["connected"] == false)
    })
    .await;
    n1.restart().await;
    let told = Instant::now();
    let r = f
        .http()
        .post(f.at("/admin/follow"))
        .json(&serde_json::json!({ "leader": url }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_streams_from(&f, &n1, "n2 streams again").await;
    assert!(
        told.elapsed() < Duration::from_secs(5),
        "reconnected only after {:?}, the backoff",
        told.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_switchover_hands_over_without_loss() {
    let _serial = SERIAL.lock().await;
    let (leader, f1, f2) = static_trio().await;
    let mut acked = BTreeMap::new();
    for i in 0..30 {
        let key = format!("s{i}");
        leader.put_q(&key, "w=1", key.clone()).await;
        acked.insert(key.clone(), key);
    }
    // Its settings are in the body: a query parameter or an unknown field
    // is a 400, not a switchover run with the defaults (found by a new
    // user: `?timeout_ms=abc` switched over).
    for (path, body) in [
        (
            "/admin/switchover?timeout_ms=abc",
            serde_json::json!({"to": "n2"}),
        ),
        (
            "/admin/switchover",
            serde_json::json!({"to": "n2", "timeout": 1}),
        ),
    ] {
        let r = leader
            .http()
            .post(leader.at(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path} {body}");
    }
    // To the node that already leads: done, nothing handed over (it was a
    // 404 "no follower n1 is connected").
    let body = switch_over(&leader, "n1").await;
    assert_eq!(
        (&body["already_leader"], &body["write_pause_ms"]),
        (&serde_json::json!(true), &serde_json::json!(0)),
        "{body}"
    );
    assert_eq!(leader.status().await["role"], "leader");
    switch_over(&leader, "n2").await;
    let s = f1.status().await;
    assert_eq!(s["role"], "leader");
    assert_eq!(s["epoch"], 2);
    wait_until("n1 and n3 follow n2", Duration::from_secs(10), async || {
        let a = leader.try_status().await;
        let b = f2.try_status().await;
        a.is_some_and(|s| s["role"] == "follower" && s["leader"] == f1.url().as_str())
            && b.is_some_and(|s| s["leader"] == f1.url().as_str() && s["connected"] == true)
    })
    .await;
    f1.put_q("after-switch", "w=majority", "x").await;
    acked.insert("after-switch".into(), "x".into());
    let nodes = [leader, f1, f2];
    wait_all_converged(&nodes).await;
    for n in &nodes {
        assert_has_all(n, &acked).await;
    }
    assert!(!nodes[0].data_dir().join("rollback").exists());
}

/// A loopback TCP proxy in front of `target` that holds any client chunk
/// carrying `POST /admin/fence` for `hold` before passing it on: a slow
/// link to that node, for the one message a promote sends it. Returns its
/// port; it runs until the test ends.
async fn fence_delaying_proxy(target: u16, hold: Duration) -> u16 {
    fence_proxy(target, Some(hold)).await
}

/// A link to `target` that cuts every `POST /admin/fence` (the connection
/// closes unanswered) and passes everything else.
async fn fence_dropping_proxy(target: u16) -> u16 {
    fence_proxy(target, None).await
}

/// A link to `target` that holds each `POST /admin/fence` for `hold`, or
/// with `None` cuts it.
async fn fence_proxy(target: u16, hold: Option<Duration>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if buf[..n].windows(17).any(|w| w == b"POST /admin/fence") {
                        match hold {
                            Some(hold) => tokio::time::sleep(hold).await,
                            None => break,
                        }
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = sw.shutdown().await;
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
                let _ = cw.shutdown().await;
            });
        }
    });
    port
}

/// Found by a new user: `POST /admin/promote` on a follower while the
/// leader was alive lost `w=majority` writes. The promote compared log
/// positions, then led; the other follower, not yet told, went on
/// acknowledging the old leader, which with it still had a majority, so
/// writes were acknowledged that the new leader never had, and were
/// rewound everywhere. Here the old leader and the third node are reached
/// only through links that hold a fence for 1.5 s, and clients write at
/// `w=majority` throughout. Now a promote records the new epoch first (the
/// writer then refuses the old leader's stream), fences a majority and
/// waits for it, then compares positions again; a node found ahead is
/// named (409) and promoted instead. No acknowledged write may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promote_while_the_leader_writes_loses_no_majority_write() {
    let _serial = SERIAL.lock().await;
    let hold = Duration::from_millis(1500);
    let (p1, p3) = (common::free_port(), common::free_port());
    let (x1, x3) = (
        fence_delaying_proxy(p1, hold).await,
        fence_delaying_proxy(p3, hold).await,
    );
    let via = |port: u16| format!("http://127.0.0.1:{port}");
    let backoff = ["--backoff-base", "50ms", "--backoff-max", "500ms"];
    let n1 = Node::start_on("n1", p1, &["--advertise-url", &via(x1)]).await;
    let follow = via(x1);
    let mut f_args = vec!["--follow", follow.as_str()];
    f_args.extend(backoff);
    let n2 = Node::start("n2", &f_args).await;
    let adv3 = via(x3);
    let mut n3_args = f_args.clone();
    n3_args.extend(["--advertise-url", adv3.as_str()]);
    let n3 = Node::start_on("n3", p3, &n3_args).await;
    wait_followers_streaming(&n1, 2).await;
    n1.put_q("before", "w=all", "v").await;
    // n2 counts n3 (by the address n3 advertises) among the voters.
    wait_until("n2 learned of n3", Duration::from_secs(5), async || {
        n2.try_status()
            .await
            .is_some_and(|s| s["voting_set"].to_string().contains(&adv3))
    })
    .await;

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let (acked, stop, url) = (acked.clone(), stop.clone(), n1.url());
        writers.push(tokio::spawn(async move {
            let http = common::http();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let key = format!("w{w}-{i}");
                i += 1;
                let r = http
                    .put(format!("{url}/v1/kv/{key}?w=majority&timeout_ms=1000"))
                    .body("v")
                    .send()
                    .await;
                let Ok(r) = r else { continue };
                if r.status() != 200 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let body: Value = r.json().await.unwrap_or_default();
                if body["committed"] == true {
                    acked.lock().unwrap().push(key);
                }
                // Now and then the followers catch up, and a promote's
                // first comparison can pass.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Promote n2; a 409 names a node holding more (by the address it
    // advertises): promote that one.
    let nodes = [(&n1, via(x1)), (&n2, n2.url()), (&n3, adv3.clone())];
    let mut target = &n2;
    let mut promoted = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let r = target
            .http()
            .post(target.at("/admin/promote"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or_default();
        if status == 200 && body["promoted"] == true {
            promoted = Some(target);
            break;
        }
        let named = body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        eprintln!("promote on {}: {status} {body}", target.url());
        if status == 200 {
            // "Already the leader": the old leader, named while the fence
            // of the epoch it loses was still held up. A promote elsewhere
            // fences it again.
            target = &n2;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        // A 409 names the node ahead ("promote URL" once an epoch is
        // fenced, "URL holds a later log position ...; promote it instead"
        // before): promote that one. It may be the old leader: once fenced
        // it keeps the writes it appended after the others took the new
        // epoch (never acknowledged: no majority held them), so it is
        // ahead of every follower, and a promote anywhere else is refused
        // rather than rewind it.
        if status == 409 {
            if let Some((n, _)) = nodes.iter().find(|(_, adv)| {
                named.ends_with(&format!("promote {adv}"))
                    || (named.starts_with(&format!("{adv} holds a later"))
                        && named.ends_with("promote it instead"))
            }) {
                if !std::ptr::eq(*n, target) {
                    target = n;
                    continue;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        let _ = w.await;
    }
    let leader = promoted.expect("some node was promoted");
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty(), "no write was acknowledged");
    // Every acknowledged write is on the new leader.
    let mut lost = Vec::new();
    for key in &acked {
        let (status, _) = leader.get_raw(key, "consistency=leader").await;
        if status != 200 {
            lost.push(key.clone());
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged w=majority writes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}

/// Two operators promote two followers at once after the leader died.
/// Both see the same positions and stand for the same new epoch, and each
/// fences the other. Before, each candidate, having recorded that epoch
/// with nobody leading it, took the other's fence as a new leader's and
/// re-pointed, so each counted the other as a member that took its epoch
/// and both led it: two leaders in one epoch, both accepting writes. Now a
/// candidate refuses a fence within the epoch it stands for (503, as a
/// Raft candidate refuses its vote to another of the same term), so at
/// most one wins a majority; a retried promote then succeeds. The two
/// followers reach each other only through links that hold a fence for
/// 1 s, so both are candidates before either fence lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_promotes_never_both_lead_one_epoch() {
    concurrent_promotes(true).await;
}

/// The same with the old leader alive (found in review): both fences of
/// the new epoch reach it at once, and it followed the first, then the
/// second, answering both with "following you", so each candidate counted
/// it and both led. Now a member already following a leader of an epoch
/// keeps it (one vote per epoch) and answers with whom it follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_promotes_cannot_both_count_the_old_leader() {
    concurrent_promotes(false).await;
}

/// How the two candidates reach each other in [`concurrent_promotes`].
#[derive(Clone, Copy, PartialEq)]
enum Link {
    /// A fence is held for a second: both stand before either lands.
    Slow,
    /// A fence never arrives: neither learns of the other's candidacy,
    /// and only the old leader, fenced by both, can tell them apart.
    Cut,
}

/// The old leader alive, and the candidates unable to fence each other:
/// each counts itself and the old leader, a majority of 3, unless the old
/// leader's answer goes to one of them only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_leader_takes_only_one_of_two_promotes_of_an_epoch() {
    concurrent_promotes_over(false, Link::Cut).await;
}

async fn concurrent_promotes(kill_old_leader: bool) {
    concurrent_promotes_over(kill_old_leader, Link::Slow).await;
}

async fn concurrent_promotes_over(kill_old_leader: bool, link: Link) {
    let _serial = SERIAL.lock().await;
    let hold = Duration::from_millis(1000);
    let (p2, p3) = (common::free_port(), common::free_port());
    let (x2, x3) = match link {
        Link::Slow => (
            fence_delaying_proxy(p2, hold).await,
            fence_delaying_proxy(p3, hold).await,
        ),
        Link::Cut => (
            fence_dropping_proxy(p2).await,
            fence_dropping_proxy(p3).await,
        ),
    };
    let via = |port: u16| format!("http://127.0.0.1:{port}");
    let mut n1 = Node::start("n1", &[]).await;
    let follow = n1.url();
    let (adv2, adv3) = (via(x2), via(x3));
    let n2 = Node::start_on("n2", p2, &["--follow", &follow, "--advertise-url", &adv2]).await;
    let n3 = Node::start_on("n3", p3, &["--follow", &follow, "--advertise-url", &adv3]).await;
    wait_followers_streaming(&n1, 2).await;
    n1.put_q("before", "w=all", "v").await;
    for (n, other) in [(&n2, &adv3), (&n3, &adv2)] {
        wait_until(
            "each follower knows the other",
            Duration::from_secs(5),
            async || {
                n.try_status()
                    .await
                    .is_some_and(|s| s["voting_set"].to_string().contains(other.as_str()))
            },
        )
        .await;
    }
    let epoch = n2.status().await["epoch"].as_u64().unwrap();
    if kill_old_leader {
        n1.kill9();
    }

    let promote = |n: &Node| {
        let (http, url) = (n.http().clone(), n.at("/admin/promote"));
        async move {
            let r = http.post(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or_default())
        }
    };
    let ((s2, b2), (s3, b3)) = tokio::join!(promote(&n2), promote(&n3));
    eprintln!("n2: {s2} {b2}\nn3: {s3} {b3}");
    let won = [(s2, &b2), (s3, &b3)]
        .iter()
        .filter(|(s, b)| *s == 200 && b["promoted"] == true)
        .count();
    assert!(won <= 1, "both promotes won: n2 {b2}, n3 {b3}");
    // Nobody else leads the epoch either (a lost promote must not lead
    // later by itself).
    let leaders_of = |e: u64| {
        let nodes = [&n1, &n2, &n3];
        async move {
            let mut leaders = 0;
            for n in nodes {
                // The old leader answers only when it was left alive.
                let Some(s) = n.try_status().await else {
                    continue;
                };
                if s["role"] == "leader" && s["epoch"].as_u64() == Some(e) {
                    leaders += 1;
                }
            }
            leaders
        }
    };
    assert!(
        leaders_of(epoch + 1).await <= 1,
        "two leaders of epoch {}",
        epoch + 1
    );

    if link == Link::Cut {
        // The candidates cannot reach each other's fence, so the loser is
        // told of the winner only when the link heals; the old leader
        // follows the winner meanwhile.
        assert_eq!(won, 1, "the old leader's answer made one majority");
        let winner = if s2 == 200 { &n2 } else { &n3 };
        let e = winner.status().await["epoch"].as_u64().unwrap();
        assert_eq!(leaders_of(e).await, 1);
        wait_until(
            "the old leader follows the winner",
            Duration::from_secs(10),
            async || {
                let s = n1.status().await;
                s["role"] == "follower" && s["epoch"].as_u64() == Some(e)
            },
        )
        .await;
        return;
    }

    // A retried promote on one of them leads, and the other follows it.
    let leader = wait_for("a promote succeeds", Duration::from_secs(15), async || {
        for n in [&n2, &n3] {
            if n.status().await["role"] == "leader" {
                return Some(n);
            }
        }
        let (s, b) = promote(&n2).await;
        eprintln!("retry on n2: {s} {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        None
    })
    .await;
    let other = if std::ptr::eq(leader, &n2) { &n3 } else { &n2 };
    wait_until(
        "the other follows the leader",
        Duration::from_secs(10),
        async || {
            let s = other.status().await;
            s["role"] == "follower" && s["epoch"] == leader.status().await["epoch"]
        },
    )
    .await;
    let e = leader.status().await["epoch"].as_u64().unwrap();
    assert_eq!(leaders_of(e).await, 1);
    leader.put_q("after", "w=majority", "v").await;
    if !kill_old_leader {
        wait_until(
            "the old leader follows",
            Duration::from_secs(10),
            async || {
                let s = n1.status().await;
                s["role"] == "follower" && s["epoch"].as_u64() == Some(e)
            },
        )
        .await;
    }
}

/// Found by a new user: `force=true` skipped the position comparison as
/// well as the majority, so a forced promote of a node that had missed
/// writes (here: it was down while they were made; in the report, it was
/// resyncing at position 0) led behind a member that had answered with
/// them, and that member rewound every one of them into `rollback/`. Now
/// `force` stands in only for members that do not answer: one that
/// answers with a later position is named (409), as without `force`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_promote_does_not_lead_behind_a_member_that_answered() {
    let _serial = SERIAL.lock().await;
    let mut n1 = Node::start("n1", &[]).await;
    let follow = n1.url();
    let n2 = Node::start("n2", &["--follow", &follow]).await;
    let mut n3 = Node::start("n3", &["--follow", &follow]).await;
    wait_followers_streaming(&n1, 2).await;
    n1.put_q("before", "w=all", "v").await;
    let n2_url = n2.url();
    wait_until("n3 learned of n2", Duration::from_secs(5), async || {
        n3.try_status()
            .await
            .is_some_and(|s| s["voting_set"].to_string().contains(&n2_url))
    })
    .await;
    n3.kill9();
    for i in 0..20 {
        n1.put_q(&format!("k{i}"), "w=majority", "v").await;
    }
    n1.kill9();
    n3.restart().await;

    let forced = |n: &Node| {
        let (http, url) = (n.http().clone(), n.at("/admin/promote?force=true"));
        async move {
            let r = http.post(url).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or_default(),
            )
        }
    };
    let (status, body) = forced(&n3).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_most_up_to_date", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains(&n2.url()),
        "names the member ahead: {body}"
    );
    assert_ne!(n3.status().await["role"], "leader");

    // The member named leads, forced (the old leader is gone), with every
    // write.
    let (status, body) = forced(&n2).await;
    assert_eq!(status, 200, "{body}");
    for i in 0..20 {
        assert_eq!(
            n2.get_raw(&format!("k{i}"), "consistency=leader").await.0,
            200,
            "k{i} survived"
        );
    }
}
