"""Router: Gateway API HTTPRoute host + path matching, checked table-driven and against a reference."""

import random
from dataclasses import dataclass

import pytest
from fastgw._core import Router
from support.core_testing import bench_match, bench_match_request


@dataclass
class Route:
    hosts: list[str] | None = None
    path_exact: str | None = None
    path_prefix: str | None = None
    payload: object = None


def E(path, payload, hosts=None):
    return Route(hosts=hosts, path_exact=path, payload=payload)


def P(path, payload, hosts=None):
    return Route(hosts=hosts, path_prefix=path, payload=payload)


# ---------------------------------------------------------------- reference implementation (slow)


def _prefix_matches(prefix: str, path: str) -> bool:
    if prefix.endswith("/"):
        prefix = prefix[:-1]
    if prefix == "":
        return True
    return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")


def _best_by_path(routes, path):
    exact = [r for r in routes if r.path_exact is not None and r.path_exact == path]
    if exact:
        return exact[0]
    best, best_len = None, -1
    for r in routes:
        if r.path_exact is not None:
            continue
        prefix = r.path_prefix if r.path_prefix is not None else "/"
        if _prefix_matches(prefix, path):
            n = len(prefix[:-1] if prefix.endswith("/") else prefix)
            if n > best_len:
                best, best_len = r, n
    return best


class Reference:
    """Obviously-correct, slow router: host tiers, then exact / longest prefix / route order."""

    def __init__(self, routes):
        self.host_specific = {}  # pattern -> routes, in route order
        self.anyhost = []
        for r in routes:
            hs = sorted({h.lower() for h in r.hosts or []} - {"*"})
            if not hs:
                self.anyhost.append(r)
            for h in hs:
                self.host_specific.setdefault(h, []).append(r)
        self.wild = sorted((p for p in self.host_specific if p.startswith("*.")), key=len, reverse=True)

    def match(self, host: str, path: str):
        tiers = []
        if host in self.host_specific:
            tiers.append(self.host_specific[host])
        for p in self.wild:
            if host.endswith(p[1:]) and len(host) > len(p) - 1:
                tiers.append(self.host_specific[p])
        tiers.append(self.anyhost)
        for tier in tiers:
            r = _best_by_path(tier, path)
            if r is not None:
                return r.payload
        return None


def reference_match(routes, host: str, path: str):
    return Reference(routes).match(host, path)


# ---------------------------------------------------------------- table-driven cases

PATH_ROUTES = [
    P("/abc", "prefix-abc"),
    E("/abc", "exact-abc"),
    P("/abc/def/", "prefix-abc-def"),
    E("/Case", "exact-Case"),
    P("/", "root"),
    P("/tie", "tie-first"),
    P("/tie/", "tie-second"),
    E("/x/y", "exact-xy-first"),
    E("/x/y", "exact-xy-second"),
]

PATH_CASES = [
    ("/abc", "exact-abc"),  # exact beats prefix
    ("/abc/", "prefix-abc"),  # exact is byte-exact; prefix takes it
    ("/abcd", "root"),  # segment boundary
    ("/abc/d", "prefix-abc"),
    ("/abc/def", "prefix-abc-def"),  # trailing slash in prefix ignored
    ("/abc/def/", "prefix-abc-def"),
    ("/abc/def/g", "prefix-abc-def"),  # longest prefix
    ("/abc/defg", "prefix-abc"),
    ("/Case", "exact-Case"),
    ("/case", "root"),  # exact is case-sensitive
    ("/CASE", "root"),
    ("/ABC", "root"),
    ("/tie/1", "tie-first"),  # equal prefixes: earlier route
    ("/x/y", "exact-xy-first"),
    ("/", "root"),
    ("", "root"),
    ("*", "root"),  # prefix '/' matches everything
    ("//abc", "root"),
    ("/abc//x", "prefix-abc"),
]


@pytest.mark.parametrize(("path", "want"), PATH_CASES)
def test_paths(path, want):
    r = Router(PATH_ROUTES)
    assert r.lookup(b"", path.encode()) == want
    assert reference_match(PATH_ROUTES, "", path) == want


def test_no_root_no_match():
    r = Router([P("/abc", 1), E("/x", 2)])
    assert r.lookup(b"", b"/abcd") is None
    assert r.lookup(b"", b"/") is None
    assert r.lookup(b"", b"") is None
    assert r.lookup(b"any.host", b"/x/") is None
    assert r.lookup(b"any.host", b"/x") == 2


def test_empty_router():
    r = Router([])
    assert r.lookup(b"", b"/") is None
    assert r.lookup(b"a.b", b"/x") is None
    assert len(r) == 0


def test_default_path_is_root_prefix():
    r = Router([Route(payload="all")])
    assert r.lookup(b"h", b"/anything/at/all") == "all"
    assert r.lookup(b"", b"/") == "all"


HOST_ROUTES = [
    P("/", "api-root", hosts=["api.example.com"]),
    E("/only-exact", "api-only-exact", hosts=["API.Example.com"]),  # lowercased at build
    P("/w", "wild", hosts=["*.example.com"]),
    P("/", "wild-b-root", hosts=["*.b.example.com"]),
    P("/deep", "wild-b-deep", hosts=["*.b.example.com"]),
    P("/fallback", "anyhost-fallback"),
    P("/", "anyhost-root"),
    P("/multi", "multi", hosts=["one.test", "two.test", "*.three.test"]),
    P("/star", "star", hosts=["*"]),  # '*' alone: any host
]

HOST_CASES = [
    ("api.example.com", "/x", "api-root"),
    ("api.example.com", "/only-exact", "api-only-exact"),
    ("api.example.com", "/fallback", "api-root"),  # host-specific beats host-less even with shorter prefix
    ("api.example.com", "/w", "api-root"),  # exact host beats wildcard
    ("x.example.com", "/w/1", "wild"),
    ("x.example.com", "/y", "anyhost-root"),  # wildcard has no matching path: fall back
    ("x.example.com", "/fallback", "anyhost-fallback"),
    ("example.com", "/w", "anyhost-root"),  # wildcard does not match the apex
    ("a.b.example.com", "/w", "wild-b-root"),  # longest wildcard suffix wins
    ("a.b.example.com", "/deep/1", "wild-b-deep"),
    ("c.a.b.example.com", "/deep", "wild-b-deep"),
    ("b.example.com", "/w", "wild"),  # '*.b.example.com' needs a label before 'b.'
    ("b.example.com", "/", "anyhost-root"),
    ("xexample.com", "/w", "anyhost-root"),  # suffix must start at a label boundary
    (".example.com", "/w", "anyhost-root"),  # empty first label
    ("", "/w", "anyhost-root"),  # empty host: only host-less routes
    ("", "/fallback", "anyhost-fallback"),
    ("one.test", "/multi/x", "multi"),
    ("two.test", "/multi", "multi"),
    ("q.three.test", "/multi", "multi"),
    ("three.test", "/multi", "anyhost-root"),
    ("whatever", "/star/1", "star"),
    ("api.example.com", "/star", "api-root"),
    ("api.example.com.evil", "/w", "anyhost-root"),
    ("com", "/w", "anyhost-root"),
]


@pytest.mark.parametrize(("host", "path", "want"), HOST_CASES)
def test_hosts(host, path, want):
    r = Router(HOST_ROUTES)
    assert r.lookup(host.encode(), path.encode()) == want
    assert reference_match(HOST_ROUTES, host, path) == want


def test_host_specific_no_match_and_no_hostless():
    r = Router([P("/a", 1, hosts=["h.test"]), P("/b", 2, hosts=["*.test"])])
    assert r.lookup(b"h.test", b"/a") == 1
    assert r.lookup(b"h.test", b"/b") == 2  # falls back to the wildcard
    assert r.lookup(b"h.test", b"/c") is None
    assert r.lookup(b"", b"/a") is None
    assert r.lookup(b"other", b"/a") is None


def test_payload_identity_and_index():
    obj = object()
    routes = [P("/a", "x"), P("/a", obj, hosts=["h"])]
    r = Router(routes)
    assert r.lookup(b"h", b"/a/b") is obj
    assert r.lookup_index(b"h", b"/a/b") == 1
    assert r.lookup_index(b"", b"/a/b") == 0
    assert r.lookup_index(b"", b"/zzz") == -1


def test_bytes_specs_accepted():
    r = Router([Route(hosts=[b"H.test"], path_prefix=b"/p/", payload=1)])
    assert r.lookup(b"h.test", b"/p/q") == 1


@pytest.mark.parametrize(
    "route",
    [
        Route(path_exact="/a", path_prefix="/a", payload=1),
        Route(path_exact="a", payload=1),
        Route(path_prefix="a", payload=1),
        Route(hosts=["a.*.com"], payload=1),
        Route(hosts=["*."], payload=1),
        Route(hosts=[""], payload=1),
        Route(hosts=["**.a.com"], payload=1),
    ],
)
def test_invalid_routes(route):
    with pytest.raises(ValueError):
        Router([route])


def test_bench_helper():
    r = Router([P("/a", "x")])
    assert bench_match(r, b"", b"/a/b", 100) == "x"


def test_long_and_hostile_inputs():
    r = Router([P("/a", 1), E("/a/b", 2), P("/", 3, hosts=["*.x.test"]), P("/", 4, hosts=["h.test"])])
    long_path = b"/a" + b"/" * 100_000
    assert r.lookup(b"", long_path) == 1
    assert r.lookup(b"", b"/b" + b"/" * 100_000) is None
    assert r.lookup(b"." * 10_000 + b"a.x.test", b"/") == 3
    assert r.lookup(b"q" * 10_000 + b".h.test", b"/a") == 1
    assert r.lookup(b"q" * 10_000, b"/a/b") == 2
    assert r.lookup(b"\x00\xff", b"/a\x00") is None
    assert r.lookup(b"", b"/a/\x00") == 1


# ---------------------------------------------------------------- 10,000 generated routes

OWNERS = [f"owner{i}" for i in range(40)] + ["torvalds", "python", "cython", "nginx", "kubernetes"]
REPOS = ["linux", "cpython", "cython", "nginx", "gateway-api", "uvloop", "httptools", "app", "web"]
RESOURCES = [
    "issues", "pulls", "commits", "branches", "releases", "actions/runs", "actions/workflows",
    "contents", "git/refs", "hooks", "collaborators", "labels", "milestones", "tags",
]  # fmt: skip
HOSTS = [None, None, ["api.github.com"], ["uploads.github.com"], ["*.github.com"], ["*.ghe.example.com"],
         ["a.ghe.example.com", "b.ghe.example.com"], ["*.eu.ghe.example.com"]]  # fmt: skip


def generate_routes(n, seed=1):
    rnd = random.Random(seed)
    routes = []
    seen = set()
    while len(routes) < n:
        owner, repo, res = rnd.choice(OWNERS), rnd.choice(REPOS), rnd.choice(RESOURCES)
        shape = rnd.random()
        if shape < 0.35:
            path = f"/repos/{owner}/{repo}/{res}"
        elif shape < 0.5:
            path = f"/repos/{owner}/{repo}"
        elif shape < 0.6:
            path = f"/users/{owner}/repos"
        elif shape < 0.7:
            path = f"/orgs/{owner}/{rnd.choice(['members', 'teams', 'repos', 'hooks'])}"
        elif shape < 0.8:
            path = f"/repos/{owner}/{repo}/{res}/{rnd.randint(1, 50)}"
        elif shape < 0.9:
            path = f"/v{rnd.randint(1, 3)}/{rnd.choice(REPOS)}/{rnd.choice(RESOURCES)}"
        else:
            path = f"/{rnd.choice(['search', 'gists', 'rate_limit', 'meta', 'emojis'])}"
        if rnd.random() < 0.1:
            path += "/"
        hosts = rnd.choice(HOSTS)
        exact = rnd.random() < 0.4
        key = (tuple(hosts or ()), exact, path)
        if key in seen and rnd.random() < 0.8:  # keep some duplicates to exercise ties
            continue
        seen.add(key)
        i = len(routes)
        routes.append(E(path, i, hosts) if exact else P(path, i, hosts))
    if n >= 100:
        routes.append(P("/", "catch-all"))
    return routes


def generate_lookups(routes, n, seed=2):
    rnd = random.Random(seed)
    hosts = ["", "api.github.com", "uploads.github.com", "x.github.com", "a.b.github.com", "github.com",
             "a.ghe.example.com", "b.ghe.example.com", "c.ghe.example.com", "x.eu.ghe.example.com",
             "eu.ghe.example.com", "other.test", "ghe.example.com"]  # fmt: skip
    out = []
    for _ in range(n):
        r = rnd.choice(routes)
        path = r.path_exact if r.path_exact is not None else (r.path_prefix or "/")
        m = rnd.random()
        if m < 0.2:
            path += f"/{rnd.randint(1, 99)}"
        elif m < 0.3:
            path += "x"
        elif m < 0.4:
            path = path.rstrip("/") + "/"
        elif m < 0.5:
            path = path.rstrip("/")
        elif m < 0.55:
            path = path.upper()
        elif m < 0.65:
            path = path[: rnd.randint(0, len(path))]
        elif m < 0.7:
            path += "/comments/7?x"
        if r.hosts and rnd.random() < 0.5:
            h = rnd.choice(r.hosts)
            host = h.replace("*", rnd.choice(["q", "q.r"]))
        else:
            host = rnd.choice(hosts)
        out.append((host, path))
    return out


@pytest.mark.parametrize("n_routes", [10, 1_000, 10_000])
def test_generated_routes_agree_with_reference(n_routes):
    routes = generate_routes(n_routes, seed=n_routes)
    router = Router(routes)
    ref = Reference(routes)
    lookups = generate_lookups(routes, 1_500 if n_routes >= 10_000 else 3_000, seed=n_routes + 1)
    matched = 0
    for host, path in lookups:
        want = ref.match(host, path)
        got = router.lookup(host.encode(), path.encode())
        assert got == want, (host, path)
        matched += want not in (None, "catch-all")
    assert matched > len(lookups) // 4  # the lookups exercise real routes, not just the catch-all


def test_build_10k_routes_under_a_second():
    import time

    routes = generate_routes(10_000)
    t0 = time.perf_counter()
    Router(routes)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("seed", range(30))
def test_small_alphabet_exhaustive(seed):
    """Dense edge cases: short paths sharing prefixes, hosts sharing suffixes, duplicates."""
    rnd = random.Random(seed)
    paths = ["/", "/a", "/a/", "/ab", "/a/b", "/a/b/", "/a//b", "/b", "//", "/a/bc", "/A"]
    hosts = [None, ["x.t"], ["*.t"], ["*.x.t"], ["y.x.t", "*.t"], ["*"], ["X.T"]]
    routes = []
    for i in range(rnd.randint(1, 12)):
        maker = E if rnd.random() < 0.4 else P
        routes.append(maker(rnd.choice(paths), i, rnd.choice(hosts)))
    router = Router(routes)
    ref = Reference(routes)
    probe_paths = paths + ["", "/abc", "/a/b/c", "/a/bc/d", "a", "/b/", "/a//", "///"]
    for host in ["", "x.t", "y.x.t", "z.y.x.t", "t", ".t", "q.t", "xt"]:
        for path in probe_paths:
            assert router.lookup(host.encode(), path.encode()) == ref.match(host, path), (host, path)


@pytest.mark.parametrize("seed", range(10))
def test_every_boundary_offset(seed):
    """Prefix and exact keys ending at every byte offset (the path hash works 8 bytes at a time)."""
    rnd = random.Random(seed)
    segs = ["".join(rnd.choice("ab/") for _ in range(rnd.randint(0, 9))) for _ in range(12)]
    deep = "/" + "/".join(segs)
    cuts = sorted({rnd.randint(1, len(deep)) for _ in range(15)})
    routes = [(E if rnd.random() < 0.3 else P)(deep[:c], i) for i, c in enumerate(cuts)]
    router, ref = Router(routes), Reference(routes)
    for end in range(len(deep) + 1):
        for path in (deep[:end], deep[:end] + "/", deep[:end] + "a"):
            assert router.lookup(b"", path.encode()) == ref.match("", path), path


def test_match_and_match_request_agree_on_plain_routes():
    """Plain host+path specs: match() (no head) and match_request() (via lookup) pick the same spec,
    whatever the method, headers and query."""
    routes = generate_routes(1_000, seed=5)
    router = Router(routes)
    for host, path in generate_lookups(routes, 1_000, seed=6):
        hb, pb = host.encode(), path.encode()
        want = bench_match(router, hb, pb, 1)
        assert router.lookup(hb, pb, b"DELETE", [(b"x-any", b"1")], b"a=1") == want
        assert bench_match_request(router, hb, pb, b"GET", [], b"", 1) == want
