//! Replication compression with real processes: nodes started with
//! different `--replication-compression` settings negotiate a codec per
//! stream and converge, a snapshot bootstrap goes through compressed, and
//! the leader's metrics show fewer bytes sent than it would have sent
//! plain.

mod common;

use std::time::Duration;

use common::{free_port, wait_for, wait_until, Cluster, Node};
use serde_json::Value;

/// A JSON document like an application's, about 0.9 kB: compressible, but
/// not trivially (ids and numbers vary).
fn json_value(i: u64) -> String {
    let items: Vec<String> = (0..12)
        .map(|j| {
            format!(
                r#"{{"sku":"SKU-{:05}","name":"item number {j}","qty":{},"price_cents":{}}}"#,
                (i * 7 + j) % 100_000,
                (i + j) % 9 + 1,
                (i * 31 + j * 17) % 10_000
            )
        })
        .collect();
    format!(
        r#"{{"id":{i},"user":"user-{}","email":"user{}@example.com","status":"active","items":[{}]}}"#,
        i % 97,
        i % 97,
        items.join(",")
    )
}

/// Write `n` JSON values under `prefix`, concurrently; returns the last LSN.
async fn load(node: &Node, prefix: &str, from: u64, n: u64) -> u64 {
    let mut last = 0;
    for chunk in (from..from + n).collect::<Vec<_>>().chunks(16) {
        let keys: Vec<String> = chunk.iter().map(|i| format!("{prefix}{i:06}")).collect();
        let puts = keys
            .iter()
            .zip(chunk)
            .map(|(k, i)| node.put_q(k, "", json_value(*i)));
        for r in futures::future::join_all(puts).await {
            last = last.max(r["lsn"].as_u64().expect("lsn in put answer"));
        }
    }
    last
}

/// The value of the counter `name` with label `codec="{codec}"` on `node`.
async fn counter(node: &Node, name: &str, codec: &str) -> f64 {
    counter_in(&metrics_text(node).await, name, codec)
}

/// One scrape of `node`'s `/metrics`.
async fn metrics_text(node: &Node) -> String {
    node.http()
        .get(node.at("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The sum of counter `name` for `codec` in one scrape.
fn counter_in(text: &str, name: &str, codec: &str) -> f64 {
    let label = format!("codec=\"{codec}\"");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The codec the leader's `/status` shows for follower `id`.
fn follower_codec(status: &Value, id: &str) -> Value {
    status["followers"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["id"] == id))
        .map(|f| f["compression"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_leader_with_none_and_lz4_followers_converges_through_a_snapshot() {
    let mut cluster = Cluster::start_with(
        2,
        &[
            "--replication-compression",
            "zstd",
            "--wal-segment-bytes",
            "16384",
            "--wal-retention-bytes",
            "65536",
            "--checkpoint-interval",
            "100ms",
        ],
        |i| {
            let codec = ["none", "lz4"][i];
            vec![
                "--replication-compression".into(),
                codec.into(),
                "--backoff-base".into(),
                "50ms".into(),
                "--backoff-max".into(),
                "500ms".into(),
            ]
        },
    )
    .await;
    // Both followers decode zstd, so the leader uses its own setting with
    // each, whatever theirs is.
    let s = cluster.leader.status().await;
    assert_eq!(follower_codec(&s, "n2"), "zstd", "{s}");
    assert_eq!(follower_codec(&s, "n3"), "zstd", "{s}");
    for f in &cluster.followers {
        assert_eq!(f.status().await["replication_compression"], "zstd");
    }

    load(&cluster.leader, "a/", 0, 300).await;
    cluster.wait_converged(Duration::from_secs(30)).await;
    let plain = counter(
        &cluster.leader,
        "replidb_replication_bytes_uncompressed_total",
        "zstd",
    )
    .await;
    let sent = counter(
        &cluster.leader,
        "replidb_replication_bytes_sent_total",
        "zstd",
    )
    .await;
    println!("zstd: {sent} bytes sent for {plain} uncompressed");
    // 300 values of at least 800 bytes, to each of two followers.
    assert!(plain > 300.0 * 800.0 * 2.0, "uncompressed bytes {plain}");
    assert!(sent * 3.0 < plain, "sent {sent} of {plain}");

    // n2 stops; the leader trims its WAL past it; n2 returns and needs a
    // snapshot, which travels compressed.
    let stopped_at = cluster.followers[0].status().await["flush_lsn"]
        .as_u64()
        .expect("flush_lsn");
    cluster.followers[0].stop().await;
    let last = load(&cluster.leader, "b/", 1000, 400).await;
    wait_for(
        "the leader trims its WAL past the stopped follower",
        Duration::from_secs(30),
        async || {
            let first = cluster.leader.status().await["first_lsn"].as_u64()?;
            (first > stopped_at + 1).then_some(first)
        },
    )
    .await;
    let sent_before = counter(
        &cluster.leader,
        "replidb_replication_bytes_sent_total",
        "zstd",
    )
    .await;
    let plain_before = counter(
        &cluster.leader,
        "replidb_replication_bytes_uncompressed_total",
        "zstd",
    )
    .await;
    cluster.followers[0].restart().await;
    let digest = cluster.wait_converged(Duration::from_secs(60)).await;
    assert_eq!(digest["applied_lsn"], last, "{digest}");
    let n2 = &cluster.followers[0];
    wait_until(
        "n2 reports the snapshot it installed",
        Duration::from_secs(10),
        async || {
            n2.status().await["snapshots_installed"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        },
    )
    .await;
    assert_eq!(n2.status().await["replication_compression"], "zstd");
    // The snapshot (700 values) went out compressed.
    let snap_sent = counter(
        &cluster.leader,
        "replidb_replication_bytes_sent_total",
        "zstd",
    )
    .await
        - sent_before;
    let snap_plain = counter(
        &cluster.leader,
        "replidb_replication_bytes_uncompressed_total",
        "zstd",
    )
    .await
        - plain_before;
    println!("snapshot: {snap_sent} bytes sent for {snap_plain} uncompressed");
    assert!(snap_plain > 700.0 * 800.0, "{snap_plain}");
    assert!(snap_sent * 3.0 < snap_plain, "{snap_sent} of {snap_plain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_none_leader_sends_plain_to_a_zstd_follower() {
    let cluster = Cluster::start(
        1,
        &["--replication-compression", "none"],
        &["--replication-compression", "zstd"],
    )
    .await;
    let s = cluster.leader.status().await;
    assert_eq!(follower_codec(&s, "n2"), "none", "{s}");
    assert_eq!(
        cluster.followers[0].status().await["replication_compression"],
        "none"
    );
    load(&cluster.leader, "k/", 0, 100).await;
    cluster.wait_converged(Duration::from_secs(30)).await;
    // Both counters from one scrape, and the stream keeps sending
    // heartbeats: a scrape may fall between a frame's two increments, so
    // wait for one that does not. A leader that compressed would never
    // show them equal.
    let (plain, sent) = wait_for(
        "one scrape with the bytes sent equal to the bytes before compression",
        Duration::from_secs(10),
        async || {
            let text = metrics_text(&cluster.leader).await;
            let plain = counter_in(
                &text,
                "replidb_replication_bytes_uncompressed_total",
                "none",
            );
            let sent = counter_in(&text, "replidb_replication_bytes_sent_total", "none");
            (sent == plain).then_some((plain, sent))
        },
    )
    .await;
    assert!(plain > 100.0 * 800.0, "{plain}");
    assert_eq!(sent, plain, "none sends what it would send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_leader_pair_with_different_codecs_converges() {
    let ports = [free_port(), free_port()];
    let peers = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, codec) in ["zstd", "none"].into_iter().enumerate() {
        let args = [
            "--topology",
            "multi-leader",
            "--peers",
            peers.as_str(),
            "--replication-compression",
            codec,
        ];
        nodes.push(Node::start_on(&format!("n{}", i + 1), ports[i], &args).await);
    }
    common::wait_peers_connected(&nodes).await;
    // Each side compresses what it serves with its own setting: n1's
    // stream to n2 is zstd, n2's to n1 plain.
    let codec_from_peer = async |n: &Node| n.status().await["peers"][0]["compression"].clone();
    assert_eq!(codec_from_peer(&nodes[0]).await, "none");
    assert_eq!(codec_from_peer(&nodes[1]).await, "zstd");

    let (a, b) = futures::join!(
        load(&nodes[0], "from1/", 0, 150),
        load(&nodes[1], "from2/", 0, 150)
    );
    assert!(a > 0 && b > 0);
    // The same key from both sides: last writer wins the same everywhere.
    nodes[0].put("both", json_value(1)).await;
    nodes[1].put("both", json_value(2)).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let d1 = nodes[0].digest().await["digest"].clone();
            let d2 = nodes[1].digest().await["digest"].clone();
            if d1 == d2 && !d1.is_null() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the pair converges within 30 s");
    let plain = counter(
        &nodes[0],
        "replidb_replication_bytes_uncompressed_total",
        "zstd",
    )
    .await;
    let sent = counter(&nodes[0], "replidb_replication_bytes_sent_total", "zstd").await;
    println!("multi-leader zstd: {sent} bytes sent for {plain} uncompressed");
    assert!(sent * 3.0 < plain, "{sent} of {plain}");
}
