"""Core proxying behaviour against the echo upstream: keep-alive, pipelining, HTTP/1.0, chunked both
ways, Expect: 100-continue, bodiless responses, 1xx relaying. Clients: raw sockets, httpx and curl."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
from support.client import RawConn, curl
from support.gateway import simple_config, upstream_config
from support.upstreams import RawUpstream, informational_then_ok
from support.wire import build_request, chunked, pattern_sha256

EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.fixture(scope="module")
def info_upstream():
    with RawUpstream(informational_then_ok(EARLY_HINTS, CONTINUE, body=b"final"), "info") as up:
        yield up


@pytest.fixture(scope="module")
def gw(echo, info_upstream, module_gateway_factory):
    t = {"connect": "2s", "response_header": "5s", "body_idle": "5s"}
    return module_gateway_factory(simple_config(
        upstreams={"echo": upstream_config(echo.address, timeouts=t),
                   "info": upstream_config(info_upstream.address, timeouts=t)},
        routes=[{"name": "info", "match": {"path": {"prefix": "/info"}}, "upstream": "info"},
                {"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "echo"}]))


def test_get_via_httpx(gw):
    r = httpx.get(gw.url + "/hello?q=1", timeout=15)
    assert r.status_code == 200
    j = r.json()
    assert j["method"] == "GET" and j["target"] == "/hello?q=1" and j["name"] == "echo"


def test_keepalive_reuses_client_and_upstream_connections(gw, echo):
    snap = echo.snapshot()
    with RawConn(gw.port) as c:
        for i in range(5):
            r = c.request("GET", f"/ka/{i}", [("X-Request-Id", f"ka-{i}")])
            assert r.status == 200 and r.json()["target"] == f"/ka/{i}"
            assert "close" not in r.connection_tokens
    got = echo.requests_since(snap)
    assert [q.target for q in got] == [f"/ka/{i}" for i in range(5)]
    # Pooled upstream connections are reused: at most one new one for five sequential requests.
    assert len(echo.conns_since(snap)) <= 1, "upstream connections were not reused across requests"


def test_pipelined_requests_answered_in_order(gw):
    data = (build_request("GET", "/p1") + build_request("POST", "/p2", body=b"x" * 1000)
            + build_request("GET", "/p3", [("X-Echo-Delay", "0.2")]) + build_request("GET", "/p4"))
    with RawConn(gw.port) as c:
        c.send(data)
        got = [c.response("POST" if i == 1 else "GET") for i in range(4)]
    assert [r.status for r in got] == [200] * 4
    assert [r.json()["target"] for r in got] == ["/p1", "/p2", "/p3", "/p4"]
    assert got[1].json()["body_len"] == 1000


def test_http10_closes_and_is_never_chunked(gw):
    with RawConn(gw.port) as c:
        # The upstream answers chunked; a 1.0 client must get Content-Length or a close-delimited body.
        c.send(build_request("GET", "/old", [("X-Echo-Chunked", "1"), ("X-Echo-Body-Bytes", "70000")],
                             version="HTTP/1.0", host=None))
        r = c.response()
        assert r.status == 200
        assert not r.headers.has("transfer-encoding") and not r.chunked
        assert r.body_len == 70000 and r.body_sha256 == pattern_sha256(70000)
        assert c.is_closed_by_peer(), "HTTP/1.0 without keep-alive must be closed"


def test_http10_keepalive(gw):
    with RawConn(gw.port) as c:
        for i in range(2):
            r = c.request("GET", f"/old-ka/{i}", [("Connection", "keep-alive")], version="HTTP/1.0")
            assert r.status == 200 and r.json()["target"] == f"/old-ka/{i}"
            assert r.headers.has("content-length") and not r.headers.has("transfer-encoding")


def test_chunked_request_body_forwarded(gw, echo):
    pieces = [b"a" * 10, b"b" * 70000, b"c"]
    body = chunked(*pieces, trailers="X-Trailer: yes\r\n")
    with RawConn(gw.port) as c:
        c.send(build_request("POST", "/up", [("Transfer-Encoding", "chunked"), ("X-Request-Id", "chunk-up")])
               + body)
        r = c.response("POST")
    assert r.status == 200
    j = r.json()
    assert j["body_len"] == 70011
    assert j["body_sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()
    up = echo.find_request("chunk-up")
    assert up.chunked or up.headers.get("content-length") == "70011"


def test_chunked_request_via_httpx_generator(gw):
    def gen():
        for i in range(50):
            yield bytes([65 + i % 26]) * 4096

    r = httpx.post(gw.url + "/gen", content=gen(), timeout=30)
    assert r.status_code == 200
    expected = b"".join(bytes([65 + i % 26]) * 4096 for i in range(50))
    assert r.json()["body_len"] == len(expected)
    assert r.json()["body_sha256"] == hashlib.sha256(expected).hexdigest()


def test_chunked_response_relayed(gw):
    with RawConn(gw.port) as c:
        r = c.request("GET", "/down", [("X-Echo-Chunked", "1"), ("X-Echo-Body-Bytes", "300000")])
        assert r.status == 200 and r.complete
        assert r.body_len == 300000 and r.body_sha256 == pattern_sha256(300000)
        r2 = c.request("GET", "/after")  # the connection is still in sync
        assert r2.status == 200 and r2.json()["target"] == "/after"


def test_expect_100_continue_raw(gw):
    with RawConn(gw.port) as c:
        c.send(build_request("POST", "/expect", [("Expect", "100-continue"), ("Content-Length", "2000")]))
        head = c.reader.read_head()  # the body has not been sent: only a 100 can arrive now
        assert head is not None and head[0].split(" ")[1] == "100", head
        c.send(b"e" * 2000)
        r = c.response("POST")
    assert r.status == 200 and r.json()["body_len"] == 2000


def test_expect_100_continue_curl(gw, echo):
    res = curl(gw.url + "/expect-curl", "-H", "Expect: 100-continue", "-H", "X-Request-Id: curl-expect",
               "--data-binary", "@-", input_data=b"z" * 5000)
    assert res.returncode == 0, res.stderr
    assert res.status == 200 and json.loads(res.body)["body_len"] == 5000
    assert echo.find_request("curl-expect").body_len == 5000


@pytest.mark.parametrize("how", ["HEAD", "204", "304"])
def test_bodiless_responses_keep_connection_in_sync(gw, how):
    with RawConn(gw.port) as c:
        if how == "HEAD":
            r = c.request("HEAD", "/head")
            assert r.status == 200
        else:
            r = c.request("GET", "/nb", [("X-Echo-Status", how)])
            assert r.status == int(how)
            assert not r.headers.has("transfer-encoding")
        # Nothing after the head: the next response must start right away with a status line.
        r2 = c.request("GET", "/next")
        assert r2.status == 200 and r2.json()["target"] == "/next"


def test_1xx_relayed_before_final_response(gw):
    with RawConn(gw.port) as c:
        r = c.request("GET", "/info")
        assert r.status == 200 and r.body == b"final"
        assert [s for s, _ in r.informational] == [103, 100]
        assert r.informational[0][1].get("link") == "</style.css>; rel=preload"
        assert c.request("GET", "/info").status == 200  # still in sync


def test_curl_get_and_post(gw):
    res = curl(gw.url + "/curl?x=1", "-H", "X-Echo-Status: 201", "--data-binary", "hello")
    assert res.returncode == 0, res.stderr
    assert res.status == 201
    j = json.loads(res.body)
    assert j["method"] == "POST" and j["body_len"] == 5 and j["target"] == "/curl?x=1"
