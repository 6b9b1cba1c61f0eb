//! The only place a tracing subscriber is installed. Lines look like Celery's:
//! `[2026-11-24 19:13:47,121: INFO/MainProcess] Task tasks.add[…] received`, or with
//! `--log-format json` one JSON object per line for log shippers. With `--logfile` they go to
//! a file, reopened on SIGUSR2 (after logrotate moved it); else to stderr.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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

/// Where log lines go: stderr, or a file that can be reopened.
#[derive(Clone)]
pub struct LogSink {
    file: Option<(PathBuf, Arc<Mutex<std::fs::File>>)>,
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSink")
            .field("file", &self.file.as_ref().map(|(p, _)| p))
            .finish()
    }
}

fn open_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl LogSink {
    /// Lines to `path` (appended, created if missing), or to stderr.
    pub fn new(path: Option<PathBuf>) -> Result<LogSink, String> {
        let file = match path {
            None => None,
            Some(p) => {
                let f = open_append(&p)
                    .map_err(|e| format!("worker.logfile: cannot open {}: {e}", p.display()))?;
                Some((p, Arc::new(Mutex::new(f))))
            }
        };
        Ok(LogSink { file })
    }

    /// Opens the log file again under its name (log rotation); a no-op for stderr.
    pub fn reopen(&self) -> std::io::Result<()> {
        if let Some((path, file)) = &self.file {
            let fresh = open_append(path)?;
            if let Ok(mut f) = file.lock() {
                *f = fresh;
            }
        }
        Ok(())
    }
}

/// One log line's destination (a [`tracing_subscriber::fmt::MakeWriter`] target).
#[derive(Debug)]
pub struct SinkWriter(LogSink);

impl std::io::Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &self.0.file {
            Some((_, f)) => match f.lock() {
                Ok(mut f) => f.write(buf),
                Err(_) => Ok(buf.len()),
            },
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &self.0.file {
            Some((_, f)) => f.lock().map_or(Ok(()), |mut f| f.flush()),
            None => std::io::stderr().flush(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter(self.clone())
    }
}

/// Line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Celery's human layout.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `text` or `json`.
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// Logs at `loglevel` (RUST_LOG, when set, wins) in `format` to `sink`.
pub fn init(loglevel: &str, format: LogFormat, sink: LogSink) {
    let directive = format!(
        "{},lapin=warn,amq_protocol=warn",
        filter_directive(loglevel)
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directive));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink);
    let _ = match format {
        LogFormat::Text => builder.event_format(CeleryFormat).try_init(),
        LogFormat::Json => builder.event_format(JsonFormat).try_init(),
    };
}

/// One JSON object per line: `timestamp` (ISO 8601, UTC), `level`, `message`, and every
/// structured field (`task_id`, `runtime`, …) as its own key.
#[derive(Debug, Clone, Copy)]
pub struct JsonFormat;

impl<S, N> FormatEvent<S, N> for JsonFormat
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
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        let line = json_line(
            time::OffsetDateTime::now_utc(),
            *event.metadata().level(),
            event.metadata().target(),
            fields.0,
        );
        writeln!(writer, "{line}")
    }
}

/// The JSON object for one event.
pub fn json_line(
    t: time::OffsetDateTime,
    level: Level,
    target: &str,
    fields: serde_json::Map<String, serde_json::Value>,
) -> String {
    let mut m = serde_json::Map::new();
    m.insert(
        "timestamp".into(),
        serde_json::json!(celeryd_actors::protocol::time::format_iso(t)),
    );
    m.insert("level".into(), serde_json::json!(level_name(level)));
    m.insert("target".into(), serde_json::json!(target));
    m.insert("process".into(), serde_json::json!(std::process::id()));
    for (k, v) in fields {
        m.insert(k, v);
    }
    serde_json::Value::Object(m).to_string()
}

#[derive(Default)]
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), serde_json::json!(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }
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

    #[test]
    fn json_lines_carry_level_message_and_fields() {
        let t = time::macros::datetime!(2026-11-24 19:13:47.121 UTC);
        let mut fields = serde_json::Map::new();
        fields.insert("message".into(), serde_json::json!("Task t[1] succeeded"));
        fields.insert("runtime".into(), serde_json::json!(0.5));
        let line = json_line(t, Level::INFO, "celeryd_actors::consumer", fields);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["runtime"], 0.5);
        assert_eq!(v["message"], "Task t[1] succeeded");
        assert!(
            v["timestamp"]
                .as_str()
                .unwrap()
                .starts_with("2026-11-24T19:13:47.121")
        );
        assert_eq!(LogFormat::parse("JSON"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("xml"), None);
    }

    #[test]
    fn a_log_file_is_reopened_under_its_name() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        let sink = LogSink::new(Some(path.clone())).unwrap();
        let mut w = tracing_subscriber::fmt::MakeWriter::make_writer(&sink);
        w.write_all(b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("w.log.1")).unwrap();
        w.write_all(b"two\n").unwrap();
        sink.reopen().unwrap();
        let mut w = tracing_subscriber::fmt::MakeWriter::make_writer(&sink);
        w.write_all(b"three\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        let old = std::fs::read_to_string(dir.path().join("w.log.1")).unwrap();
        assert_eq!(old, "one\ntwo\n");
        assert!(LogSink::new(Some(dir.path().join("no/such/dir/x.log"))).is_err());
    }
}
