"""Checks that run on a decoded config and report every problem, not just the first."""

from __future__ import annotations

import datetime
import ipaddress
import re

from .admin import check_admin
from .balancing import check_balancer
from .health import check_health
from .logs import check_logs
from .metrics import check_metrics
from .policies import check_policies
from .positions import Token
from .retry import check_retry, check_slow_start
from .schema import Filters, GatewayConfig, Match, PathMatch, PathReplace
from .tls import check_tls
from .tracing import check_tracing
from .tunnels import check_streams
from .values import check_host_pattern, check_path, parse_address

__all__ = ["Problem", "check_config"]

Problem = tuple[list[Token], str]


def _address_key(host: str, port: int) -> tuple[str, int]:
    """Normalise an address for duplicate detection (`[::0001]` equals `[::1]`)."""
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        return host.lower(), port


def _check_listeners(cfg: GatewayConfig, out: list[Problem]) -> None:
    seen: dict[tuple[str, int, str | None], int] = {}
    names: dict[str, int] = {}
    for i, listener in enumerate(cfg.listeners):
        path: list[Token] = ["listeners", i, "address"]
        if listener.name is not None:
            if listener.name in names:
                out.append(([*path[:-1], "name"],
                            f"duplicate listener name {listener.name!r} (first at $.listeners[{names[listener.name]}])"))
            names.setdefault(listener.name, i)
        if listener.hostname is not None:
            try:
                check_host_pattern(listener.hostname)
            except ValueError as e:
                out.append(([*path[:-1], "hostname"], str(e)))
        try:
            host, port = parse_address(listener.address, allow_port_zero=True)
        except ValueError as e:
            out.append((path, str(e)))
            continue
        key = (*_address_key(host, port), listener.hostname)
        if key in seen:
            what = f" with hostname {listener.hostname!r}" if listener.hostname else ""
            out.append(
                (path, f"duplicate listener address {listener.address!r}{what} (also at $.listeners[{seen[key]}])")
            )
        else:
            seen.setdefault(key, i)


def _check_upstreams(cfg: GatewayConfig, out: list[Problem]) -> None:
    for name, upstream in cfg.upstreams.items():
        for i, target in enumerate(upstream.targets):
            try:
                parse_address(target.address)
            except ValueError as e:
                out.append((["upstreams", name, "targets", i, "address"], str(e)))
        check_balancer(upstream.balancer, upstream.sticky, ["upstreams", name], out)
        check_health(upstream.health, ["upstreams", name], out)
        check_slow_start(upstream, ["upstreams", name], out)
        if upstream.protocol == "h2" and upstream.tls is None:
            out.append((["upstreams", name, "protocol"], "protocol 'h2' is HTTP/2 over TLS and needs 'tls' "
                        "(use 'h2c' for cleartext HTTP/2)"))
        elif upstream.protocol == "h2c" and upstream.tls is not None:
            out.append((["upstreams", name, "protocol"], "protocol 'h2c' is cleartext HTTP/2; with 'tls' "
                        "use protocol 'h2'"))
        elif upstream.protocol == "h2" and upstream.tls.alpn is not None and "h2" not in upstream.tls.alpn:
            out.append((["upstreams", name, "tls", "alpn"], "protocol 'h2' needs 'h2' among the ALPN protocols"))


_CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?:\.\.\.)?\}")


def template_captures(template: str | None) -> list[str]:
    """Capture names of a path template, in order (`/u/{id}/{rest...}` -> ['id', 'rest'])."""
    return _CAPTURE.findall(template) if template else []


_TEMPLATE_PARAM = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*(\.\.\.)?\}$")


def _check_template(template: str) -> None:
    check_path(template.replace("{", "").replace("}", ""))
    segments = template.split("/")[1:]
    for i, seg in enumerate(segments):
        if "{" not in seg and "}" not in seg:
            continue
        m = _TEMPLATE_PARAM.match(seg)
        if m is None:
            raise ValueError(f"template {template!r}: a parameter must be a whole segment, '{{name}}' or '{{name...}}'")
        if m.group(1) and i != len(segments) - 1:
            raise ValueError(f"template {template!r}: '{{name...}}' may only be the last segment")


def _check_regex(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"invalid regular expression {pattern!r}: {e}") from None


def _exactly_one(obj: object, keys: tuple[str, ...], path: list[Token], out: list[Problem]) -> list[str]:
    given = [k for k in keys if getattr(obj, k) not in (None, False)]
    if len(given) != 1:
        names = ", ".join(f"'{k}'" for k in keys)
        out.append((path, f"exactly one of {names} is required (got {', '.join(given) or 'none'})"))
    return given


def _check_path_match(pm: PathMatch, path: list[Token], out: list[Problem]) -> None:
    for key in _exactly_one(pm, ("prefix", "exact", "template", "regex"), path, out):
        value = getattr(pm, key)
        check = {"template": _check_template, "regex": _check_regex}.get(key, check_path)
        try:
            check(value)
        except ValueError as e:
            out.append(([*path, key], str(e)))


def _check_match(match: Match, path: list[Token], out: list[Problem]) -> None:
    for j, pattern in enumerate(match.hosts or ()):
        try:
            check_host_pattern(pattern)
        except ValueError as e:
            out.append(([*path, "hosts", j], str(e)))
    _check_path_match(match.path, [*path, "path"], out)
    for section in ("headers", "query"):
        for j, cond in enumerate(getattr(match, section) or ()):
            cpath = [*path, section, j]
            if "regex" in _exactly_one(cond, ("value", "regex", "present"), cpath, out):
                try:
                    _check_regex(cond.regex)
                except ValueError as e:
                    out.append(([*cpath, "regex"], str(e)))


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def _check_replace(rp: PathReplace, prefix_only_ok: bool, captures: set[str], path: list[Token],
                   out: list[Problem]) -> None:
    given = _exactly_one(rp, ("full", "prefix"), path, out)
    for key in given:
        value = getattr(rp, key)
        if key == "full" or value:
            try:
                check_path(_PLACEHOLDER.sub("x", value) if key == "full" else value)
            except ValueError as e:
                out.append(([*path, key], str(e)))
        if key == "full" and value:
            for name in _PLACEHOLDER.findall(value):
                if name not in captures:
                    shown = ", ".join(sorted(captures)) or "none"
                    out.append(([*path, key], f"{{{name}}} is not a capture of every match's path template "
                                              f"(captures: {shown})"))
    if "prefix" in given and not prefix_only_ok:
        out.append(([*path, "prefix"], "replacing the matched prefix needs every match of the route to be a path prefix"))


def _check_datetime(value: str, path: list[Token], out: list[Problem]) -> None:
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        out.append((path, f"expected an ISO 8601 date-time such as '2026-01-31T00:00:00Z', got {value!r}"))
        return
    if parsed.tzinfo is None:
        out.append((path, f"date-time {value!r} needs a time zone (for example a trailing 'Z')"))


# Fields the gateway itself owns: framing and connection management (editing them could smuggle
# a second framing past the upstream or the client), and the ones it sets on every request.
_GATEWAY_OWNED = {
    "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te",
    "trailer", "upgrade", "x-request-id",
}
_GATEWAY_OWNED_REQUEST = _GATEWAY_OWNED | {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}


def _check_header_edits(edits, owned: set[str], path: list[Token], out: list[Problem],
                        host_settable: bool = False) -> None:
    for key in ("set", "add", "remove"):
        names = getattr(edits, key)
        for name in (names if key == "remove" else names.keys()):
            lname = name.lower()
            if lname in owned or (lname == "host" and not (host_settable and key == "set")):
                hint = " (only `set` it, or use rewrite.hostname)" if lname == "host" else ""
                where = [*path, key, name] if key != "remove" else [*path, key, names.index(name)]
                out.append((where, f"{name!r} is managed by the gateway and cannot be edited{hint}"))


def _check_filters(f: Filters, all_prefix: bool, captures: set[str], path: list[Token],
                   cfg: GatewayConfig, known: str, out: list[Problem]) -> None:
    if f.request_headers is not None:
        _check_header_edits(f.request_headers, _GATEWAY_OWNED_REQUEST, [*path, "request_headers"], out,
                            host_settable=True)
    if f.response_headers is not None:
        _check_header_edits(f.response_headers, _GATEWAY_OWNED, [*path, "response_headers"], out)
    if f.redirect is not None and f.rewrite is not None:
        out.append((path, "'redirect' and 'rewrite' cannot both be set"))
    for key in ("redirect", "rewrite"):
        spec = getattr(f, key)
        if spec is None:
            continue
        if spec.hostname is not None:
            try:
                check_host_pattern(spec.hostname.lower())
                if spec.hostname.startswith("*"):
                    raise ValueError(f"hostname {spec.hostname!r} must not be a wildcard")
            except ValueError as e:
                out.append(([*path, key, "hostname"], str(e)))
        if spec.path is not None:
            _check_replace(spec.path, all_prefix, captures, [*path, key, "path"], out)
    if f.mirror is not None and f.mirror.upstream not in cfg.upstreams:
        out.append(([*path, "mirror", "upstream"], f"unknown upstream {f.mirror.upstream!r} (known: {known})"))
    if f.versioning is not None:
        for key in ("deprecated_at", "sunset_at"):
            value = getattr(f.versioning, key)
            if value is not None:
                _check_datetime(value, [*path, "versioning", key], out)
        for key in ("successor", "link"):
            value = getattr(f.versioning, key)
            if value is not None and any(c in value for c in "<>\r\n\0 \""):
                out.append(([*path, "versioning", key], f"not a URI: {value!r}"))


def _check_routes(cfg: GatewayConfig, out: list[Problem]) -> None:
    names: dict[str, int] = {}
    known = ", ".join(sorted(cfg.upstreams)) or "none defined"
    for i, route in enumerate(cfg.routes):
        base: list[Token] = ["routes", i]
        if route.name in names:
            out.append(
                (
                    [*base, "name"],
                    f"duplicate route name {route.name!r} (first at $.routes[{names[route.name]}])",
                )
            )
        else:
            names[route.name] = i
        if route.match is not None and route.matches is not None:
            out.append((base, "'match' and 'matches' cannot both be set"))
        check_retry(route.retry, route.timeouts, base, out)
        if route.matches is not None:
            for j, match in enumerate(route.matches):
                _check_match(match, [*base, "matches", j], out)
        elif route.match is not None:
            _check_match(route.match, [*base, "match"], out)
        all_prefix = all(m.path.prefix is not None for m in route.all_matches)
        captures = set.intersection(*[set(template_captures(m.path.template)) for m in route.all_matches])
        redirect = route.filters is not None and route.filters.redirect is not None
        if route.upstream is not None and route.backends is not None:
            out.append((base, "'upstream' and 'backends' cannot both be set"))
        elif route.upstream is None and route.backends is None and not redirect:
            out.append((base, "one of 'upstream', 'backends' or 'filters.redirect' is required"))
        if route.upstream is not None and route.upstream not in cfg.upstreams:
            out.append(([*base, "upstream"], f"unknown upstream {route.upstream!r} (known: {known})"))
        for j, backend in enumerate(route.backends or ()):
            if backend.upstream is not None and backend.upstream not in cfg.upstreams:
                out.append(([*base, "backends", j, "upstream"],
                            f"unknown upstream {backend.upstream!r} (known: {known})"))
            if backend.filters is not None:
                _check_filters(backend.filters, all_prefix, captures, [*base, "backends", j, "filters"], cfg,
                               known, out)
        if route.filters is not None:
            _check_filters(route.filters, all_prefix, captures, [*base, "filters"], cfg, known, out)
        listener_names = {lst.name for lst in cfg.listeners if lst.name is not None}
        for j, name in enumerate(route.listeners or ()):
            if name not in listener_names:
                shown = ", ".join(sorted(listener_names)) or "none named"
                out.append(([*base, "listeners", j], f"unknown listener {name!r} (known: {shown})"))


def check_config(cfg: GatewayConfig) -> list[Problem]:
    """Every semantic problem of a decoded config, in document order of sections."""
    out: list[Problem] = []
    _check_listeners(cfg, out)
    _check_upstreams(cfg, out)
    _check_routes(cfg, out)
    check_policies(cfg, out)
    check_metrics(cfg, out)
    check_logs(cfg, out)
    check_tracing(cfg, out)
    check_admin(cfg, out)
    check_tls(cfg, out)
    check_streams(cfg, out)
    return out
