"""The request path's phases over real sockets (issue 8): the log phase runs exactly once for every
outcome, policies answer in the request and response phases, an async policy pauses the exchange
on real I/O and resumes it, plugins that raise or overrun, and policy state across SIGHUP."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from support.client import RawConn, assert_gateway_error, wait_until
from support.gateway import simple_config, upstream_config
from support.upstreams import ClosedPort, EchoServer, RawUpstream, partial_body, slow

TESTS_DIR = str(Path(__file__).resolve().parents[1])
ENV = {"PYTHONPATH": TESTS_DIR}
FAST = {"connect": "2s", "response_header": "1s", "body_idle": "1s"}


def plugin(cls: str, **config) -> dict:
    return {"type": "plugin", "module": f"support.phase_plugins:{cls}", "config": config}


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def entries_for(path: Path, rid: str) -> list[dict]:
    return [e for e in read_log(path) if e["request_id"] == rid]


def one_entry(path: Path, rid: str) -> dict:
    wait_until(lambda: entries_for(path, rid), what=f"the log phase for {rid}")
    time.sleep(0.2)   # a second run of the log phase would land by now
    got = entries_for(path, rid)
    assert len(got) == 1, f"log phase ran {len(got)} times for {rid}: {got}"
    return got[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory, echo, module_gateway_factory):
    d = tmp_path_factory.mktemp("phases")
    log = d / "log.jsonl"
    cancelled = d / "cancelled.jsonl"
    auth = EchoServer("auth")
    refused = ClosedPort()
    slow_up = RawUpstream(slow(30), "slow")
    cut = RawUpstream(partial_body(total=50_000, sent=5_000, rst=True), "cut")
    upstreams = {
        "echo": upstream_config(echo.address, timeouts=FAST),
        "refused": upstream_config(refused.address, timeouts=FAST),
        "slow": upstream_config(slow_up.address, timeouts=FAST),
        "cut": upstream_config(cut.address, timeouts=FAST),
    }

    def route(name, prefix, upstream="echo", **kw):
        return {"name": name, "match": {"path": {"prefix": prefix}}, "upstream": upstream, **kw}

    cfg = simple_config(upstreams=upstreams, limits={"header_timeout": "1s"}, routes=[
        route("small", "/small", max_body_bytes=10),
        {"name": "redirect", "match": {"path": {"prefix": "/redirect"}},
         "filters": {"redirect": {"hostname": "elsewhere.test", "status": 301}}},
        route("refused", "/refused", "refused"),
        route("slow", "/slow", "slow"),
        route("cut", "/cut", "cut"),
        route("respond", "/respond", policies=[
            {"type": "respond", "status": 403, "headers": {"X-Policy": "respond"}, "body": "forbidden here"}]),
        route("gk", "/gk", policies=[plugin("Gatekeeper")]),
        route("auth", "/auth", policies=[
            {**plugin("AsyncAuth", host="127.0.0.1", port=int(auth.address.rsplit(":", 1)[1]),
                      cancelled_log=str(cancelled)), "timeout": "3s"}]),
        route("forever", "/forever", policies=[{**plugin("Forever"), "timeout": "300ms"}]),
        route("replace", "/replace", policies=[
            {"type": "respond", "status": 299, "body": "native replacement", "on_upstream_status": [502, 503]}]),
        route("edit", "/edit", policies=[plugin("ResponseEditor")]),
        route("aedit", "/aedit", policies=[plugin("AsyncResponseEditor")]),
        route("skip", "/skip", skip_policies=["recorder"]),
        route("all", "/"),
    ])
    cfg["policies"] = [{**plugin("Recorder", path=str(log)), "name": "recorder"}]
    gw = module_gateway_factory(cfg, env=ENV)
    yield gw, log, cancelled, auth
    for s in (auth, refused, slow_up, cut):
        s.close()


def abort(s: socket.socket) -> None:
    """Goes away as a client that crashed does: a reset, which the gateway sees at once."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


def request(gw, method, path, rid, headers=(), body=None):
    with RawConn(gw.port) as c:
        return c.request(method, path, [("X-Request-Id", rid), *headers], body)


# ---- the log phase: once per exchange, whatever became of it ------------------------------------

@pytest.mark.parametrize("method,path,body,status,outcome,flags", [
    ("GET", "/proxied", None, 200, "proxied", []),
    ("POST", "/proxied-body", b"x" * 3000, 200, "proxied", []),
    ("GET", "/redirect/x", None, 301, "answered", ["RD"]),
    ("POST", "/small", b"x" * 100, 413, "answered", ["BL"]),
    ("GET", "/refused/x", None, 502, "answered", ["UF"]),
    ("GET", "/slow/x", None, 504, "answered", ["UT"]),
    ("GET", "/respond/x", None, 403, "policy", ["PA"]),
    ("GET", "/gk/deny", None, 403, "policy", ["PA"]),
    ("GET", "/gk/raise", None, 500, "answered", ["PE"]),
    ("GET", "/forever/x", None, 504, "answered", ["PT"]),
    ("GET", "/replace/x", None, 299, "policy", ["PA"]),
])
def test_log_phase_runs_once_per_outcome(world, method, path, body, status, outcome, flags):
    gw, log, _, _ = world
    rid = f"log-{path.strip('/').replace('/', '-')}-{time.monotonic_ns()}"
    headers = [("X-Echo-Status", "503")] if path.startswith("/replace") else []
    r = request(gw, method, path, rid, headers, body)
    assert r.status == status
    e = one_entry(log, rid)
    assert (e["status"], e["outcome"], e["flags"]) == (status, outcome, flags)
    assert e["method"] == method and e["path"] == path
    assert e["bytes_sent"] > 0 and e["bytes_received"] >= len(body or b"")
    t = e["timings"]
    assert t["accept"] <= t["head"] <= t["done"]


def test_log_phase_no_route_and_parser_refusal(world, echo):
    gw, log, _, _ = world
    del echo
    # a host-less HTTP/1.1 request is refused by the parser: its exchange is logged too
    before = len([e for e in read_log(log) if e["outcome"] == "refused"])
    with RawConn(gw.port) as c:
        c.send(b"GET /bad HTTP/1.1\r\n\r\n")
        r = c.response()
    assert r.status == 400
    wait_until(lambda: len([e for e in read_log(log) if e["outcome"] == "refused"]) == before + 1,
               what="the refused request's log entry")
    refused = [e for e in read_log(log) if e["outcome"] == "refused"][-1]
    assert refused["status"] == 400 and refused["flags"] == ["DPE"]


def test_log_phase_request_timeout(world):
    gw, log, _, _ = world
    before = len(read_log(log))
    with RawConn(gw.port) as c:
        c.send(b"GET /drip HTTP/1.1\r\nHost: h\r\n")
        r = c.response()
    assert r.status == 408
    wait_until(lambda: len(read_log(log)) > before, what="the 408's log entry")
    e = read_log(log)[-1]
    assert (e["status"], e["outcome"], e["flags"]) == (408, "refused", ["RT"])


def test_log_phase_upstream_cut_mid_body(world):
    gw, log, _, _ = world
    rid = f"cut-{time.monotonic_ns()}"
    with RawConn(gw.port) as c:
        c.send(f"GET /cut/x HTTP/1.1\r\nHost: h\r\nX-Request-Id: {rid}\r\n\r\n".encode())
        data, _how = c.read_to_close()
    assert data.startswith(b"HTTP/1.1 200 ")
    e = one_entry(log, rid)
    assert e["outcome"] == "aborted" and e["flags"] == ["UR"] and e["status"] == 200


def test_log_phase_client_gone_mid_response(world):
    gw, log, _, _ = world
    rid = f"gone-{time.monotonic_ns()}"
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.sendall(f"GET /gone HTTP/1.1\r\nHost: h\r\nX-Request-Id: {rid}\r\nX-Echo-Delay: 0.5\r\n\r\n".encode())
    time.sleep(0.1)
    abort(s)
    e = one_entry(log, rid)
    assert e["outcome"] == "aborted" and "DC" in e["flags"]


def test_skip_policies_opts_a_route_out_of_a_top_level_policy(world):
    gw, log, _, _ = world
    rid = f"skip-{time.monotonic_ns()}"
    assert request(gw, "GET", "/skip/x", rid).status == 200
    later = f"after-skip-{time.monotonic_ns()}"
    assert request(gw, "GET", "/x", later).status == 200
    one_entry(log, later)
    assert entries_for(log, rid) == []


# ---- answers from policies ----------------------------------------------------------------------

def test_request_phase_answer_from_native_policy_keeps_the_connection(world, echo):
    gw, _, _, _ = world
    snap = echo.snapshot()
    with RawConn(gw.port) as c:
        r = c.request("GET", "/respond/x")
        assert r.status == 403 and r.body == b"forbidden here"
        assert r.headers.get("x-policy") == "respond" and r.headers.get("x-request-id")
        assert c.request("GET", "/x").status == 200   # keep-alive survives the answer
    assert [q.target for q in echo.requests_since(snap)] == ["/x"]


def test_request_phase_answer_from_plugin_and_header_edit(world, echo):
    gw, _, _, _ = world
    r = request(gw, "GET", "/gk/deny", "gk-deny-1")
    assert r.status == 403 and r.body == b"denied" and r.headers.get("x-denied-by") == "gatekeeper"
    r = request(gw, "GET", "/gk/ok?q=1", "gk-ok-1")
    assert r.status == 200
    seen = dict((k.lower(), v) for k, v in r.json()["headers"])
    assert seen["x-gatekeeper"] == "GET /gk/ok"


def test_response_phase_native_replacement_of_an_upstream_error(world):
    gw, _, _, _ = world
    r = request(gw, "GET", "/replace/x", "rep-1", [("X-Echo-Status", "502")])
    assert r.status == 299 and r.body == b"native replacement"
    r = request(gw, "GET", "/replace/x", "rep-2", [("X-Echo-Status", "404")])
    assert r.status == 404, "statuses not listed pass through"


@pytest.mark.parametrize("prefix", ["/edit", "/aedit"])
def test_response_phase_plugin_edits_and_replaces(world, prefix):
    gw, _, _, _ = world
    with RawConn(gw.port) as c:
        r = c.request("GET", f"{prefix}/x", [("X-Echo-Set-Header", "X-Drop-Me:1,X-Kept:2")])
        assert r.status == 200
        assert r.headers.get("x-seen-status") == "200" and r.headers.get("x-kept") == "2"
        assert r.headers.get("x-drop-me") is None
        r = c.request("GET", f"{prefix}/x", [("X-Echo-Status", "500")])
        assert r.status == 200 and r.body == b"replaced by a plugin" and r.headers.get("x-replaced") == "500"
        assert c.request("GET", f"{prefix}/y").status == 200


# ---- pause and resume on real I/O ---------------------------------------------------------------

def test_async_policy_pauses_on_real_io_and_resumes_with_the_body(world, echo):
    gw, _, _, auth = world
    snap = auth.snapshot()
    body = bytes(range(256)) * 40
    r = request(gw, "POST", "/auth/upload", "auth-ok-1", [("Authorization", "Bearer good")], body)
    assert r.status == 200
    j = r.json()
    assert j["body_len"] == len(body)
    seen = dict((k.lower(), v) for k, v in j["headers"])
    assert seen["x-auth"] == "ok"
    assert [q.headers.get("authorization") for q in auth.requests_since(snap)] == ["Bearer good"]


def test_async_policy_answers_after_pausing(world, echo):
    gw, _, _, _ = world
    snap = echo.snapshot()
    r = request(gw, "POST", "/auth/upload", "auth-bad-1", [("Authorization", "Bearer bad")], b"secret")
    assert r.status == 401 and r.json() == {"error": "unauthorized"}
    assert echo.requests_since(snap) == [], "a refused request must not reach the upstream"


def test_pipelined_requests_behind_a_paused_exchange(world):
    gw, _, _, _ = world
    one = b"GET /auth/a HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer good\r\nX-Auth-Delay: 0.2\r\n\r\n"
    two = b"GET /x2 HTTP/1.1\r\nHost: h\r\n\r\n"
    with RawConn(gw.port) as c:
        c.send(one + two)
        first, second = c.response(), c.response()
    assert first.status == 200 and first.json()["target"] == "/auth/a"
    assert second.status == 200 and second.json()["target"] == "/x2"


def test_client_gone_while_paused_cancels_the_work_and_logs_once(world):
    gw, log, cancelled, _ = world
    rid = f"paused-gone-{time.monotonic_ns()}"
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.sendall(f"GET /auth/x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer good\r\nX-Auth-Delay: 2\r\n"
              f"X-Request-Id: {rid}\r\n\r\n".encode())
    time.sleep(0.3)
    abort(s)
    e = one_entry(log, rid)
    assert e["outcome"] == "aborted" and "DC" in e["flags"]
    wait_until(lambda: any(x.get("cancelled") == rid for x in read_log(cancelled)),
               what="the paused policy's work to be cancelled")


def test_policy_timeout_answers_504(world):
    gw, _, _, _ = world
    r = request(gw, "GET", "/forever/x", "forever-1")
    body = assert_gateway_error(r, 504)
    assert body["request_id"] == "forever-1"


# ---- plugins that fail or overrun ---------------------------------------------------------------

def test_raising_plugin_answers_500_json_logs_traceback_once_and_keeps_serving(world):
    gw, _, _, _ = world
    mark = gw.stderr_line_count()
    for i in range(3):
        r = request(gw, "GET", "/gk/raise", f"raise-{i}")
        body = assert_gateway_error(r, 500)
        assert body["request_id"] == f"raise-{i}" and body["error"] == "plugin plugin-0 failed"
    wait_until(lambda: gw.stderr_since(mark).count("gatekeeper exploded") >= 3, what="the failures logged")
    assert "policy plugin-0 (plugin) failed in request" in gw.stderr_since(mark)
    # the whole traceback once (whichever test made the plugin fail first), one line after that
    assert gw.stderr.count("Traceback (most recent call last)") == 1, gw.stderr
    assert request(gw, "GET", "/gk/fine", "raise-after").status == 200


def test_slow_sync_plugin_is_logged_over_budget(world):
    gw, _, _, _ = world
    mark = gw.stderr_line_count()
    assert request(gw, "GET", "/gk/slow", "slow-1").status == 200
    wait_until(lambda: "over its budget" in gw.stderr_since(mark), what="the over-budget warning")
    assert "on_request" in gw.stderr_since(mark)


# ---- state across SIGHUP ------------------------------------------------------------------------

def count_of(gw, path="/c") -> str:
    with RawConn(gw.port) as c:
        r = c.request("GET", path)
    return dict((k.lower(), v) for k, v in r.json()["headers"])["x-count"]


def test_plugin_state_survives_reload(echo, gateway_factory):
    def cfg(label="a", extra=False):
        routes = [{"name": "c", "match": {"path": {"prefix": "/c"}}, "upstream": "echo",
                   "policies": [{**plugin("Counter", label=label), "name": "counter"}]}]
        if extra:
            routes.append({"name": "extra", "match": {"path": {"prefix": "/extra"}}, "upstream": "echo"})
        return simple_config(echo.address, routes=routes)

    gw = gateway_factory(cfg(), env=ENV)
    assert [count_of(gw) for _ in range(3)] == ["a:1", "a:2", "a:3"]
    gw.reload(cfg(extra=True))          # same plugin config: the instance is kept
    wait_until(lambda: RawConn(gw.port).request("GET", "/extra").status == 200, what="the reload")
    assert count_of(gw) == "a:4"
    gw.reload(cfg(label="b", extra=True))   # changed config: a new instance, carry_over keeps the count
    wait_until(lambda: count_of(gw).startswith("b:"), what="the second reload")
    assert int(count_of(gw).split(":")[1]) >= 6


def test_bad_plugin_config_is_a_config_error_with_path_and_line(tmp_path):
    import subprocess
    import sys
    p = tmp_path / "gw.yaml"
    p.write_text(
        "listeners: [{address: 127.0.0.1:0}]\n"
        "upstreams: {a: {targets: [{address: 127.0.0.1:9}]}}\n"
        "policies:\n"
        "  - type: plugin\n"
        "    module: support.phase_plugins:AsyncAuth\n"
        "    config: {host: h, port: not-a-port}\n"
        "  - type: plugin\n"
        "    module: support.no_such_module:X\n"
        "routes: [{name: r, match: {path: {prefix: /}}, upstream: a}]\n")
    res = subprocess.run([sys.executable, "-m", "fastgw", "check", str(p)], capture_output=True, text=True,
                         env=dict(os.environ, **ENV), timeout=60)
    assert res.returncode == 1
    assert f"{p}:6: $.policies[0].config.port" in res.stderr, res.stderr
    assert f"{p}:8: $.policies[1].module" in res.stderr and "cannot import" in res.stderr, res.stderr


def test_concurrent_paused_exchanges_complete(world):
    gw, _, _, _ = world
    results = []

    def one(i):
        r = request(gw, "GET", f"/auth/c{i}", f"conc-{i}", [("Authorization", "Bearer good"),
                                                           ("X-Auth-Delay", "0.1")])
        results.append(r.status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [200] * 20


def test_client_leaving_mid_head_is_logged_and_the_worker_lives_on(world):
    """(From review 3: a half head made Exchange.init read a NULL head and killed the worker, and
    the worker's other connections with it.) The half head is logged as refused; the idle keep-alive
    client on the same worker keeps its connection."""
    gw, log, _, _ = world
    pids_before = gw.descendants()
    def half_heads():
        return [e for e in read_log(log) if e["outcome"] == "refused" and e["status"] == 0]

    before = len(half_heads())
    with RawConn(gw.port) as idle:
        assert idle.request("GET", "/first").status == 200
        half = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        half.sendall(b"GET /half-a-head HTTP/1.1\r\nHost: a\r\n")
        time.sleep(0.2)
        half.close()
        time.sleep(0.5)
        assert idle.request("GET", "/second").status == 200    # the same connection, same worker
    assert gw.descendants() == pids_before, "the worker was replaced"
    wait_until(lambda: len(half_heads()) == before + 1, what="the half head's log entry")
    assert half_heads()[-1]["flags"] == ["DC"]


def test_http10_keepalive_policy_answer_says_keep_alive(world):
    """(From review 3: answers to HTTP/1.0 keep-alive clients left out `Connection: keep-alive`.)"""
    gw, _, _, _ = world
    with RawConn(gw.port) as c:
        c.send(b"GET /respond/x HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
        r = c.response()
        assert r.status == 403
        assert not c.is_closed_by_peer(timeout=0.5), "the gateway keeps the connection"
        assert any(k.lower() == "connection" and v.lower() == "keep-alive" for k, v in r.headers), r.headers
