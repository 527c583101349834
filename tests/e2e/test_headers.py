"""Header rewriting: hop-by-hop removal both ways, X-Forwarded-*, X-Request-Id."""

from __future__ import annotations

import re

import pytest
from support.client import RawConn

HOP_BY_HOP = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "x-conn-named"]
REQUEST_ID_RE = re.compile(r"^[\x21-\x7e]{1,200}$")


def upstream_view(resp) -> dict:
    j = resp.json()
    j["hdrs"] = {}
    for k, v in j["headers"]:
        j["hdrs"].setdefault(k.lower(), []).append(v)
    return j


def test_hop_by_hop_request_headers_removed(gateway):
    with RawConn(gateway.port) as c:
        r = c.request("POST", "/hop", [
            ("Connection", "keep-alive, X-Conn-Named"), ("X-Conn-Named", "secret"),
            ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "keep-alive"), ("TE", "trailers"),
            ("Trailer", "X-Later"), ("Upgrade", "h2c"), ("X-End-To-End", "kept"),
        ], body=b"abc")
    assert r.status == 200
    seen = upstream_view(r)["hdrs"]
    leaked = [h for h in HOP_BY_HOP if h in seen]
    assert not leaked, f"hop-by-hop request headers reached the upstream: {leaked} in {seen}"
    assert seen["x-end-to-end"] == ["kept"]
    assert seen.get("content-length") == ["3"] or "transfer-encoding" in seen


def test_hop_by_hop_response_headers_removed(gateway):
    set_headers = ("Connection:X-Resp-Named,X-Resp-Named:secret,Keep-Alive:timeout=9,Proxy-Connection:x,"
                   "Trailer:X-Later,Upgrade:foo,TE:trailers,X-Kept:1")
    with RawConn(gateway.port) as c:
        r = c.request("GET", "/hop-resp", [("X-Echo-Set-Header", set_headers)])
        assert r.status == 200
        names = r.headers.names()
        for h in ["x-resp-named", "keep-alive", "proxy-connection", "trailer", "upgrade", "te"]:
            assert h not in names, f"hop-by-hop response header {h} reached the client: {r.headers}"
        assert "x-resp-named" not in r.connection_tokens
        assert r.headers.get("x-kept") == "1"
        # The upstream's Connection tokens are not the client's: the connection stays usable.
        assert c.request("GET", "/after").status == 200


def test_forwarded_headers_added(gateway):
    with RawConn(gateway.port) as c:
        r = c.request("GET", "/fwd", host="api.test:8443")
    seen = upstream_view(r)["hdrs"]
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == ["api.test:8443"]


def test_forwarded_for_appends_to_incoming(gateway):
    with RawConn(gateway.port) as c:
        r = c.request("GET", "/fwd", [("X-Forwarded-For", "203.0.113.7, 10.0.0.1")])
    seen = upstream_view(r)["hdrs"]
    assert seen["x-forwarded-for"] == ["203.0.113.7, 10.0.0.1, 127.0.0.1"]


def test_forwarded_proto_and_host_not_spoofable(gateway):
    with RawConn(gateway.port) as c:
        r = c.request("GET", "/fwd", [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.test")],
                      host="good.test")
    seen = upstream_view(r)["hdrs"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == ["good.test"]


@pytest.mark.parametrize("rid", ["abc-123", "a.b_c:d-e", "Z" * 200, "0"])
def test_request_id_kept_when_well_formed(gateway, echo, rid):
    with RawConn(gateway.port) as c:
        r = c.request("GET", "/rid", [("X-Request-Id", rid)])
    assert r.status == 200
    assert r.headers.get("x-request-id") == rid
    assert upstream_view(r)["hdrs"]["x-request-id"] == [rid]


@pytest.mark.parametrize("rid", ["", "has space", "Z" * 201, "tab\there", "caf\xe9"])
def test_request_id_replaced_when_malformed(gateway, rid):
    with RawConn(gateway.port) as c:
        r = c.request("GET", "/rid", [("X-Request-Id", rid)])
    assert r.status == 200
    sent_up = upstream_view(r)["hdrs"]["x-request-id"]
    assert len(sent_up) == 1 and sent_up[0] != rid and REQUEST_ID_RE.match(sent_up[0]), sent_up
    assert r.headers.get("x-request-id") == sent_up[0]


def test_request_id_generated_unique_and_echoed(gateway):
    ids = []
    with RawConn(gateway.port) as c:
        for _ in range(3):
            r = c.request("GET", "/rid")
            up = upstream_view(r)["hdrs"]["x-request-id"]
            assert len(up) == 1 and REQUEST_ID_RE.match(up[0])
            assert r.headers.get("x-request-id") == up[0]
            ids.append(up[0])
    assert len(set(ids)) == 3


def test_duplicate_request_id_not_forwarded_twice(gateway):
    with RawConn(gateway.port) as c:
        r = c.request("GET", "/rid", [("X-Request-Id", "one"), ("X-Request-Id", "two")])
    if r.status == 200:
        up = upstream_view(r)["hdrs"]["x-request-id"]
        assert len(up) == 1 and r.headers.get("x-request-id") == up[0]
    else:
        assert r.status == 400


@pytest.mark.parametrize("named", ["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-Id",
                                   "Host", "Content-Length", "Transfer-Encoding"])
def test_connection_naming_an_end_to_end_field_drops_only_the_clients_copy(gateway, named):
    """Issue 7: RFC 9110 7.6.1 says the fields a Connection header lists are removed; the gateway's
    own X-Forwarded-* and X-Request-Id are still added, and framing and Host are the gateway's."""
    with RawConn(gateway.port) as c:
        r = c.request("POST", "/conn-named", [
            ("Connection", f"keep-alive, {named}"), ("X-Forwarded-For", "203.0.113.66"),
            ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.test"),
            ("X-Request-Id", "client-chosen-id-1")], body=b"abcd", host="api.test")
    assert r.status == 200
    seen = upstream_view(r)["hdrs"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == ["api.test"]
    assert seen["host"] == ["api.test"]
    assert seen["content-length"] == ["4"] and upstream_view(r)["body_len"] == 4
    if named == "X-Forwarded-For":
        assert seen["x-forwarded-for"] == ["127.0.0.1"], "the client's X-Forwarded-For named in Connection leaked"
    else:
        assert seen["x-forwarded-for"] == ["203.0.113.66, 127.0.0.1"]
    if named == "X-Request-Id":
        assert seen["x-request-id"] != ["client-chosen-id-1"]
        assert len(seen["x-request-id"]) == 1 and REQUEST_ID_RE.match(seen["x-request-id"][0])
        assert r.headers.get("x-request-id") == seen["x-request-id"][0]
    else:
        assert seen["x-request-id"] == ["client-chosen-id-1"]
