"""Regression tests from a review: a request that overflowed the host buffer and crashed a worker,
and a supervisor whose restarted workers could not report ready."""

from __future__ import annotations

import os
import signal
import time

from support.client import RawConn, wait_until
from support.gateway import descendants, simple_config


def worker_pid(gw) -> int:
    kids = [p for p in descendants(gw.pid) if os.path.exists(f"/proc/{p}")]
    assert len(kids) == 1, f"expected one worker, got {kids}"
    return kids[0]


def serves(gw) -> bool:
    try:
        with RawConn(gw.port, timeout=5) as c:
            return c.request("GET", "/ping", [("Connection", "close")]).status == 200
    except OSError:
        return False


def test_review_absolute_form_long_authority_does_not_crash_worker(echo, gateway_factory):
    """An absolute-form authority is not length-checked (`_absolute_form`, http1.pyx), but `_route`
    (client.pyx) copies it into `hostbuf[MAX_HOST_LEN + 1]`: a 300-byte authority writes past the
    256-byte array at the end of the ClientConn object (heap overflow). The worker dies (SIGSEGV).
    Expected: the request is refused (400: the Host rules, 255 bytes max, apply to the authority
    too) and the worker keeps serving."""
    gw = gateway_factory(simple_config(echo.address), workers=1)
    assert serves(gw)
    pid = worker_pid(gw)
    lines_before = gw.stderr_line_count()
    outcomes = {}
    for n in (300, 1000, 4000, 7000):
        try:
            with RawConn(gw.port, timeout=5) as c:
                c.send(b"GET http://" + b"a" * n + b"/x HTTP/1.1\r\nHost: a\r\n\r\n")
                outcomes[n] = c.response().status
        except (OSError, AssertionError) as exc:
            outcomes[n] = repr(exc)
        time.sleep(0.2)
    log = gw.stderr_since(lines_before)
    assert "exited with status" not in log, f"worker crashed; outcomes {outcomes}; log:\n{log[:600]}"
    assert worker_pid(gw) == pid and serves(gw)
    assert outcomes == {n: 400 for n in outcomes}, outcomes


def test_review_killed_single_worker_is_replaced_and_serves(echo, gateway_factory):
    """`Supervisor.run` closes `ready_r` once the first workers are up (server.py:95), but `_reap`
    respawns a dead worker with `self.ready_w` (server.py:161). The new worker's
    `os.write(ready_w, b"r")` (server.py:230) raises BrokenPipeError, so it exits 1, is respawned,
    fails again... forever: a restart storm, and that worker slot never serves again. With one
    worker the gateway is down for good after any worker death (OOM kill, the crash above)."""
    gw = gateway_factory(simple_config(echo.address), workers=1)
    assert serves(gw)
    victim = worker_pid(gw)
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
