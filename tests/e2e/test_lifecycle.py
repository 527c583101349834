"""Process lifecycle: SIGTERM drain, SIGHUP reload (valid and invalid), `fastgw check`, --workers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import yaml
from support.client import RawConn, wait_until
from support.gateway import REPO_ROOT, descendants, only_worker_pid, serves, simple_config, socket_owner_pids
from support.upstreams import EchoServer


def status_of(gw, target: str, host: str = "test.local") -> int:
    with RawConn(gw.port) as c:
        return c.request("GET", target, [("Connection", "close")], host=host).status


def refuses_connections(port: int) -> bool:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
    except ConnectionRefusedError:
        return True
    s.close()
    return False


def test_sigterm_drains_in_flight_then_exits_zero(echo, gateway_factory):
    gw = gateway_factory(simple_config(echo.address, server={"drain_timeout": "20s"}))
    result = {}

    def in_flight():
        with RawConn(gw.port, timeout=30) as c:
            result["resp"] = c.request("GET", "/drain", [("X-Echo-Delay", "2"), ("X-Request-Id", "draining")])

    t = threading.Thread(target=in_flight)
    t.start()
    wait_until(lambda: echo.find_request("draining"), what="the slow request to reach the upstream")
    gw.signal(signal.SIGTERM)
    wait_until(lambda: refuses_connections(gw.port), what="the listener to close after SIGTERM")
    t.join(30)
    r = result.get("resp")
    assert r is not None and r.status == 200 and r.json()["target"] == "/drain", "in-flight request lost"
    assert gw.wait(30) == 0, gw.describe()


def test_sigterm_idle_exits_zero(echo, gateway_factory):
    gw = gateway_factory(simple_config(echo.address))
    assert status_of(gw, "/") == 200
    assert gw.stop(30) == 0, gw.describe()


def test_sighup_valid_config_adds_route(echo, gateway_factory):
    old = simple_config(echo.address, routes=[
        {"name": "old", "match": {"path": {"prefix": "/old"}}, "upstream": "echo"}])
    gw = gateway_factory(old)
    assert status_of(gw, "/old") == 200 and status_of(gw, "/new") == 404
    new = simple_config(echo.address, routes=[
        {"name": "old", "match": {"path": {"prefix": "/old"}}, "upstream": "echo"},
        {"name": "new", "match": {"path": {"prefix": "/new"}}, "upstream": "echo"}])
    gw.reload(new)
    wait_until(lambda: status_of(gw, "/new") == 200, what="the reloaded route to serve")
    assert status_of(gw, "/old") == 200
    assert gw.alive()


def test_sighup_invalid_config_keeps_old(echo, gateway_factory):
    old = simple_config(echo.address, routes=[
        {"name": "old", "match": {"path": {"prefix": "/old"}}, "upstream": "echo"}])
    gw = gateway_factory(old)
    assert status_of(gw, "/old") == 200
    bad = simple_config(echo.address, routes=[
        {"name": "new", "match": {"path": {"prefix": "/new"}}, "upstream": "no-such-upstream"}])
    mark = gw.stderr_line_count()
    gw.reload(bad)
    wait_until(lambda: "$." in gw.stderr_since(mark), what="the reload errors on stderr")
    assert "upstream" in gw.stderr_since(mark)
    assert gw.alive()
    assert status_of(gw, "/old") == 200 and status_of(gw, "/new") == 404
    # A later valid reload still works.
    gw.reload(simple_config(echo.address, routes=[
        {"name": "new", "match": {"path": {"prefix": "/new"}}, "upstream": "echo"}]))
    wait_until(lambda: status_of(gw, "/new") == 200, what="recovery after an invalid reload")


def run_check(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastgw", "check", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=str(REPO_ROOT))


def test_check_valid_config(tmp_path, echo):
    p = tmp_path / "ok.yaml"
    p.write_text(yaml.safe_dump(simple_config(echo.address), sort_keys=False))
    res = run_check(p)
    assert res.returncode == 0, res.stdout + res.stderr


CHECK_HEAD = (
    "listeners:\n"
    "  - address: 127.0.0.1:0\n"
    "upstreams:\n"
    "  echo:\n"
    "    targets:\n"
    "      - {address: 127.0.0.1:9, weight: 1}\n"
)


def check_errors(tmp_path, name: str, text: str) -> tuple[dict, str]:
    """Runs `fastgw check`; returns ({$.path: line}, output) after asserting exit code 1."""
    p = tmp_path / name
    p.write_text(text)
    res = run_check(p)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    pattern = re.compile(rf"^{re.escape(str(p))}:(\d+): (\$\S*): (.+)$", re.M)
    return {m.group(2): int(m.group(1)) for m in pattern.finditer(out)}, out


def find(errors: dict, *words: str) -> int | None:
    for path, line in errors.items():
        if all(w in path for w in words):
            return line
    return None


def test_check_reports_every_schema_error_with_line_and_path(tmp_path):
    errors, out = check_errors(tmp_path, "schema.yaml", CHECK_HEAD + (
        "routes:\n"
        "  - name: r\n"
        "    match: {path: {prefix: /}}\n"
        "    upstream: echo\n"
        "    max_body_bytes: -4\n"            # line 11
        "limits:\n"
        "  max_headers: not-a-number\n"       # line 13
    ))
    assert find(errors, "routes", "max_body_bytes") == 11, out
    assert find(errors, "limits", "max_headers") == 13, out


def test_check_reports_every_reference_error_with_line_and_path(tmp_path):
    errors, out = check_errors(tmp_path, "refs.yaml", CHECK_HEAD + (
        "routes:\n"
        "  - name: r1\n"
        "    match: {path: {prefix: /}}\n"
        "    upstream: missing-upstream\n"    # line 10
        "  - name: r2\n"
        "    match: {path: {prefix: /b}}\n"
        "    upstream: other-missing\n"       # line 13
    ))
    assert find(errors, "routes[0]", "upstream") == 10, out
    assert find(errors, "routes[1]", "upstream") == 13, out


def worker_pids(gw) -> list[int]:
    return [p for p in gw.pids() if os.path.exists(f"/proc/{p}")]


def test_two_workers_both_serve_and_a_killed_worker_is_replaced(echo, gateway_factory):
    gw = gateway_factory(simple_config(echo.address), workers=2)
    owners: set[int] = set()

    def sample_owners() -> bool:
        # Batches of simultaneous connections: SO_REUSEPORT spreads them over the workers that listen.
        conns = []
        try:
            conns.extend(RawConn(gw.port) for _ in range(12))
            for c in conns:
                assert c.request("GET", "/w").status == 200, gw.describe()
                owners.update(socket_owner_pids(gw.port, c.sock.getsockname()[1], gw.pids()))
        finally:
            for c in conns:
                c.close()
        return len(owners) >= 2

    wait_until(sample_owners, timeout=20, interval=0.2, what="connections served by two distinct processes")
    children = set(descendants(gw.pid))
    victim = sorted(owners & children or owners)[0]
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        now = set(descendants(gw.pid))
        return gw.alive() and victim not in now and len(now) >= len(children)

    wait_until(replaced, timeout=20, what=f"the supervisor to replace worker {victim}")
    for i in range(10):
        assert status_of(gw, f"/after-kill/{i}") == 200
    assert gw.stop(30) == 0, gw.describe()


def test_killed_single_worker_is_replaced_and_serves(echo, gateway_factory):
    """`Supervisor.run` closes `ready_r` once the first workers are up (server.py:95), but `_reap`
    respawns a dead worker with `self.ready_w` (server.py:161). The new worker's
    `os.write(ready_w, b"r")` (server.py:230) raises BrokenPipeError, so it exits 1, is respawned,
    fails again... forever: a restart storm, and that worker slot never serves again. With one
    worker the gateway is down for good after any worker death (OOM kill, or the crash of
    test_absolute_form_long_authority_does_not_crash_worker in tests/e2e/test_limits.py).
    (From review 1: a restarted worker could not report ready, so a single-worker gateway never
    served again.)"""
    gw = gateway_factory(simple_config(echo.address), workers=1)
    assert serves(gw)
    victim = only_worker_pid(gw)
    lines_before = gw.stderr_line_count()
    os.kill(victim, signal.SIGKILL)
    try:
        wait_until(lambda: serves(gw), timeout=10, interval=0.2, what="a replacement worker to serve")
    except AssertionError:
        log = gw.stderr_since(lines_before)
        raise AssertionError("no working replacement worker; supervisor log (first 15 lines):\n"
                             + "\n".join(log.splitlines()[:15])) from None
    time.sleep(1.0)
    restarts = gw.stderr_since(lines_before).count("restarting")
    assert restarts == 1, f"{restarts} restarts after one kill:\n{gw.stderr_since(lines_before)[:2000]}"


def test_connection_busy_at_reload_is_closed_when_its_target_was_retired(gateway_factory):
    """Issue 7: a connection in use when a reload retires its target must not go back to that
    target's pool (nothing would ever take it from there); it closes when its exchange ends."""
    with EchoServer("old") as old_up, EchoServer("new") as new_up:
        gw = gateway_factory(simple_config(old_up.address))
        results = []

        def slow_request():
            with RawConn(gw.port) as c:
                results.append(c.request("GET", "/slow", [("X-Echo-Delay", "1.5")]))

        t = threading.Thread(target=slow_request)
        t.start()
        wait_until(lambda: len(old_up.requests) == 1, what="the slow request to reach the old upstream")
        gw.reload(simple_config(new_up.address))
        wait_until(lambda: status_of(gw, "/after") == 200 and len(new_up.requests) > 0,
                   what="the reload to take effect")
        t.join(timeout=30)
        assert results and results[0].status == 200
        wait_until(lambda: all(r.closed for r in old_up.conns.values()),
                   what="the retired target's connection to close after its exchange")
        assert gw.alive()
