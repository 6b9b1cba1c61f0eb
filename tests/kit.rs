//! The test kit both test binaries share (`it`, tests/it.rs, and `faults`, tests/faults.rs):
//! the real broker, the real `worker` binary, the real Python Celery, and the processes they
//! make. Both roots sit beside this file and declare `mod kit;`, so both compile the same
//! modules. An item only one of the binaries uses says so with an `#[allow(dead_code)]` of its
//! own (the other binary would call it unused); everything else is used by both.

mod amqp;
mod celery;
mod control;
mod net;
mod process;
mod worker;

use std::path::PathBuf;

pub use amqp::*;
pub use celery::*;
pub use control::*;
pub use net::*;
pub use process::*;
pub use worker::*;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
