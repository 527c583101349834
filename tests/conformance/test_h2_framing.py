"""RFC 9113 framing and message rules at the gateway's HTTP/2 front, over real sockets (h2spec is not
installable here; docs/http2.md#conformance says what of it this covers). Raw frames (tests/support/h2raw.py)
carry what a conforming client never sends; each case checks the gateway's answer (RST_STREAM
PROTOCOL_ERROR for a malformed message, GOAWAY for a connection error) and that nothing malformed
reached the upstream, and that the connection still serves a good request after a stream error."""

from __future__ import annotations

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PriorityFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)
from support.gateway import simple_config
from support.h2raw import NO_ERROR, PREFACE, PROTOCOL_ERROR, RawH2

BASE = [(":method", "GET"), (":scheme", "http"), (":authority", "h2.test"), (":path", "/conf")]


@pytest.fixture(scope="module")
def gw(echo, module_gateway_factory):
    cfg = simple_config(echo.address, limits={"http2": {"max_concurrent_streams": 10}})
    cfg["routes"].insert(0, {"name": "fixed", "match": {"path": {"prefix": "/fixed"}}, "upstream": "echo",
                             "policies": [{"type": "respond", "status": 204}]})
    return module_gateway_factory(cfg, workers=1)


def still_serves(c: RawH2) -> None:
    sid = c.request("GET", "/after")
    st = c.response(sid)
    assert st.status == 200 and st.reset is None


MALFORMED = {
    "uppercase name": [*BASE, ("X-Upper", "1")],
    "connection": [*BASE, ("connection", "keep-alive")],
    "keep-alive": [*BASE, ("keep-alive", "timeout=5")],
    "proxy-connection": [*BASE, ("proxy-connection", "keep-alive")],
    "transfer-encoding": [*BASE, ("transfer-encoding", "chunked")],
    "upgrade": [*BASE, ("upgrade", "h2c")],
    "te other than trailers": [*BASE, ("te", "gzip")],
    "missing :path": [(":method", "GET"), (":scheme", "http"), (":authority", "h2.test")],
    "missing :method": [(":scheme", "http"), (":authority", "h2.test"), (":path", "/conf")],
    "missing :scheme": [(":method", "GET"), (":authority", "h2.test"), (":path", "/conf")],
    "empty :path": [(":method", "GET"), (":scheme", "http"), (":authority", "h2.test"), (":path", "")],
    "duplicate :path": [*BASE, (":path", "/again")],
    "unknown pseudo-header": [*BASE, (":protocol", "x")],
    "response pseudo-header": [*BASE, (":status", "200")],
    "pseudo-header after a field": [(":method", "GET"), (":scheme", "http"), ("x-a", "1"),
                                    (":authority", "h2.test"), (":path", "/conf")],
    "CR in a value": [*BASE, ("x-bad", "a\rb")],
    "LF in a value": [*BASE, ("x-bad", "a\nb")],
    "NUL in a value": [*BASE, ("x-bad", "a\x00b")],
    "space in a name": [*BASE, ("x bad", "1")],
    "colon in a name": [*BASE, ("x:bad", "1")],
    "leading space in a value": [*BASE, ("x-bad", " a")],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_header_block_is_a_stream_error(gw, echo, case):
    snap = echo.snapshot()
    with RawH2(gw.port) as c:
        sid = c.new_stream_id()
        c.send(c.headers_frame(sid, MALFORMED[case]))
        st = c.response(sid)
        assert st.reset == PROTOCOL_ERROR and st.status is None, (case, st.headers)
        still_serves(c)
        assert c.goaway is None
    paths = [r.target for r in echo.requests_since(snap)]
    assert paths == ["/after"], paths


def test_content_length_larger_than_data(gw, echo):
    snap = echo.snapshot()
    with RawH2(gw.port) as c:
        sid = c.new_stream_id()
        c.send(c.headers_frame(sid, [*BASE[:3], (":path", "/cl"), (":method", "POST"), ("content-length", "10")][1:],
                               end_stream=False))
        c.send_data(sid, b"12345", end_stream=True)
        st = c.response(sid)
        assert st.reset == PROTOCOL_ERROR
        still_serves(c)
    # the upstream may have seen the head, never a complete request of 10 bytes
    assert all(r.body_len < 10 for r in echo.requests_since(snap) if r.target == "/cl")


def test_content_length_smaller_than_data(gw):
    with RawH2(gw.port) as c:
        sid = c.new_stream_id()
        hdrs = [(":method", "POST"), (":scheme", "http"), (":authority", "h2.test"), (":path", "/fixed"),
                ("content-length", "3")]
        c.send(c.headers_frame(sid, hdrs, end_stream=False))
        c.send_data(sid, b"123456", end_stream=True)
        st = c.response(sid)
        assert st.reset == PROTOCOL_ERROR or st.status == 204     # answered before the excess arrived
        still_serves(c)


def test_data_on_an_idle_stream_is_a_connection_error(gw):
    with RawH2(gw.port) as c:
        f = DataFrame(99)
        f.data = b"x"
        c.send(f)
        c.wait_closed()
        assert c.goaway is not None and c.goaway.error_code == PROTOCOL_ERROR


def test_even_stream_id_from_a_client_is_a_connection_error(gw):
    with RawH2(gw.port) as c:
        c.send(c.headers_frame(2, BASE))
        c.wait_closed()
        assert c.goaway is not None and c.goaway.error_code == PROTOCOL_ERROR


def test_window_update_of_zero_on_the_connection(gw):
    with RawH2(gw.port) as c:
        c.send(WindowUpdateFrame(0, window_increment=0))
        c.wait_closed()
        assert c.goaway is not None and c.goaway.error_code == PROTOCOL_ERROR


def test_stream_depending_on_itself(gw):
    # RFC 9113 5.3.1 allows a stream error; nghttp2 makes it a connection error, which is stricter
    with RawH2(gw.port) as c:
        c.send(PriorityFrame(1, depends_on=1))
        try:
            c.response(1)
            assert c.streams[1].reset == PROTOCOL_ERROR
        except AssertionError:
            assert c.goaway is not None and c.goaway.error_code == PROTOCOL_ERROR


def test_bad_preface_closes(gw):
    with RawH2(gw.port, preface=False) as c:
        c.send_bytes(PREFACE[:18] + b"XX\r\n\r\n")
        c.wait_closed()


def test_continuation_flood_closes_the_connection(gw):
    """CVE-2024-28182: a header block spread over endless CONTINUATION frames is cut off (nghttp2's
    max_continuations), not buffered."""
    with RawH2(gw.port) as c:
        block = c.block([*BASE, *[(f"x-f{i}", "v" * 20) for i in range(200)]])
        pieces = [block[i:i + 16] for i in range(0, len(block), 16)]
        first = HeadersFrame(1)
        first.data = pieces[0]
        frames = [first]
        for p in pieces[1:]:
            f = ContinuationFrame(1)
            f.data = p
            frames.append(f)
        try:
            c.send(*frames)
        except (BrokenPipeError, ConnectionResetError):
            pass
        c.wait_closed()
        assert c.goaway is not None and c.goaway.error_code != NO_ERROR
        assert c.streams.get(1) is None or c.streams[1].status is None


def test_rapid_reset_is_cut_off(gw):
    """CVE-2023-44487: streams opened and reset at once, faster than nghttp2's reset rate limit,
    end the connection with GOAWAY; the gateway keeps serving others."""
    with RawH2(gw.port) as c:
        frames = []
        for _ in range(3000):
            sid = c.new_stream_id()
            frames.append(c.headers_frame(sid, [(":method", "GET"), (":scheme", "http"),
                                                (":authority", "h2.test"), (":path", "/fixed")]))
            frames.append(RstStreamFrame(sid, error_code=0x8))
        try:
            for i in range(0, len(frames), 200):
                c.send(*frames[i:i + 200])
        except (BrokenPipeError, ConnectionResetError):
            pass
        c.wait_closed(20)
        assert c.goaway is not None and c.goaway.error_code != NO_ERROR
    with RawH2(gw.port) as c:
        still_serves(c)


def test_streams_beyond_the_limit_are_refused(gw):
    with RawH2(gw.port) as c:
        c.until(lambda: 3 in c.server_settings, what="the server's SETTINGS")
        assert c.server_settings[3] == 10        # SETTINGS_MAX_CONCURRENT_STREAMS
        sids = [c.request("GET", "/x", headers=[("x-echo-delay", "0.3")]) for _ in range(10)]
        for sid in sids:
            assert c.response(sid).status == 200
        # once the client acked the SETTINGS, an 11th open stream is refused: RST_STREAM
        # REFUSED_STREAM, or (nghttp2's choice, RFC 9113 5.1.2) GOAWAY PROTOCOL_ERROR
        sids = [c.request("GET", "/x", headers=[("x-echo-delay", "0.5")]) for _ in range(11)]
        try:
            c.until(lambda: c.streams[sids[-1]].reset is not None, what="the 11th refused")
            assert c.streams[sids[-1]].reset in (0x7, PROTOCOL_ERROR)
        except AssertionError:
            assert c.goaway is not None and c.goaway.error_code == PROTOCOL_ERROR
            assert c.goaway.last_stream_id < sids[-1]


def test_header_list_over_the_limit_is_431(gw):
    with RawH2(gw.port) as c:
        sid = c.new_stream_id()
        c.send(*c.header_frames(sid, [*BASE, *[(f"x-big-{i}", "v" * 1000) for i in range(80)]]))
        st = c.response(sid)
        assert st.status == 431
        still_serves(c)
