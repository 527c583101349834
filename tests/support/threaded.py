"""The loopback TCP server the stream and WebSocket peers are built on: a thread per connection."""

from __future__ import annotations

import socket
import threading


class ThreadedServer:
    """Listens on a free loopback port and serves each connection on a thread of its own: subclasses
    set their state, then call this __init__ (connections may arrive at once), and define _serve."""

    def __init__(self, backlog: int = 128):
        if not hasattr(self, "lock"):
            self.lock = threading.Lock()
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()
