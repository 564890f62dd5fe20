//! Seed 003's multi-master examples, reproduced on a three-node
//! multi-leader cluster (every node takes writes):
//!
//! 1. Alice and Alicia written on two nodes at once: under `lww` one name is
//!    kept everywhere and the other is in the conflict log; under
//!    `siblings` both come back until the application resolves them.
//! 2. Two carts on two nodes, one with "Book", one with "Pen": both items
//!    everywhere (an observed-remove set).
//! 3. A likes counter at 100, +5 on one node and +3 on another: 108
//!    everywhere (a PN-counter).
//! 4. A user profile whose name changes on one node and email on another:
//!    both fields kept (a map of LWW fields).
//!
//! Run: `cargo run --example seed003`. Everything runs in this process on
//! loopback ports and temporary directories; `--link-delay`-style lag
//! between the nodes makes the writes truly concurrent. It checks each
//! outcome and exits non-zero if one is not what the seed says.

use std::time::Duration;

use replidb_server::{NodeConfig, Server, Topology};
use serde_json::{json, Value};

struct Cluster {
    urls: Vec<String>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn start_cluster() -> anyhow::Result<Cluster> {
    // Peers name each other, so pick the ports first.
    let mut ports = Vec::new();
    for _ in 0..3 {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        ports.push(l.local_addr()?.port());
    }
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let mut dirs = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let dir = tempfile::tempdir()?;
        let mut cfg = NodeConfig::new(
            format!("n{}", i + 1),
            format!("127.0.0.1:{port}").parse()?,
            dir.path(),
        );
        cfg.topology = Topology::MultiLeader;
        cfg.peers = urls.clone();
        cfg.conflict_policy = "cart:=siblings".parse()?;
        cfg.link_delay = "100ms..300ms".parse()?;
        let server = Server::bind(cfg).await?;
        tokio::spawn(server.run(std::future::pending()));
        dirs.push(dir);
    }
    Ok(Cluster { urls, _dirs: dirs })
}

/// Wait until every node streams from both of the others.
async fn connected(http: &reqwest::Client, urls: &[String]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = true;
        for u in urls {
            let s: Value = http.get(format!("{u}/status")).send().await?.json().await?;
            all &= s["peers"].as_array().is_some_and(|p| {
                p.len() == urls.len() - 1 && p.iter().all(|p| p["connected"] == json!(true))
            });
        }
        if all {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the nodes did not connect to each other"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until every node has the same digest (all writes everywhere).
async fn converge(http: &reqwest::Client, urls: &[String]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut digests = Vec::new();
        for u in urls {
            let d: Value = http
                .get(format!("{u}/internal/digest"))
                .send()
                .await?
                .json()
                .await?;
            digests.push(d["digest"].clone());
        }
        if digests.windows(2).all(|w| w[0] == w[1]) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "nodes did not converge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // reqwest needs a TLS crypto provider even for http:// URLs.
    replidb_tls::install_default_provider();
    let c = start_cluster().await?;
    // Loopback only: no proxy from the environment.
    let http = reqwest::Client::builder().no_proxy().build()?;
    let (a, b, n3) = (&c.urls[0], &c.urls[1], &c.urls[2]);
    connected(&http, &c.urls).await?;

    println!("1. Alice on n1 and Alicia on n2, at the same time (lww):");
    let (x, y) = tokio::join!(
        http.put(format!("{a}/v1/kv/user:1:name"))
            .body("Alice")
            .send(),
        http.put(format!("{b}/v1/kv/user:1:name"))
            .body("Alicia")
            .send(),
    );
    x?.error_for_status()?;
    y?.error_for_status()?;
    converge(&http, &c.urls).await?;
    let mut names = Vec::new();
    for (i, u) in c.urls.iter().enumerate() {
        let v = http
            .get(format!("{u}/v1/kv/user:1:name"))
            .send()
            .await?
            .text()
            .await?;
        println!("   n{} reads {v}", i + 1);
        names.push(v);
    }
    anyhow::ensure!(
        names.windows(2).all(|w| w[0] == w[1]),
        "lww kept different names: {names:?}"
    );
    let mut discarded = Vec::new();
    for u in [a, b] {
        let log: Value = http
            .get(format!("{u}/v1/conflicts"))
            .send()
            .await?
            .json()
            .await?;
        for entry in log.as_array().into_iter().flatten() {
            let lost: Vec<&Value> = entry["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .skip(1)
                .collect();
            println!(
                "   conflict log on {u}: kept {}, discarded {:?}",
                entry["kept"],
                lost.iter().map(|v| &v["value"]).collect::<Vec<_>>()
            );
            discarded.extend(
                lost.iter()
                    .filter_map(|v| v["value"].as_str().map(String::from)),
            );
        }
    }
    let loser = if names[0] == "Alice" {
        "Alicia"
    } else {
        "Alice"
    };
    anyhow::ensure!(
        discarded.iter().any(|d| d == loser),
        "{loser} is in no conflict log"
    );
    println!("   the same under the siblings policy (cart:1):");
    let (x, y) = tokio::join!(
        http.put(format!("{a}/v1/kv/cart:1")).body("Alice").send(),
        http.put(format!("{b}/v1/kv/cart:1")).body("Alicia").send(),
    );
    x?.error_for_status()?;
    y?.error_for_status()?;
    converge(&http, &c.urls).await?;
    let r = http.get(format!("{n3}/v1/kv/cart:1")).send().await?;
    let status = r.status();
    let body = r.text().await?;
    println!("   n3 answers {status}: {body}");
    anyhow::ensure!(
        status.as_u16() == 300 && body.contains("\"Alice\"") && body.contains("\"Alicia\""),
        "siblings did not return both names"
    );

    println!("2. Two carts: Book added on n1, Pen on n2:");
    let (x, y) = tokio::join!(
        http.post(format!("{a}/v1/set/cart:2"))
            .json(&json!({"add": ["Book"]}))
            .send(),
        http.post(format!("{b}/v1/set/cart:2"))
            .json(&json!({"add": ["Pen"]}))
            .send(),
    );
    x?.error_for_status()?;
    y?.error_for_status()?;

    println!("3. Likes at 100, then +5 on n1 and +3 on n2:");
    http.post(format!("{a}/v1/counter/likes"))
        .json(&json!({"delta": 100}))
        .send()
        .await?
        .error_for_status()?;
    converge(&http, &c.urls).await?;
    let (x, y) = tokio::join!(
        http.post(format!("{a}/v1/counter/likes"))
            .json(&json!({"delta": 5}))
            .send(),
        http.post(format!("{b}/v1/counter/likes"))
            .json(&json!({"delta": 3}))
            .send(),
    );
    x?.error_for_status()?;
    y?.error_for_status()?;

    println!("4. A profile: name changed on n1, email on n2:");
    http.patch(format!("{a}/v1/map/profile:1"))
        .json(&json!({"name": "Al", "email": "al@old"}))
        .send()
        .await?
        .error_for_status()?;
    converge(&http, &c.urls).await?;
    let (x, y) = tokio::join!(
        http.patch(format!("{a}/v1/map/profile:1"))
            .json(&json!({"name": "Alice"}))
            .send(),
        http.patch(format!("{b}/v1/map/profile:1"))
            .json(&json!({"email": "alice@new"}))
            .send(),
    );
    x?.error_for_status()?;
    y?.error_for_status()?;

    converge(&http, &c.urls).await?;
    for (i, u) in c.urls.iter().enumerate() {
        let cart: Value = http
            .get(format!("{u}/v1/set/cart:2"))
            .send()
            .await?
            .json()
            .await?;
        let likes: Value = http
            .get(format!("{u}/v1/counter/likes"))
            .send()
            .await?
            .json()
            .await?;
        let profile: Value = http
            .get(format!("{u}/v1/map/profile:1"))
            .send()
            .await?
            .json()
            .await?;
        println!(
            "   n{}: cart {} likes {} profile {}",
            i + 1,
            cart["members"],
            likes["value"],
            profile
        );
        anyhow::ensure!(cart["members"] == json!(["Book", "Pen"]), "cart {cart}");
        anyhow::ensure!(likes["value"] == json!(108), "likes {likes}");
        anyhow::ensure!(
            profile == json!({"name": "Alice", "email": "alice@new"}),
            "profile {profile}"
        );
    }
    println!("every node agrees: the four examples came out as seed 003 says");
    Ok(())
}
