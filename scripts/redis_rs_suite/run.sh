#!/usr/bin/env bash
# Runs redis-rs's own tests (crate 1.8.1) directly and through redis-sidecar and
# compares them per test. See README.md here for how the crate is prepared.
#
#   scripts/redis_rs_suite/run.sh REDIS_RS_DIR direct|proxy [extra test-binary args]
#
# REDIS_RS_DIR: the prepared crate (support-mod.patch applied, dev-dependencies
# vendored). `proxy` sets VIA_PROXY=1: each test's client goes through a
# redis-sidecar (REDIS_SIDECAR_BIN, default target/release/redis-sidecar of this
# checkout) in front of the redis-server the test starts. Output per binary in
# ${OUT:-target/redis-rs-suite}/MODE/; compare two runs with compare.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SRC="$(cd "${1:?usage: run.sh REDIS_RS_DIR direct|proxy}" && pwd)"
MODE="${2:?usage: run.sh REDIS_RS_DIR direct|proxy}"
shift 2
OUT="${OUT:-$ROOT/target/redis-rs-suite}/${RUN_NAME:-$MODE}"
mkdir -p "$OUT"
export REDIS_SIDECAR_BIN="${REDIS_SIDECAR_BIN:-$ROOT/target/release/redis-sidecar}"
if [ "$MODE" = proxy ]; then export VIA_PROXY=1; else unset VIA_PROXY; fi
export REDISRS_SERVER_TYPE=tcp
FEATS="tokio-comp,aio,script,streams,acl,geospatial,num-bigint,cache-aio,connection-manager,token-based-authentication"
cd "$SRC"
for t in parser test_acl test_async test_basic test_bignum test_cache \
    test_credentials_provider_failures test_geospatial test_hotkeys test_script \
    test_streams test_support test_types; do
    # One thread: the support code's block_on_all has one global panic flag.
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SRC/target}" timeout 1800 cargo test -j2 \
        --features "$FEATS" --test "$t" -- --test-threads=1 "$@" >"$OUT/$t.txt" 2>&1 || true
    echo "$t: $(grep '^test result' "$OUT/$t.txt" || echo 'no result')"
done
