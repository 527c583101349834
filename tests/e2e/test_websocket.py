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


UPGRADE_HEAD = (b"GET /raw HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: %s\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def switching(protocol: bytes, wait: float = 0.5):
    """A raw upstream that reads the upgrade head, notes whether any byte came after it before its
    answer (nothing may: the 101 rule), answers 101 with `protocol`, then echoes in upper case."""
    def handler(conn):
        req = conn.read_request()
        if req is None:
            return
        conn.sock.settimeout(wait)
        try:
            early = conn.sock.recv(100)
        except TimeoutError:
            early = b""
        conn.server.note(f"early={len(early)}")
        conn.sock.settimeout(10)
        conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n" % protocol)
        while True:
            data = conn.sock.recv(65536)
            if not data:
                conn.sock.shutdown(socket.SHUT_WR)
                return
            conn.send(data.upper())
    return handler


@pytest.fixture(scope="module")
def raw_gw(module_gateway_factory):
    ok = RawUpstream(switching(b"foo"), "foo")
    other = RawUpstream(switching(b"bar"), "bar")
    cfg = simple_config(upstreams={"foo": upstream_config(ok.address), "bar": upstream_config(other.address)},
                        routes=[
                            {"name": "bar", "match": {"path": {"prefix": "/raw"}, "headers": [{"name": "x-to",
                             "value": "bar"}]}, "upstream": "bar", "tunnel": {"upgrades": ["foo"]}},
                            {"name": "foo", "match": {"path": {"prefix": "/"}}, "upstream": "foo",
                             "tunnel": {"upgrades": ["foo", "websocket"], "idle_timeout": "1s"}},
                        ])
    g = module_gateway_factory(cfg)
    g.foo, g.bar = ok, other
    yield g
    ok.close()
    other.close()


def test_bytes_after_the_head_wait_for_the_101_then_tunnel_with_half_close(raw_gw):
    s = socket.create_connection(("127.0.0.1", raw_gw.port), timeout=10)
    s.sendall(UPGRADE_HEAD % b"foo" + b"early bytes")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(65536)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"\r\nupgrade: foo\r\n" in head.lower() and b"\r\nconnection: upgrade\r\n" in head.lower()
    assert "early=0" in raw_gw.foo.events
    rest = head.partition(b"\r\n\r\n")[2]
    while len(rest) < len(b"EARLY BYTES"):
        rest += s.recv(65536)
    assert rest == b"EARLY BYTES"
    s.sendall(b"more")
    assert s.recv(100) == b"MORE"
    s.shutdown(socket.SHUT_WR)          # a FIN goes through as a FIN; the upstream answers with its own
    assert s.recv(100) == b""
    s.close()


def test_an_upstream_switching_to_a_protocol_not_asked_for_is_a_502(raw_gw):
    s = socket.create_connection(("127.0.0.1", raw_gw.port), timeout=10)
    s.sendall(UPGRADE_HEAD.replace(b"Host: a\r\n", b"Host: a\r\nX-To: bar\r\n") % b"foo")
    data = b""
    while True:
        got = s.recv(65536)
        if not got:
            break
        data += got
    assert data.startswith(b"HTTP/1.1 502 ")
    assert b"protocol the client did not ask for" in data


def test_the_tunnel_idle_timeout_is_its_own(raw_gw):
    s = socket.create_connection(("127.0.0.1", raw_gw.port), timeout=10)
    s.sendall(UPGRADE_HEAD % b"foo")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(65536)
    assert head.startswith(b"HTTP/1.1 101 ")
    for _ in range(3):                 # activity keeps it open past the idle timeout
        time.sleep(0.5)
        s.sendall(b"x")
        assert s.recv(10) == b"X"
    t0 = time.monotonic()
    assert s.recv(10) == b""           # then silence closes it
    assert time.monotonic() - t0 < 10
    s.close()


def test_websockets_client_to_a_wsproto_upstream(module_gateway_factory):
    from support.ws import WsprotoServer
    up = WsprotoServer()
    try:
        g = module_gateway_factory(simple_config(up.address))
        with open_ws(g) as ws:
            ws.send("to wsproto")
            assert ws.recv(timeout=10) == "to wsproto"
            ws.send(b"\x02" * 300000)
            assert ws.recv(timeout=10) == b"\x02" * 300000
    finally:
        up.close()


def test_a_reload_leaves_open_tunnels_on_their_runtime(gateway_factory, ws_up, ws_up2):
    routes = lambda up: [{"name": "ws", "match": {"path": {"prefix": "/"}}, "upstream": up}]  # noqa: E731
    ups = {"one": upstream_config(ws_up.address), "two": upstream_config(ws_up2.address)}
    cfg = simple_config(upstreams=ups, routes=routes("one"))
    g = gateway_factory(cfg)
    with open_ws(g, "/name") as old:
        assert old.recv(timeout=10) == "one"
        for i in range(3):
            want = "two" if i % 2 == 0 else "one"
            g.reload(simple_config(upstreams=ups, routes=routes(want)))
            wait_until(lambda want=want: _name_of_new(g) == want, what="the reload")
            old.send(f"still {i}")
            assert old.recv(timeout=10) == f"still {i}"


def _name_of_new(g):
    with open_ws(g, "/name") as ws:
        return ws.recv(timeout=10)


def test_sigterm_drains_then_closes_tunnels_with_1001(gateway_factory, ws_up):
    cfg = simple_config(ws_up.address, server={"drain_timeout": "1s"})
    g = gateway_factory(cfg)
    n = len(ws_up.closes)
    with open_ws(g) as ws:
        ws.send("before")
        assert ws.recv(timeout=10) == "before"
        g.signal(signal.SIGTERM)
        time.sleep(0.3)
        ws.send("while draining")       # the drain lets tunnels go on ...
        assert ws.recv(timeout=10) == "while draining"
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)         # ... then ends them with a close frame, not a reset
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert g.wait(30) == 0
    wait_until(lambda: len(ws_up.closes) > n, what="the upstream's close")
    assert ws_up.closes[-1] == 1001


@pytest.mark.parametrize("extra,why", [
    (b"Connection: keep-alive\r\nUpgrade: websocket\r\n", "Connection does not name upgrade"),
    (b"Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n", "a request with a body"),
])
def test_an_upgrade_that_is_no_offer_is_served_as_http_without_it(gw, extra, why):
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    body = b"hi" if b"Content-Length" in extra else b""
    s.sendall(b"GET /plain/offer HTTP/1.1\r\nHost: a\r\n" + extra + b"\r\n" + body)
    assert _read_response(s).startswith(b"HTTP/1.1 200"), why
    got = gw.http_echo.requests[-1]
    assert got.target == "/plain/offer"
    assert got.headers.get("upgrade") is None, why
    s.close()


NODE_PEER = os.path.join(os.path.dirname(__file__), "..", "support", "js", "ws_peer.js")
NODE_ENV = {**os.environ, "NODE_PATH": "/usr/share/nodejs"}


def _node_ws() -> bool:
    import shutil
    return shutil.which("node") is not None and os.path.isdir("/usr/share/nodejs/ws")


needs_node_ws = pytest.mark.skipif(not _node_ws() and not os.environ.get("CI"),
                                   reason="node and Debian's node-ws are not installed (.ci/run installs them)")


@needs_node_ws
def test_node_ws_client_through_the_gateway(gw):
    import subprocess
    r = subprocess.run(["node", NODE_PEER, "client", ws_url(gw, "/")], capture_output=True, text=True,
                       timeout=60, env=NODE_ENV)
    assert r.stdout.strip() == "ok", r.stdout + r.stderr


@needs_node_ws
def test_websockets_client_to_a_node_ws_upstream(module_gateway_factory):
    import subprocess
    server = subprocess.Popen(["node", NODE_PEER, "server"], stdout=subprocess.PIPE, text=True, env=NODE_ENV)
    try:
        port = int(server.stdout.readline())
        g = module_gateway_factory(simple_config(f"127.0.0.1:{port}"))
        with open_ws(g) as ws:
            assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
            ws.send("to node")
            assert ws.recv(timeout=10) == "to node"
            ws.send(b"\x03" * 500000)
            assert ws.recv(timeout=10) == b"\x03" * 500000
    finally:
        server.terminate()
        server.wait(10)


def flood_after_101(total: int):
    """After the 101, sends `total` bytes as fast as the tunnel takes them, and notes how far it got before a
    send stalled for 2 s."""
    def handler(conn):
        if conn.read_request() is None:
            return
        conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n")
        conn.sock.settimeout(2)
        chunk = b"z" * 65536
        sent = 0
        try:
            while sent < total:
                sent += conn.sock.send(chunk)
        except (TimeoutError, OSError):
            pass
        conn.server.note(f"sent={sent}")
        conn.sock.settimeout(30)
        try:
            while sent < total:
                sent += conn.sock.send(chunk)
        except OSError:
            pass
    return handler


def test_a_reader_that_does_not_read_holds_the_sender_back(module_gateway_factory):
    total = 256 << 20
    up = RawUpstream(flood_after_101(total), "flood")
    try:
        g = module_gateway_factory(simple_config(up.address, routes=[
            {"name": "f", "match": {"path": {"prefix": "/"}}, "upstream": "echo", "tunnel": {"upgrades": ["foo"]}}]))
        s = socket.create_connection(("127.0.0.1", g.port), timeout=30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(UPGRADE_HEAD % b"foo")
        wait_until(lambda: any(e.startswith("sent=") for e in up.events), timeout=60, what="the sender to stall")
        sent = int(next(e for e in up.events if e.startswith("sent="))[5:])
        # kernel buffers on both hops plus the gateway's write buffer, far from everything
        assert sent < 64 << 20, sent
        got = 0
        while got < sent:                # and it goes on once the reader reads
            data = s.recv(1 << 20)
            assert data
            got += len(data)
        s.close()
    finally:
        up.close()
