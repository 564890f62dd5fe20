//! The static coordinator: the leader is named in configuration (the node
//! started without `--follow`), and leadership moves only when an operator
//! says so — `POST /admin/promote` on a follower, or a planned switchover.

use std::sync::Weak;
use std::time::Duration;

use replidb_coordinator::{BoxFuture, Coordinator, CoordinatorError, Result};
use replidb_core::Epoch;

use crate::node::Node;

/// Leadership by configuration and operator action.
pub struct StaticCoordinator {
    node: Weak<Node>,
}

impl StaticCoordinator {
    /// The static coordinator of `node`.
    pub fn new(node: Weak<Node>) -> Self {
        StaticCoordinator { node }
    }
}

impl Coordinator for StaticCoordinator {
    fn kind(&self) -> &'static str {
        "static"
    }

    fn automatic(&self) -> bool {
        false
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({"kind": "static"})
    }

    /// Ask the target to promote itself (it announces the new epoch to its
    /// peers), then follow it.
    fn hand_over<'a>(
        &'a self,
        _target_id: &'a str,
        target_url: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let node = self
                .node
                .upgrade()
                .ok_or_else(|| CoordinatorError::Refused("node stopped".into()))?;
            let url = format!("{}/admin/promote", target_url.trim_end_matches('/'));
            let resp = node
                .http
                .post(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .map_err(|e| CoordinatorError::Refused(format!("{url}: {e}")))?;
            if !resp.status().is_success() {
                return Err(CoordinatorError::Refused(format!(
                    "{url} answered {}",
                    resp.status()
                )));
            }
            let v: serde_json::Value = resp
                .json()
                .await
                .map_err(|e| CoordinatorError::Refused(format!("{url}: {e}")))?;
            let epoch = Epoch(v["epoch"].as_u64().unwrap_or(0));
            node.follow(target_url.to_string(), epoch)
                .await
                .map_err(|e| CoordinatorError::Refused(e.to_string()))
        })
    }
}
