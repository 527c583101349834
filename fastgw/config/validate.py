"""Checks that run on a decoded config and report every problem, not just the first."""

from __future__ import annotations

import ipaddress

from .positions import Token
from .schema import GatewayConfig, PathMatch
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
    seen: dict[tuple[str, int], int] = {}
    for i, listener in enumerate(cfg.listeners):
        path: list[Token] = ["listeners", i, "address"]
        try:
            host, port = parse_address(listener.address, allow_port_zero=True)
        except ValueError as e:
            out.append((path, str(e)))
            continue
        key = _address_key(host, port)
        if port != 0 and key in seen:
            out.append(
                (path, f"duplicate listener address {listener.address!r} (also at $.listeners[{seen[key]}])")
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


def _check_path_match(pm: PathMatch, path: list[Token], out: list[Problem]) -> None:
    given = [k for k in ("prefix", "exact") if getattr(pm, k) is not None]
    if len(given) != 1:
        what = "both" if given else "neither"
        out.append((path, f"exactly one of 'prefix' or 'exact' is required (got {what})"))
    for key in given:
        try:
            check_path(getattr(pm, key))
        except ValueError as e:
            out.append(([*path, key], str(e)))


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
        for j, pattern in enumerate(route.match.hosts or ()):
            try:
                check_host_pattern(pattern)
            except ValueError as e:
                out.append(([*base, "match", "hosts", j], str(e)))
        _check_path_match(route.match.path, [*base, "match", "path"], out)
        if route.upstream not in cfg.upstreams:
            out.append(([*base, "upstream"], f"unknown upstream {route.upstream!r} (known: {known})"))


def check_config(cfg: GatewayConfig) -> list[Problem]:
    """Every semantic problem of a decoded config, in document order of sections."""
    out: list[Problem] = []
    _check_listeners(cfg, out)
    _check_upstreams(cfg, out)
    _check_routes(cfg, out)
    return out
