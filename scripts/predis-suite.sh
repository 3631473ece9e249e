#!/usr/bin/env bash
# Runs predis's integration tests (PHPUnit group `connected`) against redis-server
# directly, then through redis-sidecar in front of the same server, and lists every
# test whose result differs.
#
#   scripts/predis-suite.sh PREDIS_SOURCE
#
# PREDIS_SOURCE: a checkout of github.com/predis/predis (tag v2.4.0 was run; 3.x
# wants psr/http-message too). Needs PHP and PHPUnit 9 (Debian: php-cli phpunit);
# predis's own autoload.php is used, no Composer. Its phpunit.xml.dist dials
# 127.0.0.1:6379, database 0 (15 for a few): directly redis-server listens there,
# through the proxy the proxy does (config/redis-databases.yaml plus databases 11-15)
# and redis-server on a free port. Output in ${PREDIS_SUITE_OUT:-target/predis-suite}.
set -euo pipefail

SUITE=predis-suite
source "$(dirname "${BASH_SOURCE[0]}")/suite-common.sh"
SRC="$(cd "${1:?usage: scripts/predis-suite.sh PREDIS_SOURCE}" && pwd)"
OUT="$(out_dir "${PREDIS_SUITE_OUT:-$ROOT/target/predis-suite}")"
need_port 6379
(cd "$ROOT" && cargo build --release --quiet)

run() { # name
    log "$1 run"
    (cd "$SRC" && timeout 1200 phpunit --group connected --log-junit "$OUT/$1.xml" \
        >"$OUT/$1.log" 2>&1) || log "$1 run: exit $?"
}

start_redis 6379
run direct
stop_started

proxy_in_front 6379 "$OUT/proxy-server.log"
run proxy

compare_junit predis "$OUT/direct.xml" "$OUT/proxy.xml"
