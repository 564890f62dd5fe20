//! The read path: decide whether this node may serve a read at the
//! requested consistency, wait for a token if it must, and otherwise hand
//! the read to the leader.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use replidb_core::Lsn;

use super::params::{Consistency, Fallback, ReadOpts};
use super::{ApiError, ApiResult};
use crate::node::{Node, Role};
use replidb_replication::Leader;
use std::sync::Arc;

/// Where a read is served.
pub enum Plan {
    /// Here, from the local table.
    Local,
    /// By the leader (this node proxies).
    Leader,
    /// Here, on the leader, linearizably: read the table, then
    /// [`confirm_strong`] before answering.
    Strong(Arc<Leader>, u64),
}

/// Decide where to serve a read, waiting for tokens and commits as the
/// options ask. Errors are 503s the client asked for (`fallback=error`) or
/// that no node can avoid.
///
/// In the causal topologies every read is local: a `min_lsn` names a
/// position in one leader's log, which they do not have, so it is ignored
/// there (README; their own token is `min_version`), for a scan as for a
/// single key.
pub async fn plan(node: &Node, opts: &ReadOpts) -> ApiResult<Plan> {
    refuse_single_leader_only(node, opts)?;
    if node.is_multi_leader() || node.is_leaderless() {
        return Ok(Plan::Local);
    }
    match node.role() {
        Role::Leader(leader) => {
            if let Some(min) = opts.min_lsn {
                wait_token(node, min, opts).await?;
            }
            if opts.consistency == Some(Consistency::Strong) {
                // Only a leader that still holds its lease may claim to be
                // the latest state (checked again after the read).
                super::write::ensure_writable(node, &leader, opts.wait).await?;
                return Ok(Plan::Strong(leader, node.clock.mono_ms()));
            }
            Ok(Plan::Local)
        }
        Role::Follower(f) => {
            let consistency = opts.consistency.unwrap_or(Consistency::Eventual);
            if matches!(consistency, Consistency::Strong | Consistency::Leader) {
                return Ok(Plan::Leader);
            }
            if consistency == Consistency::Bounded {
                let max = opts.max_staleness_ms.unwrap_or(0);
                let status = f.status();
                if !status.connected || status.lag_ms > max {
                    stale_read(node);
                    return fallback(
                        opts,
                        format!(
                            "follower lag {} ms exceeds max_staleness_ms {max}",
                            status.lag_ms
                        ),
                    );
                }
            }
            if let Some(min) = opts.min_lsn {
                if node.engine.positions().applied_lsn < min {
                    stale_read(node);
                    if !node.engine.wait_applied(min, opts.wait).await {
                        return fallback(
                            opts,
                            format!(
                                "applied lsn {} is below min_lsn {min} after {} ms",
                                node.engine.positions().applied_lsn,
                                opts.wait.as_millis()
                            ),
                        );
                    }
                }
            }
            Ok(Plan::Local)
        }
    }
}

/// Finish a linearizable read that was served from this leader's table
/// after `since_mono_ms` (this node's monotonic clock): everything the read could have seen (up to the applied
/// LSN now, which covers any record applied after the fsync but before a
/// majority had it) must be durable on a majority, so no failover can take
/// it back; and this node must still lead *after* the read arrived — a
/// majority of voters acknowledged it since then (ReadIndex, Raft §6.4) —
/// so a deposed leader that has not heard of its successor (paused,
/// partitioned) refuses instead of answering with old state. Any failure
/// is a 503: the read may be retried.
pub async fn confirm_strong(
    node: &Node,
    leader: &Leader,
    since_mono_ms: u64,
    opts: &ReadOpts,
) -> ApiResult<()> {
    let budget = opts.wait.max(Duration::from_millis(1));
    let target = node.engine.positions().applied_lsn;
    if !leader.wait_commit(target, budget).await {
        return Err(ApiError::unavailable(format!(
            "strong read: lsn {target} is not yet durable on a majority"
        )));
    }
    if !leader.confirm_leadership(since_mono_ms, budget).await {
        return Err(ApiError::unavailable(
            "strong read: this node could not confirm with a majority of voters that it still leads",
        ));
    }
    super::write::writable(leader)
}

/// On the leader, a token above our applied LSN can only come from a
/// client that read a newer leader: wait briefly, then refuse.
async fn wait_token(node: &Node, min: Lsn, opts: &ReadOpts) -> ApiResult<()> {
    if node.engine.wait_applied(min, opts.wait).await {
        Ok(())
    } else {
        Err(ApiError::unavailable(format!(
            "min_lsn {min} is beyond this leader's applied lsn {}",
            node.engine.positions().applied_lsn
        )))
    }
}

fn stale_read(node: &Node) {
    metrics::counter!("replidb_stale_reads_total", "node_id" => node.config.id.clone())
        .increment(1);
}

fn fallback(opts: &ReadOpts, why: String) -> ApiResult<Plan> {
    match opts.fallback {
        Fallback::Leader => Ok(Plan::Leader),
        Fallback::Error => Err(ApiError::unavailable(why)),
    }
}

/// The header that counts how many nodes a request has already been
/// relayed through (node-to-node proxying and write forwarding).
pub const HOPS_HEADER: &str = "x-replidb-hops";

/// Most relays a request may take. One is the normal case (follower to
/// leader); two covers a follower that still points at a node that has
/// just stepped down. More means nodes point at each other (each thinks
/// the other leads, e.g. in the middle of a failover): without a limit such
/// a request would bounce between them until a timeout, tying up a
/// connection on each node per hop.
pub const MAX_HOPS: u32 = 2;

/// The hop count a request arrived with (0 from a client). A malformed
/// value is a 400: it can only come from a broken peer or client.
fn hops_of(headers: &HeaderMap) -> ApiResult<u32> {
    let Some(v) = headers.get(HOPS_HEADER) else {
        return Ok(0);
    };
    let s = v.to_str().unwrap_or("");
    s.trim()
        .parse()
        .map_err(|_| ApiError::invalid_param("X-Replidb-Hops", s, "a small unsigned integer"))
}

/// The hop count to send with a relayed request, or a `proxy_loop` error
/// (508) when the request has already been relayed [`MAX_HOPS`] times.
pub fn next_hop(headers: &HeaderMap, target: &str) -> ApiResult<u32> {
    let hops = hops_of(headers)?;
    if hops >= MAX_HOPS {
        return Err(ApiError::new(
            StatusCode::LOOP_DETECTED,
            "proxy_loop",
            format!(
                "request already relayed {hops} times (limit {MAX_HOPS}); not relaying it again to {target}: the nodes disagree on who leads, retry shortly"
            ),
        ));
    }
    Ok(hops + 1)
}

/// Send a request to the leader and relay its answer (status, body,
/// content type and its `X-Replidb-*` headers, so the client sees who
/// really served it).
pub async fn proxy_to_leader(
    node: &Node,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: bytes::Bytes,
) -> ApiResult<Response> {
    let leader = node.leader_url();
    if leader.is_empty() {
        let mut e = ApiError::unavailable("no leader is known to relay this request to");
        e.code = "no_leader";
        return Err(e);
    }
    let hops = next_hop(headers, &leader)?;
    let url = super::relay::relay_url(&leader, path_and_query)?;
    let mut req = node
        .http
        .request(method, url.clone())
        .header(HOPS_HEADER, hops.to_string())
        .body(body);
    // Every copy: the leader takes the highest `min_lsn`, as this node would.
    for name in ["content-type", "x-replidb-min-lsn", "x-replidb-session"] {
        for v in headers.get_all(name) {
            req = req.header(name, v.clone());
        }
    }
    let resp = req
        .send()
        .await
        .map_err(|e| ApiError::unavailable(format!("leader at {url} unreachable: {e}")))?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = Response::builder().status(status);
    for (name, value) in resp.headers() {
        let n = name.as_str();
        if n.starts_with("x-replidb-")
            || n == "content-type"
            || n == "location"
            || n == "retry-after"
        {
            out = out.header(name.clone(), value.clone());
        }
    }
    // A read's answer (a value or a scan page, base64 or JSON-escaped) or
    // a write's: at most a scan page's budget, six times over, plus the
    // largest single value the same way.
    let limit = 6 * (super::scan::SCAN_PAGE_BYTES_MAX + node.config.max_value_bytes) + 64 * 1024;
    let bytes = crate::peer_answer::bytes(resp, limit)
        .await
        .map_err(|e| ApiError::unavailable(format!("leader answer broken: {e}")))?;
    out.body(Body::from(bytes))
        .map_err(|e| ApiError::internal(e.to_string()))
        .map(IntoResponse::into_response)
}

/// The causal topologies cannot honour a read that needs a single leader:
/// every node takes writes, so none holds "the latest state" (`strong`,
/// `leader`) and no node's lag behind "the" leader exists to bound
/// (`bounded`, `max_staleness_ms`). Served locally such a read would claim
/// more than it delivers, so it is refused, naming what works there. (A
/// `min_lsn` is still accepted and ignored: sessions that also talk to
/// single-leader clusters carry one on every read; `min_version` is the
/// multi-leader token, `r` the leaderless read quorum.)
pub(crate) fn refuse_single_leader_only(node: &Node, opts: &ReadOpts) -> ApiResult<()> {
    let (topology, instead) = if node.is_multi_leader() {
        (
            "multi-leader",
            "reads are local; use min_version for read-your-writes",
        )
    } else if node.is_leaderless() {
        (
            "leaderless",
            "use r=quorum or r=all: with W + R > N a read sees every acknowledged write",
        )
    } else {
        return Ok(());
    };
    match opts.consistency {
        Some(c @ (Consistency::Strong | Consistency::Leader | Consistency::Bounded)) => {
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "not_supported",
                format!(
                    "consistency={} needs a single leader; in the {topology} topology every node takes writes ({instead})",
                    c.as_str()
                ),
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_hops(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOPS_HEADER, v.parse().unwrap());
        h
    }

    #[test]
    fn hops_count_up_to_the_limit_then_refuse() {
        assert_eq!(next_hop(&HeaderMap::new(), "x").unwrap(), 1);
        assert_eq!(next_hop(&with_hops("1"), "x").unwrap(), 2);
        let e = next_hop(&with_hops("2"), "x").unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (508, "proxy_loop"));
        let e = next_hop(&with_hops("many"), "x").unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
    }
}
