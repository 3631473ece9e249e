#!/usr/bin/env bash
# Issue 10, Redis Cluster throughput: `redis-benchmark --cluster` straight at a local
# 3-primary cluster vs plain `redis-benchmark` through the proxy (db 0 on that
# cluster), interleaved, R rounds, medians and the proxy/direct ratio per workload.
#
#   scripts/bench-cluster.sh [-b PROXY_BINARY] [-R ROUNDS] [-n REQUESTS] [-c]
#
# -c: also print, for every run, the CPU each process spent per request (user +
# system, microseconds): the benchmark client (needs /usr/bin/time, Debian package
# `time`), the three Redis nodes together, and the proxy; and the cores used in all
# (CPU per request x requests/s). On a host where these add up to every core, the
# throughput is the cores divided by the CPU per request.
#
# Workloads: c50 P1 and P16 SET/GET, and MSET of 10 keys (direct: redis-benchmark's
# cluster mode puts them in one slot with a hash tag; through the proxy: 10 random
# keys, split across slots). P16 runs send 8 x REQUESTS.
#
# Size REQUESTS so that a direct run lasts several seconds: redis-benchmark's cluster
# mode (7.0) ends a run only on a 250 ms tick, so its elapsed time, and the rate it
# prints, is quantized (100,000 GETs at ~180k/s print 133,333 = 100,000 / 0.75 s;
# 500,000 at P16 print 998,004 = 500,000 / 0.501 s). 1,000,000 keeps the error
# under ~5 % at P1 and, with the 8x, ~3 % at P16.
#
# Then, if target/release/examples/cluster_client_bench is built
# (`cargo build --release --example cluster_client_bench`), what a cluster-aware
# client gets: redis-rs's async cluster client straight at the cluster vs redis-rs's
# multiplexed client (one connection) and 50 connections through the proxy, c50 P1.
set -euo pipefail
bin=target/release/redis-sidecar
rounds=3
n=200000
cpu=0
while getopts "b:R:n:c" o; do
    case $o in b) bin=$OPTARG ;; R) rounds=$OPTARG ;; n) n=$OPTARG ;; c) cpu=1 ;; *) exit 2 ;; esac
done
((cpu == 0)) || [[ -x /usr/bin/time ]] || { echo "-c needs /usr/bin/time (apt-get install time)"; exit 2; }
[[ -x $bin ]] || { echo "build it first: cargo build --release ($bin)"; exit 2; }
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; sleep 0.3; rm -rf "$work"; }
trap cleanup EXIT
# Node ports and their cluster bus ports (+10000) below the ephemeral range
# (32768-): a bus port an outgoing connection holds makes a node exit at start.
base=$((10000 + RANDOM % 12000))
ports=($base $((base + 1)) $((base + 2)))
for p in "${ports[@]}"; do
    mkdir -p "$work/$p"
    (cd "$work/$p" && exec redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file nodes.conf --save '' --appendonly no --daemonize no \
        --logfile "$work/$p/log" >/dev/null 2>&1) &
    pids+=($!)
done
for p in "${ports[@]}"; do
    for _ in $(seq 1 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 1 100); do
    redis-cli -p "${ports[0]}" cluster info | grep -q 'cluster_state:ok' && break
    sleep 0.1
done
pport=$((base + 3))
cat >"$work/proxy.yaml" <<EOF
listen: 127.0.0.1:$pport
metrics_listen: null
cluster:
  nodes: ["127.0.0.1:${ports[0]}", "127.0.0.1:${ports[1]}", "127.0.0.1:${ports[2]}"]
redis_databases:
  main: { db: 0 }
EOF
"$bin" --config "$work/proxy.yaml" --log-level warn >"$work/proxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do redis-cli -p "$pport" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$pport" ping >/dev/null || { echo "the proxy did not start:"; cat "$work/proxy.log"; exit 1; }
rps() { awk -F'"' '/^"/ { print $4 }' | tail -1; }
ticks() { # utime + stime of the given processes, in clock ticks
    local sum=0 pid
    for pid in "$@"; do sum=$((sum + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done
    echo "$sum"
}
run() { # target test pipeline
    local t=$1 test=$2 p=$3 count=$n target=(-p "$pport") nodes0 proxy0 out rate
    ((p > 1)) && count=$((n * 8))
    [[ $t == direct ]] && target=(--cluster -p "${ports[0]}")
    if ((cpu == 0)); then
        redis-benchmark "${target[@]}" -c 50 -n "$count" -P "$p" -t "$test" -r 100000 --csv 2>/dev/null | rps
        return
    fi
    nodes0=$(ticks "${pids[@]:0:3}") proxy0=$(ticks "${pids[3]}")
    out=$(/usr/bin/time -f 'TIME %U %S' redis-benchmark "${target[@]}" -c 50 -n "$count" -P "$p" \
        -t "$test" -r 100000 --csv 2>&1)
    rate=$(rps <<<"$out")
    awk -v t="$t" -v w="$test P$p" -v rate="$rate" -v n="$count" -v tick="$(getconf CLK_TCK)" \
        -v bench="$(awk '/^TIME/ { print $2 + $3 }' <<<"$out")" \
        -v nodes=$(($(ticks "${pids[@]:0:3}") - nodes0)) -v proxy=$(($(ticks "${pids[3]}") - proxy0)) \
        'BEGIN { b = bench * 1e6 / n; r = nodes / tick * 1e6 / n; x = proxy / tick * 1e6 / n
                 printf "%-8s %-8s %10.0f/s  CPU us/request: benchmark %5.2f  Redis %5.2f  proxy %5.2f  all %5.2f (%.2f cores)\n",
                     w, t, rate, b, r, x, b + r + x, (b + r + x) * rate / 1e6 }' >>"$work/cpu.txt"
    echo "$rate"
}
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
printf '%-14s %14s %14s %8s\n' workload direct-cluster proxy ratio
for w in "set 1" "get 1" "set 16" "get 16" "mset 1"; do
    read -r test p <<<"$w"
    d=() x=()
    for _ in $(seq 1 "$rounds"); do
        d+=("$(run direct "$test" "$p")")
        x+=("$(run proxy "$test" "$p")")
    done
    dm=$(printf '%s\n' "${d[@]}" | median)
    xm=$(printf '%s\n' "${x[@]}" | median)
    printf '%-14s %14s %14s %8s\n' "$test P$p" "$dm" "$xm" \
        "$(awk -v a="$xm" -v b="$dm" 'BEGIN { if (b > 0) printf "%.2f", a / b }')"
done
if ((cpu)); then
    echo
    cat "$work/cpu.txt"
fi
ex=target/release/examples/cluster_client_bench
if [[ -x $ex ]]; then
    echo
    printf '%-14s %14s %14s %14s %8s %8s\n' "redis-rs c50" cluster-client proxy-mux proxy-conns mux conns
    for test in get set; do
        c=() m=() k=()
        for _ in $(seq 1 "$rounds"); do
            c+=("$("$ex" cluster "127.0.0.1:${ports[0]}" -n "$n" -t "$test" | awk '{ print $3 }')")
            m+=("$("$ex" mux "127.0.0.1:$pport" -n "$n" -t "$test" | awk '{ print $3 }')")
            k+=("$("$ex" conns "127.0.0.1:$pport" -n "$n" -t "$test" | awk '{ print $3 }')")
        done
        cm=$(printf '%s\n' "${c[@]}" | median)
        mm=$(printf '%s\n' "${m[@]}" | median)
        km=$(printf '%s\n' "${k[@]}" | median)
        printf '%-14s %14s %14s %14s %8s %8s\n' "$test P1" "$cm" "$mm" "$km" \
            "$(awk -v a="$mm" -v b="$cm" 'BEGIN { if (b > 0) printf "%.2f", a / b }')" \
            "$(awk -v a="$km" -v b="$cm" 'BEGIN { if (b > 0) printf "%.2f", a / b }')"
    done
fi
