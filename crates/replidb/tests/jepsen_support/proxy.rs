//! A TCP proxy in front of each node (and of etcd, per node), so a test can
//! cut a node off the network without touching its process.
//!
//! - [`Proxy::cut`] closes the listening socket (new connections are
//!   refused, which clients see at once as "connection refused": a definite
//!   failure, not an ambiguous one) and drops every connection it carries;
//!   [`Proxy::heal`] listens again on the same port.
//! - A node's own *outgoing* connections (a follower's stream to the leader,
//!   a relayed strong read) enter through the other nodes' proxies. To cut
//!   those too, every proxy asks the kernel which process opened each
//!   connection it accepts (`/proc/net/tcp` gives the socket's inode, the
//!   node's `/proc/PID/fd` holds it), and [`Network::isolate`] drops and
//!   refuses connections that come from an isolated node's process.
//!
//! Linux only (like the rest of the end-to-end suite).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which node's process owns which pid, and which nodes are isolated.
#[derive(Default)]
pub struct Network {
    pids: Mutex<HashMap<u32, usize>>,
    isolated: Mutex<HashSet<usize>>,
    /// Bumped on every isolation so proxies re-examine their connections.
    changed: Mutex<Option<watch::Sender<u64>>>,
}

impl Network {
    /// A network with no isolated nodes.
    pub fn new() -> Arc<Network> {
        let (tx, _) = watch::channel(0);
        Arc::new(Network {
            changed: Mutex::new(Some(tx)),
            ..Default::default()
        })
    }

    /// Record that node `node` now runs as `pid` (after each (re)start).
    pub fn set_pid(&self, node: usize, pid: u32) {
        let mut pids = self.pids.lock().unwrap();
        pids.retain(|_, n| *n != node);
        pids.insert(pid, node);
    }

    /// Drop and refuse connections opened by `node`'s process.
    pub fn isolate(&self, node: usize) {
        self.isolated.lock().unwrap().insert(node);
        self.bump();
    }

    /// Let `node`'s process connect again.
    pub fn rejoin(&self, node: usize) {
        self.isolated.lock().unwrap().remove(&node);
        self.bump();
    }

    fn bump(&self) {
        if let Some(tx) = self.changed.lock().unwrap().as_ref() {
            tx.send_modify(|n| *n += 1);
        }
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        let guard = self.changed.lock().unwrap();
        guard.as_ref().expect("network sender").subscribe()
    }

    fn is_isolated(&self, node: Option<usize>) -> bool {
        node.is_some_and(|n| self.isolated.lock().unwrap().contains(&n))
    }

    /// The node whose process opened the connection that reached a proxy
    /// on `proxy_port` from `peer` (`None`: not a node, e.g. the test).
    fn origin(&self, peer: SocketAddr, proxy_port: u16) -> Option<usize> {
        let inode = socket_inode(peer.port(), proxy_port)?;
        let want = format!("socket:[{inode}]");
        let pids: Vec<(u32, usize)> = self
            .pids
            .lock()
            .unwrap()
            .iter()
            .map(|(p, n)| (*p, *n))
            .collect();
        for (pid, node) in pids {
            let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in dir.flatten() {
                if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == want) {
                    return Some(node);
                }
            }
        }
        None
    }
}

/// The inode of the IPv4 socket from local port `local` to remote port
/// `remote` on 127.0.0.1, from `/proc/net/tcp`.
fn socket_inode(local: u16, remote: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!(":{local:04X}");
    let remote = format!(":{remote:04X}");
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1].ends_with(&local) && f[2].ends_with(&remote))
            .then(|| f[9].parse().ok())
            .flatten()
    })
}

/// One proxy: `127.0.0.1:port` → `127.0.0.1:upstream`.
pub struct Proxy {
    /// The port clients connect to (fixed for the proxy's life).
    pub port: u16,
    upstream: Arc<AtomicU16>,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listen on a free port; forward to `upstream` (0: not known yet,
    /// connections are dropped until [`Proxy::set_upstream`]). Connections
    /// from an isolated node are refused when `net` is given.
    pub async fn start(upstream: u16, net: Option<Arc<Network>>) -> Proxy {
        let listener = bind_free().await;
        let port = listener.local_addr().expect("proxy addr").port();
        let upstream = Arc::new(AtomicU16::new(upstream));
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, port, upstream.clone(), cut_rx, net));
        Proxy {
            port,
            upstream,
            cut,
            task,
        }
    }

    /// Where connections go from now on.
    pub fn set_upstream(&self, port: u16) {
        self.upstream.store(port, Ordering::SeqCst);
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Drop every connection and refuse new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Accept connections again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listener on a free port in the range the harness uses for nodes
/// (below the ephemeral range, so the port is still free on re-listen).
async fn bind_free() -> TcpListener {
    for _ in 0..50 {
        let port = crate::common::free_port();
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)).await {
            return l;
        }
    }
    panic!("no free port for a proxy");
}

/// Accept while not cut; on a cut, close the listener and every
/// connection, then wait for the heal and listen on the same port again.
async fn serve(
    listener: TcpListener,
    port: u16,
    upstream: Arc<AtomicU16>,
    mut cut: watch::Receiver<bool>,
    net: Option<Arc<Network>>,
) {
    let mut listener = Some(listener);
    loop {
        let l = match listener.take() {
            Some(l) => l,
            None => loop {
                // Re-listen; SO_REUSEADDR (tokio's default) lets the port
                // be bound again at once despite connections in TIME_WAIT.
                match TcpListener::bind(("127.0.0.1", port)).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            },
        };
        // Each connection's origin node (if known), the client's address,
        // and the task copying its bytes.
        let mut conns: Vec<(Option<usize>, SocketAddr, JoinHandle<()>)> = Vec::new();
        let mut changed = net.as_ref().map(|n| n.subscribe());
        loop {
            let net_changed = async {
                match changed.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                accepted = l.accept() => {
                    let Ok((client, peer)) = accepted else { continue };
                    conns.retain(|(_, _, t)| !t.is_finished());
                    let origin = net.as_ref().and_then(|n| n.origin(peer, port));
                    if net.as_ref().is_some_and(|n| n.is_isolated(origin)) {
                        drop(client);
                        continue;
                    }
                    let to = upstream.load(Ordering::SeqCst);
                    conns.push((origin, peer, tokio::spawn(pipe(client, to))));
                }
                r = cut.changed() => {
                    if r.is_err() { return; }
                    if *cut.borrow_and_update() { break; }
                }
                ok = net_changed => {
                    if !ok { changed = None; continue; }
                    if let Some(n) = &net {
                        conns.retain_mut(|(o, peer, t)| {
                            // A node may have connected before the test
                            // registered its process (it starts talking to
                            // its peers while it boots): look again now.
                            if o.is_none() && !t.is_finished() {
                                *o = n.origin(*peer, port);
                            }
                            let drop_it = n.is_isolated(*o);
                            if drop_it { t.abort(); }
                            !drop_it
                        });
                    }
                }
            }
        }
        // Cut: close the listener and every connection.
        drop(l);
        for (_, _, t) in conns.drain(..) {
            t.abort();
        }
        while *cut.borrow_and_update() {
            if cut.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Copy both ways until either side closes (or the task is aborted, which
/// drops both sockets).
async fn pipe(mut client: TcpStream, upstream: u16) {
    if upstream == 0 {
        return;
    }
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
