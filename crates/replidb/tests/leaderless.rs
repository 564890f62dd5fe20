//! Leaderless with real processes on 127.0.0.1: quorum writes and reads on
//! the ring, hinted handoff, read repair and anti-entropy each bringing a
//! replica that missed writes up to date, siblings and counters.

mod common;

use std::time::Duration;

use common::{start_peered, wait_until, Node};
use serde_json::{json, Value};

/// `n` leaderless nodes with `extra` arguments, N=3.
async fn cluster(n: usize, extra: &[&str]) -> Vec<Node> {
    let mut args = vec![
        "--topology",
        "leaderless",
        "--replicas",
        "3",
        "--conflict-policy",
        "cart:=siblings",
    ];
    args.extend_from_slice(extra);
    start_peered(n, &args).await
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

/// Whether the node at `url` holds a state for `key` (no read repair: the
/// internal endpoint reads only that node).
async fn holds(n: &Node, key: &str) -> bool {
    let r = n
        .http()
        .get(n.at("/internal/replica"))
        .query(&[("key", key)])
        .send()
        .await
        .expect("replica get");
    r.status().as_u16() == 200
}

/// The key's replicas, from an all-up write's answer.
fn replicas_of(write: &Value) -> Vec<String> {
    write["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

fn index_of(nodes: &[Node], url: &str) -> usize {
    nodes.iter().position(|n| n.url() == url).expect("a member")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_writes_and_reads_on_any_node() {
    let nodes = cluster(5, &[]).await;
    for i in 0..20 {
        let coord = &nodes[i % 5];
        let (s, h, body) = send(
            coord
                .http()
                .put(coord.at(&format!("/v1/kv/k{i}")))
                .body(format!("v{i}")),
        )
        .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(
            replicas_of(&body).len(),
            2,
            "w=quorum of 3 answers at 2: {body}"
        );
        assert!(h.contains_key("x-replidb-replicas"));
        // Any node reads it at r=quorum (W + R > N).
        let reader = &nodes[(i + 2) % 5];
        let r = reader
            .http()
            .get(reader.at(&format!("/v1/kv/k{i}")))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 200);
        assert!(r.headers().contains_key("x-replidb-replicas"));
        assert_eq!(r.text().await.unwrap_or_default(), format!("v{i}"));
    }
    // w=all reaches every replica; w=4 is more than N.
    let (s, _, body) = send(
        nodes[0]
            .http()
            .put(nodes[0].at("/v1/kv/all?w=all"))
            .body("x"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(replicas_of(&body).len(), 3);
    let (s, _, _) = send(nodes[0].http().put(nodes[0].at("/v1/kv/all?w=4")).body("x")).await;
    assert_eq!(s, 400);
    // Found by a new user: single-leader read levels were accepted and
    // ignored, so a "strong" read answered 404 for a write acknowledged a
    // moment before. No node is the leader here: each is refused.
    for q in [
        "consistency=strong",
        "consistency=leader",
        "consistency=bounded&max_staleness_ms=0",
        "max_staleness_ms=10",
    ] {
        for path in ["/v1/kv/all", "/v1/counter/likes", "/v1/kv?prefix=a"] {
            let (s, _, body) = send(nodes[1].http().get(nodes[1].at(&format!(
                "{path}{}{q}",
                if path.contains('?') { "&" } else { "?" }
            ))))
            .await;
            assert_eq!(s, 400, "{path} {q}: {body}");
            assert_eq!(body["error"]["code"], "not_supported", "{body}");
        }
    }
    let (s, _, _) = send(
        nodes[1]
            .http()
            .get(nodes[1].at("/v1/kv/all?consistency=eventual")),
    )
    .await;
    assert_eq!(s, 200);
    // Waits are bounded as on the other topologies, not silently cut.
    let (s, _, body) = send(
        nodes[0]
            .http()
            .put(nodes[0].at("/v1/kv/all?timeout_ms=99999999999"))
            .body("x"),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_parameter", "{body}");
    let (s, _, _) = send(
        nodes[0]
            .http()
            .get(nodes[0].at("/v1/kv/all?wait_ms=99999999")),
    )
    .await;
    assert_eq!(s, 400);
    // The CLI takes the read quorum (and `quorum` for w, as the API does).
    let url = nodes[2].url();
    let (code, out, err) = common::cli(&[
        "put",
        "cli",
        "v",
        "--url",
        &url,
        "--w",
        "quorum",
        "--no-session",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) =
        common::cli(&["get", "cli", "--url", &url, "--r", "all", "--no-session"]);
    assert_eq!((code, out.trim()), (0, "v"), "{err}");
    let (code, _, err) = common::cli(&["get", "cli", "--url", &url, "--r", "9", "--no-session"]);
    assert_eq!(code, 2, "r=9 of 3 replicas is bad usage: {err}");
    // Counters add up exactly, whichever node coordinates.
    for (i, n) in nodes.iter().enumerate() {
        let (s, _, _) = send(
            n.http()
                .post(n.at("/v1/counter/likes"))
                .json(&json!({"delta": i as i64 + 1})),
        )
        .await;
        assert_eq!(s, 200);
    }
    for n in &nodes {
        assert_eq!(n.get_json("/v1/counter/likes").await["value"], json!(15));
    }
    let s = nodes[0].status().await;
    assert_eq!(s["topology"], "leaderless");
    assert_eq!(s["ring"]["replicas"], 3);
    assert_eq!(s["ring"]["members"].as_array().map(Vec::len), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_to_a_siblings_key_come_back_together() {
    let nodes = cluster(3, &[]).await;
    let (a, b) = tokio::join!(
        send(
            nodes[0]
                .http()
                .put(nodes[0].at("/v1/kv/cart:1?w=all"))
                .body("Book")
        ),
        send(
            nodes[1]
                .http()
                .put(nodes[1].at("/v1/kv/cart:1?w=all"))
                .body("Pen")
        ),
    );
    assert_eq!((a.0, b.0), (200, 200));
    let (s, h, body) = send(nodes[2].http().get(nodes[2].at("/v1/kv/cart:1?r=all"))).await;
    assert_eq!(s, 300, "{body}");
    let ctx = h["x-replidb-context"]
        .to_str()
        .expect("context")
        .to_string();
    let (s, _, _) = send(
        nodes[2]
            .http()
            .put(nodes[2].at("/v1/kv/cart:1?w=all"))
            .header("X-Replidb-Context", ctx)
            .body("Book,Pen"),
    )
    .await;
    assert_eq!(s, 200);
    for n in &nodes {
        let r = n
            .http()
            .get(n.at("/v1/kv/cart:1"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.text().await.unwrap_or_default(), "Book,Pen");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hint_is_delivered_when_the_replica_returns() {
    let mut nodes = cluster(5, &[]).await;
    let (_, _, first) = send(nodes[0].http().put(nodes[0].at("/v1/kv/h?w=all")).body("1")).await;
    let reps = replicas_of(&first);
    let down = index_of(&nodes, &reps[2]);
    nodes[down].kill9();
    let coord = index_of(&nodes, &reps[0]);
    let (s, _, body) = send(
        nodes[coord]
            .http()
            .put(nodes[coord].at("/v1/kv/h?w=all"))
            .body("2"),
    )
    .await;
    assert_eq!(
        s, 200,
        "a sloppy quorum takes a hint for the missing replica: {body}"
    );
    assert!(body["replicas"].to_string().contains("hint for"), "{body}");
    // A read cannot have r=all with a replica down, and says which one
    // (it said "0 of 3 answered" when the refusal came back first).
    let (s, _, body) = send(nodes[coord].http().get(nodes[coord].at("/v1/kv/h?r=all"))).await;
    assert_eq!(s, 503, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("1 of the key's 3 replicas are unreachable") && msg.contains(&reps[2]),
        "{body}"
    );
    // `/status` → `peers` (API.md): the coordinator saw the replica fail
    // and holds its hint.
    let peer_of = |s: &Value, url: &str| -> Value {
        s["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["url"] == url).cloned())
            .unwrap_or_default()
    };
    let p = peer_of(&nodes[coord].status().await, &reps[2]);
    assert_eq!(p["state"], "unreachable", "{p}");
    assert!(p["last_error"].is_string(), "{p}");
    let mut holder = None;
    for (i, n) in nodes.iter().enumerate().filter(|(i, _)| *i != down) {
        if peer_of(&n.status().await, &reps[2])["hints_pending"].as_u64() >= Some(1) {
            holder = Some(i);
        }
    }
    let holder = holder.expect("a node shows the hint it holds for the replica");
    nodes[down].restart().await;
    wait_until(
        "the hint reaches the returning replica",
        Duration::from_secs(20),
        || async {
            let mut delivered = 0;
            for n in nodes.iter().filter(|n| n.url() != nodes[down].url()) {
                delivered += n.status().await["ring"]["hints_delivered"]
                    .as_u64()
                    .unwrap_or(0);
            }
            delivered >= 1
        },
    )
    .await;
    wait_until("no hints pending", Duration::from_secs(10), || async {
        let mut pending = 0;
        for n in nodes.iter() {
            pending += n.status().await["ring"]["hints_pending"]
                .as_u64()
                .unwrap_or(0);
        }
        pending == 0
    })
    .await;
    let p = peer_of(&nodes[holder].status().await, &reps[2]);
    assert_eq!(
        (&p["state"], &p["hints_pending"], &p["last_error"]),
        (&json!("reachable"), &json!(0), &Value::Null),
        "{p}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anti_entropy_repairs_a_replica_nobody_reads() {
    let mut nodes = cluster(3, &["--strict-quorum", "--anti-entropy-interval", "300ms"]).await;
    nodes[2].kill9();
    for i in 0..10 {
        let (s, _, body) = send(
            nodes[0]
                .http()
                .put(nodes[0].at(&format!("/v1/kv/ae{i}?w=2")))
                .body("x"),
        )
        .await;
        assert_eq!(s, 200, "{body}");
    }
    nodes[2].restart().await;
    wait_until(
        "anti-entropy brings every key to the returning replica",
        Duration::from_secs(30),
        || async {
            for i in 0..10 {
                if !holds(&nodes[2], &format!("ae{i}")).await {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let mut repaired = 0;
    for n in nodes.iter() {
        repaired += n.status().await["ring"]["antientropy_keys_repaired"]
            .as_u64()
            .unwrap_or(0);
    }
    assert!(repaired >= 10, "{repaired}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_repairs_the_replica_that_was_behind() {
    let mut nodes = cluster(3, &["--strict-quorum", "--anti-entropy-interval", "1h"]).await;
    nodes[2].kill9();
    let (s, _, body) = send(nodes[0].http().put(nodes[0].at("/v1/kv/rr?w=2")).body("x")).await;
    assert_eq!(s, 200, "{body}");
    nodes[2].restart().await;
    assert!(!holds(&nodes[2], "rr").await);
    // A read that asks every replica repairs the one that was behind.
    let r = nodes[0]
        .http()
        .get(nodes[0].at("/v1/kv/rr?r=all"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    wait_until(
        "read repair reaches the replica",
        Duration::from_secs(10),
        || async { holds(&nodes[2], "rr").await },
    )
    .await;
    let mut repairs = 0;
    for n in nodes.iter() {
        repairs += n.status().await["ring"]["read_repairs"]
            .as_u64()
            .unwrap_or(0);
    }
    assert!(repairs >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tombstone_is_collected_once_every_replica_has_it() {
    let nodes = cluster(3, &["--anti-entropy-interval", "300ms"]).await;
    let (s, _, _) = send(
        nodes[0]
            .http()
            .put(nodes[0].at("/v1/kv/gone?w=all"))
            .body("x"),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, body) = send(nodes[1].http().delete(nodes[1].at("/v1/kv/gone?w=all"))).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["existed"], json!(true));
    // A delete is a tombstone version: the key reads as absent at once...
    let r = nodes[2]
        .http()
        .get(nodes[2].at("/v1/kv/gone"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 404);
    for n in &nodes {
        assert!(holds(n, "gone").await, "the tombstone is stored");
    }
    // ...and once every replica has it and the grace period passed, no
    // replica keeps anything.
    wait_until(
        "the tombstone is collected everywhere",
        Duration::from_secs(30),
        || async {
            for n in &nodes {
                if holds(n, "gone").await {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

/// Which of `nodes` hold `key` (each asked for its own copy only).
async fn holders(nodes: &[Node], key: &str) -> Vec<String> {
    let mut out = Vec::new();
    for n in nodes {
        if holds(n, key).await {
            out.push(n.id.clone());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_member_takes_over_its_keys_and_the_old_owners_let_go() {
    // Three nodes with N=2 hold 40 keys; a fourth joins (every node
    // restarts with the longer peer list). The keys whose preference list
    // now names the new node move to it, and the node they left drops its
    // copy: in the end every key is on exactly two nodes, readable.
    let ports: Vec<u16> = (0..4).map(|_| common::free_port()).collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let (three, four) = (urls[..3].join(","), urls.join(","));
    let args = |peers: &str| -> Vec<String> {
        [
            "--topology",
            "leaderless",
            "--replicas",
            "2",
            "--anti-entropy-interval",
            "300ms",
            "--peers",
            peers,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let strs = |v: &[String]| -> Vec<String> { v.to_vec() };
    let old: Vec<String> = strs(&args(&three));
    let old: Vec<&str> = old.iter().map(String::as_str).collect();
    let mut nodes = Vec::new();
    for (i, port) in ports[..3].iter().enumerate() {
        nodes.push(Node::start_on(&format!("n{}", i + 1), *port, &old).await);
    }
    const KEYS: usize = 40;
    for i in 0..KEYS {
        let (s, _, body) = send(
            nodes[0]
                .http()
                .put(nodes[0].at(&format!("/v1/kv/move{i}?w=all")))
                .body(format!("v{i}")),
        )
        .await;
        assert_eq!(s, 200, "{body}");
    }
    for i in 0..KEYS {
        assert_eq!(holders(&nodes, &format!("move{i}")).await.len(), 2);
    }

    let new: Vec<String> = strs(&args(&four));
    let new: Vec<&str> = new.iter().map(String::as_str).collect();
    nodes.push(Node::start_on("n4", ports[3], &new).await);
    for n in nodes[..3].iter_mut() {
        n.set_args(&new);
        n.restart().await;
    }
    wait_until(
        "every key on exactly two nodes, some of them on n4",
        Duration::from_secs(60),
        || async {
            let mut on_n4 = 0;
            for i in 0..KEYS {
                let h = holders(&nodes, &format!("move{i}")).await;
                if h.len() != 2 {
                    return false;
                }
                on_n4 += usize::from(h.iter().any(|id| id == "n4"));
            }
            on_n4 > 0
        },
    )
    .await;
    for i in 0..KEYS {
        let (s, _, body) = send(
            nodes[1]
                .http()
                .get(nodes[1].at(&format!("/v1/kv/move{i}?r=all"))),
        )
        .await;
        assert_eq!((s, body), (200, Value::String(format!("v{i}"))));
    }
    let mut handed_off = 0;
    for n in &nodes {
        handed_off += n.status().await["ring"]["keys_handed_off"]
            .as_u64()
            .unwrap_or(0);
    }
    assert!(handed_off > 0, "{handed_off}");
}

/// The hash-tree leaves `a` computes over the keys it shares with `b`.
async fn leaves(http: &reqwest::Client, a: &str, b: &str) -> Option<Vec<u64>> {
    let r = http
        .get(format!("{a}/internal/ae/leaves"))
        .query(&[("peer", b)])
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_under_random_kills_and_restarts_converge_to_equal_digests() {
    // Five nodes, N=3, sloppy quorums: two writers put plain keys and bump
    // a counter through whichever node answers, while a nemesis kills a
    // random node (kill -9) and restarts it a moment later, over and over.
    // Afterwards every pair of nodes must hold equal hash-tree digests over
    // the ranges they share, and the counter must count every acknowledged
    // increment (and no more than were sent).
    let mut nodes = cluster(5, &["--anti-entropy-interval", "300ms"]).await;
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let (urls, stop) = (urls.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let http = common::http_builder()
                .timeout(Duration::from_secs(3))
                .build()
                .expect("client");
            let (mut acked, mut sent, mut i) = (0u64, 0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let url = &urls[((i * 7 + w) % urls.len() as u64) as usize];
                let key = format!("chaos{}", i % 25);
                let _ = http
                    .put(format!("{url}/v1/kv/{key}?w=quorum"))
                    .body(format!("w{w}-{i}"))
                    .send()
                    .await;
                sent += 1;
                let bumped = http
                    .post(format!("{url}/v1/counter/chaos-count?w=1"))
                    .body(r#"{"delta":1}"#)
                    .send()
                    .await;
                if matches!(&bumped, Ok(r) if r.status().is_success()) {
                    acked += 1;
                }
            }
            (acked, sent)
        }));
    }
    let mut rng_state = 0x9e37_79b9_u64;
    for _ in 0..6 {
        rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1);
        let victim = (rng_state >> 33) as usize % nodes.len();
        tokio::time::sleep(Duration::from_millis(700)).await;
        nodes[victim].kill9();
        tokio::time::sleep(Duration::from_millis(700)).await;
        nodes[victim].restart().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut acked, mut sent) = (0, 0);
    for w in writers {
        let (a, s) = w.await.expect("writer");
        acked += a;
        sent += s;
    }
    assert!(acked > 0, "no increment was acknowledged");

    let http = common::http();
    wait_until(
        "every pair of nodes holds equal digests over the ranges they share",
        Duration::from_secs(90),
        || async {
            for a in &urls {
                for b in urls.iter().filter(|b| *b != a) {
                    let (Some(x), Some(y)) = (leaves(&http, a, b).await, leaves(&http, b, a).await)
                    else {
                        return false;
                    };
                    if x != y {
                        return false;
                    }
                }
            }
            true
        },
    )
    .await;
    let (s, _, body) = send(http.get(format!("{}/v1/counter/chaos-count?r=all", urls[0]))).await;
    assert_eq!(s, 200, "{body}");
    let value = body["value"].as_u64().expect("a counter value");
    assert!(
        (acked..=sent).contains(&value),
        "counter {value}: {acked} increments acknowledged, {sent} sent"
    );
}

/// Found in review: a counter's `DELETE` was prepared against the state of
/// the replica that coordinated it alone, so one that had missed the
/// counter's writes cleared nothing, answered 200, and every quorum read
/// still saw the value. A clear now first joins what W replicas hold. And a
/// clear of a key no replica holds writes nothing: it used to create the
/// key as an empty counter, set or map, which would replace a value of
/// another kind written elsewhere (merging kinds keeps the higher ranked).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_clears_what_the_other_replicas_hold() {
    // No hints and no anti-entropy: a replica that was down stays behind.
    let mut nodes = cluster(3, &["--strict-quorum", "--anti-entropy-interval", "1h"]).await;
    nodes[2].kill9();
    let (s, _, body) = send(
        nodes[0]
            .http()
            .post(nodes[0].at("/v1/counter/visits?w=2"))
            .json(&json!({"delta": 5})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    nodes[2].restart().await;
    assert!(!holds(&nodes[2], "visits").await, "n3 missed the write");

    let n3 = &nodes[2];
    let (s, _, body) = send(n3.http().delete(n3.at("/v1/counter/visits"))).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["existed"], true, "{body}");
    assert_eq!(body["value"], 0, "{body}");
    let all = nodes[0].get_json("/v1/counter/visits?r=all").await;
    assert_eq!(all["value"], 0, "the delete cleared nothing: {all}");

    let (s, _, body) = send(n3.http().delete(n3.at("/v1/map/never"))).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["existed"], false, "{body}");
    for n in &nodes {
        assert!(
            !holds(n, "never").await,
            "a clear created the key on {}",
            n.url()
        );
    }
    let (s, _, body) = send(nodes[0].http().put(nodes[0].at("/v1/kv/never")).body("v")).await;
    assert_eq!(s, 200, "the key is still free for a plain value: {body}");
}

/// Found by a new user: with more nodes than replicas, a scan listed only
/// what the answering node held, a different part on each node. A scan
/// now covers the ring: every node lists every key, a delete hides the
/// key everywhere, pages of `limit` follow on with `start_after`, and
/// without `r` reachable replicas for every key it refuses (503) rather
/// than answer a list that may lack a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_lists_the_whole_ring_from_any_node() {
    let mut nodes = start_peered(3, &["--topology", "leaderless", "--replicas", "2"]).await;
    let keys: Vec<String> = (1..=8).map(|i| format!("zz{i}")).collect();
    for k in &keys {
        let (s, _, body) = send(
            nodes[0]
                .http()
                .put(nodes[0].at(&format!("/v1/kv/{k}?w=all")))
                .body("v"),
        )
        .await;
        assert_eq!(s, 200, "{body}");
    }
    let (s, _, body) = send(nodes[1].http().delete(nodes[1].at("/v1/kv/zz3?w=all"))).await;
    assert_eq!(s, 200, "{body}");
    let want: Vec<String> = keys.iter().filter(|k| *k != "zz3").cloned().collect();
    let listed = |body: &Value| -> Vec<String> {
        body.as_array()
            .expect("a list")
            .iter()
            .map(|e| e["key"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    for n in &nodes {
        let (s, _, body) = send(n.http().get(n.at("/v1/kv?prefix=zz"))).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(listed(&body), want, "from {}", n.url());
        assert!(
            body[0]["value"].is_string() || body[0]["siblings"].is_array(),
            "{body}"
        );
    }
    // Pages of three, each after the last key of the one before.
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let q = format!("/v1/kv?prefix=zz&limit=3&start_after={after}");
        let (s, _, body) = send(nodes[2].http().get(nodes[2].at(&q))).await;
        assert_eq!(s, 200, "{body}");
        let page = listed(&body);
        paged.extend(page.iter().cloned());
        match page.last() {
            Some(last) if page.len() == 3 => after = last.clone(),
            _ => break,
        }
    }
    assert_eq!(paged, want);
    // One of three down, two replicas per key: a quorum (both) is not
    // there for every key, one replica is.
    nodes[1].kill9();
    let (s, _, body) = send(nodes[0].http().get(nodes[0].at("/v1/kv?prefix=zz"))).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["error"]["code"], "not_enough_replicas", "{body}");
    let (s, _, body) = send(nodes[0].http().get(nodes[0].at("/v1/kv?prefix=zz&r=1"))).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(listed(&body), want);
    // Two down: some key may have no replica left at all.
    nodes[2].kill9();
    let (s, _, body) = send(nodes[0].http().get(nodes[0].at("/v1/kv?prefix=zz&r=1"))).await;
    assert_eq!(s, 503, "{body}");
}
