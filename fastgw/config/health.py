"""An upstream's health settings: passive health (outlier ejection) and active checks (probes).
docs/health.md."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .base import Base
from .values import Duration, PositiveDuration

__all__ = ["ActiveHealth", "Health", "PassiveHealth", "expected_statuses"]


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


class ActiveHealth(Base, kw_only=True):
    """Each worker probes each target every `interval` (plus up to `jitter`): an HTTP request whose
    status must be one of `expected_statuses`, or a TCP connect. `unhealthy_threshold` failed probes
    in a row take a target out of its balancer; `healthy_threshold` passing ones bring it back."""

    type: Literal["http", "tcp"] = "http"
    path: Annotated[str, Meta(pattern=r"^/[^\s]*$", max_length=2048)] = "/"
    method: Literal["GET", "HEAD", "OPTIONS"] = "GET"
    host: Annotated[str, Meta(pattern=r"^[^\s]+$", max_length=255)] | None = None
    """The probe's Host header; default: the target's address."""
    expected_statuses: list[int | str] = msgspec.field(default_factory=lambda: ["200-399"])
    """Statuses (200) or ranges ("200-399") a passing HTTP probe answers."""
    interval: PositiveDuration = 5.0
    """The wait between the end of one probe and the start of the next."""
    timeout: PositiveDuration = 2.0
    """For the whole probe: connecting, sending, and the status line."""
    healthy_threshold: Annotated[int, Meta(ge=1, le=100)] = 2
    unhealthy_threshold: Annotated[int, Meta(ge=1, le=100)] = 3
    jitter: Duration | None = None
    """A random extra wait of up to this much before each probe; default: 10% of `interval`."""

    def jitter_seconds(self) -> float:
        return self.interval * 0.1 if self.jitter is None else self.jitter


_STATUS_RANGE = re.compile(r"^([1-5]\d\d)(?:-([1-5]\d\d))?$")


def expected_statuses(items: list[int | str]) -> frozenset[int]:
    """The set of statuses `expected_statuses` names; ValueError for an item that is not one."""
    out: set[int] = set()
    for item in items:
        m = _STATUS_RANGE.match(str(item))
        if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ValueError(f"{item!r} is not a status (200) or a range of them (\"200-399\")")
        out.update(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    return frozenset(out)


class Health(Base, kw_only=True):
    passive: PassiveHealth = msgspec.field(default_factory=PassiveHealth)
    active: ActiveHealth | None = None
    """Probes (off unless set)."""


def check_health(health: Health, base: list, out: list) -> None:
    p = health.passive
    if p.max_ejection < p.base_ejection:
        out.append(([*base, "health", "passive", "max_ejection"],
                    f"max_ejection ({p.max_ejection:g}s) is shorter than base_ejection ({p.base_ejection:g}s)"))
    a = health.active
    if a is not None:
        for k, item in enumerate(a.expected_statuses):
            try:
                expected_statuses([item])
            except ValueError as exc:
                out.append(([*base, "health", "active", "expected_statuses", k], str(exc)))
        if not a.expected_statuses:
            out.append(([*base, "health", "active", "expected_statuses"], "names no status"))
