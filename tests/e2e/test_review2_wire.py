"""Review 2 findings that concern the wire: real gateway process, real sockets."""

from __future__ import annotations

import socket

import pytest
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


@pytest.mark.parametrize("value", ["1", "100000"])
def test_review2_response_set_content_length_keeps_one_true_length(echo, gateway_factory, value):
    # client.pyx begin_response: _put_response_fields appends ops.appended (here
    # "Content-Length: <value>") and then writes the upstream's own Content-Length: the client gets
    # two different lengths (RFC 9112 6.3: unrecoverable framing error; a lenient client that takes
    # the first one desynchronises the connection).
    gw = gateway_factory(_config(echo.address, {"response_headers": {"set": {"Content-Length": value}}}))
    with RawConn(gw.port) as c:
        c.send(b"GET /cl HTTP/1.1\r\nHost: t\r\nX-Echo-Body-Bytes: 10\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = c.sock.recv(65536)
            if not chunk:
                break
            head += chunk
    lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    lengths = [ln.split(b":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith(b"content-length:")]
    assert lengths == [b"10"], lines


def test_review2_response_set_transfer_encoding_does_not_break_framing(echo, gateway_factory):
    gw = gateway_factory(_config(echo.address, {"response_headers": {"set": {"Transfer-Encoding": "chunked"}}}))
    with RawConn(gw.port) as c:
        c.send(b"GET /te HTTP/1.1\r\nHost: t\r\nX-Echo-Body-Bytes: 10\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = c.sock.recv(65536)
            if not chunk:
                break
            head += chunk
    names = [ln.split(b":", 1)[0].strip().lower() for ln in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]]
    assert not (b"transfer-encoding" in names and b"content-length" in names), head


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
