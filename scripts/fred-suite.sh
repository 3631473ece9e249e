#!/usr/bin/env bash
# Runs the centralized integration tests of fred (github.com/aembke/fred.rs, the async
# Rust client; each test in RESP2 and in RESP3) against a redis-server directly, then
# through redis-sidecar in front of the same kind of server, and lists every test
# whose result differs.
#
#   scripts/fred-suite.sh SOURCE [TEST_FILTER]
#
# SOURCE: a checkout of fred (tested: 10.1.0, f222ad7). The suite logs in as the ACL
# user foo (password bar; the default user's password is bar too) and uses DEBUG, as
# its docker setup (tests/environ) arranges: here a redis-server on a free port with
# the same users. Through the proxy twice, its own connections logged in as the
# default user: with `auth_passthrough: true` (AUTH checked by Redis, each login on a
# connection of its own), then with `client_password: bar` and the suite logging in
# as `default` (AUTH checked by the proxy, the shared connections used). TEST_FILTER
# (default `integration::centralized::`) is passed to the test binary. The clustered,
# sentinel, TLS and redis-stack groups need their docker topologies and are not run.
# Builds fred's tests with cargo (crates.io) into
# ${FRED_SUITE_TARGET:-target/fred-suite-build}; output in
# ${FRED_SUITE_OUT:-target/fred-suite}.
set -euo pipefail

SUITE=fred-suite
source "$(dirname "${BASH_SOURCE[0]}")/suite-common.sh"
SRC="$(cd "${1:?usage: scripts/fred-suite.sh FRED_SOURCE [TEST_FILTER]}" && pwd)"
FILTER=${2:-integration::centralized::}
OUT="$(out_dir "${FRED_SUITE_OUT:-$ROOT/target/fred-suite}")"
TARGET="$(out_dir "${FRED_SUITE_TARGET:-$ROOT/target/fred-suite-build}")"
# The features of fred's all-features runner (tests/docker/runners/bash/all-features.sh)
# but its tracing, network-log and DNS ones, which need nothing of the server, and
# tcp-user-timeouts (fred 10.1.0 does not build with it: socket2 lacks the method).
FEATURES="custom-reconnect-errors serde-json blocking-encoding dynamic-pool monitor metrics"
FEATURES+=" sentinel-client subscriber-client debug-ids replicas sha-1 transactions i-all"
FEATURES+=" credential-provider"
(cd "$ROOT" && cargo build --release --quiet)
log "building fred's tests"
(cd "$SRC" && CARGO_TARGET_DIR="$TARGET" cargo test --release --quiet --test lib \
    --features "$FEATURES" --no-run >"$OUT/build.log" 2>&1) || {
    log "build failed: $OUT/build.log"
    exit 1
}

# redis_with_users PORT: redis-server as fred's docker setup makes it.
redis_with_users() {
    start_redis "$1" --enable-debug-command yes --requirepass bar
    redis-cli -p "$1" -a bar --no-auth-warning \
        ACL SETUSER foo on allkeys allcommands allchannels '>bar' >/dev/null
}

run() { # name port username
    log "$1 run"
    (cd "$SRC" && FRED_REDIS_CENTRALIZED_HOST=127.0.0.1 FRED_REDIS_CENTRALIZED_PORT=$2 \
        REDIS_USERNAME=$3 REDIS_PASSWORD=bar REDIS_SENTINEL_PASSWORD=baz \
        CARGO_TARGET_DIR="$TARGET" timeout 1800 cargo test --release --test lib \
        --features "$FEATURES" -- --test-threads=1 "$FILTER" >"$OUT/$1.log" 2>&1) ||
        log "$1 run: exit $?"
}

PORT=$(free_port)
redis_with_users "$PORT"
run direct "$PORT" foo
stop_started

# proxy_run NAME USERNAME YAML_LINE: the suite through the proxy (the given line added
# to its config) in front of a new redis-server.
proxy_run() {
    local redis port
    redis=$(free_port)
    port=$(free_port)
    redis_with_users "$redis"
    {
        proxy_config "$redis" | sed -e 's/^password: .*/password: "bar"/'
        echo "listen: 127.0.0.1:$port"
        echo "$3"
    } >"$WORK/proxy.yml"
    start_proxy "$WORK/proxy.yml" "$OUT/$1-server.log" -p "$port" -a bar --no-auth-warning
    run "$1" "$port" "$2"
    stop_started
}
proxy_run proxy foo "auth_passthrough: true"
proxy_run proxy-shared default 'client_password: "bar"'

compare_libtest 'with auth_passthrough (user foo, a connection of its own per client):' \
    "$OUT/direct.log" "$OUT/proxy.log"
compare_libtest 'with client_password (user default, shared connections):' \
    "$OUT/direct.log" "$OUT/proxy-shared.log"
