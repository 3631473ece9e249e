#!/usr/bin/env bash
# Runs hiredis's own test program (test.c: blocking, pipelined, async, RESP3 pushes,
# over TCP, a Unix socket and TLS) against a redis-server directly, then through
# redis-sidecar in front of the same server, and prints both summaries.
#
#   scripts/hiredis-suite.sh HIREDIS_SOURCE_DIR
#
# HIREDIS_SOURCE_DIR: a checkout of https://github.com/redis/hiredis. Needs a C
# compiler, make, openssl, and Debian's libevent-dev and libssl-dev (the async and
# TLS parts). The program is built there with `make TEST_ASYNC=1 USE_SSL=1
# TEST_SSL=1 hiredis-test`.
#
# One edit is made to test.c (idempotent): its "Async connect timeout" test
# connects to a black-hole address (192.168.254.254) and aborts on a host without a
# route to it (directly as well); it then runs only when HIREDIS_BLACKHOLE is set.
# Output in ${HIREDIS_SUITE_OUT:-target/hiredis-suite}: direct.log, proxy.log.
set -euo pipefail

SUITE=hiredis-suite
source "$(dirname "${BASH_SOURCE[0]}")/suite-common.sh"
SRC="$(cd "${1:?usage: scripts/hiredis-suite.sh HIREDIS_SOURCE_DIR}" && pwd)"
OUT="$(out_dir "${HIREDIS_SUITE_OUT:-$ROOT/target/hiredis-suite}")"

(cd "$ROOT" && cargo build --release --quiet)
python3 - "$SRC/test.c" <<'EOF'
import sys
p = sys.argv[1]
s = open(p).read()
a = 'if (config.type == CONN_TCP || config.type == CONN_SSL) {\n        /* timeout can only be simulated with network */'
if a in s:
    s = s.replace(a, 'if (getenv("HIREDIS_BLACKHOLE") && (config.type == CONN_TCP || config.type == CONN_SSL)) {\n        /* timeout can only be simulated with network */')
    open(p, 'w').write(s)
EOF
make -C "$SRC" TEST_ASYNC=1 USE_SSL=1 TEST_SSL=1 hiredis-test -j2 >"$OUT/build.log" 2>&1

# A CA and a server certificate for 127.0.0.1 and the name the suite verifies.
(
    cd "$WORK"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
        -subj '/CN=hiredis-suite CA' 2>/dev/null
    printf 'subjectAltName = DNS:hiredis.test.example.com, IP:127.0.0.1\n' >ext.cnf
    openssl req -newkey rsa:2048 -nodes -keyout srv.key -subj '/CN=localhost' 2>/dev/null |
        openssl x509 -req -CA ca.crt -CAkey ca.key -CAcreateserial -extfile ext.cnf \
            -days 2 -out srv.crt 2>/dev/null
)
TLS_ARGS=(--ssl-host 127.0.0.1 --ssl-ca-cert "$WORK/ca.crt" --ssl-cert "$WORK/srv.crt"
    --ssl-key "$WORK/srv.key" --ssl-verify-name hiredis.test.example.com)

REDIS=$(free_port)
REDIS_TLS=$(free_port)
start_redis "$REDIS" --enable-debug-command yes \
    --unixsocket "$WORK/redis.sock" --unixsocketperm 700 \
    --tls-port "$REDIS_TLS" --tls-cert-file "$WORK/srv.crt" --tls-key-file "$WORK/srv.key" \
    --tls-ca-cert-file "$WORK/ca.crt"

PROXY=$(free_port)
PROXY_TLS=$(free_port)
{
    proxy_config "$REDIS"
    echo "listen: 127.0.0.1:$PROXY"
    echo "unixsocket: $WORK/proxy.sock"
    echo "unixsocketperm: 700"
    echo "client_tls: { listen: \"127.0.0.1:$PROXY_TLS\", cert_file: $WORK/srv.crt, key_file: $WORK/srv.key, ca_file: $WORK/ca.crt }"
} >"$WORK/proxy.yml"
start_proxy "$WORK/proxy.yml" "$OUT/proxy-server.log" -p "$PROXY"

run() { # name port socket tls_port
    redis-cli -p "$REDIS" -n 9 flushdb >/dev/null
    log "$1 run"
    (cd "$SRC" && timeout 600 stdbuf -o0 ./hiredis-test -h 127.0.0.1 -p "$2" -s "$3" \
        --ssl-port "$4" "${TLS_ARGS[@]}" >"$OUT/$1.log" 2>&1) || log "$1 run: exit $?"
    printf '%-6s passed %4d, failed %d: %s\n' "$1" "$(grep -c '^#.*PASSED' "$OUT/$1.log")" \
        "$(grep -c '^#.*FAILED' "$OUT/$1.log" || true)" "$(tail -n 1 "$OUT/$1.log")"
}
run direct "$REDIS" "$WORK/redis.sock" "$REDIS_TLS"
run proxy "$PROXY" "$WORK/proxy.sock" "$PROXY_TLS"
