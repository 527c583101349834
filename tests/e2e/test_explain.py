"""`fastgw explain -c FILE METHOD URL [-H ...]` on a native config and on the same scenario as Gateway API
manifests: the chosen route, a losing candidate, the filters in order, the upstream request, the
target, and the 404 and redirect outcomes. Nothing is served (explain opens no sockets), so the
listener has a fixed port and the upstream addresses need not exist."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .traffic_support import config_text, native_config, route

FRONTS = ["native", "gatewayapi"]


def scenario() -> dict:
    return native_config([
        route("catch-all", match={"hosts": ["*.example.com"], "path": {"prefix": "/"}}, upstream="users", tag=False),
        route("users", match={"hosts": ["api.example.com"], "path": {"prefix": "/users"}}, upstream="users",
              tag=False, filters={
                  "request_headers": {"set": {"X-Env": "prod"}, "add": {"X-Added": "yes"}, "remove": ["X-Drop"]},
                  "rewrite": {"hostname": "users.internal", "path": {"prefix": "/v1/users"}},
                  "mirror": {"upstream": "shadow"},
                  "response_headers": {"add": {"X-Served-By": "fastgw"}},
              }),
        route("users-v2", match={"hosts": ["api.example.com"], "path": {"prefix": "/users"},
                                 "headers": [{"name": "X-API-Version", "value": "2"}]}, upstream="users", tag=False),
        route("old", match={"hosts": ["api.example.com"], "path": {"prefix": "/old"}}, upstream=None,
              filters={"redirect": {"scheme": "https", "hostname": "new.example.com", "path": {"prefix": "/new"},
                                    "status": 301}}),
    ], {"users": {"targets": [{"address": "127.0.0.1:9001"}]}, "shadow": {"targets": [{"address": "127.0.0.1:9002"}]}},
        listeners=[{"address": "127.0.0.1:8080"}])


@pytest.fixture(scope="module", params=FRONTS)
def config_file(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"explain-{request.param}") / "gw.yaml"
    path.write_text(config_text(request.param, scenario()))
    return request.param, path


def route_name(front: str, name: str) -> str:
    """Gateway API rules become native routes `<HTTPRoute>.r<index>`."""
    return name if front == "native" else f"{name}.r0"


def explain(path, method: str, url: str, *headers: str) -> str:
    args = [sys.executable, "-m", "fastgw", "explain", "-c", str(path), method, url]
    for h in headers:
        args += ["-H", h]
    p = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"rc {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def field(out: str, label: str) -> list[str]:
    return [line[len(label) + 1:].strip() for line in out.splitlines() if line.startswith(label + ":")]


def test_chosen_route_filters_upstream_request_and_target(config_file):
    front, path = config_file
    out = explain(path, "GET", "http://api.example.com:8080/users/7?x=1", "X-Drop: a", "X-Keep: k")
    assert field(out, "route") == [route_name(front, "users")], out
    assert field(out, "backend") == [f"upstream {'users' if front == 'native' else 'default.users.80'} "
                                     "-> target 127.0.0.1:9001"], out
    steps = [line.split(":", 1)[1].strip() for line in out.splitlines() if re.match(r"filter \d+:", line)]
    numbers = [int(line.split()[1].rstrip(":")) for line in out.splitlines() if re.match(r"filter \d+:", line)]
    assert numbers == list(range(1, len(numbers) + 1)), out
    kinds = [s.split(":")[0] for s in steps]
    # request header edits, then the rewrite, then the mirror; response edits last
    order = ["request headers", "rewrite", "mirror", "response headers"]
    assert [k for k in dict.fromkeys(kinds)] == order, out
    assert any("users.internal" in s for s in steps) and any("/v1/users" in s for s in steps), out
    assert any("X-Served-By: fastgw" in s for s in steps), out
    lines = out.splitlines()
    head = [line.strip() for line in lines[lines.index("upstream request:") + 1:]]
    assert head[0] == "GET /v1/users/7?x=1 HTTP/1.1", out
    assert "Host: users.internal" in head, out
    assert "X-Env: prod" in head and "X-Added: yes" in head and "X-Keep: k" in head, out
    assert not [h for h in head if h.lower().startswith("x-drop:")], out
    assert "X-Forwarded-Host: api.example.com:8080" in head, out


def test_losing_candidate_listed(config_file):
    front, path = config_file
    out = explain(path, "GET", "http://api.example.com:8080/users/7")
    chosen = field(out, "chosen")
    assert chosen and chosen[0].startswith(route_name(front, "users") + " "), out
    lost = field(out, "lost")
    assert [x for x in lost if x.startswith(route_name(front, "catch-all") + " ")], out


def test_higher_ranked_candidate_that_does_not_match(config_file):
    front, path = config_file
    out = explain(path, "GET", "http://api.example.com:8080/users/7", "X-API-Version: 3")
    skipped = field(out, "skipped")
    assert [x for x in skipped if x.startswith(route_name(front, "users-v2") + " ") and "x-api-version" in x.lower()
            and "3" in x], out
    assert field(out, "route") == [route_name(front, "users")], out
    out = explain(path, "GET", "http://api.example.com:8080/users/7", "X-API-Version: 2")
    assert field(out, "route") == [route_name(front, "users-v2")], out
    assert [x for x in field(out, "lost") if x.startswith(route_name(front, "users") + " ")], out


def test_wildcard_route_for_another_host(config_file):
    front, path = config_file
    out = explain(path, "GET", "http://other.example.com:8080/users/7")
    assert field(out, "route") == [route_name(front, "catch-all")], out
    assert "  GET /users/7 HTTP/1.1" in out.splitlines(), out


def test_no_route_404(config_file):
    _, path = config_file
    out = explain(path, "GET", "http://other.test:8080/users")
    assert field(out, "route") == [], out
    assert [r for r in field(out, "result") if r.startswith("404")], out
    assert "upstream request:" not in out


def test_redirect(config_file):
    front, path = config_file
    out = explain(path, "GET", "http://api.example.com:8080/old/a/b?q=1")
    assert field(out, "route") == [route_name(front, "old")], out
    assert field(out, "result") == ["301 redirect to https://new.example.com/new/a/b?q=1"], out
    assert "upstream request:" not in out


def test_explain_lists_the_routes_policies_per_phase(tmp_path):
    """Issue 8: the chosen route's policies in the order they run, per phase, top-level ones first
    and a skipped one left out."""
    path = tmp_path / "gw.yaml"
    path.write_text(
        "listeners: [{address: 127.0.0.1:8080}]\n"
        "upstreams: {a: {targets: [{address: 127.0.0.1:9001}]}}\n"
        "policies: [{type: noop, name: audit}, {type: noop, name: trace}]\n"
        "routes:\n"
        "  - name: r\n"
        "    match: {path: {prefix: /}}\n"
        "    upstream: a\n"
        "    skip_policies: [trace]\n"
        "    policies:\n"
        "      - {type: respond, name: maint, status: 503, on_upstream_status: [502]}\n"
        "      - {type: plugin, name: tenant, module: 'examples.plugins.tenant_router:TenantRouter',\n"
        "         config: {tenants: {acme: t-1}}}\n")
    res = subprocess.run([sys.executable, "-m", "fastgw", "explain", "-c", str(path), "GET",
                          "http://x:8080/a", "-H", "X-Tenant: acme"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("policies:")]
    assert lines == [
        "policies: request: 1. audit (noop); 2. tenant (plugin examples.plugins.tenant_router:TenantRouter)",
        "policies: response: 1. audit (noop); 2. maint (respond 503 instead of upstream [502])",
        "policies: log: 1. audit (noop)",
    ], res.stdout
