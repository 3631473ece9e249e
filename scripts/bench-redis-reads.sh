#!/usr/bin/env bash
# How hard Redis works behind each target (issue 12): Redis's own counters after the
# same redis-benchmark run through each — commands processed per read syscall
# (`total_commands_processed / total_reads_processed`, after CONFIG RESETSTAT) and
# Redis's CPU per request (from `used_cpu_sys + used_cpu_user` deltas).
#
#   scripts/bench-redis-reads.sh [-c CLIENTS] [-P PIPELINE] [-n REQUESTS] [-t TESTS] REDIS_PORT NAME=PORT...
#
# Example (direct first, then twemproxy and the proxy, all in front of redis on 7000):
#   scripts/bench-redis-reads.sh 7000 direct=7000 twemproxy=22121 proxy=6380
set -euo pipefail
clients=50 pipeline=1 requests=200000 tests=get
while getopts "c:P:n:t:" o; do
    case $o in
        c) clients=$OPTARG ;; P) pipeline=$OPTARG ;; n) requests=$OPTARG ;; t) tests=$OPTARG ;;
        *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
redis=$1
shift
field() { redis-cli -p "$redis" INFO "$1" | tr -d '\r' | awk -F: -v k="$2" '$1 == k { print $2 }'; }
printf '%-12s %10s %10s %12s %14s %12s\n' target rps commands reads cmds/read redis-us/req
for target in "$@"; do
    name=${target%%=*} port=${target#*=}
    redis-cli -p "$redis" CONFIG RESETSTAT >/dev/null
    cpu0=$(awk -v a="$(field cpu used_cpu_sys)" -v b="$(field cpu used_cpu_user)" 'BEGIN { print a + b }')
    rps=$(redis-benchmark -p "$port" -c "$clients" -P "$pipeline" -n "$requests" -t "$tests" -q 2>/dev/null |
        tr '\r' '\n' | awk '/requests per second/ { v = $2 } END { print v }')
    cpu1=$(awk -v a="$(field cpu used_cpu_sys)" -v b="$(field cpu used_cpu_user)" 'BEGIN { print a + b }')
    cmds=$(field stats total_commands_processed)
    reads=$(field stats total_reads_processed)
    awk -v n="$name" -v r="$rps" -v c="$cmds" -v d="$reads" -v u0="$cpu0" -v u1="$cpu1" -v q="$requests" \
        'BEGIN { printf "%-12s %10s %10d %12d %14.2f %12.2f\n", n, r, c, d, (d > 0 ? c / d : 0), (u1 - u0) * 1e6 / q }'
done
