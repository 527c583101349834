"""Retry policies, budgets and slow start in the core (C state, an injected clock), their config
checks, and the Gateway API mapping of timeouts, retry and sessionPersistence (docs/retries.md)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from fastgw import _core
from fastgw.config import ConfigError
from fastgw.config.loader import loads_config
from fastgw.gatewayapi import manifests_to_native

GW = "gateway.networking.k8s.io/v1"


def test_backoff_is_full_jitter_capped_exponential() -> None:
    p = _core.RetryPolicy(3, (), (), 0.025, 0.25)
    for n, upper in ((1, 0.025), (2, 0.075), (3, 0.175), (4, 0.25), (10, 0.25)):
        draws = [p.backoff_for_test(n) for _ in range(400)]
        assert all(0 <= d < upper for d in draws), (n, max(draws))
        assert max(draws) > upper * 0.7          # spread over the interval, not stuck at 0



def test_status_table() -> None:
    p = _core.RetryPolicy(1, ("gateway-error",), (500, 429))
    assert [s for s in range(400, 600) if p.retries_status_for_test(s)] == [429, 500, 502, 503, 504]
    p = _core.RetryPolicy(1, ("5xx",))
    assert [s for s in (404, 499, 500, 599) if p.retries_status_for_test(s)] == [500, 599]
    assert not _core.RetryPolicy(1).retries_status_for_test(503)


def config(**route: Any) -> str:
    cfg = {"listeners": [{"address": "127.0.0.1:0"}],
           "upstreams": {"u": {"targets": [{"address": "127.0.0.1:1"}]}},
           "routes": [{"name": "r", "upstream": "u", **route}]}
    return yaml.safe_dump(cfg)


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as exc:
        loads_config(text, "yaml", file="c.yaml")
    return [(i.path, i.message) for i in exc.value.errors]


def test_config_errors_name_the_path() -> None:
    assert problems(config(timeouts={"request": "1s", "backend_request": "2s"})) == [
        ("$.routes[0].timeouts.backend_request", "backend_request (2s) is longer than request (1s)")]
    assert problems(config(retry={"backoff": {"base": "1s", "max": "10ms"}})) == [
        ("$.routes[0].retry.backoff.max", "max (0.01s) is shorter than base (1s)")]
    (path, message), = problems(config(retry={"retry_on": ["sometimes"]}))
    assert path == "$.routes[0].retry.retry_on[0]"
    (path, message), = problems(config(retry={"statuses": [200]}))
    assert path == "$.routes[0].retry.statuses[0]"
    # every balancer takes slow start now (the hash ones by key share: tests/unit/test_slow_start_hash.py)
    text = config().replace("targets:", "balancer: {type: maglev, hash_on: {source: path}}\n    slow_start: "
                            "{window: 10s}\n    targets:")
    assert loads_config(text, "yaml", file="c.yaml").upstreams["u"].slow_start.window == 10.0


def test_runtime_gets_a_policy_only_where_configured() -> None:
    from fastgw.runtime import compile_runtime

    text = yaml.safe_load(config(retry={"attempts": 2}))
    text["routes"].append({"name": "plain", "upstream": "u2"})
    text["upstreams"]["u2"] = {"targets": [{"address": "127.0.0.1:2"}]}
    rt = compile_runtime(loads_config(yaml.safe_dump(text), "yaml", file="c.yaml"))
    assert rt.groups["u"].budget is not None and rt.groups["u2"].budget is None
    assert rt.groups["u"].budget.describe()["percent"] == 20.0
    assert rt.groups["u2"].slow_start is None


# -- slow start, driven by an injected clock ---------------------------------------------------------------


def group(picker_kind: str | None, n: int = 2) -> _core.UpstreamGroup:
    targets = [_core.Target("127.0.0.1", 9000 + i, 1, 1.0, 1) for i in range(n)]
    weights = [100] * n               # the configured weights x 100, as runtime.py builds them
    g = _core.UpstreamGroup("u", targets, weights, 1.0, 1.0, 1.0)
    if picker_kind == "least_request":
        g.picker = _core.LeastRequestPicker(targets, weights)
    g.slow_start = _core.SlowStart(weights, 100.0, 1.0, 10.0)
    g.slow_start.clock = 0.0
    return g


def share_of(g: _core.UpstreamGroup, address: str, picks: int = 2000) -> float:
    return sum(g.pick_for_test() == address for _ in range(picks)) / picks


@pytest.mark.parametrize("kind", [None, "least_request"])
def test_a_returning_target_ramps_up_over_the_window(kind) -> None:
    g = group(kind)
    back = g.targets[1].address
    g.slow_start.begin_for_test(1)
    seen = []
    for now in (0.0, 50.0, 99.0, 100.0, 500.0):
        g.slow_start.clock = now
        seen.append(share_of(g, back))
    # weights 100 : max(10%, t / window): 10/110, 50/150, 99/199, then even
    expected = [10 / 110, 50 / 150, 99 / 199, 0.5, 0.5]
    tolerance = 0.001 if kind is None else 0.05      # round robin is exact; least request draws at random
    assert all(abs(s - e) <= tolerance for s, e in zip(seen, expected, strict=True)), seen
    assert g.slow_start.n_ramping == 0


def test_aggression_shapes_the_ramp() -> None:
    g = group(None)
    g.slow_start = _core.SlowStart([100, 100], 100.0, 2.0, 0.0)
    g.slow_start.clock = 0.0
    g.slow_start.begin_for_test(1)
    g.slow_start.clock = 25.0
    # (25 / 100) ^ (1 / 2) = 0.5
    assert abs(share_of(g, g.targets[1].address) - 50 / 150) <= 0.001


# -- Gateway API -------------------------------------------------------------------------------------------


def manifests(rules: list[dict[str, Any]], *extra: dict[str, Any]) -> dict[str, Any]:
    docs = [
        {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "gw"},
         "spec": {"gatewayClassName": "fastgw", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}},
        {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "r"},
         "spec": {"parentRefs": [{"name": "gw"}], "rules": rules}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"},
         "spec": {"ports": [{"port": 8080, "targetPort": 9000}]}},
        *extra,
    ]
    return manifests_to_native(yaml.safe_dump_all(docs), "m.yaml")


REF = [{"name": "svc", "port": 8080}]


def test_timeouts_and_retry_map_onto_the_route() -> None:
    (r,) = manifests([{"backendRefs": REF, "timeouts": {"request": "400ms", "backendRequest": "200ms"},
                       "retry": {"codes": [500, 503], "attempts": 5, "backoff": "10ms"}}])["routes"]
    assert r["timeouts"] == {"request": "400ms", "backend_request": "200ms"}
    assert r["retry"] == {"retry_on": ["connect-failure", "reset", "timeout"], "attempts": 5, "statuses": [500, 503],
                          "backoff": {"base": "10ms"}}


def test_session_persistence_gives_the_rule_its_own_sticky_upstream() -> None:
    out = manifests([
        {"matches": [{"path": {"value": "/a"}}], "backendRefs": REF,
         "sessionPersistence": {"sessionName": "cart", "absoluteTimeout": "1h",
                                "cookieConfig": {"lifetimeType": "Permanent"}}},
        {"matches": [{"path": {"value": "/b"}}], "backendRefs": REF},
    ])
    a, b = out["routes"]
    assert b["backends"][0]["upstream"] == "default.svc.8080"
    sticky_name = a["backends"][0]["upstream"]
    assert sticky_name.startswith("default.svc.8080.session-")
    assert out["upstreams"][sticky_name]["sticky"] == {"cookie": "cart", "ttl": "1h"}
    assert "sticky" not in out["upstreams"]["default.svc.8080"]


def test_backend_lb_policy_session_persistence() -> None:
    policy = {"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "BackendLBPolicy",
              "metadata": {"name": "lb"},
              "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "svc"}],
                       "sessionPersistence": {"sessionName": "sess"}}}
    out = manifests([{"backendRefs": REF}], policy)
    assert out["upstreams"]["default.svc.8080"]["sticky"] == {"cookie": "sess"}


def test_header_persistence_is_reported() -> None:
    from fastgw.gatewayapi import load_manifests

    text = yaml.safe_dump_all([
        {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "gw"},
         "spec": {"gatewayClassName": "fastgw", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}},
        {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "r"},
         "spec": {"parentRefs": [{"name": "gw"}],
                  "rules": [{"backendRefs": REF, "sessionPersistence": {"type": "Header"}}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"}, "spec": {"ports": [{"port": 8080}]}},
    ])
    with pytest.raises(ConfigError) as exc:
        load_manifests(text, "m.yaml")
    assert [(i.path, i.message) for i in exc.value.errors] == [
        ("$[1].spec.rules[0].sessionPersistence.type", "not supported: session persistence of type 'Header' "
                                                        "(Cookie only)")]


def test_a_target_a_reload_adds_ramps_and_the_others_do_not() -> None:
    from fastgw.runtime import compile_runtime

    cfg = yaml.safe_load(config())
    cfg["upstreams"]["u"]["slow_start"] = {"window": "1h"}
    rt = compile_runtime(loads_config(yaml.safe_dump(cfg), "yaml", file="c.yaml"))
    assert rt.groups["u"].slow_start.n_ramping == 0          # present at start-up: full weight
    cfg["upstreams"]["u"]["targets"].append({"address": "127.0.0.1:2"})
    rt2 = compile_runtime(loads_config(yaml.safe_dump(cfg), "yaml", file="c.yaml"), rt)
    ss = rt2.groups["u"].slow_start
    assert ss.describe(0) is None
    assert ss.describe(1)["weight_percent"] == 10
    picks = [rt2.groups["u"].pick_for_test() for _ in range(1100)]
    assert picks.count("127.0.0.1:2") == 100              # weights 100 : 10, round robin: exact
