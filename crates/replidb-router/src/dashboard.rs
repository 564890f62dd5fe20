//! The router's `/dashboard`: the live page of `replidb_server::dashboard`,
//! seeded with the router's node list (it discovers nodes the list lacks
//! from their `/status`). Read-only: the controls are the playground's.

use std::sync::Arc;

use replidb_server::dashboard::{Dashboard, DashboardConfig};

use crate::shared::Shared;

/// The dashboard this router serves.
pub fn for_router(shared: &Shared) -> Arc<Dashboard> {
    Dashboard::new(DashboardConfig {
        seeds: shared.config.nodes.clone(),
        title: format!("replidb router {}", shared.config.listen),
        controls: false,
        http: Some(shared.health_http.clone()),
    })
}
