"""Routing and traffic management end to end, native config front end.

Every scenario is a native config built here and served by a real `fastgw run`; clients are raw
sockets or httpx, upstreams are the support echo servers. The classes named in SHARED run unchanged in
test_traffic_gatewayapi.py, where the same scenario is written as Gateway API manifests (see
traffic_support.py): one implementation, two front ends. Classes not in SHARED test native features
that Gateway API cannot express (path templates, `present` header conditions, `versioning`).
"""

from __future__ import annotations

import datetime
import hashlib
import subprocess
import sys
from email.utils import format_datetime

import httpx
import pytest
import yaml
from support.client import RawConn, assert_gateway_error, wait_until
from support.upstreams import ClosedPort, RawUpstream, slow

from .traffic_support import (
    Echo,
    echoed,
    echoed_headers,
    header_values,
    listener,
    native_config,
    request,
    route,
    route_of,
    start_front,
    upstreams,
)

SHARED = ["TestMatching", "TestPrecedence", "TestNoRouteAndBrokenBackends", "TestHeaderFilters",
          "TestRedirects", "TestRewrites", "TestWeightedBackends", "TestMirroring", "TestVersionRouting",
          "TestListeners"]


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def front() -> str:
    """Which front end serves the scenarios: overridden to "gatewayapi" in test_traffic_gatewayapi.py."""
    return "native"


def _stall(conn) -> None:
    """A shadow that accepts and then neither reads nor answers for a while."""
    conn.sleep(8)


@pytest.fixture(scope="module")
def servers():
    s = {n: Echo(n) for n in ("echo", "a", "b", "c", "shadow")}
    s["stall"] = RawUpstream(_stall, name="stall")
    s["slow"] = RawUpstream(slow(6, b"late shadow answer"), name="slow")
    s["dead"] = ClosedPort()
    yield s
    for srv in s.values():
        srv.close()


@pytest.fixture(scope="module")
def scenario(front, servers, tmp_path_factory):
    """scenario(name, config) -> Gateway serving `config` through this module's front end (one per name)."""
    started = {}

    def make(name: str, cfg: dict):
        if name not in started:
            started[name] = start_front(front, cfg, tmp_path_factory.mktemp(f"{front}-{name}"))
        return started[name]

    yield make
    for gw in started.values():
        gw.close()


# --- matching ----------------------------------------------------------------------------------------------


def matching_config(s) -> dict:
    return native_config([
        route("host-exact", match={"hosts": ["exact.example.com"], "path": {"prefix": "/h"}}),
        route("host-wild", match={"hosts": ["*.example.com"], "path": {"prefix": "/h"}}),
        route("path-exact", match={"path": {"exact": "/abc"}}),
        route("path-prefix", match={"path": {"prefix": "/pre"}}),
        route("path-regex", match={"path": {"regex": "/re/[0-9]+"}}),
        route("method-get", match={"path": {"prefix": "/m"}, "methods": ["GET"]}),
        route("headers", match={"path": {"prefix": "/hd"}, "headers": [
            {"name": "X-Env", "value": "prod"}, {"name": "X-Ver", "regex": "v[0-9]+"}]}),
        route("query", match={"path": {"prefix": "/q"}, "query": [
            {"name": "a", "value": "1"}, {"name": "b", "regex": "[a-z]+"}]}),
        route("any-of", matches=[{"path": {"exact": "/or1"}},
                                 {"path": {"exact": "/or2"}, "methods": ["POST"]}]),
    ], upstreams(echo=s["echo"]))


@pytest.fixture(scope="module")
def matching(scenario, servers):
    return scenario("matching", matching_config(servers))


class TestMatching:
    @pytest.mark.parametrize("host,target,expected", [
        ("exact.example.com", "/h", "host-exact"),
        ("EXACT.Example.COM", "/h/x", "host-exact"),
        ("a.example.com", "/h", "host-wild"),
        ("a.b.example.com", "/h", "host-wild"),
        ("example.com", "/h", "status 404"),
        ("a.example.org", "/h", "status 404"),
        ("xexample.com", "/h", "status 404"),
    ])
    def test_host(self, matching, host, target, expected):
        assert route_of(request(matching, target=target, host=host)) == expected

    def test_host_port_ignored_and_host_forwarded_unmodified(self, matching):
        r = request(matching, target="/h", host="exact.example.com:8080")
        assert route_of(r) == "host-exact"
        assert header_values(echoed_headers(r), "host") == ["exact.example.com:8080"]
        r = request(matching, target="/h", host="Deep.A.Example.com:1")
        assert route_of(r) == "host-wild"
        assert header_values(echoed_headers(r), "host") == ["Deep.A.Example.com:1"]

    @pytest.mark.parametrize("target,expected", [
        ("/abc", "path-exact"),
        ("/abc?x=1", "path-exact"),
        ("/abc/", "status 404"),
        ("/ABC", "status 404"),
        ("/abcd", "status 404"),
        ("/pre", "path-prefix"),
        ("/pre/", "path-prefix"),
        ("/pre/x/y?z", "path-prefix"),
        ("/prefix", "status 404"),
        ("/pr", "status 404"),
        ("/re/12", "path-regex"),
        ("/re/12x", "status 404"),
        ("/re/", "status 404"),
        ("/x/re/1", "status 404"),
    ])
    def test_path(self, matching, target, expected):
        assert route_of(request(matching, target=target)) == expected

    def test_path_reaches_upstream_unchanged(self, matching):
        assert echoed(request(matching, target="/pre/x/y?z=1&z=2"))["target"] == "/pre/x/y?z=1&z=2"

    @pytest.mark.parametrize("method,expected", [("GET", "method-get"), ("HEAD", None), ("POST", None)])
    def test_method(self, matching, method, expected):
        r = request(matching, method, "/m", body=b"" if method == "POST" else None)
        if expected is None:
            assert r.status == 404, f"{method} /m: {r.status} {r.headers}"
        else:
            assert route_of(r) == expected

    @pytest.mark.parametrize("headers,expected", [
        ([("X-Env", "prod"), ("X-Ver", "v2")], "headers"),
        ([("x-env", "prod"), ("X-VER", "v10")], "headers"),        # names are case-insensitive
        ([("X-Env", "Prod"), ("X-Ver", "v2")], "status 404"),      # values are not
        ([("X-Env", "prod")], "status 404"),                       # AND within a match
        ([("X-Ver", "v2")], "status 404"),
        ([("X-Env", "prod"), ("X-Ver", "v2x")], "status 404"),     # regex matches the whole value
        ([("X-Env", "prod"), ("X-Ver", "xv2")], "status 404"),
        ([("X-Env", "production"), ("X-Ver", "v2")], "status 404"),
        ([("X-Env", "prod"), ("X-Env", "prod"), ("X-Ver", "v2")], "status 404"),  # repeated: 'prod,prod'
    ])
    def test_headers(self, matching, headers, expected):
        assert route_of(request(matching, target="/hd", headers=headers)) == expected

    @pytest.mark.parametrize("query,expected", [
        ("a=1&b=x", "query"),
        ("b=xyz&a=1", "query"),
        ("a=1&a=2&b=x", "query"),           # the first value of a repeated name counts
        ("a=2&a=1&b=x", "status 404"),
        ("a=1", "status 404"),              # AND
        ("a=1&b=X", "status 404"),          # regex, case-sensitive, whole value
        ("a=1&b=x1", "status 404"),
        ("A=1&b=x", "status 404"),          # names are case-sensitive
        ("a=11&b=x", "status 404"),
        ("a&b=x", "status 404"),            # 'a' alone has the empty value
        ("a=%31&b=x", "status 404"),        # no percent-decoding
    ])
    def test_query(self, matching, query, expected):
        assert route_of(request(matching, target=f"/q?{query}")) == expected

    @pytest.mark.parametrize("method,target,expected", [
        ("GET", "/or1", "any-of"),
        ("POST", "/or2", "any-of"),
        ("GET", "/or2", "status 404"),
        ("POST", "/or3", "status 404"),
    ])
    def test_or_across_matches(self, matching, method, target, expected):
        r = request(matching, method, target, body=b"" if method == "POST" else None)
        assert route_of(r) == expected


# --- precedence --------------------------------------------------------------------------------------------


def precedence_config(s) -> dict:
    return native_config([
        # hostname beats path: the exact host's short prefix wins over longer paths on other hosts
        route("h-any-long", match={"path": {"prefix": "/host/long/path"}}),
        route("h-wild-long", match={"hosts": ["*.example.com"], "path": {"prefix": "/host/long"}}),
        route("h-wild-deep", match={"hosts": ["*.p.example.com"], "path": {"prefix": "/host"}}),
        route("h-exact", match={"hosts": ["p.example.com"], "path": {"prefix": "/"}}),
        # exact path beats prefix; the longest prefix wins (declared shortest first)
        route("p-short", match={"path": {"prefix": "/p"}}),
        route("p-long", match={"path": {"prefix": "/p/x"}}),
        route("p-exact", match={"path": {"exact": "/p/x"}}),
        # a method beats headers; more headers beat fewer; headers beat query params; more query beat fewer
        route("m-headers", match={"path": {"prefix": "/mh"}, "headers": [
            {"name": "X-A", "value": "1"}, {"name": "X-B", "value": "1"}]}),
        route("m-method", match={"path": {"prefix": "/mh"}, "methods": ["GET"]}),
        route("hd-one", match={"path": {"prefix": "/hd"}, "headers": [{"name": "X-A", "value": "1"}]}),
        route("hd-two", match={"path": {"prefix": "/hd"}, "headers": [
            {"name": "X-A", "value": "1"}, {"name": "X-B", "regex": ".+"}]}),
        route("hq-query", match={"path": {"prefix": "/hq"}, "query": [
            {"name": "a", "value": "1"}, {"name": "b", "value": "1"}]}),
        route("hq-header", match={"path": {"prefix": "/hq"}, "headers": [{"name": "X-A", "value": "1"}]}),
        route("q-one", match={"path": {"prefix": "/qq"}, "query": [{"name": "a", "value": "1"}]}),
        route("q-two", match={"path": {"prefix": "/qq"}, "query": [
            {"name": "a", "value": "1"}, {"name": "b", "value": "1"}]}),
        # a longer prefix beats a method condition
        route("lp-method", match={"path": {"prefix": "/lp"}, "methods": ["GET"]}),
        route("lp-longer", match={"path": {"prefix": "/lp/a"}}),
        # regex beats prefix, the longer regex first
        route("rx-prefix", match={"path": {"prefix": "/rx/abc"}}),
        route("rx-short", match={"path": {"regex": "/rx/.*"}}),
        route("rx-long", match={"path": {"regex": "/rx/a[a-z]*"}}),
        # order breaks ties
        route("tie-first", match={"path": {"prefix": "/tie"}}),
        route("tie-second", match={"path": {"prefix": "/tie"}}),
    ], upstreams(echo=s["echo"]))


@pytest.fixture(scope="module")
def precedence(scenario, servers):
    return scenario("precedence", precedence_config(servers))


class TestPrecedence:
    @pytest.mark.parametrize("host,target,expected", [
        ("p.example.com", "/host/long/path", "h-exact"),
        ("q.p.example.com", "/host/long/path", "h-wild-deep"),   # longest wildcard beats shorter
        ("q.example.com", "/host/long/path", "h-wild-long"),
        ("q.example.com", "/host/other", "status 404"),           # falls to host-less routes: none match
        ("other.test", "/host/long/path/x", "h-any-long"),
    ])
    def test_hostname_first(self, precedence, host, target, expected):
        assert route_of(request(precedence, target=target, host=host)) == expected

    @pytest.mark.parametrize("target,expected", [
        ("/p/x", "p-exact"), ("/p/x/", "p-long"), ("/p/x/y", "p-long"), ("/p/y", "p-short"), ("/p", "p-short"),
    ])
    def test_exact_then_longest_prefix(self, precedence, target, expected):
        assert route_of(request(precedence, target=target)) == expected

    @pytest.mark.parametrize("method,target,headers,expected", [
        ("GET", "/mh", [("X-A", "1"), ("X-B", "1")], "m-method"),
        ("POST", "/mh", [("X-A", "1"), ("X-B", "1")], "m-headers"),
        ("GET", "/hd", [("X-A", "1"), ("X-B", "y")], "hd-two"),
        ("GET", "/hd", [("X-A", "1")], "hd-one"),
        ("GET", "/hq?a=1&b=1", [("X-A", "1")], "hq-header"),
        ("GET", "/hq?a=1&b=1", [], "hq-query"),
        ("GET", "/qq?a=1&b=1", [], "q-two"),
        ("GET", "/qq?a=1", [], "q-one"),
        ("GET", "/lp/a", [], "lp-longer"),
        ("GET", "/lp/b", [], "lp-method"),
    ])
    def test_conditions(self, precedence, method, target, headers, expected):
        r = request(precedence, method, target, headers=headers, body=b"" if method == "POST" else None)
        assert route_of(r) == expected

    @pytest.mark.parametrize("target,expected", [
        ("/rx/abc", "rx-long"), ("/rx/xyz", "rx-short"), ("/rx/abc/d", "rx-short"),
    ])
    def test_regex_over_prefix_longer_first(self, precedence, target, expected):
        assert route_of(request(precedence, target=target)) == expected

    def test_order_breaks_ties(self, precedence):
        assert route_of(request(precedence, target="/tie/x")) == "tie-first"


# --- no route, broken backends --------------------------------------------------------------------------


def errors_config(s) -> dict:
    return native_config([
        route("no-backends", match={"path": {"prefix": "/empty"}}, backends=[]),
        route("null-backend", match={"path": {"prefix": "/null"}}, backends=[{"upstream": None}]),
        route("no-targets", match={"path": {"prefix": "/scaled"}}, upstream="zero"),
        route("ok", match={"path": {"exact": "/ok"}}),
        route("half-broken", match={"path": {"prefix": "/half"}},
              backends=[{"upstream": "echo", "weight": 1}, {"upstream": None, "weight": 1}]),
    ], upstreams(echo=s["echo"], zero=None))


@pytest.fixture(scope="module")
def errors(scenario, servers):
    return scenario("errors", errors_config(servers))


class TestNoRouteAndBrokenBackends:
    @pytest.mark.parametrize("target,status", [("/nothing", 404), ("/", 404), ("/empty", 500), ("/empty/x", 500),
                                               ("/null", 500), ("/scaled", 503)])
    def test_gateway_error(self, errors, servers, target, status):
        snap = servers["echo"].snapshot()
        with RawConn(errors.port) as c:
            r = c.request("GET", target)
            assert_gateway_error(r, status, context=target)
            assert route_of(c.request("GET", "/ok")) == "ok"  # the connection stays usable
        assert [q.target for q in servers["echo"].requests_since(snap)] == ["/ok"]

    def test_backend_without_upstream_answers_500_for_its_share(self, errors):
        statuses = []
        with RawConn(errors.port) as c:
            for i in range(20):
                r = c.request("GET", f"/half/{i}")
                if r.status != 200:
                    assert_gateway_error(r, 500)
                statuses.append(r.status)
        assert 8 <= statuses.count(500) <= 12 and statuses.count(200) + statuses.count(500) == 20, statuses


# --- header filters -----------------------------------------------------------------------------------------


def filters_config(s) -> dict:
    return native_config([
        route("req", match={"path": {"prefix": "/req"}}, filters={"request_headers": {
            "set": {"X-Set": "new"}, "add": {"X-Add": "added"}, "remove": ["X-Remove"]}}),
        route("resp", match={"path": {"prefix": "/resp"}}, filters={"response_headers": {
            "set": {"X-R-Set": "new"}, "add": {"X-R-Add": "added"}, "remove": ["X-R-Remove"]}}),
        route("per-backend", match={"path": {"prefix": "/bf"}}, backends=[
            {"upstream": "a", "weight": 1, "filters": {"request_headers": {"set": {"X-Backend": "a"}},
                                                       "response_headers": {"add": {"X-From": "a"}}}},
            {"upstream": "b", "weight": 1, "filters": {"request_headers": {"set": {"X-Backend": "b"}},
                                                       "response_headers": {"add": {"X-From": "b"}}}},
        ], filters={"request_headers": {"set": {"X-Route-Level": "yes"}}}),
    ], upstreams(echo=s["echo"], a=s["a"], b=s["b"]))


@pytest.fixture(scope="module")
def filters(scenario, servers):
    return scenario("filters", filters_config(servers))


class TestHeaderFilters:
    def test_request_set_add_remove(self, filters):
        r = request(filters, target="/req", headers=[
            ("x-set", "old1"), ("X-SET", "old2"), ("X-Add", "orig"), ("x-remove", "bye"), ("X-Remove", "bye2"),
            ("X-Keep", "k")])
        seen = echoed_headers(r)
        assert header_values(seen, "x-set") == ["new"]                # set replaces every field
        assert header_values(seen, "x-add") == ["orig", "added"]      # add: one more separate field
        assert header_values(seen, "x-remove") == []                  # remove: case-insensitive, all fields
        assert header_values(seen, "x-keep") == ["k"]

    def test_request_set_and_add_without_client_fields(self, filters):
        seen = echoed_headers(request(filters, target="/req"))
        assert header_values(seen, "x-set") == ["new"]
        assert header_values(seen, "x-add") == ["added"]

    def test_response_set_add_remove(self, filters):
        r = request(filters, target="/resp", headers=[
            ("X-Echo-Set-Header", "x-r-set:old,X-R-Add:orig,x-r-remove:bye,X-R-Keep:k")])
        assert r.status == 200
        assert r.headers.get_all("X-R-Set") == ["new"]
        assert r.headers.get_all("X-R-Add") == ["orig", "added"]
        assert r.headers.get_all("X-R-Remove") == []
        assert r.headers.get_all("X-R-Keep") == ["k"]

    def test_backend_filters_apply_to_the_chosen_backend_only(self, filters):
        seen_names = set()
        with RawConn(filters.port) as c:
            for _ in range(8):
                r = c.request("GET", "/bf")
                body = echoed(r)
                name = body["name"]
                seen_names.add(name)
                assert header_values(body["headers"], "x-backend") == [name]
                assert header_values(body["headers"], "x-route-level") == ["yes"]
                assert r.headers.get_all("X-From") == [name]
        assert seen_names == {"a", "b"}


# --- redirects ----------------------------------------------------------------------------------------------


def redirects_config(s) -> dict:
    def rd(name, match_path, **redirect):
        return route(name, match={"path": match_path}, upstream=None, filters={"redirect": redirect})

    return native_config([
        rd("to-https", {"exact": "/r/https"}, scheme="https"),
        rd("to-http", {"exact": "/r/http"}, scheme="http", status=301),
        rd("to-host", {"exact": "/r/host"}, hostname="other.example.com", status=301),
        rd("to-port", {"exact": "/r/port"}, port=8443, status=303),
        rd("to-port-80", {"exact": "/r/port80"}, port=80, status=307),
        rd("to-https-port", {"exact": "/r/https-port"}, scheme="https", port=8443, status=308),
        rd("to-https-443", {"exact": "/r/https-443"}, scheme="https", port=443),
        rd("full-path", {"exact": "/r/full"}, path={"full": "/new/place"}),
        rd("prefix-path", {"prefix": "/r/pfx"}, path={"prefix": "/moved"}),
        rd("prefix-root", {"prefix": "/r/root"}, path={"prefix": "/"}),
        rd("everything", {"exact": "/r/all"}, scheme="https", hostname="all.example.com", port=9443,
           path={"full": "/x"}, status=302),
    ], upstreams(echo=s["echo"]))


@pytest.fixture(scope="module")
def redirects(scenario, servers):
    return scenario("redirects", redirects_config(servers))


class TestRedirects:
    @pytest.mark.parametrize("target,status,location", [
        ("/r/https", 302, "https://red.example.com/r/https"),
        ("/r/http", 301, "http://red.example.com/r/http"),
        ("/r/host", 301, "http://other.example.com:{port}/r/host"),
        ("/r/port", 303, "http://red.example.com:8443/r/port"),
        ("/r/port80", 307, "http://red.example.com/r/port80"),
        ("/r/https-port", 308, "https://red.example.com:8443/r/https-port"),
        ("/r/https-443", 302, "https://red.example.com/r/https-443"),
        ("/r/full", 302, "http://red.example.com:{port}/new/place"),
        ("/r/pfx", 302, "http://red.example.com:{port}/moved"),
        ("/r/pfx/a/b", 302, "http://red.example.com:{port}/moved/a/b"),
        ("/r/pfx/a?x=1&y=%20", 302, "http://red.example.com:{port}/moved/a?x=1&y=%20"),   # the query is kept
        ("/r/https?x=1", 302, "https://red.example.com/r/https?x=1"),
        ("/r/root/a/b", 302, "http://red.example.com:{port}/a/b"),
        ("/r/root", 302, "http://red.example.com:{port}/"),
        ("/r/all", 302, "https://all.example.com:9443/x"),
    ])
    def test_location(self, redirects, servers, target, status, location):
        snap = servers["echo"].snapshot()
        r = request(redirects, target=target, host=f"red.example.com:{redirects.port}")
        assert r.status == status, f"{target}: {r.status} {r.headers}"
        assert r.headers.get_all("location") == [location.format(port=redirects.port)]
        assert servers["echo"].requests_since(snap) == []

    def test_host_header_port_is_not_the_listener_port(self, redirects):
        # the Host header says :1234 but the request came in on the listener's port
        r = request(redirects, target="/r/full", host="red.example.com:1234")
        assert r.headers.get_all("location") == [f"http://red.example.com:{redirects.port}/new/place"]


# --- rewrites -----------------------------------------------------------------------------------------------


def rewrites_config(s) -> dict:
    return native_config([
        route("rw-prefix", match={"path": {"prefix": "/foo"}}, filters={"rewrite": {"path": {"prefix": "/xyz"}}}),
        route("rw-strip-slash", match={"path": {"prefix": "/strip1"}}, filters={"rewrite": {"path": {"prefix": "/"}}}),
        route("rw-strip-empty", match={"path": {"prefix": "/strip2/"}}, filters={"rewrite": {"path": {"prefix": ""}}}),
        route("rw-full", match={"path": {"exact": "/full"}}, filters={"rewrite": {"path": {"full": "/replaced"}}}),
        route("rw-multi", matches=[{"path": {"prefix": "/m1"}}, {"path": {"prefix": "/m2/deep"}}],
              filters={"rewrite": {"path": {"prefix": "/z"}}}),
        route("rw-host", match={"path": {"prefix": "/rwhost"}}, filters={"rewrite": {"hostname": "up.internal"}}),
    ], upstreams(echo=s["echo"]))


@pytest.fixture(scope="module")
def rewrites(scenario, servers):
    return scenario("rewrites", rewrites_config(servers))


class TestRewrites:
    @pytest.mark.parametrize("target,upstream_target", [
        ("/foo/bar", "/xyz/bar"),
        ("/foo", "/xyz"),
        ("/foo/", "/xyz/"),
        ("/foo/bar/baz?q=1&r=a%20b", "/xyz/bar/baz?q=1&r=a%20b"),
        ("/strip1/bar", "/bar"),
        ("/strip1", "/"),
        ("/strip1?x=1", "/?x=1"),
        ("/strip2/bar", "/bar"),
        ("/strip2", "/"),
        ("/full", "/replaced"),
        ("/full?x=1", "/replaced?x=1"),
        ("/m1/a", "/z/a"),              # the prefix of the match that matched is replaced
        ("/m2/deep/q?r=1", "/z/q?r=1"),
    ])
    def test_path(self, rewrites, target, upstream_target):
        assert echoed(request(rewrites, target=target))["target"] == upstream_target

    def test_hostname(self, rewrites):
        body = echoed(request(rewrites, target="/rwhost/a?b=c", host="client.example.com:8080"))
        assert header_values(body["headers"], "host") == ["up.internal"]
        assert body["target"] == "/rwhost/a?b=c"


# --- weighted backends -----------------------------------------------------------------------------------------


def weighted_config(s) -> dict:
    return native_config([
        route("w-90-10", match={"path": {"prefix": "/w1"}},
              backends=[{"upstream": "a", "weight": 90}, {"upstream": "b", "weight": 10}]),
        route("w-70-30-0", match={"path": {"prefix": "/w2"}},
              backends=[{"upstream": "a", "weight": 70}, {"upstream": "b", "weight": 30}, {"upstream": "c", "weight": 0}]),
    ], upstreams(a=s["a"], b=s["b"], c=s["c"]))


@pytest.fixture(scope="module")
def weighted(scenario, servers):
    return scenario("weighted", weighted_config(servers))


class TestWeightedBackends:
    N = 1000

    @pytest.mark.parametrize("path,shares", [("/w1", {"a": 90, "b": 10}), ("/w2", {"a": 70, "b": 30, "c": 0})])
    def test_distribution(self, weighted, path, shares):
        counts = dict.fromkeys(shares, 0)
        with httpx.Client(base_url=weighted.url, timeout=15.0) as client:
            for i in range(self.N):
                r = client.get(f"{path}/{i}")
                assert r.status_code == 200, r.text
                counts[r.json()["name"]] += 1
        assert counts.get("c", 0) == 0, counts
        for name, pct in shares.items():
            got = 100.0 * counts[name] / self.N
            assert abs(got - pct) <= 5, f"{name}: {got:.1f}% of {self.N}, expected {pct}% ({counts})"


# --- mirroring ----------------------------------------------------------------------------------------------


def mirror_config(s) -> dict:
    return native_config([
        route("mirror", match={"path": {"prefix": "/mirror"}}, filters={"mirror": {"upstream": "shadow"}}),
        route("mirror-dead", match={"path": {"prefix": "/dead"}}, filters={"mirror": {"upstream": "dead"}}),
        route("mirror-slow", match={"path": {"prefix": "/slow"}}, filters={"mirror": {"upstream": "slow"}}),
        route("mirror-stall", match={"path": {"prefix": "/stall"}}, filters={"mirror": {"upstream": "stall"}}),
        route("plain", match={"path": {"prefix": "/plain"}}),
    ], upstreams(echo=s["echo"], shadow=s["shadow"], dead=s["dead"], stall=s["stall"],
                                       slow=s["slow"]))


@pytest.fixture(scope="module")
def mirroring(scenario, servers):
    return scenario("mirroring", mirror_config(servers))


class TestMirroring:
    def test_shadow_gets_a_copy(self, mirroring, servers):
        shadow = servers["shadow"]
        snap = shadow.snapshot()
        body = bytes(range(256)) * 40
        rid = f"mirror-copy-{id(body)}"
        r = request(mirroring, "POST", "/mirror/x?y=1", host="m.example.com",
                    headers=[("X-Request-Id", rid), ("X-Test", "copied"), ("Content-Type", "application/octet-stream")],
                    body=body)
        main = echoed(r)
        assert main["name"] == "echo"
        assert main["body_sha256"] == hashlib.sha256(body).hexdigest()
        copies = wait_until(lambda: shadow.requests_since(snap), what="the mirrored request")
        assert len(copies) == 1, [(q.method, q.target) for q in copies]
        copy = copies[0]
        assert (copy.method, copy.target) == ("POST", "/mirror/x?y=1")
        assert copy.headers.get_all("x-test") == ["copied"]
        assert copy.headers.get_all("x-route") == ["mirror"]   # the route's filters ran before the copy
        assert copy.request_id == rid
        assert copy.body_len == len(body)
        assert copy.body_sha256 == hashlib.sha256(body).hexdigest()

    def test_shadow_sees_get(self, mirroring, servers):
        shadow = servers["shadow"]
        snap = shadow.snapshot()
        assert echoed(request(mirroring, target="/mirror/get"))["target"] == "/mirror/get"
        copies = wait_until(lambda: shadow.requests_since(snap), what="the mirrored request")
        assert [(q.method, q.target, q.body_len) for q in copies] == [("GET", "/mirror/get", 0)]

    def test_dead_shadow_does_not_touch_the_main_request(self, mirroring):
        body = b"d" * 5000
        with RawConn(mirroring.port) as c:
            for i in range(3):
                r = c.request("POST", f"/dead/{i}", body=body)
                main = echoed(r)
                assert (main["target"], main["body_len"]) == (f"/dead/{i}", len(body))
        assert route_of(request(mirroring, target="/plain")) == "plain"

    def test_slow_shadow_does_not_hold_the_main_request(self, mirroring, servers):
        # the shadow reads the request and answers seconds later; the main response does not wait for it
        # (no timing is asserted: only that it arrives, is right, and the gateway keeps serving)
        snap = servers["slow"].snapshot()
        with RawConn(mirroring.port) as c:
            for i in range(2):
                main = echoed(c.request("POST", f"/slow/{i}", body=b"payload"))
                assert (main["name"], main["target"], main["body_len"]) == ("echo", f"/slow/{i}", 7)
            assert route_of(c.request("GET", "/plain")) == "plain"
        got = wait_until(lambda: servers["slow"].requests_since(snap), what="the slow shadow's copy")
        # each copy goes on its own connection to the shadow, so either may arrive first
        assert got[0].target in ("/slow/0", "/slow/1") and got[0].body == b"payload"

    def test_stalled_shadow_does_not_hold_the_main_request(self, mirroring, servers):
        # the shadow accepts but never reads: a 16 MiB body cannot all go to it
        body = b"s" * (16 << 20)
        snap = servers["stall"].snapshot()
        r = request(mirroring, "POST", "/stall/big", body=body)
        main = echoed(r)
        assert main["body_len"] == len(body)
        assert main["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert servers["stall"].conns_since(snap), "the shadow was never contacted"
        with RawConn(mirroring.port) as c:
            assert route_of(c.request("GET", "/plain")) == "plain"
            assert echoed(c.request("GET", "/stall/small"))["target"] == "/stall/small"


# --- API versions -------------------------------------------------------------------------------------------

DEPRECATED_AT = "2026-06-01T00:00:00Z"
SUNSET_AT = "2027-01-01T00:00:00Z"
SUCCESSOR = "https://api.example.com/v2/users"
POLICY = "https://api.example.com/deprecation"


def versions_config(s, front: str) -> dict:
    lifecycle = {"versioning": {"deprecated_at": DEPRECATED_AT, "sunset_at": SUNSET_AT, "successor": SUCCESSOR,
                                "link": POLICY}} if front == "native" else {}
    return native_config([
        route("users-v2", match={"path": {"prefix": "/v2/users"}}, upstream="b",
              filters={"rewrite": {"path": {"prefix": "/users"}}}),
        route("users-v1", match={"path": {"prefix": "/v1/users"}}, upstream="a",
              filters={"rewrite": {"path": {"prefix": "/users"}}, **lifecycle}),
        route("users-v2-by-header", match={"path": {"prefix": "/users"},
                                           "headers": [{"name": "X-API-Version", "value": "2"}]}, upstream="b"),
        route("users-v2-by-query", match={"path": {"prefix": "/users"},
                                          "query": [{"name": "version", "value": "2"}]}, upstream="b"),
        route("users-default", match={"path": {"prefix": "/users"}}, upstream="a", filters=dict(lifecycle)),
    ], upstreams(a=s["a"], b=s["b"]))


@pytest.fixture(scope="module")
def versions(scenario, servers, front):
    return scenario("versions", versions_config(servers, front))


class TestVersionRouting:
    @pytest.mark.parametrize("target,headers,name,upstream_target", [
        ("/v1/users/7?x=1", [], "a", "/users/7?x=1"),
        ("/v2/users/7?x=1", [], "b", "/users/7?x=1"),
        ("/v2/users", [], "b", "/users"),
        ("/users/7", [("X-API-Version", "2")], "b", "/users/7"),
        ("/users/7", [("x-api-version", "1")], "a", "/users/7"),
        ("/users/7?version=2", [], "b", "/users/7?version=2"),
        ("/users/7?version=1", [], "a", "/users/7?version=1"),
        ("/users/7", [], "a", "/users/7"),
    ])
    def test_version_selection(self, versions, target, headers, name, upstream_target):
        body = echoed(request(versions, target=target, headers=headers))
        assert (body["name"], body["target"]) == (name, upstream_target)


# --- listeners ----------------------------------------------------------------------------------------------


def listeners_config(s) -> dict:
    return native_config([
        route("on-any", match={"path": {"prefix": "/"}}, listeners=["any"]),
        route("on-wild", match={"path": {"prefix": "/"}}, listeners=["wild"]),
        route("on-exact", match={"path": {"prefix": "/only-exact"}}, listeners=["exact"]),
        route("on-wild-and-exact", match={"path": {"prefix": "/shared"}}, listeners=["wild", "exact"]),
    ], upstreams(echo=s["echo"]), listeners=[
        listener("any"), listener("wild", "*.example.com"), listener("exact", "api.example.com")])


@pytest.fixture(scope="module")
def listeners(scenario, servers):
    return scenario("listeners", listeners_config(servers))


class TestListeners:
    @pytest.mark.parametrize("host,target,expected", [
        ("api.example.com", "/only-exact/x", "on-exact"),
        ("API.example.com:9999", "/only-exact", "on-exact"),
        ("api.example.com", "/", "status 404"),            # only the exact listener's routes serve it
        ("api.example.com", "/shared", "on-wild-and-exact"),
        ("foo.example.com", "/", "on-wild"),
        ("foo.example.com", "/only-exact", "on-wild"),
        ("foo.example.com", "/shared/1", "on-wild-and-exact"),
        ("a.b.example.com", "/x", "on-wild"),
        ("example.com", "/", "on-any"),
        ("other.test", "/shared", "on-any"),
        ("other.test", "/only-exact", "on-any"),
    ])
    def test_most_specific_listener_serves(self, listeners, host, target, expected):
        assert route_of(request(listeners, target=target, host=host)) == expected


# --- config: header values ----------------------------------------------------------------------------------


def fastgw(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastgw", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


class TestHeaderValueCheck:
    @pytest.mark.parametrize("where,bad", [
        ("request_headers.set", "a\r\nX-Injected: 1"),
        ("request_headers.add", "a\nb"),
        ("response_headers.set", "a\rb"),
        ("response_headers.add", "a\x00b"),
    ])
    def test_control_characters_refused(self, tmp_path, where, bad):
        kind, op = where.split(".")
        cfg = native_config([route("r", match={"path": {"prefix": "/"}}, filters={kind: {op: {"X-Bad": bad}}},
                                   tag=False)], {"echo": {"targets": [{"address": "127.0.0.1:9"}]}})
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        p = fastgw("check", str(path))
        assert p.returncode == 1, p.stdout + p.stderr
        assert f"$.routes[0].filters.{kind}.{op}" in p.stderr, p.stderr
        good = tmp_path / "good.yaml"
        cfg["routes"][0]["filters"][kind][op]["X-Bad"] = "fine value"
        good.write_text(yaml.safe_dump(cfg, sort_keys=False))
        p = fastgw("check", str(good))
        assert p.returncode == 0, p.stdout + p.stderr


# --- native only: templates, `present`, lifecycle headers -------------------------------------------------------


def native_matching_config(s) -> dict:
    return native_config([
        route("tpl-user", match={"path": {"template": "/users/{id}"}}),
        route("tpl-files", match={"path": {"template": "/files/{path...}"}}),
        route("present", match={"path": {"prefix": "/present"}, "headers": [{"name": "X-Flag", "present": True}]}),
        route("methods", match={"path": {"prefix": "/methods"}, "methods": ["PUT", "DELETE"]}),
        # precedence: exact > template > regex > prefix; more literal characters first among templates
        route("ord-prefix", match={"path": {"prefix": "/ord"}}),
        route("ord-regex", match={"path": {"regex": "/ord/.+"}}),
        route("ord-template", match={"path": {"template": "/ord/{x}"}}),
        route("ord-exact", match={"path": {"exact": "/ord/exact"}}),
        route("tm-vars", match={"path": {"template": "/tm/{a}/{b}"}}),
        route("tm-literal", match={"path": {"template": "/tm/x/{b}"}}),
        route("cap-rewrite", match={"path": {"template": "/cap/{id}/items/{rest...}"}},
              filters={"rewrite": {"path": {"full": "/v2/{rest}/of/{id}"}}}),
        route("cap-redirect", match={"path": {"template": "/capr/{id}"}}, upstream=None,
              filters={"redirect": {"scheme": "https", "hostname": "new.example.com", "path": {"full": "/u/{id}"}}}),
    ], upstreams(echo=s["echo"]))


@pytest.fixture(scope="module")
def native_matching(scenario, servers):
    return scenario("native-matching", native_matching_config(servers))


class TestNativeOnlyMatching:
    @pytest.mark.parametrize("method,target,headers,expected", [
        ("GET", "/users/7", [], "tpl-user"),
        ("GET", "/users/7?x=1", [], "tpl-user"),
        ("GET", "/users/", [], "status 404"),
        ("GET", "/users/7/x", [], "status 404"),
        ("GET", "/users", [], "status 404"),
        ("GET", "/files/a", [], "tpl-files"),
        ("GET", "/files/a/b/c.txt", [], "tpl-files"),
        ("GET", "/files/", [], "status 404"),
        ("GET", "/present", [("x-flag", "")], "present"),
        ("GET", "/present", [("X-Flag", "anything")], "present"),
        ("GET", "/present", [("X-Flags", "1")], "status 404"),
        ("PUT", "/methods", [], "methods"),
        ("DELETE", "/methods", [], "methods"),
        ("GET", "/methods", [], "status 404"),
        ("GET", "/ord/exact", [], "ord-exact"),
        ("GET", "/ord/other", [], "ord-template"),
        ("GET", "/ord/a/b", [], "ord-regex"),
        ("GET", "/ord", [], "ord-prefix"),
        ("GET", "/tm/x/y", [], "tm-literal"),
        ("GET", "/tm/z/y", [], "tm-vars"),
    ])
    def test_route(self, native_matching, method, target, headers, expected):
        body = b"" if method in ("PUT", "DELETE") else None
        assert route_of(request(native_matching, method, target, headers=headers, body=body)) == expected

    def test_template_captures_in_rewrite(self, native_matching):
        body = echoed(request(native_matching, target="/cap/42/items/a/b?q=1"))
        assert body["target"] == "/v2/a/b/of/42?q=1"

    def test_template_captures_in_redirect(self, native_matching):
        r = request(native_matching, target="/capr/7?x=1")
        assert r.status == 302
        assert r.headers.get_all("location") == ["https://new.example.com/u/7?x=1"]


def _unix(iso: str) -> int:
    return int(datetime.datetime.fromisoformat(iso).timestamp())


class TestLifecycleHeaders:
    @pytest.mark.parametrize("target,headers", [("/v1/users/7", []), ("/users/7", [])])
    def test_deprecated_route(self, versions, target, headers):
        r = request(versions, target=target, headers=headers)
        assert echoed(r)["name"] == "a"
        assert r.headers.get_all("Deprecation") == [f"@{_unix(DEPRECATED_AT)}"]
        assert r.headers.get_all("Deprecation") == ["@1780272000"]
        sunset = format_datetime(datetime.datetime.fromisoformat(SUNSET_AT), usegmt=True)
        assert r.headers.get_all("Sunset") == [sunset] == ["Fri, 01 Jan 2027 00:00:00 GMT"]
        links = [v.strip() for field in r.headers.get_all("Link") for v in field.split(",")]
        assert sorted(links) == sorted([f'<{SUCCESSOR}>; rel="successor-version"', f'<{POLICY}>; rel="deprecation"'])

    @pytest.mark.parametrize("target,headers", [("/v2/users/7", []), ("/users/7", [("X-API-Version", "2")]),
                                                ("/users?version=2", [])])
    def test_current_route_has_none(self, versions, target, headers):
        r = request(versions, target=target, headers=headers)
        assert echoed(r)["name"] == "b"
        for name in ("Deprecation", "Sunset", "Link"):
            assert r.headers.get_all(name) == [], name
