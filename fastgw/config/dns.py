"""How an upstream's hostname targets are resolved. docs/health.md."""

from __future__ import annotations

from .base import Base
from .values import PositiveDuration

__all__ = ["Dns"]


class Dns(Base, kw_only=True):
    """A target given by name is resolved in the background, every `refresh`; each address behind
    the name becomes a target (a headless Service). A failed refresh keeps the last good addresses."""

    refresh: PositiveDuration = 5.0
    """Envoy's default dns_refresh_rate."""
    timeout: PositiveDuration = 5.0
    """For one resolution."""
