"""A real HTTP/2 (h2c, prior knowledge) upstream for the tests, on the `h2` library (python-hyper) in
a thread of its own: it counts the connections it accepted and the streams open at once, and
answers by path:

    /slow?ms=N     waits N ms, then 200 with the path as body
    /hold          held (counted in `held`) until release(): so a test knows how many are in flight
    /trailers      200, a body, then trailers (grpc-status: 0, grpc-message: ok, x-trailer: yes)
    /status/N      status N, a short body
    /big?n=N       N bytes of body in DATA frames
    anything else  200, a JSON echo of method, path, authority, headers and the body length
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.events
import h2.settings


class H2Upstream:
    def __init__(self, max_concurrent_streams: int = 100, name: str = "h2", status_all: int | None = None,
                 ssl_context=None):
        self.name = name
        self.ssl_context = ssl_context     # TLS (ALPN as the context says) instead of h2c
        self.alpn: list[str | None] = []   # what each TLS connection negotiated
        self.status_all = status_all       # answer every request with this status
        self.max_streams = max_concurrent_streams
        self.connections = 0
        self.open_connections = 0
        self.max_open_streams = 0          # on one connection, at once
        self.requests: list[dict] = []
        self.held: list = []
        self.data_sent = 0                 # response body bytes handed to the connection, all streams
        self._loop = asyncio.new_event_loop()
        self._server = None
        self._protocols: set = set()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self):
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._started.set()
        self._loop.run_forever()

    async def _start(self, port: int = 0):
        self._server = await self._loop.create_server(lambda: _Proto(self), "127.0.0.1", port,
                                                      ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self, port: int = 0) -> H2Upstream:
        self.port = port
        if not self._thread.is_alive():
            self._thread.start()
            self._started.wait(10)
        return self

    def release(self) -> None:
        """Answers every held /hold request (200, body `held`)."""
        def go():
            held, self.held = self.held, []
            for proto, sid in held:
                proto._send(sid, 200, [], b"held", None)
        self._loop.call_soon_threadsafe(go)

    def stop_listening(self, drop_connections: bool = True) -> None:
        """Close the listening socket (and every connection): as an upstream restarting."""
        async def stop():
            self._server.close()
            if drop_connections:
                for p in list(self._protocols):
                    p.transport.abort()
            await self._server.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)

    def listen_again(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(self.port), self._loop).result(10)

    def close(self) -> None:
        if self._server is not None:
            try:
                self.stop_listening()
            except Exception:
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> H2Upstream:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class _Proto(asyncio.Protocol):
    def __init__(self, server: H2Upstream):
        self.server = server
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.streams: dict[int, dict] = {}
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        if self.server.ssl_context is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            self.server.alpn.append(ssl_object.selected_alpn_protocol() if ssl_object else None)
        self.server.connections += 1
        self.server.open_connections += 1
        self.server._protocols.add(self)
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_streams})
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def connection_lost(self, exc):
        self.server.open_connections -= 1
        self.server._protocols.discard(self)

    def data_received(self, data):
        try:
            events = self.conn.receive_data(data)
        except Exception:
            self.transport.abort()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self.streams[ev.stream_id] = {"headers": ev.headers, "body": b""}
                n = len(self.streams)
                self.server.max_open_streams = max(self.server.max_open_streams, n)
            elif isinstance(ev, h2.events.DataReceived):
                if ev.stream_id in self.streams:
                    self.streams[ev.stream_id]["body"] += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                if ev.stream_id in self.streams:
                    self.streams[ev.stream_id]["trailers"] = ev.headers
            elif isinstance(ev, h2.events.StreamEnded):
                self._respond(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.streams.pop(ev.stream_id, None)
        self._flush()

    def _flush(self):
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def _respond(self, sid: int):
        st = self.streams.get(sid)
        if st is None:
            return
        headers = {k.decode(): v.decode() for k, v in st["headers"]}
        url = urlsplit(headers.get(":path", "/"))
        q = parse_qs(url.query)
        self.server.requests.append({"headers": st["headers"], "body": st["body"], "at": time.monotonic(),
                                     "trailers": st.get("trailers", [])})
        if self.server.status_all is not None:
            self._send(sid, self.server.status_all, [], self.server.name.encode(), None)
        elif url.path == "/hold":
            self.server.held.append((self, sid))
        elif url.path == "/slow":
            delay = int(q.get("ms", ["100"])[0]) / 1000
            asyncio.get_event_loop().call_later(delay, self._send, sid, 200, [], url.path.encode(), None)
        elif url.path == "/trailers":
            self._send(sid, 200, [("content-type", "application/grpc")], b"\x00\x00\x00\x00\x02hi",
                       [("grpc-status", "0"), ("grpc-message", "ok"), ("x-trailer", "yes")])
        elif url.path.startswith("/status/"):
            status = int(url.path.split("/")[2])
            self._send(sid, status, [], b"" if status in (204, 304) else b"status body", None)
        elif url.path == "/big":
            self._send(sid, 200, [], b"x" * int(q.get("n", ["100000"])[0]), None)
        else:
            body = json.dumps({
                "server": self.server.name, "method": headers.get(":method"), "path": headers.get(":path"),
                "authority": headers.get(":authority"), "scheme": headers.get(":scheme"),
                "headers": [[k.decode(), v.decode()] for k, v in st["headers"]],
                "body_length": len(st["body"]),
            }).encode()
            self._send(sid, 200, [("content-type", "application/json")], body, None)

    def _send(self, sid, status, headers, body, trailers):
        if sid not in self.streams or self.transport is None or self.transport.is_closing():
            return
        try:
            if status in (204, 304):
                self.conn.send_headers(sid, [(":status", str(status)), *headers], end_stream=True)
                self.streams.pop(sid, None)
                self._flush()
                return
            self.conn.send_headers(sid, [(":status", str(status)), *headers,
                                         ("content-length", str(len(body)))] if trailers is None
                                   else [(":status", str(status)), *headers])
            self._send_data(sid, body, trailers)
        except Exception:
            self.streams.pop(sid, None)
        self._flush()

    def _send_data(self, sid, body, trailers):
        body = memoryview(body)
        while len(body):
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                asyncio.get_event_loop().call_later(0.01, self._resume, sid, body, trailers)
                return
            piece = body[:window]
            self.conn.send_data(sid, piece.tobytes())
            self.server.data_sent += len(piece)
            body = body[window:]
        if trailers:
            self.conn.send_headers(sid, trailers, end_stream=True)
        else:
            self.conn.end_stream(sid)
        self.streams.pop(sid, None)

    def _resume(self, sid, body, trailers):
        if sid in self.streams and self.transport is not None and not self.transport.is_closing():
            try:
                self._send_data(sid, body, trailers)
            except Exception:
                self.streams.pop(sid, None)
            self._flush()
