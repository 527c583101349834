"""External authorization with an `async def` hook: each request's credentials go to an HTTP auth
service (a plain GET with asyncio.open_connection, no client library), and its answer decides.

    policies:
      - type: plugin
        name: auth
        module: "examples.plugins.external_auth:ExternalAuth"
        timeout: 2s                        # the gateway's limit for the paused exchange (then 504)
        config:
          url: http://127.0.0.1:9100/check
          timeout: 500ms                   # the plugin's own limit: keep it below the policy's
          forward: [authorization]         # request headers passed to the auth service
          copy_response_headers: [x-auth-user]   # auth service headers passed to the upstream

The auth service answers 2xx to allow (its `copy_response_headers` go upstream), 401/403 to deny
(passed to the client as-is: status and body), anything else is an error. On an error or timeout
the plugin answers 503 (`fail_open: true` lets the request through instead).

While the hook awaits, the exchange is paused and the worker serves other requests: this is how a
plugin does I/O. The plugin keeps its own timeout below the policy's `timeout` so that it, not the
gateway, decides what a slow auth service means.
"""

from __future__ import annotations

import asyncio
from typing import Annotated
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from fastgw.plugin import Response

FieldName = Annotated[str, Meta(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
MAX_ANSWER = 64 * 1024


class AuthError(Exception):
    pass


def parse_duration(value: float | str) -> float:
    """Seconds from 0.5, "500ms", "2s"."""
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    for suffix, scale in (("ms", 0.001), ("s", 1.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


class ExternalAuth:
    class Config(msgspec.Struct, forbid_unknown_fields=True):
        url: Annotated[str, Meta(pattern=r"^http://[^/\s]+(/\S*)?$")]
        """http://host:port/path of the auth service (plain HTTP)."""
        timeout: float | str = 1.0
        forward: list[FieldName] = msgspec.field(default_factory=lambda: ["authorization"])
        copy_response_headers: list[FieldName] = msgspec.field(default_factory=list)
        fail_open: bool = False

        def __post_init__(self) -> None:
            try:
                seconds = parse_duration(self.timeout)
            except ValueError:
                raise ValueError(f"timeout: not a duration: {self.timeout!r}") from None
            if seconds <= 0:
                raise ValueError("timeout: must be positive")

    def __init__(self, config: Config) -> None:
        self.config = config
        parts = urlsplit(config.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.authority = parts.netloc
        self.timeout = parse_duration(config.timeout)

    async def on_request(self, req):
        try:
            status, headers, body = await asyncio.wait_for(self.ask(req), self.timeout)
        except (OSError, TimeoutError, AuthError) as exc:
            if self.config.fail_open:
                return None
            reason = "auth service timed out" if isinstance(exc, TimeoutError) else "auth service failed"
            return Response.json(503, msgspec.json.encode({"error": reason, "request_id": req.request_id}))
        if 200 <= status < 300:
            for name in self.config.copy_response_headers:
                value = headers.get(name.lower())
                if value is not None:
                    req.headers.set(name, value)
                else:
                    req.headers.remove(name)     # a client must not supply it itself
            return None
        if status in (401, 403):
            kept = {k: v for k, v in headers.items() if k in ("content-type", "www-authenticate")}
            return Response(status, kept, body)
        if self.config.fail_open:
            return None
        return Response.json(503, msgspec.json.encode({"error": "auth service failed",
                                                       "request_id": req.request_id}))

    async def ask(self, req) -> tuple[int, dict[str, str], bytes]:
        """One GET to the auth service on its own connection: (status, {lowercase name: value},
        body)."""
        lines = [f"GET {self.target} HTTP/1.1", f"Host: {self.authority}", "Connection: close",
                 f"X-Original-Method: {req.method}",
                 f"X-Original-Uri: {req.path}{'?' + req.query if req.query else ''}",
                 f"X-Request-Id: {req.request_id}"]
        for name in self.config.forward:
            value = req.headers.get(name)
            if value is not None:
                lines.append(f"{name}: {value}")
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            raw = b""
            while more := await reader.read(MAX_ANSWER):   # Connection: close, so up to EOF
                raw += more
                if len(raw) > MAX_ANSWER:
                    raise AuthError("answer too large")
        finally:
            writer.close()
        head, sep, body = raw.partition(b"\r\n\r\n")
        if not sep:
            raise AuthError("no complete response head")
        status_line, *field_lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(status_line.split(" ", 2)[1])
        except (IndexError, ValueError):
            raise AuthError(f"bad status line {status_line!r}") from None
        headers = {}
        for line in field_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length")
        if length is not None and length.isdigit():
            body = body[:int(length)]
        return status, headers, body
