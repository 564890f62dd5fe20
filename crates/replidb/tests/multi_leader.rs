//! Multi-leader with real processes on 127.0.0.1: every node writes, every
//! node converges (after concurrent writes, a partition, a restart in the
//! middle of the streams), each policy and type resolves concurrency the
//! same way everywhere, and seed 003's examples come out as it says.

mod common;
// The cuttable TCP proxy of the Jepsen-style test: it partitions a node
// from its peers without touching its process.
#[allow(dead_code)]
#[path = "jepsen_support/proxy.rs"]
mod proxy;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{free_port, start_peered, wait_peers_connected, wait_until, Node};
use proxy::{Network, Proxy};
use serde_json::{json, Value};

/// The policies every node of these tests runs: `cart:` and `names:` keys
/// keep siblings, the rest is `lww`.
const POLICIES: &str = "cart:=siblings,names:=siblings";

/// Link delay that makes two writes sent at once on two nodes concurrent:
/// neither node can have applied the other's write before it makes its own,
/// however slow the machine is to start the second request.
const LINK_DELAY: &str = "300ms";

/// Three multi-leader nodes (see [`POLICIES`]) with `extra` arguments;
/// returns once all are connected.
async fn cluster(extra: &[&str]) -> Vec<Node> {
    let mut args = vec!["--topology", "multi-leader", "--conflict-policy", POLICIES];
    args.extend_from_slice(extra);
    let nodes = start_peered(3, &args).await;
    wait_peers_connected(&nodes).await;
    nodes
}

/// Until every node has the same digest; returns it.
async fn wait_converged(nodes: &[Node]) -> String {
    let mut last = Vec::new();
    let converged = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            last.clear();
            for n in nodes {
                last.push(
                    n.digest().await["digest"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
            if last.windows(2).all(|w| w[0] == w[1]) {
                return last[0].clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    converged.unwrap_or_else(|_| panic!("nodes did not converge: {last:?}"))
}

async fn send(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get_text(n: &Node, path: &str) -> (u16, String) {
    let r = n.http().get(n.at(path)).send().await.expect("get");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_003_examples_come_out_as_the_seed_says() {
    let nodes = cluster(&["--link-delay", LINK_DELAY]).await;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);

    // Alice and Alicia written on two nodes at once: lww keeps one on every
    // node, and the other is in the conflict log.
    let (a, b) = tokio::join!(
        send(n1.http().put(n1.at("/v1/kv/user:1:name")).body("Alice")),
        send(n2.http().put(n2.at("/v1/kv/user:1:name")).body("Alicia")),
    );
    assert_eq!((a.0, b.0), (200, 200));
    assert_eq!(a.2["origin"], "n1");
    assert!(a.2["version"]["n1"].is_u64(), "{a:?}");
    wait_converged(&nodes).await;
    let kept = get_text(n3, "/v1/kv/user:1:name").await;
    assert_eq!(kept.0, 200);
    for n in &nodes {
        assert_eq!(get_text(n, "/v1/kv/user:1:name").await, kept);
    }
    let lost = if kept.1 == "Alice" { "Alicia" } else { "Alice" };
    // The node that saw the conflict logged the loser.
    let mut logged = false;
    for n in &nodes {
        let c = n.get_json("/v1/conflicts?prefix=user:").await;
        logged |= c.as_array().is_some_and(|l| {
            l.iter().any(|c| {
                c["policy"] == "lww"
                    && c["versions"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|v| v["value"] == lost))
            })
        });
    }
    assert!(logged, "{lost} is in some node's conflict log");

    // The same two names at once under `siblings`: both come back, on
    // every node, as a 300 with one context.
    let (a, b) = tokio::join!(
        send(n1.http().put(n1.at("/v1/kv/names:user:1")).body("Alice")),
        send(n2.http().put(n2.at("/v1/kv/names:user:1")).body("Alicia")),
    );
    assert_eq!((a.0, b.0), (200, 200));
    wait_converged(&nodes).await;
    for n in &nodes {
        let (status, headers, body) = send(n.http().get(n.at("/v1/kv/names:user:1"))).await;
        assert_eq!(status, 300, "{} {body}", n.id);
        let mut values: Vec<&str> = body["siblings"]
            .as_array()
            .expect("siblings")
            .iter()
            .filter_map(|s| s["value"].as_str())
            .collect();
        values.sort_unstable();
        assert_eq!(values, ["Alice", "Alicia"], "{}", n.id);
        assert_eq!(
            body["context"],
            json!(headers["x-replidb-context"].to_str().expect("context"))
        );
    }

    // Two carts on two nodes (siblings policy): both come back, as 300.
    let (a, b) = tokio::join!(
        send(n1.http().put(n1.at("/v1/kv/cart:1")).body("Book")),
        send(n2.http().put(n2.at("/v1/kv/cart:1")).body("Pen")),
    );
    assert_eq!((a.0, b.0), (200, 200));
    wait_converged(&nodes).await;
    let (status, headers, body) = send(n3.http().get(n3.at("/v1/kv/cart:1"))).await;
    assert_eq!(status, 300, "{body}");
    let mut values: Vec<String> = body["siblings"]
        .as_array()
        .expect("siblings")
        .iter()
        .map(|s| s["value"].as_str().unwrap_or_default().to_string())
        .collect();
    values.sort();
    assert_eq!(values, ["Book", "Pen"]);
    // Resolving: a write with the context replaces both, everywhere.
    let ctx = headers["x-replidb-context"]
        .to_str()
        .expect("context")
        .to_string();
    assert_eq!(body["context"], json!(ctx));
    let (s, _, _) = send(
        n3.http()
            .put(n3.at("/v1/kv/cart:1"))
            .header("X-Replidb-Context", &ctx)
            .body("Book,Pen"),
    )
    .await;
    assert_eq!(s, 200);
    wait_converged(&nodes).await;
    for n in &nodes {
        assert_eq!(
            get_text(n, "/v1/kv/cart:1").await,
            (200, "Book,Pen".to_string())
        );
    }

    // The same carts as a set: both items everywhere.
    let (a, b) = tokio::join!(
        send(
            n1.http()
                .post(n1.at("/v1/set/cart:2"))
                .json(&json!({"add": ["Book"]}))
        ),
        send(
            n2.http()
                .post(n2.at("/v1/set/cart:2"))
                .json(&json!({"add": ["Pen"]}))
        ),
    );
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");

    // Likes at 100, +5 on one node and +3 on another: 108 everywhere.
    let (s, _, _) = send(
        n1.http()
            .post(n1.at("/v1/counter/likes"))
            .json(&json!({"delta": 100})),
    )
    .await;
    assert_eq!(s, 200);
    wait_converged(&nodes).await;
    let (a, b) = tokio::join!(
        send(
            n1.http()
                .post(n1.at("/v1/counter/likes"))
                .json(&json!({"delta": 5}))
        ),
        send(
            n2.http()
                .post(n2.at("/v1/counter/likes"))
                .json(&json!({"delta": 3}))
        ),
    );
    assert_eq!((a.0, b.0), (200, 200));

    // A profile whose name changes on one node and email on another.
    let (s, _, _) = send(
        n1.http()
            .patch(n1.at("/v1/map/profile:1"))
            .json(&json!({"name": "Al", "email": "al@old"})),
    )
    .await;
    assert_eq!(s, 200);
    wait_converged(&nodes).await;
    let (a, b) = tokio::join!(
        send(
            n1.http()
                .patch(n1.at("/v1/map/profile:1"))
                .json(&json!({"name": "Alice"}))
        ),
        send(
            n2.http()
                .patch(n2.at("/v1/map/profile:1"))
                .json(&json!({"email": "alice@new"}))
        ),
    );
    assert_eq!((a.0, b.0), (200, 200));

    wait_converged(&nodes).await;
    for n in &nodes {
        assert_eq!(
            n.get_json("/v1/set/cart:2").await["members"],
            json!(["Book", "Pen"])
        );
        assert_eq!(n.get_json("/v1/counter/likes").await["value"], json!(108));
        assert_eq!(
            n.get_json("/v1/map/profile:1").await,
            json!({"name": "Alice", "email": "alice@new"})
        );
    }

    // A plain write to a typed key is refused.
    let (s, _, body) = send(n1.http().put(n1.at("/v1/kv/likes")).body("x")).await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(body["error"]["code"], "wrong_type");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_overlapping_keys_converge_and_counters_add_up() {
    let nodes = cluster(&[]).await;
    let mut tasks = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let http = n.http().clone();
        let base = n.url();
        tasks.push(tokio::spawn(async move {
            let mut sum = 0i64;
            for j in 0..60 {
                let key = format!("k{}", (i * 7 + j) % 10);
                let r = http
                    .put(format!("{base}/v1/kv/{key}"))
                    .body(format!("n{i}-{j}"))
                    .send()
                    .await
                    .expect("put");
                assert_eq!(r.status().as_u16(), 200);
                let delta = (j as i64 % 7) - 2;
                let r = http
                    .post(format!("{base}/v1/counter/hits"))
                    .json(&json!({"delta": delta}))
                    .send()
                    .await
                    .expect("inc");
                assert_eq!(r.status().as_u16(), 200);
                sum += delta;
                if j % 3 == 0 {
                    let r = http
                        .post(format!("{base}/v1/set/s"))
                        .json(&json!({"add": [format!("m{}", j % 5)]}))
                        .send()
                        .await
                        .expect("add");
                    assert_eq!(r.status().as_u16(), 200);
                }
            }
            sum
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("writer");
    }
    wait_converged(&nodes).await;
    for n in &nodes {
        assert_eq!(n.get_json("/v1/counter/hits").await["value"], json!(total));
        assert_eq!(
            n.get_json("/v1/set/s").await["members"],
            json!(["m0", "m1", "m2", "m3", "m4"])
        );
    }
    // Every key has exactly one value under lww, the same everywhere.
    for k in 0..10 {
        let first = get_text(&nodes[0], &format!("/v1/kv/k{k}")).await;
        assert_eq!(first.0, 200);
        for n in &nodes[1..] {
            assert_eq!(get_text(n, &format!("/v1/kv/k{k}")).await, first);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_was_down_catches_up_on_every_origin_exactly_once() {
    let mut nodes = cluster(&[]).await;
    for i in 0..5 {
        nodes[0].put(&format!("before{i}"), "x").await;
    }
    wait_converged(&nodes).await;
    nodes[2].kill9();
    // While n3 is down, n1 and n2 write 7 and 4 records.
    for i in 0..7 {
        nodes[0].put(&format!("a{i}"), "1").await;
    }
    for i in 0..4 {
        nodes[1].put(&format!("b{i}"), "2").await;
    }
    nodes[2].restart().await;
    wait_converged(&nodes).await;
    let s = nodes[2].status().await;
    let applied = |origin: &str| -> u64 {
        s["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .find(|p| p["origin"] == origin)
            .map(|p| p["changes_applied"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    // It resumed each origin where it stopped: nothing applied twice.
    assert_eq!(applied("n1"), 7, "{s}");
    assert_eq!(applied("n2"), 4, "{s}");
    assert_eq!(s["origins"]["n1"], json!(12));
    assert_eq!(s["origins"]["n2"], json!(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_your_writes_across_nodes_with_min_version() {
    let nodes = cluster(&["--link-delay", "300ms"]).await;
    let (s, headers, body) = send(
        nodes[0]
            .http()
            .put(nodes[0].at("/v1/kv/profile"))
            .body("v1"),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let token = headers["x-replidb-min-version"]
        .to_str()
        .expect("token")
        .to_string();
    assert_eq!(token, format!("n1:{}", body["lsn"]));
    // Without the token, n2 may not have it yet (300 ms link delay).
    let (s, _) = get_text(&nodes[1], "/v1/kv/profile").await;
    assert_eq!(s, 404);
    // With it, n2 waits until it has applied n1's write.
    let r = nodes[1]
        .http()
        .get(nodes[1].at("/v1/kv/profile"))
        .header("X-Replidb-Min-Version", &token)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap_or_default(), "v1");
    // A token a node cannot reach in time: 503 with Retry-After.
    let r = nodes[1]
        .http()
        .get(nodes[1].at("/v1/kv/profile?min_version=n1:999&wait_ms=100"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));

    // An origin no node of the cluster writes as can never be reached: a
    // 503 telling the client to "read from n9" sent it to a node that does
    // not exist. Once every peer has said who it is, the 503 says so at
    // once, without the wait.
    let (s, _, b) = send(
        nodes[1]
            .http()
            .get(nodes[1].at("/v1/kv/profile?min_version=n1:1,n9:4")),
    )
    .await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["error"]["code"], "min_version_not_reached", "{b}");
    let msg = b["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("n9") && msg.contains("n1, n2, n3") && !msg.contains("read from n9"),
        "{b}"
    );

    // A write carrying the token waits for it too: an increment on n2 builds
    // on the one just made on n1 (300 ms link delay notwithstanding).
    let (s, h, _) = send(
        nodes[0]
            .http()
            .post(nodes[0].at("/v1/counter/visits"))
            .json(&json!({"delta": 1})),
    )
    .await;
    assert_eq!(s, 200);
    let token = h["x-replidb-min-version"]
        .to_str()
        .expect("token")
        .to_string();
    let (s, _, body) = send(
        nodes[1]
            .http()
            .post(nodes[1].at("/v1/counter/visits"))
            .header("X-Replidb-Min-Version", &token)
            .json(&json!({"delta": 1})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body["value"], json!(2), "{body}");
    // And a scan.
    let (s, h, _) = send(nodes[0].http().put(nodes[0].at("/v1/kv/scanned")).body("x")).await;
    assert_eq!(s, 200);
    let token = h["x-replidb-min-version"]
        .to_str()
        .expect("token")
        .to_string();
    let (s, _, body) = send(
        nodes[2]
            .http()
            .get(nodes[2].at("/v1/kv?prefix=scanned"))
            .header("X-Replidb-Min-Version", &token),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body.as_array().map(Vec::len), Some(1), "{body}");

    // `replidb bench --mode visibility` waits for the write on the other
    // node with its min_version: with 300 ms between nodes, no write can
    // be visible there much sooner.
    let (code, out, err) = common::cli(&[
        "bench",
        "--url",
        &nodes[0].url(),
        "--follower",
        &nodes[1].url(),
        "--mode",
        "visibility",
        "--clients",
        "1",
        "--requests",
        "5",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("| 1 |"))
        .unwrap_or_else(|| panic!("no row in {out}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    let (errors, p50_ms): (u64, f64) = (
        cells[3].parse().expect("errors"),
        cells[5].parse().expect("p50"),
    );
    assert_eq!(errors, 0, "{out}");
    assert!(
        p50_ms >= 250.0,
        "visible after {p50_ms} ms despite the link delay:\n{out}"
    );

    // A strong read has no single leader to confirm it here: refused, not
    // served locally as if it were the latest state.
    let n1 = &nodes[0];
    let (s, _, body) = send(n1.http().get(n1.at("/v1/kv/k?consistency=strong"))).await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["code"], "not_supported", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_with_other_conflict_policies_is_refused() {
    let a_port = free_port();
    let b_port = free_port();
    let peers = format!("http://127.0.0.1:{a_port},http://127.0.0.1:{b_port}");
    let a = Node::start_on(
        "a",
        a_port,
        &["--topology", "multi-leader", "--peers", &peers],
    )
    .await;
    let b = Node::start_on(
        "b",
        b_port,
        &[
            "--topology",
            "multi-leader",
            "--peers",
            &peers,
            "--conflict-policy",
            "*=siblings",
        ],
    )
    .await;
    wait_until("b reports the refusal", Duration::from_secs(20), || async {
        let s = b.status().await;
        s["peers"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("conflict policies"))
    })
    .await;
    let s = a.status().await;
    assert_eq!(s["peers"][0]["connected"], json!(false), "{s}");
}

/// The port of `http://127.0.0.1:PORT`.
fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("url with a port")
}

/// Applied LSN of `origin` on the node whose `/status` is `s`.
fn origin_applied(s: &Value, origin: &str) -> u64 {
    s["origins"][origin].as_u64().unwrap_or(0)
}

/// Records of `origin` applied since the node started (its peer stream's
/// counter).
fn changes_applied(s: &Value, origin: &str) -> u64 {
    s["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["origin"] == origin))
        .and_then(|p| p["changes_applied"].as_u64())
        .unwrap_or(0)
}

/// The value of the first sample of `metric` whose labels contain every
/// one of `labels` in a Prometheus text exposition.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_policy_and_type_under_concurrency_ends_the_same_everywhere() {
    let nodes = cluster(&[]).await;
    let mut tasks = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let http = n.http().clone();
        let base = n.url();
        tasks.push(tokio::spawn(async move {
            for j in 0..40 {
                // siblings: read-modify-write of three shared carts, with
                // the context read, as a client must.
                let cart = format!("{base}/v1/kv/cart:{}", j % 3);
                let r = http.get(&cart).send().await.expect("get");
                let context = r
                    .headers()
                    .get("x-replidb-context")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                let mut put = http.put(&cart).body(format!("n{i}-{j}"));
                if let Some(c) = context {
                    put = put.header("X-Replidb-Context", c);
                }
                let r = put.send().await.expect("put");
                assert_eq!(r.status().as_u16(), 200);
                // map: a field of this node's own and one everyone edits.
                let r = http
                    .patch(format!("{base}/v1/map/profile"))
                    .json(&json!({format!("f{i}"): j, "shared": format!("n{i}-{j}")}))
                    .send()
                    .await
                    .expect("patch");
                assert_eq!(r.status().as_u16(), 200);
                // set: adds of shared elements, and removes of this node's
                // own elements once added (nobody else adds those).
                let r = http
                    .post(format!("{base}/v1/set/tags"))
                    .json(&json!({"add": [format!("t{}", j % 4), format!("own{i}-{j}")]}))
                    .send()
                    .await
                    .expect("add");
                assert_eq!(r.status().as_u16(), 200);
                if j % 2 == 1 {
                    let r = http
                        .post(format!("{base}/v1/set/tags"))
                        .json(&json!({"remove": [format!("own{i}-{j}")]}))
                        .send()
                        .await
                        .expect("remove");
                    assert_eq!(r.status().as_u16(), 200);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    wait_converged(&nodes).await;

    // siblings: the same answer on every node, at most one version per
    // node (each node's write replaced every version it had read).
    for c in 0..3 {
        let path = format!("/v1/kv/cart:{c}");
        let first = send(nodes[0].http().get(nodes[0].at(&path))).await;
        assert!(first.0 == 200 || first.0 == 300, "{first:?}");
        if first.0 == 300 {
            let n = first.2["siblings"].as_array().map_or(0, Vec::len);
            assert!((2..=3).contains(&n), "{first:?}");
        }
        for n in &nodes[1..] {
            let other = send(n.http().get(n.at(&path))).await;
            assert_eq!(
                (other.0, &other.2),
                (first.0, &first.2),
                "{path} on {}",
                n.id
            );
        }
    }
    // map: every node's own field kept with its last value; the shared
    // field holds one node's last write, the same everywhere.
    let map = nodes[0].get_json("/v1/map/profile").await;
    assert_eq!(map["f0"], json!(39), "{map}");
    assert_eq!(map["f1"], json!(39), "{map}");
    assert_eq!(map["f2"], json!(39), "{map}");
    assert!(
        ["n0-39", "n1-39", "n2-39"].contains(&map["shared"].as_str().unwrap_or_default()),
        "{map}"
    );
    // set: every shared add, and exactly the own elements never removed.
    let mut want: Vec<String> = (0..4).map(|t| format!("t{t}")).collect();
    for i in 0..3 {
        for j in (0..40).step_by(2) {
            want.push(format!("own{i}-{j}"));
        }
    }
    want.sort();
    for n in &nodes {
        assert_eq!(n.get_json("/v1/map/profile").await, map, "{}", n.id);
        assert_eq!(
            n.get_json("/v1/set/tags").await["members"],
            json!(want),
            "{}",
            n.id
        );
    }

    // The bound on siblings: a write without a context adds one; the 17th
    // is refused, naming the key, and a write with the context resolves.
    let n1 = &nodes[0];
    for k in 0..16 {
        let (s, _, body) = send(
            n1.http()
                .put(n1.at("/v1/kv/cart:bound"))
                .body(format!("v{k}")),
        )
        .await;
        assert_eq!(s, 200, "write {k}: {body}");
    }
    let (s, _, body) = send(
        n1.http()
            .put(n1.at("/v1/kv/cart:bound"))
            .body("one too many"),
    )
    .await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(body["error"]["code"], "too_many_siblings", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cart:bound")),
        "{body}"
    );
    let (s, headers, body) = send(n1.http().get(n1.at("/v1/kv/cart:bound"))).await;
    assert_eq!(s, 300);
    assert_eq!(body["siblings"].as_array().map(Vec::len), Some(16));
    let (s, _, _) = send(
        n1.http()
            .put(n1.at("/v1/kv/cart:bound"))
            .header(
                "X-Replidb-Context",
                headers["x-replidb-context"].to_str().expect("context"),
            )
            .body("merged"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        get_text(n1, "/v1/kv/cart:bound").await,
        (200, "merged".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_metrics_and_debug_logs_show_conflicts_and_lag_per_origin() {
    // Started by hand to give each node RUST_LOG: resolved conflicts are
    // logged at debug only.
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let args = [
            "--topology",
            "multi-leader",
            "--conflict-policy",
            POLICIES,
            "--peers",
            &peers,
            "--link-delay",
            LINK_DELAY,
        ];
        let mut n = Node::new(&format!("n{}", i + 1), &args);
        n.set_env("RUST_LOG", "info,replidb_storage=debug");
        n.launch_on(*port).await;
        nodes.push(n);
    }
    wait_peers_connected(&nodes).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);

    // `--peers` names every node, this one included: w=all counts each
    // node once, so it is met by the three of them.
    let (s, _, body) = send(
        n1.http()
            .put(n1.at("/v1/kv/all?w=all&timeout_ms=10000"))
            .body("x"),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        (body["acks"].clone(), body["committed"].clone()),
        (json!(3), json!(true))
    );
    assert_eq!(n1.status().await["voters"], json!(3));

    // One conflict of each policy.
    let (a, b) = tokio::join!(
        send(n1.http().put(n1.at("/v1/kv/user:1:name")).body("Alice")),
        send(n2.http().put(n2.at("/v1/kv/user:1:name")).body("Alicia")),
    );
    assert_eq!((a.0, b.0), (200, 200));
    let (a, b) = tokio::join!(
        send(n1.http().put(n1.at("/v1/kv/cart:1")).body("Book")),
        send(n2.http().put(n2.at("/v1/kv/cart:1")).body("Pen")),
    );
    assert_eq!((a.0, b.0), (200, 200));
    wait_converged(&nodes).await;

    for n in &nodes {
        // /status: the applied position of every origin, each peer with
        // its lag, and the conflicts counted per policy.
        let s = n.status().await;
        assert_eq!(s["topology"], "multi-leader", "{s}");
        for origin in ["n1", "n2", "n3"] {
            assert!(s["origins"][origin].is_u64(), "{} {s}", n.id);
        }
        let peers = s["peers"].as_array().expect("peers");
        assert_eq!(peers.len(), 2, "{s}");
        for p in peers {
            assert!(p["lag_ms"].is_u64(), "{s}");
            assert_eq!(p["connected"], json!(true), "{s}");
        }
        let lww = s["conflicts"]["lww"].as_u64().unwrap_or(0);
        let siblings = s["conflicts"]["siblings"].as_u64().unwrap_or(0);

        // /metrics: the names API.md gives, with the same counts.
        let (code, text) = get_text(n, "/metrics").await;
        assert_eq!(code, 200);
        let metric = |name: &str, labels: &[&str]| {
            sample(&text, name, labels)
                .unwrap_or_else(|| panic!("{} has no {name}{labels:?}:\n{text}", n.id))
        };
        assert_eq!(
            metric("replidb_conflicts_total", &["policy=\"lww\""]),
            lww as f64
        );
        assert_eq!(
            metric("replidb_conflicts_total", &["policy=\"siblings\""]),
            siblings as f64
        );
        assert!(metric("replidb_siblings_max", &[]) >= 2.0, "{}", n.id);
        for origin in ["n1", "n2", "n3"].into_iter().filter(|o| *o != n.id) {
            let label = format!("origin=\"{origin}\"");
            assert!(metric("replidb_replication_lag_seconds", &[&label]) >= 0.0);
        }
    }
    // The nodes that saw each conflict counted it and logged it at debug,
    // naming what was kept and what was discarded.
    let (mut lww, mut siblings) = (0, 0);
    for n in &nodes {
        let s = n.status().await;
        lww += s["conflicts"]["lww"].as_u64().unwrap_or(0);
        siblings += s["conflicts"]["siblings"].as_u64().unwrap_or(0);
    }
    assert!(lww >= 1 && siblings >= 1, "lww {lww}, siblings {siblings}");
    let logged = nodes.iter().any(|n| {
        std::fs::read_to_string(n.log_path()).is_ok_and(|log| {
            log.lines().any(|l| {
                l.contains("level=debug")
                    && l.contains("msg=\"conflict resolved\"")
                    && l.contains("key=user:1:name")
                    && l.contains("policy=lww")
                    && l.contains("discarded=n")
            })
        })
    });
    assert!(logged, "no node logged the lww conflict at debug");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_node_keeps_writing_and_converges_when_the_partition_heals() {
    // Every node reaches its peers through a proxy; cutting n3's proxy and
    // refusing n3's own connections partitions n3 both ways, while the test
    // still talks to every node directly.
    let net = Network::new();
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(Proxy::start(0, Some(net.clone())).await);
    }
    let peers = proxies.iter().map(Proxy::url).collect::<Vec<_>>().join(",");
    let mut nodes = Vec::new();
    for (i, p) in proxies.iter().enumerate() {
        let me = p.url();
        let args = [
            "--topology",
            "multi-leader",
            "--conflict-policy",
            POLICIES,
            "--peers",
            &peers,
            "--advertise-url",
            &me,
            // Reconnect soon after the heal.
            "--backoff-base",
            "100ms",
            "--backoff-max",
            "500ms",
        ];
        let mut n = Node::new(&format!("n{}", i + 1), &args);
        n.launch().await;
        p.set_upstream(port_of(&n.url()));
        net.set_pid(i, n.pid().expect("running"));
        nodes.push(n);
    }
    wait_peers_connected(&nodes).await;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let (s, _, _) = send(
        n1.http()
            .post(n1.at("/v1/counter/likes"))
            .json(&json!({"delta": 100})),
    )
    .await;
    assert_eq!(s, 200);
    wait_converged(&nodes).await;
    let n3_seen_by_n1 = origin_applied(&n1.status().await, "n3");

    net.isolate(2);
    proxies[2].cut();
    let disconnected = |s: Value| {
        s["peers"].as_array().is_some_and(|p| {
            p.iter()
                .filter(|p| p["origin"] == "n3" || s["id"] == "n3")
                .all(|p| p["connected"] == json!(false))
        })
    };
    for n in &nodes {
        wait_until(
            &format!("{} sees the partition", n.id),
            Duration::from_secs(20),
            || async { disconnected(n.status().await) },
        )
        .await;
    }

    // Both sides write, to the same keys.
    let both = [
        (n1, "Alice", "Book", 5, json!({"name": "Alice"})),
        (n3, "Alicia", "Pen", 3, json!({"email": "alice@new"})),
    ];
    for (n, name, item, delta, profile) in both {
        let (s, _, _) = send(n.http().put(n.at("/v1/kv/user:1:name")).body(name)).await;
        assert_eq!(s, 200);
        let (s, _, _) = send(n.http().put(n.at("/v1/kv/cart:1")).body(item)).await;
        assert_eq!(s, 200);
        let (s, _, _) = send(
            n.http()
                .post(n.at("/v1/set/cart:2"))
                .json(&json!({"add": [item]})),
        )
        .await;
        assert_eq!(s, 200);
        let (s, _, _) = send(
            n.http()
                .post(n.at("/v1/counter/likes"))
                .json(&json!({"delta": delta})),
        )
        .await;
        assert_eq!(s, 200);
        let (s, _, _) = send(n.http().patch(n.at("/v1/map/profile:1")).json(&profile)).await;
        assert_eq!(s, 200);
    }
    for i in 0..5 {
        n3.put(&format!("only-n3-{i}"), "x").await;
        n2.put(&format!("only-n2-{i}"), "y").await;
    }
    // The partition held: n1 has nothing of n3's, n3 nothing of n2's.
    assert_eq!(origin_applied(&n1.status().await, "n3"), n3_seen_by_n1);
    assert_eq!(get_text(n1, "/v1/kv/only-n3-0").await.0, 404);
    assert_eq!(get_text(n3, "/v1/kv/only-n2-0").await.0, 404);

    net.rejoin(2);
    proxies[2].heal();
    wait_peers_connected(&nodes).await;
    wait_converged(&nodes).await;
    for n in &nodes {
        assert_eq!(
            n.get_json("/v1/counter/likes").await["value"],
            json!(108),
            "{}",
            n.id
        );
        assert_eq!(
            n.get_json("/v1/set/cart:2").await["members"],
            json!(["Book", "Pen"])
        );
        assert_eq!(
            n.get_json("/v1/map/profile:1").await,
            json!({"name": "Alice", "email": "alice@new"})
        );
        let (status, _, body) = send(n.http().get(n.at("/v1/kv/cart:1"))).await;
        assert_eq!(status, 300, "{body}");
        assert_eq!(
            get_text(n, "/v1/kv/only-n3-4").await,
            (200, "x".to_string())
        );
        assert_eq!(
            get_text(n, "/v1/kv/only-n2-4").await,
            (200, "y".to_string())
        );
    }
    // lww kept one name everywhere; the other is in a conflict log.
    let kept = get_text(n1, "/v1/kv/user:1:name").await.1;
    let lost = if kept == "Alice" { "Alicia" } else { "Alice" };
    let mut logged = false;
    for n in &nodes {
        let c = n.get_json("/v1/conflicts?prefix=user:").await;
        logged |= c.as_array().is_some_and(|l| {
            l.iter().any(|c| {
                c["versions"]
                    .as_array()
                    .is_some_and(|v| v.iter().skip(1).any(|v| v["value"] == lost))
            })
        });
    }
    assert!(logged, "{lost} is in some node's conflict log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restarted_mid_stream_resumes_every_origin_exactly_once() {
    let mut nodes = cluster(&[]).await;
    // n1 and n2 write without pause (keys and a counter) while n3 is killed
    // and restarted under their streams.
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicI64::new(0));
    let mut writers = Vec::new();
    for n in &nodes[..2] {
        let (http, base, stop, total) = (n.http().clone(), n.url(), stop.clone(), total.clone());
        let id = n.id.clone();
        writers.push(tokio::spawn(async move {
            let mut j = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let r = http
                    .put(format!("{base}/v1/kv/{id}-{}", j % 25))
                    .body(format!("{j}"))
                    .send()
                    .await
                    .expect("put");
                assert_eq!(r.status().as_u16(), 200);
                let r = http
                    .post(format!("{base}/v1/counter/hits"))
                    .json(&json!({"delta": 1}))
                    .send()
                    .await
                    .expect("inc");
                assert_eq!(r.status().as_u16(), 200);
                total.fetch_add(1, Ordering::SeqCst);
                j += 1;
            }
        }));
    }
    async fn applied_at_least(n: &Node, lsn: u64) -> bool {
        let s = n.status().await;
        origin_applied(&s, "n1") >= lsn && origin_applied(&s, "n2") >= lsn
    }
    wait_until("n3 applies both streams", Duration::from_secs(30), || {
        applied_at_least(&nodes[2], 40)
    })
    .await;
    nodes[2].kill9();
    let down_at = origin_applied(&nodes[0].status().await, "n1");
    wait_until(
        "n1 writes on while n3 is down",
        Duration::from_secs(30),
        || async { origin_applied(&nodes[0].status().await, "n1") >= down_at + 40 },
    )
    .await;
    nodes[2].restart().await;
    let s = nodes[2].status().await;
    let floor = origin_applied(&s, "n1").max(origin_applied(&s, "n2")) + 40;
    wait_until("n3 streams again", Duration::from_secs(30), || {
        applied_at_least(&nodes[2], floor)
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    wait_converged(&nodes).await;

    let total = total.load(Ordering::SeqCst);
    for n in &nodes {
        assert_eq!(
            n.get_json("/v1/counter/hits").await["value"],
            json!(total),
            "{}",
            n.id
        );
    }
    // Where the restarted n3 resumed each origin (its log since the
    // restart), plus what it applied since, is exactly that origin's log:
    // nothing skipped, nothing applied twice.
    let log = std::fs::read_to_string(nodes[2].log_path()).expect("log");
    let since_restart = log
        .rsplit("===== harness: start #")
        .next()
        .unwrap_or_default();
    let s = nodes[2].status().await;
    for (i, origin) in ["n1", "n2"].into_iter().enumerate() {
        let from: u64 = since_restart
            .lines()
            .filter(|l| l.contains("msg=\"streaming from peer\""))
            .find_map(|l| l.split(&format!("origin={origin} from=")).nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no resume of {origin} in n3's log:\n{since_restart}"));
        let last = origin_applied(&nodes[i].status().await, origin);
        assert_eq!(origin_applied(&s, origin), last, "{s}");
        assert!(from > 1, "n3 resumed {origin} from the start: {s}");
        assert_eq!(
            from - 1 + changes_applied(&s, origin),
            last,
            "n3 resumed {origin} at {from} and applied {} since: {s}",
            changes_applied(&s, origin)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_lww_write_with_a_context_replaces_what_it_saw_without_a_conflict() {
    let nodes = cluster(&["--link-delay", LINK_DELAY]).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let (s, _, bob) = send(n1.http().put(n1.at("/v1/kv/user:2:name")).body("Bob")).await;
    assert_eq!(s, 200);
    let (s, headers, _) = send(n1.http().get(n1.at("/v1/kv/user:2:name"))).await;
    assert_eq!(s, 200);
    let context = headers["x-replidb-context"]
        .to_str()
        .expect("context")
        .to_string();
    // n2 has not applied n1's write yet (300 ms link delay), but the client
    // tells it what it saw: its write replaces "Bob" instead of conflicting.
    assert_eq!(get_text(n2, "/v1/kv/user:2:name").await.0, 404);
    let (s, _, body) = send(
        n2.http()
            .put(n2.at("/v1/kv/user:2:name"))
            .header("X-Replidb-Context", &context)
            .body("Robert"),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["version"]["n1"], bob["lsn"], "{body}");
    wait_converged(&nodes).await;
    for n in &nodes {
        assert_eq!(
            get_text(n, "/v1/kv/user:2:name").await,
            (200, "Robert".to_string())
        );
        assert_eq!(
            n.get_json("/v1/conflicts?prefix=user:2:").await,
            json!([]),
            "{}",
            n.id
        );
    }
    // A context that does not decode is a 400, not a blind write.
    let (s, _, body) = send(
        n2.http()
            .put(n2.at("/v1/kv/user:2:name"))
            .header("X-Replidb-Context", "not base64!")
            .body("x"),
    )
    .await;
    assert_eq!(s, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_types_work_in_single_leader_mode_too() {
    // One origin: never a conflict, and the conflict log stays empty.
    let n = Node::start("solo", &[]).await;
    for delta in [100, 5, 3] {
        let (s, _, body) = send(
            n.http()
                .post(n.at("/v1/counter/likes"))
                .json(&json!({"delta": delta})),
        )
        .await;
        assert_eq!(s, 200, "{body}");
    }
    assert_eq!(n.get_json("/v1/counter/likes").await["value"], json!(108));
    let (s, _, _) = send(
        n.http()
            .post(n.at("/v1/set/cart"))
            .json(&json!({"add": ["Book", "Pen", "Cup"]})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = send(
        n.http()
            .post(n.at("/v1/set/cart"))
            .json(&json!({"remove": ["Cup"]})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        n.get_json("/v1/set/cart").await["members"],
        json!(["Book", "Pen"])
    );
    let (s, _, _) = send(
        n.http()
            .patch(n.at("/v1/map/profile"))
            .json(&json!({"name": "Alice", "email": "a@x"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = send(
        n.http()
            .patch(n.at("/v1/map/profile"))
            .json(&json!({"email": null})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        n.get_json("/v1/map/profile").await,
        json!({"name": "Alice"})
    );
    let (s, _, body) = send(n.http().put(n.at("/v1/kv/likes")).body("x")).await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(body["error"]["code"], "wrong_type");
    assert_eq!(n.get_json("/v1/conflicts").await, json!([]));

    // Found by trying it as a new user: no path deleted a typed key. With
    // one order of writes a delete removes it, and the key is free again.
    let (s, _, body) = send(n.http().delete(n.at("/v1/set/likes"))).await;
    assert_eq!(s, 409, "a set delete of a counter: {body}");
    assert_eq!(body["error"]["code"], "wrong_type");
    for path in ["/v1/counter/likes", "/v1/set/cart", "/v1/map/profile"] {
        let (s, _, body) = send(n.http().delete(n.at(path))).await;
        assert_eq!(s, 200, "{path}: {body}");
        assert_eq!(body["existed"], true, "{path}: {body}");
    }
    let (s, _, body) = send(n.http().delete(n.at("/v1/counter/likes"))).await;
    assert_eq!((s, &body["existed"]), (200, &json!(false)), "{body}");
    let (s, _, _) = send(n.http().get(n.at("/v1/kv/likes"))).await;
    assert_eq!(s, 404, "the deleted counter's key is absent");
    let (s, _, body) = send(n.http().put(n.at("/v1/kv/likes")).body("x")).await;
    assert_eq!(s, 200, "the key is free for a plain value: {body}");
    assert_eq!(n.get_json("/v1/set/cart").await["members"], json!([]));
    assert_eq!(n.get_json("/v1/map/profile").await, json!({}));
}

/// In the causal topologies a typed key is emptied, not removed: a
/// `DELETE` takes back what the node it reaches has seen (an
/// observed-remove reset) and replicates like any write, so every node
/// converges on the empty state, while a member added on another node
/// after it still counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_typed_delete_empties_the_key_on_every_node() {
    let nodes = cluster(&[]).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    for (path, body) in [
        ("/v1/counter/hits", json!({"delta": 7})),
        ("/v1/set/tags", json!({"add": ["a", "b"]})),
    ] {
        let (s, _, b) = send(n1.http().post(n1.at(path)).json(&body)).await;
        assert_eq!(s, 200, "{path}: {b}");
    }
    let (s, _, _) = send(
        n1.http()
            .patch(n1.at("/v1/map/prefs"))
            .json(&json!({"theme": "dark"})),
    )
    .await;
    assert_eq!(s, 200);
    wait_converged(&nodes).await;
    for (path, field, empty) in [
        ("/v1/counter/hits", "value", json!(0)),
        ("/v1/set/tags", "members", json!([])),
        ("/v1/map/prefs", "map", json!({})),
    ] {
        let (s, _, b) = send(n2.http().delete(n2.at(path))).await;
        assert_eq!(s, 200, "{path}: {b}");
        assert_eq!(b[field], empty, "{path}: {b}");
    }
    let (s, _, _) = send(
        n2.http()
            .post(n2.at("/v1/set/tags"))
            .json(&json!({"add": ["c"]})),
    )
    .await;
    assert_eq!(s, 200);
    wait_converged(&nodes).await;
    for n in &nodes {
        assert_eq!(n.get_json("/v1/counter/hits").await["value"], json!(0));
        assert_eq!(n.get_json("/v1/set/tags").await["members"], json!(["c"]));
        assert_eq!(n.get_json("/v1/map/prefs").await, json!({}));
    }
    let (s, _, b) = send(n1.http().delete(n1.at("/v1/map/hits"))).await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(b["error"]["code"], "wrong_type");

    // Found in review: a clear of a key this node does not hold created it
    // as an empty map here, and merging kinds keeps the higher ranked one,
    // so it replaced the counter written on another node everywhere.
    let (s, _, b) = send(n2.http().delete(n2.at("/v1/map/fresh"))).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (&b["existed"], &b["map"]),
        (&json!(false), &json!({})),
        "{b}"
    );
    let (s, _, b) = send(
        n1.http()
            .post(n1.at("/v1/counter/fresh"))
            .json(&json!({"delta": 2})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    wait_converged(&nodes).await;
    for n in &nodes {
        assert_eq!(n.get_json("/v1/counter/fresh").await["value"], json!(2));
    }

    // The single leader's plain write paths (the seed endpoints) would
    // write an unversioned value that peers order differently.
    let (s, _, b) = send(
        n1.http()
            .post(n1.at("/write"))
            .json(&json!({"key": "seeded", "value": "x"})),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["code"], "not_supported");

    // Found by trying it as a new user: writes honour `?min_version=` as the
    // README says (only the header was accepted).
    let (s, _, b) = send(
        n2.http()
            .put(n2.at("/v1/kv/ryw?min_version=n1:1"))
            .body("x"),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, _, b) = send(
        n2.http()
            .put(n2.at("/v1/kv/ryw?min_version=n1:999999"))
            .body("x"),
    )
    .await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["error"]["code"], "min_version_not_reached", "{b}");
}
