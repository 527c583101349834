"""The request-path counters a Runtime carries (fastgw/_cy/metrics.pyx), built at compile time.

One RequestStats per (route, upstream of one of its backends), one per route for exchanges that
reached no upstream, one for exchanges no route took, and one UpstreamStats per upstream. They carry
over a reload by those names, as target pools carry over by address, so a reload never resets a
counter Prometheus has seen; a pair or upstream the new config no longer has is simply not built,
and so no longer exported. Changing `metrics.duration_buckets` or `metrics.status_label` starts
fresh counters (a counter reset, which Prometheus' rate() handles).
"""

from __future__ import annotations

from . import _core
from .config import GatewayConfig

__all__ = ["compile_counters"]


def compile_counters(cfg: GatewayConfig, routes: dict[str, _core.Route], groups: dict[str, _core.UpstreamGroup],
                     previous: _core.Runtime | None) -> _core.RuntimeMetrics | None:
    """Attaches the counters to the routes and groups; None when metrics are off (new routes and
    groups have none then)."""
    settings = cfg.metrics
    if not settings.enabled:
        return None
    old = previous.metrics if previous is not None else None
    bounds = tuple(settings.duration_buckets)
    by_code = settings.status_label == "code"
    requests: dict[tuple[str, str], _core.RequestStats] = {}

    def pair(route: str, upstream: str) -> _core.RequestStats:
        key = (route, upstream)
        stats = requests.get(key)
        if stats is None:
            kept = old.requests.get(key) if old is not None else None
            stats = kept if kept is not None and kept.fits(bounds, by_code) else _core.RequestStats(
                route, upstream, bounds, by_code)
            requests[key] = stats
        return stats

    upstreams = {}
    for name, group in groups.items():
        kept = old.upstreams.get(name) if old is not None else None
        group.stats = upstreams[name] = kept if kept is not None else _core.UpstreamStats(name)
    for name, route in routes.items():
        backend_groups = tuple(dict.fromkeys(b.group for b in route.backends if b.group is not None))
        route.metrics = _core.RouteMetrics(backend_groups, tuple(pair(name, g.name) for g in backend_groups),
                                           pair(name, ""))
    return _core.RuntimeMetrics(pair("", ""), requests, upstreams)
