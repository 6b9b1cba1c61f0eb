#!/usr/bin/env bash
# The whole test suite, as a newcomer (and CI) runs it: build prerequisites, RabbitMQ, Redis,
# PostgreSQL and the pinned Python Celery client are set up first if missing, then every test
# runs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-build-deps.sh
scripts/ensure-broker.sh
scripts/ensure-backends.sh
CELERYD_PYTHON="$(scripts/ensure-python.sh)"
export CELERYD_PYTHON

# One stable target directory, so RocksDB (C++) is compiled once and reused between runs.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/celeryd-target}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The example worker, which the integration tests run.
cargo build --workspace --examples
# Library, binary, example and test targets; not the benchmarks, which `--all-targets` would also run
# (harness = false). Clippy above still compiles and checks them.
cargo test --workspace --lib --bins --tests --examples
cargo test --workspace --doc
