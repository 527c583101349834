"""The access log end to end: a real gateway process, real sockets, the lines read from its stdout (or
its file). Every way an exchange can end writes exactly one line with the right fields; per-route off
and sampling 0 write none; the file is reopened on SIGUSR1; a sink nobody reads drops and counts
lines instead of stalling the gateway."""

from __future__ import annotations

import os
import signal
import socket
import struct

import orjson
import pytest
from support.client import RawConn, assert_gateway_error, wait_until
from support.gateway import Gateway, simple_config, upstream_config
from support.logs import FAST_ACCESS_LOG, lines_for, only_line, wait_event
from support.upstreams import ClosedPort, RawUpstream, slow

FAST = {"connect": "2s", "response_header": "5s", "body_idle": "5s"}
SHORT = {"connect": "2s", "response_header": "1s", "body_idle": "1s"}
MARKER = "/api/marker"


def route(name: str, prefix: str, upstream: str, **extra) -> dict:
    return {"name": name, "match": {"path": {"prefix": prefix}}, "upstream": upstream, **extra}


@pytest.fixture(scope="module")
def peers():
    closed = ClosedPort()
    slow_up = RawUpstream(slow(30), "slow")
    yield {"closed": closed, "slow": slow_up}
    slow_up.close()
    closed.close()


@pytest.fixture(scope="module")
def gw(echo, peers, module_gateway_factory):
    return module_gateway_factory({
        "listeners": [{"address": "127.0.0.1:0"}],
        "access_log": {**FAST_ACCESS_LOG, "query": "redact", "redact_params": ["token"]},
        "upstreams": {
            "echo": upstream_config(echo.address),
            "refused": upstream_config(peers["closed"].address, timeouts=FAST),
            "slow": upstream_config(peers["slow"].address, timeouts=SHORT),
        },
        "routes": [
            route("api", "/api", "echo"),
            route("refused", "/refused", "refused"),
            route("slow", "/slow", "slow"),
            route("teapot", "/teapot", "echo", policies=[{"type": "respond", "status": 418, "body": "short"}]),
            route("quiet", "/quiet", "echo", access_log=False),
            route("never", "/never", "echo", access_log={"sample": 0}),
            route("always", "/always", "echo", access_log={"enabled": True, "sample": 1}),
        ],
    })


def send(gw, target: str, rid: str, headers=()):
    with RawConn(gw.port) as c:
        return c.request("GET", target, [("X-Request-Id", rid), ("Connection", "close"), *headers])


def test_proxied_exchange(gw, echo):
    r = send(gw, "/api/items?token=s3cret&page=2", "al-proxied", [("User-Agent", "probe/1.0")])
    assert r.status == 200
    line = only_line(gw, "al-proxied", MARKER)
    assert {k: line[k] for k in ("method", "authority", "path", "query", "protocol", "status", "route", "upstream",
                                 "target", "attempts", "flags", "outcome", "user_agent", "client_ip",
                                 "consumer", "trace_id")} == {
        "method": "GET", "authority": "test.local", "path": "/api/items", "query": "token=REDACTED&page=2",
        "protocol": "HTTP/1.1", "status": 200, "route": "api", "upstream": "echo", "target": echo.address,
        "attempts": 1, "flags": [], "outcome": "proxied", "user_agent": "probe/1.0", "client_ip": "127.0.0.1",
        "consumer": None, "trace_id": None,
    }
    assert line["bytes_sent"] > len(r.body) and line["bytes_received"] > 0
    assert line["upstream_connect_ms"] is not None and line["upstream_first_byte_ms"] is not None


def test_no_route(gw):
    assert send(gw, "/nowhere", "al-404").status == 404
    line = only_line(gw, "al-404", MARKER)
    assert (line["status"], line["route"], line["upstream"], line["flags"], line["attempts"]) == (
        404, None, None, ["NR"], 0)


def test_policy_answer(gw):
    assert send(gw, "/teapot", "al-418").status == 418
    line = only_line(gw, "al-418", MARKER)
    assert (line["status"], line["route"], line["flags"], line["outcome"], line["upstream_connect_ms"]) == (
        418, "teapot", ["PA"], "policy", None)


def test_connect_refused(gw, peers):
    assert_gateway_error(send(gw, "/refused", "al-502"), 502)
    line = only_line(gw, "al-502", MARKER)
    assert (line["status"], line["upstream"], line["target"], line["flags"], line["attempts"]) == (
        502, "refused", peers["closed"].address, ["UF"], 1)


def test_upstream_timeout(gw):
    assert_gateway_error(send(gw, "/slow/t", "al-504"), 504)
    line = only_line(gw, "al-504", MARKER)
    assert (line["status"], line["flags"], line["upstream_first_byte_ms"]) == (504, ["UT"], None)
    assert line["upstream_connect_ms"] is not None


def test_client_gone(gw, peers):
    snap = peers["slow"].snapshot()
    with RawConn(gw.port) as c:
        c.send(b"GET /slow/gone HTTP/1.1\r\nHost: x\r\nX-Request-Id: al-gone\r\n\r\n")
        wait_until(lambda: peers["slow"].requests_since(snap), what="the request upstream")
        # a reset, not a FIN: a half-closed client may still be waiting for its response
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    line = only_line(gw, "al-gone", MARKER)
    assert (line["status"], line["flags"], line["outcome"], line["route"]) == (0, ["DC"], "aborted", "slow")


def test_parser_refusal(gw):
    with RawConn(gw.port) as c:
        c.send(b"GET /api HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        body = assert_gateway_error(c.response(), 400)
    line = only_line(gw, body["request_id"], MARKER)
    assert (line["status"], line["flags"], line["outcome"], line["method"], line["path"]) == (
        400, ["DPE"], "refused", None, None)


@pytest.mark.parametrize("prefix", ["/quiet", "/never"])
def test_route_off_and_sample_zero_write_nothing(gw, prefix):
    rid = f"al-none-{prefix[1:]}"
    assert send(gw, prefix, rid).status == 200
    send(gw, "/always", rid + "-after")
    only_line(gw, rid + "-after", MARKER)
    assert lines_for(gw, rid) == []


def test_reopened_on_sigusr1_after_rename(echo, gateway_factory, tmp_path):
    """logrotate's way: rename, then SIGUSR1; lines before the signal land in the renamed file, later
    ones in a new file under the configured name. Every line is strict UTF-8 JSON, a hostile
    User-Agent's too."""
    path = tmp_path / "access.log"
    cfg = simple_config(echo.address)
    cfg["access_log"] = {**FAST_ACCESS_LOG, "path": str(path)}
    gw = gateway_factory(cfg, workers=2)

    def request(rid: str, ua: bytes = b"t") -> None:
        with RawConn(gw.port) as c:
            c.send(b"GET /r HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Request-Id: " + rid.encode()
                   + b"\r\nUser-Agent: " + ua + b"\r\n\r\n")
            assert c.response().status == 200

    def rids(p) -> list[str]:
        return [orjson.loads(line)["request_id"] for line in p.read_bytes().splitlines()] if p.exists() else []

    request("before", b'\xff\xfe"} \xc3\xa9')
    wait_until(lambda: "before" in rids(path), what="the first line")
    rotated = tmp_path / "access.log.1"
    os.rename(path, rotated)
    request("renamed")
    wait_until(lambda: "renamed" in rids(rotated), what="a line into the renamed file")
    gw.signal(signal.SIGUSR1)
    n = 0

    def into_new_file():
        nonlocal n
        n += 1
        request(f"after-{n}")
        return any(r.startswith("after-") for r in rids(path))

    wait_until(into_new_file, interval=0.1, what="a line in the reopened file")
    old, new = rids(rotated), rids(path)
    assert {"before", "renamed"} <= set(old) and not {"before", "renamed"} & set(new)
    assert len(old + new) == len(set(old + new)), (old, new)
    assert orjson.loads(rotated.read_bytes().splitlines()[0])["user_agent"] == '\xff\xfe"} é'


def test_sink_nobody_reads_drops_and_counts_without_stalling(echo, tmp_path):
    """stdout a pipe nobody reads: once the pipe and max_pending_bytes are full, lines are dropped;
    the gateway goes on answering and reports the count in the event log."""
    cfg = simple_config(echo.address)
    cfg["access_log"] = {**FAST_ACCESS_LOG, "max_pending_bytes": 4096}
    gw = Gateway(cfg, tmp_path / "gw", read_stdout=False)
    with gw:
        with RawConn(gw.port) as c:
            for i in range(600):     # ~400 B lines: far more than a 64 KiB pipe and 4 KiB pending hold
                assert c.request("GET", f"/d/{i}", [("User-Agent", "x" * 100)]).status == 200
        event = wait_event(gw, "access_log_dropped")
        assert event["level"] == "warning" and event["dropped_total"] >= event["dropped"] > 0
        with RawConn(gw.port) as c:
            assert c.request("GET", "/still-serving").status == 200


def test_text_format_to_stdout(echo, gateway_factory):
    cfg = simple_config(echo.address)
    cfg["logging"] = {"format": "text"}
    cfg["access_log"] = {**FAST_ACCESS_LOG, "template": "ACCESS $request_id $status $route $uri"}
    gw = gateway_factory(cfg)
    send(gw, "/t?q=1", "al-text")
    wait_until(lambda: "ACCESS al-text 200 all /t?q=1" in gw.stdout.splitlines(), what="the text line")
    # the event log follows the same switch
    assert "info fastgw: listening on" in gw.stderr
    assert not any(line.startswith("{") for line in gw.stderr.splitlines())


def test_lines_are_written_on_stop_and_a_reload_moves_the_file(echo, gateway_factory, tmp_path):
    """flush_interval is an hour and the buffer far from full: the lines reach the files only because a
    reload hands the old file its lines before the new one opens, and the stop writes the rest."""
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    cfg = simple_config(echo.address)
    cfg["access_log"] = {"path": str(first), "flush_interval": "1h"}
    gw = gateway_factory(cfg)
    assert send(gw, "/one", "al-first").status == 200
    mark = gw.stderr_line_count()
    cfg["access_log"] = {"path": str(second), "flush_interval": "1h"}
    gw.reload(cfg)
    wait_event(gw, "reload_applied", since=mark)
    assert send(gw, "/two", "al-second").status == 200
    assert gw.stop() == 0
    assert [orjson.loads(x)["request_id"] for x in first.read_bytes().splitlines()] == ["al-first"]
    assert [orjson.loads(x)["request_id"] for x in second.read_bytes().splitlines()] == ["al-second"]
