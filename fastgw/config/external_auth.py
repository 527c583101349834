"""The `external_auth` policy's config: forward auth to an HTTP auth service, as Traefik's forwardAuth
and Envoy's ext_authz (HTTP) do, and as the Gateway API's ExternalAuth filter (HTTP) defines.
docs/auth-jwt.md."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .policies import PolicyBase
from .positions import Token
from .values import PositiveDuration

__all__ = ["ExternalAuthPolicy", "check_external_auth"]

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# never copied onto the upstream request from the auth service's answer: the gateway frames the
# request itself, and these would let the auth service break that
_NOT_COPIED = frozenset(("host", "content-length", "transfer-encoding", "connection", "keep-alive",
                         "proxy-connection", "te", "trailer", "upgrade", "x-request-id"))


def _client_headers() -> list[str]:
    return ["content-type", "www-authenticate", "location", "set-cookie"]


class ExternalAuthPolicy(PolicyBase, tag="external_auth", kw_only=True):
    """The request's method, path and selected headers go to `url` (no body); a 2xx answer lets it
    through, anything else is the client's answer."""

    url: str
    """The auth service, `http://host:port[/prefix]`: the request's path (and query) is appended."""
    request_headers: list[str] = msgspec.field(default_factory=list)
    """Client headers sent to the auth service besides `Authorization` (always sent when present); `["*"]`:
    every client header but the framing fields and those the gateway sets (the Gateway API filter's
    empty `allowedHeaders`)."""
    upstream_headers: list[str] = msgspec.field(default_factory=list)
    """Headers of a 2xx answer put on the upstream request (replacing any the client sent); `["*"]`: every
    header of the answer but the framing fields, `Host`, `Content-Type`, `Content-Encoding`, `Date` and
    `Server` (the Gateway API filter's empty `allowedResponseHeaders`)."""
    client_headers: list[str] = msgspec.field(default_factory=_client_headers)
    """Headers of a refusal passed on to the client with its status and body; `["*"]`: all but the framing
    fields (what the Gateway API filter asks)."""
    consumer_header: str | None = None
    """A header of the 2xx answer naming the consumer (Exchange.consumer_name)."""
    timeout: PositiveDuration = 2.0
    """The auth service's whole answer must arrive within this."""
    on_failure: Literal["deny", "allow"] = "deny"
    """The auth service unreachable, too slow or answering garbage: 503 (deny) or let through (allow)."""
    max_body_bytes: Annotated[int, Meta(ge=0)] = 65536
    """The largest refusal body passed on (a longer one counts as a failure)."""
    max_connections: Annotated[int, Meta(ge=1)] = 64
    """Pooled connections to the auth service, per worker."""


def check_external_auth(policy: ExternalAuthPolicy, path: list[Token], out: list) -> None:
    from .jwt import check_http_url

    problem = check_http_url(policy.url)
    if problem:
        out.append(([*path, "url"], problem))
    elif "?" in policy.url or "#" in policy.url:
        out.append(([*path, "url"], "the auth service URL takes no query or fragment (the request's are appended)"))
    for key in ("request_headers", "upstream_headers", "client_headers"):
        names = getattr(policy, key)
        for i, name in enumerate(names):
            if name == "*":
                if len(names) > 1:
                    out.append(([*path, key, i], "'*' (every header) must be alone in the list"))
                continue
            if not _TOKEN.match(name):
                out.append(([*path, key, i], f"not a valid header name: {name!r}"))
            elif key == "upstream_headers" and name.lower() in _NOT_COPIED:
                out.append(([*path, key, i], f"{name} is the gateway's to set"))
            elif key == "client_headers" and name.lower() in ("content-length", "transfer-encoding", "connection"):
                out.append(([*path, key, i], f"{name} is the gateway's to set"))
    if policy.consumer_header is not None and not _TOKEN.match(policy.consumer_header):
        out.append(([*path, "consumer_header"], f"not a valid header name: {policy.consumer_header!r}"))
