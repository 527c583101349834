"""A small, strict HTTP/1.1 server for the Admin API on asyncio streams.

Only what an admin client needs: origin-form targets, Content-Length bodies (no chunked), keep-alive.
Anything else, and anything over a limit, gets a 4xx/5xx JSON answer and the connection closes: the
admin port should be dull, not lenient. Each connection is tracked so that the supervisor can close
the inherited copies in a worker it forks (a copy left open in a worker would keep the client
waiting for an end of response that never comes).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson

__all__ = ["HttpServer", "Request", "Response", "json_response"]

MAX_HEAD_BYTES = 32 * 1024
MAX_HEADERS = 64
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_CONNECTIONS = 64
MAX_REQUESTS_PER_CONNECTION = 1000
HEAD_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
IDLE_TIMEOUT = 60.0

_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_REQUEST_LINE = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]+) (/[!-~]*) HTTP/1\.([01])$")
_FIELD_VALUE = re.compile(rb"^[\t -~\x80-\xff]*$")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
            415: "Unsupported Media Type", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 503: "Service Unavailable"}


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]   # lowercased names; a repeated field joined with ", "
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(status: int, data) -> Response:
    return Response(status, orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


class _Refused(Exception):
    """The request cannot be served; answered with `status` and the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    async def start(self, sock) -> None:
        self._server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD_BYTES)

    def fds(self) -> list[int]:
        """The listening socket's and every open connection's file descriptors."""
        out = [s.fileno() for s in (self._server.sockets if self._server else ())]
        for w in self._writers:
            sock = w.get_extra_info("socket")
            if sock is not None and sock.fileno() >= 0:
                out.append(sock.fileno())
        return out

    async def close(self) -> None:
        """Stops listening and ends every connection, waiting for their tasks so that none is left
        pending when the loop closes."""
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._writers.add(writer)
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            for served in range(MAX_REQUESTS_PER_CONNECTION):
                try:
                    request, keep_alive = await self._read_request(reader, first=served == 0)
                except _Refused as exc:
                    await self._send(writer, json_response(exc.status, {"error": str(exc)}), False, False)
                    return
                if request is None:
                    return
                keep_alive = keep_alive and served + 1 < MAX_REQUESTS_PER_CONNECTION
                try:
                    response = await self._handler(request)
                except Exception as exc:  # a bug of ours: answered, and the supervisor keeps going
                    response = json_response(500, {"error": f"{type(exc).__name__}: {exc}"})
                await self._send(writer, response, keep_alive, request.method == "HEAD")
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader, first: bool) -> tuple[Request | None, bool]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                          HEAD_TIMEOUT if first else IDLE_TIMEOUT)
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise _Refused(400, "incomplete request head") from None
            return None, False
        except asyncio.LimitOverrunError:
            raise _Refused(431, f"request head over {MAX_HEAD_BYTES} bytes") from None
        except TimeoutError:
            return None, False
        lines = head[:-4].split(b"\r\n")
        m = _REQUEST_LINE.match(lines[0])
        if m is None:
            raise _Refused(400, "malformed request line (expected `METHOD /path HTTP/1.1`)")
        if len(lines) - 1 > MAX_HEADERS:
            raise _Refused(431, f"more than {MAX_HEADERS} header fields")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.match(name):
                raise _Refused(400, "malformed header field")
            value = value.strip(b" \t")
            if not _FIELD_VALUE.match(value):
                raise _Refused(400, "control character in a header value")
            key = name.decode("ascii").lower()
            text = value.decode("latin-1")
            if key in headers:
                if key in ("content-length", "host", "authorization", "content-type"):
                    raise _Refused(400, f"repeated {key} field")
                headers[key] += ", " + text
            else:
                headers[key] = text
        minor = m.group(3)
        if minor == b"1" and "host" not in headers:
            raise _Refused(400, "HTTP/1.1 request without Host")
        if "transfer-encoding" in headers:
            raise _Refused(501, "chunked request bodies are not supported; send Content-Length")
        length = headers.get("content-length", "0")
        if not length.isdigit() or len(length) > 12:
            raise _Refused(400, "invalid Content-Length")
        if int(length) > MAX_BODY_BYTES:
            raise _Refused(413, f"request body over {MAX_BODY_BYTES} bytes")
        body = b""
        if int(length):
            try:
                body = await asyncio.wait_for(reader.readexactly(int(length)), BODY_TIMEOUT)
            except TimeoutError:
                raise _Refused(408, "request body not received in time") from None
        target = m.group(2).decode("ascii")
        path, _, query = target.partition("?")
        connection = headers.get("connection", "").lower()
        keep_alive = minor == b"1" and "close" not in connection
        return Request(m.group(1).decode("ascii"), path, query, headers, body), keep_alive

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, response: Response, keep_alive: bool, head_only: bool) -> None:
        lines = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}",
                 f"Content-Type: {response.content_type}",
                 f"Content-Length: {len(response.body)}",
                 "Cache-Control: no-store"]
        lines += [f"{name}: {value}" for name, value in response.headers]
        if not keep_alive:
            lines.append("Connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(response.body)
        await writer.drain()
