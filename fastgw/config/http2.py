"""`limits.http2`: the HTTP/2 downstream's settings and limits (docs/http2.md)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from .base import Base
from .values import Duration, PositiveDuration


class Http2Limits(Base, kw_only=True):
    """HTTP/2 from clients: h2c with prior knowledge on cleartext listeners, ALPN `h2` on TLS ones."""

    prior_knowledge: bool = True
    """Cleartext listeners take HTTP/2 with prior knowledge (told apart from HTTP/1.1 by the client
    preface); false: such a connection gets HTTP/1.1's 400 for the preface."""
    max_concurrent_streams: Annotated[int, Meta(ge=1, le=65536)] = 100
    """SETTINGS_MAX_CONCURRENT_STREAMS: streams beyond it are refused (RST_STREAM REFUSED_STREAM)."""
    initial_window_size: Annotated[int, Meta(ge=65535, le=2**31 - 1)] = 65535
    """Each stream's receive window: request bytes a client may send before the upstream took them."""
    max_header_list_size: Annotated[int, Meta(ge=1024)] | None = None
    """SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 6.5.2 sizes); larger header blocks are answered 431.
    Default: limits.max_header_bytes."""
    idle_timeout: PositiveDuration | None = None
    """A connection without open streams this long gets GOAWAY and is closed. Default:
    limits.keepalive_timeout."""
    ping_interval: Duration = 0.0
    """A connection silent this long gets a PING (0: never)."""
    ping_timeout: PositiveDuration = 20.0
    """A PING not acknowledged in this long closes the connection."""
