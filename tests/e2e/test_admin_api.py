"""The Admin API's read endpoints, its HTTP strictness and its bearer token, on a real gateway over
real sockets (httpx and curl)."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
from support.admin import admin_client, admin_url, with_admin
from support.client import CURL, RawConn, wait_until
from support.gateway import simple_config
from support.upstreams import EchoServer

TOKEN = "s3cr3t-admin-token-0123456789"
PLUGIN_SECRET = "plugin-password-do-not-show"


@pytest.fixture(scope="module")
def gw(echo, module_gateway_factory):
    cfg = with_admin(simple_config(echo.address, routes=[
        {"name": "users", "match": {"path": {"prefix": "/users"}}, "upstream": "echo",
         "policies": [{"type": "plugin", "module": "examples.plugins.request_signer:RequestSigner",
                       "config": {"key_id": "k1", "key": PLUGIN_SECRET}}]},
        {"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "echo"},
    ]))
    return module_gateway_factory(cfg, workers=2)


@pytest.fixture(scope="module")
def admin(gw):
    with admin_client(gw) as client:
        yield client


def test_healthz_and_readyz_answer_for_a_running_gateway(admin, gw):
    health = admin.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "alive"
    assert health.json()["pid"] == gw.pid
    ready = admin.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["workers_ready"] == ready.json()["workers"] == 2


def test_metrics_is_prometheus_text(admin, gw):
    r = admin.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    # the series themselves are docs/metrics.md's; here: the exposition format, one value a sample
    assert "# TYPE fastgw_build_info gauge" in r.text
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            float(line.rpartition(" ")[2])


def test_stats_has_one_entry_per_worker_counting_what_it_served(admin, gw):
    before = sum(w["requests_total"] for w in admin.get("/stats").json()["workers"])
    for i in range(5):
        with RawConn(gw.port) as c:
            assert c.request("GET", f"/s/{i}", [("Connection", "close")]).status == 200
    stats = admin.get("/stats").json()
    workers = stats["workers"]
    assert sorted(w["pid"] for w in workers) == sorted(gw.descendants())
    assert all("error" not in w for w in workers), workers
    assert sum(w["requests_total"] for w in workers) - before == 5
    assert all(w["generation"] == stats["supervisor"]["generation"] for w in workers)


def test_config_is_the_running_one_with_secrets_redacted(admin, echo):
    r = admin.get("/config")
    assert r.status_code == 200
    body = r.json()
    assert body["config"]["upstreams"]["echo"]["targets"][0]["address"] == echo.address
    policy = body["config"]["routes"][0]["policies"][0]
    assert policy["config"] == {"key_id": "<redacted>", "key": "<redacted>"}
    assert PLUGIN_SECRET not in r.text


def test_routes_lists_every_route_in_order(admin):
    routes = admin.get("/routes").json()["routes"]
    assert [r["name"] for r in routes] == ["users", "all"]
    assert PLUGIN_SECRET not in json.dumps(routes)


def test_upstreams_show_targets_and_their_pools(admin, gw, echo):
    with RawConn(gw.port) as c:     # a keep-alive exchange leaves an idle upstream connection behind
        assert c.request("GET", "/pool").status == 200
    up = wait_until(lambda: (u := admin.get("/upstreams").json())["upstreams"]["echo"]["targets"][0]
                    ["idle_connections"] and u, what="the pooled connection to show")
    (target,) = up["upstreams"]["echo"]["targets"]
    assert target["address"] == echo.address and target["weight"] == 1
    assert sum(target["idle_connections_by_worker"].values()) == target["idle_connections"]
    assert len(up["workers"]) == 2


def test_explain_answers_as_fastgw_explain_does(admin, gw):
    r = admin.post("/explain", json={"method": "get", "url": f"http://api.test:{gw.port}/users/7",
                                     "headers": {"X-Trace": "1"}})
    assert r.status_code == 200, r.text
    lines = r.json()["lines"]
    assert "route:    users" in lines
    assert any(line.startswith("policies: request: 1.") for line in lines), lines
    bad = admin.post("/explain", json={"method": "GET", "url": "not-a-url"})
    assert bad.status_code == 400 and "absolute http" in bad.json()["error"]
    assert admin.post("/explain", content=b"{").status_code == 400


def test_reloads_record_the_first_load(admin, gw):
    first = admin.get("/reloads").json()["reloads"][0]
    assert first["ok"] and first["source"] == "file" and first["file"] == str(gw.config_path)
    assert first["summary"]["routes"] == 2


def test_unknown_path_is_404_and_wrong_method_405(admin):
    missing = admin.get("/nope")
    assert missing.status_code == 404 and "/healthz" in missing.json()["endpoints"]
    wrong = admin.delete("/config")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, POST"
    assert admin.get("/explain").status_code == 405


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET http://absolute/ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    b"POST /config HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST /explain HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
], ids=["request-line", "absolute-form", "no-host", "space-in-name", "two-lengths", "chunked"])
def test_malformed_requests_get_an_error_and_the_connection_closes(gw, raw):
    host, port = admin_url(gw).removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    assert 400 <= status < 600 and b"Connection: close" in data, data


def test_an_oversized_head_is_refused(gw):
    host, port = admin_url(gw).removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 431 "), data


def test_a_body_over_the_limit_is_refused_before_it_is_read(gw):
    host, port = admin_url(gw).removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /config HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000000\r\n\r\n")
        data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 413 "), data


def test_head_answers_without_a_body_and_keeps_the_connection(admin):
    r = admin.head("/healthz")
    assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 0
    assert admin.get("/healthz").json()["status"] == "alive"


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_reads_healthz_and_metrics(gw):
    url = admin_url(gw)
    out = subprocess.run([CURL, "-sS", "--fail", f"{url}/healthz", f"{url}/metrics"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert '"status": "alive"' in out.stdout and "# TYPE fastgw_build_info gauge" in out.stdout


# --- the bearer token ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(module_gateway_factory):
    with EchoServer("guarded") as up:
        yield module_gateway_factory(with_admin(simple_config(up.address), token=TOKEN))


def test_a_token_is_required_when_configured(guarded):
    with admin_client(guarded) as anonymous:
        r = anonymous.get("/config")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert anonymous.get("/stats").status_code == 401
        assert anonymous.post("/config", content=b"{}", headers={"Content-Type": "application/json"}
                              ).status_code == 401
    with admin_client(guarded, token=TOKEN + "x") as wrong:
        assert wrong.get("/config").status_code == 401
    with admin_client(guarded, token=TOKEN) as right:
        r = right.get("/config")
        assert r.status_code == 200
        assert r.json()["config"]["admin"]["token"] == "<redacted>" and TOKEN not in r.text


def test_probes_need_no_token(guarded):
    with admin_client(guarded) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").status_code == 200


def test_a_token_file_is_read(module_gateway_factory, tmp_path):
    path = tmp_path / "admin-token"
    path.write_text(TOKEN + "\n")
    with EchoServer("file-token") as up:
        gw = module_gateway_factory(with_admin(simple_config(up.address), token_file=str(path)))
        with admin_client(gw) as anonymous:
            assert anonymous.get("/stats").status_code == 401
        with admin_client(gw, token=TOKEN) as right:
            assert right.get("/stats").status_code == 200
