#!/usr/bin/env python3
"""Writes whole pipelines before reading any reply (as hiredis, Jedis and redis-py
pipelines do) and reports whether every reply came back.

Usage: scripts/whole_pipeline.py PORT [CASE ...]  (cases: see `cases` below)
Run it against Redis and against the proxy; both should print OK for every case.
It writes keys `LLL…` (128 bytes), `big` and `k0`…`k39999` in db 0 and 1-2.
"""
import socket, sys, time
def cmd(*a):
    out = b'*%d\r\n' % len(a)
    for x in a:
        x = x if isinstance(x, bytes) else str(x).encode()
        out += b'$%d\r\n%s\r\n' % (len(x), x)
    return out
def run(port, reqs, nreplies_bytes_hint=None, wait=20):
    s = socket.create_connection(('127.0.0.1', port))
    s.settimeout(wait)
    data = b''.join(reqs)
    t = time.time()
    try:
        s.sendall(data)
    except Exception as e:
        return 'WRITE-STUCK %s after %.1fs' % (e, time.time()-t)
    # read replies count by simple RESP parse
    buf = bytearray()
    s.settimeout(30)
    n = 0
    want = len(reqs)
    pos = 0
    def parse(pos):
        # returns new pos or None
        if pos >= len(buf): return None
        end = buf.find(b'\r\n', pos)
        if end < 0: return None
        t = buf[pos:pos+1]; line = buf[pos+1:end]
        p = end + 2
        if t in (b'+', b'-', b':', b'_', b',', b'#'): return p
        if t == b'$':
            l = int(line)
            if l < 0: return p
            if len(buf) < p + l + 2: return None
            return p + l + 2
        if t in (b'*', b'%', b'~', b'>'):
            l = int(line)
            if t == b'%': l *= 2
            for _ in range(max(l, 0)):
                p = parse(p)
                if p is None: return None
            return p
        raise Exception('bad %r' % bytes(buf[pos:pos+20]))
    while n < want:
        np = parse(pos)
        if np is None:
            try:
                d = s.recv(1 << 20)
            except Exception as e:
                return 'READ-STUCK after %d replies: %s' % (n, e)
            if not d: return 'CLOSED after %d replies' % n
            buf += d
            continue
        n += 1; pos = np
        if pos > (1 << 24): del buf[:pos]; pos = 0
    return 'OK %d replies in %.1fs' % (n, time.time()-t)

if __name__ == '__main__':
    port = int(sys.argv[1])
    key = b'L' * 128
    setup = socket.create_connection(('127.0.0.1', port))
    setup.sendall(cmd('DEL', key, 'big') + cmd('RPUSH', key, *(['x'] * 100)) + cmd('SET', 'big', 'v' * 10000))
    time.sleep(0.3); setup.recv(1000)
    N = 40000
    lr = cmd('LRANGE', key, 0, -1)
    cases = {
      'multi': [cmd('MULTI')] + [lr] * N + [cmd('EXEC')],
      'sets1k': [cmd('SET', 'k%d' % i, 'v' * 1000) for i in range(N)],
      'getbig': [cmd('GET', 'big')] * 20000,
      'resp3': [cmd('HELLO', 3)] + [lr] * N,
      'select': [cmd('SELECT', 1), cmd('SELECT', 0)] * 1000 + [lr] * N,
      'mixed_db': sum(([cmd('SELECT', i % 3), lr] for i in range(N // 2)), []),
      'watch': [cmd('WATCH', 'a')] + [lr] * N + [cmd('UNWATCH')],
      'blpop0': [lr] * N + [cmd('BLPOP', key, 0)],
    }
    for name in (sys.argv[2:] or cases):
        print(name, run(port, cases[name]), flush=True)
