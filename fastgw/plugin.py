"""What a plugin needs from fastgw: `Response`, returned by a hook to answer in place of the upstream.

A plugin is a class named in the config (`type: plugin`, `module: "package.module:Class"`); fastgw
makes one instance per config (`Class(config)`, `config` decoded into the class's `Config` Struct when
it declares one) and calls its hooks in the worker's event loop. docs/plugins.md is the guide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._core import DURATION_BUCKETS, HookStats, LogEntry, RequestView, ResponseView

__all__ = ["DURATION_BUCKETS", "HookStats", "LogEntry", "RequestView", "Response", "ResponseView"]


@dataclass(frozen=True, slots=True)
class Response:
    """An answer from a hook: sent instead of the upstream's response. Framing, Connection and
    X-Request-Id are the gateway's to add."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | str = b""

    @classmethod
    def json(cls, status: int, body: bytes | str, headers: dict[str, str] | None = None) -> Response:
        return cls(status, {"Content-Type": "application/json", **(headers or {})}, body)
