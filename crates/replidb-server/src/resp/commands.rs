//! The command table and dispatch. One table serves the dispatcher (name
//! and arity), `COMMAND` (Redis' command info: arity, flags, key
//! positions) and `COMMAND DOCS` (summary, group), so what the node says
//! it supports is what it executes.

use bytes::Bytes;
use replidb_resp::Value;

use super::conn::Session;
use super::error::{RespError, RespResult};
use super::{keys, replication, scan, session, Shared};

/// What a command does; the dispatcher's `match` arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Ping,
    Echo,
    Hello,
    Auth,
    Select,
    Quit,
    Command,
    Client,
    Config,
    Info,
    Role,
    Wait,
    Get,
    Set,
    Del,
    Exists,
    Type,
    Mget,
    Mset,
    Incr,
    IncrBy,
    Decr,
    DecrBy,
    Scan,
    DbSize,
    Multi,
    Exec,
    Discard,
}

/// One supported command, as Redis describes commands.
pub(crate) struct Spec {
    /// Lowercase name.
    pub name: &'static str,
    /// Argument count with the name; negative: at least that many.
    pub arity: i64,
    /// Redis' command flags (`write`, `readonly`, `fast`...).
    pub flags: &'static [&'static str],
    /// Position of the first key argument (0: none).
    pub first_key: i64,
    /// Position of the last key (-1: the last argument).
    pub last_key: i64,
    /// Step between keys (2 for `MSET`'s key/value pairs).
    pub step: i64,
    /// Redis' command group (`string`, `generic`, `connection`, `server`).
    pub group: &'static str,
    /// Redis version that introduced it.
    pub since: &'static str,
    /// One line, including how replidb maps it.
    pub summary: &'static str,
    /// Handler.
    pub kind: Kind,
}

const WRITE: &[&str] = &["write", "denyoom"];
const WRITE_FAST: &[&str] = &["write", "denyoom", "fast"];
const READ: &[&str] = &["readonly"];
const READ_FAST: &[&str] = &["readonly", "fast"];
const CONN: &[&str] = &["noscript", "loading", "stale", "fast"];

/// Every command the listener executes.
// One command per line reads as a table; rustfmt would spread each over
// eleven lines.
#[rustfmt::skip]
pub(crate) static COMMANDS: &[Spec] = &[
    spec("ping", -1, CONN, 0, 0, 0, "connection", "1.0.0", "Returns PONG, or the argument.", Kind::Ping),
    spec("echo", 2, CONN, 0, 0, 0, "connection", "1.0.0", "Returns the argument.", Kind::Echo),
    spec("hello", -1, CONN, 0, 0, 0, "connection", "6.0.0", "Switches protocol (2 or 3) and describes the server.", Kind::Hello),
    spec("auth", -2, CONN, 0, 0, 0, "connection", "1.0.0", "Authenticates with a token's secret (--auth-file); without tokens, as Redis without requirepass.", Kind::Auth),
    spec("select", 2, CONN, 0, 0, 0, "connection", "1.0.0", "Selects database 0, the only one.", Kind::Select),
    spec("quit", -1, CONN, 0, 0, 0, "connection", "1.0.0", "Closes the connection.", Kind::Quit),
    spec("command", -1, &["loading", "stale"], 0, 0, 0, "server", "2.8.13", "Describes the commands (COMMAND, COUNT, DOCS, INFO, LIST).", Kind::Command),
    spec("client", -2, &["loading", "stale"], 0, 0, 0, "connection", "2.4.0", "SETNAME, GETNAME, SETINFO, ID, INFO of this connection.", Kind::Client),
    spec("config", -2, &["loading", "stale"], 0, 0, 0, "server", "2.0.0", "CONFIG GET answers an empty list: configure replidb with flags or its file.", Kind::Config),
    spec("info", -1, &["loading", "stale"], 0, 0, 0, "server", "1.0.0", "Server, clients, persistence, replication (offsets are LSNs), keyspace.", Kind::Info),
    spec("role", 1, &["noscript", "loading", "stale", "fast"], 0, 0, 0, "server", "2.8.12", "master or slave, with LSNs as offsets.", Kind::Role),
    spec("wait", 3, &["noscript"], 0, 0, 0, "generic", "3.0.0", "Waits until N followers hold this connection's last write durably.", Kind::Wait),
    spec("get", 2, READ_FAST, 1, 1, 1, "string", "1.0.0", "Reads a key at the node's default consistency.", Kind::Get),
    spec("set", -3, WRITE, 1, 1, 1, "string", "1.0.0", "Writes a key (NX, XX, GET; no expiry) through the leader's write path.", Kind::Set),
    spec("del", -2, &["write"], 1, -1, 1, "generic", "1.0.0", "Deletes keys in one atomic batch; answers how many existed.", Kind::Del),
    spec("exists", -2, READ_FAST, 1, -1, 1, "generic", "3.0.3", "Counts the given keys that exist.", Kind::Exists),
    spec("type", 2, READ_FAST, 1, 1, 1, "generic", "1.0.0", "string, or none.", Kind::Type),
    spec("mget", -2, READ_FAST, 1, -1, 1, "string", "1.0.0", "Reads several keys.", Kind::Mget),
    spec("mset", -3, WRITE, 1, -1, 2, "string", "1.0.1", "Writes several keys in one atomic batch.", Kind::Mset),
    spec("incr", 2, WRITE_FAST, 1, 1, 1, "string", "1.0.0", "Adds 1, atomically (compare-and-set on the key's LSN).", Kind::Incr),
    spec("incrby", 3, WRITE_FAST, 1, 1, 1, "string", "1.0.0", "Adds N, atomically (compare-and-set on the key's LSN).", Kind::IncrBy),
    spec("decr", 2, WRITE_FAST, 1, 1, 1, "string", "1.0.0", "Subtracts 1, atomically (compare-and-set on the key's LSN).", Kind::Decr),
    spec("decrby", 3, WRITE_FAST, 1, 1, 1, "string", "1.0.0", "Subtracts N, atomically (compare-and-set on the key's LSN).", Kind::DecrBy),
    spec("scan", -2, READ, 0, 0, 0, "generic", "2.8.0", "Iterates keys in key order (MATCH, COUNT, TYPE).", Kind::Scan),
    spec("dbsize", 1, READ_FAST, 0, 0, 0, "server", "1.0.0", "Counts the keys.", Kind::DbSize),
    spec("multi", 1, CONN, 0, 0, 0, "transactions", "1.2.0", "Starts a transaction that cannot run: every command up to EXEC or DISCARD is refused, so EXEC aborts and nothing runs.", Kind::Multi),
    spec("exec", 1, CONN, 0, 0, 0, "transactions", "1.2.0", "After MULTI: EXECABORT, nothing was run.", Kind::Exec),
    spec("discard", 1, CONN, 0, 0, 0, "transactions", "2.0.0", "After MULTI: OK, back to normal.", Kind::Discard),
];

#[allow(clippy::too_many_arguments)]
const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    first_key: i64,
    last_key: i64,
    step: i64,
    group: &'static str,
    since: &'static str,
    summary: &'static str,
    kind: Kind,
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        first_key,
        last_key,
        step,
        group,
        since,
        summary,
        kind,
    }
}

/// The command named `name`, case-insensitively.
pub(crate) fn lookup(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

/// With `--auth-file`: only `AUTH`, `HELLO` and `QUIT` before
/// authenticating; then write commands need the `write` role, and those
/// that answer a value too (`INCR`, `INCRBY`, `DECR`, `DECRBY`, `SET …
/// GET`) `read` as well, as HTTP shows a write-only token no value
/// ("roles are independent"); `WAIT`, which reveals only how far this
/// connection's writes have replicated, either role; commands that read
/// data or server state (`GET`, `SCAN`, `INFO`, `ROLE`) `read`; and
/// connection commands only authentication.
///
/// The token is checked again after the token file is reloaded
/// (`SIGHUP`): a revoked token's connection is answered `NOAUTH` (and,
/// past its first `RESP_AUTH_TIMEOUT_MS`, closed), a narrowed one has its
/// new roles.
fn authorize(
    shared: &Shared,
    session: &mut Session,
    spec: &Spec,
    args: &[Bytes],
) -> RespResult<()> {
    use crate::auth::Role;
    let Some(auth) = &shared.node.auth else {
        return Ok(());
    };
    if matches!(spec.kind, Kind::Auth | Kind::Hello | Kind::Quit) {
        return Ok(());
    }
    let Some(token) = &mut session.token else {
        return Err(RespError::NoAuth);
    };
    let generation = auth.generation();
    if token.generation != generation {
        match token.digest.and_then(|d| auth.authenticate_digest(&d)) {
            Some((name, roles)) => {
                token.name = name;
                token.roles = roles;
                token.generation = generation;
            }
            None => {
                tracing::info!(token = %token.name, "a Redis-protocol connection's token was revoked; it must authenticate again");
                session.token = None;
                return Err(RespError::NoAuth);
            }
        }
    }
    let answers_a_value = matches!(
        spec.kind,
        Kind::Incr | Kind::IncrBy | Kind::Decr | Kind::DecrBy
    ) || (spec.kind == Kind::Set
        && args.iter().skip(3).any(|a| a.eq_ignore_ascii_case(b"GET")));
    let allowed = if spec.kind == Kind::Wait {
        token.roles.contains(&Role::Read) || token.roles.contains(&Role::Write)
    } else if spec.flags.contains(&"write") {
        token.roles.contains(&Role::Write)
            && (!answers_a_value || token.roles.contains(&Role::Read))
    } else if spec.flags == CONN {
        true
    } else {
        token.roles.contains(&Role::Read)
    };
    if allowed {
        Ok(())
    } else {
        Err(RespError::NoPerm {
            token: token.name.clone(),
            command: spec.name.to_string(),
        })
    }
}

/// Execute one request and return its answer (an error value on failure).
pub(crate) async fn execute(shared: &Shared, session: &mut Session, args: &[Bytes]) -> Value {
    match dispatch(shared, session, args).await {
        Ok(v) => v,
        Err(e) => e.to_value(),
    }
}

async fn dispatch(shared: &Shared, session: &mut Session, args: &[Bytes]) -> RespResult<Value> {
    let Some(name) = args.first() else {
        return Err(RespError::Syntax);
    };
    let Some(spec) = lookup(name) else {
        return Err(unknown_command(args));
    };
    let arity_ok = if spec.arity >= 0 {
        args.len() as i64 == spec.arity
    } else {
        args.len() as i64 >= -spec.arity
    };
    if !arity_ok {
        return Err(RespError::WrongArity(spec.name.to_string()));
    }
    authorize(shared, session, spec, args)?;
    if session.in_refused_multi
        && !matches!(
            spec.kind,
            Kind::Multi | Kind::Exec | Kind::Discard | Kind::Quit
        )
    {
        return Err(RespError::InRefusedMulti);
    }
    // Handlers index `args` up to the arity checked here, so a short
    // request can never reach one.
    match spec.kind {
        Kind::Ping => session::ping(args),
        Kind::Echo => Ok(Value::Bulk(args[1].clone())),
        Kind::Hello => session::hello(shared, session, args),
        Kind::Auth => session::auth(shared, session, args),
        Kind::Select => session::select(args),
        Kind::Quit => {
            session.closing = true;
            Ok(Value::ok())
        }
        Kind::Command => command(args),
        Kind::Client => session::client(session, args),
        Kind::Config => session::config(args),
        Kind::Info => replication::info(shared, args),
        Kind::Role => replication::role(shared),
        Kind::Wait => replication::wait(shared, session, args).await,
        Kind::Get => keys::get(shared, args).await,
        Kind::Set => keys::set(shared, session, args).await,
        Kind::Del => keys::del(shared, session, args).await,
        Kind::Exists => keys::exists(shared, args).await,
        Kind::Type => keys::key_type(shared, args).await,
        Kind::Mget => keys::mget(shared, args).await,
        Kind::Mset => keys::mset(shared, session, args).await,
        Kind::Incr => keys::incr_by(shared, session, &args[1], 1).await,
        Kind::Decr => keys::incr_by(shared, session, &args[1], -1).await,
        Kind::IncrBy => {
            let by = keys::parse_int(&args[2]).ok_or(RespError::NotInteger)?;
            keys::incr_by(shared, session, &args[1], by).await
        }
        Kind::DecrBy => {
            let by = keys::parse_int(&args[2]).ok_or(RespError::NotInteger)?;
            // -i64::MIN does not exist; Redis refuses it the same way.
            let by = by.checked_neg().ok_or(RespError::DecrementOverflow)?;
            keys::incr_by(shared, session, &args[1], by).await
        }
        Kind::Scan => scan::scan(shared, args).await,
        Kind::DbSize => scan::dbsize(shared).await,
        // OK as in Redis (clients expect it: redis-rs mishandles an error
        // here), then every command is refused while queuing, so EXEC
        // aborts the whole transaction, as Redis does after such errors.
        Kind::Multi => match std::mem::replace(&mut session.in_refused_multi, true) {
            true => Err(RespError::NestedMulti),
            false => Ok(Value::ok()),
        },
        Kind::Exec => match std::mem::take(&mut session.in_refused_multi) {
            true => Err(RespError::ExecAbort),
            false => Err(RespError::WithoutMulti("EXEC")),
        },
        Kind::Discard => match std::mem::take(&mut session.in_refused_multi) {
            true => Ok(Value::ok()),
            false => Err(RespError::WithoutMulti("DISCARD")),
        },
    }
}

/// The answer when no arm of a container command (`CLIENT`, `COMMAND`,
/// `CONFIG`) took `args[1]`: `HELP` lists `subcommands` (name, then usage
/// and what it does, as Redis prints them); a known name got the wrong
/// number of arguments (`ERR wrong number of arguments for 'client|setname'
/// command`, Redis's wording); anything else is an unknown subcommand.
pub(crate) fn other_subcommand(
    command: &'static str,
    subcommands: &[(&str, &str)],
    args: &[Bytes],
) -> RespResult<Value> {
    let sub = &args[1];
    if sub.eq_ignore_ascii_case(b"HELP") && args.len() == 2 {
        let mut lines = vec![Value::simple(format!(
            "{command} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"
        ))];
        for (name, what) in subcommands.iter().chain(&[("HELP", "Print this help.")]) {
            lines.push(Value::simple(*name));
            lines.push(Value::simple(format!("    {what}")));
        }
        return Ok(Value::Array(lines));
    }
    let known = subcommands.iter().any(|(usage, _)| {
        let name = usage.split(' ').next().unwrap_or(usage);
        sub.eq_ignore_ascii_case(name.as_bytes())
    }) || sub.eq_ignore_ascii_case(b"HELP");
    if known {
        return Err(RespError::WrongArity(format!(
            "{}|{}",
            command.to_ascii_lowercase(),
            quoted(sub).to_ascii_lowercase()
        )));
    }
    Err(RespError::UnknownSubcommand {
        command,
        sub: quoted(sub),
    })
}

/// Longest piece of client input quoted back in an error.
const QUOTED_BYTES_MAX: usize = 128;

/// `s` as text for an error message, shortened.
pub(crate) fn quoted(s: &[u8]) -> String {
    let s = &s[..s.len().min(QUOTED_BYTES_MAX)];
    String::from_utf8_lossy(s).into_owned()
}

fn unknown_command(args: &[Bytes]) -> RespError {
    let name = args.first().map(|a| quoted(a)).unwrap_or_default();
    let args = args
        .iter()
        .skip(1)
        .take(3)
        .map(|a| format!("'{}' ", quoted(a)))
        .collect::<String>();
    RespError::UnknownCommand { name, args }
}

/// `COMMAND`, `COMMAND COUNT|LIST|INFO [name...]|DOCS [name...]`.
fn command(args: &[Bytes]) -> RespResult<Value> {
    let Some(sub) = args.get(1) else {
        return Ok(Value::Array(COMMANDS.iter().map(info_of).collect()));
    };
    let sub_upper = sub.to_ascii_uppercase();
    let names = &args[2..];
    match sub_upper.as_slice() {
        b"COUNT" if names.is_empty() => Ok(Value::Integer(COMMANDS.len() as i64)),
        b"LIST" => Ok(Value::Array(
            COMMANDS.iter().map(|s| Value::bulk_str(s.name)).collect(),
        )),
        b"INFO" => Ok(Value::Array(if names.is_empty() {
            COMMANDS.iter().map(info_of).collect()
        } else {
            names
                .iter()
                .map(|n| lookup(n).map(info_of).unwrap_or(Value::Null))
                .collect()
        })),
        b"DOCS" => {
            let chosen: Vec<&Spec> = if names.is_empty() {
                COMMANDS.iter().collect()
            } else {
                names.iter().filter_map(|n| lookup(n)).collect()
            };
            Ok(Value::Map(
                chosen
                    .into_iter()
                    .map(|s| (Value::bulk_str(s.name), docs_of(s)))
                    .collect(),
            ))
        }
        _ => other_subcommand("COMMAND", COMMAND_SUBCOMMANDS, args),
    }
}

/// `COMMAND HELP`.
const COMMAND_SUBCOMMANDS: &[(&str, &str)] = &[
    ("(no subcommand)", "Return details about all commands."),
    ("COUNT", "Return the total number of commands."),
    (
        "DOCS [<command-name> ...]",
        "Return documentary information about commands.",
    ),
    (
        "INFO [<command-name> ...]",
        "Return details about the given commands, or all of them.",
    ),
    ("LIST", "Return the names of all commands."),
];

/// Redis 7's command info: name, arity, flags, first key, last key, step,
/// ACL categories, tips, key specs, subcommands.
fn info_of(s: &Spec) -> Value {
    Value::Array(vec![
        Value::bulk_str(s.name),
        Value::Integer(s.arity),
        Value::Set(s.flags.iter().map(|f| Value::simple(*f)).collect()),
        Value::Integer(s.first_key),
        Value::Integer(s.last_key),
        Value::Integer(s.step),
        Value::Set(Vec::new()),
        Value::Set(Vec::new()),
        Value::Array(Vec::new()),
        Value::Array(Vec::new()),
    ])
}

/// `COMMAND DOCS` for one command: every key and value a bulk string
/// (`redis-cli` asserts that when it builds its help from the answer).
fn docs_of(s: &Spec) -> Value {
    Value::Map(vec![
        (Value::bulk_str("summary"), Value::bulk_str(s.summary)),
        (Value::bulk_str("since"), Value::bulk_str(s.since)),
        (Value::bulk_str("group"), Value::bulk_str(s.group)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_lowercase_and_found_in_any_case() {
        for (i, s) in COMMANDS.iter().enumerate() {
            assert_eq!(s.name, s.name.to_ascii_lowercase());
            assert!(COMMANDS[..i].iter().all(|o| o.name != s.name), "{}", s.name);
            assert!(std::ptr::eq(
                lookup(s.name.to_uppercase().as_bytes()).unwrap(),
                s
            ));
            assert!(s.arity != 0);
        }
        assert!(lookup(b"nosuch").is_none());
    }

    #[test]
    fn unknown_commands_quote_a_bounded_prefix() {
        let long = Bytes::from(vec![b'x'; 1000]);
        let e = unknown_command(&[Bytes::from_static(b"FOO"), long.clone(), long]);
        let text = e.to_string();
        assert!(text.starts_with("ERR unknown command 'FOO', with args beginning with: 'xxx"));
        assert!(text.len() < 400, "{}", text.len());
    }
}
