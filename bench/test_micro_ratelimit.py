"""Micro-benchmark of the rate limiter's bucket (fastgw/_cy/ratelimit.pyx): hash, table lookup and the
GCRA compare-and-swap, 10,000 requests a round, in C. Divide the mean by 10,000 for one request.

Run alone: .venv/bin/python -m pytest bench/test_micro_ratelimit.py --benchmark-columns=mean,median,ops -q
"""

from __future__ import annotations

import pytest

from fastgw import _core

N = 10_000
T0 = 10**12


@pytest.mark.parametrize("nkeys", [1, 1000, 100_000])
def test_bucket_take(benchmark, nkeys):
    table = _core.RateTable(262144, seed=1)
    passed = benchmark(table.take_many, N, nkeys, T0, 1e6, 1.0, 1000)
    assert 0 <= passed <= N   # rounds reuse one clock: later ones find the buckets taken


def test_bucket_take_one_python_call(benchmark):
    """One request through the Python-facing take(): what a call from Python adds."""
    table = _core.RateTable(262144, seed=1)
    benchmark(table.take, b"203.0.113.7", T0, 1e9, 1.0, 10**9)


def test_cluster_lease_take(benchmark):
    """A cluster limit's request while its lease holds tokens (the common case: no Redis call): the
    Python side of fastgw/ratelimit_cluster.py."""
    import time

    from fastgw.config.ratelimit import Redis
    from fastgw.ratelimit_cluster import ClusterLimit, RedisLink

    limit = ClusterLimit(RedisLink(Redis(url="redis://127.0.0.1:9/0")), 1, 1e9, 1.0, 10**9, True)
    lease = limit._lease(42)
    lease.tokens = 10**12
    lease.expires = time.monotonic() + 3600
    benchmark(limit.take, 42, 1)
