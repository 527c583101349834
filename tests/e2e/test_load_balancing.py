"""Balancers and sticky sessions over real sockets: three echo upstreams, a real client (httpx)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter

import httpx
import pytest
import yaml
from support.client import wait_until
from support.gateway import simple_config
from support.upstreams import EchoServer, RawUpstream, slow


@pytest.fixture(scope="module")
def three():
    with EchoServer("a") as a, EchoServer("b") as b, EchoServer("c") as c:
        yield [a, b, c]


def config_with(servers, **upstream) -> dict:
    cfg = simple_config(servers[0].address)
    cfg["upstreams"]["echo"] = {"targets": [{"address": s.address} for s in servers], **upstream}
    return cfg


def name_of(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.json()["name"]


@pytest.mark.parametrize("balancer", [
    {"type": "ring_hash", "hash_on": {"source": "header", "name": "X-User"}},
    {"type": "maglev", "hash_on": {"source": "header", "name": "x-user"}},
])
def test_a_hash_key_keeps_each_user_on_one_target(three, gateway_factory, balancer):
    gw = gateway_factory(config_with(three, balancer=balancer))
    seen: dict[str, set] = {}
    with httpx.Client(base_url=gw.url, headers={"Host": "test.local"}, timeout=10) as c:
        for _ in range(3):
            for u in range(30):
                seen.setdefault(f"u{u}", set()).add(name_of(c.get("/", headers={"X-User": f"u{u}"})))
        keyless = Counter(name_of(c.get("/")) for _ in range(60))
    assert all(len(s) == 1 for s in seen.values()), seen
    assert len({next(iter(s)) for s in seen.values()}) == 3        # 30 users land on all three
    assert len(keyless) >= 2                                        # no key: spread at random


def test_maglev_on_a_query_parameter_and_a_cookie(three, gateway_factory):
    for key in ({"source": "query", "name": "tenant"}, {"source": "cookie", "name": "sid"}):
        gw = gateway_factory(config_with(three, balancer={"type": "maglev", "hash_on": key}))
        with httpx.Client(base_url=gw.url, headers={"Host": "test.local"}, timeout=10) as c:
            for t in ("t1", "t2", "t3", "t4"):
                if key["source"] == "query":
                    got = {name_of(c.get(f"/x?a=1&tenant={t}&b=2")) for _ in range(5)}
                else:
                    got = {name_of(c.get("/", headers={"Cookie": f"theme=dark; sid={t}"})) for _ in range(5)}
                assert len(got) == 1, (key, t, got)
        gw.close()


def test_sticky_sessions_by_the_gateways_cookie(three, gateway_factory):
    gw = gateway_factory(config_with(three, sticky={"cookie": "lb", "ttl": "1h"}))

    def get(cookie: str | None = None) -> httpx.Response:   # no cookie jar: each request says its own
        headers = {"Host": "test.local", **({"Cookie": cookie} if cookie else {})}
        return httpx.get(gw.url + "/", headers=headers, timeout=10)

    first = get()
    cookie = first.headers["set-cookie"]
    assert cookie.startswith("lb=") and "Max-Age=3600" in cookie and "HttpOnly" in cookie, cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    assert len(value) == 16 and int(value, 16) >= 0      # an id derived from the address, not the address
    target = name_of(first)
    pinned = [get(f"theme=dark; lb={value}") for _ in range(12)]
    assert {name_of(r) for r in pinned} == {target}
    assert all("set-cookie" not in r.headers for r in pinned)           # already pinned: not set again
    assert len({name_of(get()) for _ in range(6)}) == 3                 # without it: round robin
    stale = get("lb=0123456789abcdef")                                  # names no target
    assert "set-cookie" in stale.headers


def test_sticky_target_gone_after_a_reload_rebalances(three, gateway_factory):
    gw = gateway_factory(config_with(three, sticky={}))

    def get(cookie: str | None = None) -> httpx.Response:
        headers = {"Host": "test.local", **({"Cookie": cookie} if cookie else {})}
        return httpx.get(gw.url + "/", headers=headers, timeout=10)

    r = get()
    target = name_of(r)
    value = r.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    rest = [s for s in three if s.name != target]
    gw.reload(config_with(rest, sticky={}))
    wait_until(lambda: name_of(get(f"fastgw-affinity={value}")) != target,
               what="the reload to drop the pinned target")
    again = get(f"fastgw-affinity={value}")
    assert name_of(again) in {s.name for s in rest} and "set-cookie" in again.headers


def test_least_request_sends_less_to_a_slow_target(gateway_factory):
    with EchoServer("fast") as fast, RawUpstream(slow(0.3), name="slow") as slow_up:
        cfg = config_with([fast, slow_up], balancer={"type": "least_request"})
        gw = gateway_factory(cfg)
        got = Counter()
        lock = threading.Lock()

        def client():
            with httpx.Client(base_url=gw.url, headers={"Host": "test.local"}, timeout=10) as c:
                for _ in range(25):
                    r = c.get("/")
                    assert r.status_code == 200
                    with lock:
                        got["slow" if r.content == b"slow" else "fast"] += 1

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sum(got.values()) == 200
        # round robin would send it half; least request only when it is no busier than the fast one
        assert got["slow"] < 30, got


def test_bad_balancer_config_names_the_path(tmp_path):
    cfg = simple_config("127.0.0.1:9")
    cfg["upstreams"]["echo"]["balancer"] = {"type": "maglev", "hash_on": {"source": "cookie"}, "table_size": 1000}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "fastgw", "check", str(path)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "$.upstreams.echo.balancer.hash_on.name" in r.stderr, r.stderr
    assert "$.upstreams.echo.balancer.table_size" in r.stderr, r.stderr
