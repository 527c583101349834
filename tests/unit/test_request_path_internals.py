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
