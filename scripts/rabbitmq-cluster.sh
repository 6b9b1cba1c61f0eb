#!/usr/bin/env bash
# A private 3-node RabbitMQ cluster on this host, for the failover test and benchmark
# (recipe: ../shared/rabbitmq-compat.md §4). Nodes r1..r3@localhost listen on
# 127.0.0.1:5681..5683 (distribution ports 25681..25683); everything they keep — cookie,
# configuration, Mnesia, logs — lives under $CLUSTER_DIR (default /tmp/celeryd-rmqc). The
# node on 5672 is never touched: the cluster has its own cookie, names, ports and config.
#
#   rabbitmq-cluster.sh start          fresh cluster of 3 (stops and wipes an earlier one)
#   rabbitmq-cluster.sh stop           stop all 3 and wipe their state
#   rabbitmq-cluster.sh stop-node N    stop node N (1..3) as a crash-free shutdown would
#   rabbitmq-cluster.sh start-node N   start node N again (it rejoins the cluster)
#   rabbitmq-cluster.sh status         cluster_status as node 1 sees it
#
# Needs root (as the tests run) and rabbitmq-server installed (scripts/ensure-broker.sh).
set -euo pipefail

DIR="${CLUSTER_DIR:-/tmp/celeryd-rmqc}"
BIN=/usr/lib/rabbitmq/bin
DIST_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"

if [[ ! -x "$BIN/rabbitmq-server" ]]; then
  "$(dirname "$0")/ensure-broker.sh"
fi

# The environment of node N: the real scripts (not /usr/sbin's, which su to rabbitmq), none
# of /etc/rabbitmq's files, a private HOME for the cookie.
node_env() {
  local n=$1 d="$DIR/n$1"
  export HOME="$DIR"
  export RABBITMQ_NODENAME="r$n@localhost"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT="568$n"
  export RABBITMQ_DIST_PORT="2568$n"
  export RABBITMQ_CONF_ENV_FILE="$DIR/empty-env.conf"
  export RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
  export RABBITMQ_PLUGINS_EXPAND_DIR="$d/plugins-expand"
  export RABBITMQ_MNESIA_BASE="$d/mnesia"
  export RABBITMQ_LOG_BASE="$d/log"
  export RABBITMQ_PID_FILE="$d/rabbit.pid"
  export ERL_EPMD_ADDRESS=127.0.0.1
  # An Erlang VM that fails (rabbitmqctl against a stopped node) writes its dump here, not in
  # the caller's directory.
  export ERL_CRASH_DUMP="${TMPDIR:-/tmp}/celeryd-rmqc-erl_crash.dump"
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$DIST_ARGS"
  export RABBITMQ_CTL_ERL_ARGS="$DIST_ARGS"
  unset ERL_FLAGS
}

ctl() { # ctl N args…
  local n=$1
  shift
  (node_env "$n" && "$BIN/rabbitmqctl" -n "r$n@localhost" "$@" </dev/null)
}

prepare() {
  mkdir -p "$DIR"
  : >"$DIR/empty-env.conf"
  if [[ ! -f "$DIR/.erlang.cookie" ]]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F >"$DIR/.erlang.cookie"
    chmod 400 "$DIR/.erlang.cookie"
  fi
  for n in 1 2 3; do
    local d="$DIR/n$n"
    mkdir -p "$d/log" "$d/mnesia" "$d/plugins-expand"
    printf 'listeners.tcp.local = 127.0.0.1:568%s\nloopback_users = none\n' "$n" >"$d/rabbitmq.conf"
    echo '[].' >"$d/advanced.config"
    echo '[].' >"$d/enabled_plugins"
  done
}

start_node() {
  local n=$1
  (node_env "$n" && setsid "$BIN/rabbitmq-server" >>"$DIR/n$n/log/console.log" 2>&1 </dev/null &)
}

await_node() {
  local n=$1
  for _ in $(seq 1 120); do
    if ctl "$n" await_startup --timeout 5 >/dev/null 2>&1; then
      return 0
    fi
    sleep 1
  done
  echo "rabbitmq-cluster: node r$n did not start; see $DIR/n$n/log" >&2
  return 1
}

stop_node() {
  ctl "$1" stop >/dev/null 2>&1 || true
}

case "${1:-}" in
  start)
    for n in 1 2 3; do stop_node "$n"; done
    rm -rf "$DIR"
    prepare
    for n in 1 2 3; do start_node "$n"; done
    for n in 1 2 3; do await_node "$n"; done
    for n in 2 3; do
      ctl "$n" stop_app >/dev/null
      ctl "$n" join_cluster r1@localhost >/dev/null
      ctl "$n" start_app >/dev/null
    done
    echo "rabbitmq-cluster: r1..r3@localhost up on 127.0.0.1:5681..5683" >&2
    ;;
  stop)
    for n in 1 2 3; do stop_node "$n"; done
    rm -rf "$DIR"
    ;;
  stop-node)
    stop_node "${2:?node number}"
    ;;
  start-node)
    start_node "${2:?node number}"
    await_node "$2"
    ;;
  status)
    ctl 1 cluster_status
    ;;
  *)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
