"""Micro-benchmarks: Router.match and SmoothWeightedRR.pick.

Run: .venv/bin/python -m pytest bench/test_micro_router.py --benchmark-columns=mean,median,ops -q

`lookup` includes the Python call (argument parsing, bytes -> char*); the `c_loop` variants call the
cdef `match` N times from C, so `extra_info["ns_per_op"]` is the per-match cost the proxy pays.
"""

import random
from dataclasses import dataclass

import pytest
from fastgw._core import Router, SmoothWeightedRR

C_LOOP_N = 10_000


@dataclass
class Route:
    hosts: list[str] | None = None
    path_exact: str | None = None
    path_prefix: str | None = None
    payload: object = None


OWNERS = [f"org{i}" for i in range(200)]
REPOS = ["api", "web", "cli", "docs", "infra", "sdk-go", "sdk-py", "mobile", "gateway", "billing"]
RESOURCES = ["issues", "pulls", "commits", "branches", "releases", "actions/runs", "contents", "hooks"]
HOSTS = [
    None,
    None,
    None,
    ["api.example.com"],
    ["*.example.com"],
    ["uploads.example.com"],
    ["*.eu.example.com"],
]


def make_routes(n, seed=7):
    """GitHub-REST-like table: /repos/{owner}/{repo}/{resource} expanded with concrete names."""
    rnd = random.Random(seed)
    routes, seen = [], set()
    while len(routes) < n:
        owner, repo, res = rnd.choice(OWNERS), rnd.choice(REPOS), rnd.choice(RESOURCES)
        shape = rnd.random()
        if shape < 0.6:
            path = f"/repos/{owner}/{repo}/{res}"
        elif shape < 0.8:
            path = f"/repos/{owner}/{repo}"
        else:
            path = f"/orgs/{owner}/{rnd.choice(['members', 'teams', 'repos'])}"
        hosts = rnd.choice(HOSTS)
        exact = rnd.random() < 0.3
        key = (tuple(hosts or ()), exact, path)
        if key in seen:
            continue
        seen.add(key)
        i = len(routes)
        routes.append(Route(hosts, path if exact else None, None if exact else path, i))
    routes.append(Route(payload="catch-all"))
    return routes


def probes(routes):
    """(name, host, path): a prefix hit under a deep path, an exact hit, and a host fallback."""
    prefix = next(r for r in reversed(routes) if r.path_prefix and r.path_prefix.count("/") >= 4)
    exact = next(r for r in reversed(routes) if r.path_exact and not r.hosts)
    return [
        ("prefix-deep", b"api.example.com", (prefix.path_prefix + "/12345/comments/678").encode()),
        ("exact", b"", exact.path_exact.encode()),
        ("wild-fallback", b"a.eu.example.com", b"/repos/nobody/nothing/issues/1"),
    ]


ROUTERS = {}


def router(n):
    if n not in ROUTERS:
        routes = make_routes(n)
        ROUTERS[n] = (Router(routes), probes(routes))
    return ROUTERS[n]


@pytest.mark.parametrize("n_routes", [10, 1_000, 10_000])
@pytest.mark.parametrize("probe", [0, 1, 2], ids=["prefix-deep", "exact", "wild-fallback"])
def test_lookup(benchmark, n_routes, probe):
    r, ps = router(n_routes)
    _, host, path = ps[probe]
    assert r.lookup(host, path) is not None
    benchmark.group = f"lookup (python call) {ps[probe][0]}"
    benchmark(r.lookup, host, path)


@pytest.mark.parametrize("n_routes", [10, 1_000, 10_000])
@pytest.mark.parametrize("probe", [0, 1, 2], ids=["prefix-deep", "exact", "wild-fallback"])
def test_match_c_loop(benchmark, n_routes, probe):
    r, ps = router(n_routes)
    _, host, path = ps[probe]
    benchmark.group = f"match x{C_LOOP_N} (C loop) {ps[probe][0]}"
    benchmark(r._bench_match, host, path, C_LOOP_N)
    benchmark.extra_info["ns_per_op"] = benchmark.stats.stats.median / C_LOOP_N * 1e9


def test_build_10k(benchmark):
    routes = make_routes(10_000)
    benchmark.group = "build"
    benchmark.pedantic(Router, args=(routes,), rounds=10, iterations=1)
    assert benchmark.stats.stats.median < 1.0


def test_balancer_next_index(benchmark):
    b = SmoothWeightedRR([5, 1, 1, 3])
    benchmark.group = "balancer"
    benchmark(b.next_index)


@pytest.mark.parametrize("n_targets", [4, 32])
def test_balancer_pick_c_loop(benchmark, n_targets):
    b = SmoothWeightedRR([1 + i % 5 for i in range(n_targets)])
    benchmark.group = "balancer"
    benchmark(b._bench_pick, C_LOOP_N)
    benchmark.extra_info["ns_per_op"] = benchmark.stats.stats.median / C_LOOP_N * 1e9
