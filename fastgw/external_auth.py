"""The `external_auth` policy's call to the auth service: one pooled HTTP client per policy and
worker (httpx on the worker's loop), made on first use. The core builds the request from the
exchange, pauses it, and goes on from `ExternalAuth.answered` / `failed` (fastgw/_cy/extauth.pyx).
docs/auth-jwt.md."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from . import _core, events
from .config.external_auth import ExternalAuthPolicy

__all__ = ["AuthServiceClient", "build_external_auth_policy"]


class TooLarge(Exception):
    pass


class AuthServiceClient:
    def __init__(self, cfg: ExternalAuthPolicy):
        parts = urlsplit(cfg.url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.prefix = parts.path.rstrip("/")
        self.timeout = cfg.timeout
        self.max_body = cfg.max_body_bytes
        self.max_connections = cfg.max_connections
        self._client = None
        self._warned = 0.0

    def _http(self):
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.origin, timeout=self.timeout, follow_redirects=False, trust_env=False,
                limits=httpx.Limits(max_connections=self.max_connections,
                                    max_keepalive_connections=self.max_connections))
        return self._client

    async def ask(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]]
                  ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, header fields, body) of the auth service's answer, whole within the timeout;
        raises on any failure."""
        return await asyncio.wait_for(self._ask(method, target, headers), self.timeout)

    async def _ask(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]]
                   ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        client = self._http()
        request = client.build_request(method, self.prefix + target.decode("latin-1"), headers=headers)
        response = await client.send(request, stream=True)
        try:
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > self.max_body:
                    raise TooLarge(f"answer body over {self.max_body} bytes")
        finally:
            await response.aclose()
        return response.status_code, list(response.headers.raw), bytes(body)

    def report(self, exc: BaseException) -> None:
        """One event a second at most: a down auth service must not flood the log."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._warned >= 1.0:
            self._warned = loop.time()
            events.emit("warning", "external_auth_failed",
                        msg=f"auth service {self.origin}{self.prefix} failed: {exc!r}"[:400],
                        url=self.origin + self.prefix, error=repr(exc)[:300])


def build_external_auth_policy(entry: ExternalAuthPolicy, name: str, key: str) -> _core.Policy:
    all_request = entry.request_headers == ["*"]
    all_upstream = entry.upstream_headers == ["*"]
    all_client = entry.client_headers == ["*"]
    lower = [] if all_request else [h.lower().encode() for h in entry.request_headers if h.lower() != "authorization"]
    return _core.ExternalAuth(
        name, key, AuthServiceClient(entry), [b"authorization", *lower],
        [] if all_upstream else [(h.lower().encode(), h.encode()) for h in entry.upstream_headers],
        [] if all_client else [h.lower().encode() for h in entry.client_headers],
        entry.consumer_header.lower().encode() if entry.consumer_header else None,
        entry.on_failure == "allow", entry.timeout + 0.5, entry, all_request, all_upstream, all_client)
