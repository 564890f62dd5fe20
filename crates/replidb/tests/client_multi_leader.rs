//! The Rust client against a real multi-leader cluster (three processes on
//! 127.0.0.1, 300 ms between every pair of nodes): a session that writes on
//! one node and reads on another sees its write, the typed methods work,
//! and a 300 comes back as siblings whose context resolves them.

mod common;

use std::collections::BTreeSet;

use common::{start_peered, wait_peers_connected, Node};
use replidb_client::{Client, ClientError, ReadOptions, Session, WriteOptions};
use serde_json::{json, Map, Value};

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

fn clients(nodes: &[Node]) -> Vec<Client> {
    nodes
        .iter()
        .map(|n| Client::new(&n.url()).expect("client"))
        .collect()
}

/// The same session, continued on another node's client.
fn on(client: &Client, s: &Session) -> Session {
    Session::resume(client.clone(), s.token(), &s.min_version()).expect("resume")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_reads_its_writes_on_another_node() {
    let nodes = cluster(&["--link-delay", "300ms"]).await;
    let c = clients(&nodes);

    // Without a token, n2 does not have n1's write yet: the test can fail.
    let w = c[0].put("plain", "v", &Default::default()).await.unwrap();
    assert_eq!(w.origin.as_deref(), Some("n1"));
    assert_eq!(w.min_version, Some(format!("n1:{}", w.lsn)));
    assert_eq!(c[1].get("plain", &Default::default()).await.unwrap(), None);

    // With the session's token, every read on n2 sees the write just made
    // on n1, at once.
    let s1 = Session::new(c[0].clone());
    for i in 0..5 {
        let value = format!("v{i}");
        let w = s1
            .put("profile", value.as_str(), &Default::default())
            .await
            .unwrap();
        assert_eq!(w.origin.as_deref(), Some("n1"));
        let s2 = on(&c[1], &s1);
        let r = s2
            .get("profile", &Default::default())
            .await
            .unwrap()
            .expect("read-your-writes on n2");
        assert_eq!(r.as_str(), Some(value.as_str()));
        assert_eq!(r.node.as_deref(), Some("n2"));
        assert!(r.context.is_some(), "a multi-leader read has a context");
        // n2's answer names its position of every origin, merged in.
        assert!(r.min_version.as_deref().is_some_and(|t| t.contains("n1:")));
        assert!(s2.min_version().contains("n1:"));
    }
    // The token is `origin:lsn`, one entry per origin, and only grows.
    let t = s1.min_version();
    assert!(t.starts_with("n1:"), "{t}");
    s1.put("profile", "again", &Default::default())
        .await
        .unwrap();
    assert_ne!(s1.min_version(), t);

    // A token asked for explicitly that no node can reach: 503.
    let opts = ReadOptions {
        min_version: Some("n1:999999".into()),
        wait_ms: Some(100),
        ..Default::default()
    };
    let fast = Client::with_options(
        &nodes[1].url(),
        replidb_client::ClientOptions {
            retries: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let e = fast.get("profile", &opts).await.unwrap_err();
    assert_eq!(e.code(), Some("min_version_not_reached"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typed_methods_merge_across_nodes() {
    let nodes = cluster(&["--link-delay", "300ms"]).await;
    let c = clients(&nodes);
    let s1 = Session::new(c[0].clone());

    // A write applies to the state its node has applied: the session token
    // makes *reads* wait. So each step on another node reads first (which
    // waits for the session's earlier writes), then writes on top.

    // Counter: +5 on n1, +3 on n2, read on n3.
    assert_eq!(
        s1.counter_add("hits", 5, &Default::default())
            .await
            .unwrap(),
        5
    );
    let s2 = on(&c[1], &s1);
    assert_eq!(s2.counter("hits", &Default::default()).await.unwrap(), 5);
    assert_eq!(
        s2.counter_add("hits", 3, &Default::default())
            .await
            .unwrap(),
        8
    );
    let s3 = on(&c[2], &s2);
    assert_eq!(s3.counter("hits", &Default::default()).await.unwrap(), 8);
    assert_eq!(
        c[2].counter("absent", &Default::default()).await.unwrap(),
        0
    );

    // Set: adds on n1; on n2, an add and a remove of what it has seen.
    let m = s1
        .set_update("tags", &["red", "blue"], &[], &Default::default())
        .await
        .unwrap();
    assert_eq!(m, vec!["blue", "red"]);
    let s2 = on(&c[1], &s1);
    assert_eq!(
        s2.set_members("tags", &Default::default()).await.unwrap(),
        vec!["blue", "red"]
    );
    let m = s2
        .set_update("tags", &["green"], &["red"], &Default::default())
        .await
        .unwrap();
    assert_eq!(m, vec!["blue", "green"]);
    let s3 = on(&c[2], &s2);
    assert_eq!(
        s3.set_members("tags", &Default::default()).await.unwrap(),
        vec!["blue", "green"]
    );

    // Map: fields set on n1; on n2 one removed with null, one added.
    let mut patch = Map::new();
    patch.insert("name".into(), json!("Ada"));
    patch.insert("city".into(), json!("London"));
    let m = s1
        .map_patch("user:1", patch, &Default::default())
        .await
        .unwrap();
    assert_eq!(m["name"], "Ada");
    let s2 = on(&c[1], &s1);
    let seen = s2.map("user:1", &Default::default()).await.unwrap();
    assert_eq!(seen["city"], "London");
    let mut patch = Map::new();
    patch.insert("city".into(), Value::Null);
    patch.insert("lang".into(), json!(["en", "fr"]));
    s2.map_patch("user:1", patch, &Default::default())
        .await
        .unwrap();
    let s3 = on(&c[2], &s2);
    let m = s3.map("user:1", &Default::default()).await.unwrap();
    assert_eq!(
        Value::Object(m),
        json!({"name": "Ada", "lang": ["en", "fr"]})
    );

    // A plain read of a typed key is refused with the server's reason.
    let e = c[0].get("hits", &Default::default()).await.unwrap_err();
    assert_eq!(e.code(), Some("wrong_type"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn siblings_come_back_with_a_context_that_resolves_them() {
    let nodes = cluster(&["--link-delay", "300ms"]).await;
    let c = clients(&nodes);

    // Two carts written at once on two nodes: concurrent versions.
    let plain = WriteOptions::default();
    let (a, b) = tokio::join!(
        c[0].put("cart:7", "Book", &plain),
        c[1].put("cart:7", "Pen", &plain),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let both = format!(
        "{},{}",
        a.min_version.expect("token"),
        b.min_version.expect("token")
    );
    let opts = ReadOptions {
        min_version: Some(both),
        ..Default::default()
    };
    let (siblings, context) = match c[2].get("cart:7", &opts).await {
        Err(ClientError::Siblings {
            key,
            siblings,
            context,
        }) => {
            assert_eq!(key, "cart:7");
            (siblings, context)
        }
        other => panic!("expected siblings, got {other:?}"),
    };
    let values: BTreeSet<&str> = siblings.iter().filter_map(|s| s.as_str()).collect();
    assert_eq!(values, BTreeSet::from(["Book", "Pen"]));
    let origins: BTreeSet<&str> = siblings.iter().map(|s| s.origin.as_str()).collect();
    assert_eq!(origins, BTreeSet::from(["n1", "n2"]));
    assert!(!context.is_empty());

    // The merged value, written with that context, replaces both.
    let s3 = Session::new(c[2].clone());
    let resolve = WriteOptions {
        context: Some(context),
        ..Default::default()
    };
    let w = s3.put("cart:7", "Book,Pen", &resolve).await.unwrap();
    assert_eq!(w.origin.as_deref(), Some("n3"));
    let r = s3
        .get("cart:7", &Default::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.as_str(), Some("Book,Pen"));
    // Everywhere, once the resolution has arrived.
    for client in &c[..2] {
        let r = on(client, &s3)
            .get("cart:7", &Default::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.as_str(), Some("Book,Pen"));
    }
}
