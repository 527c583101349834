"""`fastgw explain`: which listener and route a request takes and why, the routes that matched but
lost, the filters in order, the request as the upstream will receive it, and the target the
balancer would pick. It runs the real request phase of the core on a request head, without sockets."""

from __future__ import annotations

from urllib.parse import urlsplit

from . import _core
from .config import GatewayConfig
from .config.schema import Listener
from .ratelimits import explain_limits
from .runtime import attached_matches, compile_runtime, intersect_hosts


class ExplainError(ValueError):
    pass


def _listener_for(cfg: GatewayConfig, address: str, host: str) -> Listener | None:
    """The same choice the core makes: exact hostname, then the longest wildcard, then none."""
    best, best_rank = None, None
    for lst in cfg.listeners:
        if lst.address != address:
            continue
        if lst.hostname is None:
            rank = (0, 0)
        elif intersect_hosts([host], lst.hostname) == [host]:
            rank = (2, 0) if not lst.hostname.startswith("*.") else (1, len(lst.hostname))
        else:
            continue
        if best_rank is None or rank > best_rank:
            best, best_rank = lst, rank
    return best


def _describe_ops(kind: str, ops) -> list[str]:
    if ops is None:
        return []
    out = []
    if ops.dropped:
        out.append(f"{kind}: remove or replace {', '.join(n.decode() for n in ops.dropped)}")
    if ops.appended:
        lines = [line.decode() for line in ops.appended.split(b"\r\n") if line]
        out.append(f"{kind}: emit {'; '.join(lines)}")
    return out


def explain(cfg: GatewayConfig, method: str, url: str, headers: list[tuple[str, str]]) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ExplainError(f"expected an absolute http:// URL, got {url!r}")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"          # as a Host header carries an IPv6 address, and as routes name it
    ports = sorted({lst.port for lst in cfg.listeners})
    port = parts.port or (443 if parts.scheme == "https" else 80)
    notes = []
    if port not in ports:
        if len(ports) != 1:
            raise ExplainError(f"no listener on port {port} (listeners: {', '.join(map(str, ports))})")
        notes.append(f"no listener on port {port}: explaining for the only listener port, {ports[0]}")
        port = ports[0]
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    host_header = parts.netloc.rsplit("@", 1)[-1]
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}"]
    lines += [f"{name}: {value}" for name, value in headers]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    addresses = list(dict.fromkeys(lst.address for lst in cfg.listeners if lst.port == port))
    address = addresses[0]
    if len(addresses) > 1:
        notes.append(f"several addresses listen on port {port}: explaining for {address}")
    rt = compile_runtime(cfg)
    conn = _core.Worker(None, rt)()
    result = conn.explain(raw, port, address)

    out = [f"request:  {method} {url}"]
    out += [f"note:     {n}" for n in notes]
    if "route" not in result and "error" in result:
        out.append(f"refused:  {result['status']} {result['error']} (the request itself is invalid)")
        return "\n".join(out) + "\n"
    listener = _listener_for(cfg, address, host)
    if listener is None:
        out.append(f"listener: none on port {port} serves host {host!r}")
    else:
        why = (f"hostname {listener.hostname!r} matches {host!r}" if listener.hostname
               else "no hostname: serves any host")
        out.append(f"listener: {listener.name or listener.address} ({listener.address}; {why})")
        out += _explain_candidates(cfg, rt, listener, address, host, method, parts, headers)
    if result.get("route") is None:
        out.append(f"result:   {result['status']} {result.get('error', '')}")
        return "\n".join(out) + "\n"
    out.append(f"route:    {result['route']}")
    out += _describe_policies(result.get("policies") or {})
    out += explain_limits(result.get("policies") or {}, result["route"], headers, parts.query)
    if result.get("backends") is not None and len(result["backends"]) > 1:
        shares = ", ".join(f"{name or '(none: 500)'} weight {w}" for name, w in result["backends"])
        out.append(f"backends: {shares} (smooth weighted round robin)")
    filters = result.get("filters")
    if filters:
        steps = _describe_ops("request headers", filters["request_headers"])
        if filters["rewrite"] is not None:
            rw = filters["rewrite"]
            if rw.hostname:
                steps.append(f"rewrite: Host -> {rw.hostname.decode()}")
            if rw.path_full is not None:
                steps.append(f"rewrite: path -> {rw.path_full.decode()}")
            if rw.path_prefix is not None:
                steps.append(f"rewrite: matched prefix {result['match_prefix'].decode()} -> "
                             f"{rw.path_prefix.decode() or '/'}")
        if filters["redirect"] is not None:
            steps.append("redirect")
        if filters["mirror"]:
            steps.append(f"mirror: a copy to upstream {filters['mirror']}")
        steps += _describe_ops("response headers", filters["response_headers"])
        for i, step in enumerate(steps, 1):
            out.append(f"filter {i}: {step}")
    if "location" in result:
        out.append(f"result:   {result['status']} redirect to {result['location'].decode()}")
    elif "upstream_request" in result:
        out.append(f"backend:  upstream {result['upstream']} -> target {result['target']}")
        out.append("upstream request:")
        head = result["upstream_request"].decode("latin-1").split("\r\n")
        out += ["  " + line for line in head if line]
    else:
        out.append(f"result:   {result['status']} {result.get('error', '')}")
    return "\n".join(out) + "\n"


def _describe_policies(by_phase: dict) -> list[str]:
    """The route's policies per phase, in the order they run (docs/architecture.md's phase chart)."""
    out = []
    for phase in ("request", "response", "log"):
        policies = by_phase.get(phase) or []
        if policies:
            steps = "; ".join(f"{i}. {p.name} ({p.describe()})" for i, p in enumerate(policies, 1))
            out.append(f"policies: {phase}: {steps}")
    return out


_HOST_TIERS = ("exact host", "wildcard host", "any host")
_PATH_CLASSES = ("exact path", "template", "regex", "prefix")


def describe_key(key: tuple) -> str:
    """The router's precedence key in words (see the comment at the top of _cy/router.pyx)."""
    host_tier, host_chars, path_class, path_score, method, headers, query, order = key[:8]
    host = _HOST_TIERS[host_tier] + (f" ({-host_chars} chars)" if host_tier < 2 else "")
    score = {0: "chars", 1: "literal chars", 2: "pattern chars", 3: "chars"}[path_class]
    parts = [host, f"{_PATH_CLASSES[path_class]} ({-path_score} {score})"]
    if method:
        parts.append("method")
    if headers:
        parts.append(f"{-headers} header condition(s)")
    if query:
        parts.append(f"{-query} query condition(s)")
    parts.append(f"order {order}")
    return ", ".join(parts)


def _explain_candidates(cfg, rt, listener, address, host, method, parts, headers) -> list[str]:
    table = rt.route_table(address, host.encode())
    if table is None:
        return []
    names = [route.name for route, _, _, _ in attached_matches(listener, cfg)]
    rows = table.explain(host.encode(), (parts.path or "/").encode(), method.encode(),
                         [(n.encode(), v.encode()) for n, v in headers], parts.query.encode())
    out = []
    winner_seen = False
    for index, matched, key, reason in rows:
        name = names[index] if 0 <= index < len(names) else f"#{index}"
        if matched and not winner_seen:
            out.append(f"chosen:   {name} ({describe_key(key)})")
            winner_seen = True
        elif matched:
            out.append(f"lost:     {name} (matched, ranks lower: {describe_key(key)})")
        elif not winner_seen:
            out.append(f"skipped:  {name} (ranks higher but does not match: {reason})")
    return out
