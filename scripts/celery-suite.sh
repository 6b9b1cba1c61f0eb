#!/usr/bin/env bash
# Celery 5.7.0's own integration suite (t/integration, through ../shared/celery-suite/run.sh)
# against `worker -A suite_app` and against Celery's own prefork worker, in the same harness,
# one after the other; prints both counts. Not part of scripts/test.sh: one run of each takes
# up to SUITE_TIMEOUT (default 2400 s) on this machine.
#
#   scripts/celery-suite.sh                 # both workers, redis results
#   WORKERS=celeryd scripts/celery-suite.sh # only celeryd
#   BACKEND=rpc SUBSET=worker SUITE_TIMEOUT=1200 scripts/celery-suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."

suite="${CELERY_SUITE:-$(cd .. && pwd)/shared/celery-suite}"
[ -x "$suite/run.sh" ] || { echo "celery-suite: no $suite/run.sh (set CELERY_SUITE)" >&2; exit 2; }
scripts/ensure-build-deps.sh
scripts/ensure-broker.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/celeryd-target}"
cargo build --bin worker
bin="$CARGO_TARGET_DIR/debug/worker"
export VENV="${VENV:-$HOME/.cache/celery-suite/venv}"

# The suite's vhost (never "/"); Redis for its results comes from ensure-backends.sh.
if command -v rabbitmqctl >/dev/null; then
  rabbitmqctl add_vhost celerysuite </dev/null >/dev/null 2>&1 || true
  rabbitmqctl set_permissions -p celerysuite guest '.*' '.*' '.*' </dev/null >/dev/null
fi
scripts/ensure-backends.sh

out="${OUT_ROOT:-$PWD/target/celery-suite}"
mkdir -p "$out"
summary=()
for w in ${WORKERS:-celeryd celery}; do
  case "$w" in
    celeryd)
      # The suite's app names its broker (TEST_BROKER) and result backend in app.conf.
      OUT="$out/celeryd" "$suite/run.sh" sh -c \
        "exec '$bin' -A suite_app -c 1 -n 'suite@%h' -l info --python '$VENV/bin/python'" \
        | tee "$out/celeryd.txt" || true ;;
    celery)
      OUT="$out/celery" "$suite/run.sh" | tee "$out/celery.txt" || true ;;
  esac
  summary+=("$w: $(tail -n 1 "$out/$w.txt")")
done
printf '%s\n' "${summary[@]}"
