#!/usr/bin/env bash
# Runs the standalone tests of valkey-glide's Python client (github.com/valkey-io/
# valkey-glide: a Rust core shared by its Python, Java, Node and Go clients; RESP2
# and RESP3, batches, scans, pub/sub, client-side caching, MONITOR, lazy
# connections) against a redis-server directly, then through redis-sidecar, and
# lists every test whose result differs.
#
#   scripts/glide-suite.sh SOURCE [VENV_DIR]
#
# SOURCE: a checkout of valkey-glide (tested: 7d61630b, 2026-08-21, with the PyPI
# packages valkey-glide and valkey-glide-sync 2.6.0, whose compiled core the tests
# use; the checkout's python/tests only). Its tests take existing servers with
# `--standalone-endpoints`; the cluster-mode tests (no `--cluster-endpoints` given),
# the TLS and DNS tests and the server-module tests are skipped. Only the asyncio
# backend runs (the suite's default). Through the proxy: the shipped config with
# `command_timeout: 60`, since the suite runs functions and scripts for 10 s and
# `DEBUG SLEEP`s with a client timeout of 30 s (with the default 5 s the proxy
# answers them with its timeout error, as documented, and the still-running script
# makes the next tests meet -BUSY). Then again with `auth_passthrough: true` and
# nothing denied, since the suite sets `requirepass`, makes ACL users and calls
# REPLICAOF. Python packages go into VENV_DIR (default target/glide-venv) from PyPI.
# Output in ${GLIDE_SUITE_OUT:-target/glide-suite}.
set -euo pipefail

SUITE=glide-suite
source "$(dirname "${BASH_SOURCE[0]}")/suite-common.sh"
SRC="$(cd "${1:?usage: scripts/glide-suite.sh VALKEY_GLIDE_SOURCE [VENV_DIR]}" && pwd)"
VENV=${2:-$ROOT/target/glide-venv}
OUT="$(out_dir "${GLIDE_SUITE_OUT:-$ROOT/target/glide-suite}")"
(cd "$ROOT" && cargo build --release --quiet)
if [ ! -x "$VENV/bin/pytest" ]; then
    log "installing valkey-glide and its test requirements into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q valkey-glide==2.6.0 valkey-glide-sync==2.6.0 "pytest<9.1" \
        pytest-asyncio pytest-timeout anyio trio uvloop psutil packaging
fi

run() { # name port
    log "$1 run"
    redis-cli -p "$2" flushall >/dev/null
    (cd "$SRC/python" && timeout 3000 "$VENV/bin/python" -m pytest -p no:cacheprovider -q \
        --tb=line -k "not server_modules" tests/async_tests \
        --ignore=tests/async_tests/test_dns.py --ignore=tests/async_tests/test_tls.py \
        --standalone-endpoints="127.0.0.1:$2" --junitxml="$OUT/$1.xml" \
        >"$OUT/$1.log" 2>&1) || log "$1 run: exit $?"
    tail -n 1 "$OUT/$1.log" >&2
}

DEBUG=(--enable-debug-command yes)
PORT=$(free_port)
start_redis "$PORT" "${DEBUG[@]}"
run direct "$PORT"
stop_started

# proxy_run NAME [YAML_LINE...]: the suite through the proxy (the lines added to the
# shipped config) in front of a new redis-server.
proxy_run() {
    local name=$1 redis port line
    shift
    redis=$(free_port)
    port=$(free_port)
    start_redis "$redis" "${DEBUG[@]}"
    {
        proxy_config "$redis"
        echo "listen: 127.0.0.1:$port"
        echo "command_timeout: 60"
        for line in "$@"; do echo "$line"; done
    } >"$WORK/proxy.yml"
    start_proxy "$WORK/proxy.yml" "$OUT/$name-proxy.log" -p "$port"
    run "$name" "$port"
    stop_started
}
proxy_run proxy
proxy_run proxy-passthrough "auth_passthrough: true" "deny_commands: []"

compare_junit glide "$OUT/direct.xml" "$OUT/proxy.xml"
compare_junit passthrough "$OUT/direct.xml" "$OUT/proxy-passthrough.xml"
