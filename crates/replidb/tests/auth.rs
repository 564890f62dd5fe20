//! Tokens and roles (`--auth-file`, `--peer-token-file`) end to end: real
//! `replidb server` processes on 127.0.0.1.
//!
//! The story: a cluster whose nodes require tokens. Nobody without one
//! reads, writes, administers or replicates; a token does exactly what its
//! roles allow; a follower with the wrong token never joins, so it can
//! never acknowledge a write; `SIGHUP` reloads the file; the Redis listener
//! asks for `AUTH` with the same tokens. No secret ever reaches a log.

mod common;
mod router_common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{http, wait_until, Node};
use reqwest::Method;
use serde_json::Value;
use sha2::{Digest, Sha256};

const APP: &str = "app-secret-5f2c";
const READER: &str = "reader-secret-91ab";
const OPS: &str = "ops-secret-77de";
const WRITER: &str = "writer-secret-3e9a";
const CLUSTER: &str = "cluster-secret-0c1d";
const WRONG: &str = "not-a-token-at-all";

fn sha(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn token(name: &str, secret: &str, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nroles = [{}]\n\n",
        sha(secret),
        roles.join(", ")
    )
}

/// The token file every node of these tests reads, and the peer token
/// files, in a directory that lives as long as the test.
struct Secrets {
    dir: tempfile::TempDir,
}

impl Secrets {
    fn new() -> Secrets {
        let dir = tempfile::tempdir().expect("temp dir");
        let auth = token("app", APP, &["read", "write"])
            + &token("reader", READER, &["read"])
            + &token("ops", OPS, &["admin"])
            + &token("writer", WRITER, &["write"])
            + &token(
                "cluster",
                CLUSTER,
                &["read", "write", "admin", "replication"],
            );
        std::fs::write(dir.path().join("tokens.toml"), auth).expect("write tokens");
        std::fs::write(dir.path().join("peer.secret"), format!("{CLUSTER}\n")).expect("peer");
        std::fs::write(dir.path().join("wrong.secret"), format!("{WRONG}\n")).expect("wrong");
        std::fs::write(dir.path().join("reader.secret"), format!("{READER}\n")).expect("reader");
        Secrets { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn auth_file(&self) -> PathBuf {
        self.dir.path().join("tokens.toml")
    }
}

/// A node started with `auth` as its token file and `peer` as the secret
/// it presents to others (`--follow LEADER` when `follow` is given), plus
/// `extra` flags; the test talks to it with the cluster token.
async fn member(id: &str, follow: Option<&str>, auth: &str, peer: &str, extra: &[&str]) -> Node {
    let mut args = vec!["--auth-file", auth, "--peer-token-file", peer];
    if let Some(leader) = follow {
        args.extend(["--follow", leader]);
    }
    args.extend(extra);
    let mut node = Node::start(id, &args).await;
    node.set_bearer(CLUSTER);
    node
}

/// A node with the token file and a Redis listener; its Redis port.
async fn redis_node(secrets: &Secrets) -> (Node, u16) {
    let auth = secrets.path("tokens.toml");
    let node = Node::start(
        "n1",
        &["--auth-file", &auth, "--resp-listen", "127.0.0.1:0"],
    )
    .await;
    let port = common::resp_port(&node).await;
    (node, port)
}

/// Send `node` SIGHUP: it reloads its token file.
fn reload_tokens(node: &Node) {
    let pid = node.pid().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
}

async fn call(url: &str, method: Method, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut req = http().request(method.clone(), format!("{url}{path}"));
    if matches!(method, Method::PUT | Method::POST | Method::PATCH) {
        req = req.body(if path.starts_with("/v1/kv/") {
            "v".to_string()
        } else {
            "{}".to_string()
        });
        if !path.starts_with("/v1/kv/") {
            req = req.header("content-type", "application/json");
        }
    }
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

fn assert_no_secret_in(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    for secret in [APP, READER, OPS, CLUSTER, WRONG, WRITER] {
        assert!(
            !text.contains(secret),
            "a secret appears in {}",
            log.display()
        );
    }
}

/// Every route of the node, as (method, path).
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/kv/a"),
    ("PUT", "/v1/kv/a"),
    ("DELETE", "/v1/kv/a"),
    ("GET", "/v1/kv?prefix=a"),
    ("GET", "/v1/counter/c"),
    ("POST", "/v1/counter/c"),
    ("DELETE", "/v1/counter/c"),
    ("GET", "/v1/set/s"),
    ("POST", "/v1/set/s"),
    ("DELETE", "/v1/set/s"),
    ("GET", "/v1/map/m"),
    ("PATCH", "/v1/map/m"),
    ("DELETE", "/v1/map/m"),
    ("GET", "/v1/conflicts"),
    ("POST", "/v1/txn"),
    ("POST", "/write"),
    ("GET", "/read?key=a"),
    ("GET", "/follower-read?key=a&replica=1"),
    ("GET", "/read-with-repair?key=a"),
    ("POST", "/write-with-quorum"),
    ("GET", "/status"),
    ("GET", "/metrics"),
    ("POST", "/admin/promote"),
    ("POST", "/admin/forget"),
    ("POST", "/admin/follow"),
    ("POST", "/admin/fence"),
    ("POST", "/admin/switchover"),
    ("POST", "/internal/catch-up"),
    ("GET", "/internal/digest"),
    ("GET", "/internal/replica?key=a"),
    ("POST", "/internal/replica?key=a"),
    ("POST", "/internal/hint"),
    ("GET", "/internal/hints?key=a"),
    ("POST", "/internal/collect?key=a&hash=1"),
    ("GET", "/internal/ae/leaves"),
    ("GET", "/internal/ae/bucket"),
    ("GET", "/v1/replication"),
    // The dashboard's data (its static page is open: it holds none).
    ("GET", "/dashboard/state"),
    ("GET", "/dashboard/events"),
    ("GET", "/no/such/path"),
];

#[tokio::test]
async fn every_endpoint_but_health_refuses_without_a_token_and_roles_decide() {
    let secrets = Secrets::new();
    let auth = secrets.path("tokens.toml");
    let peer = secrets.path("peer.secret");
    let mut leader = Node::start("n1", &["--auth-file", &auth, "--peer-token-file", &peer]).await;
    let url = leader.url();

    // No token, a wrong token, a malformed header: 401 everywhere but /health.
    for (m, path) in ROUTES {
        let m: Method = m.parse().unwrap();
        let (s, body) = call(&url, m.clone(), path, None).await;
        assert_eq!(s, 401, "{m} {path} without a token: {body}");
        assert_eq!(body["error"]["code"], "unauthenticated", "{m} {path}");
        let (s, _) = call(&url, m.clone(), path, Some(WRONG)).await;
        assert_eq!(s, 401, "{m} {path} with an unknown token");
    }
    let r = http()
        .get(format!("{url}/v1/kv/a"))
        .header("authorization", format!("Basic {APP}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    // A refused request learns nothing about the node's position.
    assert!(r.headers().get("x-replidb-lsn").is_none());
    // A header that is there but not visible ASCII is malformed, not
    // missing: the answer says what is wrong with it.
    let r = http()
        .put(format!("{url}/v1/kv/a"))
        .header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer s\xe9cret").unwrap(),
        )
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("must be Bearer"), "{body}");
    let (s, _) = call(&url, Method::GET, "/health", None).await;
    assert_eq!(s, 200, "/health stays open for load balancers");
    let (s, body) = call(&url, Method::GET, "/openapi.json", None).await;
    assert_eq!(s, 200, "/openapi.json describes and holds no data: open");
    assert!(body["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.")));

    // Roles: reader reads, cannot write; app writes and reads, cannot
    // administer or replicate; ops administers, cannot read.
    let (s, body) = call(&url, Method::PUT, "/v1/kv/a", Some(READER)).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("reader"));
    let (s, _) = call(&url, Method::PUT, "/v1/kv/a", Some(APP)).await;
    assert_eq!(s, 200);
    let (s, _) = call(&url, Method::GET, "/v1/kv/a?format=json", Some(READER)).await;
    assert_eq!(s, 200);
    let (s, _) = call(&url, Method::GET, "/metrics", Some(READER)).await;
    assert_eq!(s, 200);
    let (s, _) = call(&url, Method::POST, "/admin/promote", Some(APP)).await;
    assert_eq!(s, 403);
    let (s, _) = call(&url, Method::GET, "/internal/digest", Some(APP)).await;
    assert_eq!(s, 403);
    let (s, _) = call(&url, Method::GET, "/v1/kv/a", Some(OPS)).await;
    assert_eq!(s, 403);
    let (s, _) = call(&url, Method::GET, "/internal/digest", Some(CLUSTER)).await;
    assert_eq!(s, 200);
    // Found by trying it as a new user: a write-only token read a set back
    // through a write that changed nothing; a write's answer shows the
    // key's state only to a token that may read it.
    let set_write = |bearer: &'static str, body: Value| {
        http()
            .post(format!("{url}/v1/set/secret"))
            .bearer_auth(bearer)
            .json(&body)
            .send()
    };
    let r = set_write(APP, serde_json::json!({"add": ["alice-ssn"]}))
        .await
        .expect("set add");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["members"], serde_json::json!(["alice-ssn"]), "{body}");
    let r = set_write(WRITER, serde_json::json!({"add": ["x"], "remove": ["x"]}))
        .await
        .expect("set add and remove");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert!(
        body.get("members").is_none(),
        "a write-only token read the set: {body}"
    );
    let (s, _) = call(&url, Method::GET, "/v1/set/secret", Some(WRITER)).await;
    assert_eq!(s, 403);

    // --metrics-open opens /metrics and nothing else.
    leader.set_args(&[
        "--auth-file",
        &auth,
        "--peer-token-file",
        &peer,
        "--metrics-open",
    ]);
    leader.restart().await;
    let (s, _) = call(&url, Method::GET, "/metrics", None).await;
    assert_eq!(s, 200);
    let (s, _) = call(&url, Method::GET, "/status", None).await;
    assert_eq!(s, 401);

    assert_no_secret_in(&leader.log_path());
}

#[tokio::test]
async fn a_follower_with_a_wrong_token_never_joins_and_cannot_acknowledge() {
    let secrets = Secrets::new();
    let auth = secrets.path("tokens.toml");
    let peer = secrets.path("peer.secret");
    let wrong = secrets.path("wrong.secret");
    let reader = secrets.path("reader.secret");
    // Four voting members, so that w=3 is a valid concern to ask for.
    let leader = member("n1", None, &auth, &peer, &["--cluster-size", "4"]).await;
    let follow = leader.url();
    let good = member("n2", Some(&follow), &auth, &peer, &[]).await;
    let bad = member("n3", Some(&follow), &auth, &wrong, &[]).await;
    // A token that exists but lacks the replication role fares no better.
    let weak = member("n4", Some(&follow), &auth, &reader, &[]).await;

    wait_until(
        "n2 streams from the leader",
        Duration::from_secs(20),
        async || good.status().await["connected"] == Value::Bool(true),
    )
    .await;
    for n in [&bad, &weak] {
        wait_until(
            &format!("{} reports why it cannot join", n.id),
            Duration::from_secs(20),
            async || {
                let s = n.status().await;
                s["last_error"].as_str().is_some_and(|e| e.contains("40"))
            },
        )
        .await;
        assert_eq!(n.status().await["connected"], Value::Bool(false));
    }
    let followers: Vec<String> = leader.status().await["followers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(followers, vec!["n2".to_string()], "only n2 joined");

    // w=2 is met by n2; w=3 cannot be, because n3 and n4 never joined.
    let r = leader.put_q("k", "w=2", "v").await;
    assert_eq!(r["committed"], Value::Bool(true), "{r}");
    let r = http()
        .put(leader.at("/v1/kv/k2?w=3&timeout_ms=500"))
        .bearer_auth(APP)
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        504,
        "no fake follower can make up the third ack"
    );

    // A raw client trying to open the stream without a token is refused
    // before the upgrade: no frame is ever exchanged.
    let addr = follow.trim_start_matches("http://").to_string();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET /v1/replication HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: replidb-repl/1\r\n\r\n"
        )
        .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).to_string()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    for n in [&leader, &good, &bad, &weak] {
        assert_no_secret_in(&n.log_path());
    }
    drop(secrets);
}

/// A follower whose token loses the `replication` role in a reload of the
/// leader's token file is cut off: its open stream is closed, so it no
/// longer counts towards a write concern (it was let in once, and a
/// stream lives for days).
#[tokio::test]
async fn a_revoked_follower_stops_acknowledging() {
    let secrets = Secrets::new();
    let leader_auth = secrets.path("leader-tokens.toml");
    std::fs::copy(secrets.auth_file(), &leader_auth).unwrap();
    let auth = secrets.path("tokens.toml");
    let peer = secrets.path("peer.secret");
    let leader = member("n1", None, &leader_auth, &peer, &["--cluster-size", "2"]).await;
    let follow = leader.url();
    let follower = member("n2", Some(&follow), &auth, &peer, &[]).await;
    wait_until(
        "n2 streams from the leader",
        Duration::from_secs(20),
        async || follower.status().await["connected"] == Value::Bool(true),
    )
    .await;
    let r = leader.put_q("k", "w=all", "v").await;
    assert_eq!(r["committed"], Value::Bool(true), "{r}");

    // The cluster token keeps every role but replication, on the leader.
    let text = token("app", APP, &["read", "write"])
        + &token("cluster", CLUSTER, &["read", "write", "admin"]);
    std::fs::write(&leader_auth, text).unwrap();
    reload_tokens(&leader);
    wait_until(
        "w=all can no longer be met",
        Duration::from_secs(15),
        async || {
            let r = http()
                .put(leader.at("/v1/kv/k2?w=all&timeout_ms=300"))
                .bearer_auth(APP)
                .body("v")
                .send()
                .await
                .unwrap();
            r.status() == 504
        },
    )
    .await;
    assert_eq!(follower.status().await["connected"], Value::Bool(false));
}

#[tokio::test]
async fn sighup_reloads_the_token_file() {
    let secrets = Secrets::new();
    let auth = secrets.path("tokens.toml");
    let node = Node::start("n1", &["--auth-file", &auth]).await;
    let url = node.url();
    let (s, _) = call(&url, Method::GET, "/v1/kv/a", Some("fresh-secret-123")).await;
    assert_eq!(s, 401);

    let mut text = std::fs::read_to_string(secrets.auth_file()).unwrap();
    text.push_str(&token("fresh", "fresh-secret-123", &["read"]));
    std::fs::write(secrets.auth_file(), &text).unwrap();
    reload_tokens(&node);
    wait_until("the new token works", Duration::from_secs(10), async || {
        call(&url, Method::GET, "/v1/kv/a", Some("fresh-secret-123"))
            .await
            .0
            == 404
    })
    .await;

    // A broken file is refused; the tokens in force stay.
    std::fs::write(secrets.auth_file(), "[[token]]\nname = 5\n").unwrap();
    reload_tokens(&node);
    wait_until(
        "the reload failure is logged",
        Duration::from_secs(10),
        async || {
            std::fs::read_to_string(node.log_path())
                .unwrap_or_default()
                .contains("auth file not reloaded")
        },
    )
    .await;
    let (s, _) = call(&url, Method::GET, "/v1/kv/a", Some("fresh-secret-123")).await;
    assert_eq!(s, 404, "still authenticated by the last good file");
    assert_no_secret_in(&node.log_path());
}

#[tokio::test]
async fn the_redis_listener_asks_for_auth_with_the_same_tokens() {
    let secrets = Secrets::new();
    let (node, port) = redis_node(&secrets).await;

    tokio::task::spawn_blocking(move || {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut con = client.get_connection().unwrap();
        let err = redis::cmd("GET")
            .arg("k")
            .query::<Option<String>>(&mut con)
            .unwrap_err();
        assert_eq!(err.code(), Some("NOAUTH"), "{err}");
        let err = redis::cmd("AUTH")
            .arg(WRONG)
            .query::<String>(&mut con)
            .unwrap_err();
        assert_eq!(err.code(), Some("WRONGPASS"), "{err}");
        // A reader may read and may not write.
        let ok: String = redis::cmd("AUTH").arg(READER).query(&mut con).unwrap();
        assert_eq!(ok, "OK");
        let v: Option<String> = redis::cmd("GET").arg("k").query(&mut con).unwrap();
        assert_eq!(v, None);
        let err = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query::<String>(&mut con)
            .unwrap_err();
        assert_eq!(err.code(), Some("NOPERM"), "{err}");
        // AUTH user password: the user is the token's name (or default).
        let err = redis::cmd("AUTH")
            .arg("reader")
            .arg(APP)
            .query::<String>(&mut con)
            .unwrap_err();
        assert_eq!(err.code(), Some("WRONGPASS"), "{err}");
        let ok: String = redis::cmd("AUTH")
            .arg("app")
            .arg(APP)
            .query(&mut con)
            .unwrap();
        assert_eq!(ok, "OK");
        let ok: String = redis::cmd("SET").arg("k").arg("v").query(&mut con).unwrap();
        assert_eq!(ok, "OK");

        // A client that authenticates in its URL (redis-cli -a, every
        // driver's password setting) just works.
        let client = redis::Client::open(format!("redis://:{APP}@127.0.0.1:{port}/")).unwrap();
        let mut con = client.get_connection().unwrap();
        let v: Option<String> = redis::cmd("GET").arg("k").query(&mut con).unwrap();
        assert_eq!(v.as_deref(), Some("v"));
    })
    .await
    .unwrap();
    assert_no_secret_in(&node.log_path());
}

/// A Redis-protocol connection can do no more than its token allows now:
/// a write-only token sees no value (`SET … GET` and `INCR` answer one, so
/// they need `read` too, as HTTP shows a writer no value) but may `WAIT`
/// on its writes; a token revoked by a reload stops working on the
/// connections already open; and a connection that never authenticates
/// is closed instead of holding a connection slot for ever.
#[tokio::test]
async fn a_redis_connection_holds_no_more_than_its_token_allows_now() {
    let secrets = Secrets::new();
    let (node, port) = redis_node(&secrets).await;
    let connect = move |secret: &str| {
        let client = redis::Client::open(format!("redis://:{secret}@127.0.0.1:{port}/")).unwrap();
        client.get_connection().unwrap()
    };

    let (writer, mut app) = tokio::task::spawn_blocking(move || {
        let mut writer = connect(WRITER);
        let ok: String = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query(&mut writer)
            .unwrap();
        assert_eq!(ok, "OK");
        for cmd in [
            redis::cmd("SET").arg("k").arg("w").arg("GET").clone(),
            redis::cmd("INCR").arg("c").clone(),
            redis::cmd("INCRBY").arg("c").arg(0).clone(),
        ] {
            let err = cmd.query::<redis::Value>(&mut writer).unwrap_err();
            assert_eq!(err.code(), Some("NOPERM"), "{err}");
        }
        let acked: i64 = redis::cmd("WAIT").arg(0).arg(0).query(&mut writer).unwrap();
        assert_eq!(acked, 0);
        let mut app = connect(APP);
        let v: Option<String> = redis::cmd("SET")
            .arg("k")
            .arg("x")
            .arg("GET")
            .query(&mut app)
            .unwrap();
        assert_eq!(v.as_deref(), Some("v"), "read and write may SET … GET");
        (writer, app)
    })
    .await
    .unwrap();
    drop(writer);

    // Revoke `app` (the file without it), reload, and wait until HTTP
    // refuses it: the open connection must be refused too.
    let text = token("reader", READER, &["read"]) + &token("writer", WRITER, &["write"]);
    std::fs::write(secrets.auth_file(), text).unwrap();
    reload_tokens(&node);
    let url = node.url();
    wait_until(
        "the revoked token is refused over HTTP",
        Duration::from_secs(10),
        async || call(&url, Method::GET, "/v1/kv/k", Some(APP)).await.0 == 401,
    )
    .await;
    tokio::task::spawn_blocking(move || {
        let err = redis::cmd("SET")
            .arg("k")
            .arg("y")
            .query::<String>(&mut app)
            .unwrap_err();
        assert_eq!(err.code(), Some("NOAUTH"), "{err}");
    })
    .await
    .unwrap();

    // A connection that sends nothing is closed once its time to
    // authenticate is up.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(
        Duration::from_millis(replidb_server::resp::RESP_AUTH_TIMEOUT_MS + 5_000),
        tokio::io::AsyncReadExt::read(&mut idle, &mut buf),
    )
    .await
    .expect("closed before the deadline");
    assert_eq!(read.unwrap_or(0), 0, "closed without an answer");
}

#[tokio::test]
async fn peers_of_both_causal_topologies_present_their_token() {
    let secrets = Secrets::new();
    let auth = secrets.path("tokens.toml");
    let peer = secrets.path("peer.secret");
    for topology in ["multi-leader", "leaderless"] {
        let mut nodes = common::start_peered(
            3,
            &[
                "--topology",
                topology,
                "--auth-file",
                &auth,
                "--peer-token-file",
                &peer,
            ],
        )
        .await;
        for n in &mut nodes {
            n.set_bearer(CLUSTER);
        }
        if topology == "multi-leader" {
            common::wait_peers_connected(&nodes).await;
        }
        // A write on one node reaches the others: multi-leader through the
        // peers' streams, leaderless through /internal/replica at w=all.
        let w = if topology == "leaderless" { "all" } else { "1" };
        let r = http()
            .put(nodes[0].at(&format!("/v1/kv/shared?w={w}")))
            .bearer_auth(APP)
            .body("v")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{topology}: {}", r.status());
        for n in &nodes[1..] {
            wait_until(
                &format!("{topology}: {} has the write", n.id),
                Duration::from_secs(10),
                async || {
                    let r = http()
                        .get(n.at("/v1/kv/shared"))
                        .bearer_auth(READER)
                        .send()
                        .await
                        .unwrap();
                    r.status() == 200
                },
            )
            .await;
        }
        for n in &nodes {
            assert_no_secret_in(&n.log_path());
        }
    }
}

#[tokio::test]
async fn the_cli_and_the_router_present_tokens() {
    let secrets = Secrets::new();
    let auth = secrets.path("tokens.toml");
    let peer = secrets.path("peer.secret");
    let mut leader = Node::start("n1", &["--auth-file", &auth, "--peer-token-file", &peer]).await;
    leader.set_bearer(CLUSTER);
    let url = leader.url();

    // The CLI: --token, or REPLIDB_TOKEN; without either, a clear refusal.
    let (code, _, err) = common::cli(&["put", "k", "v", "--url", &url, "--no-session"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unauthenticated"), "{err}");
    let (code, out, err) = common::cli(&[
        "put",
        "k",
        "v",
        "--url",
        &url,
        "--token",
        APP,
        "--no-session",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = common::cli_env(
        &["get", "k", "--url", &url, "--no-session"],
        &[("REPLIDB_TOKEN", READER)],
    );
    assert_eq!((code, out.trim()), (0, "v"), "{err}");
    let (code, _, err) = common::cli(&[
        "put",
        "k",
        "w",
        "--url",
        &url,
        "--token",
        READER,
        "--no-session",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("forbidden"), "{err}");

    // The router checks health with its own token (it must, to know the
    // leader) and passes each client's token through.
    let router =
        router_common::Router::start(std::slice::from_ref(&url), &["--token", READER]).await;
    let r = http()
        .put(format!("{}/v1/kv/via-router", router.url()))
        .bearer_auth(APP)
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http()
        .put(format!("{}/v1/kv/via-router", router.url()))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the router adds no credentials of its own");
    assert_no_secret_in(&leader.log_path());
}
