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

SUITE=redis-rb-suite
source "$(dirname "${BASH_SOURCE[0]}")/suite-common.sh"
SRC="$(cd "${1:?usage: scripts/redis-rb-suite.sh REDIS_RB_SOURCE_DIR}" && pwd)"
OUT="$(out_dir "${REDIS_RB_SUITE_OUT:-$ROOT/target/redis-rb-suite}")"
run() { # name
    log "$1 run"
    (cd "$SRC" && DRIVER="${DRIVER:-ruby}" REDIS_SOCKET_PATH="$WORK/rb.sock" timeout 900 ruby -Ilib -Itest -e \
        'Dir["test/{redis,distributed}/**/*_test.rb"].sort.each { |f| require File.expand_path(f) }' \
        -- -v >"$OUT/$1.log" 2>&1) || log "$1 run: exit $?"
    printf '%-6s %s\n' "$1" "$(grep -E '^[0-9]+ runs' "$OUT/$1.log" || tail -n 1 "$OUT/$1.log")"
}

need_port 6381
(cd "$ROOT" && cargo build --release --quiet)

start_redis 6381 --enable-debug-command yes --unixsocket "$WORK/rb.sock" --unixsocketperm 700
run direct
stop_started

REDIS=$(free_port)
start_redis "$REDIS" --enable-debug-command yes
{
    proxy_config "$REDIS" 15
    echo "listen: 127.0.0.1:6381"
    echo "unixsocket: $WORK/rb.sock"
    echo "unixsocketperm: 700"
    echo "auth_passthrough: true"
} >"$WORK/proxy.yml"
start_proxy "$WORK/proxy.yml" "$OUT/proxy-server.log" -p 6381 -n 15
run proxy

# minitest -v prints "Class#test_name = 0.01 s = ." (or F / E / S) per test.
res() { grep -E '^[A-Za-z0-9_:]+#test_.* = [0-9.]+ s = [.FES]$' "$1" | sed -E 's/ = [0-9.]+ s = / /' | sort; }
diff <(res "$OUT/direct.log") <(res "$OUT/proxy.log") >"$OUT/differences.txt" || true
log "tests whose result differs (< direct, > proxy): $(grep -c '^[<>]' "$OUT/differences.txt" || true)"
cat "$OUT/differences.txt"
