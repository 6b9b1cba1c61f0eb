//! What can go wrong talking to a broker, and what kind of failure it is: callers decide by
//! [`BrokerError::kind`], never by the text of a client library's error.

use thiserror::Error;

use super::amqp::AmqpError;
use super::redis::RedisError;

/// Broker failures. Connection errors make the consumer reconnect with backoff.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The broker URL cannot be parsed.
    #[error("invalid broker url: {0}")]
    Url(String),
    /// Connecting, or an operation on the connection, failed.
    #[error("broker error: {0}")]
    Amqp(#[from] AmqpError),
    /// Talking to a Redis broker failed.
    #[error("broker error: {0}")]
    Redis(#[from] RedisError),
    /// Gave up connecting after the configured number of attempts.
    #[error("cannot reach the broker at {url} after {attempts} attempts: {last}")]
    Unreachable {
        /// The URL with the password masked.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last error seen.
        last: String,
    },
    /// The broker refused to take a published message (a negative publisher confirm); the
    /// original delivery is kept.
    #[error("the broker refused the message (publisher confirm nack)")]
    Nacked,
    /// An operation the transport does not have, and what to do instead.
    #[error("{0}")]
    Unsupported(String),
    /// A queue is declared with different arguments by someone else (406).
    #[error("queue {name:?} clashes with its declaration on the broker: {reason}")]
    Clash {
        /// The queue or exchange.
        name: String,
        /// The broker's words.
        reason: String,
    },
}

/// What kind of failure a [`BrokerError`] is, where the caller acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The broker refused the login (user, password, vhost permission): retrying will not
    /// mend it.
    LoginRefused,
    /// An exclusive resource (a queue another connection holds) is in use.
    ResourceLocked,
    /// The broker refuses channel-wide QoS for a quorum queue.
    GlobalQosRefused,
    /// A frame larger than the negotiated frame size arrived.
    FrameTooLarge,
    /// A declaration clashes with the broker's (406).
    Clash,
    /// Anything else.
    Other,
}

impl BrokerError {
    /// Whether reconnecting may help (as opposed to a configuration problem).
    pub fn is_connection_error(&self) -> bool {
        match self {
            BrokerError::Amqp(_) | BrokerError::Unreachable { .. } => true,
            BrokerError::Redis(e) => e.is_connection_error(),
            _ => false,
        }
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            BrokerError::Amqp(e) => e.kind(),
            BrokerError::Redis(e) => e.kind(),
            BrokerError::Clash { .. } => ErrorKind::Clash,
            BrokerError::Unreachable { last, .. } => super::amqp::kind_of_text(last),
            BrokerError::Url(_) | BrokerError::Nacked | BrokerError::Unsupported(_) => {
                ErrorKind::Other
            }
        }
    }
}
