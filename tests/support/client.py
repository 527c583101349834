"""Test clients: raw sockets (exact bytes), curl (a real third-party client) and small conveniences."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass

from .wire import IO_TIMEOUT, Reader, Response, build_request, read_response

CURL = shutil.which("curl")


class RawConn:
    """One client connection with exact control over the bytes sent."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = IO_TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = Reader(self.sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method="GET", target="/", headers=None, body=None, keep_body: bool = True,
                **kw) -> Response:
        self.send(build_request(method, target, headers, body, **kw))
        return self.response(method, keep_body=keep_body)

    def response(self, method: str = "GET", **kw) -> Response:
        resp = read_response(self.reader, method, **kw)
        if resp is None:
            raise AssertionError("connection closed before any response byte")
        return resp

    def read_to_close(self) -> tuple[bytes, str]:
        """Everything until the peer closes. Returns (bytes, 'eof' | 'reset')."""
        parts = [bytes(self.reader.buf)]
        self.reader.buf.clear()
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return b"".join(parts), "eof"
                parts.append(data)
        except ConnectionResetError:
            return b"".join(parts), "reset"

    def is_closed_by_peer(self, timeout: float = IO_TIMEOUT) -> bool:
        """True when the peer closed (EOF or RST) with nothing more to read; False on stray bytes."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return data == b"" and not self.reader.buf

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def raw_exchange(port: int, data: bytes, timeout: float = IO_TIMEOUT) -> tuple[bytes, str]:
    """Sends data in one write and reads until the gateway closes the connection."""
    with RawConn(port, timeout=timeout) as c:
        c.send(data)
        try:
            return c.read_to_close()
        except TimeoutError:
            raise AssertionError(f"gateway did not close the connection within {timeout}s") from None


def parse_one(data: bytes, method: str = "GET") -> Response:
    """Parses the first response in a byte string (as returned by raw_exchange)."""
    a, b = socket.socketpair()
    try:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        resp = read_response(Reader(b), method)
    finally:
        a.close()
        b.close()
    if resp is None:
        raise AssertionError("no response bytes at all")
    return resp


@dataclass
class CurlResult:
    returncode: int
    status: int | None
    headers_text: str
    body: bytes
    stderr: str


def curl(url: str, *args: str, timeout: float = 60.0, input_data: bytes | None = None) -> CurlResult:
    """Runs curl; -D - prints every response head (1xx included) to stdout before the body."""
    assert CURL, "curl is required by the test suite"
    hdr_path = f"/tmp/fastgw-curl-{os.getpid()}-{time.monotonic_ns()}.txt"
    cmd = [CURL, "-sS", "--max-time", str(int(timeout)), "-D", hdr_path, "-o", "-", *args, url]
    try:
        proc = subprocess.run(cmd, input=input_data, capture_output=True, timeout=timeout + 10)
        try:
            with open(hdr_path, encoding="latin-1") as f:
                head = f.read()
        except FileNotFoundError:
            head = ""
    finally:
        if os.path.exists(hdr_path):
            os.unlink(hdr_path)
    status = None
    for line in head.splitlines():
        if line.startswith("HTTP/"):
            parts = line.split()
            if len(parts) > 1 and parts[1].isdigit():
                status = int(parts[1])  # the last (final) one wins
    return CurlResult(proc.returncode, status, head, proc.stdout, proc.stderr.decode("latin-1"))


def wait_until(pred, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    """Polls pred() until truthy; returns its value. A hang guard, not a timing assertion."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - the predicate may race the system under test
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


def assert_gateway_error(resp, status: int | None = None, context: str = "") -> dict:
    """The gateway's own error: JSON {"error", "request_id"} with X-Request-Id equal to request_id."""
    import json

    if status is not None:
        assert resp.status == status, f"{context} expected {status}, got {resp.status} {resp.body[:300]!r}"
    ctype = resp.headers.get("content-type", "") or ""
    assert ctype.split(";")[0].strip() == "application/json", f"{context} content-type {ctype!r}"
    body = json.loads(resp.body)
    assert isinstance(body.get("error"), str) and body["error"], f"{context} body {body}"
    assert body.get("request_id"), f"{context} body {body}"
    assert resp.headers.get("x-request-id") == body["request_id"], f"{context} {resp.headers} vs {body}"
    return body


_sentinels = itertools.count(1)


def next_sentinel_id() -> str:
    return f"sentinel-{os.getpid()}-{next(_sentinels)}"


def sync_and_assert_nothing_forwarded(gw, echo, snap, context: str) -> None:
    """A sentinel request through the gateway, then: the upstream got the sentinel and nothing else."""
    rid = next_sentinel_id()
    with RawConn(gw.port) as c:
        r = c.request("GET", "/__sentinel", [("X-Request-Id", rid), ("Connection", "close")])
    assert r.status == 200, f"sentinel request failed: {r.status} {r.body[:200]!r}"
    got = echo.requests_since(snap)
    assert [q.request_id for q in got] == [rid], f"{context}: upstream received {[(q.method, q.target) for q in got]}"
    assert echo.bytes_since(snap) == got[0].raw_len, (
        f"{context}: upstream received bytes beyond the sentinel request: {echo.raw_by_conn_since(snap)}")
