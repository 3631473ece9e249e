#!/usr/bin/env python3
"""What one client's large reply costs the others when Redis closes the connection
for it (README "Failure behaviour": Redis's `client-output-buffer-limit normal`).

    python3 scripts/large-reply-collateral.py PORT [GETS] [SECONDS]

Expects, behind PORT (Redis itself or the proxy in front of it), a Redis with
`client-output-buffer-limit normal 1mb 0 0` and a 3 MB string at `big`:

    redis-cli -p REDIS config set client-output-buffer-limit "normal 1mb 0 0"
    python3 -c "print('x' * (3 << 20), end='')" | redis-cli -p REDIS -x set big

Four clients `INCR counter` in a loop while GETS clients (10) each `GET big` once,
spread over SECONDS (3); prints how many INCRs succeeded and failed, and how many
GETs failed (all of them: Redis closes the connection for each). Needs redis-py.
"""
import sys
import threading
import time

import redis

port = int(sys.argv[1])
gets = int(sys.argv[2]) if len(sys.argv) > 2 else 10
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
stop = threading.Event()
lock = threading.Lock()
counts = {"incr ok": 0, "incr failed": 0, "get failed": 0}


def count(what):
    with lock:
        counts[what] += 1


def incr():
    r = redis.Redis(port=port)
    while not stop.is_set():
        try:
            r.incr("counter")
            count("incr ok")
        except redis.RedisError:
            count("incr failed")
            r = redis.Redis(port=port)


def get():
    try:
        redis.Redis(port=port).get("big")
    except redis.RedisError:
        count("get failed")


incrs = [threading.Thread(target=incr) for _ in range(4)]
for t in incrs:
    t.start()
time.sleep(0.3)
readers = []
for _ in range(gets):
    t = threading.Thread(target=get)
    t.start()
    readers.append(t)
    time.sleep(seconds / gets)
for t in readers:
    t.join()
time.sleep(0.3)
stop.set()
for t in incrs:
    t.join()
print(f"incr ok {counts['incr ok']}, incr failed {counts['incr failed']}, "
      f"get failed {counts['get failed']} of {gets}")
