#!/usr/bin/env bash
# Runs redis-rb's own test suite (the Ruby client, groups test:redis and
# test:distributed) against a redis-server directly, then through redis-sidecar in
# front of the same server, and prints both summaries and the tests whose results
# differ.
#
#   scripts/redis-rb-suite.sh REDIS_RB_SOURCE_DIR
#
# REDIS_RB_SOURCE_DIR: a checkout of https://github.com/redis/redis-rb at v4.8.0
# (the version Debian bookworm ships; 5.x needs the redis-client gem). Needs
# Debian's ruby, ruby-minitest and ruby-mocha; no gems are installed.
#
# The suite dials 127.0.0.1:6381 (fixed in its helper) and database 15, and a Unix
# socket given by REDIS_SOCKET_PATH: directly, redis-server listens there; through
# the proxy, the proxy listens there (with databases 11-15 added to the sample
# config, and `auth_passthrough: true`, as the suite logs in as ACL users it makes)
# and redis-server on a free port. The sentinel and cluster groups need
# their own fixed-port topologies and are not run.
# Output in ${REDIS_RB_SUITE_OUT:-target/redis-rb-suite}: direct.log, proxy.log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$(cd "${1:?usage: scripts/redis-rb-suite.sh REDIS_RB_SOURCE_DIR}" && pwd)"
OUT="${REDIS_RB_SUITE_OUT:-$ROOT/target/redis-rb-suite}"
OUT="$(mkdir -p "$OUT" && cd "$OUT" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/redis-rb-suite.XXXXXX")"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
log() { printf 'redis-rb-suite: %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_ping() { # redis-cli args...
    for _ in $(seq 1 100); do redis-cli "$@" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
    log "nothing answers on $*"; exit 1
}
redis() { # port [unixsocket]
    redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no \
        --enable-debug-command yes --dir "$WORK" --logfile "$WORK/redis-$1.log" \
        ${2:+--unixsocket "$2" --unixsocketperm 700} &
    PIDS+=($!)
    wait_ping -p "$1"
}
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.5; PIDS=(); }
run() { # name
    log "$1 run"
    (cd "$SRC" && DRIVER="${DRIVER:-ruby}" REDIS_SOCKET_PATH="$WORK/rb.sock" timeout 900 ruby -Ilib -Itest -e \
        'Dir["test/{redis,distributed}/**/*_test.rb"].sort.each { |f| require File.expand_path(f) }' \
        -- -v >"$OUT/$1.log" 2>&1) || log "$1 run: exit $?"
    printf '%-6s %s\n' "$1" "$(grep -E '^[0-9]+ runs' "$OUT/$1.log" || tail -n 1 "$OUT/$1.log")"
}

ss -ltn | grep -q '127.0.0.1:6381 ' && { log "port 6381 is taken; the suite needs it"; exit 1; }
(cd "$ROOT" && cargo build --release --quiet)

redis 6381 "$WORK/rb.sock"
run direct
stop_all

REDIS=$(free_port)
redis "$REDIS"
{
    sed -e "s/^port: .*/port: $REDIS/" -e 's/^host: .*/host: 127.0.0.1/' \
        -e 's/^\(  backup: .*\)$/\1\n  db11: { db: 11 }\n  db12: { db: 12 }\n  db13: { db: 13 }\n  db14: { db: 14 }\n  db15: { db: 15 }/' \
        "$ROOT/config/redis-databases.yaml"
    echo "listen: 127.0.0.1:6381"
    echo "unixsocket: $WORK/rb.sock"
    echo "unixsocketperm: 700"
    echo "auth_passthrough: true"
} >"$WORK/proxy.yml"
"$ROOT/target/release/redis-sidecar" -c "$WORK/proxy.yml" --metrics-listen off \
    >"$OUT/proxy-server.log" 2>&1 &
PIDS+=($!)
wait_ping -p 6381 -n 15
run proxy

# minitest -v prints "Class#test_name = 0.01 s = ." (or F / E / S) per test.
res() { grep -E '^[A-Za-z0-9_:]+#test_.* = [0-9.]+ s = [.FES]$' "$1" | sed -E 's/ = [0-9.]+ s = / /' | sort; }
diff <(res "$OUT/direct.log") <(res "$OUT/proxy.log") >"$OUT/differences.txt" || true
log "tests whose result differs (< direct, > proxy): $(grep -c '^[<>]' "$OUT/differences.txt" || true)"
cat "$OUT/differences.txt"
