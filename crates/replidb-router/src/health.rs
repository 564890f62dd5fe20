//! Health checks: every `--health-interval`, `GET /status` on every node at
//! once (each with `--health-timeout`), fed to the routing core. A request
//! path that finds the leader gone asks for a round at once
//! ([`Shared::refresh_now`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::core::{NodeRole, Observation};
use crate::shared::Shared;

impl Shared {
    /// Run one health round unless another one finished while we waited
    /// for the lock (its result is as fresh as ours would be).
    pub async fn refresh_now(&self) {
        let before = self.rounds.load(Ordering::Acquire);
        let _guard = self.refresh.lock().await;
        if self.rounds.load(Ordering::Acquire) != before {
            return;
        }
        self.check_all().await;
    }

    /// Check every node concurrently and record the results. Callers hold
    /// `refresh` (or accept a concurrent round).
    pub async fn check_all(&self) {
        let urls: Vec<String> = self.state().nodes().iter().map(|n| n.url.clone()).collect();
        let results =
            futures::future::join_all(urls.iter().map(|u| check(&self.health_http, u))).await;
        let now = Instant::now();
        {
            let mut st = self.state();
            let leader_before = st.leader();
            for (i, r) in results.into_iter().enumerate() {
                match r {
                    Ok(obs) => st.record_success(i, obs, now),
                    Err(e) => st.record_failure(i, e),
                }
            }
            if st.leader() != leader_before {
                let name = |l: Option<usize>| {
                    l.and_then(|i| st.nodes().get(i))
                        .map_or("none".to_string(), |n| n.name().to_string())
                };
                tracing::info!(from = %name(leader_before), to = %name(st.leader()), "leader changed");
                metrics::counter!("replidb_router_leader_changes_total").increment(1);
            }
            for c in st.rotation_changes() {
                let Some(n) = st.nodes().get(c.index) else {
                    continue;
                };
                if c.joined {
                    tracing::info!(node = %n.name(), url = %n.url, reason = %c.reason, "node joined the read rotation");
                } else {
                    tracing::info!(node = %n.name(), url = %n.url, reason = %c.reason, "node left the read rotation");
                }
            }
            for (i, n) in st.nodes().iter().enumerate() {
                let labels = [("node", n.url.clone())];
                metrics::gauge!("replidb_router_node_healthy", &labels)
                    .set(f64::from(u8::from(st.is_healthy(i))));
                metrics::gauge!("replidb_router_node_eligible", &labels)
                    .set(f64::from(u8::from(st.is_eligible(i))));
                if let Some(o) = &n.seen {
                    metrics::gauge!("replidb_router_node_lag_seconds", &labels)
                        .set(o.lag_ms as f64 / 1000.0);
                }
            }
        }
        self.sessions().purge(now);
        self.rounds.fetch_add(1, Ordering::AcqRel);
    }
}

/// Check forever, every `health_interval` (a slow round delays the next
/// one rather than stacking rounds).
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let _guard = shared.refresh.lock().await;
        shared.check_all().await;
    }
}

/// One `GET /status`.
async fn check(http: &reqwest::Client, url: &str) -> Result<Observation, String> {
    let resp = http
        .get(format!("{url}/status"))
        .send()
        .await
        .map_err(|e| describe(&e))?;
    if !resp.status().is_success() {
        return Err(format!("/status answered {}", resp.status()));
    }
    let v: Value = replidb_server::peer_answer::json(
        resp,
        replidb_server::peer_answer::CONTROL_ANSWER_BYTES_MAX,
    )
    .await
    .map_err(|e| e.to_string())?;
    parse_status(&v)
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        e.to_string()
    }
}

/// The fields of a node's `/status` that routing uses.
pub(crate) fn parse_status(v: &Value) -> Result<Observation, String> {
    let role = match v["role"].as_str() {
        Some("leader") => NodeRole::Leader,
        Some("follower") => NodeRole::Follower,
        other => return Err(format!("/status has an unknown role {other:?}")),
    };
    let id = v["id"].as_str().ok_or("/status has no id")?.to_string();
    let num = |name: &str| v[name].as_u64();
    let leaderless = v["topology"].as_str() == Some("leaderless");
    let multi_leader = leaderless || v["topology"].as_str() == Some("multi-leader");
    let lag_ms = if multi_leader {
        // Every node leads its own log; how far behind it is, is how far
        // behind its slowest peer it has applied.
        v["peers"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["lag_ms"].as_u64()).max())
            .unwrap_or_default()
            .unwrap_or(0)
    } else if role == NodeRole::Leader {
        0
    } else {
        num("lag_ms").ok_or("/status of a follower has no lag_ms")?
    };
    Ok(Observation {
        id,
        role,
        epoch: num("epoch").ok_or("/status has no epoch")?,
        applied_lsn: num("applied_lsn").unwrap_or(0),
        lag_ms,
        multi_leader,
        leaderless,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_documents_are_parsed() {
        let f = json!({"id":"n2","role":"follower","epoch":3,"applied_lsn":17,"lag_ms":250});
        assert_eq!(
            parse_status(&f).unwrap(),
            Observation {
                id: "n2".into(),
                role: NodeRole::Follower,
                epoch: 3,
                applied_lsn: 17,
                lag_ms: 250,
                multi_leader: false,
                leaderless: false,
            }
        );
        let m = json!({"id":"n3","role":"leader","epoch":0,"applied_lsn":4,"topology":"multi-leader",
            "peers":[{"lag_ms":20},{"lag_ms":310}]});
        let o = parse_status(&m).unwrap();
        assert!(o.multi_leader);
        assert_eq!(o.lag_ms, 310, "behind its slowest peer");
        let l = json!({"id":"n1","role":"leader","epoch":3,"applied_lsn":17});
        assert_eq!(parse_status(&l).unwrap().lag_ms, 0);
        assert!(parse_status(&json!({"id":"x","role":"router","epoch":1})).is_err());
        assert!(parse_status(&json!({"role":"follower","epoch":1,"lag_ms":0})).is_err());
        assert!(parse_status(&json!({"id":"n2","role":"follower","epoch":1})).is_err());
    }
}
