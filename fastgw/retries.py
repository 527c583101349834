"""The compile step for a route's `retry` and `timeouts` (a core RetryPolicy, or None so the route
pays nothing) and for an upstream's retry budget. docs/retries.md."""

from __future__ import annotations

from . import _core
from .config.schema import GatewayConfig, Route, Upstream


def build_retry_policy(route: Route) -> _core.RetryPolicy | None:
    t = route.timeouts
    request = t.request if t is not None else 0.0
    backend = t.backend_request if t is not None else 0.0
    r = route.retry
    if r is None:
        if not request and not backend:
            return None
        # timeouts alone: the upstream's default fail-over stands (docs/health.md)
        return _core.RetryPolicy(1, ("connect-failure", "reset"), (), 0.0, 0.0, False, 0, request, backend, True)
    return _core.RetryPolicy(r.attempts, tuple(r.retry_on), tuple(r.statuses), r.backoff.base, r.backoff.cap(),
                             r.non_idempotent, r.buffer_body_bytes, request, backend, False)


def retried_upstreams(cfg: GatewayConfig) -> set[str]:
    """The upstreams some route with a retry policy sends to: they get a budget by default."""
    out: set[str] = set()
    for route in cfg.routes:
        if route.retry is None or not route.retry.attempts:
            continue
        if route.upstream is not None:
            out.add(route.upstream)
        for b in route.backends or ():
            if b.upstream is not None:
                out.add(b.upstream)
    return out


def build_budget(up: Upstream, retried: bool, old) -> _core.RetryBudget | None:
    """One RetryBudget per upstream across reloads, so what the old config has in flight counts."""
    b = up.retry_budget
    if b is None and not retried:
        return None
    percent, minimum = (b.percent, b.min_retries) if b is not None else (20.0, 3)
    if old is not None and old.budget is not None:
        old.budget.set_limits(percent, minimum)
        return old.budget
    return _core.RetryBudget(percent, minimum)
