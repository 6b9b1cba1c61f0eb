//! The only place a tracing subscriber is installed.

use tracing_subscriber::EnvFilter;

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
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
