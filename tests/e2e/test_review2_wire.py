"""Regression tests from a routing review that concern the wire: real gateway process, real sockets."""

from __future__ import annotations

import socket

from support.client import RawConn
from support.gateway import upstream_config


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


def _config(echo_address: str, route_filters: dict) -> dict:
    return {
        "listeners": [{"address": "127.0.0.1:0"}],
        "upstreams": {"echo": upstream_config(echo_address)},
        "routes": [{"name": "r", "match": {"path": {"prefix": "/"}}, "upstream": "echo",
                    "filters": route_filters}],
    }


def test_review2_listeners_sharing_a_port_on_different_addresses_keep_their_routes(echo, gateway_factory):
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
