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
        {"name": "open", "match": {"path": {"prefix": "/"}}, "upstream": "echo"},
    ])
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
