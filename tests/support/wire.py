"""Minimal HTTP/1.1 wire helpers shared by the test clients and the test upstreams.

These are deliberately small and permissive where the tests need to *observe* what a peer sent (the
upstreams must record anything, including garbage) and strict where the tests *assert* framing (the
client side checks exactly what the gateway put on the wire).
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass, field

CRLF = b"\r\n"
IO_TIMEOUT = 15.0  # hang guard only; never asserted as a duration


class PeerClosed(Exception):
    """EOF where more bytes were required."""


class Headers(list):
    """A list of (name, value) str pairs, in wire order, with case-insensitive lookups."""

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self:
            if k.lower() == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self if k.lower() == name]

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def tokens(self, name: str) -> list[str]:
        """Comma-separated tokens across every field of that name, lowercased."""
        out = []
        for v in self.get_all(name):
            out.extend(t.strip().lower() for t in v.split(",") if t.strip())
        return out

    def names(self) -> list[str]:
        return [k.lower() for k, _ in self]


class Reader:
    """Buffered reads on a blocking socket. `consumed` counts the bytes handed out so far."""

    def __init__(self, sock: socket.socket, on_data=None, bufsize: int = 262144):
        self.sock = sock
        self.buf = bytearray()
        self.on_data = on_data
        self.bufsize = bufsize
        self.consumed = 0
        self.eof = False

    def fill(self) -> bool:
        if self.eof:
            return False
        data = self.sock.recv(self.bufsize)
        if not data:
            self.eof = True
            return False
        if self.on_data is not None:
            self.on_data(data)
        self.buf += data
        return True

    def take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        self.consumed += len(out)
        return out

    def read_until(self, delim: bytes, limit: int = 1 << 20) -> bytes | None:
        """Bytes up to and including delim; None on EOF before any byte; PeerClosed on EOF mid-way."""
        start = 0
        while True:
            i = self.buf.find(delim, start)
            if i >= 0:
                return self.take(i + len(delim))
            if len(self.buf) > limit:
                raise ValueError(f"no {delim!r} within {limit} bytes")
            start = max(0, len(self.buf) - len(delim) + 1)
            if not self.fill():
                if not self.buf:
                    return None
                raise PeerClosed(f"EOF before {delim!r}; have {bytes(self.buf[:200])!r}")

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.fill():
                raise PeerClosed(f"EOF after {len(self.buf)} of {n} bytes")
        return self.take(n)

    def stream_exact(self, n: int, sink) -> int:
        """Feeds exactly n bytes to sink(bytes) without holding them; returns n."""
        left = n
        while left:
            if not self.buf and not self.fill():
                raise PeerClosed(f"EOF with {left} of {n} bytes missing")
            piece = self.take(min(left, len(self.buf)))
            sink(piece)
            left -= len(piece)
        return n

    def stream_to_eof(self, sink) -> int:
        total = 0
        while True:
            if self.buf:
                piece = self.take(len(self.buf))
                sink(piece)
                total += len(piece)
            if not self.fill():
                return total

    def read_to_eof(self) -> bytes:
        parts = []
        self.stream_to_eof(parts.append)
        return b"".join(parts)

    def read_head(self, limit: int = 1 << 20) -> tuple[str, Headers] | None:
        """Start line and header fields (obs-fold not supported). None on a clean EOF."""
        raw = self.read_until(b"\r\n\r\n", limit)
        if raw is None:
            return None
        lines = raw[:-4].split(b"\r\n")
        start = lines[0].decode("latin-1")
        headers = Headers()
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ValueError(f"header line without colon: {line!r}")
            headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        return start, headers

    def stream_chunked(self, sink) -> tuple[int, Headers]:
        """Decodes a chunked body into sink; returns (decoded length, trailer fields)."""
        total = 0
        while True:
            line = self.read_until(CRLF, 1 << 16)
            if line is None:
                raise PeerClosed("EOF before chunk size")
            size_txt = line[:-2].split(b";", 1)[0].strip()
            size = int(size_txt, 16)
            if size == 0:
                break
            self.stream_exact(size, sink)
            total += size
            if self.read_exact(2) != CRLF:
                raise ValueError("chunk data not followed by CRLF")
        trailers = Headers()
        while True:
            line = self.read_until(CRLF, 1 << 16)
            if line is None:
                raise PeerClosed("EOF in trailers")
            if line == CRLF:
                return total, trailers
            name, _, value = line[:-2].partition(b":")
            trailers.append((name.decode("latin-1"), value.strip().decode("latin-1")))


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: Headers
    body: bytes = b""
    body_len: int = 0
    body_sha256: str = ""
    chunked: bool = False
    trailers: Headers = field(default_factory=Headers)
    informational: list = field(default_factory=list)  # [(status, Headers)] 1xx received first
    complete: bool = True  # False when the peer closed before the framing said the body ended

    def json(self):
        import json

        return json.loads(self.body)

    @property
    def connection_tokens(self) -> list[str]:
        return self.headers.tokens("connection")


def parse_status_line(line: str) -> tuple[str, int, str]:
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit():
        raise ValueError(f"bad status line {line!r}")
    return version, int(code), reason


def read_response(reader: Reader, method: str = "GET", keep_body: bool = True,
                  skip_informational: bool = True) -> Response | None:
    """Reads one response (after any 1xx). keep_body=False hashes the body instead of keeping it.

    A body that ends early returns complete=False instead of raising, so tests can assert on truncation.
    """
    informational = []
    while True:
        head = reader.read_head()
        if head is None:
            return None
        start, headers = head
        version, status, reason = parse_status_line(start)
        if 100 <= status < 200 and status != 101 and skip_informational:
            informational.append((status, headers))
            continue
        break
    resp = Response(version, status, reason, headers, informational=informational)
    hasher = hashlib.sha256()
    kept = []

    def sink(b):
        hasher.update(b)
        resp.body_len += len(b)
        if keep_body:
            kept.append(b)

    te = headers.tokens("transfer-encoding")
    cl = headers.get_all("content-length")
    try:
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            pass
        elif te:
            if te[-1] != "chunked":
                raise ValueError(f"response with Transfer-Encoding {te} not ending in chunked")
            resp.chunked = True
            _, resp.trailers = reader.stream_chunked(sink)
        elif cl:
            if len(cl) != 1 or not cl[0].isdigit():
                raise ValueError(f"bad response Content-Length {cl}")
            reader.stream_exact(int(cl[0]), sink)
        else:
            reader.stream_to_eof(sink)
    except (PeerClosed, ConnectionResetError):
        resp.complete = False
    resp.body = b"".join(kept)
    resp.body_sha256 = hasher.hexdigest()
    return resp


def build_request(method: str = "GET", target: str = "/", headers=None, body: bytes | None = None,
                  version: str = "HTTP/1.1", host: str | None = "test.local") -> bytes:
    """Serializes a request. headers: list of pairs or dict. Adds Host and Content-Length when sensible."""
    hs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in hs}
    if host is not None and "host" not in names:
        hs.insert(0, ("Host", host))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        hs.append(("Content-Length", str(len(body))))
    out = f"{method} {target} {version}\r\n".encode("latin-1")
    out += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in hs)
    out += b"\r\n"
    if body:
        out += body
    return out


def chunked(*pieces: bytes, trailers: str = "") -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return out + b"0\r\n" + trailers.encode("latin-1") + b"\r\n"


# A deterministic byte pattern for large bodies, generated on the fly: byte i of the stream is i % 256,
# whatever the piece sizes.
_PATTERN = bytes(range(256)) * 4097  # 1 MiB + 256


def pattern_chunks(n: int, chunk: int = 1 << 20):
    """Yields n bytes of the pattern as memoryview pieces of at most `chunk` (<= 1 MiB) bytes."""
    view = memoryview(_PATTERN)
    chunk = min(chunk, 1 << 20)
    pos = 0
    while pos < n:
        k = min(n - pos, chunk)
        off = pos % 256
        yield view[off:off + k]
        pos += k


def pattern_sha256(n: int) -> str:
    h = hashlib.sha256()
    for piece in pattern_chunks(n):
        h.update(piece)
    return h.hexdigest()
