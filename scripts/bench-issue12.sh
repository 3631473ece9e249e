#!/usr/bin/env bash
# Every issue-12 comparison in one run, for a quiet machine: starts a redis-server,
# twemproxy (if installed) and the two proxy binaries, then measures
#   * Redis commands per read and Redis CPU per request (scripts/bench-redis-reads.sh),
#   * RSS per idle client (10,000 clients, fresh proxies) and repeated bursts,
#   * compare.sh (direct, twemproxy, BASE, NEW),
#   * paired ABBA runs: c50 P1 with and without 10,000 idle clients, NEW vs twemproxy,
#     NEW vs BASE (c50 P1 and c1), NEW vs direct (c1).
#
#   scripts/bench-issue12.sh BASE_BINARY NEW_BINARY [OUT_DIR]
#
# e.g. git worktree add /tmp/base 338b94a && (cd /tmp/base && cargo build --release)
#      cargo build --release
#      scripts/bench-issue12.sh /tmp/base/target/release/redis-sidecar target/release/redis-sidecar
# BASE runs with its own default mux_connections (2 before issue 12), NEW with 1 and 2.
# Ports used: 7100 (redis), 22200 (twemproxy), 6561-6566. Loopback only.
set -euo pipefail
base=$(realpath "$1") new=$(realpath "$2") out=${3:-$(mktemp -d /tmp/issue12.XXXX)}
here=$(cd "$(dirname "$0")" && pwd)
bench=${BENCH_DIR:-$here/../../shared/bench}
mkdir -p "$out"
ulimit -n 20000
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 1' INT TERM
redis-server --port 7100 --bind 127.0.0.1 --save '' --appendonly no --maxclients 20000 \
    --daemonize no --logfile "$out/redis.log" &
pids+=($!)
if command -v nutcracker >/dev/null || [ -x /usr/sbin/nutcracker ]; then
    printf 'bench:\n  listen: 127.0.0.1:22200\n  hash: fnv1a_64\n  distribution: ketama\n  redis: true\n  auto_eject_hosts: false\n  server_connections: 1\n  servers:\n   - 127.0.0.1:7100:1\n' >"$out/nut.yml"
    "$(command -v nutcracker || echo /usr/sbin/nutcracker)" -c "$out/nut.yml" -o "$out/nut.log" -s 22299 &
    pids+=($!)
fi
conf() { # conf MUX -> config file (MUX empty: the binary's default)
    local f="$out/proxy$1.yml"
    printf 'redis_databases:\n  main: { db: 0 }\nhost: 127.0.0.1\nport: 7100\nmax_clients: 12000\nlog_level: WARNING\n' >"$f"
    [ -n "$1" ] && echo "mux_connections: $1" >>"$f"
    echo "$f"
}
start() { # start BINARY PORT [MUX] -> pid
    "$1" --config "$(conf "${3:-}")" --listen "127.0.0.1:$2" --metrics-listen off >>"$out/proxy-$2.log" 2>&1 &
    local p=$!
    pids+=("$p")
    for _ in $(seq 1 50); do redis-cli -p "$2" PING >/dev/null 2>&1 && break; sleep 0.1; done
    echo "$p"
}
sleep 1
start "$base" 6562 >/dev/null
start "$new" 6561 >/dev/null
start "$new" 6564 2 >/dev/null
idle=$(start "$new" 6563)
{
    echo "== Redis commands per read, c50 P1 (3 rounds) and P16"
    for _ in 1 2 3; do
        "$here/bench-redis-reads.sh" -P 1 -n 300000 7100 direct=7100 twemproxy=22200 base=6562 proxy=6561 proxy-mux2=6564
    done
    "$here/bench-redis-reads.sh" -P 16 -n 1000000 7100 direct=7100 twemproxy=22200 base=6562 proxy=6561 proxy-mux2=6564
    echo "== RSS per idle client, 10,000 clients, fresh proxies"
    for bin in "$base" "$new"; do
        for args in "" "--cmd GET_k"; do
            p=$(start "$bin" 6565)
            # shellcheck disable=SC2086
            echo "$bin ${args:-connect only}: $("$here/bench-idle-memory.sh" "$p" 6565 10000 ${args:+--cmd "GET k"})"
            kill "$p"; sleep 1
        done
        p=$(start "$bin" 6566)
        echo "$bin: $("$here/bench-idle-memory.sh" -r 5 "$p" 6566 5000 --cmd "GET k")"
        kill "$p"; sleep 1
    done
    echo "== compare.sh"
    "$bench/compare.sh" -R 5 --out "$out/compare" direct=127.0.0.1:7100 twemproxy=127.0.0.1:22200 base=127.0.0.1:6562 proxy=127.0.0.1:6561
    echo "== c50 P1 GET: A = proxy, B = the same binary holding 10,000 idle clients"
    python3 "$bench/hold_conns.py" --port 6563 -n 10000 --hold 3600 >"$out/hold.out" &
    h=$!
    for _ in $(seq 1 150); do grep -q HOLDING "$out/hold.out" && break; sleep 0.2; done
    grep VmRSS "/proc/$idle/status"
    "$here/bench-pairs.sh" -n 30 -P 1 -r 200000 -t get 6561 6563
    kill "$h"
    echo "== c50 P1: A = twemproxy, B = proxy"
    "$here/bench-pairs.sh" -n 30 -P 1 -r 200000 22200 6561
    echo "== c50 P1: A = base, B = proxy"
    "$here/bench-pairs.sh" -n 30 -P 1 -r 200000 6562 6561
    echo "== c50 P16: A = direct, B = proxy"
    "$here/bench-pairs.sh" -n 20 -P 16 -r 1000000 7100 6561
    echo "== c1 GET: A = base, B = proxy; then A = direct, B = proxy"
    "$here/bench-pairs.sh" -n 20 -P 1 -c 1 -r 30000 -t get 6562 6561
    "$here/bench-pairs.sh" -n 20 -P 1 -c 1 -r 30000 -t get 7100 6561
} 2>&1 | tee "$out/report.txt"
