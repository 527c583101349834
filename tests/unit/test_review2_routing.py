"""Regression tests from a routing review, sans-socket through ClientConn.explain, the
request phase a live connection runs. Each test states the expected (correct) behaviour."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from fastgw import _core
from fastgw.config import ConfigError, loads_config
from fastgw.explain import explain
from fastgw.gatewayapi import load_manifests
from fastgw.runtime import compile_runtime

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_gatewayapi import base, dump, route  # noqa: E402

UPSTREAMS = """
upstreams:
  a: {targets: [{address: 127.0.0.1:9001}]}
  b: {targets: [{address: 127.0.0.1:9002}]}
"""
ONE_LISTENER = "listeners: [{address: 127.0.0.1:8080}]\n"


def phase(config_yaml: str, request: bytes, port: int = 8080) -> dict[str, Any]:
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


# -- absolute-form with an IPv6 authority ----------------------------------------------------------

V6_ROUTES = ONE_LISTENER + UPSTREAMS + """
routes:
  - {name: v6, match: {hosts: ["[::1]"]}, upstream: a}
  - {name: other, upstream: b}
"""


def test_review2_absolute_form_ipv6_authority_routes_like_its_host_header():
    # client.pyx _route: the port is cut off the authority only when host[0] != '[', so the
    # routing host of `http://[::1]:8080/x` is "[::1]:8080" and the `[::1]` route never matches.
    origin = phase(V6_ROUTES, b"GET /x HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
    absolute = phase(V6_ROUTES, b"GET http://[::1]:8080/x HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
    assert origin["route"] == "v6"
    assert absolute["route"] == "v6", absolute


def test_review2_redirect_location_absolute_form_ipv6_authority():
    # client.pyx _redirect_location: `authority.split(b":")[0]` turns "[::1]:8080" into "[".
    r = phase(ONE_LISTENER + UPSTREAMS + """
routes:
  - {name: red, filters: {redirect: {path: {full: /new}}}}
""", b"GET http://[::1]:8080/x?q=1 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
    assert r["location"] == b"http://[::1]:8080/new?q=1"


def test_review2_redirect_location_http10_without_host_has_a_host():
    # An HTTP/1.0 request may come without Host; the redirect then says "http://:8080/new",
    # an invalid URI (empty host with a port). Any non-empty host would do (the listener address).
    r = phase(ONE_LISTENER + UPSTREAMS + """
routes:
  - {name: red, filters: {redirect: {path: {full: /new}}}}
""", b"GET /x HTTP/1.0\r\n\r\n")
    assert not r["location"].startswith(b"http://:"), r["location"]


# -- header edits that collide with fields the gateway writes itself ------------------------------


def test_review2_request_set_host_does_not_duplicate_host():
    # client.pyx _build_upstream_head: ops.drops() is only consulted for HK_OTHER/HK_EXPECT fields,
    # and the Host line is written before the loop; `set: {Host: x}` is appended again from
    # ops.appended. The upstream sees two Host fields (RFC 9112 3.2: must answer 400).
    r = phase(ONE_LISTENER + UPSTREAMS + """
routes:
  - {name: r, upstream: a, filters: {request_headers: {set: {Host: internal.svc}}}}
""", b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert fields(r["upstream_request"], b"host") == [b"internal.svc"], r["upstream_request"]


@pytest.mark.parametrize("direction,edit,name", [
    ("request_headers", "set", "Content-Length"),
    ("request_headers", "add", "Content-Length"),
    ("request_headers", "set", "Transfer-Encoding"),
    ("request_headers", "add", "Host"),
    ("request_headers", "set", "X-Forwarded-For"),
    ("response_headers", "set", "Content-Length"),
    ("response_headers", "set", "Transfer-Encoding"),
    ("response_headers", "add", "Connection"),
])
def test_review2_framing_headers_cannot_be_edited(direction, edit, name):
    # Framing and connection fields are the gateway's: a configured edit would put a second
    # Content-Length or a Transfer-Encoding next to the real framing (request smuggling, or a
    # desynchronised client). Refused at load time, with the path of the field.
    with pytest.raises(ConfigError) as e:
        loads_config(ONE_LISTENER + UPSTREAMS + f"""
routes:
  - {{name: r, upstream: a, filters: {{{direction}: {{{edit}: {{{name}: "0"}}}}}}}}
""", "yaml")
    assert [i.path for i in e.value.errors] == [f"$.routes[0].filters.{direction}.{edit}.{name}"]
    assert "managed by the gateway" in e.value.errors[0].message


def test_review2_framing_header_remove_refused_with_index():
    with pytest.raises(ConfigError) as e:
        loads_config(ONE_LISTENER + UPSTREAMS + """
routes:
  - {name: r, upstream: a, filters: {request_headers: {remove: [X-A, content-length]}}}
""", "yaml")
    assert [i.path for i in e.value.errors] == ["$.routes[0].filters.request_headers.remove[1]"]


# -- route + backend filter layering --------------------------------------------------------------

LAYERED = ONE_LISTENER + UPSTREAMS + """
routes:
  - name: r
    filters: {request_headers: {add: {X-A: route}, set: {X-B: route}}}
    backends:
      - upstream: a
        filters: {request_headers: {set: {X-A: backend}, remove: [X-B]}}
"""


def test_review2_backend_set_replaces_a_route_add():
    # runtime.py _header_ops merges layers into one (sets, adds, removes): the route's `add X-A`
    # survives the backend's `set X-A` ("set replaces every field of that name"; "later layers
    # win"), so the upstream gets X-A: backend AND X-A: route.
    r = phase(LAYERED, b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert fields(r["upstream_request"], b"x-a") == [b"backend"], r["upstream_request"]


def test_review2_backend_remove_removes_a_route_set():
    # Same merge: the backend's `remove X-B` only drops request fields; the route's `set X-B` is
    # still appended.
    r = phase(LAYERED, b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert fields(r["upstream_request"], b"x-b") == [], r["upstream_request"]


# -- fastgw explain disagreeing with the request phase ---------------------------------------------


def test_review2_explain_ipv6_host_names_the_listener_and_route_the_core_uses():
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


# -- Gateway API conversion error paths ------------------------------------------------------------


def test_review2_gatewayapi_bad_hostname_reported_at_its_list_item_once():
    # A bad spec.hostnames[1] is reported at `$[3].spec.hostnames` (not the item), and once per
    # rule and match, since the hostnames are copied into every native match.
    text = dump(*base(route(hostnames=["ok.example.com", "bad host"], rules=[
        {"matches": [{"path": {"value": "/a"}}, {"path": {"value": "/b"}}],
         "backendRefs": [{"name": "svc", "port": 8080}]},
        {"backendRefs": [{"name": "svc", "port": 8080}]},
    ])))
    with pytest.raises(ConfigError) as exc:
        load_manifests(text, "m.yaml")
    got = [(i.path, i.line) for i in exc.value.errors]
    assert len(got) == 1, got
    assert got[0][0] == "$[3].spec.hostnames[1]", got
