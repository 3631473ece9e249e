#!/usr/bin/env bash
# Runs the server tests of rustis (the async Rust client on crates.io; RESP3, its
# multiplexed, exclusive and pooled clients, pipelines, transactions, pub/sub,
# client-side caching, reconnection) against a redis-server directly, then through
# redis-sidecar in front of the same kind of server, and lists every test whose
# result differs.
#
#   scripts/rustis-suite.sh [VERSION]
#
# VERSION (default 0.27.2) is fetched from crates.io; its package carries the tests
# (src/tests). They dial REDIS_HOST:REDIS_PORT, and a few 127.0.0.1:6379 whatever
# those say, so every run listens on 6379 (the port must be free). Not run: the
# cluster, sentinel and TLS groups (docker topologies), the Redis Stack modules'
# commands (search, JSON, time series, bloom, cuckoo, count-min, top-k, t-digest,
# vector sets: plain redis-server has none) and `DEBUG PANIC/OOM/ASSERT/RESTART/
# CRASH-AND-RECOVER`, which kill the server for docker to restart. Through the proxy
# twice: the shipped config, then `auth_passthrough: true` with nothing denied.
# Builds into ${RUSTIS_SUITE_TARGET:-target/rustis-suite-build}; output in
# ${RUSTIS_SUITE_OUT:-target/rustis-suite}.
set -euo pipefail

SUITE=rustis-suite
source "$(dirname "${BASH_SOURCE[0]}")/suite-common.sh"
VERSION=${1:-0.27.2}
OUT="$(out_dir "${RUSTIS_SUITE_OUT:-$ROOT/target/rustis-suite}")"
TARGET="$(out_dir "${RUSTIS_SUITE_TARGET:-$ROOT/target/rustis-suite-build}")"
need_port 6379

(cd "$ROOT" && cargo build --release --quiet)
log "fetching rustis $VERSION"
mkdir -p "$WORK/fetch/src"
printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nrustis = "=%s"\n' \
    "$VERSION" >"$WORK/fetch/Cargo.toml"
touch "$WORK/fetch/src/lib.rs"
(cd "$WORK/fetch" && cargo fetch --quiet)
PKG=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"rustis-$VERSION" | head -1)
rm -rf "$TARGET/src"
cp -r "$PKG" "$TARGET/src"
log "building rustis's tests"
(cd "$TARGET/src" && CARGO_TARGET_DIR="$TARGET" cargo test --release --lib \
    --features pool,client-cache --no-run >"$OUT/build.log" 2>&1) || {
    log "build failed: $OUT/build.log"
    exit 1
}

SKIP=()
for group in cluster sentinel tls search_commands json_commands time_series bloom cuckoo \
    count_min top_k t_digest vector_sets debug_commands::standalone_server; do
    SKIP+=(--skip "$group")
done
run() { # name
    log "$1 run"
    (cd "$TARGET/src" && REDIS_HOST=127.0.0.1 REDIS_PORT=6379 RUST_LOG=off \
        CARGO_TARGET_DIR="$TARGET" timeout 1200 cargo test --release --lib \
        --features pool,client-cache -- --test-threads=1 "${SKIP[@]}" >"$OUT/$1.log" 2>&1) ||
        log "$1 run: exit $?"
}

REDIS_ARGS=(--enable-debug-command yes)
start_redis 6379 "${REDIS_ARGS[@]}"
run direct
stop_started
proxy_in_front 6379 "$OUT/proxy-server.log" "command_timeout: 30"
run proxy
stop_started
proxy_in_front 6379 "$OUT/passthrough-server.log" "command_timeout: 30" \
    "auth_passthrough: true" "deny_commands: []"
run passthrough
stop_started

compare_libtest 'shipped config:' "$OUT/direct.log" "$OUT/proxy.log"
compare_libtest 'auth_passthrough, nothing denied:' "$OUT/direct.log" "$OUT/passthrough.log"
