# Shared by the scripts that run an outside test suite against Redis directly and
# then through redis-sidecar (scripts/*-suite.sh). Sourced after `set -euo pipefail`
# with SUITE set to the script's name (the log prefix); sets ROOT (the repository)
# and WORK (a temporary directory, removed on exit with every process started here).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/$SUITE.XXXXXX")"
PIDS=()
cleanup() { stop_started; rm -rf "$WORK"; }
trap cleanup EXIT

log() { printf '%s: %s\n' "$SUITE" "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_ping() { # redis-cli args... (PING_TRIES tries, 0.1 s apart; default 100)
    for _ in $(seq 1 "${PING_TRIES:-100}"); do redis-cli "$@" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
    log "nothing answers on $*"; exit 1
}
# Whether something listens on loopback port $1 (any address that takes it).
port_taken() { ss -ltn | grep -q "127.0.0.1:$1 \|\*:$1 \|\[::\]:$1 "; }
# Exits unless port $1, which the suite dials, is free.
need_port() {
    if port_taken "$1"; then log "port $1 is taken; the suite needs it"; exit 1; fi
}
# The output directory $1 (made), as an absolute path.
out_dir() { mkdir -p "$1" && (cd "$1" && pwd); }
# Kills what start_redis and start_proxy started.
stop_started() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    PIDS=()
    sleep 0.5
}

# start_redis PORT [redis-server options...]: a throwaway redis-server on 127.0.0.1.
start_redis() {
    local port=$1
    shift
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$WORK" --logfile "$WORK/redis-$port.log" "$@" &
    PIDS+=($!)
    wait_ping -p "$port"
}

# proxy_config REDIS_PORT [EXTRA_DBS]: config/redis-databases.yaml pointed at
# 127.0.0.1:REDIS_PORT, with databases 11..EXTRA_DBS added (named dbN) when given.
# Callers append their own lines (listen, unixsocket, auth_passthrough …).
proxy_config() {
    local extra="" n
    for ((n = 11; n <= ${2:-10}; n++)); do extra+="\\n  db$n: { db: $n }"; done
    sed -e "s/^port: .*/port: $1/" -e 's/^host: .*/host: 127.0.0.1/' \
        -e "s/^\(  backup: .*\)\$/\1$extra/" "$ROOT/config/redis-databases.yaml"
}

# start_proxy CONFIG LOG [redis-cli options to wait on]: the release build
# (built by the caller) with CONFIG, its log in LOG.
start_proxy() {
    local config=$1 logfile=$2
    shift 2
    "$ROOT/target/release/redis-sidecar" -c "$config" --metrics-listen off >"$logfile" 2>&1 &
    PIDS+=($!)
    wait_ping "$@"
}

# proxy_in_front PORT LOG [yaml lines...]: a redis-server on a free port (REDIS) and
# the proxy listening on 127.0.0.1:PORT in front of it (config/redis-databases.yaml
# plus databases 11-15, and the given lines), its log in LOG. The redis-server gets
# the options in the array REDIS_ARGS, when the caller sets it.
proxy_in_front() {
    local port=$1 logfile=$2 line
    shift 2
    REDIS=$(free_port)
    start_redis "$REDIS" ${REDIS_ARGS[@]+"${REDIS_ARGS[@]}"}
    {
        proxy_config "$REDIS" 15
        echo "listen: 127.0.0.1:$port"
        for line in "$@"; do echo "$line"; done
    } >"$WORK/proxy.yml"
    start_proxy "$WORK/proxy.yml" "$logfile" -p "$port" -n 15
}

# compare_junit LABEL DIRECT_XML PROXY_XML: each run's counts and every test whose
# result differs (JUnit XML, as pytest and PHPUnit write it).
compare_junit() {
    python3 - "$ROOT/scripts" "$@" <<'PY'
import sys, xml.etree.ElementTree as ET
sys.path.insert(0, sys.argv[1])
from suite_results import report
label, direct, proxy = sys.argv[2:5]
def results(path):
    r = {}
    for c in ET.parse(path).getroot().iter('testcase'):
        kind = 'passed'
        for k in ('failure', 'error', 'skipped'):
            if c.find(k) is not None:
                kind = k
        r[(c.get('classname') or c.get('class') or '') + '::' + c.get('name')] = kind
    return r
report(results(direct), results(proxy), ('passed', 'failure', 'error', 'skipped'), f'{label:12} ')
PY
}

# compare_libtest HEADING DIRECT_LOG PROXY_LOG: HEADING, then both runs' counts and
# every test whose result differs (a Rust test binary's output, as cargo test prints it).
compare_libtest() {
    python3 - "$ROOT/scripts" "$@" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from suite_results import libtest_results, report
heading, direct, proxy = sys.argv[2:5]
print(heading)
report(libtest_results(direct), libtest_results(proxy))
PY
}
