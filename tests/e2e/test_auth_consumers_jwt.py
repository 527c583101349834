"""JWT with the consumer table and the auth combinator: a verified token becomes the consumer its
(iss, sub) is bound to, and `type: auth` takes jwt beside an API key."""

from __future__ import annotations

import json
import time

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey
from support.client import RawConn, assert_gateway_error
from support.gateway import simple_config, upstream_config

SECRET = "an HMAC secret long enough for HS256 ....................."
ISS = "https://idp.example"


def token(sub: str, iss: str = ISS) -> str:
    now = int(time.time())
    return jwt.encode({"alg": "HS256"}, {"iss": iss, "sub": sub, "iat": now, "exp": now + 600},
                      OctKey.import_key(SECRET.encode()), algorithms=["HS256"])


def get(gw, path, headers=()):
    with RawConn(gw.port) as c:
        return c.request("GET", path, list(headers))


def seen(resp) -> dict:
    return {k.lower(): v for k, v in json.loads(resp.body)["headers"]}


@pytest.fixture(scope="module")
def gw(echo, module_gateway_factory):
    jwt_policy = {"type": "jwt", "issuers": [{"issuer": ISS, "algorithms": ["HS256"], "keys": [{"secret": SECRET}]}]}
    cfg = simple_config(upstreams={"echo": upstream_config(echo.address)}, routes=[
        {"name": "jwt", "match": {"path": {"prefix": "/jwt"}}, "upstream": "echo", "policies": [jwt_policy]},
        {"name": "either", "match": {"path": {"prefix": "/either"}}, "upstream": "echo",
         "policies": [{"type": "auth", "mode": "any_of",
                       "methods": [{"type": "api_key"}, {k: v for k, v in jwt_policy.items()}]}]},
    ])
    cfg["consumers"] = [
        {"name": "alice-co", "groups": ["gold"], "credentials": {"jwt": [{"issuer": ISS, "subject": "alice"}],
                                                                   "api_keys": ["key-of-alice-co-0123456789"]}},
        {"name": "bob-co", "credentials": {"api_keys": ["key-of-bob-co-0123456789abcd"]}},
    ]
    return module_gateway_factory(cfg)


def test_a_token_bound_to_a_consumer_names_it_upstream(gw):
    r = get(gw, "/jwt/x", [("Authorization", f"Bearer {token('alice')}"), ("X-Consumer-Name", "spoofed")])
    assert r.status == 200, r.body
    assert seen(r)["x-consumer-name"] == "alice-co"
    r = get(gw, "/jwt/x", [("Authorization", f"Bearer {token('carol')}")])     # bound to no consumer
    assert r.status == 200 and seen(r)["x-consumer-name"] == "carol"


def test_the_combinator_takes_a_token_or_a_key(gw):
    by_key = get(gw, "/either/x", [("X-API-Key", "key-of-bob-co-0123456789abcd")])
    assert by_key.status == 200 and seen(by_key)["x-consumer-name"] == "bob-co"
    by_token = get(gw, "/either/x", [("Authorization", f"Bearer {token('alice')}")])
    assert by_token.status == 200 and seen(by_token)["x-consumer-name"] == "alice-co"
    assert_gateway_error(get(gw, "/either/x"), 401)
    assert_gateway_error(get(gw, "/either/x", [("Authorization", f"Bearer {token('alice', 'https://evil')}")]), 401)
