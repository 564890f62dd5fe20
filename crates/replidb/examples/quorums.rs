//! Seed 003's quorum picture, measured on a three-node leaderless cluster
//! (N=3 replicas per key, strict quorum, 20–120 ms between a write's
//! coordinator and the other replicas).
//!
//! For each (R, W) setting, concurrent clients each write a fresh value to
//! their own key with `w=W` through a random node and, as soon as the write
//! is acknowledged, read the key with `r=R` through a random *other* node.
//! A read that does not return the value just written (or a newer one) is
//! a **stale read**. Then one node is stopped and the same workload runs
//! again against the two nodes left, for **availability**: the fraction of
//! writes and of reads that succeeded.
//!
//! Run: `cargo run --release --example quorums [SECS_UP [SECS_DOWN]]`
//! (default 6 s per setting with every node up, 3 s with one down: about a
//! minute). Everything runs in this process on loopback ports and
//! temporary directories.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::seq::IndexedRandom as _;
use replidb_server::{NodeConfig, Server, Topology};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Replicas per key, and nodes in the cluster.
const N: usize = 3;
/// Concurrent clients per phase.
const CLIENTS: usize = 8;
/// `(R, W)` settings, in the order of the table.
const SETTINGS: [(usize, usize); 6] = [(1, 1), (1, 2), (2, 2), (1, 3), (2, 3), (3, 1)];
/// The delay between a write's coordinator and the other replicas.
const LINK_DELAY: &str = "20ms..120ms";
const CONTEXT_HEADER: &str = "x-replidb-context";

struct Node {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

struct Cluster {
    nodes: Vec<Node>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn start_cluster() -> anyhow::Result<Cluster> {
    // Peers name each other, so pick the ports first.
    let mut ports = Vec::new();
    for _ in 0..N {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        ports.push(l.local_addr()?.port());
    }
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let dir = tempfile::tempdir()?;
        let mut cfg = NodeConfig::new(
            format!("n{}", i + 1),
            format!("127.0.0.1:{port}").parse()?,
            dir.path(),
        );
        cfg.topology = Topology::Leaderless;
        cfg.peers = urls.clone();
        cfg.replicas = N;
        // No hints counted toward W: only the key's own replicas count, so
        // the W + R > N argument applies.
        cfg.strict_quorum = true;
        cfg.link_delay = LINK_DELAY.parse()?;
        let server = Server::bind(cfg).await?;
        let (tx, rx) = oneshot::channel::<()>();
        let id = format!("n{}", i + 1);
        let task = tokio::spawn(async move {
            if let Err(e) = server
                .run(async move {
                    let _ = rx.await;
                })
                .await
            {
                eprintln!("{id} stopped with an error: {e}");
            }
        });
        nodes.push(Node {
            url: urls[i].clone(),
            stop: Some(tx),
            task,
        });
        dirs.push(dir);
    }
    Ok(Cluster { nodes, _dirs: dirs })
}

/// What one phase of one setting counted.
struct Tally {
    writes: u64,
    writes_ok: u64,
    reads: u64,
    reads_ok: u64,
    /// Reads that followed an acknowledged write.
    checked: u64,
    stale: u64,
    /// The first few stale reads: (key, written, read).
    stale_examples: Vec<(String, String, String)>,
    write_us: Histogram<u64>,
    read_us: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        let h = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
        Tally {
            writes: 0,
            writes_ok: 0,
            reads: 0,
            reads_ok: 0,
            checked: 0,
            stale: 0,
            stale_examples: Vec::new(),
            write_us: h(),
            read_us: h(),
        }
    }

    fn add(&mut self, o: Tally) {
        self.writes += o.writes;
        self.writes_ok += o.writes_ok;
        self.reads += o.reads;
        self.reads_ok += o.reads_ok;
        self.checked += o.checked;
        self.stale += o.stale;
        for e in o.stale_examples {
            if self.stale_examples.len() < 5 {
                self.stale_examples.push(e);
            }
        }
        self.write_us.add(&o.write_us).expect("same bounds");
        self.read_us.add(&o.read_us).expect("same bounds");
    }
}

/// The sequence number of a value `c{client}:{seq}`.
fn seq_of(v: &str) -> Option<u64> {
    v.rsplit(':').next()?.parse().ok()
}

/// One client: write, then read through another node, until `end`.
async fn client(
    http: reqwest::Client,
    live: Arc<Vec<String>>,
    key: String,
    client: usize,
    (r, w): (usize, usize),
    end: Instant,
) -> Tally {
    let mut t = Tally::new();
    let mut context: Option<String> = None;
    let mut seq = 0u64;
    while Instant::now() < end {
        seq += 1;
        let value = format!("c{client}:{seq}");
        let (writer, reader) = {
            let mut rng = rand::rng();
            let writer = live.choose(&mut rng).expect("a live node").clone();
            let others: Vec<&String> = live.iter().filter(|u| **u != writer).collect();
            let reader = (*others.choose(&mut rng).expect("another live node")).clone();
            (writer, reader)
        };

        // The write. Send the context of the previous write, as a client
        // doing read-modify-write would: the new version then supersedes
        // the old one on every replica, whatever the clocks say.
        let mut req = http
            .put(format!("{writer}/v1/kv/{key}?w={w}"))
            .body(value.clone());
        if let Some(c) = &context {
            req = req.header(CONTEXT_HEADER, c);
        }
        let started = Instant::now();
        let resp = req.send().await;
        let took = started.elapsed();
        t.writes += 1;
        let acked = match resp {
            Ok(resp) => {
                if let Some(c) = resp.headers().get(CONTEXT_HEADER) {
                    context = c.to_str().ok().map(String::from);
                }
                let ok = resp.status().is_success();
                let _ = resp.bytes().await;
                ok
            }
            Err(_) => false,
        };
        if acked {
            t.writes_ok += 1;
            t.write_us.saturating_record(took.as_micros() as u64);
        }

        // The read, right after, through another node.
        let started = Instant::now();
        let resp = http.get(format!("{reader}/v1/kv/{key}?r={r}")).send().await;
        t.reads += 1;
        let got = match resp {
            Ok(resp) => match resp.status().as_u16() {
                200 => resp.text().await.ok(),
                // Nothing there yet (a write that reached no replica read).
                404 => Some(String::new()),
                // Siblings: not expected with one writer per key under lww.
                300 => Some(format!(
                    "siblings {}",
                    resp.text().await.unwrap_or_default()
                )),
                _ => None,
            },
            Err(_) => None,
        };
        let took = started.elapsed();
        let Some(got) = got else { continue };
        t.reads_ok += 1;
        t.read_us.saturating_record(took.as_micros() as u64);
        if acked {
            t.checked += 1;
            let fresh = seq_of(&got).is_some_and(|s| got.starts_with('c') && s >= seq);
            if !fresh {
                t.stale += 1;
                if t.stale_examples.len() < 5 {
                    t.stale_examples.push((
                        key.clone(),
                        format!("{value} (w={w} via {writer})"),
                        format!("{got:?} (r={r} via {reader})"),
                    ));
                }
            }
        }
    }
    t
}

async fn phase(
    http: &reqwest::Client,
    live: &[String],
    label: &str,
    setting: (usize, usize),
    secs: f64,
) -> Tally {
    let live = Arc::new(live.to_vec());
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let (r, w) = setting;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let key = format!("q:{label}:r{r}w{w}:c{c}");
            tokio::spawn(client(http.clone(), live.clone(), key, c, setting, end))
        })
        .collect();
    let mut total = Tally::new();
    for t in tasks {
        total.add(t.await.expect("client task"));
    }
    total
}

fn ms(h: &Histogram<u64>, q: f64) -> String {
    if h.is_empty() {
        return "-".into();
    }
    format!("{:.1}", h.value_at_quantile(q) as f64 / 1000.0)
}

fn pct(num: u64, den: u64) -> String {
    if den == 0 {
        return "-".into();
    }
    format!("{:.1}%", 100.0 * num as f64 / den as f64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // reqwest needs a TLS crypto provider even for http:// URLs.
    replidb_tls::install_default_provider();
    let mut args = std::env::args().skip(1);
    let secs_up: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(6.0);
    let secs_down: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3.0);

    let mut cluster = start_cluster().await?;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
    let http = reqwest::Client::new();
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!(
        "{N} leaderless nodes, N={N} replicas per key, strict quorum, link delay {LINK_DELAY}, \
         {CLIENTS} clients; {secs_up} s per setting with all nodes up, {secs_down} s with one down"
    );

    let mut up = Vec::new();
    for s in SETTINGS {
        let t = phase(&http, &urls, "up", s, secs_up).await;
        eprintln!(
            "  R={} W={} all up: {} writes, {} stale of {} checked reads",
            s.0, s.1, t.writes, t.stale, t.checked
        );
        up.push(t);
    }

    // One node down: stop n3 and keep sending to the two left (a client or
    // load balancer that knows which nodes answer).
    let mut down_node = cluster.nodes.pop().expect("three nodes");
    if let Some(stop) = down_node.stop.take() {
        let _ = stop.send(());
    }
    tokio::time::timeout(Duration::from_secs(10), &mut down_node.task)
        .await
        .map_err(|_| anyhow::anyhow!("n3 did not stop within 10 s"))??;
    eprintln!("  n3 ({}) stopped", down_node.url);
    let live: Vec<String> = urls[..N - 1].to_vec();
    let mut down = Vec::new();
    for s in SETTINGS {
        let t = phase(&http, &live, "down", s, secs_down).await;
        eprintln!(
            "  R={} W={} one down: {}/{} writes, {}/{} reads succeeded",
            s.0, s.1, t.writes_ok, t.writes, t.reads_ok, t.reads
        );
        down.push(t);
    }

    println!();
    println!(
        "| setting    | W+R>N? | stale reads       | write p50 / p99 ms | read p50 / p99 ms | write avail, 1 down | read avail, 1 down | stale, 1 down |"
    );
    println!(
        "|------------|--------|-------------------|--------------------|-------------------|---------------------|--------------------|---------------|"
    );
    for ((s, u), d) in SETTINGS.iter().zip(&up).zip(&down) {
        let (r, w) = *s;
        println!(
            "| R={r}, W={w}   | {:<6} | {:<17} | {:>18} | {:>17} | {:>19} | {:>18} | {:>13} |",
            if w + r > N { "yes" } else { "no" },
            format!("{} ({}/{})", pct(u.stale, u.checked), u.stale, u.checked),
            format!("{} / {}", ms(&u.write_us, 0.5), ms(&u.write_us, 0.99)),
            format!("{} / {}", ms(&u.read_us, 0.5), ms(&u.read_us, 0.99)),
            pct(d.writes_ok, d.writes),
            pct(d.reads_ok, d.reads),
            pct(d.stale, d.checked),
        );
    }

    let mut bug = false;
    for ((s, u), d) in SETTINGS.iter().zip(&up).zip(&down) {
        let (r, w) = *s;
        if w + r > N {
            for (phase, t) in [("all up", u), ("one down", d)] {
                for (key, wrote, read) in &t.stale_examples {
                    bug = true;
                    println!(
                        "STALE with W+R>N (R={r}, W={w}, {phase}): key {key}: wrote {wrote}, read {read}"
                    );
                }
            }
        }
    }
    if bug {
        anyhow::bail!("stale reads with W + R > N under a strict quorum");
    }

    for n in cluster.nodes.iter_mut() {
        if let Some(stop) = n.stop.take() {
            let _ = stop.send(());
        }
    }
    for n in cluster.nodes {
        let _ = tokio::time::timeout(Duration::from_secs(10), n.task).await;
    }
    Ok(())
}
