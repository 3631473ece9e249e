#!/usr/bin/env bash
# RSS per idle client (issue 12): opens N idle connections to PORT with
# ../shared/bench/hold_conns.py and reports the RSS of process PID before, while they
# are held, and after they closed, and the growth per client; with -r ROUNDS, the RSS
# after each of ROUNDS bursts of N connections instead (does it ratchet up?).
#
#   scripts/bench-idle-memory.sh [-r ROUNDS] [-w SECONDS] PID PORT N [hold_conns.py args, e.g. --cmd "GET k"]
#
# -w: how long the connections are held before the RSS is read (default 2 s; an
# allocator may return freed pages to the system only after some seconds).
#
# Raise the open files limit first (ulimit -n 20000) and the proxy's max_clients.
set -euo pipefail
rounds=0 wait=2
while getopts "r:w:" o; do
    case $o in r) rounds=$OPTARG ;; w) wait=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
pid=$1 port=$2 n=$3
shift 3
hold=${HOLD_CONNS:-$(dirname "$0")/../../shared/bench/hold_conns.py}
rss() { awk '/VmRSS/ { print $2 }' "/proc/$pid/status"; }
if ((rounds > 0)); then
    out="start $(rss)"
    for r in $(seq 1 "$rounds"); do
        python3 "$hold" --port "$port" -n "$n" --hold 1 "$@" >/dev/null
        sleep 1
        out="$out, round $r $(rss)"
    done
    echo "bursts of $n $*: RSS kB $out"
    exit 0
fi
log=$(mktemp)
before=$(rss)
python3 "$hold" --port "$port" -n "$n" --hold $((wait + 6)) "$@" >"$log" &
h=$!
for _ in $(seq 1 150); do grep -q HOLDING "$log" && break; sleep 0.2; done
sleep "$wait"
during=$(rss)
wait "$h"
sleep 1
after=$(rss)
rm -f "$log"
awk -v b="$before" -v d="$during" -v a="$after" -v n="$n" -v args="$*" -v w="$wait" 'BEGIN {
    printf "%d idle clients %s (held %d s): RSS kB before %d, held %d, after close %d; %.0f B per client\n",
        n, args, w, b, d, a, (d - b) * 1024 / n }'
