"""Routing by host and path, 404 JSON errors, smooth weighted round robin across named upstreams."""

from __future__ import annotations

import pytest
from support.client import RawConn, assert_gateway_error
from support.gateway import simple_config, upstream_config
from support.upstreams import EchoServer


@pytest.fixture(scope="module")
def named():
    servers = {n: EchoServer(n) for n in ("a", "b", "c")}
    yield servers
    for s in servers.values():
        s.close()


@pytest.fixture(scope="module")
def gw(named, module_gateway_factory):
    return module_gateway_factory(simple_config(
        upstreams={"ua": upstream_config(named["a"].address), "ub": upstream_config(named["b"].address)},
        routes=[{"name": "api", "upstream": "ua",
                 "match": {"hosts": ["api.example.com", "*.example.com"], "path": {"prefix": "/api"}}},
                {"name": "exact", "upstream": "ub", "match": {"path": {"exact": "/x"}}}]))


def served_by(gw, host, target):
    with RawConn(gw.port) as c:
        r = c.request("GET", target, host=host)
    return r.json()["name"] if r.status == 200 else r


@pytest.mark.parametrize("host,target,expected", [
    ("api.example.com", "/api", "a"),
    ("api.example.com", "/api/v1/users?x=1", "a"),
    ("foo.example.com", "/api/v1", "a"),
    ("API.Example.COM", "/api", "a"),
    ("api.example.com:8080", "/api", "a"),
    ("anything.test", "/x", "b"),
    ("anything.test", "/x?q=1", "b"),
])
def test_routes_match(gw, host, target, expected):
    assert served_by(gw, host, target) == expected


@pytest.mark.parametrize("host,target", [
    ("other.test", "/api"),
    ("api.example.org", "/api/v1"),
    ("api.example.com", "/other"),
    ("anything.test", "/x/y"),
    ("anything.test", "/"),
])
def test_no_route_404_json(gw, host, target):
    r = served_by(gw, host, target)
    assert not isinstance(r, str), f"{host}{target} was routed to {r}"
    body = assert_gateway_error(r, 404)
    assert body["request_id"]


def test_404_keeps_connection_usable(gw):
    with RawConn(gw.port) as c:
        assert c.request("GET", "/nope").status == 404
        assert c.request("GET", "/x").status == 200


def test_smooth_weighted_round_robin(named, gateway_factory):
    gw = gateway_factory(simple_config(upstreams={"w": upstream_config(
        named["a"].address, named["b"].address, named["c"].address, weights=[5, 1, 1])},
        routes=[{"name": "w", "match": {"path": {"prefix": "/"}}, "upstream": "w"}]))
    with RawConn(gw.port) as c:
        seq = [c.request("GET", f"/w{i}").json()["name"] for i in range(14)]
    assert "".join(seq) == "aabacaa" * 2
