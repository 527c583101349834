"""ip_allow, ip_deny and trusted_proxies over real sockets (issue 10 §3): IPv4 and IPv6 clients (the
gateway listening on 127.0.0.1 and on [::1]), X-Forwarded-For and Forwarded honoured only through
trusted proxies (a spoofed first entry from an untrusted peer ignored, for the rules, the access log
and the upstream's X-Forwarded-For), depth mode, and a 10,000-CIDR list."""

from __future__ import annotations

import time

import pytest
from support.client import RawConn
from support.gateway import simple_config, upstream_config
from support.logs import FAST_ACCESS_LOG, only_line

FAST = {"connect": "2s", "response_header": "5s", "body_idle": "5s"}


def route(name: str, prefix: str, policies: list) -> dict:
    return {"name": name, "match": {"path": {"prefix": prefix}}, "upstream": "echo", "policies": policies}


def many_cidrs(n: int) -> list[str]:
    """n disjoint /24s in 10.0.0.0/8 and 2001:db8::/32 that do not cover the loopback addresses."""
    v4 = [f"10.{i // 256}.{i % 256}.0/24" for i in range(n // 2)]
    v6 = [f"2001:db8:{i:x}::/48" for i in range(n - len(v4))]
    return v4 + v6


@pytest.fixture(scope="module")
def gw(echo, module_gateway_factory):
    cfg = simple_config(upstreams={"echo": upstream_config(echo.address, timeouts=FAST)}, routes=[
        route("allow-lo", "/allow-lo", [{"type": "ip_allow", "cidrs": ["127.0.0.0/8", "::1/128"]}]),
        route("allow-other", "/allow-other", [{"type": "ip_allow", "cidrs": ["192.0.2.0/24", "2001:db8::/32"]}]),
        route("deny-lo", "/deny-lo", [{"type": "ip_deny", "cidrs": ["127.0.0.1", "::1"]}]),
        route("deny-many", "/deny-many", [{"type": "ip_deny", "cidrs": many_cidrs(10_000)}]),
        route("allow-many", "/allow-many", [{"type": "ip_allow", "cidrs": [*many_cidrs(10_000), "127.0.0.1/32"]}]),
        route("xff", "/xff", [{"type": "trusted_proxies", "cidrs": ["127.0.0.0/8", "10.0.0.0/8"]},
                              {"type": "ip_allow", "cidrs": ["203.0.113.0/24", "2001:db8::/32"]}]),
        route("untrusted", "/untrusted", [{"type": "trusted_proxies", "cidrs": ["10.0.0.0/8"]},
                                          {"type": "ip_allow", "cidrs": ["203.0.113.0/24"]}]),
        route("depth", "/depth", [{"type": "trusted_proxies", "depth": 2}]),
        route("fwd", "/fwd", [{"type": "trusted_proxies", "header": "forwarded", "cidrs": ["127.0.0.1"]}]),
    ])
    cfg["listeners"].append({"address": "[::1]:0"})
    cfg["access_log"] = FAST_ACCESS_LOG
    return module_gateway_factory(cfg)


def request(gw, path: str, headers=(), v6: bool = False):
    host = "::1" if v6 else "127.0.0.1"
    port = gw.port if not v6 else _v6_port(gw)
    with RawConn(port, host=host) as c:
        return c.request("GET", path, [("Host", "gw.test"), *headers, ("Connection", "close")])


def _v6_port(gw) -> int:
    import re
    ports = re.findall(r'listening on http://\[::1\]:(\d+)', gw.stderr)
    assert ports, gw.stderr
    return int(ports[0])


def upstream_xff(resp) -> str:
    import json
    return dict((k.lower(), v) for k, v in json.loads(resp.body)["headers"])["x-forwarded-for"]


def test_ipv4_and_ipv6_allow_and_deny(gw):
    assert request(gw, "/allow-lo").status == 200
    assert request(gw, "/allow-lo", v6=True).status == 200
    assert request(gw, "/allow-other").status == 403
    assert request(gw, "/allow-other", v6=True).status == 403
    assert request(gw, "/deny-lo").status == 403
    assert request(gw, "/deny-lo", v6=True).status == 403


def test_refusal_is_the_json_error_with_request_id(gw):
    r = request(gw, "/deny-lo", [("X-Request-Id", "rid-ip-403")])
    assert r.status == 403
    assert r.body == b'{"error":"forbidden","request_id":"rid-ip-403"}'


def test_ten_thousand_cidrs(gw):
    assert request(gw, "/deny-many").status == 200          # loopback is in none of them
    assert request(gw, "/allow-many").status == 200
    assert request(gw, "/allow-many", v6=True).status == 403


def test_trusted_chain_honoured(gw):
    r = request(gw, "/xff", [("X-Forwarded-For", "203.0.113.7, 10.1.1.1")])
    assert r.status == 200
    assert upstream_xff(r) == "203.0.113.7, 10.1.1.1, 127.0.0.1"
    r = request(gw, "/xff", [("X-Forwarded-For", "2001:db8::7")])
    assert r.status == 200


def test_spoofed_first_entry_before_an_untrusted_hop_is_ignored(gw):
    # 198.51.100.9 is not trusted: it is the client, whatever it claims came before it
    r = request(gw, "/xff", [("X-Forwarded-For", "203.0.113.7, 198.51.100.9, 10.1.1.1")])
    assert r.status == 403
    rid = f"rid-xff-{time.monotonic_ns()}"
    r = request(gw, "/xff", [("X-Forwarded-For", "1.1.1.1, 203.0.113.8, 10.1.1.1"), ("X-Request-Id", rid)])
    assert r.status == 200
    assert upstream_xff(r) == "203.0.113.8, 10.1.1.1, 127.0.0.1"       # the spoofed 1.1.1.1 left out
    assert only_line(gw, rid)["client_ip"] == "203.0.113.8"


def test_xff_from_an_untrusted_peer_is_ignored(gw):
    rid = f"rid-spoof-{time.monotonic_ns()}"
    r = request(gw, "/untrusted", [("X-Forwarded-For", "203.0.113.7"), ("X-Request-Id", rid)])
    assert r.status == 403                                    # 127.0.0.1 is not a trusted proxy there
    assert only_line(gw, rid)["client_ip"] == "127.0.0.1"


def test_garbage_in_the_chain_stops_the_walk(gw):
    r = request(gw, "/xff", [("X-Forwarded-For", "203.0.113.7, not-an-ip, 10.1.1.1")])
    assert r.status == 403                                    # the client is 10.1.1.1, the hop that said so


def test_depth(gw):
    r = request(gw, "/depth", [("X-Forwarded-For", "1.1.1.1, 192.0.2.5, 10.9.9.9")])
    assert upstream_xff(r) == "192.0.2.5, 10.9.9.9, 127.0.0.1"
    r = request(gw, "/depth", [("X-Forwarded-For", "10.9.9.9")])     # fewer than depth: the peer
    assert upstream_xff(r) == "127.0.0.1"


def test_forwarded_header(gw):
    r = request(gw, "/fwd", [("Forwarded", 'for="[2001:db8::9]:4711";proto=https, for=192.0.2.60')])
    assert upstream_xff(r) == "192.0.2.60, 127.0.0.1"
    rid = f"rid-fwd-{time.monotonic_ns()}"
    r = request(gw, "/fwd", [("Forwarded", 'for="[2001:db8::9]:4711"'), ("X-Request-Id", rid)])
    assert only_line(gw, rid)["client_ip"] == "2001:db8::9"
