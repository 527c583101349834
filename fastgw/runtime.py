"""The compile step: a validated GatewayConfig becomes one immutable `Runtime` of core objects.

Targets carry over a reload by address (so their keep-alive pools survive it) and balancers by
upstream name when the targets and weights are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _core
from .config import GatewayConfig


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """What the router needs of a route; `payload` is what a match returns."""

    name: str
    hosts: list[str] | None
    path_exact: str | None
    path_prefix: str | None
    payload: object


def compile_runtime(cfg: GatewayConfig, previous: _core.Runtime | None = None) -> _core.Runtime:
    old_groups = previous.groups if previous is not None else {}
    old_targets: dict[str, _core.Target] = {}
    for group in old_groups.values():
        for target in group.targets:
            old_targets[target.address] = target

    groups: dict[str, _core.UpstreamGroup] = {}
    for name, up in cfg.upstreams.items():
        targets = []
        for t in up.targets:
            target = _core.Target(t.host, t.port, up.keepalive.max_idle, up.keepalive.idle_timeout,
                                  up.keepalive.max_requests)
            kept = old_targets.get(target.address)
            if kept is not None:
                kept.max_idle = target.max_idle
                kept.idle_timeout = target.idle_timeout
                kept.max_requests = target.max_requests
                target = kept
            targets.append(target)
        group = _core.UpstreamGroup(
            name, targets, [t.weight for t in up.targets],
            up.timeouts.connect, up.timeouts.response_header, up.timeouts.body_idle,
        )
        if name in old_groups:
            group.adopt_balancer(old_groups[name])
        groups[name] = group

    specs = []
    for route in cfg.routes:
        payload = _core.Route(route.name, groups[route.upstream], cfg.route_max_body_bytes(route))
        specs.append(RouteSpec(route.name, route.hosts, route.path_exact, route.path_prefix, payload))

    limits = cfg.limits
    return _core.Runtime(
        _core.Router(specs),
        groups,
        max_request_line=limits.max_request_line_bytes,
        max_head_bytes=limits.max_header_bytes,
        max_headers=limits.max_headers,
        drop_underscores=limits.underscores_in_headers == "drop",
        header_timeout=limits.header_timeout,
        keepalive_timeout=limits.keepalive_timeout,
        max_requests_per_connection=limits.max_requests_per_connection,
        max_body=limits.max_body_bytes,
        drain_timeout=cfg.server.drain_timeout,
    )


def retired_targets(old: _core.Runtime, new: _core.Runtime) -> list[_core.Target]:
    """Targets of `old` that `new` no longer uses: their idle connections can be closed."""
    kept = {id(t) for g in new.groups.values() for t in g.targets}
    return [t for g in old.groups.values() for t in g.targets if id(t) not in kept]
