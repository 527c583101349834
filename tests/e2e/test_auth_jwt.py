"""The `jwt` policy over real sockets: tokens of every algorithm signed here, verified by the gateway
against inline keys, PEM files and a JWKS server this test runs (rotated, stalled, down); the claim
checks; algorithm confusion; where the token comes from; claims forwarded upstream."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
from support.authservers import JwksServer
from support.client import RawConn, assert_gateway_error, wait_until
from support.gateway import simple_config, upstream_config
from support.upstreams import ClosedPort

pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

ALL_ALGS = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
            "ES256", "ES384", "ES512", "EdDSA"]
SECRET = "an HMAC secret long enough for HS512 ......................................"
STATIC_ISS = "https://static.example"
JWKS_ISS = "https://jwks.example"


RFC = json.loads((Path(__file__).resolve().parents[1] / "data" / "jose" / "rfc7520.json").read_text())


def _pem(private) -> str:
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class Keys:
    """Private keys of every family, made once per module."""

    def __init__(self):
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = {"ES256": ec.generate_private_key(ec.SECP256R1()), "ES384": ec.generate_private_key(ec.SECP384R1()),
                   "ES512": ec.generate_private_key(ec.SECP521R1())}
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.rsa_jwks = {k: rsa.generate_private_key(public_exponent=65537, key_size=2048) for k in ("k1", "k2")}

    def signing_key(self, alg: str):
        if alg.startswith("HS"):
            return OctKey.import_key(SECRET.encode())
        if alg[:2] in ("RS", "PS"):
            return RSAKey.import_key(self.rsa)
        if alg.startswith("ES"):
            return ECKey.import_key(self.ec[alg])
        return OKPKey.import_key(self.ed)

    def pem_of(self, alg: str) -> str:
        if alg[:2] in ("RS", "PS"):
            return _pem(self.rsa)
        if alg.startswith("ES"):
            return _pem(self.ec[alg])
        return _pem(self.ed)

    def jwk(self, kid: str) -> dict:
        d = RSAKey.import_key(self.rsa_jwks[kid]).as_dict(private=False)
        return {**d, "kid": kid, "use": "sig", "alg": "RS256"}


def token(keys: Keys, alg: str = "RS256", kid: str | None = None, key=None, **claims) -> str:
    now = int(time.time())
    body = {"iss": STATIC_ISS, "sub": "alice", "iat": now, "exp": now + 600, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    header = {"alg": alg, **({"kid": kid} if kid else {})}
    return jwt.encode(header, body, key if key is not None else keys.signing_key(alg), algorithms=[alg])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with(secret: bytes, header: dict, claims: dict) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


@pytest.fixture(scope="module")
def keys():
    return Keys()


@pytest.fixture(scope="module")
def world(tmp_path_factory, keys, echo, module_gateway_factory):
    d = tmp_path_factory.mktemp("jwt")
    static_keys = [{"secret": SECRET}]
    for i, alg in enumerate(["RS256", "ES256", "ES384", "ES512", "EdDSA"]):
        path = d / f"key{i}.pem"
        path.write_text(keys.pem_of(alg))
        static_keys.append({"pem_file": str(path)} if i % 2 == 0 else {"pem": keys.pem_of(alg)})
    jwks = JwksServer([keys.jwk("k1")])
    stalled = JwksServer([keys.jwk("k1")])
    stalled.delay = 5.0
    closed = ClosedPort()
    forward = {"sub": "X-Jwt-Sub", "scope": "X-Jwt-Scope"}

    def route(name, prefix, policy):
        return {"name": name, "match": {"path": {"prefix": prefix}}, "upstream": "echo",
                "policies": [{"type": "jwt", **policy}]}

    def jwks_issuer(iss, url, timeout="2s", **extra):
        return {"issuer": iss, "algorithms": ["RS256"],
                "jwks": {"url": url, "timeout": timeout, "refetch_interval": "0s", **extra}}

    cfg = simple_config(upstreams={"echo": upstream_config(echo.address)}, routes=[
        route("static", "/static", {"issuers": [{"issuer": STATIC_ISS, "algorithms": ALL_ALGS, "keys": static_keys}],
                                    "claims_to_headers": forward}),
        route("exact", "/exact", {"issuers": [{"issuer": STATIC_ISS, "algorithms": ["HS256"], "keys": [{"secret": SECRET}],
                                               "audiences": ["orders"]}],
                                  "leeway": "0s", "required_claims": ["scope"], "claims_to_headers": forward}),
        route("mixed", "/mixed", {"issuers": [{"issuer": STATIC_ISS, "algorithms": ["RS256", "HS256"],
                                               "keys": [{"pem": keys.pem_of("RS256")}, {"secret": SECRET}]}]}),
        route("rsonly", "/rsonly", {"issuers": [{"issuer": STATIC_ISS, "algorithms": ["RS256"],
                                                 "keys": [{"pem": keys.pem_of("RS256")}]}]}),
        route("sources", "/sources", {"issuers": [{"issuer": STATIC_ISS, "algorithms": ["HS256"], "keys": [{"secret": SECRET}]}],
                                      "sources": [{"header": "X-Token"}, {"cookie": "session"}, {"query": "access_token"}],
                                      "forward_token": False, "claims_to_headers": forward}),
        route("jwks", "/jwks", {"issuers": [jwks_issuer(JWKS_ISS, jwks.url)], "claims_to_headers": forward}),
        route("stalled", "/stalled", {"issuers": [jwks_issuer(JWKS_ISS, stalled.url, timeout="500ms")]}),
        route("down", "/down", {"issuers": [jwks_issuer(JWKS_ISS, f"http://{closed.address}/jwks")]}),
        route("down-deny", "/deny", {"issuers": [jwks_issuer(JWKS_ISS, f"http://{closed.address}/jwks")],
                                     "jwks_failure": "deny"}),
        route("rfc7515", "/rfc7515", {"issuers": [{"issuer": "joe", "algorithms": ["HS256"],
                                                   "keys": [{"jwk": RFC["keys"]["rfc7515-a1"]}]}]}),
        {"name": "open", "match": {"path": {"prefix": "/"}}, "upstream": "echo"},
    ])
    gw = module_gateway_factory(cfg)
    yield gw, jwks, stalled
    for s in (jwks, stalled, closed):
        s.close()


def get(gw, path, tok=None, headers=()):
    hs = [("Authorization", f"Bearer {tok}")] if tok else []
    with RawConn(gw.port) as c:
        return c.request("GET", path, [*hs, *headers])


def upstream_headers(resp) -> dict:
    return {k.lower(): v for k, v in json.loads(resp.body)["headers"]}


def assert_refused(resp, reason: str | None = None, status: int = 401):
    assert_gateway_error(resp, status)
    if reason is not None:
        assert f'error_description="{reason}"' in resp.headers.get("www-authenticate", ""), resp.headers


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_every_algorithm_verifies_and_names_the_consumer(world, keys, alg):
    gw, _, _ = world
    r = get(gw, "/static/x", token(keys, alg), [("X-Jwt-Sub", "mallory")])
    assert r.status == 200, r.body
    seen = upstream_headers(r)
    assert seen["x-jwt-sub"] == "alice"          # the client's own copy was dropped
    assert "x-jwt-scope" not in seen
    assert seen["authorization"].startswith("Bearer ")


def test_missing_token_is_401_with_a_bearer_challenge(world):
    gw, _, _ = world
    r = get(gw, "/static/x")
    body = assert_gateway_error(r, 401)
    assert body["error"] == "authentication required"
    assert r.headers.get("www-authenticate", "").startswith("Bearer")
    assert get(gw, "/static/x", headers=[("Authorization", "Basic YTpi")]).status == 401


def test_a_cached_token_still_answers_and_a_tampered_one_does_not(world, keys):
    gw, _, _ = world
    t = token(keys, "RS256")
    assert get(gw, "/static/a", t).status == 200
    assert get(gw, "/static/b", t).status == 200
    head, payload, sig = t.split(".")
    forged = b64(json.dumps({"iss": STATIC_ISS, "sub": "root", "exp": int(time.time()) + 600}).encode())
    assert_refused(get(gw, "/static/c", f"{head}.{forged}.{sig}"), "invalid signature")
    assert_refused(get(gw, "/static/c", f"{head}.{payload}.{sig[:-4]}AAAA"), "invalid signature")
    assert_refused(get(gw, "/static/c", "not-a-jwt"), "malformed token")


@pytest.mark.parametrize("claims,reason", [
    ({"exp": int(time.time()) - 3600}, "token expired"),
    ({"nbf": int(time.time()) + 3600}, "token not yet valid"),
    ({"iat": int(time.time()) + 3600}, "token issued in the future"),
    ({"iss": "https://elsewhere.example"}, "unknown issuer"),
    ({"iss": None}, "unknown issuer"),
])
def test_time_and_issuer_claims(world, keys, claims, reason):
    gw, _, _ = world
    assert_refused(get(gw, "/static/x", token(keys, "HS256", **claims)), reason)


def test_leeway_audience_and_required_claims(world, keys):
    gw, _, _ = world
    good = {"aud": ["billing", "orders"], "scope": "read"}
    r = get(gw, "/exact/x", token(keys, "HS256", **good))
    assert r.status == 200
    assert upstream_headers(r)["x-jwt-scope"] == "read"
    assert_refused(get(gw, "/exact/x", token(keys, "HS256", aud="billing", scope="read")), "audience not allowed")
    assert_refused(get(gw, "/exact/x", token(keys, "HS256", scope="read")), "audience not allowed")
    assert_refused(get(gw, "/exact/x", token(keys, "HS256", aud="orders")), "required claim missing")
    # 30 s past exp: inside the default 60 s leeway (/static), outside none (/exact)
    late = {"exp": int(time.time()) - 30, **good}
    assert get(gw, "/static/x", token(keys, "HS256", **late)).status == 200
    assert_refused(get(gw, "/exact/x", token(keys, "HS256", **late)), "token expired")


def test_a_cached_token_is_refused_once_it_expires(world, keys):
    gw, _, _ = world
    t = token(keys, "HS256", exp=int(time.time()) + 2, aud="orders", scope="read")
    assert get(gw, "/exact/x", t).status == 200
    time.sleep(3.1)
    assert_refused(get(gw, "/exact/x", t), "token expired")


def test_the_rfc7515_example_jwt_reaches_its_claims_and_is_expired(world):
    """RFC 7515 A.1's HS256 JWT: its signature checks with its key; its exp (2011) is long past."""
    gw, _, _ = world
    jwt_a1 = RFC["jwts"][0]["compact"]
    assert_refused(get(gw, "/rfc7515/x", jwt_a1), "token expired")
    head, payload, sig = jwt_a1.split(".")
    assert_refused(get(gw, "/rfc7515/x", f"{head}.{payload}.{sig[:-2]}AA"), "invalid signature")


def test_alg_none_is_always_refused(world, keys):
    gw, _, _ = world
    now = int(time.time())
    for alg in ("none", "None", "NONE"):
        unsigned = (f"{b64(json.dumps({'alg': alg}).encode())}."
                    f"{b64(json.dumps({'iss': STATIC_ISS, 'sub': 'root', 'exp': now + 600}).encode())}.")
        assert_refused(get(gw, "/static/x", unsigned), "algorithm not allowed")
    assert_refused(get(gw, "/static/x", token(keys, "HS256", key=OctKey.import_key(b"x" * 64))
                       .replace(b64(b'{"alg":"HS256"}'), b64(b'{"alg":"HS256","crit":["exp"]}'))))


def test_rs256_token_re_signed_as_hs256_with_the_public_key(world, keys):
    """The classic confusion: the RSA public key (PEM, as the gateway holds it) used as an HMAC secret."""
    gw, _, _ = world
    claims = {"iss": STATIC_ISS, "sub": "root", "exp": int(time.time()) + 600}
    public_pem = keys.pem_of("RS256").encode()
    forged = hs256_with(public_pem, {"alg": "HS256", "typ": "JWT"}, claims)
    assert_refused(get(gw, "/rsonly/x", forged), "algorithm not allowed")
    # where HS256 is allowed too (with its own secret), the RSA key is still never an HMAC key
    assert_refused(get(gw, "/mixed/x", forged), "invalid signature")
    assert get(gw, "/mixed/x", token(keys, "RS256")).status == 200
    assert get(gw, "/mixed/x", token(keys, "HS256")).status == 200


def test_token_sources_and_forward_token_off(world, keys):
    gw, _, _ = world
    t = token(keys, "HS256")
    r = get(gw, "/sources/x", headers=[("X-Token", t)])
    assert r.status == 200 and "x-token" not in upstream_headers(r)
    r = get(gw, "/sources/x", headers=[("Cookie", f"theme=dark; session={t}")])
    assert r.status == 200 and upstream_headers(r)["x-jwt-sub"] == "alice"
    assert get(gw, f"/sources/x?a=1&access_token={t}").status == 200
    assert get(gw, "/sources/x", t).status == 401           # Authorization is not one of this route's sources


def test_jwks_keys_fetched_then_rotation_refetches_at_once(world, keys):
    gw, jwks, _ = world
    claims = {"iss": JWKS_ISS}
    wait_until(lambda: jwks.fetches >= 1, what="the worker's JWKS prefetch")
    first = jwks.fetches
    r = get(gw, "/jwks/x", token(keys, "RS256", kid="k1", key=RSAKey.import_key(keys.rsa_jwks["k1"]), **claims))
    assert r.status == 200, r.body
    assert jwks.fetches == first                             # prefetched when the worker started
    assert get(gw, "/jwks/y", token(keys, "RS256", kid="k1", key=RSAKey.import_key(keys.rsa_jwks["k1"]),
                                    sub="bob", **claims)).status == 200
    assert jwks.fetches == first                             # cached per Cache-Control
    # rotation: the server now publishes k2 only; a k2 token triggers an immediate refetch
    with jwks.lock:
        jwks.keys = [keys.jwk("k2")]
    r = get(gw, "/jwks/z", token(keys, "RS256", kid="k2", key=RSAKey.import_key(keys.rsa_jwks["k2"]), **claims))
    assert r.status == 200, r.body
    assert upstream_headers(r)["x-jwt-sub"] == "alice"
    assert jwks.fetches == first + 1
    # a kid nobody publishes: refused after one more (rate-limited) fetch
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert_refused(get(gw, "/jwks/z", token(keys, "RS256", kid="k9", key=RSAKey.import_key(rogue), **claims)),
                   "no key for this token")
    # signed by k1's key but claiming k2: the kid selects k2, whose signature check fails
    assert_refused(get(gw, "/jwks/z", token(keys, "RS256", kid="k2", key=RSAKey.import_key(keys.rsa_jwks["k1"]),
                                            **claims)), "invalid signature")


def test_jwks_down_or_slow_answers_within_its_deadline(world, keys):
    gw, _, stalled = world
    t = token(keys, "RS256", kid="k1", key=RSAKey.import_key(keys.rsa_jwks["k1"]), iss=JWKS_ISS)
    r = get(gw, "/down/x", t)
    body = assert_gateway_error(r, 503)
    assert body["error"] == "authentication unavailable"
    assert_refused(get(gw, "/deny/x", t), "keys unavailable")
    # the server would answer with the right key after 5 s: a 503 is the fetch's own 0.5 s deadline
    assert_gateway_error(get(gw, "/stalled/x", t), 503)
    wait_until(lambda: stalled.fetches >= 1, what="the stalled JWKS server to be asked")


def test_a_reload_keeps_the_jwks_keys(world, keys):
    """SIGHUP with the same JWKS URL: the worker goes on with the keys it has, no refetch storm."""
    from support.logs import wait_event

    gw, jwks, _ = world
    with jwks.lock:
        jwks.keys = [keys.jwk("k1"), keys.jwk("k2")]
    t = token(keys, "RS256", kid="k2", key=RSAKey.import_key(keys.rsa_jwks["k2"]), iss=JWKS_ISS)
    assert get(gw, "/jwks/before", t).status == 200
    fetches = jwks.fetches
    mark = gw.stderr_line_count()
    cfg = dict(gw.config)
    cfg["routes"] = [*gw.config["routes"][:-1], {"name": "added", "match": {"path": {"prefix": "/added"}},
                                                 "upstream": "echo"}, gw.config["routes"][-1]]
    gw.reload(cfg)
    wait_event(gw, "reload_applied", since=mark)
    assert get(gw, "/jwks/after", t).status == 200
    assert jwks.fetches == fetches


# ---- JWKS prefetch: each worker fetches its key sets before it serves (and a reload's new ones) ---

def _jwks_route(name, prefix, url):
    return {"name": name, "match": {"path": {"prefix": prefix}}, "upstream": "echo",
            "policies": [{"type": "jwt", "issuers": [{"issuer": JWKS_ISS, "algorithms": ["RS256"],
                                                      "jwks": {"url": url, "timeout": "2s"}}]}]}


def test_jwks_prefetched_at_start_and_for_a_reloads_new_url(keys, echo, gateway_factory):
    from support.logs import wait_event

    first, second = JwksServer([keys.jwk("k1")]), JwksServer([keys.jwk("k2")])
    try:
        cfg = simple_config(upstreams={"echo": upstream_config(echo.address)},
                            routes=[_jwks_route("one", "/one", first.url)])
        gw = gateway_factory(cfg, workers=2)
        # no request yet: both workers fetched the set before serving
        wait_until(lambda: first.fetches == 2, what="each worker's prefetch")
        t1 = token(keys, "RS256", kid="k1", key=RSAKey.import_key(keys.rsa_jwks["k1"]), iss=JWKS_ISS)
        for _ in range(4):                                   # whichever worker takes it
            assert get(gw, "/one/x", t1).status == 200
        assert first.fetches == 2                            # the first requests fetched nothing
        # a reload adding a route with another JWKS URL: fetched at the reload, not by its first request
        mark = gw.stderr_line_count()
        gw.reload({**cfg, "routes": [*cfg["routes"], _jwks_route("two", "/two", second.url)]})
        wait_event(gw, "reload_applied", since=mark)
        wait_until(lambda: second.fetches == 2, what="the reload's prefetch")
        t2 = token(keys, "RS256", kid="k2", key=RSAKey.import_key(keys.rsa_jwks["k2"]), iss=JWKS_ISS)
        for _ in range(4):
            assert get(gw, "/two/x", t2).status == 200
        assert (first.fetches, second.fetches) == (2, 2)     # the kept URL is not fetched again
    finally:
        first.close()
        second.close()


def test_a_failed_prefetch_is_logged_and_the_worker_serves(keys, echo, gateway_factory):
    from support.logs import wait_event

    closed = ClosedPort()
    try:
        url = f"http://{closed.address}/jwks"
        gw = gateway_factory(simple_config(upstreams={"echo": upstream_config(echo.address)}, routes=[
            _jwks_route("jwks", "/jwks", url),
            {"name": "open", "match": {"path": {"prefix": "/"}}, "upstream": "echo"}]))
        event = wait_event(gw, "jwks_fetch_failed", prefetch=True)
        assert event["url"] == url and event["level"] == "warning"
        assert get(gw, "/open").status == 200
        t = token(keys, "RS256", kid="k1", key=RSAKey.import_key(keys.rsa_jwks["k1"]), iss=JWKS_ISS)
        assert_gateway_error(get(gw, "/jwks/x", t), 503)
    finally:
        closed.close()
