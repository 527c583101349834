"""The `cors` policy's config: cross-origin resource sharing answered at the gateway, with the
semantics of the Gateway API's HTTPCORSFilter (v1.5). docs/cors.md."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from msgspec import Meta

from .policies import PolicyBase
from .positions import Token

__all__ = ["CorsPolicy", "check_cors", "parse_origin"]

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ORIGIN = re.compile(r"^(https?)://(\*|\*\.[A-Za-z0-9.-]+|[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?$")
_DEFAULT_PORT = {"http": 80, "https": 443}


class CorsPolicy(PolicyBase, tag="cors", kw_only=True):
    """Preflight requests (OPTIONS with Origin and Access-Control-Request-Method) are answered here;
    other requests with an allowed Origin get the CORS response headers."""

    allow_origins: list[str] = msgspec.field(default_factory=list)
    """`scheme://host[:port]`, `scheme://*.suffix` (any number of labels before the suffix), or `*`
    alone (every origin)."""
    allow_origin_regex: list[str] = msgspec.field(default_factory=list)
    """Python regular expressions the whole Origin value must match."""
    allow_methods: list[str] = msgspec.field(default_factory=list)
    """Methods a preflight may ask for, or `*` alone. GET, HEAD and POST are always allowed."""
    allow_headers: list[str] = msgspec.field(default_factory=list)
    """Request headers a preflight may ask for (case-insensitive), or `*` alone."""
    expose_headers: list[str] = msgspec.field(default_factory=list)
    """Response headers scripts may read, or `*` alone."""
    allow_credentials: bool = False
    max_age: Annotated[int, Meta(ge=0)] = 5
    """Seconds a browser may keep a preflight's answer."""


def parse_origin(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin as configured (host lowercase, `*` or `*.suffix` kept), or
    None when it is not one."""
    m = _ORIGIN.match(origin)
    if m is None:
        return None
    scheme, host, port = m.group(1), m.group(2).lower(), m.group(3)
    number = int(port) if port else _DEFAULT_PORT[scheme]
    if not 1 <= number <= 65535:
        return None
    return scheme, host, number


def _check_star(values: list[str], path: list[Token], out: list) -> None:
    if "*" in values and len(values) > 1:
        out.append((path, "`*` stands alone: it cannot be listed with other values"))


def check_cors(policy: CorsPolicy, path: list[Token], out: list) -> None:
    _check_star(policy.allow_origins, [*path, "allow_origins"], out)
    for i, origin in enumerate(policy.allow_origins):
        if origin != "*" and parse_origin(origin) is None:
            out.append(([*path, "allow_origins", i],
                        f"not an origin: {origin!r} (expected scheme://host[:port], scheme://*.suffix or *)"))
    if policy.allow_credentials and "*" in policy.allow_origins:
        out.append(([*path, "allow_credentials"],
                     "credentials cannot be allowed for every origin (`*`): list the origins, or write an "
                     "allow_origin_regex that says which"))
    for i, pattern in enumerate(policy.allow_origin_regex):
        try:
            re.compile(pattern)
        except re.error as exc:
            out.append(([*path, "allow_origin_regex", i], f"not a regular expression: {exc}"))
    if not policy.allow_origins and not policy.allow_origin_regex:
        out.append((path, "a cors policy needs allow_origins or allow_origin_regex"))
    for key in ("allow_methods", "allow_headers", "expose_headers"):
        values = getattr(policy, key)
        _check_star(values, [*path, key], out)
        for i, value in enumerate(values):
            if value != "*" and not _TOKEN.match(value):
                what = "method" if key == "allow_methods" else "header name"
                out.append(([*path, key, i], f"not a valid {what}: {value!r}"))
