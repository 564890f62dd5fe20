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
