//! TLS end to end: real `replidb server` processes with throwaway
//! certificates (`replidb_tls::throwaway`).
//!
//! The story: a leader and a follower that speak HTTPS to clients and TLS
//! with mutual authentication to each other. Replication works; a client
//! that speaks plain HTTP to the port, trusts another CA, or brings no
//! certificate where one is required gets a clear error at once — never a
//! hang — and so does a follower whose certificate has expired.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{wait_until, Node};
use replidb_tls::throwaway::{self, Validity};
use serde_json::Value;

fn tls_args<'a>(cert: &'a Path, key: &'a Path, ca: &'a Path) -> Vec<&'a str> {
    vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tls-ca",
        ca.to_str().unwrap(),
        "--tls-client-auth",
    ]
}

/// A reqwest client trusting `ca`, with `identity` if given.
fn client(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let config = replidb_tls::client_config(ca, identity).unwrap();
    common::http_builder()
        .tls_backend_preconfigured((*config).clone())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_cluster_replicates_over_mutual_tls_and_refuses_what_it_should() {
    let dir = tempfile::tempdir().unwrap();
    let certs = throwaway::generate(dir.path(), &["n1", "n2", "client"]).unwrap();
    let stranger = throwaway::generate(&dir.path().join("other"), &["x"]).unwrap();
    let expired =
        throwaway::generate_with(&dir.path().join("expired"), &["n3"], Validity::Expired).unwrap();
    // The expired certificate is signed by a CA the cluster does not
    // trust either; trust both CAs on the leader so that expiry alone is
    // what refuses it.
    let both = dir.path().join("both.pem");
    std::fs::write(
        &both,
        std::fs::read_to_string(&certs.ca).unwrap()
            + &std::fs::read_to_string(&expired.ca).unwrap(),
    )
    .unwrap();

    let mut leader = Node::new("n1", &tls_args(certs.cert(0), certs.key(0), &both));
    leader.use_tls(&certs.ca, Some((certs.cert(2), certs.key(2))));
    leader.launch().await;
    let url = leader.url();
    assert!(url.starts_with("https://"));

    let mut args = tls_args(certs.cert(1), certs.key(1), &certs.ca);
    args.extend(["--follow", &url]);
    let mut follower = Node::new("n2", &args);
    follower.use_tls(&certs.ca, Some((certs.cert(2), certs.key(2))));
    follower.launch().await;

    wait_until("n2 streams over TLS", Duration::from_secs(20), async || {
        follower.status().await["connected"] == Value::Bool(true)
    })
    .await;
    let w = leader.put_q("k", "w=all", "over tls").await;
    assert_eq!(w["committed"], Value::Bool(true), "{w}");
    assert_eq!(w["acks"], 2, "{w}");
    // Durable on the follower (w=all) is not yet applied: wait for it.
    let lsn = w["lsn"].as_u64().unwrap();
    assert_eq!(
        follower
            .get_raw("k", &format!("consistency=eventual&min_lsn={lsn}"))
            .await,
        (200, b"over tls".to_vec())
    );

    // Plain HTTP to the TLS port: a clear 400 in plain text, at once.
    let plain = url.replace("https://", "http://");
    let r = common::http()
        .get(format!("{plain}/status"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("plain HTTP gets an answer, not a hang");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "tls_required");

    // A client that trusts another CA: a certificate error, at once.
    let e = client(&stranger.ca, Some((certs.cert(2), certs.key(2))))
        .get(format!("{url}/health"))
        .send()
        .await
        .unwrap_err();
    let chain = format!("{e:?}");
    assert!(chain.contains("InvalidCertificate"), "{chain}");
    assert!(!e.is_timeout(), "{chain}");

    // No client certificate where mutual TLS is required: refused.
    let e = client(&certs.ca, None)
        .get(format!("{url}/health"))
        .send()
        .await
        .unwrap_err();
    assert!(!e.is_timeout(), "{e:?}");

    // A follower whose certificate expired never joins, and says why.
    let mut args = tls_args(expired.cert(0), expired.key(0), &certs.ca);
    args.extend(["--follow", &url]);
    let mut late = Node::new("n3", &args);
    late.use_tls(&expired.ca, Some((certs.cert(2), certs.key(2))));
    // Its own listener serves the expired certificate, so the harness
    // cannot check its /status over TLS; read its log instead.
    late.launch_unchecked();
    let log = late.log_path();
    wait_until(
        "n3 reports the TLS failure",
        Duration::from_secs(20),
        async || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("CertificateExpired")
        },
    )
    .await;
    let followers: Vec<String> = leader.status().await["followers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(followers, vec!["n2".to_string()]);
}

#[test]
fn bad_tls_flags_are_refused_at_start_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let certs = throwaway::generate(dir.path(), &["n1"]).unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let cert = certs.cert(0).to_str().unwrap();
    let key = certs.key(0).to_str().unwrap();
    for (args, needle) in [
        (vec!["--tls-cert", cert], "--tls-cert needs --tls-key"),
        (
            vec!["--tls-cert", cert, "--tls-key", "/nonexistent/key.pem"],
            "key.pem",
        ),
        (
            vec!["--tls-cert", cert, "--tls-key", key, "--tls-client-auth"],
            "--tls-ca",
        ),
        (vec!["--tls-client-auth"], "--tls-cert"),
    ] {
        let mut all = vec![
            "server",
            "--id",
            "n1",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
        ];
        all.extend(args.iter().copied());
        let (code, _out, err) = common::cli(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// A single node `n1` serving HTTPS with a throwaway certificate (no
/// client certificates required), started with `extra` flags too.
async fn https_node(dir: &Path, extra: &[&str]) -> (Node, throwaway::Generated) {
    let certs = throwaway::generate(dir, &["n1"]).unwrap();
    let mut args = vec![
        "--tls-cert",
        certs.cert(0).to_str().unwrap(),
        "--tls-key",
        certs.key(0).to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut node = Node::new("n1", &args);
    node.use_tls(&certs.ca, None);
    node.launch().await;
    (node, certs)
}

#[tokio::test]
async fn the_cli_speaks_https_with_the_ca_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let (node, certs) = https_node(dir.path(), &[]).await;
    let url = node.url();
    let ca = certs.ca.to_str().unwrap();
    let (code, out, err) = common::cli(&[
        "put",
        "k",
        "v",
        "--url",
        &url,
        "--cacert",
        ca,
        "--no-session",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = common::cli_env(
        &["get", "k", "--url", &url, "--no-session"],
        &[("REPLIDB_CACERT", ca)],
    );
    assert_eq!((code, out.trim()), (0, "v"), "{err}");
    // Without the CA nothing is trusted: a certificate error, not a hang.
    let (code, _, err) = common::cli(&["get", "k", "--url", &url, "--no-session"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

/// Send one RESP command and read one answer line (enough for `PING`,
/// `SET`, and a short bulk string's header).
async fn resp_line<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    command: &[u8],
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(command).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test]
async fn the_redis_protocol_listener_speaks_tls_and_tells_a_plain_client_so() {
    let dir = tempfile::tempdir().unwrap();
    let (node, certs) = https_node(dir.path(), &["--resp-listen", "127.0.0.1:0"]).await;
    let port = common::resp_port(&node).await;

    // A client that trusts the CA: commands work as over plain TCP.
    let config = replidb_tls::client_config(&certs.ca, None).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = replidb_tls::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = replidb_tls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(resp_line(&mut tls, b"PING\r\n").await, "+PONG\r\n");
    assert_eq!(
        resp_line(&mut tls, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\n").await,
        "+OK\r\n"
    );
    assert_eq!(
        resp_line(&mut tls, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").await,
        "$2\r\nv1\r\n"
    );

    // A plain client is told, in RESP, and the connection closes.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let answer = resp_line(&mut plain, b"PING\r\n").await;
    assert!(
        answer.starts_with("-ERR this port requires TLS"),
        "{answer}"
    );

    // A client that trusts another CA fails its handshake at once.
    let stranger = throwaway::generate(&dir.path().join("other"), &["x"]).unwrap();
    let config = replidb_tls::client_config(&stranger.ca, None).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = replidb_tls::ServerName::try_from("127.0.0.1").unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        replidb_tls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("a verdict, not a hang");
    let err = refused.expect_err("another CA is not trusted").to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}
