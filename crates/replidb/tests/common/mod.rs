//! End-to-end test harness: real `replidb server` processes on loopback
//! ports, each with its own data directory and log file.
//!
//! Rules this harness keeps so the suites stay fast and not flaky:
//! - every wait is a condition polled against a deadline ([`wait_until`]),
//!   never a bare sleep that hopes something happened;
//! - every child process is killed when its [`Node`] is dropped, so no
//!   process outlives a test (also when the test panics);
//! - when a test panics, every node prints the tail of its log and keeps
//!   its directory, so the failure can be read after the fact.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod etcd;

/// The binary under test, built by cargo for this test target.
pub const BIN: &str = env!("CARGO_BIN_EXE_replidb");

/// How long a node may take from spawn to answering `/status` (debug
/// build, two cores shared with other jobs).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd node may take to exit.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Lines of log printed per node when a test fails.
const LOG_TAIL_LINES: usize = 40;
/// Attempts at finding a free port before giving up.
const PORT_ATTEMPTS: usize = 8;

/// An HTTP client for tests: no redirects followed (307 is part of the
/// contract), no proxies from the environment, a generous timeout so a
/// hung server fails the test instead of hanging it.
pub fn http() -> reqwest::Client {
    http_builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("build http client")
}

/// A reqwest builder with replidb's TLS client configuration (trusting
/// nobody; https tests configure their own). Without one, reqwest either
/// panics (no process-wide crypto provider) or builds its platform
/// verifier, which loads the system's root certificates: hundreds of
/// milliseconds per client in a debug build, enough to starve a test that
/// makes a client per writer.
pub fn http_builder() -> reqwest::ClientBuilder {
    replidb_tls::install_default_provider();
    let tls = replidb_tls::client_config_without_ca().expect("TLS client config");
    reqwest::Client::builder().tls_backend_preconfigured((*tls).clone())
}

/// Poll `cond` every 10 ms until it is true; panic with `desc` when
/// `timeout` passes first. Returns how long it took.
pub async fn wait_until<F>(desc: &str, timeout: Duration, mut cond: F) -> Duration
where
    F: AsyncFnMut() -> bool,
{
    let started = Instant::now();
    loop {
        if cond().await {
            return started.elapsed();
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting until {desc}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`wait_until`], for a condition that produces a value.
pub async fn wait_for<T, F>(desc: &str, timeout: Duration, mut cond: F) -> T
where
    F: AsyncFnMut() -> Option<T>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {desc}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A port that was free a moment ago, chosen below the kernel's ephemeral
/// range when there is room: a node restarts on the same port, and a port
/// in the ephemeral range could meanwhile become the local port of some
/// outgoing connection (or another test's port-0 listener), which would
/// make the restart fail. The child may still lose a race for the port;
/// [`Node::launch`] retries.
///
/// A port is never handed out twice in one test process: two nodes of a
/// cluster given the same port would both be named in `--peers`, and the
/// second one's start-up check would be answered by the first (a CI flake:
/// a multi-leader node that never "connected to its peers").
pub fn free_port() -> u16 {
    if let Some(range) = port_range_from_env() {
        return free_port_run_in(1, range);
    }
    let mut handed_out = handed_out();
    let (low, _) = ephemeral_range();
    if low > 12_000 {
        for _ in 0..200 {
            let port = rand::random_range(10_000..low);
            if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed_out.insert(port);
                return port;
            }
        }
    }
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// The ports this test process has handed out (see [`free_port`]).
fn handed_out() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<u16>> {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner())
}

/// `len` consecutive ports, free a moment ago and never handed out before
/// in this process (a playground's nodes, router and dashboard): the
/// first of them.
pub fn free_port_run(len: u16) -> u16 {
    free_port_run_in(len, port_range_from_env().unwrap_or(20_000..30_000))
}

/// `REPLIDB_TEST_PORTS=A..B`: every port the tests hand out lies in
/// `A..B` (end exclusive), so test runs sharing a machine can be given
/// ranges of their own. A malformed value is a test failure, not a silent
/// fallback to any port.
fn port_range_from_env() -> Option<std::ops::Range<u16>> {
    let v = std::env::var("REPLIDB_TEST_PORTS").ok()?;
    let parsed = v
        .split_once("..")
        .and_then(|(a, b)| Some(a.trim().parse::<u16>().ok()?..b.trim().parse::<u16>().ok()?));
    match parsed {
        Some(r) if r.start < r.end => Some(r),
        _ => panic!("REPLIDB_TEST_PORTS={v:?}: expected A..B with A < B"),
    }
}

/// [`free_port_run`] within `range`.
fn free_port_run_in(len: u16, range: std::ops::Range<u16>) -> u16 {
    let mut handed_out = handed_out();
    let last_first = range.end.saturating_sub(len).max(range.start + 1);
    for _ in 0..500 {
        let first = rand::random_range(range.start..last_first);
        let run = first..first + len;
        if run.clone().all(|p| !handed_out.contains(&p))
            && run
                .clone()
                .all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            handed_out.extend(run);
            return first;
        }
    }
    panic!("no {len} consecutive free ports");
}

/// Linux's `ip_local_port_range` (or a conservative guess elsewhere).
fn ephemeral_range() -> (u16, u16) {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// Why a start attempt failed.
enum StartError {
    /// The port was taken between our probe and the child's bind.
    PortInUse,
    /// Anything else: the message says what.
    Other(String),
}

/// One `replidb server` process and its directory (kept across restarts).
pub struct Node {
    /// The node's `--id`.
    pub id: String,
    args: Vec<String>,
    port: u16,
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    http: reqwest::Client,
    starts: u32,
    /// `https` once [`Node::use_tls`] was called.
    scheme: &'static str,
    /// Extra environment of the process (e.g. `RUST_LOG`).
    env: Vec<(String, String)>,
}

impl Node {
    /// Start node `id` with extra server `args` (everything except `--id`,
    /// `--listen` and `--data-dir`) and wait until it answers `/status`.
    pub async fn start(id: &str, args: &[&str]) -> Node {
        let mut node = Node::new(id, args);
        node.launch().await;
        node
    }

    /// Start node `id` on `port` (chosen beforehand, e.g. so that peers can
    /// name each other in `args`).
    pub async fn start_on(id: &str, port: u16, args: &[&str]) -> Node {
        let mut node = Node::new(id, args);
        node.launch_on(port).await;
        node
    }

    /// First start on `port` (chosen beforehand), for a node built with
    /// [`Node::new`] and configured further (e.g. [`Node::set_env`]).
    pub async fn launch_on(&mut self, port: u16) {
        assert!(self.child.is_none(), "{} is already running", self.id);
        self.port = port;
        match self.spawn_and_wait().await {
            Ok(()) => {}
            Err(StartError::PortInUse) => self.fail("chosen port is in use"),
            Err(StartError::Other(msg)) => self.fail(&msg),
        }
    }

    /// Set `key=value` in the environment of every later (re)start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// A node that is not running yet; see [`Node::launch`].
    pub fn new(id: &str, args: &[&str]) -> Node {
        let dir = tempfile::Builder::new()
            .prefix(&format!("replidb-e2e-{id}-"))
            .tempdir()
            .expect("create temp dir");
        Node {
            id: id.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            port: 0,
            dir: Some(dir),
            child: None,
            http: http(),
            starts: 0,
            scheme: "http",
            env: Vec::new(),
        }
    }

    /// First start: pick a port (again, if the child lost the race for it).
    pub async fn launch(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.id);
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port();
            match self.spawn_and_wait().await {
                Ok(()) => return,
                Err(StartError::PortInUse) => continue,
                Err(StartError::Other(msg)) => self.fail(&msg),
            }
        }
        self.fail("no free port after several attempts");
    }

    /// Start on a free port without waiting for `/status` (a node the
    /// harness cannot reach, e.g. one serving an expired certificate).
    pub fn launch_unchecked(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.id);
        self.port = free_port();
        self.spawn();
    }

    /// Start again on the same port and data directory (after `kill9` or
    /// `stop`; a running node is stopped with SIGTERM first).
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop().await;
        }
        // Our old process is gone, so the port is normally free at once;
        // something else may have grabbed it meanwhile: retry a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn_and_wait().await {
                Ok(()) => return,
                Err(StartError::PortInUse) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(StartError::PortInUse) => self.fail("port still in use on restart"),
                Err(StartError::Other(msg)) => self.fail(&msg),
            }
        }
    }

    /// Send `Authorization: Bearer {secret}` on every request this
    /// harness makes to the node from now on (nodes with `--auth-file`).
    pub fn set_bearer(&mut self, secret: &str) {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {secret}").parse().expect("header value"),
        );
        self.http = http_builder()
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("http client");
    }

    /// Change the extra arguments used by the next (re)start.
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|s| s.to_string()).collect();
    }

    async fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        self.spawn();
        self.wait_started().await
    }

    fn spawn(&mut self) {
        self.starts += 1;
        fs::create_dir_all(self.data_dir()).expect("create data dir");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open log");
        writeln!(
            log,
            "===== harness: start #{} of {} on port {} with {:?} =====",
            self.starts, self.id, self.port, self.args
        )
        .expect("write log");
        let err = log.try_clone().expect("clone log handle");
        let child = Command::new(BIN)
            .arg("server")
            .args(["--id", &self.id])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.args)
            .env("RUST_BACKTRACE", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn replidb server");
        self.child = Some(child);
    }

    /// Poll `/status` until it answers, the child exits, or the deadline.
    async fn wait_started(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = format!("{}/status", self.url());
        loop {
            if let Some(status) = self.try_wait() {
                self.child = None;
                let log = self.log_tail(LOG_TAIL_LINES);
                if log.contains("Address already in use") || log.contains("address in use") {
                    return Err(StartError::PortInUse);
                }
                return Err(StartError::Other(format!(
                    "{} exited during start-up with {status}",
                    self.id
                )));
            }
            let ok = match self
                .http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                // A node with --auth-file answers 401 to a harness without
                // its token: it is up all the same.
                Ok(r) if r.status() == 401 => true,
                // Only this node counts: another process on the port means
                // ours lost it and is about to exit "address in use".
                Ok(r) if r.status().is_success() => r
                    .json::<Value>()
                    .await
                    .is_ok_and(|s| s["id"] == self.id.as_str()),
                _ => false,
            };
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StartError::Other(format!(
                    "{} did not answer /status within {START_TIMEOUT:?}",
                    self.id
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until `/status` answers (e.g. after a restart by hand).
    pub async fn wait_healthy(&self) {
        let url = format!("{}/status", self.url());
        let http = self.http.clone();
        wait_until(
            &format!("{} answers /status", self.id),
            START_TIMEOUT,
            async || matches!(http.get(&url).send().await, Ok(r) if r.status().is_success()),
        )
        .await;
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait on child"))
    }

    /// SIGKILL: no shutdown code runs, unsynced data may be lost.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to [`STOP_TIMEOUT`] for the process to exit.
    /// Returns its exit status; panics (after SIGKILL) if it hangs.
    pub async fn stop(&mut self) -> ExitStatus {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.id));
        // SAFETY: plain kill(2) on our own child's pid, which has not been
        // reaped yet (so the pid cannot have been reused).
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                self.child = None;
                return status;
            }
            if started.elapsed() > STOP_TIMEOUT {
                self.kill9();
                self.fail(&format!("did not exit within {STOP_TIMEOUT:?} of SIGTERM"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the process is alive (and not yet reaped).
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// The child's pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// Speak https to this node from now on, trusting `ca` and presenting
    /// `identity` (certificate, key) when the node asks for one. Call
    /// before `launch` for a node started with `--tls-cert`.
    pub fn use_tls(
        &mut self,
        ca: &std::path::Path,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) {
        let config = replidb_tls::client_config(ca, identity).expect("TLS client config");
        self.http = reqwest::Client::builder()
            .tls_backend_preconfigured((*config).clone())
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("https client");
        self.scheme = "https";
    }

    /// `url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url(), path)
    }

    /// The shared HTTP client of this node's tests.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Where the node keeps its data (kept across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.root().join("data")
    }

    /// The node's stdout+stderr, appended across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.root().join("node.log")
    }

    fn root(&self) -> &Path {
        self.dir.as_ref().expect("dir").path()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Panic with `msg` (the log tail is printed by `Drop`).
    fn fail(&self, msg: &str) -> ! {
        panic!("node {} ({}): {msg}", self.id, self.url());
    }

    // ---- HTTP helpers ----

    /// GET `path`, expecting a JSON answer with status 200.
    pub async fn get_json(&self, path: &str) -> Value {
        let r = self
            .http
            .get(self.at(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", self.id));
        let status = r.status();
        let text = r.text().await.expect("body");
        assert_eq!(status, 200, "GET {path} on {}: {text}", self.id);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("GET {path} on {}: not JSON ({e}): {text}", self.id))
    }

    /// `/status`.
    pub async fn status(&self) -> Value {
        self.get_json("/status").await
    }

    /// `/internal/digest`: `{"applied_lsn","digest","keys"}`.
    pub async fn digest(&self) -> Value {
        self.get_json("/internal/digest").await
    }

    /// `/status`, or `None` when the node does not answer (yet).
    pub async fn try_status(&self) -> Option<Value> {
        let r = self.http.get(self.at("/status")).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// `PUT /v1/kv/{key}` at the default write concern; expects 200 and
    /// returns the JSON answer.
    pub async fn put(&self, key: &str, value: impl Into<reqwest::Body>) -> Value {
        self.put_q(key, "", value).await
    }

    /// `POST /admin/promote` (no force) and its JSON answer, whatever the
    /// status (callers check `promoted` and `epoch`).
    pub async fn promote(&self) -> Value {
        let r = self
            .http
            .post(self.at("/admin/promote"))
            .send()
            .await
            .expect("POST /admin/promote");
        r.json().await.expect("a JSON answer to /admin/promote")
    }

    /// `PUT /v1/kv/{key}?{query}`; expects 200.
    pub async fn put_q(&self, key: &str, query: &str, value: impl Into<reqwest::Body>) -> Value {
        let url = format!("{}/v1/kv/{key}?{query}", self.url());
        let r = self
            .http
            .put(&url)
            .body(value)
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {key} on {}: {e}", self.id));
        let status = r.status();
        let text = r.text().await.expect("body");
        assert_eq!(status, 200, "PUT {key}?{query} on {}: {text}", self.id);
        serde_json::from_str(&text).expect("write answer is JSON")
    }

    /// `GET /v1/kv/{key}?{query}` → (status, body bytes).
    pub async fn get_raw(&self, key: &str, query: &str) -> (u16, Vec<u8>) {
        let url = format!("{}/v1/kv/{key}?{query}", self.url());
        let r = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {key} on {}: {e}", self.id));
        let status = r.status().as_u16();
        (status, r.bytes().await.expect("body").to_vec())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            let mut out = std::io::stderr().lock();
            let _ = writeln!(
                out,
                "\n----- {} ({}) log tail, full log kept at {} -----\n{}\n-----",
                self.id,
                self.url(),
                self.log_path().display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        self.kill9();
        if panicking {
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
    }
}

/// A static-coordinator cluster: one leader `n1` and followers `n2`, `n3`,
/// ... (ids sort in start order, which is the order `/status` lists
/// followers in, so follower `i` is `replica=i+1` of the seed endpoints).
pub struct Cluster {
    /// The leader.
    pub leader: Node,
    /// The followers, `n2` first.
    pub followers: Vec<Node>,
}

impl Cluster {
    /// Leader with `leader_args`; `n` followers with `follower_args`.
    pub async fn start(n: usize, leader_args: &[&str], follower_args: &[&str]) -> Cluster {
        Cluster::start_with(n, leader_args, |_| {
            follower_args.iter().map(|s| s.to_string()).collect()
        })
        .await
    }

    /// Like [`Cluster::start`], with per-follower arguments (`i` from 0).
    pub async fn start_with(
        n: usize,
        leader_args: &[&str],
        follower_args: impl Fn(usize) -> Vec<String>,
    ) -> Cluster {
        let leader = Node::start("n1", leader_args).await;
        let mut followers = Vec::with_capacity(n);
        for i in 0..n {
            let mut args = vec!["--follow".to_string(), leader.url()];
            args.extend(follower_args(i));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            followers.push(Node::start(&format!("n{}", i + 2), &args).await);
        }
        let cluster = Cluster { leader, followers };
        cluster.wait_streaming().await;
        cluster
    }

    /// Wait until the leader lists every follower as `streaming`.
    pub async fn wait_streaming(&self) {
        let ids: Vec<String> = self.followers.iter().map(|f| f.id.clone()).collect();
        wait_until(
            &format!("leader lists {ids:?} as streaming"),
            Duration::from_secs(20),
            async || {
                let Some(s) = self.leader.try_status().await else {
                    return false;
                };
                let empty = Vec::new();
                let listed = s["followers"].as_array().unwrap_or(&empty);
                ids.iter().all(|id| {
                    listed
                        .iter()
                        .any(|f| f["id"] == id.as_str() && f["state"] == "streaming")
                })
            },
        )
        .await;
        // And every follower knows the whole voting set (it learns members
        // from the leader's frames): a test that stops the leader right
        // away must not find a follower that cannot count a majority.
        let members = self.followers.len() + 1;
        for f in &self.followers {
            wait_until(
                &format!("{} knows all {members} voting members", f.id),
                Duration::from_secs(20),
                async || {
                    f.try_status()
                        .await
                        .is_some_and(|s| s["voting_set"].as_array().map(Vec::len) == Some(members))
                },
            )
            .await;
        }
    }

    /// Wait until every running follower's digest equals the leader's at
    /// the same `applied_lsn`; returns the leader's digest. The leader must
    /// not be taking writes meanwhile.
    pub async fn wait_converged(&self, timeout: Duration) -> Value {
        wait_converged(&self.leader, self.followers.iter(), timeout).await
    }
}

/// Wait until each of `followers` has the same digest as `leader` (at the
/// same applied LSN). Returns the leader's digest.
pub async fn wait_converged<'a>(
    leader: &Node,
    followers: impl Iterator<Item = &'a Node> + Clone,
    timeout: Duration,
) -> Value {
    let mut last: Vec<Value> = Vec::new();
    let started = Instant::now();
    loop {
        let want = leader.digest().await;
        last.clear();
        let mut all = true;
        for f in followers.clone() {
            let got = f.digest().await;
            all &= got == want;
            last.push(got);
        }
        if all {
            return want;
        }
        if started.elapsed() > timeout {
            panic!(
                "followers did not converge within {timeout:?}: leader {want}, followers {last:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Run the CLI: `replidb ARGS` → (exit code, stdout, stderr). Its session
/// token file goes to a directory of this test process, not the user's.
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let state = std::env::temp_dir().join(format!("replidb-e2e-state-{}", std::process::id()));
    let state = state.to_string_lossy().into_owned();
    cli_env(args, &[("XDG_STATE_HOME", state.as_str())])
}

/// [`cli`] with extra environment variables.
pub fn cli_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("REPLIDB_URL")
        .env_remove("REPLIDB_NO_SESSION")
        .env_remove("REPLIDB_TOKEN")
        .env_remove("REPLIDB_CACERT")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run replidb");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `n` nodes named `n1..` that each know all the others through `--peers`
/// (ports chosen first), started with `args` (the topology and the rest).
pub async fn start_peered(n: usize, args: &[&str]) -> Vec<Node> {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let peers = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::with_capacity(n);
    for (i, port) in ports.iter().enumerate() {
        let mut all = vec!["--peers", peers.as_str()];
        all.extend_from_slice(args);
        nodes.push(Node::start_on(&format!("n{}", i + 1), *port, &all).await);
    }
    nodes
}

/// Until every multi-leader node streams from all the others.
pub async fn wait_peers_connected(nodes: &[Node]) {
    for n in nodes {
        wait_until(
            &format!("{} connected to its peers", n.id),
            Duration::from_secs(20),
            || async {
                let s = n.status().await;
                s["peers"].as_array().is_some_and(|p| {
                    p.len() == nodes.len() - 1
                        && p.iter().all(|p| p["connected"] == serde_json::json!(true))
                })
            },
        )
        .await;
    }
}

/// The port `node` bound for the Redis protocol, from its log.
pub async fn resp_port(node: &Node) -> u16 {
    let log = node.log_path();
    wait_for(
        &format!("{} logs its redis protocol address", node.id),
        Duration::from_secs(10),
        async || {
            let text = std::fs::read_to_string(&log).ok()?;
            let line = text
                .lines()
                .rev()
                .find(|l| l.contains("serving redis protocol"))?;
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))?;
            addr.rsplit(':').next()?.parse().ok()
        },
    )
    .await
}

/// Send `sig` (SIGSTOP, SIGCONT...) to a running node's process.
pub fn signal(node: &Node, sig: libc::c_int) {
    let pid = node.pid().expect("running");
    // SAFETY: kill(2) on our own, unreaped child.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0);
}
