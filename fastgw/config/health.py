"""An upstream's health settings: passive health (outlier ejection) today; active checks join here.
docs/health.md."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from .base import Base
from .values import PositiveDuration

__all__ = ["Health", "PassiveHealth"]


class PassiveHealth(Base, kw_only=True):
    """Targets that fail are taken out of the balancer for a while, and always come back. The
    defaults are nginx's (`max_fails=1 fail_timeout=10s`) for failures and Envoy's for 5xx."""

    enabled: bool = True
    consecutive_failures: Annotated[int, Meta(ge=1, le=1000)] = 1
    """Connections refused, timed out or reset before a response, in a row, that eject a target."""
    consecutive_5xx: Annotated[int, Meta(ge=0, le=1000)] = 5
    """5xx responses in a row that eject a target; 0: responses never eject."""
    base_ejection: PositiveDuration = 10.0
    """The first ejection's length; the n-th lasts n times as long (a period in service forgives one)."""
    max_ejection: PositiveDuration = 300.0
    max_ejected_percent: Annotated[int, Meta(ge=0, le=100)] = 50
    """At most this share of the targets is out at once (rounded down: one target alone is never
    ejected); a failing target beyond it stays in."""


class Health(Base, kw_only=True):
    passive: PassiveHealth = msgspec.field(default_factory=PassiveHealth)


def check_health(health: Health, base: list, out: list) -> None:
    p = health.passive
    if p.max_ejection < p.base_ejection:
        out.append(([*base, "health", "passive", "max_ejection"],
                    f"max_ejection ({p.max_ejection:g}s) is shorter than base_ejection ({p.base_ejection:g}s)"))
