#!/usr/bin/env bash
# Makes sure RabbitMQ answers on 127.0.0.1:5672: installs it with apt if absent, starts it if
# down, and waits until it accepts connections. Idempotent; quiet when it is already up.
set -euo pipefail

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if port_open; then
  echo "ensure-broker: RabbitMQ is up on 127.0.0.1:5672" >&2
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "ensure-broker: installing rabbitmq-server (apt)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi

echo "ensure-broker: starting RabbitMQ" >&2
if ! rabbitmq-server -detached >/dev/null 2>&1; then
  service rabbitmq-server start >/dev/null 2>&1 || true
fi

for _ in $(seq 1 120); do
  if port_open; then
    # The port opens slightly before the node accepts logins; wait for full start-up.
    rabbitmqctl await_startup >/dev/null 2>&1 || sleep 1
    echo "ensure-broker: RabbitMQ is up on 127.0.0.1:5672" >&2
    exit 0
  fi
  sleep 0.5
done
echo "ensure-broker: RabbitMQ did not come up on 127.0.0.1:5672 within 60 s" >&2
exit 1
