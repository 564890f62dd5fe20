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
    let auth_file = tokens.path().join("tokens.toml");
    let sha = |secret: &str| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(secret.as_bytes()))
    };
    std::fs::write(
        &auth_file,
        format!(
            "[[token]]\nname = \"reader\"\nsha256 = \"{}\"\nroles = [\"read\"]\n",
            sha("reader-secret")
        ),
    )
    .unwrap();
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
