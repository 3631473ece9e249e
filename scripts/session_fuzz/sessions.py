#!/usr/bin/env python3
"""Multi-session differential run (session 23): K client sessions per target, each
step one session's random request (or pipeline) of session-state commands
(SELECT, MULTI/EXEC/WATCH in any order, SUBSCRIBE families, CLIENT REPLY/TRACKING/
SETNAME, HELLO 2/3, RESET, QUIT, blocking pops, MOVE/COPY/SWAPDB, scripts) and
plain data commands; every session's stream of frames (replies and pushes) is
compared with the same session's on a reference Redis. Connection ids in HELLO
and TRACKINGINFO replies are masked; REDIRECT takes the target's own ids.

    python3 sessions.py FIRST_SEED END_SEED STEPS REDIS_PORT,PROXY_PORT [K]
    DUMP=log.json python3 sessions.py 13 14 150 7301,7310   # keep the failing log
    python3 shrink.py log.json 7301,7310                    # the smallest log that still differs

PREFIX=1 leaves out what a `key_prefix` database refuses by design (MOVE, SWAPDB,
COPY … DB, CLIENT TRACKING, scripts that SELECT); FLUSH=port,… are servers
flushed before each seed (the upstream of a prefixed proxy).

The two targets must be alike: a redis-server (the reference) and the proxy in
front of another redis-server of the same version, databases 0-3 on db 0-3 (see
README.md here). Steps are timed (40 ms of quiet after each, 400 ms after a
blocking command), so a difference is re-checked after 0.5 s before it counts.
Standard library only. DUMP keeps the failing seed's whole log.
"""
import os, random, select, socket, sys, time

def enc(args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out

def parse(buf, i=0):
    """returns (frame, next_index) or None"""
    nl = buf.find(b"\r\n", i)
    if nl < 0:
        return None
    t = buf[i:i+1]; line = buf[i+1:nl].decode('latin1'); j = nl + 2
    if t in b"+-:,(#_":
        return (t.decode() + line, j)
    if t in b"$=!":
        n = int(line)
        if n < 0:
            return (t.decode() + "nil", j)
        if len(buf) < j + n + 2:
            return None
        return (t.decode() + repr(buf[j:j+n])[2:-1], j + n + 2)
    if t in b"*~>%|":
        n = int(line)
        if n < 0:
            return ("*nil", j)
        cnt = n * 2 if t in b"%|" else n
        items = []
        for _ in range(cnt):
            r = parse(buf, j)
            if r is None:
                return None
            items.append(r[0]); j = r[1]
        items = norm_arr(items)
        return (t.decode() + "[" + ", ".join(items) + "]", j)
    return ("?BAD " + repr(buf[i:i+40]), len(buf))

def norm_arr(items):
    for k in range(0, len(items) - 1):
        if items[k] in ("$id", "+id", "$redirect", "$tracking-redir-broken") and items[k+1].startswith(":") and items[k+1] not in (":0", ":-1"):
            items[k+1] = "ID"
    return items

def norm_map(items):
    out = list(items)
    for k in range(0, len(out) - 1, 2):
        if out[k] in ("$id", "+id"):
            out[k+1] = "ID"
    return out

class Sess:
    def __init__(self, port):
        self.port = port
        self.connect()
    def connect(self):
        self.s = socket.create_connection(("127.0.0.1", self.port))
        self.s.setblocking(False)
        self.buf = b""
        self.frames = []
        self.closed = False
        # client id, out of band (logged in first under AUTH)
        self.s.setblocking(True)
        if AUTH:
            self.s.sendall(enc(["AUTH"] + AUTH))
            data = b""
            while not data.endswith(b"\r\n"):
                data += self.s.recv(100)
            assert data == b"+OK\r\n", data
        self.s.sendall(enc(["CLIENT", "ID"]))
        data = b""
        while not data.endswith(b"\r\n"):
            data += self.s.recv(100)
        self.id = data[1:-2].decode()
        self.s.setblocking(False)
    def send(self, b):
        if self.closed:
            self.frames.append("<SEND-ON-CLOSED>")
            return
        try:
            self.s.sendall(b)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError) as e:
            self.frames.append("<SENDERR %s>" % type(e).__name__)
    def feed(self):
        try:
            d = self.s.recv(65536)
        except BlockingIOError:
            return False
        except ConnectionResetError:
            d = b""
        if not d:
            self.closed = True
            self.frames.append("<EOF>")
            return True
        self.buf += d
        while True:
            r = parse(self.buf)
            if r is None:
                break
            self.frames.append(r[0]); self.buf = self.buf[r[1]:]
        return True

import re as _re
_UNSUB = _re.compile(r"^([*>])\[\$(unsubscribe|punsubscribe|sunsubscribe), (.*), (:\d+)\]$")

def canon(frames):
    """`frames` with the channels of each run of one UNSUBSCRIBE's confirmations
    (same kind, one after the other) in sorted order, their counts kept in
    place: Redis lists them in its dict's order, which differs between two
    redis-server processes (a per-process hash seed), so two servers differ there
    by themselves."""
    out = list(frames)
    i = 0
    while i < len(out):
        m = _UNSUB.match(out[i])
        if not m:
            i += 1
            continue
        j = i
        while j < len(out) and (_UNSUB.match(out[j]) or [None, None, None])[2] == m.group(2):
            j += 1
        run = [_UNSUB.match(x) for x in out[i:j]]
        names = sorted(r.group(3) for r in run)
        for k, r in enumerate(run):
            out[i + k] = "%s[$%s, %s, %s]" % (r.group(1), r.group(2), names[k], r.group(4))
        i = j
    return out

def frames_of(sess, j):
    return canon(sess[0][j].frames), canon(sess[1][j].frames)

def drain(all_sess, idle=0.04, maxw=2.0):
    t0 = time.time(); last = time.time()
    while time.time() - last < idle and time.time() - t0 < maxw:
        socks = [s.s for s in all_sess if not s.closed]
        if not socks:
            break
        r, _, _ = select.select(socks, [], [], idle)
        for s in all_sess:
            if s.s in r:
                if s.feed():
                    last = time.time()

# CLUSTER=1: the proxy's databases are on a Redis Cluster (with key_prefix, so
# PREFIX=1 too): every key and channel carries one hash tag, so a transaction, a
# COPY or a session's shard subscriptions never span nodes (-CROSSSLOT, -MOVED and
# one node's subscriptions per session, by design), and WAIT (which counts a
# node's replicas) is left out, as is what a transaction refuses (below).
CLUSTER = os.environ.get('CLUSTER')
KEYS = ["{t}a", "{t}b", "{t}c", "{t}x"] if CLUSTER else ["a", "b", "c", "{t}x"]
CH = ["{t}ch1", "{t}ch2"] if CLUSTER else ["ch1", "ch2"]

def gen(rng, K):
    k = rng.choice(KEYS); ch = rng.choice(CH)
    r = rng.random()
    pool = [
        (8, lambda: ["SET", k, str(rng.randint(0, 9))]),
        (6, lambda: ["GET", k]),
        (3, lambda: ["INCR", k]),
        (3, lambda: ["LPUSH", k, "x"]),
        (2, lambda: ["RPOP", k]),
        (2, lambda: ["DEL", k]),
        (2, lambda: ["BLPOP", k, "0.3"]),
        (1, lambda: ["BZPOPMIN", k, "0.2"]),
        (1, lambda: ["ZADD", k, "1", "m"]),
        (5, lambda: ["SELECT", str(rng.choice([0, 1, 2, 3, 3, 99]))]),
        (2, lambda: ["MOVE", k, str(rng.randint(0, 3))]),
        (1, lambda: ["COPY", k, rng.choice(KEYS), "DB", str(rng.randint(0, 3))] + (["REPLACE"] if rng.random() < .5 else [])),
        (1, lambda: ["SWAPDB", str(rng.randint(0, 3)), str(rng.randint(0, 3))]),
        (1, lambda: ["FLUSHDB"]),
        (2, lambda: ["DBSIZE"]),
        (4, lambda: ["MULTI"]),
        (4, lambda: ["EXEC"]),
        (2, lambda: ["DISCARD"]),
        (3, lambda: ["WATCH", k]),
        (1, lambda: ["UNWATCH"]),
        (3, lambda: ["SUBSCRIBE", ch]),
        (2, lambda: ["UNSUBSCRIBE"] + ([ch] if rng.random() < .5 else [])),
        (1, lambda: ["PSUBSCRIBE", CH[0][:-1] + "*"]),
        (1, lambda: ["PUNSUBSCRIBE"]),
        (1, lambda: ["SSUBSCRIBE", ch]),
        (1, lambda: ["SUNSUBSCRIBE"]),
        (3, lambda: ["PUBLISH", ch, "m"]),
        (1, lambda: ["SPUBLISH", ch, "m"]),
        (3, lambda: ["PING"]),
        (1, lambda: ["PING", "x"]),
        (1, lambda: ["ECHO", "e"]),
        (2, lambda: ["CLIENT", "SETNAME", "n%d" % rng.randint(0, 3)]),
        (2, lambda: ["CLIENT", "GETNAME"]),
        (2, lambda: ["CLIENT", "REPLY", rng.choice(["ON", "OFF", "SKIP"])]),
        (1, lambda: ["CLIENT", "NO-EVICT", rng.choice(["ON", "OFF"])]),
        (3, lambda: ["CLIENT", "TRACKING", "ON"] + rng.choice([[], ["BCAST"], ["OPTIN"], ["OPTOUT"], ["NOLOOP"], ["REDIRECT", "{ID%d}" % rng.randrange(K)], ["BCAST", "PREFIX", "a"]])),
        (2, lambda: ["CLIENT", "TRACKING", "OFF"]),
        (1, lambda: ["CLIENT", "CACHING", rng.choice(["YES", "NO"])]),
        (1, lambda: ["CLIENT", "TRACKINGINFO"]),
        (2, lambda: ["HELLO", rng.choice(["2", "3"])]),
        (1, lambda: ["HELLO", "3", "SETNAME", "h"]),
        (1, lambda: ["RESET"]),
        (1, lambda: ["WAIT", "0", "0"]),
        (1, lambda: ["EVAL", "return redis.call('GET',KEYS[1])", "1", k]),
        (1, lambda: ["EVAL", "redis.call('SELECT',2); return redis.call('SET',KEYS[1],'s')", "1", k]),
        (1, lambda: ["OBJECT", "ENCODING", k]),
        (1, lambda: ["READONLY"]),
        (1, lambda: ["READWRITE"]),
        (1, lambda: ["ASKING"]),
        (1, lambda: ["CLIENT", "UNPAUSE"]),
        (1, lambda: ["TYPE", k]),
    ]
    if QUIT:
        pool.append((1, lambda: ["QUIT"]))
    if ARITY:
        # Transaction commands with a wrong number of arguments (session 42).
        pool.append((1, lambda: ["EXEC", "x"]))
        pool.append((1, lambda: ["DISCARD", "x"]))
        pool.append((1, lambda: ["UNWATCH", "x"]))
        pool.append((1, lambda: ["MULTI", "x"]))
        pool.append((1, lambda: ["WATCH"]))
    if AUTH:
        pool.append((1, lambda: ["AUTH"] + AUTH))
        pool.append((1, lambda: ["AUTH"] + AUTH[:-1] + ["wrong"]))
    tot = sum(w for w, _ in pool)
    x = rng.uniform(0, tot)
    for w, f in pool:
        x -= w
        if x <= 0:
            return f()
    return ["PING"]

QUIT = True
# ARITY=1: also MULTI, EXEC, DISCARD, WATCH and UNWATCH with a wrong number of
# arguments (off by default: the seeds of earlier runs give the same scripts).
ARITY = os.environ.get('ARITY')
# AUTH=password or AUTH=user:password: every server wants it (requirepass, or the
# ACL user), every session logs in first (the proxy with `auth_passthrough: true`
# and the same password for its own connections), and a RESET, which logs the
# connection out, is followed by the same AUTH.
AUTH = [x for x in os.environ.get('AUTH', '').split(':', 1) if x]
# (Under AUTH too: a login's tracking connection stays apart while it is
# subscribed, so what it reads then is not tracked; README, a known difference.)
NOTRACKSUB = os.environ.get('NOTRACKSUB') or AUTH
LATE = os.environ.get('LATE')
PREFIX = os.environ.get('PREFIX')
FLUSH = [int(x) for x in os.environ.get('FLUSH', '').split(',') if x]
# KILL=port,…: the proxy's upstream servers; after one step in ten (a quiet moment:
# every reply in) every connection of the proxy's there is killed (CLIENT KILL
# TYPE normal and pubsub). A session without upstream state must not notice; one
# with state (MULTI/WATCH, subscribed, tracking, a blocking pop) may be told (see
# `told`), and the seed ends there.
KILL = [int(x) for x in os.environ.get('KILL', '').split(',') if x]
# STOP=port: the proxy's upstream server, frozen (SIGSTOP … SIGCONT) before one step
# in ten: for STOP_LONG seconds (default 0.8; set the proxy's command_timeout below
# it) with nothing in flight (no session may notice), or with the step sent while
# frozen (that session may be told: the timeout error), or for STOP_SHORT seconds
# (default 0.15, below the timeout) with the step in flight (no session may notice).
STOP = [int(x) for x in os.environ.get('STOP', '').split(',') if x]
STOP_LONG = float(os.environ.get('STOP_LONG', '0.8'))
STOP_SHORT = float(os.environ.get('STOP_SHORT', '0.15'))

# FAILOVER=sentinel port (SENTINEL=master name, default mymaster): the proxy's
# database is behind Sentinel (1 primary, 1 replica); after one step in ten (a
# quiet moment: every reply in) the replica is let catch up, `SENTINEL FAILOVER`
# runs, and the tool waits until the sentinels, both servers and the proxy
# (PROXY INFO databases on a connection of its own) agree on the new primary.
# No acknowledged write is lost that way, so a session without upstream state
# must not notice; one with state (MULTI/WATCH, subscribed, tracking, a
# blocking pop) may be told, as after KILL.
FAILOVER = int(os.environ.get('FAILOVER', '0'))
MASTER = os.environ.get('SENTINEL', 'mymaster')
PROXY_PORT = None

def cli(port, *args):
    import subprocess
    return subprocess.run(["redis-cli", "-p", str(port)] + list(args), capture_output=True, text=True, timeout=10).stdout

def sentinel_primary():
    return int(cli(FAILOVER, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER).split()[1])

def repl(port):
    return dict(l.split(":", 1) for l in cli(port, "INFO", "replication").split() if ":" in l)

SENTINELS = [int(x) for x in os.environ.get('SENTINELS', '').split(',') if x] or [FAILOVER]
FAILOVER_EVERY = float(os.environ.get('FAILOVER_EVERY', '0.05'))

def settled(primary, replica):
    """Every sentinel names `primary`, sees it as a plain master and `replica` as
    its replica, at one config epoch; the servers agree. (Failovers in quick
    succession otherwise meet Sentinel's own races: a sentinel with the old
    configuration turning the promoted replica back into a replica.)"""
    epochs = set()
    for p in SENTINELS:
        if "%d" % primary not in cli(p, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER).split():
            return False
        m = cli(p, "SENTINEL", "MASTER", MASTER).split()
        m = dict(zip(m[::2], m[1::2]))
        if m.get("flags") != "master" or m.get("role-reported") != "master":
            return False
        epochs.add(m.get("config-epoch"))
        r = cli(p, "SENTINEL", "REPLICAS", MASTER).split()
        r = dict(zip(r[::2], r[1::2]))
        if r.get("port") != str(replica) or r.get("flags") != "slave" or r.get("master-link-status") != "ok" or r.get("master-port") != str(primary):
            return False
    return len(epochs) == 1 and repl(primary).get("role") == "master" and repl(replica).get("master_link_status") == "up"

def failover():
    """A failover at a quiet moment, waited for to its end (see FAILOVER)."""
    old = sentinel_primary()
    deadline = time.time() + 60
    while True:
        assert time.time() < deadline, "no failover within 60 s"
        r = repl(old)
        slaves = [v for k, v in r.items() if k.startswith("slave") and "offset=" in v]
        if slaves and all("state=online" in v and "offset=%s," % r["master_repl_offset"] in v + "," for v in slaves):
            out = cli(FAILOVER, "SENTINEL", "FAILOVER", MASTER)
            if "OK" in out:
                break
        time.sleep(0.1)
    new = None
    while True:
        assert time.time() < deadline, "the failover did not end within 60 s: %s %s %s" % (
            cli(FAILOVER, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER), repl(old), cli(PROXY_PORT, "PROXY", "INFO", "databases"))
        time.sleep(0.1)
        p = sentinel_primary()
        if p == old or not settled(p, old):
            continue
        info = cli(PROXY_PORT, "PROXY", "INFO", "databases")
        if all("primary=127.0.0.1:%d" % p in l for l in info.splitlines() if "sentinel_master" in l):
            new = p
            break
    # and still so a moment later
    time.sleep(1)
    assert settled(new, old), "the sentinels changed their minds after the failover"
    return old, new

# RELOAD=live.yaml:a.yaml:b.yaml: the proxy runs from live.yaml; before one step in
# ten, a.yaml and b.yaml (the same databases on the same Redis, told apart by what
# makes a reload rebuild them: e.g. `host: 127.0.0.1` against `host: localhost`,
# pool sizes, timeouts, mux_connections) take turns being copied over it and
# `PROXY RELOAD` is sent on a connection of its own, either at a quiet moment
# (`quiet`) or right after the step is sent, its replies not yet in (`inflight`).
# Nothing of this may be seen by any session: no reply differs, nothing is told.
RELOAD = [x for x in os.environ.get('RELOAD', '').split(':') if x]
reload_turn = [0]

def reload_proxy():
    import shutil
    reload_turn[0] += 1
    shutil.copyfile(RELOAD[1 + reload_turn[0] % (len(RELOAD) - 1)], RELOAD[0] + ".tmp")
    os.replace(RELOAD[0] + ".tmp", RELOAD[0])
    out = cli(PROXY_PORT, "PROXY", "RELOAD")
    assert out.startswith("reloaded"), "PROXY RELOAD: %r" % out

def raw_conn(port):
    """A connection of the tool's own to `port`, logged in under AUTH."""
    x = socket.create_connection(("127.0.0.1", port))
    if AUTH:
        x.sendall(enc(["AUTH"] + AUTH)); x.recv(100)
    return x

def server_pid(port):
    x = raw_conn(port)
    x.sendall(enc(["INFO", "server"]))
    data = b""
    while b"process_id:" not in data or not data.endswith(b"\r\n"):
        data += x.recv(65536)
    x.close()
    return int(data.split(b"process_id:")[1].split(b"\r\n")[0])

def freeze(pids, on):
    import signal
    for pid in pids:
        os.kill(pid, signal.SIGSTOP if on else signal.SIGCONT)

def told(frame):
    """A proxy frame that tells a session its upstream state was lost."""
    return (frame == "<EOF>" or frame.startswith("-UPSTREAM") or frame.startswith("-EXECABORT")
            or frame in ("*-1", "*nil", "_", "+QUEUED"))

def kill_upstream(ports):
    for port in ports:
        x = raw_conn(port)
        for t in ("normal", "pubsub"):
            x.sendall(enc(["CLIENT", "KILL", "TYPE", t])); x.recv(100)
        x.close()

def connect_all(targets, K):
    """K sessions per target, every target (and FLUSH's servers) flushed."""
    sess = [[Sess(p) for _ in range(K)] for p in targets]
    for row in sess:
        row[0].send(enc(["FLUSHALL"]))
    for port in FLUSH + ([sentinel_primary()] if FAILOVER else []):
        x = raw_conn(port); x.sendall(enc(["FLUSHALL"])); x.recv(100); x.close()
    drain([s for row in sess for s in row])
    for row in sess:
        row[0].frames.clear()
    return sess

def send_step(sess, i, cmds):
    """one session's request(s) to every target; REDIRECT ids are each target's."""
    # A session closed on every target (QUIT) is opened again; one closed on one
    # side only (the proxy closed a subscriber whose connection was killed, its
    # EOF read while another session was opened again) stays closed, so that the
    # EOF is compared, not lost.
    again = all(row[i].closed for row in sess)
    for row in sess:
        s = row[i]
        if again:
            s.connect()
        data = b""
        for c in cmds:
            c2 = [row[int(a[3:-1])].id if a.startswith("{ID") else a for a in c]
            data += enc(c2)
        s.send(data)

def frozen_step(sess, i, cmds, mode, pids):
    """send_step, with the proxy's upstream frozen first when `mode` says so (STOP)."""
    if mode is None:
        send_step(sess, i, cmds)
        return
    if mode in ("quiet", "inflight"):
        if mode == "quiet":
            reload_proxy()
        send_step(sess, i, cmds)
        if mode == "inflight":
            reload_proxy()
        return
    allS = [s for row in sess for s in row]
    freeze(pids, True)
    try:
        if mode == "idle":
            time.sleep(STOP_LONG)
        else:
            send_step(sess, i, cmds)
            drain(allS, idle=STOP_LONG if mode == "long" else STOP_SHORT, maxw=STOP_LONG + 1)
    finally:
        freeze(pids, False)
    if mode == "idle":
        send_step(sess, i, cmds)

def replay(log, K, targets, quiet=True):
    """replays a dumped log; returns the first differing step or None"""
    sess = connect_all(targets, K)
    pids = [server_pid(p) for p in STOP]
    res = None
    mode = None
    for step, (i, cmds) in enumerate(log):
        if i in (-2, -4):
            mode = cmds
            continue
        if i == -3:
            failover()
            continue
        if i == -5:
            recover(sess, cmds, targets)
            continue
        if i < 0:
            kill_upstream(KILL)
            continue
        frozen_step(sess, i, cmds, mode, pids)
        mode = None
        allS = [s for row in sess for s in row]
        blocking = any(c[0] in ("BLPOP", "BZPOPMIN") for c in cmds)
        drain(allS, idle=0.4 if blocking else 0.04)
        bad = [j for j in range(K) if frames_of(sess, j)[0] != frames_of(sess, j)[1]]
        if bad:
            drain(allS, idle=0.5, maxw=3)
            bad = [j for j in range(K) if frames_of(sess, j)[0] != frames_of(sess, j)[1]]
        if bad:
            res = (step, bad[0]) + frames_of(sess, bad[0])
            break
    for row in sess:
        for s in row:
            try: s.s.close()
            except Exception: pass
    return res

def show(log, a, b, k, j=None):
    """The last steps (of session `j` and the kills, if given), and where the two
    sessions' frames part."""
    faults = {
        -1: "every upstream connection killed",
        -2: "upstream frozen (%s)",
        -3: "failover %s",
        -4: "configuration reloaded (%s)",
        -5: "sessions %s opened again, keys flushed",
    }
    mine = [x for x in log if j is None or x[0] == j or x[0] in faults]
    for (ii, c) in mine[-12:]:
        if ii in faults:
            text = faults[ii]
            print("   -- " + (text % (c,) if "%s" in text else text))
            continue
        print("   s%d: %s" % (ii, " | ".join(" ".join(x) for x in c)))
    if os.environ.get("FULL"):
        print("   all redis:", a)
        print("   all proxy:", b)
    print("   redis: ", a[max(0, k-3):k+4])
    print("   proxy: ", b[max(0, k-3):k+4])

# CONTINUE=1: a session told of a lost state does not end the seed. The sessions
# that held upstream state at the fault (and the told one) are closed and opened
# again on both targets, and both targets' keys flushed, so the two sides agree
# again and the seed goes on to its last step, through more faults.
CONTINUE = os.environ.get('CONTINUE')

def recover(sess, R, targets):
    for row in sess:
        for j in R:
            try: row[j].s.close()
            except Exception: pass
            row[j].connect()
    # (Each server once: a second FLUSHALL is a second invalidation for trackers.)
    behind = FLUSH or ([sentinel_primary()] if FAILOVER else [targets[1]])
    for port in [targets[0]] + behind:
        cli(port, "FLUSHALL")
    allS = [s for row in sess for s in row]
    drain(allS, idle=0.1)
    for row in sess:
        for j in R:
            row[j].frames.clear()

told_count = [0]

def stateful(model):
    """The sessions that hold state on an upstream connection of their own (as far
    as the model knows, a superset): only they may be told of a lost connection."""
    return [j for j, st in enumerate(model)
            if any(st.get(k) for k in ("multi", "watch", "sub", "track", "target"))]

def run(seed, steps, K, targets):
    rng = random.Random(seed)
    sess = connect_all(targets, K)
    log = []
    model = [{"multi": False, "watch": False, "off": False} for _ in range(K)]
    krng = random.Random(seed * 7 + 1)
    frng = random.Random(seed * 11 + 3)
    pids = [server_pid(p) for p in STOP]
    killed_at = None
    # who may be told: every session after a kill; after a freeze, only a session
    # whose step was in flight through a long one (STOP mode "long").
    may_tell = set()
    for step in range(steps):
        i = rng.randrange(K)
        n = 1 if rng.random() < .8 else rng.randint(2, 4)
        cmds = []
        st = model[i]
        # Whether a reply of this step may be silenced (replies off, or a SKIP
        # before it or in it).
        silenced = st["off"] or st.get("skip")
        while len(cmds) < n:
            c = gen(rng, K)
            u = [x.upper() for x in c]
            if st["multi"] and (u[0] in ("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "HELLO") or u[:2] in (["CLIENT", "TRACKING"], ["CLIENT", "REPLY"])):
                continue
            # (Under WATCH, since session 37, as on Redis; on a cluster still refused.)
            if CLUSTER and st["watch"] and (u[:2] == ["CLIENT", "TRACKING"] or u[0] in ("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "HELLO")):
                continue
            # Refused by design (README): on a cluster, HELLO 2 while subscribed;
            # with key_prefix databases, a subscriber's MULTI or blocking pop after
            # a SELECT of another database than its subscriptions' (WATCH too).
            if CLUSTER and st.get("sub") and u[:2] == ["HELLO", "2"]:
                continue
            if PREFIX and st.get("sub") and st.get("db", 0) != st.get("subdb", 0) and u[0] in ("MULTI", "WATCH", "BLPOP", "BZPOPMIN"):
                continue
            if PREFIX and ("SELECT" in c[1] if u[0] == "EVAL" else False):
                continue
            # Refused by design with an `auth_passthrough` login (README): AUTH
            # inside MULTI, HELLO while subscribed (its login connection stays
            # apart), SELECT while subscribed (the subscriber connection does not
            # follow it), cross-database commands in a subscriber's MULTI, and
            # while subscribed and tracking (the tracking stays on the login's
            # connection, parked) AUTH and the tracking commands.
            if AUTH and ((st["multi"] and u[0] == "AUTH") or (st.get("sub") and u[0] == "HELLO")
                         or (st.get("sub") and u[0] == "SELECT")
                         or (st.get("sub") and st["multi"] and u[0] in ("MOVE", "COPY", "SWAPDB"))
                         or (st.get("sub") and st.get("track") and (u[0] == "AUTH" or u[:2] in (
                             ["CLIENT", "TRACKING"], ["CLIENT", "CACHING"], ["CLIENT", "TRACKINGINFO"])))):
                continue
            # Redis 7.0 under CLIENT REPLY OFF (docs/compatibility.md): QUIT leaves
            # the connection open; an UNSUBSCRIBE run by EXEC is pushed anyway.
            if (st["off"] or st.get("skip")) and (u[0] == "QUIT" or (st["multi"] and "SUBSCRIBE" in u[0])):
                continue
            st["skip"] = u[:3] == ["CLIENT", "REPLY", "SKIP"]
            if (CLUSTER or FAILOVER) and u[0] == "WAIT":
                continue
            # By design on a cluster, inside MULTI: what runs on every node is
            # refused, and PUBLISH counts the transaction's node's subscribers.
            if CLUSTER and st["multi"] and u[0] in ("FLUSHDB", "DBSIZE", "CLIENT", "PUBLISH", "SPUBLISH"):
                continue
            if PREFIX and (u[0] in ("MOVE", "SWAPDB", "COPY") or u[:2] in (["CLIENT", "TRACKING"], ["CLIENT", "CACHING"], ["CLIENT", "TRACKINGINFO"])):
                continue
            # By design on a key_prefix database while subscribed (RESP3: the
            # subscriber connection's replies are not rewritten): what names keys
            # in its reply or runs over SCAN is refused.
            if PREFIX and st.get("sub") and u[0] in ("DBSIZE", "FLUSHDB", "RANDOMKEY", "KEYS", "SCAN", "BLPOP", "BZPOPMIN"):
                continue
            # NOTRACKSUB=1: one session never both tracks and subscribes (the
            # known differences of a RESP3 subscriber that tracks, see
            # docs/compatibility.md, left out so that other ones stand out).
            subscribes = "SUBSCRIBE" in u[0] and not u[0].startswith(("UN", "PUN", "SUN"))
            if NOTRACKSUB and st.get("sub") and (u[:2] in (["CLIENT", "TRACKING"], ["CLIENT", "CACHING"], ["CLIENT", "TRACKINGINFO"])):
                continue
            if NOTRACKSUB and st.get("track") and subscribes:
                continue
            # With a login, a RESP3 session's SUBSCRIBE under WATCH is refused by
            # design (its subscriber connection would not be the watching one;
            # left out in RESP2 too, the tool does not follow the protocol).
            if AUTH and st["watch"] and subscribes and not st.get("sub"):
                continue
            # Upstream state beyond MULTI/WATCH, kept loosely (a superset): once
            # subscribed, tracking or named as a REDIRECT target, until RESET/QUIT.
            if subscribes and not st.get("sub"): st["subdb"] = st.get("db", 0)
            if subscribes: st["sub"] = True
            if u[0] == "SELECT" and not st["multi"] and c[1] in ("0", "1", "2", "3"): st["db"] = int(c[1])
            if u[:3] == ["CLIENT", "TRACKING", "ON"]:
                st["track"] = True
                if "REDIRECT" in u:
                    model[int(c[-1][3:-1])]["target"] = True
            if u[0] in ("RESET", "QUIT"): st["sub"] = False; st["track"] = False; st["target"] = False
            # (By arity, as Redis checks it: EXEC with arguments ends the
            # transaction and the watch; the others so refused do nothing.)
            bare = len(u) == 1
            if u[0] == "MULTI" and bare: st["multi"] = True
            if u[0] == "EXEC" and not bare: st["multi"] = False; st["watch"] = False
            if u[0] in ("EXEC", "DISCARD") and bare and st["multi"]: st["multi"] = False; st["watch"] = False
            if u[0] in ("RESET", "QUIT"): st["multi"] = False; st["watch"] = False; st["off"] = False; st["db"] = 0
            # (A RESP2 subscriber's CLIENT REPLY ON is refused, silently while
            # replies are off: once subscribed, off stays off for the model.)
            if u[:2] == ["CLIENT", "REPLY"] and u[2] != "SKIP": st["off"] = u[2] == "OFF" or (st["off"] and st.get("sub"))
            if u[0] == "WATCH" and not bare: st["watch"] = True
            if u[0] == "UNWATCH" and bare and not st["multi"]: st["watch"] = False
            cmds.append(c)
            if AUTH and u[0] == "RESET":
                cmds.append(["AUTH"] + AUTH)
        allS = [s for row in sess for s in row]
        mode = None
        if STOP and frng.random() < 0.1:
            mode = frng.choice(["idle", "long", "short"])
            log.append((-2, mode))
            killed_at = step
            if mode == "long":
                may_tell.add(i)
        if RELOAD and frng.random() < 0.1:
            mode = frng.choice(["quiet", "inflight"])
            log.append((-4, mode))
            killed_at = step
        log.append((i, cmds))
        frozen_step(sess, i, cmds, mode, pids)
        blocking = any(c[0] in ("BLPOP", "BZPOPMIN") for c in cmds)
        drain(allS, idle=0.4 if blocking else 0.04)
        # As after a kill: a session with state whose step went through a long
        # freeze with its replies off (or a SKIP: a CLIENT TRACKING ON whose
        # tracking connection could not be opened, its error skipped) can never be told (its lost transaction's
        # EXEC answers nothing, and runs nothing: a PUBLISH in it reaches no one),
        # so it is opened again at once.
        silenced = silenced or model[i]["off"] or any(
            [x.upper() for x in c[:2]] == ["CLIENT", "REPLY"] and c[2].upper() in ("OFF", "SKIP") for c in cmds if len(c) > 2)
        if CONTINUE and mode == "long" and i in stateful(model) and silenced:
            recover(sess, [i], targets)
            log.append((-5, [i]))
            model[i] = {"multi": False, "watch": False, "off": False}
            may_tell.discard(i)
        def differs():
            """The first differing session; one told of a lost state first (a
            session's lost transaction may change what Redis sends another)."""
            bad = [j for j in range(K) if frames_of(sess, j)[0] != frames_of(sess, j)[1]]
            for j in bad:
                a, b = frames_of(sess, j)
                k = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
                if killed_at is not None and k < len(b) and told(b[k]):
                    return j
            return bad[0] if bad else None
        j = differs()
        if j is not None:
            drain(allS, idle=0.5, maxw=3)
            j = differs()
        if j is not None and killed_at is not None:
            a, b = frames_of(sess, j)
            k = 0
            while k < min(len(a), len(b)) and a[k] == b[k]:
                k += 1
            if k < len(b) and told(b[k]) and j not in may_tell:
                print("seed %d step %d: session %d told of a lost state (%s) without cause (no step in flight through a long freeze, or no upstream state at a kill or failover)" % (seed, step, j, b[k]))
                show(log, a, b, k, j)
                return False
            # A PUBLISH right after a fault counts fewer receivers when a session
            # that was subscribed lost its subscriber connection (it is told at
            # its next step, or was opened again): that session's lost state, seen
            # by the publisher. Treated as the subscriber's telling.
            fewer = (j == i and k < len(a) and k < len(b) and a[k][:1] == b[k][:1] == ":"
                     and int(b[k][1:]) < int(a[k][1:])
                     and any(c[0].upper() in ("PUBLISH", "SPUBLISH") for c in cmds)
                     and any(model[r].get("sub") for r in may_tell))
            if fewer:
                print("seed %d step %d: session %d's PUBLISH counted %s receivers, Redis %s, after the fault at step %d (a subscriber's connection lost)" % (seed, step, j, b[k][1:], a[k][1:], killed_at))
            if k < len(b) and (told(b[k]) or fewer):
                if not fewer:
                    print("seed %d step %d: session %d told of a lost state (%s) after the fault at step %d" % (seed, step, j, b[k], killed_at))
                if os.environ.get('VERBOSE'):
                    show(log, a, b, k, j)
                if not CONTINUE:
                    return True
                R = sorted(may_tell | {j})
                recover(sess, R, targets)
                log.append((-5, R))
                for r in R:
                    model[r] = {"multi": False, "watch": False, "off": False}
                may_tell = set()
                told_count[0] += 1
                j = differs()
                if j is None:
                    continue
            print("seed %d step %d: KILLED (or frozen) at step %d" % (seed, step, killed_at))
        if j is not None:
            print("seed %d step %d: session %d differs" % (seed, step, j))
            if os.environ.get('DUMP'):
                import json; json.dump(log, open(os.environ['DUMP'], 'w'))
            a, b = frames_of(sess, j)
            k = 0
            while k < min(len(a), len(b)) and a[k] == b[k]:
                k += 1
            show(log, a, b, k, j if os.environ.get("FULL") else None)
            if LATE:
                drain(allS, idle=6, maxw=8)
                print("   later proxy: ", sess[1][j].frames[max(0, k-3):k+4])
            return False
        if KILL and krng.random() < 0.1:
            kill_upstream(KILL)
            killed_at = step
            may_tell.update(stateful(model))
            log.append((-1, "KILL"))
            # A session with state and its replies off (CLIENT REPLY OFF) can
            # never be told (a lost transaction's EXEC answers nothing), yet the
            # two sides' keys part there: opened again at once, as a told one.
            mute = [r for r in stateful(model) if model[r]["off"]]
            if CONTINUE and mute:
                recover(sess, mute, targets)
                log.append((-5, mute))
                for r in mute:
                    model[r] = {"multi": False, "watch": False, "off": False}
                    may_tell.discard(r)
        if FAILOVER and krng.random() < FAILOVER_EVERY:
            old, new = failover()
            killed_at = step
            may_tell.update(stateful(model))
            log.append((-3, "%d -> %d" % (old, new)))
    for row in sess:
        for s in row:
            try:
                s.s.close()
            except Exception:
                pass
    return True

if __name__ == "__main__":
    # (A TERM during a freeze still runs frozen_step's `finally`: SIGCONT.)
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    a = int(sys.argv[1]); b = int(sys.argv[2]); steps = int(sys.argv[3])
    ports = [int(x) for x in sys.argv[4].split(",")]
    PROXY_PORT = ports[1]
    K = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    bad = 0
    for seed in range(a, b):
        ok = run(seed, steps, K, ports)
        if not ok:
            bad += 1
        else:
            print("seed %d ok" % seed, flush=True)
    print("bad", bad, "told", told_count[0])
