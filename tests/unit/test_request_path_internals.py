"""What the request path's fast paths must keep exactly as the plain code did (bench/instructions.py
measures them): driven sans-socket on the fake loop of tests/support/fakeloop.py."""

from __future__ import annotations

import re

from support.fakeloop import Harness, ok_head


def _cycle(h: Harness, up, path: bytes = b"/") -> bytes:
    start = len(h.ct.written)
    h.client.data_received(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    up.data_received(ok_head(2) + b"ok")
    return bytes(h.ct.written[start:])


def test_generated_request_ids_are_the_prefix_and_the_counter_in_lowercase_hex():
    """Request ids are made in C now; they must read as b"%x" % counter after the worker's prefix."""
    h = Harness()
    h.client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    up, _ut = h.upstream(0)
    up.data_received(ok_head(2) + b"ok")
    ids = [re.search(rb"X-Request-Id: (\S+)\r\n", h.out).group(1)]
    for _ in range(299):
        ids.append(re.search(rb"X-Request-Id: (\S+)\r\n", _cycle(h, up)).group(1))
    prefix = ids[0][: ids[0].index(b"-") + 1]
    assert re.fullmatch(rb"[0-9a-f]{12}-", prefix)
    assert ids == [prefix + b"%x" % k for k in range(1, 301)]


def test_pool_keeps_order_and_counts_through_take_give_and_forget():
    """The pool keeps its list storage and a membership flag (no list search, no allocation per
    take/put): a connection lost while pooled leaves it, the others keep their LIFO order."""
    from support.fakeloop import FakeTransport

    h = Harness()
    target = h.worker.runtime.groups["a"].targets[0]
    clients = [h.client]
    for k in range(2):
        c = h.worker()
        c.connection_made(FakeTransport(c, peername=("192.0.2.8", 41000 + k)))
        clients.append(c)
    for c in clients:
        c.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    ups = [h.upstream(i) for i in range(3)]
    for up, _ut in ups:
        up.data_received(ok_head(2) + b"ok")
    assert target.idle_connections == 3
    ups[1][0].connection_lost(None)              # the middle one dies while idle
    assert target.idle_connections == 2
    # LIFO: the last given back is taken first; the dead one is never handed out
    clients[0].data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert bytes(ups[2][1].written).count(b"GET / ") == 2
    assert target.idle_connections == 1
    clients[1].data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert bytes(ups[0][1].written).count(b"GET / ") == 2
    assert target.idle_connections == 0 and len(h.loop.connects) == 3
    ups[2][0].data_received(ok_head(2) + b"ok")
    ups[0][0].data_received(ok_head(2) + b"ok")
    assert target.idle_connections == 2
    target.retire()
    assert target.idle_connections == 0 and ups[0][1].aborted and ups[2][1].aborted


def test_exchange_reset_clears_every_field_declared_in_the_class():
    """A connection reuses its last Exchange (ClientConn._new_exchange), so reset() must put back every
    field; this reads the declarations, so a field added later and forgotten in reset() fails here."""
    from pathlib import Path

    src = (Path(__file__).resolve().parents[2] / "fastgw" / "_cy" / "exchange.pyx").read_text()
    cls = src[src.index("\ncdef class Exchange:") :]
    body = cls[: cls.index("\n    cdef int reset(self)")]
    fields = []
    for line in body.split("\n"):
        m = re.match(r"^    cdef (?:public |readonly )?(?:const )?\w+\*?\s+(\w+)\s*$", line.split("#")[0])
        if m:
            fields.append(m.group(1))
    assert len(fields) > 50, fields          # the parse found the declarations
    reset = cls[cls.index("\n    cdef int reset(self)") :]
    reset = reset[: reset.index("\n    cdef ", 1)]
    cleared = set(re.findall(r"\bself\.(\w+) = ", reset))
    cleared |= set(re.findall(r"(?:memset|chunk_init)\(&self\.(\w+), 0", reset))
    missing = [f for f in fields if f not in cleared]
    assert not missing, f"Exchange.reset() does not clear {missing}"


def test_a_reused_exchange_starts_clean():
    """Keep-alive requests on one connection, alternating a route with a request-header edit, a 404 and
    a plain one: whatever the previous exchange set must not leak into the next."""
    h = Harness(
        """
listeners: [{address: 127.0.0.1:8080}]
upstreams:
  a:
    targets: [{address: 127.0.0.1:9001}]
routes:
  - name: edit
    match: {path: {prefix: /edit}}
    upstream: a
    filters: {request_headers: {set: {x-edited: "yes"}}}
  - {name: plain, match: {path: {prefix: /p}}, upstream: a}
"""
    )
    h.client.data_received(b"GET /edit HTTP/1.1\r\nHost: a\r\nX-Request-Id: mine-1\r\n\r\n")
    up, ut = h.upstream(0)
    up.data_received(ok_head(2) + b"ok")
    assert b"x-edited: yes" in bytes(ut.written).lower() and b"X-Request-Id: mine-1" in h.out
    start = len(h.ct.written)
    h.client.data_received(b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n")
    answer = bytes(h.ct.written[start:])
    assert answer.startswith(b"HTTP/1.1 404 ") and b"mine-1" not in answer
    sent = len(ut.written)
    start = len(h.ct.written)
    h.client.data_received(b"GET /p HTTP/1.1\r\nHost: a\r\n\r\n")
    up.data_received(ok_head(2) + b"ok")
    upstream_head = bytes(ut.written[sent:])
    assert upstream_head.startswith(b"GET /p HTTP/1.1\r\n")
    assert b"x-edited" not in upstream_head.lower() and b"mine-1" not in upstream_head
    assert bytes(h.ct.written[start:]).startswith(b"HTTP/1.1 200 OK")


def test_field_lines_copied_whole_or_rewritten_read_the_same():
    """Lines already in "name: value\\r\\n" form are copied in runs; the others are rebuilt: either way
    each field leaves as name, ": ", the trimmed value, CRLF, in order, the dropped ones left out."""
    h = Harness()
    h.client.data_received(
        b"GET / HTTP/1.1\r\nHost: a\r\nA-One: 1\r\nB-Two:2\r\nC-Three:  3  \r\nConnection: x-drop\r\n"
        b"X-Drop: gone\r\nD-Four: 4\r\nE-Five:\t5\r\nF-Six: \r\nG-Seven: 7\r\n\r\n"
    )
    up, ut = h.upstream(0)
    sent = bytes(ut.written)
    assert b"\r\nA-One: 1\r\nB-Two: 2\r\nC-Three: 3\r\nD-Four: 4\r\nE-Five: 5\r\nF-Six: \r\nG-Seven: 7\r\n" in sent
    assert b"X-Drop" not in sent
    up.data_received(b"HTTP/1.1 200 OK\r\nR-One: 1\r\nR-Two:2\r\nContent-Length: 2\r\nR-Three: 3\r\n"
                     b"R-Four: 4 \r\nR-Five: 5\r\n\r\nok")
    assert b"\r\nR-One: 1\r\nR-Two: 2\r\nR-Three: 3\r\nR-Four: 4\r\nR-Five: 5\r\nContent-Length: 2\r\n" in h.out


def test_statuses_and_lengths_written_as_decimal():
    """wb_put_int writes up to three digits without its division loop; every width must read the same."""
    h = Harness()
    h.client.data_received(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n")
    up, _ut = h.upstream(0)
    for status, length in [(200, 0), (201, 7), (404, 10), (299, 99), (203, 100), (200, 999), (200, 1000),
                           (206, 123456)]:
        start = len(h.ct.written)
        if (status, length) != (200, 0):
            h.client.data_received(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n")
        up.data_received(b"HTTP/1.1 %d Whatever\r\nContent-Length: %d\r\n\r\n" % (status, length) + b"x" * length)
        out = bytes(h.ct.written[start:])
        assert out.startswith(b"HTTP/1.1 %d Whatever\r\n" % status), out[:80]
        assert b"\r\nContent-Length: %d\r\n" % length in out
