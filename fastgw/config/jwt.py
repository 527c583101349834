"""The `jwt` policy's config: issuers with their algorithm allow-lists and keys (inline, PEM files,
JWKS URLs), where the token comes from, claim checks, and what goes upstream. docs/auth-jwt.md."""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from .base import Base
from .policies import PolicyBase
from .positions import Token
from .values import Duration, PositiveDuration

__all__ = ["ALGORITHM_FAMILY", "Algorithm", "JwtIssuer", "JwtKey", "JwtPolicy", "JwksSource", "TokenSource",
           "check_jwt", "check_http_url"]

Algorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                    "ES256", "ES384", "ES512", "EdDSA"]

#: The key type (and EC curve) each algorithm verifies with: a key is only ever tried with an
#: algorithm of its own family, so an RSA public key can never be taken for an HMAC secret.
ALGORITHM_FAMILY = {
    "HS256": "oct", "HS384": "oct", "HS512": "oct",
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA", "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
    "ES256": "EC:P-256", "ES384": "EC:P-384", "ES512": "EC:P-521", "EdDSA": "OKP",
}

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_GATEWAY_FIELDS = frozenset(("host", "content-length", "transfer-encoding", "connection", "keep-alive",
                             "proxy-connection", "te", "trailer", "upgrade", "x-request-id", "x-forwarded-for",
                             "x-forwarded-proto", "x-forwarded-host"))


class JwtKey(Base, kw_only=True):
    """One verification key: exactly one of `pem`, `pem_file`, `jwk` (public keys), `secret`,
    `secret_file`, `secret_env` (HMAC secrets)."""

    kid: str | None = None
    """Only tokens whose header names this `kid` are tried with this key (a key without one is tried
    with any token of its algorithm family)."""
    pem: str | None = None
    pem_file: str | None = None
    jwk: dict | None = None
    secret: str | None = None
    secret_file: str | None = None
    secret_env: str | None = None


class JwksSource(Base, kw_only=True):
    """A JWKS URL, fetched by each worker when first needed, kept as its Cache-Control/Expires say
    (within min_cache..max_cache), refetched at once for a `kid` it does not hold."""

    url: str
    timeout: PositiveDuration = 2.0
    """One fetch's deadline; the request waiting for it is answered by `jwks_failure` after it."""
    cache_duration: PositiveDuration = 300.0
    """How long a key set without cache headers is kept."""
    min_cache: Duration = 30.0
    max_cache: PositiveDuration = 86400.0
    refetch_interval: Duration = 5.0
    """At most one fetch per this long for unknown `kid`s (an attacker's made-up kids cannot turn
    into a flood of fetches)."""


class JwtIssuer(Base, kw_only=True):
    issuer: str | None = None
    """The `iss` a token must carry to be checked against this entry. Omitted (one entry only): `iss`
    is not checked."""
    algorithms: Annotated[list[Algorithm], Meta(min_length=1)]
    """The allow-list: a token signed with any other algorithm (and `none`, always) is refused."""
    keys: list[JwtKey] = msgspec.field(default_factory=list)
    jwks: JwksSource | None = None
    audiences: list[str] | None = None
    """When set, the token's `aud` must name one of these."""
    consumer_claim: str = "sub"
    """The claim whose value names the consumer (Exchange.consumer_name)."""


class TokenSource(Base, kw_only=True):
    """Where a token is looked for: exactly one of `header` (with an optional `prefix`, compared
    case-insensitively, e.g. `"Bearer "`), `cookie`, `query`."""

    header: str | None = None
    prefix: str | None = None
    cookie: str | None = None
    query: str | None = None


def _default_sources() -> list[TokenSource]:
    return [TokenSource(header="Authorization", prefix="Bearer ")]


class JwtPolicy(PolicyBase, tag="jwt", kw_only=True):
    """Verifies a JSON Web Token (JWS compact form) and names the consumer from a claim."""

    issuers: Annotated[list[JwtIssuer], Meta(min_length=1)]
    sources: list[TokenSource] = msgspec.field(default_factory=_default_sources)
    """Looked at in order; the first that holds a token is used."""
    leeway: Duration = 60.0
    """Clock skew allowed on `exp`, `nbf` and `iat`."""
    required_claims: list[str] = msgspec.field(default_factory=list)
    claims_to_headers: dict[str, str] = msgspec.field(default_factory=dict)
    """claim -> upstream header: the verified claim's value goes upstream in that header (any copy the
    client sent is removed, whether or not the token has the claim)."""
    forward_token: bool = True
    """False: the header the token came in is removed before the request goes upstream."""
    cache_size: Annotated[int, Meta(ge=0)] = 10000
    """Verified tokens kept per worker (0: none), each until its `exp` or `cache_ttl`."""
    cache_ttl: PositiveDuration = 300.0
    jwks_failure: Literal["unavailable", "deny"] = "unavailable"
    """A token whose keys cannot be had because the JWKS server is down or slow: 503 (unavailable)
    or 401 (deny)."""


def check_http_url(url: str) -> str | None:
    """Why `url` is not an absolute http(s) URL with a host, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a URL: {url!r} ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"not an http(s) URL: {url!r}"
    if not parts.hostname:
        return f"URL {url!r} has no host"
    if port == 0:
        return f"URL {url!r}: port 0"
    if any(c.isspace() for c in url):
        return f"URL {url!r} must not contain whitespace"
    return None


def _check_header_name(name: str, path: list[Token], out: list) -> None:
    if not _TOKEN.match(name):
        out.append((path, f"not a valid header name: {name!r}"))
    elif name.lower() in _GATEWAY_FIELDS:
        out.append((path, f"{name} is the gateway's to set"))


_MATERIAL = ("pem", "pem_file", "jwk", "secret", "secret_file", "secret_env")


def _check_key(key: JwtKey, families: set[str], path: list[Token], out: list) -> None:
    given = [m for m in _MATERIAL if getattr(key, m) is not None]
    if len(given) != 1:
        out.append((path, f"a key needs exactly one of {', '.join(_MATERIAL)}"
                    + (f" (got {', '.join(given)})" if given else "")))
        return
    from ..jwt_auth import KeyLoadError, load_key  # the key parsers live with the verifier
    try:
        loaded = load_key(key)
    except KeyLoadError as exc:
        out.append(([*path, given[0]], str(exc)))
        return
    if loaded.family not in families:
        what = "an HMAC secret" if loaded.family == "oct" else f"a {loaded.family} key"
        allowed = ", ".join(sorted(families))
        out.append(([*path, given[0]], f"{what}, but the issuer's algorithms verify only with {allowed} keys"))
    elif loaded.family == "oct" and len(loaded.key.raw_value) < 32:
        out.append(([*path, given[0]], "an HMAC secret needs at least 32 bytes (RFC 7518 3.2)"))


def check_jwt(policy: JwtPolicy, path: list[Token], out: list) -> None:
    issuers_seen: dict[str | None, int] = {}
    for i, iss in enumerate(policy.issuers):
        ipath = [*path, "issuers", i]
        if iss.issuer in issuers_seen:
            out.append(([*ipath, "issuer"], f"issuer {iss.issuer!r} already at index {issuers_seen[iss.issuer]}"))
        issuers_seen.setdefault(iss.issuer, i)
        if iss.issuer is None and len(policy.issuers) > 1:
            out.append(([*ipath, "issuer"], "with several issuers each names its `iss`"))
        families = {ALGORITHM_FAMILY[a] for a in iss.algorithms}
        if not iss.keys and iss.jwks is None:
            out.append((ipath, "an issuer needs `keys` or `jwks`"))
        for j, key in enumerate(iss.keys):
            _check_key(key, families, [*ipath, "keys", j], out)
        if "oct" in families and not any(k.secret is not None or k.secret_file is not None or k.secret_env is not None
                                         or (k.jwk or {}).get("kty") == "oct" for k in iss.keys):
            out.append(([*ipath, "algorithms"], "an HMAC algorithm (HS*) needs a secret key in `keys`"))
        if iss.jwks is not None:
            problem = check_http_url(iss.jwks.url)
            if problem:
                out.append(([*ipath, "jwks", "url"], problem))
            if iss.jwks.min_cache > iss.jwks.max_cache:
                out.append(([*ipath, "jwks", "min_cache"], "min_cache is longer than max_cache"))
    for i, src in enumerate(policy.sources):
        spath = [*path, "sources", i]
        given = [k for k in ("header", "cookie", "query") if getattr(src, k) is not None]
        if len(given) != 1:
            out.append((spath, "a source needs exactly one of header, cookie, query"))
            continue
        if src.prefix is not None and src.header is None:
            out.append(([*spath, "prefix"], "a prefix goes with a header source"))
        if src.header is not None and not _TOKEN.match(src.header):
            out.append(([*spath, "header"], f"not a valid header name: {src.header!r}"))
    for claim, header in policy.claims_to_headers.items():
        _check_header_name(header, [*path, "claims_to_headers", claim], out)


def secret_bytes(key: JwtKey) -> bytes | None:
    """An HMAC key's secret, read from where the config says (None: not a secret key)."""
    if key.secret is not None:
        return key.secret.encode()
    if key.secret_file is not None:
        with open(key.secret_file, "rb") as f:
            return f.read().rstrip(b"\r\n")
    if key.secret_env is not None:
        value = os.environ.get(key.secret_env)
        if value is None:
            raise KeyError(key.secret_env)
        return value.encode()
    return None
