#!/usr/bin/env python3
"""Large frames through the proxy vs direct Redis (issue 8, defect 9): time to send a
1M-argument MSET and to read 1M- and 3M-element LRANGE replies, and the proxy's CPU
time for a 1M-argument request sent in 1 KiB writes. Loopback only.

    scripts/bench-large.py DIRECT_PORT PROXY_PORT [PROXY_PID] [--rounds N]

Each measurement alternates direct / proxy (ABAB …) and reports the medians and
their ratio; with PROXY_PID the proxy's user+system CPU for the chunked request is
read from /proc.
"""
import argparse, os, socket, statistics, time


def read_n(s, n):
    """Reads exactly n bytes (a reply whose length is known)."""
    got = 0
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    out = bytearray()
    while got < n:
        k = s.recv_into(view)
        if k == 0:
            raise EOFError
        if got == 0:
            out += view[:min(k, 64)]
        got += k
    return bytes(out)


def read_simple(s):
    """Reads a short reply (one line)."""
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def timed(port, payload, reply_len, chunk=None):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t = time.perf_counter()
    if chunk:
        for i in range(0, len(payload), chunk):
            s.sendall(payload[i:i + chunk])
    else:
        s.sendall(payload)
    head = read_n(s, reply_len)
    dt = time.perf_counter() - t
    s.close()
    return dt, head


def reply_len(port, payload):
    """The length of the reply to payload, measured once (untimed)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(payload)
    total = bytearray()
    s.settimeout(2.0)
    try:
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            total += chunk
            s.settimeout(0.3)
    except socket.timeout:
        pass
    s.close()
    return len(total)


def cpu(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("direct", type=int)
    ap.add_argument("proxy", type=int)
    ap.add_argument("pid", type=int, nargs="?")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    mset = encode([b"MSET"] + [x for i in range(500_000) for x in (b"k%d" % i, b"v")])
    setup = socket.create_connection(("127.0.0.1", a.direct))
    for key, n in ((b"l1m", 1_000_000), (b"l3m", 3_000_000)):
        setup.sendall(encode([b"DEL", key]))
        read_simple(setup)
        for start in range(0, n, 100_000):
            setup.sendall(encode([b"RPUSH", key] + [b"element-%d" % i for i in range(start, start + 100_000)]))
            read_simple(setup)
    cases = [
        ("MSET 1M args", mset, None),
        ("LRANGE 1M elements", encode([b"LRANGE", b"l1m", b"0", b"-1"]), None),
        ("LRANGE 3M elements", encode([b"LRANGE", b"l3m", b"0", b"-1"]), None),
        ("MSET 1M args in 1 KiB writes", mset, 1024),
    ]
    print("%-30s %10s %10s %7s" % ("case", "direct s", "proxy s", "ratio"))
    for name, payload, chunk in cases:
        n = reply_len(a.direct, payload)
        d, p, c = [], [], []
        for _ in range(a.rounds):
            d.append(timed(a.direct, payload, n, chunk)[0])
            before = cpu(a.pid) if a.pid else 0
            dt, r = timed(a.proxy, payload, n, chunk)
            if a.pid:
                c.append(cpu(a.pid) - before)
            p.append(dt)
            assert not r.startswith(b"-"), r[:200]
        md, mp = statistics.median(d), statistics.median(p)
        extra = ("  proxy CPU %.3f s" % statistics.median(c)) if c else ""
        print("%-30s %10.3f %10.3f %6.2fx%s" % (name, md, mp, mp / md, extra))


if __name__ == "__main__":
    main()
