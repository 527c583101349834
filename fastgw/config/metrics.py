"""The `metrics:` section: the Prometheus series the workers count (docs/metrics.md)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from msgspec import Meta

from .base import Base

if TYPE_CHECKING:
    from .schema import GatewayConfig

__all__ = ["DEFAULT_DURATION_BUCKETS", "Metrics", "check_metrics"]

# Seconds: from a fast proxied request on a LAN (half a millisecond) to the default 60 s body-idle
# timeout, dense where gateway latencies usually sit.
DEFAULT_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                            10.0, 30.0, 60.0)

Bound = Annotated[float, Meta(gt=0, description="An upper bound in seconds, greater than zero.")]


class Metrics(Base, kw_only=True):
    """Request-path counters for the admin listener's `/metrics`."""

    enabled: bool = True
    """Off: the workers count nothing and `/metrics` has only the process-wide series."""
    status_label: Literal["class", "code"] = "class"
    """The `code` label of `fastgw_requests_total`: the status class (`2xx`) or the status (`200`)."""
    duration_buckets: Annotated[list[Bound], Meta(min_length=1, max_length=64)] = msgspec.field(
        default_factory=lambda: list(DEFAULT_DURATION_BUCKETS))
    """Upper bounds (seconds, increasing) of the request duration and upstream latency histograms."""


def check_metrics(cfg: GatewayConfig, out: list) -> None:
    buckets = cfg.metrics.duration_buckets
    for i, bound in enumerate(buckets):
        path = ["metrics", "duration_buckets", i]
        if not math.isfinite(bound):
            out.append((path, f"a bucket bound must be a finite number of seconds, got {bound!r} "
                              f"(the +Inf bucket is always there)"))
        elif i and bound <= buckets[i - 1]:
            out.append((path, f"bucket bounds must increase: {bound!r} follows {buckets[i - 1]!r}"))
