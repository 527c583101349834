"""The scenarios: what wrk sends, how many connections, and the route table for the gateway one."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .load import Request
from .peers import GATEWAY_MATCH_HEADER, Routes

#: The plugin scenario's plugin (bench/harness/trivial_plugin.py), importable with the repository root on
#: PYTHONPATH, which is how the harness starts fastgw.
PLUGIN_MODULE = "bench.harness.trivial_plugin:Trivial"


@dataclass
class Scenario:
    name: str
    description: str
    connections: int
    requests: list[Request]
    #: The request httperf sends for the open-loop figure.
    open_loop: Request
    routes: Routes | None = None
    notes: list[str] = field(default_factory=list)
    #: fastgw only: the `policies:` of its route(s), each a dict as in the config (nginx and HAProxy have
    #: no equivalent and run their plain config).
    fastgw_policies: list[dict] = field(default_factory=list)
    #: The proxies write a JSON access line per request to a file (fastgw's access_log, nginx's
    #: access_log with a JSON log_format); otherwise every proxy's access log is off.
    access_log: bool = False
    #: fastgw only: top-level config sections (`tracing:`, say), each a dict as in the config.
    fastgw_config: dict = field(default_factory=dict)
    #: HTTPS (issue 13): the proxies terminate TLS with one self-signed certificate of this key type,
    #: "ecdsa" (P-256) or "rsa" (2048); fastgw and nginx only.
    tls: str | None = None
    #: TLS session resumption allowed (False: every connection a full handshake).
    tls_resumption: bool = True
    #: nginx's equivalent of fastgw_policies (peers.PeerConfig.nginx_http / nginx_location).
    nginx_http: str = ""
    nginx_location: str = ""
    #: A rate limit per client IP, requests/s (fastgw: a `rate_limit` policy keyed by client_ip; nginx:
    #: limit_req with a zone on $binary_remote_addr, burst as large, nodelay); HAProxy runs without.
    ip_rate_limit: int | None = None


TENANTS = [f"t{k}.api.example.com" for k in range(10)]
RESOURCES = [
    "users", "orders", "carts", "products", "invoices", "payments", "shipments", "reviews", "search",
    "sessions", "accounts", "catalog", "inventory", "pricing", "coupons", "wishlists", "addresses",
    "notifications", "messages", "media", "uploads", "reports", "analytics", "webhooks", "tokens",
    "subscriptions", "plans", "teams", "projects", "tickets",
]  # fmt: skip


def gateway_routes(n: int) -> Routes:
    """n routes over 10 hosts, each with prefixes like /api/v1/orders/ (distinct per host)."""
    hosts, prefixes = [], []
    for i in range(n):
        hosts.append(TENANTS[i % len(TENANTS)])
        j = i // len(TENANTS)
        version = 1 + j // len(RESOURCES)
        prefixes.append(f"/api/v{version}/{RESOURCES[j % len(RESOURCES)]}/")
    return Routes(hosts=hosts, prefixes=prefixes)


def gateway_requests(routes: Routes, count: int = 64) -> list[Request]:
    """`count` requests spread over the whole table (the last routes included), realistic paths."""
    rng = random.Random(7)
    n = len(routes.hosts)
    picks = sorted({min(n - 1, (k * n) // count + rng.randrange(max(1, n // count))) for k in range(count)})
    picks[-1] = n - 1
    out = []
    for i in picks:
        tail = rng.choice(["", f"{rng.randrange(10**6)}", f"{rng.randrange(10**6)}/items?limit=20&page=2"])
        out.append(
            Request(
                "GET",
                routes.prefixes[i] + tail,
                {
                    "Host": routes.hosts[i],
                    GATEWAY_MATCH_HEADER[0]: GATEWAY_MATCH_HEADER[1],
                    "Accept": "application/json",
                    "User-Agent": "fastgw-bench/1",
                },
            )
        )
    return out


def build(names: list[str], gateway_route_count: int = 300) -> list[Scenario]:
    get26 = Request("GET", "/")
    post = Request("POST", "/sink", {"Content-Type": "application/octet-stream"}, b"x" * 4096)
    all_ = {
        "get26": lambda: Scenario("get26", "GET, 26 B response, 50 connections", 50, [get26], get26),
        "get64k": lambda: Scenario(
            "get64k",
            "GET, 64 KiB response, 50 connections",
            50,
            [Request("GET", "/64k")],
            Request("GET", "/64k"),
        ),
        "post4k": lambda: Scenario(
            "post4k", "POST 4 KiB body to a sink, 26 B response, 50 connections", 50, [post], post
        ),
        "c1000": lambda: Scenario("c1000", "GET, 26 B response, 1,000 connections", 1000, [get26], get26),
        "gateway": lambda: _gateway(gateway_route_count),
        # The cost of the policy chain (issue 8): the get26 request, fastgw's route with policies.
        "policies4": lambda: Scenario(
            "policies4",
            "GET, 26 B response, 50 connections; fastgw's route has 4 native noop policies",
            50,
            [get26],
            get26,
            fastgw_policies=[{"type": "noop"}] * 4,
        ),
        "plugin": lambda: Scenario(
            "plugin",
            "GET, 26 B response, 50 connections; fastgw's route has 1 Python plugin, a trivial on_request",
            50,
            [get26],
            get26,
            fastgw_policies=[{"type": "plugin", "module": PLUGIN_MODULE}],
        ),
        # The cost of the access log (issue 9): get26 with a JSON line per request written to a file.
        "accesslog": lambda: Scenario(
            "accesslog",
            "GET, 26 B response, 50 connections; JSON access log to a file (fastgw and nginx; HAProxy logs "
            "only to syslog and runs without)",
            50,
            [get26],
            get26,
            access_log=True,
        ),
        # The cost of tracing (issue 9) at 1% sampling. The collector's port is closed: the spans are
        # encoded and their batches fail to connect, so this is the gateway's cost without the send.
        "traced1pct": lambda: Scenario(
            "traced1pct",
            "GET, 26 B response, 50 connections; fastgw traces, 1% sampled, OTLP to a closed port",
            50,
            [get26],
            get26,
            fastgw_config={"tracing": {"enabled": True, "sample_rate": 0.01,
                                       "otlp": {"endpoint": "http://127.0.0.1:9/v1/traces"}}},
        ),
        # Issue 9's budget: everything a platform team turns on at once (a JSON access line per request to
        # a file, the metrics, 1% of requests traced) against the plain get26 path and against nginx with
        # its JSON access log (nginx has no metrics or tracing of its own to turn on).
        "observed": lambda: Scenario(
            "observed",
            "GET, 26 B response, 50 connections; JSON access log to a file, metrics, and (fastgw) 1% of "
            "requests traced, OTLP to a closed port",
            50,
            [get26],
            get26,
            access_log=True,
            fastgw_config={"metrics": {"enabled": True},
                           "tracing": {"enabled": True, "sample_rate": 0.01,
                                       "otlp": {"endpoint": "http://127.0.0.1:9/v1/traces"}}},
        ),
        # Auth and access control (issue 10): an API key checked per request, and a 10,000-CIDR deny
        # list the client is in none of (the whole list is searched). nginx does the same with map and
        # geo (its radix tree).
        "apikey": lambda: _apikey(get26),
        "ipdeny10k": lambda: _ipdeny(get26, 10_000),
    }
    # TLS termination (issue 13), fastgw against nginx with the same certificate and Mozilla
    # intermediate settings: keep-alive requests (the per-request cost of TLS records), and one full
    # handshake per request (Connection: close, resumption off on both sides: wrk would resume its
    # session on every reconnection) for each key type.
    close = Request("GET", "/", {"Connection": "close"})
    all_["https"] = lambda: Scenario(
        "https", "HTTPS keep-alive GET, 26 B response, 50 connections, ECDSA P-256 certificate", 50, [get26], get26,
        tls="ecdsa")
    all_["handshake-ecdsa"] = lambda: Scenario(
        "handshake-ecdsa", "HTTPS, a full handshake per request (Connection: close), ECDSA P-256, 50 connections",
        50, [close], close, tls="ecdsa", tls_resumption=False)
    all_["handshake-rsa"] = lambda: Scenario(
        "handshake-rsa", "HTTPS, a full handshake per request (Connection: close), RSA 2048, 50 connections",
        50, [close], close, tls="rsa", tls_resumption=False)
    # Authentication (issue 10): the same RS256 token on every request, so after the first it is the
    # cache of verified tokens that answers: the figure is a cached JWT's cost (compare get26_bearer:
    # the same request, the same header, no policy). bench/test_micro_auth.py has the first-seen cost.
    all_["jwt_cached"] = lambda: _jwt_cached()
    all_["get26_bearer"] = lambda: Scenario(
        "get26_bearer", "GET, 26 B response, 50 connections, a bearer token no one checks (jwt_cached's baseline)",
        50, [_bearer_request()], _bearer_request())
    # The cost of a local rate limit on the client IP (issue 11), against nginx's limit_req. The limit
    # is far above the load, so every request pays the bucket and none is refused; `ratelimit429`
    # is the same with a limit the load exceeds (most answers are the 429).
    all_["ratelimit"] = lambda: Scenario(
        "ratelimit",
        "GET, 26 B response, 50 connections; a rate limit per client IP that admits everything "
        "(fastgw rate_limit, nginx limit_req)",
        50, [get26], get26,
        fastgw_policies=[{"type": "rate_limit", "headers": [],
                          "limits": [{"rate": 10_000_000, "key": ["client_ip"]}]}],
        ip_rate_limit=10_000_000,
    )
    all_["ratelimit429"] = lambda: Scenario(
        "ratelimit429",
        "GET, 26 B response, 50 connections; a rate limit per client IP of 1000 req/s, most answers 429/503 "
        "(fastgw rate_limit, nginx limit_req)",
        50, [get26], get26,
        fastgw_policies=[{"type": "rate_limit", "headers": [], "status": 503,
                          "limits": [{"rate": 1000, "key": ["client_ip"]}]}],
        ip_rate_limit=1000,
    )
    # The same client-IP limit cluster-wide through Redis (issue 11: under 1 µs a request on average):
    # requests spend leased tokens; one lease request per ceil(rate * lease) of them.
    all_["ratelimit_redis"] = lambda: _ratelimit_redis()
    unknown = [n for n in names if n not in all_]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(all_)}")
    return [all_[n]() for n in names]


_BENCH_JWT: tuple[str, str] | None = None


def _bench_jwt() -> tuple[str, str]:
    """(public key PEM, an RS256 token valid for a day), made once per run."""
    global _BENCH_JWT
    if _BENCH_JWT is None:
        import time

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from joserfc import jwt
        from joserfc.jwk import RSAKey

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        now = int(time.time())
        token = jwt.encode({"alg": "RS256", "kid": "bench"},
                           {"iss": "https://idp.bench", "sub": "bench-user", "aud": "api", "iat": now,
                            "exp": now + 86400}, RSAKey.import_key(key), algorithms=["RS256"])
        _BENCH_JWT = (pem, token)
    return _BENCH_JWT


def _bearer_request() -> Request:
    return Request("GET", "/", {"Authorization": f"Bearer {_bench_jwt()[1]}"})


def _jwt_cached() -> Scenario:
    pem, _ = _bench_jwt()
    req = _bearer_request()
    return Scenario(
        "jwt_cached",
        "GET, 26 B response, 50 connections; fastgw's route verifies an RS256 bearer token (cached after the "
        "first request); nginx and HAProxy proxy it unchecked",
        50, [req], req,
        fastgw_policies=[{"type": "jwt", "issuers": [{"issuer": "https://idp.bench", "algorithms": ["RS256"],
                                                      "audiences": ["api"], "keys": [{"pem": pem}]}]}],
    )


def _gateway(n: int) -> Scenario:
    routes = gateway_routes(n)
    reqs = gateway_requests(routes)
    return Scenario(
        "gateway",
        f"routing by host + path (+ header) over {n} routes, header transform, 64 request shapes, 50 connections",
        50,
        reqs,
        reqs[-1],  # the last route in the table: the worst case for a linear scan
        routes,
    )


SCENARIO_NAMES = ["get26", "get64k", "post4k", "c1000", "gateway", "policies4", "plugin", "accesslog", "observed",
                  "https", "handshake-ecdsa", "handshake-rsa"]


BENCH_API_KEY = "bench-key-0123456789abcdef0123456789"


def _apikey(get26: Request) -> Scenario:
    req = Request("GET", "/", {"X-API-Key": BENCH_API_KEY})
    others = [f"other-key-{i:04d}-0123456789abcdef" for i in range(999)]
    keys = "".join(f' "{k}" 1;' for k in [*others, BENCH_API_KEY])
    return Scenario(
        "apikey",
        "GET, 26 B response, 50 connections; API key in X-API-Key checked against 1,000 consumers' keys",
        50,
        [req],
        req,
        fastgw_policies=[{"type": "api_key"}],
        fastgw_config={"consumers": [{"name": f"c{i}", "credentials": {"api_keys": [k]}}
                                     for i, k in enumerate([*others, BENCH_API_KEY])]},
        nginx_http=f"map $http_x_api_key $fastgw_key_ok {{ default 0;{keys} }}",
        # a location's proxy_set_header replaces the inherited ones: Connection "" (upstream keepalive)
        # is repeated here
        nginx_location=('if ($fastgw_key_ok = 0) { return 401; } proxy_set_header Connection ""; '
                        'proxy_set_header X-API-Key ""; '),
    )


def bench_cidrs(n: int) -> list[str]:
    """n disjoint CIDRs (IPv4 /24s and IPv6 /48s) none of which holds 127.0.0.1."""
    v4 = [f"10.{i // 256}.{i % 256}.0/24" for i in range(n // 2)]
    v6 = [f"2001:db8:{i:x}::/48" for i in range(n - len(v4))]
    return v4 + v6


def _ipdeny(get26: Request, n: int) -> Scenario:
    cidrs = bench_cidrs(n)
    geo = " ".join(f"{c} 1;" for c in cidrs)
    return Scenario(
        f"ipdeny{n // 1000}k",
        f"GET, 26 B response, 50 connections; an ip_deny list of {n:,} CIDRs, the client in none",
        50,
        [get26],
        get26,
        fastgw_policies=[{"type": "ip_deny", "cidrs": cidrs}],
        nginx_http=f"geo $fastgw_denied {{ default 0; {geo} }}",
        nginx_location="if ($fastgw_denied) { return 403; } ",
    )



_BENCH_REDIS: str | None = None


def _bench_redis() -> str:
    """A redis-server on a free loopback port for the run (stopped at exit); its URL."""
    global _BENCH_REDIS
    if _BENCH_REDIS is None:
        import atexit
        import shutil
        import socket
        import subprocess
        import time

        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("ratelimit_redis needs redis-server (apt-get install redis-server)")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        atexit.register(proc.terminate)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        _BENCH_REDIS = f"redis://127.0.0.1:{port}/0"
    return _BENCH_REDIS


def _ratelimit_redis() -> Scenario:
    get26 = Request("GET", "/")
    return Scenario(
        "ratelimit_redis",
        "GET, 26 B response, 50 connections; the ratelimit scenario's client-IP limit with scope: cluster "
        "(leases from a local redis-server; nginx: limit_req, which has no cluster-wide form)",
        50, [get26], get26,
        fastgw_policies=[{"type": "rate_limit", "headers": [],
                          "limits": [{"rate": 10_000_000, "key": ["client_ip"], "scope": "cluster"}]}],
        fastgw_config={"redis": {"url": _bench_redis()}},
        ip_rate_limit=10_000_000,
    )
