"""Sans-socket tests of the request phase (routing decisions, filters, the upstream head) through
ClientConn.explain, the same code a live connection runs. The e2e tests check the same over sockets."""

import pytest

from fastgw import _core
from fastgw.config import loads_config
from fastgw.runtime import compile_runtime

BASE = """
listeners: [{address: 127.0.0.1:8080}]
upstreams:
  a: {targets: [{address: 127.0.0.1:9001}]}
  b: {targets: [{address: 127.0.0.1:9002}]}
  none: {targets: []}
"""


def phase(routes_yaml: str, request: bytes, port: int = 8080) -> dict:
    cfg = loads_config(BASE + routes_yaml, "yaml")
    conn = _core.Worker(None, compile_runtime(cfg))()
    return conn.explain(request, port)


def get(path: str, host: str = "example.com", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def upstream_line(result: dict) -> bytes:
    return result["upstream_request"].split(b"\r\n")[0]


@pytest.mark.parametrize("prefix,replacement,path,expected", [
    ("/foo", "/xyz", "/foo/bar", b"/xyz/bar"),
    ("/foo", "/xyz", "/foo", b"/xyz"),
    ("/foo/", "/xyz", "/foo/bar?q=1", b"/xyz/bar?q=1"),
    ("/foo", "", "/foo/bar", b"/bar"),
    ("/foo", "/", "/foo", b"/"),
    ("/foo", "/", "/foo/bar", b"/bar"),
    ("/", "/api", "/x/y", b"/api/x/y"),
])
def test_rewrite_replaces_the_matched_prefix(prefix, replacement, path, expected):
    r = phase(f"""
routes:
  - name: r
    match: {{path: {{prefix: "{prefix}"}}}}
    upstream: a
    filters: {{rewrite: {{path: {{prefix: "{replacement}"}}}}}}
""", get(path))
    assert upstream_line(r) == b"GET " + expected + b" HTTP/1.1"


def test_rewrite_full_path_with_template_captures_and_hostname():
    r = phase("""
routes:
  - name: r
    match: {path: {template: "/users/{id}/files/{rest...}"}}
    upstream: a
    filters: {rewrite: {hostname: internal.svc, path: {full: "/v2/{id}/{rest}"}}}
""", get("/users/42/files/a/b.txt?x=1"))
    head = r["upstream_request"]
    assert upstream_line(r) == b"GET /v2/42/a/b.txt?x=1 HTTP/1.1"
    assert b"\r\nHost: internal.svc\r\n" in head
    assert b"\r\nX-Forwarded-Host: example.com\r\n" in head


@pytest.mark.parametrize("redirect,location", [
    ("{hostname: other.org}", b"http://other.org:8080/old/a?b=1"),
    ("{scheme: https}", b"https://example.com/old/a?b=1"),
    ("{scheme: https, port: 8443}", b"https://example.com:8443/old/a?b=1"),
    ("{scheme: http}", b"http://example.com/old/a?b=1"),
    ("{port: 80}", b"http://example.com/old/a?b=1"),
    ("{path: {full: /new}}", b"http://example.com:8080/new?b=1"),
    ("{path: {prefix: /new}}", b"http://example.com:8080/new/a?b=1"),
    ("{path: {prefix: ''}}", b"http://example.com:8080/a?b=1"),
])
def test_redirect_location(redirect, location):
    r = phase(f"""
routes:
  - name: r
    match: {{path: {{prefix: /old}}}}
    filters: {{redirect: {redirect}}}
""", get("/old/a?b=1", host="example.com:8080"))
    assert (r["status"], r["location"]) == (302, location)


def test_redirect_status_and_port_of_the_listener():
    r = phase("""
routes:
  - name: r
    filters: {redirect: {hostname: x.org, status: 301}}
""", get("/p"), port=8080)
    assert (r["status"], r["location"]) == (301, b"http://x.org:8080/p")


def test_header_edits_set_add_remove_case_insensitive():
    r = phase("""
routes:
  - name: r
    upstream: a
    filters:
      request_headers: {set: {x-env: prod}, add: {X-Tag: two}, remove: [user-agent]}
""", get("/", extra="User-Agent: curl\r\nX-Env: dev\r\nX-ENV: test\r\nX-Tag: one\r\n"))
    head = r["upstream_request"]
    assert b"User-Agent" not in head
    assert head.count(b"X-Env") + head.count(b"X-ENV") + head.count(b"x-env") == 1
    assert b"\r\nx-env: prod\r\n" in head
    assert b"\r\nX-Tag: one\r\n" in head and b"\r\nX-Tag: two\r\n" in head


def test_outcomes_404_500_503():
    routes = """
routes:
  - {name: empty, match: {path: {prefix: /empty}}, backends: []}
  - {name: unresolved, match: {path: {prefix: /unresolved}}, backends: [{weight: 1}]}
  - {name: scaled-to-zero, match: {path: {prefix: /zero}}, upstream: none}
"""
    assert phase(routes, get("/nothing"))["status"] == 404
    assert phase(routes, get("/empty"))["status"] == 500
    assert phase(routes, get("/unresolved"))["status"] == 500
    assert phase(routes, get("/zero"))["status"] == 503


def test_weighted_backends_follow_smooth_round_robin():
    cfg = loads_config(BASE + """
routes:
  - name: split
    backends: [{upstream: a, weight: 3}, {upstream: b, weight: 1}, {upstream: none, weight: 0}]
""", "yaml")
    conn = _core.Worker(None, compile_runtime(cfg))()
    picks = [conn.explain(get("/"), 8080)["upstream"] for _ in range(8)]
    assert picks == ["a", "a", "b", "a"] * 2


def test_backend_filters_apply_only_to_the_chosen_backend():
    cfg = loads_config(BASE + """
routes:
  - name: split
    backends:
      - {upstream: a, weight: 1}
      - {upstream: b, weight: 1, filters: {request_headers: {set: {X-Canary: "1"}}}}
""", "yaml")
    conn = _core.Worker(None, compile_runtime(cfg))()
    seen = {}
    for _ in range(4):
        r = conn.explain(get("/"), 8080)
        seen.setdefault(r["upstream"], set()).add(b"X-Canary: 1" in r["upstream_request"])
    assert seen == {"a": {False}, "b": {True}}
