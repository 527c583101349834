"""The `jwt` policy's verifier and config checks: the RFC 7520 / RFC 8037 example vectors (as data)
through the key loading the gateway does, and every config error with its `$.path`."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from joserfc import jws
from support.policy_config import write_policies

from fastgw.config import ConfigError, load_config
from fastgw.config.jwt import ALGORITHM_FAMILY, JwtKey
from fastgw.jwt_auth import KeyLoadError, load_key

pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

DATA = json.loads((Path(__file__).resolve().parents[1] / "data" / "jose" / "rfc7520.json").read_text())


@pytest.mark.parametrize("vector", DATA["vectors"], ids=[v["id"] for v in DATA["vectors"]])
def test_rfc_vectors_verify_with_the_keys_as_the_gateway_loads_them(vector):
    loaded = load_key(JwtKey(jwk=DATA["keys"][vector["key"]]))
    # the family the gateway tries this algorithm's keys in is this key's
    assert loaded.family == ALGORITHM_FAMILY[vector["alg"]]
    jws.deserialize_compact(vector["compact"], loaded.key, algorithms=[vector["alg"]])
    head, payload, sig = vector["compact"].split(".")
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    with pytest.raises(Exception):  # noqa: B017 - joserfc's BadSignatureError or a decode error
        jws.deserialize_compact(f"{head}.{payload}.{flipped}", loaded.key, algorithms=[vector["alg"]])


def test_an_rsa_key_is_never_an_hmac_key():
    rsa = load_key(JwtKey(jwk=DATA["keys"]["rsa"]))
    assert rsa.family == "RSA"
    assert {a for a, f in ALGORITHM_FAMILY.items() if f == "RSA"} == {"RS256", "RS384", "RS512", "PS256",
                                                                       "PS384", "PS512"}
    assert "none" not in ALGORITHM_FAMILY


def test_key_load_errors_hide_the_secret(tmp_path, monkeypatch):
    with pytest.raises(KeyLoadError, match="is not set"):
        load_key(JwtKey(secret_env="FASTGW_TEST_NO_SUCH_SECRET"))
    monkeypatch.setenv("FASTGW_TEST_SECRET", "s3cr3t-value")
    assert load_key(JwtKey(secret_env="FASTGW_TEST_SECRET")).family == "oct"
    with pytest.raises(KeyLoadError) as info:
        load_key(JwtKey(pem="-----BEGIN PUBLIC KEY-----\ns3cr3t\n-----END PUBLIC KEY-----\n"))
    assert "s3cr3t" not in str(info.value)
    with pytest.raises(KeyLoadError, match="cannot read"):
        load_key(JwtKey(pem_file=str(tmp_path / "missing.pem")))


def issues(tmp_path: Path, policy: str) -> list[tuple[str, str]]:
    path = write_policies(tmp_path, policy)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    for issue in info.value.errors:
        assert issue.file == str(path) and issue.line is not None
    return [(i.path, i.message) for i in info.value.errors]


def test_a_good_config_loads(tmp_path):
    path = write_policies(tmp_path, textwrap.dedent("""\
        - type: jwt
          issuers:
            - issuer: https://idp.example
              algorithms: [RS256, ES256]
              jwks: {url: "https://idp.example/.well-known/jwks.json"}
            - issuer: internal
              algorithms: [HS256]
              keys: [{secret: "0123456789abcdef0123456789abcdef"}]
    """))
    load_config(path)


@pytest.mark.parametrize("policy,path,message", [
    ("""\
     - type: jwt
       issuers: [{algorithms: [RS256], jwks: {url: "not a url"}}]
     """, "$.routes[0].policies[0].issuers[0].jwks.url", "not an http(s) URL"),
    ("""\
     - type: jwt
       issuers: [{algorithms: [RS256], jwks: {url: "ftp://idp.example/jwks"}}]
     """, "$.routes[0].policies[0].issuers[0].jwks.url", "not an http(s) URL"),
    ("""\
     - type: jwt
       issuers: [{algorithms: [RS256], jwks: {url: "https:///jwks"}}]
     """, "$.routes[0].policies[0].issuers[0].jwks.url", "has no host"),
    ("""\
     - type: jwt
       issuers: [{algorithms: [RS257], jwks: {url: "https://idp.example/jwks"}}]
     """, "$.routes[0].policies[0].issuers[0].algorithms[0]", "RS257"),
    ("""\
     - type: jwt
       issuers: [{algorithms: [none], jwks: {url: "https://idp.example/jwks"}}]
     """, "$.routes[0].policies[0].issuers[0].algorithms[0]", "none"),
    ("""\
     - type: jwt
       issuers: [{algorithms: [HS256], jwks: {url: "https://idp.example/jwks"}}]
     """, "$.routes[0].policies[0].issuers[0].algorithms", "needs a secret key"),
    ("""\
     - type: jwt
       issuers: [{algorithms: [RS256]}]
     """, "$.routes[0].policies[0].issuers[0]", "needs `keys` or `jwks`"),
    ("""\
     - type: jwt
       issuers: [{algorithms: [RS256], keys: [{secret: abc, pem: x}]}]
     """, "$.routes[0].policies[0].issuers[0].keys[0]", "exactly one of"),
    ("""\
     - type: jwt
       issuers: [{algorithms: [RS256], keys: [{secret: "a-secret"}]}]
     """, "$.routes[0].policies[0].issuers[0].keys[0].secret", "an HMAC secret, but"),
    ("""\
     - type: jwt
       issuers: [{algorithms: [RS256], keys: [{pem_file: /nonexistent/key.pem}]}]
     """, "$.routes[0].policies[0].issuers[0].keys[0].pem_file", "cannot read"),
    ("""\
     - type: jwt
       issuers: [{issuer: a, algorithms: [HS256], keys: [{secret: s}]},
                 {issuer: a, algorithms: [HS256], keys: [{secret: s}]}]
     """, "$.routes[0].policies[0].issuers[1].issuer", "already at index 0"),
    ("""\
     - type: jwt
       issuers: [{algorithms: [HS256], keys: [{secret: s}]}]
       sources: [{cookie: session, prefix: "Bearer "}]
     """, "$.routes[0].policies[0].sources[0].prefix", "goes with a header"),
    ("""\
     - type: jwt
       issuers: [{algorithms: [HS256], keys: [{secret: s}]}]
       claims_to_headers: {sub: X-Request-Id}
     """, "$.routes[0].policies[0].claims_to_headers.sub", "gateway's to set"),
])
def test_bad_config_names_the_path(tmp_path, policy, path, message):
    got = issues(tmp_path, policy)
    assert any(p == path and message in m for p, m in got), got


def test_a_short_hmac_secret_is_refused(tmp_path):
    got = issues(tmp_path, """\
        - type: jwt
          issuers: [{algorithms: [HS256], keys: [{secret: "too-short"}]}]
        """)
    assert ("$.routes[0].policies[0].issuers[0].keys[0].secret",
            "an HMAC secret needs at least 32 bytes (RFC 7518 3.2)") in got


def test_a_secret_is_not_in_the_error(tmp_path):
    got = issues(tmp_path, """\
        - type: jwt
          issuers: [{algorithms: [RS256], keys: [{secret: "hunter2-top-secret"}]}]
        """)
    assert got and not any("hunter2" in m for _, m in got)


def test_inline_secrets_are_redacted_in_the_admin_config(tmp_path):
    from fastgw.admin.redact import REDACTED, redacted_config

    path = write_policies(tmp_path, textwrap.dedent("""\
        - type: jwt
          issuers:
            - algorithms: [HS256]
              keys:
                - {secret: "0123456789abcdef0123456789abcdef-very-secret"}
                - {jwk: {kty: oct, k: "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}}
    """))
    data = redacted_config(load_config(path))
    keys = data["routes"][0]["policies"][0]["issuers"][0]["keys"]
    assert keys[0]["secret"] == REDACTED and keys[1]["jwk"]["k"] == REDACTED
    assert "very-secret" not in json.dumps(data)


@pytest.mark.parametrize("vector", DATA["jwts"], ids=[v["id"] for v in DATA["jwts"]])
def test_rfc_jwt_through_the_verifier(vector):
    from fastgw._core import JwtVerified

    from fastgw.config.jwt import JwtIssuer, JwtPolicy
    from fastgw.jwt_auth import Verifier

    key = JwtKey(jwk=DATA["keys"][vector["key"]])
    verifier = Verifier(JwtPolicy(issuers=[JwtIssuer(issuer=vector["iss"], algorithms=[vector["alg"]], keys=[key])],
                                  leeway=0.0, claims_to_headers={"http://example.com/is_root": "X-Root"}))
    token = vector["compact"].encode()
    ok = verifier.check(token, vector["exp"] - 100.0, None)
    assert type(ok) is JwtVerified and ok.issuer == vector["iss"] and ok.claims["http://example.com/is_root"] is True
    assert ok.until == vector["exp"]                       # cached no longer than the token lives
    assert verifier.check(token, vector["exp"] + 1.0, None).reason == "token expired"
    other = Verifier(JwtPolicy(issuers=[JwtIssuer(issuer=vector["iss"], algorithms=["HS384"], keys=[key])]))
    assert other.check(token, vector["exp"] - 100.0, None).reason == "algorithm not allowed"


def test_the_prefetch_finds_every_jwks_set_alone_or_in_a_combinator(tmp_path):
    from fastgw.jwt_auth import jwks_sets
    from fastgw.runtime import compile_runtime

    path = write_policies(tmp_path, textwrap.dedent("""\
        - type: jwt
          issuers: [{issuer: a, algorithms: [RS256], jwks: {url: "https://a.example/jwks"}}]
        - type: auth
          methods:
            - type: jwt
              issuers:
                - {issuer: b, algorithms: [RS256], jwks: {url: "https://b.example/jwks"}}
                - {issuer: c, algorithms: [HS256], keys: [{secret: "0123456789abcdef0123456789abcdef"}]}
            - {type: api_key}
    """))
    sets = jwks_sets(compile_runtime(load_config(path)))
    assert sorted(s.cfg.url for s in sets) == ["https://a.example/jwks", "https://b.example/jwks"]
    assert not any(s.fetched for s in sets)
