//! The rough edges a new user meets first, each end to end with real
//! processes: the command line's read-your-writes between invocations,
//! admin commands through the router, the router's health checks and
//! rotation log, the JSON errors of odd keys, and what a node's log says
//! at start.
//!
//! Each test also shows it could fail: the read-your-writes test reads
//! stale without the session file, the switchover test checks the leader
//! really moved.

mod common;
mod router_common;

use std::time::Duration;

use common::{cli_env, wait_until, Cluster, Node};
use router_common::Router;
use serde_json::Value;

/// Replication delay of the follower in the read-your-writes test: long
/// enough that the follower has certainly not applied a write when the
/// next command runs.
const SLOW_FOLLOWER: &str = "6s";

fn urls(c: &Cluster) -> Vec<String> {
    std::iter::once(c.leader.url())
        .chain(c.followers.iter().map(Node::url))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_then_get_through_the_router_reads_the_write() {
    let c = Cluster::start(1, &[], &["--replication-delay", SLOW_FOLLOWER]).await;
    // --max-lag above the follower's delay, so reads keep going to it.
    let router = Router::start(
        &urls(&c),
        &["--health-interval", "200ms", "--max-lag", "60s"],
    )
    .await;
    let r = router.url();
    let state = tempfile::tempdir().expect("state dir");
    let state_dir = state.path().to_string_lossy().into_owned();
    let env = [("XDG_STATE_HOME", state_dir.as_str())];

    let (code, out, err) = cli_env(&["put", "greeting", "hello", "--url", &r], &env);
    assert_eq!(code, 0, "put: {out} {err}");
    // The next invocation reads its own write, though a follower that has
    // not applied it yet is the one the router picks.
    let (code, out, err) = cli_env(&["get", "greeting", "--url", &r], &env);
    assert_eq!((code, out.as_str()), (0, "hello"), "get: {err}");
    assert!(err.is_empty(), "{err}");
    // Without the session file the same read is stale: the test can fail.
    let (code, _, err) = cli_env(&["get", "greeting", "--url", &r, "--no-session"], &env);
    assert_eq!(code, 1, "a follower {SLOW_FOLLOWER} behind answers: {err}");
    assert!(err.contains("key not found"), "{err}");
    let (code, _, _) = cli_env(
        &["get", "greeting", "--url", &r],
        &[("XDG_STATE_HOME", &state_dir), ("REPLIDB_NO_SESSION", "1")],
    );
    assert_eq!(code, 1, "REPLIDB_NO_SESSION=1 disables it too");

    // The token is kept per URL in $XDG_STATE_HOME/replidb/sessions.json.
    let file = state.path().join("replidb").join("sessions.json");
    let doc: Value = serde_json::from_slice(&std::fs::read(&file).expect("session file"))
        .expect("session file is JSON");
    assert!(doc["clusters"][&r]["lsn"].as_u64() >= Some(1), "{doc}");

    // A state directory that cannot be written never fails a command.
    let blocker = state.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").expect("write");
    let blocked = blocker.to_string_lossy().into_owned();
    let (code, out, err) = cli_env(
        &["put", "other", "v", "--url", &r],
        &[("XDG_STATE_HOME", &blocked)],
    );
    assert_eq!(code, 0, "put with an unwritable state dir: {out} {err}");
    assert!(err.is_empty(), "{err}");

    // A saved token the cluster never reached (a cluster recreated under
    // the same URL) is dropped with a warning, and the read goes on.
    c.wait_converged(Duration::from_secs(30)).await;
    std::fs::write(
        &file,
        serde_json::json!({"clusters": {&r: {"lsn": 1_000_000}}}).to_string(),
    )
    .expect("write session file");
    let (code, out, err) = cli_env(&["get", "greeting", "--url", &r], &env);
    assert_eq!((code, out.as_str()), (0, "hello"), "{err}");
    assert!(err.contains("ahead of this cluster"), "{err}");
    let doc: Value = serde_json::from_slice(&std::fs::read(&file).expect("session file"))
        .expect("session file is JSON");
    assert!(
        doc["clusters"][&r]["lsn"].as_u64() < Some(1_000_000),
        "{doc}"
    );
}

/// Siblings from the command line: `get` names each version and the exact
/// command, with the key's context, that replaces them; `put --context`
/// then leaves one value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_resolves_siblings_with_the_context_get_prints() {
    let node = Node::start(
        "m1",
        &[
            "--topology",
            "multi-leader",
            "--conflict-policy",
            "cart:=siblings",
        ],
    )
    .await;
    let url = node.url();
    for v in ["v1", "v2"] {
        let (code, out, err) = common::cli(&["put", "cart:e", v, "--url", &url]);
        assert_eq!(code, 0, "{out} {err}");
    }
    let (code, _, err) = common::cli(&["get", "cart:e", "--url", &url]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("\"v1\" (from m1)") && err.contains("\"v2\" (from m1)"),
        "{err}"
    );
    let context = err
        .split("--context ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no context in {err}"))
        .to_string();
    let (code, out, err) = common::cli(&[
        "put",
        "cart:e",
        "merged",
        "--context",
        &context,
        "--url",
        &url,
    ]);
    assert_eq!(code, 0, "{out} {err}");
    let (code, out, err) = common::cli(&["get", "cart:e", "--url", &url]);
    assert_eq!((code, out.as_str()), (0, "merged"), "{err}");
}

/// `replidb scan` lists every key with the prefix, a page at a time: it
/// stopped at the server's default page of 1,000 without a word, and
/// could not go past 10,000 or on from a key. Pages here are cut by bytes
/// (`--scan-page-bytes`), so the listing crosses several of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_scan_pages_through_every_key() {
    let node = Node::start("s1", &["--scan-page-bytes", "1000"]).await;
    let url = node.url();
    let keys: Vec<String> = (0..25).map(|i| format!("p{i:03}")).collect();
    for k in &keys {
        let r = node
            .http()
            .put(node.at(&format!("/v1/kv/{k}")))
            .body("x".repeat(100))
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), 200);
    }
    let listed = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["scan"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--url", &url, "--no-session"]);
        let (code, out, err) = common::cli(&all);
        assert_eq!(code, 0, "{out} {err}");
        out.lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(listed(&["p"]), keys);
    assert_eq!(listed(&["p", "--limit", "12"]), keys[..12]);
    assert_eq!(
        listed(&["p", "--start-after", "p011", "--limit", "3"]),
        keys[12..15]
    );
    assert_eq!(
        listed(&["p", "--start-after", "p024"]),
        Vec::<String>::new()
    );
}

/// A command whose reader goes away (`replidb status | head -1`) fails
/// with exit 1 and a one-line error, not a panic and exit 101; and a value
/// that looks like an option (`-5`) is a value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_is_an_error_not_a_panic() {
    let node = Node::start("n1", &[]).await;
    let (code, out, err) = common::cli(&["put", "n", "-5", "--url", &node.url()]);
    assert_eq!(code, 0, "{out} {err}");
    let (code, out, err) = common::cli(&["get", "n", "--url", &node.url()]);
    assert_eq!((code, out.as_str()), (0, "-5"), "{err}");

    let url = node.url();
    for args in [
        vec!["status", "--url", &url],
        vec!["simulate", "--seed", "1"],
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = std::process::Command::new(common::BIN)
            .args(&args)
            .env_remove("REPLIDB_URL")
            .env("REPLIDB_NO_SESSION", "1")
            .stdin(std::process::Stdio::null())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run replidb");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains("writing to stdout"), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_switchover_goes_through_the_router_to_the_leader() {
    let c = Cluster::start(1, &[], &[]).await;
    let router = Router::start(&urls(&c), &["--health-interval", "200ms"]).await;
    let r = router.url();
    let (code, out, err) = common::cli(&["admin", "switchover", "--to", "n2", "--url", &r]);
    assert_eq!(code, 0, "switchover through the router: {out} {err}");
    let answer: Value = serde_json::from_str(&out).expect("JSON answer");
    assert_eq!(answer["switched_to"], "n2", "{answer}");
    assert_eq!(c.followers[0].status().await["role"], "leader");
    wait_until(
        "the router follows the new leader",
        Duration::from_secs(10),
        async || router.status().await["leader"]["id"] == "n2",
    )
    .await;
    // Admin calls that address one node are refused with a pointer.
    let (code, _, err) = common::cli(&["admin", "promote", "--url", &r]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/admin/switchover"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_health_role_and_rotation_log() {
    let mut c = Cluster::start(1, &[], &[]).await;
    let router = Router::start(
        &urls(&c),
        &["--health-interval", "200ms", "--failure-threshold", "2"],
    )
    .await;
    let http = common::http();
    let health = async |q: &str| {
        http.get(router.at(&format!("/health{q}")))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    wait_until(
        "a follower in rotation",
        Duration::from_secs(10),
        async || health("?role=follower").await == 200,
    )
    .await;
    assert_eq!(health("?role=leader").await, 200);
    assert_eq!(health("?role=primary").await, 400);
    assert_eq!(health("?rol=leader").await, 400);

    c.followers[0].kill9();
    wait_until("role=follower fails", Duration::from_secs(10), async || {
        health("?role=follower").await == 503
    })
    .await;
    assert_eq!(
        health("?role=leader").await,
        200,
        "the leader is still there"
    );
    wait_until(
        "the router logs n2 leaving",
        Duration::from_secs(10),
        async || {
            router.log().lines().any(|l| {
                l.contains("left the read rotation")
                    && l.contains("node=n2")
                    && l.contains("failed health checks")
            })
        },
    )
    .await;

    c.followers[0].restart().await;
    wait_until(
        "role=follower passes again",
        Duration::from_secs(20),
        async || health("?role=follower").await == 200,
    )
    .await;
    wait_until(
        "the router logs n2 rejoining",
        Duration::from_secs(10),
        async || {
            router
                .log()
                .lines()
                .filter(|l| l.contains("joined the read rotation") && l.contains("node=n2"))
                .count()
                >= 2
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_keys_get_the_contract_json_errors() {
    let c = Cluster::start(1, &[], &[]).await;
    let router = Router::start(&urls(&c), &["--health-interval", "200ms"]).await;
    let http = common::http();
    for base in [c.leader.url(), router.url()] {
        for (method, path) in [
            (reqwest::Method::PUT, "/v1/kv/"),
            (reqwest::Method::GET, "/v1/kv/"),
            (reqwest::Method::DELETE, "/v1/kv/"),
            (reqwest::Method::PUT, "/v1/kv/%FF%FE"),
            (reqwest::Method::GET, "/v1/kv/a%80b"),
            (reqwest::Method::GET, "/read?key="),
        ] {
            let resp = http
                .request(method.clone(), format!("{base}{path}"))
                .body("v")
                .send()
                .await
                .expect("answer");
            let what = format!("{method} {base}{path}");
            let (status, code, _) = json_error(resp, &what).await;
            assert_eq!((status, code.as_str()), (400, "invalid_key"), "{what}");
        }
        // `.` and `..` as keys: URL clients drop such segments (reqwest
        // here would send `/v1/kv/`), so they are sent as raw bytes. The
        // node stored a PUT to "..", the router forwarded it through a
        // client that made it `/v1/` (404), and the client library's
        // `get("..")` scanned `/v1/kv`. Now neither creates such a key
        // through a path; a node still reads and deletes one stored before
        // (or over the Redis protocol), and the router, whose forwarding
        // would lose the segment, refuses a dot segment anywhere.
        let node = base == c.leader.url();
        for (method, path, on_node) in [
            ("PUT", "/v1/kv/%2e%2e", 400),
            ("POST", "/v1/counter/.", 400),
            ("GET", "/v1/kv/.", 404),
            ("GET", "/v1/counter/%2E", 200),
            ("DELETE", "/v1/kv/%2E%2E", 200),
            ("PUT", "/v1/kv/a/../b", 200),
        ] {
            let body = if method == "POST" {
                r#"{"delta":1}"#
            } else {
                "v"
            };
            let (status, body) = raw_request(&base, method, path, body);
            let what = format!("{method} {base}{path} (raw)");
            let code = serde_json::from_str::<serde_json::Value>(&body)
                .map(|b| b["error"]["code"].clone())
                .unwrap_or_default();
            match (node, on_node) {
                (true, 400) | (false, _) => assert_eq!(
                    (status, code.as_str()),
                    (400, Some("invalid_key")),
                    "{what}: {body}"
                ),
                (true, expected) => assert_eq!(status, expected, "{what}: {body}"),
            }
        }
        // A path no endpoint has is the same 404 `no_route` from both.
        let resp = http
            .get(format!("{base}/v1/nope"))
            .send()
            .await
            .expect("answer");
        let what = format!("GET {base}/v1/nope");
        let (status, code, _) = json_error(resp, &what).await;
        assert_eq!((status, code.as_str()), (404, "no_route"), "{what}");
    }
    // Found by trying it as a new user: the command line took any 404 for
    // an absent key, so a --url that reaches no endpoint said "key not
    // found"; and an empty key, refused before anything is sent, exited 1
    // where bad usage is 2.
    let (code, _, err) = common::cli(&["put", "p", "v", "--url", &c.leader.url()]);
    assert_eq!(code, 0, "{err}");
    let off_route = format!("{}/not-replidb", c.leader.url());
    let (code, _, err) = common::cli(&["get", "p", "--url", &off_route]);
    assert_ne!(code, 0, "{err}");
    assert!(!err.contains("key not found"), "{err}");
    for args in [&["put", "", "v"][..], &["get", ""][..], &["del", ""][..]] {
        let mut args = args.to_vec();
        let url = c.leader.url();
        args.extend(["--url", &url]);
        let (code, _, err) = common::cli(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("empty"), "{args:?}: {err}");
    }
    // Bad usage the node catches (a 400) exits 2 as well.
    let (code, _, err) = common::cli(&[
        "get",
        "p",
        "--consistency",
        "eventual",
        "--max-staleness-ms",
        "10",
        "--url",
        &c.leader.url(),
    ]);
    assert_eq!(code, 2, "{err}");
    // Found by trying it as a new user: one counter, set or map anywhere in
    // the range made `scan` fail to decode the whole answer.
    let r = http
        .post(format!("{}/v1/counter/pcount", c.leader.url()))
        .json(&serde_json::json!({"delta": 3}))
        .send()
        .await
        .expect("counter");
    assert_eq!(r.status(), 200);
    let (code, out, err) = common::cli(&["scan", "p", "--url", &c.leader.url()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("p\tv"), "{out}");
    assert!(
        out.contains("pcount\t{"),
        "a counter as its JSON rendering: {out}"
    );
    // A method a path lacks: 405 with the JSON body and the Allow header.
    let resp = http
        .patch(format!("{}/v1/kv/a", c.leader.url()))
        .body("v")
        .send()
        .await
        .expect("answer");
    let (status, code, allow) = json_error(resp, "PATCH /v1/kv/a").await;
    assert_eq!((status, code.as_str()), (405, "method_not_allowed"));
    let allow = allow.expect("an Allow header");
    assert!(allow.to_str().unwrap_or("").contains("PUT"), "{allow:?}");
}

/// An error answer's status, its JSON `error.code` (the test fails if the
/// body is not the contract's JSON error) and its `Allow` header.
async fn json_error(
    resp: reqwest::Response,
    what: &str,
) -> (u16, String, Option<reqwest::header::HeaderValue>) {
    let status = resp.status().as_u16();
    let allow = resp.headers().get("allow").cloned();
    let body = resp.text().await.expect("body");
    let v: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
    let code = v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error code: {body}"))
        .to_string();
    (status, code, allow)
}

/// A node's log starts with the command line and the full effective
/// configuration, and its JSON fields have one type per kind: positions,
/// epochs and sizes are numbers, never a Rust debug dump.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_log_records_its_configuration_with_typed_fields() {
    let c = Cluster::start(1, &["--log-format", "json"], &["--log-format", "json"]).await;
    c.leader.put("k", "v").await;
    c.wait_converged(Duration::from_secs(10)).await;
    // The follower's applied batches (debug) carry LSNs too.
    for node in [&c.leader, &c.followers[0]] {
        let log = std::fs::read_to_string(node.log_path()).expect("log");
        let lines: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let find = |msg: &str| {
            lines
                .iter()
                .find(|l| l["message"] == msg)
                .unwrap_or_else(|| panic!("{}: no {msg:?} line in {log}", node.id))
        };
        let start = find("starting node");
        let cmd = start["command"].as_str().expect("command");
        assert!(cmd.contains(" server ") && cmd.contains("--id"), "{cmd}");
        let cfg = find("configuration");
        assert_eq!(cfg["fsync"], "always");
        assert_eq!(cfg["max_value_bytes"], 1_048_576);
        assert_eq!(cfg["default_timeout_ms"], 5000);
        assert!(find("configuration (replication)")["heartbeat_interval_ms"].is_u64());
        let wal = find("WAL opened");
        assert!(wal["last_lsn"].is_u64(), "{wal}");
        for line in &lines {
            let text = line.to_string();
            assert!(
                !text.contains("Lsn(") && !text.contains("Epoch("),
                "debug dump: {text}"
            );
            for (k, v) in line.as_object().expect("object") {
                let positional = k.ends_with("lsn")
                    || k.ends_with("_lsn")
                    || k == "epoch"
                    || k.ends_with("port")
                    || k == "wal_first"
                    || k == "wal_last"
                    || (line["message"] == "applied batch" && (k == "from" || k == "to"));
                assert!(!positional || v.is_u64(), "{k} is not a number in {text}");
            }
        }
    }
}

/// `RUST_LOG=debug replidb simulate` stamps each log line with the
/// simulated time (the story's clock) and the node, coordinator lines
/// included, so a failing seed's log can be read beside its story.
#[test]
fn simulate_logs_carry_simulated_time_and_the_node() {
    let (code, _, err) = cli_env(
        &[
            "simulate", "--faults", "failover", "--writes", "3", "--seed", "3",
        ],
        &[("RUST_LOG", "info")],
    );
    assert_eq!(code, 0, "{err}");
    let coordinator: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("target=replidb_coordinator"))
        .collect();
    assert!(!coordinator.is_empty(), "no coordinator lines: {err}");
    for line in &coordinator {
        assert!(line.starts_with("sim_ms="), "not on simulated time: {line}");
        assert!(line.contains(" node=n"), "no node: {line}");
    }
    assert!(
        !err.lines().any(|l| l.starts_with("ts=")),
        "a wall-clock line: {err}"
    );
}

/// Counts in the simulator's output agree with their number.
#[test]
fn simulate_output_pluralises_counts() {
    let (code, out, err) = common::cli(&[
        "simulate",
        "--followers",
        "1",
        "--writes",
        "1",
        "--faults",
        "failover",
        "--seed",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    for word in [
        "elections",
        "leaders",
        "records",
        "rewinds",
        "writes",
        "times",
        "digests",
        "epochs",
        "followers",
        "nodes",
        "runs",
        "seeds",
    ] {
        for line in out.lines() {
            let bad = line
                .match_indices(&format!(" 1 {word}"))
                .any(|(i, _)| !line[..i].ends_with(|c: char| c.is_ascii_digit() || c == '.'));
            assert!(!bad, "\"1 {word}\" in: {line}");
        }
    }
    assert!(out.contains("1 write"), "{out}");
}

/// Range mistakes say what is wrong, not that a number is expected.
#[test]
fn reversed_ranges_are_named() {
    let (code, _, err) = common::cli(&["simulate", "--lag", "2s..1s"]);
    assert_eq!(code, 2);
    assert!(err.contains("reversed") && err.contains("1s..2s"), "{err}");
    let (code, _, err) = common::cli(&["simulate", "--seeds", "5..1"]);
    assert_eq!(code, 2);
    assert!(err.contains("reversed") && err.contains("1..5"), "{err}");
    assert!(!err.contains("1 < 5"), "{err}");
}

/// One HTTP/1.1 request written as raw bytes (so no URL parser touches the
/// path); the status and the body.
fn raw_request(base: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}
