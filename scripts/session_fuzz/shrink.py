import json, sys
import sessions
from sessions import replay
log = json.load(open(sys.argv[1])); K = 4; T = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "7301,7310").split(",")]
sessions.PROXY_PORT = T[1]
r = replay(log, K, T)
if not r:
    print("no difference"); sys.exit(0)
log = log[:r[0]+1]
def bad(t):
    r2 = replay(t, K, T)
    return r2 and r2[0] == len(t) - 1
# only the failing session first
sess = log[-1][0]
t = [x for x in log if x[0] == sess]
if bad(t): log = t
n = 2
while len(log) > 1:
    body = log[:-1]
    chunk = max(1, len(body) // n)
    removed = False
    for st in range(0, len(body), chunk):
        t = body[:st] + body[st+chunk:] + [log[-1]]
        if bad(t):
            log = t; removed = True; break
    if removed:
        n = max(2, n - 1)
    elif chunk == 1:
        break
    else:
        n = min(len(body), n * 2)
# split pipelines
changed = True
while changed:
    changed = False
    for i in range(len(log)):
        if len(log[i][1]) > 1:
            for k in range(len(log[i][1])):
                t = log[:i] + [[log[i][0], log[i][1][:k] + log[i][1][k+1:]]] + log[i+1:]
                if bad(t):
                    log = t; changed = True; break
        if changed: break
for i, c in log: print("s%d: %s" % (i, " | ".join(" ".join(x) for x in c)))
r = replay(log, K, T); print("redis:", r[2][-5:]); print("proxy:", r[3][-5:])
