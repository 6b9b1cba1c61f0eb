#!/usr/bin/env bash
# Quick start: make sure RabbitMQ runs, build, and run the worker on the example config.
# Extra arguments go to the worker, e.g. scripts/run-worker.sh -c 2 -l debug
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-build-deps.sh
scripts/ensure-broker.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/celeryd-target}"
exec cargo run --quiet --bin worker -- --config config/worker.toml "$@"
