#!/usr/bin/env python3
# compare.py DIR_A DIR_B : per-binary counts and per-test differences from cargo test outputs
import re, sys, os, glob
def load(d):
    res = {}
    for f in sorted(glob.glob(os.path.join(d, "*.txt"))):
        b = os.path.basename(f)[:-4]
        pending = None
        for line in open(f, errors="replace"):
            line = line.strip()
            m = re.match(r"^test (\S+)(?: - should panic)? \.\.\. (.*)$", line)
            if m:
                st = m.group(2).split()
                st = st[-1] if st else ""
                if st in ("ok", "FAILED") or m.group(2).startswith("ignored"):
                    res[(b, m.group(1))] = "ignored" if m.group(2).startswith("ignored") else st
                    pending = None
                else:
                    pending = m.group(1)
            elif pending and line in ("ok", "FAILED"):
                res[(b, pending)] = line; pending = None
    return res
a, b = load(sys.argv[1]), load(sys.argv[2])
bins = sorted({k[0] for k in list(a) + list(b)})
print(f"{'binary':40} {'A pass/fail/ign':>16} {'B pass/fail/ign':>16}")
for bn in bins:
    def cnt(r): 
        v = [s for (x, _), s in r.items() if x == bn]
        return f"{v.count('ok')}/{v.count('FAILED')}/{v.count('ignored')}"
    print(f"{bn:40} {cnt(a):>16} {cnt(b):>16}")
for k in sorted(set(a) | set(b)):
    if a.get(k) != b.get(k):
        print("DIFF", k[0], k[1], "A:", a.get(k), "B:", b.get(k))
