"""A route's retry policy and timeouts, an upstream's retry budget and slow start (docs/retries.md).

The defaults are Envoy's where Envoy has one: 1 retry, 25 ms backoff base capped at 10x, a budget of
20% of the upstream's active requests with a minimum of 3 concurrent retries, slow start with
aggression 1 and a 10% minimum weight."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .base import Base
from .values import Duration, PositiveDuration

__all__ = ["Backoff", "RetryBudget", "RetryPolicy", "RouteTimeouts", "SlowStart", "check_retry"]

RetryOn = Literal["connect-failure", "reset", "timeout", "5xx", "gateway-error"]


class Backoff(Base, kw_only=True):
    """Envoy's jittered exponential backoff: before retry n the wait is drawn at random from
    [0, min(base x (2^n - 1), max))."""

    base: PositiveDuration = 0.025
    max: PositiveDuration | None = None
    """Default: 10 x base."""

    def cap(self) -> float:
        return self.base * 10 if self.max is None else self.max


class RetryPolicy(Base, kw_only=True):
    """When a failed attempt is sent again, to another target where the balancer has one."""

    attempts: Annotated[int, Meta(ge=0, le=10)] = 1
    """Retries after the first try (Gateway API `retry.attempts`): 2 allows 3 tries in all."""
    retry_on: list[RetryOn] = msgspec.field(default_factory=lambda: ["connect-failure", "reset", "timeout"])
    """Conditions: `connect-failure` (refused, connect timeout, TLS), `reset` (closed before any
    response byte), `timeout` (no response head within `timeouts.backend_request` or the upstream's
    `response_header`), `5xx` (any 5xx answer), `gateway-error` (502, 503, 504)."""
    statuses: list[Annotated[int, Meta(ge=400, le=599)]] = msgspec.field(default_factory=list)
    """Response statuses retried as well (Gateway API `retry.codes`, Envoy's retriable_status_codes)."""
    backoff: Backoff = msgspec.field(default_factory=Backoff)
    non_idempotent: bool = False
    """Retry POST, PATCH (and any method not idempotent by RFC 9110) too."""
    buffer_body_bytes: Annotated[int, Meta(ge=0, le=64 * 1024 * 1024)] = 65536
    """A request body up to this size is kept while it is sent, so a retry can send it again; a
    longer body makes its request not retried (never replayed from nothing). 0: requests with a body
    are never retried."""


class RouteTimeouts(Base, kw_only=True):
    """Gateway API `timeouts`: 0 turns one off."""

    request: Duration = 0.0
    """From the request head to the response head, all attempts and backoff included: past it the
    gateway answers 504 (flag UT). 0: none."""
    backend_request: Duration = 0.0
    """Each attempt, from its start (connect included) to the response head: past it the attempt has
    timed out (retried when the policy says `timeout`, else 504). 0: only the upstream's
    `timeouts.response_header`."""


class RetryBudget(Base, kw_only=True):
    """Envoy's retry budget: at any time retries in flight to the upstream (per worker) are at most
    `percent` of its active requests, or `min_retries`, whichever is larger. Beyond it a failed
    attempt is answered as it is, flagged UOR."""

    percent: Annotated[float, Meta(ge=0, le=100)] = 20.0
    min_retries: Annotated[int, Meta(ge=0, le=100000)] = 3


class SlowStart(Base, kw_only=True):
    """Envoy's slow_start_config (nginx's `slow_start`): a target that comes back (ejection over,
    active checks passing again, or added by a reload or DNS) gets weight x max(min_weight_percent,
    (t / window) ^ (1 / aggression)) for `window` after it returns."""

    window: PositiveDuration
    aggression: Annotated[float, Meta(gt=0, le=100)] = 1.0
    min_weight_percent: Annotated[float, Meta(ge=0, le=100)] = 10.0


def check_retry(retry: RetryPolicy | None, timeouts: RouteTimeouts | None, base: list, out: list) -> None:
    if retry is not None and retry.backoff.max is not None and retry.backoff.max < retry.backoff.base:
        out.append(([*base, "retry", "backoff", "max"],
                    f"max ({retry.backoff.max:g}s) is shorter than base ({retry.backoff.base:g}s)"))
    if timeouts is not None and timeouts.request and timeouts.backend_request > timeouts.request:
        out.append(([*base, "timeouts", "backend_request"],
                    f"backend_request ({timeouts.backend_request:g}s) is longer than request "
                    f"({timeouts.request:g}s)"))


def check_slow_start(upstream, base: list, out: list) -> None:
    """Every balancer takes slow start (the hash ones by the share of keys a ramping target keeps,
    fastgw/_cy/pickers.pyx): nothing to refuse now; kept as the place for future checks."""
    return None
