#!/usr/bin/env bash
# Runs phpredis's own test suite (tests/TestRedis.php, class Redis: every command
# wrapper, pipelines, MULTI/EXEC, pub/sub, scans, serializers and compression,
# sessions) against a redis-server directly, then through redis-sidecar in front of
# the same server, and lists every test whose result differs.
#
#   scripts/phpredis-suite.sh PHPREDIS_SOURCE_DIR [--auth-passthrough] [--test FILTER]
#
#   PHPREDIS_SOURCE_DIR  phpredis's source tree (the one holding tests/TestRedis.php),
#                        of the same version as the installed extension, e.g. on
#                        Debian bookworm:
#                          apt-get install -y php-cli php-redis   # phpredis 5.3.7
#                          apt-get source php-redis               # -> php-redis-*/redis-5.3.7
#   --auth-passthrough   the generated config gets `auth_passthrough: true` (AUTH checked
#                        by Redis, for testAcl's ACL users); default: the proxy answers
#                        AUTH itself, as config/redis-databases.yaml has it
#   --test FILTER        only tests whose name contains FILTER (TestRedis.php's --test)
#
# The suite works in db 0 (`main`); testSwapDB swaps dbs 0 and 1 (twice) and
# testReconnectSelect writes in db 5 after `CONFIG SET timeout 1` (Redis then closes the
# proxy's idle upstream connections too; before `a65c770` that failed health probes
# and could open breakers).
# Between the runs the server is reset (FLUSHALL, ACL users but `default`, ACL LOG,
# scripts, functions, slow log, stats): testAcl's users and ACL LOG entries would
# otherwise carry over into the second run.
# Nothing in the source tree is changed. Output in ${PHPREDIS_SUITE_OUT:-target/phpredis-suite}:
# direct.log, proxy.log (each test's [PASSED]/[FAILED]/[SKIPPED] line, then the skip
# and failure messages), proxy-server.log.
set -euo pipefail

SUITE=phpredis-suite
source "$(dirname "${BASH_SOURCE[0]}")/suite-common.sh"
SRC="$(cd "${1:?usage: scripts/phpredis-suite.sh PHPREDIS_SOURCE_DIR [--auth-passthrough] [--test FILTER]}" && pwd)"
shift
PASSTHROUGH=false
FILTER=
while [ $# -gt 0 ]; do
    case "$1" in
        --auth-passthrough) PASSTHROUGH=true ;;
        --test) FILTER="${2:?--test needs a FILTER}"; shift ;;
        *) echo "phpredis-suite: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done
OUT="$(out_dir "${PHPREDIS_SUITE_OUT:-$ROOT/target/phpredis-suite}")"

[ -f "$SRC/tests/TestRedis.php" ] || { log "no tests/TestRedis.php in $SRC"; exit 1; }
php -r 'exit(extension_loaded("redis") ? 0 : 1);' || { log "the php redis extension is not loaded"; exit 1; }
(cd "$ROOT" && cargo build --release --quiet)

REDIS=$(free_port)
start_redis "$REDIS" --enable-debug-command yes
PROXY=$(free_port)
{
    proxy_config "$REDIS"
    echo "listen: 127.0.0.1:$PROXY"
    echo "auth_passthrough: $PASSTHROUGH"
} >"$WORK/proxy.yml"
start_proxy "$WORK/proxy.yml" "$OUT/proxy-server.log" -p "$PROXY"

# "testName   [PASSED]", with PHP 8.2's deprecation notices (display_errors is on in
# TestRedis.php) possibly between the name and its result.
results() {
    awk 'match($0, /^test[A-Za-z0-9_]+/) { n = substr($0, RSTART, RLENGTH) }
         match($0, /\[(PASSED|FAILED|SKIPPED)\]/) { print n, substr($0, RSTART + 1, RLENGTH - 2) }' \
        "$OUT/$1.log"
}
reset_redis() { # what a run leaves on the server besides keys (testAcl's users, ACL LOG, scripts)
    local c=(redis-cli -p "$REDIS") u
    "${c[@]}" flushall >/dev/null
    for u in $("${c[@]}" acl users); do
        [ "$u" = default ] || "${c[@]}" acl deluser "$u" >/dev/null
    done
    for u in "acl log reset" "script flush" "function flush" "slowlog reset" "config resetstat"; do
        "${c[@]}" $u >/dev/null
    done
}
run() { # name port
    reset_redis
    log "$1 run (port $2)"
    # TestRedis.php finds its includes through $_SERVER['PHP_SELF']: run it from tests/.
    # The session tests run child PHP processes (tests/startSession.php …); without
    # TEST_PHP_ARGS they are given --no-php-ini and ../modules/redis.so, a build in the
    # source tree: non-empty TEST_PHP_ARGS keeps the installed extension and its ini.
    (cd "$SRC" && TEST_PHP_EXECUTABLE="$(command -v php)" TEST_PHP_ARGS="-d error_reporting=24575" \
        timeout 600 php -d log_errors=0 tests/TestRedis.php --class Redis --nocolors \
        --host 127.0.0.1 --port "$2" ${FILTER:+--test "$FILTER"} >"$OUT/$1.log" 2>&1) ||
        log "$1 run: exit $?"
    printf '%-6s passed %3d, failed %3d, skipped %3d\n' "$1" \
        "$(results "$1" | grep -c ' PASSED$' || true)" \
        "$(results "$1" | grep -c ' FAILED$' || true)" \
        "$(results "$1" | grep -c ' SKIPPED$' || true)"
}
run direct "$REDIS"
run proxy "$PROXY"

results direct | sort >"$WORK/direct.res"
results proxy | sort >"$WORK/proxy.res"
if cmp -s "$WORK/direct.res" "$WORK/proxy.res"; then
    echo "no test's result differs"
else
    echo "tests whose result differs (directly -> through the proxy):"
    join -a1 -a2 -e MISSING -o 0,1.2,2.2 "$WORK/direct.res" "$WORK/proxy.res" |
        awk '$2 != $3 { printf "  %-40s %s -> %s\n", $1, $2, $3 }'
fi
