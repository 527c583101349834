"""Envoy Gateway's BackendTrafficPolicy rateLimit onto the native rate_limit policy
(fastgw/gatewayapi/traffic_policy.py, docs/gateway-api.md)."""

from __future__ import annotations

from typing import Any

import pytest
from test_gatewayapi import base, dump, native, route

from fastgw.config import ConfigError
from fastgw.gatewayapi import load_manifests
from fastgw.runtime import compile_runtime

EG = "gateway.envoyproxy.io/v1alpha1"


def btp(name: str = "rl", target: dict[str, Any] | None = None, ts: str | None = None,
        **rate_limit: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ts:
        meta["creationTimestamp"] = ts
    rl = rate_limit or {"type": "Local", "local": {"rules": [{"limit": {"requests": 10, "unit": "Minute"}}]}}
    return {"apiVersion": EG, "kind": "BackendTrafficPolicy", "metadata": meta,
            "spec": {"targetRefs": [target or {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                               "name": "r"}], "rateLimit": rl}}


def issues(*docs: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as exc:
        load_manifests(dump(*docs), "m.yaml")
    return [(i.path, i.message) for i in exc.value.errors]


def test_local_rule_on_an_httproute() -> None:
    out = native(*base(route(), btp()))
    [policy] = out["routes"][0]["policies"]
    assert policy == {"type": "rate_limit", "name": "default.rl.r0", "headers": ["x-ratelimit"], "shadow": False,
                      "limits": [{"rate": 10, "period": "1m", "burst": 10, "key": ["route"], "scope": "local"}]}
    compile_runtime(load_manifests(dump(*base(route(), btp())), "m.yaml"))   # the core builds it


def test_selectors_cost_shadow_and_headers() -> None:
    rl = {"local": {"rules": [
        {"clientSelectors": [{"headers": [{"name": "x-user", "type": "Distinct"}]}],
         "limit": {"requests": 5, "unit": "Second"}, "cost": {"request": {"from": "Number", "number": 2}}},
        {"clientSelectors": [{"sourceCIDR": {"type": "Distinct", "value": "0.0.0.0/0"}}],
         "limit": {"requests": 100, "unit": "Hour"}, "shadowMode": True},
    ]}, "disableHeaders": True}
    a, b = native(*base(route(), btp(**rl)))["routes"][0]["policies"]
    assert a["limits"] == [{"rate": 5, "period": "1s", "burst": 5, "key": ["route", "header:x-user"],
                            "scope": "local", "cost": 2, "when_missing": "skip"}]
    assert b["limits"][0]["key"] == ["route", "client_ip"] and b["shadow"] is True
    assert a["headers"] == b["headers"] == []


def test_gateway_target_applies_to_its_routes_and_a_route_policy_wins() -> None:
    on_gw = btp("gwide", {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"},
                local={"rules": [{"limit": {"requests": 1, "unit": "Day"}}]})
    routes = native(*base(route("r"), route("s"), on_gw, btp("own")))["routes"]
    by_name = {r["name"]: r["policies"][0]["name"] for r in routes}
    assert by_name == {"r.r0": "default.own.r0", "s.r0": "default.gwide.r0"}


def test_oldest_policy_on_a_target_wins() -> None:
    old = btp("old", ts="2024-01-01T00:00:00Z", local={"rules": [{"limit": {"requests": 1, "unit": "Day"}}]})
    routes = native(*base(route(), btp("new", ts="2025-01-01T00:00:00Z"), old))["routes"]
    assert [p["name"] for p in routes[0]["policies"]] == ["default.old.r0"]


def test_global_is_a_cluster_limit_and_needs_redis() -> None:
    rl = {"type": "Global", "global": {"rules": [{"limit": {"requests": 10, "unit": "Second"}}]}}
    found = issues(*base(route(), btp(**rl)))
    assert any(p == "$[4].spec.rateLimit.global.rules[0]" and "redis" in m for p, m in found), found


@pytest.mark.parametrize(("rule", "path", "words"), [
    ({"clientSelectors": [{"headers": [{"name": "x", "value": "a"}]}]},
     "$[4].spec.rateLimit.local.rules[0].clientSelectors[0].headers[0]", "type Exact"),
    ({"clientSelectors": [{"headers": [{"name": "x", "type": "RegularExpression", "value": "a.*"}]}]},
     "$[4].spec.rateLimit.local.rules[0].clientSelectors[0].headers[0]", "RegularExpression"),
    ({"clientSelectors": [{"sourceCIDR": {"value": "10.0.0.0/8"}}]},
     "$[4].spec.rateLimit.local.rules[0].clientSelectors[0].sourceCIDR", "sourceCIDR of type Exact"),
    ({"clientSelectors": [{"sourceCIDR": {"type": "Distinct", "value": "10.0.0.0/8"}}]},
     "$[4].spec.rateLimit.local.rules[0].clientSelectors[0].sourceCIDR", "0.0.0.0/0"),
    ({"cost": {"response": {"from": "Metadata"}}}, "$[4].spec.rateLimit.local.rules[0].cost.response",
     "from the response"),
    ({"shared": True}, "$[4].spec.rateLimit.local.rules[0].shared", "shared"),
    ({"limit": {"requests": 1, "unit": "Month"}}, "$[4].spec.rateLimit.local.rules[0].limit.unit", "Month"),
    ({"limit": {"requests": 0, "unit": "Second"}}, "$[4].spec.rateLimit.local.rules[0].limit.requests", ""),
])
def test_unsupported_parts_name_their_manifest_path(rule: dict[str, Any], path: str, words: str) -> None:
    rule = {"limit": {"requests": 1, "unit": "Second"}, **rule}
    found = issues(*base(route(), btp(local={"rules": [rule]})))
    assert any(p == path and words in m for p, m in found), found


def test_other_backend_traffic_policy_fields_and_targets() -> None:
    doc = btp()
    doc["spec"]["retry"] = {"numRetries": 3}
    found = issues(*base(route(), doc))
    assert any(p == "$[4].spec.retry" and "not supported" in m for p, m in found), found
    found = issues(*base(route(), btp(target={"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                               "name": "nope"})))
    assert any(p == "$[4].spec.targetRefs[0].name" and "no HTTPRoute" in m for p, m in found), found
    found = issues(*base(route(), btp(target={"group": "", "kind": "Service", "name": "svc"})))
    assert any(p == "$[4].spec.targetRefs[0]" and "not supported" in m for p, m in found), found
    found = issues(*base(route(), btp(target={"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                               "name": "r", "sectionName": "x"})))
    assert any(p == "$[4].spec.targetRefs[0].sectionName" for p, _ in found), found
