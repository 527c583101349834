"""Gateway API front end: manifests -> native config, unsupported fields, `fastgw convert`."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml

import fastgw.config
from fastgw.cli import main
from fastgw.config import ConfigError
from fastgw.gatewayapi import config_to_dict, config_to_yaml, load_manifests, manifests_to_native
from fastgw.sources import load_config, loads_config

GW = "gateway.networking.k8s.io/v1"


def gateway(name: str = "gw", listeners: list[dict[str, Any]] | None = None, ns: str | None = None,
            **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    listeners = listeners if listeners is not None else [{"name": "http", "port": 80, "protocol": "HTTP"}]
    return {"apiVersion": GW, "kind": "Gateway", "metadata": meta,
            "spec": {"gatewayClassName": "fastgw", "listeners": listeners, **spec}}


def route(name: str = "r", rules: list[dict[str, Any]] | None = None, parents: list[dict[str, Any]] | None = None,
          ts: str | None = None, ns: str | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ts:
        meta["creationTimestamp"] = ts
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": GW, "kind": "HTTPRoute", "metadata": meta,
            "spec": {"parentRefs": parents or [{"name": "gw"}],
                     "rules": rules if rules is not None else [{"backendRefs": [{"name": "svc", "port": 8080}]}],
                     **spec}}


def service(name: str = "svc", ports: list[dict[str, Any]] | None = None, ns: str | None = None,
            **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"ports": ports or [{"name": "http", "port": 8080, "targetPort": 9000}], **spec}}


def slice_(svc: str = "svc", addresses: tuple[str, ...] = ("10.0.0.1",), port: int = 9000,
           port_name: str | None = "http", ready: bool | None = True, name: str | None = None,
           ns: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name or f"{svc}-x", "labels": {"kubernetes.io/service-name": svc}}
    if ns:
        meta["namespace"] = ns
    p: dict[str, Any] = {"port": port}
    if port_name is not None:
        p["name"] = port_name
    ep: dict[str, Any] = {"addresses": list(addresses)}
    if ready is not None:
        ep["conditions"] = {"ready": ready}
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta,
            "addressType": "IPv4", "ports": [p], "endpoints": [ep]}


def dump(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False)


def native(*docs: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return manifests_to_native(dump(*docs), "m.yaml", **kw)


def base(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [gateway(), service(), slice_(), *extra]


def issues(text: str) -> list[tuple[str, str, int | None]]:
    with pytest.raises(ConfigError) as exc:
        load_manifests(text, "m.yaml")
    return [(i.path, i.message, i.line) for i in exc.value.errors]


def only_route(*docs: dict[str, Any]) -> dict[str, Any]:
    routes = native(*docs)["routes"]
    assert len(routes) == 1
    return routes[0]


# -- listeners -------------------------------------------------------------------------------------


def test_listeners_names_addresses_hostnames() -> None:
    n = native(gateway(listeners=[
        {"name": "http", "port": 80, "protocol": "HTTP"},
        {"name": "foo", "port": 80, "protocol": "HTTP", "hostname": "*.foo.com"},
        {"name": "alt", "port": 8080, "protocol": "HTTP", "hostname": "bar.com"},
    ]), service(), slice_(), route())
    assert n["listeners"] == [
        {"name": "gw.http", "address": "0.0.0.0:80"},
        {"name": "gw.foo", "address": "0.0.0.0:80", "hostname": "*.foo.com"},
        {"name": "gw.alt", "address": "0.0.0.0:8080", "hostname": "bar.com"},
    ]
    assert n["routes"][0]["listeners"] == ["gw.http", "gw.foo", "gw.alt"]


def test_bind_host_and_port_map() -> None:
    docs = [gateway("a"), gateway("b", listeners=[{"name": "h", "port": 80, "protocol": "HTTP"},
                                                  {"name": "i", "port": 81, "protocol": "HTTP"}])]
    n = native(*docs, host="127.0.0.1", port_map={("b", 80): 9001, 81: 9002, 80: 9000})
    assert [lst["address"] for lst in n["listeners"]] == ["127.0.0.1:9000", "127.0.0.1:9001", "127.0.0.1:9002"]
    n = native(gateway(addresses=[{"type": "IPAddress", "value": "::1"}]), port_map={80: 8080})
    assert n["listeners"][0]["address"] == "[::1]:8080"


def test_several_gateways_on_one_port_with_hostnames() -> None:
    n = native(gateway("a", listeners=[{"name": "l", "port": 80, "protocol": "HTTP", "hostname": "a.com"}]),
               gateway("b", listeners=[{"name": "l", "port": 80, "protocol": "HTTP", "hostname": "b.com"}]))
    assert [(x["name"], x["address"], x["hostname"]) for x in n["listeners"]] == [
        ("a.l", "0.0.0.0:80", "a.com"), ("b.l", "0.0.0.0:80", "b.com")]


def test_same_gateway_name_in_two_namespaces_is_qualified() -> None:
    n = native(gateway(ns="x"), gateway(ns="y", listeners=[{"name": "http", "port": 81, "protocol": "HTTP"}]))
    assert [x["name"] for x in n["listeners"]] == ["x.gw.http", "y.gw.http"]


def test_duplicate_listener_reported_at_the_manifest() -> None:
    text = dump(gateway(listeners=[{"name": "a", "port": 80, "protocol": "HTTP"},
                                   {"name": "b", "port": 80, "protocol": "HTTP"}]))
    [(path, message, line)] = issues(text)
    assert path == "$[0].spec.listeners[1].port"
    assert "duplicate listener address" in message and "native config: $.listeners[1].address" in message
    assert line == text.splitlines().index("  - name: b") + 2


# -- parentRefs ------------------------------------------------------------------------------------

LISTENERS = [{"name": "l80", "port": 80, "protocol": "HTTP"},
             {"name": "l8080a", "port": 8080, "protocol": "HTTP", "hostname": "a.com"},
             {"name": "l8080b", "port": 8080, "protocol": "HTTP", "hostname": "b.com"}]


@pytest.mark.parametrize(("ref", "expected"), [
    ({"name": "gw"}, ["gw.l80", "gw.l8080a", "gw.l8080b"]),
    ({"name": "gw", "sectionName": "l8080b"}, ["gw.l8080b"]),
    ({"name": "gw", "port": 8080}, ["gw.l8080a", "gw.l8080b"]),
    ({"name": "gw", "port": 8080, "sectionName": "l80"}, []),
])
def test_parent_refs_section_name_and_port(ref: dict[str, Any], expected: list[str]) -> None:
    n = native(gateway(listeners=LISTENERS), service(), slice_(), route(parents=[ref]))
    assert [r["listeners"] for r in n["routes"]] == ([expected] if expected else [])


def test_route_attaches_only_to_listeners_whose_hostname_intersects() -> None:
    listeners = [{"name": "exact", "port": 80, "protocol": "HTTP", "hostname": "very.specific.com"},
                 {"name": "wild", "port": 80, "protocol": "HTTP", "hostname": "*.wildcard.io"},
                 {"name": "any", "port": 81, "protocol": "HTTP"}]

    def attached(hostnames: list[str]) -> list[str]:
        routes = native(gateway(listeners=listeners), service(), slice_(), route(hostnames=hostnames))["routes"]
        return routes[0]["listeners"] if routes else []

    assert attached(["very.specific.com"]) == ["gw.exact", "gw.any"]
    assert attached(["*.specific.com"]) == ["gw.exact", "gw.any"]
    assert attached(["foo.wildcard.io"]) == ["gw.wild", "gw.any"]
    assert attached(["*.wildcard.io"]) == ["gw.wild", "gw.any"]
    assert attached(["*.foo.wildcard.io"]) == ["gw.wild", "gw.any"]
    assert attached(["wildcard.io"]) == ["gw.any"]


def test_route_hostnames_are_copied_to_every_match() -> None:
    r = only_route(*base(route(hostnames=["A.example.com", "*.b.com"],
                               rules=[{"matches": [{"path": {"value": "/x"}}, {"method": "GET"}]}])))
    assert [m["hosts"] for m in r["matches"]] == [["a.example.com", "*.b.com"]] * 2


def test_unknown_gateway_is_an_error() -> None:
    [(path, message, _)] = issues(dump(gateway(), route(parents=[{"name": "nope"}])))
    assert path == "$[1].spec.parentRefs[0].name" and "no Gateway default/nope" in message


def test_allowed_routes_same_namespace_by_default() -> None:
    n = native(gateway(ns="infra"), service(ns="apps"), slice_(ns="apps"),
               route(ns="apps", parents=[{"name": "gw", "namespace": "infra"}]))
    assert n["routes"] == []
    listeners = [{"name": "http", "port": 80, "protocol": "HTTP",
                  "allowedRoutes": {"namespaces": {"from": "All"}}}]
    n = native(gateway(ns="infra", listeners=listeners), service(ns="apps"), slice_(ns="apps"),
               route(ns="apps", parents=[{"name": "gw", "namespace": "infra"}]))
    assert n["routes"][0]["listeners"] == ["gw.http"]
    assert n["routes"][0]["backends"] == [{"upstream": "apps.svc.8080"}]


# -- matches ---------------------------------------------------------------------------------------


def test_matches() -> None:
    r = only_route(*base(route(rules=[{"matches": [
        {"path": {"type": "Exact", "value": "/exact"}, "method": "POST"},
        {"path": {"type": "PathPrefix", "value": "/p"},
         "headers": [{"name": "Version", "value": "2"}, {"type": "RegularExpression", "name": "X", "value": "a.*"},
                     {"name": "version", "value": "ignored: a second condition on one name"}],
         "queryParams": [{"name": "q", "value": "1"}, {"type": "RegularExpression", "name": "r", "value": "[0-9]+"}]},
        {"path": {"type": "RegularExpression", "value": "/re/[a-z]+"}},
        {"headers": [{"name": "h", "value": "v"}]},
    ], "backendRefs": [{"name": "svc", "port": 8080}]}])))
    assert r["matches"] == [
        {"path": {"exact": "/exact"}, "methods": ["POST"]},
        {"path": {"prefix": "/p"}, "headers": [{"name": "Version", "value": "2"}, {"name": "X", "regex": "a.*"}],
         "query": [{"name": "q", "value": "1"}, {"name": "r", "regex": "[0-9]+"}]},
        {"path": {"regex": "/re/[a-z]+"}},
        {"path": {"prefix": "/"}, "headers": [{"name": "h", "value": "v"}]},
    ]


def test_rule_without_matches_matches_everything() -> None:
    r = only_route(*base(route()))
    assert r["matches"] == [{"path": {"prefix": "/"}}]
    assert r["name"] == "r.r0"


# -- filters ---------------------------------------------------------------------------------------


def test_header_modifiers() -> None:
    mod = {"set": [{"name": "X-Set", "value": "s"}], "add": [{"name": "X-Add", "value": "a"}], "remove": ["X-Rm"]}
    r = only_route(*base(route(rules=[{"filters": [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": mod},
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "X-R", "value": "1"}]}},
    ], "backendRefs": [{"name": "svc", "port": 8080}]}])))
    assert r["filters"] == {
        "request_headers": {"set": {"X-Set": "s"}, "add": {"X-Add": "a"}, "remove": ["X-Rm"]},
        "response_headers": {"add": {"X-R": "1"}},
    }


def test_redirect() -> None:
    n = native(*base(route(rules=[
        {"matches": [{"path": {"value": "/a"}}], "filters": [{"type": "RequestRedirect", "requestRedirect": {
            "scheme": "https", "hostname": "example.org", "port": 8443, "statusCode": 301,
            "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}]},
        {"filters": [{"type": "RequestRedirect", "requestRedirect": {
            "path": {"type": "ReplaceFullPath", "replaceFullPath": "/full"}}}]},
    ])))
    r0, r1 = n["routes"]
    assert r0["filters"]["redirect"] == {"scheme": "https", "hostname": "example.org", "port": 8443, "status": 301,
                                         "path": {"prefix": "/b"}}
    assert "backends" not in r0
    assert r1["filters"]["redirect"] == {"path": {"full": "/full"}}
    cfg = load_manifests(dump(*base(route(rules=[{"filters": [
        {"type": "RequestRedirect", "requestRedirect": {"hostname": "x.org"}}]}]))))
    assert cfg.routes[0].filters.redirect.status == 302


def test_redirect_with_backend_refs_is_an_error() -> None:
    msgs = issues(dump(*base(route(rules=[{"filters": [
        {"type": "RequestRedirect", "requestRedirect": {"hostname": "x.org"}}],
        "backendRefs": [{"name": "svc", "port": 8080}]}]))))
    assert [(p, m) for p, m, _ in msgs] == [
        ("$[3].spec.rules[0].backendRefs", "a RequestRedirect filter must not be used together with backendRefs")]


def test_rewrite() -> None:
    r = only_route(*base(route(rules=[{"matches": [{"path": {"value": "/p"}}], "filters": [
        {"type": "URLRewrite", "urlRewrite": {"hostname": "h.org",
                                              "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
        "backendRefs": [{"name": "svc", "port": 8080}]}])))
    assert r["filters"] == {"rewrite": {"hostname": "h.org", "path": {"prefix": "/"}}}


def test_rewrite_prefix_needs_prefix_matches_reported_at_the_filter() -> None:
    text = dump(*base(route(rules=[{"matches": [{"path": {"type": "Exact", "value": "/p"}}], "filters": [
        {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
        "backendRefs": [{"name": "svc", "port": 8080}]}])))
    [(path, message, line)] = issues(text)
    assert path == "$[3].spec.rules[0].filters[0].urlRewrite"
    assert "path prefix" in message and line is not None


@pytest.mark.parametrize(("spec", "percent"), [
    ({}, 100.0), ({"percent": 25}, 25.0), ({"fraction": {"numerator": 1, "denominator": 8}}, 12.5),
    ({"fraction": {"numerator": 5}}, 5.0),
])
def test_mirror(spec: dict[str, Any], percent: float) -> None:
    r = only_route(*base(service("shadow"), slice_("shadow", ("10.0.0.9",)), route(rules=[{"filters": [
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow", "port": 8080}, **spec}}],
        "backendRefs": [{"name": "svc", "port": 8080}]}])))
    assert r["filters"] == {"mirror": {"upstream": "default.shadow.8080", "percent": percent}}


def test_mirror_to_a_missing_service_is_an_error() -> None:
    [(path, message, _)] = issues(dump(*base(route(rules=[{"filters": [
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "nope", "port": 8080}}}]}]))))
    assert path == "$[3].spec.rules[0].filters[0].requestMirror.backendRef"
    assert "cannot be resolved" in message


# -- backends --------------------------------------------------------------------------------------


def test_backend_refs_weights_and_backend_filters() -> None:
    r = only_route(*base(service("b2"), slice_("b2", ("10.0.0.2",)), route(rules=[{"backendRefs": [
        {"name": "svc", "port": 8080, "weight": 70},
        {"name": "b2", "port": 8080, "weight": 0, "filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "B", "value": "2"}]}},
            {"type": "URLRewrite", "urlRewrite": {"hostname": "b2.internal"}}]},
    ]}])))
    assert r["backends"] == [
        {"upstream": "default.svc.8080", "weight": 70},
        {"upstream": "default.b2.8080", "weight": 0,
         "filters": {"request_headers": {"set": {"B": "2"}}, "rewrite": {"hostname": "b2.internal"}}},
    ]


def test_unresolvable_backends_answer_500() -> None:
    r = only_route(*base(service("other", ns="elsewhere"), route(rules=[{"backendRefs": [
        {"name": "missing", "port": 8080},
        {"group": "unknownkind.example.com", "kind": "NonExistent", "name": "svc", "port": 8080},
        {"name": "svc", "port": 9999},
        {"name": "other", "namespace": "elsewhere", "port": 8080},
    ]}])))
    assert r["backends"] == [{"upstream": None}] * 4
    cfg = load_manifests(dump(*base(route(rules=[{"backendRefs": [{"name": "missing", "port": 8080}]}]))))
    assert cfg.routes[0].backends[0].upstream is None


def test_no_backend_refs_gives_empty_backends() -> None:
    n = native(*base(route(rules=[{"matches": [{"path": {"value": "/a"}}]},
                                  {"matches": [{"path": {"value": "/b"}}], "backendRefs": []}])))
    assert [r["backends"] for r in n["routes"]] == [[], []]


def test_service_port_without_port_is_an_error() -> None:
    [(path, message, _)] = issues(dump(*base(route(rules=[{"backendRefs": [{"name": "svc"}]}]))))
    assert path == "$[3].spec.rules[0].backendRefs[0]" and "port" in message


# -- Service -> EndpointSlice ----------------------------------------------------------------------


def test_endpoint_slices_by_port_name_ready_only() -> None:
    svc = service(ports=[{"name": "http", "port": 8080, "targetPort": "web"},
                         {"name": "admin", "port": 9090, "targetPort": 9091}])
    s1 = {**slice_(addresses=("10.0.0.1", "10.0.0.2")), "ports": [{"name": "http", "port": 3000},
                                                                    {"name": "admin", "port": 9091}]}
    s2 = slice_(addresses=("10.0.0.3",), port=3000, ready=False, name="svc-y")
    s3 = slice_(addresses=("fd00::1",), port=3000, ready=None, name="svc-z")
    n = native(gateway(), svc, s1, s2, s3, route(rules=[{"backendRefs": [{"name": "svc", "port": 8080},
                                                                        {"name": "svc", "port": 9090}]}]))
    assert n["upstreams"] == {
        "default.svc.8080": {"targets": [{"address": "10.0.0.1:3000"}, {"address": "10.0.0.2:3000"},
                                         {"address": "[fd00::1]:3000"}]},
        "default.svc.9090": {"targets": [{"address": "10.0.0.1:9091"}, {"address": "10.0.0.2:9091"}]},
    }


def test_unnamed_port_and_numeric_target_port() -> None:
    svc = service(ports=[{"port": 80, "targetPort": 8000}])
    n = native(gateway(), svc, slice_(port=8000, port_name=None),
               route(rules=[{"backendRefs": [{"name": "svc", "port": 80}]}]))
    assert n["upstreams"]["default.svc.80"] == {"targets": [{"address": "10.0.0.1:8000"}]}


def test_no_endpoints_means_no_targets() -> None:
    n = native(gateway(), service(), route())
    assert n["upstreams"] == {"default.svc.8080": {"targets": []}}
    n = native(gateway(), service(), slice_(ready=False), route())
    assert n["upstreams"] == {"default.svc.8080": {"targets": []}}


def test_external_name_service() -> None:
    svc = service(ports=[{"port": 8080}], type="ExternalName", externalName="api.example.com")
    n = native(gateway(), svc, route())
    assert n["upstreams"] == {"default.svc.8080": {"targets": [{"address": "api.example.com:8080"}]}}


# -- ordering --------------------------------------------------------------------------------------


def test_routes_sorted_by_creation_timestamp_then_namespace_name_then_rule() -> None:
    two_rules = [{"matches": [{"path": {"value": "/1"}}]}, {"matches": [{"path": {"value": "/2"}}]}]
    n = native(gateway(), service(), slice_(),
               route("zeta", two_rules, ts="2024-01-01T00:00:00Z"),
               route("beta", two_rules, ts="2024-06-01T00:00:00Z"),
               route("alpha", two_rules, ts="2024-06-01T00:00:00Z"),
               route("late", two_rules),
               route("early", two_rules, ts="2023-01-01T00:00:00+00:00"))
    assert [r["name"] for r in n["routes"]] == [
        "early.r0", "early.r1", "zeta.r0", "zeta.r1", "alpha.r0", "alpha.r1", "beta.r0", "beta.r1",
        "late.r0", "late.r1"]


# -- unsupported and invalid input -----------------------------------------------------------------

UNSUPPORTED = textwrap.dedent("""\
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata:
      name: gw
    spec:
      gatewayClassName: fastgw
      listeners:
      - name: http
        port: 80
        protocol: HTTP
      - name: https
        port: 443
        protocol: HTTPS
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata:
      name: r
    spec:
      parentRefs:
      - name: gw
      rules:
      - timeouts:
          request: 10s
        sessionPersistence:
          sessionName: s
          idleTimeout: 1h
        filters:
        - type: ExtensionRef
          extensionRef: {group: example.com, kind: Foo, name: bar}
        - type: ExternalAuth
          externalAuth: {protocol: GRPC, backendRef: {name: svc, port: 8080}}
        - type: RequestMirror
          requestMirror: {backendRef: {name: svc, port: 8080}}
        - type: RequestMirror
          requestMirror: {backendRef: {name: svc, port: 8080}}
        - type: Bogus
        retry: {attempts: 2}
        backendRefs:
        - name: svc
          port: 8080
          colour: blue
    ---
    apiVersion: v1
    kind: Pod
    metadata:
      name: cm
    ---
    apiVersion: v1
    kind: Service
    metadata:
      name: svc
    spec:
      ports:
      - port: 8080
    """)


def test_unsupported_fields_are_reported_with_path_and_line() -> None:
    lines = UNSUPPORTED.splitlines()

    def line_of(text: str, after: int = 0) -> int:
        return next(i for i, line in enumerate(lines) if i >= after and line.strip().startswith(text)) + 1

    got = issues(UNSUPPORTED)
    assert got == [
        ("$[0].spec.listeners[1]", "an HTTPS listener needs tls.certificateRefs", line_of("- name: https")),
        ("$[1].spec.rules[0].sessionPersistence.idleTimeout",
         "not supported: idleTimeout (the cookie is not renewed on use)", line_of("idleTimeout")),
        ("$[1].spec.rules[0].filters[0].type", "not supported: ExtensionRef filters", line_of("- type: ExtensionRef")),
        ("$[1].spec.rules[0].filters[1].externalAuth.protocol", "not supported: protocol GRPC (fastgw's "
         "external_auth speaks HTTP to the auth service; use protocol HTTP)", line_of("externalAuth:")),
        ("$[1].spec.rules[0].filters[3].type", "not supported: more than one RequestMirror filter",
         line_of("- type: RequestMirror", line_of("- type: RequestMirror"))),
        ("$[1].spec.rules[0].filters[4].type",
         "unknown filter type 'Bogus' (expected one of: RequestHeaderModifier, ResponseHeaderModifier, "
         "RequestRedirect, URLRewrite, RequestMirror, CORS, ExternalAuth, ExtensionRef)", line_of("- type: Bogus")),
        ("$[1].spec.rules[0].backendRefs[0].colour",
         "unknown field (expected one of: group, kind, name, namespace, port, weight, filters)", line_of("colour")),
        ("$[2].kind", "unsupported kind 'Pod' (v1); supported: Gateway, HTTPRoute "
         "(gateway.networking.k8s.io/v1 or v1beta1), GRPCRoute (gateway.networking.k8s.io/v1), TCPRoute, "
         "TLSRoute, Service (v1), EndpointSlice "
         "(discovery.k8s.io/v1), Secret (v1, kubernetes.io/tls), ConfigMap (v1), BackendTLSPolicy "
         "(gateway.networking.k8s.io/v1), BackendTrafficPolicy (gateway.envoyproxy.io/v1alpha1, its rateLimit), "
         "BackendLBPolicy (gateway.networking.k8s.io/v1alpha2)", line_of("kind: Pod")),
    ]


def test_v1beta1_accepted_and_other_versions_reported() -> None:
    docs = base(route())
    docs[0]["apiVersion"] = "gateway.networking.k8s.io/v1beta1"
    assert native(*docs)["listeners"][0]["name"] == "gw.http"
    docs[0]["apiVersion"] = "gateway.networking.k8s.io/v1alpha9"
    (path, message, line), *_ = issues(dump(*docs))
    assert path == "$[0].apiVersion" and "unsupported apiVersion" in message and line == 1


def test_list_kind_items_are_flattened() -> None:
    text = dump({"apiVersion": "v1", "kind": "List", "items": base(route())})
    assert load_manifests(text).listeners[0].name == "gw.http"


def test_invalid_yaml_and_duplicate_objects() -> None:
    [(path, message, line)] = issues("apiVersion: v1\nkind: Service\nmetadata: {name: [\n")
    assert path == "$" and message.startswith("invalid YAML") and line is not None
    got = issues(dump(gateway(), gateway()))
    assert got[0][:2] == ("$[1].metadata.name", "duplicate Gateway 'default/gw' (first in document 0)")


# -- hooks: load_config, fastgw check / convert ----------------------------------------------------


def test_load_config_routes_manifests_to_the_front_end(tmp_path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(dump(*base(route())))
    cfg = load_config(path)
    assert cfg.listeners[0].name == "gw.http"
    assert loads_config(dump(*base(route())), "yaml") == cfg
    assert loads_config(dump(*base(route())), None) == cfg
    assert loads_config(dump(*base(route())), "manifests") == cfg
    # fastgw.server still loads through fastgw.config's names, which hand over to fastgw.sources.
    assert fastgw.config.load_config(path) == cfg
    assert fastgw.config.loads_config(dump(*base(route())), "yaml") == cfg
    assert main(["check", str(path)]) == 0


def test_yaml_syntax_error_in_manifests_points_at_the_unclosed_opener() -> None:
    text = "apiVersion: v1\nkind: Service\nmetadata: {name: svc\nspec: {}\n"
    got = issues(text)
    assert got == [("$", "invalid YAML: while parsing a flow mapping; expected ',' or '}', but got ':'", 3)]


def test_native_yaml_is_not_mistaken_for_manifests() -> None:
    cfg = loads_config("listeners:\n  - address: 127.0.0.1:0\n", "yaml")
    assert cfg.listeners[0].address == "127.0.0.1:0"


def test_check_reports_manifest_errors(tmp_path, capsys) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(UNSUPPORTED)
    assert main(["check", str(path)]) == 1
    assert f"{path}:11: $[0].spec.listeners[1]: an HTTPS listener needs" in capsys.readouterr().err


def test_convert_round_trip(tmp_path, capsys) -> None:
    docs = base(service("b2"), slice_("b2", ("10.0.0.2",)), route(hostnames=["*.example.com"], rules=[
        {"matches": [{"path": {"value": "/api"}, "headers": [{"name": "v", "value": "2"}]}],
         "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["Server"]}}],
         "backendRefs": [{"name": "svc", "port": 8080, "weight": 3}, {"name": "b2", "port": 8080},
                         {"name": "gone", "port": 1}]},
        {"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]},
    ]))
    path = tmp_path / "gw.yaml"
    path.write_text(dump(*docs))
    assert main(["convert", str(path)]) == 0
    out = capsys.readouterr().out
    converted = tmp_path / "native.yaml"
    converted.write_text(out)
    assert load_config(converted) == load_config(path)
    assert "upstream: null" in out
    # Converting a native config prints it back (defaults left out).
    assert main(["convert", str(converted)]) == 0
    assert capsys.readouterr().out == out
    # --bind and --port-map
    assert main(["convert", str(path), "--bind", "127.0.0.1", "--port-map", "80=8080"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["listeners"][0]["address"] == "127.0.0.1:8080"


def test_config_to_dict_leaves_defaults_out() -> None:
    cfg = loads_config("listeners:\n  - address: 127.0.0.1:0\n", "yaml")
    assert config_to_dict(cfg) == {"listeners": [{"address": "127.0.0.1:0"}]}
    assert yaml.safe_load(config_to_yaml(cfg)) == {"listeners": [{"address": "127.0.0.1:0"}]}


def test_native_decode_and_semantic_errors_are_reported_together() -> None:
    docs = base(route(rules=[
        {"filters": [{"type": "RequestHeaderModifier",
                      "requestHeaderModifier": {"set": [{"name": "bad name", "value": "x"}]}}],
         "backendRefs": [{"name": "svc", "port": 8080}]},
        {"matches": [{"path": {"type": "Exact", "value": "/x"}}],
         "filters": [{"type": "URLRewrite",
                      "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/y"}}}],
         "backendRefs": [{"name": "svc", "port": 8080}]},
    ]))
    assert [(path, message.split(" (native config: ")[0]) for path, message, _ in issues(dump(*docs))] == [
        ("$[3].spec.rules[0].filters[0].requestHeaderModifier.set[0].name",
         'invalid key: expected `str` matching regex "^[!#$%&\'*+.^_`|~0-9A-Za-z-]+$"'),
        ("$[3].spec.rules[1].filters[0].urlRewrite",
         "replacing the matched prefix needs every match of the route to be a path prefix"),
    ]


def test_bad_hostname_reported_at_its_list_item_once():
    """(From review 2: a bad spec.hostnames item is reported once, at the item.)"""
    # A bad spec.hostnames[1] is reported at `$[3].spec.hostnames` (not the item), and once per
    # rule and match, since the hostnames are copied into every native match.
    text = dump(*base(route(hostnames=["ok.example.com", "bad host"], rules=[
        {"matches": [{"path": {"value": "/a"}}, {"path": {"value": "/b"}}],
         "backendRefs": [{"name": "svc", "port": 8080}]},
        {"backendRefs": [{"name": "svc", "port": 8080}]},
    ])))
    with pytest.raises(ConfigError) as exc:
        load_manifests(text, "m.yaml")
    got = [(i.path, i.line) for i in exc.value.errors]
    assert len(got) == 1, got
    assert got[0][0] == "$[3].spec.hostnames[1]", got


# -- CORS (docs/cors.md) ---------------------------------------------------------------------------


def test_cors_filter_becomes_the_routes_cors_policy() -> None:
    cors = {"allowOrigins": ["https://www.foo.com", "https://*.bar.com"], "allowMethods": ["GET", "OPTIONS"],
            "allowHeaders": ["x-a"], "exposeHeaders": ["x-b"], "allowCredentials": True, "maxAge": 3600}
    r = only_route(*base(route(rules=[{"filters": [{"type": "CORS", "cors": cors}],
                                       "backendRefs": [{"name": "svc", "port": 8080}]}])))
    assert r["policies"] == [{"type": "cors", "allow_origins": ["https://www.foo.com", "https://*.bar.com"],
                              "allow_methods": ["GET", "OPTIONS"], "allow_headers": ["x-a"],
                              "expose_headers": ["x-b"], "allow_credentials": True, "max_age": 3600}]
    assert "filters" not in r or "cors" not in r["filters"]


def test_cors_wildcard_origin_with_credentials_is_the_explicit_echo() -> None:
    cors = {"allowOrigins": ["*"], "allowCredentials": True}
    r = only_route(*base(route(rules=[{"filters": [{"type": "CORS", "cors": cors}],
                                       "backendRefs": [{"name": "svc", "port": 8080}]}])))
    assert r["policies"] == [{"type": "cors", "allow_origin_regex": [".*"], "allow_credentials": True}]


def test_cors_problems_point_at_the_manifest() -> None:
    text = dump(*base(route(rules=[{"filters": [{"type": "CORS", "cors": {"allowOrigins": ["ftp://x"]}}],
                                    "backendRefs": [{"name": "svc", "port": 8080,
                                                     "filters": [{"type": "CORS", "cors": {}}]}]}])))
    got = [(p, m) for p, m, _ in issues(text)]
    assert ("$[3].spec.rules[0].backendRefs[0].filters[0].type", "not supported: a CORS filter on a backendRef") in got
    text = dump(*base(route(rules=[{"filters": [{"type": "CORS", "cors": {"allowOrigins": ["ftp://x"]}}],
                                    "backendRefs": [{"name": "svc", "port": 8080}]}])))
    got = [(p, m) for p, m, _ in issues(text)]
    assert any(p == "$[3].spec.rules[0].filters[0].cors.allowOrigins[0]" and "not an origin" in m for p, m in got), got


# -- ExternalAuth (GEP-1494; docs/gateway-api.md) --------------------------------------------------


def _auth_docs(spec: dict[str, Any], **rule: Any) -> list[dict[str, Any]]:
    return [*base(route(rules=[{"filters": [{"type": "ExternalAuth", "externalAuth": spec}],
                                "backendRefs": [{"name": "svc", "port": 8080}], **rule}])),
            service("authz", [{"name": "http", "port": 9001, "targetPort": 7000}]),
            slice_("authz", ("10.0.0.9", "10.0.0.10"), port=7000)]


def test_external_auth_filter_becomes_the_routes_external_auth_policy() -> None:
    spec = {"protocol": "HTTP", "backendRef": {"name": "authz", "port": 9001},
            "http": {"path": "/verify/", "allowedHeaders": ["Cookie", "X-Tenant"],
                     "allowedResponseHeaders": ["X-User"]}, "forwardBody": {"maxSize": 0}}
    r = only_route(*_auth_docs(spec))
    assert r["policies"] == [{"type": "external_auth", "url": "http://10.0.0.9:7000/verify", "client_headers": ["*"],
                              "request_headers": ["Cookie", "X-Tenant"], "upstream_headers": ["X-User"]}]
    assert "filters" not in r
    # empty lists: every header goes (Gateway API), which the native policy writes as ["*"]
    r = only_route(*_auth_docs({"protocol": "HTTP", "backendRef": {"name": "authz", "port": 9001}}))
    assert r["policies"] == [{"type": "external_auth", "url": "http://10.0.0.9:7000", "client_headers": ["*"],
                              "request_headers": ["*"], "upstream_headers": ["*"]}]
    load_manifests(dump(*_auth_docs(spec)), "m.yaml")        # and the native config checks
    assert list(native(*_auth_docs(spec))["upstreams"]) == ["default.svc.8080"]   # none for the auth service


@pytest.mark.parametrize("ref,status", [({"name": "nothere", "port": 9001}, 500), ({"name": "authz", "port": 1}, 500),
                                        ({"name": "authz", "port": 9001, "namespace": "other"}, 500)])
def test_external_auth_to_a_backend_that_does_not_resolve_fails_closed(ref: dict[str, Any], status: int) -> None:
    r = only_route(*_auth_docs({"protocol": "HTTP", "backendRef": ref}))
    assert [(p["type"], p["status"]) for p in r["policies"]] == [("respond", status)]
    docs = _auth_docs({"protocol": "HTTP", "backendRef": {"name": "authz", "port": 9001}})
    docs[-1]["endpoints"][0]["conditions"]["ready"] = False
    assert [(p["type"], p["status"]) for p in only_route(*docs)["policies"]] == [("respond", 503)]
    load_manifests(dump(*docs), "m.yaml")


def test_external_auth_after_cors_on_the_same_rule() -> None:
    docs = _auth_docs({"protocol": "HTTP", "backendRef": {"name": "authz", "port": 9001}})
    docs[3]["spec"]["rules"][0]["filters"].insert(0, {"type": "CORS", "cors": {"allowOrigins": ["https://a.example"]}})
    r = only_route(*docs)
    assert [p["type"] for p in r["policies"]] == ["cors", "external_auth"]


@pytest.mark.parametrize("spec,path,message", [
    ({"protocol": "GRPC", "backendRef": {"name": "authz", "port": 9001}}, "externalAuth.protocol",
     "not supported: protocol GRPC"),
    ({"protocol": "SOAP", "backendRef": {"name": "authz", "port": 9001}}, "externalAuth.protocol",
     "expected HTTP or GRPC"),
    ({"protocol": "HTTP", "backendRef": {"name": "authz", "port": 9001}, "forwardBody": {"maxSize": 1024}},
     "externalAuth.forwardBody.maxSize", "not supported: forwarding the request body"),
    ({"protocol": "HTTP", "backendRef": {"name": "authz", "port": 9001}, "http": {"colour": 1}},
     "externalAuth.http.colour", "unknown field"),
    ({"protocol": "HTTP"}, "externalAuth", "missing required field 'backendRef'"),
])
def test_external_auth_problems_point_at_the_manifest(spec: dict[str, Any], path: str, message: str) -> None:
    got = issues(dump(*_auth_docs(spec)))
    assert any(p == f"$[3].spec.rules[0].filters[0].{path}" and message in m for p, m, _ in got), got


def test_external_auth_on_a_backend_ref_is_refused() -> None:
    docs = _auth_docs({"protocol": "HTTP", "backendRef": {"name": "authz", "port": 9001}})
    rule = docs[3]["spec"]["rules"][0]
    rule["backendRefs"][0]["filters"] = rule.pop("filters")
    got = [(p, m) for p, m, _ in issues(dump(*docs))]
    assert ("$[3].spec.rules[0].backendRefs[0].filters[0].type",
            "not supported: an ExternalAuth filter on a backendRef") in got
