"""Routing by host and path, 404 JSON errors, smooth weighted round robin across named upstreams, listeners
sharing a port on different addresses."""

from __future__ import annotations

import socket

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


def _free_port_on(*hosts: str) -> int:
    """A port that is free on every host given (tried a few times)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        ok = True
        for h in hosts[1:]:
            with socket.socket() as s:
                try:
                    s.bind((h, port))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no common free port")


def test_listeners_sharing_a_port_on_different_addresses_keep_their_routes(echo, gateway_factory):
    """(From review 2: listeners on one port and different addresses keep their own routes.)"""
    # runtime.py compile_runtime groups listeners by PORT only (by_port) and ClientConn keys the
    # listener table by local_port alone (Runtime.routes_for(port, host)), so two listeners on
    # 127.0.0.1:P and 127.0.0.2:P (or 0.0.0.0:P and [::]:P, or two Gateways with different
    # spec.addresses, which docs/gateway-api.md recommends) collapse into one host-less tie and the
    # first listener's routes serve both addresses.
    port = _free_port_on("127.0.0.1", "127.0.0.2")
    cfg = {
        "listeners": [{"name": "la", "address": f"127.0.0.1:{port}"},
                      {"name": "lb", "address": f"127.0.0.2:{port}"}],
        "upstreams": {"echo": upstream_config(echo.address)},
        "routes": [
            {"name": "ra", "match": {"path": {"prefix": "/a"}}, "upstream": "echo", "listeners": ["la"]},
            {"name": "rb", "match": {"path": {"prefix": "/b"}}, "upstream": "echo", "listeners": ["lb"]},
        ],
    }
    gw = gateway_factory(cfg)
    with RawConn(port, host="127.0.0.2") as c:
        r_b = c.request("GET", "/b")
        r_a = c.request("GET", "/a")
    with RawConn(port, host="127.0.0.1") as c:
        r_a1 = c.request("GET", "/a")
    assert r_a1.status == 200
    assert (r_b.status, r_a.status) == (200, 404), (r_b.status, r_a.status, gw.stderr[-2000:])
