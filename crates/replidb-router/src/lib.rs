//! replidb-router: a read/write-splitting HTTP proxy in front of a replidb
//! cluster (`replidb router`, API.md "Router").
//!
//! # What it does
//!
//! A client that talks to the router sees one node. Behind it:
//!
//! - **Writes** (`PUT`/`DELETE /v1/kv/*`, `POST /v1/txn`, `/write`,
//!   `/write-with-quorum`) go to the leader. The leader is the node whose
//!   `/status` says `role=leader` in the highest epoch; it is re-discovered
//!   when a node answers `307` (the router follows `Location` once, then
//!   refreshes) and when the leader refuses a connection (refresh at once,
//!   retry once — a refused connection never carried the write).
//! - **Reads** (`GET /v1/kv/*`, `GET /v1/kv?prefix`) go to a follower
//!   chosen by `--read-strategy` (`least-lag`: smallest reported lag, ties
//!   in turn; `round-robin`; `random`) among the *eligible* ones: seen as a
//!   follower by its last check, fewer than `--failure-threshold` failures
//!   in a row, lag within `--max-lag`. With none eligible, or for
//!   `consistency=strong|leader`, the leader serves. The seed reads
//!   (`/read`, `/follower-read`, `/read-with-repair`) go to the leader
//!   directly: a node serves them only there (a follower would proxy them).
//! - Every answer is the node's own (status, body, `X-Replidb-*` headers,
//!   streamed), plus `X-Replidb-Routed-To: <node id>`.
//! - The router's own `/status` (nodes, leader, counters), `/health` (200
//!   while a leader is known) and `/metrics` (`replidb_router_*`).
//!
//! # Multi-leader
//!
//! When the nodes' `/status` say `"topology": "multi-leader"`, every node is
//! a writer and the router looks for no leader:
//!
//! - a **write** (also `POST /v1/counter|set/{key}`, `PATCH /v1/map/{key}`, their `DELETE`)
//!   goes to the session's *home*: the node named by `X-Replidb-Home` (id
//!   or URL; pinned), else the one remembered for the session
//!   (`X-Replidb-Session` or the `replidb_session` cookie), else
//!   `--home`, else the healthy node with the fewest requests in flight.
//!   The node that took it becomes the session's home (`homes.rs`);
//! - a **read** goes to any eligible node by the read strategy, with
//!   `X-Replidb-Min-Version` raised to the session's token: the merge, per
//!   origin, of what its writes answered in `X-Replidb-Min-Version`, kept
//!   per session and in the `replidb_min_version` cookie. The node waits
//!   until it has applied the session's writes: read-your-writes from any
//!   node.
//!
//! # Read-your-writes, three ways
//!
//! | how | client change | cost |
//! | --- | --- | --- |
//! | `min_lsn` / `X-Replidb-Min-Lsn` passed through | carries the token itself (`replidb_client::Session`) | a follower behind the token waits (≤ `wait_ms`), then the leader serves |
//! | LSN cookie `replidb_lsn` | none (cookies only) | same waits, for every read of that client, even of keys it never wrote |
//! | sticky window (`--sticky-window`) | none (cookie or `X-Replidb-Session`) | every read of a recent writer loads the leader, for the whole window, even when followers are caught up |
//!
//! The **cookie** works like LiteFS's proxy: each successful write sets
//! `replidb_lsn=<max(old cookie, write lsn)>`, each served read sets it to
//! `max(old cookie, applied lsn of the state served)`, and each later read
//! carrying it is sent with `min_lsn = max(cookie, explicit token)`, so the
//! follower serves it only once it has applied the client's last write and
//! everything the client has already read. It gives
//! read-your-writes and monotonic reads per cookie jar; it says nothing
//! across clients. The **sticky window** guesses instead of knowing: it is
//! right as long as replication lag stays below the window, and it moves
//! load to the leader; it exists for clients that cannot keep cookies
//! consistent (several processes sharing a session header).
//!
//! # Design
//!
//! The decisions are a sans-IO core ([`core`]): [`core::RouterState`] holds
//! what the health checks and redirects taught the router, and
//! [`core::choose`] maps a [`core::RequestKind`] to a [`core::Target`] given
//! `now` and a tie-breaking number, so unit tests drive it without a
//! network or a clock. `request.rs` reads requests (endpoint, parameters,
//! cookies) with pure functions; `sessions.rs` is the bounded sticky map.
//! IO is at the edge: `health.rs` (the periodic `/status` round),
//! `proxy.rs` (send, retry, relay) and `server.rs` (axum).
//!
//! Limits: request bodies as a node's (`--max-value-bytes` + 64 KiB; four
//! values for a transaction), proxied requests time out after
//! `--request-timeout` (raised to the request's `wait_ms`/`timeout_ms` + 2
//! s), checks after `--health-timeout`, and the session map holds at most
//! `--max-sessions` (expired entries go first, then the oldest).
//!
//! # Left out
//!
//! - Node discovery: the node list is fixed; a `307` to a node outside it
//!   is followed but that node is not health-checked.
//! - The cookie carries an LSN without its epoch: after a failover that
//!   rolled back the client's write, its reads wait `wait_ms` and fall back
//!   to the new leader (correct, slower) until it writes again.
//! - No TLS, no authentication, no connection limit of its own, no
//!   hedged or speculative reads, no `/admin` forwarding (admin calls name
//!   one node; send them to it).
//! - Health is `/status` polling; there is no passive outlier detection
//!   beyond counting failed requests as failed checks.

pub mod config;
pub mod core;
mod dashboard;
mod error;
mod health;
pub mod homes;
mod proxy;
pub mod request;
mod server;
mod sessions;
mod shared;

pub use config::RouterConfig;
pub use core::ReadStrategy;
pub use error::RouterError;
pub use proxy::ROUTED_TO_HEADER;
pub use server::{Router, StartError};
pub use sessions::SessionMap;

/// Bind and serve until `shutdown` resolves.
pub async fn run(
    config: RouterConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    Router::bind(config).await?.run(shutdown).await
}
