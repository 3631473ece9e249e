"""A legacy application, unmodified but for the port: plain synchronous redis-py.

It talks to redis-sidecar on 127.0.0.1:6380 (docker-compose.yml runs it in the
proxy's network namespace) exactly as it used to talk to Redis on 6379, database 5
included. Stop it with Ctrl-C; ITERATIONS=n stops it after n rounds.
"""

import os
import time

import redis

r = redis.Redis(host="127.0.0.1", port=6380, db=5)

iterations = int(os.environ.get("ITERATIONS", "0"))  # 0: forever
n = 0
while True:
    n += 1
    r.set("example:greeting", f"hello {n}")
    greeting = r.get("example:greeting").decode()
    hits = r.incr("example:hits")
    print(f"round {n}: GET example:greeting -> {greeting!r}, INCR example:hits -> {hits}", flush=True)
    if iterations and n >= iterations:
        break
    time.sleep(1)
