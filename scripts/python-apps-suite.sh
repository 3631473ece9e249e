#!/usr/bin/env bash
# Runs the test suites of three Python applications of Redis — rq (job queue: forked
# workers, blocking pops, WATCH/MULTI, Lua), huey (task queue) and walrus (data
# structures, locks, rate limits, streams, full-text search over Lua) — against a
# redis-server directly, then through redis-sidecar in front of the same server, and
# lists every test whose result differs.
#
#   scripts/python-apps-suite.sh WORK_DIR
#
# WORK_DIR gets a virtualenv and the packages' source distributions from PyPI
# (`pip download --no-binary :all: rq huey walrus`: their sdists carry the tests), unless
# they are there already. The suites dial localhost:6379 (rq and huey fix it; walrus
# reads WALRUS_REDIS_PORT) and databases 0, 4 (rq takes the first empty one from 4) and
# 15 (walrus): directly, redis-server listens on 6379; through the proxy, the proxy
# does (config/redis-databases.yaml plus databases 11-15) and redis-server on a free
# port. Output in ${PYAPPS_SUITE_OUT:-target/python-apps-suite}.
set -euo pipefail

SUITE=python-apps-suite
source "$(dirname "${BASH_SOURCE[0]}")/suite-common.sh"
DIR="$(out_dir "${1:?usage: scripts/python-apps-suite.sh WORK_DIR}")"
OUT="$(out_dir "${PYAPPS_SUITE_OUT:-$ROOT/target/python-apps-suite}")"

ss -ltn | grep -q '127.0.0.1:6379 ' && { log "port 6379 is taken; the suites need it"; exit 1; }
[ -x "$DIR/venv/bin/python" ] || python3 -m venv "$DIR/venv"
"$DIR/venv/bin/pip" install -q redis pytest click croniter psutil packaging
if ! ls -d "$DIR"/rq-*/ "$DIR"/huey-*/ "$DIR"/walrus-*/ >/dev/null 2>&1; then
    (cd "$DIR" && "$DIR/venv/bin/pip" download -q --no-deps --no-binary :all: rq huey walrus &&
        for f in rq-*.tar.gz huey-*.tar.gz walrus-*.tar.gz; do tar xzf "$f"; done)
fi
RQ="$(ls -d "$DIR"/rq-*/ | tail -n 1)"
HUEY="$(ls -d "$DIR"/huey-*/ | tail -n 1)"
WALRUS="$(ls -d "$DIR"/walrus-*/ | tail -n 1)"
# Installed from those sources too: rq's subprocess tests run its `rqworker`.
"$DIR/venv/bin/pip" install -q --no-deps "$RQ" "$HUEY" "$WALRUS"
(cd "$ROOT" && cargo build --release --quiet)

run() { # name
    local py="$DIR/venv/bin/python" t
    for t in rq huey walrus; do
        redis-cli -p "$REDIS" flushall >/dev/null
        log "$1 run: $t"
        case $t in
            rq) cd "$RQ" && set -- "$1" tests ;;
            huey) cd "$HUEY" && set -- "$1" huey/tests ;;
            walrus) cd "$WALRUS" && set -- "$1" $(ls walrus/tests/*.py | grep -v -e __init__ -e base.py) ;;
        esac
        PATH="$DIR/venv/bin:$PATH" WALRUS_REDIS_PORT=6379 timeout 1500 "$py" -m pytest -q \
            -p no:cacheprovider --junitxml="$OUT/$1-$t.xml" "${@:2}" >"$OUT/$1-$t.log" 2>&1 ||
            log "$1 run: $t: exit $?"
    done
}

start_redis 6379
REDIS=6379
run direct
stop_started

REDIS=$(free_port)
start_redis "$REDIS"
{
    proxy_config "$REDIS" 15
    echo "listen: 127.0.0.1:6379"
} >"$WORK/proxy.yml"
start_proxy "$WORK/proxy.yml" "$OUT/proxy-server.log" -p 6379 -n 15
run proxy

python3 - "$OUT" <<'PY'
import sys, xml.etree.ElementTree as ET
out = sys.argv[1]
def results(path):
    r = {}
    for c in ET.parse(path).getroot().iter('testcase'):
        kind = 'passed'
        for k in ('failure', 'error', 'skipped'):
            if c.find(k) is not None:
                kind = k
        r[c.get('classname') + '::' + c.get('name')] = kind
    return r
for t in ('rq', 'huey', 'walrus'):
    d, p = results(f'{out}/direct-{t}.xml'), results(f'{out}/proxy-{t}.xml')
    count = lambda r: ', '.join(f'{k} {sum(v == k for v in r.values())}' for k in ('passed', 'failure', 'error', 'skipped'))
    print(f'{t:7} direct: {count(d)}\n{"":7} proxy:  {count(p)}')
    for name in sorted(set(d) | set(p)):
        if d.get(name) != p.get(name):
            print(f'  differs: {name}: direct {d.get(name)}, proxy {p.get(name)}')
PY
