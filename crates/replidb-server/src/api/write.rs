//! The write path shared by every endpoint that writes: leader check
//! (307 or forward), propose (log + fsync + apply), write-concern wait, and
//! the contract's response body.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use replidb_core::{Lsn, Op, WriteConcern};
use replidb_engine::{EngineError, Proposal};
use serde_json::json;

use super::params::WriteOpts;
use super::read::proxy_to_leader;
use super::{ApiError, ApiResult};
use crate::node::{Node, Role};

/// The original request, for redirecting or forwarding a write.
pub struct Origin<'a> {
    /// Method.
    pub method: Method,
    /// Path and query, as received.
    pub path_and_query: &'a str,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// Body.
    pub body: bytes::Bytes,
}

/// Outcome of a write that was sequenced.
pub struct WriteOutcome {
    /// LSN of the record.
    pub lsn: Lsn,
    /// Its epoch.
    pub epoch: u64,
    /// Nodes that hold it durably.
    pub acks: usize,
    /// Whether the write concern was met in time.
    pub committed: bool,
    /// For a delete: whether the key existed.
    pub existed: Option<bool>,
    /// Whether a failover could still roll the write back (single leader;
    /// multi-leader never rolls back what a node took).
    pub may_roll_back: bool,
}

/// If this node does not lead, answer the write with a 307 to the leader,
/// or forward it there (`--forward-writes`). `None` means "go ahead".
pub async fn not_leader_response(node: &Node, origin: &Origin<'_>) -> ApiResult<Option<Response>> {
    if let Role::Leader(_) = node.role() {
        return Ok(None);
    }
    if node.config.forward_writes {
        let resp = proxy_to_leader(
            node,
            origin.method.clone(),
            origin.path_and_query,
            origin.headers,
            origin.body.clone(),
        )
        .await?;
        return Ok(Some(resp));
    }
    if node.leader_url().is_empty() {
        // A redirect to nowhere would send the client in a loop.
        return Err(ApiError::retry_later(
            "no_leader",
            format!(
                "this node is a follower and knows no leader yet ({})",
                node.no_leader_hint()
            ),
        ));
    }
    // The same URL a forwarded write would go to: a client following the
    // redirect must reach the key it named, not the one its URL parser
    // makes of a dot segment.
    let location = super::relay::relay_url(&node.leader_url(), origin.path_and_query)?.to_string();
    let body = json!({"error": {"code": "not_leader", "message": format!("this node is a follower; write to the leader at {location}")}, "leader": node.leader_url()});
    let mut resp = (StatusCode::TEMPORARY_REDIRECT, Json(body)).into_response();
    let loc = HeaderValue::from_str(&location)
        .map_err(|_| ApiError::internal("leader url is not a valid header"))?;
    resp.headers_mut().insert("location", loc);
    Ok(Some(resp))
}

/// Sequence `op` on the leader and wait for the write concern.
///
/// # Errors
/// 400 `not_supported` in the multi-leader and leaderless topologies: a
/// plain `Op` carries no version, so a peer applying it after a concurrent
/// write would keep a different value than this node (every write there
/// goes through the causal path, `replidb_causal::CausalWrite`). Besides
/// the engine's and the write concern's errors.
pub async fn propose(
    node: &Node,
    op: Op,
    conditions: Vec<(String, Lsn)>,
    opts: WriteOpts,
) -> ApiResult<WriteOutcome> {
    if node.is_multi_leader() || node.is_leaderless() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_supported",
            "this write path is the single leader's; in the multi-leader and leaderless topologies write through /v1/kv and the counter, set and map endpoints",
        ));
    }
    let key_for_log = match &op {
        Op::Batch(ops) => format!("<batch of {}>", ops.len()),
        leaf => leaf.key().unwrap_or_default().to_string(),
    };
    propose_with(
        node,
        |epoch| Proposal::in_epoch(op, conditions, epoch),
        key_for_log,
        opts,
    )
    .await
    .map(|(out, _)| out)
}

/// Sequence the proposal `build` makes for the leader's epoch, and wait
/// for the write concern; also returns what the engine committed (a causal
/// write's new state and version).
pub async fn propose_with(
    node: &Node,
    build: impl FnOnce(replidb_core::Epoch) -> Proposal,
    key_for_log: String,
    opts: WriteOpts,
) -> ApiResult<(WriteOutcome, replidb_engine::Committed)> {
    let Some(leader) = node.leader() else {
        return Err(ApiError::unavailable("not the leader"));
    };
    ensure_writable(node, &leader, opts.timeout).await?;
    check_concern(&leader, opts.w)?;
    let proposal = build(leader.epoch());
    let committed = match node.engine.propose(proposal).await {
        Ok(c) => c,
        Err(EngineError::ConditionFailed {
            key,
            expected,
            actual,
            as_of,
        }) => {
            // The state the condition was checked against may still be in
            // the group being fsynced. The leader's own copy counts for the
            // write concern only once durable, and its fsync wakes no
            // waiter of follower acks: without this wait a single node (or
            // one whose followers are quiet) sat out the whole timeout
            // before answering 409. Applied, so a retry reads that state.
            node.engine.wait_applied(as_of, opts.timeout).await;
            return Err(condition_failed(&leader, key, expected, actual, as_of, opts).await);
        }
        Err(e) => return Err(e.into()),
    };
    tracing::debug!(node_id = %node.config.id, key = %key_for_log, lsn = committed.lsn.0, "write persisted");
    let (acks, met) = leader.wait_for(committed.lsn, opts.w, opts.timeout).await;
    Ok((
        WriteOutcome {
            lsn: committed.lsn,
            epoch: committed.epoch.0,
            acks,
            committed: met,
            existed: committed.existed,
            may_roll_back: !node.is_multi_leader(),
        },
        committed,
    ))
}

/// The answer to a transaction whose condition failed: a 409 that names
/// the key's current LSN — but only once the state the condition was
/// checked against (everything up to `as_of`, which may still have been in
/// the group being fsynced) is committed as strongly as the request's write
/// concern asks. Revealing it earlier could report a version that a
/// failover then rolls back, and a strong read after the 409 would
/// contradict it. If the concern is not met in time the answer is a 504
/// that reveals nothing about the key.
async fn condition_failed(
    leader: &replidb_replication::Leader,
    key: String,
    expected: Lsn,
    actual: Lsn,
    as_of: Lsn,
    opts: WriteOpts,
) -> ApiError {
    let (acks, met) = leader.wait_for(as_of, opts.w, opts.timeout).await;
    if met {
        return ApiError::new(
            StatusCode::CONFLICT,
            "condition_failed",
            format!("condition failed on key {key:?}: expected lsn {expected}, found {actual}"),
        );
    }
    let mut e = ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "condition_unconfirmed",
        format!(
            "the condition did not hold against state up to lsn {as_of}, which is on {acks} node(s), fewer than w={} asks; nothing was written, retry",
            opts.w
        ),
    );
    e.retry_after_s = Some(1);
    e
}

/// Refuse, before writing anything, a numeric write concern that this
/// cluster cannot meet: `w=5` with three voters would otherwise append the
/// record and then wait out the whole timeout for acknowledgements that
/// cannot exist. (`majority` and `all` adapt to the voters, so they pass.)
pub fn check_concern(leader: &replidb_replication::Leader, w: WriteConcern) -> ApiResult<()> {
    if let WriteConcern::Nodes(k) = w {
        let voters = leader.voters();
        if k > voters {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "w_exceeds_voters",
                format!(
                    "w={k} asks for more nodes than the {voters} voting member(s) this node knows; use w <= {voters}, \"majority\" or \"all\""
                ),
            ));
        }
    }
    Ok(())
}

/// Longest a request waits to re-establish check-quorum contact before it
/// is refused: a follower busy with a large batch may answer late, while a
/// deposed or cut-off leader cannot get a majority at all.
pub const QUORUM_CONFIRM_MS_MAX: u64 = 1000;

/// [`writable`], except that lapsed check-quorum contact is first
/// re-confirmed with a heartbeat round (at most `budget`, capped at
/// [`QUORUM_CONFIRM_MS_MAX`]) instead of refused at once.
pub async fn ensure_writable(
    node: &Node,
    leader: &replidb_replication::Leader,
    budget: std::time::Duration,
) -> ApiResult<()> {
    if leader.writable() == Err(replidb_replication::NotWritable::NoQuorum) {
        let budget = budget.min(std::time::Duration::from_millis(QUORUM_CONFIRM_MS_MAX));
        leader
            .confirm_leadership(node.clock.mono_ms(), budget)
            .await;
    }
    writable(leader)
}

/// Refuse a write the leader may not accept now (invariant 3: a leader
/// without a valid lease, or a stale one, must not write).
pub fn writable(leader: &replidb_replication::Leader) -> ApiResult<()> {
    use replidb_replication::NotWritable;
    leader.writable().map_err(|why| {
        let (code, msg) = match why {
            NotWritable::Fenced => ("fenced", "this leader does not hold a valid lease; it refuses writes until re-elected or re-pointed"),
            NotWritable::Paused => ("switchover_in_progress", "a planned switchover is in progress; retry shortly"),
            NotWritable::Stale => ("stale_leader", "a newer leader exists; this node no longer accepts writes"),
            NotWritable::NoQuorum => ("no_quorum", "this leader has not heard from a majority of voters recently (check-quorum); it refuses writes until it does or another node leads"),
        };
        ApiError::retry_later(code, msg)
    })
}

/// Why a write answered `write_concern_timeout`: `acks` nodes (the leader
/// included) hold it durably, and `w` was not confirmed — the deadline
/// passed, or the leader stopped leading first (then even enough copies
/// do not commit it in its epoch). With `acks` 0 the leader stopped
/// before its own fsync counted, and saying "durable on the leader" would
/// claim more than is known. Shared by the HTTP and the Redis protocol
/// answers.
///
/// Worded for the node that took the write, whatever the topology: in
/// multi-leader every node takes writes and nothing fails over, so "the
/// leader" and "a failover" would name what is not there.
pub fn concern_shortfall(acks: usize, w: &str, may_roll_back: bool) -> String {
    let held = match acks {
        0 => "the write is not known to be durable on any node".to_string(),
        1 => "the write is durable on the node that took it only".to_string(),
        n => format!("the write is durable on {n} nodes, the one that took it included"),
    };
    // Not "fewer than w": a leader deposed while it waited has the count
    // and still no commit (its epoch is over), so say both causes.
    let then = if may_roll_back {
        "it was not undone and may still replicate, or be rolled back by a failover"
    } else {
        "it was not undone and will replicate when the other nodes are reached"
    };
    format!("{held}, but w={w} was not confirmed before the deadline or before this node stopped taking writes; {then}")
}

/// The contract's write response: 200, or 504 when the concern was not met.
pub fn write_response(key: Option<&str>, opts: WriteOpts, out: &WriteOutcome) -> Response {
    let status = if out.committed {
        StatusCode::OK
    } else {
        StatusCode::GATEWAY_TIMEOUT
    };
    let mut json = Vec::with_capacity(WRITE_BODY_BYTES_TYPICAL);
    if let Err(e) = write_body(&mut json, key, opts, out) {
        return ApiError::internal(format!("cannot encode the answer: {e}")).into_response();
    }
    let mut resp = super::edge::answer(status, "application/json", Body::from(json));
    resp.headers_mut()
        .insert(super::LSN_HEADER, HeaderValue::from(out.lsn.0));
    resp
}

/// Room for a write answer's body with a short key, in bytes.
pub(crate) const WRITE_BODY_BYTES_TYPICAL: usize = 128;

/// Append the JSON body of [`write_response`]'s answer to `json`.
///
/// # Errors
/// serde_json's, which a `Vec` never gives.
pub(crate) fn write_body(
    json: &mut Vec<u8>,
    key: Option<&str>,
    opts: WriteOpts,
    out: &WriteOutcome,
) -> serde_json::Result<()> {
    let error = (!out.committed).then(|| WriteErrorBody {
        code: "write_concern_timeout",
        message: concern_shortfall(out.acks, &opts.w.to_string(), out.may_roll_back),
    });
    let body = WriteBody {
        acks: out.acks,
        committed: out.committed,
        epoch: out.epoch,
        error,
        existed: out.existed,
        key,
        lsn: out.lsn.0,
        w: opts.w,
    };
    serde_json::to_writer(json, &body)
}

/// The body of a write's answer. Serialized straight from this struct
/// rather than through a `serde_json::Value` (whose map allocates a node
/// per field): the fields are in the alphabetical order the `Value` form
/// printed, so the bytes are unchanged.
#[derive(serde::Serialize)]
struct WriteBody<'a> {
    acks: usize,
    committed: bool,
    epoch: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<WriteErrorBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    existed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    lsn: u64,
    #[serde(serialize_with = "as_display")]
    w: WriteConcern,
}

/// A write concern as the string it prints (`"1"`, `"majority"`), without
/// a `String` per answer.
fn as_display<S: serde::Serializer>(w: &WriteConcern, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(w)
}

/// The `error` object of a write whose concern was not met in time.
#[derive(serde::Serialize)]
struct WriteErrorBody {
    code: &'static str,
    message: String,
}

/// Read a request body, refusing more than `limit` bytes with a 413.
pub async fn read_body(body: Body, limit: usize) -> ApiResult<bytes::Bytes> {
    use hyper::body::Body as _;
    // A body whose declared length is over the limit is refused before a
    // byte of it is read: a client that sent `Expect: 100-continue` then
    // gets the 413 instead of a `100 Continue` and a wait to send it all.
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large(limit));
    }
    let mut read = std::pin::pin!(axum::body::to_bytes(body, limit));
    // A small body has usually arrived with the headers: take it without
    // arming a timer (a timer entry per request showed in the write
    // path's profile), and bound only a body that is still on its way.
    let read = match futures::poll!(read.as_mut()) {
        std::task::Poll::Ready(r) => Ok(r),
        std::task::Poll::Pending => tokio::time::timeout(BODY_READ_TIMEOUT, read).await,
    };
    match read {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(too_large(limit)),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// 413 `value_too_large` for a body over `limit` bytes.
fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "value_too_large",
        format!("request body exceeds the limit of {limit} bytes"),
    )
}

/// How long a request body may take to arrive: a client that sends its
/// headers and then trickles the body cannot hold a connection longer.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::concern_shortfall;

    #[test]
    fn a_shortfall_claims_no_more_durability_than_was_counted() {
        let none = concern_shortfall(0, "majority", true);
        assert!(!none.contains("durable on the node"), "{none}");
        assert!(none.contains("not known to be durable on any node"));
        let one = concern_shortfall(1, "2", true);
        assert!(one.starts_with("the write is durable on the node that took it only"));
        let two = concern_shortfall(2, "all", true);
        assert!(two.contains("durable on 2 nodes, the one that took it included"));
        assert!(two.contains("but w=all was not confirmed"));
        assert!(two.contains("rolled back by a failover"));
        // Multi-leader: no leader, and nothing fails over.
        let multi = concern_shortfall(1, "all", false);
        assert!(
            !multi.contains("failover") && !multi.contains("leader"),
            "{multi}"
        );
    }
}
