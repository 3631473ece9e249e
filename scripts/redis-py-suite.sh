#!/usr/bin/env bash
# Runs redis-py's own test suite twice with identical options: against Redis directly
# (the baseline) and through redis-sidecar, then prints both pass counts and the
# difference (tests that pass directly but fail through the proxy), grouped by cause.
#
#   scripts/redis-py-suite.sh [--quick] [-k EXPR] [--protocol 2|3|default] [--keep]
#                             [-- EXTRA PYTEST ARGS...]
#
#   --quick          only tests/test_commands.py and tests/test_asyncio/test_commands.py
#   -k EXPR          pytest -k filter (same in both runs)
#   --protocol N     RESP version the suite's clients use: 2, 3, or "default" (the
#                    default: no --protocol option, so redis-py's own default, which is
#                    RESP3 since redis-py 8.0). Both runs use the same value.
#   --keep           keep the temporary directory (virtualenv, sdist, server logs)
#   --proxy-auth     let the proxy answer AUTH itself (its default) instead of the
#                    generated config's `auth_passthrough: true`, which hands AUTH to
#                    Redis so the suite's ACL-user and requirepass tests can pass
#
# What it does: creates a throwaway virtualenv under ${TMPDIR:-/tmp}, installs the
# suite's test dependencies (scripts/redis_py_suite/requirements.txt) and redis-py
# itself from the PyPI sdist, which ships the tests/ directory (REDIS_PY_VERSION,
# default 8.1.0); builds the proxy (cargo build --release); starts a throwaway
# redis-server on a free loopback port and the proxy on another, with a generated
# config (16 databases, db N -> db N of that Redis); runs the suite directly, then
# through the proxy, FLUSHALL before each run; compares the JUnit reports with
# scripts/redis_py_suite/compare.py.
#
# Results (JUnit XML, pytest logs, difference.tsv, summary.txt) go to
# ${REDIS_PY_SUITE_OUT:-target/redis-py-suite}. Exit status: 0 when the suite ran (the
# output is a report: failures are expected), non-zero only when setup failed.
#
# Tests needing what a single local Redis 7.0 cannot give are deselected identically
# in both runs: cluster, sentinel, TLS, Redis Stack modules (JSON, search, time
# series, bloom), replicas, Redis Enterprise / Entra ID endpoints, fault-injection
# scenarios, and the purely offline unit-test folders (auth tokens, HTTP client,
# parsers, multi-db client, observability, maintenance notifications).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELPERS="$ROOT/scripts/redis_py_suite"
REDIS_PY_VERSION="${REDIS_PY_VERSION:-8.1.0}"
OUT="${REDIS_PY_SUITE_OUT:-$ROOT/target/redis-py-suite}"
PER_TEST_TIMEOUT="${REDIS_PY_SUITE_TEST_TIMEOUT:-30}"
RUN_TIMEOUT="${REDIS_PY_SUITE_RUN_TIMEOUT:-1500}"

QUICK=0
KEEP=0
PASSTHROUGH=true
PROTOCOL=default
KEXPR=""
EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --keep) KEEP=1 ;;
        --proxy-auth) PASSTHROUGH=false ;;
        -k) KEXPR="${2:?-k needs an expression}"; shift ;;
        -k*) KEXPR="${1#-k}" ;;
        --protocol) PROTOCOL="${2:?--protocol needs 2, 3 or default}"; shift ;;
        --protocol=*) PROTOCOL="${1#--protocol=}" ;;
        -h | --help) sed -n '2,36p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "redis-py-suite: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$PROTOCOL" in 2 | 3 | default) ;; *) echo "redis-py-suite: --protocol must be 2, 3 or default" >&2; exit 2 ;; esac

log() { printf 'redis-py-suite: %s\n' "$*" >&2; }
die() { log "setup failed: $*"; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/redis-py-suite.XXXXXX")"
REDIS_PID=""
PROXY_PID=""
stop_pid() {
    local pid="$1"
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop_pid "$PROXY_PID"
    stop_pid "$REDIS_PID"
    if [[ "$KEEP" -eq 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools -------------------------------------------------------------------------
command -v python3 >/dev/null || die "python3 is not installed"
command -v cargo >/dev/null || die "cargo is not installed"
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing redis-server and redis-tools with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null ||
            die "apt-get could not install redis-server"
    else
        die "redis-server and redis-cli are needed (apt-get install redis-server redis-tools)"
    fi
fi

# --- proxy build (first: it is the part most likely to be broken by local edits) ---
log "building the proxy (cargo build --release)"
(cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
PROXY_BIN="$ROOT/target/release/redis-sidecar"

# --- virtualenv, redis-py sdist with its tests ---------------------------------------
log "virtualenv in $WORK/venv"
python3 -m venv "$WORK/venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
PY="$WORK/venv/bin/python"
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
log "downloading the redis==$REDIS_PY_VERSION sdist"
"$PY" -m pip download -q --disable-pip-version-check --no-binary :all: --no-deps \
    -d "$WORK/sdist" "redis==$REDIS_PY_VERSION" || die "pip download redis==$REDIS_PY_VERSION failed"
tar -xzf "$WORK/sdist/redis-$REDIS_PY_VERSION.tar.gz" -C "$WORK" || die "cannot unpack the sdist"
SRC="$WORK/redis-$REDIS_PY_VERSION"
[[ -f "$SRC/tests/conftest.py" ]] || die "the redis==$REDIS_PY_VERSION sdist has no tests/ directory"
log "installing redis-py $REDIS_PY_VERSION and the test dependencies"
"$PY" -m pip install -q --disable-pip-version-check -r "$HELPERS/requirements.txt" "$SRC" ||
    die "pip install of the test dependencies failed"

# --- servers -------------------------------------------------------------------------
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
wait_ping() { # port [auth args]
    local port="$1"; shift
    for _ in $(seq 1 100); do
        if [[ "$(redis-cli -h 127.0.0.1 -p "$port" "$@" PING 2>/dev/null)" == PONG ]]; then return 0; fi
        sleep 0.1
    done
    return 1
}
REDIS_PORT="$(free_port)"
PROXY_PORT="$(free_port)"
while [[ "$PROXY_PORT" == "$REDIS_PORT" ]]; do PROXY_PORT="$(free_port)"; done
ADMIN_USER="redis-py-suite-admin"
ADMIN_PASS="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
admin() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --user "$ADMIN_USER" --pass "$ADMIN_PASS" --no-auth-warning "$@"; }

start_redis() {
    stop_pid "$REDIS_PID"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --databases 16 --enable-debug-command yes --dir "$WORK" \
        --logfile "$WORK/redis.log" >/dev/null 2>&1 &
    REDIS_PID=$!
    wait_ping "$REDIS_PORT" || die "redis-server did not answer PING on 127.0.0.1:$REDIS_PORT (see $WORK/redis.log)"
    # An admin user for the suite_guard plugin, which repairs what a test leaves behind.
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ACL SETUSER "$ADMIN_USER" on ">$ADMIN_PASS" '~*' '&*' '+@all' >/dev/null ||
        die "cannot create the admin user"
}

CONFIG="$WORK/proxy.yaml"
{
    echo "# generated by scripts/redis-py-suite.sh"
    echo "redis_databases:"
    for i in $(seq 0 15); do echo "  db$i: { db: $i }"; done
    echo "host: 127.0.0.1"
    echo "port: $REDIS_PORT"
    echo "password: null"
    echo "auth_passthrough: $PASSTHROUGH"
    echo "log_level: WARNING"
} >"$CONFIG"
"$PROXY_BIN" --config "$CONFIG" --check-config >/dev/null || die "the generated proxy config is rejected"

# --- the runs ------------------------------------------------------------------------
MARKS="not onlycluster and not redismod and not ssl and not replica and not cp_integration"
MARKS="$MARKS and not multidb_integration and not experimental"
# --tb=native: pytest's own traceback format re-reads and parses the (very large)
# source files of every frame; with ~70 failures through the proxy that alone added two
# minutes. Assertion details stay in the exception messages either way.
PYTEST_OPTS=(-p no:cacheprovider -p suite_guard -v -rN --tb=native --durations=10
    -o junit_family=xunit1 --timeout="$PER_TEST_TIMEOUT" -m "$MARKS")
case "$PROTOCOL" in
    2 | 3) PYTEST_OPTS+=(--protocol="$PROTOCOL"); URL_QUERY="/0?protocol=$PROTOCOL" ;;
    default) URL_QUERY="/0" ;;
esac
[[ -n "$KEXPR" ]] && PYTEST_OPTS+=(-k "$KEXPR")
if [[ "$QUICK" -eq 1 ]]; then
    TARGETS=(tests/test_commands.py tests/test_asyncio/test_commands.py)
else
    TARGETS=(tests)
    for d in maint_notifications test_scenario test_asyncio/test_scenario test_multidb \
        test_asyncio/test_multidb test_observability test_asyncio/test_observability \
        test_auth test_http test_parsers; do
        PYTEST_OPTS+=(--ignore="tests/$d")
    done
    PYTEST_OPTS+=(--ignore-glob='*test_cluster*' --ignore-glob='*test_sentinel*' --ignore-glob='*test_ssl*'
        --ignore-glob='*test_json.py' --ignore-glob='*test_search*' --ignore-glob='*test_timeseries.py'
        --ignore-glob='*test_bloom.py')
fi

rm -rf "$OUT"
mkdir -p "$OUT"
cp "$CONFIG" "$OUT/proxy.yaml"

run_suite() { # label port
    local label="$1" port="$2" rc=0
    admin FLUSHALL >/dev/null || die "FLUSHALL before the $label run failed"
    log "running the suite $label (redis://127.0.0.1:$port$URL_QUERY); log: $OUT/$label.log"
    local start=$SECONDS
    (
        cd "$SRC"
        export PYTHONPATH="$HELPERS" PYTHONDONTWRITEBYTECODE=1
        export REDIS_PY_SUITE_ADMIN="127.0.0.1:$REDIS_PORT:$ADMIN_USER:$ADMIN_PASS"
        export REDIS_PY_SUITE_REPAIRS="$OUT/$label-repairs.tsv"
        timeout --kill-after=10 "$RUN_TIMEOUT" "$PY" -m pytest "${PYTEST_OPTS[@]}" \
            --redis-url="redis://127.0.0.1:$port$URL_QUERY" \
            --junitxml="$OUT/$label.xml" "${TARGETS[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
    ) >"$OUT/$label.log" 2>&1 || rc=$?
    local summary
    summary="$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$OUT/$label.log" | tail -n 1 | sed 's/^=* //; s/ =*$//')"
    log "$label: pytest exit $rc after $((SECONDS - start))s: ${summary:-no summary (see the log)}"
    case "$rc" in
        0 | 1) ;;
        124 | 137) log "$label: the run hit the ${RUN_TIMEOUT}s bound (REDIS_PY_SUITE_RUN_TIMEOUT)" ;;
        *) log "$label: pytest did not complete normally; last lines of the log:"; tail -n 5 "$OUT/$label.log" | sed 's/^/    /' >&2 ;;
    esac
    echo "$rc" >"$OUT/$label.rc"
}

# Each run gets a fresh Redis: nothing the first run leaves (config, ACL users,
# client names) can change the second.
start_redis
run_suite direct "$REDIS_PORT"
[[ -s "$OUT/direct.xml" ]] || die "the direct run produced no report (see $OUT/direct.log)"

start_redis
"$PROXY_BIN" --config "$CONFIG" --listen "127.0.0.1:$PROXY_PORT" --metrics-listen off \
    >"$OUT/proxy-server.log" 2>&1 &
PROXY_PID=$!
wait_ping "$PROXY_PORT" || die "the proxy did not answer PING on 127.0.0.1:$PROXY_PORT (see $OUT/proxy-server.log)"
run_suite proxy "$PROXY_PORT"
stop_pid "$PROXY_PID"
PROXY_PID=""

# --- report --------------------------------------------------------------------------
{
    echo "redis-py $REDIS_PY_VERSION test suite, redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')," \
        "protocol=$PROTOCOL, $([[ $QUICK -eq 1 ]] && echo quick || echo full)${KEXPR:+, -k '$KEXPR'}"
    echo "proxy: $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown)"
    echo
    python3 "$HELPERS/compare.py" "$OUT/direct.xml" "$OUT/proxy.xml" --out "$OUT" \
        --repairs "$OUT/proxy-repairs.tsv"
} | tee "$OUT/summary.txt"
log "reports in $OUT (summary.txt, difference.tsv, direct/proxy .xml and .log)"
