#!/usr/bin/env bash
# Runs Redis's own test suite (the Tcl `runtest` of the Redis source, external-server
# mode) twice: against a redis-server directly, then through redis-sidecar in front of
# a fresh one, and prints the tests that pass directly but not through the proxy.
#
#   scripts/redis-tcl-suite.sh REDIS_SOURCE_DIR [runtest options...]
#
# REDIS_SOURCE_DIR: the source of the Redis version installed (Debian: add a
# `deb-src` line, then `apt-get source --download-only redis` and untar
# redis_*.orig.tar.gz; nothing needs building: external mode starts no server).
# Needs tclsh (`apt-get install tcl`). Extra options go to both runs, e.g.
# `--single unit/type/list` or `--skipunit unit/oom-score-adj`.
# Output in ${REDIS_TCL_SUITE_OUT:-target/redis-tcl-suite}: direct.log, proxy.log,
# summary.txt. Tests that need a server of their own are skipped by runtest itself
# in this mode ("Not supported on external server").
#
# One edit is made to the source's tests/test_helper.tcl (idempotent): a refused
# `SYNC` in attach_to_replication_stream (the proxy refuses replication commands)
# fails that test (`assertion:`) instead of aborting the whole run (an exception),
# and closes its socket (left open, every such socket stays a client of the proxy,
# and a later `CLIENT LIST` test's glob pattern takes for ever on the long list).
# Directly, SYNC succeeds and the edit changes nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$(cd "${1:?usage: scripts/redis-tcl-suite.sh REDIS_SOURCE_DIR [runtest options]}" && pwd)"
shift
OUT="${REDIS_TCL_SUITE_OUT:-$ROOT/target/redis-tcl-suite}"
mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/redis-tcl-suite.XXXXXX")"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
log() { printf 'redis-tcl-suite: %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

(cd "$ROOT" && cargo build --release --quiet)
sed -i -e 's/error "attach_to_replication_stream error/error "assertion:attach_to_replication_stream error/' \
    -e 's/^\( *\)error "assertion:attach_to_replication_stream/\1close $s; error "assertion:attach_to_replication_stream/' \
    "$SRC/tests/test_helper.tcl"

start_redis() { # port
    mkdir -p "$WORK/$1"
    redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no \
        --enable-debug-command yes --dir "$WORK/$1" --logfile "$WORK/$1/redis.log" &
    PIDS+=($!)
    for _ in $(seq 1 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
    log "redis-server on $1 did not start"; exit 1
}

DIRECT=$(free_port)
start_redis "$DIRECT"
log "direct run (Redis on $DIRECT)"
(cd "$SRC" && timeout 3600 ./runtest --host 127.0.0.1 --port "$DIRECT" --clients 1 "$@" \
    >"$OUT/direct.log" 2>&1) || true

UP=$(free_port)
start_redis "$UP"
PROXY=$(free_port)
{
    echo "redis_databases:"
    for n in $(seq 0 15); do echo "  db$n: { db: $n }"; done
    echo "host: 127.0.0.1"
    echo "port: $UP"
    echo "listen: 127.0.0.1:$PROXY"
    # DEBUG RELOAD and friends may take longer than the default 5 s.
    echo "command_timeout: 60"
    # The suite logs in as ACL users it creates: Redis checks AUTH.
    echo "auth_passthrough: true"
    # It runs REPLICAOF NO ONE (denied by default).
    echo "deny_commands: []"
} >"$WORK/proxy.yml"
"$ROOT/target/release/redis-sidecar" -c "$WORK/proxy.yml" --metrics-listen off \
    >"$OUT/proxy-server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do redis-cli -p "$PROXY" ping >/dev/null 2>&1 && break; sleep 0.1; done
log "proxy run (proxy on $PROXY, Redis on $UP)"
(cd "$SRC" && timeout 3600 ./runtest --host 127.0.0.1 --port "$PROXY" --clients 1 "$@" \
    >"$OUT/proxy.log" 2>&1) || true

python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import re, sys
out = sys.argv[1]
def results(name):
    text = re.sub(r"\x1b\[[0-9;]*m", "", open(f"{out}/{name}.log", errors="replace").read())
    ok = set(re.findall(r"^\[ok\]: (.*?)(?: \(\d+ ms\))?$", text, re.M))
    bad = re.findall(r"^\[(err|exception)\]: (.*)$", text, re.M)
    units = re.findall(r"^\[\d+/\d+ done\]: (\S+)", text, re.M)
    return ok, bad, units, text
d_ok, d_bad, d_units, _ = results("direct")
p_ok, p_bad, p_units, p_text = results("proxy")
print(f"direct: {len(d_ok)} ok, {len(d_bad)} err/exception, {len(d_units)} units done")
print(f"proxy:  {len(p_ok)} ok, {len(p_bad)} err/exception, {len(p_units)} units done")
print("passing directly, not through the proxy:")
for t in sorted(d_ok - p_ok):
    print(f"  {t}")
for kind, t in p_bad:
    print(f"  [{kind}] {t}")
PY
