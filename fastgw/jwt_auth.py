"""The `jwt` policy's verifier: the slow path behind the core's cache of verified tokens.

`Verifier.check(token, now, loop)` parses the compact JWS, picks the issuer by `iss`, refuses an
algorithm outside the issuer's allow-list (`none` is never in one), tries only keys of the
algorithm's own family (an HMAC algorithm never sees an RSA or EC key), verifies with joserfc, then
checks `exp`/`nbf`/`iat` with leeway, `aud` and the required claims. When the keys must first come
from a JWKS URL it returns the fetch (an asyncio Future) instead; the core pauses the exchange and
asks again when the fetch is done. `prefetch_jwks` fetches a runtime's key sets before a worker serves
(and `start_jwks_prefetch` those a reload adds), so a first token need not wait. docs/auth-jwt.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import json
import time
import warnings
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, OctKey, OKPKey, RSAKey

from . import _core, events
from .config.jwt import ALGORITHM_FAMILY, JwksSource, JwtIssuer, JwtKey, JwtPolicy, secret_bytes

# RFC 9864 deprecates the polymorphic "EdDSA" name in favour of "Ed25519"; tokens still carry it, and the
# config's allow-list is what decides, so the library's per-call warning is noise in a worker's log
warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=Warning)

__all__ = ["Denied", "Jwks", "KeyLoadError", "LoadedKey", "Verifier", "build_jwt_policy", "jwks_sets", "load_key",
           "prefetch_jwks", "start_jwks_prefetch"]

# Why a token was refused: the 401's error_description (RFC 6750 3.1), also what `explain` and the
# tests see. UNAVAILABLE is the JWKS server being down or slow, answered per `jwks_failure`.
MALFORMED = "malformed token"
ALG_REFUSED = "algorithm not allowed"
UNKNOWN_ISSUER = "unknown issuer"
NO_KEY = "no key for this token"
BAD_SIGNATURE = "invalid signature"
EXPIRED = "token expired"
NOT_YET_VALID = "token not yet valid"
ISSUED_IN_FUTURE = "token issued in the future"
BAD_AUDIENCE = "audience not allowed"
MISSING_CLAIM = "required claim missing"
UNAVAILABLE = "keys unavailable"


class Denied:
    """A refusal: its reason, and the header lines and message of the answer."""

    __slots__ = ("reason", "status", "message", "header_lines")

    def __init__(self, reason: str, status: int = 401, message: bytes = b"unauthorized"):
        self.reason = reason
        self.status = status
        self.message = message
        self.header_lines = (f'WWW-Authenticate: Bearer error="invalid_token", error_description="{reason}"\r\n'
                             .encode() if status == 401 else b"")


_DENIED = {r: Denied(r) for r in (MALFORMED, ALG_REFUSED, UNKNOWN_ISSUER, NO_KEY, BAD_SIGNATURE, EXPIRED,
                                  NOT_YET_VALID, ISSUED_IN_FUTURE, BAD_AUDIENCE, MISSING_CLAIM, UNAVAILABLE)}
_UNAVAILABLE_503 = Denied(UNAVAILABLE, 503, b"authentication unavailable")


class KeyLoadError(ValueError):
    pass


@dataclass(frozen=True)
class LoadedKey:
    kid: str | None
    family: str          # ALGORITHM_FAMILY's values: oct, RSA, EC:<curve>, OKP
    key: Any             # the joserfc key


def _family(key: Any) -> str:
    if isinstance(key, OctKey):
        return "oct"
    if isinstance(key, RSAKey):
        return "RSA"
    if isinstance(key, ECKey):
        return f"EC:{key.curve_name}"
    if isinstance(key, OKPKey):
        return "OKP" if key.curve_name in ("Ed25519", "Ed448") else f"OKP:{key.curve_name}"
    return type(key).__name__


def _import_jwk(data: dict) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # joserfc warns on short HMAC secrets; config says so
        return JWKRegistry.import_key(data)


def _from_pem(pem: bytes) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if b"CERTIFICATE" in pem:
        public = x509.load_pem_x509_certificate(pem).public_key()
    elif b"PRIVATE KEY" in pem:
        public = serialization.load_pem_private_key(pem, password=None).public_key()
    else:
        public = serialization.load_pem_public_key(pem)
    der = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if isinstance(public, rsa.RSAPublicKey):
        return RSAKey.import_key(der)
    if isinstance(public, ec.EllipticCurvePublicKey):
        return ECKey.import_key(der)
    if isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return OKPKey.import_key(der)
    raise KeyLoadError(f"unsupported key type {type(public).__name__}")


def load_key(cfg: JwtKey) -> LoadedKey:
    """The key a config entry names. Raises KeyLoadError with a message fit for a config error (no
    secret in it)."""
    try:
        secret = secret_bytes(cfg)
    except OSError as exc:
        raise KeyLoadError(f"cannot read {cfg.secret_file!r}: {exc.strerror}") from None
    except KeyError:
        raise KeyLoadError(f"environment variable {cfg.secret_env!r} is not set") from None
    if secret is not None:
        if not secret:
            raise KeyLoadError("the secret is empty")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # short secrets: the config check says so, with its path
            return LoadedKey(cfg.kid, "oct", OctKey.import_key(secret))
    try:
        if cfg.jwk is not None:
            key = _import_jwk(dict(cfg.jwk))
            kid = cfg.kid or cfg.jwk.get("kid")
        else:
            if cfg.pem_file is not None:
                try:
                    with open(cfg.pem_file, "rb") as f:
                        pem = f.read()
                except OSError as exc:
                    raise KeyLoadError(f"cannot read {cfg.pem_file!r}: {exc.strerror}") from None
            else:
                pem = (cfg.pem or "").encode()
            key = _from_pem(pem)
            kid = cfg.kid
    except KeyLoadError:
        raise
    except (ValueError, TypeError, JoseError) as exc:
        raise KeyLoadError(f"not a usable key: {type(exc).__name__}: {str(exc)[:200]}") from None
    return LoadedKey(kid, _family(key), key)


def _b64(part: bytes) -> bytes:
    return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))


def _max_age(headers: Any) -> float | None:
    """Seconds a response may be kept, from Cache-Control (no-store/no-cache: 0) or Expires."""
    cc = headers.get("cache-control")
    if cc:
        for directive in cc.lower().split(","):
            name, _, value = directive.strip().partition("=")
            if name in ("no-store", "no-cache"):
                return 0.0
            if name in ("max-age", "s-maxage"):
                try:
                    return max(0.0, float(int(value.strip().strip('"'))))
                except ValueError:
                    pass
    expires = headers.get("expires")
    if expires:
        try:
            when = email.utils.parsedate_to_datetime(expires).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return 0.0
        return max(0.0, when - time.time())
    return None


class Jwks:
    """One JWKS URL's keys in this worker: fetched when first needed, kept per its cache headers,
    refreshed in the background when stale, refetched (rate limited) for an unknown `kid`."""

    def __init__(self, cfg: JwksSource):
        self.cfg = cfg
        self.keys: list[LoadedKey] = []
        self.fetched = False          # one good fetch so far
        self.expires = 0.0
        self.last_attempt = -1e18
        self.failed = False           # the last fetch failed
        self.fetch: asyncio.Future | None = None
        self._client = None

    def adopt(self, old: Jwks) -> None:
        self.keys, self.fetched, self.expires = old.keys, old.fetched, old.expires
        self.last_attempt, self.failed = old.last_attempt, old.failed
        self._client = old._client        # its pooled connection to the JWKS server too
        if old.fetch is not None and not old.fetch.done():
            self.fetch = old.fetch

    def start(self, loop: asyncio.AbstractEventLoop, prefetch: bool = False) -> asyncio.Future:
        """The fetch in progress, or a new one. prefetch: made at start or reload, before any token
        asked for it (so said in the failure's event)."""
        if self.fetch is None or self.fetch.done():
            self.last_attempt = time.monotonic()
            self.fetch = loop.create_task(self._fetch(prefetch))
        return self.fetch

    def may_refetch(self) -> bool:
        return time.monotonic() - self.last_attempt >= self.cfg.refetch_interval

    async def _fetch(self, prefetch: bool = False) -> None:
        import httpx

        cfg = self.cfg
        try:
            if self._client is None:
                self._client = httpx.AsyncClient(timeout=cfg.timeout, follow_redirects=False)
            resp = await asyncio.wait_for(self._client.get(cfg.url, headers={"Accept": "application/json"}),
                                          cfg.timeout)
            if resp.status_code != 200:
                raise ValueError(f"status {resp.status_code}")
            doc = resp.json()
            keys = []
            for entry in doc["keys"]:
                if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                    continue
                try:
                    key = _import_jwk(entry)
                except (ValueError, TypeError, KeyError, JoseError):
                    continue              # one key we cannot use does not spoil the set
                keys.append(LoadedKey(entry.get("kid"), _family(key), key))
            age = _max_age(resp.headers)
        except Exception as exc:  # noqa: BLE001 - any failure of the fetch is the JWKS server's
            self.failed = True
            events.emit("warning", "jwks_fetch_failed",
                        msg=f"JWKS {'prefetch' if prefetch else 'fetch'} from {cfg.url} failed: {exc!r}",
                        url=cfg.url, error=repr(exc)[:300], prefetch=prefetch)
            return
        self.keys = keys
        self.fetched = True
        self.failed = False
        ttl = cfg.cache_duration if age is None else age
        self.expires = time.monotonic() + min(max(ttl, cfg.min_cache), cfg.max_cache)


class _Issuer:
    def __init__(self, cfg: JwtIssuer):
        self.cfg = cfg
        self.name = cfg.issuer
        self.algorithms = frozenset(cfg.algorithms)
        self.keys = [load_key(k) for k in cfg.keys]
        self.jwks = Jwks(cfg.jwks) if cfg.jwks is not None else None
        self.audiences = frozenset(cfg.audiences) if cfg.audiences is not None else None
        self.consumer_claim = cfg.consumer_claim

    def candidates(self, family: str, kid: str | None) -> list[LoadedKey]:
        keys = [k for k in self.keys if k.family == family and (k.kid is None or kid is None or k.kid == kid)]
        if self.jwks is not None:
            keys += [k for k in self.jwks.keys if k.family == family and (kid is None or k.kid == kid)]
        return keys


def _claim_text(value: Any) -> str | None:
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = str(value)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = ",".join(value)
    elif value is None:
        return None
    else:
        text = json.dumps(value, separators=(",", ":"))
    if any(c in text for c in "\r\n\0"):
        return None                   # a value that cannot be one header line is not forwarded
    return text


class Verifier:
    def __init__(self, cfg: JwtPolicy):
        self.cfg = cfg
        self.issuers = [_Issuer(i) for i in cfg.issuers]
        self.by_name = {i.name: i for i in self.issuers}
        self.any_issuer = self.issuers[0] if len(self.issuers) == 1 and self.issuers[0].name is None else None
        self.leeway = cfg.leeway
        self.required = tuple(cfg.required_claims)
        self.claim_headers = [(claim, header.lower().encode(), header.encode())
                              for claim, header in cfg.claims_to_headers.items()]
        self.cache_ttl = cfg.cache_ttl
        self.unavailable = _UNAVAILABLE_503 if cfg.jwks_failure == "unavailable" else _DENIED[UNAVAILABLE]
        self.fetch_deadline = max((i.jwks.cfg.timeout for i in self.issuers if i.jwks is not None), default=0.0)

    def adopt(self, old: Verifier) -> None:
        """Key sets of the same JWKS URLs carry over a reload (no refetch storm at SIGHUP)."""
        olds = {i.jwks.cfg.url: i.jwks for i in old.issuers if i.jwks is not None}
        for issuer in self.issuers:
            if issuer.jwks is not None and issuer.jwks.cfg.url in olds:
                issuer.jwks.adopt(olds[issuer.jwks.cfg.url])

    def check(self, token: bytes, now: float, loop: asyncio.AbstractEventLoop | None, may_fetch: bool = True):
        """A verified token (`_core.JwtVerified`), a `Denied`, or an asyncio Future to wait for (a JWKS
        fetch) before asking again with may_fetch False."""
        parts = token.split(b".")
        if len(parts) != 3:
            return _DENIED[MALFORMED]
        try:
            header = json.loads(_b64(parts[0]))
            claims = json.loads(_b64(parts[1]))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return _DENIED[MALFORMED]
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return _DENIED[MALFORMED]
        alg = header.get("alg")
        if "crit" in header:              # no extension is understood here (RFC 7515 4.1.11)
            return _DENIED[MALFORMED]
        iss = claims.get("iss")
        issuer = self.any_issuer or (self.by_name.get(iss) if isinstance(iss, str) else None)
        if issuer is None:
            return _DENIED[UNKNOWN_ISSUER]
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            return _DENIED[ALG_REFUSED]
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            return _DENIED[MALFORMED]
        family = ALGORITHM_FAMILY[alg]
        keys = issuer.candidates(family, kid)
        jwks = issuer.jwks
        if jwks is not None and loop is not None and may_fetch:
            in_flight = jwks.fetch is not None and not jwks.fetch.done()
            if not jwks.fetched or not keys:
                if in_flight:
                    return jwks.fetch
                if jwks.may_refetch():    # rate limited: made-up kids cannot flood the JWKS server
                    return jwks.start(loop)
            elif jwks.expires <= time.monotonic() and not in_flight and jwks.may_refetch():
                jwks.start(loop)          # stale: refreshed in the background, used meanwhile
        if not keys:
            if jwks is not None and (not jwks.fetched or jwks.failed) and not issuer.keys:
                return self.unavailable
            return _DENIED[NO_KEY]
        for key in keys:
            try:
                jws.deserialize_compact(token, key.key, algorithms=[alg])
                break
            except JoseError:
                continue
            except (ValueError, TypeError):
                return _DENIED[MALFORMED]
        else:
            return _DENIED[BAD_SIGNATURE]
        return self._claims(issuer, claims, now)

    def _claims(self, issuer: _Issuer, claims: dict, now: float):
        leeway = self.leeway
        exp = claims.get("exp")
        if exp is not None:
            if not isinstance(exp, int | float) or isinstance(exp, bool):
                return _DENIED[MALFORMED]
            if now >= exp + leeway:
                return _DENIED[EXPIRED]
        nbf = claims.get("nbf")
        if nbf is not None:
            if not isinstance(nbf, int | float) or isinstance(nbf, bool):
                return _DENIED[MALFORMED]
            if now + leeway < nbf:
                return _DENIED[NOT_YET_VALID]
        iat = claims.get("iat")
        if iat is not None:
            if not isinstance(iat, int | float) or isinstance(iat, bool):
                return _DENIED[MALFORMED]
            if now + leeway < iat:
                return _DENIED[ISSUED_IN_FUTURE]
        if issuer.audiences is not None:
            aud = claims.get("aud")
            auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if not any(isinstance(a, str) and a in issuer.audiences for a in auds):
                return _DENIED[BAD_AUDIENCE]
        for name in self.required:
            if name not in claims:
                return _DENIED[MISSING_CLAIM]
        edits = []
        for claim, lname, name in self.claim_headers:
            edits.append((lname, None, True))          # any copy the client sent goes
            text = _claim_text(claims.get(claim))
            if text is not None:
                edits.append((lname, name + b": " + text.encode() + b"\r\n", False))
        subject = _claim_text(claims.get(issuer.consumer_claim))
        until = now + self.cache_ttl
        if exp is not None:
            until = min(until, exp + self.leeway)
        return _core.JwtVerified(until, issuer.name, subject, claims, edits)


def jwks_sets(runtime: Any) -> list[Jwks]:
    """Every JWKS key set a compiled runtime's `jwt` policies use, alone or as a method of `auth`."""
    out = []
    for policy in runtime.policies.values():
        methods = policy.methods if isinstance(policy, _core.AuthCombinator) else (policy,)
        for method in methods:
            if isinstance(method, _core.JwtAuth):
                out += [i.jwks for i in method.verifier.issuers if i.jwks is not None]
    return out


def start_jwks_prefetch(runtime: Any, loop: asyncio.AbstractEventLoop) -> list[asyncio.Future]:
    """Starts fetching every key set the runtime has no keys of yet (a new JWKS URL; a reload's
    adopted sets already have theirs) and returns the fetches. A failure is an event line
    (`jwks_fetch_failed`, `prefetch: true`), never an error: requests then fetch as they need."""
    return [jwks.start(loop, prefetch=True) for jwks in jwks_sets(runtime)
            if not jwks.fetched and (jwks.fetch is None or jwks.fetch.done())]


PREFETCH_WAIT = 5.0     # the longest a worker's start waits for its key sets; slower ones go on meanwhile


async def prefetch_jwks(runtime: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Fetches the runtime's key sets before the worker serves, each within its own `timeout` (the
    start waits at most PREFETCH_WAIT), so the first token is verified without waiting for a fetch."""
    fetches = start_jwks_prefetch(runtime, loop)
    if fetches:
        await asyncio.wait(fetches, timeout=PREFETCH_WAIT)


def build_jwt_policy(entry: JwtPolicy, name: str, key: str) -> _core.Policy:
    verifier = Verifier(entry)
    sources = []
    for src in entry.sources:
        if src.header is not None:
            sources.append((0, src.header.lower().encode(), (src.prefix or "").lower().encode()))
        elif src.cookie is not None:
            sources.append((1, src.cookie.encode(), b""))
        else:
            sources.append((2, src.query.encode(), b""))
    return _core.JwtAuth(name, key, verifier, sources, entry.cache_size, entry.forward_token,
                         verifier.fetch_deadline + 1.0, entry)
