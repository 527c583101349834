"""The compile step: a validated GatewayConfig becomes one immutable `Runtime` of core objects.

Per listener, the routes attached to it become one `Router` (each of a route's matches one spec, its
hosts intersected with the listener's hostname); per port, a `Router` over the listeners' hostnames
picks the listener. Targets carry over a reload by address (their keep-alive pools survive it) and
balancers by upstream name when the targets and weights are unchanged.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from email.utils import format_datetime

import msgspec

from . import _core, dns
from .balancing import build_active_health, build_breakers, build_outlier, build_picker, build_slow_start
from .config import GatewayConfig
from .config.schema import Filters, HeaderEdits, Listener, Match, Route
from .config.validate import template_captures
from .counters import compile_counters
from .policychain import compile_chains
from .retries import build_budget, build_retry_policy, retried_upstreams
from .tls import upstream_context, upstream_key, upstream_peer_check


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
    path_score: int | None = None
    """Ranks a regex path among the others (higher first) instead of its pattern's length: gRPC
    matches (Gateway API GRPCRoute precedence, _grpc_path)."""


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
    """Layers of edits applied in order (the route's, then a backend's, then versioning headers):
    within a layer remove, set, add; a later remove or set of a name undoes what earlier layers
    emitted for it."""
    dropped: dict[str, None] = {}
    emitted: list[tuple[str, str]] = []

    def drop(name: str) -> None:
        nonlocal emitted
        key = name.lower()
        dropped[key] = None
        emitted = [(n, v) for n, v in emitted if n.lower() != key]

    layers = [(list(e.remove), list(e.set.items()), list(e.add.items())) for e in edits]
    layers.append(([], list(extra_set), list(extra_add)))
    for removes, sets, adds in layers:
        for name in removes:
            drop(name)
        for name, value in sets:
            drop(name)
            emitted.append((name, value))
        emitted.extend(adds)
    if not (dropped or emitted):
        return None
    return _core.HeaderOps([], emitted, list(dropped))


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
    request_edits = [f.request_headers for f in layers if f.request_headers is not None]
    host_from_edits = None
    for e in request_edits:         # `set: {Host: x}` is a hostname rewrite: one Host, never two
        for name, value in e.set.items():
            if name.lower() == "host":
                host_from_edits = value
    if host_from_edits is not None:
        request_edits = [msgspec.structs.replace(e, set={n: v for n, v in e.set.items() if n.lower() != "host"})
                         for e in request_edits]
    req = _header_ops(request_edits)
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
            rewrite = _core.Rewrite(w.hostname or host_from_edits, w.path.full if w.path else None,
                                    w.path.prefix if w.path else None)
    if host_from_edits is not None and rewrite is None:
        rewrite = _core.Rewrite(host_from_edits, None, None)
    if req is None and resp is None and redirect is None and rewrite is None and mirror is None:
        return None
    if mirror is None:
        return _core.Filters(req, resp, redirect, rewrite)
    return _core.Filters(req, resp, redirect, rewrite, groups[mirror.upstream], mirror.percent)


def _compile_route(route: Route, cfg: GatewayConfig, groups: dict, chain: _core.PolicyChain) -> _core.Route:
    redirect_only = route.filters is not None and route.filters.redirect is not None and not any(
        b.weight > 0 for b in route.backends or ())
    if route.upstream is None and (route.backends is None or redirect_only):
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
    return _core.Route(route.name, backends, cfg.route_max_body_bytes(route), chain)


def _route_pattern(m: Match) -> str | None:
    """The match's path as a trace's http.route: low cardinality, as the semantic conventions ask."""
    p = m.path
    if p.prefix is not None:
        return p.prefix + ("*" if p.prefix.endswith("/") else "/*")
    return p.exact or p.template or p.regex


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


_GRPC_RANK = 4096       # > the longest gRPC name (GrpcName): service characters outrank method characters


def _grpc_regex(g) -> bool:
    return g is not None and (g.type == "RegularExpression" or (g.service is None and g.method is not None))


def _grpc_path(m: Match, regex_mode: bool) -> tuple[str | None, str | None, str | None, int | None]:
    """(exact, prefix, regex, score) of a match's path for the router. A gRPC match is ranked as
    Gateway API ranks GRPCRoute matches (after the hostname): the characters of its service, then of
    its method (a regular expression's: its pattern's), then header matches (the router's next
    criterion). Service and method Exact stay an exact path (the router's first choice); the others
    are regexes scored that way, and a service-only Exact match is one too (`/svc/[^/]+`) when the
    listener has regex gRPC matches, which would otherwise beat its prefix whatever their length."""
    p, g = m.path, m.grpc
    if g is None or p.exact is not None or (p.prefix is not None and (not regex_mode or g.service is None)):
        return p.exact, p.prefix, p.regex, None
    svc = len(g.service) if g.service is not None else 0
    meth = len(g.method) if g.method is not None else 0
    if p.prefix is not None:
        return None, None, f"/{re.escape(g.service)}/[^/]+", svc * _GRPC_RANK
    return None, None, p.regex, svc * _GRPC_RANK + meth


def _listener_specs(listener: Listener, cfg: GatewayConfig, routes: dict) -> list[RouteSpec]:
    attached = list(attached_matches(listener, cfg))
    regex_mode = any(_grpc_regex(m.grpc) for _, m, _, _ in attached)
    specs = []
    for route, m, hosts, order in attached:
        exact, prefix, regex, score = _grpc_path(m, regex_mode)
        specs.append(RouteSpec(
            name=route.name,
            hosts=hosts,
            path_exact=exact,
            path_prefix=prefix,
            path_template=m.path.template,
            path_regex=regex,
            methods=[x.encode() for x in m.methods] if m.methods else None,
            headers=_conditions(m.headers, str.lower),
            query=_conditions(m.query),
            order=order,
            payload=_core.RouteMatch(routes[route.name], _matched_prefix(m), tuple(template_captures(m.path.template)),
                                     _route_pattern(m)),
            path_score=score,
        ))
    return specs


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    hosts: list[str] | None
    path_exact: None = None
    path_prefix: str = "/"
    payload: object = None


def compile_runtime(cfg: GatewayConfig, previous: _core.Runtime | None = None) -> _core.Runtime:
    """Route tables are keyed by listener address as configured; each listening socket's
    connections carry that key (a listener added by a reload waits for a restart to be bound)."""
    old_groups = previous.groups if previous is not None else {}
    old_targets: dict[tuple, _core.Target] = {}
    for group in old_groups.values():
        for target in group.targets:
            old_targets[target.pool_key] = target

    groups: dict[str, _core.UpstreamGroup] = {}
    retried = retried_upstreams(cfg)
    for name, up in cfg.upstreams.items():
        targets = []
        weights = []
        tls_key = upstream_key(up.tls)
        if up.protocol != "http1":
            tls_key = (tls_key, up.protocol)      # HTTP/2 connections are pooled apart
        # one context per upstream; a target carried over keeps the one its pooled connections used
        ssl_context = upstream_context(up.tls) if up.tls is not None and up.targets else None
        if ssl_context is not None and up.protocol == "h2" and up.tls.alpn is None:
            ssl_context.set_alpn_protocols(["h2"])
        h2_mode = {"http1": 0, "h2c": 1, "h2": 2}[up.protocol]
        peer_check = upstream_peer_check(up.tls) if up.tls is not None else None
        seen: set[str] = set()
        for t in up.targets:
            # a name resolved (fastgw/dns.py) stands for one target per address
            for host in dns.expand(t.host, t.port):
                target = _core.Target(host, t.port, up.keepalive.max_idle, up.keepalive.idle_timeout,
                                      up.keepalive.max_requests, ssl_context,
                                      (up.tls.server_name or t.host) if up.tls is not None else None, tls_key,
                                      peer_check)
                if target.address in seen:
                    continue      # two names with an address in common: one target
                seen.add(target.address)
                target.h2_mode = h2_mode
                target.h2_max_streams = up.http2.max_concurrent_streams
                kept = old_targets.get(target.pool_key)
                if kept is not None:
                    kept.h2_max_streams = target.h2_max_streams
                    kept.max_idle = target.max_idle
                    kept.idle_timeout = target.idle_timeout
                    kept.max_requests = target.max_requests
                    target = kept
                targets.append(target)
                weights.append(t.weight * (100 if up.slow_start is not None else 1))
        group = _core.UpstreamGroup(
            name, targets, weights,
            up.timeouts.connect, up.timeouts.response_header, up.timeouts.body_idle,
        )
        group.picker = build_picker(up, targets, weights)
        group.picker_config = (up.balancer, up.sticky)
        group.outlier = build_outlier(up, len(targets))
        group.active_health = build_active_health(up, len(targets))
        group.breakers = build_breakers(up, old_groups.get(name))
        group.failover = up.failover
        group.budget = build_budget(up, name in retried, old_groups.get(name))
        group.slow_start = build_slow_start(up, weights)
        if name in old_groups:
            group.adopt_balancer(old_groups[name])
            group.adopt_health(old_groups[name])
            if group.slow_start is not None:
                old = old_groups[name]
                where = {t.address: j for j, t in enumerate(old.targets)}
                group.slow_start.adopt(old.slow_start, [where.get(t.address, -1) for t in targets], group)
        groups[name] = group

    global_chain, chains, policies = compile_chains(cfg, previous)
    routes = {r.name: _compile_route(r, cfg, groups, chains[r.name]) for r in cfg.routes}
    for r in cfg.routes:
        routes[r.name].retry = build_retry_policy(r)
        if r.tunnel is not None:
            routes[r.name].tunnels = _core.TunnelSettings(r.tunnel.allowed(), r.tunnel.idle_timeout)
    by_address: dict[str, list[Listener]] = {}
    for listener in cfg.listeners:
        if listener.protocol != "http":
            continue                # a stream listener (compile_streams)
        by_address.setdefault(listener.address, []).append(listener)
    listener_routers = {}
    host_independent = set()
    for address, listeners in by_address.items():
        specs = [ListenerSpec([lst.hostname] if lst.hostname else None,
                              payload=_core.Router(_listener_specs(lst, cfg, routes)))
                 for lst in listeners]
        listener_routers[address] = _core.Router(specs)
        if len(listeners) == 1 and listeners[0].hostname is None:
            host_independent.add(address)

    limits = cfg.limits
    runtime = _core.Runtime(
        listener_routers,
        groups,
        host_independent=frozenset(host_independent),
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
        global_chain=global_chain,
        policies=policies,
        path_normalization=cfg.server.path_normalization,
        merge_slashes=cfg.server.merge_slashes,
        reject_encoded_slashes=cfg.server.encoded_slashes == "reject",
        tracing=_core.TraceSettings(cfg.tracing.sample_rate) if cfg.tracing.enabled else None,
    )
    runtime.metrics = compile_counters(cfg, routes, groups, previous)
    runtime.streams = compile_streams(cfg, routes)
    h2 = limits.http2
    runtime.http2 = _core.H2Settings(
        prior_knowledge=h2.prior_knowledge, max_concurrent_streams=h2.max_concurrent_streams,
        initial_window_size=h2.initial_window_size,
        max_header_list_size=h2.max_header_list_size or limits.max_header_bytes,
        idle_timeout=h2.idle_timeout or limits.keepalive_timeout,
        ping_interval=h2.ping_interval, ping_timeout=h2.ping_timeout)
    return runtime


def compile_streams(cfg: GatewayConfig, routes: dict) -> dict[str, _core.StreamListener]:
    """tcp, tls-passthrough and tls addresses -> their routes (only routes that name the listener
    attach), hosts intersected with the listener's hostname; each entry says whether its listener
    terminates TLS (a tls address may also hold tls-passthrough listeners)."""
    streams: dict[str, _core.StreamListener] = {}
    attached: dict[str, list] = {}
    modes: dict[str, str] = {}
    names: dict[str, str | None] = {}
    for listener in cfg.listeners:
        if listener.protocol == "http":
            continue
        if modes.get(listener.address) != "tls":
            modes[listener.address] = listener.protocol
        names.setdefault(listener.address, listener.name)
        entries = attached.setdefault(listener.address, [])
        for route in cfg.routes:
            if route.listeners is None or listener.name not in route.listeners:
                continue
            for m in route.all_matches:
                hosts = intersect_hosts(m.hosts, listener.hostname)
                if hosts != []:
                    entries.append((hosts, routes[route.name], listener.protocol == "tls", listener.name))
    for address, entries in attached.items():
        streams[address] = _core.StreamListener(modes[address], entries, cfg.limits.header_timeout,
                                                name=names[address])
    return streams


def retired_targets(old: _core.Runtime, new: _core.Runtime) -> list[_core.Target]:
    """Targets of `old` that `new` no longer uses: their idle connections can be closed."""
    kept = {id(t) for g in new.groups.values() for t in g.targets}
    return [t for g in old.groups.values() for t in g.targets if id(t) not in kept]
