"""The example plugins (examples/plugins/) in real gateways, with real requests: the tenant router's
refusals and tags, the signer's signature checked against what the upstream received, the async
external auth, `fastgw check` on a plugin config of the wrong shape, and reloads (instance kept,
carry_over). docs/plugins.md describes what is tested here."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from support.client import RawConn, wait_until
from support.gateway import REPO_ROOT, simple_config
from support.upstreams import EchoServer

TENANT = "examples.plugins.tenant_router:TenantRouter"
SIGNER = "examples.plugins.request_signer:RequestSigner"
AUTH = "examples.plugins.external_auth:ExternalAuth"
KEY = "0123456789abcdef-test-signing-key"

if str(REPO_ROOT) not in sys.path:       # the unit-style tests import examples.plugins themselves
    sys.path.insert(0, str(REPO_ROOT))


def upstream_headers(resp) -> dict[str, list[str]]:
    """{lowercase name: [values]} of the request the echo upstream received."""
    out: dict[str, list[str]] = {}
    for name, value in resp.json()["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


def get(port: int, target: str = "/", headers=None, host: str = "test.local", method: str = "GET",
        body: bytes | None = None):
    with RawConn(port) as c:
        return c.request(method, target, headers=headers or [], host=host, body=body)


# ---- tenant router ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def acme_echo():
    with EchoServer("acme") as srv:
        yield srv


@pytest.fixture(scope="module")
def tenant_gw(echo, acme_echo, module_gateway_factory):
    tenants = {"acme": "t-1001", "globex": "t-1002"}
    cfg = simple_config(upstreams={"echo": {"targets": [{"address": echo.address}]},
                                   "acme": {"targets": [{"address": acme_echo.address}]}},
                        routes=[
        # the native router picks the upstream by the header the plugin enforces
        {"name": "acme", "match": {"headers": [{"name": "X-Tenant", "value": "acme"}]}, "upstream": "acme"},
        {"name": "by-path", "match": {"hosts": ["paths.test"]}, "upstream": "echo",
         "skip_policies": ["tenant"],
         "policies": [{"type": "plugin", "module": TENANT, "config": {"source": "path", "tenants": tenants}}]},
        {"name": "by-subdomain", "match": {"hosts": ["*.tenants.test"]}, "upstream": "echo",
         "skip_policies": ["tenant"],
         "policies": [{"type": "plugin", "module": TENANT,
                       "config": {"source": "subdomain", "tenants": tenants, "upstream_header": "X-Org"}}]},
        {"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "echo"},
    ])
    cfg["policies"] = [{"type": "plugin", "name": "tenant", "module": TENANT,
                        "config": {"header": "X-Tenant", "tenants": tenants, "exempt_paths": ["/healthz"]}}]
    return module_gateway_factory(cfg)


def test_tenant_router_refuses_unknown_and_missing_tenants_with_403_json(tenant_gw, echo) -> None:
    snap = echo.snapshot()
    resp = get(tenant_gw.port, "/orders", [("X-Tenant", "initech")])
    assert resp.status == 403
    assert resp.headers.get("content-type") == "application/json"
    body = resp.json()
    assert body == {"error": "unknown tenant", "tenant": "initech", "request_id": resp.headers.get("x-request-id")}
    resp = get(tenant_gw.port, "/orders")
    assert resp.status == 403 and resp.json()["error"] == "no tenant in the request"
    assert echo.requests_since(snap) == []          # neither reached an upstream


def test_tenant_router_tags_known_tenants_and_replaces_a_client_supplied_id(tenant_gw, echo) -> None:
    resp = get(tenant_gw.port, "/orders?x=1", [("X-Tenant", "Globex"), ("X-Tenant-Id", "t-9999")])
    assert resp.status == 200, resp.body
    seen = upstream_headers(resp)
    assert seen["x-tenant-id"] == ["t-1002"]        # the client's own value is gone
    assert seen["x-tenant"] == ["Globex"]           # the tenant header itself passes through
    assert resp.json()["name"] == "echo" and resp.json()["target"] == "/orders?x=1"


def test_tenant_router_with_header_routing_picks_the_tenants_upstream(tenant_gw) -> None:
    resp = get(tenant_gw.port, "/orders", [("X-Tenant", "acme")])
    assert resp.status == 200
    assert resp.json()["name"] == "acme"
    assert upstream_headers(resp)["x-tenant-id"] == ["t-1001"]


def test_tenant_router_exempt_paths_pass_untagged(tenant_gw) -> None:
    resp = get(tenant_gw.port, "/healthz")
    assert resp.status == 200
    assert "x-tenant-id" not in upstream_headers(resp)


def test_tenant_router_from_the_first_path_segment(tenant_gw) -> None:
    resp = get(tenant_gw.port, "/acme/orders", host="paths.test")
    assert resp.status == 200 and upstream_headers(resp)["x-tenant-id"] == ["t-1001"]
    assert resp.json()["target"] == "/acme/orders"
    resp = get(tenant_gw.port, "/initech/orders", host="paths.test")
    assert resp.status == 403 and resp.json()["tenant"] == "initech"
    # the route skips the top-level header-based instance: no X-Tenant needed, none checked
    resp = get(tenant_gw.port, "/globex/", [("X-Tenant", "initech")], host="paths.test")
    assert resp.status == 200 and upstream_headers(resp)["x-tenant-id"] == ["t-1002"]


def test_tenant_router_from_the_subdomain(tenant_gw) -> None:
    resp = get(tenant_gw.port, "/", host="ACME.tenants.test:8080")
    assert resp.status == 200, resp.body
    seen = upstream_headers(resp)
    assert seen["x-org"] == ["t-1001"] and "x-tenant-id" not in seen
    assert get(tenant_gw.port, "/", host="nobody.tenants.test").status == 403


# ---- request signer -----------------------------------------------------------------------------

def signer_config(echo_address: str, **config) -> dict:
    cfg = simple_config(echo_address)
    cfg["policies"] = [{"type": "plugin", "name": "signer", "module": SIGNER, "config": {
        "key_env": "TEST_SIGNER_KEY", "key_id": "k1", "signed_headers": ["content-type", "content-length"],
        "stats_path": "/_signer/stats", **config}}]
    return cfg


@pytest.fixture
def signer_gw(echo, gateway_factory):
    return gateway_factory(signer_config(echo.address), workers=1, env={"TEST_SIGNER_KEY": KEY})


def expected_signature(key: str, timestamp: str, method: str, target: str, headers: list[tuple[str, str]]) -> str:
    """Recomputed here from the documented canonical form, independently of the plugin's code."""
    path, _, query = target.partition("?")
    lines = ["fastgw-hmac-v1", timestamp, method, path, query, *(f"{n}:{v}" for n, v in headers)]
    return hmac.new(key.encode(), "\n".join(lines).encode(), hashlib.sha256).hexdigest()


def test_signer_signature_verifies_against_what_the_upstream_received(signer_gw) -> None:
    before = int(time.time())
    resp = get(signer_gw.port, "/api/items?b=2&a=%20x", method="POST", body=b'{"n": 1}',
               headers=[("Content-Type", "application/json"), ("X-Signature", "forged"),
                        ("X-Signature-Timestamp", "1")])
    assert resp.status == 200, resp.body
    echoed = resp.json()
    seen = upstream_headers(resp)
    assert len(seen["x-signature"]) == 1 and len(seen["x-signature-timestamp"]) == 1  # the client's are gone
    timestamp = seen["x-signature-timestamp"][0]
    assert before <= int(timestamp) <= time.time() + 1
    assert seen["x-signature-key-id"] == ["k1"]
    assert seen["x-signature-headers"] == ["content-type;content-length"]
    signed = [("content-type", seen["content-type"][0]), ("content-length", seen["content-length"][0])]
    assert signed == [("content-type", "application/json"), ("content-length", "8")]
    assert seen["x-signature"][0] == expected_signature(KEY, timestamp, echoed["method"], echoed["target"], signed)
    assert seen["x-signature"][0] != expected_signature("another key, wrong", timestamp, echoed["method"],
                                                        echoed["target"], signed)
    assert resp.headers.get("x-request-signed") == "k1"      # on_response

    # the plugin's own verify() agrees (what a Python upstream would call)
    from examples.plugins.request_signer import verify
    path, _, query = echoed["target"].partition("?")
    assert verify(KEY.encode(), seen["x-signature"][0], timestamp, "POST", path, query, signed)
    assert not verify(KEY.encode(), seen["x-signature"][0], timestamp, "GET", path, query, signed)


def signer_counts(gw) -> dict:
    resp = get(gw.port, "/_signer/stats")
    assert resp.status == 200
    return resp.json()["counts"]


def test_signer_counts_in_on_log_and_the_instance_survives_reloads(signer_gw, echo) -> None:
    for _ in range(3):
        assert get(signer_gw.port, "/x").status == 200
    assert wait_until(lambda: signer_counts(signer_gw).get("signed") == 3, what="3 signed requests logged")
    assert signer_counts(signer_gw) == {"signed": 3, "proxied": 3}   # the stats answers are not signed

    # the same config again: the same instance, its counts go on
    n = signer_gw.stderr_line_count()
    signer_gw.reload(signer_gw.config)
    wait_until(lambda: "configuration reloaded" in signer_gw.stderr_since(n), what="reload")
    assert get(signer_gw.port, "/y").status == 200
    assert wait_until(lambda: signer_counts(signer_gw).get("signed") == 4, what="count kept over a reload")

    # another config: a new instance; carry_over() hands it the counts
    n = signer_gw.stderr_line_count()
    signer_gw.reload(signer_config(echo.address, key_id="k2"))
    wait_until(lambda: "configuration reloaded" in signer_gw.stderr_since(n), what="reload")
    resp = get(signer_gw.port, "/z")
    assert resp.status == 200 and resp.headers.get("x-request-signed") == "k2"
    assert upstream_headers(resp)["x-signature-key-id"] == ["k2"]
    assert wait_until(lambda: signer_counts(signer_gw) == {"signed": 5, "proxied": 5}, what="carried over")


# ---- fastgw check -------------------------------------------------------------------------------

BAD_PLUGIN_CONFIG = textwrap.dedent(f"""\
    listeners:
      - address: 127.0.0.1:8080
    upstreams:
      echo: {{targets: [{{address: 127.0.0.1:9000}}]}}
    policies:
      - type: plugin
        name: tenant
        module: "{TENANT}"
        config:
          tenants: acme
      - type: plugin
        name: signer
        module: "{SIGNER}"
        config:
          key: "{KEY}"
          signed_headers: [content-type, 5]
      - type: plugin
        name: signer2
        module: "{SIGNER}"
        config: {{key: "{KEY}", key_env: SOME_VAR}}
    routes:
      - name: r
        upstream: echo
    """)


def fastgw_check(path) -> subprocess.CompletedProcess[str]:
    # run from the repository root, as `python -m fastgw` puts it on sys.path: examples.* imports
    return subprocess.run([sys.executable, "-m", "fastgw", "check", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=REPO_ROOT)


def test_check_reports_a_bad_plugin_config_at_its_path_and_line(tmp_path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(BAD_PLUGIN_CONFIG)
    done = fastgw_check(path)
    assert done.returncode == 1, done
    assert done.stderr.splitlines() == [
        f"{path}:10: $.policies[0].config.tenants: Expected `object`, got `str`",
        f"{path}:16: $.policies[1].config.signed_headers[1]: Expected `str`, got `int`",
        f"{path}:20: $.policies[2].config: give exactly one of key and key_env",
    ], done.stderr


def test_check_accepts_the_example_configs(tmp_path) -> None:
    good = BAD_PLUGIN_CONFIG.replace("tenants: acme", "tenants: {acme: t-1}").replace(", 5]", "]")
    good = good.replace(", key_env: SOME_VAR", "")
    path = tmp_path / "gw.yaml"
    path.write_text(good)
    done = fastgw_check(path)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{path}: OK\n", "")


# ---- external auth (async) ----------------------------------------------------------------------

class _AuthHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict] = []

    def do_GET(self) -> None:
        _AuthHandler.seen.append(dict(self.headers.items()))
        auth = self.headers.get("Authorization", "")
        if auth == "Bearer slow":
            time.sleep(1.5)
        if auth in ("Bearer good", "Bearer slow"):
            self._answer(200, b"", [("X-Auth-User", "alice")])
        else:
            self._answer(401, b'{"error": "bad token"}', [("Content-Type", "application/json"),
                                                          ("WWW-Authenticate", "Bearer")])

    def _answer(self, status: int, body: bytes, headers) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def auth_service():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AuthHandler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/check"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def auth_gw(echo, auth_service, module_gateway_factory):
    auth = {"type": "plugin", "name": "auth", "module": AUTH, "timeout": "3s",
            "config": {"url": auth_service, "timeout": "500ms", "copy_response_headers": ["X-Auth-User"]}}
    cfg = simple_config(echo.address, routes=[
        {"name": "tight", "match": {"path": {"prefix": "/tight"}}, "upstream": "echo", "skip_policies": ["auth"],
         "policies": [{**auth, "timeout": "200ms", "config": {**auth["config"], "timeout": "5s"}}]},
        {"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "echo"},
    ])
    cfg["policies"] = [auth]
    return module_gateway_factory(cfg, workers=1)


def test_external_auth_allows_and_copies_the_auth_services_headers(auth_gw) -> None:
    resp = get(auth_gw.port, "/a?q=1", [("Authorization", "Bearer good"), ("X-Auth-User", "mallory")])
    assert resp.status == 200, resp.body
    assert upstream_headers(resp)["x-auth-user"] == ["alice"]
    asked = _AuthHandler.seen[-1]
    assert asked["X-Original-Uri"] == "/a?q=1" and asked["X-Original-Method"] == "GET"
    assert asked["X-Request-Id"] == resp.headers.get("x-request-id")


def test_external_auth_passes_a_denial_through(auth_gw) -> None:
    resp = get(auth_gw.port, "/a", [("Authorization", "Bearer nope")])
    assert resp.status == 401
    assert resp.json() == {"error": "bad token"} and resp.headers.get("www-authenticate") == "Bearer"


def test_external_auth_times_out_itself_and_the_worker_serves_others_meanwhile(auth_gw) -> None:
    result = {}

    def slow() -> None:
        t0 = time.monotonic()
        result["resp"] = get(auth_gw.port, "/slow", [("Authorization", "Bearer slow")])
        result["took"] = time.monotonic() - t0

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    assert get(auth_gw.port, "/fast", [("Authorization", "Bearer good")]).status == 200
    fast = time.monotonic() - t0
    t.join(10)
    resp = result["resp"]
    assert resp.status == 503 and resp.json()["error"] == "auth service timed out"
    assert 0.4 < result["took"] < 1.4
    assert fast < result["took"]           # answered while the slow one was still waiting


def test_policy_timeout_shorter_than_the_plugins_answers_504_pt(auth_gw) -> None:
    n = auth_gw.stderr_line_count()
    resp = get(auth_gw.port, "/tight", [("Authorization", "Bearer slow")])
    assert resp.status == 504
    assert "exited with status" not in auth_gw.stderr_since(n)


# ---- unit-style: a hook called with a fake view (as docs/plugins.md shows) ----------------------

class FakeHeaders(dict):
    """Enough of the request view's headers for a unit test: case-insensitive get/set/remove."""

    def get(self, name, default=None):
        return super().get(name.lower(), default)

    def set(self, name, value):
        self[name.lower()] = value

    def remove(self, name):
        self.pop(name.lower(), None)


class FakeRequest:
    def __init__(self, method="GET", path="/", query="", host="test.local", headers=None):
        self.method, self.path, self.query, self.host = method, path, query, host
        self.headers = FakeHeaders({k.lower(): v for k, v in (headers or {}).items()})
        self.request_id = "test-1"
        self.client_ip, self.route, self.consumer = "127.0.0.1", "all", None


def test_hooks_unit_tested_with_a_fake_view() -> None:
    import msgspec

    from examples.plugins.tenant_router import TenantRouter

    plugin = TenantRouter(msgspec.convert({"tenants": {"acme": "t-1"}}, TenantRouter.Config))
    req = FakeRequest(headers={"X-Tenant": "acme"})
    assert plugin.on_request(req) is None and req.headers.get("X-Tenant-Id") == "t-1"
    answer = plugin.on_request(FakeRequest(headers={"X-Tenant": "other"}))
    assert answer.status == 403 and msgspec.json.decode(answer.body)["tenant"] == "other"
    with pytest.raises(msgspec.ValidationError, match="gateway's to set"):
        msgspec.convert({"tenants": {"a": "b"}, "upstream_header": "X-Forwarded-For"}, TenantRouter.Config)
