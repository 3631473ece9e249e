"""pytest plugin loaded (with -p suite_guard) in both runs of scripts/redis-py-suite.sh.

It keeps one test's leftovers from failing every later test. A few redis-py tests set
a server password (CONFIG SET requirepass) and rely on AUTH to remove it in their
teardown. Through the proxy, AUTH is answered by the proxy (it checks the proxy's own
client password), so that teardown cannot authenticate and the upstream Redis keeps
requiring a password: every later test that needs a new upstream connection would
fail. After every test (all its finalizers have run), this plugin connects to Redis
directly, as a dedicated admin user the script created, and puts back what a test may
have left behind: no requirepass, the default user enabled without password, no ACL
user the test created (a teardown that fails through the proxy leaves them). Every
repair is appended to $REDIS_PY_SUITE_REPAIRS (test id and what was repaired), so the
report can show which test left the server altered.

Configured by environment variables (set by the script):
  REDIS_PY_SUITE_ADMIN    host:port:user:password of the direct admin connection
  REDIS_PY_SUITE_REPAIRS  file to append repairs to
In the direct run it finds nothing to repair (redis-py's own teardowns work there).
"""

from __future__ import annotations

import os
import socket

import pytest


def _encode(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Admin:
    """A minimal RESP2 client on a plain socket (independent of the redis-py under test)."""

    def __init__(self, spec: str):
        host, port, self.user, self.password = spec.split(":", 3)
        self.addr = (host, int(port))
        self.sock = None
        self.buf = b""

    def _connect(self):
        self.sock = socket.create_connection(self.addr, timeout=5)
        self.buf = b""
        reply = self._call("AUTH", self.user, self.password)
        if reply != "OK":
            raise RuntimeError(f"suite_guard: admin AUTH failed: {reply!r}")

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("suite_guard: connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("suite_guard: connection closed")
                self.buf += chunk
            data, self.buf = self.buf[:n], self.buf[n + 2 :]
            return data.decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise ConnectionError(f"suite_guard: unexpected reply {line!r}")

    def _call(self, *args: str):
        self.sock.sendall(_encode(*args))
        return self._read()

    def call(self, *args: str):
        for attempt in (0, 1):
            try:
                if self.sock is None:
                    self._connect()
                return self._call(*args)
            except (OSError, ConnectionError):
                # Killed by a CLIENT KILL test, for instance: reconnect once.
                self.close()
                if attempt:
                    raise

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None


_admin: _Admin | None = None
_users_at_start: set[str] = set()


def pytest_configure(config):
    global _admin, _users_at_start
    spec = os.environ.get("REDIS_PY_SUITE_ADMIN")
    if spec:
        _admin = _Admin(spec)
        users = _admin.call("ACL", "USERS")
        _users_at_start = set(users) if isinstance(users, list) else set()


def _repair() -> list[str]:
    repaired = []
    pw = _admin.call("CONFIG", "GET", "requirepass")
    if isinstance(pw, list) and len(pw) == 2 and pw[1]:
        _admin.call("CONFIG", "SET", "requirepass", "")
        repaired.append("requirepass was set")
    user = _admin.call("ACL", "GETUSER", "default")
    if isinstance(user, list):
        fields = dict(zip(user[::2], user[1::2]))
        flags = fields.get("flags") or []
        if "on" not in flags or "nopass" not in flags:
            _admin.call("ACL", "SETUSER", "default", "on", "nopass", "~*", "&*", "+@all")
            repaired.append(f"default user was {' '.join(flags)}")
    users = _admin.call("ACL", "USERS")
    if isinstance(users, list) and _users_at_start:
        extra = sorted(set(users) - _users_at_start)
        if extra:
            _admin.call("ACL", "DELUSER", *extra)
            repaired.append(f"ACL users left behind: {' '.join(extra)}")
    return repaired


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    if _admin is None:
        return
    try:
        repaired = _repair()
    except Exception as e:  # never fail a test because of the guard itself
        repaired = [f"guard could not check the server: {e}"]
    if repaired:
        path = os.environ.get("REDIS_PY_SUITE_REPAIRS")
        if path:
            with open(path, "a") as f:
                f.write(f"{item.nodeid}\t{'; '.join(repaired)}\n")


def pytest_unconfigure(config):
    if _admin is not None:
        _admin.close()
