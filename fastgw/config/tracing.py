"""The `tracing:` section: W3C Trace Context propagation and OTLP export of spans (docs/observability.md)."""

from __future__ import annotations

import importlib.util
import ipaddress
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from .base import Base
from .values import PositiveDuration

if TYPE_CHECKING:
    from .schema import GatewayConfig

__all__ = ["Otlp", "Tracing", "check_tracing", "endpoint_parts"]

HeaderName = Annotated[str, Meta(min_length=1, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
HeaderValue = Annotated[str, Meta(pattern=r"^[^\r\n\x00]*$")]


class Otlp(Base, kw_only=True):
    """Where and how spans are exported: OTLP/HTTP with protobuf bodies, or OTLP/gRPC."""

    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    """The collector's traces URL (`http://host:port/path`; the OTLP/HTTP default path is `/v1/traces`).
    With grpc, `http://host:port` (usually port 4317); a path is ignored."""
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    """grpc needs the grpcio package (`pip install 'fastgw[grpc]'`)."""
    timeout: PositiveDuration = 2.0
    """Longest wait for the collector's answer to one batch (connecting included)."""
    batch_size: Annotated[int, Meta(ge=1, le=65536)] = 512
    """Spans per export request; a batch leaves as soon as this many are queued."""
    flush_interval: PositiveDuration = 1.0
    """Longest time a span waits in the queue before its batch leaves."""
    max_queue: Annotated[int, Meta(ge=1)] = 4096
    """Spans queued per worker; beyond this, spans are dropped and counted (Worker.spans_dropped)."""
    headers: dict[HeaderName, HeaderValue] = msgspec.field(default_factory=dict)
    """Extra request headers for the collector (an API key, say)."""


class Tracing(Base, kw_only=True):
    """Tracing: a SERVER span per exchange and a CLIENT span per upstream attempt."""

    enabled: bool = False
    sample_rate: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.01
    """Share of the traces the gateway starts that are sampled; a caller's traceparent decides for its
    own trace (its sampled flag is honoured)."""
    service_name: Annotated[str, Meta(min_length=1)] = "fastgw"
    otlp: Otlp = msgspec.field(default_factory=Otlp)


def endpoint_parts(endpoint: str) -> tuple[str, int, str]:
    """(host, port, path) of an OTLP/HTTP endpoint URL; ValueError saying what is wrong."""
    try:
        url = urlsplit(endpoint)
        port = url.port
    except ValueError as e:
        raise ValueError(f"not a valid URL: {endpoint!r} ({e})") from None
    if url.scheme != "http":
        what = "https is not supported yet" if url.scheme == "https" else "expected http://host:port/path"
        raise ValueError(f"not an http URL: {endpoint!r} ({what})")
    if not url.hostname:
        raise ValueError(f"URL has no host: {endpoint!r}")
    if url.username or url.password or url.fragment:
        raise ValueError(f"URL must not carry credentials or a fragment: {endpoint!r}")
    host = url.hostname
    if ":" in host:
        ipaddress.IPv6Address(host)        # urlsplit already refused a malformed one
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    return host, port if port is not None else 80, path


def check_tracing(cfg: GatewayConfig, out: list) -> None:
    otlp = cfg.tracing.otlp
    try:
        endpoint_parts(otlp.endpoint)
    except ValueError as e:
        out.append((["tracing", "otlp", "endpoint"], str(e)))
    if cfg.tracing.enabled and otlp.protocol == "grpc" and importlib.util.find_spec("grpc") is None:
        out.append((["tracing", "otlp", "protocol"],
                    "protocol grpc needs the grpcio package (pip install 'fastgw[grpc]'), which is not installed"))
    if otlp.batch_size > otlp.max_queue:
        out.append((["tracing", "otlp", "batch_size"],
                    f"batch_size {otlp.batch_size} is larger than max_queue {otlp.max_queue}"))
