"""Real HTTP servers the auth tests run: a JWKS endpoint whose key set can rotate or stall, and an
external auth service that allows, denies or stalls as each request asks."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server:
    def __init__(self, handler_cls):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _JwksHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv: JwksServer = self.server.owner
        with srv.lock:
            srv.fetches += 1
            keys, delay, status, cache = list(srv.keys), srv.delay, srv.status, srv.cache_control
        if delay:
            time.sleep(delay)
        body = json.dumps({"keys": keys}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if cache:
            self.send_header("Cache-Control", cache)
        self.end_headers()
        self.wfile.write(body)


class JwksServer(_Server):
    """GET anything: {"keys": self.keys}. `delay` stalls each answer, `status` replaces 200."""

    def __init__(self, keys=(), cache_control: str | None = "max-age=300"):
        self.lock = threading.Lock()
        self.keys = list(keys)
        self.fetches = 0
        self.delay = 0.0
        self.status = 200
        self.cache_control = cache_control
        super().__init__(_JwksHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"


class _AuthHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _any(self):
        srv: AuthService = self.server.owner
        headers = {k.lower(): v for k, v in self.headers.items()}
        with srv.lock:
            srv.seen.append({"method": self.command, "path": self.path, "headers": headers,
                             "conn": id(self.connection)})
        verdict = headers.get("x-test-verdict", "allow")
        if verdict == "stall":
            time.sleep(float(headers.get("x-test-stall", "5")))
        if verdict in ("allow", "stall"):
            self.send_response(200)
            self.send_header("X-Auth-User", headers.get("x-test-user", "alice"))
            self.send_header("X-Auth-Secret-Internal", "not-for-upstream")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b'{"denied":"by the auth service"}'
        status = int(headers.get("x-test-status", "403"))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("WWW-Authenticate", 'Bearer realm="auth-service"')
        self.send_header("X-Auth-Reason", "test")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _any


class AuthService(_Server):
    """Forward-auth service. X-Test-Verdict (forwarded by the gateway) says: allow (200 with
    X-Auth-User), deny (X-Test-Status, default 403, a JSON body), stall (X-Test-Stall seconds, then
    allow)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen: list[dict] = []
        super().__init__(_AuthHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
