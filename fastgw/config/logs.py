"""The `logging` (event log) and `access_log` sections, the per-route `access_log`, and their checks.

`logging.format` is the one switch for both logs; `access_log.format` may override it for the
access log alone. A text access line is a template of named fields (`$status`, `${route}`), in the
manner of nginx's `log_format` and Envoy's format strings; docs/observability.md lists the fields.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Literal

from msgspec import Meta

from .base import Base
from .positions import Token
from .values import PositiveDuration

if TYPE_CHECKING:
    from .schema import GatewayConfig

__all__ = ["ACCESS_LOG_FIELDS", "DEFAULT_TEMPLATE", "AccessLog", "Logging", "RouteAccessLog", "check_logs",
           "parse_template", "route_access_log"]

# The fields a line can carry, as the core numbers them (fastgw/_cy/accesslog.pyx; a unit test
# holds the two lists equal).
ACCESS_LOG_FIELDS = (
    "time", "request_id", "trace_id", "client_ip", "method", "authority", "path", "query", "uri",
    "protocol", "status", "bytes_received", "bytes_sent", "duration_ms", "upstream_connect_ms",
    "upstream_first_byte_ms", "route", "upstream", "target", "attempts", "flags", "outcome",
    "user_agent", "consumer", "attempt_targets", "attempt_results", "attempt_ms",
)
DEFAULT_TEMPLATE = ('$time $client_ip "$method $uri $protocol" $status $bytes_sent $duration_ms '
                    '$request_id $route $flags "$user_agent"')
_FIELD_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
# The core's limit on fields in one format (AL_MAX_OPS).
MAX_TEMPLATE_FIELDS = 64

Sink = Annotated[str, Meta(min_length=1, description="stdout, stderr, or a file path.")]
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]


class Logging(Base, kw_only=True):
    """The event log (lifecycle, reloads, upstream failures) and the format of both logs."""

    format: Literal["json", "text"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"
    events: Sink = "stderr"


class AccessLog(Base, kw_only=True):
    """One line per exchange, written from the log phase; buffered per worker and written off the
    request path. Lines beyond `max_pending_bytes` waiting to be written are dropped and counted."""

    enabled: bool = True
    path: Sink = "stdout"
    """stdout, stderr, or a file (appended to; reopened by name on SIGUSR1, for logrotate)."""
    format: Literal["json", "text"] | None = None
    """Default: logging.format."""
    template: Annotated[str, Meta(min_length=1)] = DEFAULT_TEMPLATE
    """The text format's line: `$name` or `${name}` fields, everything else literal (`$$` is `$`)."""
    query: Literal["full", "redact", "omit"] = "full"
    redact_params: list[Annotated[str, Meta(min_length=1)]] | None = None
    """With `query: redact`: the parameters whose values become REDACTED (default: every one)."""
    sample: Fraction = 1.0
    buffer_bytes: Annotated[int, Meta(ge=0, le=1 << 26)] = 65536
    """Lines are handed to the writer once this many bytes are buffered (0: after every line)."""
    flush_interval: PositiveDuration = 1.0
    """... or at the latest after this long."""
    max_pending_bytes: Annotated[int, Meta(ge=4096)] = 8 << 20


class RouteAccessLog(Base, kw_only=True):
    """A route's own access log settings: `access_log: false`, or these."""

    enabled: bool = True
    sample: Fraction | None = None
    """Default: access_log.sample."""


def parse_template(template: str) -> tuple[list[tuple[str, str]], str]:
    """([(literal before the field, field name)], the literal after the last field). Raises
    ValueError naming an unknown field."""
    ops: list[tuple[str, str]] = []
    pos = 0
    literal = ""
    for m in _FIELD_REF.finditer(template):
        literal += template[pos:m.start()].replace("$$", "$")
        name = m.group(1) or m.group(2)
        if name not in ACCESS_LOG_FIELDS:
            raise ValueError(f"unknown access log field ${name} (known: {', '.join(ACCESS_LOG_FIELDS)})")
        ops.append((literal, name))
        literal = ""
        pos = m.end()
    return ops, literal + template[pos:].replace("$$", "$")


def check_logs(cfg: GatewayConfig, out: list) -> None:
    al = cfg.access_log
    path: list[Token] = ["access_log"]
    try:
        ops, _ = parse_template(al.template)
        if len(ops) > MAX_TEMPLATE_FIELDS:
            out.append(([*path, "template"], f"at most {MAX_TEMPLATE_FIELDS} fields"))
    except ValueError as e:
        out.append(([*path, "template"], str(e)))
    if al.redact_params is not None and al.query != "redact":
        out.append(([*path, "redact_params"], "only used with `query: redact`"))


def route_access_log(value: bool | RouteAccessLog | None) -> RouteAccessLog:
    if isinstance(value, RouteAccessLog):
        return value
    return RouteAccessLog(enabled=value is not False)
