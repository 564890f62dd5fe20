//! The data commands, mapped onto the node's read and write paths.
//!
//! - Reads ([`read`]) are planned by the HTTP API's read path at the
//!   node's default consistency (`leader` on the leader, `eventual` on a
//!   follower), so a follower answers from its own table.
//! - Writes ([`write`]) go through [`crate::api::propose`] at the node's
//!   default write concern; on a follower they are refused with
//!   `READONLY`, naming the leader.
//! - Read-modify-writes ([`cas`]: `INCR`, `SET NX|XX|GET`, `DEL`) read
//!   the keys' LSNs on the leader and propose on the condition that they
//!   are unchanged; a failed condition means someone else wrote in
//!   between, so the command reads again and retries.

use bytes::Bytes;
use replidb_core::{validate_key, Lsn, Op, Versioned};
use replidb_resp::Value;

use super::conn::Session;
use super::error::{RespError, RespResult};
use super::{Shared, RESP_REPLY_BYTES_MAX};
use crate::api::{self, Plan, WriteOpts, WriteOutcome};
use crate::node::Node;

/// Most attempts of one compare-and-set command. Each failed attempt means
/// another write to the key was sequenced, so the cluster made progress;
/// a command losing this many races in a row gives up rather than spin.
pub const RESP_CAS_ATTEMPTS_MAX: usize = 1000;

/// A key as the node stores it: UTF-8, 1..=1024 bytes.
pub(crate) fn key(raw: &Bytes) -> RespResult<String> {
    let k =
        std::str::from_utf8(raw).map_err(|_| RespError::InvalidKey("keys must be UTF-8".into()))?;
    validate_key(k).map_err(|e| RespError::InvalidKey(e.to_string()))?;
    Ok(k.to_string())
}

/// An integer as Redis reads one (`string2ll`): an optional `-`, digits,
/// no leading zeros, no `-0`, no spaces, within `i64`.
pub(crate) fn parse_int(raw: &[u8]) -> Option<i64> {
    let digits = raw.strip_prefix(b"-").unwrap_or(raw);
    let leading_zero = digits.len() > 1 && digits[0] == b'0';
    let negative_zero = digits == b"0" && raw.len() == 2;
    let all_digits = digits.iter().all(u8::is_ascii_digit);
    if digits.is_empty() || digits.len() > 19 || !all_digits || leading_zero || negative_zero {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// Serve `local` through the read path at the node's default consistency.
pub(crate) async fn read<T>(
    node: &Node,
    local: impl FnOnce(&Node) -> RespResult<T>,
) -> RespResult<T> {
    // The defaults an HTTP read without parameters gets.
    let opts = api::ReadOpts::DEFAULT;
    match api::plan(node, &opts).await? {
        Plan::Local => local(node),
        Plan::Strong(leader, since) => {
            let answer = local(node);
            api::confirm_strong(node, &leader, since, &opts).await?;
            answer
        }
        // Only a consistency the node does not default to sends a read to
        // the leader; this listener has no way to ask for one.
        Plan::Leader => Err(RespError::Node {
            code: "not_leader",
            message: format!(
                "this read must be served by the leader at {}",
                node.leader_url()
            ),
        }),
    }
}

/// The refusal of a write on a follower.
fn readonly(node: &Node) -> RespError {
    let url = node.leader_url();
    RespError::ReadOnly {
        leader: if url.is_empty() {
            format!("unknown ({})", node.no_leader_hint())
        } else {
            url
        },
    }
}

/// Propose `op` on `conditions` through the write path at the node's
/// default write concern; remembers its LSN for `WAIT`.
pub(crate) async fn write(
    node: &Node,
    session: &mut Session,
    op: Op,
    conditions: Vec<(String, Lsn)>,
) -> RespResult<WriteOutcome> {
    if node.leader().is_none() {
        return Err(readonly(node));
    }
    let opts = WriteOpts {
        w: node.config.default_write_concern,
        timeout: node.config.default_write_timeout,
    };
    let out = api::propose(node, op, conditions, opts).await?;
    session.last_write = session.last_write.max(out.lsn);
    if !out.committed {
        return Err(RespError::NotCommitted {
            acks: out.acks,
            w: opts.w.to_string(),
            may_roll_back: out.may_roll_back,
        });
    }
    Ok(out)
}

/// What a compare-and-set step decided from the keys' current versions.
pub(crate) enum Decision {
    /// Write `op` (if the keys are still as read) and answer the value.
    Write(Op, Value),
    /// Answer the value; nothing to write.
    Done(Value),
}

/// Read `keys` on the leader, let `decide` choose, and write on the
/// condition that none of them changed since the read; retry while the
/// condition fails.
pub(crate) async fn cas(
    node: &Node,
    session: &mut Session,
    keys: &[String],
    values: bool,
    mut decide: impl FnMut(&[Option<Versioned>]) -> RespResult<Decision>,
) -> RespResult<Value> {
    for _ in 0..RESP_CAS_ATTEMPTS_MAX {
        if node.leader().is_none() {
            return Err(readonly(node));
        }
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        // At most TXN_OPS_MAX keys, each at most one value: no byte limit.
        let read = node.engine.table().get_many(&names, values, usize::MAX)?;
        let conditions = keys
            .iter()
            .zip(&read.entries)
            .map(|(k, v)| (k.clone(), v.as_ref().map_or(Lsn::ZERO, |v| v.lsn)))
            .collect();
        let (op, answer) = match decide(&read.entries) {
            Ok(Decision::Write(op, answer)) => (op, answer),
            // An answer or a refusal (WRONGTYPE, not an integer) that
            // writes nothing rests on the state read, up to its applied LSN.
            Ok(Decision::Done(answer)) => {
                confirm_unwritten(node, read.applied).await?;
                return Ok(answer);
            }
            Err(e) => {
                confirm_unwritten(node, read.applied).await?;
                return Err(e);
            }
        };
        match write(node, session, op, conditions).await {
            Ok(_) => return Ok(answer),
            Err(RespError::ConditionFailed) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(RespError::Contention {
        key: keys.first().cloned().unwrap_or_default(),
        attempts: RESP_CAS_ATTEMPTS_MAX,
    })
}

/// Before a compare-and-set answers without writing (`SET NX` on a key
/// that exists, `SET XX` on one that does not, `DEL` of keys that do not
/// exist), wait until the state it decided on (everything up to `as_of`)
/// is committed at the node's default write concern, as `/v1/txn` does for
/// a failed condition: the leader may hold writes a failover would roll
/// back, and answering from them could tell a client a lock is held that,
/// after the failover, nobody holds. If the concern is not met in time the
/// answer is `-ERR condition_unconfirmed`, which reveals nothing.
async fn confirm_unwritten(node: &Node, as_of: Lsn) -> RespResult<()> {
    let Some(leader) = node.leader() else {
        return Err(readonly(node));
    };
    let w = node.config.default_write_concern;
    let timeout = node.config.default_write_timeout;
    // The table shows a round just before the writer publishes it, and the
    // leader counts its own copy from what is published, while only
    // followers' acks wake `wait_for`: without this a single node would sit
    // out the whole timeout (as `write::propose_with` explains).
    node.engine.wait_applied(as_of, timeout).await;
    let (acks, met) = leader.wait_for(as_of, w, timeout).await;
    if met {
        return Ok(());
    }
    Err(RespError::Node {
        code: "condition_unconfirmed",
        message: format!(
            "the command decided against state up to lsn {as_of}, which is on {acks} node(s), fewer than w={w} asks; nothing was written, retry"
        ),
    })
}

fn bulk_or_null(v: Option<&Versioned>) -> Value {
    match v {
        Some(v) => Value::Bulk(Bytes::copy_from_slice(&v.value)),
        None => Value::Null,
    }
}

/// The kind of a stored value as this listener names it for `TYPE`:
/// `string` for plain values, `counter`, `set` or `map` for the typed keys
/// of the HTTP API (names of replidb's own, as a Redis module names its
/// types: they answer none of Redis's set or hash commands).
pub(crate) fn type_name(v: &Versioned) -> &'static str {
    if !v.causal {
        return "string";
    }
    match replidb_causal::KeyState::decode(&v.value).map(|s| s.kind()) {
        Ok(replidb_causal::KeyKind::Register) | Err(_) => "string",
        Ok(kind) => kind.as_str(),
    }
}

/// `v` if it holds a string; a typed key is `WRONGTYPE`, as a Redis string
/// command on a list or hash is, never its internal encoding.
fn string_only<'a>(k: &str, v: Option<&'a Versioned>) -> RespResult<Option<&'a Versioned>> {
    match v.map(type_name) {
        None | Some("string") => Ok(v),
        Some(kind) => Err(RespError::WrongType(format!(
            "key {k:?} is a {kind}; use /v1/{kind}/ over HTTP (DEL removes it)"
        ))),
    }
}

/// `GET key`.
pub(crate) async fn get(shared: &Shared, args: &[Bytes]) -> RespResult<Value> {
    let k = key(&args[1])?;
    read(&shared.node, |n| {
        let v = n.engine.table().get(&k)?;
        Ok(bulk_or_null(string_only(&k, v.as_ref())?))
    })
    .await
}

/// `MGET key...`, at most [`RESP_REPLY_BYTES_MAX`] of values.
pub(crate) async fn mget(shared: &Shared, args: &[Bytes]) -> RespResult<Value> {
    let keys = args[1..].iter().map(key).collect::<RespResult<Vec<_>>>()?;
    read(&shared.node, |n| {
        // One applied state for every key, so an MSET is seen whole; the
        // read stops once the values pass the answer's limit.
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        let read = n
            .engine
            .table()
            .get_many(&names, true, RESP_REPLY_BYTES_MAX)?;
        if read.cut {
            return Err(RespError::Limit(format!(
                "MGET answer would exceed {RESP_REPLY_BYTES_MAX} bytes; ask for fewer keys"
            )));
        }
        let mut out = Vec::with_capacity(keys.len());
        for (k, v) in keys.iter().zip(read.entries) {
            // As Redis's MGET: a key of another type reads as nil.
            out.push(bulk_or_null(string_only(k, v.as_ref()).unwrap_or(None)));
        }
        Ok(Value::Array(out))
    })
    .await
}

/// `EXISTS key...`: how many of the keys exist (a key named twice counts
/// twice, as in Redis).
pub(crate) async fn exists(shared: &Shared, args: &[Bytes]) -> RespResult<Value> {
    let keys = args[1..].iter().map(key).collect::<RespResult<Vec<_>>>()?;
    read(&shared.node, |n| {
        // Presence only: no value is copied.
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        let read = n.engine.table().get_many(&names, false, usize::MAX)?;
        Ok(Value::Integer(
            read.entries.iter().filter(|v| v.is_some()).count() as i64,
        ))
    })
    .await
}

/// `TYPE key`: `string`, `counter`, `set`, `map` ([`type_name`]) or `none`.
pub(crate) async fn key_type(shared: &Shared, args: &[Bytes]) -> RespResult<Value> {
    let k = key(&args[1])?;
    read(&shared.node, |n| {
        let v = n.engine.table().get(&k)?;
        Ok(Value::simple(v.as_ref().map_or("none", type_name)))
    })
    .await
}

/// `SET` options.
#[derive(Default)]
struct SetOpts {
    /// Only if absent.
    nx: bool,
    /// Only if present.
    xx: bool,
    /// Answer the previous value.
    get: bool,
}

/// Parse `SET`'s options as Redis 7 does: a flag may repeat, only `NX`
/// with `XX` conflict.
fn set_opts(args: &[Bytes]) -> RespResult<SetOpts> {
    let mut o = SetOpts::default();
    for a in args {
        match a.to_ascii_uppercase().as_slice() {
            b"NX" if !o.xx => o.nx = true,
            b"XX" if !o.nx => o.xx = true,
            b"GET" => o.get = true,
            // No key has a time to live, so keeping it is a no-op.
            b"KEEPTTL" => {}
            b"EX" | b"PX" | b"EXAT" | b"PXAT" => {
                return Err(RespError::Unsupported(
                    "SET with EX/PX/EXAT/PXAT is not supported: replidb keys do not expire".into(),
                ))
            }
            _ => return Err(RespError::Syntax),
        }
    }
    Ok(o)
}

/// A value of at most `--max-value-bytes`: the codec lets one argument be
/// as long as the whole request, so that a longer value is answered with
/// this error and the connection stays open.
fn check_value(shared: &Shared, value: &[u8]) -> RespResult<()> {
    let limit_bytes = shared.node.config.max_value_bytes;
    if value.len() > limit_bytes {
        return Err(RespError::ValueTooLarge {
            len_bytes: value.len(),
            limit_bytes,
        });
    }
    Ok(())
}

/// `SET key value [NX|XX] [GET] [KEEPTTL]`.
pub(crate) async fn set(
    shared: &Shared,
    session: &mut Session,
    args: &[Bytes],
) -> RespResult<Value> {
    let k = key(&args[1])?;
    check_value(shared, &args[2])?;
    let value = args[2].to_vec();
    let o = set_opts(&args[3..])?;
    let put = |k: &String| Op::Put {
        key: k.clone(),
        value: value.clone(),
    };
    if !(o.nx || o.xx || o.get) {
        write(&shared.node, session, put(&k), Vec::new()).await?;
        return Ok(Value::ok());
    }
    let keys = [k.clone()];
    cas(&shared.node, session, &keys, true, |cur| {
        let old = string_only(&k, cur[0].as_ref())?;
        let answer = if o.get {
            bulk_or_null(old)
        } else {
            Value::ok()
        };
        let refused = if o.get {
            bulk_or_null(old)
        } else {
            Value::Null
        };
        Ok(match (old.is_some(), o.nx, o.xx) {
            (true, true, _) | (false, _, true) => Decision::Done(refused),
            _ => Decision::Write(put(&k), answer),
        })
    })
    .await
}

/// `DEL key...`: one batch deleting the keys that exist, conditioned on
/// every named key being as read, so the count it answers is exact.
pub(crate) async fn del(
    shared: &Shared,
    session: &mut Session,
    args: &[Bytes],
) -> RespResult<Value> {
    let mut keys = Vec::with_capacity(args.len() - 1);
    for a in &args[1..] {
        let k = key(a)?;
        // A key named twice is deleted once, as in Redis.
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    check_batch(keys.len())?;
    let names = keys.clone();
    cas(&shared.node, session, &keys, false, |cur| {
        let doomed: Vec<Op> = names
            .iter()
            .zip(cur)
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| Op::Delete { key: k.clone() })
            .collect();
        let count = Value::Integer(doomed.len() as i64);
        Ok(if doomed.is_empty() {
            Decision::Done(count)
        } else {
            Decision::Write(Op::Batch(doomed), count)
        })
    })
    .await
}

/// Refuse a batch larger than an HTTP transaction may be.
fn check_batch(ops: usize) -> RespResult<()> {
    if ops > api::TXN_OPS_MAX {
        return Err(RespError::Limit(format!(
            "{ops} keys in one atomic batch; the limit is {}",
            api::TXN_OPS_MAX
        )));
    }
    Ok(())
}

/// `MSET key value [key value...]`: one atomic batch.
pub(crate) async fn mset(
    shared: &Shared,
    session: &mut Session,
    args: &[Bytes],
) -> RespResult<Value> {
    let pairs = &args[1..];
    if !pairs.len().is_multiple_of(2) {
        return Err(RespError::WrongArity("mset".into()));
    }
    check_batch(pairs.len() / 2)?;
    let mut ops = Vec::with_capacity(pairs.len() / 2);
    for kv in pairs.chunks_exact(2) {
        check_value(shared, &kv[1])?;
        ops.push(Op::Put {
            key: key(&kv[0])?,
            value: kv[1].to_vec(),
        });
    }
    write(&shared.node, session, Op::Batch(ops), Vec::new()).await?;
    Ok(Value::ok())
}

/// `INCR`, `INCRBY`, `DECR`, `DECRBY`: add `by`, atomically. An absent key
/// counts as 0.
pub(crate) async fn incr_by(
    shared: &Shared,
    session: &mut Session,
    raw_key: &Bytes,
    by: i64,
) -> RespResult<Value> {
    let k = key(raw_key)?;
    let keys = [k.clone()];
    cas(&shared.node, session, &keys, true, |cur| {
        let old = match string_only(&k, cur[0].as_ref())? {
            Some(v) => parse_int(&v.value).ok_or(RespError::NotInteger)?,
            None => 0,
        };
        let new = old.checked_add(by).ok_or(RespError::Overflow)?;
        let value = new.to_string().into_bytes();
        check_value(shared, &value)?;
        Ok(Decision::Write(
            Op::Put {
                key: k.clone(),
                value,
            },
            Value::Integer(new),
        ))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_parse_as_redis_parses_them() {
        for (s, want) in [
            ("0", Some(0)),
            ("-1", Some(-1)),
            ("42", Some(42)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("007", None),
            ("-0", None),
            ("+1", None),
            (" 1", None),
            ("1.5", None),
            ("", None),
            ("-", None),
        ] {
            assert_eq!(parse_int(s.as_bytes()), want, "{s:?}");
        }
    }

    #[test]
    fn set_options_parse_and_conflict() {
        let a = |v: &[&str]| -> Vec<Bytes> {
            v.iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect()
        };
        let o = set_opts(&a(&["nx", "GET"])).unwrap();
        assert!(o.nx && o.get && !o.xx);
        assert!(matches!(
            set_opts(&a(&["NX", "XX"])),
            Err(RespError::Syntax)
        ));
        // Repeated flags are accepted, as in Redis 7.
        let o = set_opts(&a(&["GET", "get", "NX", "nx", "KEEPTTL", "KEEPTTL"])).unwrap();
        assert!(o.nx && o.get && !o.xx);
        assert!(matches!(
            set_opts(&a(&["XX", "NX"])),
            Err(RespError::Syntax)
        ));
        assert!(matches!(
            set_opts(&a(&["EX", "10"])),
            Err(RespError::Unsupported(_))
        ));
        assert!(matches!(
            set_opts(&a(&["px", "10"])),
            Err(RespError::Unsupported(_))
        ));
        assert!(set_opts(&a(&["KEEPTTL"])).is_ok());
        assert!(matches!(set_opts(&a(&["bogus"])), Err(RespError::Syntax)));
    }

    #[test]
    fn keys_must_be_storable() {
        assert!(key(&Bytes::from_static(b"k")).is_ok());
        assert!(key(&Bytes::from_static(b"")).is_err());
        assert!(key(&Bytes::from(vec![b'k'; 1025])).is_err());
        assert!(key(&Bytes::from_static(&[0xff])).is_err());
    }
}
