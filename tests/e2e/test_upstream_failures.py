"""Upstream failure modes against scripted raw upstreams: 502/503/504, truncation, malformed responses,
stale pooled connections and unsolicited bytes."""

from __future__ import annotations

import time

import pytest
from support.client import RawConn, assert_gateway_error, curl, wait_until
from support.gateway import simple_config, upstream_config
from support.upstreams import (
    ClosedPort,
    RawUpstream,
    close_after_request,
    close_delimited,
    junk_while_idle,
    partial_body,
    reset_on_accept,
    respond_raw,
    response_head,
    slow,
    slow_body,
    stale_after_first,
    status_no_body,
)

FAST = {"connect": "2s", "response_header": "5s", "body_idle": "5s"}
SHORT = {"connect": "2s", "response_header": "1s", "body_idle": "1s"}

MALFORMED_RESPONSES = {
    "bad-status-line": b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok",
    "not-http": b"SSH-2.0-OpenSSH_9.0\r\n",
    "bad-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok",
    "duplicate-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "header-nul": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    "eof-in-head": b"HTTP/1.1 200 OK\r\nContent-Len",
}

# The head is valid, the body is not: a streaming gateway may already have relayed the head.
BAD_CHUNKED_BODY = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\nok\r\n0\r\n\r\n"


@pytest.fixture(scope="module")
def ups():
    servers = {
        "reset": RawUpstream(reset_on_accept, "reset"),
        "closed": RawUpstream(close_after_request, "closed"),
        "partial": RawUpstream(partial_body(total=100_000, sent=10_000), "partial"),
        "partial-rst": RawUpstream(partial_body(total=100_000, sent=10_000, rst=True), "partial-rst"),
        "slow": RawUpstream(slow(30), "slow"),
        "slowbody": RawUpstream(slow_body(b"x" * 1000, 30, 5000), "slowbody"),
        "headcl": RawUpstream(status_no_body(200, [("Content-Length", "1000")]), "headcl"),
        "closedelim": RawUpstream(close_delimited(b"d" * 50_000), "closedelim"),
        "closedelim-rst": RawUpstream(close_delimited(b"d" * 20_000, rst=True), "closedelim-rst"),
        "junk": RawUpstream(junk_while_idle(after=0.1), "junk"),
        "stale": RawUpstream(stale_after_first, "stale"),
    }
    servers["bad-body-chunk"] = RawUpstream(respond_raw(BAD_CHUNKED_BODY), "bad-body-chunk")
    for name, raw in MALFORMED_RESPONSES.items():
        servers["bad-" + name] = RawUpstream(respond_raw(raw), "bad-" + name)
    refused = ClosedPort()
    yield servers, refused
    for s in servers.values():
        s.close()
    refused.close()


@pytest.fixture(scope="module")
def gw(ups, module_gateway_factory):
    servers, refused = ups
    upstreams = {name: upstream_config(s.address, timeouts=SHORT if name.startswith("slow") else FAST)
                 for name, s in servers.items()}
    upstreams["refused"] = upstream_config(refused.address, timeouts=FAST)
    upstreams["empty"] = {"targets": []}
    routes = [{"name": n, "match": {"path": {"prefix": f"/{n}/"}}, "upstream": n} for n in upstreams]
    return module_gateway_factory(simple_config(upstreams=upstreams, routes=routes))


def get(gw, path, method="GET", headers=(), body=None):
    with RawConn(gw.port) as c:
        return c.request(method, path, list(headers), body)


def test_refused_is_502(gw):
    assert_gateway_error(get(gw, "/refused/x"), 502)


def test_reset_on_accept_is_502(gw):
    assert_gateway_error(get(gw, "/reset/x"), 502)


def test_closed_without_response_is_502(gw, ups):
    servers, _ = ups
    n = len(servers["closed"].requests)
    assert_gateway_error(get(gw, "/closed/x", "POST", body=b"data"), 502)
    assert len(servers["closed"].requests) == n + 1, "a POST must not be replayed"


def test_no_target_is_503(gw):
    assert_gateway_error(get(gw, "/empty/x"), 503)


def test_response_header_timeout_is_504(gw):
    assert_gateway_error(get(gw, "/slow/x"), 504)


def test_body_idle_timeout_aborts_relayed_response(gw):
    with RawConn(gw.port) as c:
        r = c.request("GET", "/slowbody/x")
        assert r.status == 200  # the head was already relayed; the stall must end in an abort
        assert not r.complete and r.body_len == 1000


@pytest.mark.parametrize("route", ["partial", "partial-rst"])
def test_upstream_dies_mid_body_raw(gw, ups, route):
    with RawConn(gw.port) as c:
        r = c.request("GET", f"/{route}/x")
    assert r.status == 200
    assert r.headers.get("content-length") in ("100000", None)
    assert not r.complete, "a truncated upstream body must not look complete to the client"
    assert r.body_len == 10_000, "the client should get exactly the bytes the upstream sent"


def test_upstream_dies_mid_body_curl(gw):
    res = curl(gw.url + "/partial/x")
    assert res.status == 200
    assert res.returncode in (18, 56), f"curl should report a truncated transfer, got {res.returncode}"
    assert len(res.body) == 10_000


@pytest.mark.parametrize("name", sorted(MALFORMED_RESPONSES))
def test_malformed_upstream_response_is_502(gw, name):
    assert_gateway_error(get(gw, f"/bad-{name}/x"), 502, context=name)


def test_malformed_chunked_response_body_aborts(gw):
    with RawConn(gw.port) as c:
        r = c.request("GET", "/bad-body-chunk/x")
        if r.status == 502:
            assert_gateway_error(r, 502)
        else:
            assert r.status == 200
            assert not r.complete, "a response with a broken chunked body must end in an abort"
            assert c.is_closed_by_peer()


def test_head_response_with_content_length_has_no_body(gw):
    with RawConn(gw.port) as c:
        r = c.request("HEAD", "/headcl/x")
        assert r.status == 200 and r.body == b""
        r2 = c.request("HEAD", "/headcl/y")  # would be garbled if the gateway waited for 1000 bytes
        assert r2.status == 200


def test_close_delimited_response_reframed(gw):
    with RawConn(gw.port) as c:
        r = c.request("GET", "/closedelim/x")
    assert r.status == 200 and r.complete
    assert r.body == b"d" * 50_000


def test_unsolicited_bytes_on_idle_connection_discard_it(gw, ups):
    servers, _ = ups
    up = servers["junk"]
    with RawConn(gw.port) as c:
        assert c.request("GET", "/junk/1").body == b"ok-1"
        wait_until(lambda: "junk-sent" in up.events, what="the upstream to send junk")
        time.sleep(0.5)  # let the gateway's event loop see the junk before the next request arrives
        r = c.request("GET", "/junk/2")
    assert r.status == 200
    assert r.body == b"ok-1", f"the gateway reused a connection with unsolicited bytes (got {r.body!r})"


def test_stale_pooled_connection_get_retried_post_not(gw, ups):
    servers, _ = ups
    up = servers["stale"]
    with RawConn(gw.port) as c:
        assert c.request("GET", "/stale/warm").body == b"fresh"  # leaves an idle pooled connection
        r = c.request("GET", "/stale/get", [("X-Request-Id", "stale-get-1")])
        assert r.status == 200 and r.body == b"fresh"
        seen = [q for q in up.requests if q.request_id == "stale-get-1"]
        assert len(seen) == 2, "the GET should hit the stale connection, then be retried once on a fresh one"
        assert seen[0].conn_id != seen[1].conn_id
        r = c.request("POST", "/stale/post", [("X-Request-Id", "stale-post-1")], body=b"once")
    posts = [q for q in up.requests if q.request_id == "stale-post-1"]
    assert len(posts) == 1, "a POST must never be replayed"
    if r.status == 200:
        # Allowed only if the gateway chose a fresh connection for the non-idempotent request.
        assert up.conns[posts[0].conn_id].requests == 1
    else:
        assert_gateway_error(r, 502)


def test_response_with_more_headers_than_the_initial_array(gateway_factory):
    """limits.max_headers above the upstream side's initial header array (128) still applies to
    responses: 150 response fields under max_headers 200 pass, 201 are a 502."""
    many = b"".join(b"X-F%d: v\r\n" % i for i in range(150))
    too_many = b"".join(b"X-F%d: v\r\n" % i for i in range(201))
    ok = RawUpstream(respond_raw(b"HTTP/1.1 200 OK\r\n" + many + b"Content-Length: 2\r\n\r\nok"), "many")
    bad = RawUpstream(respond_raw(b"HTTP/1.1 200 OK\r\n" + too_many + b"Content-Length: 2\r\n\r\nok"), "toomany")
    try:
        cfg = simple_config(
            upstreams={"ok": upstream_config(ok.address), "bad": upstream_config(bad.address)},
            routes=[{"name": "ok", "match": {"path": {"prefix": "/ok"}}, "upstream": "ok"},
                    {"name": "bad", "match": {"path": {"prefix": "/bad"}}, "upstream": "bad"}],
            limits={"max_headers": 200})
        gw = gateway_factory(cfg)
        with RawConn(gw.port) as c:
            r = c.request("GET", "/ok", [("Connection", "close")])
            assert r.status == 200 and r.body == b"ok"
            assert sum(1 for name, _ in r.headers if name.lower().startswith("x-f")) == 150
        with RawConn(gw.port) as c:
            assert_gateway_error(c.request("GET", "/bad", [("Connection", "close")]), 502)
    finally:
        ok.close()
        bad.close()


def test_close_delimited_body_cut_by_reset_reaches_http10_client_as_reset(gw):
    """Issue 7: to an HTTP/1.0 client the body is close-delimited, so a FIN would read as a
    complete response; the gateway must reset the client connection instead."""
    with RawConn(gw.port) as c:
        c.send(b"GET /closedelim-rst/x HTTP/1.0\r\nHost: t\r\n\r\n")
        data, how = c.read_to_close()
    assert data.startswith(b"HTTP/1.1 200 ")
    assert how == "reset", "a cut close-delimited body must end in a TCP reset, not a clean FIN"


def test_close_delimited_body_cut_is_an_error_for_curl(gw):
    res = curl(gw.url + "/closedelim-rst/x", "--http1.0")
    assert res.status == 200
    assert res.returncode == 56, f"curl must see a receive failure (reset), got exit {res.returncode}: {res.stderr}"


def test_clean_close_delimited_body_still_ends_with_fin_for_http10(gw):
    with RawConn(gw.port) as c:
        c.send(b"GET /closedelim/x HTTP/1.0\r\nHost: t\r\n\r\n")
        data, how = c.read_to_close()
    assert how == "eof" and data.endswith(b"d" * 50_000)


def close_delimited_then_reset(conn) -> None:
    conn.read_request()
    conn.send(response_head(200, [("Content-Type", "text/plain")]) + b"d" * 5000)
    conn.sleep(0.3)             # let the bytes reach the gateway
    conn.reset()                # RST, not FIN: the body did not end


def test_close_delimited_body_cut_by_reset_is_not_a_clean_end(gateway_factory):
    """UpstreamConn.connection_lost (upstream.pyx:246-249) ends a close-delimited (FR_CLOSE) body
    cleanly whatever `exc` is: a connection reset mid-body is relayed to an HTTP/1.1 client as a
    complete chunked response (terminating 0-chunk) on a connection kept alive, so the client
    (or a cache) takes a truncated body for the whole one. Only a FIN ends a close-delimited body
    (RFC 9112 6.3 item 8 / 8); a reset is an incomplete message. Expected, as for every other
    upstream death mid-body (docs/http.md): the client gets the bytes and then an abort, never a
    clean end.
    (From review 1: a reset mid close-delimited body is not relayed as a clean end.)"""
    with RawUpstream(close_delimited_then_reset, "cd-rst") as up:
        gw = gateway_factory(simple_config(up.address))
        with RawConn(gw.port, timeout=5) as c:
            r = c.request("GET", "/")
            assert r.status == 200 and r.body_len == 5000
            clean = r.complete
            still_open = not c.is_closed_by_peer(timeout=2)
        assert not clean and not still_open, (
            f"a body cut by a reset arrived as a complete {'chunked' if r.chunked else ''} response "
            f"(complete={clean}, connection kept open={still_open})")
