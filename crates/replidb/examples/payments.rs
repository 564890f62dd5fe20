//! Seed 002's payment scenario: users pay, then read their balance, while
//! followers apply with 100–500 ms of lag. Five ways of reading are
//! compared, each on its own keys:
//!
//! - (a) **legacy**: read from a random follower (eventual) — stale.
//! - (b) **client cache**: keep the balance the write answered with (and its
//!   LSN); read a follower, and use the cached value when the follower's
//!   copy is older than the LSN.
//! - (c) **session window**: through the router with `X-Replidb-Session`;
//!   the router sends a session's reads to the leader for `--sticky-window`
//!   after it wrote.
//! - (d) **LSN token**: `replidb_client::Session` on a follower sends its
//!   last write's LSN as `min_lsn`; the follower waits for it.
//! - (e) **router cookie**: the router sets `replidb_lsn` on each write and
//!   turns it into `min_lsn` on the next read — no client code change.
//!
//! Run: `cargo run --release --example payments -- [USERS]` (default 200).
//! Everything runs in this process on loopback ports and temp directories.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use replidb_client::{Client, Consistency, ReadOptions, Session, WriteOptions};
use replidb_core::DurationRange;
use replidb_router::config::RouterConfig;
use replidb_server::{NodeConfig, Server};

struct Cluster {
    leader: String,
    followers: Vec<String>,
    router: String,
    _dirs: Vec<tempfile::TempDir>,
}

async fn start_cluster(lag: DurationRange) -> anyhow::Result<Cluster> {
    let mut dirs = Vec::new();
    let mut urls: Vec<String> = Vec::new();
    for i in 0..3 {
        let dir = tempfile::tempdir()?;
        let mut cfg = NodeConfig::new(format!("n{}", i + 1), "127.0.0.1:0".parse()?, dir.path());
        if i > 0 {
            cfg.follow = Some(urls[0].clone());
            cfg.replication_delay = lag;
            cfg.backoff_base = Duration::from_millis(50);
        }
        let server = Server::bind(cfg).await?;
        urls.push(format!("http://{}", server.local_addr()));
        tokio::spawn(server.run(std::future::pending()));
        dirs.push(dir);
    }
    let mut rc = RouterConfig::new("127.0.0.1:0".parse()?, urls.clone());
    rc.health_interval = Duration::from_millis(200);
    let router = replidb_router::Router::bind(rc).await?;
    let router_url = format!(
        "http://{}",
        router
            .local_addr()
            .ok_or_else(|| anyhow::anyhow!("router has no address"))?
    );
    tokio::spawn(router.run(std::future::pending()));
    // Wait until both followers stream, so the comparison is fair.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s: serde_json::Value = http
            .get(format!("{}/status", urls[0]))
            .send()
            .await?
            .json()
            .await?;
        let streaming = s["followers"]
            .as_array()
            .map(|f| f.iter().filter(|x| x["state"] == "streaming").count())
            .unwrap_or(0);
        if streaming == 2 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "followers did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Cluster {
        leader: urls[0].clone(),
        followers: urls[1..].to_vec(),
        router: router_url,
        _dirs: dirs,
    })
}

/// One user's outcome.
#[derive(Default, Clone, Copy)]
struct Outcome {
    stale: bool,
    leader_read: bool,
    read_ms: f64,
}

#[derive(Clone, Copy, Debug)]
enum Strategy {
    Legacy,
    ClientCache,
    SessionWindow,
    LsnToken,
    RouterCookie,
}

impl Strategy {
    fn label(self) -> &'static str {
        match self {
            Strategy::Legacy => "(a) legacy random-follower reads",
            Strategy::ClientCache => "(b) client-side cache of the write response",
            Strategy::SessionWindow => "(c) session time-window routing (router)",
            Strategy::LsnToken => "(d) LSN token (client Session, min_lsn)",
            Strategy::RouterCookie => "(e) router LSN cookie",
        }
    }
}

/// Pay: the new balance is written at `w=1` (acknowledged by the leader
/// alone, as most apps do), then read back the way `strategy` reads.
async fn user(
    c: Arc<Cluster>,
    strategy: Strategy,
    id: usize,
    seed: u64,
) -> anyhow::Result<Outcome> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let key = format!("balance/{strategy:?}/{id}");
    let opening = 1000u32;
    let paid = rng.random_range(1..100u32);
    let expected = (opening - paid).to_string();
    let follower = c.followers[rng.random_range(0..c.followers.len())].clone();
    let leader = Client::new(&c.leader)?;
    leader
        .put(&key, opening.to_string(), &WriteOptions::default())
        .await?;
    let http = reqwest::Client::new();
    let t0;
    let (value, role) = match strategy {
        Strategy::Legacy => {
            let w = leader
                .put(&key, expected.clone(), &WriteOptions::default())
                .await?;
            let _ = w;
            t0 = Instant::now();
            let r = Client::new(&follower)?
                .get(&key, &ReadOptions::with(Consistency::Eventual))
                .await?;
            (r.as_ref().map(|r| r.value.clone()), r.and_then(|r| r.role))
        }
        Strategy::ClientCache => {
            let w = leader
                .put(&key, expected.clone(), &WriteOptions::default())
                .await?;
            t0 = Instant::now();
            let r = Client::new(&follower)?
                .get(&key, &ReadOptions::with(Consistency::Eventual))
                .await?;
            match r {
                Some(r) if r.lsn.unwrap_or(0) >= w.lsn => (Some(r.value), r.role),
                // The follower is behind our own write: the cached answer wins.
                _ => (Some(expected.clone().into_bytes()), Some("cache".into())),
            }
        }
        Strategy::SessionWindow | Strategy::RouterCookie => {
            let session = format!("user-{strategy:?}-{id}");
            let w = http
                .put(format!("{}/v1/kv/{key}", c.router))
                .header("x-replidb-session", &session)
                .body(expected.clone())
                .send()
                .await?;
            let cookie = w
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(|v| v.split(';').next())
                .filter(|kv| kv.starts_with("replidb_lsn="))
                .collect::<Vec<_>>()
                .join("; ");
            t0 = Instant::now();
            let mut req = http.get(format!("{}/v1/kv/{key}", c.router));
            req = match strategy {
                Strategy::SessionWindow => req.header("x-replidb-session", &session),
                _ => req.header("cookie", cookie),
            };
            let r = req.send().await?;
            let role = r
                .headers()
                .get("x-replidb-role")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let ok = r.status().is_success();
            let body = r.bytes().await?.to_vec();
            (ok.then_some(body), role)
        }
        Strategy::LsnToken => {
            let session = Session::new(Client::new(&follower)?);
            session
                .put(&key, expected.clone(), &WriteOptions::default())
                .await?;
            t0 = Instant::now();
            let r = session.get(&key, &ReadOptions::default()).await?;
            (r.as_ref().map(|r| r.value.clone()), r.and_then(|r| r.role))
        }
    };
    let read_ms = t0.elapsed().as_secs_f64() * 1000.0;
    Ok(Outcome {
        stale: value.as_deref() != Some(expected.as_bytes()),
        leader_read: role.as_deref() == Some("leader"),
        read_ms,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // reqwest needs a TLS crypto provider even for http:// URLs.
    replidb_tls::install_default_provider();
    let users: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200);
    let lag: DurationRange = "100ms..500ms".parse()?;
    let cluster = Arc::new(start_cluster(lag).await?);
    println!("seed 002 payments: {users} users pay and read their balance; followers apply with {lag} lag\n");
    println!(
        "| strategy | stale reads | reads served by the leader | read p50 (ms) | read max (ms) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for strategy in [
        Strategy::Legacy,
        Strategy::ClientCache,
        Strategy::SessionWindow,
        Strategy::LsnToken,
        Strategy::RouterCookie,
    ] {
        let tasks: Vec<_> = (0..users)
            .map(|i| tokio::spawn(user(cluster.clone(), strategy, i, i as u64 * 7919 + 1)))
            .collect();
        let mut outcomes = Vec::with_capacity(users);
        for t in tasks {
            outcomes.push(t.await??);
        }
        let stale = outcomes.iter().filter(|o| o.stale).count();
        let leader = outcomes.iter().filter(|o| o.leader_read).count();
        let mut ms: Vec<f64> = outcomes.iter().map(|o| o.read_ms).collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "| {} | {stale}/{users} | {:.0}% | {:.1} | {:.1} |",
            strategy.label(),
            100.0 * leader as f64 / users as f64,
            ms[ms.len() / 2],
            ms[ms.len() - 1],
        );
    }
    Ok(())
}
