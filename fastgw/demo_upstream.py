"""A small HTTP/1.1 echo server (httptools + uvloop) to put behind the gateway: it answers every
request with JSON naming itself and describing the request it received."""

from __future__ import annotations

import asyncio
import signal
import sys

import httptools
import orjson
import uvloop


class EchoProtocol(asyncio.Protocol):
    def __init__(self, name: str):
        self.name = name
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body_len = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def on_message_begin(self):
        self.url, self.headers, self.body_len = b"", [], 0

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body):
        self.body_len += len(body)

    def on_message_complete(self):
        body = orjson.dumps({
            "name": self.name,
            "method": self.parser.get_method().decode(),
            "target": self.url.decode("latin-1"),
            "headers": self.headers,
            "body_len": self.body_len,
        }) + b"\n"
        keep_alive = self.parser.should_keep_alive()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (len(body), b"" if keep_alive else b"Connection: close\r\n", body))
        if not keep_alive:
            self.transport.close()


def serve(host: str, port: int, name: str) -> int:
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(lambda: EchoProtocol(name), host, port))
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    sys.stderr.write(f"demo-upstream {name}: listening on http://{host}:{port}\n")
    sys.stderr.flush()
    loop.run_until_complete(stop)
    server.close()
    return 0
