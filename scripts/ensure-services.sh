#!/usr/bin/env bash
# Make sure Redis (the Celery broker) and, with --postgres, PostgreSQL answer on loopback:
# start them if they are installed but down, install them (Debian packages, as root) if
# missing, and fail loudly if they still do not answer.
set -euo pipefail

want_postgres=0
[ "${1:-}" = "--postgres" ] && want_postgres=1

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 60); do port_open "$port" && return 0; sleep 0.5; done
  echo "ERROR: $name does not answer on 127.0.0.1:$port" >&2
  return 1
}

apt_install() {
  if [ "$(id -u)" != "0" ]; then
    echo "ERROR: $* missing and not root: install it (sudo apt-get install $*)" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! port_open 6379; then
  echo "Redis is not running on 127.0.0.1:6379: starting it"
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "${REDIS_DIR:-/var/lib/redis}" --logfile "${REDIS_LOG:-/var/log/redis/ci.log}"
fi
wait_port 6379 Redis

if [ "$want_postgres" = 1 ] && ! port_open 5432; then
  echo "PostgreSQL is not running on 127.0.0.1:5432: starting it"
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
    # Local trust auth, as the tests and the CI connect as postgres without a password.
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
      sed -i -E 's/^(host\s+all\s+all\s+127\.0\.0\.1\/32\s+)\S+/\1trust/; s/^(local\s+all\s+postgres\s+)\S+/\1trust/' "$hba"
    done
  fi
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
fi
[ "$want_postgres" = 1 ] && wait_port 5432 PostgreSQL
echo "Services up: Redis$([ "$want_postgres" = 1 ] && echo ', PostgreSQL')"
