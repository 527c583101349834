"""Review findings in the connection state machines, driven sans-socket: a real ClientConn and
UpstreamConn from the core, with fake transports and a fake loop, so each callback arrives exactly
where the scenario needs it. Regression tests from a review."""

from __future__ import annotations

from fastgw import _core
from fastgw.config import loads_config
from fastgw.runtime import compile_runtime

CONFIG = """
listeners: [{address: 127.0.0.1:8080}]
upstreams:
  a:
    targets: [{address: 127.0.0.1:9001}]
    timeouts: {connect: 1s, response_header: 5s, body_idle: 5s}
routes:
  - {name: all, match: {path: {prefix: /}}, upstream: a}
"""

HIGH_WATER = 64 * 1024      # asyncio's default write high-water mark
LOW_WATER = HIGH_WATER // 4


class FakeTask:
    def __init__(self):
        self.callbacks = []
        self._exc = None
        self._cancelled = False

    def add_done_callback(self, cb):
        self.callbacks.append(cb)

    def cancel(self):
        self._cancelled = True

    def cancelled(self):
        return self._cancelled

    def exception(self):
        return self._exc

    def fail(self, exc):
        self._exc = exc
        for cb in self.callbacks:
            cb(self)


class FakeHandle:
    def cancel(self):
        pass


class FakeLoop:
    """Records connection attempts: create_connection's protocol factory is the UpstreamConn."""

    def __init__(self):
        self.connects = []      # [(protocol, host, port, task)]
        self._pending = None

    def create_connection(self, factory, host, port):
        self._pending = (factory, host, port)
        return None

    def create_task(self, _coro):
        task = FakeTask()
        factory, host, port = self._pending
        self.connects.append((factory, host, port, task))
        return task

    def call_later(self, _delay, _cb):
        return FakeHandle()


class FakeTransport:
    """Enough of an asyncio transport, with asyncio's write flow control: pause_writing() once the
    buffer crosses the high-water mark, resume_writing() when drain() takes it below the low one.
    The peer reads nothing unless the test calls drain()."""

    def __init__(self, protocol, sockname=("127.0.0.1", 8080), peername=("192.0.2.7", 40000)):
        self.protocol = protocol
        self.extra = {"sockname": sockname, "peername": peername}
        self.reading = True
        self.closing = False
        self.aborted = False
        self.buffered = 0
        self.written = bytearray()
        self.protocol_paused = False

    def get_extra_info(self, name, default=None):
        return self.extra.get(name, default)

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def write(self, data):
        data = bytes(data)
        self.written += data
        self.buffered += len(data)
        if not self.protocol_paused and self.buffered > HIGH_WATER:
            self.protocol_paused = True
            self.protocol.pause_writing()

    def writelines(self, items):
        self.write(b"".join(bytes(x) for x in items))

    def drain(self):
        self.buffered = 0
        if self.protocol_paused:
            self.protocol_paused = False
            self.protocol.resume_writing()

    def get_write_buffer_size(self):
        return self.buffered

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    def abort(self):
        self.closing = True
        self.aborted = True


class Harness:
    def __init__(self, config: str = CONFIG):
        self.loop = FakeLoop()
        self.worker = _core.Worker(self.loop, compile_runtime(loads_config(config, "yaml")))
        self.client = self.worker()
        self.ct = FakeTransport(self.client)
        self.client.connection_made(self.ct)

    def upstream(self, index: int):
        """Completes connection attempt `index`: returns (UpstreamConn, its transport)."""
        up, _host, _port, _task = self.loop.connects[index]
        ut = FakeTransport(up, sockname=("127.0.0.1", 50000 + index), peername=("127.0.0.1", 9001))
        up.connection_made(ut)
        return up, ut


def ok_head(length: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length


def test_review_client_backpressure_survives_a_pipelined_exchange():
    """ClientConn.pause_writing only forwards to the upstream attached *now*
    (client.pyx:112-114) and keeps no flag. asyncio calls pause_writing once per crossing of the
    high-water mark, so when a response ends with the client's transport still over it, the next
    (pipelined) exchange's upstream is never paused: the second response is read at full speed
    into the client's transport buffer, however slowly the client reads (unbounded memory).
    Expected: an upstream attached while the client's transport is paused for writing starts
    paused (and is resumed by resume_writing)."""
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


def test_review_connect_failure_after_large_body_leaves_reading_paused():
    """A body queued while the upstream connects pauses reading with PR_CONNECTING
    (client.pyx `_send_up`, over QUEUE_HIGH_WATER). If the connection then fails after the body
    is complete, `upstream_failed` answers 502 with keep-alive and `_exchange_done` resumes only
    PR_PIPELINE | PR_UPSTREAM (client.pyx:638): PR_CONNECTING stays set, reading stays paused, and
    the keep-alive connection never reads the client's next request (it is closed by the idle
    timeout without an answer). Expected: every pause reason of the exchange is cleared."""
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


def test_review_pooled_connection_gets_new_groups_body_idle_after_reload():
    """UpstreamConn takes body_timeout from the group only in connection_made (upstream.pyx:104-107);
    attach() on reuse does not refresh it, while expect_response refreshes header_timeout. Targets
    (and their pools) carry over a reload by address, so after a reload that changes
    timeouts.body_idle, pooled connections keep enforcing the old value (for as long as the pool
    stays warm). Expected: the reused connection enforces the current group's body_idle."""
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


def test_review_harness_control_backpressure_within_one_exchange():
    """Control for the harness (passes): within one exchange, a full client transport does pause
    the upstream, and draining it resumes the upstream."""
    h = Harness()
    h.client.data_received(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
    up, ut = h.upstream(0)
    up.data_received(ok_head(50_000_000) + b"y" * 100_000)
    assert h.ct.protocol_paused and not ut.reading
    h.ct.drain()
    assert ut.reading
