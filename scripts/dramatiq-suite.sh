#!/usr/bin/env bash
# Runs the test suite of dramatiq (a Python task queue whose Redis broker runs its
# work through one Lua script, with results and rate limiters on Redis) against
# redis-server directly, then through redis-sidecar in front of the same kind of
# server, and lists every test whose result differs.
#
#   scripts/dramatiq-suite.sh SOURCE [VENV_DIR]
#
# SOURCE: a checkout of github.com/Bogdanp/dramatiq (tag v2.2.0 tried; PyPI's sdist
# lacks tests/conftest.py). VENV_DIR (default: target/dramatiq-venv) gets a
# virtualenv with dramatiq installed from SOURCE and its test requirements from PyPI.
# Its tests dial Redis on localhost:6379 and memcached on 127.0.0.1:11211 (the
# backends' tests are parametrised over both and a stub): memcached is started when
# none answers (Debian: memcached, and libmemcached-dev to build pylibmc). RabbitMQ's
# tests and the benchmarks are left out. Output in
# ${DRAMATIQ_SUITE_OUT:-target/dramatiq-suite}.
set -euo pipefail

SUITE=dramatiq-suite
source "$(dirname "${BASH_SOURCE[0]}")/suite-common.sh"
SRC="$(cd "${1:?usage: scripts/dramatiq-suite.sh SOURCE [VENV_DIR]}" && pwd)"
VENV="$(out_dir "${2:-$ROOT/target/dramatiq-venv}")"
OUT="$(out_dir "${DRAMATIQ_SUITE_OUT:-$ROOT/target/dramatiq-suite}")"

need_port 6379
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q -e "$SRC[redis]" pytest pytest-benchmark pytest-timeout pika pylibmc
if ! port_taken 11211; then
    memcached -u "$(id -un)" -l 127.0.0.1 -p 11211 &
    PIDS+=($!)
fi
(cd "$ROOT" && cargo build --release --quiet)

run() { # name
    log "$1 run"
    (cd "$SRC" && timeout 1800 "$VENV/bin/python" -m pytest -v -p no:cacheprovider -o addopts= \
        --benchmark-disable --timeout 60 --ignore=tests/benchmarks -k "not rabbitmq" \
        --junitxml="$OUT/$1.xml" tests >"$OUT/$1.log" 2>&1) || log "$1 run: exit $?"
}

start_redis 6379
run direct
kill "${PIDS[-1]}"
unset 'PIDS[-1]'
sleep 0.5
proxy_in_front 6379 "$OUT/proxy-server.log"
run proxy
compare_junit dramatiq "$OUT/direct.xml" "$OUT/proxy.xml"
