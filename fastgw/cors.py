"""The `cors` policy's compile step: origins as the core matches them. docs/cors.md."""

from __future__ import annotations

import re

from . import _core
from .config.cors import CorsPolicy, parse_origin

__all__ = ["build_cors_policy"]


def build_cors_policy(entry: CorsPolicy, name: str, key: str) -> _core.Policy:
    exact, wildcards = [], []
    for origin in entry.allow_origins:
        if origin == "*":
            continue
        parsed = parse_origin(origin)
        assert parsed is not None            # the config check refused it otherwise
        scheme, host, port = parsed
        if host == "*":
            wildcards.append((f"{scheme}://".encode(), b"", f":{port}".encode()))
        elif host.startswith("*."):
            wildcards.append((f"{scheme}://".encode(), host[1:].encode(), f":{port}".encode()))
        else:
            exact.append(f"{scheme}://{host}:{port}".encode())
    regexes = [re.compile(p.encode()) for p in entry.allow_origin_regex]
    return _core.Cors(name, key, exact, wildcards, "*" in entry.allow_origins, regexes, list(entry.allow_methods),
                      list(entry.allow_headers), list(entry.expose_headers), entry.allow_credentials, entry.max_age,
                      entry)
