//! Log setup. Logs go to stderr (stdout is for command output, e.g.
//! `replidb get`'s value); `RUST_LOG` overrides the default level.
//!
//! Two formats:
//! - **logfmt** (default): one line per event,
//!   `ts=2025-01-01T12:00:00.123456Z level=info msg="serving" node_id=n1 addr=127.0.0.1:7001 target=replidb_server`.
//!   Values with spaces, quotes, `=` or control characters are quoted and
//!   escaped, so `grep node_id=n2` and logfmt parsers (Loki, `hl`, `lnav`)
//!   work on it.
//! - **json** (`--log-format json`): one flat JSON object per line
//!   (`timestamp`, `level`, `target`, `message`, fields).
//!
//! - **simulation** (`RUST_LOG=... replidb simulate`): logfmt with the
//!   simulated time instead of the wall clock, `sim_ms=1234`, the same
//!   clock as the story's `[  1234ms]`, so a failing seed's log lines up
//!   with its story; every line names its node (`node_id=n2`), including
//!   the coordinator's.
//!
//! Field types are consistent (in JSON too): LSNs, epochs, ports, counts
//! and durations are numbers; ids, URLs and addresses are strings.
//!
//! What is logged: at `info`, role changes, connections and failures; at
//! `debug`, each persisted write on the leader (`msg="write persisted"
//! node_id key lsn`) and each applied batch on a follower (`msg="applied
//! batch" node_id from to lag_ms`). Values are never logged, only keys and
//! positions.

use std::fmt::{self, Write as _};

use crate::server_config::LogFormat;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
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
        LogFormat::Logfmt => builder
            .with_ansi(false)
            .fmt_fields(LogfmtFields)
            .event_format(Logfmt { sim_clock: None })
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A reading of simulated time since the start of a run (`None` outside
/// one).
pub type SimClock = fn() -> Option<std::time::Duration>;

/// A subscriber for a simulation run: logfmt on stderr at `RUST_LOG`'s
/// levels, each line stamped `sim_ms=` from `clock` instead of the wall
/// clock. Install it with `tracing::subscriber::with_default` on the
/// thread that runs the simulation.
pub fn sim_subscriber(clock: SimClock) -> impl Subscriber + Send + Sync {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .fmt_fields(LogfmtFields)
        .event_format(Logfmt {
            sim_clock: Some(clock),
        })
        .finish()
}

/// The logfmt event formatter: `ts level msg fields... [span=...] target`
/// (`sim_ms` instead of `ts` in a simulation).
struct Logfmt {
    /// Simulated time, when logging a simulation.
    sim_clock: Option<SimClock>,
}

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        match self.sim_clock {
            Some(clock) => match clock() {
                Some(t) => write!(writer, "sim_ms={}", t.as_millis())?,
                None => writer.write_str("sim_ms=-")?,
            },
            None => {
                writer.write_str("ts=")?;
                SystemTime.format_time(&mut writer)?;
            }
        }
        write!(
            writer,
            " level={}",
            meta.level().as_str().to_ascii_lowercase()
        )?;
        let mut fields = FieldsVisitor::default();
        event.record(&mut fields);
        if let Some(msg) = &fields.message {
            writer.write_str(" msg=")?;
            write_value(&mut writer, msg)?;
        }
        writer.write_str(&fields.rest)?;
        if let Some(scope) = ctx.event_scope() {
            let mut names: Vec<&str> = Vec::new();
            let mut span_fields = String::new();
            for span in scope.from_root() {
                names.push(span.name());
                if let Some(f) = span.extensions().get::<FormattedFields<N>>() {
                    // A span's `name` field names the span's subject: the
                    // simulator's `node` span (turmoil's host) becomes
                    // `node=n1`.
                    let fields = f.fields.as_str();
                    match fields.strip_prefix(" name=") {
                        Some(rest) => {
                            let _ = write!(span_fields, " {}={rest}", span.name());
                        }
                        None => span_fields.push_str(fields),
                    }
                }
            }
            writer.write_str(&span_fields)?;
            if !names.is_empty() {
                writer.write_str(" span=")?;
                write_value(&mut writer, &names.join(":"))?;
            }
        }
        writeln!(writer, " target={}", meta.target())
    }
}

/// Formats span fields as logfmt (` k=v`, quoted where needed), so that
/// [`Logfmt`] can print a span's fields beside the event's.
struct LogfmtFields;

impl<'w> FormatFields<'w> for LogfmtFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut v = FieldsVisitor::default();
        fields.record(&mut v);
        if let Some(m) = &v.message {
            writer.write_str(" message=")?;
            write_value(&mut writer, m)?;
        }
        writer.write_str(&v.rest)
    }
}

/// Collects an event's fields: the message apart, the rest as ` k=v`.
#[derive(Default)]
struct FieldsVisitor {
    message: Option<String>,
    rest: String,
}

impl FieldsVisitor {
    fn push(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_string());
            return;
        }
        // Writing into a String cannot fail.
        let _ = write!(self.rest, " {}=", field.name());
        let _ = write_value(&mut self.rest, value);
    }
}

impl Visit for FieldsVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, &format!("{value:?}"));
    }
}

/// Write `value` bare when it is a plain token, else quoted and escaped.
fn write_value(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '=' && c != '\\');
    if plain {
        return out.write_str(value);
    }
    out.write_char('"')?;
    for c in value.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if c.is_control() => write!(out, "\\u{{{:04x}}}", u32::from(c))?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::write_value;

    fn quoted(v: &str) -> String {
        let mut s = String::new();
        write_value(&mut s, v).unwrap();
        s
    }

    #[test]
    fn plain_values_stay_bare_others_are_quoted() {
        assert_eq!(quoted("n1"), "n1");
        assert_eq!(quoted("127.0.0.1:7001"), "127.0.0.1:7001");
        assert_eq!(quoted(""), "\"\"");
        assert_eq!(quoted("write persisted"), "\"write persisted\"");
        assert_eq!(quoted("a=b"), "\"a=b\"");
        assert_eq!(quoted("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
    }
}
