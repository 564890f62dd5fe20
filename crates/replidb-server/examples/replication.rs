//! One leader and two followers in one process, replicating over loopback
//! TCP: ten orders are written at `w=majority`, then every node's state,
//! health and `/metrics` URL are printed. Exits by itself; with `--serve`
//! it keeps the cluster running (and its metrics scrapeable) until Ctrl-C.
//!
//! ```sh
//! cargo run -p replidb-server --example replication [-- --serve]
//! ```

use std::process::ExitCode;

use replidb_server::embed::demo;

#[tokio::main]
async fn main() -> ExitCode {
    let serve = std::env::args().skip(1).any(|a| a == "--serve");
    let mut out = std::io::stdout();
    let cluster = match demo::run(2, 10, &mut out).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if serve {
        println!(
            "\nserving until Ctrl-C (try: curl {}/status)",
            cluster.leader.url().unwrap_or_default()
        );
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("error: cannot wait for Ctrl-C: {e}");
        }
    }
    match cluster.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
