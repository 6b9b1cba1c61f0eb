//! Start-up errors and their exit codes (sysexits, as Celery uses).

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
    /// The actor tree failed to start or stopped on a failure.
    #[error("worker failed: {0}")]
    Runtime(String),
}

impl StartupError {
    /// The process exit code: `EX_CONFIG` (78), `EX_UNAVAILABLE` (69) or `EX_SOFTWARE` (70).
    pub fn exit_code(&self) -> u8 {
        match self {
            StartupError::Config(_) => 78,
            StartupError::Broker(_) => 69,
            StartupError::Runtime(_) => 70,
        }
    }
}
