#!/usr/bin/env bash
# Runs ioredis's own functional tests twice: against Redis directly (the baseline)
# and through redis-sidecar, then prints both counts and the tests that pass
# directly but fail through the proxy (with their error messages).
#
#   scripts/ioredis-suite.sh IOREDIS_CHECKOUT [--proxy-auth] [--key-prefix]
#
#   IOREDIS_CHECKOUT  a checkout of github.com/redis/ioredis (its tests are not in
#                     the npm package); `npm install` is run there if needed
#   --proxy-auth      let the proxy answer AUTH itself (its default) instead of
#                     `auth_passthrough: true`, which hands AUTH to Redis so the
#                     suite's ACL-user tests can pass
#   --key-prefix      every database gets `key_prefix: "dbN:"` (numbered databases
#                     sharing one upstream db, as on a cluster)
#
# ioredis's tests connect to localhost:6379 (and expect nothing on 6390, 8999 and
# the mock servers' ports), so port 6379 must be free: the direct run puts Redis
# there, the proxy run puts the proxy there and Redis on a free port above 20000.
# Runs: test/functional/*.ts and test/functional/commands/*.ts with mocha (the
# cluster and unit folders use mock servers and never reach Redis). Output: JSON
# reports, logs and summary.txt in ${IOREDIS_SUITE_OUT:-target/ioredis-suite}.
# IOREDIS_MOCHA_ARGS adds mocha options to both runs (e.g. `--exclude FILE`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IOREDIS="${1:?usage: scripts/ioredis-suite.sh IOREDIS_CHECKOUT [--proxy-auth]}"
IOREDIS="$(cd "$IOREDIS" && pwd)"
shift
PASSTHROUGH=true
PREFIX=0
for arg in "$@"; do
    case "$arg" in
        --proxy-auth) PASSTHROUGH=false ;;
        --key-prefix) PREFIX=1 ;;
        *) echo "ioredis-suite: unknown argument '$arg'" >&2; exit 2 ;;
    esac
done
OUT="${IOREDIS_SUITE_OUT:-$ROOT/target/ioredis-suite}"
mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ioredis-suite.XXXXXX")"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
log() { printf 'ioredis-suite: %s\n' "$*" >&2; }

if redis-cli -p 6379 ping >/dev/null 2>&1; then log "port 6379 is in use"; exit 1; fi
[[ -d "$IOREDIS/node_modules" ]] || (cd "$IOREDIS" && npm install --no-audit --no-fund >"$OUT/npm.log" 2>&1)
(cd "$ROOT" && cargo build --release --quiet)

start_redis() { # port
    redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no \
        --enable-debug-command yes --dir "$WORK" --logfile "$WORK/redis-$1.log" &
    PIDS+=($!)
    for _ in $(seq 1 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
    log "redis-server on $1 did not start"; exit 1
}
run_suite() { # name
    (cd "$IOREDIS" && TS_NODE_TRANSPILE_ONLY=true NODE_ENV=test timeout 1800 npx mocha \
        --no-experimental-strip-types --reporter json ${IOREDIS_MOCHA_ARGS:-} "test/helpers/*.ts" \
        "test/functional/*.ts" "test/functional/commands/*.ts" >"$OUT/$1.json" 2>"$OUT/$1.log") || true
}

log "direct run (Redis on 6379)"
start_redis 6379
run_suite direct
redis-cli -p 6379 shutdown nosave >/dev/null 2>&1 || true
sleep 0.5

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(max(s.getsockname()[1], 20001))')
start_redis "$PORT"
{
    echo "redis_databases:"
    for n in $(seq 0 15); do
        if (( PREFIX )); then echo "  db$n: { db: $n, upstream_db: 0, key_prefix: \"db$n:\" }"
        else echo "  db$n: { db: $n }"; fi
    done
    echo "host: 127.0.0.1"
    echo "port: $PORT"
    echo "auth_passthrough: $PASSTHROUGH"
} >"$WORK/proxy.yml"
log "proxy run (proxy on 6379, Redis on $PORT, auth_passthrough: $PASSTHROUGH, key prefixes: $PREFIX)"
"$ROOT/target/release/redis-sidecar" -c "$WORK/proxy.yml" --listen 127.0.0.1:6379 \
    --metrics-listen off >"$OUT/proxy-server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
run_suite proxy

python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, sys
out = sys.argv[1]
runs = {n: json.load(open(f"{out}/{n}.json")) for n in ("direct", "proxy")}
for n, r in runs.items():
    s = r["stats"]
    print(f"{n}: {s['passes']} passed, {s['failures']} failed, {s['pending']} pending")
failed = {n: {t["fullTitle"]: t for t in r["failures"]} for n, r in runs.items()}
only = [t for k, t in failed["proxy"].items() if k not in failed["direct"]]
print(f"failing only through the proxy: {len(only)}")
for t in only:
    print(f"  {t['fullTitle']}\n      {t['err'].get('message', '')[:200]}")
PY
