//! The embedding API: the example's own code path (`embed::demo::run`), a
//! database that survives a restart, and the errors a caller can meet.

use std::time::{Duration, Instant};

use replidb_server::embed::{demo, Database, ReplicaNode, ReplicationConfig, ReplicationManager};
use replidb_server::EmbedError;

/// What `cargo run -p replidb-server --example replication` does, checked:
/// every follower at the leader's LSN, healthy and connected, and the
/// metrics the example points at really served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_cluster_replicates_ten_orders_to_both_followers() {
    let started = Instant::now();
    let mut out = Vec::new();
    let cluster = demo::run(2, 10, &mut out).await.expect("demo runs");
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.contains("wrote 10 orders"), "{text}");

    let reports = cluster.report().expect("report");
    assert_eq!(reports.len(), 3, "{text}");
    let leader = &reports[0];
    assert_eq!(leader.state.role, "leader", "{text}");
    assert_eq!(leader.state.last_change_id, 10, "{text}");
    for r in &reports[1..] {
        assert_eq!(r.state.role, "follower", "{text}");
        assert_eq!(
            r.state.last_change_id, leader.state.last_change_id,
            "{text}"
        );
        assert_eq!(r.state.changes_applied, 10, "{text}");
        assert!(r.state.connected, "{text}");
        assert!(r.health.healthy, "{text}");
        assert_eq!(r.health.outbox_drift, 0, "{text}");
        assert!(text.contains(&r.metrics_url), "{text}");
    }
    for (i, f) in cluster.followers.iter().enumerate() {
        let key = format!("orders/{:04}", i + 1);
        assert!(
            f.get(&key).expect("local read").is_some(),
            "{key} on a follower"
        );
    }

    // The printed metrics URL serves the follower's series, including the
    // sync-duration histogram (one sample per Records batch).
    replidb_tls::install_default_provider();
    let metrics = reqwest::get(&reports[1].metrics_url)
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let id = &reports[1].state.node_id;
    let applied = format!("replidb_replication_changes_applied_total{{node_id=\"{id}\"}} 10");
    assert!(metrics.contains(&applied), "{applied} missing:\n{metrics}");
    let synced = format!("replidb_replication_sync_duration_seconds_count{{node_id=\"{id}\"}}");
    let count = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&synced))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(count >= 1.0, "{synced} should count batches:\n{metrics}");

    cluster.shutdown().await.expect("clean shutdown");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

/// An on-disk database keeps its data and position across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_disk_database_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = ReplicationConfig::leader(ReplicaNode::new("solo", "127.0.0.1:0"));
    let open = || Database::builder().on_disk(dir.path()).build().expect("db");

    let mut m = ReplicationManager::new(open(), config.clone()).expect("manager");
    m.start().await.expect("start");
    assert!(m.is_leader());
    let first = m.put("user/1", "ada").await.expect("put");
    let second = m.put("user/2", "grace").await.expect("put");
    assert_eq!(second.lsn, first.lsn + 1);
    m.delete("user/1").await.expect("delete");
    m.shutdown().await.expect("shutdown");

    let mut m = ReplicationManager::new(open(), config).expect("manager");
    m.start().await.expect("restart");
    assert_eq!(m.get("user/1").expect("get"), None);
    assert_eq!(m.get("user/2").expect("get"), Some(b"grace".to_vec()));
    let state = m.get_state().expect("state");
    assert_eq!(state.last_change_id, second.lsn + 1);
    assert!(m.get_health().expect("health").healthy);
    m.shutdown().await.expect("shutdown");
}

/// The typed errors a caller meets: not started, not the leader, bad key,
/// value too large, bad address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed() {
    let db = || Database::builder().in_memory().build().expect("db");
    let mut leader = ReplicationManager::new(
        db(),
        ReplicationConfig::leader(ReplicaNode::new("n1", "127.0.0.1:0")),
    )
    .expect("manager")
    .configure(|c| c.max_value_bytes = 16);
    assert!(matches!(leader.get_health(), Err(EmbedError::NotStarted)));
    leader.start().await.expect("start");
    assert!(matches!(
        leader.start().await,
        Err(EmbedError::AlreadyStarted)
    ));
    assert!(matches!(
        leader.put("", "x").await,
        Err(EmbedError::InvalidKey(_))
    ));
    assert!(matches!(
        leader.put("k", vec![0u8; 17]).await,
        Err(EmbedError::ValueTooLarge { len: 17, limit: 16 })
    ));

    let leader_url = leader.url().expect("url");
    let mut follower = ReplicationManager::new(
        db(),
        ReplicationConfig::follower(ReplicaNode::new("n2", "127.0.0.1:0"), leader_url.clone()),
    )
    .expect("manager");
    follower.start().await.expect("start");
    assert!(!follower.is_leader());
    match follower.put("k", "v").await {
        Err(EmbedError::NotLeader { leader }) => assert_eq!(leader, leader_url),
        other => panic!("expected NotLeader, got {other:?}"),
    }

    let bad = ReplicationManager::new(
        db(),
        ReplicationConfig::leader(ReplicaNode::new("n3", "not an address")),
    );
    assert!(matches!(bad, Err(EmbedError::InvalidConfig(_))));

    follower.shutdown().await.expect("shutdown");
    leader.shutdown().await.expect("shutdown");
}
