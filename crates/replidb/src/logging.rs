//! Logs go to stderr (stdout is for command output, e.g. `replidb get`'s
//! value). `RUST_LOG` overrides the default level.

use crate::server_config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber; `default_level` applies without RUST_LOG.
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = match format {
        LogFormat::Logfmt => builder.compact().with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
