#!/usr/bin/env bash
# Runs the test suite of a Perl Redis client — Redis.pm (the CPAN distribution
# `Redis`) or Redis::Fast (its XS twin over hiredis) — against redis-server
# directly, then through redis-sidecar, and lists every test whose result differs.
#
#   scripts/perl-redis-suite.sh SOURCE
#
# SOURCE: the unpacked distribution (Redis.pm: `apt-get source libredis-perl`, which
# needs deb-src entries, the orig tarball is enough; Redis::Fast: a checkout of
# github.com/shogo82148/Redis-Fast at the tag of Debian's libredis-fast-perl, whose
# compiled module the tests then load). The tests start their own redis-server
# (t/tlib/Test/SpawnRedisServer.pm) from $REDIS_SERVER_PATH with a config file naming
# the port, maybe a Unix socket, Redis's idle `timeout`, `requirepass` and
# `maxclients`; for the run through the proxy that is a stand-in that starts
# redis-server on a free port with that config and the proxy (the release build) on
# the port and the socket asked for, with `client_idle_timeout`, the password (for
# clients and towards Redis) and `max_clients` from it (a Sentinel it starts as it
# is). Needs Perl and the suites' modules (Debian: libio-socket-timeout-perl
# libtry-tiny-perl libtest-deep-perl libtest-fatal-perl libtest-sharedfork-perl
# libtest-tcp-perl libio-string-perl; for Redis::Fast also libredis-fast-perl
# libtest-leaktrace-perl libparallel-forkmanager-perl libtest-unixsock-perl).
# Output in ${PERL_SUITE_OUT:-target/perl-redis-suite}.
set -euo pipefail

SUITE=perl-redis-suite
source "$(dirname "${BASH_SOURCE[0]}")/suite-common.sh"
SRC="$(cd "${1:?usage: scripts/perl-redis-suite.sh REDIS_PM_SOURCE}" && pwd)"
OUT="$(out_dir "${PERL_SUITE_OUT:-$ROOT/target/perl-redis-suite}")"
(cd "$ROOT" && cargo build --release --quiet)

proxy_config @REDIS_PORT@ >"$WORK/proxy-template.yml"
cat >"$WORK/redis-server-behind-proxy" <<STANDIN
#!/usr/bin/env bash
# redis-server CONFIG, as the suite calls it: redis-server on a free port behind the
# proxy, which takes the port and the Unix socket CONFIG names.
set -u
conf=\$1
[ "\$*" != "\${*#*--sentinel}" ] && exec redis-server "\$@"
field() { awk -v k="\$1" '\$1 == k { print \$2 }' "\$conf"; }
port=\$(field port) sock=\$(field unixsocket) idle=\$(field timeout)
password=\$(field requirepass) max=\$(field maxclients)
redis_port=\$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# (maxclients is the proxy's to enforce: Redis must take the proxy's connections.)
redis-server "\$conf" --port "\$redis_port" --unixsocket "\$conf.redis.sock" --maxclients 10000 &
redis=\$!
for _ in \$(seq 1 100); do redis-cli -p "\$redis_port" \${password:+-a "\$password"} ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
{
    sed -e "s/@REDIS_PORT@/\$redis_port/" \
        -e "s/^password: .*/password: \${password:+\"\$password\"}/" "$WORK/proxy-template.yml"
    echo "listen: 127.0.0.1:\$port"
    echo "client_idle_timeout: \${idle:-0}"
    if [ -n "\$sock" ]; then
        # (The suite hands over a temporary file's path: Redis replaces whatever is
        # there, the proxy only a socket.)
        rm -f "\$sock"
        echo "unixsocket: \$sock"
        echo "unixsocketperm: 700"
    fi
    [ -n "\$password" ] && echo "client_password: \"\$password\""
    [ -n "\$max" ] && echo "max_clients: \$max"
    true
} >"\$conf.proxy.yml"
"$ROOT/target/release/redis-sidecar" -c "\$conf.proxy.yml" --metrics-listen off >>"$OUT/proxy-server.log" 2>&1 &
proxy=\$!
trap 'kill \$proxy \$redis 2>/dev/null; wait' TERM INT
wait \$proxy
kill \$redis 2>/dev/null
wait
STANDIN
chmod +x "$WORK/redis-server-behind-proxy"
: >"$OUT/proxy-server.log"

run() { # name [environment...]
    local name=$1
    shift
    log "$name run"
    (cd "$SRC" && env "$@" timeout 1200 prove -v -I lib -I t/tlib t/ >"$OUT/$name.log" 2>&1) ||
        log "$name run: exit $?"
}
run direct
run proxy REDIS_SERVER_PATH="$WORK/redis-server-behind-proxy"

python3 - "$OUT" "$ROOT/scripts" <<'PY'
import re, sys
out = sys.argv[1]
sys.path.insert(0, sys.argv[2])
from suite_results import report
def results(path):
    r, unit = {}, None
    for line in open(path, errors='replace'):
        m = re.match(r'^(t/\S+\.t) \.+', line)
        if m:
            unit = m.group(1)
            continue
        m = re.match(r'^\s*(not ok|ok) (\d+)(.*)$', line)
        if m and unit:
            skipped = '# skip' in m.group(3).lower()
            kind = 'skipped' if skipped else ('passed' if m.group(1) == 'ok' else 'failed')
            # (Ports and process ids in the descriptions vary from run to run.)
            desc = re.sub(r'\d{4,}', 'N', m.group(3).split('#')[0].rstrip())
            key = f'{unit} {m.group(2)}{desc}'
            seen = sum(k.startswith(key + ' #') or k == key for k in r)
            r[key if not seen else f'{key} #{seen + 1}'] = kind
    return r
report(results(f'{out}/direct.log'), results(f'{out}/proxy.log'))
PY
