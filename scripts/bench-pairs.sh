#!/usr/bin/env bash
# Paired throughput comparison of two proxies (or any two RESP endpoints) for a small
# relative difference on a noisy host: N pairs of redis-benchmark runs in ABBA order
# (pair i runs A then B when i is odd, B then A when even, so drift cancels), then the
# geometric mean of the per-pair ratios B/A with a 95 % bootstrap interval.
#
#   scripts/bench-pairs.sh [-n PAIRS] [-P PIPELINE] [-c CLIENTS] [-r REQUESTS] [-t TESTS]
#                          [-k KEYSPACE] A_PORT B_PORT
#
# A or B may be a Unix socket's path (starting with `/`) instead of a port.
#
# Defaults: 60 pairs, -P 16, -c 50, 1,000,000 requests, -t set,get, one key
# (`-k N` passes `-r N` to redis-benchmark: random keys, e.g. over a cluster's
# slots). Loopback only.
set -euo pipefail
PAIRS=60 PIPE=16 CLIENTS=50 REQS=1000000 TESTS=set,get KEYS=()
while getopts "n:P:c:r:t:k:" o; do
    case "$o" in
        n) PAIRS=$OPTARG ;; P) PIPE=$OPTARG ;; c) CLIENTS=$OPTARG ;;
        r) REQS=$OPTARG ;; t) TESTS=$OPTARG ;; k) KEYS=(-r "$OPTARG") ;; *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
A=${1:?A port}; B=${2:?B port}
OUT=$(mktemp)
run() {
    local target=(-h 127.0.0.1 -p "$1")
    [[ $1 == /* ]] && target=(-s "$1")
    redis-benchmark "${target[@]}" -c "$CLIENTS" -n "$REQS" -t "$TESTS" -P "$PIPE" "${KEYS[@]}" --csv 2>/dev/null |
        grep -E '^"[A-Z]+"' | cut -d, -f1,2 | tr -d '"' | tr '\n' ' '
}
for i in $(seq 1 "$PAIRS"); do
    if ((i % 2)); then a=$(run "$A"); b=$(run "$B"); else b=$(run "$B"); a=$(run "$A"); fi
    echo "A $a B $b" >>"$OUT"
    printf 'pair %d/%d\r' "$i" "$PAIRS" >&2
done
python3 - "$OUT" <<'PY'
import math, random, re, statistics as st, sys
ratios = {}
for line in open(sys.argv[1]):
    a = dict(re.findall(r"([A-Z]+),([\d.]+)", line.split(" B ")[0]))
    b = dict(re.findall(r"([A-Z]+),([\d.]+)", line.split(" B ")[1]))
    for t in a:
        if t in b and float(a[t]) > 0:
            ratios.setdefault(t, []).append(math.log(float(b[t]) / float(a[t])))
random.seed(1)
def report(name, logs):
    boots = sorted(st.mean(random.choices(logs, k=len(logs))) for _ in range(5000))
    print("%-5s n=%-3d B/A geometric mean %.3f  95%% CI [%.3f, %.3f]" % (
        name, len(logs), math.exp(st.mean(logs)), math.exp(boots[125]), math.exp(boots[4874])))
for t, logs in ratios.items():
    report(t, logs)
if len(ratios) > 1:
    report("all", [x for logs in ratios.values() for x in logs])
PY
rm -f "$OUT"
