"""Router: Gateway API HTTPRoute conditions and precedence (apis/v1/httproute_types.go, comments on
HTTPRouteRule.Matches and HTTPRouteMatch), table-driven and against a slow reference.

Precedence among the specs that match a request: hostname tier (exact host, wildcards longest first,
host-less), then path (Exact > template by literal characters > regex by pattern length > PathPrefix
by characters), method present, #headers, #query params, `order`, spec index.
"""

import random
import re
from dataclasses import dataclass

import pytest
from fastgw._core import Router
from support.core_testing import bench_match, bench_match_request, route_raw_head


@dataclass
class Spec:
    hosts: list | None = None
    path_exact: str | None = None
    path_prefix: str | None = None
    path_template: str | None = None
    path_regex: str | None = None
    methods: list | None = None
    headers: list | None = None
    query: list | None = None
    order: int | None = None
    payload: object = None


def S(payload, **kw):
    return Spec(payload=payload, **kw)


def b(s):
    return s.encode() if isinstance(s, str) else s


# ---------------------------------------------------------------- reference implementation (slow)


def _ref_path(s, path):
    """(matched, rank, score): rank 0 exact, 1 template, 2 regex, 3 prefix; score: more is better."""
    if s.path_exact is not None:
        return path == b(s.path_exact), 0, len(s.path_exact)
    if s.path_template is not None:
        rx, lit = b"", 0
        for part in re.split(r"(\{[^}]*\})", s.path_template):
            if part.startswith("{"):
                rx += b"(.+)" if part.endswith("...}") else b"([^/]+)"
            else:
                rx += re.escape(b(part))
                lit += len(part)
        return re.fullmatch(rx, path, re.S) is not None, 1, lit
    if s.path_regex is not None:
        return re.fullmatch(b(s.path_regex), path) is not None, 2, len(s.path_regex)
    prefix = b(s.path_prefix if s.path_prefix is not None else "/")
    if prefix.endswith(b"/"):
        prefix = prefix[:-1]
    ok = prefix == b"" or (path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == 47))
    return ok, 3, len(prefix)


def _first_per_name(items, fold):
    out, seen = [], set()
    for item in items or ():
        name, kind, value = item if len(item) == 3 else (item[0], "exact", item[1])
        kind = {"regularexpression": "regex"}.get(kind.lower(), kind.lower())
        key = b(name).lower() if fold else b(name)
        if key not in seen:
            seen.add(key)
            out.append((key, kind, value))
    return out


def _value_ok(kind, want, got):
    if got is None:
        return False
    if kind == "present":
        return True
    if kind == "exact":
        return got == b(want)
    return re.fullmatch(b(want), got) is not None


def _ref_conds(s, method, headers, query):
    if s.methods and method not in [b(m) for m in s.methods]:
        return False
    for name, kind, value in _first_per_name(s.headers, True):
        vals = [v for n, v in headers if n.lower() == name]
        if not _value_ok(kind, value, b",".join(vals) if vals else None):
            return False
    params = []
    for part in query.split(b"&") if query else []:
        n, eq, v = part.partition(b"=")
        params.append((n, v))
    for name, kind, value in _first_per_name(s.query, False):
        got = next((v for n, v in params if n == name), None)
        if not _value_ok(kind, value, got):
            return False
    return True


def _ref_key(i, s):
    return (
        -bool(s.methods),
        -len(_first_per_name(s.headers, True)),
        -len(_first_per_name(s.query, False)),
        s.order if s.order is not None else i,
        i,
    )


class Reference:
    """Obviously-correct, slow: host tiers; in a tier, the minimum precedence key among matches."""

    def __init__(self, specs):
        self.specs = specs

    def tiers(self, host):
        exact, wild, anyhost = [], {}, []
        for i, s in enumerate(self.specs):
            hs = {h.lower() for h in s.hosts or []}
            if not hs or "*" in hs:
                anyhost.append(i)
            if host and host in hs:
                exact.append(i)
            for h in hs:
                if h.startswith("*.") and host.endswith(h[1:]) and len(host) > len(h) - 1:
                    wild.setdefault(len(h), []).append(i)
        return [exact] + [wild[n] for n in sorted(wild, reverse=True)] + [anyhost]

    def match(self, host, path, method=b"GET", headers=(), query=b""):
        for tier in self.tiers(host):
            best = None
            for i in tier:
                s = self.specs[i]
                ok, rank, score = _ref_path(s, path)
                if ok and _ref_conds(s, method, headers, query):
                    key = (rank, -score) + _ref_key(i, s)
                    if best is None or key < best[0]:
                        best = (key, i)
            if best is not None:
                return best[1]
        return -1


def check(specs, host, path, method=b"GET", headers=(), query=b"", want=None):
    """Router, reference and explain() agree; returns the winning payload."""
    r = Router(specs)
    hb, pb, mb, qb = b(host), b(path), b(method), b(query)
    hs = [(b(n), b(v)) for n, v in headers]
    idx = r.lookup_index(hb, pb, mb, hs, qb)
    assert idx == Reference(specs).match(host, pb, mb, hs, qb)
    ex = r.explain(hb, pb, mb, hs, qb)
    winners = [e[0] for e in ex if e[1]]
    assert (winners[0] if winners else -1) == idx
    got = r.lookup(hb, pb, mb, hs, qb)
    assert got == (specs[idx].payload if idx >= 0 else None)
    if want is not None:
        assert got == want
    return got


# ---------------------------------------------------------------- precedence, rule by rule

CASES = [
    # 1. hostname: exact beats wildcard, longer wildcard beats shorter, host-less last
    ("host-exact-beats-wild",
     [S("wild", hosts=["*.example.com"], path_exact="/a", headers=[("x", "exact", "1")]),
      S("exact", hosts=["api.example.com"], path_prefix="/")],
     dict(host="api.example.com", path="/a", headers=[("x", "1")]), "exact"),
    ("host-longer-wild",
     [S("short", hosts=["*.com"], path_exact="/a"), S("long", hosts=["*.example.com"])],
     dict(host="a.example.com", path="/a"), "long"),
    ("host-hostless-last",
     [S("any", path_exact="/a", methods=["GET"]), S("wild", hosts=["*.example.com"])],
     dict(host="a.example.com", path="/a"), "wild"),
    ("host-fallback-when-conditions-fail",
     [S("exact-host", hosts=["h.test"], headers=[("x", "exact", "1")]), S("any")],
     dict(host="h.test", path="/", headers=[("x", "2")]), "any"),
    # 2. path: exact > template > regex > prefix
    ("exact-beats-template",
     [S("tpl", path_template="/users/{id}", methods=["GET"]), S("exact", path_exact="/users/me")],
     dict(path="/users/me"), "exact"),
    ("template-beats-regex",
     [S("re", path_regex="/users/[a-z]+/.*/and/a/long/tail.*"), S("tpl", path_template="/users/{id}/{x...}")],
     dict(path="/users/me/x/and/a/long/tail"), "tpl"),
    ("regex-beats-prefix",
     [S("prefix", path_prefix="/users/me/and/a/very/long/prefix"), S("re", path_regex="/users/.*")],
     dict(path="/users/me/and/a/very/long/prefix"), "re"),
    ("template-more-literal-chars",
     [S("fewer", path_template="/{a}/{b}/repos"), S("more", path_template="/users/{b}/repos")],
     dict(path="/users/x/repos"), "more"),
    ("regex-longer-pattern",
     [S("short", path_regex="/a.*"), S("long", path_regex="/a/(b|c)/.*")],
     dict(path="/a/b/c"), "long"),
    ("prefix-longest",
     [S("short", path_prefix="/a", methods=["GET"], headers=[("x", "present", "")]),
      S("long", path_prefix="/a/b")],
     dict(path="/a/b/c", headers=[("x", "1")]), "long"),
    # Gateway API conformance shapes
    ("headers-only-implicit-root-beats-nothing",
     [S("hdr", headers=[("version", "exact", "two")])],
     dict(path="/anything", headers=[("version", "two")]), "hdr"),
    ("headers-only-implicit-root-loses-to-longer-prefix",
     [S("hdr", headers=[("version", "exact", "two")]), S("prefix", path_prefix="/v2")],
     dict(path="/v2/x", headers=[("version", "two")]), "prefix"),
    ("get-does-not-match-head",
     [S("get", methods=["GET"]), S("fallback", path_prefix="/")],
     dict(path="/", method="HEAD"), "fallback"),
    # 3. method present beats none (ranks above headers, below path)
    ("method-beats-headers",
     [S("hdr", headers=[("a", "exact", "1"), ("b", "exact", "2")]), S("method", methods=["GET"])],
     dict(path="/", headers=[("a", "1"), ("b", "2")]), "method"),
    ("path-beats-method",
     [S("method", path_prefix="/a", methods=["GET"]), S("longer", path_prefix="/a/b")],
     dict(path="/a/b"), "longer"),
    # 4. more header matches
    ("more-headers",
     [S("one", headers=[("a", "exact", "1")], query=[("q", "exact", "1"), ("r", "present", "")]),
      S("two", headers=[("a", "exact", "1"), ("b", "present", "")])],
     dict(path="/", headers=[("a", "1"), ("b", "x")], query="q=1&r"), "two"),
    # 5. more query matches (ranks below headers)
    ("more-query",
     [S("one", query=[("q", "exact", "1")]), S("two", query=[("q", "exact", "1"), ("r", "present", "")])],
     dict(path="/", query="q=1&r=2"), "two"),
    ("headers-beat-query",
     [S("query", query=[("q", "exact", "1"), ("r", "present", "")]),
      S("header", headers=[("h", "present", "")])],
     dict(path="/", headers=[("h", "")], query="q=1&r"), "header"),
    # 6. order, then index
    ("order-lower-wins",
     [S("first", path_prefix="/a", order=5), S("second", path_prefix="/a/", order=2)],
     dict(path="/a/b"), "second"),
    ("order-in-patterns",
     [S("first", path_template="/a/{x}", order=9), S("second", path_template="/a/{y}", order=1)],
     dict(path="/a/b"), "second"),
    ("order-default-is-index",
     [S("first", path_exact="/a"), S("second", path_exact="/a")],
     dict(path="/a"), "first"),
    # matching: OR across specs, AND within one
    ("or-across-specs-1",
     [S("r", path_prefix="/foo", headers=[("version", "exact", "v2")]), S("r", path_prefix="/v2/foo"),
      S("other")],
     dict(path="/foo/x", headers=[("version", "v2")]), "r"),
    ("or-across-specs-2",
     [S("r", path_prefix="/foo", headers=[("version", "exact", "v2")]), S("r", path_prefix="/v2/foo"),
      S("other")],
     dict(path="/v2/foo"), "r"),
    ("and-within-spec",
     [S("r", path_prefix="/foo", headers=[("version", "exact", "v2")], methods=["POST"]), S("other")],
     dict(path="/foo", method="GET", headers=[("version", "v2")]), "other"),
]


@pytest.mark.parametrize(("specs", "req", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_precedence(specs, req, want):
    req = dict(req)
    check(specs, req.pop("host", ""), req.pop("path"), want=want, **req)


# ---------------------------------------------------------------- condition semantics

HDR = [
    S("exact", headers=[("X-Api-Version", "exact", "2022-11-28")]),
    S("regex", headers=[("x-multi", "regex", "a+,b+")]),
    S("present", headers=[("x-present", "present", "")]),
    S("joined", headers=[("x-rep", "exact", "a,b")]),
    S("fallback"),
]

HDR_CASES = [
    ([("x-api-version", "2022-11-28")], "exact"),  # header name case-insensitive
    ([("X-API-VERSION", "2022-11-28")], "exact"),
    ([("x-api-version", "2022-11-28X")], "fallback"),
    ([("x-api-version", "2022-11-2")], "fallback"),
    ([("x-api-version", "")], "fallback"),
    ([("x-multi", "aa,bbb")], "regex"),
    ([("x-multi", "aa"), ("X-Multi", "bb")], "regex"),  # repeated: joined with ','
    ([("x-multi", "xaa,bb")], "fallback"),  # regex is a fullmatch, not a search
    ([("x-multi", "aa,bbx")], "fallback"),
    ([("x-present", "")], "present"),
    ([("x-present", "anything")], "present"),
    ([("x-present-not", "1")], "fallback"),
    ([("x-rep", "a"), ("x-rep", "b")], "joined"),
    ([("x-rep", "a,b")], "joined"),
    ([("x-rep", "a"), ("x-rep", "b"), ("x-rep", "c")], "fallback"),
    ([("x-rep", "a")], "fallback"),
    ([("x-rep", "a"), ("x-other", "z"), ("x-rep", "b")], "joined"),
    ([], "fallback"),  # a missing header never matches
]


@pytest.mark.parametrize(("headers", "want"), HDR_CASES)
def test_header_conditions(headers, want):
    check(HDR, "", "/", headers=headers, want=want)


def test_header_value_case_sensitive():
    specs = [S("v", headers=[("x", "exact", "Value")]), S("fallback")]
    check(specs, "", "/", headers=[("x", "Value")], want="v")
    check(specs, "", "/", headers=[("x", "value")], want="fallback")
    check(specs, "", "/", headers=[("X", "VALUE")], want="fallback")


def test_header_repeated_name_in_spec_first_wins():
    specs = [S("v", headers=[("x", "exact", "1"), ("X", "exact", "2")]), S("fallback")]
    check(specs, "", "/", headers=[("x", "1")], want="v")
    check(specs, "", "/", headers=[("x", "2")], want="fallback")
    # the ignored duplicate does not count as a header match for precedence either
    specs = [S("one", headers=[("x", "present", "")]),
             S("dup", headers=[("x", "exact", "1"), ("X", "exact", "1")])]
    check(specs, "", "/", headers=[("x", "1")], want="one")


QRY = [
    S("exact", query=[("q", "exact", "1")]),
    S("regex", query=[("r", "regex", "[0-9]+")]),
    S("present", query=[("p", "present", "")]),
    S("empty", query=[("e", "exact", "")]),
    S("raw", query=[("n", "exact", "a%20b")]),
    S("fallback"),
]

QRY_CASES = [
    ("q=1", "exact"),
    ("q=1&q=2", "exact"),  # first value wins
    ("q=2&q=1", "fallback"),
    ("x=0&q=1", "exact"),
    ("Q=1", "fallback"),  # name is case-sensitive
    ("q=10", "fallback"),
    ("qq=1", "fallback"),
    ("r=123", "regex"),
    ("r=12a", "fallback"),  # fullmatch
    ("r=a12", "fallback"),
    ("p", "present"),
    ("p=", "present"),
    ("p=x&", "present"),
    ("e", "empty"),  # a name without '=' has the empty value
    ("e=", "empty"),
    ("e=1", "fallback"),
    ("n=a%20b", "raw"),  # raw, no percent-decoding
    ("n=a b", "fallback"),
    ("", "fallback"),
    ("&&", "fallback"),
    ("a=1&&q=1", "exact"),
    ("q", "fallback"),
]


@pytest.mark.parametrize(("query", "want"), QRY_CASES)
def test_query_conditions(query, want):
    check(QRY, "", "/", query=query, want=want)


def test_methods_exact_case_sensitive_any_of():
    specs = [S("rw", methods=["PUT", b"PATCH"]), S("fallback")]
    check(specs, "", "/", method="PUT", want="rw")
    check(specs, "", "/", method="PATCH", want="rw")
    check(specs, "", "/", method="PATC", want="fallback")
    check(specs, "", "/", method="put", want="fallback")
    check(specs, "", "/", method="GET", want="fallback")


def test_path_regex_fullmatch_not_search():
    specs = [S("re", path_regex=r"/v[0-9]+/items"), S("fallback")]
    check(specs, "", "/v12/items", want="re")
    check(specs, "", "/v12/items/x", want="fallback")
    check(specs, "", "/x/v12/items", want="fallback")
    check(specs, "", "/v12/items\n", want="fallback")


TPL = [
    S("id", path_template="/users/{id}"),
    S("repo", path_template="/users/{id}/repos/{name}"),
    S("files", path_template="/files/{path...}"),
    S("fallback"),
]

TPL_CASES = [
    ("/users/42", "id", {"id": b"42"}),
    ("/users/", "fallback", {}),  # {id} is not empty
    ("/users", "fallback", {}),
    ("/users/a/b", "fallback", {}),  # {id} does not match 'a/b'
    ("/users/42/", "fallback", {}),
    ("/users/42/repos/x", "repo", {"id": b"42", "name": b"x"}),
    ("/users/42/repos/", "fallback", {}),
    ("/users//repos/x", "fallback", {}),
    ("/files/a/b/c", "files", {"path": b"a/b/c"}),  # {path...} takes the rest, '/' included
    ("/files/a", "files", {"path": b"a"}),
    ("/files/a/", "files", {"path": b"a/"}),
    ("/files/", "fallback", {}),  # one or more characters
    ("/files", "fallback", {}),
    ("/filesx/a", "fallback", {}),
]


@pytest.mark.parametrize(("path", "want", "caps"), TPL_CASES)
def test_template_segments_and_captures(path, want, caps):
    check(TPL, "", path, want=want)
    assert Router(TPL).lookup_captures(b"", path.encode()) == caps


def test_captures_none_without_match_and_reset_after_other_winner():
    r = Router([S("t", path_template="/a/{x}", headers=[("h", "present", "")]), S("p", path_prefix="/a")])
    assert r.lookup_captures(b"", b"/a/1", headers=[(b"h", b"")]) == {"x": b"1"}
    assert r.lookup_captures(b"", b"/a/1") == {}  # template matched the path, failed a header
    assert Router([S("p", path_prefix="/a")]).lookup_captures(b"", b"/b") is None


@pytest.mark.parametrize(
    "template",
    ["users/{id}", "/users/{}", "/users/x{id}", "/users/{id}x", "/{rest...}/x", "/{a}/{a}", "/{a", "/a}",
     "/" + "/".join(f"{{c{i}}}" for i in range(17))],
)
def test_invalid_templates(template):
    with pytest.raises(ValueError):
        Router([S(1, path_template=template)])


@pytest.mark.parametrize(
    "spec",
    [
        S(1, path_regex="/(unclosed"),
        S(1, path_exact="/a", path_template="/a"),
        S(1, path_prefix="/a", path_regex="/a"),
        S(1, headers=[("x", "suffix", "1")]),
        S(1, headers=[("", "exact", "1")]),
        S(1, query=[("", "exact", "1")]),
        S(1, query=[("q", "regex", "(")]),
        S(1, methods=[""]),
    ],
)
def test_invalid_specs(spec):
    with pytest.raises(ValueError):
        Router([spec])


def test_gateway_api_kind_names_and_pairs_accepted():
    specs = [S("v", headers=[("x", "RegularExpression", "a.")], query=[("q", "Exact", "1")]),
             S("pair", headers=[("y", "2")])]  # fmt: skip
    check(specs, "", "/", headers=[("x", "ab")], query="q=1", want="v")
    check(specs, "", "/", headers=[("y", "2")], want="pair")


def test_match_without_head_skips_conditioned_specs():
    """match() (no request head): specs with method/header/query conditions never match; template
    and regex paths still do."""
    specs = [S("cond", path_prefix="/a", methods=["GET"]), S("tpl", path_template="/a/{x}"), S("root")]
    r = Router(specs)
    assert bench_match(r, b"", b"/a/1", 1) == "tpl"
    assert bench_match(r, b"", b"/a", 1) == "root"
    assert r.lookup(b"", b"/a") == "cond"
    assert bench_match_request(r, b"", b"/a", b"GET", [], b"", 3) == "cond"


def test_old_specs_without_new_attributes():
    @dataclass
    class Old:
        hosts: list | None
        path_exact: str | None
        path_prefix: str | None
        payload: object

    r = Router([Old(None, "/a", None, "e"), Old(["h"], None, "/", "h")])
    assert r.lookup(b"", b"/a") == "e"
    assert r.lookup(b"h", b"/a") == "h"
    assert r.lookup(b"", b"/a", method=b"POST", headers=[(b"x", b"y")], query=b"z=1") == "e"


# ---------------------------------------------------------------- explain()


def test_explain_order_and_reasons():
    specs = [
        S("root"),
        S("hdr", path_prefix="/users", headers=[("x-v", "exact", "1")]),
        S("re", path_regex=r"/users/\d+/.*"),
        S("tpl", path_template="/users/{id}/repos"),
        S("exact", path_exact="/users/a/repos", methods=["POST"]),
        S("host", hosts=["api.test"], path_prefix="/", query=[("q", "present", "")]),
    ]
    r = Router(specs)
    ex = r.explain(b"api.test", b"/users/a/repos", headers=[(b"X-V", b"2")])
    assert [e[0] for e in ex] == [5, 4, 3, 2, 1, 0]
    keys = [e[2] for e in ex]
    assert keys == sorted(keys)
    assert [e[1] for e in ex] == [False, False, True, False, False, True]
    reasons = [e[3] for e in ex]
    assert reasons[0] == "query 'q' present: missing"
    assert reasons[1].startswith("method GET not in")
    assert reasons[2] == "match"
    assert reasons[3] == "path does not match the regex"
    assert reasons[4] == "header 'x-v' exact b'1': got b'2'"
    assert r.lookup_index(b"api.test", b"/users/a/repos", headers=[(b"X-V", b"2")]) == 3
    # the key encodes host tier, path class and score, then method / #headers / #query / order / index
    assert keys[0][:4] == (0, -8, 3, 0)
    assert keys[2][:4] == (2, 0, 1, -len("/users//repos"))
    assert keys[5] == (2, 0, 3, 0, 0, 0, 0, 0, 0)


def test_explain_no_candidates():
    assert Router([S(1, path_prefix="/a")]).explain(b"", b"/b") == []


# ---------------------------------------------------------------- randomized against the reference

PATHS = ["/", "/a", "/a/", "/a/b", "/a/b/c", "/b", "/a/bc", "/A"]
TEMPLATES = ["/a/{x}", "/{x}/b", "/a/{x...}", "/{x}/{y}", "/a/b/{z}", "/{r...}"]
REGEXES = ["/a/.*", "/a/b", "/[ab]/b.*", ".*", "/a/(b|c)/c"]
HOSTS = [None, ["x.t"], ["*.t"], ["*.x.t"], ["y.x.t", "*.t"]]
HDR_POOL = [("h1", "exact", "1"), ("H1", "exact", "2"), ("h2", "present", ""), ("h2", "regex", "[0-9]"),
            ("h3", "exact", "a,b"), ("h3", "regex", "a.*")]  # fmt: skip
QRY_POOL = [("q", "exact", "1"), ("q", "present", ""), ("r", "regex", "[0-9]+"), ("s", "exact", "")]


def random_spec(rnd, i):
    s = Spec(payload=i, hosts=rnd.choice(HOSTS))
    shape = rnd.random()
    if shape < 0.25:
        s.path_exact = rnd.choice(PATHS)
    elif shape < 0.4:
        s.path_template = rnd.choice(TEMPLATES)
    elif shape < 0.5:
        s.path_regex = rnd.choice(REGEXES)
    elif shape < 0.9:
        s.path_prefix = rnd.choice(PATHS)
    if rnd.random() < 0.3:
        s.methods = rnd.sample(["GET", "POST", "HEAD"], rnd.randint(1, 2))
    if rnd.random() < 0.4:
        s.headers = rnd.sample(HDR_POOL, rnd.randint(1, 3))
    if rnd.random() < 0.3:
        s.query = rnd.sample(QRY_POOL, rnd.randint(1, 2))
    if rnd.random() < 0.3:
        s.order = rnd.randint(0, 5)
    return s


def random_request(rnd):
    host = rnd.choice(["", "x.t", "y.x.t", "z.y.x.t", "q.t", "t"])
    path = rnd.choice(PATHS + ["/a/b/c/d", "/c/b", "/a//b", "/a/c/c", ""])
    method = rnd.choice([b"GET", b"POST", b"HEAD"])
    headers = rnd.sample([(b"h1", b"1"), (b"H1", b"2"), (b"h2", b"7"), (b"h2", b"x"), (b"h3", b"a"),
                          (b"H3", b"b"), (b"h3", b"a,b")], rnd.randint(0, 4))  # fmt: skip
    query = b"&".join(rnd.sample([b"q=1", b"q=2", b"q", b"r=12", b"r=x", b"s", b"s=1"], rnd.randint(0, 3)))
    return host, path.encode(), method, headers, query


@pytest.mark.parametrize("seed", range(40))
def test_random_against_reference(seed):
    rnd = random.Random(seed)
    specs = [random_spec(rnd, i) for i in range(rnd.randint(1, 25))]
    router, ref = Router(specs), Reference(specs)
    hits = 0
    for _ in range(300):
        host, path, method, headers, query = random_request(rnd)
        want = ref.match(host, path, method, headers, query)
        got = router.lookup_index(host.encode(), path, method, headers, query)
        assert got == want, (host, path, method, headers, query)
        ex = router.explain(host.encode(), path, method, headers, query)
        assert [e[2] for e in ex] == sorted(e[2] for e in ex)
        assert next((e[0] for e in ex if e[1]), -1) == got
        hits += got >= 0
    assert hits > 0


def test_1000_conditioned_routes_against_reference():
    rnd = random.Random(1000)
    specs = [random_spec(rnd, i) for i in range(1000)]
    router, ref = Router(specs), Reference(specs)
    for _ in range(200):
        host, path, method, headers, query = random_request(rnd)
        assert router.lookup_index(host.encode(), path, method, headers, query) == ref.match(
            host, path, method, headers, query
        )


# ---------------------------------------------------------------- match_request on real parsed heads

RAW_SPECS = [
    S("v2", path_template="/items/{id}", headers=[("x-version", "exact", "2,3")], query=[("a", "exact", "1")]),
    S("under", headers=[("x_under", "present", "")]),
    S("post", methods=["POST"]),
    S("root"),
]


@pytest.mark.parametrize(
    ("raw", "want", "caps"),
    [
        (b"GET /items/7?a=1&a=2 HTTP/1.1\r\nHost: h\r\nX-Version: 2\r\nx-version: 3\r\n\r\n", "v2", {"id": b"7"}),
        (b"GET /items/7?a=2 HTTP/1.1\r\nHost: h\r\nX-Version: 2\r\nx-version: 3\r\n\r\n", "root", {}),
        (b"GET /items/7?a=1 HTTP/1.1\r\nHost: h\r\nX-Version: 2,3  \r\n\r\n", "v2", {"id": b"7"}),  # OWS trimmed
        (b"GET /items/7 HTTP/1.1\r\nHost: h\r\nX-Version: 2,3\r\n\r\n", "root", {}),
        # absolute-form: the path and query come from the target after the authority
        (b"GET http://h/items/9?a=1 HTTP/1.1\r\nHost: h\r\nX-Version: 2,3\r\n\r\n", "v2", {"id": b"9"}),
        # a field dropped by policy (underscore in the name) does not match
        (b"GET / HTTP/1.1\r\nHost: h\r\nX_Under: 1\r\n\r\n", "root", {}),
        (b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", "post", {}),
    ],
)
def test_match_request_on_parsed_heads(raw, want, caps):
    assert route_raw_head(Router(RAW_SPECS), b"h", raw) == (want, caps)
