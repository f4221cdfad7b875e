#!/usr/bin/env bash
# Starts a private, throw-away PostgreSQL cluster for the store's tests and prints, alone on
# standard output, the line that points the tests at it:
#
#   eval "$(bash .ci/postgres.sh)"        # exports FERRY_TEST_POSTGRES_URL (and _DIR)
#   cargo test ...
#   bash .ci/postgres.sh stop              # stops the cluster named by FERRY_TEST_POSTGRES_DIR
#
# On a Debian machine as root: installs PostgreSQL with apt when no initdb is found, creates a
# cluster in a temporary directory owned by the `postgres` user (trust authentication, loopback
# only, its own port and socket directory), starts it and waits until it accepts connections.
# Everything but the export lines goes to standard error. Durability settings are off: this
# cluster holds test data only.
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }

# Runs a command as the postgres user when we are root, else as ourselves.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# apt-get as root, or through sudo when that needs no password; otherwise says why it cannot.
apt_get() {
  if [ "$(id -u)" -eq 0 ]; then
    apt-get "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n env DEBIAN_FRONTEND=noninteractive apt-get "$@"
  else
    log "PostgreSQL is not installed, and installing it needs root (or sudo without a password)"
    return 1
  fi
}

find_bindir() {
  local initdb
  initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$initdb" ] && dirname "$initdb"
}

if [ "${1:-}" = "stop" ]; then
  dir=${2:-${FERRY_TEST_POSTGRES_DIR:-}}
  [ -n "$dir" ] || { log "usage: postgres.sh stop [DIR] (or set FERRY_TEST_POSTGRES_DIR)"; exit 2; }
  bindir=$(find_bindir) || { log "no PostgreSQL installed"; exit 1; }
  (cd "$dir" && as_pg "$bindir/pg_ctl" stop -D "$dir/data" -m fast -w >&2)
  rm -rf "$dir"
  log "stopped and removed $dir"
  exit 0
fi

bindir=$(find_bindir || true)
if [ -z "$bindir" ]; then
  log "PostgreSQL is not installed; installing it with apt"
  export DEBIAN_FRONTEND=noninteractive
  apt_get update >&2
  apt_get install -y --no-install-recommends postgresql >&2
  bindir=$(find_bindir) || { log "initdb still missing after installing postgresql"; exit 1; }
fi
log "using $bindir"

# A free port: FERRY_PG_PORT, else the first free one from 55432 on.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=${FERRY_PG_PORT:-}
if [ -z "$port" ]; then
  for candidate in $(seq 55432 55531); do
    if ! port_in_use "$candidate"; then
      port=$candidate
      break
    fi
  done
  [ -n "$port" ] || { log "no free port in 55432-55531"; exit 1; }
fi

# As root the cluster runs as the postgres user, who must reach the directory: every directory
# above it must be searchable by others, which a TMPDIR under /root or a private work tree is
# not. So as root the cluster lives under /tmp (or FERRY_PG_PARENT), whatever TMPDIR says.
if [ "$(id -u)" -eq 0 ]; then
  parent=${FERRY_PG_PARENT:-/tmp}
else
  parent=${TMPDIR:-/tmp}
fi
dir=$(mktemp -d "$parent/ferry-pg.XXXXXX")
chmod 755 "$dir"
if [ "$(id -u)" -eq 0 ]; then
  chown postgres:postgres "$dir"
  as_pg test -w "$dir" || { log "the postgres user cannot write to $dir (check the modes of $parent)"; exit 1; }
fi
cd "$dir"   # the postgres user must be able to read its working directory

as_pg "$bindir/initdb" -A trust -U postgres -E UTF8 --locale=C.UTF-8 -D "$dir/data" >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; log "initdb failed"; exit 1; }

# TLS with a throw-away self-signed certificate, so that the tests can connect with
# `sslmode=require` too (plain connections keep working). Without an openssl binary, no TLS: the
# TLS test then says it is skipped.
ssl_opts=""
if command -v openssl >/dev/null 2>&1 \
  && as_pg openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=127.0.0.1" \
    -keyout "$dir/data/server.key" -out "$dir/data/server.crt" >"$dir/openssl.log" 2>&1; then
  as_pg chmod 600 "$dir/data/server.key"
  ssl_opts="-c ssl=on -c ssl_cert_file=$dir/data/server.crt -c ssl_key_file=$dir/data/server.key"
else
  log "no TLS for this cluster (openssl missing or failed)"
fi

as_pg "$bindir/pg_ctl" start -D "$dir/data" -l "$dir/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off $ssl_opts" \
  >&2 || { cat "$dir/server.log" >&2; log "pg_ctl start failed"; exit 1; }

for _ in $(seq 1 60); do
  if "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port"; then
    log "PostgreSQL is ready on 127.0.0.1:$port (data in $dir; stop with: bash .ci/postgres.sh stop $dir)"
    echo "export FERRY_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$port/postgres"
    echo "export FERRY_TEST_POSTGRES_DIR=$dir"
    exit 0
  fi
  sleep 0.5
done
cat "$dir/server.log" >&2
log "PostgreSQL did not become ready on port $port"
exit 1
