#!/usr/bin/env bash
# The proxy's own instructions per request (issue 12), counted by valgrind's
# callgrind: repeatable for the same binary and workload whatever else the host does,
# so a small change in the proxy's user-space work shows where paired throughput
# runs (scripts/bench-pairs.sh) drown in noise. Kernel work (the socket calls) is
# not counted: it is the larger part of the proxy's CPU (see BENCHMARKS.md).
# Two caveats: the counts of one binary repeat within 0.1 % at -c 50 -P 1 and -c 1,
# less with -P 16 (how requests coalesce depends on timing); and two builds differ
# by a few percent in code no change touched, as the compiler inlines differently
# (session 46: tokio's clock reads went out of line, +500 instructions a request at
# -c 1). Compare function by function (-f) before crediting a change.
#
#   scripts/bench-instructions.sh [-P PIPELINE] [-c CLIENTS] [-n REQUESTS] [-t TEST] [-f TOP] BIN [BIN...]
#
# For each BIN (a build of redis-sidecar): starts it under callgrind in front of a
# redis-server this script starts on a free loopback port (one database, busy polling
# off: its spinning would be counted), warms up with REQUESTS/4 requests, zeroes the
# counters, runs redis-benchmark, dumps and prints the instructions per request; with
# -f TOP also the TOP functions by their own instructions.
#
# Defaults: -P 1, -c 50, -n 20000, -t get. Needs valgrind, redis-server,
# redis-benchmark, python3.
set -euo pipefail
PIPE=1 CLIENTS=50 REQS=20000 TEST=get TOP=0
while getopts "P:c:n:t:f:" o; do
    case "$o" in
        P) PIPE=$OPTARG ;; c) CLIENTS=$OPTARG ;; n) REQS=$OPTARG ;; t) TEST=$OPTARG ;;
        f) TOP=$OPTARG ;; *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
(($#)) || { echo "usage: $0 [-P N] [-c N] [-n N] [-t TEST] [-f TOP] BIN [BIN...]" >&2; exit 2; }
for tool in valgrind callgrind_control callgrind_annotate redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null || { echo "$0: $tool not found" >&2; exit 2; }
done
SUITE=bench-instructions
# (free_port, wait_ping, start_redis, WORK and the cleanup of what was started.)
. "$(dirname "$0")/suite-common.sh"
# A proxy under valgrind takes seconds to start.
PING_TRIES=600
REDIS_PORT=$(free_port)
start_redis "$REDIS_PORT"
redis-cli -p "$REDIS_PORT" set key:__rand_int__ xxx >/dev/null
bench() {
    redis-benchmark -p "$1" -c "$CLIENTS" -n "$2" -P "$PIPE" -t "$TEST" --csv 2>/dev/null | tail -1 >/dev/null
}
echo "workload: redis-benchmark -c $CLIENTS -P $PIPE -t $TEST -n $REQS (after $((REQS / 4)) to warm up)"
for bin in "$@"; do
    port=$(free_port)
    cat >"$WORK/proxy.yaml" <<EOF
listen: "127.0.0.1:$port"
host: 127.0.0.1
port: $REDIS_PORT
busy_poll_us: 0
redis_databases:
  main: {db: 0}
EOF
    valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" \
        "$bin" --config "$WORK/proxy.yaml" --metrics-listen off >"$WORK/proxy.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_ping -p "$port"
    bench "$port" $((REQS / 4))
    callgrind_control -z "$pid" >/dev/null 2>&1
    bench "$port" "$REQS"
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill -INT "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    dump=$(ls "$WORK"/cg."$pid".* 2>/dev/null | head -1)
    [[ -n $dump ]] || { echo "$0: no callgrind dump for $bin" >&2; exit 1; }
    total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    printf '%s: %s instructions, %d per request\n' "$bin" "$total" $((total / REQS))
    if ((TOP > 0)); then
        # (Without the entry points, whose own count includes inlined callees.)
        callgrind_annotate --inclusive=no --threshold=100 "$dump" 2>/dev/null |
            awk '/file:function/ {on=1; next} on && NF' |
            grep -v -e 'libc-start' -e 'libc_start' -e 'lang_start' -e 'below main' \
                -e 'rt.rs:std::rt' -e 'function.rs:std::' -e '???:main' -e 'ld-linux' -e '^---' |
            head -n "$TOP" | cut -c1-160
    fi
    rm -f "$WORK"/cg."$pid"*
done
