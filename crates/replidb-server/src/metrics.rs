//! Prometheus metrics: one process-wide recorder (the `metrics` facade),
//! rendered by each node's `/metrics` route. Every series carries a
//! `node_id` label, so several nodes in one process stay apart.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::node::{Node, Role};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Install the recorder once; later calls reuse it. `None` if another
/// recorder was installed first by an embedding program.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("replidb_replication_batch_size".into()),
                        COUNT_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("replidb_wal_records_per_fsync".into()),
                        COUNT_BUCKETS,
                    )
                })
                .ok()?;
            builder.install_recorder().ok()
        })
        .as_ref()
}

/// The Prometheus text exposition of every metric in the process.
pub fn render() -> String {
    handle().map(|h| h.render()).unwrap_or_default()
}

/// Counters and histograms a node emits only when something happens,
/// registered at zero so dashboards and alerts (`rate(...)`, `== 0`) see
/// them from the first scrape instead of "no data". Idempotent; called by
/// [`crate::Server::bind`] for every node. Gauges are set by
/// [`refresh_gauges`], which runs at every scrape and every 500 ms.
pub fn register_node_metrics(node_id: &str) {
    describe();
    let id = node_id.to_string();
    for name in [
        "replidb_replication_changes_applied_total",
        "replidb_replication_sync_errors_total",
        "replidb_stale_reads_total",
        "replidb_failovers_total",
        "replidb_rollback_records_total",
    ] {
        metrics::counter!(name, "node_id" => id.clone()).increment(0);
    }
    for name in [
        "replidb_replication_sync_duration_seconds",
        "replidb_replication_batch_size",
        "replidb_wal_fsync_duration_seconds",
        "replidb_wal_records_per_fsync",
    ] {
        // Creating the handle is enough: an empty histogram renders with
        // zero counts in every bucket.
        let _ = metrics::histogram!(name, "node_id" => id.clone());
    }
}

/// HELP lines for `/metrics` (once per process).
fn describe() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
        describe_gauge!("replidb_replication_lag_seconds", Unit::Seconds, "Apply lag: on a follower its own estimate; on the leader per follower (label follower); in multi-leader, of each peer's log applied here (label origin).");
        describe_gauge!("replidb_replication_lag_records", "Records the follower has not applied yet.");
        describe_counter!("replidb_replication_changes_applied_total", "Records applied from the replication stream.");
        describe_gauge!("replidb_replication_follower_connected", "1 while the replication stream is open, else 0 (a leader's own series is 1).");
        describe_counter!("replidb_replication_sync_errors_total", "Replication stream failures (each one is followed by a backoff).");
        describe_gauge!("replidb_replication_last_sync_timestamp_seconds", Unit::Seconds, "Unix time of the last frame from the leader.");
        describe_histogram!("replidb_replication_sync_duration_seconds", Unit::Seconds, "Follower: receipt of a records batch to its acknowledgement (append, fsync, ack).");
        describe_histogram!("replidb_replication_batch_size", "Records per batch the leader sends.");
        describe_gauge!("replidb_replication_changes_pending", "Leader: records the furthest-behind follower still has to apply.");
        describe_gauge!("replidb_replication_active_followers", "Leader: followers with an open stream.");
        describe_histogram!("replidb_wal_fsync_duration_seconds", Unit::Seconds, "Duration of one WAL fsync (one group commit).");
        describe_histogram!("replidb_wal_records_per_fsync", "Records made durable by one fsync.");
        describe_counter!("replidb_http_requests_total", "HTTP requests by route template and status.");
        describe_histogram!("replidb_http_request_duration_seconds", Unit::Seconds, "HTTP request duration by route template.");
        describe_counter!("replidb_stale_reads_total", "Reads that presented a min_lsn above the node's applied LSN (waited or fell back).");
        describe_counter!("replidb_failovers_total", "Promotions of this node to leader.");
        describe_counter!("replidb_conflicts_total", "Concurrent versions this node resolved, by policy (lww, siblings, type); lww losers are in /v1/conflicts.");
        describe_gauge!("replidb_siblings_max", "Most concurrent versions one key has held on this node since it started (siblings policy).");
        describe_counter!("replidb_rollback_records_total", "Records removed by rewinds (kept in rollback/).");
    });
}

/// Update the gauges that describe state rather than events.
pub fn refresh_gauges(node: &Node) {
    let id = node.config.id.clone();
    // Causal keys: conflicts by policy (kept by the table) and, in
    // multi-leader, the lag of every origin.
    let stats = node.engine.table().causal_stats();
    for (policy, n) in &stats.conflicts {
        metrics::counter!("replidb_conflicts_total", "node_id" => id.clone(), "policy" => policy.clone())
            .absolute(*n);
    }
    metrics::gauge!("replidb_siblings_max", "node_id" => id.clone()).set(stats.siblings_max as f64);
    for p in node.peer_streams() {
        let s = p.status();
        if let Some(origin) = s.origin {
            let labels = [("node_id", id.clone()), ("origin", origin)];
            metrics::gauge!("replidb_replication_lag_seconds", &labels)
                .set(s.lag_ms as f64 / 1000.0);
        }
    }
    match node.role() {
        Role::Leader(leader) => {
            let replicas = leader.replicas();
            let active = replicas
                .iter()
                .filter(|r| r.state != replidb_replication::ReplicaState::Disconnected)
                .count();
            metrics::gauge!("replidb_replication_active_followers", "node_id" => id.clone())
                .set(active as f64);
            let pending: u64 = replicas.iter().map(|r| r.lag_records).max().unwrap_or(0);
            metrics::gauge!("replidb_replication_changes_pending", "node_id" => id.clone())
                .set(pending as f64);
            // A leader's own (follower-less) series: it is the source, so no
            // lag, "connected", synced now. Without this a promoted follower
            // would keep exporting its last follower values (the facade
            // cannot delete a series) and keep disconnection alerts firing.
            let own = [("node_id", id.clone())];
            metrics::gauge!("replidb_replication_lag_seconds", &own).set(0.0);
            metrics::gauge!("replidb_replication_lag_records", &own).set(0.0);
            metrics::gauge!("replidb_replication_follower_connected", &own).set(1.0);
            metrics::gauge!("replidb_replication_last_sync_timestamp_seconds", &own)
                .set(node.clock.now_ms() as f64 / 1000.0);
            for r in replicas {
                let labels = [("node_id", id.clone()), ("follower", r.id.clone())];
                metrics::gauge!("replidb_replication_lag_records", &labels)
                    .set(r.lag_records as f64);
                metrics::gauge!("replidb_replication_lag_seconds", &labels)
                    .set(r.lag_ms as f64 / 1000.0);
                let up = r.state != replidb_replication::ReplicaState::Disconnected;
                metrics::gauge!("replidb_replication_follower_connected", &labels)
                    .set(f64::from(u8::from(up)));
            }
        }
        Role::Follower(f) => {
            let s = f.status();
            let applied = node.engine.positions().applied_lsn;
            metrics::gauge!("replidb_replication_lag_seconds", "node_id" => id.clone())
                .set(s.lag_ms as f64 / 1000.0);
            metrics::gauge!("replidb_replication_lag_records", "node_id" => id.clone())
                .set(s.leader_last_lsn.0.saturating_sub(applied.0) as f64);
            metrics::gauge!("replidb_replication_follower_connected", "node_id" => id.clone())
                .set(f64::from(u8::from(s.connected)));
            metrics::gauge!("replidb_replication_last_sync_timestamp_seconds", "node_id" => id.clone())
                .set(s.last_sync_ms as f64 / 1000.0);
            // Leader-only gauges read 0 here (also after a demotion).
            metrics::gauge!("replidb_replication_active_followers", "node_id" => id.clone())
                .set(0.0);
            metrics::gauge!("replidb_replication_changes_pending", "node_id" => id).set(0.0);
        }
    }
}
