//! A Jepsen-style test: three real `replidb server` processes elected
//! through a real etcd, every byte of their client and peer traffic (and
//! their etcd traffic) passing through TCP proxies the test can cut; five
//! clients write (`w=majority`), read (`consistency=strong`) and
//! compare-and-set (`POST /v1/txn` conditioned on the LSN they read) a few
//! contended keys while a nemesis kills (-9, then restarts), pauses
//! (SIGSTOP/SIGCONT) and partitions nodes. Afterwards it checks:
//!
//! 1. each key's history is linearizable (register model: write, read,
//!    cas), including a final strong read after everything healed — so an
//!    acknowledged `w=majority` write that vanished shows up as a final
//!    value no linearization ends with;
//! 2. no two nodes led the same epoch (from `/status` polled on every node,
//!    and from the node and epoch of every acknowledged write);
//! 3. every node converges to the same value for every key.
//!
//! A failure prints, per key, the smallest set of operations found that
//! cannot be linearized, and keeps the whole history in a file.
//!
//! `REPLIDB_JEPSEN_SECS` sets the length of the run (default 60);
//! `REPLIDB_JEPSEN_SEED` fixes the nemesis schedule and workload (the
//! processes themselves are not deterministic).

mod common;
mod jepsen_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{wait_for, wait_until, Node};
use jepsen_support::linearizability::{self, Op, OpKind, Outcome};
use jepsen_support::proxy::{Network, Proxy};
use jepsen_support::History;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// Nodes in the cluster.
const NODES: usize = 3;

/// The tests here each run a cluster under load: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Concurrent clients.
const CLIENTS: usize = 5;
/// The contended keys.
const KEYS: [&str; 3] = ["x", "y", "z"];
/// A client gives up on a request after this long (the outcome of a write
/// is then unknown).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the cluster may take to heal and converge after the run.
const HEAL_TIMEOUT: Duration = Duration::from_secs(60);
/// Searches spent shrinking a violation for the report.
const SHRINK_CHECKS: usize = 400;
/// Writes this long before the first read of a violation are listed.
const REPORT_CONTEXT_MS: u64 = 1000;

/// The cluster: nodes behind proxies, and a proxy per node to etcd.
struct Cluster {
    _etcd: Etcd,
    net: Arc<Network>,
    /// Client and peer traffic to node `i` enters through `proxies[i]`.
    proxies: Vec<Arc<Proxy>>,
    /// Node `i` reaches etcd through `etcd_proxies[i]`.
    etcd_proxies: Vec<Proxy>,
}

impl Cluster {
    async fn start() -> (Cluster, Vec<Node>) {
        let etcd = Etcd::start().await;
        let etcd_port: u16 = etcd
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("etcd port");
        let net = Network::new();
        let mut proxies = Vec::new();
        let mut etcd_proxies = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..NODES {
            let proxy = Arc::new(Proxy::start(0, Some(net.clone())).await);
            let etcd_proxy = Proxy::start(etcd_port, None).await;
            let args: Vec<String> = [
                "--coordinator",
                "etcd",
                "--etcd",
                &etcd_proxy.url(),
                "--cluster",
                "jepsen",
                "--advertise-url",
                &proxy.url(),
                "--cluster-size",
                "3",
                "--backoff-base",
                "50ms",
                "--backoff-max",
                "500ms",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut node = Node::new(&format!("n{}", i + 1), &args);
            node.launch().await;
            proxy.set_upstream(port_of(&node.url()));
            net.set_pid(i, node.pid().expect("running"));
            proxies.push(proxy);
            etcd_proxies.push(etcd_proxy);
            nodes.push(node);
        }
        let cluster = Cluster {
            _etcd: etcd,
            net,
            proxies,
            etcd_proxies,
        };
        (cluster, nodes)
    }

    /// Cut node `i` off: from clients, from its peers (both ways) and
    /// from etcd.
    fn partition(&self, i: usize) {
        self.net.isolate(i);
        self.proxies[i].cut();
        self.etcd_proxies[i].cut();
    }

    fn heal(&self, i: usize) {
        self.net.rejoin(i);
        self.proxies[i].heal();
        self.etcd_proxies[i].heal();
    }
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("url with a port")
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// Index of a node that says it leads and accepts writes (asked directly,
/// not through the proxies).
async fn writable_leader(direct: &[String], http: &reqwest::Client) -> Option<usize> {
    for (i, url) in direct.iter().enumerate() {
        let Ok(r) = http.get(format!("{url}/status")).send().await else {
            continue;
        };
        let Ok(s) = r.json::<Value>().await else {
            continue;
        };
        if s["role"] == "leader" && s["writable"] == true {
            return Some(i);
        }
    }
    None
}

/// Who claimed to lead which epoch: from `/status`, and from the node that
/// acknowledged each write.
#[derive(Default)]
struct Leaders {
    by_status: BTreeMap<u64, BTreeSet<String>>,
    by_write: BTreeMap<u64, BTreeSet<String>>,
}

impl Leaders {
    fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (what, map) in [
            ("/status said role=leader", &self.by_status),
            ("acknowledged writes", &self.by_write),
        ] {
            for (epoch, ids) in map {
                if ids.len() > 1 {
                    out.push(format!("epoch {epoch}: {what} on {ids:?}"));
                }
            }
        }
        // Across both sources too: the status of one and the writes of
        // another in the same epoch.
        for (epoch, a) in &self.by_status {
            if let Some(b) = self.by_write.get(epoch) {
                let all: BTreeSet<&String> = a.iter().chain(b).collect();
                if all.len() > 1 && a.len() == 1 && b.len() == 1 {
                    out.push(format!(
                        "epoch {epoch}: /status shows {a:?} leading, writes acknowledged by {b:?}"
                    ));
                }
            }
        }
        out
    }
}

/// Shared state of the clients.
struct Workload {
    history: History,
    /// Client-facing URLs (the proxies).
    urls: Vec<String>,
    /// The node the clients believe leads (index into `urls`).
    leader_hint: AtomicUsize,
    leaders: Mutex<Leaders>,
    stop: AtomicBool,
    counts: Mutex<BTreeMap<String, u64>>,
}

impl Workload {
    fn count(&self, what: impl Into<String>) {
        *self.counts.lock().unwrap().entry(what.into()).or_default() += 1;
    }

    /// Follow a 307 to the node it names.
    fn redirected(&self, resp: &reqwest::Response) {
        let Some(loc) = resp.headers().get("location").and_then(|l| l.to_str().ok()) else {
            return;
        };
        if let Some(i) = self.urls.iter().position(|u| loc.starts_with(u.as_str())) {
            self.leader_hint.store(i, Ordering::Relaxed);
        }
    }

    fn next_leader_guess(&self, failed: usize) {
        let _ = self.leader_hint.compare_exchange(
            failed,
            (failed + 1) % self.urls.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn note_write_ack(&self, resp_node: &str, body: &Value) {
        if let Some(epoch) = body["epoch"].as_u64() {
            self.leaders
                .lock()
                .unwrap()
                .by_write
                .entry(epoch)
                .or_default()
                .insert(resp_node.to_string());
        }
    }
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string()
}

fn served_by(resp: &reqwest::Response) -> String {
    format!(
        "{} epoch {} lsn {}",
        header(resp, "x-replidb-node"),
        header(resp, "x-replidb-epoch"),
        header(resp, "x-replidb-lsn")
    )
}

/// What a read returned: the value and the LSN of its version (0: absent).
struct ReadResult {
    value: Option<String>,
    lsn: u64,
}

/// A strong read of `key` on node `target`; recorded in the history when
/// its outcome is known (a failed read changed nothing, so it is dropped).
async fn strong_read(
    w: &Workload,
    http: &reqwest::Client,
    process: usize,
    key: &str,
    target: usize,
) -> Option<ReadResult> {
    let url = format!(
        "{}/v1/kv/{key}?consistency=strong&format=json",
        w.urls[target]
    );
    let call = w.history.now();
    let resp = http.get(&url).send().await;
    let ret = w.history.now();
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            let why = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "refused"
            } else {
                "error"
            };
            w.count(format!("read failed: {why}"));
            return None;
        }
    };
    let note = served_by(&resp);
    let status = resp.status().as_u16();
    let result = match status {
        200 => {
            let body: Value = resp.json().await.ok()?;
            ReadResult {
                value: body["value"].as_str().map(String::from),
                lsn: body["lsn"].as_u64()?,
            }
        }
        404 => {
            let body: Value = resp.json().await.ok()?;
            if body["error"]["code"] != "not_found" {
                return None;
            }
            ReadResult {
                value: None,
                lsn: 0,
            }
        }
        _ => {
            let body: Value = resp.json().await.unwrap_or_default();
            w.count(format!("read failed: {status} {}", body["error"]["code"]));
            return None;
        }
    };
    w.count("read ok");
    w.history.record(
        key,
        Op {
            process,
            call,
            ret: Some(ret),
            kind: OpKind::Read(result.value.clone()),
            note,
        },
    );
    Some(result)
}

/// How a write-like request ended.
enum WriteEnd {
    /// 200 with `committed: true`.
    Ok(String),
    /// Definitely not applied (refused before anything was sent, 307, 4xx).
    Refused,
    /// 409 `condition_failed`: a cas whose condition did not hold.
    Conflict(String),
    /// Applied or not: unknown (timeout, broken connection, 5xx, 504).
    Unknown(String),
}

async fn send_write(
    w: &Workload,
    req: reqwest::RequestBuilder,
    target: usize,
) -> (WriteEnd, Option<Value>) {
    match req.send().await {
        Err(e) if e.is_connect() => {
            // Refused by a cut proxy or a dead node: nothing was sent.
            w.next_leader_guess(target);
            (WriteEnd::Refused, None)
        }
        Err(e) => {
            w.next_leader_guess(target);
            (WriteEnd::Unknown(format!("error: {e}")), None)
        }
        Ok(resp) => {
            let status = resp.status().as_u16();
            let node = header(&resp, "x-replidb-node");
            let note = served_by(&resp);
            if status == 307 {
                w.redirected(&resp);
                return (WriteEnd::Refused, None);
            }
            let body: Option<Value> = resp.json().await.ok();
            match (status, &body) {
                (200, Some(b)) if b["committed"] == true => {
                    w.note_write_ack(&node, b);
                    (WriteEnd::Ok(note), body)
                }
                (409, Some(b)) if b["error"]["code"] == "condition_failed" => {
                    (WriteEnd::Conflict(format!("409 from {note}")), body)
                }
                (400..=499, _) if status != 408 => (WriteEnd::Refused, body),
                _ => {
                    if status == 503 {
                        w.next_leader_guess(target);
                    }
                    (WriteEnd::Unknown(format!("{status} from {note}")), body)
                }
            }
        }
    }
}

/// One client: writes, strong reads and compare-and-sets on random keys.
async fn client(w: Arc<Workload>, process: usize, seed: u64) {
    let http = common::http_builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("client");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = 0u64;
    while !w.stop.load(Ordering::Relaxed) {
        let key = KEYS[rng.random_range(0..KEYS.len())];
        let dice = rng.random_range(0..10);
        if dice < 4 {
            // Strong reads go to any node: a follower relays them to the
            // leader, and a deposed leader must not answer them itself.
            let target = rng.random_range(0..w.urls.len());
            strong_read(&w, &http, process, key, target).await;
            continue;
        }
        n += 1;
        let value = format!("p{process}-{n}");
        let target = w.leader_hint.load(Ordering::Relaxed);
        let q = "w=majority&timeout_ms=1000";
        if dice < 8 {
            let url = format!("{}/v1/kv/{key}?{q}", w.urls[target]);
            let call = w.history.now();
            let (end, _) = send_write(&w, http.put(&url).body(value.clone()), target).await;
            let ret = w.history.now();
            let kind = OpKind::Write(value);
            record_write(&w, key, process, call, ret, kind, end, "write");
        } else {
            let Some(seen) = strong_read(&w, &http, process, key, target).await else {
                continue;
            };
            let body = serde_json::json!({
                "if": [{"key": key, "lsn": seen.lsn}],
                "ops": [{"op": "put", "key": key, "value": value}],
            });
            let url = format!("{}/v1/txn?{q}", w.urls[target]);
            let call = w.history.now();
            let (end, _) = send_write(&w, http.post(&url).json(&body), target).await;
            let ret = w.history.now();
            let kind = match end {
                WriteEnd::Conflict(_) => OpKind::CasRefused {
                    expected: seen.value,
                },
                _ => OpKind::Cas {
                    expected: seen.value,
                    new: value,
                },
            };
            record_write(&w, key, process, call, ret, kind, end, "cas");
        }
        if rng.random_range(0..4) == 0 {
            // Now and then let others in, so ops on a key really overlap
            // in different ways rather than in lockstep.
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn record_write(
    w: &Workload,
    key: &str,
    process: usize,
    call: u64,
    ret: u64,
    kind: OpKind,
    end: WriteEnd,
    what: &'static str,
) {
    let refused_cas = matches!(kind, OpKind::CasRefused { .. });
    let (ret, note) = match end {
        WriteEnd::Ok(note) => {
            w.count(if what == "cas" { "cas ok" } else { "write ok" });
            (Some(ret), note)
        }
        WriteEnd::Conflict(note) if refused_cas => {
            w.count("cas refused (409)");
            (Some(ret), note)
        }
        WriteEnd::Conflict(_) => return,
        WriteEnd::Refused => {
            w.count(if what == "cas" {
                "cas not sent/redirected"
            } else {
                "write not sent/redirected"
            });
            return;
        }
        WriteEnd::Unknown(why) => {
            w.count(if what == "cas" {
                "cas unknown"
            } else {
                "write unknown"
            });
            (None, why)
        }
    };
    w.history.record(
        key,
        Op {
            process,
            call,
            ret,
            kind,
            note,
        },
    );
}

/// Faults, one at a time, each healed before the next.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    Pause,
    Partition,
}

fn signal(node: &Node, sig: libc::c_int) {
    if let Some(pid) = node.pid() {
        // SAFETY: kill(2) on our own, unreaped child.
        unsafe { libc::kill(pid as libc::pid_t, sig) };
    }
}

/// Apply faults until `until`, then leave every node running and connected.
async fn nemesis(
    cluster: &Cluster,
    nodes: &mut [Node],
    direct: &[String],
    seed: u64,
    until: Instant,
    log: &mut Vec<String>,
    started: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9);
    let http = quick_http();
    while Instant::now() < until {
        // Quiet time between faults: a schedule, not a wait for a state.
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
        if Instant::now() >= until {
            break;
        }
        let fault = [Fault::Kill, Fault::Pause, Fault::Partition][rng.random_range(0..3)];
        // Hit the leader more often than not: that is where the bugs hide.
        let leader = writable_leader(direct, &http).await;
        let target = match leader {
            Some(l) if rng.random_bool(0.6) => l,
            _ => rng.random_range(0..NODES),
        };
        let hold = Duration::from_millis(rng.random_range(1500..4500));
        let t = started.elapsed().as_secs_f64();
        let role = if Some(target) == leader {
            "leader"
        } else {
            "follower"
        };
        log.push(format!(
            "{t:7.1}s {fault:?} {} ({role}) for {hold:?}",
            nodes[target].id
        ));
        match fault {
            Fault::Kill => {
                // A dead process's port refuses connections; the proxy in
                // front of it must too, rather than accept and hang up.
                nodes[target].kill9();
                cluster.proxies[target].cut();
                tokio::time::sleep(hold).await;
                nodes[target].restart().await;
                cluster.proxies[target].heal();
                cluster
                    .net
                    .set_pid(target, nodes[target].pid().expect("running"));
            }
            Fault::Pause => {
                signal(&nodes[target], libc::SIGSTOP);
                tokio::time::sleep(hold).await;
                signal(&nodes[target], libc::SIGCONT);
            }
            Fault::Partition => {
                cluster.partition(target);
                tokio::time::sleep(hold).await;
                cluster.heal(target);
            }
        }
    }
}

fn quick_http() -> reqwest::Client {
    replidb_tls::install_default_provider();
    common::http_builder()
        .no_proxy()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client")
}

/// Poll every node's `/status` directly and note who says it leads which
/// epoch.
async fn monitor(w: Arc<Workload>, direct: Vec<String>, stop: Arc<AtomicBool>) {
    let http = quick_http();
    while !stop.load(Ordering::Relaxed) {
        for url in &direct {
            let Ok(r) = http.get(format!("{url}/status")).send().await else {
                continue;
            };
            let Ok(s) = r.json::<Value>().await else {
                continue;
            };
            if s["role"] == "leader" {
                if let (Some(e), Some(id)) = (s["epoch"].as_u64(), s["id"].as_str()) {
                    w.leaders
                        .lock()
                        .unwrap()
                        .by_status
                        .entry(e)
                        .or_default()
                        .insert(id.to_string());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Check one key's history; the report of a violation (or `None`).
fn check_key(key: &str, ops: &[Op]) -> Option<String> {
    match linearizability::check(ops) {
        Outcome::Linearizable => None,
        Outcome::Unknown => {
            eprintln!("key {key:?}: the search ran out of budget; linearizability unknown");
            None
        }
        Outcome::NotLinearizable => {
            let v = linearizability::minimal_violation(ops, SHRINK_CHECKS);
            Some(format!(
                "key {key:?}: NOT linearizable ({} ops); these {} cannot be linearized together:\n{}",
                ops.len(),
                v.ops.len(),
                v.render(REPORT_CONTEXT_MS)
            ))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jepsen_register_under_kills_pauses_and_partitions() {
    let _serial = SERIAL.lock().await;
    let secs = env_u64("REPLIDB_JEPSEN_SECS").unwrap_or(60);
    let seed = env_u64("REPLIDB_JEPSEN_SEED").unwrap_or_else(rand::random);
    eprintln!("jepsen: {secs}s, seed {seed} (REPLIDB_JEPSEN_SEED={seed} repeats the schedule)");

    let (cluster, mut nodes) = Cluster::start().await;
    let direct: Vec<String> = nodes.iter().map(Node::url).collect();
    let http = quick_http();
    wait_for("a writable leader", Duration::from_secs(30), async || {
        writable_leader(&direct, &http).await
    })
    .await;

    let w = Arc::new(Workload {
        history: History::new(),
        urls: cluster.proxies.iter().map(|p| p.url()).collect(),
        leader_hint: AtomicUsize::new(0),
        leaders: Mutex::new(Leaders::default()),
        stop: AtomicBool::new(false),
        counts: Mutex::new(BTreeMap::new()),
    });
    let monitor_stop = Arc::new(AtomicBool::new(false));
    let mon = tokio::spawn(monitor(w.clone(), direct.clone(), monitor_stop.clone()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|p| tokio::spawn(client(w.clone(), p, seed.wrapping_add(p as u64))))
        .collect();

    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let mut faults = Vec::new();
    nemesis(
        &cluster,
        &mut nodes,
        &direct,
        seed,
        until,
        &mut faults,
        started,
    )
    .await;
    let remaining = until.saturating_duration_since(Instant::now());
    tokio::time::sleep(remaining).await;
    w.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }

    // Heal: every node is running and connected (the nemesis leaves them
    // so); wait for a leader and for every node to hold the same data.
    let leader = wait_for(
        "a writable leader after healing",
        HEAL_TIMEOUT,
        async || writable_leader(&direct, &http).await,
    )
    .await;
    let mut problems: Vec<String> = Vec::new();
    let converged = tokio::time::timeout(
        HEAL_TIMEOUT,
        wait_until("all nodes converge", HEAL_TIMEOUT, async || {
            let mut digests = Vec::new();
            for n in &nodes {
                match n.try_status().await {
                    Some(_) => digests.push(n.digest().await),
                    None => return false,
                }
            }
            digests.windows(2).all(|d| d[0] == d[1])
        }),
    )
    .await;
    if converged.is_err() {
        problems.push("nodes did not converge after healing".into());
    }
    // Final strong reads join the history: a lost acknowledged write makes
    // it non-linearizable there.
    let final_http = common::http();
    let mut finals = BTreeMap::new();
    for key in KEYS {
        if let Some(r) = strong_read(&w, &final_http, CLIENTS, key, leader).await {
            finals.insert(key, r.value);
        } else {
            problems.push(format!("final strong read of {key:?} failed"));
        }
        for n in &nodes {
            let (status, body) = n.get_raw(key, "consistency=eventual").await;
            let v = (status == 200).then(|| String::from_utf8_lossy(&body).into_owned());
            if let Some(f) = finals.get(key) {
                if *f != v {
                    problems.push(format!(
                        "{key:?}: node {} holds {v:?}, the leader {f:?}",
                        n.id
                    ));
                }
            }
        }
    }
    monitor_stop.store(true, Ordering::Relaxed);
    let _ = mon.await;

    // Report.
    eprintln!("jepsen: faults:\n  {}", faults.join("\n  "));
    eprintln!("jepsen: outcomes: {:?}", w.counts.lock().unwrap());
    {
        let l = w.leaders.lock().unwrap();
        eprintln!("jepsen: leaders by epoch (status): {:?}", l.by_status);
        eprintln!("jepsen: leaders by epoch (writes): {:?}", l.by_write);
        problems.extend(l.violations());
    }
    let history = w.history.by_key();
    let dump = dump_history(&history);
    for (key, ops) in &history {
        eprintln!(
            "jepsen: key {key:?}: {} ops, final {:?}",
            ops.len(),
            finals.get(key.as_str())
        );
        if let Some(report) = check_key(key, ops) {
            problems.push(report);
        }
    }
    assert!(
        problems.is_empty(),
        "jepsen (seed {seed}): {} problem(s); full history in {}\n{}",
        problems.len(),
        dump.display(),
        problems.join("\n")
    );
}

/// Write the whole history to a file kept for reading after a failure.
fn dump_history(history: &BTreeMap<String, Vec<Op>>) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("replidb-jepsen-{}.txt", std::process::id()));
    let mut text = String::new();
    for (key, ops) in history {
        let mut ops = ops.clone();
        ops.sort_by_key(|o| o.call);
        let _ = writeln!(text, "== key {key:?}");
        for op in ops {
            let _ = writeln!(text, "{op}");
        }
    }
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("jepsen: cannot write {}: {e}", path.display());
    }
    path
}

/// Item 11 of the reliability issue: a leader cut off from both followers
/// but still reaching etcd used to keep its lease, so nothing committed and
/// no one took over for as long as the partition lasted. With check-quorum
/// it gives up the leader key, and the side holding a majority elects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_that_still_reaches_etcd_steps_down() {
    let _serial = SERIAL.lock().await;
    let (cluster, nodes) = Cluster::start().await;
    let direct: Vec<String> = nodes.iter().map(Node::url).collect();
    let http = quick_http();
    let old = wait_for("a writable leader", Duration::from_secs(30), async || {
        writable_leader(&direct, &http).await
    })
    .await;
    // Cut the leader off from its peers (and clients), not from etcd.
    cluster.net.isolate(old);
    cluster.proxies[old].cut();
    let started = Instant::now();
    let new = wait_for(
        "another node leads and takes a w=majority write",
        Duration::from_secs(20),
        async || {
            let i = writable_leader(&direct, &http)
                .await
                .filter(|i| *i != old)?;
            let r = http
                .put(format!("{}/v1/kv/after-isolation?w=majority", direct[i]))
                .body("ok")
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(i)
        },
    )
    .await;
    eprintln!(
        "isolated leader n{} replaced by n{} in {:?}",
        old + 1,
        new + 1,
        started.elapsed()
    );
    // The isolated node no longer accepts writes.
    let s: Value = http
        .get(format!("{}/status", direct[old]))
        .send()
        .await
        .expect("status of the isolated node")
        .json()
        .await
        .expect("json");
    assert!(
        s["role"] != "leader" || s["writable"] == false,
        "isolated node still writable: {s}"
    );
    cluster.net.rejoin(old);
    cluster.proxies[old].heal();
    wait_until(
        "the old leader has the write made while it was cut off",
        Duration::from_secs(20),
        async || {
            http.get(format!("{}/v1/kv/after-isolation", direct[old]))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
}
