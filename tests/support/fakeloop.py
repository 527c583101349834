"""A fake event loop, transports and connection tasks for driving the core's connection state machines
sans-socket: a real Worker, ClientConn and UpstreamConn from fastgw._core, with each callback arriving
exactly where a test needs it (tests/unit/test_connection_states.py).

`Harness(config)` is a Worker on a FakeLoop and one accepted ClientConn on a FakeTransport;
`Harness.upstream(i)` completes the i-th connection attempt the gateway made. FakeTransport has asyncio's
write flow control (pause_writing over the high-water mark, resume_writing once drained)."""

from __future__ import annotations

from fastgw import _core
from fastgw.config import loads_config
from fastgw.runtime import compile_runtime

# The default config of a Harness: one listener, upstream `a` (one target), a catch-all route.
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
