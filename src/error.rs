//! Start-up errors and their exit codes (sysexits, as Celery uses).

use celeryd_actors::supervisor::{Failure, FailureKind};
use thiserror::Error;

/// Why the worker could not start (or stopped on an infrastructure failure).
#[derive(Debug, Error)]
pub enum StartupError {
    /// The configuration is invalid; the message names the key.
    #[error("configuration error: {0}")]
    Config(String),
    /// The broker cannot be reached or refused our topology.
    #[error("broker unavailable: {0}")]
    Broker(String),
    /// The broker refused the login at start (wrong user or password, or no access to the
    /// vhost): retrying cannot help.
    #[error("broker login refused: {0}")]
    Auth(String),
    /// A `celery worker` flag celeryd does not carry out (the message says why and what to
    /// use instead).
    #[error("{0}")]
    Usage(String),
    /// The statedb cannot be opened or used (bad path, permissions, corruption).
    #[error("{0}")]
    Store(String),
    /// The actor tree failed to start or stopped on a failure.
    #[error("worker failed: {0}")]
    Runtime(String),
    /// The pidfile names a running worker, or cannot be written.
    #[error("{0}")]
    Pidfile(String),
    /// The Python app (`-A`) cannot be loaded: no interpreter, no `celery` package, or an
    /// import error (the message carries the Python traceback).
    #[error("cannot load the Python app: {0}")]
    Python(String),
}

/// A component that stopped the worker, by the kind of its failure: a queue the broker holds
/// with other arguments means the configuration must change (78); a refused login is 77;
/// a broker given up on, 69.
impl From<Failure> for StartupError {
    fn from(failure: Failure) -> Self {
        let text = failure.to_string();
        match failure.kind {
            FailureKind::Clash => StartupError::Config(text),
            FailureKind::LoginRefused => StartupError::Auth(text),
            FailureKind::Broker => StartupError::Broker(text),
            FailureKind::Other => StartupError::Runtime(text),
        }
    }
}

impl StartupError {
    /// Classifies a failure of the actor tree to start, unwrapping ractor's
    /// "Actor panicked during startup '…'" layers down to the reason.
    pub fn from_spawn(text: &str) -> StartupError {
        const WRAPPER: &str = "Actor panicked during startup '";
        let mut inner = text.trim();
        while let Some(rest) = inner.strip_prefix(WRAPPER) {
            inner = rest.strip_suffix('\'').unwrap_or(rest).trim();
        }
        if inner.contains("already in use") {
            StartupError::Config(inner.to_owned())
        } else if inner.contains("statedb") || inner.contains("beat schedule database") {
            StartupError::Store(inner.to_owned())
        } else {
            StartupError::Runtime(inner.to_owned())
        }
    }

    /// The process exit code: `EX_CONFIG` (78; also a Python app that cannot be loaded),
    /// `EX_UNAVAILABLE` (69), `EX_NOPERM` (77, the broker refused the login), `EX_USAGE`
    /// (64, a refused flag), `EX_IOERR` (74, the statedb), `EX_SOFTWARE` (70) or
    /// `EX_CANTCREAT` (73, the pidfile).
    pub fn exit_code(&self) -> u8 {
        match self {
            StartupError::Config(_) | StartupError::Python(_) => 78,
            StartupError::Broker(_) => 69,
            StartupError::Auth(_) => 77,
            StartupError::Usage(_) => 64,
            StartupError::Store(_) => 74,
            StartupError::Runtime(_) => 70,
            StartupError::Pidfile(_) => 73,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwraps_spawn_errors() {
        let e = StartupError::from_spawn(
            "Actor panicked during startup 'Actor panicked during startup 'cannot open the statedb at /x: no''",
        );
        assert_eq!(e.to_string(), "cannot open the statedb at /x: no");
        assert_eq!(e.exit_code(), 74);
        assert_eq!(StartupError::from_spawn("boom").exit_code(), 70);
    }
}
