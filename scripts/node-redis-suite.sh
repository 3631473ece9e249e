#!/usr/bin/env bash
# Runs the test suite of node-redis's client (@redis/client, the `redis` package on
# npm) against redis-server directly, then through redis-sidecar, and lists every
# test whose result differs.
#
#   scripts/node-redis-suite.sh SOURCE [mocha options...]
#
# SOURCE: a checkout of github.com/redis/node-redis at a v4 or v5 tag (redis@4.7.1 and
# redis@5.12.1 tried); its packages are installed from npm and built there (`npm
# install`, tsc). Needs Node.js and npm. The tests start each Redis they need with
# `docker run` (one server per set of server arguments, on a port from 6379 up; v4
# passes them through `docker build`, v5 to its image); here `docker` is a
# stand-in that starts redis-server on that port (the run against Redis), or
# redis-server on a free port and the proxy (the release build, the shipped config
# plus databases 11-15, the password for clients and towards Redis when the test's
# server has one) on that port. Cluster and Sentinel tests (titles `cluster.*`,
# lib/cluster, lib/sentinel) are left out: the proxy shows a cluster to its clients
# as one standalone server, and v5's Sentinel tests mount files into containers.
# Redis's version is given as 7.0, so tests of newer commands are skipped both ways.
# Extra options go to
# mocha (e.g. `--bail`; a `--grep` takes the place of the one that leaves out the
# cluster tests); NODE_REDIS_PROXY_YAML adds lines to the proxy's config
# (e.g. 'deny_commands: []'). Output in ${NODE_REDIS_SUITE_OUT:-target/node-redis-suite}.
set -euo pipefail

SUITE=node-redis-suite
source "$(dirname "${BASH_SOURCE[0]}")/suite-common.sh"
SRC="$(cd "${1:?usage: scripts/node-redis-suite.sh NODE_REDIS_SOURCE [mocha options...]}" && pwd)"
shift
OUT="$(out_dir "${NODE_REDIS_SUITE_OUT:-$ROOT/target/node-redis-suite}")"
(cd "$ROOT" && cargo build --release --quiet)
if [ ! -d "$SRC/packages/test-utils/dist" ]; then
    log "installing and building node-redis's packages"
    build=build
    grep -q '"build:tests-tools"' "$SRC/package.json" && build=build:tests-tools  # (v4)
    (cd "$SRC" && npm install --no-audit --no-fund --ignore-scripts >"$OUT/npm.log" 2>&1 &&
        npm run "$build" >>"$OUT/npm.log" 2>&1)
fi

mkdir -p "$WORK/bin" "$WORK/docker"
{
    proxy_config @REDIS_PORT@ 15
    printf '%b\n' "${NODE_REDIS_PROXY_YAML:-}"
} >"$WORK/proxy-template.yml"
cat >"$WORK/bin/docker" <<STANDIN
#!/usr/bin/env bash
# docker, as node-redis's test-utils call it: \`docker build DIR -q --build-arg
# REDIS_ARGUMENTS="..."\` (prints an image: the arguments, kept in a file),
# \`docker run -d --network host IMAGE\` (starts it, prints its id) and
# \`docker rm -f ID\` (kills it, as docker does). MODE=proxy puts the proxy on
# the port asked for.
set -u
state=$WORK/docker
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
case \$1 in
build)
    for a in "\$@"; do [[ \$a == REDIS_ARGUMENTS=* ]] && args=\${a#REDIS_ARGUMENTS=}; done
    image=image\$RANDOM\$RANDOM
    printf '%s' "\$args" >"\$state/\$image"
    echo "\$image"
    ;;
run)
    shift
    port= id=server\$RANDOM\$RANDOM
    while ((\$#)); do
        case \$1 in
        --init | -d) shift ;;
        -e) [[ \$2 == PORT=* ]] && port=\${2#PORT=}; shift 2 ;;
        -v | --network) shift 2 ;;
        *) image=\$1; shift; break ;;
        esac
    done
    if [ -f "\$state/\$image" ]; then
        eval "set -- \$(cat "\$state/\$image")"  # v4: the arguments of the build
    elif [[ \$image == redislabs/client-libs-test:* ]]; then
        set -- --port "\$port" "\$@"              # v5: the port in the environment
    else
        echo "docker stand-in: no image \$image here" >&2
        exit 1
    fi
    args=("\$@") port= password= cluster=
    for ((i = 0; i < \${#args[@]}; i++)); do
        case \${args[i]} in
        --port) port=\${args[i + 1]} ;;
        --requirepass) password=\${args[i + 1]} ;;
        --cluster-enabled) cluster=1 ;;
        esac
    done
    if [ "\$MODE" = proxy ] && [ -z "\$cluster" ]; then
        redis_port=\$(free_port)
        for ((i = 0; i < \${#args[@]}; i++)); do
            [ "\${args[i]}" = --port ] && args[i + 1]=\$redis_port
        done
    fi
    mkdir -p "\$state/\$id"
    setsid redis-server "\${args[@]}" --bind 127.0.0.1 --dir "\$state/\$id" \
        >"\$state/\$id/redis.log" 2>&1 </dev/null &
    echo \$! >"\$state/\$id/pids"
    if [ "\$MODE" = proxy ] && [ -z "\$cluster" ]; then
        for _ in \$(seq 1 100); do
            redis-cli -p "\$redis_port" \${password:+-a "\$password"} ping 2>/dev/null | grep -q PONG && break
            sleep 0.05
        done
        {
            sed -e "s/@REDIS_PORT@/\$redis_port/" \
                -e "s/^password: .*/password: \${password:+\"\$password\"}/" "$WORK/proxy-template.yml"
            echo "listen: 127.0.0.1:\$port"
            [ -n "\$password" ] && echo "client_password: \"\$password\""
            true
        } >"\$state/\$id/proxy.yml"
        setsid "$ROOT/target/release/redis-sidecar" -c "\$state/\$id/proxy.yml" --metrics-listen off \
            >>"$OUT/proxy-server.log" 2>&1 </dev/null &
        echo \$! >>"\$state/\$id/pids"
    fi
    echo "\$id"
    ;;
rm)
    id=\${!#}
    kill -9 \$(cat "\$state/\$id/pids") 2>/dev/null
    true
    ;;
*)
    echo "docker stand-in: \$* is not handled" >&2
    exit 1
    ;;
esac
STANDIN
chmod +x "$WORK/bin/docker"
: >"$OUT/proxy-server.log"

# v4 runs its TypeScript through ts-node, v5 through tsx.
if grep -q '"tsx"' "$SRC/package.json" "$SRC/packages/client/package.json"; then
    MOCHA=(-r tsx --exit)
else
    MOCHA=(-r source-map-support/register -r ts-node/register)
fi
run() { # name [mocha options...]
    local name=$1
    shift
    log "$name run"
    (cd "$SRC/packages/client" && MODE=$name PATH="$WORK/bin:$PATH" TS_NODE_TRANSPILE_ONLY=true \
        timeout 1800 npx mocha "${MOCHA[@]}" './lib/**/*.spec.ts' --exclude './lib/cluster/**' \
        --exclude './lib/sentinel/**' --redis-version=7.0 --grep 'cluster\.' --invert \
        --reporter xunit --reporter-option "output=$OUT/$name.xml" "$@" >"$OUT/$name.log" 2>&1) ||
        log "$name run: exit $?"
    # (Servers the run left behind, if it was cut short.)
    for f in "$WORK"/docker/*/pids; do [ -e "$f" ] && { kill -9 $(cat "$f") 2>/dev/null || true; }; done
    rm -rf "$WORK"/docker/*
}
MOCHA_ARGS=("$@")
run direct "${MOCHA_ARGS[@]}"
run proxy "${MOCHA_ARGS[@]}"
compare_junit node-redis "$OUT/direct.xml" "$OUT/proxy.xml"
