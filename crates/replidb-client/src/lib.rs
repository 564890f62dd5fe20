//! An async Rust client for replidb's HTTP API (API.md).
//!
//! # What it does for you
//!
//! replidb is one leader and many followers. Any node (or the router) can be
//! given to [`Client::new`]; the client hides the topology where that is safe
//! and exposes it where it matters:
//!
//! - **Writes reach the leader.** A follower answers a write with
//!   `307 Temporary Redirect` to the leader. The client follows it itself,
//!   re-sending the same method and body (reqwest's automatic policy is off,
//!   because it does not reliably resend a `PUT` body), at most
//!   [`ClientOptions::max_redirects`] hops.
//! - **Transient failures are retried** with exponential backoff and jitter:
//!   connection errors (the request never left, so a retry cannot double a
//!   write) and `503` (a node refused the request: no lease, `min_lsn` not
//!   reached with `fallback=error`). Timeouts are never retried, since the
//!   write may have happened.
//! - **Durability is explicit.** A write whose write concern was not met in
//!   time is an error, [`ClientError::NotCommitted`], carrying the LSN and
//!   the ack count, so a caller cannot mistake it for success.
//! - **Staleness is visible.** Every [`ReadResult`] says which node served
//!   it, its role, epoch, `applied_lsn` and lag, and the value's own LSN.
//! - **Sessions.** [`Session`] gives read-your-writes and monotonic reads by
//!   carrying the highest LSN seen as `min_lsn` on every read, and in the
//!   multi-leader topology the highest LSN seen of every origin as
//!   `X-Replidb-Min-Version`.
//!
//! # Multi-leader
//!
//! Every node takes writes, so there is no redirect. What changes:
//! - a write answers its `origin` and a token `origin:lsn`
//!   ([`WriteResult::min_version`]); a read answers the serving node's
//!   position of every origin ([`ReadResult::min_version`]) and the value's
//!   causal context ([`ReadResult::context`]). [`ReadOptions::min_version`]
//!   makes a node wait until it has applied what a token names.
//! - under the `siblings` policy a key may hold concurrent versions: `get`
//!   then returns [`ClientError::Siblings`] with every version and their
//!   common context (not a value, not a generic error); writing the merged
//!   value with [`WriteOptions::context`] set to it replaces them.
//! - the typed keys merge by themselves: [`Client::counter_add`] /
//!   [`Client::counter`], [`Client::set_update`] / [`Client::set_members`],
//!   [`Client::map_patch`] / [`Client::map`] (they work in single-leader
//!   clusters too).
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> replidb_client::Result<()> {
//! use replidb_client::{Client, Consistency, ReadOptions, WriteOptions};
//! let client = Client::new("http://127.0.0.1:7000")?;
//! let w = client.put("user/1", "ada", &WriteOptions::majority()).await?;
//! println!("written at lsn {} on {} node(s)", w.lsn, w.acks);
//! let r = client.get("user/1", &ReadOptions::with(Consistency::Strong)).await?;
//! assert_eq!(r.map(|r| r.value), Some(b"ada".to_vec()));
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `client.rs` — [`Client`]: one method per endpoint, decoding answers.
//! - `transport.rs` — one exchange: retries, backoff, redirects.
//! - `session.rs` — [`Session`] and its token.
//! - `types.rs` — options and results; `error.rs` — [`ClientError`].
//!
//! # Left out
//! Node-to-node traffic does not use this crate (it must run over a simulated
//! network); there is no TLS (the workspace builds reqwest without it); the
//! router's cookie-based sessions are not used, a [`Session`] carries its
//! token itself. In the multi-leader topology a scan does not wait for
//! `X-Replidb-Min-Version` (only single-key and typed reads do), and
//! `/v1/conflicts` has no method yet.

mod client;
mod error;
mod session;
mod transport;
mod types;

pub use client::Client;
pub use error::{ClientError, Result};
pub use replidb_core::WriteConcern;
pub use session::Session;
pub use types::{
    BearerToken, ClientOptions, Consistency, DeleteResult, Fallback, ReadOptions, ReadResult,
    ScanItem, ScanPage, Sibling, Txn, TxnCondition, TxnOp, WriteOptions, WriteResult,
};
