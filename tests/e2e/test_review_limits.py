"""Regression tests from a review: the head size limit while a header line is unterminated, a reload
that raises limits.max_headers on open connections, and a stalled request body (limits.body_timeout)."""

from __future__ import annotations

import time

from support.client import RawConn, wait_until
from support.gateway import simple_config
from support.wire import build_request


def test_review_unterminated_header_line_hits_header_limit_431(echo, gateway_factory):
    """`_parse_fields` (http1.pyx:246) compares the position with max_head_bytes only at the start
    of a field line; the name and value scans return PARSE_INCOMPLETE at the end of the buffer
    without any size check. A client that sends one header line and never its CRLF is buffered
    without bound (`self.buf + data`, re-parsed from the start on every read: quadratic CPU) until
    header_timeout, and then gets 408 instead of 431. Expected: 431 as soon as the head is over
    limits.max_header_bytes, however it is split."""
    gw = gateway_factory(simple_config(echo.address, limits={"max_header_bytes": 4096,
                                                             "header_timeout": "20s"}))
    rss_before = gw.rss_bytes()
    sent = 0
    with RawConn(gw.port, timeout=3) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: h.test\r\nX-Big: ")
        try:
            piece = b"v" * 65536
            for _ in range(256):               # 16 MiB, 4096 times the limit
                c.send(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        t0 = time.monotonic()
        try:
            r = c.response()
        except TimeoutError:
            grown = (gw.rss_bytes() - rss_before) / 2**20
            raise AssertionError(
                f"no answer within 3 s after {sent >> 20} MiB of one unterminated header line "
                f"(max_header_bytes 4096); gateway RSS grew by {grown:.0f} MiB") from None
        assert r.status == 431, (r.status, time.monotonic() - t0)


def test_review_unterminated_header_name_hits_header_limit_431(echo, gateway_factory):
    """Same gap in the field-name scan: a name with no colon yet is never measured."""
    gw = gateway_factory(simple_config(echo.address, limits={"max_header_bytes": 4096,
                                                             "header_timeout": "20s"}))
    with RawConn(gw.port, timeout=3) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: h.test\r\n")
        try:
            for _ in range(16):
                c.send(b"X" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            r = c.response()
        except TimeoutError:
            raise AssertionError("no answer within 3 s to a 1 MiB header name (limit 4096)") from None
        assert r.status == 431


def test_review_reload_raising_max_headers_applies_to_open_connections(echo, gateway_factory):
    """ClientConn sizes its field array from limits.max_headers once, at accept
    (client.pyx:58-60), and the parser also stops at that capacity (`h.nfields >= h.fields_cap`,
    http1.pyx:287). After a reload that raises max_headers, every connection accepted before it
    answers 431 to requests the new limit allows, for as long as the keep-alive connection lives.
    Expected: the limit of the runtime the request is parsed with."""
    cfg = simple_config(echo.address, limits={"max_headers": 10})
    gw = gateway_factory(cfg)
    many = [(f"X-H{i}", "v") for i in range(30)]
    with RawConn(gw.port) as c:
        assert c.request("GET", "/before").status == 200
        lines = gw.stderr_line_count()
        gw.reload(simple_config(echo.address, limits={"max_headers": 50}))
        wait_until(lambda: "configuration reloaded" in gw.stderr_since(lines), what="the reload")
        with RawConn(gw.port) as fresh:
            assert fresh.request("GET", "/fresh", many).status == 200, "precondition: new limit in force"
        c.send(build_request("GET", "/same-connection", many))
        r = c.response()
        assert r.status == 200, f"{r.status} for 31 fields on a connection opened before the reload"


def test_review_stalled_request_body_is_eventually_closed(echo, gateway_factory):
    """No deadline covers a request body that stops arriving: `_start_request` clears the client
    deadline (client.pyx:175-176), the upstream's connect deadline is cleared in connection_made and
    its response-header deadline is armed only once the request is complete (`_flush_queue` /
    `_request_complete`). A client that sends a head and part of its body and then goes quiet
    holds a client connection and an upstream connection forever (slow-POST / R.U.D.Y.), with
    every configured timeout at 1 s. Expected: some deadline (header_timeout, or a body idle
    timeout for requests) closes it."""
    up = {"targets": [{"address": echo.address}],
          "timeouts": {"connect": "1s", "response_header": "1s", "body_idle": "1s"}}
    gw = gateway_factory(simple_config(upstreams={"echo": up},
                                       limits={"header_timeout": "1s", "keepalive_timeout": "1s",
                                               "body_timeout": "1s"}))
    with RawConn(gw.port) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: h.test\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        assert c.response().status == 408
        assert c.is_closed_by_peer(timeout=6), \
            "a request body stalled for 6 s is still held open with every timeout at 1 s"
