//! Connection-level commands: `PING`, `HELLO`, `AUTH`, `SELECT`,
//! `CLIENT`, `CONFIG`. None of them touches the data.

use bytes::Bytes;
use replidb_resp::{Protocol, Value};

use super::commands::{other_subcommand, quoted};
use super::conn::{Session, SessionToken};
use super::error::{RespError, RespResult};
use super::keys::parse_int;
use super::Shared;
use crate::node::Role;

/// The Redis version the listener presents itself as: the command set and
/// replies follow Redis 7.2, and clients pick features by this number.
pub(crate) const REDIS_VERSION: &str = "7.2.0";

/// `PING [message]`.
pub(crate) fn ping(args: &[Bytes]) -> RespResult<Value> {
    match args {
        [_] => Ok(Value::simple("PONG")),
        [_, message] => Ok(Value::Bulk(message.clone())),
        _ => Err(RespError::WrongArity("ping".into())),
    }
}

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`:
/// switch protocol, answer in the new one with what the server is.
pub(crate) fn hello(shared: &Shared, session: &mut Session, args: &[Bytes]) -> RespResult<Value> {
    let mut proto = session.proto;
    let mut name = None;
    let mut auth_roles = None;
    if let Some(v) = args.get(1) {
        proto = match parse_int(v) {
            Some(2) => Protocol::Resp2,
            Some(3) => Protocol::Resp3,
            Some(_) => return Err(RespError::NoProto),
            None => {
                return Err(RespError::Unsupported(
                    "Protocol version is not an integer or out of range".into(),
                ))
            }
        };
        let mut i = 2;
        while i < args.len() {
            let opt = args[i].to_ascii_uppercase();
            match (opt.as_slice(), args.get(i + 1), args.get(i + 2)) {
                (b"AUTH", Some(user), Some(pass)) => {
                    auth_roles = Some(check_user(shared, user, pass)?);
                    i += 3;
                }
                (b"SETNAME", Some(n), _) => {
                    name = Some(client_name(n)?);
                    i += 2;
                }
                _ => return Err(RespError::HelloOption(quoted(&args[i]))),
            }
        }
    }
    if auth_roles.is_none() && shared.node.auth.is_some() && session.token.is_none() {
        return Err(RespError::HelloNoAuth);
    }
    // Only now, with every option valid: a refused HELLO changes nothing.
    if let Some(token) = auth_roles {
        session.token = Some(token);
    }
    session.proto = proto;
    if name.is_some() {
        session.name = name;
    }
    let role = match shared.node.role() {
        Role::Leader(_) => "master",
        Role::Follower(_) => "replica",
    };
    Ok(Value::Map(vec![
        (Value::bulk_str("server"), Value::bulk_str("redis")),
        (Value::bulk_str("version"), Value::bulk_str(REDIS_VERSION)),
        (Value::bulk_str("proto"), Value::Integer(proto.version())),
        (Value::bulk_str("id"), Value::Integer(session.id as i64)),
        (Value::bulk_str("mode"), Value::bulk_str("standalone")),
        (Value::bulk_str("role"), Value::bulk_str(role)),
        (Value::bulk_str("modules"), Value::Array(Vec::new())),
    ]))
}

/// `AUTH [username] password`. Without `--auth-file` the node behaves as
/// Redis does without `requirepass`: a bare password is an error (the
/// client is misconfigured), the `default` user is accepted. With it, the
/// password is a token's secret and the username, if given, `default` or
/// that token's name; the connection then has the token's roles.
pub(crate) fn auth(shared: &Shared, session: &mut Session, args: &[Bytes]) -> RespResult<Value> {
    let (user, pass): (&[u8], &[u8]) = match args {
        [_, password] if shared.node.auth.is_some() => (b"default", password),
        [_, _password] => return Err(RespError::NoPassword),
        [_, user, pass] => (user, pass),
        _ => return Err(RespError::Syntax),
    };
    session.token = Some(check_user(shared, user, pass)?);
    Ok(Value::ok())
}

/// The roles `user`/`password` grant. Without auth, only the `default`
/// user exists and any password is accepted (as Redis without
/// `requirepass`).
fn check_user(shared: &Shared, user: &[u8], password: &[u8]) -> RespResult<SessionToken> {
    use crate::auth::{Authenticator, Role};
    let Some(auth) = &shared.node.auth else {
        return if user == b"default" {
            Ok(SessionToken {
                name: "default".to_string(),
                roles: [Role::Read, Role::Write, Role::Admin].into_iter().collect(),
                digest: None,
                generation: 0,
            })
        } else {
            Err(RespError::WrongPass)
        };
    };
    let secret = std::str::from_utf8(password).map_err(|_| RespError::WrongPass)?;
    // The generation before the lookup: a reload in between is caught by
    // the next command's check.
    let generation = auth.generation();
    let digest = Authenticator::digest(secret);
    let (name, roles) = auth
        .authenticate_digest(&digest)
        .ok_or(RespError::WrongPass)?;
    if user != b"default" && user != name.as_bytes() {
        return Err(RespError::WrongPass);
    }
    Ok(SessionToken {
        name,
        roles,
        digest: Some(digest),
        generation,
    })
}

/// `SELECT 0`: replidb has one keyspace.
pub(crate) fn select(args: &[Bytes]) -> RespResult<Value> {
    match parse_int(&args[1]) {
        Some(0) => Ok(Value::ok()),
        Some(_) => Err(RespError::DbIndex),
        None => Err(RespError::NotInteger),
    }
}

/// Longest client name kept.
const CLIENT_NAME_BYTES_MAX: usize = 256;

/// A client name: printable ASCII without spaces, as Redis requires.
fn client_name(raw: &[u8]) -> RespResult<String> {
    if raw.len() > CLIENT_NAME_BYTES_MAX || !raw.iter().all(|b| (b'!'..=b'~').contains(b)) {
        return Err(RespError::BadClientName);
    }
    Ok(String::from_utf8_lossy(raw).into_owned())
}

/// `CLIENT SETNAME|GETNAME|SETINFO|ID|INFO`.
pub(crate) fn client(session: &mut Session, args: &[Bytes]) -> RespResult<Value> {
    let sub = args[1].to_ascii_uppercase();
    match (sub.as_slice(), args.len()) {
        (b"SETNAME", 3) => {
            let name = client_name(&args[2])?;
            // An empty name clears it, as in Redis.
            session.name = (!name.is_empty()).then_some(name);
            Ok(Value::ok())
        }
        (b"GETNAME", 2) => Ok(match &session.name {
            Some(n) => Value::bulk_str(n),
            None => Value::Null,
        }),
        (b"SETINFO", 4) => {
            let attr = args[2].to_ascii_uppercase();
            let (slot, what) = match attr.as_slice() {
                b"LIB-NAME" => (&mut session.lib_name, "lib-name"),
                b"LIB-VER" => (&mut session.lib_ver, "lib-ver"),
                _ => return Err(RespError::UnrecognizedOption(quoted(&args[2]))),
            };
            let value = client_name(&args[3]).map_err(|_| RespError::BadLibInfo(what))?;
            *slot = (!value.is_empty()).then_some(value);
            Ok(Value::ok())
        }
        (b"ID", 2) => Ok(Value::Integer(session.id as i64)),
        (b"INFO", 2) => Ok(Value::Verbatim {
            format: *b"txt",
            text: Bytes::from(format!(
                "id={} addr={} name={} db=0 resp={} lib-name={} lib-ver={}\n",
                session.id,
                session.peer,
                session.name.as_deref().unwrap_or(""),
                session.proto.version(),
                session.lib_name.as_deref().unwrap_or(""),
                session.lib_ver.as_deref().unwrap_or(""),
            )),
        }),
        _ => other_subcommand("CLIENT", CLIENT_SUBCOMMANDS, args),
    }
}

/// `CLIENT HELP`.
const CLIENT_SUBCOMMANDS: &[(&str, &str)] = &[
    ("GETNAME", "Return the name of the current connection."),
    ("ID", "Return the ID of the current connection."),
    (
        "INFO",
        "Return information about the current client connection.",
    ),
    (
        "SETINFO <option> <value>",
        "Set client meta attr. Options are: LIB-NAME, LIB-VER.",
    ),
    (
        "SETNAME <connection-name>",
        "Assign the name <connection-name> to the current connection.",
    ),
];

/// `CONFIG HELP`.
const CONFIG_SUBCOMMANDS: &[(&str, &str)] = &[
    (
        "GET <pattern> [<pattern> ...]",
        "Answers an empty list: replidb is configured by flags and its file.",
    ),
    (
        "SET <directive> <value>",
        "Refused: configure replidb with flags or its file.",
    ),
];

/// `CONFIG GET pattern...` answers an empty list (the node is configured
/// by flags and its file, not at run time); other subcommands are refused.
pub(crate) fn config(args: &[Bytes]) -> RespResult<Value> {
    if args[1].eq_ignore_ascii_case(b"GET") && args.len() >= 3 {
        return Ok(Value::Map(Vec::new()));
    }
    if args[1].eq_ignore_ascii_case(b"SET") {
        return Err(RespError::Unsupported(
            "CONFIG SET is not supported: configure replidb with flags or its config file".into(),
        ));
    }
    other_subcommand("CONFIG", CONFIG_SUBCOMMANDS, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<Bytes> {
        a.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    #[test]
    fn select_only_zero() {
        assert_eq!(select(&args(&["SELECT", "0"])).unwrap(), Value::ok());
        assert!(matches!(
            select(&args(&["SELECT", "1"])),
            Err(RespError::DbIndex)
        ));
        assert!(matches!(
            select(&args(&["SELECT", "x"])),
            Err(RespError::NotInteger)
        ));
    }

    #[test]
    fn client_names_are_printable_without_spaces() {
        assert!(client_name(b"app-1").is_ok());
        assert!(client_name(b"a b").is_err());
        assert!(client_name(b"a\nb").is_err());
    }
}
