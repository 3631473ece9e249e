#!/usr/bin/env bash
# THE test command: makes sure redis-server, redis-cli and redis-benchmark exist (the
# integration tests start real Redis servers), `make` (jemalloc, the allocator, is built
# from C), `ss` (iproute2: one test reads the kernel's keepalive timers) and `chromium`
# (tests/status_page.rs loads the status page in a headless browser), then runs every
# test target.
#
#   scripts/test.sh [extra cargo test args...]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
for tool in redis-server redis-cli redis-benchmark ss make; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 ||
    missing+=(chromium)

if ((${#missing[@]} > 0)); then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing redis-server redis-tools iproute2 chromium make (missing: ${missing[*]})" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends redis-server redis-tools redis-sentinel iproute2 chromium fonts-liberation make >/dev/null
    else
        echo "test.sh: WARNING: missing ${missing[*]}; the integration tests need them" >&2
        echo "test.sh: and will fail. Install: sudo apt-get install redis-server redis-tools iproute2 chromium make" >&2
    fi
fi

# redis-sentinel is optional: tests/support/sentinel.rs falls back to
# `redis-server <conf> --sentinel` without it.
# apt's redis-server package starts a system service on 6379 on some hosts; the tests do
# not use it (each test starts its own server on a free port), so it is left alone.
exec cargo test --all-targets "$@"
