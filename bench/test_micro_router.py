"""Micro-benchmarks: Router.match / Router.match_request and SmoothWeightedRR.pick.

Run: .venv/bin/python -m pytest bench/test_micro_router.py --benchmark-columns=mean,median,ops -q

`lookup` includes the Python call (argument parsing, bytes -> char*); the `c_loop` variants call the
cdef `match` / `match_request` N times from C, so `extra_info["ns_per_op"]` is the per-match cost the
proxy pays.
"""

import os
import random
from dataclasses import dataclass

import pytest
from fastgw._core import Router, SmoothWeightedRR

from fastgw import _core

# The bench entry points (fastgw/_cy/testing.pyx) are in a core built with FASTGW_TESTING=1, as `make build`
# does; a wheel's core has none. Without them these benchmarks skip, except under CI (env CI set).
needs_entry_points = pytest.mark.skipif(
    not hasattr(_core, "bench_match") and not os.environ.get("CI"),
    reason="fastgw._core was built without FASTGW_TESTING=1 (no test and bench entry points)")

C_LOOP_N = 10_000


@dataclass
class Route:
    hosts: list[str] | None = None
    path_exact: str | None = None
    path_prefix: str | None = None
    payload: object = None
    path_template: str | None = None
    path_regex: str | None = None
    methods: list | None = None
    headers: list | None = None
    query: list | None = None


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
@needs_entry_points
def test_match_c_loop(benchmark, n_routes, probe):
    r, ps = router(n_routes)
    _, host, path = ps[probe]
    benchmark.group = f"match x{C_LOOP_N} (C loop) {ps[probe][0]}"
    benchmark(_core.bench_match, r, host, path, C_LOOP_N)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["ns_per_op"] = benchmark.stats.stats.median / C_LOOP_N * 1e9


def test_build_10k(benchmark):
    routes = make_routes(10_000)
    benchmark.group = "build"
    benchmark.pedantic(Router, args=(routes,), rounds=10, iterations=1)
    assert not benchmark.stats or benchmark.stats.stats.median < 1.0


# ---------------------------------------------------------------- conditions (match_request)

API_VERSIONS = ["2022-11-28", "2026-03-10"]
GH_TEMPLATES = [
    "/repos/{owner}/{repo}/contents/{path...}",
    "/repos/{owner}/{repo}",
    "/repos/{owner}/{repo}/issues",
    "/repos/{owner}/{repo}/issues/{issue_number}",
    "/repos/{owner}/{repo}/issues/{issue_number}/comments",
    "/repos/{owner}/{repo}/pulls/{pull_number}",
    "/repos/{owner}/{repo}/pulls/{pull_number}/files",
    "/repos/{owner}/{repo}/actions/runs/{run_id}",
    "/repos/{owner}/{repo}/git/refs/{ref...}",
    "/users/{username}/repos",
    "/orgs/{org}/members/{username}",
    "/gists/{gist_id}",
]
# a browser-ish / SDK-ish request head: the version header is not the first field
REQ_HEADERS = [
    (b"Host", b"api.example.com"),
    (b"User-Agent", b"octokit-rest.js/20.0.2 octokit-core.js/5.0.1 Node.js/20"),
    (b"Accept", b"application/vnd.github+json"),
    (b"Authorization", b"Bearer ghp_0123456789abcdef0123456789abcdef0123"),
    (b"Accept-Encoding", b"gzip, deflate, br"),
    (b"X-Request-Id", b"7f9c2ba4e88f827d616045507605853e"),
    (b"X-GitHub-Api-Version", API_VERSIONS[1].encode()),
]


def make_conditioned_routes(n, seed=11):
    """GitHub-REST-like table where each concrete path comes in versions: one spec per
    X-GitHub-Api-Version value (some also per method), plus an unconditioned fallback; a dozen
    GitHub templates (with the version header) per host; a catch-all."""
    rnd = random.Random(seed)
    routes, seen = [], set()
    for t in GH_TEMPLATES[: max(1, min(len(GH_TEMPLATES), n // 50))]:
        for v in API_VERSIONS:
            routes.append(Route(path_template=t, headers=[("X-GitHub-Api-Version", "exact", v)],
                                payload=f"tpl {t} {v}"))
    forced = [(None, False, "/repos/org0/api/commits"), (None, True, "/repos/org1/web/pulls")]
    while len(routes) < n:
        owner, repo, res = rnd.choice(OWNERS), rnd.choice(REPOS), rnd.choice(RESOURCES)
        path = f"/repos/{owner}/{repo}/{res}" if rnd.random() < 0.7 else f"/repos/{owner}/{repo}"
        hosts = rnd.choice(HOSTS)
        exact = rnd.random() < 0.3
        key = (tuple(hosts or ()), exact, path)
        if key in seen:
            continue
        seen.add(key)
        pe, pp = (path, None) if exact else (None, path)
        methods = ["POST"] if rnd.random() < 0.2 else None
        if forced:
            hosts, exact, path = forced.pop()
            methods = None
        for v in API_VERSIONS:
            routes.append(Route(hosts, pe, pp, len(routes), methods=methods,
                                headers=[("X-GitHub-Api-Version", "exact", v)]))
        routes.append(Route(hosts, pe, pp, len(routes)))
    routes.append(Route(payload="catch-all"))
    return routes


def conditioned_probes(routes):
    """(name, host, path, method, headers, query) -> expected winner kind."""
    prefix = next(r for r in reversed(routes) if r.path_prefix and r.headers and not r.hosts
                  and not r.methods and r.path_prefix.count("/") >= 4
                  and not any(x in r.path_prefix for x in ("/contents", "/git/", "/issues", "/pulls")))
    exact = next(r for r in reversed(routes) if r.path_exact and r.headers and not r.hosts and not r.methods)
    return [
        # second version spec wins: the first one's header condition is evaluated and fails
        ("hdr-prefix", b"api.example.com", (prefix.path_prefix + "/12345/x").encode(), b"GET", REQ_HEADERS),
        ("hdr-exact", b"", exact.path_exact.encode(), b"GET", REQ_HEADERS),
        # no version header: both version specs fail, the unconditioned spec wins
        ("no-hdr-exact", b"", exact.path_exact.encode(), b"GET", REQ_HEADERS[:-1]),
        # nothing concrete: the templates are scanned
        ("template", b"", b"/repos/nobody/nothing/contents/src/lib/main.c", b"GET", REQ_HEADERS),
    ]


CROUTERS = {}


def crouter(n):
    if n not in CROUTERS:
        routes = make_conditioned_routes(n)
        CROUTERS[n] = (Router(routes), conditioned_probes(routes))
    return CROUTERS[n]


@pytest.mark.parametrize("n_routes", [10, 1_000, 10_000])
@pytest.mark.parametrize("probe", [0, 1, 2, 3], ids=["hdr-prefix", "hdr-exact", "no-hdr-exact", "template"])
@needs_entry_points
def test_match_request_c_loop(benchmark, n_routes, probe):
    r, ps = crouter(n_routes)
    name, host, path, method, headers = ps[probe]
    got = r.lookup(host, path, method, headers)
    assert got is not None and got != "catch-all"
    assert str(got).startswith("tpl ") == (name == "template")
    benchmark.group = f"match_request x{C_LOOP_N} (C loop) {name}"
    benchmark(_core.bench_match_request, r, host, path, method, headers, b"", C_LOOP_N)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["ns_per_op"] = benchmark.stats.stats.median / C_LOOP_N * 1e9


@pytest.mark.parametrize("probe", [0, 1], ids=["prefix-deep", "exact"])
@needs_entry_points
def test_match_request_plain_routes_c_loop(benchmark, probe):
    """match_request on the plain 10,000-route table: the cost of going through the head."""
    r, ps = router(10_000)
    _, host, path = ps[probe]
    benchmark.group = f"match_request x{C_LOOP_N} (C loop) plain {ps[probe][0]}"
    benchmark(_core.bench_match_request, r, host, path, b"GET", REQ_HEADERS, b"", C_LOOP_N)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["ns_per_op"] = benchmark.stats.stats.median / C_LOOP_N * 1e9


def test_build_10k_conditioned(benchmark):
    routes = make_conditioned_routes(10_000)
    benchmark.group = "build"
    benchmark.pedantic(Router, args=(routes,), rounds=5, iterations=1)
    assert not benchmark.stats or benchmark.stats.stats.median < 1.0


def test_balancer_next_index(benchmark):
    b = SmoothWeightedRR([5, 1, 1, 3])
    benchmark.group = "balancer"
    benchmark(b.next_index)


@pytest.mark.parametrize("n_targets", [4, 32])
@needs_entry_points
def test_balancer_pick_c_loop(benchmark, n_targets):
    b = SmoothWeightedRR([1 + i % 5 for i in range(n_targets)])
    benchmark.group = "balancer"
    benchmark(_core.bench_pick, b, C_LOOP_N)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["ns_per_op"] = benchmark.stats.stats.median / C_LOOP_N * 1e9
