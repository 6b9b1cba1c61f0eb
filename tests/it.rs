//! Integration tests: the real `worker` binary against the real RabbitMQ, driven by the real
//! Python Celery client (pinned, installed into a virtualenv by scripts/ensure-python.sh).
#![allow(missing_docs, unreachable_pub, clippy::unwrap_used)]

mod kit;

/// The tests, a file each in tests/it/ (named by the behaviour they check).
mod it {
    mod beat;
    mod broker;
    mod canvas;
    mod cli;
    mod ctl;
    mod declare;
    mod eta;
    mod events;
    mod example;
    mod fixtures;
    mod fleet;
    mod flower;
    mod inspect;
    mod interop;
    mod limits;
    mod malformed;
    mod metrics;
    mod operator;
    mod ops;
    mod pools;
    mod python_child;
    mod python_tasks;
    mod queues;
    mod rate;
    mod redis_broker;
    mod retry;
    mod revoke;
    mod shutdown;
}

pub use kit::block_on;
