"""Rate limiting over real sockets (issue 11): token buckets per route, client IP, header, query
parameter and path capture, several limits at once, the 429 and its headers, shadow mode, in-flight
limits, state across SIGHUP, and one limit shared by several workers.

Buckets refill slowly (a period of an hour) so that what a test counts never depends on timing."""

from __future__ import annotations

import json
import threading

import pytest
from support.client import RawConn, assert_gateway_error, wait_until
from support.gateway import simple_config, socket_owner_pids, upstream_config
from support.upstreams import RawUpstream, slow


def limit(rate, key=("route",), burst=None, **kw) -> dict:
    out = {"rate": rate, "period": "1h", "key": list(key), **kw}
    if burst is not None:
        out["burst"] = burst
    return out


def rl(*limits, **kw) -> dict:
    return {"type": "rate_limit", "limits": list(limits), **kw}


def route(name, prefix, *policies, upstream="echo", path=None) -> dict:
    match = {"path": path or {"prefix": prefix}}
    return {"name": name, "match": match, "upstream": upstream, "policies": list(policies)}


def get(gw, target, headers=None):
    with RawConn(gw.port) as c:
        return c.request("GET", target, headers=headers)


def statuses(gw, target, n, headers=None) -> list[int]:
    return [get(gw, target, headers).status for _ in range(n)]


@pytest.fixture(scope="module")
def gw(echo, module_gateway_factory):
    slow_up = RawUpstream(slow(2.0), "slow")
    upstreams = {"echo": upstream_config(echo.address), "slow": upstream_config(slow_up.address)}
    cfg = simple_config(upstreams=upstreams, routes=[
        route("per-route", "/route", rl(limit(3), name="r")),
        route("per-ip", "/ip", rl(limit(2, key=["client_ip"]), name="ip", headers=["ietf", "legacy", "x-ratelimit"])),
        route("per-header", "/hdr", rl(limit(2, key=["header:X-Api-Key"]), name="hdr")),
        route("skip-missing", "/skip", rl(limit(1, key=["header:X-Api-Key"], when_missing="skip"), name="sk")),
        route("deny-missing", "/deny", rl(limit(5, key=["consumer"], when_missing="deny"), name="dn")),
        route("per-query", "/q", rl(limit(1, key=["query:tenant"]), name="q")),
        route("per-capture", "/users", rl(limit(1, key=["capture:id"]), name="cap"),
              path={"template": "/users/{id}"}),
        route("combo", "/combo", rl(limit(1, key=["client_ip", "header:X-Api-Key"]), name="combo")),
        route("several", "/several", rl(limit(100, name="big"), limit(10, burst=2, name="small"), name="sev")),
        route("shadow", "/shadow", rl(limit(1), name="sh", shadow=True)),
        route("cost", "/cost", rl(limit(10, cost=4), name="cost")),
        route("quiet", "/quiet", rl(limit(1), name="quiet", headers_on_allowed=False)),
        route("inflight", "/inflight", rl({"concurrent": 2, "key": ["route"]}, name="inf"), upstream="slow"),
    ])
    g = module_gateway_factory(cfg)
    g.slow_upstream = slow_up
    yield g
    slow_up.close()


def test_route_limit_answers_429_with_json_and_headers(gw):
    assert statuses(gw, "/route", 3) == [200, 200, 200]
    r = get(gw, "/route")
    body = assert_gateway_error(r, 429)
    assert body["error"] == "rate limit exceeded"
    retry = int(r.headers.get("retry-after"))
    assert 1000 < retry <= 1200       # one token of 3/h comes back in 20 minutes
    assert r.headers.get("ratelimit-policy") == '"r";q=3;w=3600'
    assert r.headers.get("ratelimit").startswith('"r";r=0;t=')


def test_allowed_responses_carry_the_headers(gw):
    r = get(gw, "/ip")
    assert r.status == 200
    assert r.headers.get("ratelimit-policy") == '"ip";q=2;w=3600'
    assert r.headers.get("ratelimit").startswith('"ip";r=1;t=')
    assert r.headers.get("ratelimit-limit") == "2" and r.headers.get("ratelimit-remaining") == "1"
    assert r.headers.get("x-ratelimit-limit") == "2" and r.headers.get("x-ratelimit-remaining") == "1"
    assert int(r.headers.get("x-ratelimit-reset")) == 1800
    assert get(gw, "/ip").status == 200
    refused = get(gw, "/ip")
    assert_gateway_error(refused, 429)
    assert refused.headers.get("ratelimit-remaining") == "0"


def test_header_key_counts_each_value_apart(gw):
    assert statuses(gw, "/hdr", 3, {"X-Api-Key": "a"}) == [200, 200, 429]
    assert statuses(gw, "/hdr", 3, {"X-Api-Key": "b"}) == [200, 200, 429]
    # without the header: every such request shares the empty key's bucket
    assert statuses(gw, "/hdr", 3) == [200, 200, 429]


def test_missing_key_skip_and_deny(gw):
    assert statuses(gw, "/skip", 4) == [200] * 4
    assert statuses(gw, "/skip", 2, {"X-Api-Key": "k"}) == [200, 429]
    r = get(gw, "/deny")   # no consumer: no authentication policy ran
    assert_gateway_error(r, 429)


def test_query_and_capture_keys(gw):
    assert statuses(gw, "/q?tenant=a&x=1", 2) == [200, 429]
    assert statuses(gw, "/q?x=1&tenant=b", 2) == [200, 429]
    assert statuses(gw, "/users/1", 2) == [200, 429]
    assert statuses(gw, "/users/2", 2) == [200, 429]


def test_combined_key(gw):
    assert statuses(gw, "/combo", 2, {"X-Api-Key": "a"}) == [200, 429]
    assert statuses(gw, "/combo", 2, {"X-Api-Key": "b"}) == [200, 429]


def test_several_limits_all_apply_and_report_the_closest(gw):
    r = get(gw, "/several")
    assert r.status == 200
    assert r.headers.get("ratelimit-policy") == '"small";q=10;w=3600'
    assert r.headers.get("ratelimit").startswith('"small";r=1;')
    assert get(gw, "/several").status == 200
    refused = get(gw, "/several")
    assert refused.status == 429 and refused.headers.get("ratelimit").startswith('"small";r=0;')


def test_shadow_mode_limits_nothing(gw):
    before = gw.stderr_line_count()
    assert statuses(gw, "/shadow", 4) == [200] * 4
    wait_until(lambda: "rate_limited_shadow" in gw.stderr_since(before), what="the shadow event")
    line = next(json.loads(x) for x in gw.stderr_since(before).splitlines() if "rate_limited_shadow" in x)
    assert line["policy"] == "sh" and line["shadow"] is True


def test_cost(gw):
    assert statuses(gw, "/cost", 3) == [200, 200, 429]


def test_headers_on_allowed_off(gw):
    r = get(gw, "/quiet")
    assert r.status == 200 and not r.headers.has("ratelimit")
    refused = get(gw, "/quiet")
    assert refused.status == 429 and refused.headers.has("ratelimit") and refused.headers.has("retry-after")


def test_concurrency_limit_and_release(gw):
    results: list[int] = []

    def one():
        results.append(get(gw, "/inflight").status)

    up = gw.slow_upstream
    before = up.accepted
    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: up.accepted - before == 2, what="two requests in flight at the upstream")
    refused = get(gw, "/inflight")
    body = assert_gateway_error(refused, 503)
    assert body["error"] == "too many requests in flight"
    assert refused.headers.get("ratelimit-policy") == '"inf";q=2;qu="concurrency"'
    for t in threads:
        t.join()
    assert results == [200, 200]
    assert get(gw, "/inflight").status == 200     # the log phase gave the slots back


def test_state_survives_reload_unless_the_limit_changed(echo, gateway_factory):
    def cfg(rate, extra=False):
        routes = [route("a", "/a", rl(limit(rate), name="keep"))]
        if extra:
            routes.append(route("b", "/b"))
        return simple_config(upstreams={"echo": upstream_config(echo.address)}, routes=routes)

    gw = gateway_factory(cfg(2))
    assert statuses(gw, "/a", 3) == [200, 200, 429]
    gw.reload(cfg(2))    # the same config again: a reload that keeps everything
    gw.reload(cfg(2, extra=True))
    wait_until(lambda: get(gw, "/b").status == 200, what="the reload")
    assert get(gw, "/a").status == 429            # same limit: its bucket is still empty
    gw.reload(cfg(5))
    wait_until(lambda: get(gw, "/b").status == 404, what="the second reload")
    assert statuses(gw, "/a", 6) == [200] * 5 + [429]   # a changed limit starts fresh


def test_workers_share_one_limit(echo, gateway_factory):
    cfg = simple_config(upstreams={"echo": upstream_config(echo.address)},
                        routes=[route("w", "/", rl(limit(20), name="w"))])
    gw = gateway_factory(cfg, workers=3)
    workers = gw.descendants()
    got, admitted_by = [], set()
    # fresh connections land on whichever worker accepts them (SO_REUSEPORT); the answer is read
    # while the connection is open, so the worker that holds it is the one that answered
    for _ in range(40):
        with RawConn(gw.port) as c:
            status = c.request("GET", "/").status
            got.append(status)
            if status == 200:
                admitted_by.update(socket_owner_pids(gw.port, c.sock.getsockname()[1], workers))
    assert got.count(200) == 20 and got.count(429) == 20
    assert len(admitted_by) > 1, "one worker took every connection: the test shows nothing"


def test_a_dead_workers_in_flight_slots_are_given_back(gateway_factory):
    """A worker killed mid-request never runs that request's log phase: the supervisor gives its
    in-flight slots back when it restarts it (the ledger, docs/rate-limiting.md)."""
    import os
    import signal
    import time

    slow_up = RawUpstream(slow(2.0), "slow")
    try:
        cfg = simple_config(upstreams={"slow": upstream_config(slow_up.address)},
                            routes=[route("c", "/", rl({"concurrent": 1, "key": ["route"]}, name="one"),
                                          upstream="slow")])
        gw = gateway_factory(cfg, workers=2)
        workers = gw.descendants()
        holder = RawConn(gw.port)
        holder.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.5)     # its request in flight before the probes (else a probe takes the slot)
        wait_until(lambda: get(gw, "/").status == 503, what="the slot held")
        owner = wait_until(lambda: socket_owner_pids(gw.port, holder.sock.getsockname()[1], workers),
                           what="the worker holding the request")
        os.kill(owner[0], signal.SIGKILL)
        wait_until(lambda: len(gw.descendants()) == 2 and owner[0] not in gw.descendants(),
                   what="the worker restarted")
        holder.close()
        time.sleep(0.1)
        assert get(gw, "/").status == 200          # admitted (answered after the upstream's 2s)
        assert "ratelimit_slots_released" in gw.stderr
    finally:
        slow_up.close()


def test_config_errors_name_the_path(tmp_path):
    import subprocess
    import sys

    bad = simple_config(upstreams={"echo": upstream_config("127.0.0.1:9")}, routes=[
        route("x", "/x", rl({"rate": 0, "key": ["route"]})),
        route("y", "/y", rl({"rate": 1, "key": ["cookie:sid"]})),
        route("z", "/z", rl({"rate": 1, "key": ["capture:nope"]})),
        route("w", "/w", rl({"rate": 1, "concurrent": 2})),
    ])
    import yaml
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    out = subprocess.run([sys.executable, "-m", "fastgw", "check", str(path)], capture_output=True, text=True)
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "$.routes[0].policies[0].limits[0].rate" in text, text
    path.write_text(yaml.safe_dump({**bad, "routes": bad["routes"][1:]}))
    out = subprocess.run([sys.executable, "-m", "fastgw", "check", str(path)], capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert "$.routes[0].policies[0].limits[0].key[0]" in text and "unknown key source 'cookie:sid'" in text, text
    assert "$.routes[1].policies[0].limits[0].key[0]" in text and "no capture 'nope'" in text, text
    assert "$.routes[2].policies[0].limits[0]" in text and "not both" in text, text


def test_explain_shows_the_limits_and_keys(tmp_path):
    import subprocess
    import sys

    import yaml
    cfg = simple_config(upstreams={"echo": upstream_config("127.0.0.1:9")}, routes=[
        route("u", "/u", rl(limit(5, key=["client_ip", "header:X-Api-Key"]), {"concurrent": 3, "key": ["query:t"]},
                            name="lim", shadow=True))])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "fastgw", "explain", "-c", str(path), "-H", "X-Api-Key: k1",
                          "GET", "http://x/u?t=9"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert ("limit:    lim/lim-0 [shadow]: 5/3600s burst 5 per client_ip+header:X-Api-Key; "
            "key: client_ip=192.0.2.1, header:X-Api-Key=k1") in out.stdout, out.stdout
    assert "limit:    lim/lim-1 [shadow]: at most 3 in flight per query:t; key: query:t=9" in out.stdout


def test_metrics_count_allowed_limited_and_shadow(echo):
    import httpx
    from support.inprocess import InProcessWorker

    from fastgw.metrics import worker_snapshot

    cfg = simple_config(upstreams={"echo": upstream_config(echo.address)}, routes=[
        route("m", "/m", rl(limit(2), name="m")), route("s", "/s", rl(limit(1), name="s", shadow=True))])
    with InProcessWorker(cfg) as w, httpx.Client(base_url=w.url) as client:
        assert [client.get("/m").status_code for _ in range(3)] == [200, 200, 429]
        assert [client.get("/s").status_code for _ in range(3)] == [200] * 3
        snap = w.call(worker_snapshot, w.worker)

    def values(name):
        (fam,) = [f for f in snap["families"] if f["name"] == name]
        return {tuple(s[0]): s[1] for s in fam["samples"]}

    assert values("fastgw_ratelimit_allowed_total") == {("routes/m/m",): 2, ("routes/s/s",): 3}
    assert values("fastgw_ratelimit_limited_total") == {("routes/m/m",): 1, ("routes/s/s",): 0}
    assert values("fastgw_ratelimit_shadow_limited_total") == {("routes/m/m",): 0, ("routes/s/s",): 2}
