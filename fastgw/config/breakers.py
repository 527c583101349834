"""An upstream's circuit breakers (Envoy's): limits on what one worker keeps in flight to it.
docs/health.md."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from .base import Base

__all__ = ["CircuitBreakers"]

_Limit = Annotated[int, Meta(ge=0, le=1_000_000)]


class CircuitBreakers(Base, kw_only=True):
    """Over a limit a request is answered 503 at once, without touching the upstream, with a
    response flag naming the breaker (UOC, UOP, UOA; UOR: a retry not made). The defaults are
    Envoy's; the limits hold per worker process."""

    max_connections: _Limit = 1024
    """Open connections to the upstream's targets (idle and busy); a request that would need a new
    one beyond it is refused (UOC)."""
    max_pending_requests: _Limit = 1024
    """Requests waiting for a new connection to be established (UOP)."""
    max_requests: _Limit = 1024
    """Requests in flight to the upstream (UOA)."""
    max_retries: _Limit = 3
    """Retries (fail-overs to another target) in flight; beyond it a failed attempt is not retried
    and its error is answered, flagged UOR."""
