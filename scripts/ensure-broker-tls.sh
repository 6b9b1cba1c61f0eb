#!/usr/bin/env bash
# Gives the local RabbitMQ an amqps:// listener on port 5671 with a self-signed certificate
# authority made here (for the TLS test), and prints the CA file's path. Idempotent: the
# certificates and the listener are made once; RabbitMQ is restarted only when its config
# changes. Needs root (it edits /etc/rabbitmq); installs openssl if absent.
set -euo pipefail
cd "$(dirname "$0")"

dir=/etc/rabbitmq/celeryd-tls
conf=/etc/rabbitmq/rabbitmq.conf
port_open() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

./ensure-broker.sh
command -v openssl >/dev/null 2>&1 || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
}

if [ ! -f "$dir/server.pem" ]; then
  echo "ensure-broker-tls: making a test CA and a server certificate for localhost" >&2
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=celeryd test CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$dir/ext.cnf"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 3650 -extfile "$dir/ext.cnf" -out "$dir/server.pem" 2>/dev/null
  chmod 644 "$dir"/*.pem "$dir/server.key"
fi

if ! grep -q '^listeners.ssl.default' "$conf" 2>/dev/null; then
  echo "ensure-broker-tls: adding an amqps listener on 5671 and restarting RabbitMQ" >&2
  cat >> "$conf" <<CONF
listeners.ssl.default = 5671
ssl_options.cacertfile = $dir/ca.pem
ssl_options.certfile = $dir/server.pem
ssl_options.keyfile = $dir/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
  rabbitmqctl shutdown >/dev/null 2>&1 || service rabbitmq-server stop >/dev/null 2>&1 || true
  ./ensure-broker.sh
fi

for _ in $(seq 1 60); do
  if port_open 5671; then
    echo "$dir/ca.pem"
    exit 0
  fi
  sleep 0.5
done
echo "ensure-broker-tls: no amqps listener on 5671" >&2
exit 1
