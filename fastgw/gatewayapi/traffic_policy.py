"""Envoy Gateway's BackendTrafficPolicy (gateway.envoyproxy.io/v1alpha1), its `rateLimit` part, onto
the native `rate_limit` policy (docs/rate-limiting.md) of the routes its targets make.

What maps (docs/gateway-api.md): `rateLimit.local` / `rateLimit.global` rules, each one limit of
`limit.requests` a `limit.unit` (burst = requests, as Envoy's local token bucket), keyed by the route
and, per client selector, `headers` of type Distinct (`header:NAME`, rule skipped without the header,
as Envoy makes no descriptor then) and `sourceCIDR` of type Distinct over a whole family
(`0.0.0.0/0`, `::/0`: `client_ip`); `cost.request.number` -> `cost`; `shadowMode` -> `shadow`;
`disableHeaders` -> no headers (else the X-RateLimit-* set Envoy sends). `global` becomes
`scope: cluster`, which needs the native `redis:` section. A policy on an HTTPRoute beats one on its
Gateway; among policies on one target the oldest (then by namespace/name) wins. Everything else of
a BackendTrafficPolicy is reported as unsupported at its manifest path.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any

from ..config.positions import Token
from .manifests import Obj

API_VERSION = "gateway.envoyproxy.io/v1alpha1"
KIND = "BackendTrafficPolicy"
_GROUP = "gateway.networking.k8s.io"
_UNITS = {"Second": "1s", "Minute": "1m", "Hour": "1h", "Day": "24h"}
_SPEC_FIELDS = ("rateLimit", "targetRef", "targetRefs")


def map_traffic_policies(b) -> None:
    """Adds each BackendTrafficPolicy's limits to the native routes of its targets (`b`: the
    front end's _Builder, after map_routes)."""
    chosen: dict[int, tuple[int, Obj, list[dict[str, Any]], dict]] = {}   # route index -> (rank, policy, ...)
    far = datetime.datetime.max.replace(tzinfo=datetime.UTC)

    def order(p: Obj) -> tuple[datetime.datetime, str]:
        from .frontend import _timestamp

        return _timestamp(p.metadata.get("creationTimestamp")) or far, p.key

    for policy in sorted(b.traffic_policies, key=order):
        built = _policies(b, policy)
        if built is None:
            continue
        limits, origins = built
        for rank, index in _targets(b, policy):
            held = chosen.get(index)
            if held is None or rank < held[0]:
                chosen[index] = (rank, policy, limits, origins)
    for index, (_rank, policy, natives, origins) in sorted(chosen.items()):
        route = b.native["routes"][index]
        policies = route.setdefault("policies", [])
        for native, origin in zip(natives, origins, strict=True):
            k = len(policies)
            policies.append(native)
            for tokens, where in origin.items():
                b.origins[("routes", index, "policies", k, *tokens)] = (policy, where)


def _targets(b, policy: Obj) -> list[tuple[int, int]]:
    """(rank, native route index) of every route the policy's targets make: rank 0 for an HTTPRoute
    target, 1 for a Gateway target (the more specific wins)."""
    spec = policy.body.get("spec") or {}
    refs: list[tuple[list[Token], Any]] = []
    if "targetRef" in spec:
        refs.append((["spec", "targetRef"], spec["targetRef"]))
    for i, ref in enumerate(b.items(policy, ["spec"], spec, "targetRefs")):
        refs.append((["spec", "targetRefs", i], ref))
    if not refs:
        b.err(policy, ["spec"], "missing required field 'targetRefs'")
    out = []
    for at, ref in refs:
        r = b.fields(policy, at, ref, {"group": None, "kind": None, "name": None, "namespace": None,
                                       "sectionName": "not supported: a sectionName (the policy applies to the "
                                                      "whole HTTPRoute or Gateway)"})
        name = b.string(policy, at, r, "name", required=True)
        group, kind = r.get("group", _GROUP), r.get("kind")
        ns = r.get("namespace") or policy.namespace
        if name is None:
            continue
        if group != _GROUP or kind not in ("HTTPRoute", "Gateway"):
            b.err(policy, at, f"not supported: a target of kind {kind!r} in group {group!r} "
                  f"(supported: HTTPRoute and Gateway of {_GROUP})")
            continue
        key = f"{ns}/{name}"
        if kind == "HTTPRoute":
            if not any(route.key == key for route in b.routes):
                b.err(policy, [*at, "name"], f"no HTTPRoute {key!r}")
                continue
            out += [(0, i) for i in b.route_natives.get(key, ())]
        else:
            if key not in b.gateways:
                b.err(policy, [*at, "name"], f"no Gateway {key!r}")
                continue
            natives = {li.native for li in b.listeners.get(key, ())}
            out += [(1, i) for i, route in enumerate(b.native["routes"])
                    if natives & set(route.get("listeners") or ())]
    return out


def _policies(b, policy: Obj) -> tuple[list[dict[str, Any]], list[dict[tuple[Token, ...], list[Token]]]] | None:
    """The native rate_limit policies (one per rule) and, for each, native path -> manifest path."""
    b.fields(policy, [], policy.body, {"apiVersion": None, "kind": None, "metadata": None, "spec": None,
                                       "status": None})
    spec = policy.body.get("spec")
    known: dict[str, str | None] = {f: None for f in _SPEC_FIELDS}
    for key in (spec or {}) if isinstance(spec, dict) else ():
        if key not in known:
            known[key] = f"not supported: BackendTrafficPolicy {key!r} (only rateLimit maps onto fastgw)"
    spec = b.fields(policy, ["spec"], spec, known)
    if "rateLimit" not in spec:
        b.err(policy, ["spec"], "a BackendTrafficPolicy without rateLimit has nothing fastgw maps")
        return None
    at: list[Token] = ["spec", "rateLimit"]
    rl = b.fields(policy, at, spec["rateLimit"], {"type": None, "local": None, "global": None,
                                                  "disableHeaders": None,
                                                  "telemetry": "not supported: rate-limit telemetry"})
    kind = rl.get("type")
    parts = [k for k in ("local", "global") if k in rl]
    if kind is not None and kind not in ("Local", "Global"):
        b.err(policy, [*at, "type"], f"expected Local or Global, got {kind!r}")
        return None
    if kind is not None and parts and parts != [kind.lower()]:
        b.err(policy, at, f"type {kind} needs `{kind.lower()}` (and only it)")
        return None
    if len(parts) != 1:
        b.err(policy, at, "needs one of `local` and `global`")
        return None
    scope = "cluster" if parts[0] == "global" else "local"
    at = [*at, parts[0]]
    section = b.fields(policy, at, rl[parts[0]], {"rules": None})
    headers = [] if rl.get("disableHeaders") is True else ["x-ratelimit"]
    natives, origins = [], []
    for i, rule in enumerate(b.items(policy, at, section, "rules")):
        built = _rule(b, policy, [*at, "rules", i], rule, scope)
        if built is None:
            continue
        limit, shadow, origin = built
        name = f"{policy.namespace}.{policy.name}.r{i}"[:128]
        natives.append({"type": "rate_limit", "name": name, "headers": headers, "shadow": shadow,
                        "limits": [limit]})
        origins.append({(): [*at, "rules", i], **origin})
    if not natives and "rules" in section:
        return None
    if not natives:
        b.err(policy, at, "missing required field 'rules'")
        return None
    return natives, origins


def _rule(b, policy: Obj, at: list[Token], rule: Any, scope: str):
    r = b.fields(policy, at, rule, {
        "clientSelectors": None, "limit": None, "cost": None, "shadowMode": None,
        "shared": "not supported: one bucket shared by every route of the targets (fastgw keys by route)",
    })
    lim = b.fields(policy, [*at, "limit"], r.get("limit"), {"requests": None, "unit": None})
    requests = b.integer(policy, [*at, "limit"], lim, "requests", required=True)
    unit = b.string(policy, [*at, "limit"], lim, "unit", required=True)
    period = _UNITS.get(unit) if unit is not None else None
    if unit is not None and period is None:
        b.err(policy, [*at, "limit", "unit"], f"not supported: unit {unit!r} (supported: {', '.join(_UNITS)})")
    key: list[str] = ["route"]
    skip = False
    for j, sel in enumerate(b.items(policy, at, r, "clientSelectors")):
        sat = [*at, "clientSelectors", j]
        s = b.fields(policy, sat, sel, {"headers": None, "sourceCIDR": None,
                                        "path": "not supported: a path selector",
                                        "methods": "not supported: a method selector"})
        for k, h in enumerate(b.items(policy, sat, s, "headers")):
            hat = [*sat, "headers", k]
            hh = b.fields(policy, hat, h, {"name": None, "type": None, "value": None, "invert": None})
            hname = b.string(policy, hat, hh, "name", required=True)
            htype = hh.get("type", "Exact")
            if htype != "Distinct" or "value" in hh or hh.get("invert"):
                b.err(policy, hat, f"not supported: a header match of type {htype}"
                      f"{' inverted' if hh.get('invert') else ''} (a limit for only some requests; fastgw "
                      "limits match every request of the route; type Distinct maps, a bucket per value)")
                continue
            if hname is not None and f"header:{hname}" not in key:
                key.append(f"header:{hname}")
                skip = True
        if "sourceCIDR" in s:
            cat = [*sat, "sourceCIDR"]
            c = b.fields(policy, cat, s["sourceCIDR"], {"type": None, "value": None})
            ctype, value = c.get("type", "Exact"), b.string(policy, cat, c, "value", required=True)
            try:
                whole = value is not None and ipaddress.ip_network(value, strict=False).prefixlen == 0
            except ValueError:
                b.err(policy, [*cat, "value"], f"not a CIDR: {value!r}")
                continue
            if ctype != "Distinct" or not whole:
                b.err(policy, cat, f"not supported: sourceCIDR of type {ctype} {value} (only type Distinct "
                      "over 0.0.0.0/0 or ::/0, a bucket per client IP, maps)")
                continue
            if "client_ip" not in key:
                key.append("client_ip")
    cost = 1
    if "cost" in r:
        cat = [*at, "cost"]
        c = b.fields(policy, cat, r["cost"], {"request": None,
                                              "response": "not supported: a cost from the response"})
        req = b.fields(policy, [*cat, "request"], c.get("request"), {"from": None, "number": None,
                                                                     "metadata": "not supported: a cost from metadata"})
        if req.get("from", "Number") != "Number":
            b.err(policy, [*cat, "request", "from"], f"not supported: cost from {req.get('from')!r}")
        n = b.integer(policy, [*cat, "request"], req, "number")
        if n is not None:
            cost = n
    shadow = r.get("shadowMode") is True
    if requests is None or period is None:
        return None
    limit: dict[str, Any] = {"rate": requests, "period": period, "burst": requests, "key": key, "scope": scope}
    if cost != 1:
        limit["cost"] = cost
    if skip:
        limit["when_missing"] = "skip"
    origin: dict[tuple[Token, ...], list[Token]] = {
        ("limits", 0): [*at, "limit"], ("limits", 0, "rate"): [*at, "limit", "requests"],
        ("limits", 0, "period"): [*at, "limit", "unit"], ("limits", 0, "cost"): [*at, "cost"],
        ("limits", 0, "key"): [*at, "clientSelectors"], ("limits", 0, "scope"): at,
    }
    return limit, shadow, origin
