"""TLS-terminating stream listeners over real sockets (issue 13 §4, Gateway API TLSRoute Terminate):
`protocol: tls` terminates with the listener's certificates (chosen by SNI) and pipes the decrypted
bytes over TCP; a tls-passthrough listener on the same address keeps the names it takes end to end;
half-close both ways (close_notify and FIN); bounded handshakes; TLS to the upstream; the access log
line of every stream connection (tcp, passthrough, terminated) and the hash balancer and passive
health of stream routes."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time

import pytest
from support.client import wait_until
from support.gateway import upstream_config
from support.logs import FAST_ACCESS_LOG
from support.streams import TcpEcho, client_context, make_cert, server_context

from fastgw.config import ConfigError, loads_config

EDGE = "127.0.0.2"


def _recv_all(s) -> bytes:
    out = b""
    while True:
        try:
            data = s.recv(65536)
        except ssl.SSLZeroReturnError:
            return out
        if not data:
            return out
        out += data


@pytest.fixture(scope="module")
def world(module_gateway_factory, tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    (d / "gw").mkdir()
    gw_cert, gw_key = make_cert(d / "gw", ["a.example.com", "*.w.example.com"])
    be_dir = d / "be"
    be_dir.mkdir()
    be_cert, be_key = make_cert(be_dir, ["b.example.com", "up.internal"])
    plain = TcpEcho("p")
    wild = TcpEcho("w")
    passed = TcpEcho("b", server_context(be_cert, be_key))      # terminates what is passed through
    secure = TcpEcho("s", server_context(be_cert, be_key))      # the upstream the gateway speaks TLS to
    log = d / "access.log"
    cfg = {
        "listeners": [
            {"address": "127.0.0.1:0", "name": "web"},
            {"address": "127.0.0.2:0", "name": "term", "protocol": "tls", "hostname": "*.example.com",
             "tls": {"certificates": [{"cert": str(gw_cert), "key": str(gw_key)}], "handshake_timeout": "1s"}},
            {"address": "127.0.0.2:0", "name": "pass", "protocol": "tls-passthrough", "hostname": "b.example.com"},
        ],
        "upstreams": {
            "plain": upstream_config(plain.address),
            "wild": upstream_config(wild.address),
            "passed": upstream_config(passed.address),
            "secure": {**upstream_config(secure.address),
                       "tls": {"ca_file": str(be_cert), "server_name": "up.internal"}},
        },
        "routes": [
            {"name": "http", "listeners": ["web"], "upstream": "plain"},
            {"name": "a", "listeners": ["term"], "match": {"hosts": ["a.example.com"]}, "upstream": "plain"},
            {"name": "w", "listeners": ["term"], "match": {"hosts": ["*.w.example.com"]}, "upstream": "wild",
             "tunnel": {"idle_timeout": "2s"}},
            {"name": "s", "listeners": ["term"], "match": {"hosts": ["s.w.example.com"]}, "upstream": "secure"},
            {"name": "b", "listeners": ["pass"], "upstream": "passed"},
        ],
        "access_log": {**FAST_ACCESS_LOG, "path": str(log), "format": "json"},
        "limits": {"header_timeout": "1s"},
    }
    g = module_gateway_factory(cfg)
    yield g, gw_cert, be_cert, log, (plain, wild, passed, secure)
    for s in (plain, wild, passed, secure):
        s.close()


def _fin(s: ssl.SSLSocket) -> None:
    """A TCP FIN under a TLS session, no close_notify (SSLSocket.shutdown would drop the session
    and read raw records after it): the gateway passes it on upstream."""
    socket.socket.shutdown(s, socket.SHUT_WR)


def _talk(port: int, cafile, name: str, payload: bytes, half_close: bool = True) -> bytes:
    ctx = client_context(cafile)
    with socket.create_connection((EDGE, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            s.sendall(payload)
            if half_close:
                _fin(s)
                return _recv_all(s)
            out = b""
            while len(out) < 2 + len(payload):
                out += s.recv(65536)
            return out


def test_terminated_bytes_reach_a_plain_tcp_upstream_and_come_back_encrypted(world):
    g, gw_cert, _, _, (plain, *_) = world
    payload = bytes(range(256)) * 4096          # 1 MiB: many records each way
    got = _talk(g.ports[1], gw_cert, "a.example.com", payload)
    assert got == b"p:" + payload


def test_a_wildcard_name_picks_its_route_and_the_certificate(world):
    g, gw_cert, *_ = world
    assert _talk(g.ports[1], gw_cert, "x.w.example.com", b"hi", half_close=False) == b"w:hi"


def test_the_passthrough_listener_on_the_same_address_stays_end_to_end(world):
    g, _, be_cert, _, (_, _, passed, _) = world
    # verified against the backend's certificate: the gateway's is not in the way
    assert _talk(g.ports[1], be_cert, "b.example.com", b"hello", half_close=False) == b"b:hello"
    wait_until(lambda: "b.example.com" in passed.sni, what="the backend saw the SNI")


def test_tls_to_the_upstream_is_verified_and_sends_its_server_name(world):
    g, gw_cert, _, _, (_, _, _, secure) = world
    assert _talk(g.ports[1], gw_cert, "s.w.example.com", b"secret", half_close=False) == b"s:secret"
    wait_until(lambda: "up.internal" in secure.sni, what="the upstream's SNI")


def test_openssl_s_client_through_a_terminating_listener(world):
    g, gw_cert, *_ = world
    # -quiet waits for the server to close: the route's idle timeout (2 s) does, with a close_notify
    proc = subprocess.run(["openssl", "s_client", "-connect", f"{EDGE}:{g.ports[1]}", "-servername",
                           "x.w.example.com", "-CAfile", str(gw_cert), "-verify_return_error", "-quiet"],
                          input=b"from-openssl\n", capture_output=True, timeout=30)
    assert proc.stdout == b"w:from-openssl\n", proc.stderr.decode(errors="replace")


def test_the_gateways_fin_to_a_tls_client_is_a_close_notify(world):
    g, gw_cert, *_ = world
    ctx = client_context(gw_cert)
    with socket.create_connection((EDGE, g.ports[1]), timeout=10) as raw:
        # without suppress_ragged_eofs a FIN that no close_notify came before raises SSLEOFError
        with ctx.wrap_socket(raw, server_hostname="a.example.com", suppress_ragged_eofs=False) as s:
            s.sendall(b"bye")
            _fin(s)
            out = b""
            while data := s.recv(100):
                out += data
            assert out == b"p:bye"


def test_an_unknown_name_is_refused_and_a_silent_handshake_is_bounded(world):
    g, gw_cert, *_ = world
    with pytest.raises(ssl.SSLError) as info:
        _talk(g.ports[1], gw_cert, "nobody.test", b"x", half_close=False)
    assert "UNRECOGNIZED_NAME" in str(info.value).upper()
    # a ClientHello for a terminated name, then silence: closed by the handshake timeout (1 s)
    ctx = client_context(gw_cert)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="a.example.com")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    s = socket.create_connection((EDGE, g.ports[1]), timeout=15)
    s.sendall(outgoing.read())
    t0 = time.monotonic()
    assert _recv_all(s)                       # the server's flight, then FIN when the time is up
    assert time.monotonic() - t0 < 10
    s.close()
    assert _talk(g.ports[1], gw_cert, "a.example.com", b"still", half_close=False) == b"p:still"


def test_a_client_that_does_not_trust_the_certificate_fails_the_handshake(world):
    g, _, be_cert, *_ = world
    with pytest.raises(ssl.SSLCertVerificationError):
        _talk(g.ports[1], be_cert, "a.example.com", b"x", half_close=False)


def _lines(log) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_each_stream_connection_has_an_access_log_line(world):
    g, gw_cert, _, log, (plain, *_) = world
    payload = b"z" * 5000
    assert _talk(g.ports[1], gw_cert, "a.example.com", payload) == b"p:" + payload

    def mine():
        return [x for x in _lines(log) if x.get("kind") == "stream" and x.get("bytes_received") == 5000]
    wait_until(lambda: mine(), what="the stream's access log line")
    line = mine()[-1]
    assert line["protocol"] == "tls" and line["listener"] == "term" and line["route"] == "a"
    assert line["sni"] == "a.example.com" and line["upstream"] == "plain" and line["target"] == plain.address
    assert line["bytes_sent"] == 5002 and line["termination"] == "done" and line["flags"] == []
    assert line["client_ip"] == "127.0.0.1" and line["client_port"] > 0
    assert line["duration_ms"] >= line["upstream_connect_ms"] >= 0
    # a refused one: no route for the name
    with pytest.raises(ssl.SSLError):
        _talk(g.ports[1], gw_cert, "nobody.test", b"x", half_close=False)
    wait_until(lambda: any(x.get("sni") == "nobody.test" for x in _lines(log)), what="the refusal's line")
    refused = next(x for x in _lines(log) if x.get("sni") == "nobody.test")
    assert refused["route"] is None and refused["termination"] == "refused" and refused["flags"] == ["NR"]
    assert refused["protocol"] == "tls-passthrough" or refused["protocol"] == "tls"


@pytest.mark.parametrize("protocol", ["tcp"])
def test_tcp_access_log_lines_in_text_format(gateway_factory, tmp_path, protocol):
    echo = TcpEcho("t")
    log = tmp_path / "access.log"
    try:
        g = gateway_factory({
            "listeners": [{"address": "127.0.0.1:0", "name": "web"},
                          {"address": "127.0.0.2:0", "name": "edge", "protocol": protocol}],
            "upstreams": {"u": upstream_config(echo.address), "dead": upstream_config("127.0.0.1:1")},
            "routes": [{"name": "http", "listeners": ["web"], "upstream": "u"},
                       {"name": "pipe", "listeners": ["edge"], "upstream": "u"}],
            "access_log": {**FAST_ACCESS_LOG, "path": str(log), "format": "text"},
        })
        with socket.create_connection((EDGE, g.ports[1]), timeout=10) as s:
            s.sendall(b"abc")
            s.shutdown(socket.SHUT_WR)
            assert _recv_all(s) == b"t:abc"
        wait_until(lambda: log.exists() and "kind=stream" in log.read_text(), what="the text line")
        line = next(x for x in log.read_text().splitlines() if "kind=stream" in x)
        for part in ("protocol=tcp", "listener=edge", "route=pipe", "upstream=u", f"target={echo.address}",
                     "bytes_received=3", "bytes_sent=5", "termination=done", "sni=-", "flags=-"):
            assert part in line.split(" "), (part, line)
    finally:
        echo.close()


def test_stream_connect_failures_eject_the_target_and_hash_balancers_key_on_the_client_ip(gateway_factory, tmp_path):
    a, b = TcpEcho("a"), TcpEcho("b")
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_address = f"127.0.0.1:{dead.getsockname()[1]}"       # bound, not listening: refused
    log = tmp_path / "access.log"
    try:
        g = gateway_factory({
            "listeners": [{"address": "127.0.0.1:0", "name": "web"},
                          {"address": "127.0.0.2:0", "name": "edge", "protocol": "tcp"},
                          {"address": "127.0.0.3:0", "name": "hashed", "protocol": "tcp"}],
            "upstreams": {
                "flaky": {"targets": [{"address": a.address}, {"address": dead_address}],
                          "health": {"passive": {"consecutive_failures": 2, "base_ejection": "1h", "max_ejection": "1h"}}},
                "hashed": {"targets": [{"address": a.address}, {"address": b.address}],
                           "balancer": {"type": "ring_hash", "hash_on": {"source": "client_ip"}}},
            },
            "routes": [{"name": "http", "listeners": ["web"], "upstream": "flaky"},
                       {"name": "pipe", "listeners": ["edge"], "upstream": "flaky"},
                       {"name": "hash", "listeners": ["hashed"], "upstream": "hashed"}],
            "access_log": {**FAST_ACCESS_LOG, "path": str(log), "format": "json"},
        }, workers=1)
        got = []
        for _ in range(12):
            with socket.create_connection(("127.0.0.2", g.ports[1]), timeout=10) as s:
                got.append(s.recv(2))
        # round robin over two targets: the dead one is tried twice, then ejected for an hour
        assert got.count(b"") == 2 and got[-6:] == [b"a:"] * 6, got
        wait_until(lambda: sum('"UF"' in x for x in log.read_text().splitlines()) >= 2, what="UF lines")
        # ring hash on the client IP: every connection from 127.0.0.1 reaches the same target
        seen = set()
        for _ in range(10):
            with socket.create_connection(("127.0.0.3", g.ports[2]), timeout=10) as s:
                seen.add(s.recv(2))
        assert len(seen) == 1, seen
    finally:
        a.close()
        b.close()
        dead.close()


@pytest.mark.parametrize("listener,why", [
    ({"address": "127.0.0.1:0", "name": "t", "protocol": "tls"}, "needs 'tls'"),
    ({"address": "127.0.0.1:0", "name": "t", "protocol": "tls-passthrough",
      "tls": {"certificates": [{"cert": "x.pem", "key": "x.key"}]}}, "use protocol tls"),
])
def test_tls_stream_listener_config_errors(listener, why):
    cfg = {"listeners": [listener], "upstreams": {"u": {"targets": [{"address": "127.0.0.1:1"}]}},
           "routes": [{"name": "r", "listeners": ["t"], "upstream": "u"}]}
    with pytest.raises(ConfigError) as info:
        loads_config(json.dumps(cfg), "json")
    assert why in str(info.value) and "$.listeners[0]" in str(info.value)


def test_a_reload_swaps_the_certificate_and_keeps_open_tunnels(gateway_factory, tmp_path):
    echo = TcpEcho("e")
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    cert1, key1 = make_cert(one, ["a.example.com"])
    cert2, key2 = make_cert(two, ["a.example.com"])
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    live_cert.write_bytes(cert1.read_bytes())
    live_key.write_bytes(key1.read_bytes())
    cfg = {"listeners": [{"address": "127.0.0.1:0", "name": "web"},
                         {"address": "127.0.0.2:0", "name": "term", "protocol": "tls",
                          "tls": {"certificates": [{"cert": str(live_cert), "key": str(live_key)}]}}],
           "upstreams": {"u": upstream_config(echo.address)},
           "routes": [{"name": "http", "listeners": ["web"], "upstream": "u"},
                      {"name": "t", "listeners": ["term"], "upstream": "u"}]}
    try:
        g = gateway_factory(cfg, workers=1)
        raw = socket.create_connection((EDGE, g.ports[1]), timeout=10)
        old = client_context(cert1).wrap_socket(raw, server_hostname="a.example.com")
        old.sendall(b"1")
        got = b""
        while len(got) < 3:
            got += old.recv(10)
        assert got == b"e:1"
        live_cert.write_bytes(cert2.read_bytes())
        live_key.write_bytes(key2.read_bytes())
        n = g.stderr_line_count()
        g.reload(cfg)
        wait_until(lambda: "configuration reloaded" in g.stderr_since(n), what="the worker reloaded")
        assert _talk(g.ports[1], cert2, "a.example.com", b"new", half_close=False) == b"e:new"
        with pytest.raises(ssl.SSLCertVerificationError):
            _talk(g.ports[1], cert1, "a.example.com", b"x", half_close=False)
        old.sendall(b"2")                        # the tunnel from before the reload goes on
        got = b""
        while not got.endswith(b"2"):
            got += old.recv(10)
        old.close()
    finally:
        echo.close()
