"""Micro-benchmarks of the auth and IP policies on the request path (issue 10's budgets: API-key auth
under 1 µs a request, IP rules under 0.5 µs at 10,000 CIDRs), each policy's on_request run in a C
loop on a realistic head. Run alone:
.venv/bin/python -m pytest bench/test_micro_access.py -q -s   (the figures are printed)"""

from __future__ import annotations

import os

import pytest

from fastgw import _core

needs_entry_points = pytest.mark.skipif(
    not hasattr(_core, "bench_request_policy") and not os.environ.get("CI"),
    reason="fastgw._core was built without FASTGW_TESTING=1 (no test and bench entry points)")

KEY = b"bench-key-0123456789abcdef0123456789"
HEAD = (b"GET /api/v2/orders/8812734/items?limit=20&page=2 HTTP/1.1\r\n"
        b"Host: t3.api.example.com\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36\r\n"
        b"Accept: application/json, text/plain, */*\r\n"
        b"Accept-Language: en-GB,en;q=0.9\r\n"
        b"Accept-Encoding: gzip, deflate, br\r\n"
        b"X-API-Key: " + KEY + b"\r\n"
        b"X-Forwarded-For: 203.0.113.9, 10.0.0.7\r\n"
        b"Connection: keep-alive\r\n\r\n")
N = 200_000


def _cidrs(n: int) -> list[str]:
    v4 = [f"10.{i // 256}.{i % 256}.0/24" for i in range(n // 2)]
    v6 = [f"2001:db8:{i:x}::/48" for i in range(n - len(v4))]
    return v4 + v6


def _figure(name: str, seconds: float) -> None:
    print(f"\n{name}: {seconds * 1e9:.0f} ns per request")


def _api_key_policy(n_consumers: int) -> _core.Policy:
    keys = [(f"other-{i}".encode(), _core.Consumer(f"c{i}")) for i in range(n_consumers - 1)]
    keys.append((KEY, _core.Consumer("bench")))
    p = _core.ApiKeyAuth("k", "k", ["X-API-Key"], [], _core.SecretDigests(keys), True)
    p.set_access(None, None, "X-Consumer-Name", None)
    return p


@needs_entry_points
def test_api_key_per_request():
    p = _api_key_policy(1000)
    r = _core.run_request_policy(p, HEAD, b"127.0.0.1")
    assert r[0] == 0 and r[2] == b"bench"
    _figure("api_key, 1,000 consumers (hash, lookup, compare, strip, X-Consumer-Name)",
            min(_core.bench_request_policy(p, HEAD, b"127.0.0.1", N) for _ in range(3)))


@needs_entry_points
@pytest.mark.parametrize("n", [10, 10_000])
def test_ip_deny_per_request(n):
    from fastgw.auth.ipsets import ip_set
    p = _core.IpRulePolicy("d", "d", ip_set(_cidrs(n)), False)
    for addr in (b"127.0.0.1", b"2001:db9::1"):
        assert _core.run_request_policy(p, HEAD, addr)[0] == 0
        _figure(f"ip_deny, {n:,} CIDRs, client {addr.decode()} in none",
                min(_core.bench_request_policy(p, HEAD, addr, N) for _ in range(3)))


@needs_entry_points
def test_trusted_proxies_per_request():
    from fastgw.auth.ipsets import ip_set
    p = _core.TrustedProxies("t", "t", ip_set(["127.0.0.0/8", "10.0.0.0/8"]), 0, False)
    r = _core.run_request_policy(p, HEAD, b"127.0.0.1")
    assert r[3] == b"203.0.113.9"
    _figure("trusted_proxies, 2-entry X-Forwarded-For through 2 trusted hops",
            min(_core.bench_request_policy(p, HEAD, b"127.0.0.1", N) for _ in range(3)))


@needs_entry_points
def test_cached_jwt_per_request():
    """A cached RS256 token (issue 10: under 2 µs): after the first request it is the cache of
    verified tokens that answers (token lookup, expiry and audience kept from the first check)."""
    import time

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    from fastgw.config.jwt import JwtIssuer, JwtKey, JwtPolicy
    from fastgw.jwt_auth import build_jwt_policy

    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = k.public_key().public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    now = int(time.time())
    token = jwt.encode({"alg": "RS256", "kid": "bench"},
                       {"iss": "https://idp.bench", "sub": "bench-user", "aud": "api", "iat": now,
                        "exp": now + 86400}, RSAKey.import_key(k), algorithms=["RS256"])
    p = build_jwt_policy(JwtPolicy(issuers=[JwtIssuer(issuer="https://idp.bench", algorithms=["RS256"],
                                                      keys=[JwtKey(pem=pem)], audiences=["api"])]), "j", "j")
    head = HEAD.replace(b"X-API-Key: " + KEY, b"Authorization: Bearer " + token.encode())
    assert _core.run_request_policy(p, head, b"127.0.0.1")[0] == 0      # verified once, then cached
    _figure("jwt, RS256 token from the cache of verified tokens",
            min(_core.bench_request_policy(p, head, b"127.0.0.1", N) for _ in range(3)))
