//! The OpenAPI document (`GET /openapi.json`) against the node that serves
//! it: it names every route the router registers with the methods each
//! answers, it is open even with `--auth-file`, and a property-based fuzz
//! (schemathesis, installed by `scripts/test.sh`) finds no server error and
//! no answer the document does not describe.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Node;
use serde_json::Value;

/// The schemathesis version `scripts/test.sh` installs; the test says so
/// when another one answers.
const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// Test cases per operation and phase: enough to reach every documented
/// answer of a single node, few enough for the whole test to stay well
/// under two minutes on two loaded cores.
const MAX_EXAMPLES: &str = "10";
/// Wall-clock bound of both schemathesis runs together (about 50 s on two
/// cores loaded by other builds); past it the run is killed and the test
/// fails, so the whole test stays under two minutes.
const FUZZ_DEADLINE: Duration = Duration::from_secs(105);

/// Methods of an OpenAPI path item, upper case.
fn documented_methods(item: &Value) -> BTreeSet<String> {
    [
        "get", "put", "post", "delete", "patch", "head", "options", "trace",
    ]
    .into_iter()
    .filter(|m| item.get(m).is_some())
    .map(|m| m.to_uppercase())
    .collect()
}

/// A token file granting `SECRET` every role.
fn auth_file(dir: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let hash: String = Sha256::digest(b"all-roles")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = dir.join("tokens.toml");
    std::fs::write(
        &path,
        format!(
            "[[token]]\nname = \"all\"\nsha256 = \"{hash}\"\nroles = [\"read\", \"write\", \"admin\", \"replication\"]\n"
        ),
    )
    .expect("write auth file");
    path
}

#[tokio::test]
async fn the_document_is_open_and_names_every_route_with_its_methods() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = auth_file(dir.path());
    let mut node = Node::start("n1", &["--auth-file", tokens.to_str().expect("utf-8 path")]).await;
    let anonymous = common::http();

    // Open like /health, while the rest needs a token.
    let r = anonymous
        .get(node.at("/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(r.status(), 200, "/openapi.json needs no token");
    let content_type = r.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let doc: Value = r.json().await.expect("the document is JSON");
    let status = anonymous
        .get(node.at("/status"))
        .send()
        .await
        .expect("GET /status");
    assert_eq!(status.status(), 401, "/status still needs a token");

    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(
        version.starts_with("3."),
        "an OpenAPI 3 document, got {version:?}"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let paths = doc["paths"].as_object().expect("paths");

    // Every path the router registers is documented, and nothing else.
    let documented: BTreeSet<String> = paths.keys().cloned().collect();
    let registered = replidb_server::api::registered_paths();
    assert!(
        registered.contains("/v1/kv/{key}"),
        "route introspection works"
    );
    let missing: Vec<_> = registered.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&registered).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routed but undocumented: {missing:?}; documented but not routed: {extra:?}"
    );

    // Every method each path answers is documented: a method no route has
    // is answered 405 with `Allow` listing the ones it has.
    node.set_bearer("all-roles");
    let mut mismatched = BTreeMap::new();
    for (path, item) in paths {
        let concrete = path.replace("{key}", "k");
        let r = node
            .http()
            .request(reqwest::Method::TRACE, node.at(&concrete))
            .send()
            .await
            .expect("TRACE probe");
        assert_eq!(r.status(), 405, "TRACE {concrete}");
        let allowed: BTreeSet<String> = r
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(',')
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty() && m != "HEAD") // axum adds HEAD to GET
            .collect();
        let methods = documented_methods(item);
        if allowed != methods {
            mismatched.insert(path.clone(), (allowed, methods));
        }
    }
    assert!(
        mismatched.is_empty(),
        "path: (methods routed, methods documented): {mismatched:?}"
    );
}

/// The schemathesis executable, or a failure that says how to get it.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["st", "schemathesis"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "schemathesis (`st`) is not installed: run `bash scripts/test.sh` (CI does; it runs \
         `pip install schemathesis=={SCHEMATHESIS_VERSION}` when it is missing), or that pip \
         command alone"
    );
}

/// The configuration both runs share.
///
/// - `not_a_server_error` accepts the two 5xx the document gives for
///   refusals a client is told to retry (503, with `Retry-After`) and for a
///   write concern not met in time (504); any other 5xx fails.
/// - `wait_ms` is pinned to 0: it may legally be up to 60 s, and a read
///   asking for an LSN this node never reaches then waits that long before
///   its (documented) 503. The 503 path is the same at 0 ms, and the run
///   stays bounded. Every other parameter is generated.
const CONFIG: &str = r#"
[checks.not_a_server_error]
expected-statuses = ["1xx", "2xx", "3xx", "4xx", "503", "504"]

[parameters]
"query.wait_ms" = 0
"#;

/// Run schemathesis against `base` with `filters`; panics with its output
/// when it finds anything, or when it runs past [`RUN_DEADLINE`].
fn fuzz(
    st: &Path,
    dir: &Path,
    base: &str,
    label: &str,
    filters: &[&str],
    deadline: Instant,
) -> Duration {
    let config = dir.join("schemathesis.toml");
    std::fs::write(&config, CONFIG).expect("write schemathesis.toml");
    let log = dir.join(format!("{label}.log"));
    let out = std::fs::File::create(&log).expect("create log");
    let err = out.try_clone().expect("clone log");
    let mut cmd = Command::new(st);
    cmd.arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            MAX_EXAMPLES,
            "--phases",
            "examples,coverage,fuzzing",
            // One worker: with several threads, Hypothesis 6.170 on
            // CPython 3.11 sometimes fails in `ast.parse` while naming a
            // filter lambda ("AST constructor recursion depth mismatch"),
            // an error of the fuzzer, not of the API.
            "--workers",
            "1",
            "--seed",
            "20261130",
            "--request-timeout",
            "20",
            "--max-redirects",
            "0",
            "--suppress-health-check",
            "all",
        ])
        .args(filters)
        .current_dir(dir)
        // No proxy from the environment between the fuzzer and 127.0.0.1.
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    eprintln!("openapi fuzz ({label}): {cmd:?}");
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn schemathesis");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for schemathesis") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "schemathesis ({label}) ran past the {FUZZ_DEADLINE:?} the fuzz may take:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let took = started.elapsed();
    let phases: Vec<&str> = output
        .lines()
        .filter(|l| l.contains(" (in ") || l.contains("generated"))
        .map(str::trim)
        .collect();
    eprintln!("openapi fuzz ({label}) took {took:?}: {phases:?}");
    assert!(
        status.success(),
        "schemathesis ({label}) found problems ({status}); its whole report is {}:\n{}",
        log.display(),
        report_excerpt(&output)
    );
    took
}

/// The failures and errors of a schemathesis report and its summary,
/// bounded: a runtime error can print whole source files.
fn report_excerpt(output: &str) -> String {
    const MAX_CHARS: usize = 12_000;
    let start = ["=== FAILURES", "=== ERRORS", "=== SUMMARY"]
        .iter()
        .filter_map(|m| output.find(m))
        .min()
        .unwrap_or(0);
    let excerpt: String = output[start..].chars().take(MAX_CHARS).collect();
    let summary = output
        .find("=== SUMMARY")
        .map(|i| &output[i..])
        .unwrap_or("");
    if excerpt.contains("=== SUMMARY") {
        excerpt
    } else {
        format!("{excerpt}\n[...]\n{summary}")
    }
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let st = schemathesis();
    let version = Command::new(&st)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    if !version.contains(SCHEMATHESIS_VERSION) {
        eprintln!("warning: {version:?} is not the pinned schemathesis {SCHEMATHESIS_VERSION}");
    }
    // Not removed on drop: a failing run leaves its reports to be read.
    let dir = tempfile::Builder::new()
        .prefix("replidb-openapi-")
        .tempdir()
        .expect("temp dir")
        .keep();
    // Small values keep the fuzzer's 413 path cheap; without fsync the
    // thousand-odd writes cost no disk flushes (the answers are the same:
    // durability is not what this test checks).
    let node = Node::start("n1", &["--max-value-bytes", "65536", "--fsync", "never"]).await;
    let base = node.url();
    let st2 = st.clone();
    let dir_path = dir.clone();
    let deadline = Instant::now() + FUZZ_DEADLINE;
    let (first, second) = tokio::task::spawn_blocking(move || {
        // Everything but what would end the run's usefulness:
        // - the destructive admin operations (fence, follow, promote,
        //   switchover, forget) run in the second pass, so that a fence to
        //   a made-up leader cannot turn the node into a follower of
        //   nothing before the write paths were fuzzed;
        // - `/v1/replication` is an HTTP upgrade into a binary stream, not
        //   a request and response a fuzzer can judge;
        // - `/dashboard/events` is an endless event stream.
        let first = fuzz(
            &st2,
            &dir_path,
            &base,
            "everything",
            &[
                "--exclude-path-regex",
                "^/admin/|^/v1/replication$|^/dashboard/events$",
            ],
            deadline,
        );
        // The destructive operations, on the node the first pass left. A
        // fence or follow may re-point it at a leader the fuzzer made up;
        // the document gives the 503s and 307s that follow.
        let second = fuzz(
            &st2,
            &dir_path,
            &base,
            "admin",
            &["--include-path-regex", "^/admin/"],
            deadline,
        );
        (first, second)
    })
    .await
    .expect("fuzz task");
    eprintln!("openapi fuzz: {first:?} + {second:?}");
    drop(node);
    // Only a passing run removes its reports.
    let _ = std::fs::remove_dir_all(&dir);
}
