"""Sans-socket tests of the request phase (routing decisions, filters, the upstream head) through
ClientConn.explain, the same code a live connection runs. The e2e tests check the same over sockets. Also
`fastgw explain` (fastgw/explain.py) naming what the request phase decides."""

from typing import Any

import pytest

from fastgw import _core
from fastgw.config import loads_config
from fastgw.explain import explain
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



# -- from review 2: whole configs (phase_of), fields of a serialized head ----------------------------

ONE_LISTENER = "listeners: [{address: 127.0.0.1:8080}]\n"
UPSTREAMS = """
upstreams:
  a: {targets: [{address: 127.0.0.1:9001}]}
  b: {targets: [{address: 127.0.0.1:9002}]}
"""


def phase_of(config_yaml: str, request: bytes, port: int = 8080) -> dict[str, Any]:
    """Like phase(), for a whole config."""
    cfg = loads_config(config_yaml, "yaml")
    conn = _core.Worker(None, compile_runtime(cfg))()
    return conn.explain(request, port)


def fields(head: bytes, name: bytes) -> list[bytes]:
    """Values of every field called `name` (case-insensitive) in a serialized head."""
    out = []
    for line in head.split(b"\r\n")[1:]:
        n, sep, v = line.partition(b":")
        if sep and n.strip().lower() == name.lower():
            out.append(v.strip())
    return out


# -- absolute-form with an IPv6 authority (review 2) -----------------------------------------------

V6_ROUTES = ONE_LISTENER + UPSTREAMS + """
routes:
  - {name: v6, match: {hosts: ["[::1]"]}, upstream: a}
  - {name: other, upstream: b}
"""


def test_absolute_form_ipv6_authority_routes_like_its_host_header():
    """(From review 2: an absolute-form IPv6 authority routes as its Host field does.)"""
    # client.pyx _route: the port is cut off the authority only when host[0] != '[', so the
    # routing host of `http://[::1]:8080/x` is "[::1]:8080" and the `[::1]` route never matches.
    origin = phase_of(V6_ROUTES, b"GET /x HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
    absolute = phase_of(V6_ROUTES, b"GET http://[::1]:8080/x HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
    assert origin["route"] == "v6"
    assert absolute["route"] == "v6", absolute


def test_redirect_location_absolute_form_ipv6_authority():
    """(From review 2: a redirect keeps an absolute-form IPv6 authority whole.)"""
    # client.pyx _redirect_location: `authority.split(b":")[0]` turns "[::1]:8080" into "[".
    r = phase_of(ONE_LISTENER + UPSTREAMS + """
routes:
  - {name: red, filters: {redirect: {path: {full: /new}}}}
""", b"GET http://[::1]:8080/x?q=1 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
    assert r["location"] == b"http://[::1]:8080/new?q=1"


def test_redirect_location_http10_without_host_has_a_host():
    """(From review 2: a redirect of a Host-less HTTP/1.0 request names a host.)"""
    # An HTTP/1.0 request may come without Host; the redirect then says "http://:8080/new",
    # an invalid URI (empty host with a port). Any non-empty host would do (the listener address).
    r = phase_of(ONE_LISTENER + UPSTREAMS + """
routes:
  - {name: red, filters: {redirect: {path: {full: /new}}}}
""", b"GET /x HTTP/1.0\r\n\r\n")
    assert not r["location"].startswith(b"http://:"), r["location"]


# -- a header edit of Host, a field the gateway writes itself (review 2) --------------------------


def test_request_set_host_does_not_duplicate_host():
    """(From review 2: `set: {Host: ...}` replaces Host upstream instead of adding a second one.)"""
    # client.pyx _build_upstream_head: ops.drops() is only consulted for HK_OTHER/HK_EXPECT fields,
    # and the Host line is written before the loop; `set: {Host: x}` is appended again from
    # ops.appended. The upstream sees two Host fields (RFC 9112 3.2: must answer 400).
    r = phase_of(ONE_LISTENER + UPSTREAMS + """
routes:
  - {name: r, upstream: a, filters: {request_headers: {set: {Host: internal.svc}}}}
""", b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert fields(r["upstream_request"], b"host") == [b"internal.svc"], r["upstream_request"]


# -- route + backend filter layering (review 2) -----------------------------------------------------

LAYERED = ONE_LISTENER + UPSTREAMS + """
routes:
  - name: r
    filters: {request_headers: {add: {X-A: route}, set: {X-B: route}}}
    backends:
      - upstream: a
        filters: {request_headers: {set: {X-A: backend}, remove: [X-B]}}
"""


def test_backend_set_replaces_a_route_add():
    """(From review 2: a backend's `set` replaces a field the route's `add` added.)"""
    # runtime.py _header_ops merges layers into one (sets, adds, removes): the route's `add X-A`
    # survives the backend's `set X-A` ("set replaces every field of that name"; "later layers
    # win"), so the upstream gets X-A: backend AND X-A: route.
    r = phase_of(LAYERED, b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert fields(r["upstream_request"], b"x-a") == [b"backend"], r["upstream_request"]


def test_backend_remove_removes_a_route_set():
    """(From review 2: a backend's `remove` removes a field the route's `set` set.)"""
    # Same merge: the backend's `remove X-B` only drops request fields; the route's `set X-B` is
    # still appended.
    r = phase_of(LAYERED, b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert fields(r["upstream_request"], b"x-b") == [], r["upstream_request"]


# -- fastgw explain agrees with the request phase (review 2) ------------------------------------------


def test_explain_ipv6_host_names_the_listener_and_route_the_core_uses():
    """(From review 2: `fastgw explain` on an IPv6 host names the listener and route the core uses.)"""
    # explain.py uses urlsplit().hostname, which strips the brackets ("::1"), for _listener_for and
    # the candidate table, while the core routes on "[::1]": the report says listener `any` and
    # "chosen: anyroute" but "route: v6route".
    cfg = loads_config("""
listeners:
  - {name: any, address: 127.0.0.1:8080}
  - {name: v6, address: 127.0.0.1:8080, hostname: "[::1]"}
""" + UPSTREAMS + """
routes:
  - {name: v6route, match: {hosts: ["[::1]"]}, upstream: a, listeners: [v6]}
  - {name: anyroute, upstream: b, listeners: [any]}
""", "yaml")
    text = explain(cfg, "GET", "http://[::1]:8080/x", [])
    assert "route:    v6route" in text
    assert "listener: v6 " in text, text
    assert "chosen:   v6route" in text, text
