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
    """A connection attempt, or a plugin's task: its coroutine never runs, the test decides how and
    when it ends (`finish`, `fail`, or `complete` now and `run_callbacks` later, as asyncio runs done
    callbacks from the loop)."""

    def __init__(self, coro=None):
        self.callbacks = []
        self._exc = None
        self._result = None
        self._cancelled = False
        self._done = False
        if coro is not None:
            coro.close()

    def add_done_callback(self, cb):
        self.callbacks.append(cb)

    def cancel(self):
        if self._done:
            return False
        self._cancelled = True
        self._done = True
        return True

    def cancelled(self):
        return self._cancelled

    def done(self):
        return self._done

    def exception(self):
        return self._exc

    def result(self):
        return self._result

    def complete(self, result=None):
        self._result = result
        self._done = True

    def run_callbacks(self):
        for cb in self.callbacks:
            cb(self)

    def finish(self, result=None):
        self.complete(result)
        self.run_callbacks()

    def fail(self, exc):
        self._exc = exc
        self._done = True
        self.run_callbacks()


class _Connect:
    def __init__(self, factory, host, port):
        self.factory, self.host, self.port = factory, host, port


class FakeHandle:
    def cancel(self):
        pass


class FakeLoop:
    """Records connection attempts (create_connection's protocol factory is the UpstreamConn) and
    plugin tasks."""

    def __init__(self):
        self.connects = []      # [(protocol, host, port, task)]
        self.tasks = []         # plugin tasks, in creation order

    def create_connection(self, factory, host, port):
        return _Connect(factory, host, port)

    def create_task(self, coro):
        if isinstance(coro, _Connect):
            task = FakeTask()
            self.connects.append((coro.factory, coro.host, coro.port, task))
            return task
        task = FakeTask(coro)
        self.tasks.append(task)
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

    def client_lost(self, exc=None):
        self.client.connection_lost(exc)

    @property
    def out(self) -> bytes:
        """Everything written to the client so far."""
        return bytes(self.ct.written)


def ok_head(length: int, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (length, extra)
