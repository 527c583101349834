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
