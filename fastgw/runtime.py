"""The compile step: a validated GatewayConfig becomes one immutable `Runtime` of core objects.

Per listener, the routes attached to it become one `Router` (each of a route's matches one spec, its
hosts intersected with the listener's hostname); per port, a `Router` over the listeners' hostnames
picks the listener. Targets carry over a reload by address (their keep-alive pools survive it) and
balancers by upstream name when the targets and weights are unchanged.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from email.utils import format_datetime

from . import _core
from .config import GatewayConfig
from .config.schema import Filters, HeaderEdits, Listener, Match, Route
from .config.validate import template_captures


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """What the router needs of one match of one route; `payload` is what a match returns."""

    name: str
    hosts: list[str] | None
    path_exact: str | None
    path_prefix: str | None
    path_template: str | None
    path_regex: str | None
    methods: list[bytes] | None
    headers: list[tuple[str, str, str | None]]
    query: list[tuple[str, str, str | None]]
    order: int
    payload: object = field(compare=False)


def _host_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return pattern == host


def intersect_hosts(route_hosts: list[str] | None, listener_host: str | None) -> list[str] | None:
    """Gateway API hostname intersection. None: any host; []: the route does not attach."""
    if listener_host is None:
        return route_hosts
    if route_hosts is None:
        return [listener_host]
    out = []
    for h in route_hosts:
        if _host_matches(listener_host, h):
            out.append(h)
        elif h.startswith("*.") and _host_matches(h, listener_host):
            out.append(listener_host)
        elif h.startswith("*.") and listener_host.startswith("*.") and listener_host.endswith(h[1:]):
            out.append(listener_host)
    return list(dict.fromkeys(out))


def _conditions(items, name_key=str) -> list[tuple[str, str, str | None]]:
    out = []
    for c in items or ():
        if c.value is not None:
            out.append((name_key(c.name), "exact", c.value))
        elif c.regex is not None:
            out.append((name_key(c.name), "regex", c.regex))
        else:
            out.append((name_key(c.name), "present", None))
    return out


def _versioning_headers(f: Filters) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    v = f.versioning
    if v is None:
        return [], []
    sets, adds = [], []
    if v.deprecated_at is not None:
        ts = datetime.datetime.fromisoformat(v.deprecated_at)
        sets.append(("Deprecation", f"@{int(ts.timestamp())}"))
    if v.sunset_at is not None:
        ts = datetime.datetime.fromisoformat(v.sunset_at).astimezone(datetime.UTC)
        sets.append(("Sunset", format_datetime(ts, usegmt=True)))
    if v.successor is not None:
        adds.append(("Link", f'<{v.successor}>; rel="successor-version"'))
    if v.link is not None:
        adds.append(("Link", f'<{v.link}>; rel="deprecation"'))
    return sets, adds


def _header_ops(edits: list[HeaderEdits], extra_set=(), extra_add=()) -> _core.HeaderOps | None:
    sets: dict[str, tuple[str, str]] = {}
    adds: list[tuple[str, str]] = []
    removes: list[str] = []
    for e in edits:
        for name, value in e.set.items():
            sets[name.lower()] = (name, value)
        adds.extend(e.add.items())
        removes.extend(e.remove)
    for name, value in extra_set:
        sets[name.lower()] = (name, value)
    adds.extend(extra_add)
    if not (sets or adds or removes):
        return None
    return _core.HeaderOps(list(sets.values()), adds, removes)


def compile_filters(*layers: Filters | None, groups: dict | None = None) -> _core.Filters | None:
    """Merges the route's filters and a backend's (later layers win where both set the same)."""
    layers = tuple(f for f in layers if f is not None)
    if not layers:
        return None
    vset, vadd = [], []
    for f in layers:
        s, a = _versioning_headers(f)
        vset += s
        vadd += a
    req = _header_ops([f.request_headers for f in layers if f.request_headers is not None])
    resp = _header_ops([f.response_headers for f in layers if f.response_headers is not None], vset, vadd)
    redirect = rewrite = mirror = None
    for f in layers:
        if f.mirror is not None:
            mirror = f.mirror
        if f.redirect is not None:
            r = f.redirect
            redirect = _core.Redirect(r.scheme, r.hostname, r.port,
                                      r.path.full if r.path else None, r.path.prefix if r.path else None,
                                      r.status)
        if f.rewrite is not None:
            w = f.rewrite
            rewrite = _core.Rewrite(w.hostname, w.path.full if w.path else None,
                                    w.path.prefix if w.path else None)
    if req is None and resp is None and redirect is None and rewrite is None and mirror is None:
        return None
    if mirror is None:
        return _core.Filters(req, resp, redirect, rewrite)
    return _core.Filters(req, resp, redirect, rewrite, groups[mirror.upstream], mirror.percent)


def _compile_route(route: Route, cfg: GatewayConfig, groups: dict) -> _core.Route:
    if route.backends is None and route.upstream is None:
        # a redirect-only route: one backend that only redirects
        backends = [_core.Backend(None, compile_filters(route.filters, groups=groups), 1)]
    elif route.backends is None:
        backends = [_core.Backend(groups[route.upstream], compile_filters(route.filters, groups=groups), 1)]
    else:
        backends = [
            _core.Backend(groups[b.upstream] if b.upstream is not None else None,
                          compile_filters(route.filters, b.filters, groups=groups), b.weight)
            for b in route.backends
        ]
    return _core.Route(route.name, backends, cfg.route_max_body_bytes(route))


def _matched_prefix(m: Match) -> str | None:
    prefix = m.path.prefix
    if prefix is None:
        return None
    if len(prefix) > 1 and prefix.endswith("/"):
        prefix = prefix[:-1]
    return prefix


def attached_matches(listener: Listener, cfg: GatewayConfig):
    """(route, match, hosts, order) for every match of every route that serves on `listener`, hosts
    intersected with the listener's hostname, in the router's tie-break order."""
    order = 0
    for route in cfg.routes:
        if route.listeners is not None and listener.name not in route.listeners:
            continue
        for m in route.all_matches:
            order += 1
            hosts = intersect_hosts(m.hosts, listener.hostname)
            if hosts != []:
                yield route, m, hosts, order


def _listener_specs(listener: Listener, cfg: GatewayConfig, routes: dict) -> list[RouteSpec]:
    return [
        RouteSpec(
            name=route.name,
            hosts=hosts,
            path_exact=m.path.exact,
            path_prefix=m.path.prefix,
            path_template=m.path.template,
            path_regex=m.path.regex,
            methods=[x.encode() for x in m.methods] if m.methods else None,
            headers=_conditions(m.headers, str.lower),
            query=_conditions(m.query),
            order=order,
            payload=_core.RouteMatch(routes[route.name], _matched_prefix(m), tuple(template_captures(m.path.template))),
        )
        for route, m, hosts, order in attached_matches(listener, cfg)
    ]


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    hosts: list[str] | None
    path_exact: None = None
    path_prefix: str = "/"
    payload: object = None


def compile_runtime(cfg: GatewayConfig, previous: _core.Runtime | None = None,
                    ports: list[int | None] | None = None) -> _core.Runtime:
    """`ports[i]` is the port `cfg.listeners[i]` is bound to (it differs for port 0); None: not
    bound (a listener added by a reload waits for a restart)."""
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

    routes = {r.name: _compile_route(r, cfg, groups) for r in cfg.routes}
    by_port: dict[int, list[Listener]] = {}
    for i, listener in enumerate(cfg.listeners):
        port = ports[i] if ports is not None else listener.port
        if port is None:
            continue
        by_port.setdefault(port, []).append(listener)
    listener_routers = {}
    host_independent = set()
    for port, listeners in by_port.items():
        specs = [ListenerSpec([lst.hostname] if lst.hostname else None,
                              payload=_core.Router(_listener_specs(lst, cfg, routes)))
                 for lst in listeners]
        listener_routers[port] = _core.Router(specs)
        if len(listeners) == 1 and listeners[0].hostname is None:
            host_independent.add(port)

    limits = cfg.limits
    return _core.Runtime(
        listener_routers,
        groups,
        host_independent_ports=frozenset(host_independent),
        max_request_line=limits.max_request_line_bytes,
        max_head_bytes=limits.max_header_bytes,
        max_headers=limits.max_headers,
        drop_underscores=limits.underscores_in_headers == "drop",
        header_timeout=limits.header_timeout,
        body_timeout=limits.body_timeout,
        keepalive_timeout=limits.keepalive_timeout,
        max_requests_per_connection=limits.max_requests_per_connection,
        max_body=limits.max_body_bytes,
        drain_timeout=cfg.server.drain_timeout,
    )


def retired_targets(old: _core.Runtime, new: _core.Runtime) -> list[_core.Target]:
    """Targets of `old` that `new` no longer uses: their idle connections can be closed."""
    kept = {id(t) for g in new.groups.values() for t in g.targets}
    return [t for g in old.groups.values() for t in g.targets if id(t) not in kept]
