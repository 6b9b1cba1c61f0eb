//! Fault injection: the real `worker` binary and the real RabbitMQ under kill -9, a broker
//! restart, children killed at random, a flood of malformed messages and hostile control
//! messages. Every test holds one lock: they are heavy, and one restarts the broker (cargo
//! runs test binaries one after another, so this never runs beside the `it` suite).
#![allow(missing_docs, unreachable_pub, clippy::unwrap_used)]

mod kit;

/// The tests, a file each in tests/faults/ (named by the behaviour they check).
mod faults {
    mod chaos;
    mod cluster;
    mod control_errors;
    mod eta_ladder;
    mod hostile;
    mod oversized_input;
    mod redis_backend;
    mod redis_broker;
    mod tls;
}

use std::sync::{Mutex, MutexGuard};

static SERIAL: Mutex<()> = Mutex::new(());

/// Taken by every test for its whole run.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub use kit::block_on;
