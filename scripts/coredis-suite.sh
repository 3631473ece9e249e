#!/usr/bin/env bash
# Runs the test suite of coredis (github.com/alisaifee/coredis, an async Python client:
# RESP3 by default, client-side caching, pipelines, pub/sub, scripts, streams) on its
# standalone servers against redis-server directly, then through redis-sidecar, and
# lists every test whose result differs.
#
#   scripts/coredis-suite.sh SOURCE [VENV_DIR]
#
# SOURCE: a checkout of coredis (tested: `c5925fd4`, 2026-08-15, version 6.9.0; with
# `git archive`, leave out tests/modules/data, whose CSV is not in the object store:
# `git archive HEAD -- . ':!tests/modules/data'`). Its tests expect, with
# `--no-docker`, the servers of its docker-compose.yml on fixed addresses; the ones
# used here: redis-basic on localhost:6379 and redis-auth on localhost:6389
# (`requirepass sekret`), both with `--enable-debug-command yes`. Through the proxy,
# the proxy listens there (the shipped config; for 6389 `client_password` and the
# password towards Redis `sekret`) in front of redis-servers on free ports. The test
# ids run are those of the clients redis_basic, redis_basic_raw and redis_cached
# (`-k`; with redis_auth as MIGRATE's target); cluster, Sentinel, TLS, modules
# (redis-stack) and the typing tests are left out. Python packages go into VENV_DIR
# (default target/coredis-venv) from PyPI. Output in ${COREDIS_SUITE_OUT:-target/coredis-suite}.
set -euo pipefail

SUITE=coredis-suite
source "$(dirname "${BASH_SOURCE[0]}")/suite-common.sh"
SRC="$(cd "${1:?usage: scripts/coredis-suite.sh COREDIS_SOURCE [VENV_DIR]}" && pwd)"
VENV=${2:-$ROOT/target/coredis-venv}
OUT="$(out_dir "${COREDIS_SUITE_OUT:-$ROOT/target/coredis-suite}")"
need_port 6379
need_port 6389
(cd "$ROOT" && cargo build --release --quiet)
if [ ! -x "$VENV/bin/pytest" ]; then
    log "installing coredis's test requirements into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "pytest<9.1" pytest-asyncio pytest-env pytest-lazy-fixtures \
        pytest-mock pytest-reverse lovely-pytest-docker mock numpy beartype "redis[hiredis]" \
        trio uvloop anyio asyncache moto aiobotocore opentelemetry-sdk deprecated packaging \
        typing_extensions exceptiongroup
fi
# hatch-vcs writes this file when building from git; the checkout is used in place.
[ -f "$SRC/coredis/_version.py" ] || echo '__version__ = "6.9.0"' >"$SRC/coredis/_version.py"

run() { # name
    log "$1 run"
    (cd "$SRC" && timeout 1500 "$VENV/bin/python" -m pytest --no-docker -p no:cacheprovider -q \
        tests --ignore=tests/cluster --ignore=tests/types --ignore=tests/tls \
        --ignore=tests/modules --ignore=tests/test_sentinel.py \
        -k "redis_basic or redis_cached" --junitxml="$OUT/$1.xml" >"$OUT/$1.log" 2>&1) ||
        log "$1 run: exit $?"
    tail -n 1 "$OUT/$1.log" >&2
}

DEBUG=(--enable-debug-command yes)
start_redis 6379 "${DEBUG[@]}"
start_redis 6389 "${DEBUG[@]}" --requirepass sekret
run direct
stop_started

# proxy_run NAME [YAML_LINE...]: the suite through two proxies (the lines added to
# both configs) in front of new redis-servers.
proxy_run() {
    local name=$1 basic auth line
    shift
    basic=$(free_port)
    auth=$(free_port)
    start_redis "$basic" "${DEBUG[@]}"
    start_redis "$auth" "${DEBUG[@]}" --requirepass sekret
    {
        proxy_config "$basic"
        echo "listen: 127.0.0.1:6379"
        for line in "$@"; do echo "$line"; done
    } >"$WORK/basic.yml"
    {
        proxy_config "$auth" | sed -e 's/^password: .*/password: "sekret"/'
        echo "listen: 127.0.0.1:6389"
        [[ " $* " == *auth_passthrough* ]] || echo 'client_password: "sekret"'
        for line in "$@"; do echo "$line"; done
    } >"$WORK/auth.yml"
    start_proxy "$WORK/basic.yml" "$OUT/$name-basic.log" -p 6379
    start_proxy "$WORK/auth.yml" "$OUT/$name-auth.log" -p 6389 -a sekret --no-auth-warning
    run "$name"
    stop_started
}
# The shipped config; then with AUTH checked by Redis and nothing denied, as the
# suite logs in as ACL users it makes and calls REPLICAOF.
proxy_run proxy
proxy_run proxy-passthrough "auth_passthrough: true" "deny_commands: []"

compare_junit coredis "$OUT/direct.xml" "$OUT/proxy.xml"
compare_junit passthrough "$OUT/direct.xml" "$OUT/proxy-passthrough.xml"
