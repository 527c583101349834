"""WebSocket peers for the tunnel tests: a `websockets` echo server (in a thread with its own loop) and
a `wsproto` client over a plain socket, the second implementation."""

from __future__ import annotations

import json
import socket
import threading

from websockets.sync.server import serve
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)

from .threaded import ThreadedServer


class WsEchoServer:
    """Echoes every message as it came (text as text, binary as binary). `/headers` first sends the
    handshake's request headers as JSON; `/close/CODE` closes at once with that code. Records the close
    code each connection ended with (`closes`)."""

    def __init__(self, name: str = "ws", compression: str | None = "deflate"):
        self.name = name
        self.closes: list[int | None] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()
        self.server = serve(self._handle, "127.0.0.1", 0, compression=compression, max_size=None,
                            ping_interval=None)
        self.port = self.server.socket.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handle(self, ws) -> None:
        path = ws.request.path
        with self.lock:
            self.paths.append(path)
        try:
            if path == "/headers":
                ws.send(json.dumps({k.lower(): v for k, v in ws.request.headers.raw_items()}))
            if path == "/name":
                ws.send(self.name)
            if path.startswith("/close/"):
                ws.close(int(path.rsplit("/", 1)[1]), "bye")
                return
            for message in ws:
                ws.send(message)
        finally:
            with self.lock:
                self.closes.append(ws.close_code)

    def close(self) -> None:
        self.server.shutdown()


class WsprotoClient:
    """A blocking WebSocket client on wsproto: handshake, messages, ping, close."""

    def __init__(self, port: int, path: str = "/", host: str = "localhost", extensions=None, timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list = []
        self.sock.sendall(self.ws.send(Request(host=host, target=path, extensions=extensions or [])))
        ev = self.next_event()
        if isinstance(ev, RejectConnection):
            self.rejected = ev
            return
        assert isinstance(ev, AcceptConnection), ev
        self.rejected = None

    def next_event(self):
        while not self.events:
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            self.events.extend(self.ws.events())
            if not data and not self.events:
                raise ConnectionError("closed")
        return self.events.pop(0)

    def send(self, event) -> None:
        self.sock.sendall(self.ws.send(event))

    def message(self):
        """The next whole message (fragments joined), answering pings on the way."""
        parts: list = []
        while True:
            ev = self.next_event()
            if isinstance(ev, Ping):
                self.send(ev.response())
                continue
            if isinstance(ev, Pong):
                return ev
            if isinstance(ev, CloseConnection):
                return ev
            if isinstance(ev, Message):
                parts.append(ev.data)
                if ev.message_finished:
                    if isinstance(ev, TextMessage):
                        return "".join(parts)
                    return b"".join(parts)

    def close(self, code: int = 1000) -> None:
        self.send(CloseConnection(code=code))
        try:
            while True:
                ev = self.next_event()
                if isinstance(ev, CloseConnection):
                    break
        except (ConnectionError, OSError):
            pass
        self.sock.close()


__all__ = ["BytesMessage", "CloseConnection", "Ping", "TextMessage", "WsEchoServer", "WsprotoClient", "WsprotoServer"]


class WsprotoServer(ThreadedServer):
    """An echo WebSocket server on wsproto (the second implementation), a thread per connection."""

    def __init__(self):
        super().__init__(64)

    def _serve(self, c) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        parts: list = []
        try:
            while True:
                data = c.recv(65536)
                ws.receive_data(data or None)
                for ev in ws.events():
                    if isinstance(ev, Request):
                        c.sendall(ws.send(AcceptConnection()))
                    elif isinstance(ev, Message):
                        parts.append(ev.data)
                        if ev.message_finished:
                            whole = "".join(parts) if isinstance(ev, TextMessage) else b"".join(parts)
                            parts = []
                            msg = TextMessage(data=whole) if isinstance(whole, str) else BytesMessage(data=whole)
                            c.sendall(ws.send(msg))
                    elif isinstance(ev, Ping):
                        c.sendall(ws.send(ev.response()))
                    elif isinstance(ev, CloseConnection):
                        c.sendall(ws.send(ev.response()))
                        c.close()
                        return
                if not data:
                    c.close()
                    return
        except OSError:
            c.close()
