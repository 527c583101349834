"""Self-tests for the test infrastructure: the upstreams, wire helpers and launcher, without the gateway.

These must pass on their own: when an e2e test fails, these tell whether to suspect the harness.
"""

from __future__ import annotations

import hashlib
import socket
import sys
import textwrap

import httpx
import pytest
from support.client import RawConn, curl, parse_one, raw_exchange, wait_until
from support.gateway import Gateway, simple_config
from support.upstreams import (
    ClosedPort,
    EchoServer,
    RawUpstream,
    close_after_request,
    close_delimited,
    informational_then_ok,
    junk_while_idle,
    partial_body,
    reset_on_accept,
    stale_after_first,
)
from support.wire import build_request, chunked, pattern_chunks, pattern_sha256


@pytest.fixture
def fresh_echo():
    with EchoServer("selfcheck") as srv:
        yield srv


def test_echo_json_and_keepalive(fresh_echo):
    snap = fresh_echo.snapshot()
    with httpx.Client(base_url=f"http://{fresh_echo.address}") as c:
        r1 = c.post("/a?x=1", content=b"hello", headers={"X-Request-Id": "abc"})
        r2 = c.get("/b")
    assert r1.status_code == 200 and r2.status_code == 200
    j = r1.json()
    assert j["name"] == "selfcheck" and j["method"] == "POST" and j["target"] == "/a?x=1"
    assert j["body_len"] == 5 and j["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert ["X-Request-Id", "abc"] in [[k.title(), v] for k, v in j["headers"]]
    assert len(fresh_echo.conns_since(snap)) == 1  # keep-alive honoured
    assert [r.method for r in fresh_echo.requests_since(snap)] == ["POST", "GET"]
    assert fresh_echo.find_request("abc").body == b"hello"


def test_echo_chunked_request_and_response(fresh_echo):
    body = chunked(b"hello ", b"world", trailers="X-T: 1\r\n")
    req = build_request("POST", "/c", [("Transfer-Encoding", "chunked"), ("X-Echo-Chunked", "1"),
                                       ("Connection", "close")], host="h")
    data, how = raw_exchange(fresh_echo.port, req + body)
    resp = parse_one(data)
    assert resp.status == 200 and resp.chunked and resp.complete
    j = resp.json()
    assert j["body_len"] == 11 and j["trailers"] == [["X-T", "1"]]


def test_echo_controls(fresh_echo):
    with httpx.Client(base_url=f"http://{fresh_echo.address}") as c:
        r = c.get("/", headers={"X-Echo-Status": "418", "X-Echo-Set-Header": "A:1,B-B: two",
                                "X-Echo-Body-Bytes": "300000", "X-Echo-Delay": "0.1"})
    assert r.status_code == 418
    assert r.headers["a"] == "1" and r.headers["b-b"] == "two"
    assert len(r.content) == 300000
    assert hashlib.sha256(r.content).hexdigest() == pattern_sha256(300000)


def test_pattern_is_chunking_independent():
    a = b"".join(bytes(p) for p in pattern_chunks(5000, 333))
    b = b"".join(bytes(p) for p in pattern_chunks(5000))
    assert a == b and a[:3] == b"\x00\x01\x02" and a[256] == 0


def test_echo_records_raw_bytes_even_garbage(fresh_echo):
    snap = fresh_echo.snapshot()
    data, _ = raw_exchange(fresh_echo.port, b"NOT HTTP AT ALL\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400")
    assert fresh_echo.bytes_since(snap) == len(b"NOT HTTP AT ALL\r\n\r\n")
    assert fresh_echo.raw_since(snap) == b"NOT HTTP AT ALL\r\n\r\n"
    assert fresh_echo.requests_since(snap) == []


def test_echo_expect_100_continue(fresh_echo):
    with RawConn(fresh_echo.port) as c:
        c.send(build_request("POST", "/", [("Expect", "100-continue"), ("Content-Length", "3")]))
        head = c.reader.read_head()
        assert head[0] == "HTTP/1.1 100 Continue"
        c.send(b"abc")
        r = c.response("POST")
    assert r.status == 200 and r.json()["body_len"] == 3


def test_echo_head_and_204(fresh_echo):
    with RawConn(fresh_echo.port) as c:
        r = c.request("HEAD", "/")
        assert r.status == 200 and r.body == b"" and int(r.headers.get("content-length")) > 0
        r = c.request("GET", "/", [("X-Echo-Status", "204")])
        assert r.status == 204 and not r.headers.has("content-length")
        r = c.request("GET", "/")  # connection still in sync
        assert r.status == 200 and r.json()["method"] == "GET"


def test_curl_against_echo(fresh_echo):
    # curl 7.88 only adds Expect by itself for large uploads: ask for it explicitly.
    res = curl(f"http://{fresh_echo.address}/x", "-H", "X-Echo-Status: 201", "-H", "Expect: 100-continue",
               "--data-binary", "@-", input_data=b"z" * 2000)
    assert res.returncode == 0, res.stderr
    assert res.status == 201
    assert "100 Continue" in res.headers_text
    import json

    assert json.loads(res.body)["body_len"] == 2000


def test_closed_port_refuses():
    cp = ClosedPort()
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", cp.port), timeout=5)
    finally:
        cp.close()


def test_reset_on_accept():
    with RawUpstream(reset_on_accept) as up:
        with RawConn(up.port) as c:
            try:
                c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            except ConnectionResetError:       # the reset can arrive before the send
                data, how = b"", "reset"
            else:
                data, how = c.read_to_close()
        assert data == b""
        assert how in ("reset", "eof")


def test_close_after_request_counts_requests():
    with RawUpstream(close_after_request) as up:
        data, _ = raw_exchange(up.port, build_request("POST", "/", body=b"abc"))
        assert data == b""
        assert [r.method for r in up.requests] == ["POST"]


def test_partial_body_then_fin():
    with RawUpstream(partial_body(total=50_000, sent=1_000)) as up:
        with RawConn(up.port) as c:
            r = c.request("GET", "/")
        assert r.status == 200 and not r.complete and r.body_len == 1_000


def test_informational_and_close_delimited():
    with RawUpstream(informational_then_ok(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n")) as up:
        with RawConn(up.port) as c:
            r = c.request("GET", "/")
        assert [s for s, _ in r.informational] == [103] and r.body == b"final"
    with RawUpstream(close_delimited(b"until-close")) as up:
        with RawConn(up.port) as c:
            r = c.request("GET", "/")
        assert r.body == b"until-close" and r.complete


def test_junk_while_idle_and_stale_after_first():
    with RawUpstream(junk_while_idle(after=0.05)) as up:
        with RawConn(up.port) as c:
            assert c.request().body == b"ok-1"
            wait_until(lambda: "junk-sent" in up.events, what="junk")
            assert c.request().body == b"JUNK"  # what a careless reuse would see
    with RawUpstream(stale_after_first) as up:
        with RawConn(up.port) as c:
            assert c.request().body == b"fresh"
            c.send(build_request())
            data, _ = c.read_to_close()
            assert data == b""
        wait_until(lambda: "stale-dropped" in up.events, what="stale drop")
        assert len(up.requests) == 2


STUB = textwrap.dedent('''
    import signal, socket, sys, threading
    cfg = sys.argv[sys.argv.index("-c") + 1]
    socks = []
    for _ in range(open(cfg).read().count("address: 127.0.0.1:0")):
        s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16); socks.append(s)
    def serve(s):
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            c.recv(65536)
            c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 4\\r\\nConnection: close\\r\\n\\r\\nstub")
            c.close()
    for s in socks:
        threading.Thread(target=serve, args=(s,), daemon=True).start()
        print("fastgw: listening on http://127.0.0.1:%d" % s.getsockname()[1], file=sys.stderr, flush=True)
    signal.signal(signal.SIGHUP, lambda *a: print("stub: reloaded", file=sys.stderr, flush=True))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    done.wait()
    sys.exit(0)
''')


def test_gateway_launcher_with_stub(tmp_path):
    stub = tmp_path / "stub.py"
    stub.write_text(STUB)
    # The stub listens once per "address: 127.0.0.1:0" line: one listener + one upstream target here.
    cfg = simple_config("127.0.0.1:1", listeners=2)
    cfg["listeners"][1]["address"] = "127.0.0.2:0"       # distinct addresses: one line each expected
    cfg["upstreams"]["echo"]["targets"][0]["address"] = "127.0.0.1:0"
    with Gateway(cfg, tmp_path / "gw", program=[sys.executable, str(stub)]) as gw:
        assert len(gw.ports) == 2  # waits for every listener line (the stub prints three; fine)
        assert httpx.get(gw.url + "/").text == "stub"
        n = gw.stderr_line_count()
        gw.reload(cfg)
        wait_until(lambda: "stub: reloaded" in gw.stderr_since(n), what="reload line")
        assert gw.rss_bytes() > 0 and gw.hwm_bytes() >= gw.rss_bytes() // 2
        assert gw.stop() == 0


def test_gateway_launcher_reports_early_exit(tmp_path):
    stub = tmp_path / "bad.py"
    stub.write_text("import sys; print('boom: bad config', file=sys.stderr); sys.exit(3)\n")
    gw = Gateway(simple_config("127.0.0.1:1"), tmp_path, program=[sys.executable, str(stub)])
    with pytest.raises(AssertionError, match="boom: bad config"):
        gw.start(timeout=20)
    gw.close()

