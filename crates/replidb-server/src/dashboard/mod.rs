//! The live dashboard: `GET /dashboard` (one HTML page, embedded),
//! `GET /dashboard/events` (Server-Sent Events, one `state` event per poll)
//! and `GET /dashboard/state` (the same document once, as JSON).
//!
//! One poller per [`Dashboard`] gathers the cluster view: every second it
//! asks each known node for `/status`, `/health` and `/metrics`, learns
//! further nodes from what those answer (the leader's followers, a
//! follower's leader, multi-leader peers, the leaderless ring), and keeps a
//! bounded history ([`DASHBOARD_HISTORY_SECONDS`]) of lag per node, write
//! and read rates, and timeline events (nodes down and back, failovers,
//! switchovers, rewinds, conflicts, hints, and whatever [`Dashboard::note`]
//! is told, e.g. the playground's actions). All connected pages share that
//! one poller; each gets the whole document in every event, so a page that
//! connects late (or reconnects) draws everything at once.
//!
//! The poller starts with the first request to a dashboard path and stops
//! after [`DASHBOARD_IDLE_STOP_SECONDS`] with no page connected, so a node
//! nobody watches does no work for it. The playground instead polls from
//! its start ([`Dashboard::keep_polling`]): its cluster exists to be
//! watched, and a switchover or a kill made from a shell before the page
//! is opened belongs on the timeline.
//!
//! Rates are derived, not counted per request: writes per second are the
//! advance of the writers' LSNs (one record per write; a transaction
//! counts once; leaderless: the nodes' LSNs over the replica count, as
//! each write lands on N nodes), reads per second are the advance of the nodes'
//! `replidb_http_requests_total` on the key-value and seed read routes
//! minus those writes (the route label does not carry the method).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::{json, Value};
use tokio::sync::watch;

/// Seconds of history (lag and rate samples, timeline events) kept and
/// sent to pages.
pub const DASHBOARD_HISTORY_SECONDS: u64 = 300;
/// Milliseconds between two polls of the cluster (and two events).
pub const DASHBOARD_POLL_INTERVAL_MS: u64 = 1000;
/// Milliseconds a node has to answer one poll request before it counts as
/// down for that poll.
pub const DASHBOARD_REQUEST_TIMEOUT_MS: u64 = 700;
/// Most nodes one dashboard tracks (seeds plus discovered ones).
pub const DASHBOARD_MAX_NODES: usize = 32;
/// Rounds of discovery within one poll (seed, its peers, theirs).
const DISCOVERY_ROUNDS: usize = 3;
/// Most timeline events kept (besides the time bound).
pub const DASHBOARD_MAX_EVENTS: usize = 500;
/// Seconds without a connected page after which the poller stops.
pub const DASHBOARD_IDLE_STOP_SECONDS: u64 = 60;

/// The page, embedded in the binary (plain HTML, CSS and JS; no CDN).
const PAGE: &str = include_str!("page.html");

/// Routes whose requests count as reads (plus the writes among them).
const READ_ROUTES: &[&str] = &[
    "/v1/kv/{*key}",
    "/v1/kv",
    "/v1/counter/{*key}",
    "/v1/set/{*key}",
    "/v1/map/{*key}",
    "/read",
    "/follower-read",
    "/read-with-repair",
];

/// What a dashboard shows and where it starts looking.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// Node base URLs polled first; others are discovered from them.
    pub seeds: Vec<String>,
    /// Shown as the page's title (e.g. "router 127.0.0.1:7000").
    pub title: String,
    /// Whether the page shows the playground's controls (the server that
    /// serves this dashboard also serves `/playground/*`).
    pub controls: bool,
    /// The client that polls the nodes; `None` builds a plain one. A node
    /// passes its own (which presents its peer token and trusts its
    /// `--tls-ca`), the router its health-check client.
    pub http: Option<reqwest::Client>,
}

/// One node as the last poll saw it.
#[derive(Debug, Clone, Default)]
struct NodeView {
    id: String,
    url: String,
    up: bool,
    status: Value,
    healthy: bool,
    health_error: Option<String>,
    /// `replidb_http_requests_total` on [`READ_ROUTES`].
    read_requests: u64,
}

/// One sample of the time series.
#[derive(Debug, Clone)]
struct Sample {
    t_ms: u64,
    lag: BTreeMap<String, Option<u64>>,
    writes_per_s: f64,
    reads_per_s: f64,
}

/// One timeline event.
#[derive(Debug, Clone)]
struct TimelineEvent {
    t_ms: u64,
    kind: String,
    node: String,
    text: String,
}

/// Everything the poller keeps between polls.
#[derive(Debug, Default)]
struct History {
    /// Known URLs in discovery order.
    urls: Vec<String>,
    /// The last view of each node, by id.
    nodes: BTreeMap<String, NodeView>,
    /// The id each URL answered with.
    id_of_url: BTreeMap<String, String>,
    samples: VecDeque<Sample>,
    events: VecDeque<TimelineEvent>,
    leader: Option<String>,
    /// Last poll's time, writer LSN sum and read request sum.
    last_totals: Option<(u64, u64, u64)>,
    /// How long the last poll took, in milliseconds.
    poll_ms: u64,
}

/// A dashboard server's state: one poller, shared by every page.
pub struct Dashboard {
    config: DashboardConfig,
    http: reqwest::Client,
    history: Mutex<History>,
    tx: watch::Sender<Arc<str>>,
    running: AtomicBool,
    /// Set by [`Dashboard::keep_polling`]: never stop for want of pages.
    always: AtomicBool,
    last_access_ms: AtomicU64,
    /// Wakes the poller before its next tick (after an action).
    poke: tokio::sync::Notify,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn normalize(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

impl Dashboard {
    /// A dashboard over the cluster reachable from `config.seeds`. Nothing
    /// is polled until a page asks.
    pub fn new(config: DashboardConfig) -> Arc<Dashboard> {
        // Each poll sets its own timeout (DASHBOARD_REQUEST_TIMEOUT_MS).
        let http = match config.http.clone() {
            Some(h) => h,
            None => {
                replidb_tls::install_default_provider();
                reqwest::Client::builder()
                    .timeout(Duration::from_millis(DASHBOARD_REQUEST_TIMEOUT_MS))
                    .build()
                    .unwrap_or_default()
            }
        };
        let mut history = History::default();
        for s in &config.seeds {
            let u = normalize(s);
            if !u.is_empty() && !history.urls.contains(&u) {
                history.urls.push(u);
            }
        }
        let (tx, _) = watch::channel(Arc::from(""));
        Arc::new(Dashboard {
            config,
            http,
            history: Mutex::new(history),
            tx,
            running: AtomicBool::new(false),
            always: AtomicBool::new(false),
            last_access_ms: AtomicU64::new(0),
            poke: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add an event to the timeline (e.g. "n2 killed from the page"); it
    /// goes out with a poll that starts at once.
    pub fn note(&self, kind: &str, node: &str, text: &str) {
        let mut h = self.lock();
        push_event(&mut h, now_ms(), kind, node, text.to_string());
        drop(h);
        self.poke.notify_one();
    }

    /// Poll from now on, whether or not a page is open, until the
    /// dashboard is dropped. Must be called within a Tokio runtime.
    pub fn keep_polling(self: &Arc<Self>) {
        self.always.store(true, Ordering::Release);
        self.touch();
    }

    /// Start the poller if it is not running, and remember the access.
    fn touch(self: &Arc<Self>) {
        self.last_access_ms.store(now_ms(), Ordering::Relaxed);
        if !self.running.swap(true, Ordering::AcqRel) {
            tokio::spawn(poller(Arc::downgrade(self)));
        }
    }

    /// The latest document, waiting (at most two poll intervals) for the
    /// first poll if none has finished yet.
    async fn current(self: &Arc<Self>) -> Arc<str> {
        self.touch();
        let mut rx = self.tx.subscribe();
        let wait = Duration::from_millis(2 * DASHBOARD_POLL_INTERVAL_MS);
        let _ = tokio::time::timeout(wait, rx.wait_for(|d| !d.is_empty())).await;
        let doc = rx.borrow().clone();
        doc
    }

    /// One poll: ask every known node, learn new ones, update history and
    /// publish the document.
    async fn poll_once(&self) {
        // Nodes learnt from one answer are asked in the same poll (a
        // follower's dashboard shows the whole cluster at once).
        let started = std::time::Instant::now();
        let mut asked: Vec<String> = Vec::new();
        let mut seen_ids: Vec<String> = Vec::new();
        let mut t = now_ms();
        for _round in 0..DISCOVERY_ROUNDS {
            let urls: Vec<String> = {
                let h = self.lock();
                h.urls
                    .iter()
                    .filter(|u| !asked.contains(u))
                    .cloned()
                    .collect()
            };
            if urls.is_empty() {
                break;
            }
            asked.extend(urls.iter().cloned());
            let answers = futures::future::join_all(urls.iter().map(|u| self.ask(u.clone()))).await;
            t = now_ms();
            let mut h = self.lock();
            let mut discovered: Vec<String> = Vec::new();
            for (url, answer) in urls.iter().zip(answers) {
                match answer {
                    Some(mut view) => {
                        // Two URLs for one node (a proxy in front of it): the
                        // first one known wins.
                        if seen_ids.contains(&view.id) {
                            continue;
                        }
                        seen_ids.push(view.id.clone());
                        discovered.extend(peer_urls(&view.status));
                        h.id_of_url.insert(url.clone(), view.id.clone());
                        // A seed that was down when first asked was shown
                        // under its URL: now it has a name.
                        if view.id != *url && h.nodes.get(url).is_some_and(|n| n.id == *url) {
                            h.nodes.remove(url);
                        }
                        view.url = url.clone();
                        let was_up = h.nodes.get(&view.id).map(|n| n.up);
                        if was_up == Some(false) {
                            push_event(
                                &mut h,
                                t,
                                "up",
                                &view.id,
                                format!("{} answers again", view.id),
                            );
                        }
                        detect_changes(&mut h, t, &view);
                        h.nodes.insert(view.id.clone(), view);
                    }
                    None => {
                        // A discovered URL that has never answered is not
                        // shown (e.g. the address a cut link points at).
                        let is_seed = self.config.seeds.iter().any(|s| normalize(s) == *url);
                        if !is_seed && !h.id_of_url.contains_key(url) {
                            continue;
                        }
                        let id = h.id_of_url.get(url).cloned().unwrap_or_else(|| url.clone());
                        if seen_ids.contains(&id) {
                            continue;
                        }
                        let entry = h.nodes.entry(id.clone()).or_insert_with(|| NodeView {
                            id: id.clone(),
                            url: url.clone(),
                            up: true,
                            ..NodeView::default()
                        });
                        if entry.up {
                            entry.up = false;
                            entry.healthy = false;
                            entry.health_error = Some("does not answer".into());
                            push_event(&mut h, t, "down", &id, format!("{id} does not answer"));
                        }
                    }
                }
            }
            for u in discovered {
                let u = normalize(&u);
                if !u.is_empty() && !h.urls.contains(&u) && h.urls.len() < DASHBOARD_MAX_NODES {
                    h.urls.push(u);
                }
            }
        }
        let mut h = self.lock();
        h.poll_ms = started.elapsed().as_millis() as u64;
        detect_leader_change(&mut h, t);
        sample(&mut h, t);
        let horizon = t.saturating_sub(DASHBOARD_HISTORY_SECONDS * 1000);
        while h.samples.front().is_some_and(|s| s.t_ms < horizon) {
            h.samples.pop_front();
        }
        while h.events.front().is_some_and(|e| e.t_ms < horizon) {
            h.events.pop_front();
        }
        let doc = document(&h, &self.config, t);
        drop(h);
        self.tx.send_replace(Arc::from(doc.to_string()));
    }

    /// `/status`, `/health` and `/metrics` of one node; `None` if it does
    /// not answer `/status`.
    async fn ask(&self, url: String) -> Option<NodeView> {
        let status = async {
            let r = self
                .http
                .get(format!("{url}/status"))
                .timeout(Duration::from_millis(DASHBOARD_REQUEST_TIMEOUT_MS))
                .send()
                .await
                .ok()?;
            crate::peer_answer::json::<Value>(r, crate::peer_answer::CONTROL_ANSWER_BYTES_MAX)
                .await
                .ok()
        };
        let health = async {
            let r = self
                .http
                .get(format!("{url}/health"))
                .timeout(Duration::from_millis(DASHBOARD_REQUEST_TIMEOUT_MS))
                .send()
                .await
                .ok()?;
            let ok = r.status().is_success();
            let body =
                crate::peer_answer::json::<Value>(r, crate::peer_answer::CONTROL_ANSWER_BYTES_MAX)
                    .await
                    .unwrap_or(Value::Null);
            Some((ok, body))
        };
        let metrics = async {
            let r = self
                .http
                .get(format!("{url}/metrics"))
                .timeout(Duration::from_millis(DASHBOARD_REQUEST_TIMEOUT_MS))
                .send()
                .await
                .ok()?;
            let body = crate::peer_answer::bytes(r, crate::peer_answer::CONTROL_ANSWER_BYTES_MAX)
                .await
                .ok()?;
            String::from_utf8(body.to_vec()).ok()
        };
        let (status, health, metrics) = tokio::join!(status, health, metrics);
        let status = status?;
        let id = status["id"].as_str()?.to_string();
        let (healthy, health_error) = match health {
            Some((ok, body)) => (
                ok,
                (!ok).then(|| {
                    body["error"]
                        .as_str()
                        .or(body["reason"].as_str())
                        .unwrap_or("unhealthy")
                        .to_string()
                }),
            ),
            None => (false, Some("/health did not answer".to_string())),
        };
        let read_requests = metrics.map(|m| read_requests(&m, &id)).unwrap_or_default();
        Some(NodeView {
            id,
            url,
            up: true,
            status,
            healthy,
            health_error,
            read_requests,
        })
    }
}

/// Poll until the dashboard is dropped or nobody has looked for
/// [`DASHBOARD_IDLE_STOP_SECONDS`].
async fn poller(dash: Weak<Dashboard>) {
    let mut tick = tokio::time::interval(Duration::from_millis(DASHBOARD_POLL_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Some(d) = dash.upgrade() else { return };
        tokio::select! {
            _ = tick.tick() => {}
            _ = d.poke.notified() => {}
        }
        let idle_ms = now_ms().saturating_sub(d.last_access_ms.load(Ordering::Relaxed));
        if !d.always.load(Ordering::Acquire)
            && d.tx.receiver_count() == 0
            && idle_ms > DASHBOARD_IDLE_STOP_SECONDS * 1000
        {
            d.running.store(false, Ordering::Release);
            return;
        }
        d.poll_once().await;
    }
}

fn push_event(h: &mut History, t_ms: u64, kind: &str, node: &str, text: String) {
    h.events.push_back(TimelineEvent {
        t_ms,
        kind: kind.to_string(),
        node: node.to_string(),
        text,
    });
    while h.events.len() > DASHBOARD_MAX_EVENTS {
        h.events.pop_front();
    }
}

/// Other nodes a `/status` document names.
fn peer_urls(status: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(l) = status["leader"].as_str() {
        out.push(l.to_string());
    }
    for list in [&status["followers"], &status["peers"]] {
        for f in list.as_array().into_iter().flatten() {
            for k in ["addr", "url"] {
                if let Some(u) = f[k].as_str() {
                    out.push(u.to_string());
                }
            }
        }
    }
    for list in [&status["voting_set"], &status["ring"]["members"]] {
        for u in list.as_array().into_iter().flatten() {
            if let Some(u) = u.as_str() {
                out.push(u.to_string());
            }
        }
    }
    out.retain(|u| u.starts_with("http://") || u.starts_with("https://"));
    out
}

/// Sum of `replidb_http_requests_total` for `id` on the read routes, from
/// Prometheus text.
fn read_requests(metrics: &str, id: &str) -> u64 {
    let node_label = format!("node_id=\"{id}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("replidb_http_requests_total{") && l.contains(&node_label))
        .filter(|l| {
            READ_ROUTES
                .iter()
                .any(|r| l.contains(&format!("route=\"{r}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// How much a counter grew since the last status seen (even one from
/// before the node went down); a counter that went down was reset by a
/// restart, so all of it is new.
fn grown(new: u64, old: u64) -> u64 {
    if new >= old {
        new - old
    } else {
        new
    }
}

/// Events a node's own counters reveal: rewinds (a returning old leader
/// rewinds as it rejoins, so its first status after a restart counts),
/// conflicts, hints.
fn detect_changes(h: &mut History, t: u64, new: &NodeView) {
    let Some(old) = h.nodes.get(&new.id).map(|o| o.status.clone()) else {
        return;
    };
    let (o, n) = (&old, &new.status);
    let id = new.id.clone();
    let rolled = grown(num(&n["rollback_records"]), num(&o["rollback_records"]));
    if rolled > 0 {
        push_event(
            h,
            t,
            "rewind",
            &id,
            format!("{id} rewound {rolled} record(s) to follow the new leader"),
        );
    }
    let conflicts = |s: &Value| -> u64 {
        s["conflicts"]
            .as_object()
            .map(|m| m.values().map(num).sum())
            .unwrap_or_else(|| num(&s["conflicts"]))
    };
    let c = grown(conflicts(n), conflicts(o));
    if c > 0 {
        push_event(
            h,
            t,
            "conflict",
            &id,
            format!("{id} resolved {c} conflicting write(s)"),
        );
    }
    let hinted = num(&n["ring"]["hints_pending"]).saturating_sub(num(&o["ring"]["hints_pending"]));
    if hinted > 0 {
        push_event(
            h,
            t,
            "hint",
            &id,
            format!("{id} holds {hinted} more hint(s) for a down replica"),
        );
    }
    let delivered = grown(
        num(&n["ring"]["hints_delivered"]),
        num(&o["ring"]["hints_delivered"]),
    );
    if delivered > 0 {
        push_event(
            h,
            t,
            "hint",
            &id,
            format!("{id} delivered {delivered} hint(s)"),
        );
    }
}

/// The leader in the highest epoch among nodes that answer.
fn current_leader(h: &History) -> Option<(String, u64)> {
    h.nodes
        .values()
        .filter(|n| n.up && n.status["role"] == "leader")
        .map(|n| (n.id.clone(), num(&n.status["epoch"])))
        .max_by_key(|(_, e)| *e)
}

fn detect_leader_change(h: &mut History, t: u64) {
    // Multi-leader and leaderless nodes all say "leader": nobody fails
    // over there.
    let single = h
        .nodes
        .values()
        .filter_map(|n| n.status["topology"].as_str())
        .all(|t| t == "single-leader");
    if !single {
        return;
    }
    let Some((new, epoch)) = current_leader(h) else {
        return;
    };
    let old = h.leader.replace(new.clone());
    let Some(old) = old.filter(|o| *o != new) else {
        return;
    };
    // A switchover leaves the old leader up, following; a failover
    // replaces one that is gone (or cut off).
    let old_up = h.nodes.get(&old).is_some_and(|n| n.up);
    let (kind, how) = if old_up {
        ("switchover", "handed leadership to")
    } else {
        ("failover", "failed over to")
    };
    push_event(
        h,
        t,
        kind,
        &new,
        format!("{old} {how} {new} (epoch {epoch})"),
    );
}

/// Lag per node and rates since the last poll.
fn sample(h: &mut History, t: u64) {
    let mut lag = BTreeMap::new();
    let mut writes = 0u64;
    let mut reads = 0u64;
    let mut replicas = 1u64;
    for n in h.nodes.values() {
        let s = &n.status;
        let topology = s["topology"].as_str().unwrap_or("single-leader");
        let is_leader = s["role"] == "leader" && topology == "single-leader";
        if !is_leader {
            let l = if !n.up {
                None
            } else if topology == "single-leader" {
                Some(num(&s["lag_ms"]))
            } else {
                s["peers"]
                    .as_array()
                    .map(|ps| ps.iter().map(|p| num(&p["lag_ms"])).max().unwrap_or(0))
                    .or(Some(0))
            };
            lag.insert(n.id.clone(), l);
        }
        reads += n.read_requests;
        writes += match topology {
            "single-leader" if is_leader => num(&s["last_lsn"]),
            "single-leader" => 0,
            // Each write lands in the logs of its N replicas.
            "leaderless" => {
                replicas = replicas.max(num(&s["ring"]["replicas"]));
                num(&s["last_lsn"])
            }
            _ => num(&s["origins"][n.id.as_str()]),
        };
    }
    writes /= replicas;
    let (writes_per_s, reads_per_s) = match h.last_totals {
        Some((t0, w0, r0)) if t > t0 => {
            let secs = (t - t0) as f64 / 1000.0;
            // A new leader's LSN, or a restarted node's counters, may go
            // down: no rate for that poll.
            let w = writes.saturating_sub(w0) as f64;
            let r = reads.saturating_sub(r0) as f64;
            (w / secs, ((r - w).max(0.0)) / secs)
        }
        _ => (0.0, 0.0),
    };
    h.last_totals = Some((t, writes, reads));
    h.samples.push_back(Sample {
        t_ms: t,
        lag,
        writes_per_s,
        reads_per_s,
    });
}

/// The document every page gets.
fn document(h: &History, config: &DashboardConfig, t: u64) -> Value {
    // In discovery order (seeds first), so rows do not jump around.
    let pos = |n: &NodeView| {
        h.urls
            .iter()
            .position(|u| *u == n.url)
            .unwrap_or(usize::MAX)
    };
    let mut ordered: Vec<&NodeView> = h.nodes.values().collect();
    ordered.sort_by_key(|n| (pos(n), n.id.clone()));
    let nodes: Vec<Value> = ordered.into_iter().map(node_json).collect();
    let topology = h
        .nodes
        .values()
        .find_map(|n| n.status["topology"].as_str())
        .unwrap_or("single-leader");
    json!({
        "t_ms": t,
        "title": config.title,
        "controls": config.controls,
        "topology": topology,
        "leader": h.leader,
        "poll_interval_ms": DASHBOARD_POLL_INTERVAL_MS,
        "poll_ms": h.poll_ms,
        "history_seconds": DASHBOARD_HISTORY_SECONDS,
        "nodes": nodes,
        "samples": h.samples.iter().map(|s| json!({
            "t_ms": s.t_ms,
            "lag_ms": s.lag,
            "writes_per_s": (s.writes_per_s * 10.0).round() / 10.0,
            "reads_per_s": (s.reads_per_s * 10.0).round() / 10.0,
        })).collect::<Vec<_>>(),
        "events": h.events.iter().map(|e| json!({
            "t_ms": e.t_ms, "kind": e.kind, "node": e.node, "text": e.text,
        })).collect::<Vec<_>>(),
    })
}

fn node_json(n: &NodeView) -> Value {
    let s = &n.status;
    json!({
        "id": n.id,
        "url": n.url,
        "up": n.up,
        "healthy": n.up && n.healthy,
        "health_error": n.health_error,
        "role": if n.up { s["role"].clone() } else { json!("down") },
        "last_role": s["role"],
        "epoch": s["epoch"],
        "last_lsn": s["last_lsn"],
        "flush_lsn": s["flush_lsn"],
        "applied_lsn": s["applied_lsn"],
        "commit_lsn": s["commit_lsn"],
        "lag_ms": s["lag_ms"],
        "connected": s["connected"],
        "leader_id": s["leader_id"],
        "topology": s["topology"],
        "origins": s["origins"],
        "conflicts": s["conflicts"],
        "ring": s["ring"],
        "followers": s["followers"],
    })
}

/// The dashboard's routes, to merge into a server's router.
pub fn routes(dash: Arc<Dashboard>) -> axum::Router {
    axum::Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/", get(page_slash))
        .route("/dashboard/events", get(events))
        .route("/dashboard/state", get(state))
        .with_state(dash)
}

/// `GET /dashboard`: the page.
#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "dashboard",
    operation_id = "dashboard_page",
    description = "The live dashboard: one HTML page that draws the cluster from `/dashboard/events`.",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)),
)]
pub(crate) async fn page(State(dash): State<Arc<Dashboard>>) -> Response {
    dash.touch();
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE)).into_response()
}

/// `GET /dashboard/`: the page too.
#[utoipa::path(
    get,
    path = "/dashboard/",
    tag = "dashboard",
    operation_id = "dashboard_page_slash",
    description = "The same page as `/dashboard`.",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)),
)]
pub(crate) async fn page_slash(state: State<Arc<Dashboard>>) -> Response {
    page(state).await
}

/// `GET /dashboard/state`: the current document.
#[utoipa::path(
    get,
    path = "/dashboard/state",
    tag = "dashboard",
    operation_id = "dashboard_state",
    description = "The dashboard's current document (nodes, lag and rate samples, timeline events), as JSON.",
    responses(
        (status = 200, description = "The document", body = Object),
        (status = 503, description = "No poll has finished yet (`unavailable`, with `Retry-After`)", body = crate::api::openapi::ErrorBody),
    ),
)]
pub(crate) async fn state(State(dash): State<Arc<Dashboard>>) -> Response {
    let doc = dash.current().await;
    if doc.is_empty() {
        // Labelled JSON, an empty body was not: say why there is nothing.
        return crate::api::ApiError::unavailable(
            "the dashboard has not finished its first poll of the cluster yet; retry",
        )
        .into_response();
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}

/// `GET /dashboard/events`: one `state` event per poll, the first at once
/// if a poll has finished.
#[utoipa::path(
    get,
    path = "/dashboard/events",
    tag = "dashboard",
    operation_id = "dashboard_events",
    description = "Server-Sent Events: one `state` event (the `/dashboard/state` document) per poll of the cluster, for as long as the client listens.",
    responses((status = 200, description = "An endless event stream", content_type = "text/event-stream", body = String)),
)]
pub(crate) async fn events(
    State(dash): State<Arc<Dashboard>>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    dash.touch();
    let mut rx = dash.tx.subscribe();
    rx.mark_changed();
    let stream = futures::stream::unfold((rx, dash), |(mut rx, dash)| async move {
        loop {
            rx.changed().await.ok()?;
            dash.last_access_ms.store(now_ms(), Ordering::Relaxed);
            let doc = rx.borrow_and_update().clone();
            if !doc.is_empty() {
                return Some((Ok(Event::default().event("state").data(&*doc)), (rx, dash)));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_requests_sums_read_routes_of_one_node() {
        let m = "\
replidb_http_requests_total{node_id=\"n1\",route=\"/v1/kv/{*key}\",status=\"200\"} 5
replidb_http_requests_total{node_id=\"n1\",route=\"/status\",status=\"200\"} 50
replidb_http_requests_total{node_id=\"n2\",route=\"/v1/kv/{*key}\",status=\"200\"} 7
replidb_http_requests_total{node_id=\"n1\",route=\"/read\",status=\"404\"} 2
";
        assert_eq!(read_requests(m, "n1"), 7);
        assert_eq!(read_requests(m, "n2"), 7);
    }

    #[test]
    fn peer_urls_from_leader_and_multi_leader_status() {
        let s = json!({
            "leader": "http://a:1",
            "followers": [{"addr": "http://b:2"}],
            "peers": [{"url": "http://c:3"}],
            "voting_set": ["http://a:1", "not a url"],
        });
        let u = peer_urls(&s);
        assert!(u.contains(&"http://b:2".to_string()));
        assert!(u.contains(&"http://c:3".to_string()));
        assert!(!u.contains(&"not a url".to_string()));
    }

    fn up(id: &str, status: Value) -> NodeView {
        NodeView {
            id: id.into(),
            url: format!("http://{id}"),
            up: true,
            status,
            ..NodeView::default()
        }
    }

    #[test]
    fn rewinds_conflicts_and_hints_become_events() {
        let mut h = History::default();
        let before = json!({"rollback_records": 0, "conflicts": {"lww": 1}, "ring": {"hints_pending": 0, "hints_delivered": 0}});
        h.nodes.insert("n1".into(), up("n1", before));
        let after = json!({"rollback_records": 3, "conflicts": {"lww": 2, "siblings": 1}, "ring": {"hints_pending": 2, "hints_delivered": 1}});
        detect_changes(&mut h, 5, &up("n1", after));
        let kinds: Vec<&str> = h.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["rewind", "conflict", "hint", "hint"]);
        assert!(h.events[0].text.contains("3 record"));
        assert!(h.events[1].text.contains("2 conflicting"));
        // Down, then back after a restart that reset the counter to 2: a
        // rewind of 2.
        let mut down = up("n1", json!({"rollback_records": 3}));
        down.up = false;
        h.nodes.insert("n1".into(), down);
        h.events.clear();
        detect_changes(&mut h, 9, &up("n1", json!({"rollback_records": 2})));
        assert_eq!(h.events.len(), 1);
        assert!(h.events[0].text.contains("rewound 2"));
    }

    #[test]
    fn rates_come_from_the_leaders_lsn_and_read_requests() {
        let mut h = History::default();
        let mut leader = up(
            "n1",
            json!({"role": "leader", "topology": "single-leader", "last_lsn": 100}),
        );
        leader.read_requests = 50;
        h.nodes.insert("n1".into(), leader.clone());
        h.nodes.insert(
            "n2".into(),
            up(
                "n2",
                json!({"role": "follower", "topology": "single-leader", "lag_ms": 40}),
            ),
        );
        sample(&mut h, 1_000);
        leader.status["last_lsn"] = json!(110);
        leader.read_requests = 80;
        h.nodes.insert("n1".into(), leader);
        sample(&mut h, 3_000);
        let s = h.samples.back().expect("a sample");
        assert_eq!(s.writes_per_s, 5.0);
        // 30 requests on read routes, 10 of them the writes: 20 reads in 2 s.
        assert_eq!(s.reads_per_s, 10.0);
        assert_eq!(s.lag.get("n2"), Some(&Some(40)));
        assert!(!s.lag.contains_key("n1"));
    }

    #[test]
    fn a_new_leader_with_the_old_one_up_is_a_switchover() {
        let mut h = History::default();
        let view = |id: &str, role: &str, epoch: u64| NodeView {
            id: id.into(),
            url: format!("http://{id}"),
            up: true,
            status: json!({"id": id, "role": role, "epoch": epoch}),
            ..NodeView::default()
        };
        h.nodes.insert("n1".into(), view("n1", "leader", 1));
        h.nodes.insert("n2".into(), view("n2", "follower", 1));
        detect_leader_change(&mut h, 1);
        assert!(h.events.is_empty());
        h.nodes.insert("n1".into(), view("n1", "follower", 2));
        h.nodes.insert("n2".into(), view("n2", "leader", 2));
        detect_leader_change(&mut h, 2);
        assert_eq!(h.events.back().map(|e| e.kind.as_str()), Some("switchover"));
        if let Some(n) = h.nodes.get_mut("n2") {
            n.up = false;
        }
        h.nodes.insert("n1".into(), view("n1", "leader", 3));
        detect_leader_change(&mut h, 3);
        assert_eq!(h.events.back().map(|e| e.kind.as_str()), Some("failover"));
    }
}
