"""`cors` over real sockets: preflights answered at the gateway (allowed and refused; exact,
wildcard-subdomain and regex origins; methods; headers; credentials; max age), actual requests with
the response headers in place of the upstream's, and `Vary: Origin` wherever the answer depends on
the Origin."""

from __future__ import annotations

import pytest
from support.client import RawConn, assert_gateway_error
from support.gateway import simple_config, upstream_config


@pytest.fixture(scope="module")
def gw(echo, module_gateway_factory):
    def route(name, prefix, **cors):
        return {"name": name, "match": {"path": {"prefix": prefix}}, "upstream": "echo",
                "policies": [{"type": "cors", **cors}]}

    return module_gateway_factory(simple_config(upstreams={"echo": upstream_config(echo.address)}, routes=[
        route("strict", "/strict", allow_origins=["https://app.example", "https://*.example.org", "http://localhost:3000"],
              allow_origin_regex=[r"https://pr-\d+\.preview\.example"],
              allow_methods=["PUT", "DELETE"], allow_headers=["X-Api-Key", "Content-Type"],
              expose_headers=["X-Trace"], allow_credentials=True, max_age=600),
        route("public", "/public", allow_origins=["*"], allow_methods=["*"], allow_headers=["*"]),
        route("echoing", "/echoing", allow_origin_regex=[".*"], allow_methods=["*"], allow_headers=["*"],
              allow_credentials=True),
    ]))


def send(gw, method, path, headers=()):
    with RawConn(gw.port) as c:
        return c.request(method, path, list(headers))


def preflight(gw, path, origin, method="PUT", headers=None):
    hs = [("Origin", origin), ("Access-Control-Request-Method", method)]
    if headers:
        hs.append(("Access-Control-Request-Headers", headers))
    return send(gw, "OPTIONS", path, hs)


@pytest.mark.parametrize("origin", ["https://app.example", "https://APP.example:443", "https://a.b.example.org",
                                    "http://localhost:3000", "https://pr-42.preview.example"])
def test_preflight_allowed(gw, origin):
    r = preflight(gw, "/strict/items", origin, "PUT", "x-api-key, content-type")
    assert r.status == 204 and r.body == b""
    h = r.headers
    assert h.get("access-control-allow-origin") == origin
    assert h.get("access-control-allow-methods") == "PUT, DELETE"
    assert h.get("access-control-allow-headers") == "X-Api-Key, Content-Type"
    assert h.get("access-control-allow-credentials") == "true"
    assert h.get("access-control-expose-headers") == "X-Trace"
    assert h.get("access-control-max-age") == "600"
    assert "Origin" in h.get("vary", "")
    assert h.get("x-echo-name") is None                   # answered at the gateway


@pytest.mark.parametrize("origin,method,headers,error", [
    ("https://evil.example", "PUT", None, "CORS origin not allowed"),
    ("https://example.org", "PUT", None, "CORS origin not allowed"),          # the suffix alone is not a subdomain
    ("http://app.example", "PUT", None, "CORS origin not allowed"),           # another scheme
    ("https://app.example:8443", "PUT", None, "CORS origin not allowed"),     # another port
    ("https://pr-x.preview.example", "PUT", None, "CORS origin not allowed"),
    ("https://app.example", "PATCH", None, "CORS method not allowed"),
    ("https://app.example", "PUT", "x-api-key, x-other", "CORS header not allowed"),
])
def test_preflight_refused(gw, origin, method, headers, error):
    r = preflight(gw, "/strict/items", origin, method, headers)
    assert assert_gateway_error(r, 403)["error"] == error
    assert r.headers.get("access-control-allow-origin") is None
    assert "Origin" in r.headers.get("vary", "")


def test_safelisted_methods_need_no_listing(gw):
    assert preflight(gw, "/strict/x", "https://app.example", "POST").status == 204


def test_actual_request_gets_the_headers_and_vary(gw):
    r = send(gw, "GET", "/strict/items", [("Origin", "https://app.example"),
                                          ("X-Echo-Set-Header", "Access-Control-Allow-Origin:*,Vary:Accept")])
    assert r.status == 200 and r.headers.get("x-echo-name") == "echo"
    assert r.headers.get_all("access-control-allow-origin") == ["https://app.example"]   # not the upstream's *
    assert r.headers.get("access-control-allow-credentials") == "true"
    assert r.headers.get("access-control-expose-headers") == "X-Trace"
    assert "Accept" in r.headers.get_all("vary") and "Origin" in r.headers.get_all("vary")


@pytest.mark.parametrize("headers", [[("Origin", "https://evil.example")], []])
def test_a_refused_or_missing_origin_still_varies(gw, headers):
    r = send(gw, "GET", "/strict/items", headers)
    assert r.status == 200
    assert r.headers.get("access-control-allow-origin") is None
    assert "Origin" in r.headers.get_all("vary")


def test_plain_options_goes_upstream(gw):
    r = send(gw, "OPTIONS", "/strict/items", [("Origin", "https://app.example")])
    assert r.headers.get("x-echo-name") == "echo"


def test_every_origin_without_credentials_is_a_star(gw):
    r = preflight(gw, "/public/x", "https://anything.example:8443", "PATCH", "x-a")
    assert r.status == 204
    assert r.headers.get("access-control-allow-origin") == "*"
    assert r.headers.get("access-control-allow-methods") == "*"
    assert r.headers.get("access-control-allow-headers") == "*"
    assert r.headers.get("access-control-allow-credentials") is None
    assert r.headers.get("vary") is None                  # nothing here depends on the Origin
    r = send(gw, "GET", "/public/x", [("Origin", "https://anything.example")])
    assert r.headers.get("access-control-allow-origin") == "*"


def test_wildcards_with_credentials_echo_what_was_asked(gw):
    r = preflight(gw, "/echoing/x", "https://other.example", "PATCH", "x-a, x-b")
    assert r.status == 204
    assert r.headers.get("access-control-allow-origin") == "https://other.example"
    assert r.headers.get("access-control-allow-methods") == "PATCH"
    assert r.headers.get("access-control-allow-headers") == "x-a, x-b"
    assert r.headers.get("access-control-allow-credentials") == "true"


# ---- answers made without the upstream's response (issue 10): a later policy's 401 or 429, the
# gateway's own 502, carry the CORS headers, so a page can read the refusal -----------------------

APP = "https://app.example"
KEY = "a-consumer-api-key-long-enough-0123456789"


@pytest.fixture(scope="module")
def refusing(echo, module_gateway_factory):
    from support.upstreams import ClosedPort

    closed = ClosedPort()
    strict = {"type": "cors", "allow_origins": [APP], "expose_headers": ["Retry-After", "RateLimit"],
              "allow_credentials": True, "allow_headers": ["X-Api-Key"]}

    def route(name, prefix, policies, upstream="echo"):
        return {"name": name, "match": {"path": {"prefix": prefix}}, "upstream": upstream, "policies": policies}

    cfg = simple_config(upstreams={"echo": upstream_config(echo.address), "dead": upstream_config(closed.address)},
                        routes=[
        route("locked", "/locked", [strict, {"type": "api_key"}]),
        route("after", "/after", [{"type": "api_key"}, strict]),          # cors written after the refusing policy
        route("limited", "/limited", [strict, {"type": "rate_limit", "limits": [
            {"rate": 1, "period": "1h", "key": ["route"]}]}]),
        route("dead", "/dead", [strict], upstream="dead"),
        route("star", "/star", [{"type": "cors", "allow_origins": ["*"]}, {"type": "api_key"}]),
        route("nocors", "/nocors", [{"type": "api_key"}]),
    ])
    cfg["consumers"] = [{"name": "app", "credentials": {"api_keys": [KEY]}}]
    yield module_gateway_factory(cfg)
    closed.close()


def _cors_of(r) -> dict:
    return {k: r.headers.get(k) for k in ("access-control-allow-origin", "access-control-allow-credentials",
                                          "access-control-expose-headers")}


@pytest.mark.parametrize("path", ["/locked/x", "/after/x"])
def test_a_401_of_a_later_policy_carries_the_cors_headers(refusing, path):
    import httpx

    r = httpx.get(f"{refusing.url}{path}", headers={"Origin": APP})
    assert r.status_code == 401
    assert r.json()["error"] == "authentication required"
    assert _cors_of(r) == {"access-control-allow-origin": APP, "access-control-allow-credentials": "true",
                           "access-control-expose-headers": "Retry-After, RateLimit"}
    assert r.headers.get_list("vary") == ["Origin"]
    assert r.headers.get_list("access-control-allow-origin") == [APP]      # once
    # accepted: the upstream's answer, with the same headers once
    r = httpx.get(f"{refusing.url}{path}", headers={"Origin": APP, "X-Api-Key": KEY})
    assert r.status_code == 200 and r.headers.get_list("access-control-allow-origin") == [APP]


def test_a_refusal_for_an_origin_not_allowed_or_none_has_only_vary(refusing):
    import httpx

    for headers in ({"Origin": "https://evil.example"}, {}):
        r = httpx.get(f"{refusing.url}/locked/x", headers=headers)
        assert r.status_code == 401
        assert _cors_of(r) == dict.fromkeys(_cors_of(r))                   # all None
        assert r.headers.get("vary") == "Origin"


def test_a_429_and_a_502_carry_the_cors_headers(refusing):
    import httpx

    with httpx.Client(base_url=refusing.url, headers={"Origin": APP}) as client:
        statuses = [client.get("/limited/x") for _ in range(2)]
        assert [r.status_code for r in statuses] == [200, 429]
        assert statuses[1].headers.get("access-control-allow-origin") == APP
        assert statuses[1].headers.get("access-control-expose-headers") == "Retry-After, RateLimit"
        r = client.get("/dead/x")
        assert r.status_code == 502 and r.headers.get("access-control-allow-origin") == APP


def test_a_refused_preflight_is_the_cors_policys_alone(refusing):
    """A preflight is answered by the cors policy (before api_key: no credential needed); its refusal
    does not get the actual-request headers added on top."""
    r = preflight(refusing, "/locked/x", APP, "POST", "x-api-key")
    assert r.status == 204 and r.headers.get("access-control-allow-origin") == APP
    r = preflight(refusing, "/locked/x", APP, "POST", "x-other")
    assert r.status == 403 and r.headers.get("access-control-allow-origin") is None
    assert r.headers.get("access-control-allow-credentials") is None


def test_star_origins_and_routes_without_cors(refusing):
    import httpx

    r = httpx.get(f"{refusing.url}/star/x", headers={"Origin": APP})
    assert r.status_code == 401 and r.headers.get("access-control-allow-origin") == "*"
    assert r.headers.get("vary") is None
    r = httpx.get(f"{refusing.url}/nocors/x", headers={"Origin": APP})
    assert r.status_code == 401 and r.headers.get("access-control-allow-origin") is None
