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

/// Update the gauges that describe state rather than events.
pub fn refresh_gauges(node: &Node) {
    let id = node.config.id.clone();
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
        }
    }
}
