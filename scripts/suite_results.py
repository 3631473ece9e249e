"""Shared by the scripts/*-suite.sh runs: prints each run's counts and every test
whose result differs between the run against Redis and the run through the proxy.
`direct` and `proxy` map a test's name to its result (one of `kinds`)."""
import re


def report(direct, proxy, kinds=('passed', 'failed', 'skipped'), label=''):
    def count(results):
        return ', '.join(f'{k} {sum(v == k for v in results.values())}' for k in kinds)
    pad = ' ' * len(label)
    print(f'{label}direct: {count(direct)}\n{pad}proxy:  {count(proxy)}')
    for name in sorted(set(direct) | set(proxy)):
        if direct.get(name) != proxy.get(name):
            print(f'  differs: {name}: direct {direct.get(name)}, proxy {proxy.get(name)}')


def libtest_results(path):
    """A Rust test binary's results (its `test NAME ... ok` lines) in `report`'s kinds."""
    kinds = {'ok': 'passed', 'FAILED': 'failed', 'ignored': 'skipped'}
    results = {}
    for line in open(path, errors='replace'):
        m = re.match(r'^test (\S+) (?:- should panic )?\.\.\. (ok|FAILED|ignored)', line)
        if m:
            results[m.group(1)] = kinds[m.group(2)]
    return results
