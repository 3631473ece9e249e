#!/usr/bin/env bash
# Runs the proxy against a local Redis, starting one for you if none answers.
#
#   scripts/run-proxy.sh [extra redis-sidecar args...]
#
# Upstream: ${AUTOBOT_REDIS_HOST:-127.0.0.1}:${AUTOBOT_REDIS_PORT:-6379}. If nothing answers
# PING there and the target is local, a throwaway redis-server (no persistence) is started
# on that port (installed with apt-get first when missing and we are root). The proxy then
# runs with config/redis-databases.yaml and listens on 127.0.0.1:6380 unless told otherwise.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

REDIS_HOST="${AUTOBOT_REDIS_HOST:-127.0.0.1}"
REDIS_PORT="${AUTOBOT_REDIS_PORT:-6379}"
REDIS_LOG="/tmp/redis-sidecar-redis-${REDIS_PORT}.log"

log() { printf 'run-proxy: %s\n' "$*" >&2; }

# True if something at host:port answers PING with +PONG (or demands AUTH, which also
# proves a Redis is there). Uses redis-cli if present, else bash's /dev/tcp.
redis_answers() {
    if command -v redis-cli >/dev/null 2>&1; then
        local out
        out="$(timeout 2 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" PING 2>&1 || true)"
        [[ "$out" == *PONG* || "$out" == *NOAUTH* || "$out" == *"invalid password"* ]]
    else
        timeout 2 bash -c '
            exec 3<>"/dev/tcp/$1/$2" || exit 1
            printf "*1\r\n\$4\r\nPING\r\n" >&3
            IFS= read -r -t 2 line <&3 || exit 1
            [[ "$line" == "+PONG"* || "$line" == "-NOAUTH"* ]]
        ' _ "$REDIS_HOST" "$REDIS_PORT" 2>/dev/null
    fi
}

if redis_answers; then
    log "Redis answers at ${REDIS_HOST}:${REDIS_PORT}"
else
    case "$REDIS_HOST" in
        127.0.0.1 | localhost | ::1) ;;
        *)
            log "nothing answers PING at ${REDIS_HOST}:${REDIS_PORT}, and it is not local;"
            log "start Redis there or unset AUTOBOT_REDIS_HOST to use a local one."
            exit 1
            ;;
    esac
    if ! command -v redis-server >/dev/null 2>&1; then
        if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            log "installing redis-server and redis-tools with apt-get"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
        else
            log "redis-server is not installed. Install it, e.g.:"
            log "    sudo apt-get install redis-server redis-tools"
            log "or point AUTOBOT_REDIS_HOST/AUTOBOT_REDIS_PORT at a running Redis."
            exit 1
        fi
    fi
    log "starting redis-server on 127.0.0.1:${REDIS_PORT} (log: ${REDIS_LOG})"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes \
        --save '' --appendonly no --logfile "$REDIS_LOG" --dir /tmp
    for _ in $(seq 1 50); do
        if redis_answers; then
            break
        fi
        sleep 0.1
    done
    if ! redis_answers; then
        log "redis-server did not answer PING within 5s; last log lines:"
        tail -n 20 "$REDIS_LOG" >&2 || true
        exit 1
    fi
    log "Redis is up at 127.0.0.1:${REDIS_PORT}"
fi

exec cargo run --release -- --config config/redis-databases.yaml "$@"
