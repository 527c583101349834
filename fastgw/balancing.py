"""The compile step for an upstream's `balancer`, `sticky` and `health`: the core
TargetPicker (None for plain smooth weighted round robin, so the request path pays nothing for the
choice), OutlierState and ActiveHealthState."""

from __future__ import annotations

from . import _core
from .config.balancing import LeastRequest, Maglev, RingHash, RoundRobin
from .config.schema import Upstream


def build_picker(up: Upstream, targets: list, weights: list[int] | None = None) -> _core.TargetPicker | None:
    if weights is None:
        weights = [t.weight for t in up.targets]
    sticky = {}
    if up.sticky is not None:
        sticky = {"sticky_cookie": up.sticky.cookie, "sticky_attributes": up.sticky.attributes()}
    b = up.balancer
    if isinstance(b, RoundRobin):
        return _core.TargetPicker("round_robin", targets, weights, **sticky) if sticky else None
    if isinstance(b, LeastRequest):
        return _core.LeastRequestPicker(targets, weights, b.choices, **sticky)
    name = b.hash_on.name.encode() if b.hash_on.name else None
    if isinstance(b, RingHash):
        return _core.RingHashPicker(targets, weights, b.hash_on.source, name, b.ring_size, **sticky)
    if isinstance(b, Maglev):
        return _core.MaglevPicker(targets, weights, b.hash_on.source, name, b.table_size, **sticky)
    raise TypeError(f"unknown balancer {b!r}")  # pragma: no cover - the schema's union is closed


def build_active_health(up: Upstream, n: int) -> _core.ActiveHealthState | None:
    a = up.health.active
    if a is None or n == 0:
        return None
    return _core.ActiveHealthState(n, a.healthy_threshold, a.unhealthy_threshold)


def build_breakers(up: Upstream, old) -> _core.CircuitBreakers | None:
    """One CircuitBreakers per upstream across reloads, so what the old config has in flight counts."""
    b = up.circuit_breakers
    if b is None:
        return None
    limits = (b.max_connections, b.max_pending_requests, b.max_requests, b.max_retries)
    if old is not None and old.breakers is not None:
        old.breakers.set_limits(*limits)
        return old.breakers
    return _core.CircuitBreakers(*limits)


def build_outlier(up: Upstream, n: int) -> _core.OutlierState | None:
    p = up.health.passive
    if not p.enabled or n < 2:      # with one target there is nothing to send its requests to instead
        return None
    return _core.OutlierState(n, p.consecutive_failures, p.consecutive_5xx, p.base_ejection, p.max_ejection,
                              p.max_ejected_percent)


def build_slow_start(up: Upstream, weights: list[int]) -> _core.SlowStart | None:
    """weights: the balancer's (the configured ones x 100, so a ramp moves in 1% steps)."""
    s = up.slow_start
    if s is None or not weights:
        return None
    return _core.SlowStart(list(weights), s.window, s.aggression, s.min_weight_percent)
