"""The event log end to end: a real gateway's stderr. Reloads accepted (with a summary) or rejected
(with every error and its `$.path`), upstream failures by kind, worker exit and restart; JSON by
default, text under `logging.format: text`."""

from __future__ import annotations

import os
import signal

import pytest
from support.client import RawConn, assert_gateway_error, wait_until
from support.gateway import descendants, simple_config, upstream_config
from support.logs import wait_event
from support.upstreams import ClosedPort

FAST = {"connect": "2s", "response_header": "5s", "body_idle": "5s"}


@pytest.fixture
def closed():
    port = ClosedPort()
    yield port
    port.close()


def two_routes(echo_address: str, upstream: str = "echo") -> dict:
    cfg = simple_config(echo_address)
    cfg["routes"] = [{"name": "a", "match": {"path": {"prefix": "/a"}}, "upstream": upstream},
                     {"name": "b", "match": {"path": {"prefix": "/b"}}, "upstream": upstream}]
    return cfg


def test_startup_and_worker_restart(echo, gateway_factory):
    gw = gateway_factory(simple_config(echo.address))
    started = wait_event(gw, "worker_started")
    listening = wait_event(gw, "listening")
    assert listening["url"] == gw.url and listening["level"] == "info" and listening["time"].endswith("Z")
    mark = gw.stderr_line_count()
    os.kill(started["worker_pid"], signal.SIGKILL)
    exited = wait_event(gw, "worker_exited", since=mark, worker_pid=started["worker_pid"])
    assert (exited["level"], exited["status"], exited["respawn"]) == ("error", -9, True)
    wait_event(gw, "worker_started", since=mark, worker=0)


def test_reload_accepted_with_a_summary(echo, gateway_factory):
    gw = gateway_factory(simple_config(echo.address))
    mark = gw.stderr_line_count()
    gw.reload(two_routes(echo.address))
    accepted = wait_event(gw, "reload_accepted", since=mark)
    assert {k: accepted[k] for k in ("level", "source", "routes", "upstreams", "listeners")} == {
        "level": "info", "source": "SIGHUP", "routes": 2, "upstreams": 1, "listeners": 1}
    (worker,) = descendants(gw.pid)
    applied = wait_event(gw, "reload_applied", since=mark)
    assert applied["pid"] == worker and applied["routes"] == 2


def test_reload_rejected_with_every_error(echo, gateway_factory):
    gw = gateway_factory(simple_config(echo.address))
    mark = gw.stderr_line_count()
    gw.reload(two_routes(echo.address, upstream="missing"))
    rejected = wait_event(gw, "reload_rejected", since=mark)
    assert rejected["level"] == "error" and rejected["source"] == "SIGHUP"
    assert [e.split(": ", 2)[1] for e in rejected["errors"]] == ["$.routes[0].upstream", "$.routes[1].upstream"]
    assert all(e.startswith(f"{gw.config_path}:") for e in rejected["errors"]), rejected["errors"]
    with RawConn(gw.port) as c:     # the running config goes on
        assert c.request("GET", "/x").status == 200


def test_upstream_failures_by_kind(closed, gateway_factory):
    cfg = simple_config(upstreams={"refused": upstream_config(closed.address, timeouts=FAST),
                                   "nxdomain": upstream_config("no-such-host.invalid:80", timeouts=FAST)},
                        routes=[{"name": "r", "match": {"path": {"prefix": "/r"}}, "upstream": "refused"},
                                {"name": "n", "match": {"path": {"prefix": "/n"}}, "upstream": "nxdomain"}])
    gw = gateway_factory(cfg)
    for path, rid in (("/r", "ev-refused"), ("/n", "ev-dns")):
        with RawConn(gw.port) as c:
            assert_gateway_error(c.request("GET", path, [("X-Request-Id", rid)]), 502)
    refused = wait_event(gw, "upstream_failure", request_id="ev-refused")
    assert {k: refused[k] for k in ("level", "kind", "status", "route", "upstream", "target")} == {
        "level": "error", "kind": "refused", "status": 502, "route": "r", "upstream": "refused",
        "target": closed.address}
    dns = wait_event(gw, "upstream_failure", request_id="ev-dns")
    assert (dns["kind"], dns["msg"], dns["target"]) == ("dns", "upstream name not resolved", "no-such-host.invalid:80")


def test_text_format(echo, gateway_factory):
    cfg = simple_config(echo.address)
    cfg["logging"] = {"format": "text"}
    gw = gateway_factory(cfg)
    mark = gw.stderr_line_count()
    gw.reload(two_routes(echo.address, upstream="missing"))

    def rejected_lines():
        lines = gw.stderr_since(mark).splitlines()
        for i, line in enumerate(lines):
            if " error fastgw: reload refused, keeping the running config event=reload_rejected " in line:
                return lines[i:i + 3]
        return None

    head, *errors = wait_until(rejected_lines, what="the rejected reload's lines")
    assert head.split(" ", 1)[0].endswith("Z") and "source=SIGHUP" in head
    assert [e.split(": ", 2)[1] for e in errors] == ["$.routes[0].upstream", "$.routes[1].upstream"]
    assert all(e.startswith("  ") for e in errors)
