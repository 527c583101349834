"""Metrics from a live worker: real clients and upstreams talk to a fastgw worker running in this
process (tests/support/inprocess.py), then the worker's snapshot and its Prometheus exposition are
checked against the traffic the test drove, and the exposition against the real `promtool`."""

from __future__ import annotations

import re
import shutil
import subprocess

import httpx
import msgspec
import pytest
from support.client import RawConn, wait_until
from support.gateway import simple_config, upstream_config
from support.inprocess import InProcessWorker
from support.upstreams import ClosedPort, RawUpstream, reset_on_accept, respond_raw, slow

from fastgw.metrics import render, worker_snapshot

PROCESS = {"version": "0.1.0", "workers": 1, "reloads_ok": 0, "reloads_failed": 0,
           "last_reload_timestamp": 1_700_000_000.0}


def snapshot(worker: InProcessWorker) -> dict:
    return worker.call(worker_snapshot, worker.worker)


def family(snap: dict, name: str) -> dict:
    (found,) = [f for f in snap["families"] if f["name"] == name]
    return found


def samples(snap: dict, name: str) -> dict:
    """{label values: value} of one family."""
    return {tuple(s[0]): s[1] if len(s) == 2 else s[1:] for s in family(snap, name)["samples"]}


def total_requests(snap: dict) -> int:
    return sum(samples(snap, "fastgw_requests_total").values())


def settle(worker: InProcessWorker, expected: int) -> dict:
    """The snapshot once `expected` exchanges have run their log phase (a client that read its
    response may be a step ahead of the worker's finish())."""
    def logged():
        snap = snapshot(worker)
        return snap if total_requests(snap) == expected else None

    return wait_until(logged, timeout=5, what=f"{expected} exchanges logged")


def two_routes(echo_address: str, **extra) -> dict:
    cfg = simple_config(echo_address, routes=[
        {"name": "a", "match": {"path": {"prefix": "/a"}}, "upstream": "echo"},
        {"name": "b", "match": {"path": {"prefix": "/b"}}, "upstream": "echo"},
    ])
    cfg.update(extra)
    return cfg


def check_histogram(counts_and_sum, expected_count: int) -> None:
    counts, total = counts_and_sum
    assert counts == sorted(counts), f"cumulative buckets must not decrease: {counts}"
    assert counts[-1] == expected_count
    assert total > 0


def test_requests_by_route_upstream_and_status_class(echo):
    with InProcessWorker(two_routes(echo.address)) as w, httpx.Client(base_url=w.url) as client:
        for _ in range(3):
            assert client.get("/a/ok").status_code == 200
        for _ in range(2):
            assert client.get("/a/fail", headers={"X-Echo-Status": "503"}).status_code == 503
        assert client.get("/b", headers={"X-Echo-Status": "404"}).status_code == 404
        assert client.get("/nowhere").status_code == 404          # no route: the gateway's own 404
        snap = settle(w, 7)

    assert samples(snap, "fastgw_requests_total") == {
        ("a", "echo", "2xx"): 3, ("a", "echo", "5xx"): 2, ("b", "echo", "4xx"): 1, ("", "", "4xx"): 1}
    durations = samples(snap, "fastgw_request_duration_seconds")
    check_histogram(durations[("a", "echo")], 5)
    check_histogram(durations[("b", "echo")], 1)
    check_histogram(durations[("", "")], 1)
    first_byte = samples(snap, "fastgw_upstream_latency_seconds")
    check_histogram(first_byte[("a", "echo")], 5)
    assert ("", "") not in first_byte, "an exchange no upstream answered has no upstream latency"


def test_bytes_in_and_out_are_the_bytes_on_the_wire(echo):
    request = b"GET /a/bytes HTTP/1.1\r\nHost: example.test\r\nX-Pad: " + b"p" * 300 + b"\r\n\r\n"
    body = b"x" * 5000
    post = (b"POST /a/up HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
            % len(body)) + body
    with InProcessWorker(two_routes(echo.address)) as w, RawConn(w.port) as conn:
        conn.send(request + post)
        received, how = conn.read_to_close()
        snap = settle(w, 2)
    assert how == "eof" and received.count(b"HTTP/1.1 200 ") == 2
    assert samples(snap, "fastgw_request_bytes_total") == {("a", "echo"): len(request) + len(post)}
    assert samples(snap, "fastgw_response_bytes_total") == {("a", "echo"): len(received)}


def test_status_label_code(echo):
    with InProcessWorker(two_routes(echo.address, metrics={"status_label": "code"})) as w, \
            httpx.Client(base_url=w.url) as client:
        client.get("/a")
        client.get("/a", headers={"X-Echo-Status": "503"})
        client.get("/a", headers={"X-Echo-Status": "502"})
        snap = settle(w, 3)
    assert samples(snap, "fastgw_requests_total") == {
        ("a", "echo", "200"): 1, ("a", "echo", "503"): 1, ("a", "echo", "502"): 1}


def test_pool_hits_misses_and_connection_gauges(echo):
    with InProcessWorker(two_routes(echo.address)) as w, httpx.Client(base_url=w.url) as client:
        for _ in range(4):
            assert client.get("/a").status_code == 200
        snap = settle(w, 4)
        # the client's keep-alive connection is still open, the upstream one back in its pool
        assert samples(snap, "fastgw_client_connections_active") == {(): 1}
        assert samples(snap, "fastgw_upstream_connections_idle") == {(): 1}
        assert samples(snap, "fastgw_upstream_connections_active") == {(): 0}
    assert samples(snap, "fastgw_upstream_pool_misses_total") == {("echo",): 1}
    assert samples(snap, "fastgw_upstream_pool_hits_total") == {("echo",): 3}


def test_upstream_failures_by_kind():
    closed = ClosedPort()
    quick = {"connect": "2s", "response_header": "300ms", "body_idle": "5s"}
    with RawUpstream(reset_on_accept) as resetting, RawUpstream(respond_raw(b"NOT HTTP AT ALL\r\n\r\n")) as junk, \
            RawUpstream(slow(3.0)) as sleepy:
        upstreams = {
            "refusing": upstream_config(closed.address),
            "unresolvable": upstream_config("no-such-host.invalid:80"),
            "resetting": upstream_config(resetting.address),
            "junk": upstream_config(junk.address),
            "sleepy": upstream_config(sleepy.address, timeouts=quick),
        }
        cfg = simple_config(upstreams=upstreams, routes=[
            {"name": name, "match": {"path": {"prefix": f"/{name}"}}, "upstream": name} for name in upstreams])
        with InProcessWorker(cfg) as w, httpx.Client(base_url=w.url, timeout=10) as client:
            got = {name: client.get(f"/{name}").status_code for name in upstreams}
            snap = settle(w, len(upstreams))
    closed.close()
    assert got == {"refusing": 502, "unresolvable": 502, "resetting": 502, "junk": 502, "sleepy": 504}
    failures = samples(snap, "fastgw_upstream_failures_total")
    expected = {"refusing": "connect_refused", "unresolvable": "dns", "resetting": "reset",
                "junk": "protocol_error", "sleepy": "response_timeout"}
    for upstream, kind in expected.items():
        counted = {k: n for (u, k), n in failures.items() if u == upstream and n}
        assert counted == {kind: 1}, f"{upstream}: {counted}"
    requests = samples(snap, "fastgw_requests_total")
    assert requests[("sleepy", "sleepy", "5xx")] == 1


def test_reload_carries_counters_over_and_drops_what_it_removed(echo):
    with InProcessWorker(two_routes(echo.address)) as w, httpx.Client(base_url=w.url) as client:
        for _ in range(3):
            client.get("/a")
        client.get("/b")
        before = settle(w, 4)
        assert samples(before, "fastgw_requests_total") == {("a", "echo", "2xx"): 3, ("b", "echo", "2xx"): 1}

        only_a = simple_config(echo.address, routes=[{"name": "a", "match": {"path": {"prefix": "/a"}},
                                                      "upstream": "echo"}])
        w.reload(only_a)
        client.get("/a")
        after = settle(w, 4)             # a's 3 + 1; b's 1 is gone with the route
        assert samples(after, "fastgw_requests_total") == {("a", "echo", "2xx"): 4}
        assert ("b", "echo") not in samples(after, "fastgw_request_duration_seconds")
        assert samples(after, "fastgw_upstream_pool_misses_total")[("echo",)] == 1, "the pool and its counters survive"

        # new bucket bounds: the old counts do not fit them, so the pair starts over
        w.reload({**only_a, "metrics": {"duration_buckets": [0.5, 1, 2]}})
        client.get("/a")
        rebucketed = settle(w, 1)
        assert family(rebucketed, "fastgw_request_duration_seconds")["bounds"] == [0.5, 1.0, 2.0]
        check_histogram(samples(rebucketed, "fastgw_request_duration_seconds")[("a", "echo")], 1)

        # an upstream the config drops is no longer exported
        other = simple_config(echo.address, upstreams={"other": upstream_config(echo.address)},
                              routes=[{"name": "a", "match": {"path": {"prefix": "/"}}, "upstream": "other"}])
        w.reload(other)
        dropped = snapshot(w)
        assert set(samples(dropped, "fastgw_upstream_pool_hits_total")) == {("other",)}
        assert samples(dropped, "fastgw_requests_total") == {}, "route a now goes to another upstream"


def test_metrics_off(echo):
    with InProcessWorker(two_routes(echo.address, metrics={"enabled": False})) as w, \
            httpx.Client(base_url=w.url) as client:
        assert client.get("/a").status_code == 200
        snap = snapshot(w)
    names = {f["name"] for f in snap["families"]}
    assert "fastgw_requests_total" not in names
    assert "fastgw_client_connections_active" in names, "process-level gauges stay"


def test_plugin_hooks_are_exported(echo, tmp_path):
    log = tmp_path / "log.jsonl"
    cfg = two_routes(echo.address, policies=[{"type": "plugin", "name": "recorder",
                                             "module": "support.phase_plugins:Recorder",
                                             "config": {"path": str(log)}}])
    with InProcessWorker(cfg) as w, httpx.Client(base_url=w.url) as client:
        for _ in range(3):
            client.get("/a")
        snap = settle(w, 3)
    check_histogram(samples(snap, "fastgw_plugin_duration_seconds")[("recorder", "log")], 3)
    assert samples(snap, "fastgw_plugin_errors_total") == {("recorder", "log"): 0}
    assert samples(snap, "fastgw_plugin_over_budget_total") == {("recorder", "log"): 0}
    text = render([snap], PROCESS)
    assert 'fastgw_plugin_duration_seconds_count{plugin="recorder",phase="log"} 3' in text


def test_exposition_passes_promtool(echo, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed; .ci/run installs it")
    cfg = two_routes(echo.address, policies=[{"type": "plugin", "name": "recorder",
                                             "module": "support.phase_plugins:Recorder",
                                             "config": {"path": str(tmp_path / "log.jsonl")}}])
    closed = ClosedPort()
    cfg["upstreams"]["down"] = upstream_config(closed.address)
    cfg["routes"].append({"name": "down", "match": {"path": {"prefix": "/down"}}, "upstream": "down"})
    with InProcessWorker(cfg) as w, httpx.Client(base_url=w.url) as client:
        client.get("/a")
        client.get("/b", headers={"X-Echo-Status": "500"})
        client.get("/down")
        client.get("/nowhere")
        snap = settle(w, 4)
    closed.close()
    # what crosses the control channel: msgpack, and JSON for the admin API, both without loss
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(snap)) == snap
    assert msgspec.json.decode(msgspec.json.encode(snap)) == snap
    text = render([snap, snap], PROCESS)
    assert re.search(r'^fastgw_requests_total\{route="a",upstream="echo",code="2xx"\} 2$', text, re.M), \
        "two workers' counts are summed"
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert not result.stdout.strip() and not result.stderr.strip(), "promtool's linter had remarks: " + (
        result.stdout.decode() + result.stderr.decode())
