#!/usr/bin/env bash
# Makes sure the result backends of the Python-task tests answer: Redis on 127.0.0.1:6379 and
# PostgreSQL on 127.0.0.1:5432 (user postgres without a password, database `test`). Installs
# each with apt if absent, starts it if down, and (PostgreSQL) trusts local TCP logins and
# creates the database when a fresh install lacks them. Idempotent; quiet when both are up.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 120); do port_open "$1" && return 0; sleep 0.5; done
  echo "ensure-backends: nothing answers on 127.0.0.1:$1 after 60 s" >&2
  return 1
}
apt_install() {
  echo "ensure-backends: installing $* (apt)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Redis.
if ! port_open 6379; then
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  echo "ensure-backends: starting Redis" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' >/dev/null
  wait_port 6379
fi

# PostgreSQL.
pg_ok() { psql -h 127.0.0.1 -U postgres -d test -Atqc 'select 1' >/dev/null 2>&1; }
if ! pg_ok; then
  command -v pg_ctlcluster >/dev/null 2>&1 || apt_install postgresql
  if ! port_open 5432; then
    echo "ensure-backends: starting PostgreSQL" >&2
    service postgresql start >/dev/null 2>&1 || pg_ctlcluster "$(ls /etc/postgresql | sort -V | tail -1)" main start
    wait_port 5432
  fi
  if ! psql -h 127.0.0.1 -U postgres -Atqc 'select 1' >/dev/null 2>&1; then
    hba=$(su postgres -c "psql -Atqc 'show hba_file'")
    echo "ensure-backends: trusting local TCP logins in $hba" >&2
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    su postgres -c "psql -Atqc 'select pg_reload_conf()'" >/dev/null
  fi
  psql -h 127.0.0.1 -U postgres -Atqc "select 1 from pg_database where datname = 'test'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -qc 'create database test'
  pg_ok || { echo "ensure-backends: PostgreSQL does not accept postgres@127.0.0.1/test" >&2; exit 1; }
fi
echo "ensure-backends: Redis and PostgreSQL are up" >&2
