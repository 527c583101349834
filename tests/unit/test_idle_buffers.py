"""A client connection's C buffers (the header field array, the two write buffers) exist only while a
request is in progress (fastgw/_cy/connbufs.pyx): an idle keep-alive connection gives them back to the
worker's pool, and takes them again for its next request. Driven sans-socket (tests/support/fakeloop.py)
with the pool's debug counters, `_core.connection_buffers()`."""

from __future__ import annotations

import gc

from support.fakeloop import CONFIG, Harness, ok_head

from fastgw import _core


def held() -> tuple[int, int]:
    """(field arrays, write buffers) held by connections now (earlier tests' garbage collected first)."""
    gc.collect()
    heads, wbufs, _pooled_heads, _pooled_wbufs = _core.connection_buffers()
    return heads, wbufs


def test_a_new_connection_holds_no_buffers_until_its_first_byte():
    base = held()
    h = Harness()
    assert held() == base, "an accepted connection that has sent nothing holds no buffers"
    h.client.data_received(b"GET /one HTTP/1.1\r\n")
    assert held() == (base[0] + 1, base[1] + 2), "a head in progress holds the field array and both buffers"
    h.client_lost()
    assert held() == base, "a connection lost mid-head gives its buffers back"


def test_idle_keep_alive_connection_releases_and_reuses_its_buffers():
    base = held()
    h = Harness()
    h.client.data_received(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
    up, ut = h.upstream(0)
    assert held() == (base[0] + 1, base[1] + 2)
    up.data_received(ok_head(2) + b"ok")
    assert h.out.startswith(b"HTTP/1.1 200 OK\r\n") and h.out.endswith(b"\r\n\r\nok")
    assert held() == base, "the connection is idle (response done, nothing pipelined): buffers released"
    _heads, _wbufs, pooled_heads, pooled_wbufs = _core.connection_buffers()
    assert pooled_heads >= 1 and pooled_wbufs >= 2, "what was released waits in the pool"
    # used again after idle: the same pooled connection upstream, a full answer
    h.client.data_received(b"GET /two HTTP/1.1\r\nHost: a\r\nX-Two: 2\r\n\r\n")
    assert held() == (base[0] + 1, base[1] + 2)
    assert bytes(ut.written).count(b"GET /two HTTP/1.1\r\n") == 1 and b"X-Two: 2\r\n" in bytes(ut.written)
    n = len(h.out)
    up.data_received(ok_head(3, b"X-Up: yes\r\n") + b"two")
    second = h.out[n:]
    assert second.startswith(b"HTTP/1.1 200 OK\r\n") and b"X-Up: yes\r\n" in second and second.endswith(b"two")
    assert held() == base
    h.client_lost()
    assert held() == base


def test_pipelined_requests_keep_buffers_until_the_last_is_answered():
    base = held()
    h = Harness()
    h.client.data_received(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n")
    up, ut = h.upstream(0)
    up.data_received(ok_head(3) + b"one")
    assert b"GET /two " in bytes(ut.written), "precondition: the pipelined request went upstream"
    assert held() == (base[0] + 1, base[1] + 2), "the pipelined request is in progress: buffers held"
    up.data_received(ok_head(3) + b"two")
    out = h.out
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 2 and out.endswith(b"two") and b"one" in out
    assert held() == base, "both answered and nothing more pipelined: released"
    # idle, then a pipelined pair again on the same connection
    h.client.data_received(b"GET /three HTTP/1.1\r\nHost: a\r\n\r\nGET /four HTTP/1.1\r\nHost: a\r\n\r\n")
    up.data_received(ok_head(5) + b"three")
    up.data_received(ok_head(4) + b"four")
    out = h.out
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 4 and out.endswith(b"four") and b"three" in out
    assert held() == base
    h.client_lost()


def test_large_head_after_idle_grows_a_buffer_that_is_freed_not_pooled():
    base = held()
    h = Harness(CONFIG + "limits: {max_headers: 200, max_header_bytes: 262144}\n")
    h.client.data_received(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
    up, ut = h.upstream(0)
    up.data_received(ok_head(2) + b"ok")
    assert held() == base
    # 150 fields (more than the default 100) and 40 KB of them: the upstream head outgrows 2 KB
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 250) for i in range(150))
    h.client.data_received(b"GET /big HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n")
    sent = bytes(ut.written)
    assert sent.count(b"GET /big HTTP/1.1\r\n") == 1 and b"X-F149: " + b"v" * 250 + b"\r\n" in sent
    n = len(h.out)
    big = b"".join(b"X-R%d: %s\r\n" % (i, b"r" * 100) for i in range(100))
    up.data_received(ok_head(3, big) + b"big")
    resp = h.out[n:]
    assert resp.startswith(b"HTTP/1.1 200 OK\r\n") and b"X-R99: " + b"r" * 100 in resp and resp.endswith(b"big")
    assert held() == base
    # and an ordinary request after that, on the same connection
    n = len(h.out)
    h.client.data_received(b"GET /small HTTP/1.1\r\nHost: a\r\n\r\n")
    up.data_received(ok_head(5) + b"small")
    assert h.out[n:].startswith(b"HTTP/1.1 200 OK\r\n") and h.out.endswith(b"small")
    assert held() == base
    h.client_lost()


def test_refused_head_and_closed_connection_give_buffers_back():
    base = held()
    h = Harness()
    h.client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
    assert h.out.startswith(b"HTTP/1.1 400 "), h.out[:100]
    h.client_lost()
    assert held() == base
