//! The only place a tracing subscriber is installed. Lines look like Celery's:
//! `[2026-11-24 19:13:47,121: INFO/MainProcess] Task tasks.add[…] received`.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Maps Celery's level names to tracing's.
pub fn filter_directive(loglevel: &str) -> &'static str {
    match loglevel.to_ascii_lowercase().as_str() {
        "debug" => "debug",
        "warning" | "warn" => "warn",
        "error" | "critical" | "fatal" => "error",
        _ => "info",
    }
}

/// Logs to stderr at `loglevel` (RUST_LOG, when set, wins).
pub fn init(loglevel: &str) {
    let directive = format!(
        "{},lapin=warn,amq_protocol=warn",
        filter_directive(loglevel)
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directive));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(CeleryFormat)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Celery's log line layout; structured fields are left to the message text.
#[derive(Debug, Clone, Copy)]
pub struct CeleryFormat;

impl<S, N> FormatEvent<S, N> for CeleryFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut message = Message::default();
        event.record(&mut message);
        write!(
            writer,
            "[{}: {}/MainProcess] {}",
            timestamp(time::OffsetDateTime::now_utc()),
            level_name(*event.metadata().level()),
            message.text
        )?;
        if !message.fields.is_empty() {
            write!(writer, " ({})", message.fields.join(", "))?;
        }
        writeln!(writer)
    }
}

/// `2026-11-24 19:13:47,121`, as Python's logging writes `asctime`.
pub fn timestamp(t: time::OffsetDateTime) -> String {
    format!(
        "{}-{:02}-{:02} {:02}:{:02}:{:02},{:03}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Python logging's level names.
pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// Fields the message text already shows (Celery's per-task lines name the task and id).
const SHOWN_IN_TEXT: &[&str] = &["task_id", "runtime"];

/// The message, plus the other structured fields as `key=value` for the parenthesis.
#[derive(Default)]
struct Message {
    text: String,
    fields: Vec<String>,
}

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.text, "{value:?}");
            }
            name if SHOWN_IN_TEXT.contains(&name) => {}
            name => self.fields.push(format!("{name}={value:?}")),
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.text.push_str(value),
            name if SHOWN_IN_TEXT.contains(&name) => {}
            name => self.fields.push(format!("{name}={value}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_python_logging() {
        let t = time::macros::datetime!(2026-11-24 19:13:47.121 UTC);
        assert_eq!(timestamp(t), "2026-11-24 19:13:47,121");
        assert_eq!(level_name(Level::WARN), "WARNING");
        assert_eq!(filter_directive("CRITICAL"), "error");
    }
}
