//! `replidb router` in front of the causal topologies (real processes).
//! Multi-leader (300 ms between every pair of nodes): a session's writes
//! all land on its home node, and its reads, sent to any node, see them.
//! Leaderless: requests spread over every node, and `W + R > N` is what
//! makes a read fresh; the router adds no token.

mod common;
mod router_common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{start_peered, wait_peers_connected, wait_until, Node};
use reqwest::Method;
use router_common::Router;

/// Three multi-leader nodes with `--link-delay 300ms`, all connected.
async fn cluster() -> Vec<Node> {
    let nodes = start_peered(3, &["--topology", "multi-leader", "--link-delay", "300ms"]).await;
    wait_peers_connected(&nodes).await;
    nodes
}

async fn router(nodes: &[Node], args: &[&str]) -> Router {
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let r = Router::start(&urls, args).await;
    wait_until(
        "the router sees a multi-leader cluster",
        Duration::from_secs(20),
        async || r.status().await["topology"] == "multi-leader",
    )
    .await;
    r
}

fn session(id: &str) -> Vec<(&'static str, String)> {
    vec![("x-replidb-session", id.to_string())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_writes_at_home_and_reads_its_writes_anywhere() {
    let nodes = cluster().await;
    let r = router(&nodes, &["--read-strategy", "round-robin"]).await;
    // Every node reports `leader`; the router names none as *the* leader
    // (it named the first it saw) and is healthy while any node answers.
    assert_eq!(r.status().await["leader"], serde_json::Value::Null);
    let health = r.get("/health", &[]).await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["leader"], serde_json::Value::Null);

    // Without a session, a read right after a write is often served by a
    // node the write has not reached yet: the test can fail.
    let mut stale = 0;
    for i in 0..6 {
        let value = format!("c{i}");
        assert_eq!(r.put("control", &value, &[]).await.status, 200);
        let got = r.get("/v1/kv/control", &[]).await;
        stale += usize::from(got.status != 200 || got.text() != value);
    }
    assert!(stale > 0, "no stale read without a session");

    // With one (the X-Replidb-Session header): every write on one home
    // node, every read sees the write before it, from whichever node.
    let hdrs = session("alice");
    let mut homes = BTreeSet::new();
    let mut readers = BTreeSet::new();
    for i in 0..8 {
        let value = format!("a{i}");
        let w = r.put("alice-key", &value, &hdrs).await;
        assert_eq!(w.status, 200, "{}", w.text());
        homes.insert(w.json()["origin"].as_str().unwrap_or_default().to_string());
        let got = r.get("/v1/kv/alice-key", &hdrs).await;
        assert_eq!((got.status, got.text()), (200, value), "read-your-writes");
        readers.insert(got.routed_to().to_string());
    }
    assert_eq!(homes.len(), 1, "one home for the session: {homes:?}");
    assert!(
        readers.len() > 1,
        "reads went to several nodes: {readers:?}"
    );

    // Another session may get another home; its writes stay there too.
    let mut bob_homes = BTreeSet::new();
    for i in 0..3 {
        let w = r.put("bob-key", &format!("b{i}"), &session("bob")).await;
        bob_homes.insert(w.json()["origin"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(bob_homes.len(), 1, "{bob_homes:?}");

    // Typed endpoints go through the router the same way.
    for _ in 0..3 {
        let w = r
            .send(Method::POST, "/v1/counter/visits", &hdrs, r#"{"delta":2}"#)
            .await;
        assert_eq!(w.status, 200, "{}", w.text());
        assert!(homes.contains(w.json()["origin"].as_str().unwrap_or_default()));
    }
    let got = r.get("/v1/counter/visits", &hdrs).await;
    assert_eq!(got.json()["value"], 6, "{}", got.text());

    let s = r.status().await;
    assert!(
        s["counters"]["home_writes"].as_u64().unwrap_or(0) >= 10,
        "{s}"
    );
    assert!(
        s["counters"]["min_version_reads"].as_u64().unwrap_or(0) >= 8,
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cookies_carry_the_session_and_its_token() {
    let nodes = cluster().await;
    let r = router(&nodes, &["--read-strategy", "round-robin"]).await;

    // A client that keeps cookies and nothing else.
    let mut jar: Vec<(&str, String)> = Vec::new();
    let mut homes = BTreeSet::new();
    for i in 0..6 {
        let value = format!("v{i}");
        let w = r.put("cookie-key", &value, &jar_header(&jar)).await;
        assert_eq!(w.status, 200, "{}", w.text());
        homes.insert(w.json()["origin"].as_str().unwrap_or_default().to_string());
        for name in ["replidb_session", "replidb_min_version"] {
            if let Some(v) = w.cookie(name) {
                jar.retain(|(n, _)| *n != name);
                jar.push((name, v));
            }
        }
        assert!(jar.iter().any(|(n, _)| *n == "replidb_min_version"));
        let got = r.get("/v1/kv/cookie-key", &jar_header(&jar)).await;
        assert_eq!((got.status, got.text()), (200, value), "read-your-writes");
    }
    assert_eq!(homes.len(), 1, "{homes:?}");
}

fn jar_header(jar: &[(&str, String)]) -> Vec<(&'static str, String)> {
    if jar.is_empty() {
        return Vec::new();
    }
    let c = jar
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    vec![("cookie", c)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn x_replidb_home_and_the_home_flag_pick_the_node() {
    let nodes = cluster().await;
    let r = router(&nodes, &["--home", "n2"]).await;
    let origin =
        |a: &router_common::Answer| a.json()["origin"].as_str().unwrap_or_default().to_string();

    // --home: sessions without a home start on n2.
    let w = r.put("k", "1", &session("s1")).await;
    assert_eq!(origin(&w), "n2");
    // The header wins, by id or by URL, and moves the session's home.
    let mut h = session("s1");
    h.push(("x-replidb-home", "n3".into()));
    assert_eq!(origin(&r.put("k", "2", &h).await), "n3");
    assert_eq!(origin(&r.put("k", "3", &session("s1")).await), "n3");
    let h = vec![("x-replidb-home", nodes[0].url())];
    assert_eq!(origin(&r.put("k", "4", &h).await), "n1");
    // A name that is no node: 400, nothing written.
    let bad = r.put("k", "5", &[("x-replidb-home", "n9".into())]).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["code"], "unknown_home");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leaderless_cluster_behind_the_router_spreads_requests_and_quorums_stay_fresh() {
    let nodes = start_peered(
        3,
        &[
            "--topology",
            "leaderless",
            "--replicas",
            "3",
            "--link-delay",
            "100ms",
        ],
    )
    .await;
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let r = Router::start(&urls, &["--read-strategy", "round-robin"]).await;
    wait_until(
        "the router sees a leaderless cluster",
        Duration::from_secs(20),
        async || r.status().await["topology"] == "leaderless",
    )
    .await;
    let mut coordinators = BTreeSet::new();
    let mut readers = BTreeSet::new();
    for i in 0..9 {
        let value = format!("q{i}");
        let w = r
            .send(Method::PUT, "/v1/kv/fresh?w=quorum", &[], value.clone())
            .await;
        assert_eq!(w.status, 200, "{}", w.text());
        coordinators.insert(w.routed_to().to_string());
        // W + R > N: the read meets the write whichever node coordinates.
        let got = r.get("/v1/kv/fresh?r=quorum", &[]).await;
        assert_eq!(
            (got.status, got.text()),
            (200, value),
            "a quorum read is fresh"
        );
        assert!(
            got.header("set-cookie").is_none(),
            "no LSN cookie: a node's LSN means nothing on the others"
        );
        readers.insert(got.routed_to().to_string());
    }
    assert!(coordinators.len() > 1, "writes spread: {coordinators:?}");
    assert!(readers.len() > 1, "reads spread: {readers:?}");
}
