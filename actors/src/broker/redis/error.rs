//! What goes wrong on a Redis broker, and what kind of failure it is.

use thiserror::Error;

use crate::broker::ErrorKind;

/// Redis broker failures.
#[derive(Debug, Error)]
pub enum RedisError {
    /// The client or the server reported an error (connection, command, script).
    #[error("{0}")]
    Client(#[from] redis::RedisError),
    /// A reply was not of the expected type.
    #[error("unexpected reply from Redis: {0}")]
    Parse(#[from] redis::ParsingError),
    /// The settings cannot work (checked at start; here for what only a connect finds).
    #[error("{0}")]
    Config(&'static str),
    /// A message on the worker's own account had nowhere to go: no queue is bound to the
    /// exchange with that routing key (kombu would drop it silently).
    #[error("no queue is bound to exchange {exchange:?} with routing key {routing_key:?}")]
    NoRoute {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// Something this transport does not do (yet), and what to do instead.
    #[error("{0}")]
    Unsupported(String),
    /// A lock another worker holds.
    #[error("the lock {0:?} is held by another worker")]
    Locked(String),
    /// The link was closed.
    #[error("the connection to Redis is closed")]
    Closed,
}

impl RedisError {
    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RedisError::Client(e) => match e.kind() {
                redis::ErrorKind::AuthenticationFailed => ErrorKind::LoginRefused,
                _ if e.code() == Some("NOAUTH") || e.code() == Some("WRONGPASS") => {
                    ErrorKind::LoginRefused
                }
                _ => ErrorKind::Other,
            },
            RedisError::Locked(_) => ErrorKind::ResourceLocked,
            _ => ErrorKind::Other,
        }
    }

    /// Whether the server refused a write for want of memory (`maxmemory` reached under
    /// `noeviction`): the worker keeps its tasks and tries again.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, RedisError::Client(e) if e.code() == Some("OOM"))
    }

    /// Whether reconnecting may help.
    pub fn is_connection_error(&self) -> bool {
        match self {
            RedisError::Client(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
            }
            RedisError::Closed => true,
            _ => false,
        }
    }
}
