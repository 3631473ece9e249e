#!/usr/bin/env bash
# Runs BullMQ's test suite (a job queue built on Redis: Lua scripts, blocking
# commands, streams, pub/sub; https://github.com/taskforcesh/bullmq) against a
# redis-server directly, then through redis-sidecar in front of another one, and
# prints both results and every test whose result differs.
#
#   scripts/bullmq-suite.sh BULLMQ_SOURCE_DIR [ioredis|node-redis]
#
# The second argument picks BullMQ's Redis client (default ioredis; `node-redis`
# runs the same tests through node-redis). Needs node and npm. Installs, in the
# checkout, only the devDependencies the tests use (the rest is release and lint
# tooling) and generates the Lua script modules as BullMQ's `pretest` does; the
# checkout's package.json is replaced by that subset (package.json.orig keeps it).
# Output in ${BULLMQ_SUITE_OUT:-target/bullmq-suite}: direct.json, proxy.json.
set -euo pipefail

SUITE=bullmq-suite
source "$(dirname "${BASH_SOURCE[0]}")/suite-common.sh"
SRC="$(cd "${1:?usage: scripts/bullmq-suite.sh BULLMQ_SOURCE_DIR [ioredis|node-redis]}" && pwd)"
CLIENT="${2:-ioredis}"
OUT="$(out_dir "${BULLMQ_SUITE_OUT:-$ROOT/target/bullmq-suite}")"

(cd "$ROOT" && cargo build --release --quiet)
cd "$SRC"
if [ ! -d node_modules/vitest ]; then
    [ -f package.json.orig ] || cp package.json package.json.orig
    python3 - <<'EOF'
import json
d = json.load(open('package.json.orig'))
keep = {'vitest', 'ioredis', 'redis', 'sinon', 'typescript', 'ts-node', 'rrule', 'moment',
        'progress', '@types/node', 'rimraf', 'fast-glob', 'minimatch', '@types/sinon',
        '@types/semver', 'test-console', 'cpx2'}
d['devDependencies'] = {k: v for k, v in d['devDependencies'].items() if k in keep}
d.pop('scripts', None)
json.dump(d, open('package.json', 'w'), indent=1)
EOF
    rm -f yarn.lock
    npm install --ignore-scripts --no-audit --no-fund >"$OUT/npm.log" 2>&1
fi
rm -rf rawScripts src/scripts
npx ts-node --project tsconfig-cjs.json scripts/generateRawScripts.ts >"$OUT/pretest.log" 2>&1
node ./scripts/commandTransform.js ./rawScripts ./src/scripts >>"$OUT/pretest.log" 2>&1
CONFIG=()
[ "$CLIENT" = node-redis ] && CONFIG=(--config vitest.node-redis.config.ts)

run() { # name port
    log "$1 run ($CLIENT, port $2)"
    REDIS_PORT="$2" timeout 2400 npx vitest run --no-file-parallelism "${CONFIG[@]}" \
        --reporter=json --outputFile="$OUT/$1.json" >"$OUT/$1.log" 2>&1 || true
}

DIRECT=$(free_port)
start_redis "$DIRECT"
run direct "$DIRECT"

UP=$(free_port)
start_redis "$UP"
PROXY=$(free_port)
{
    proxy_config "$UP"
    echo "listen: 127.0.0.1:$PROXY"
} >"$WORK/proxy.yml"
start_proxy "$WORK/proxy.yml" "$OUT/proxy-server.log" -p "$PROXY"
run proxy "$PROXY"

python3 - "$OUT/direct.json" "$OUT/proxy.json" <<'EOF'
import json, sys
def load(p):
    res = {}
    for r in json.load(open(p))['testResults']:
        for a in r['assertionResults']:
            res[(r['name'].split('/')[-1], a['fullName'])] = a['status']
    return res
a, b = load(sys.argv[1]), load(sys.argv[2])
for name, r in (('direct', a), ('proxy', b)):
    counts = {}
    for s in r.values():
        counts[s] = counts.get(s, 0) + 1
    print(name, counts)
for k in sorted(set(a) | set(b)):
    if a.get(k) != b.get(k):
        print(a.get(k, 'missing'), '->', b.get(k, 'missing'), k)
EOF
