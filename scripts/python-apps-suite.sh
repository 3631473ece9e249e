#!/usr/bin/env bash
# Runs the test suites of Python applications of Redis — rq (job queue: forked
# workers, blocking pops, WATCH/MULTI, Lua), huey (task queue), walrus (data
# structures, locks, rate limits, streams, full-text search over Lua), arq (asyncio
# job queue) and django-redis (Django's cache and sessions on Redis, over TCP and a
# Unix socket, with every serializer and compressor) — against a redis-server
# directly, then through redis-sidecar in front of the same server, and lists every
# test whose result differs.
#
#   scripts/python-apps-suite.sh WORK_DIR [APP...]
#
# APPs: rq huey walrus arq django-redis (default: all). WORK_DIR gets virtualenvs and
# the packages' source distributions from PyPI (`pip download --no-binary :all:`:
# their sdists carry the tests), unless they are there already; arq gets its own
# virtualenv (it wants redis-py < 6 and pytest-asyncio 0.23, as its uv.lock pins) and
# a stand-in for `testcontainers.redis` that names the Redis under test instead of
# starting a container. The suites dial localhost:6379 (rq, huey, django-redis and
# arq's defaults fix it; walrus reads WALRUS_REDIS_PORT) and /tmp/redis.sock
# (django-redis's `sqlite_usock` settings), and databases 0-13 and 15: directly,
# redis-server listens on both; through the proxy, the proxy does
# (config/redis-databases.yaml plus databases 11-15) and redis-server on a free
# port. django-redis's Sentinel settings are left out (a Sentinel hands out Redis's
# own address, so those tests would not go through the proxy). Output in
# ${PYAPPS_SUITE_OUT:-target/python-apps-suite}.
set -euo pipefail

SUITE=python-apps-suite
source "$(dirname "${BASH_SOURCE[0]}")/suite-common.sh"
DIR="$(out_dir "${1:?usage: scripts/python-apps-suite.sh WORK_DIR [APP...]}")"
shift
APPS=("${@:-rq huey walrus arq django-redis}")
read -r -a APPS <<<"${APPS[*]}"
OUT="$(out_dir "${PYAPPS_SUITE_OUT:-$ROOT/target/python-apps-suite}")"
SOCK=/tmp/redis.sock

need_port 6379
[ -e "$SOCK" ] && { log "$SOCK exists; django-redis's suite needs it"; exit 1; }
[ -x "$DIR/venv/bin/python" ] || python3 -m venv "$DIR/venv"
"$DIR/venv/bin/pip" install -q redis pytest pytest-mock pytest-xdist click croniter psutil \
    packaging django lz4 msgpack pyzstd
[ -x "$DIR/arq-venv/bin/python" ] || python3 -m venv "$DIR/arq-venv"
"$DIR/arq-venv/bin/pip" install -q 'pytest==8.4.2' 'pytest-asyncio==0.23.6' 'redis[hiredis]==4.6.0' \
    pydantic pytest-mock pytest-timeout dirty-equals msgpack pytz tzdata click watchfiles
for pkg in rq huey walrus arq django_redis; do
    ls -d "$DIR/$pkg"-[0-9]*/ >/dev/null 2>&1 ||
        (cd "$DIR" && "$DIR/venv/bin/pip" download -q --no-deps --no-binary :all: "${pkg//_/-}" &&
            tar xzf "$(ls "$pkg"-*.tar.gz | tail -n 1)")
done
src() { ls -d "$DIR/$1"-[0-9]*/ | tail -n 1; }
RQ="$(src rq)" HUEY="$(src huey)" WALRUS="$(src walrus)" ARQ="$(src arq)" DJANGO="$(src django_redis)"
# Installed from those sources too: rq's subprocess tests run its `rqworker`.
"$DIR/venv/bin/pip" install -q --no-deps "$RQ" "$HUEY" "$WALRUS" "$DJANGO"
"$DIR/arq-venv/bin/pip" install -q --no-deps "$ARQ"
mkdir -p "$WORK/shim/testcontainers"
touch "$WORK/shim/testcontainers/__init__.py"
cat >"$WORK/shim/testcontainers/redis.py" <<'PY'
# Stands in for testcontainers' RedisContainer: the Redis under test (or the proxy in
# front of it) already listens on 127.0.0.1:6379.
class RedisContainer:
    port = 6379

    def __init__(self, image):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def get_container_host_ip(self):
        return '127.0.0.1'

    def get_exposed_port(self, port):
        return 6379
PY
(cd "$ROOT" && cargo build --release --quiet)

run() { # name
    local py t
    for t in "${APPS[@]}"; do
        py="$DIR/venv/bin/python"
        redis-cli -p "$REDIS" flushall >/dev/null
        log "$1 run: $t"
        case $t in
            rq) cd "$RQ" && set -- "$1" tests ;;
            huey) cd "$HUEY" && set -- "$1" huey/tests ;;
            walrus) cd "$WALRUS" && set -- "$1" $(ls walrus/tests/*.py | grep -v -e __init__ -e base.py) ;;
            # (Its settings are per process: pytest-xdist's workers, as upstream runs it.)
            django-redis) cd "$DJANGO" && set -- "$1" -o addopts= -n 2 -k "not sentinel" tests ;;
            arq) cd "$ARQ" && set -- "$1" tests ;;
            *) log "unknown app $t"; exit 1 ;;
        esac
        [ "$t" = arq ] && py="$DIR/arq-venv/bin/python"
        PATH="$(dirname "$py"):$PATH" PYTHONPATH="$WORK/shim" WALRUS_REDIS_PORT=6379 \
            timeout 1500 "$py" -m pytest -q -p no:cacheprovider --junitxml="$OUT/$1-$t.xml" "${@:2}" \
            >"$OUT/$1-$t.log" 2>&1 || log "$1 run: $t: exit $?"
    done
}

start_redis 6379 --unixsocket "$SOCK"
REDIS=6379
run direct
stop_started

proxy_in_front 6379 "$OUT/proxy-server.log" "unixsocket: $SOCK"
run proxy

for t in "${APPS[@]}"; do
    compare_junit "$t" "$OUT/direct-$t.xml" "$OUT/proxy-$t.xml"
done
