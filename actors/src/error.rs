//! Errors, one enum per domain. Per-task failures are handled where they occur (the message is
//! rejected or a FAILURE result is published); only infrastructure errors travel upwards.

use thiserror::Error;

/// A task message that cannot be turned into a request. The consumer rejects the message
/// (without requeue), logs the reason and carries on.
#[derive(Debug, Error, PartialEq)]
pub enum ProtocolError {
    /// The content type is not in the accepted list (JSON; with Python tasks, the app's
    /// `accept_content`): the type, and what is accepted.
    #[error("refusing to deserialize content of type {0}")]
    ContentType(String),
    /// The `compression` header names a codec the worker does not implement.
    #[error("unsupported compression {0:?}")]
    Compression(String),
    /// The body could not be decompressed.
    #[error("cannot decompress message body: {0}")]
    Decompress(String),
    /// The body (after decompression) is larger than `worker.max_message_size`.
    #[error("message {what} is larger than {limit} bytes (worker.max_message_size)")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
        /// `body` or `decompressed body`.
        what: &'static str,
    },
    /// The body is not valid (UTF-8) JSON.
    #[error("cannot decode message body: {0}")]
    Json(String),
    /// Neither a protocol v2 header `task` nor a protocol v1 body with `task`.
    #[error("unknown message (no task header, body is not a protocol 1 task): wrong destination?")]
    UnknownMessage,
    /// The transport's envelope around the message cannot be read (Redis: not kombu's JSON
    /// envelope).
    #[error("cannot read the broker's envelope: {0}")]
    Envelope(String),
    /// A required header or body field is missing.
    #[error("missing required field '{0}'")]
    Missing(&'static str),
    /// A header or body field has the wrong type or an unusable value.
    #[error("invalid field '{field}': {reason}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Failures talking to a child process. The child is replaced; its task (if any) fails with
/// `WorkerLostError` or is requeued.
#[derive(Debug, Error)]
pub enum ChildError {
    /// Spawning the process (this program) failed.
    #[error("cannot start child process {0}: {1}")]
    Spawn(String, std::io::Error),
    /// Reading or writing the pipe failed.
    #[error("child pipe error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame could not be encoded or decoded.
    #[error("child frame error: {0}")]
    Frame(String),
    /// The child closed its pipe (it exited).
    #[error("child process exited")]
    Exited,
}

/// Statedb (RocksDB) failures. At start-up they stop the worker with the path and reason;
/// nothing is ever reset silently.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database cannot be opened (bad path, permissions, corruption).
    #[error("cannot open the statedb at {path}: {reason}")]
    Open {
        /// The path.
        path: String,
        /// RocksDB's words.
        reason: String,
    },
    /// The beat schedule database cannot be opened (bad path, another scheduler has it open,
    /// corruption).
    #[error("cannot open the beat schedule database at {path}: {reason}")]
    OpenSchedule {
        /// The path.
        path: String,
        /// RocksDB's words.
        reason: String,
    },
    /// A read or write failed.
    #[error("statedb I/O error: {0}")]
    Io(String),
    /// A record is not what this worker writes.
    #[error("statedb record is corrupt: {0}")]
    Corrupt(String),
}

/// An invalid setting; names the key. The worker refuses to start.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    /// A key has a value outside its domain.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The dotted key, e.g. `worker.concurrency`.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
