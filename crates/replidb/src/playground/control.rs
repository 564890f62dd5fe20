//! The playground's own HTTP server: the live dashboard (with controls)
//! and the actions the page drives, each an endpoint of its own:
//!
//! | endpoint | what it does |
//! | --- | --- |
//! | `GET /playground/nodes` | every child: id, URL, pid, running, paused |
//! | `POST /playground/nodes/{id}/kill` | SIGKILL (the node stays down) |
//! | `POST /playground/nodes/{id}/restart` | stop it if running (SIGTERM), start it again: same flags, same data, log appended |
//! | `POST /playground/nodes/{id}/pause` / `resume` | SIGSTOP / SIGCONT: a node that hangs without dying |
//! | `POST /playground/nodes/{id}/lag?delay=DUR[..DUR]` | restart it with that artificial lag (`0ms` removes it): a follower's `--replication-delay`, a multi-leader or leaderless node's `--link-delay` |
//! | `POST /playground/links/{a}/{b}/cut` / `heal` | single-leader: the follower of the two follows an address that drops every connection, so its stream from the leader is cut; `heal` points it at the current leader again |
//! | `POST /playground/switchover?to=ID` | asks the leader for `/admin/switchover` to ID |
//! | `POST /playground/write?key=K` (body: the value) | writes through the router (multi-leader, leaderless: the first running node, or `&node=ID`) with `w=1` |
//! | `GET /playground/read?key=K` | reads K from every node at once (eventual consistency): the page shows them side by side |
//!
//! Every action is noted on the dashboard's timeline.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use replidb_server::dashboard::{Dashboard, DashboardConfig};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::NodeProc;

/// The playground's children, shared by the watcher and the control API.
pub(super) type Procs = Arc<Mutex<Vec<NodeProc>>>;

/// Milliseconds a node has to answer one request of the control API
/// (reads, writes, status) before the action reports it as failed.
const CONTROL_REQUEST_TIMEOUT_MS: u64 = 2_000;
/// Milliseconds a switchover may take (passed to the leader).
const SWITCHOVER_TIMEOUT_MS: u64 = 5_000;
/// Seconds a stopping node gets after SIGTERM before SIGKILL.
const STOP_GRACE_SECONDS: u64 = 5;

/// Why an action failed; each maps to an HTTP status.
#[derive(Debug)]
enum ControlError {
    /// No child has that id (404).
    UnknownNode(String),
    /// The request is malformed (400).
    BadRequest(String),
    /// The action does not apply in this state or topology (409).
    NotApplicable(String),
    /// A node answered with an error: its status and body, passed on.
    Node(StatusCode, String),
    /// The playground could not do it (500).
    Failed(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::UnknownNode(id) => write!(f, "no node {id:?} in this playground"),
            ControlError::BadRequest(m) | ControlError::NotApplicable(m) => f.write_str(m),
            ControlError::Node(s, b) => write!(f, "the node answered {s}: {b}"),
            ControlError::Failed(m) => f.write_str(m),
        }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ControlError::UnknownNode(_) => (StatusCode::NOT_FOUND, "unknown_node"),
            ControlError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ControlError::NotApplicable(_) => (StatusCode::CONFLICT, "not_applicable"),
            ControlError::Node(s, _) => (*s, "node_error"),
            ControlError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "failed"),
        };
        let body = json!({"error": {"code": code, "message": self.to_string()}});
        (status, Json(body)).into_response()
    }
}

type ControlResult = Result<Response, ControlError>;

/// The control API's state.
pub(super) struct Control {
    procs: Procs,
    dash: Arc<Dashboard>,
    http: reqwest::Client,
    topology: String,
    /// Ids of nodes stopped with SIGSTOP.
    paused: std::sync::Mutex<BTreeSet<String>>,
    /// An address that drops every connection: a follower pointed at it
    /// has its link to the leader cut.
    blackhole: String,
}

impl Control {
    /// Bind `addr` (or, if `fixed` is false and it is taken, any free
    /// port), start the blackhole, and return the state, the listener and
    /// the dashboard URL.
    pub(super) async fn bind(
        procs: Procs,
        topology: &str,
        addr: std::net::SocketAddr,
        fixed: bool,
        http_client: impl Fn(Duration) -> anyhow::Result<reqwest::Client>,
    ) -> anyhow::Result<(Arc<Control>, tokio::net::TcpListener, String)> {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) if fixed => anyhow::bail!("--dashboard-port: cannot listen on {addr}: {e}"),
            Err(_) => tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?,
        };
        let url = format!("http://{}", listener.local_addr()?);
        let hole = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let blackhole = format!("http://{}", hole.local_addr()?);
        tokio::spawn(async move {
            // Accept and drop at once: the connection is refused as if the
            // network between the two nodes were cut.
            while let Ok((sock, _)) = hole.accept().await {
                drop(sock);
            }
        });
        let seeds: Vec<String> = procs
            .lock()
            .await
            .iter()
            .filter(|n| n.id != "router")
            .map(|n| n.url.clone())
            .collect();
        let dash = Dashboard::new(DashboardConfig {
            seeds,
            title: format!("replidb playground ({topology})"),
            controls: true,
            // The dashboard's own polls need the playground's CA too.
            http: Some(http_client(Duration::from_secs(2))?),
        });
        // Watched from the start: what the user does from a shell before
        // opening the page (a kill, a switchover) is on its timeline.
        dash.keep_polling();
        let http = http_client(Duration::from_millis(CONTROL_REQUEST_TIMEOUT_MS))?;
        let control = Arc::new(Control {
            procs,
            dash,
            http,
            topology: topology.to_string(),
            paused: std::sync::Mutex::new(BTreeSet::new()),
            blackhole,
        });
        Ok((control, listener, format!("{url}/dashboard")))
    }

    fn paused(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node's URL, or 404.
    async fn url_of(&self, id: &str) -> Result<String, ControlError> {
        self.procs
            .lock()
            .await
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.url.clone())
            .ok_or_else(|| ControlError::UnknownNode(id.to_string()))
    }

    /// `/status` of every node that answers, by id.
    async fn statuses(&self) -> Vec<(String, String, Option<Value>)> {
        let nodes: Vec<(String, String)> = self
            .procs
            .lock()
            .await
            .iter()
            .filter(|n| n.id != "router")
            .map(|n| (n.id.clone(), n.url.clone()))
            .collect();
        let asks = nodes.into_iter().map(|(id, url)| async move {
            let s = match self.http.get(format!("{url}/status")).send().await {
                Ok(r) => r.json::<Value>().await.ok(),
                Err(_) => None,
            };
            (id, url, s)
        });
        futures::future::join_all(asks).await
    }

    /// The leader in the highest epoch among the nodes that answer.
    async fn leader(&self) -> Result<(String, String), ControlError> {
        self.statuses()
            .await
            .into_iter()
            .filter_map(|(id, url, s)| {
                let s = s?;
                (s["role"] == "leader").then(|| (id, url, s["epoch"].as_u64().unwrap_or(0)))
            })
            .max_by_key(|(_, _, e)| *e)
            .map(|(id, url, _)| (id, url))
            .ok_or_else(|| ControlError::NotApplicable("no node answers as leader".into()))
    }

    fn single_leader(&self, what: &str) -> Result<(), ControlError> {
        if self.topology == "single-leader" {
            Ok(())
        } else {
            Err(ControlError::NotApplicable(format!(
                "{what} applies to the single-leader playground; this one is {}",
                self.topology
            )))
        }
    }
}

/// The control API and the dashboard.
pub(super) fn app(control: Arc<Control>) -> axum::Router {
    let dash = control.dash.clone();
    axum::Router::new()
        .route(
            "/",
            get(|| async { axum::response::Redirect::to("/dashboard") }),
        )
        .route("/playground/nodes", get(list))
        .route("/playground/nodes/{id}/{action}", post(node_action))
        .route("/playground/links/{a}/{b}/{action}", post(link_action))
        .route("/playground/switchover", post(switchover))
        .route("/playground/write", post(write))
        .route("/playground/read", get(read))
        .with_state(control)
        .merge(replidb_server::dashboard::routes(dash))
}

/// `GET /playground/nodes`.
async fn list(State(c): State<Arc<Control>>) -> Json<Value> {
    let paused = c.paused().clone();
    let mut procs = c.procs.lock().await;
    let nodes: Vec<Value> = procs
        .iter_mut()
        .map(|n| {
            let running = n.is_running();
            json!({
                "id": n.id,
                "url": n.url,
                "pid": running.then(|| n.pid()),
                "running": running,
                "paused": paused.contains(&n.id),
                "restart_command": n.restart_command(),
            })
        })
        .collect();
    Json(json!({ "topology": c.topology, "nodes": nodes }))
}

/// Query of `/playground/nodes/{id}/lag`.
#[derive(Deserialize)]
struct LagQuery {
    delay: Option<String>,
}

/// `POST /playground/nodes/{id}/{kill|restart|pause|resume|lag}`.
async fn node_action(
    State(c): State<Arc<Control>>,
    UrlPath((id, action)): UrlPath<(String, String)>,
    Query(q): Query<LagQuery>,
) -> ControlResult {
    // Single-leader: a node restarts in the role the cluster has for it
    // now, not the one it was started in (after a switchover the first
    // leader follows): it follows the current leader, or leads if it is
    // the leader. With no leader known its flags stay as they are.
    let follow: Option<Option<String>> = if c.topology == "single-leader" && action == "restart" {
        // The leader itself may be the one down: then the followers name
        // it, and it restarts leading.
        let nodes = super::node_urls(&c.procs.lock().await);
        super::current_leader(&c.http, nodes)
            .await
            .map(|(leader, url)| (leader != id).then_some(url))
    } else if c.topology == "single-leader" && action == "lag" {
        match c.leader().await {
            Ok((leader, url)) if leader != id => Some(Some(url)),
            Ok(_) if action == "lag" => {
                return Err(ControlError::NotApplicable(format!(
                    "{id} leads: the leader has no apply lag; set the lag of a follower"
                )))
            }
            Ok(_) => Some(None),
            Err(e) if action == "lag" => return Err(e),
            Err(_) => None,
        }
    } else {
        None
    };
    let mut procs = c.procs.lock().await;
    let n = procs
        .iter_mut()
        .find(|n| n.id == id)
        .ok_or_else(|| ControlError::UnknownNode(id.clone()))?;
    let text = match action.as_str() {
        "kill" => {
            let pid = n
                .running_pid()
                .ok_or_else(|| ControlError::NotApplicable(format!("{id} is not running")))?;
            signal(pid, libc::SIGKILL);
            c.paused().remove(&id);
            format!("{id} killed (SIGKILL, pid {pid})")
        }
        "restart" => {
            c.paused().remove(&id);
            if let Some(f) = &follow {
                if id != "router" {
                    n.set_flag("--follow", f.as_deref());
                }
            }
            n.stop().await;
            n.respawn()
                .map_err(|e| ControlError::Failed(e.to_string()))?;
            format!("{id} restarted (pid {})", n.pid())
        }
        "pause" | "resume" => {
            let pid = n
                .running_pid()
                .ok_or_else(|| ControlError::NotApplicable(format!("{id} is not running")))?;
            if action == "pause" {
                signal(pid, libc::SIGSTOP);
                c.paused().insert(id.clone());
                format!("{id} paused (SIGSTOP): it holds its connections and answers nothing")
            } else {
                signal(pid, libc::SIGCONT);
                c.paused().remove(&id);
                format!("{id} resumed (SIGCONT)")
            }
        }
        "lag" => {
            let delay = q.delay.unwrap_or_else(|| "0ms".to_string());
            let range: replidb_core::DurationRange = delay
                .parse()
                .map_err(|e| ControlError::BadRequest(format!("delay={delay:?}: {e}")))?;
            if id == "router" {
                return Err(ControlError::NotApplicable("the router has no lag".into()));
            }
            let flag = if c.topology == "single-leader" {
                if let Some(f) = &follow {
                    n.set_flag("--follow", f.as_deref());
                }
                "--replication-delay"
            } else {
                "--link-delay"
            };
            n.set_flag(flag, (!range.is_zero()).then_some(delay.as_str()));
            c.paused().remove(&id);
            n.stop().await;
            n.respawn()
                .map_err(|e| ControlError::Failed(e.to_string()))?;
            if range.is_zero() {
                format!("{id} restarted without artificial lag")
            } else {
                format!("{id} restarted with {flag} {delay}")
            }
        }
        other => {
            return Err(ControlError::BadRequest(format!(
                "unknown action {other:?}: kill, restart, pause, resume or lag"
            )))
        }
    };
    drop(procs);
    c.dash.note("action", &id, &text);
    Ok(Json(json!({"ok": true, "node": id, "action": action, "message": text})).into_response())
}

/// `POST /playground/links/{a}/{b}/{cut|heal}`.
async fn link_action(
    State(c): State<Arc<Control>>,
    UrlPath((a, b, action)): UrlPath<(String, String, String)>,
) -> ControlResult {
    c.single_leader("cutting a link")?;
    if action != "cut" && action != "heal" {
        return Err(ControlError::BadRequest(format!(
            "unknown action {action:?}: cut or heal"
        )));
    }
    c.url_of(&a).await?;
    c.url_of(&b).await?;
    if a == b {
        return Err(ControlError::BadRequest(
            "a link joins two different nodes".into(),
        ));
    }
    let (leader_id, leader_url) = c.leader().await?;
    let follower = if a == leader_id {
        b.clone()
    } else if b == leader_id {
        a.clone()
    } else {
        return Err(ControlError::NotApplicable(format!(
            "{a} and {b} are both followers: replication links join the leader ({leader_id}) and a follower"
        )));
    };
    let follower_url = c.url_of(&follower).await?;
    let target = if action == "cut" {
        c.blackhole.clone()
    } else {
        leader_url.clone()
    };
    let r = c
        .http
        .post(format!("{follower_url}/admin/follow"))
        .json(&json!({ "leader": target }))
        .send()
        .await
        .map_err(|e| ControlError::Failed(format!("{follower}: {e}")))?;
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(ControlError::Node(status, body));
    }
    if action == "heal" {
        // A follower that was promoted while cut off may have counted the
        // cut address as a voter; it is gone for good. Most of the time
        // it is not there (404), which is fine.
        let _ = c
            .http
            .post(format!("{leader_url}/admin/forget"))
            .json(&json!({ "member": c.blackhole }))
            .send()
            .await;
    }
    let text = if action == "cut" {
        format!("link {leader_id} ↔ {follower} cut: {follower} no longer hears from the leader")
    } else {
        format!("link {leader_id} ↔ {follower} healed: {follower} follows {leader_id} again")
    };
    c.dash.note("action", &follower, &text);
    Ok(Json(json!({"ok": true, "message": text})).into_response())
}

/// Query of `/playground/switchover`.
#[derive(Deserialize)]
struct SwitchoverQuery {
    to: String,
}

/// `POST /playground/switchover?to=ID`.
async fn switchover(
    State(c): State<Arc<Control>>,
    Query(q): Query<SwitchoverQuery>,
) -> ControlResult {
    c.single_leader("switchover")?;
    c.url_of(&q.to).await?;
    let (leader_id, leader_url) = c.leader().await?;
    if leader_id == q.to {
        return Err(ControlError::NotApplicable(format!(
            "{} already leads",
            q.to
        )));
    }
    let r = c
        .http
        .post(format!("{leader_url}/admin/switchover"))
        .timeout(Duration::from_millis(
            SWITCHOVER_TIMEOUT_MS + CONTROL_REQUEST_TIMEOUT_MS,
        ))
        .json(&json!({"to": q.to, "timeout_ms": SWITCHOVER_TIMEOUT_MS}))
        .send()
        .await
        .map_err(|e| ControlError::Failed(format!("{leader_id}: {e}")))?;
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(ControlError::Node(status, body));
    }
    c.dash.note(
        "action",
        &q.to,
        &format!("switchover from {leader_id} to {} asked", q.to),
    );
    Ok((status, [("content-type", "application/json")], body).into_response())
}

/// Query of `/playground/write` and `/playground/read`.
#[derive(Deserialize)]
struct KeyQuery {
    key: String,
    node: Option<String>,
}

/// `key` as one path segment run (keys may hold `/`, kept as is).
fn encode_key(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `POST /playground/write?key=K[&node=ID]` with the value as body.
async fn write(
    State(c): State<Arc<Control>>,
    Query(q): Query<KeyQuery>,
    body: Bytes,
) -> ControlResult {
    if q.key.is_empty() {
        return Err(ControlError::BadRequest("key must not be empty".into()));
    }
    let base = match &q.node {
        Some(id) => c.url_of(id).await?,
        None if c.topology == "single-leader" => c.url_of("router").await?,
        None => {
            let procs = c.procs.lock().await;
            let first = procs.iter().find(|n| n.id != "router" && n.child.is_some());
            first
                .map(|n| n.url.clone())
                .ok_or_else(|| ControlError::NotApplicable("no node is running".into()))?
        }
    };
    let r = c
        .http
        .put(format!("{base}/v1/kv/{}?w=1", encode_key(&q.key)))
        .body(body)
        .send()
        .await
        .map_err(|e| ControlError::Failed(format!("{base}: {e}")))?;
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(ControlError::Node(status, text));
    }
    Ok((status, [("content-type", "application/json")], text).into_response())
}

/// `GET /playground/read?key=K`: the key on every node, side by side.
async fn read(State(c): State<Arc<Control>>, Query(q): Query<KeyQuery>) -> ControlResult {
    if q.key.is_empty() {
        return Err(ControlError::BadRequest("key must not be empty".into()));
    }
    let nodes: Vec<(String, String)> = c
        .procs
        .lock()
        .await
        .iter()
        .filter(|n| n.id != "router")
        .map(|n| (n.id.clone(), n.url.clone()))
        .collect();
    let path = encode_key(&q.key);
    let asks = nodes.into_iter().map(|(id, url)| {
        let c = c.clone();
        let path = path.clone();
        async move {
            let r = c
                .http
                .get(format!("{url}/v1/kv/{path}?consistency=eventual&format=json"))
                .timeout(Duration::from_millis(CONTROL_REQUEST_TIMEOUT_MS / 2))
                .send()
                .await;
            match r {
                Err(e) => json!({"id": id, "status": null, "value": null, "lsn": null,
                    "error": if e.is_timeout() { "no answer".to_string() } else { "down".to_string() }}),
                Ok(r) => {
                    let status = r.status().as_u16();
                    let lsn = r
                        .headers()
                        .get("x-replidb-lsn")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    let error = (status != 200).then(|| {
                        body["error"]["code"].as_str().unwrap_or("error").to_string()
                    });
                    json!({"id": id, "status": status, "value": body["value"], "lsn": lsn, "error": error})
                }
            }
        }
    });
    let reads = futures::future::join_all(asks).await;
    Ok(Json(json!({"key": q.key, "reads": reads})).into_response())
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid this process spawned and has not reaped
    // (the caller checked it is still running), with a valid signal.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

impl NodeProc {
    /// Whether its child is still running (reaps it if it has exited).
    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its pid, if it is running.
    fn running_pid(&mut self) -> Option<u32> {
        if self.is_running() {
            self.child.as_ref().and_then(tokio::process::Child::id)
        } else {
            None
        }
    }

    /// Stop it if it runs: SIGCONT (in case it is paused) and SIGTERM,
    /// then SIGKILL after [`STOP_GRACE_SECONDS`].
    async fn stop(&mut self) {
        if let Some(pid) = self.running_pid() {
            signal(pid, libc::SIGCONT);
            signal(pid, libc::SIGTERM);
        }
        if let Some(child) = self.child.as_mut() {
            let grace = Duration::from_secs(STOP_GRACE_SECONDS);
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
        self.child = None;
    }

    /// Start it again as it was started, stderr appended to its log.
    fn respawn(&mut self) -> anyhow::Result<()> {
        let (exe, args) = self
            .argv
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("{}: no command line", self.id))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = tokio::process::Command::new(exe)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        self.up = true;
        Ok(())
    }

    /// Single-leader: point the node's restart at `leader` (id, URL), the
    /// leader of the moment, or make it lead if it is that leader; nothing
    /// when no leader is known or for the router.
    pub(super) fn follow_current_leader(&mut self, leader: Option<&(String, String)>) {
        let Some((id, url)) = leader else { return };
        if self.id == "router" {
            return;
        }
        let follow = (*id != self.id).then_some(url.as_str());
        self.set_flag("--follow", follow);
    }

    /// Set `--flag value` in its command line (`None` removes it).
    fn set_flag(&mut self, flag: &str, value: Option<&str>) {
        if let Some(i) = self.argv.iter().position(|a| a == flag) {
            let end = (i + 2).min(self.argv.len());
            self.argv.drain(i..end);
        }
        let prefix = format!("{flag}=");
        self.argv.retain(|a| !a.starts_with(&prefix));
        if let Some(v) = value {
            self.argv.extend([flag.to_string(), v.to_string()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_slashes_and_escape_the_rest() {
        assert_eq!(encode_key("user/1"), "user/1");
        assert_eq!(encode_key("a b?&"), "a%20b%3F%26");
    }
}
