"""Process model (issue 7): an address something already listens on is refused unless --reuse-port
asks to share it; a SIGHUP that arrives while a worker (re)starts neither kills it nor is lost."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from functools import partial

import pytest
from support.client import RawConn, wait_until
from support.gateway import Gateway, GatewayStartError, descendants, simple_config, socket_owner_pids
from support.upstreams import EchoServer

STARTED_RE = re.compile(r"worker \d+ started \(pid (\d+)\)")


def on_port(config: dict, port: int) -> dict:
    return {**config, "listeners": [{"address": f"127.0.0.1:{port}"}]}


def refused_start(config: dict, workdir, extra_args=()) -> Gateway:
    """Runs `fastgw run` expecting it to exit before listening; returns the finished Gateway."""
    gw = Gateway(config, workdir, extra_args=extra_args)
    try:
        with pytest.raises(GatewayStartError):
            gw.start()
        gw.wait(30)
    finally:
        gw.close()
    return gw


def get(port: int, target: str = "/") -> tuple[int, str | None]:
    with RawConn(port, timeout=10) as c:
        r = c.request("GET", target, [("Connection", "close")])
        return r.status, (r.json().get("name") if r.status == 200 else None)


def in_use_message(port: int) -> str:
    return (f"127.0.0.1:{port} is already in use (another fastgw or another server is listening "
            f"there); pass --reuse-port to share it for a zero-downtime upgrade")


def test_second_run_on_a_served_address_fails_and_the_first_keeps_serving(echo, gateway_factory, tmp_path):
    first = gateway_factory(simple_config(echo.address), workers=2)
    pids = set(first.pids())
    second = refused_start(on_port(simple_config(echo.address), first.port), tmp_path / "second")
    assert second.returncode != 0, second.describe()
    assert in_use_message(first.port) in second.stderr, second.describe()
    assert "started (pid" not in second.stderr, "refused only after forking workers:\n" + second.describe()
    assert first.alive() and set(first.pids()) == pids, first.describe()
    for i in range(12):
        assert get(first.port, f"/still/{i}")[0] == 200


@pytest.mark.parametrize("options", [(), (socket.SO_REUSEADDR,), (socket.SO_REUSEPORT,),
                                     (socket.SO_REUSEADDR, socket.SO_REUSEPORT)],
                         ids=["plain", "reuseaddr", "reuseport", "reuseaddr+reuseport"])
def test_a_port_another_server_listens_on_is_refused(echo, tmp_path, options):
    other = socket.socket()
    try:
        for opt in options:
            other.setsockopt(socket.SOL_SOCKET, opt, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        gw = refused_start(on_port(simple_config(echo.address), port), tmp_path / "gw")
        assert gw.returncode != 0, gw.describe()
        assert in_use_message(port) in gw.stderr, gw.describe()
        # the other server still gets its connections
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            other.settimeout(5)
            other.accept()[0].close()
    finally:
        other.close()


def test_reuse_port_shares_the_address_for_a_zero_downtime_upgrade(gateway_factory):
    with EchoServer("old") as old_up, EchoServer("new") as new_up:
        first = gateway_factory(simple_config(old_up.address))
        port = first.port
        second = gateway_factory(on_port(simple_config(new_up.address), port), extra_args=["--reuse-port"])
        assert second.port == port
        seen: set = set()

        def both_serve() -> bool:
            for i in range(8):
                status, name = get(port, f"/shared/{i}")
                assert status == 200
                seen.add(name)
            return seen == {"old", "new"}

        wait_until(both_serve, timeout=20, interval=0.1, what="both instances to answer on the shared port")
        assert first.stop(30) == 0, first.describe()
        for i in range(12):
            assert get(port, f"/upgraded/{i}") == (200, "new")
        assert second.alive()


def routes(echo, *names: str) -> dict:
    return simple_config(echo.address, routes=[
        {"name": n, "match": {"path": {"prefix": f"/{n}"}}, "upstream": "echo"} for n in names])


def listens(pid: int, port: int) -> bool:
    """Whether pid holds a listening socket on port: a worker binds it just before it is ready."""
    return bool(socket_owner_pids(port, 0, [pid]))


def every_worker_serves(port: int, target: str) -> bool:
    # fresh connections: SO_REUSEPORT spreads them over every worker, so 16 in a row rule out one
    # worker left on the old config (a 1 in 65536 chance with two workers)
    return all(get(port, target)[0] == 200 for _ in range(16))


def hup(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        pass


def test_sighup_storm_while_a_worker_restarts_kills_nothing_and_reloads(echo, gateway_factory):
    gw = gateway_factory(routes(echo, "old"), workers=2)
    workers = set(descendants(gw.pid))
    assert len(workers) == 2 and get(gw.port, "/new")[0] == 404
    mark = gw.stderr_line_count()
    gw.write_config(routes(echo, "old", "new"))
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    # SIGHUPs at the supervisor from the kill until the replacement listens, and a while after, so
    # that they cover its whole start; bounded, in case a replacement never comes up
    replacement, tail, deadline = None, 100, time.monotonic() + 15
    while tail and time.monotonic() < deadline:
        hup(gw.pid)
        if replacement is None:
            started = STARTED_RE.findall(gw.stderr_since(mark))
            if started and listens(int(started[-1]), gw.port):
                replacement = int(started[-1])
        else:
            tail -= 1
        time.sleep(0.005)

    def log() -> str:
        return gw.stderr_since(mark)

    assert replacement is not None, "no replacement worker came up:\n" + log()
    wait_until(lambda: every_worker_serves(gw.port, "/new"), timeout=20, what="the reload to reach every worker")
    assert log().count("exited with status") == 1 and f"(pid {victim}) exited" in log(), log()
    assert STARTED_RE.findall(log()) == [str(replacement)], log()
    assert set(descendants(gw.pid)) == workers - {victim} | {replacement}, log()
    assert get(gw.port, "/old")[0] == 200
    assert gw.stop(30) == 0, gw.describe()


def test_sighup_at_workers_and_supervisor_during_start_kills_nothing_and_reloads(echo, tmp_path):
    """`pkill -HUP fastgw` while the gateway starts: every process gets SIGHUP, workers mid-start too."""
    gw = Gateway(routes(echo, "old"), tmp_path / "gw", workers=2)
    starting = threading.Event()
    stop = threading.Event()
    sent_to: set[int] = set()

    def storm() -> None:
        # the supervisor blocks its signals before it forks, so it is a fair target from the first
        # "started" line on; before that the interpreter itself is starting
        while not stop.is_set() and not STARTED_RE.search(gw.stderr):
            time.sleep(0.001)
        if stop.is_set():
            return
        gw.write_config(routes(echo, "old", "new"))
        starting.set()
        while not stop.is_set():
            hup(gw.pid)
            for pid in STARTED_RE.findall(gw.stderr):
                hup(int(pid))
                sent_to.add(int(pid))
            time.sleep(0.002)

    t = threading.Thread(target=storm, daemon=True)
    t.start()
    try:
        gw.start()
        assert starting.is_set()
        # and a little longer: the supervisor's own reload and SIGHUPs right after the start
        for _ in range(50):
            time.sleep(0.005)
        stop.set()
        t.join(10)
        workers = set(descendants(gw.pid))
        assert len(workers) == 2 and workers <= sent_to, (workers, sent_to, gw.stderr)
        wait_until(lambda: every_worker_serves(gw.port, "/new"), timeout=20,
                   what="the reload to reach every worker")
        assert "exited with status" not in gw.stderr and len(STARTED_RE.findall(gw.stderr)) == 2, gw.stderr
        assert set(descendants(gw.pid)) == workers
        assert gw.stop(30) == 0, gw.describe()
    finally:
        stop.set()
        gw.close()


def started_since(gw, mark: int) -> int:
    m = wait_until(lambda: STARTED_RE.search(gw.stderr_since(mark)), interval=0.001, what="a replacement worker")
    return int(m.group(1))


def test_a_reload_while_a_worker_restarts_reaches_it_once_ready(echo, gateway_factory):
    """One SIGHUP while the replacement starts: it forked with the old config, so the supervisor
    owes it that reload once it is ready, and exactly once."""
    gw = gateway_factory(routes(echo, "v0"), workers=1)
    for attempt in range(1, 6):
        mark = gw.stderr_line_count()
        (victim,) = descendants(gw.pid)
        gw.write_config(routes(echo, f"v{attempt}"))
        os.kill(victim, signal.SIGKILL)
        pid = started_since(gw, mark)
        mid_start = not listens(pid, gw.port)
        gw.signal(signal.SIGHUP)
        wait_until(partial(every_worker_serves, gw.port, f"/v{attempt}"), timeout=20,
                   what="the reload to reach the replacement")
        log = gw.stderr_since(mark)
        assert log.count(f"worker {pid}: configuration reloaded") == 1, log
        assert log.count("exited with status") == 1, log
        if mid_start:
            break
    else:
        pytest.fail("the replacement was never caught mid-start")
    assert get(gw.port, "/v0")[0] == 404


def test_sigterm_while_a_worker_restarts_still_stops_the_gateway(echo, gateway_factory):
    """The SIGTERM the supervisor passes on reaches the replacement while it starts: held pending,
    it must still be handled once the worker runs, or the supervisor waits out drain_timeout."""
    gw = gateway_factory(simple_config(echo.address, server={"drain_timeout": "1h"}), workers=1)
    mark = gw.stderr_line_count()
    (victim,) = descendants(gw.pid)
    os.kill(victim, signal.SIGKILL)
    started_since(gw, mark)
    gw.signal(signal.SIGTERM)
    assert gw.wait(30) == 0, gw.describe()   # a hang guard: the lost-signal case waits an hour
    log = gw.stderr_since(mark)
    assert log.count("exited with status") == 1 and log.endswith('"event":"stopped","msg":"stopped"}'), log
