//! Router helpers for the end-to-end tests, next to `common` (the node
//! harness): a `replidb router` child process with the same rules — killed
//! on drop, log tail printed when the test panics, every wait a condition
//! with a deadline.
#![allow(dead_code)]

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::common::{http, wait_until, BIN};

/// How long a router may take to know the leader after spawning.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One `replidb router` process.
pub struct Router {
    port: u16,
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    http: reqwest::Client,
}

/// A response read whole: status, headers, body.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Answer {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `X-Replidb-Role` of the node that served.
    pub fn role(&self) -> &str {
        self.header("x-replidb-role").unwrap_or("")
    }

    /// `X-Replidb-Routed-To`: the node the router sent the request to.
    pub fn routed_to(&self) -> &str {
        self.header("x-replidb-routed-to").unwrap_or("")
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The value of `name=` in the `Set-Cookie` headers.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|c| c.split(';').next())
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    }
}

impl Router {
    /// Start a router in front of `nodes` with extra `args` and wait until
    /// its `/health` says it knows the leader.
    pub async fn start(nodes: &[String], args: &[&str]) -> Router {
        let dir = tempfile::Builder::new()
            .prefix("replidb-e2e-router-")
            .tempdir()
            .expect("temp dir");
        let mut r = Router {
            port: 0,
            child: None,
            dir: Some(dir),
            http: http(),
        };
        for _ in 0..8 {
            r.port = crate::common::free_port();
            if r.spawn_and_wait(nodes, args).await {
                return r;
            }
        }
        panic!("router: no free port after several attempts");
    }

    /// Spawn and wait; false when the port was taken meanwhile.
    async fn spawn_and_wait(&mut self, nodes: &[String], args: &[&str]) -> bool {
        let log = File::create(self.log_path()).expect("router log");
        let child = Command::new(BIN)
            .arg("router")
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--nodes", &nodes.join(",")])
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn replidb router");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                if self.log().contains("in use") {
                    return false;
                }
                panic!("router exited during start-up with {status}");
            }
            // A node's /health answers 200 too: only a /status with the
            // router's node table proves the router holds the port.
            if let Ok(r) = self.http.get(self.at("/health")).send().await {
                if r.status().is_success() && self.status_if_router().await {
                    return true;
                }
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "router did not report a leader within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.as_ref().expect("dir").path().join("router.log")
    }

    /// Everything the router logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The router's `/status`.
    pub async fn status(&self) -> Value {
        let r = self
            .http
            .get(self.at("/status"))
            .send()
            .await
            .expect("router /status");
        r.json().await.expect("router /status is JSON")
    }

    /// Whether `/status` on our port is a router's (it lists `nodes`; a
    /// node's `/status` does not).
    async fn status_if_router(&self) -> bool {
        match self.http.get(self.at("/status")).send().await {
            Ok(r) if r.status().is_success() => {
                r.json::<Value>().await.is_ok_and(|s| s["nodes"].is_array())
            }
            _ => false,
        }
    }

    /// The router's view of node `id` in `/status`.
    pub async fn node_view(&self, id: &str) -> Value {
        let s = self.status().await;
        s["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["id"] == id).cloned())
            .unwrap_or(Value::Null)
    }

    /// Wait until the router's view of node `id` satisfies `pred`.
    pub async fn wait_view(&self, id: &str, desc: &str, pred: impl Fn(&Value) -> bool) -> Duration {
        wait_until(desc, Duration::from_secs(20), async || {
            pred(&self.node_view(id).await)
        })
        .await
    }

    /// Send `method path` with `headers` and `body`; read the whole answer.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, String)],
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let mut req = self.http.request(method, self.at(path)).body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path} through the router: {e}"));
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.bytes().await.expect("body").to_vec(),
        }
    }

    /// `GET path` with `headers`.
    pub async fn get(&self, path: &str, headers: &[(&str, String)]) -> Answer {
        self.send(reqwest::Method::GET, path, headers, Vec::new())
            .await
    }

    /// `PUT /v1/kv/{key}` with `headers`.
    pub async fn put(&self, key: &str, value: &str, headers: &[(&str, String)]) -> Answer {
        let path = format!("/v1/kv/{key}");
        self.send(reqwest::Method::PUT, &path, headers, value.to_string())
            .await
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "\n----- router ({}) log tail -----\n{}\n-----",
                self.url(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            if let Some(d) = self.dir.take() {
                let _ = d.keep();
            }
        }
    }
}
