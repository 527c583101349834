"""`external_auth` over real sockets: a real auth service started by the test allows (its headers
copied upstream), denies (its status, headers and body reach the client), stalls past the timeout
(503 or let through, as configured), or is not there at all; connections to it are pooled."""

from __future__ import annotations

import json

import pytest
from support.authservers import AuthService
from support.client import RawConn, assert_gateway_error
from support.gateway import simple_config, upstream_config
from support.upstreams import ClosedPort


@pytest.fixture(scope="module")
def world(echo, module_gateway_factory):
    auth = AuthService()
    closed = ClosedPort()

    def route(name, prefix, **policy):
        return {"name": name, "match": {"path": {"prefix": prefix}}, "upstream": "echo",
                "policies": [{"type": "external_auth", **policy}]}

    common = {"request_headers": ["X-Test-Verdict", "X-Test-Status", "X-Test-Stall", "X-Test-User", "Cookie"],
              "upstream_headers": ["X-Auth-User"], "consumer_header": "X-Auth-User"}
    cfg = simple_config(upstreams={"echo": upstream_config(echo.address)}, routes=[
        route("auth", "/app", url=f"{auth.url}/check", timeout="1s", **common),
        route("open-on-failure", "/lenient", url=f"{auth.url}/check", timeout="500ms", on_failure="allow", **common),
        route("down", "/down", url=f"http://{closed.address}", timeout="1s", **common),
        {"name": "grouped", "match": {"path": {"prefix": "/grouped"}}, "upstream": "echo",
         "policies": [{"type": "external_auth", "url": f"{auth.url}/check", **common},
                      {"type": "groups", "allow": ["admin"]}]},
        {"name": "open", "match": {"path": {"prefix": "/"}}, "upstream": "echo"},
    ])
    cfg["consumers"] = [{"name": "carol", "groups": ["admin"]}]
    gw = module_gateway_factory(cfg)
    yield gw, auth
    auth.close()
    closed.close()


def req(gw, method, path, headers=()):
    with RawConn(gw.port) as c:
        return c.request(method, path, list(headers))


def upstream_headers(resp) -> dict:
    return {k.lower(): v for k, v in json.loads(resp.body)["headers"]}


def test_allow_copies_the_named_headers_upstream(world):
    gw, auth = world
    before = len(auth.seen)
    r = req(gw, "GET", "/app/orders?id=7", [("Authorization", "Bearer abc"), ("X-Test-User", "carol"),
                                           ("X-Auth-User", "mallory"), ("X-Request-Id", "ext-allow-1"),
                                           ("X-Not-Forwarded", "1")])
    assert r.status == 200, r.body
    seen = upstream_headers(r)
    assert seen["x-auth-user"] == "carol"                 # the auth service's, not the client's
    assert seen["x-consumer-name"] == "carol"             # the consumer it named, as every method sends it
    assert "x-auth-secret-internal" not in seen           # only the named headers are copied
    call = auth.seen[before]
    assert call["method"] == "GET" and call["path"] == "/check/app/orders?id=7"
    h = call["headers"]
    assert h["authorization"] == "Bearer abc" and h["x-forwarded-method"] == "GET"
    assert h["x-forwarded-uri"] == "/app/orders?id=7" and h["x-request-id"] == "ext-allow-1"
    assert h["host"] == "test.local" and "x-not-forwarded" not in h      # the client's Host


def test_the_method_is_passed_on(world):
    gw, auth = world
    r = req(gw, "DELETE", "/app/orders/7")
    assert r.status == 200
    assert auth.seen[-1]["method"] == "DELETE" and auth.seen[-1]["headers"]["x-forwarded-method"] == "DELETE"


@pytest.mark.parametrize("status", [401, 403, 302, 500])
def test_deny_returns_the_auth_services_answer(world, status):
    gw, _ = world
    r = req(gw, "GET", "/app/x", [("X-Test-Verdict", "deny"), ("X-Test-Status", str(status))])
    assert r.status == status
    assert r.body == b'{"denied":"by the auth service"}'
    assert r.headers.get("content-type") == "application/json"
    assert r.headers.get("www-authenticate") == 'Bearer realm="auth-service"'
    assert r.headers.get("x-auth-reason") is None          # not among client_headers
    assert r.headers.get("x-request-id")


def test_timeout_answers_503_or_lets_through(world):
    gw, _ = world
    stall = [("X-Test-Verdict", "stall"), ("X-Test-Stall", "3")]
    body = assert_gateway_error(req(gw, "GET", "/app/slow", stall), 503)
    assert body["error"] == "authentication service unavailable"
    r = req(gw, "GET", "/lenient/slow", stall)
    assert r.status == 200 and "x-auth-user" not in upstream_headers(r)


def test_auth_service_down(world):
    gw, _ = world
    assert_gateway_error(req(gw, "GET", "/down/x"), 503)


def test_connections_to_the_auth_service_are_pooled(world):
    gw, auth = world
    before = len(auth.seen)
    for i in range(5):
        assert req(gw, "GET", f"/app/pool/{i}").status == 200
    conns = {c["conn"] for c in auth.seen[before:]}
    assert len(conns) == 1, conns


def test_unrouted_paths_do_not_ask(world):
    gw, auth = world
    before = len(auth.seen)
    assert req(gw, "GET", "/elsewhere").status == 200
    assert len(auth.seen) == before


# ---- the Gateway API's ExternalAuth filter (GEP-1494), served from manifests -----------------------

def _manifests(echo_port: int, auth_port: int) -> str:
    import yaml

    def svc(name, port):
        return [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                 "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port}]}},
                {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": f"{name}-1", "labels": {"kubernetes.io/service-name": name}},
                 "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                 "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]}]

    def rule(prefix, http, service="authz"):
        return {"matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                "filters": [{"type": "ExternalAuth", "externalAuth": {
                    "protocol": "HTTP", "backendRef": {"name": service, "port": 80}, "http": http}}],
                "backendRefs": [{"name": "echo", "port": 80}]}

    docs = [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "gw"},
             "spec": {"gatewayClassName": "fastgw", "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
                      "listeners": [{"name": "http", "port": 0, "protocol": "HTTP"}]}},
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "app"},
             "spec": {"parentRefs": [{"name": "gw"}], "rules": [
                 rule("/all", {"path": "/check"}),
                 rule("/named", {"path": "/check", "allowedHeaders": ["X-Test-Verdict", "X-Test-User"],
                                 "allowedResponseHeaders": ["X-Auth-User"]}),
                 rule("/unknown", {}, service="nothere")]}},
            *svc("echo", echo_port), *svc("authz", auth_port)]
    return yaml.safe_dump_all(docs, sort_keys=False)


@pytest.fixture(scope="module")
def gwapi(echo, tmp_path_factory):
    from .traffic_support import ConfigGateway

    auth = AuthService()
    gw = ConfigGateway(_manifests(echo.port, auth.port), tmp_path_factory.mktemp("gwapi")).start()
    yield gw, auth
    gw.close()
    auth.close()


def test_gateway_api_external_auth_with_every_header(gwapi):
    """Empty allowedHeaders / allowedResponseHeaders: every client header goes to the auth service,
    every answer header (but its framing and metadata) onto the upstream request."""
    gw, auth = gwapi
    before = len(auth.seen)
    r = req(gw, "GET", "/all/orders?id=7", [("X-Test-User", "carol"), ("X-Other", "1"), ("X-Auth-User", "mallory")])
    assert r.status == 200, r.body
    call = auth.seen[before]
    assert call["path"] == "/check/all/orders?id=7"
    assert call["headers"]["x-other"] == "1" and call["headers"]["x-test-user"] == "carol"
    seen = upstream_headers(r)
    assert seen["x-auth-user"] == "carol" and seen["x-auth-secret-internal"] == "not-for-upstream"
    assert "server" not in seen and "date" not in seen and seen.get("content-length") is None
    r = req(gw, "GET", "/all/x", [("X-Test-Verdict", "deny"), ("X-Test-Status", "401")])
    assert r.status == 401 and r.body == b'{"denied":"by the auth service"}'
    assert r.headers.get("x-auth-reason") == "test"       # every header of the refusal reaches the client


def test_gateway_api_external_auth_to_an_unknown_service_fails_closed(gwapi):
    gw, auth = gwapi
    before = len(auth.seen)
    r = req(gw, "GET", "/unknown/x")
    assert r.status == 500 and r.headers.get("x-echo-name") is None and len(auth.seen) == before


def test_gateway_api_external_auth_with_named_headers(gwapi):
    gw, auth = gwapi
    before = len(auth.seen)
    r = req(gw, "GET", "/named/x", [("X-Test-User", "dave"), ("X-Other", "1"), ("Authorization", "Bearer t")])
    assert r.status == 200, r.body
    h = auth.seen[before]["headers"]
    assert "x-other" not in h and h["x-test-user"] == "dave" and h["authorization"] == "Bearer t"
    seen = upstream_headers(r)
    assert seen["x-auth-user"] == "dave" and "x-auth-secret-internal" not in seen


def test_the_consumer_named_by_the_auth_service_has_its_groups(world):
    gw, _ = world
    r = req(gw, "GET", "/grouped/x", [("X-Test-User", "carol"), ("X-Consumer-Name", "root")])
    assert r.status == 200, r.body                        # carol is a consumer in group admin
    assert upstream_headers(r)["x-consumer-name"] == "carol"
    r = req(gw, "GET", "/grouped/x", [("X-Test-User", "mallory")])
    assert_gateway_error(r, 403)                          # a consumer of its own, without groups
