//! The program behind `cargo run -p replidb-server --example replication`
//! (seed 004's example, with replication actually running over the
//! network): one leader and two followers in this process on free loopback
//! ports, ten orders written at `w=majority`, then every node's state,
//! health and metrics URL printed. The example and its test call the same
//! [`run`], so what the test checks is what the example prints.
//!
//! ```no_run
//! # async fn demo() -> Result<(), replidb_server::EmbedError> {
//! let mut out = std::io::stdout();
//! let cluster = replidb_server::embed::demo::run(2, 10, &mut out).await?;
//! let reports = cluster.report()?;
//! assert!(reports.iter().all(|r| r.state.last_change_id == reports[0].state.last_change_id));
//! cluster.shutdown().await?;
//! # Ok(()) }
//! ```

use std::io::Write;
use std::time::{Duration, Instant};

use replidb_core::WriteConcern;
use serde::Serialize;

use super::{
    Database, EmbedError, Health, ReplicaNode, ReplicationConfig, ReplicationManager,
    ReplicationState, ReplicationTiming,
};

/// How long followers may take to connect, and writes to reach them.
const DEADLINE: Duration = Duration::from_secs(20);

/// A running in-process cluster.
pub struct DemoCluster {
    /// The leader, `n1`.
    pub leader: ReplicationManager,
    /// The followers, `n2`, `n3`, ...
    pub followers: Vec<ReplicationManager>,
}

/// One node's line in the report.
#[derive(Clone, Debug, Serialize)]
pub struct NodeReport {
    /// Base URL.
    pub url: String,
    /// Its `/metrics` URL.
    pub metrics_url: String,
    /// [`ReplicationManager::get_state`].
    pub state: ReplicationState,
    /// [`ReplicationManager::get_health`].
    pub health: Health,
}

/// Fast reconnects: the demo should never sit in a 2 s backoff.
fn timing() -> ReplicationTiming {
    ReplicationTiming {
        follower_poll_interval: Duration::from_millis(100),
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
    }
}

/// Start a leader and `followers` followers (in-memory tables, WALs in
/// temporary directories) and wait until the leader streams to all.
pub async fn start(followers: usize) -> Result<DemoCluster, EmbedError> {
    let ids: Vec<String> = (0..followers).map(|i| format!("n{}", i + 2)).collect();
    let mut config = ReplicationConfig::leader(ReplicaNode::new("n1", "127.0.0.1:0"));
    // Ports are picked at bind time; the leader only needs the count.
    config.followers = ids
        .iter()
        .map(|id| ReplicaNode::new(id.clone(), "127.0.0.1:0"))
        .collect();
    config.timing = timing();
    let mut leader = ReplicationManager::new(Database::builder().in_memory().build()?, config)?;
    leader.start().await?;
    let leader_url = leader.url()?;
    let mut cluster = DemoCluster {
        leader,
        followers: Vec::with_capacity(followers),
    };
    for id in ids {
        let mut config =
            ReplicationConfig::follower(ReplicaNode::new(id, "127.0.0.1:0"), leader_url.clone());
        config.timing = timing();
        let mut f = ReplicationManager::new(Database::builder().in_memory().build()?, config)?;
        f.start().await?;
        cluster.followers.push(f);
    }
    cluster.wait_streaming(DEADLINE).await?;
    Ok(cluster)
}

/// [`start`], write `orders` orders, wait until every follower applied
/// them, and print the report to `out`. Returns the running cluster.
pub async fn run(
    followers: usize,
    orders: usize,
    out: &mut impl Write,
) -> Result<DemoCluster, EmbedError> {
    let io = |e: std::io::Error| EmbedError::Storage(format!("writing the report: {e}"));
    writeln!(
        out,
        "replidb embedded: 1 leader + {followers} followers in this process"
    )
    .map_err(io)?;
    let cluster = start(followers).await?;
    for (role, m) in std::iter::once(("leader", &cluster.leader))
        .chain(cluster.followers.iter().map(|f| ("follower", f)))
    {
        let id = &m.node_config().id;
        writeln!(out, "  {id}  {role:<8}  {}", m.url()?).map_err(io)?;
    }
    let started = Instant::now();
    let last = cluster.write_orders(orders).await?;
    writeln!(
        out,
        "wrote {orders} orders at w=majority (last lsn {last}) in {} ms",
        started.elapsed().as_millis()
    )
    .map_err(io)?;
    cluster.wait_converged(last, DEADLINE).await?;
    writeln!(
        out,
        "every follower applied lsn {last} after {} ms",
        started.elapsed().as_millis()
    )
    .map_err(io)?;
    print_report(&cluster.report()?, out).map_err(io)?;
    Ok(cluster)
}

impl DemoCluster {
    fn all(&self) -> impl Iterator<Item = &ReplicationManager> {
        std::iter::once(&self.leader).chain(self.followers.iter())
    }

    /// Wait until the leader lists every follower as streaming.
    pub async fn wait_streaming(&self, timeout: Duration) -> Result<(), EmbedError> {
        let want = self.followers.len();
        let node = self.leader.node()?;
        let deadline = Instant::now() + timeout;
        loop {
            let streaming = node.leader().map_or(0, |l| {
                l.replicas()
                    .iter()
                    .filter(|r| r.state == replidb_replication::ReplicaState::Streaming)
                    .count()
            });
            if streaming >= want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(EmbedError::Timeout(format!(
                    "{streaming} of {want} followers streaming after {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Write `orders/0001`.. as small JSON documents at `w=majority`;
    /// returns the last LSN.
    pub async fn write_orders(&self, orders: usize) -> Result<u64, EmbedError> {
        const ITEMS: [&str; 4] = ["widget", "gadget", "sprocket", "gizmo"];
        let mut last = 0;
        for i in 1..=orders {
            let value = serde_json::json!({
                "id": i,
                "item": ITEMS[i % ITEMS.len()],
                "qty": i % 5 + 1,
            })
            .to_string();
            let ack = self
                .leader
                .put_with(
                    &format!("orders/{i:04}"),
                    value,
                    WriteConcern::Majority,
                    Duration::from_secs(5),
                )
                .await?;
            last = ack.lsn;
        }
        Ok(last)
    }

    /// Wait until every follower has applied `lsn`, counted it in
    /// `changes_applied` (the demo's nodes start empty, so the count reaches
    /// the LSN), and told the leader so: then the report is consistent.
    pub async fn wait_converged(&self, lsn: u64, timeout: Duration) -> Result<(), EmbedError> {
        let deadline = Instant::now() + timeout;
        let leader = self.leader.node()?;
        loop {
            let mut behind = Vec::new();
            for f in &self.followers {
                let s = f.get_state()?;
                if s.last_change_id < lsn || s.changes_applied < s.last_change_id {
                    behind.push(s.node_id);
                }
            }
            if let Some(l) = leader.leader() {
                let seen = l.replicas();
                behind.extend(
                    seen.iter()
                        .filter(|r| r.applied_lsn.0 < lsn)
                        .map(|r| format!("{} (as the leader sees it)", r.id)),
                );
            }
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(EmbedError::Timeout(format!(
                    "{behind:?} did not reach lsn {lsn} within {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// State and health of every node, leader first.
    pub fn report(&self) -> Result<Vec<NodeReport>, EmbedError> {
        self.all()
            .map(|m| {
                let url = m.url()?;
                Ok(NodeReport {
                    metrics_url: format!("{url}/metrics"),
                    url,
                    state: m.get_state()?,
                    health: m.get_health()?,
                })
            })
            .collect()
    }

    /// Stop every node, followers first.
    pub async fn shutdown(mut self) -> Result<(), EmbedError> {
        for f in &mut self.followers {
            f.shutdown().await?;
        }
        self.leader.shutdown().await
    }
}

/// A table of state and health per node, then the metrics URLs.
pub fn print_report(reports: &[NodeReport], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "{:<4} {:<8} {:>14} {:>15} {:>9} {:>6} {:>7} {:>8} {:>5}  error",
        "node",
        "role",
        "last_change_id",
        "changes_applied",
        "connected",
        "errors",
        "healthy",
        "lag_s",
        "drift"
    )?;
    for r in reports {
        let (s, h) = (&r.state, &r.health);
        writeln!(
            out,
            "{:<4} {:<8} {:>14} {:>15} {:>9} {:>6} {:>7} {:>8.3} {:>5}  {}",
            s.node_id,
            s.role,
            s.last_change_id,
            s.changes_applied,
            s.connected,
            s.error_count,
            h.healthy,
            h.lag_seconds,
            h.outbox_drift,
            h.error.as_deref().unwrap_or("-"),
        )?;
    }
    writeln!(out)?;
    for r in reports {
        let state = serde_json::to_string(&r.state).unwrap_or_default();
        let health = serde_json::to_string(&r.health).unwrap_or_default();
        writeln!(out, "{} state  {state}", r.state.node_id)?;
        writeln!(out, "{} health {health}", r.state.node_id)?;
    }
    writeln!(out)?;
    writeln!(out, "metrics (Prometheus text):")?;
    for r in reports {
        writeln!(out, "  {}  {}", r.state.node_id, r.metrics_url)?;
    }
    Ok(())
}
