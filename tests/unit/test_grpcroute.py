"""GRPCRoute (manifests) and the native `match.grpc`: service and method compiled into the path match,
GRPCRoute backends and `appProtocol: kubernetes.io/h2c` ports reached over h2c; checked with the real
request phase (`ClientConn.explain`)."""

from __future__ import annotations

import pytest

from fastgw import _core
from fastgw.config import ConfigError, load_config
from fastgw.gatewayapi import manifests_to_native
from fastgw.runtime import compile_runtime

MANIFESTS = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: fastgw
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: default}
spec:
  parentRefs: [{name: gw}]
  hostnames: [grpc.example.com]
  rules:
    - matches:
        - method: {service: pkg.Echo, method: Say}
          headers: [{name: version, value: one}]
      backendRefs: [{name: echo, port: 9000}]
    - matches: [{method: {service: pkg.Echo}}]
      backendRefs: [{name: plain, port: 80}]
    - matches: [{method: {type: RegularExpression, service: "other\\\\..*", method: "Get.*"}}]
      backendRefs: [{name: plain, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: h, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: echo, port: 9000}]}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec: {ports: [{port: 9000}]}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: default}
spec: {ports: [{port: 80, appProtocol: kubernetes.io/h2c}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, namespace: default, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{port: 9000}]
endpoints: [{addresses: [10.1.0.5]}]
"""


def test_grpcroute_backends_are_h2c_and_an_httproute_to_the_same_port_stays_http1():
    native = manifests_to_native(MANIFESTS)
    ups = native["upstreams"]
    assert ups["default.echo.9000.grpc"]["protocol"] == "h2c"
    assert "protocol" not in ups["default.echo.9000"]
    assert ups["default.plain.80"]["protocol"] == "h2c"       # appProtocol kubernetes.io/h2c
    g0 = next(r for r in native["routes"] if r["name"] == "g.r0")
    assert g0["matches"][0]["grpc"] == {"type": "Exact", "service": "pkg.Echo", "method": "Say"}
    assert "path" not in g0["matches"][0]


def explain(cfg, path: bytes, headers: bytes = b"", host: bytes = b"grpc.example.com") -> dict:
    rt = compile_runtime(cfg)
    worker = _core.Worker(None, rt)
    conn = _core.ClientConn(worker)
    raw = b"POST " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\ncontent-type: application/grpc\r\n" + headers + b"\r\n"
    return conn.explain(raw, 80, next(iter(rt.listener_routers)))


@pytest.fixture
def manifest_config(tmp_path):
    p = tmp_path / "gw.yaml"
    p.write_text(MANIFESTS)
    return load_config(p)


@pytest.mark.parametrize("path,headers,route", [
    (b"/pkg.Echo/Say", b"version: one\r\n", "g.r0"),
    (b"/pkg.Echo/Say", b"", "g.r1"),                  # the header condition fails: the service match
    (b"/pkg.Echo/Other", b"", "g.r1"),
    (b"/other.Svc/GetThing", b"", "g.r2"),
    (b"/other.Svc/PutThing", b"", "h.r0"),           # no GRPCRoute match: the HTTPRoute's prefix /
    (b"/pkg.EchoX/Say", b"", "h.r0"),                # service names are whole
])
def test_grpcroute_matches(manifest_config, path, headers, route):
    assert explain(manifest_config, path, headers)["route"] == route


def write(tmp_path, routes: str):
    p = tmp_path / "gw.yaml"
    p.write_text('listeners: [{address: "127.0.0.1:0"}]\n'
                 'upstreams: {u: {targets: [{address: "127.0.0.1:9"}], protocol: h2c}}\n'
                 "routes:\n" + routes)
    return p


def test_native_grpc_matches(tmp_path):
    cfg = load_config(write(tmp_path, """\
  - {name: exact, match: {grpc: {service: pkg.Svc, method: Say}}, upstream: u}
  - {name: service, match: {grpc: {service: pkg.Svc}}, upstream: u}
  - {name: method, match: {grpc: {method: Ping}}, upstream: u}
"""))
    assert explain(cfg, b"/pkg.Svc/Say", host=b"x")["route"] == "exact"
    assert explain(cfg, b"/pkg.Svc/Other", host=b"x")["route"] == "service"
    assert explain(cfg, b"/any.Svc/Ping", host=b"x")["route"] == "method"
    assert explain(cfg, b"/any.Svc/Pong", host=b"x")["status"] == 404


@pytest.mark.parametrize("match,needle", [
    ("{grpc: {service: a.B}, path: {prefix: /x}}", "give 'grpc' or 'path', not both"),
    ("{grpc: {service: a/B}}", "has no '/'"),
    ("{grpc: {service: a, type: Prefix}}", "invalid enum value"),
])
def test_native_grpc_match_errors(tmp_path, match, needle):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"  - {{name: r, match: {match}, upstream: u}}\n"))
    [issue] = info.value.errors
    assert issue.path.startswith("$.routes[0].match") and needle in issue.message, issue


# ---- precedence (Gateway API GRPCRoute: hostname, then service characters, then method characters,
# then the number of header matches; then creation time / name / rule order) --------------------------

def test_more_service_characters_beat_a_method_only_match(tmp_path):
    """A service-only match (7 service characters) beats a method-only one (0), whichever comes
    first, though the method-only one is a regex path and the other a prefix."""
    cfg = load_config(write(tmp_path, """\
  - {name: method, match: {grpc: {method: Say}}, upstream: u}
  - {name: service, match: {grpc: {service: pkg.Svc}}, upstream: u}
"""))
    assert explain(cfg, b"/pkg.Svc/Say", host=b"x")["route"] == "service"
    assert explain(cfg, b"/other.Svc/Say", host=b"x")["route"] == "method"
    assert explain(cfg, b"/pkg.Svc/Other", host=b"x")["route"] == "service"
    assert explain(cfg, b"/pkg.Svc/a/b", host=b"x")["status"] == 404       # not a gRPC path


def test_service_characters_of_regular_expressions(tmp_path):
    cfg = load_config(write(tmp_path, """\
  - {name: short, match: {grpc: {type: RegularExpression, service: "pkg\\\\..*"}}, upstream: u}
  - {name: exact, match: {grpc: {service: pkg.Svc}}, upstream: u}
  - {name: long, match: {grpc: {type: RegularExpression, service: "pkg\\\\.Sv[a-z]+"}}, upstream: u}
"""))
    # the patterns pkg\\.Sv[a-z]+ and pkg\\..* have 13 and 6 characters, pkg.Svc 7
    assert explain(cfg, b"/pkg.Svc/M", host=b"x")["route"] == "long"
    assert explain(cfg, b"/pkg.Svq/M", host=b"x")["route"] == "long"
    assert explain(cfg, b"/pkg.Other/M", host=b"x")["route"] == "short"


def test_then_method_characters(tmp_path):
    cfg = load_config(write(tmp_path, """\
  - {name: any, match: {grpc: {type: RegularExpression, service: "a\\\\.B", method: ".*"}}, upstream: u}
  - {name: get, match: {grpc: {type: RegularExpression, service: "a\\\\.B", method: "Get.*"}}, upstream: u}
  - {name: svc, match: {grpc: {service: a.B}}, upstream: u}
"""))
    assert explain(cfg, b"/a.B/GetThing", host=b"x")["route"] == "get"
    assert explain(cfg, b"/a.B/Put", host=b"x")["route"] == "any"       # 4 + 2 characters beat 3 + 0


def test_then_header_matches_then_order(tmp_path):
    cfg = load_config(write(tmp_path, """\
  - {name: first, match: {grpc: {service: a.B, method: M}}, upstream: u}
  - {name: one, match: {grpc: {service: a.B, method: M}, headers: [{name: x-a, value: "1"}]}, upstream: u}
  - {name: two, match: {grpc: {service: a.B, method: M}, headers: [{name: x-a, value: "1"}, {name: x-b, value: "2"}]},
     upstream: u}
  - {name: later, match: {grpc: {service: a.B, method: M}}, upstream: u}
"""))
    assert explain(cfg, b"/a.B/M", b"x-a: 1\r\nx-b: 2\r\n", host=b"x")["route"] == "two"
    assert explain(cfg, b"/a.B/M", b"x-a: 1\r\n", host=b"x")["route"] == "one"
    assert explain(cfg, b"/a.B/M", host=b"x")["route"] == "first"


def test_hostname_comes_before_service_and_method(tmp_path):
    cfg = load_config(write(tmp_path, """\
  - {name: anyhost, match: {grpc: {service: a.B, method: M}}, upstream: u}
  - {name: wild, match: {hosts: ["*.example.com"], grpc: {method: M}}, upstream: u}
  - {name: host, match: {hosts: [api.example.com], grpc: {type: RegularExpression, method: "M.*"}}, upstream: u}
"""))
    assert explain(cfg, b"/a.B/M", host=b"api.example.com")["route"] == "host"
    assert explain(cfg, b"/a.B/M", host=b"web.example.com")["route"] == "wild"
    assert explain(cfg, b"/a.B/M", host=b"other.org")["route"] == "anyhost"


PRECEDENCE_MANIFESTS = MANIFESTS.split("---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute")[0] + """\
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: a-method-only, namespace: default, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{method: {method: Say}}], backendRefs: [{name: echo, port: 9000}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: b-service, namespace: default, creationTimestamp: "2025-01-01T00:00:00Z"}
spec:
  parentRefs: [{name: gw}]
  rules:
    - matches: [{method: {service: pkg.Echo}}]
      backendRefs: [{name: echo, port: 9000}]
    - matches: [{method: {type: RegularExpression, service: "pkg\\\\.Echo", method: "S.*"}}]
      backendRefs: [{name: echo, port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec: {ports: [{port: 9000}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, namespace: default, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{port: 9000}]
endpoints: [{addresses: [10.1.0.5]}]
"""


def test_grpcroute_precedence_in_manifests(tmp_path):
    """The older route's method-only match loses to the newer route's service matches; within that
    route the regex rule with more characters (9 + 3) beats the service-only rule (8 + 0)."""
    p = tmp_path / "gw.yaml"
    p.write_text(PRECEDENCE_MANIFESTS)
    cfg = load_config(p)
    assert explain(cfg, b"/pkg.Echo/Say")["route"] == "b-service.r1"
    assert explain(cfg, b"/pkg.Echo/Get")["route"] == "b-service.r0"
    assert explain(cfg, b"/other.Svc/Say")["route"] == "a-method-only.r0"
