#!/usr/bin/env bash
# Runs the test suite of redigo (github.com/gomodule/redigo, the Go client) against
# redis-server directly, then through redis-sidecar, and lists every test whose
# result differs.
#
#   scripts/redigo-suite.sh SOURCE
#
# SOURCE: redigo's module directory (the one holding go.mod, redis/ and redisx/), e.g.
# Debian's: `apt-get download golang-github-gomodule-redigo-dev && dpkg -x *.deb x`,
# then x/usr/share/gocode/src/github.com/gomodule/redigo. Needs Go and testify
# (Debian: golang-go golang-github-stretchr-testify-dev); built in GOPATH mode over
# /usr/share/gocode, so nothing is downloaded. The tests start their own redis-server
# (`-redis-server`, `--port 16379`; only package redis has such tests) and wait for its "ready" line; for the run through
# the proxy that is a stand-in that starts redis-server on a free port and the proxy
# (the release build) on the port asked for. Output in
# ${REDIGO_SUITE_OUT:-target/redigo-suite}.
set -euo pipefail

SUITE=redigo-suite
source "$(dirname "${BASH_SOURCE[0]}")/suite-common.sh"
SRC="$(cd "${1:?usage: scripts/redigo-suite.sh REDIGO_SOURCE}" && pwd)"
OUT="$(out_dir "${REDIGO_SUITE_OUT:-$ROOT/target/redigo-suite}")"
(cd "$ROOT" && cargo build --release --quiet)
mkdir -p "$WORK/gopath/src/github.com/gomodule"
cp -r "$SRC" "$WORK/gopath/src/github.com/gomodule/redigo"

proxy_config @REDIS_PORT@ >"$WORK/proxy-template.yml"
cat >"$WORK/redis-server-behind-proxy" <<STANDIN
#!/usr/bin/env bash
# redis-server --port N [options...], as the suite calls it: redis-server with the
# options on a free port, the proxy on N; says "ready" once the proxy answers.
set -u
args=("\$@") port=
redis_port=\$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for ((i = 0; i < \${#args[@]}; i++)); do
    [ "\${args[i]}" = --port ] && port=\${args[i + 1]} && args[i + 1]=\$redis_port
done
redis-server "\${args[@]}" >>"$OUT/redis-server.log" 2>&1 &
redis=\$!
{
    sed -e "s/@REDIS_PORT@/\$redis_port/" "$WORK/proxy-template.yml"
    echo "listen: 127.0.0.1:\$port"
} >"$WORK/proxy.yml"
"$ROOT/target/release/redis-sidecar" -c "$WORK/proxy.yml" --metrics-listen off \
    >>"$OUT/proxy-server.log" 2>&1 &
proxy=\$!
trap 'kill \$proxy \$redis 2>/dev/null; wait; exit 0' TERM INT
for _ in \$(seq 1 100); do
    redis-cli -p "\$port" ping 2>/dev/null | grep -q PONG && break
    sleep 0.05
done
echo " * Ready to accept connections (redis-server on \$redis_port behind the proxy on \$port)"
wait
STANDIN
chmod +x "$WORK/redis-server-behind-proxy"
: >"$OUT/proxy-server.log"
: >"$OUT/redis-server.log"

run() { # name [go test flags...]
    local name=$1
    shift
    log "$name run"
    (cd "$WORK/gopath/src/github.com/gomodule/redigo" &&
        GO111MODULE=off GOPATH="$WORK/gopath:/usr/share/gocode" GOCACHE="$WORK/gocache" \
            timeout 600 go test -count=1 -v ./redis -args "$@" >"$OUT/$name.log" 2>&1) ||
        log "$name run: exit $?"
}
run direct
run proxy -redis-server "$WORK/redis-server-behind-proxy"

python3 - "$OUT" "$ROOT/scripts" <<'PY'
import re, sys
out = sys.argv[1]
sys.path.insert(0, sys.argv[2])
from suite_results import report
def results(path):
    r = {}
    lines = open(path, errors='replace').read().splitlines()
    for line in lines:
        m = re.match(r'^\s*--- (PASS|FAIL|SKIP): (\S+)', line)
        if m:
            r[m.group(2)] = {'PASS': 'passed', 'FAIL': 'failed', 'SKIP': 'skipped'}[m.group(1)]
        elif re.match(r'^(panic:|FAIL\s+\S+\s+\[build failed\])', line):
            r['(package) ' + line] = 'failed'
    return r
report(results(f'{out}/direct.log'), results(f'{out}/proxy.log'))
PY
