#!/usr/bin/env python3
"""CPU cost of a request trickled in small pieces: the proxy against Redis itself.

A client sends one wide request (`EXISTS` with N one-byte arguments, about 7 bytes
per argument) in 1 KiB pieces, pausing between pieces so each arrives in a read of
its own, and waits for the reply. The CPU time (user + system, from /proc) the
receiving process spent is measured, once against redis-server directly and once
against the proxy (whose upstream is the same redis-server); the figure is CPU per
MiB received and the proxy/Redis ratio (issue 9, defect 6: within 2x).

    cargo build --release
    scripts/bench-trickle.py [--args 1000000] [--piece 1024] [--rounds 3]

It starts its own redis-server and proxy (target/release/redis-sidecar) on free
loopback ports and stops them at the end.
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based) of the whole line.
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_port(port, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def request(nargs):
    parts = [b"*%d\r\n$6\r\nEXISTS\r\n" % (nargs + 1)]
    parts.append(b"$1\r\nx\r\n" * nargs)
    return b"".join(parts)


def trickle(port, payload, piece, pause):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(0, len(payload), piece):
        s.sendall(payload[i : i + piece])
        time.sleep(pause)
    s.settimeout(60)
    reply = s.recv(4096)
    s.close()
    return reply


def measure(pid, port, payload, piece, pause):
    before = cpu_seconds(pid)
    reply = trickle(port, payload, piece, pause)
    after = cpu_seconds(pid)
    if not reply.startswith(b":"):
        sys.exit(f"unexpected reply: {reply[:200]!r}")
    return after - before


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--args", type=int, default=1_000_000)
    ap.add_argument("--piece", type=int, default=1024)
    ap.add_argument("--pause", type=float, default=0.0002, help="seconds between pieces")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/redis-sidecar"))
    opts = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench-trickle-")
    rport, pport = free_port(), free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", tmp],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(rport)
    conf = os.path.join(tmp, "proxy.yaml")
    with open(conf, "w") as f:
        f.write(f"redis_databases:\n  main: {{ db: 0 }}\nhost: 127.0.0.1\nport: {rport}\n")
    proxy = subprocess.Popen(
        [opts.binary, "--config", conf, "--listen", f"127.0.0.1:{pport}",
         "--metrics-listen", "off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(pport)
        payload = request(opts.args)
        mib = len(payload) / (1 << 20)
        print(f"request: EXISTS with {opts.args} arguments, {mib:.1f} MiB, "
              f"sent in {opts.piece}-byte pieces ({len(payload) // opts.piece} reads)")
        ratios = []
        for r in range(opts.rounds):
            direct = measure(redis.pid, rport, payload, opts.piece, opts.pause)
            proxied = measure(proxy.pid, pport, payload, opts.piece, opts.pause)
            ratio = proxied / direct if direct > 0 else float("inf")
            ratios.append(ratio)
            print(f"round {r + 1}: redis-server {direct:.2f} s CPU ({direct / mib * 1000:.0f} ms/MiB), "
                  f"proxy {proxied:.2f} s CPU ({proxied / mib * 1000:.0f} ms/MiB), "
                  f"proxy/redis {ratio:.2f}")
        ratios.sort()
        print(f"median proxy/redis CPU ratio: {ratios[len(ratios) // 2]:.2f}")
    finally:
        proxy.terminate()
        redis.terminate()
        proxy.wait()
        redis.wait()


if __name__ == "__main__":
    main()
