"""Regression tests from a review: response framing and how upstream connections end."""

from __future__ import annotations

from support.client import RawConn
from support.gateway import simple_config
from support.upstreams import RawUpstream, response_head


def close_delimited_then_reset(conn) -> None:
    conn.read_request()
    conn.send(response_head(200, [("Content-Type", "text/plain")]) + b"d" * 5000)
    conn.sleep(0.3)             # let the bytes reach the gateway
    conn.reset()                # RST, not FIN: the body did not end


def test_review_close_delimited_body_cut_by_reset_is_not_a_clean_end(gateway_factory):
    """UpstreamConn.connection_lost (upstream.pyx:246-249) ends a close-delimited (FR_CLOSE) body
    cleanly whatever `exc` is: a connection reset mid-body is relayed to an HTTP/1.1 client as a
    complete chunked response (terminating 0-chunk) on a connection kept alive, so the client
    (or a cache) takes a truncated body for the whole one. Only a FIN ends a close-delimited body
    (RFC 9112 6.3 item 8 / 8); a reset is an incomplete message. Expected, as for every other
    upstream death mid-body (docs/http.md): the client gets the bytes and then an abort, never a
    clean end."""
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
