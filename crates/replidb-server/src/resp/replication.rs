//! `INFO`, `ROLE` and `WAIT`: the node's replication state in Redis'
//! words. Redis' replication offsets are byte positions in its stream;
//! here they are LSNs, which order the same way. Hosts and ports are the
//! nodes' HTTP addresses (the only ones nodes know of each other).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use replidb_replication::ReplicaState;
use replidb_resp::Value;

use super::conn::Session;
use super::error::{RespError, RespResult};
use super::keys::parse_int;
use super::session::REDIS_VERSION;
use super::{Shared, RESP_CONNECTIONS_MAX};
use crate::node::Role;

/// Longest `WAIT`; `WAIT n 0` (Redis: forever) waits this long.
pub const RESP_WAIT_MS_MAX: u64 = crate::api::TIMEOUT_MS_MAX;

/// Host and port of a node URL (`http://127.0.0.1:7001` → `127.0.0.1`,
/// 7001); the URL itself and 0 when it does not parse.
fn host_port(url: &str) -> (String, u16) {
    match reqwest::Url::parse(url) {
        Ok(u) => (
            u.host_str().unwrap_or(url).to_string(),
            u.port_or_known_default().unwrap_or(0),
        ),
        Err(_) => (url.to_string(), 0),
    }
}

/// Redis' name for a follower's stream state, `None` when it is not
/// connected (Redis lists only connected replicas).
fn redis_state(s: ReplicaState) -> Option<&'static str> {
    match s {
        ReplicaState::Streaming | ReplicaState::CatchingUp => Some("online"),
        ReplicaState::Snapshot => Some("send_bulk"),
        ReplicaState::Disconnected => None,
    }
}

/// Appends one `INFO` section.
type Section = fn(&Shared, &mut String);

/// `INFO [section...]`: `server`, `clients`, `persistence`,
/// `replication`, `keyspace` (`all`, `everything`, `default` or none: all).
pub(crate) fn info(shared: &Shared, args: &[Bytes]) -> RespResult<Value> {
    let wanted: Vec<String> = args[1..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|w| matches!(w.as_str(), "all" | "everything" | "default"));
    let want = |s: &str| all || wanted.iter().any(|w| w == s);
    let mut out = String::new();
    let sections: [(&str, Section); 5] = [
        ("server", server_section),
        ("clients", clients_section),
        ("persistence", persistence_section),
        ("replication", replication_section),
        ("keyspace", keyspace_section),
    ];
    for (name, write) in sections {
        if want(name) {
            if !out.is_empty() {
                out.push_str("\r\n");
            }
            write(shared, &mut out);
        }
    }
    Ok(Value::Verbatim {
        format: *b"txt",
        text: Bytes::from(out),
    })
}

// `write!` into a String cannot fail; the results are ignored below.

fn server_section(shared: &Shared, out: &mut String) {
    let uptime = shared.started.elapsed().as_secs();
    let _ = write!(
        out,
        "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\n\
         replidb_version:{}\r\nreplidb_node_id:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\n\
         uptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        shared.node.config.id,
        std::process::id(),
        shared.addr.port(),
        uptime / 86_400,
    );
}

fn clients_section(shared: &Shared, out: &mut String) {
    let _ = write!(
        out,
        "# Clients\r\nconnected_clients:{}\r\nmaxclients:{RESP_CONNECTIONS_MAX}\r\n",
        shared.clients.load(Ordering::Relaxed)
    );
}

fn persistence_section(shared: &Shared, out: &mut String) {
    // Every write is in the WAL before it is acknowledged: an always-on
    // append-only file in Redis' terms.
    let fsync = match shared.node.config.fsync {
        replidb_wal::FsyncPolicy::Always => "always",
        replidb_wal::FsyncPolicy::Never => "no",
    };
    let _ = write!(
        out,
        "# Persistence\r\nloading:0\r\naof_enabled:1\r\nappendfsync:{fsync}\r\n"
    );
}

fn replication_section(shared: &Shared, out: &mut String) {
    let node = &shared.node;
    let pos = node.engine.positions();
    let epoch = node.engine.epoch();
    out.push_str("# Replication\r\n");
    match node.role() {
        Role::Leader(leader) => {
            let online: Vec<_> = leader
                .replicas()
                .into_iter()
                .filter_map(|r| redis_state(r.state).map(|s| (r, s)))
                .collect();
            let _ = write!(out, "role:master\r\nconnected_slaves:{}\r\n", online.len());
            for (i, (r, state)) in online.iter().enumerate() {
                let (host, port) = host_port(&r.addr);
                let lag_s = r.last_ack_age_ms.unwrap_or(0) / 1000;
                let _ = write!(
                    out,
                    "slave{i}:ip={host},port={port},state={state},offset={},lag={lag_s},id={}\r\n",
                    r.flush_lsn.0, r.id
                );
            }
            let _ = write!(
                out,
                "master_failover_state:no-failover\r\nmaster_repl_offset:{}\r\n\
                 replidb_commit_lsn:{}\r\n",
                pos.flush_lsn.0,
                leader.commit_lsn().0
            );
        }
        Role::Follower(f) => {
            let s = f.status();
            let (host, port) = host_port(&s.leader_url);
            let link = if s.connected { "up" } else { "down" };
            let _ = write!(
                out,
                "role:slave\r\nmaster_host:{host}\r\nmaster_port:{port}\r\n\
                 master_link_status:{link}\r\nmaster_last_io_seconds_ago:{}\r\n\
                 master_sync_in_progress:0\r\nslave_read_repl_offset:{}\r\n\
                 slave_repl_offset:{}\r\nslave_read_only:1\r\nconnected_slaves:0\r\n\
                 master_repl_offset:{}\r\nreplidb_leader_url:{}\r\nreplidb_lag_ms:{}\r\n",
                f.silent_ms() / 1000,
                pos.flush_lsn.0,
                pos.applied_lsn.0,
                s.leader_last_lsn.0,
                s.leader_url,
                s.lag_ms,
            );
        }
    }
    let _ = write!(
        out,
        "replidb_epoch:{}\r\nreplidb_flush_lsn:{}\r\nreplidb_applied_lsn:{}\r\n",
        epoch.0, pos.flush_lsn.0, pos.applied_lsn.0
    );
}

fn keyspace_section(shared: &Shared, out: &mut String) {
    out.push_str("# Keyspace\r\n");
    // As in Redis, an empty database has no line.
    if let Ok(keys) = shared.node.engine.table().len() {
        if keys > 0 {
            let _ = write!(out, "db0:keys={keys},expires=0,avg_ttl=0\r\n");
        }
    }
}

/// `ROLE`: `["master", offset, [[host, port, offset]...]]` on the leader,
/// `["slave", host, port, state, offset]` on a follower.
pub(crate) fn role(shared: &Shared) -> RespResult<Value> {
    let node = &shared.node;
    let pos = node.engine.positions();
    Ok(match node.role() {
        Role::Leader(leader) => {
            let replicas = leader
                .replicas()
                .into_iter()
                .filter(|r| redis_state(r.state).is_some())
                .map(|r| {
                    let (host, port) = host_port(&r.addr);
                    Value::Array(vec![
                        Value::bulk_str(&host),
                        Value::bulk_str(&port.to_string()),
                        Value::bulk_str(&r.flush_lsn.0.to_string()),
                    ])
                })
                .collect();
            Value::Array(vec![
                Value::bulk_str("master"),
                Value::Integer(lsn_int(pos.flush_lsn.0)),
                Value::Array(replicas),
            ])
        }
        Role::Follower(f) => {
            let s = f.status();
            let (host, port) = host_port(&s.leader_url);
            let state = if s.connected { "connected" } else { "connect" };
            Value::Array(vec![
                Value::bulk_str("slave"),
                Value::bulk_str(&host),
                Value::Integer(i64::from(port)),
                Value::bulk_str(state),
                Value::Integer(lsn_int(pos.flush_lsn.0)),
            ])
        }
    })
}

fn lsn_int(lsn: u64) -> i64 {
    i64::try_from(lsn).unwrap_or(i64::MAX)
}

/// `WAIT numreplicas timeout_ms`: wait until `numreplicas` followers hold
/// this connection's last write durably (or the timeout), and answer how
/// many do. The leader is not counted, as Redis does not count the master.
/// Like a write concern, but asked after the write.
pub(crate) async fn wait(shared: &Shared, session: &Session, args: &[Bytes]) -> RespResult<Value> {
    let wanted = parse_int(&args[1]).ok_or(RespError::NotInteger)?;
    let timeout_ms = parse_int(&args[2]).ok_or(RespError::TimeoutNotInteger)?;
    if timeout_ms < 0 {
        return Err(RespError::NegativeTimeout);
    }
    let Some(leader) = shared.node.leader() else {
        return Err(RespError::WaitOnReplica);
    };
    let lsn = session.last_write;
    let followers_with = |acks: usize| {
        // `acks` counts the leader, which holds every write it answered.
        let leader_has = usize::from(shared.node.engine.positions().flush_lsn >= lsn);
        acks.saturating_sub(leader_has)
    };
    let wanted = usize::try_from(wanted).unwrap_or(0);
    let timeout_ms = match timeout_ms as u64 {
        0 => RESP_WAIT_MS_MAX,
        ms => ms.min(RESP_WAIT_MS_MAX),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    // Not `Leader::wait_for`: a write concern also needs the lease, WAIT
    // only counts copies.
    let mut acked = leader.ack_changes();
    loop {
        // Mark the current state seen before reading it, so an ack that
        // lands in between still wakes the wait below.
        acked.borrow_and_update();
        let now = followers_with(leader.acks_for(lsn));
        if now >= wanted {
            return Ok(Value::Integer(now as i64));
        }
        if !matches!(
            tokio::time::timeout_at(deadline, acked.changed()).await,
            Ok(Ok(()))
        ) {
            return Ok(Value::Integer(followers_with(leader.acks_for(lsn)) as i64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls_split_into_host_and_port() {
        assert_eq!(
            host_port("http://127.0.0.1:7001"),
            ("127.0.0.1".to_string(), 7001)
        );
        assert_eq!(host_port("http://db1"), ("db1".to_string(), 80));
        assert_eq!(host_port(""), (String::new(), 0));
    }
}
