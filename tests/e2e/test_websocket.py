"""WebSocket and HTTP/1.1 Upgrade tunnels over real sockets (issue 13 §3): `websockets` as client and
server, `wsproto` as the second implementation; the 101 held-bytes rule, routes that do not allow
the switch, a non-101 answer, the tunnel's own idle timeout, reloads that leave tunnels alone, the
SIGTERM drain's close frame 1001, and the log phase at the tunnel's close."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest
from support.client import wait_until
from support.gateway import simple_config, upstream_config
from support.upstreams import EchoServer, RawUpstream
from support.ws import BytesMessage, Ping, TextMessage, WsEchoServer, WsprotoClient
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

MiB = 1 << 20


@pytest.fixture(scope="module")
def ws_up():
    s = WsEchoServer("one")
    yield s
    s.close()


@pytest.fixture(scope="module")
def ws_up2():
    s = WsEchoServer("two")
    yield s
    s.close()


def ws_url(gw, path="/"):
    return f"ws://127.0.0.1:{gw.port}{path}"


def open_ws(gw, path="/", **kw):
    kw.setdefault("max_size", None)
    kw.setdefault("open_timeout", 10)
    return connect(ws_url(gw, path), **kw)


@pytest.fixture(scope="module")
def gw(ws_up, module_gateway_factory, tmp_path_factory):
    log = tmp_path_factory.mktemp("wslog") / "access.jsonl"
    echo = EchoServer("http")
    cfg = simple_config(upstreams={"ws": upstream_config(ws_up.address), "http": upstream_config(echo.address)},
                        routes=[
                            {"name": "plain", "match": {"path": {"prefix": "/plain"}}, "upstream": "http"},
                            {"name": "noupgrade", "match": {"path": {"prefix": "/no"}}, "upstream": "ws",
                             "tunnel": {"upgrades": []}},
                            {"name": "ws", "match": {"path": {"prefix": "/"}}, "upstream": "ws"},
                        ])
    cfg["access_log"] = {"path": str(log), "format": "json"}
    g = module_gateway_factory(cfg)
    g.log_path = log
    g.http_echo = echo
    yield g
    echo.close()


def test_text_binary_and_ping_pong_through_the_tunnel(gw):
    with open_ws(gw) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.send(b"\x00\x01binary\xff")
        assert ws.recv(timeout=10) == b"\x00\x01binary\xff"
        ws.ping(b"p").wait(10)


def test_fragmented_messages_arrive_whole(gw):
    with open_ws(gw) as ws:
        ws.send(["frag", "mented ", "text"])
        assert ws.recv(timeout=10) == "fragmented text"
        ws.send([b"a" * 1000, b"b" * 70000, b"c"])
        assert ws.recv(timeout=10) == b"a" * 1000 + b"b" * 70000 + b"c"


def test_16_mib_messages_both_ways(gw):
    big = os.urandom(16 * MiB)
    with open_ws(gw, compression=None) as ws:
        ws.send(big)
        assert ws.recv(timeout=60) == big


def test_permessage_deflate_is_negotiated_end_to_end(gw):
    with open_ws(gw, "/headers") as ws:
        seen = json.loads(ws.recv(timeout=10))
        assert "permessage-deflate" in seen["sec-websocket-extensions"]
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        text = "compressible " * 10000
        ws.send(text)
        assert ws.recv(timeout=10) == text


def test_the_upstream_sees_the_upgrade_and_forwarded_fields(gw):
    with open_ws(gw, "/headers") as ws:
        seen = json.loads(ws.recv(timeout=10))
    assert seen["upgrade"].lower() == "websocket"
    assert "upgrade" in seen["connection"].lower()
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert "x-request-id" in seen


def test_close_codes_pass_both_ways(gw, ws_up):
    with open_ws(gw, "/close/4001") as ws:
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
        assert info.value.rcvd.code == 4001
    n = len(ws_up.closes)
    with open_ws(gw) as ws:
        ws.close(4002, "client says")
    wait_until(lambda: len(ws_up.closes) > n and 4002 in ws_up.closes[n:], what="close code at the upstream")


def test_a_route_that_does_not_allow_the_upgrade_serves_it_as_http(gw):
    with pytest.raises(InvalidStatus) as info:
        open_ws(gw, "/no")
    assert info.value.response.status_code == 426     # the upstream saw no Upgrade


def test_a_non_101_answer_ends_the_exchange_and_keeps_the_connection(gw):
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    req = (b"GET /plain/x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    s.sendall(req)
    data = _read_response(s)
    assert data.startswith(b"HTTP/1.1 200")
    got = gw.http_echo.requests[-1]
    assert got.headers.get("upgrade") == "websocket"
    s.sendall(b"GET /plain/y HTTP/1.1\r\nHost: a\r\n\r\n")
    assert _read_response(s).startswith(b"HTTP/1.1 200")
    s.close()


def _read_response(s) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        rest += s.recv(65536)
    return head + b"\r\n\r\n" + rest


def test_wsproto_client_through_the_gateway(gw):
    c = WsprotoClient(gw.port, "/")
    c.send(TextMessage(data="from wsproto"))
    assert c.message() == "from wsproto"
    c.send(BytesMessage(data=b"\x01" * 200000))
    assert c.message() == b"\x01" * 200000
    c.send(Ping(payload=b"hi"))
    assert c.message().payload == b"hi"
    c.close()


def test_the_log_phase_runs_once_when_the_tunnel_closes(gw):
    with open_ws(gw, compression=None) as ws:
        rid = ws.response.headers["X-Request-Id"]
        ws.send("x" * 1000)
        ws.recv(timeout=10)
        time.sleep(0.3)
        assert not [e for e in _log(gw) if e.get("request_id") == rid]
    wait_until(lambda: [e for e in _log(gw) if e.get("request_id") == rid], what="the tunnel's log line")
    time.sleep(0.2)
    lines = [e for e in _log(gw) if e.get("request_id") == rid]
    assert len(lines) == 1
    e = lines[0]
    assert e["status"] == 101
    assert e["bytes_received"] > 1000 and e["bytes_sent"] > 1000


def _log(gw):
    if not gw.log_path.exists():
        return []
    return [json.loads(x) for x in gw.log_path.read_text().splitlines() if x]
