//! A throwaway single-member etcd for the failover and Jepsen tests.
//!
//! etcd is Debian's `etcd-server` (installed by the README's test command);
//! each test starts its own on free loopback ports with a short election
//! timeout, so a 1 s lease TTL is allowed (etcd's minimum TTL is 1.5 × its
//! election timeout).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A throwaway single-member etcd.
pub struct Etcd {
    child: Child,
    /// The client URL, `http://127.0.0.1:PORT`.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Start etcd on free ports and wait until it answers `/health`.
    pub async fn start() -> Etcd {
        let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("etcd is not installed: run the README's test command (bash scripts/test.sh), which installs etcd-server");
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let (client, peer) = (free_port(), free_port());
            let url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log");
            let child = Command::new(bin)
                .args(["--name", "e2e", "--data-dir"])
                .arg(dir.path().join("data"))
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer_url,
                    "--initial-advertise-peer-urls",
                    &peer_url,
                ])
                .args(["--initial-cluster", &format!("e2e={peer_url}")])
                .args(["--election-timeout", "500", "--heartbeat-interval", "50"])
                .args(["--logger", "zap", "--log-level", "error"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn etcd");
            let mut etcd = Etcd {
                child,
                url,
                _dir: dir,
            };
            let http = super::http();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(r) = http.get(format!("{}/health", etcd.url)).send().await {
                    if r.status().is_success() {
                        return etcd;
                    }
                }
                if let Ok(Some(_)) = etcd.child.try_wait() {
                    break; // lost a port race: try other ports
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = etcd.child.kill();
        }
        panic!("etcd did not start");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
