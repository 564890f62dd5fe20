//! In-process cluster tests: real nodes on loopback ports, one process.

use std::time::{Duration, Instant};

use replidb_server::{NodeConfig, Server};

struct Running {
    url: String,
    node: std::sync::Arc<replidb_server::Node>,
    _dir: tempfile::TempDir,
}

async fn start(id: &str, follow: Option<&str>, tweak: impl FnOnce(&mut NodeConfig)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::new(id, "127.0.0.1:0".parse().unwrap(), dir.path());
    cfg.follow = follow.map(str::to_string);
    cfg.backoff_base = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(200);
    tweak(&mut cfg);
    let server = Server::bind(cfg).await.unwrap();
    let url = format!("http://{}", server.local_addr());
    let node = server.node().clone();
    tokio::spawn(server.run(std::future::pending()));
    Running {
        url,
        node,
        _dir: dir,
    }
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_reaches_follower_and_majority_commits() {
    let leader = start("n1", None, |_| {}).await;
    let f1 = start("n2", Some(&leader.url), |_| {}).await;
    let http = {
        replidb_tls::install_default_provider();
        reqwest::Client::new()
    };
    wait_until("follower connects", Duration::from_secs(5), async || {
        leader.node.leader().unwrap().replicas().len() == 1
            && f1.node.follower().unwrap().status().connected
    })
    .await;
    let r = http
        .put(format!("{}/v1/kv/hello?w=majority", leader.url))
        .body("world")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["committed"], true);
    assert_eq!(body["acks"], 2);
    let lsn = body["lsn"].as_u64().unwrap();
    let r = http
        .get(format!("{}/v1/kv/hello?min_lsn={lsn}", f1.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-replidb-role"], "follower");
    assert_eq!(r.text().await.unwrap(), "world");
    // Writes to a follower are redirected.
    replidb_tls::install_default_provider();
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .put(format!("{}/v1/kv/x", f1.url))
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("{}/v1/kv/x", leader.url)
    );
}

/// A `--auth-file` in `dir` holding `(name, secret, roles)` tokens.
fn token_file(dir: &std::path::Path, tokens: &[(&str, &str, &[&str])]) -> std::path::PathBuf {
    use sha2::Digest as _;
    let mut text = String::new();
    for (name, secret, roles) in tokens {
        let roles: Vec<String> = roles.iter().map(|r| format!("{r:?}")).collect();
        text.push_str(&format!(
            "[[token]]\nname = {name:?}\nsha256 = \"{}\"\nroles = [{}]\n\n",
            hex::encode(sha2::Sha256::digest(secret.as_bytes())),
            roles.join(", ")
        ));
    }
    let path = dir.join("tokens.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// One answer, reduced to what a client sees: status, headers, body
/// (the request sent with `authorization` as its `Authorization` header).
async fn answer<S>(
    svc: &mut S,
    method: &str,
    uri: &str,
    body: &'static str,
    authorization: Option<&str>,
) -> (u16, Vec<(String, String)>, String)
where
    S: tower_service::Service<
        axum::http::Request<axum::body::Body>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
    >,
{
    let mut req = axum::http::Request::builder().method(method).uri(uri);
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    let req = req.body(axum::body::Body::from(body)).unwrap();
    let Ok(resp) = svc.call(req).await;
    let status = resp.status().as_u16();
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    headers.sort();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// The listener's service answers single-key requests without the router
/// (`api::Api`); every answer must be the router's, byte for byte, for
/// reads and for writes it refuses, and in kind for writes it makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_value_fast_path_answers_as_the_router_does() {
    let node = start("n1", None, |_| {}).await;
    let mut router = replidb_server::api::router(node.node.clone());
    let mut fast = replidb_server::api::service(node.node.clone());
    for (key, value) in [
        ("k", "v"),
        ("a/b", "slash"),
        ("caf\u{e9}", "accent"),
        ("sp ace", "x"),
    ] {
        let uri = format!(
            "/v1/kv/{}",
            percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC)
        );
        let (status, _, _) = answer(&mut router, "PUT", &uri, value, None).await;
        assert_eq!(status, 200, "seeding {key}");
    }
    // Reads, and writes refused before they reach the log: identical.
    let same = [
        ("GET", "/v1/kv/k", ""),
        ("GET", "/v1/kv/k?format=json", ""),
        ("GET", "/v1/kv/k?consistency=eventual", ""),
        ("GET", "/v1/kv/k?consistency=strong", ""),
        ("GET", "/v1/kv/k?min_lsn=1", ""),
        ("GET", "/v1/kv/a/b", ""),
        ("GET", "/v1/kv/a%2Fb", ""),
        ("GET", "/v1/kv/caf%C3%A9", ""),
        ("GET", "/v1/kv/sp%20ace?format=json", ""),
        ("GET", "/v1/kv/absent", ""),
        ("GET", "/v1/kv//k", ""),
        ("GET", "/v1/kv/%FF", ""),
        ("GET", "/v1/kv/k?nope=1", ""),
        ("GET", "/v1/kv/k?consistency=sometimes", ""),
        ("GET", "/v1/kv/", ""),
        ("HEAD", "/v1/kv/k", ""),
        ("POST", "/v1/kv/k", "v"),
        ("PUT", "/v1/kv/%FF", "v"),
        ("PUT", "/v1/kv/.", "v"),
        ("PUT", "/v1/kv/k?w=7", "v"),
        ("PUT", "/v1/kv/k?w=all&nope=1", "v"),
        ("DELETE", "/v1/kv/k?w=zero", ""),
        ("DELETE", "/v1/kv/%FF", ""),
    ];
    for (method, uri, body) in same {
        let by_router = answer(&mut router, method, uri, body, None).await;
        let by_fast = answer(&mut fast, method, uri, body, None).await;
        assert_eq!(by_fast, by_router, "{method} {uri}");
    }
    // On a follower: its own reads, the ones it relays, the writes it
    // redirects.
    let follower = start("n2", Some(&node.url), |_| {}).await;
    wait_until(
        "the follower has the seeded keys",
        Duration::from_secs(5),
        async || {
            follower.node.engine.positions().applied_lsn >= node.node.engine.positions().applied_lsn
        },
    )
    .await;
    let mut router = replidb_server::api::router(follower.node.clone());
    let mut fast = replidb_server::api::service(follower.node.clone());
    for (method, uri, body) in [
        ("GET", "/v1/kv/k?consistency=eventual", ""),
        ("GET", "/v1/kv/k", ""),
        ("GET", "/v1/kv/k?consistency=leader", ""),
        ("GET", "/v1/kv/a/b?consistency=bounded&max_lag_ms=60000", ""),
        ("PUT", "/v1/kv/k?w=1", "v"),
        ("DELETE", "/v1/kv/k", ""),
    ] {
        let by_router = answer(&mut router, method, uri, body, None).await;
        let by_fast = answer(&mut fast, method, uri, body, None).await;
        assert_eq!(by_fast, by_router, "follower: {method} {uri}");
    }
    // With --auth-file: refused (401, 403) and admitted requests.
    let tokens = tempfile::tempdir().unwrap();
    let auth_file = token_file(tokens.path(), &[("reader", "reader-secret", &["read"])]);
    let guarded = start("n3", None, |cfg| cfg.auth_file = Some(auth_file.clone())).await;
    let mut router = replidb_server::api::router(guarded.node.clone());
    let mut fast = replidb_server::api::service(guarded.node.clone());
    for (method, uri, token) in [
        ("GET", "/v1/kv/k", None),
        ("GET", "/v1/kv/k", Some("Bearer wrong")),
        ("GET", "/v1/kv/k", Some("Bearer reader-secret")),
        ("PUT", "/v1/kv/k", Some("Bearer reader-secret")),
        ("DELETE", "/v1/kv/k", None),
    ] {
        let by_router = answer(&mut router, method, uri, "v", token).await;
        let by_fast = answer(&mut fast, method, uri, "v", token).await;
        assert_eq!(by_fast, by_router, "with tokens: {method} {uri} {token:?}");
    }
    // Writes that land: the same status, headers and answer fields (the
    // LSNs differ, each wrote a record).
    for (method, uri, body) in [("PUT", "/v1/kv/new", "v"), ("DELETE", "/v1/kv/new", "")] {
        let by_router = answer(&mut router, method, uri, body, None).await;
        let by_fast = answer(&mut fast, method, uri, body, None).await;
        assert_eq!(by_fast.0, by_router.0, "{method} {uri}");
        let names = |h: &[(String, String)]| h.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(names(&by_fast.1), names(&by_router.1), "{method} {uri}");
        let fields = |b: &str| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            v.as_object().unwrap().keys().cloned().collect::<Vec<_>>()
        };
        assert_eq!(fields(&by_fast.2), fields(&by_router.2), "{method} {uri}");
    }
}

/// Send `head` (request line and headers, no body) as written, so no
/// client library removes its dot segments first; the answer's status and
/// body.
async fn raw_request(url: &str, method: &str, path: &str, authorization: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {authorization}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A follower relays a client's path to the leader (reads it cannot
/// serve, writes with --forward-writes) with its own peer token. A URL
/// parser drops dot segments, so `z/../victim` reached the key `victim`,
/// and a token with only the read role reached `/internal/digest`. The
/// relayed request must name the key the client named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_request_names_the_key_the_client_named() {
    let tokens = tempfile::tempdir().unwrap();
    let auth_file = token_file(
        tokens.path(),
        &[
            (
                "cluster",
                "cluster-secret",
                &["read", "write", "admin", "replication"],
            ),
            ("reader", "reader-secret", &["read"]),
            ("writer", "writer-secret", &["read", "write"]),
        ],
    );
    let guarded = |cfg: &mut NodeConfig| {
        cfg.auth_file = Some(auth_file.clone());
        cfg.peer_token = Some(replidb_server::auth::Secret::new("cluster-secret"));
        cfg.forward_writes = true;
    };
    let leader = start("n1", None, guarded).await;
    let follower = start("n2", Some(&leader.url), guarded).await;
    replidb_tls::install_default_provider();
    let http = reqwest::Client::new();
    let put = |key: &'static str, value: &'static str| {
        http.put(format!("{}/v1/kv/{key}", leader.url))
            .bearer_auth("writer-secret")
            .body(value)
            .send()
    };
    assert_eq!(put("victim", "precious").await.unwrap().status(), 200);
    assert_eq!(put("z%2F..%2Fvictim", "decoy").await.unwrap().status(), 200);
    wait_until(
        "the follower has both keys",
        Duration::from_secs(5),
        async || {
            follower.node.engine.positions().applied_lsn
                >= leader.node.engine.positions().applied_lsn
        },
    )
    .await;

    // A strong read is relayed: it returns the literal key's value.
    let (status, body) = raw_request(
        &follower.url,
        "GET",
        "/v1/kv/z/../victim?consistency=strong",
        "Bearer reader-secret",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "decoy"));
    // A forwarded delete deletes the literal key, not `victim`.
    let (status, body) = raw_request(
        &follower.url,
        "DELETE",
        "/v1/kv/z/../victim",
        "Bearer writer-secret",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""key":"z/../victim""#), "{body}");
    let victim = http
        .get(format!("{}/v1/kv/victim", leader.url))
        .bearer_auth("reader-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(victim.status(), 200);
    assert_eq!(victim.text().await.unwrap(), "precious");

    // A read-only token does not reach the replication role's endpoint
    // through a relayed read: the leader looks up a key of that name.
    let (status, body) = raw_request(
        &follower.url,
        "GET",
        "/v1/kv/x/../../../internal/digest?consistency=strong",
        "Bearer reader-secret",
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not_found"), "{body}");
    // A key that is itself `..` cannot be named in a URL: refused, not
    // turned into another path.
    let (status, body) =
        raw_request(&follower.url, "DELETE", "/v1/kv/..", "Bearer writer-secret").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_key"), "{body}");
}

/// A `min_lsn` names a position in one leader's log: the causal
/// topologies have none and ignore it (README), on a scan as on a
/// single-key read. A scan waited for it, then answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_causal_scan_ignores_min_lsn_as_a_read_does() {
    replidb_tls::install_default_provider();
    let http = reqwest::Client::new();
    for topology in [
        replidb_server::Topology::MultiLeader,
        replidb_server::Topology::Leaderless,
    ] {
        let node = start("c1", None, |cfg| {
            cfg.topology = topology;
            cfg.replicas = 1;
        })
        .await;
        let put = http
            .put(format!("{}/v1/kv/k1", node.url))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200, "{topology:?}");
        for path in [
            "/v1/kv/k1?min_lsn=999&wait_ms=10",
            "/v1/kv?prefix=k&min_lsn=999&wait_ms=10",
        ] {
            let r = http
                .get(format!("{}{path}", node.url))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body = r.text().await.unwrap();
            assert_eq!(status, 200, "{topology:?} {path}: {body}");
            assert!(body.contains('v'), "{topology:?} {path}: {body}");
        }
    }
}

/// A client that asks `Expect: 100-continue` for a body larger than
/// `--max-value-bytes` gets the 413 at once, not a `100 Continue` and a
/// wait for megabytes that will be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = start("b1", None, |cfg| cfg.max_value_bytes = 1024).await;
    let addr = node.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /v1/kv/big HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut first = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut first))
        .await
        .expect("an answer without sending the body")
        .unwrap();
    let first = String::from_utf8_lossy(&first[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 413"), "{first}");
}

/// A causal header sent twice: two `X-Replidb-Min-Version` tokens make a
/// read wait for both (the stricter wins, as with `min_lsn`; the first
/// alone could weaken read-your-writes), and two `X-Replidb-Context`
/// headers on a write are refused rather than one picked (the context says
/// which versions the write supersedes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_causal_header_sent_twice_is_not_half_read() {
    replidb_tls::install_default_provider();
    let http = reqwest::Client::new();
    let node = start("m1", None, |cfg| {
        cfg.topology = replidb_server::Topology::MultiLeader;
    })
    .await;
    let url = format!("{}/v1/kv/k1", node.url);
    let put = http.put(&url).body("v").send().await.unwrap();
    assert_eq!(put.status(), 200);
    let context = put.headers()["x-replidb-context"].clone();

    let (status, body) = status_and_body(
        http.get(format!("{url}?wait_ms=10"))
            .header("x-replidb-min-version", "m1:1")
            .header("x-replidb-min-version", "m1:999"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("min_version_not_reached"), "{body}");

    let (status, body) = status_and_body(
        http.put(&url)
            .header("x-replidb-context", context.clone())
            .header("x-replidb-context", context.clone())
            .body("w"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_context"), "{body}");

    let (status, body) = status_and_body(
        http.put(&url)
            .header("x-replidb-context", context)
            .body("w"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Send `req`; its status and body.
async fn status_and_body(req: reqwest::RequestBuilder) -> (u16, String) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// `/v1/kv/` (an empty key) is a 400 `invalid_key`, counted under the key
/// route in the metrics, not as an unmatched path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_key_is_counted_under_its_route() {
    replidb_tls::install_default_provider();
    let http = reqwest::Client::new();
    let node = start("e1", None, |_| {}).await;
    let r = http
        .put(format!("{}/v1/kv/", node.url))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let metrics = http
        .get(format!("{}/metrics", node.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"route="/v1/kv/{*key}",status="400""#),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"route="unmatched""#), "{metrics}");
}

/// Send `writes` to `addr` on one connection, pausing between them, and
/// read until the server closes it; the bytes with each `date:` line's
/// value blanked (and, with `digits`, every run of digits, for answers
/// that name LSNs).
async fn on_the_wire(addr: &str, writes: &[Vec<u8>], digits: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    for (i, w) in writes.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stream.write_all(w).await.unwrap();
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| {
            let first = String::from_utf8_lossy(&writes[0][..writes[0].len().min(60)]).into_owned();
            panic!(
                "{addr} did not close: {first:?}..., answered {:?}",
                String::from_utf8_lossy(&answer)
            )
        })
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    let mut out = String::new();
    for line in text.split_inclusive("\r\n") {
        if line.starts_with("date: ") {
            out.push_str("date: *\r\n");
        } else if digits {
            // Every run of digits as one `#`: LSNs and lengths vary.
            for c in line.chars() {
                if !c.is_ascii_digit() {
                    out.push(c);
                } else if !out.ends_with('#') {
                    out.push('#');
                }
            }
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The addresses of `running`'s own listener (the direct loop first) and
/// of a second one serving the same node through hyper alone.
async fn both_ways(running: &Running) -> (String, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let by_hyper = listener.local_addr().unwrap().to_string();
    tokio::spawn(replidb_server::serve::serve(
        listener,
        replidb_server::api::service(running.node.clone()),
        running.node.config.http_limits,
        replidb_server::serve::Framing::Hyper,
        None,
        std::future::pending(),
    ));
    let direct = running.url.trim_start_matches("http://").to_string();
    (direct, by_hyper)
}

/// A single-key request is answered by the connection's own loop
/// (`serve::direct`) unless hyper must see it; either way the bytes on
/// the wire must be hyper's. The same node is served twice, directly and
/// by hyper alone, and every exchange is sent to both: pipelined requests
/// on one connection, `Connection: close`, a connection handed to hyper
/// by a request of another kind, by HTTP/1.0, by a body still on its way,
/// by chunked encoding; a head that arrives in two parts; heads hyper
/// refuses (too large, malformed); writes that land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_answers_are_hypers_byte_for_byte() {
    let node = start("n1", None, |_| {}).await;
    let (direct, by_hyper) = both_ways(&node).await;
    let req = |method: &str, target: &str, extra: &str, body: &str| -> Vec<u8> {
        let length = if body.is_empty() && method != "PUT" {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", body.len())
        };
        format!("{method} {target} HTTP/1.1\r\nHost: replidb\r\n{extra}{length}\r\n{body}")
            .into_bytes()
    };
    let close = |method: &str, target: &str| req(method, target, "Connection: close\r\n", "");
    let seed = [
        req("PUT", "/v1/kv/k", "", "v"),
        req("PUT", "/v1/kv/a/b", "", "slash"),
        req("PUT", "/v1/kv/caf%C3%A9", "", "accent"),
        req("PUT", "/v1/kv/empty", "", ""),
        close("GET", "/v1/kv/k"),
    ]
    .concat();
    let seeded = on_the_wire(&direct, &[seed], false).await;
    assert_eq!(seeded.matches("HTTP/1.1 200 OK").count(), 5, "{seeded}");
    let pipelined: Vec<u8> = [
        req("GET", "/v1/kv/k", "", ""),
        req("GET", "/v1/kv/k?format=json", "", ""),
        req("GET", "/v1/kv/k?consistency=eventual", "", ""),
        req("GET", "/v1/kv/k?consistency=strong", "", ""),
        req("GET", "/v1/kv/k?min_lsn=1", "", ""),
        req("GET", "/v1/kv/a/b", "", ""),
        req("GET", "/v1/kv/a%2Fb", "", ""),
        req("GET", "/v1/kv/caf%C3%A9?format=json", "", ""),
        req("GET", "/v1/kv/caf%C3%A9", "", ""),
        req("GET", "/v1/kv/caf%C3%A9?consistency=eventual", "", ""),
        req("GET", "/v1/kv/empty", "", ""),
        req(
            "GET",
            "/v1/kv/k?consistency=eventual",
            "X-Replidb-Min-Lsn: 1\r\n",
            "",
        ),
        req(
            "GET",
            "/v1/kv/k?consistency=eventual",
            "X-Replidb-Min-Lsn: x\r\n",
            "",
        ),
        req("GET", "/v1/kv/k?consistency=eventual&format=raw", "", ""),
        req(
            "GET",
            "/v1/kv/k?consistency=eventual",
            "Content-Length: 0\r\n",
            "",
        ),
        req("GET", "/v1/kv/absent", "", ""),
        req("GET", "/v1/kv//k", "", ""),
        req("GET", "/v1/kv/%FF", "", ""),
        req("GET", "/v1/kv/k?nope=1", "", ""),
        req("GET", "/v1/kv/k?consistency=sometimes", "", ""),
        req(
            "GET",
            "/v1/kv/k",
            "connection: Keep-Alive\r\naccept: */*\r\n",
            "",
        ),
        req("GET", "/v1/kv/k", "Authorization: Bearer nobody\r\n", ""),
        req("PUT", "/v1/kv/%FF", "", "v"),
        req("PUT", "/v1/kv/.", "", "v"),
        req("PUT", "/v1/kv/k?w=7", "", "v"),
        req("PUT", "/v1/kv/k?w=all&nope=1", "", "v"),
        req("DELETE", "/v1/kv/k?w=zero", "", ""),
        req("DELETE", "/v1/kv/%FF", "", ""),
        req("GET", "/v1/kv/k", "", "a body on a GET"),
        close("GET", "/v1/kv/k"),
        // Never read: the connection ended with the one before.
        req("GET", "/v1/kv/a/b", "", ""),
    ]
    .concat();
    let head_too_large = format!(
        "GET /v1/kv/k HTTP/1.1\r\nHost: replidb\r\nX-Big: {}\r\n\r\n",
        "b".repeat(200 * 1024)
    );
    let exchanges: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("pipelined reads and refused writes", vec![pipelined]),
        (
            "one write at a time",
            vec![
                req("GET", "/v1/kv/k", "", ""),
                req("GET", "/v1/kv/absent", "", ""),
                close("GET", "/v1/kv/a/b"),
            ],
        ),
        (
            "handed to hyper by another kind of request",
            vec![
                req("GET", "/v1/kv/k", "", ""),
                req("GET", "/v1/kv/", "", ""),
                req("HEAD", "/v1/kv/k", "", ""),
                close("GET", "/v1/kv/k"),
            ],
        ),
        (
            "HTTP/1.0",
            vec![b"GET /v1/kv/k HTTP/1.0\r\nHost: replidb\r\n\r\n".to_vec()],
        ),
        (
            "a body still on its way",
            vec![
                b"PUT /v1/kv/k?w=7 HTTP/1.1\r\nHost: replidb\r\nContent-Length: 3\r\n\r\nv".to_vec(),
                b"vv".to_vec(),
                close("GET", "/v1/kv/k"),
            ],
        ),
        (
            "chunked",
            vec![
                b"PUT /v1/kv/k?w=7 HTTP/1.1\r\nHost: replidb\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nv\r\n0\r\n\r\n".to_vec(),
                close("GET", "/v1/kv/k"),
            ],
        ),
        (
            "a head in two parts",
            vec![
                b"GET /v1/kv/k HTTP/1.1\r\nHo".to_vec(),
                b"st: replidb\r\nConnection: close\r\n\r\n".to_vec(),
            ],
        ),
        ("a head over the limit", vec![head_too_large.into_bytes()]),
        (
            "a malformed head",
            vec![b"GET /v1/kv/k HTTP/1.1\r\nNo Colon Here\r\n\r\n".to_vec()],
        ),
        (
            "an upgrade",
            vec![
                req("GET", "/v1/kv/k", "Connection: Upgrade\r\nUpgrade: websocket\r\n", ""),
                close("GET", "/v1/kv/k"),
            ],
        ),
        (
            "two content lengths",
            vec![
                b"PUT /v1/kv/k?w=7 HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nv".to_vec(),
                close("GET", "/v1/kv/k"),
            ],
        ),
    ];
    for (what, writes) in &exchanges {
        eprintln!("{what}: direct at {direct}, hyper at {by_hyper}");
        let direct_answer = on_the_wire(&direct, writes, false).await;
        let hyper_answer = on_the_wire(&by_hyper, writes, false).await;
        assert!(
            direct_answer.starts_with("HTTP/1."),
            "{what}: {direct_answer}"
        );
        assert_eq!(direct_answer, hyper_answer, "{what}");
    }
    // A follower (its lag in milliseconds may change between the two
    // exchanges, so digits are compared as runs) and a node with tokens.
    let follower = start("n2", Some(&node.url), |_| {}).await;
    wait_until(
        "the follower has the seeded keys",
        Duration::from_secs(5),
        async || {
            follower.node.engine.positions().applied_lsn >= node.node.engine.positions().applied_lsn
        },
    )
    .await;
    let tokens = tempfile::tempdir().unwrap();
    let auth_file = token_file(
        tokens.path(),
        &[
            ("reader", "reader-secret", &["read"]),
            ("writer", "writer-secret", &["write"]),
        ],
    );
    let guarded = start("n3", None, |cfg| cfg.auth_file = Some(auth_file.clone())).await;
    let guarded_direct = guarded.url.trim_start_matches("http://").to_string();
    let wrote = on_the_wire(
        &guarded_direct,
        &[req(
            "PUT",
            "/v1/kv/k",
            "Authorization: Bearer writer-secret\r\nConnection: close\r\n",
            "v",
        )],
        false,
    )
    .await;
    assert!(wrote.starts_with("HTTP/1.1 200 OK"), "{wrote}");
    for (what, running) in [("follower", &follower), ("with tokens", &guarded)] {
        let (running_direct, running_by_hyper) = both_ways(running).await;
        let reads = vec![[
            req("GET", "/v1/kv/k", "", ""),
            req("GET", "/v1/kv/k?consistency=eventual", "", ""),
            req("GET", "/v1/kv/a/b", "", ""),
            req(
                "GET",
                "/v1/kv/k",
                "Authorization: Bearer reader-secret\r\n",
                "",
            ),
            req(
                "GET",
                "/v1/kv/k",
                "authorization: bearer reader-secret\r\n",
                "",
            ),
            req(
                "GET",
                "/v1/kv/k",
                "Authorization: Bearer writer-secret\r\n",
                "",
            ),
            req("GET", "/v1/kv/k", "Authorization: Bearer wrong\r\n", ""),
            req("GET", "/v1/kv/k", "Authorization: Basic cmVhZGVy\r\n", ""),
            req(
                "GET",
                "/v1/kv/k",
                "Authorization: Bearer wrong\r\nAuthorization: Bearer reader-secret\r\n",
                "",
            ),
            req("GET", "/v1/kv/k?consistency=strong", "", ""),
            req("PUT", "/v1/kv/w", "", "no token"),
            req(
                "PUT",
                "/v1/kv/w",
                "Authorization: Bearer reader-secret\r\n",
                "a reader's",
            ),
            req(
                "PUT",
                "/v1/kv/w",
                "Authorization: Bearer writer-secret\r\n",
                "a writer's",
            ),
            req(
                "DELETE",
                "/v1/kv/w?w=1",
                "authorization: bearer writer-secret\r\n",
                "",
            ),
            req(
                "DELETE",
                "/v1/kv/w",
                "Authorization: Bearer wrong\r\nAuthorization: Bearer writer-secret\r\n",
                "",
            ),
            close("GET", "/v1/kv/k"),
        ]
        .concat()];
        let direct_answer = on_the_wire(&running_direct, &reads, true).await;
        let hyper_answer = on_the_wire(&running_by_hyper, &reads, true).await;
        assert_eq!(direct_answer, hyper_answer, "{what}");
    }
    // A handler's own `connection: close` (a 413 sets it) ends the
    // connection after its answer, pipelined requests or not, with one
    // `connection` line when the client asked to close too.
    let small = start("n4", None, |cfg| {
        cfg.max_value_bytes = 8;
        cfg.http_limits.header_bytes_max = 256 * 1024;
    })
    .await;
    let (small_direct, small_by_hyper) = both_ways(&small).await;
    for (what, writes) in [
        (
            "413, then a pipelined read",
            vec![[
                req("PUT", "/v1/kv/k", "", "too long a value"),
                req("GET", "/v1/kv/k", "", ""),
            ]
            .concat()],
        ),
        (
            "413 to a client asking to close",
            vec![req(
                "PUT",
                "/v1/kv/k",
                "Connection: close\r\n",
                "too long a value",
            )],
        ),
        (
            "413 to a client asking for keep-alive",
            vec![req(
                "PUT",
                "/v1/kv/k",
                "Connection: keep-alive\r\n",
                "too long a value",
            )],
        ),
    ] {
        let direct_answer = on_the_wire(&small_direct, &writes, false).await;
        let hyper_answer = on_the_wire(&small_by_hyper, &writes, false).await;
        assert!(
            direct_answer.starts_with("HTTP/1.1 413"),
            "{what}: {direct_answer}"
        );
        assert_eq!(direct_answer, hyper_answer, "{what}");
    }
    // The value limit's boundary, and a target longer than `http::Uri`
    // takes (hyper answers 414; the write shortcut must not take it).
    let long_query = format!("/v1/kv/k?w=1{}", "&".repeat(70_000));
    let edges = vec![[
        req("PUT", "/v1/kv/k", "", "8 bytes!"),
        req("PUT", "/v1/kv/k", "", "9 bytes!!"),
    ]
    .concat()];
    let direct_answer = on_the_wire(&small_direct, &edges, true).await;
    let hyper_answer = on_the_wire(&small_by_hyper, &edges, true).await;
    assert!(
        direct_answer.starts_with("HTTP/#.# # OK") && direct_answer.contains("HTTP/#.# # Payload"),
        "{direct_answer}"
    );
    assert_eq!(direct_answer, hyper_answer, "the value limit's boundary");
    let too_long = vec![req("PUT", &long_query, "", "v")];
    let direct_answer = on_the_wire(&small_direct, &too_long, false).await;
    let hyper_answer = on_the_wire(&small_by_hyper, &too_long, false).await;
    assert!(direct_answer.starts_with("HTTP/1.1 414"), "{direct_answer}");
    assert_eq!(direct_answer, hyper_answer, "a target too long for a URI");
    // Writes that land (each makes a record, so LSNs, digits, differ),
    // and writes refused once proposed: the write shortcut's answers and
    // the answers it leaves to the general way.
    let writes = vec![[
        req("PUT", "/v1/kv/new", "", "value"),
        req("DELETE", "/v1/kv/new", "", ""),
        req("PUT", "/v1/kv/new?w=1", "", ""),
        req("DELETE", "/v1/kv/new", "", ""),
        req(
            "PUT",
            "/v1/kv/caf%C3%A9?w=majority&timeout_ms=2000",
            "",
            "é",
        ),
        req("PUT", "/v1/kv/new?w=all", "", "\u{1}\"quoted\"\r\n"),
        req("PUT", "/v1/kv/new%22%5C?w=2", "", "v"),
        req("DELETE", "/v1/kv/new?w=2", "", "a body on a DELETE"),
        req("PUT", "/v1/kv/new?w=3", "", "more than the voters"),
        req("PUT", "/v1/kv/new?timeout_ms=0", "", "v"),
        req("PUT", "/v1/kv/new?timeout_ms=-1", "", "v"),
        req("PUT", "/v1/kv/new?w=1&w=1", "", "v"),
        req("PUT", "/v1/kv/new?w=1&", "", "v"),
        req("PUT", "/v1/kv/..", "", "v"),
        req("DELETE", "/v1/kv/..", "", ""),
        req("DELETE", "/v1/kv/never-written", "", ""),
        close("DELETE", "/v1/kv/new"),
    ]
    .concat()];
    let direct_answer = on_the_wire(&direct, &writes, true).await;
    let hyper_answer = on_the_wire(&by_hyper, &writes, true).await;
    assert_eq!(
        direct_answer.matches("HTTP/#.# # OK").count(),
        13,
        "{direct_answer}"
    );
    assert_eq!(direct_answer, hyper_answer, "writes");
    // A write the shortcut takes and the leader then refuses (paused, as
    // during a switchover): answered by the general way's code.
    node.node.leader().unwrap().set_paused(true);
    let refused = vec![[
        req("PUT", "/v1/kv/paused", "", "v"),
        close("DELETE", "/v1/kv/paused"),
    ]
    .concat()];
    let direct_answer = on_the_wire(&direct, &refused, false).await;
    let hyper_answer = on_the_wire(&by_hyper, &refused, false).await;
    node.node.leader().unwrap().set_paused(false);
    assert!(
        direct_answer.starts_with("HTTP/1.1 503") && direct_answer.contains("retry-after"),
        "{direct_answer}"
    );
    assert_eq!(direct_answer, hyper_answer, "writes the leader refuses");
}
