//! lapin's errors behind [`BrokerError`]: wrapped so that no caller names lapin, and
//! classified here, where the broker's and lapin's words are known.

use crate::broker::{BrokerError, ErrorKind};

/// An AMQP client error (lapin's).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct AmqpError(#[from] pub(crate) lapin::Error);

impl AmqpError {
    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        kind_of_text(&self.0.to_string())
    }
}

impl From<lapin::Error> for BrokerError {
    fn from(e: lapin::Error) -> Self {
        BrokerError::Amqp(AmqpError(e))
    }
}

/// The kind of an AMQP failure by its text (RabbitMQ's reply text, as lapin renders it; also
/// what a connection's stream reports when it ends).
pub fn kind_of_text(text: &str) -> ErrorKind {
    if text.contains("ACCESS_REFUSED") || text.contains("ACCESS-REFUSED") {
        ErrorKind::LoginRefused
    } else if text.contains("RESOURCE_LOCKED") {
        ErrorKind::ResourceLocked
    } else if text.contains("does not support global qos") {
        // 540 NOT_IMPLEMENTED - queue '…' does not support global qos
        ErrorKind::GlobalQosRefused
    } else if text.contains("frame too large") {
        // lapin's words (io_loop.rs, `parse`)
        ErrorKind::FrameTooLarge
    } else if text.contains("PRECONDITION_FAILED") {
        ErrorKind::Clash
    } else {
        ErrorKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_words_are_classified() {
        let cases = [
            (
                "ACCESS_REFUSED - Login was refused",
                ErrorKind::LoginRefused,
            ),
            ("connection closed: ACCESS-REFUSED", ErrorKind::LoginRefused),
            (
                "RESOURCE_LOCKED - cannot obtain exclusive access",
                ErrorKind::ResourceLocked,
            ),
            (
                "NOT_IMPLEMENTED - queue 'q' in vhost '/' does not support global qos",
                ErrorKind::GlobalQosRefused,
            ),
            ("protocol error: frame too large", ErrorKind::FrameTooLarge),
            ("PRECONDITION_FAILED - inequivalent arg", ErrorKind::Clash),
            ("connection reset by peer", ErrorKind::Other),
        ];
        for (text, kind) in cases {
            assert_eq!(kind_of_text(text), kind, "{text}");
        }
    }
}
