"""Limits: 414, 431 (size and count, also while a line is unterminated), 413 (Content-Length and chunked),
408 slowloris and stalled bodies, keep-alive idle timeout, max requests per connection, underscores in header
names (drop mode), max_headers after a reload, the Host length limit on an absolute-form authority."""

from __future__ import annotations

import time

import pytest
from support.client import RawConn, assert_gateway_error, sync_and_assert_nothing_forwarded, wait_until
from support.gateway import only_worker_pid, serves, simple_config, upstream_config
from support.wire import build_request, chunked

LIMITS = {
    "max_request_line_bytes": 1024,
    "max_header_bytes": 4096,
    "max_headers": 20,
    "max_body_bytes": 100_000,
    "header_timeout": "1s",
    "keepalive_timeout": "1s",
    "max_requests_per_connection": 3,
}


@pytest.fixture(scope="module")
def gw(echo, module_gateway_factory):
    up = upstream_config(echo.address, timeouts={"connect": "2s", "response_header": "5s", "body_idle": "5s"})
    return module_gateway_factory(simple_config(
        upstreams={"echo": up}, limits=LIMITS,
        routes=[{"name": "small", "match": {"path": {"prefix": "/small"}}, "upstream": "echo",
                 "max_body_bytes": 1000},
                {"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "echo"}]))


def rejected(gw, echo, data: bytes, status: int, method: str = "GET"):
    snap = echo.snapshot()
    with RawConn(gw.port) as c:
        try:
            c.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.response(method)
        assert_gateway_error(r, status)
        assert "close" in r.connection_tokens
        assert c.is_closed_by_peer()
    sync_and_assert_nothing_forwarded(gw, echo, snap, f"{status} case")
    return r


def test_request_line_too_long_414(gw, echo):
    rejected(gw, echo, build_request("GET", "/" + "a" * 1100), 414)


def test_request_line_at_limit_served(gw):
    target = "/" + "a" * 980  # a 1000-byte request line: under the 1024 limit however CRLF is counted
    with RawConn(gw.port) as c:
        assert c.request("GET", target).status == 200


def test_header_block_too_large_431(gw, echo):
    rejected(gw, echo, build_request("GET", "/", [("X-Big", "v" * 5000)]), 431)


def test_too_many_headers_431(gw, echo):
    rejected(gw, echo, build_request("GET", "/", [(f"X-H{i}", "v") for i in range(25)]), 431)


def test_headers_under_limits_served(gw):
    with RawConn(gw.port) as c:
        assert c.request("GET", "/", [(f"X-H{i}", "v" * 100) for i in range(15)]).status == 200


def test_route_body_limit_content_length_413(gw, echo):
    rejected(gw, echo, build_request("POST", "/small", body=b"x" * 1001), 413, "POST")


def test_global_body_limit_content_length_413(gw, echo):
    rejected(gw, echo, build_request("POST", "/big", [("Content-Length", "100001")]) + b"x" * 100_001, 413,
             "POST")


def test_body_limit_chunked_413(gw):
    with RawConn(gw.port) as c:
        try:
            c.send(build_request("POST", "/small", [("Transfer-Encoding", "chunked")])
                   + chunked(b"a" * 600, b"b" * 600))
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.response("POST")
        assert_gateway_error(r, 413)
        assert c.is_closed_by_peer()


def test_body_within_route_limit_served(gw):
    with RawConn(gw.port) as c:
        r = c.request("POST", "/small", body=b"x" * 1000)
        assert r.status == 200 and r.json()["body_len"] == 1000


def test_slowloris_head_408(gw, echo):
    snap = echo.snapshot()
    lines = [b"GET /slow HTTP/1.1\r\n", b"Host: h.test\r\n"] + [b"X-Drip-%d: v\r\n" % i for i in range(40)]
    with RawConn(gw.port) as c:
        try:
            for line in lines:  # ~4 s of dripping, well past header_timeout (1 s)
                c.send(line)
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.response()
        assert_gateway_error(r, 408)
        assert c.is_closed_by_peer()
    assert echo.requests_since(snap) == []


def test_keepalive_idle_timeout_closes(gw):
    with RawConn(gw.port) as c:
        r = c.request("GET", "/idle")
        assert r.status == 200 and "close" not in r.connection_tokens
        assert c.is_closed_by_peer(timeout=20), "idle keep-alive connection was not closed"


def test_max_requests_per_connection(gw):
    with RawConn(gw.port) as c:
        r1 = c.request("GET", "/n1")
        r2 = c.request("GET", "/n2")
        r3 = c.request("GET", "/n3")
        assert [r.status for r in (r1, r2, r3)] == [200, 200, 200]
        assert "close" not in r1.connection_tokens and "close" not in r2.connection_tokens
        assert "close" in r3.connection_tokens
        assert c.is_closed_by_peer()


def test_underscore_header_dropped_in_drop_mode(echo, gateway_factory):
    gw = gateway_factory(simple_config(echo.address, limits={"underscores_in_headers": "drop"}))
    with RawConn(gw.port) as c:
        r = c.request("GET", "/u", [("X_Under", "1"), ("X-Normal", "2")])
    assert r.status == 200
    names = [k.lower() for k, _ in r.json()["headers"]]
    assert "x_under" not in names and "x-normal" in names


def test_underscore_header_rejected_by_default(gateway, echo):
    rejected(gateway, echo, build_request("GET", "/u", [("X_Under", "1")]), 400)


def test_header_deadline_counts_from_accept_not_from_first_byte(gw, echo):
    """Issue 7: a connection silent for most of header_timeout (1 s) and then sending one byte
    must not get a fresh header_timeout: the 408 comes at the deadline set at accept."""
    snap = echo.snapshot()
    with RawConn(gw.port) as c:
        time.sleep(0.8)
        c.send(b"G")
        c.sock.settimeout(0.6)      # well before accept + 2 x header_timeout
        try:
            data = c.sock.recv(65536)
        except TimeoutError:
            data = b""
    assert data.startswith(b"HTTP/1.1 408 "), f"expected a 408 by the original head deadline, got {data[:60]!r}"
    assert echo.requests_since(snap) == []


def test_keepalive_next_head_has_its_own_header_deadline(gw):
    """After a keep-alive exchange the wait for the next request is keepalive_timeout's; a head
    that then starts gets header_timeout from its first byte."""
    with RawConn(gw.port) as c:
        assert c.request("GET", "/ka1").status == 200
        time.sleep(0.6)
        c.send(b"GET /ka2 HTTP/1.1\r\n")
        time.sleep(0.6)             # 1.2 s after the exchange, 0.6 s into the head
        c.send(b"Host: h.test\r\n\r\n")
        assert c.response().status == 200


def test_chunk_extensions_bounded_per_message_400(gw, echo):
    """Issue 7: 1-byte chunks each carrying a 4 KiB extension: within the per-line bound, over the
    16 KiB a message may spend on extensions (Node's bound for CVE-2024-22019)."""
    ext = b";e=" + b"x" * 4000
    body = b"".join(b"1" + ext + b"\r\nx\r\n" for _ in range(5)) + b"0\r\n\r\n"
    head = b"POST /ext HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    r = rejected(gw, echo, head + body, 400)
    assert b"chunk extension" in r.body


def test_chunk_size_line_bounded_400(gw, echo):
    head = b"POST /ext HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    r = rejected(gw, echo, head + b"1;e=" + b"y" * 5000 + b"\r\nx\r\n0\r\n\r\n", 400)
    assert b"chunk size line" in r.body


def test_small_chunk_extensions_still_served(gw):
    head = b"POST /ext HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    with RawConn(gw.port) as c:
        c.send(head + b"".join(b"1;name=value\r\nx\r\n" for _ in range(50)) + b"0\r\n\r\n")
        r = c.response("POST")
    assert r.status == 200 and r.json()["body_len"] == 50


# -- from review 1: the head limit while a line is unterminated, a reload of max_headers, a stalled
# request body, and an absolute-form authority over the Host limit ------------------------------------


def test_unterminated_header_line_hits_header_limit_431(echo, gateway_factory):
    """`_parse_fields` (http1.pyx:246) compares the position with max_head_bytes only at the start
    of a field line; the name and value scans return PARSE_INCOMPLETE at the end of the buffer
    without any size check. A client that sends one header line and never its CRLF is buffered
    without bound (`self.buf + data`, re-parsed from the start on every read: quadratic CPU) until
    header_timeout, and then gets 408 instead of 431. Expected: 431 as soon as the head is over
    limits.max_header_bytes, however it is split.
    (From review 1: a header line without its CRLF is measured against max_header_bytes.)"""
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


def test_unterminated_header_name_hits_header_limit_431(echo, gateway_factory):
    """Same gap in the field-name scan: a name with no colon yet is never measured.
    (From review 1: a field name without its colon is measured against max_header_bytes.)"""
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


def test_reload_raising_max_headers_applies_to_open_connections(echo, gateway_factory):
    """ClientConn sizes its field array from limits.max_headers once, at accept
    (client.pyx:58-60), and the parser also stops at that capacity (`h.nfields >= h.fields_cap`,
    http1.pyx:287). After a reload that raises max_headers, every connection accepted before it
    answers 431 to requests the new limit allows, for as long as the keep-alive connection lives.
    Expected: the limit of the runtime the request is parsed with.
    (From review 1: a reload's max_headers applies to connections opened before it.)"""
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


def test_stalled_request_body_is_eventually_closed(echo, gateway_factory):
    """No deadline covers a request body that stops arriving: `_start_request` clears the client
    deadline (client.pyx:175-176), the upstream's connect deadline is cleared in connection_made and
    its response-header deadline is armed only once the request is complete (`_flush_queue` /
    `_request_complete`). A client that sends a head and part of its body and then goes quiet
    holds a client connection and an upstream connection forever (slow-POST / R.U.D.Y.), with
    every configured timeout at 1 s. Expected: some deadline (header_timeout, or a body idle
    timeout for requests) closes it.
    (From review 1: a request body that stops arriving is timed out.)"""
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


def test_absolute_form_long_authority_does_not_crash_worker(echo, gateway_factory):
    """An absolute-form authority is not length-checked (`_absolute_form`, http1.pyx), but `_route`
    (client.pyx) copies it into `hostbuf[MAX_HOST_LEN + 1]`: a 300-byte authority writes past the
    256-byte array at the end of the ClientConn object (heap overflow). The worker dies (SIGSEGV).
    Expected: the request is refused (400: the Host rules, 255 bytes max, apply to the authority
    too) and the worker keeps serving.
    (From review 1: a long absolute-form authority overflowed the host buffer and crashed the worker.)"""
    gw = gateway_factory(simple_config(echo.address), workers=1)
    assert serves(gw)
    pid = only_worker_pid(gw)
    lines_before = gw.stderr_line_count()
    outcomes = {}
    for n in (300, 1000, 4000, 7000):
        try:
            with RawConn(gw.port, timeout=5) as c:
                c.send(b"GET http://" + b"a" * n + b"/x HTTP/1.1\r\nHost: a\r\n\r\n")
                outcomes[n] = c.response().status
        except (OSError, AssertionError) as exc:
            outcomes[n] = repr(exc)
        time.sleep(0.2)
    log = gw.stderr_since(lines_before)
    assert "exited with status" not in log, f"worker crashed; outcomes {outcomes}; log:\n{log[:600]}"
    assert only_worker_pid(gw) == pid and serves(gw)
    assert outcomes == {n: 400 for n in outcomes}, outcomes
