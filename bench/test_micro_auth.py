"""Micro-benchmarks of the jwt policy's verifier: a first-seen token (the slow path the cache of
verified tokens spares every later request), per algorithm, through the same Verifier.check the
gateway calls (parse, issuer, allow-list, key selection, joserfc on `cryptography`, claims).

Run alone: .venv/bin/python -m pytest bench/test_micro_auth.py --benchmark-columns=mean,median,ops -q
"""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastgw._core import JwtVerified
from joserfc import jws, jwt
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from fastgw.config.jwt import JwtIssuer, JwtKey, JwtPolicy
from fastgw.jwt_auth import Verifier

pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

SECRET = b"a bench secret that is long enough for HS256, 32+ bytes"


def _pem(private) -> str:
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _case(alg: str):
    if alg == "HS256":
        return OctKey.import_key(SECRET), JwtKey(secret=SECRET.decode())
    if alg in ("RS256", "PS256"):
        k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return RSAKey.import_key(k), JwtKey(pem=_pem(k))
    if alg == "ES256":
        k = ec.generate_private_key(ec.SECP256R1())
        return ECKey.import_key(k), JwtKey(pem=_pem(k))
    k = ed25519.Ed25519PrivateKey.generate()
    return OKPKey.import_key(k), JwtKey(pem=_pem(k))


@pytest.mark.parametrize("alg", ["HS256", "RS256", "PS256", "ES256", "EdDSA"])
def test_first_seen_token(benchmark, alg):
    signing, key = _case(alg)
    now = int(time.time())
    token = jwt.encode({"alg": alg}, {"iss": "https://idp.bench", "sub": "u", "aud": "api", "exp": now + 3600},
                       signing, algorithms=[alg]).encode()
    verifier = Verifier(JwtPolicy(issuers=[JwtIssuer(issuer="https://idp.bench", algorithms=[alg], keys=[key],
                                                     audiences=["api"])]))
    result = benchmark(verifier.check, token, float(now), None)
    assert type(result) is JwtVerified


def test_rs256_signature_alone(benchmark):
    """What `cryptography` itself costs for the RS256 check, below the verifier (joserfc included)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    data = b"x" * 300
    sig = k.sign(data, padding.PKCS1v15(), hashes.SHA256())
    pub = k.public_key()
    benchmark(pub.verify, sig, data, padding.PKCS1v15(), hashes.SHA256())


def test_rs256_joserfc_alone(benchmark):
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jws.serialize_compact({"alg": "RS256"}, b'{"sub":"u"}', RSAKey.import_key(k), algorithms=["RS256"])
    pub = RSAKey.import_key(_pem(k))
    benchmark(jws.deserialize_compact, token, pub, algorithms=["RS256"])
