//! The Redis protocol listener (`--resp-listen`) end to end: real
//! `replidb server` processes, the `redis` crate as the client (and raw
//! sockets where the test must control the bytes), `redis-cli` and
//! `redis-benchmark` when they are installed.
//!
//! Each node listens on `127.0.0.1:0` for the Redis protocol and the test
//! reads the port it bound from the node's log line
//! `msg="serving redis protocol" ... addr=HOST:PORT`.

mod common;

use common::signal;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{resp_port, wait_until, Cluster, Node};
use redis::{Connection, RedisResult, Value};
use replidb_resp::{encode_command, Limits, ValueDecoder};
use serde_json::json;

/// How long a client waits for an answer before the test fails.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// Every node serves the Redis protocol on a port of its choosing.
const RESP_ARGS: &[&str] = &["--resp-listen", "127.0.0.1:0"];

/// A node serving the Redis protocol, and its port.
async fn start(id: &str, extra: &[&str]) -> (Node, u16) {
    let mut args = RESP_ARGS.to_vec();
    args.extend_from_slice(extra);
    let node = Node::start(id, &args).await;
    let port = resp_port(&node).await;
    (node, port)
}

/// A `redis` crate connection (RESP2, or RESP3 with `resp3`).
fn connect(port: u16, resp3: bool) -> Connection {
    let proto = if resp3 { "?protocol=resp3" } else { "" };
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{port}/{proto}")).expect("redis url");
    let con = client
        .get_connection_with_timeout(REPLY_TIMEOUT)
        .expect("connect to the redis protocol port");
    con.set_read_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
    con
}

fn cmd<T: redis::FromRedisValue>(con: &mut Connection, args: &[&str]) -> RedisResult<T> {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(con)
}

/// Run a command that must succeed.
fn ok<T: redis::FromRedisValue>(con: &mut Connection, args: &[&str]) -> T {
    cmd(con, args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Run a command that must fail; returns the error's text.
fn err(con: &mut Connection, args: &[&str]) -> String {
    match cmd::<Value>(con, args) {
        Ok(v) => panic!("{args:?} should fail, answered {v:?}"),
        Err(e) => e.to_string(),
    }
}

/// Send `bytes` on a raw socket and decode `n` answers.
fn raw(port: u16, bytes: &[u8], n: usize) -> (TcpStream, Vec<replidb_resp::Value>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
    s.write_all(bytes).expect("send");
    let mut dec = ValueDecoder::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while out.len() < n {
        while let Some(v) = dec.decode(&mut buf).expect("valid RESP from the node") {
            out.push(v);
        }
        if out.len() >= n {
            break;
        }
        let got = s.read(&mut chunk).expect("read answers");
        assert!(
            got > 0,
            "connection closed after {} of {n} answers",
            out.len()
        );
        buf.extend_from_slice(&chunk[..got]);
    }
    (s, out)
}

fn bulk(s: &str) -> replidb_resp::Value {
    replidb_resp::Value::bulk_str(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strings_keys_and_errors_on_one_node() {
    let (node, port) = start("n1", &[]).await;
    let mut c = connect(port, false);

    assert_eq!(ok::<String>(&mut c, &["PING"]), "PONG");
    assert_eq!(ok::<String>(&mut c, &["ECHO", "hi"]), "hi");
    assert_eq!(ok::<String>(&mut c, &["SET", "greeting", "hello"]), "OK");
    assert_eq!(ok::<String>(&mut c, &["GET", "greeting"]), "hello");
    assert_eq!(ok::<Option<String>>(&mut c, &["GET", "missing"]), None);
    // The same core as the HTTP API: what one writes the other reads.
    let (status, body) = node.get_raw("greeting", "").await;
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
    node.put("from-http", "h").await;
    assert_eq!(ok::<String>(&mut c, &["GET", "from-http"]), "h");

    // Binary-safe values.
    let binary: Vec<u8> = (0..=255).collect();
    redis::cmd("SET")
        .arg("bin")
        .arg(&binary)
        .query::<()>(&mut c)
        .unwrap();
    let back: Vec<u8> = redis::cmd("GET").arg("bin").query(&mut c).unwrap();
    assert_eq!(back, binary);

    // MSET is one batch; MGET, EXISTS, DEL count as Redis does.
    assert_eq!(
        ok::<String>(&mut c, &["MSET", "a", "1", "b", "2", "c", "3"]),
        "OK"
    );
    let got: Vec<Option<String>> = ok(&mut c, &["MGET", "a", "nope", "c"]);
    assert_eq!(got, vec![Some("1".into()), None, Some("3".into())]);
    assert_eq!(ok::<i64>(&mut c, &["EXISTS", "a", "b", "b", "nope"]), 3);
    assert_eq!(ok::<i64>(&mut c, &["DEL", "a", "b", "a", "nope"]), 2);
    assert_eq!(ok::<i64>(&mut c, &["EXISTS", "a", "b"]), 0);
    assert_eq!(ok::<String>(&mut c, &["TYPE", "c"]), "string");
    assert_eq!(ok::<String>(&mut c, &["TYPE", "a"]), "none");
    // greeting, from-http, bin, c.
    assert_eq!(ok::<i64>(&mut c, &["DBSIZE"]), 4);

    // SET options.
    assert_eq!(ok::<Option<String>>(&mut c, &["SET", "c", "x", "NX"]), None);
    assert_eq!(
        ok::<Option<String>>(&mut c, &["SET", "new", "x", "XX"]),
        None
    );
    assert_eq!(
        ok::<Option<String>>(&mut c, &["SET", "new", "n1", "NX"]),
        Some("OK".into())
    );
    assert_eq!(
        ok::<Option<String>>(&mut c, &["SET", "new", "n2", "XX", "GET"]),
        Some("n1".into())
    );
    assert_eq!(
        ok::<Option<String>>(&mut c, &["SET", "fresh", "f", "GET"]),
        None
    );
    assert_eq!(ok::<String>(&mut c, &["GET", "new"]), "n2");
    let e = err(&mut c, &["SET", "k", "v", "EX", "10"]);
    assert!(e.contains("do not expire"), "{e}");
    let e = err(&mut c, &["SET", "k", "v", "NX", "XX"]);
    assert!(e.contains("syntax error"), "{e}");

    // Counters.
    assert_eq!(ok::<i64>(&mut c, &["INCR", "n"]), 1);
    assert_eq!(ok::<i64>(&mut c, &["INCRBY", "n", "41"]), 42);
    assert_eq!(ok::<i64>(&mut c, &["DECR", "n"]), 41);
    assert_eq!(ok::<i64>(&mut c, &["DECRBY", "n", "-9"]), 50);
    assert_eq!(ok::<String>(&mut c, &["GET", "n"]), "50");
    let e = err(&mut c, &["INCR", "greeting"]);
    assert!(e.contains("value is not an integer or out of range"), "{e}");
    let e = err(&mut c, &["INCRBY", "n", "1.5"]);
    assert!(e.contains("not an integer"), "{e}");
    ok::<String>(&mut c, &["SET", "big", &i64::MAX.to_string()]);
    let e = err(&mut c, &["INCR", "big"]);
    assert!(e.contains("increment or decrement would overflow"), "{e}");
    let e = err(&mut c, &["DECRBY", "n", &i64::MIN.to_string()]);
    assert!(
        e.contains("decrement would overflow") && !e.contains("increment"),
        "{e}"
    );
    // Repeated SET flags are accepted, as in Redis 7.
    assert_eq!(ok::<String>(&mut c, &["SET", "rep", "v", "NX", "NX"]), "OK");
    assert_eq!(
        ok::<String>(&mut c, &["SET", "rep", "w", "GET", "GET"]),
        "v"
    );
    let e = err(&mut c, &["HELLO", "2", "FOO"]);
    assert!(e.contains("Syntax error in HELLO option 'FOO'"), "{e}");

    // Errors, Redis style, and the connection stays usable after each.
    let e = err(&mut c, &["NOSUCH", "x"]);
    assert!(e.contains("unknown command 'NOSUCH'"), "{e}");
    let e = err(&mut c, &["GET"]);
    assert!(e.contains("wrong number of arguments for 'get'"), "{e}");
    let e = err(&mut c, &["SELECT", "1"]);
    assert!(e.contains("DB index is out of range"), "{e}");
    assert_eq!(ok::<String>(&mut c, &["SELECT", "0"]), "OK");
    let e = err(&mut c, &["SET", "", "v"]);
    assert!(e.contains("invalid key"), "{e}");
    let e = err(&mut c, &["AUTH", "secret"]);
    assert!(e.contains("without any password configured"), "{e}");
    assert_eq!(ok::<String>(&mut c, &["PING"]), "PONG");

    // Connection commands and introspection.
    assert_eq!(ok::<String>(&mut c, &["CLIENT", "SETNAME", "tester"]), "OK");
    assert_eq!(ok::<String>(&mut c, &["CLIENT", "GETNAME"]), "tester");
    let n: i64 = ok(&mut c, &["COMMAND", "COUNT"]);
    let listed: Vec<Value> = ok(&mut c, &["COMMAND"]);
    assert_eq!(listed.len() as i64, n);
    let config: Vec<String> = ok(&mut c, &["CONFIG", "GET", "save"]);
    assert!(config.is_empty());
    let info: String = ok(&mut c, &["INFO"]);
    for want in [
        "redis_version:",
        "role:master",
        "connected_slaves:0",
        "db0:keys=",
    ] {
        assert!(info.contains(want), "INFO lacks {want}: {info}");
    }
}

/// A client library's transaction (MULTI, commands, EXEC) must not run
/// part of itself: replidb refuses every command between MULTI and EXEC,
/// and EXEC aborts, so nothing in between is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_is_refused_whole_never_run_in_part() {
    let (_node, port) = start("tx1", &[]).await;
    let mut c = connect(port, false);

    // The redis crate's atomic pipeline sends MULTI, SET, INCR, EXEC.
    let r: RedisResult<Value> = redis::pipe()
        .atomic()
        .set("t", "1")
        .incr("n", 1)
        .query(&mut c);
    assert!(r.is_err(), "a transaction must fail, got {r:?}");
    // Whatever the library made of the errors, the connection is usable
    // and nothing was written.
    let _ = cmd::<Value>(&mut c, &["DISCARD"]);
    assert_eq!(ok::<Option<String>>(&mut c, &["GET", "t"]), None);
    assert_eq!(ok::<Option<String>>(&mut c, &["GET", "n"]), None);

    // The same on the wire, answer by answer.
    let (_s, answers) = raw(
        port,
        b"MULTI\r\nSET t 1\r\nMULTI\r\nEXEC\r\nEXEC\r\nDISCARD\r\nGET t\r\n",
        7,
    );
    let text: Vec<String> = answers.iter().map(|v| format!("{v:?}")).collect();
    assert_eq!(answers[0], replidb_resp::Value::ok(), "{text:?}");
    assert!(
        text[1].contains("not supported: command not queued"),
        "{text:?}"
    );
    assert!(text[2].contains("can not be nested"), "{text:?}");
    assert!(text[3].contains("EXECABORT"), "{text:?}");
    assert!(text[4].contains("EXEC without MULTI"), "{text:?}");
    assert!(text[5].contains("DISCARD without MULTI"), "{text:?}");
    assert_eq!(answers[6], replidb_resp::Value::Null);

    // Subcommands: Redis's wording for a wrong argument count, and HELP.
    for (args, name) in [
        (&["CLIENT", "SETNAME"][..], "client|setname"),
        (&["CONFIG", "GET"][..], "config|get"),
        (&["COMMAND", "COUNT", "x"][..], "command|count"),
    ] {
        let e = err(&mut c, args);
        let want = format!("wrong number of arguments for '{name}'");
        assert!(e.contains(&want), "{args:?}: {e}");
    }
    let e = err(&mut c, &["CLIENT", "NOSUCH"]);
    assert!(
        e.contains("unknown subcommand 'NOSUCH'. Try CLIENT HELP."),
        "{e}"
    );
    for command in ["CLIENT", "COMMAND", "CONFIG"] {
        let help: Vec<String> = ok(&mut c, &[command, "HELP"]);
        assert!(help[0].starts_with(command) && help.len() > 3, "{help:?}");
    }

    // CLIENT SETINFO takes the two attributes Redis knows, without spaces.
    assert_eq!(
        ok::<String>(&mut c, &["CLIENT", "SETINFO", "lib-name", "redis-rs"]),
        "OK"
    );
    assert_eq!(
        ok::<String>(&mut c, &["CLIENT", "SETINFO", "LIB-VER", "0.27"]),
        "OK"
    );
    let e = err(&mut c, &["CLIENT", "SETINFO", "foo", "x"]);
    assert!(e.contains("Unrecognized option 'foo'"), "{e}");
    let e = err(&mut c, &["CLIENT", "SETINFO", "lib-name", "has space"]);
    assert!(e.contains("cannot contain spaces"), "{e}");
    let info: String = ok(&mut c, &["CLIENT", "INFO"]);
    assert!(info.contains("lib-name=redis-rs lib-ver=0.27"), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_incr_from_many_connections_sums_exactly() {
    const CONNECTIONS: usize = 8;
    const INCRS: usize = 60;
    let (_node, port) = start("n1", &[]).await;
    let barrier = Arc::new(Barrier::new(CONNECTIONS));
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = connect(port, i % 2 == 1);
                barrier.wait();
                for _ in 0..INCRS {
                    // Half INCR, half INCRBY 2 then DECR: both are
                    // read-modify-writes that must not lose an update.
                    if i % 2 == 0 {
                        ok::<i64>(&mut c, &["INCR", "counter"]);
                    } else {
                        ok::<i64>(&mut c, &["INCRBY", "counter", "2"]);
                        ok::<i64>(&mut c, &["DECR", "counter"]);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let mut c = connect(port, false);
    assert_eq!(
        ok::<i64>(&mut c, &["GET", "counter"]),
        (CONNECTIONS * INCRS) as i64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_walks_every_key_once_in_key_order() {
    let (_node, port) = start("n1", &[]).await;
    let mut c = connect(port, false);
    let mut want = Vec::new();
    for batch in 0..5 {
        let mut mset = redis::cmd("MSET");
        for i in 0..50 {
            let k = format!("user:{:04}", batch * 50 + i);
            mset.arg(&k).arg(i);
            want.push(k);
        }
        mset.arg(format!("other:{batch}")).arg("x");
        mset.query::<()>(&mut c).unwrap();
    }

    // Small COUNTs force many cursors; MATCH filters; every key once.
    let mut cursor = "0".to_string();
    let mut seen: Vec<String> = Vec::new();
    let mut calls = 0;
    loop {
        let (next, keys): (String, Vec<String>) =
            ok(&mut c, &["SCAN", &cursor, "MATCH", "user:*", "COUNT", "17"]);
        seen.extend(keys);
        calls += 1;
        if next == "0" {
            break;
        }
        cursor = next;
        assert!(calls < 100, "SCAN never ends");
    }
    assert_eq!(seen, want, "every user key once, in key order");
    assert!(calls > 10, "COUNT 17 over 250 keys took {calls} calls");

    // Without MATCH: all 255 keys; a pattern with a class.
    let all: Vec<String> = scan_all(&mut c, &[]);
    assert_eq!(all.len(), 255);
    let some: Vec<String> = scan_all(&mut c, &["MATCH", "other:[13]"]);
    assert_eq!(some, vec!["other:1", "other:3"]);
    assert_eq!(scan_all(&mut c, &["TYPE", "hash"]), Vec::<String>::new());

    let e = err(&mut c, &["SCAN", "12345"]);
    assert!(e.contains("invalid cursor"), "{e}");
    let e = err(&mut c, &["SCAN", "0", "COUNT", "0"]);
    assert!(e.contains("syntax error"), "{e}");
    // Matching walks the pattern for every key: it is bounded.
    let stars = "*".repeat(64 * 1024 + 1);
    let e = err(&mut c, &["SCAN", "0", "MATCH", &stars]);
    assert!(
        e.contains("MATCH pattern of 65537 bytes exceeds the limit"),
        "{e}"
    );
    let stars = "*".repeat(64 * 1024);
    assert_eq!(scan_all(&mut c, &["MATCH", &stars]).len(), 255);
}

fn scan_all(c: &mut Connection, opts: &[&str]) -> Vec<String> {
    let mut cursor = "0".to_string();
    let mut out = Vec::new();
    loop {
        let mut args = vec!["SCAN", cursor.as_str()];
        args.extend_from_slice(opts);
        let (next, keys): (String, Vec<String>) = ok(c, &args);
        out.extend(keys);
        if next == "0" {
            return out;
        }
        cursor = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_switches_the_connection_to_resp3() {
    let (_node, port) = start("n1", &[]).await;
    // The client sends HELLO 3 itself when asked for RESP3.
    let mut c = connect(port, true);
    let hello: Value = ok(&mut c, &["HELLO", "3"]);
    let Value::Map(fields) = hello else {
        panic!("HELLO 3 answers a map, got {hello:?}");
    };
    let proto = fields
        .iter()
        .find(|(k, _)| *k == Value::BulkString(b"proto".to_vec()))
        .map(|(_, v)| v.clone());
    assert_eq!(proto, Some(Value::Int(3)));
    assert_eq!(ok::<Value>(&mut c, &["GET", "missing"]), Value::Nil);
    assert!(matches!(
        ok::<Value>(&mut c, &["INFO"]),
        Value::VerbatimString { .. }
    ));
    assert!(matches!(ok::<Value>(&mut c, &["CONFIG", "GET", "*"]), Value::Map(m) if m.is_empty()));

    // On the wire: RESP2 until HELLO 3, RESP3 after, and HELLO's own
    // answer already in RESP3; an unknown version changes nothing.
    let mut req = BytesMut::new();
    for args in [
        &["GET", "missing"][..],
        &["HELLO", "4"],
        &["GET", "missing"],
        &["HELLO", "3"],
        &["GET", "missing"],
    ] {
        encode_command(args, &mut req);
    }
    let (_s, answers) = raw(port, &req, 5);
    use replidb_resp::Value as V;
    assert_eq!(answers[0], V::Null, "RESP2 null");
    assert_eq!(answers[1], V::error("NOPROTO unsupported protocol version"));
    assert!(matches!(&answers[3], V::Map(_)), "{:?}", answers[3]);
    assert_eq!(answers[4], V::Null, "RESP3 null");
    // Tell the two nulls apart: decode the bytes themselves.
    let mut req = BytesMut::new();
    encode_command(&["GET", "missing"], &mut req);
    encode_command(&["HELLO", "3"], &mut req);
    encode_command(&["GET", "missing"], &mut req);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    s.write_all(&req).unwrap();
    let mut text = Vec::new();
    let mut chunk = [0u8; 4096];
    while !text.ends_with(b"_\r\n") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&text));
        text.extend_from_slice(&chunk[..n]);
    }
    assert!(
        text.starts_with(b"$-1\r\n%7\r\n"),
        "{:?}",
        String::from_utf8_lossy(&text)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_are_answered_in_order_and_limits_close_the_connection() {
    let (_node, port) = start("n1", &["--max-value-bytes", "1024"]).await;
    let mut c = connect(port, false);

    // The redis crate writes the whole pipeline at once.
    let mut p = redis::pipe();
    for i in 0..200 {
        p.cmd("SET").arg(format!("p{i}")).arg(i);
        p.cmd("INCR").arg(format!("p{i}"));
        p.cmd("GET").arg(format!("p{i}"));
    }
    let answers: Vec<Value> = p.query(&mut c).unwrap();
    assert_eq!(answers.len(), 600);
    for i in 0..200 {
        assert_eq!(answers[3 * i], Value::Okay);
        assert_eq!(answers[3 * i + 1], Value::Int(i as i64 + 1));
        assert_eq!(
            answers[3 * i + 2],
            Value::BulkString((i + 1).to_string().into_bytes())
        );
    }

    // Many requests in one packet, inline ones among them, in order.
    let mut req = BytesMut::new();
    encode_command(&["SET", "x", "1"], &mut req);
    req.extend_from_slice(b"INCR x\r\nGET x\r\n");
    encode_command(&["ECHO", "done"], &mut req);
    let (_s, got) = raw(port, &req, 4);
    assert_eq!(
        got,
        vec![
            replidb_resp::Value::ok(),
            replidb_resp::Value::Integer(2),
            bulk("2"),
            bulk("done")
        ]
    );

    // A value over --max-value-bytes, within the request limit: a command
    // error, and the pipeline goes on (a new user found such values
    // closing the connection at the default limit, which a client library
    // reports as a lost connection and which drops the rest of a pipeline).
    let mut req = BytesMut::new();
    encode_command(&["PING"], &mut req);
    encode_command(&[&b"SET"[..], b"k", &[b'v'; 2000]], &mut req);
    encode_command(&[&b"MSET"[..], b"a", b"1", b"k", &[b'v'; 1025]], &mut req);
    encode_command(&[&b"GET"[..], &[b'k'; 3000]], &mut req);
    encode_command(&["EXISTS", "k", "a"], &mut req);
    let (_s, got) = raw(port, &req, 5);
    assert_eq!(got[0], replidb_resp::Value::simple("PONG"));
    for (i, what) in [(1, "of 2000 bytes"), (2, "of 1025 bytes")] {
        assert!(
            matches!(&got[i], replidb_resp::Value::Error(e) if e.contains(what) && e.contains("exceeds the limit of 1024 bytes")),
            "{:?}",
            got[i]
        );
    }
    assert!(
        matches!(&got[3], replidb_resp::Value::Error(e) if e.starts_with("ERR invalid key")),
        "{:?}",
        got[3]
    );
    assert_eq!(got[4], replidb_resp::Value::Integer(0), "nothing written");

    // Past the whole request's limit (4 × 1 KiB + 5 MiB here): a protocol
    // error, then the node closes the connection (it cannot know where the
    // next request is).
    const PAST_REQUEST_LIMIT: usize = 6_000_000;

    // Found by a new user: a value far over the limit, still arriving
    // when the node refuses it. Closing with those bytes unread made the
    // kernel reset the connection, which could discard the error before
    // the client read it; the node now reads on (and discards) until the
    // client is done, then closes.
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
        let mut w = s.try_clone().expect("clone");
        let sender = std::thread::spawn(move || {
            w.write_all(
                format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${PAST_REQUEST_LIMIT}\r\n").as_bytes(),
            )?;
            w.write_all(&vec![b'v'; PAST_REQUEST_LIMIT])?;
            w.shutdown(std::net::Shutdown::Write)
        });
        // Read only once everything is sent, as a client that writes its
        // whole request first does: the error waits in its buffer.
        let sent = sender.join().expect("sender thread");
        assert!(
            sent.is_ok(),
            "the node closes gracefully, not with a reset: {sent:?}"
        );
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("after {got:?}: {e}"),
            }
        }
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("-ERR Protocol error")
                && text.contains(&PAST_REQUEST_LIMIT.to_string()),
            "the refusal of an oversized value arrives intact: {text:?}"
        );
    }

    // A declared argument count past the limit, before any argument.
    let (_s, got) = raw(port, b"*100000\r\n", 1);
    assert!(
        matches!(&got[0], replidb_resp::Value::Error(e) if e.contains("too many")),
        "{got:?}"
    );
    // Garbage.
    let (_s, got) = raw(port, b"*1\r\n:5\r\n", 1);
    assert!(matches!(&got[0], replidb_resp::Value::Error(e) if e.contains("Protocol error")));

    // MSET of more keys than a transaction may hold is refused whole.
    let mut mset = redis::cmd("MSET");
    for i in 0..1001 {
        mset.arg(format!("m{i}")).arg("v");
    }
    let e = mset.query::<()>(&mut c).unwrap_err().to_string();
    assert!(e.contains("limit is 1000"), "{e}");
    assert_eq!(ok::<i64>(&mut c, &["EXISTS", "m0"]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_counts_followers_and_a_follower_is_read_only() {
    let cluster = Cluster::start(1, RESP_ARGS, RESP_ARGS).await;
    let leader_port = resp_port(&cluster.leader).await;
    let follower_port = resp_port(&cluster.followers[0]).await;
    let mut l = connect(leader_port, false);
    let mut f = connect(follower_port, false);

    // WAIT with nothing written yet: the follower holds "everything".
    assert_eq!(ok::<i64>(&mut l, &["WAIT", "1", "5000"]), 1);
    ok::<String>(&mut l, &["SET", "k", "v1"]);
    assert_eq!(ok::<i64>(&mut l, &["WAIT", "1", "10000"]), 1);
    // More replicas than exist: the timeout, then the count reached.
    let started = Instant::now();
    assert_eq!(ok::<i64>(&mut l, &["WAIT", "2", "300"]), 1);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let e = err(&mut l, &["WAIT", "1", "-1"]);
    assert!(e.contains("timeout is negative"), "{e}");
    let e = err(&mut l, &["WAIT", "0", "99999999999999999999"]);
    assert!(
        e.contains("timeout is not an integer or out of range"),
        "{e}"
    );

    // The follower serves reads; after WAIT it has the write durably, and
    // applies it promptly.
    wait_until(
        "the follower applied k",
        Duration::from_secs(10),
        async || cmd::<Option<String>>(&mut f, &["GET", "k"]).ok().flatten() == Some("v1".into()),
    )
    .await;
    // Writes there are refused, naming the leader.
    for write in [
        &["SET", "k", "v2"][..],
        &["INCR", "n"],
        &["DEL", "k"],
        &["MSET", "a", "1"],
        &["SET", "k", "v2", "NX"],
    ] {
        let e = err(&mut f, write);
        assert!(e.contains("read only replica"), "{write:?}: {e}");
        assert!(e.contains(&cluster.leader.url()), "{write:?}: {e}");
    }
    let e = err(&mut f, &["WAIT", "0", "0"]);
    assert!(e.contains("replica"), "{e}");
    assert_eq!(ok::<String>(&mut f, &["GET", "k"]), "v1");

    // Replication in Redis' words, offsets being LSNs.
    let info: String = ok(&mut l, &["INFO", "replication"]);
    assert!(info.contains("role:master"), "{info}");
    assert!(info.contains("connected_slaves:1"), "{info}");
    assert!(info.contains("state=online"), "{info}");
    let info: String = ok(&mut f, &["INFO", "replication"]);
    assert!(info.contains("role:slave"), "{info}");
    assert!(info.contains("master_link_status:up"), "{info}");
    let role: Vec<Value> = ok(&mut f, &["ROLE"]);
    assert_eq!(role[0], Value::BulkString(b"slave".to_vec()));
    let role: Vec<Value> = ok(&mut l, &["ROLE"]);
    assert_eq!(role[0], Value::BulkString(b"master".to_vec()));
    let Value::Array(replicas) = &role[2] else {
        panic!("{role:?}")
    };
    assert_eq!(replicas.len(), 1);
}

/// Whether `tool` runs (it is on PATH).
fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(out.status.success(), "{tool} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_and_redis_benchmark_work_against_a_node() {
    if !have("redis-cli") {
        println!("SKIPPED: redis-cli is not on PATH (Debian package redis-tools)");
        return;
    }
    let (_node, port) = start("n1", &[]).await;
    let p = port.to_string();
    let cli = |args: &[&str]| {
        let mut all = vec!["-p", p.as_str()];
        all.extend_from_slice(args);
        run("redis-cli", &all)
    };
    assert_eq!(cli(&["PING"]).trim(), "PONG");
    assert_eq!(cli(&["SET", "greeting", "hello"]).trim(), "OK");
    assert_eq!(cli(&["GET", "greeting"]).trim(), "hello");
    assert_eq!(cli(&["INCR", "visits"]).trim(), "1");
    assert_eq!(cli(&["MSET", "a", "1", "b", "2"]).trim(), "OK");
    let mut keys: Vec<String> = cli(&["--scan"]).lines().map(String::from).collect();
    keys.sort();
    assert_eq!(keys, vec!["a", "b", "greeting", "visits"]);
    assert!(cli(&["INFO", "replication"]).contains("role:master"));
    assert!(cli(&["-3", "HELLO", "3"]).contains("proto"));
    // redis-cli prints server errors on stdout with an "(error)" prefix
    // only on a terminal; piped, it prints the message.
    assert!(cli(&["NOSUCH"]).contains("unknown command"));

    if !have("redis-benchmark") {
        println!("SKIPPED: redis-benchmark is not on PATH (Debian package redis-tools)");
        return;
    }
    let out = run(
        "redis-benchmark",
        &["-p", &p, "-t", "set,get", "-n", "500", "-c", "5", "-q"],
    );
    assert!(out.contains("SET:") && out.contains("GET:"), "{out}");
    assert_eq!(
        cli(&["DBSIZE"]).trim(),
        "5",
        "benchmark writes key:__rand_int__"
    );
}

/// A browser tricked into posting a form to the Redis port sends an HTTP
/// head and then the form body, which could be commands. As Redis does,
/// the node closes the connection at `POST` (or `Host:`), before any
/// command after it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_request_on_the_redis_port_is_closed_before_its_body_runs() {
    let (_node, port) = start("n1", &[]).await;
    for head in ["POST / HTTP/1.1", "GET / HTTP/1.1"] {
        let req = format!(
            "{head}\r\nHost: 127.0.0.1\r\nContent-Length: 22\r\n\r\n\r\nSET xproto pwned\r\n"
        );
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
        s.write_all(req.as_bytes()).expect("send");
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).expect("closed by the node");
        let text = String::from_utf8_lossy(&answer);
        assert!(!text.contains("+OK"), "{head}: {text}");
    }
    let mut c = connect(port, false);
    let got: Option<String> = cmd(&mut c, &["GET", "xproto"]).unwrap();
    assert_eq!(got, None, "no command after the HTTP head ran");
}

/// Found by trying it as a new user: a counter, set or map made over HTTP
/// read over this port as its internal encoding (`GET` answered the
/// PN-counter's bytes), `TYPE` called it a `string`, and nothing could
/// delete it. Now a string command on one is Redis's `WRONGTYPE` (`MGET`
/// reads it as nil, as Redis does), `TYPE` and `SCAN TYPE` name its kind,
/// and `DEL` removes it, after which the key is free for a string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_keys_are_wrongtype_for_strings_and_del_removes_them() {
    let (node, port) = start("n1", &[]).await;
    let http = node.http();
    for (path, body) in [
        ("/v1/counter/likes", json!({"delta": 5})),
        ("/v1/set/tags", json!({"add": ["a"]})),
    ] {
        let r = http.post(node.at(path)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = http
        .patch(node.at("/v1/map/profile"))
        .json(&json!({"name": "Ann"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut c = connect(port, false);
    ok::<String>(&mut c, &["SET", "plain", "1"]);

    for (k, kind) in [("likes", "counter"), ("tags", "set"), ("profile", "map")] {
        assert_eq!(ok::<String>(&mut c, &["TYPE", k]), kind);
        for args in [
            vec!["GET", k],
            vec!["INCR", k],
            vec!["SET", k, "x"],
            vec!["SET", k, "x", "GET"],
        ] {
            let e = err(&mut c, &args);
            assert!(
                e.starts_with("WrongType") || e.contains("WRONGTYPE"),
                "{args:?}: {e}"
            );
        }
    }
    let got: Vec<Option<String>> = ok(&mut c, &["MGET", "plain", "likes", "nope"]);
    assert_eq!(got, vec![Some("1".to_string()), None, None]);
    let counters = scan_all(&mut c, &["TYPE", "counter"]);
    assert_eq!(counters, vec!["likes".to_string()]);
    let strings = scan_all(&mut c, &["TYPE", "string"]);
    assert_eq!(strings, vec!["plain".to_string()]);

    assert_eq!(ok::<i64>(&mut c, &["DEL", "likes", "tags", "profile"]), 3);
    assert_eq!(ok::<String>(&mut c, &["TYPE", "likes"]), "none");
    assert_eq!(ok::<i64>(&mut c, &["INCR", "likes"]), 1);
    let r = http.get(node.at("/v1/counter/tags")).send().await.unwrap();
    assert_eq!(r.status(), 200, "a deleted set's key is free for a counter");
}

/// A key the HTTP API takes (up to 1,024 bytes) is usable over the Redis
/// protocol even when `--max-value-bytes` is below that: the argument
/// limit was the value limit, so GET of a 500-byte key closed the
/// connection with a protocol error. Values are still held to the value
/// limit, with an error that leaves the connection open.
#[tokio::test]
async fn keys_longer_than_the_value_limit_work_and_values_are_still_held_to_it() {
    let (node, port) = start("n1", &["--max-value-bytes", "100"]).await;
    let long_key = "k".repeat(500);
    let r = node
        .http()
        .put(node.at(&format!("/v1/kv/{long_key}")))
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let mut c = connect(port, false);
    let got: String = ok(&mut c, &["GET", &long_key]);
    assert_eq!(got, "v");
    let _: () = ok(&mut c, &["SET", &long_key, "w"]);
    let _: () = ok(&mut c, &["MSET", &long_key, "x", "short", "y"]);
    let name = "n".repeat(150);
    let _: () = ok(&mut c, &["CLIENT", "SETNAME", &name]);
    let big = "v".repeat(101);
    let e = err(&mut c, &["SET", "short", &big]);
    assert!(e.contains("exceeds the limit of 100 bytes"), "{e}");
    let e = err(&mut c, &["MSET", "a", "1", "b", &big]);
    assert!(e.contains("exceeds the limit of 100 bytes"), "{e}");
    // Nothing of the refused batch was written; the connection still works.
    let n: i64 = ok(&mut c, &["EXISTS", "a"]);
    assert_eq!(n, 0);
    let got: String = ok(&mut c, &["GET", &long_key]);
    assert_eq!(got, "x");
    let deleted: i64 = ok(&mut c, &["DEL", &long_key]);
    assert_eq!(deleted, 1);
}

/// A new user's finding: `MGET` read its keys one at a time, so a reader
/// racing an `MSET` writer saw some keys before the batch and some after
/// (14–19 of 37,000 reads in 5 s). It now reads every key from one applied
/// state, on the leader and on a follower alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_never_sees_half_of_an_mset() {
    const KEYS: usize = 32;
    let cluster = Cluster::start(
        1,
        &["--resp-listen", "127.0.0.1:0", "--fsync", "never"],
        &["--resp-listen", "127.0.0.1:0", "--fsync", "never"],
    )
    .await;
    let leader_port = resp_port(&cluster.leader).await;
    let follower_port = resp_port(&cluster.followers[0]).await;
    let names: Vec<String> = (0..KEYS).map(|i| format!("batch:{i:02}")).collect();
    let batch_names = names.clone();
    let mset = move |i: usize| {
        let mut args = vec!["MSET".to_string()];
        for n in &batch_names {
            args.extend([n.clone(), i.to_string()]);
        }
        args
    };
    let mut w = connect(leader_port, false);
    let args = mset(0);
    ok::<String>(&mut w, &args.iter().map(String::as_str).collect::<Vec<_>>());

    let run_for = Duration::from_millis(2500);
    let writer = std::thread::spawn(move || {
        let started = Instant::now();
        let mut i = 1;
        while started.elapsed() < run_for {
            let args = mset(i);
            ok::<String>(&mut w, &args.iter().map(String::as_str).collect::<Vec<_>>());
            i += 1;
        }
        i
    });
    let readers: Vec<_> = [leader_port, follower_port]
        .into_iter()
        .map(|port| {
            let names = names.clone();
            std::thread::spawn(move || {
                let mut r = connect(port, false);
                let mut args = vec!["MGET"];
                args.extend(names.iter().map(String::as_str));
                let (mut reads, mut torn) = (0, Vec::new());
                let started = Instant::now();
                while started.elapsed() < run_for {
                    let values: Vec<Option<String>> = ok(&mut r, &args);
                    reads += 1;
                    if values.iter().any(|v| v != &values[0]) && torn.len() < 5 {
                        torn.push(values);
                    }
                }
                (port, reads, torn)
            })
        })
        .collect();
    let batches = writer.join().expect("writer");
    for reader in readers {
        let (port, reads, torn) = reader.join().expect("reader");
        assert!(reads > 100, "port {port}: only {reads} reads");
        assert!(
            torn.is_empty(),
            "port {port}: MGET saw part of an MSET ({batches} batches, {reads} reads): {torn:?}"
        );
    }
}

/// A new user's finding: `SET key value NX` on a key whose only write was
/// not yet committed at the node's write concern answered nil at once,
/// from state a failover could roll back (a lock reported held that, after
/// the failover, nobody holds), where `/v1/txn` answers
/// `condition_unconfirmed`. Every answer a compare-and-set gives without
/// writing now waits for the state it decided on to be committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_nx_refuses_only_on_committed_state() {
    let leader_args = [
        "--resp-listen",
        "127.0.0.1:0",
        "--default-w",
        "2",
        "--default-timeout",
        "2s",
    ];
    let cluster = Cluster::start(1, &leader_args, RESP_ARGS).await;
    let mut l = connect(resp_port(&cluster.leader).await, false);
    ok::<String>(&mut l, &["SET", "held", "1"]);
    // Committed: the refusal is immediate.
    assert_eq!(
        ok::<Option<String>>(&mut l, &["SET", "held", "2", "NX"]),
        None
    );

    signal(&cluster.followers[0], libc::SIGSTOP);
    // The lock's write lands on the leader only, and so does a word.
    let e = err(&mut l, &["SET", "lock", "a", "NX"]);
    assert!(e.contains("write_concern_timeout"), "{e}");
    let e = err(&mut l, &["SET", "word", "abc"]);
    assert!(e.contains("write_concern_timeout"), "{e}");
    // Every answer that would rest on it waits, then reveals nothing.
    for (args, what) in [
        (
            &["SET", "lock", "b", "NX"][..],
            "SET NX on the uncommitted key",
        ),
        (&["SET", "lock", "b", "NX", "GET"], "SET NX GET on it"),
        (&["SET", "absent", "b", "XX"], "SET XX on another key"),
        (&["DEL", "absent"], "DEL of a missing key"),
        (&["INCR", "word"], "INCR refused on the uncommitted word"),
    ] {
        let e = err(&mut l, args);
        assert!(e.contains("condition_unconfirmed"), "{what}: {e}");
    }
    signal(&cluster.followers[0], libc::SIGCONT);
    // Once the follower holds it, the refusal comes from committed state.
    wait_until(
        "SET NX refused from committed state",
        Duration::from_secs(20),
        async || {
            matches!(
                cmd::<Option<String>>(&mut l, &["SET", "lock", "b", "NX"]),
                Ok(None)
            )
        },
    )
    .await;
    assert_eq!(ok::<String>(&mut l, &["GET", "lock"]), "a");
    assert_eq!(ok::<i64>(&mut l, &["DEL", "absent"]), 0);
    let e = err(&mut l, &["INCR", "word"]);
    assert!(e.contains("not an integer"), "{e}");
}
