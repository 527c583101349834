"""Path normalization over real sockets (issue 7 §3): the route chosen and the path the upstream
receives always agree; `reject` and `off` modes; encoded slashes kept or refused; merge_slashes;
a Host with a trailing dot; `OPTIONS *`."""

from __future__ import annotations

import json

import pytest
from support.client import RawConn, assert_gateway_error, curl, sync_and_assert_nothing_forwarded
from support.gateway import simple_config


def routes():
    return [
        {"name": "public", "match": {"path": {"prefix": "/p"}}, "upstream": "echo"},
        {"name": "secret", "match": {"path": {"prefix": "/secret"}}, "upstream": "echo",
         "policies": [{"type": "respond", "status": 403, "body": "no"}]},
        {"name": "rw", "match": {"path": {"prefix": "/f/rw/pre"}}, "upstream": "echo",
         "filters": {"rewrite": {"path": {"prefix": "/xyz"}}}},
        {"name": "host", "match": {"hosts": ["api.example.com"], "path": {"prefix": "/"}}, "upstream": "echo",
         "filters": {"response_headers": {"set": {"X-Route": "host"}}}},
        {"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "echo"},
    ]


@pytest.fixture(scope="module")
def gws(echo, module_gateway_factory):
    def make(**server):
        cfg = simple_config(echo.address, routes=routes())
        cfg["server"] = {**cfg.get("server", {}), **server}
        return module_gateway_factory(cfg)
    return {
        "normalize": make(),
        "reject": make(path_normalization="reject"),
        "off": make(path_normalization="off"),
        "strict": make(encoded_slashes="reject", merge_slashes=True),
    }


def refused(gw, echo, target, error=None):
    """A 400 for `target`, with nothing forwarded upstream."""
    snap = echo.snapshot()
    body = assert_gateway_error(send(gw, target), 400)
    if error is not None:
        assert body["error"] == error
    sync_and_assert_nothing_forwarded(gw, echo, snap, f"400 for {target}")


def send(gw, target, host="t.test", method="GET"):
    with RawConn(gw.port) as c:
        c.send(f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return c.response(method)


@pytest.mark.parametrize("target,upstream_target", [
    ("/p/x/../abc", "/p/abc"),
    ("/p/./a/%2e%2E/b?q=1", "/p/b?q=1"),
    ("/p/%7Euser/%41", "/p/~user/A"),
    ("/p/%c3%a9", "/p/%C3%A9"),
    ("/p/a%2fb", "/p/a%2Fb"),
    ("/../p/z", "/p/z"),
])
def test_normalized_path_is_routed_and_forwarded(gws, target, upstream_target):
    r = send(gws["normalize"], target)
    assert r.status == 200
    assert r.json()["target"] == upstream_target


def test_dot_segments_cannot_reach_another_routes_path(gws, echo):
    """The bypass of the issue: /p/../secret must take the secret route's policy, not /p's."""
    gw = gws["normalize"]
    snap = echo.snapshot()
    r = send(gw, "/p/../secret/data")
    assert r.status == 403 and r.body == b"no"
    r = send(gw, "/p/%2e%2e/secret")
    assert r.status == 403
    assert echo.requests_since(snap) == []


def test_rewrite_applies_to_the_normalized_path(gws):
    r = send(gws["normalize"], "/f/rw/pre/sub/../secret")
    assert r.status == 200 and r.json()["target"] == "/xyz/secret"


def test_curl_path_as_is_is_normalized(gws):
    res = curl(gws["normalize"].url + "/p/a/../b", "--path-as-is")
    assert res.status == 200 and json.loads(res.body)["target"] == "/p/b"


@pytest.mark.parametrize("target", ["/p/x/../abc", "/p/%7e", "/p/a%2fb", "/p/./x"])
def test_reject_mode_refuses_paths_normalization_would_change(gws, echo, target):
    refused(gws["reject"], echo, target, "path is not in normal form")


def test_reject_mode_serves_normal_paths(gws):
    r = send(gws["reject"], "/p/a%2Fb/%C3%A9?x=../y")
    assert r.status == 200 and r.json()["target"] == "/p/a%2Fb/%C3%A9?x=../y"


@pytest.mark.parametrize("mode", ["normalize", "reject", "strict"])
def test_malformed_percent_encoding_is_400(gws, echo, mode):
    refused(gws[mode], echo, "/p/%zz", "invalid path")


def test_off_mode_routes_and_forwards_the_raw_path(gws):
    r = send(gws["off"], "/p/x/../abc")
    assert r.status == 200 and r.json()["target"] == "/p/x/../abc"


@pytest.mark.parametrize("target", ["/p/a%2Fb", "/p/a%5cb", "/p/a%00b"])
def test_encoded_slashes_rejected_when_configured(gws, echo, target):
    refused(gws["strict"], echo, target, "invalid path")


def test_merge_slashes(gws):
    r = send(gws["strict"], "//p///a//../b")
    assert r.status == 200 and r.json()["target"] == "/p/b"
    assert send(gws["normalize"], "/p//a").json()["target"] == "/p//a"


def test_host_with_trailing_dot_matches_as_without(gws):
    gw = gws["normalize"]
    r = send(gw, "/x", host="API.example.com.")
    assert r.status == 200 and r.headers.get("x-route") == "host"
    assert r.json()["headers"][0] == ["Host", "API.example.com."], "the Host itself is forwarded as sent"
    r = send(gw, "/x", host="api.example.com.:8080")
    assert r.headers.get("x-route") == "host"
    assert send(gw, "/x", host="other.example.com.").headers.get("x-route") is None


def test_options_asterisk_is_answered_by_the_gateway(gws, echo):
    gw = gws["normalize"]
    snap = echo.snapshot()
    with RawConn(gw.port) as c:
        c.send(b"OPTIONS * HTTP/1.1\r\nHost: t.test\r\n\r\n")
        r = c.response("OPTIONS")
        assert r.status == 200
        assert r.headers.get("allow") == "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"
        assert r.headers.get("content-length") == "0"
        assert c.request("GET", "/p/after").status == 200
    assert [q.target for q in echo.requests_since(snap)] == ["/p/after"]
