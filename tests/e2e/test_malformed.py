"""The malformed-request corpus, over raw sockets, each case sent in a single write.

For every rejected case: the expected status, `Connection: close`, the gateway closes the connection,
the error body is the gateway's JSON, and zero bytes reached the upstream. Valid controls: 200 and exactly
one request upstream with the right decoded body length.
"""

from __future__ import annotations

import pytest
from support.client import (
    RawConn,
    assert_gateway_error,
    next_sentinel_id,
    sync_and_assert_nothing_forwarded,
    wait_until,
)
from support.gateway import simple_config
from support.wire import PeerClosed, read_response

from .malformed_corpus import CASES, Case

CLOSING_STATUSES = {400, 414, 417, 431, 501, 505}


@pytest.fixture(scope="module")
def gw(echo, module_gateway_factory):
    return module_gateway_factory(simple_config(
        echo.address, timeouts={"connect": "2s", "response_header": "5s", "body_idle": "5s"}))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_corpus_case(case: Case, gw, echo):
    snap = echo.snapshot()
    context = f"case {case.id}: sent {case.raw[:300]!r}"
    with RawConn(gw.port) as c:
        c.send(case.raw)
        try:
            resp = read_response(c.reader, "POST" if case.raw.startswith(b"POST") else "GET")
        except (PeerClosed, ConnectionResetError) as e:
            pytest.fail(f"{context}: connection ended before a complete response head ({e!r})")
        except TimeoutError:
            pytest.fail(f"{context}: no response (hang)")
        assert resp is not None, f"{context}: gateway closed the connection without any response"
        assert resp.status in case.expect, f"{context}: got {resp.status} {resp.body[:300]!r}"
        if resp.status in CLOSING_STATUSES or 200 in case.expect:
            # Rejections must close; valid controls asked for Connection: close themselves.
            assert "close" in resp.connection_tokens, f"{context}: no Connection: close in {resp.headers}"
            assert c.is_closed_by_peer(), f"{context}: gateway kept the connection open"
    if resp.status == 200:
        got = echo.requests_since(snap)
        assert len(got) == 1, f"{context}: upstream received {len(got)} requests"
        if case.body_len is not None:
            assert got[0].body_len == case.body_len, context
    else:
        assert_gateway_error(resp, context=context)
        sync_and_assert_nothing_forwarded(gw, echo, snap, context)


# Incremental parsing: the same framing cases delivered in small pieces must get the same answer. When
# the fault is in a chunked body, a streaming gateway may already have forwarded the head and the first
# chunks (the zero-bytes guarantee is for a request that arrives in one send): then the upstream
# connection carrying that partial request must be closed, and no complete request may reach upstream.
SPLIT_IDS = ["cl-te-both", "te-cl-both", "te-chunked-then-x", "cl-duplicate-equal", "obs-fold-space",
             "field-bare-lf-line", "chunk-size-0x-prefix", "chunk-data-no-crlf", "valid-chunk-extension",
             "valid-te-htab-ows", "valid-chunk-trailers"]


@pytest.mark.parametrize("case", [c for c in CASES if c.id in SPLIT_IDS], ids=lambda c: c.id)
def test_corpus_case_split_writes(case: Case, gw, echo):
    snap = echo.snapshot()
    context = f"case {case.id} (7-byte writes)"
    with RawConn(gw.port) as c:
        try:
            for i in range(0, len(case.raw), 7):
                c.send(case.raw[i:i + 7])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway may answer and close before the rest arrives
        try:
            resp = read_response(c.reader, "POST")
        except (PeerClosed, ConnectionResetError) as e:
            pytest.fail(f"{context}: connection ended before a complete response head ({e!r})")
        assert resp is not None, f"{context}: closed without a response"
        assert resp.status in case.expect, f"{context}: got {resp.status} {resp.body[:300]!r}"
    if resp.status == 200:
        return
    if not case.id.startswith("chunk-"):
        sync_and_assert_nothing_forwarded(gw, echo, snap, context)
        return
    rid = next_sentinel_id()
    with RawConn(gw.port) as c:
        assert c.request("GET", "/__sentinel", [("X-Request-Id", rid), ("Connection", "close")]).status == 200
    assert [q.request_id for q in echo.requests_since(snap)] == [rid], context
    partial = [cid for cid, raw in echo.raw_by_conn_since(snap).items() if rid.encode() not in raw]
    for cid in partial:
        wait_until(lambda cid=cid: echo.conns[cid].closed, what=f"{context}: upstream connection {cid} "
                   "that carried the partial request to be closed")


def test_corpus_size_and_shape():
    from .malformed_corpus import MALFORMED, VALID

    assert len(CASES) >= 60 and len(VALID) >= 5 and len(MALFORMED) >= 60
    for c in CASES:
        assert c.expect and all(100 <= s <= 599 for s in c.expect), c.id


def test_sentinel_sync_detects_forwarded_bytes(gw, echo):
    """The zero-bytes check itself can fail: a request that does go through is noticed."""
    snap = echo.snapshot()
    with RawConn(gw.port) as c:
        assert c.request("GET", "/leak", [("Connection", "close")]).status == 200
    with pytest.raises(AssertionError, match="upstream received"):
        sync_and_assert_nothing_forwarded(gw, echo, snap, "probe")


