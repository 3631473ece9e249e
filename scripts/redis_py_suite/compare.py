#!/usr/bin/env python3
"""Compares two JUnit XML reports of redis-py's test suite: one run against Redis
directly (the baseline) and one through redis-sidecar, with identical options.

    compare.py DIRECT.xml PROXY.xml [--out DIR] [--markdown FILE]

Prints, for each run, passed / failed / errors / skipped, then the difference: the
tests that pass directly but fail (or error) through the proxy, grouped by cause.
A cause is guessed from the failure's message and traceback by the ordered rules in
CAUSES below (first match wins); anything unmatched lands in "other". The full list,
one test id per line with its group and the proxy's error, is written to
DIR/difference.tsv when --out is given.

Only the standard library is used, so any python3 can run it.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import xml.etree.ElementTree as ET

# Ordered rules, first match wins. Each: group key, kind, one-line explanation, and
# regexes over the error lines (the failure's message and pytest's "E " lines), over
# the test id, or over the whole traceback. Kinds:
#   inherent  no proxy in front of Redis can make these pass: the test asserts on the
#             state of the TCP connection to Redis itself or on Redis-only features
#   policy    refused on purpose by the proxy's design or configuration
#   fixable   the proxy could implement what is missing
CAUSES: list[dict] = [
    dict(key="resp3", kind="fixable",
         why="HELLO 3 is answered -NOPROTO and redis-py does not fall back to RESP2",
         err=[r"NOPROTO"]),
    dict(key="pubsub", kind="fixable",
         why="(P|S)SUBSCRIBE refused: pub/sub needs a dedicated upstream connection",
         err=[r"pub/sub need", r"SUBSCRIBE' is not supported"]),
    dict(key="monitor", kind="inherent",
         why="MONITOR refused (it would stream every client's commands of the upstream)",
         err=[r"'MONITOR' is not supported"]),
    dict(key="client-refused", kind="fixable",
         why="CLIENT subcommand refused by the proxy (REPLY, TRACKING, CACHING, GETREDIR, UNBLOCK ...)",
         err=[r"CLIENT \S+ is not supported by redis-sidecar"]),
    dict(key="denied", kind="policy",
         why="command denied by the proxy's deny_commands (server-administration commands)",
         err=[r"denied by redis-sidecar"]),
    dict(key="select-in-multi", kind="fixable",
         why="SELECT inside MULTI refused",
         err=[r"SELECT.*(transaction|MULTI)", r"(transaction|MULTI).*SELECT"]),
    dict(key="auth-error-text", kind="fixable",
         why="AUTH <user> <pass> without a client_password configured gets the one-argument "
             "form's error; Redis answers -WRONGPASS invalid username-password pair",
         full=[r"(?s)Regex pattern did not match.*called without any password configured"]),
    dict(key="acl-teardown", kind="fixable",
         why="CLIENT INFO from the proxy has no user= field, so the suite's r_teardown "
             "thinks the client is not 'default' and calls AUTH, which the proxy refuses",
         full=[r'auth\("", "default"\)']),
    dict(key="auth", kind="policy",
         why="AUTH is answered by the proxy (client_password), never by Redis: the "
             "upstream's requirepass and ACL users cannot be used through the proxy",
         err=[r"AUTH <password> called without any password configured",
              r"WRONGPASS", r"NOAUTH", r"AuthenticationError"]),
    dict(key="client-list-kill", kind="fixable",
         why="CLIENT LIST/KILL are forwarded: they list and kill the proxy's upstream "
             "connections, not the test's client connections",
         name=[r"test_client_(kill|list)"]),
    dict(key="not-supported", kind="fixable",
         why="another command refused by the proxy",
         err=[r"is not supported by redis-sidecar"]),
    dict(key="subscriber-lost", kind="fixable",
         why="the subscriber's upstream connection died: the proxy answers -UPSTREAM and "
             "keeps the client connection, where Redis closes it (redis-py expects ConnectionError)",
         err=[r"subscriber connection was lost"]),
    dict(key="upstream-error", kind="fixable",
         why="proxy-generated -UPSTREAM / -CIRCUITOPEN error",
         err=[r"\bUPSTREAM\b database", r"CIRCUITOPEN"]),
    dict(key="timeout", kind="fixable",
         why="test hung (pytest-timeout) or a client read timed out",
         err=[r"Failed: Timeout", r"TimeoutError", r"Timeout reading from"]),
]
OTHER = dict(key="other", kind="?", why="not classified automatically: see the message")


def outcome(tc: ET.Element) -> tuple[str, str]:
    """(status, text) of one <testcase>: status is passed/failed/error/skipped."""
    status, text = "passed", ""
    for child in tc:
        tag = child.tag
        if tag == "failure":
            return "failed", (child.get("message") or "") + "\n" + (child.text or "")
        if tag == "error":
            status, text = "error", (child.get("message") or "") + "\n" + (child.text or "")
        elif tag == "skipped" and status == "passed":
            status = "skipped"
    return status, text


def test_id(tc: ET.Element) -> str:
    """pytest-style node id: tests/x.py::Class::name[param]."""
    name = tc.get("name", "")
    classname = tc.get("classname", "")
    path = tc.get("file")  # present with junit_family=xunit1
    parts = classname.split(".")
    if path:
        mod_depth = len(path[:-3].split("/")) if path.endswith(".py") else len(parts)
        rest = parts[mod_depth:]
        return "::".join([path, *rest, name])
    return f"{classname}::{name}"


def load(path: str) -> dict[str, tuple[str, str]]:
    results: dict[str, tuple[str, str]] = {}
    root = ET.parse(path).getroot()
    for tc in root.iter("testcase"):
        tid = test_id(tc)
        status, text = outcome(tc)
        prev = results.get(tid)
        # pytest may report setup/teardown problems as a second entry; keep the worst.
        rank = {"failed": 3, "error": 2, "skipped": 1, "passed": 0}
        if prev is None or rank[status] > rank[prev[0]]:
            results[tid] = (status, text)
    return results


def counts(results: dict[str, tuple[str, str]]) -> collections.Counter:
    c = collections.Counter(s for s, _ in results.values())
    c["total"] = len(results)
    return c


def error_lines(text: str) -> str:
    """The failure's message and the exception lines of its traceback, without the
    quoted source: pytest's "E " lines (long format) or the unindented lines of a
    native traceback."""
    head, _, body = text.partition("\n")
    lines = [head] + [
        l
        for l in body.split("\n")
        if l
        and not l[0].isspace()
        and not l.startswith((">", "Traceback (most recent", "During handling", "The above exception"))
    ]
    return "\n".join(lines)


def classify(tid: str, text: str) -> dict:
    errs = error_lines(text)
    for cause in CAUSES:
        if (
            any(re.search(rx, errs) for rx in cause.get("err", []))
            or any(re.search(rx, tid) for rx in cause.get("name", []))
            or any(re.search(rx, text) for rx in cause.get("full", []))
        ):
            return cause
    return OTHER


def first_line(text: str) -> str:
    """The most telling line of a failure: the exception raised (with the proxy's
    error text when there is one), else the first assertion line, else the message."""
    lines = [l[1:].strip() if l.startswith("E ") else l.strip() for l in error_lines(text).split("\n")]
    for l in lines:
        if re.match(r"[\w.]*(Error|Exception|Failed|Timeout)\b", l):
            return l[:220]
    for l in lines:
        if l.startswith("assert"):
            return l[:220]
    return lines[0][:220]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("direct")
    ap.add_argument("proxy")
    ap.add_argument("--out", help="directory for difference.tsv")
    ap.add_argument("--limit", type=int, default=0, help="print at most N ids per group (0: all)")
    ap.add_argument("--repairs", help="suite_guard's repairs file of the proxy run")
    args = ap.parse_args()

    runs = {}
    for label, path in (("direct", args.direct), ("proxy", args.proxy)):
        if not os.path.exists(path):
            print(f"{label}: no report ({path} is missing: the run did not start)")
            runs[label] = None
            continue
        runs[label] = load(path)

    print(f"{'':8} {'total':>6} {'passed':>6} {'failed':>6} {'errors':>6} {'skipped':>7}")
    for label, res in runs.items():
        if res is None:
            print(f"{label:8} {'-':>6} {'-':>6} {'-':>6} {'-':>6} {'-':>7}")
            continue
        c = counts(res)
        print(
            f"{label:8} {c['total']:>6} {c['passed']:>6} {c['failed']:>6} {c['error']:>6} {c['skipped']:>7}"
        )
    direct, proxy = runs["direct"], runs["proxy"]
    if direct is None:
        return 1
    if proxy is None:
        passed = sum(1 for s, _ in direct.values() if s == "passed")
        print(f"\ndifference: all {passed} tests that pass directly (the proxy run did not start)")
        return 0

    diff = {
        tid: proxy[tid]
        for tid, (s, _) in direct.items()
        if s == "passed" and tid in proxy and proxy[tid][0] in ("failed", "error")
    }
    better = [t for t, (s, _) in proxy.items() if s == "passed" and direct.get(t, ("",))[0] in ("failed", "error")]
    skipped_only_proxy = [t for t, (s, _) in proxy.items() if s == "skipped" and direct.get(t, ("",))[0] == "passed"]
    missing = [t for t in direct if t not in proxy]

    d_pass = sum(1 for s, _ in direct.values() if s == "passed")
    p_pass = sum(1 for s, _ in proxy.values() if s == "passed")
    print(
        f"\npassed: direct {d_pass}, proxy {p_pass} (difference {d_pass - p_pass});"
        f" {len(diff)} tests pass directly but fail through the proxy"
    )
    if better:
        print(f"{len(better)} tests fail directly but pass through the proxy: {', '.join(sorted(better))}")
    if skipped_only_proxy:
        print(f"{len(skipped_only_proxy)} tests pass directly but are skipped through the proxy:")
        for t in sorted(skipped_only_proxy):
            print(f"  {t}")
    if missing:
        print(f"{len(missing)} tests of the direct run are missing from the proxy run (run aborted?)")

    groups: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    meta = {}
    for tid in sorted(diff):
        status, text = diff[tid]
        cause = classify(tid, text)
        groups[cause["key"]].append((tid, first_line(text)))
        meta[cause["key"]] = cause
    rows = []
    print("\ntests passing directly but failing through the proxy, by cause:")
    for key, items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        kind, why = meta[key]["kind"], meta[key]["why"]
        print(f"\n[{key}] {len(items)} tests ({kind}): {why}")
        shown = items if not args.limit else items[: args.limit]
        for tid, msg in shown:
            print(f"  {tid}\n      {msg}")
            rows.append((key, tid, msg))
        if len(shown) < len(items):
            print(f"  ... and {len(items) - len(shown)} more")
            rows.extend((key, t, m) for t, m in items[len(shown):])
    if args.repairs and os.path.exists(args.repairs):
        with open(args.repairs) as f:
            lines = [l.rstrip("\n").split("\t", 1) for l in f if l.strip()]
        if lines:
            print(
                f"\nthe server had to be repaired after {len(lines)} tests of the proxy run"
                " (scripts/redis_py_suite/suite_guard.py):"
            )
            for tid, what in lines:
                print(f"  {tid}: {what}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "difference.tsv"), "w") as f:
            f.write("group\ttest\tproxy error\n")
            for key, tid, msg in rows:
                f.write(f"{key}\t{tid}\t{msg.replace(chr(9), ' ')}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
