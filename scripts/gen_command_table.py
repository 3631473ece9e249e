#!/usr/bin/env python3
"""Generate src/command/table.rs from a real Redis server's own command metadata.

Usage:
    python3 scripts/gen_command_table.py                 # throwaway redis-server
    python3 scripts/gen_command_table.py --port 6379     # an already running server
    python3 scripts/gen_command_table.py --check         # exit 1 if the file would change

By default a throwaway `redis-server` (from PATH, or --redis-server) is started on a free
loopback port with persistence off, asked for `COMMAND` and `INFO server`, and stopped.
The result is written to src/command/table.rs (next to this script's repository root)
and formatted with `rustfmt` if it is installed.

Python 3 standard library only. The RESP2 client below is deliberately tiny.

What is carried per command (see the generated file's documentation):
  * name (lower-case, as Redis reports it; subcommands as `container|sub`),
  * arity, the legacy key triple (first key, last key, step),
  * the key specs (Redis 7: begin_search index/keyword, find_keys range/keynum, their
    flags), from which src/command/keys.rs locates every key argument,
  * flags: Redis command flags, a few ACL categories, and proxy overrides (below).

Proxy overrides (kept small and explicit; everything else comes from Redis):
  * WAIT / WAITAOF block the connection until replicas acknowledge, but Redis 7.0 does not
    flag them `blocking`: they get BLOCKING.
  * XREAD / XREADGROUP are flagged `blocking` by Redis, but they block only when given a
    `BLOCK` argument. They get BLOCK_ARG instead of BLOCKING; the caller must check the
    arguments.
  * EVAL, EVALSHA, FCALL, PFCOUNT, PUBLISH, SPUBLISH carry Redis's `may_replicate` flag
    (src/commands/*.json), which Redis 7.0's COMMAND does not report: they get
    MAY_REPLICATE (a CLIENT PAUSE ... WRITE holds them back).
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT = os.path.join(REPO_ROOT, "src", "command", "table.rs")

# ---------------------------------------------------------------------------------------
# Flag bits (order = bit number). (constant, documentation)
# ---------------------------------------------------------------------------------------

BITS = [
    ("READONLY", "Redis flag `readonly`: the command only reads data. The only flag that makes a command retry-safe."),
    ("WRITE", "Redis flag `write`: the command may modify data."),
    ("DENYOOM", "Redis flag `denyoom`: refused when the server is over `maxmemory`."),
    ("ADMIN", "Redis flag `admin`: an administrative command (CONFIG SET, DEBUG, SHUTDOWN …)."),
    ("PUBSUB", "Redis flag `pubsub`: a pub/sub command (SUBSCRIBE, PUBLISH, PUBSUB …)."),
    ("NOSCRIPT", "Redis flag `noscript`: not allowed inside scripts."),
    (
        "BLOCKING",
        "The command may block the connection: Redis flag `blocking` or ACL category "
        "`@blocking`, plus WAIT/WAITAOF (proxy override). XREAD/XREADGROUP have "
        "[`BLOCK_ARG`] instead.",
    ),
    ("LOADING", "Redis flag `loading`: allowed while the server loads its dataset."),
    ("STALE", "Redis flag `stale`: allowed on a replica with stale data."),
    ("SKIP_MONITOR", "Redis flag `skip_monitor`: not shown to MONITOR."),
    ("SKIP_SLOWLOG", "Redis flag `skip_slowlog`: not recorded in the slow log."),
    ("FAST", "Redis flag `fast`: O(1) or O(log N); never delays the server."),
    ("NO_AUTH", "Redis flag `no_auth`: allowed before authentication."),
    (
        "MAY_REPLICATE",
        "Redis flag `may_replicate`: may be propagated to replicas (e.g. PUBLISH; set by the "
        "proxy's overrides, as Redis 7.0's COMMAND does not report it).",
    ),
    ("NO_MANDATORY_KEYS", "Redis flag `no_mandatory_keys`: the key arguments may be absent."),
    ("NO_MULTI", "Redis flag `no_multi`: not allowed inside MULTI."),
    (
        "MOVABLE_KEYS",
        "Redis flag `movablekeys`: key positions depend on the arguments; the key triple "
        "(`first_key`, `last_key`, `step`) is then incomplete or `0, 0, 0`.",
    ),
    ("ALLOW_BUSY", "Redis flag `allow_busy`: allowed while a script or function is busy."),
    (
        "TRANSACTION",
        "ACL category `@transaction`: MULTI, EXEC, DISCARD, WATCH, UNWATCH.",
    ),
    (
        "CONTAINER",
        "A container command with subcommands (CONFIG, CLIENT, OBJECT …); its own entry "
        "carries no flags of interest, use [`lookup_sub`].",
    ),
    ("SUBCOMMAND", "A subcommand entry (`container|sub`)."),
    (
        "BLOCK_ARG",
        "Blocks only when given the `BLOCK` argument (XREAD, XREADGROUP; proxy override of "
        "Redis's `blocking` flag). The caller must check the arguments.",
    ),
    ("CAT_READ", "ACL category `@read`."),
    ("CAT_WRITE", "ACL category `@write`."),
    ("CAT_KEYSPACE", "ACL category `@keyspace`."),
    ("CAT_DANGEROUS", "ACL category `@dangerous`."),
    ("CAT_SCRIPTING", "ACL category `@scripting`."),
    ("CAT_CONNECTION", "ACL category `@connection`."),
    ("CAT_PUBSUB", "ACL category `@pubsub`."),
    ("CAT_ADMIN", "ACL category `@admin`."),
    ("CAT_SLOW", "ACL category `@slow`."),
]
assert len(BITS) <= 32, "flags must fit in a u32"
BIT = {name: 1 << i for i, (name, _) in enumerate(BITS)}

# Redis command flag -> bit. Flags not listed here are ignored (reported on stderr).
FLAG_MAP = {
    "readonly": "READONLY",
    "write": "WRITE",
    "denyoom": "DENYOOM",
    "admin": "ADMIN",
    "pubsub": "PUBSUB",
    "noscript": "NOSCRIPT",
    "blocking": "BLOCKING",
    "loading": "LOADING",
    "ok_loading": "LOADING",  # Redis 6 spelling
    "stale": "STALE",
    "ok_stale": "STALE",  # Redis 6 spelling
    "skip_monitor": "SKIP_MONITOR",
    "skip_slowlog": "SKIP_SLOWLOG",
    "fast": "FAST",
    "no_auth": "NO_AUTH",
    "may_replicate": "MAY_REPLICATE",
    "no_mandatory_keys": "NO_MANDATORY_KEYS",
    "no_multi": "NO_MULTI",
    "movablekeys": "MOVABLE_KEYS",
    "allow_busy": "ALLOW_BUSY",
}

# ACL category -> bit.
CATEGORY_MAP = {
    "@blocking": "BLOCKING",
    "@transaction": "TRANSACTION",
    "@read": "CAT_READ",
    "@write": "CAT_WRITE",
    "@keyspace": "CAT_KEYSPACE",
    "@dangerous": "CAT_DANGEROUS",
    "@scripting": "CAT_SCRIPTING",
    "@connection": "CAT_CONNECTION",
    "@pubsub": "CAT_PUBSUB",
    "@admin": "CAT_ADMIN",
    "@slow": "CAT_SLOW",
}

# Proxy overrides: name -> (bits to add, bits to remove). See the module docstring.
OVERRIDES = {
    "wait": (["BLOCKING"], []),
    "waitaof": (["BLOCKING"], []),
    "xread": (["BLOCK_ARG"], ["BLOCKING"]),
    "xreadgroup": (["BLOCK_ARG"], ["BLOCKING"]),
    "eval": (["MAY_REPLICATE"], []),
    "evalsha": (["MAY_REPLICATE"], []),
    "fcall": (["MAY_REPLICATE"], []),
    "pfcount": (["MAY_REPLICATE"], []),
    "publish": (["MAY_REPLICATE"], []),
    "spublish": (["MAY_REPLICATE"], []),
}

# ---------------------------------------------------------------------------------------
# A tiny RESP2 client
# ---------------------------------------------------------------------------------------


class RedisError(Exception):
    pass


class Status(str):
    """A RESP simple string (`+OK`), distinguished from bulk strings."""


def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def read_reply(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed or bad frame: %r" % line)
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return Status(rest.decode())
    if kind == b"-":
        raise RedisError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        if len(data) != n + 2:
            raise ConnectionError("short bulk string")
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [read_reply(f) for _ in range(n)]
    raise ConnectionError("unexpected RESP2 type byte %r" % kind)


class Client:
    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def call(self, *args):
        self.sock.sendall(encode(*args))
        return read_reply(self.file)

    def close(self):
        try:
            self.file.close()
        finally:
            self.sock.close()


def text(value):
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


# ---------------------------------------------------------------------------------------
# Throwaway server
# ---------------------------------------------------------------------------------------


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary, attempts=5):
    """Starts redis-server on a free loopback port; returns (process, port, tempdir)."""
    last = ""
    for _ in range(attempts):
        port = free_port()
        tmp = tempfile.mkdtemp(prefix="gen-command-table-")
        proc = subprocess.Popen(
            [
                binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", tmp,
                "--logfile", os.path.join(tmp, "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                c = Client("127.0.0.1", port, timeout=1.0)
                try:
                    if c.call("PING") == "PONG":
                        return proc, port, tmp
                finally:
                    c.close()
            except (OSError, ConnectionError, RedisError):
                pass
            time.sleep(0.05)
        stop_server(proc, tmp)
        last = "redis-server on port %d did not start" % port
    raise SystemExit("gen_command_table: " + last)


def stop_server(proc, tmp):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# COMMAND -> entries
# ---------------------------------------------------------------------------------------

IGNORED = set()


# Key spec flags (order = bit number), as Redis names them.
KEY_SPEC_FLAGS = [
    ("RO", "read only"),
    ("RW", "read and written"),
    ("OW", "overwritten"),
    ("RM", "deleted"),
    ("ACCESS", "the value is returned, copied or used"),
    ("UPDATE", "the value is updated"),
    ("INSERT", "data is added"),
    ("DELETE", "data is removed"),
    ("NOT_KEY", "not a key: a shard channel (SPUBLISH, SSUBSCRIBE); it is hashed like a key but names no key"),
    ("INCOMPLETE", "the spec may miss keys (SORT's STORE, MIGRATE's KEYS): the arguments must be parsed"),
    ("VARIABLE_FLAGS", "the spec's flags depend on the arguments (the positions do not)"),
]
KEY_SPEC_BIT = {name.lower(): 1 << i for i, (name, _) in enumerate(KEY_SPEC_FLAGS)}


def flat_map(raw):
    """A RESP2 flattened map ([k1, v1, k2, v2 …]) as a dict with text keys."""
    return {text(raw[i]).lower(): raw[i + 1] for i in range(0, len(raw) - 1, 2)}


def parse_key_spec(raw):
    """One key spec of a Redis 7 COMMAND entry."""
    spec = flat_map(raw)
    flags = 0
    for f in spec.get("flags", []):
        name = text(f).lower()
        if name in KEY_SPEC_BIT:
            flags |= KEY_SPEC_BIT[name]
        else:
            IGNORED.add("key spec flag " + name)
    begin = flat_map(spec.get("begin_search", []))
    bspec = flat_map(begin.get("spec", []) or [])
    btype = text(begin.get("type", b"unknown")).lower()
    if btype == "index":
        begin_out = ("index", int(bspec["index"]))
    elif btype == "keyword":
        begin_out = ("keyword", text(bspec["keyword"]), int(bspec["startfrom"]))
    else:
        begin_out = ("unknown",)
    find = flat_map(spec.get("find_keys", []))
    fspec = flat_map(find.get("spec", []) or [])
    ftype = text(find.get("type", b"unknown")).lower()
    if ftype == "range":
        find_out = ("range", int(fspec["lastkey"]), int(fspec["keystep"]), int(fspec["limit"]))
    elif ftype == "keynum":
        find_out = ("keynum", int(fspec["keynumidx"]), int(fspec["firstkey"]), int(fspec["keystep"]))
    else:
        find_out = ("unknown",)
    return {"flags": flags, "begin": begin_out, "find": find_out}


def key_spec_flag_expr(bits):
    names = ["KS_" + name for i, (name, _) in enumerate(KEY_SPEC_FLAGS) if bits & (1 << i)]
    return " | ".join(names) if names else "0"


def key_specs_expr(specs):
    out = []
    for k in specs:
        b = k["begin"]
        if b[0] == "index":
            begin = "Begin::Index(%d)" % b[1]
        elif b[0] == "keyword":
            begin = "Begin::Keyword { keyword: %s, start_from: %d }" % (rust_bytes(b[1]), b[2])
        else:
            begin = "Begin::Unknown"
        f = k["find"]
        if f[0] == "range":
            find = "Find::Range { last_key: %d, step: %d, limit: %d }" % f[1:]
        elif f[0] == "keynum":
            find = "Find::KeyNum { keynum_idx: %d, first_key: %d, step: %d }" % f[1:]
        else:
            find = "Find::Unknown"
        out.append("KeySpec { begin: %s, find: %s, flags: %s }" % (begin, find, key_spec_flag_expr(k["flags"])))
    return "&[%s]" % ", ".join(out)


def parse_entry(raw, is_sub):
    """One COMMAND entry (Redis 6: 7 fields; Redis 7: 10 fields)."""
    name = text(raw[0]).lower()
    arity = int(raw[1])
    flags = [text(f).lower() for f in raw[2]]
    first, last, step = int(raw[3]), int(raw[4]), int(raw[5])
    categories = [text(c).lower() for c in raw[6]] if len(raw) > 6 else []
    subs = raw[9] if len(raw) > 9 and raw[9] else []
    specs = [parse_key_spec(k) for k in raw[8]] if len(raw) > 8 and raw[8] else []

    bits = 0
    for f in flags:
        if f in FLAG_MAP:
            bits |= BIT[FLAG_MAP[f]]
        else:
            IGNORED.add("flag " + f)
    for c in categories:
        if c in CATEGORY_MAP:
            bits |= BIT[CATEGORY_MAP[c]]
    add, remove = OVERRIDES.get(name, ([], []))
    for b in add:
        bits |= BIT[b]
    for b in remove:
        bits &= ~BIT[b]
    if subs:
        bits |= BIT["CONTAINER"]
    if is_sub:
        bits |= BIT["SUBCOMMAND"]

    entry = {
        "name": name,
        "arity": arity,
        "flags": bits,
        "first": first,
        "last": last,
        "step": step,
        "specs": specs,
    }
    children = [parse_entry(s, True)[0] for s in subs]
    return entry, children


def collect(client):
    info = text(client.call("INFO", "server"))
    version = "unknown"
    for line in info.splitlines():
        if line.startswith("redis_version:"):
            version = line.split(":", 1)[1].strip()
    reply = client.call("COMMAND")
    top, subs = [], []
    for raw in reply:
        entry, children = parse_entry(raw, False)
        top.append(entry)
        subs.extend(children)
    top.sort(key=lambda e: e["name"])
    subs.sort(key=lambda e: e["name"])
    return version, top, subs


# ---------------------------------------------------------------------------------------
# Rust output
# ---------------------------------------------------------------------------------------


def rust_bytes(s):
    for ch in s:
        if not (32 <= ord(ch) < 127) or ch in '"\\':
            raise SystemExit("gen_command_table: unexpected character in name %r" % s)
    return 'b"%s"' % s


def flag_expr(bits):
    names = [name for i, (name, _) in enumerate(BITS) if bits & (1 << i)]
    return " | ".join(names) if names else "0"


def render(version, top, subs):
    entries = top + subs
    index = {e["name"]: i for i, e in enumerate(entries)}
    w = []
    p = w.append
    p("// Generated by scripts/gen_command_table.py from Redis %s; do not edit." % version)
    p("// Regenerate: python3 scripts/gen_command_table.py [--port N]")
    p("")
    p("//! The Redis command table: flags, arity and key positions of every command Redis")
    p("//! %s reports in `COMMAND`, its subcommands included." % version)
    p("//!")
    p("//! `COMMANDS[..TOP_LEVEL]` (see [`COMMANDS`], [`TOP_LEVEL`]) are the top-level commands,")
    p("//! sorted by name; the rest are subcommands of container commands (`config|get`,")
    p("//! `client|list` …), sorted by their full name.")
    p("//!")
    p("//! Retry safety: a command is retry-safe only if Redis flags it [`READONLY`]. A command")
    p("//! the table does not know (a newer Redis, a module) must be treated as a write. For a")
    p("//! container command (CONFIG, CLIENT, OBJECT, SCRIPT, XINFO, MEMORY, FUNCTION …) use")
    p("//! [`lookup_sub`] / [`lookup_args`]: the container's own entry carries no")
    p("//! read-only flag, so an unknown subcommand is treated as a write too.")
    p("//!")
    p("//! Blocking: [`BLOCKING`] means the command may block the connection (BLPOP, BLMOVE,")
    p("//! BZPOPMIN, WAIT …). XREAD and XREADGROUP block only with a `BLOCK` argument; they are")
    p("//! flagged [`BLOCK_ARG`] instead, and the caller must check the arguments.")
    p("//!")
    p("//! Key positions are Redis's legacy triple (`first_key`, `last_key`, `step`), 1-based")
    p("//! argument indexes with `last_key` negative when counted from the end (`-1` = the last")
    p("//! argument). `0, 0, 0` means no fixed key positions; commands flagged")
    p("//! [`MOVABLE_KEYS`] need their arguments parsed to find the keys.")
    p("//!")
    p("//! Key specs ([`CommandInfo::keys`], Redis 7) say where every key argument is:")
    p("//! where the search begins ([`Begin`]: a fixed index, or after a keyword) and how")
    p("//! the keys follow ([`Find`]: a range with a step, or a count argument).")
    p("//! `command::keys` applies them to a request's arguments.")
    p("")
    for i, (name, doc) in enumerate(BITS):
        for line in textwrap.wrap(doc, 88):
            p("/// %s" % line)
        p("pub const %s: u32 = 1 << %d;" % (name, i))
    p("")
    for i, (name, doc) in enumerate(KEY_SPEC_FLAGS):
        for line in textwrap.wrap("Key spec flag `%s`: %s." % (name, doc), 88):
            p("/// %s" % line)
        p("pub const KS_%s: u16 = 1 << %d;" % (name, i))
    p("")
    p("/// Where a key spec's search for its first key begins.")
    p("#[derive(Debug, Clone, Copy, PartialEq, Eq)]")
    p("pub enum Begin {")
    p("    /// The first key is the argument at this index (the command name is 0).")
    p("    Index(i16),")
    p("    /// The first key follows the first argument equal to `keyword` (ASCII")
    p("    /// case-insensitive), searched from index `start_from` (negative: from the end,")
    p("    /// backwards). No keyword: the spec finds no key.")
    p("    Keyword {")
    p("        /// The keyword, upper-case (`STREAMS`, `KEYS`, `STORE`).")
    p("        keyword: &'static [u8],")
    p("        /// Where the search starts; negative counts from the end.")
    p("        start_from: i16,")
    p("    },")
    p("    /// Redis cannot say: the arguments must be parsed (SORT's STORE).")
    p("    Unknown,")
    p("}")
    p("")
    p("/// How a key spec finds the keys after the first one.")
    p("#[derive(Debug, Clone, Copy, PartialEq, Eq)]")
    p("pub enum Find {")
    p("    /// Keys from the first one to `last_key` every `step` arguments. `last_key` is")
    p("    /// relative to the first key (0: only it); negative counts from the end (-1:")
    p("    /// the last argument), and with `limit` > 0 only `1/limit` of the remaining")
    p("    /// arguments are keys (XREAD's `STREAMS k1 k2 id1 id2`: limit 2).")
    p("    Range {")
    p("        /// Last key, relative to the first (or from the end when negative).")
    p("        last_key: i16,")
    p("        /// Distance between keys (MSET: 2).")
    p("        step: i16,")
    p("        /// With a negative `last_key`: divides the remaining arguments.")
    p("        limit: i16,")
    p("    },")
    p("    /// The argument `keynum_idx` after the begin index counts the keys, which start")
    p("    /// `first_key` after it, every `step` (EVAL's numkeys, ZUNIONSTORE, LMPOP).")
    p("    KeyNum {")
    p("        /// Index of the count, relative to the begin index.")
    p("        keynum_idx: i16,")
    p("        /// Index of the first key, relative to the begin index.")
    p("        first_key: i16,")
    p("        /// Distance between keys.")
    p("        step: i16,")
    p("    },")
    p("    /// Redis cannot say.")
    p("    Unknown,")
    p("}")
    p("")
    p("/// One key spec: where some of a command's key arguments are.")
    p("#[derive(Debug, Clone, Copy, PartialEq, Eq)]")
    p("pub struct KeySpec {")
    p("    /// Where the search begins.")
    p("    pub begin: Begin,")
    p("    /// How the keys are found from there.")
    p("    pub find: Find,")
    p("    /// Key spec flags ([`KS_RO`], [`KS_INCOMPLETE`] …).")
    p("    pub flags: u16,")
    p("}")
    p("")
    p("/// One command (or subcommand) as Redis describes it.")
    p("#[derive(Debug, Clone, Copy, PartialEq, Eq)]")
    p("pub struct CommandInfo {")
    p("    /// Lower-case, as Redis reports it: `\"get\"`, `\"config|get\"`.")
    p("    pub name: &'static str,")
    p("    /// Redis arity: `n` means exactly `n` arguments (the name included), `-n` at least `n`.")
    p("    pub arity: i16,")
    p("    /// Bit set of the flag constants in this module ([`READONLY`], [`WRITE`] …).")
    p("    pub flags: u32,")
    p("    /// 1-based index of the first key argument; 0 if none.")
    p("    pub first_key: i16,")
    p("    /// Index of the last key argument; negative counts from the end (-1 = last).")
    p("    pub last_key: i16,")
    p("    /// Distance between key arguments (MSET: 2).")
    p("    pub step: i16,")
    p("    /// Redis 7 key specs: where every key argument is (empty: no keys).")
    p("    pub keys: &'static [KeySpec],")
    p("    /// Position in [`COMMANDS`]: dense, `0..COUNT`.")
    p("    pub index: u16,")
    p("}")
    p("")
    p("impl CommandInfo {")
    p("    /// Whether Redis flags the command `readonly` (the only retry-safe commands).")
    p("    #[inline]")
    p("    pub fn is_readonly(&self) -> bool {")
    p("        self.has(READONLY)")
    p("    }")
    p("")
    p("    /// Whether Redis flags the command `write`.")
    p("    #[inline]")
    p("    pub fn is_write(&self) -> bool {")
    p("        self.has(WRITE)")
    p("    }")
    p("")
    p("    /// Whether every bit of `flag` is set (`has(READONLY | FAST)` needs both).")
    p("    #[inline]")
    p("    pub fn has(&self, flag: u32) -> bool {")
    p("        (self.flags & flag) == flag")
    p("    }")
    p("}")
    p("")
    p("/// Number of entries in [`COMMANDS`] (top-level commands and subcommands).")
    p("pub const COUNT: usize = %d;" % len(entries))
    p("")
    p("/// Number of top-level commands: they are `COMMANDS[..TOP_LEVEL]`.")
    p("pub const TOP_LEVEL: usize = %d;" % len(top))
    p("")
    p("/// The Redis version the table was generated from.")
    p("pub const REDIS_VERSION: &str = \"%s\";" % version)
    p("")
    p("/// Every command, top-level first (sorted), then subcommands (sorted).")
    p("#[rustfmt::skip]")
    p("pub static COMMANDS: [CommandInfo; COUNT] = [")
    for i, e in enumerate(entries):
        p(
            "    CommandInfo { name: \"%s\", arity: %d, flags: %s, first_key: %d, last_key: %d, step: %d, keys: %s, index: %d },"
            % (e["name"], e["arity"], flag_expr(e["flags"]), e["first"], e["last"], e["step"], key_specs_expr(e["specs"]), i)
        )
    p("];")
    p("")
    p("/// The top-level command named `upper_name`, which must already be upper-case ASCII.")
    p("/// Subcommands are not found here (use [`lookup_sub`]).")
    p("///")
    p("/// Grouped by length and first byte (an integer match the compiler turns into a")
    p("/// jump table), so a lookup compares a few names, not one per command.")
    p("pub fn lookup(upper_name: &[u8]) -> Option<&'static CommandInfo> {")
    p("    let first = upper_name.first().copied().unwrap_or(0);")
    p("    let i = match (upper_name.len(), first) {")
    groups = {}
    for e in top:
        up = e["name"].upper()
        groups.setdefault((len(up), up[0]), []).append((up, index[e["name"]]))
    for (n, c) in sorted(groups):
        p("        (%d, b'%s') => match upper_name {" % (n, c))
        for up, i in groups[(n, c)]:
            p("            %s => %d," % (rust_bytes(up), i))
        p("            _ => return None,")
        p("        },")
    p("        _ => return None,")
    p("    };")
    p("    Some(&COMMANDS[i])")
    p("}")
    p("")
    p("/// For a container command: the entry of its subcommand `upper_sub` if known, else the")
    p("/// container's own entry. For other commands: the command's entry (`upper_sub` is just")
    p("/// its first argument). `None` if `upper_name` is unknown. Both must be upper-case.")
    p("pub fn lookup_sub(upper_name: &[u8], upper_sub: &[u8]) -> Option<&'static CommandInfo> {")
    p("    let parent = lookup(upper_name)?;")
    p("    if !parent.has(CONTAINER) {")
    p("        return Some(parent);")
    p("    }")
    p("    let sub = match upper_name {")
    by_parent = {}
    for e in subs:
        parent, sub = e["name"].split("|", 1)
        by_parent.setdefault(parent, []).append((sub, index[e["name"]]))
    for parent in sorted(by_parent):
        p("        %s => match upper_sub {" % rust_bytes(parent.upper()))
        for sub, i in by_parent[parent]:
            p("            %s => %d," % (rust_bytes(sub.upper()), i))
        p("            _ => return Some(parent),")
        p("        },")
    p("        _ => return Some(parent),")
    p("    };")
    p("    Some(&COMMANDS[sub])")
    p("}")
    p("")
    p("/// Longest command or subcommand name looked up; longer names are unknown.")
    p("const MAX_NAME: usize = 32;")
    p("")
    p("/// Upper-cases `src` into `buf`; `None` if longer than [`MAX_NAME`].")
    p("#[inline]")
    p("fn upper<'a>(src: &[u8], buf: &'a mut [u8; MAX_NAME]) -> Option<&'a [u8]> {")
    p("    let dst = buf.get_mut(..src.len())?;")
    p("    for (d, s) in dst.iter_mut().zip(src) {")
    p("        *d = s.to_ascii_uppercase();")
    p("    }")
    p("    Some(dst)")
    p("}")
    p("")
    p("/// Like [`lookup`] / [`lookup_sub`], in any case: `name` is the command name and `sub`")
    p("/// its first argument, if any. Upper-cases on the stack; a name longer than 32 bytes is")
    p("/// unknown (`None`), a longer `sub` selects the container's own entry.")
    p("pub fn lookup_args(name: &[u8], sub: Option<&[u8]>) -> Option<&'static CommandInfo> {")
    p("    let mut name_buf = [0u8; MAX_NAME];")
    p("    let upper_name = upper(name, &mut name_buf)?;")
    p("    let parent = lookup(upper_name)?;")
    p("    let Some(sub) = sub else {")
    p("        return Some(parent);")
    p("    };")
    p("    if !parent.has(CONTAINER) {")
    p("        return Some(parent);")
    p("    }")
    p("    let mut sub_buf = [0u8; MAX_NAME];")
    p("    match upper(sub, &mut sub_buf) {")
    p("        Some(upper_sub) => lookup_sub(upper_name, upper_sub),")
    p("        None => Some(parent),")
    p("    }")
    p("}")
    return "\n".join(w) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, help="use a running server on this port instead of starting one")
    ap.add_argument("--host", default="127.0.0.1", help="host of the running server (with --port)")
    ap.add_argument("--password", help="AUTH password for the running server")
    ap.add_argument("--redis-server", default="redis-server", help="redis-server binary to start")
    ap.add_argument("--output", default=DEFAULT_OUTPUT, help="where to write (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if the output would change")
    ap.add_argument("--no-rustfmt", action="store_true", help="do not run rustfmt on the output")
    args = ap.parse_args()

    proc = tmp = None
    if args.port:
        host, port = args.host, args.port
    else:
        binary = shutil.which(args.redis_server) or args.redis_server
        if not os.path.exists(binary):
            raise SystemExit("gen_command_table: %s not found (install redis-server)" % args.redis_server)
        proc, port, tmp = start_server(binary)
        host = "127.0.0.1"
    try:
        client = Client(host, port)
        try:
            if args.password:
                client.call("AUTH", args.password)
            version, top, subs = collect(client)
        finally:
            client.close()
    finally:
        if proc is not None:
            stop_server(proc, tmp)

    source = render(version, top, subs)
    if not args.no_rustfmt and shutil.which("rustfmt"):
        res = subprocess.run(
            ["rustfmt", "--edition", "2021"],
            cwd=REPO_ROOT,
            input=source.encode(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        if res.returncode != 0:
            sys.stderr.write(res.stderr.decode(errors="replace"))
            raise SystemExit("gen_command_table: rustfmt failed")
        source = res.stdout.decode()

    for item in sorted(IGNORED):
        sys.stderr.write("gen_command_table: not carried: %s\n" % item)
    summary = "Redis %s: %d commands, %d subcommands" % (version, len(top), len(subs))
    if args.check:
        try:
            with open(args.output, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != source:
            print("%s: %s would change (%s)" % (sys.argv[0], args.output, summary))
            return 1
        print("%s is up to date (%s)" % (args.output, summary))
        return 0
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(source)
    print("wrote %s (%s)" % (args.output, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
