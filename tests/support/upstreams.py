"""Real upstream servers for the end-to-end tests, each on 127.0.0.1 port 0 in background threads.

EchoServer answers every request with what it received (JSON) and records every raw byte per connection,
so tests can assert what reached the upstream, including "nothing at all". RawUpstream runs a scripted
handler per connection for the failure modes (resets, truncation, malformed responses, slowness, ...).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import socket
import struct
import threading
from dataclasses import dataclass, field

from .wire import IO_TIMEOUT, Headers, PeerClosed, Reader, pattern_chunks

RAW_KEEP = 1 << 16  # raw bytes kept per connection (counts are kept for everything)


@dataclass
class ReceivedRequest:
    conn_id: int
    method: str
    target: str
    version: str
    headers: Headers
    body_len: int = 0
    body_sha256: str = ""
    body: bytes = b""  # kept when small (<= 64 KiB)
    chunked: bool = False
    trailers: Headers = field(default_factory=Headers)
    raw_len: int = 0  # head + framed body bytes as they arrived

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")


@dataclass
class ConnRecord:
    conn_id: int
    peer: tuple
    raw: bytearray = field(default_factory=bytearray)
    nbytes: int = 0
    requests: int = 0
    closed: bool = False


class _ServerBase:
    """Accept loop in a thread; one thread per connection; bookkeeping shared by both server kinds."""

    def __init__(self, name: str):
        self.name = name
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.conns: dict[int, ConnRecord] = {}
        self.requests: list[ReceivedRequest] = []
        self.total_bytes = 0
        self._ids = itertools.count(1)
        self._socks: set[socket.socket] = set()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(256)
        self.port = self.lsock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True)
        self._thread.start()

    # --- bookkeeping -------------------------------------------------------------------------------
    @property
    def accepted(self) -> int:
        with self.lock:
            return len(self.conns)

    def snapshot(self) -> tuple:
        """(bytes, requests, connections, {conn_id: bytes}) so far: pass to the *_since methods."""
        with self.lock:
            return (self.total_bytes, len(self.requests), len(self.conns),
                    {i: c.nbytes for i, c in self.conns.items()})

    def bytes_since(self, snap) -> int:
        with self.lock:
            return self.total_bytes - snap[0]

    def requests_since(self, snap) -> list[ReceivedRequest]:
        with self.lock:
            return list(self.requests[snap[1]:])

    def conns_since(self, snap) -> list[ConnRecord]:
        with self.lock:
            return [c for i, c in self.conns.items() if i > snap[2]]

    def raw_by_conn_since(self, snap) -> dict[int, bytes]:
        """{conn_id: raw bytes received since snap} for every connection that received any (64 KiB cap)."""
        out = {}
        with self.lock:
            for i, c in self.conns.items():
                before = snap[3].get(i, 0)
                if c.nbytes > before:
                    out[i] = bytes(c.raw[before:])
        return out

    def raw_since(self, snap) -> bytes:
        """Raw bytes of connections opened after snap (first 64 KiB of each), concatenated."""
        return b"".join(bytes(c.raw) for c in self.conns_since(snap))

    def find_request(self, request_id: str) -> ReceivedRequest | None:
        with self.lock:
            for r in self.requests:
                if r.request_id == request_id:
                    return r
        return None

    def _record_bytes(self, rec: ConnRecord, data: bytes) -> None:
        with self.lock:
            self.total_bytes += len(data)
            rec.nbytes += len(data)
            room = RAW_KEEP - len(rec.raw)
            if room > 0:
                rec.raw += data[:room]

    # --- lifecycle -----------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, peer = self.lsock.accept()
            except OSError:
                return
            sock.settimeout(IO_TIMEOUT * 4)
            # servers here write a head and a body separately: without NODELAY the body waits for
            # the gateway's delayed ACK (~40 ms a request)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass            # already reset by the peer; the handler will see it
            with self.lock:
                cid = next(self._ids)
                rec = ConnRecord(cid, peer)
                self.conns[cid] = rec
                self._socks.add(sock)
            threading.Thread(target=self._run_conn, args=(sock, rec), daemon=True,
                             name=f"{self.name}-conn{cid}").start()

    def _run_conn(self, sock: socket.socket, rec: ConnRecord) -> None:
        try:
            self.handle(sock, rec)
        except (OSError, PeerClosed, ValueError):
            pass
        finally:
            with self.lock:
                rec.closed = True
                self._socks.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    def handle(self, sock: socket.socket, rec: ConnRecord) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def sleep(self, seconds: float) -> None:
        """Interruptible sleep: returns early when the server stops."""
        self.stopping.wait(seconds)

    def close(self) -> None:
        self.stopping.set()
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- request parsing shared by handlers --------------------------------------------------------------
    def read_request(self, reader: Reader, rec: ConnRecord, keep_body_max: int = 1 << 16,
                     on_head=None) -> ReceivedRequest | None:
        """Reads one request (head + CL or chunked body) and records it. None on a clean EOF.

        on_head(req) runs after the head and before the body (used to send 100 Continue).
        """
        start_pos = reader.consumed
        head = reader.read_head()
        if head is None:
            return None
        start, headers = head
        parts = start.split(" ")
        if len(parts) != 3:
            raise ValueError(f"bad request line {start!r}")
        req = ReceivedRequest(rec.conn_id, parts[0], parts[1], parts[2], headers)
        if on_head is not None:
            on_head(req)
        hasher = hashlib.sha256()
        kept = []

        def sink(b):
            hasher.update(b)
            if req.body_len + len(b) <= keep_body_max:
                kept.append(b)
            req.body_len += len(b)

        if headers.tokens("transfer-encoding"):
            req.chunked = True
            _, req.trailers = reader.stream_chunked(sink)
        elif headers.get("content-length") is not None:
            reader.stream_exact(int(headers.get("content-length")), sink)
        req.body_sha256 = hasher.hexdigest()
        req.body = b"".join(kept) if req.body_len <= keep_body_max else b""
        req.raw_len = reader.consumed - start_pos
        with self.lock:
            self.requests.append(req)
            rec.requests += 1
        return req

    def reader_for(self, sock: socket.socket, rec: ConnRecord) -> Reader:
        return Reader(sock, on_data=lambda d: self._record_bytes(rec, d))


def wants_close(req: ReceivedRequest) -> bool:
    tokens = req.headers.tokens("connection")
    if req.version == "HTTP/1.0":
        return "keep-alive" not in tokens
    return "close" in tokens


def response_head(status: int, headers, reason: str | None = None) -> bytes:
    reason = reason if reason is not None else REASONS.get(status, "Status")
    out = f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")
    out += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers)
    return out + b"\r\n"


REASONS = {100: "Continue", 103: "Early Hints", 200: "OK", 201: "Created", 204: "No Content",
           304: "Not Modified", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable"}


class EchoServer(_ServerBase):
    """Answers JSON {"name", "method", "target", "headers", "body_len", "body_sha256"}.

    Request headers that steer it:
      X-Echo-Status: N            response status (default 200)
      X-Echo-Set-Header: A:v,B:w  extra response headers
      X-Echo-Body-Bytes: N        respond with N bytes of the test pattern instead of JSON (streamed)
      X-Echo-Chunked: 1           frame the response body with chunked instead of Content-Length
      X-Echo-Delay: seconds       wait before answering
    It sends "100 Continue" itself when the request carries Expect: 100-continue.
    """

    def __init__(self, name: str = "echo"):
        super().__init__(name)

    def handle(self, sock, rec):
        reader = self.reader_for(sock, rec)
        while not self.stopping.is_set():
            def on_head(req):
                if req.headers.get("expect", "").lower() == "100-continue":
                    sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

            try:
                req = self.read_request(reader, rec, on_head=on_head)
            except (ValueError, PeerClosed):
                sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            if req is None:
                return
            close = wants_close(req)
            self.respond(sock, req, close)
            if close:
                return

    def respond(self, sock, req: ReceivedRequest, close: bool) -> None:
        h = req.headers
        delay = float(h.get("x-echo-delay", "0") or 0)
        if delay:
            self.sleep(delay)
        status = int(h.get("x-echo-status", "200"))
        out_headers = [("X-Echo-Name", self.name)]
        for item in (h.get("x-echo-set-header") or "").split(","):
            if ":" in item:
                k, v = item.split(":", 1)
                out_headers.append((k.strip(), v.strip()))
        chunked = h.get("x-echo-chunked") == "1"
        n_pattern = h.get("x-echo-body-bytes")
        if n_pattern is not None:
            length = int(n_pattern)
            body_iter = pattern_chunks(length, 256 * 1024)
            out_headers.append(("Content-Type", "application/octet-stream"))
        else:
            body = json.dumps({
                "name": self.name, "method": req.method, "target": req.target, "version": req.version,
                "headers": [[k, v] for k, v in req.headers], "body_len": req.body_len,
                "body_sha256": req.body_sha256, "trailers": [[k, v] for k, v in req.trailers],
            }).encode()
            length = len(body)
            body_iter = [body]
            out_headers.append(("Content-Type", "application/json"))
        no_body = req.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        if status not in (204, 304) and not (100 <= status < 200):
            if chunked:
                out_headers.append(("Transfer-Encoding", "chunked"))
            else:
                out_headers.append(("Content-Length", str(length)))
        if close:
            out_headers.append(("Connection", "close"))
        sock.sendall(response_head(status, out_headers))
        if no_body:
            return
        for piece in body_iter:
            if chunked:
                sock.sendall(b"%x\r\n" % len(piece) + bytes(piece) + b"\r\n")
            else:
                sock.sendall(piece)
        if chunked:
            sock.sendall(b"0\r\n\r\n")


class Conn:
    """What a RawUpstream handler gets: the socket, a recording reader and helpers."""

    def __init__(self, server: RawUpstream, sock: socket.socket, rec: ConnRecord):
        self.server = server
        self.sock = sock
        self.rec = rec
        self.reader = server.reader_for(sock, rec)

    def read_request(self) -> ReceivedRequest | None:
        return self.server.read_request(self.reader, self.rec)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def respond(self, status: int = 200, body: bytes = b"ok", headers=(), close: bool = False) -> None:
        hs = list(headers)
        hs.append(("Content-Length", str(len(body))))
        if close:
            hs.append(("Connection", "close"))
        self.send(response_head(status, hs) + body)

    def reset(self) -> None:
        """Closes with RST instead of FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def sleep(self, seconds: float) -> None:
        self.server.sleep(seconds)


class RawUpstream(_ServerBase):
    """Runs handler(conn: Conn) for every accepted connection. Records bytes and parsed requests."""

    def __init__(self, handler, name: str = "raw"):
        self.handler = handler
        self.events: list[str] = []  # free-form notes handlers add (e.g. "junk-sent")
        super().__init__(name)

    def handle(self, sock, rec):
        self.handler(Conn(self, sock, rec))

    def note(self, event: str) -> None:
        with self.lock:
            self.events.append(event)


class ClosedPort:
    """A port where connecting is refused: bound (so nobody else gets it) but never listening."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"

    def close(self):
        self.sock.close()


# --- scripted behaviours for RawUpstream -------------------------------------------------------------------

def serve_ok(conn: Conn) -> None:
    """A well-behaved keep-alive server: 'ok-<n>' bodies, n = request count on this connection."""
    n = 0
    while (req := conn.read_request()) is not None:
        n += 1
        conn.respond(200, f"ok-{n}".encode(), close=wants_close(req))
        if wants_close(req):
            return


def reset_on_accept(conn: Conn) -> None:
    conn.reset()


def close_after_request(conn: Conn) -> None:
    conn.read_request()
    conn.sock.shutdown(socket.SHUT_RDWR)


def partial_body(total: int = 100_000, sent: int = 10_000, rst: bool = False):
    """Announces `total` body bytes, sends `sent` of them, then dies (FIN, or RST when rst)."""

    def handler(conn: Conn) -> None:
        conn.read_request()
        conn.send(response_head(200, [("Content-Length", str(total))]) + b"x" * sent)
        conn.server.note("partial-sent")
        conn.sleep(0.2)  # let the bytes leave before dying
        if rst:
            conn.reset()
        else:
            conn.sock.shutdown(socket.SHUT_RDWR)

    return handler


def slow(delay: float, body: bytes = b"slow"):
    def handler(conn: Conn) -> None:
        while (req := conn.read_request()) is not None:
            conn.sleep(delay)
            conn.respond(200, body, close=wants_close(req))

    return handler


def slow_body(first: bytes, pause: float, total: int):
    """Sends the head and `first`, then stalls `pause` seconds mid-body (body_idle)."""

    def handler(conn: Conn) -> None:
        conn.read_request()
        conn.send(response_head(200, [("Content-Length", str(total))]) + first)
        conn.sleep(pause)
        conn.send(b"y" * (total - len(first)))

    return handler


def respond_raw(data: bytes, then_close: bool = True):
    """Reads a request and sends `data` verbatim (for malformed responses)."""

    def handler(conn: Conn) -> None:
        while conn.read_request() is not None:
            conn.send(data)
            if then_close:
                conn.sleep(0.1)
                return

    return handler


def informational_then_ok(*informational: bytes, body: bytes = b"final"):
    """Sends each 1xx head (full bytes incl. CRLFCRLF), then a 200."""

    def handler(conn: Conn) -> None:
        while (req := conn.read_request()) is not None:
            for head in informational:
                conn.send(head)
            conn.respond(200, body, close=wants_close(req))

    return handler


def status_no_body(status: int, headers=()):
    """Answers `status` with the given headers and no body (for 204/304, or HEAD with Content-Length)."""

    def handler(conn: Conn) -> None:
        while (req := conn.read_request()) is not None:
            conn.send(response_head(status, list(headers)))
            if wants_close(req):
                return

    return handler


def close_delimited(body: bytes, rst: bool = False):
    """HTTP/1.1 response with neither Content-Length nor chunked: the body ends at close (or, when
    rst, the upstream dies mid-body with a reset)."""

    def handler(conn: Conn) -> None:
        conn.read_request()
        conn.send(response_head(200, [("Content-Type", "text/plain")]) + body)
        if rst:
            conn.sleep(0.2)  # let the bytes leave before dying
            conn.reset()
        else:
            conn.sock.shutdown(socket.SHUT_RDWR)

    return handler


def junk_while_idle(junk: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nJUNK", after: float = 0.2):
    """Serves one request per connection with keep-alive, then writes unsolicited bytes while idle.

    Later requests on that connection are still answered (so a gateway that reuses it reads the junk as
    the response: the test sees JUNK instead of ok-N).
    """

    def handler(conn: Conn) -> None:
        n = 0
        req = conn.read_request()
        if req is None:
            return
        n += 1
        conn.respond(200, f"ok-{n}".encode())
        conn.sleep(after)
        conn.send(junk)
        conn.server.note("junk-sent")
        while (req := conn.read_request()) is not None:
            n += 1
            conn.respond(200, f"ok-{n}".encode())

    return handler


def stale_after_first(conn: Conn) -> None:
    """Serves the first request of each connection with keep-alive; on the next request it reads it and
    closes without answering: what a pooled connection looks like when the server timed it out just as
    the gateway reused it. A fresh connection always works."""
    req = conn.read_request()
    if req is None:
        return
    conn.respond(200, b"fresh", headers=[("X-Conn", str(conn.rec.conn_id))])
    if conn.read_request() is not None:
        conn.server.note("stale-dropped")
    conn.sock.shutdown(socket.SHUT_RDWR)




class TlsEchoServer(EchoServer):
    """EchoServer over TLS (issue 13's upstream TLS tests). Each handshake's SNI, ALPN and client
    certificate (DER, or None) are kept in `handshakes`."""

    def __init__(self, name: str, ctx, *, sni_seen: bool = True):
        import ssl as _ssl

        self.ctx = ctx
        self.handshakes: list[dict] = []
        self._ssl = _ssl
        if sni_seen:
            def on_sni(sslobj, server_name, _ctx):
                sslobj.fastgw_test_sni = server_name
            ctx.sni_callback = on_sni
        super().__init__(name)

    def _run_conn(self, sock, rec) -> None:
        try:
            tls = self.ctx.wrap_socket(sock, server_side=True)
        except (OSError, self._ssl.SSLError) as exc:
            with self.lock:
                self.handshakes.append({"error": repr(exc)})
            sock.close()
            return
        with self.lock:
            self.handshakes.append({"sni": getattr(tls, "fastgw_test_sni", None),
                                    "alpn": tls.selected_alpn_protocol(),
                                    "client_cert": tls.getpeercert(binary_form=True)})
        super()._run_conn(tls, rec)
