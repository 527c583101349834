"""Peers for the stream-listener tests (tcp, tls-passthrough): a TCP echo server that tags what it
returns with its name, a TLS server that terminates what the gateway passed through, self-signed
certificates made with the openssl CLI, and ClientHellos made by Python's own TLS client."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path

from .threaded import ThreadedServer


class TcpEcho(ThreadedServer):
    """Answers each connection with `<name>:` then echoes; a FIN is answered with a FIN after the
    echo, so half-close can be seen. Counts connections."""

    def __init__(self, name: str, tls: ssl.SSLContext | None = None):
        self.name = name
        self.tls = tls
        self.sni: list[str | None] = []
        self.lock = threading.Lock()
        super().__init__(256)

    def _serve(self, c: socket.socket) -> None:
        try:
            if self.tls is not None:
                c = self.tls.wrap_socket(c, server_side=True)
                with self.lock:
                    self.sni.append(getattr(c, "sni_seen", None))
            c.sendall(self.name.encode() + b":")
            while True:
                data = c.recv(65536)
                if not data:
                    break
                c.sendall(data)
            if self.tls is None:
                c.shutdown(socket.SHUT_WR)
        except (OSError, ssl.SSLError):
            pass
        finally:
            c.close()


def make_cert(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for `names` (SANs) and its key."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    san = ",".join(f"DNS:{n}" for n in names)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={names[0]}",
                    "-addext", f"subjectAltName={san}"], check=True, capture_output=True)
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    def note_sni(sslobj, name, _ctx):
        sslobj.sni_seen = name
    ctx.sni_callback = note_sni
    return ctx


def client_context(cert: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert))
    return ctx


def client_hello(server_hostname: str | None) -> bytes:
    """The first flight of Python's TLS client: one record holding the ClientHello."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def refragment(hello: bytes, size: int) -> bytes:
    """The same handshake message re-cut into records of at most `size` bytes."""
    assert hello[0] == 22
    body = hello[5:5 + int.from_bytes(hello[3:5], "big")]
    out = b""
    for i in range(0, len(body), size):
        piece = body[i:i + size]
        out += bytes([22, 3, 1]) + len(piece).to_bytes(2, "big") + piece
    return out
