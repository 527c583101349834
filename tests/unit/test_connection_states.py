"""The connection state machines (docs/architecture.md, "Connection states"), driven sans-socket: a real
ClientConn and UpstreamConn from the core on the fake loop and transports of tests/support/fakeloop.py, so
each callback arrives exactly where the scenario needs it."""

from __future__ import annotations

from support.fakeloop import CONFIG, Harness, ok_head

from fastgw.config import loads_config
from fastgw.runtime import compile_runtime


def test_client_backpressure_survives_a_pipelined_exchange():
    """ClientConn.pause_writing only forwards to the upstream attached *now*
    (client.pyx:112-114) and keeps no flag. asyncio calls pause_writing once per crossing of the
    high-water mark, so when a response ends with the client's transport still over it, the next
    (pipelined) exchange's upstream is never paused: the second response is read at full speed
    into the client's transport buffer, however slowly the client reads (unbounded memory).
    Expected: an upstream attached while the client's transport is paused for writing starts
    paused (and is resumed by resume_writing).
    (From review 1: an upstream attached while the client transport is paused for writing starts paused.)"""
    h = Harness()
    h.client.data_received(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n")
    up, ut = h.upstream(0)
    assert ut.written.startswith(b"GET /one ")
    # the whole first response arrives in one read; relaying it fills the client's transport
    up.data_received(ok_head(200_000) + b"x" * 200_000)
    assert h.ct.protocol_paused, "precondition: the client's transport is over its high-water mark"
    # the pipelined request went out on the pooled connection
    assert b"GET /two " in bytes(ut.written), "precondition: the second request was sent upstream"
    up.data_received(ok_head(50_000_000) + b"y" * 100_000)
    assert not ut.reading, (
        "the client has not read a byte and its transport is still paused for writing, yet the "
        "upstream relaying the second response is not paused: the gateway buffers without bound "
        f"({h.ct.buffered} bytes waiting for the client already)")


def test_connect_failure_after_large_body_leaves_reading_paused():
    """A body queued while the upstream connects pauses reading with PR_CONNECTING
    (client.pyx `_send_up`, over QUEUE_HIGH_WATER). If the connection then fails after the body
    is complete, `upstream_failed` answers 502 with keep-alive and `_exchange_done` resumes only
    PR_PIPELINE | PR_UPSTREAM (client.pyx:638): PR_CONNECTING stays set, reading stays paused, and
    the keep-alive connection never reads the client's next request (it is closed by the idle
    timeout without an answer). Expected: every pause reason of the exchange is cleared.
    (From review 1: a failed connect after a queued body clears every pause reason.)"""
    h = Harness()
    head = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 300000\r\n\r\n"
    h.client.data_received(head + b"z" * 100_000)
    h.client.data_received(b"z" * 200_000)           # the body is complete, and over the queue limit
    assert not h.ct.reading, "precondition: reading paused while the upstream connects"
    _up, _host, _port, task = h.loop.connects[0]
    task.fail(ConnectionRefusedError())
    out = bytes(h.ct.written)
    assert out.startswith(b"HTTP/1.1 502 "), out[:200]
    assert b"Connection: close" not in out and not h.ct.closing, "precondition: keep-alive kept"
    assert h.ct.reading, "the keep-alive connection is idle but reading is still paused: it stalls"


def test_pooled_connection_gets_new_groups_body_idle_after_reload():
    """UpstreamConn takes body_timeout from the group only in connection_made (upstream.pyx:104-107);
    attach() on reuse does not refresh it, while expect_response refreshes header_timeout. Targets
    (and their pools) carry over a reload by address, so after a reload that changes
    timeouts.body_idle, pooled connections keep enforcing the old value (for as long as the pool
    stays warm). Expected: the reused connection enforces the current group's body_idle.
    (From review 1: a pooled upstream connection enforces the current group's body_idle after a reload.)"""
    import time

    h = Harness(CONFIG.replace("body_idle: 5s", "body_idle: 200ms"))
    h.client.data_received(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
    up, ut = h.upstream(0)
    up.data_received(ok_head(2) + b"ok")
    assert b"200 OK" in bytes(h.ct.written)
    assert not ut.closing, "precondition: the connection was pooled"
    # reload: body_idle 200ms -> 300s
    old = h.worker.runtime
    h.worker.swap_runtime(compile_runtime(loads_config(CONFIG.replace("body_idle: 5s", "body_idle: 300s"),
                                                       "yaml"), old))
    h.client.data_received(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(h.loop.connects) == 1, "precondition: the pooled connection was reused"
    up.data_received(ok_head(1000) + b"x" * 10)      # the response body starts, then pauses
    time.sleep(0.5)
    h.worker._tick()                                  # the deadline sweep
    assert not h.ct.aborted, ("a 0.5 s pause in the response body aborted the client although the "
                              "current body_idle is 300 s (the pooled connection kept the old 200 ms)")


def test_harness_control_backpressure_within_one_exchange():
    """Control for the harness (passes): within one exchange, a full client transport does pause
    the upstream, and draining it resumes the upstream.
    (From review 1: the fake-loop harness itself relays write backpressure.)"""
    h = Harness()
    h.client.data_received(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
    up, ut = h.upstream(0)
    up.data_received(ok_head(50_000_000) + b"y" * 100_000)
    assert h.ct.protocol_paused and not ut.reading
    h.ct.drain()
    assert ut.reading


HOSTS_CONFIG = """
listeners: [{address: 127.0.0.1:8080}]
upstreams:
  a: {targets: [{address: 127.0.0.1:9001}]}
routes:
  - {name: long, match: {hosts: [tenant-0123.api.example.com], path: {prefix: /}}, upstream: a}
  - {name: short, match: {hosts: [ab.io], path: {prefix: /}}, upstream: a}
"""


def test_the_host_is_routed_case_insensitively_whatever_its_length():
    """route_table lowercases the Host a word at a time, then byte by byte: every case mix, lengths
    on both sides of a word, and a trailing dot, find their route; another host finds none."""
    for host, routed in [(b"tenant-0123.api.example.com", True), (b"TENANT-0123.API.EXAMPLE.COM", True),
                         (b"Tenant-0123.Api.Example.Com.", True), (b"AB.IO", True), (b"ab.io.", True),
                         (b"tenant-0123.api.example.co", False), (b"TENANT-0123.API.EXAMPLE.COX", False)]:
        h = Harness(HOSTS_CONFIG)
        h.client.data_received(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert bool(h.loop.connects) == routed, host
        if not routed:
            assert h.out.startswith(b"HTTP/1.1 404 "), host
