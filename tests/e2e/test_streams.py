"""Stream listeners over real sockets (issue 13 §4): `tcp` listeners piping to their route's upstream
with the same weighted balancing as HTTP, half-close, the idle timeout; `tls-passthrough` listeners
routing by the ClientHello's SNI (exact, wildcard, default), refusing an unknown one with a TLS alert,
bounding a silent or garbage first flight, and the TLS session staying end to end."""

from __future__ import annotations

import socket
import ssl
import time
from collections import Counter

import pytest
from support.admin import admin_client, with_admin
from support.client import wait_until
from support.gateway import upstream_config
from support.streams import TcpEcho, client_context, make_cert, refragment, server_context

from fastgw.config import ConfigError, loads_config

EDGE = "127.0.0.2"     # the stream listener's address (the HTTP one is 127.0.0.1)


def stream_config(protocol: str, routes: list, upstreams: dict, **extra) -> dict:
    cfg = {
        "listeners": [{"address": "127.0.0.1:0", "name": "web"},
                      {"address": "127.0.0.2:0", "name": "edge", "protocol": protocol}],
        "upstreams": upstreams,
        "routes": [{"name": "http", "listeners": ["web"], "upstream": next(iter(upstreams))}, *routes],
    }
    cfg.update(extra)
    return cfg


def recv_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        data = s.recv(65536)
        if not data:
            return out
        out += data


@pytest.fixture(scope="module")
def tcp_world(module_gateway_factory):
    a, b, c = TcpEcho("a"), TcpEcho("b"), TcpEcho("c")
    ups = {"pair": upstream_config(a.address, b.address, weights=[2, 1]), "single": upstream_config(c.address)}
    cfg = stream_config("tcp", [{"name": "pipe", "listeners": ["edge"], "upstream": "pair",
                                 "tunnel": {"idle_timeout": "1s"}}], ups,
                        limits={"header_timeout": "1s"})
    g = module_gateway_factory(with_admin(cfg))
    yield g, (a, b, c)
    for s in (a, b, c):
        s.close()


def test_tcp_bytes_both_ways_and_half_close(tcp_world):
    g, _ = tcp_world
    s = socket.create_connection((EDGE, g.ports[1]), timeout=10)
    payload = bytes(range(256)) * 4000
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    got = recv_all(s)
    assert got[2:] == payload and got[:2] in (b"a:", b"b:")
    s.close()


def test_tcp_connections_follow_the_weights(tcp_world):
    g, _ = tcp_world
    seen = Counter()
    for _ in range(30):
        s = socket.create_connection((EDGE, g.ports[1]), timeout=10)
        seen[s.recv(2)] += 1
        s.close()
    assert seen == {b"a:": 20, b"b:": 10}


def test_a_silent_tcp_tunnel_is_closed_by_its_idle_timeout(tcp_world):
    g, _ = tcp_world
    s = socket.create_connection((EDGE, g.ports[1]), timeout=15)
    assert s.recv(2) in (b"a:", b"b:")
    assert s.recv(10) == b""
    s.close()


def test_stream_connections_and_bytes_are_in_the_metrics(tcp_world):
    g, _ = tcp_world
    s = socket.create_connection((EDGE, g.ports[1]), timeout=10)
    s.sendall(b"x" * 1000)
    s.shutdown(socket.SHUT_WR)
    assert len(recv_all(s)) == 1002
    s.close()
    with admin_client(g) as c:
        def sample(name):
            for line in c.get("/metrics").text.splitlines():
                if line.startswith(name + "{") and 'route="pipe"' in line:
                    return float(line.rsplit(" ", 1)[1])
            return 0.0
        wait_until(lambda: sample("fastgw_stream_received_bytes_total") >= 1000, what="stream bytes in /metrics")
        assert sample("fastgw_stream_connections_total") >= 1
        assert sample("fastgw_stream_sent_bytes_total") >= 1002
        assert "fastgw_tunnels_open{kind=\"tcp\"}" in c.get("/metrics").text


def test_the_http_listener_beside_it_still_serves_http(tcp_world):
    g, _ = tcp_world
    s = socket.create_connection(("127.0.0.1", g.ports[0]), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert recv_all(s).startswith(b"HTTP/1.1 ")


@pytest.fixture(scope="module")
def tls_world(module_gateway_factory, tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    cert, key = make_cert(d, ["a.example.com", "b.example.com", "x.wild.example.com", "other.test"])
    ctx = server_context(cert, key)
    a, b, w, dflt = TcpEcho("a", ctx), TcpEcho("b", ctx), TcpEcho("w", ctx), TcpEcho("d", ctx)
    ups = {"a": upstream_config(a.address), "b": upstream_config(b.address), "w": upstream_config(w.address),
           "d": upstream_config(dflt.address)}
    routes = [
        {"name": "a", "listeners": ["edge"], "match": {"hosts": ["a.example.com"]}, "upstream": "a"},
        {"name": "b", "listeners": ["edge"], "match": {"hosts": ["b.example.com"]}, "upstream": "b"},
        {"name": "w", "listeners": ["edge"], "match": {"hosts": ["*.wild.example.com"]}, "upstream": "w"},
    ]
    cfg = stream_config("tls-passthrough", routes, ups, limits={"header_timeout": "1s"})
    g = module_gateway_factory(cfg)
    yield g, cert, cfg, (a, b, w, dflt)
    for s in (a, b, w, dflt):
        s.close()


def tls_talk(port: int, cert, name: str, message: bytes = b"hello") -> bytes:
    ctx = client_context(cert)
    with socket.create_connection((EDGE, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            s.sendall(message)
            out = b""
            while len(out) < 2 + len(message):
                out += s.recv(65536)
            return out


@pytest.mark.parametrize("name,who", [("a.example.com", b"a"), ("B.EXAMPLE.COM", b"b"),
                                      ("x.wild.example.com", b"w")])
def test_passthrough_routes_by_sni_and_tls_stays_end_to_end(tls_world, name, who):
    g, cert, _, _ = tls_world
    assert tls_talk(g.ports[1], cert, name) == who + b":hello"


def test_an_unknown_sni_is_refused_with_a_tls_alert(tls_world):
    g, cert, _, _ = tls_world
    with pytest.raises(ssl.SSLError) as info:
        tls_talk(g.ports[1], cert, "other.test")
    assert "UNRECOGNIZED_NAME" in str(info.value).upper()


def test_garbage_and_silence_are_refused_in_bounded_time(tls_world):
    g, _, _, _ = tls_world
    s = socket.create_connection((EDGE, g.ports[1]), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    got = recv_all(s)
    assert got == b"\x15\x03\x01\x00\x02\x02\x32"          # decode_error, then FIN
    s = socket.create_connection((EDGE, g.ports[1]), timeout=10)
    t0 = time.monotonic()
    assert recv_all(s) == b""                               # header_timeout (1 s) for the ClientHello
    assert time.monotonic() - t0 < 8


def test_a_client_hello_trickled_byte_by_byte_in_many_records(tls_world):
    g, cert, _, _ = tls_world
    ctx = client_context(cert)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="a.example.com")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = refragment(outgoing.read(), 40)
    s = socket.create_connection((EDGE, g.ports[1]), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(0, len(hello), 7):
        s.sendall(hello[i:i + 7])
        time.sleep(0.001)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            out = outgoing.read()
            if out:
                s.sendall(out)
            data = s.recv(65536)
            assert data, "closed during the handshake"
            incoming.write(data)
    out = outgoing.read()
    if out:
        s.sendall(out)
    obj.write(b"ping")
    s.sendall(outgoing.read())
    got = b""
    while len(got) < 6:
        try:
            got += obj.read(100)
        except ssl.SSLWantReadError:
            incoming.write(s.recv(65536))
    assert got == b"a:ping"
    s.close()


def test_a_default_route_takes_unknown_and_absent_names(module_gateway_factory, tls_world):
    _, cert, cfg, (_, _, _, dflt) = tls_world
    cfg = {**cfg, "routes": [*cfg["routes"], {"name": "d", "listeners": ["edge"], "upstream": "d"}]}
    g = module_gateway_factory(cfg)
    assert tls_talk(g.ports[1], cert, "a.example.com") == b"a:hello"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((EDGE, g.ports[1]), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="nobody.test") as s:
            s.sendall(b"x")
            got = b""
            while len(got) < 3:
                got += s.recv(10)
            assert got == b"d:x"
    wait_until(lambda: dflt.connections >= 1, what="the default route's upstream")


@pytest.mark.parametrize("change,why", [
    ({"listeners": [{"address": "127.0.0.1:0", "protocol": "tcp"}]}, "needs a name"),
    ({"listeners": [{"address": "127.0.0.1:0", "name": "t", "protocol": "tcp", "hostname": "a.b"}]},
     "no hostname"),
    ({"routes": [{"name": "r", "listeners": ["t"], "upstream": "u", "match": {"path": {"prefix": "/x"}}}]},
     "hosts (SNI) only"),
    ({"routes": [{"name": "r", "listeners": ["t", "h"], "upstream": "u"}]}, "not both"),
    ({"routes": [{"name": "r", "listeners": ["t"], "upstream": "u"},
                 {"name": "r2", "listeners": ["t"], "upstream": "u"}]}, "already has a route"),
    ({"routes": [{"name": "r", "listeners": ["t"], "upstream": "u", "match": {"hosts": ["a.b"]}}]},
     "no host to match"),
])
def test_stream_config_errors_name_their_path(change, why):
    cfg = {"listeners": [{"address": "127.0.0.1:0", "name": "h"},
                         {"address": "127.0.0.1:0", "name": "t", "protocol": "tcp"}],
           "upstreams": {"u": {"targets": [{"address": "127.0.0.1:1"}]}},
           "routes": [{"name": "r", "listeners": ["t"], "upstream": "u"}]}
    cfg.update(change)
    import json
    with pytest.raises(ConfigError) as info:
        loads_config(json.dumps(cfg), "json")
    assert why in str(info.value)
    assert "$." in str(info.value)
