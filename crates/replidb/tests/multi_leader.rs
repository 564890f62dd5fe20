//! Multi-leader with real processes on 127.0.0.1: every node writes, every
//! node converges, each policy and type resolves concurrency the same way
//! everywhere, and seed 003's examples come out as it says.

mod common;

use std::time::Duration;

use common::{free_port, start_peered, wait_peers_connected, wait_until, Node};
use serde_json::{json, Value};

/// Three multi-leader nodes (`cart:` keys under `siblings`) with `extra`
/// arguments; returns once all are connected.
async fn cluster(extra: &[&str]) -> Vec<Node> {
    let mut args = vec![
        "--topology",
        "multi-leader",
        "--conflict-policy",
        "cart:=siblings",
    ];
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
    let nodes = cluster(&[]).await;
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
