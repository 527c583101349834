"""The supervisor's view of its workers through the Admin API: readiness while workers start, a
worker that does not answer its control channel (partial answers, never a hang), and a worker
whose supervisor is gone."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from support.admin import admin_client, admin_url, with_admin
from support.client import RawConn, wait_until
from support.gateway import Gateway, GatewayStartError, descendants, simple_config, socket_owner_pids

# the StartGate plugin is support.start_gate, under tests/
ENV = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def test_readyz_is_503_until_every_worker_is_ready(echo, tmp_path):
    gate = tmp_path / "open"
    cfg = with_admin(simple_config(echo.address))
    cfg["policies"] = [{"type": "plugin", "module": "support.start_gate:StartGate", "config": {"path": str(gate)}}]
    gw = Gateway(cfg, tmp_path / "gw", workers=2, env=ENV)
    started = threading.Thread(target=gw.start, daemon=True)
    started.start()
    try:
        with admin_client(gw) as admin:
            wait_until(lambda: len(descendants(gw.pid)) == 2, what="the workers to fork")
            before = admin.get("/readyz")
            assert before.status_code == 503, before.text
            assert before.json()["workers_ready"] == 0
            assert admin.get("/healthz").status_code == 200
            stats = admin.get("/stats").json()["workers"]
            assert [w["error"] for w in stats] == ["starting", "starting"]
            gate.touch()
            started.join(60)
            assert gw.ports, gw.describe()
            after = admin.get("/readyz")
            assert after.status_code == 200 and after.json()["workers_ready"] == 2
            gw.signal(signal.SIGTERM)

            def not_ready() -> bool:
                try:
                    return admin.get("/readyz").status_code == 503
                except httpx.TransportError:   # the supervisor has already stopped: not ready either
                    return True

            wait_until(not_ready, what="readiness to drop while stopping")
        assert gw.wait(30) == 0, gw.describe()
    finally:
        gate.touch()
        gw.close()


def test_a_stopped_worker_yields_a_partial_answer_not_a_hang(echo, gateway_factory):
    gw = gateway_factory(with_admin(simple_config(echo.address)), workers=2)
    stopped = min(descendants(gw.pid))
    with admin_client(gw, timeout=20) as admin:
        os.kill(stopped, signal.SIGSTOP)
        try:
            new_config = with_admin(simple_config(echo.address, routes=[
                {"name": "new", "match": {"path": {"prefix": "/new"}}, "upstream": "echo"}]))
            # side by side: each waits out the stopped worker's deadline
            with ThreadPoolExecutor(4) as pool:
                stats_f = pool.submit(admin.get, "/stats")
                metrics_f = pool.submit(admin.get, "/metrics")
                upstreams_f = pool.submit(admin.get, "/upstreams")
                post_f = pool.submit(admin.post, "/config", json=new_config)
            by_pid = {w["pid"]: w for w in stats_f.result().json()["workers"]}
            assert "error" in by_pid[stopped] and "requests_total" not in by_pid[stopped]
            (other,) = set(by_pid) - {stopped}
            assert "error" not in by_pid[other] and "requests_total" in by_pid[other]
            metrics = metrics_f.result()
            assert metrics.status_code == 200 and "fastgw_build_info{" in metrics.text
            upstreams = upstreams_f.result().json()
            assert [w for w in upstreams["workers"] if w["pid"] == stopped][0]["error"]
            # the config reaches the running worker; the stopped one has it queued
            r = post_f.result()
            assert r.status_code == 202, r.text
            pending = {w["pid"]: w for w in r.json()["workers"]}
            assert pending[stopped]["pending"] and pending[other]["applied"]
        finally:
            os.kill(stopped, signal.SIGCONT)
        generation = admin.get("/config").json()["generation"]
        wait_until(lambda: all(w.get("generation") == generation for w in admin.get("/stats").json()["workers"]),
                   what="the resumed worker to apply the queued config")
    with RawConn(gw.port) as c:
        assert c.request("GET", "/gone", [("Connection", "close")]).status == 404


def test_a_worker_whose_supervisor_is_killed_drains_and_exits(echo, gateway_factory):
    gw = gateway_factory(with_admin(simple_config(echo.address)), workers=2)
    workers = descendants(gw.pid)
    admin_url(gw)
    os.kill(gw.pid, signal.SIGKILL)
    gw.wait(30)

    def gone() -> bool:
        return not any(os.path.exists(f"/proc/{pid}") and _state(pid) != "Z" for pid in workers)

    wait_until(gone, timeout=30, what="the orphaned workers to exit")


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return "Z"
    return stat[stat.rfind(")") + 2]


def test_a_worker_forked_while_admin_connections_are_open_holds_none_of_them(echo, gateway_factory):
    """A copy of the admin listener or of a client's admin connection left in a worker would keep
    that connection from ever closing, and the port bound after the supervisor is gone."""
    gw = gateway_factory(with_admin(simple_config(echo.address)), workers=1)
    admin_port = int(admin_url(gw).rsplit(":", 1)[1])
    with admin_client(gw) as admin:
        assert admin.get("/stats").status_code == 200     # keep-alive: the connection stays open
        (victim,) = descendants(gw.pid)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: admin.get("/readyz").status_code == 200 and descendants(gw.pid) not in ([], [victim]),
                   what="the replacement worker")
        (replacement,) = descendants(gw.pid)
        with open("/proc/net/tcp") as f:
            rows = [line.split() for line in f.readlines()[1:]]
        # the client ends of established connections to the admin port (state 01)
        client_ports = [int(r[1].rsplit(":", 1)[1], 16) for r in rows
                        if int(r[2].rsplit(":", 1)[1], 16) == admin_port and r[3] == "01"]
        assert client_ports, "no open admin connection to check"
        assert socket_owner_pids(admin_port, 0, [replacement]) == []
        for port in client_ports:
            assert socket_owner_pids(admin_port, port, [gw.pid]) == [gw.pid]
            assert socket_owner_pids(admin_port, port, [replacement]) == []


def test_an_admin_address_in_use_is_refused_unless_reuse_port_shares_it(echo, gateway_factory, tmp_path):
    first = gateway_factory(with_admin(simple_config(echo.address)))
    address = admin_url(first).removeprefix("http://")
    beside = simple_config(echo.address)
    beside["admin"] = {"address": address}
    refused = Gateway(beside, tmp_path / "refused")
    try:
        with pytest.raises(GatewayStartError):
            refused.start()
        assert refused.wait(30) == 1
    finally:
        refused.close()
    assert f"cannot start the admin API: {address} is already in use" in refused.stderr, refused.stderr
    assert "started (pid" not in refused.stderr
    second = gateway_factory(beside, extra_args=["--reuse-port"])
    seen: set[int] = set()

    def both_answer() -> bool:
        for _ in range(8):
            with httpx.Client(timeout=10) as client:     # a new connection each time
                seen.add(client.get(f"http://{address}/healthz").json()["pid"])
        return seen == {first.pid, second.pid}

    wait_until(both_answer, timeout=20, interval=0.1, what="both supervisors to answer on the shared admin port")
    assert first.stop(30) == 0, first.describe()
    with httpx.Client(timeout=10) as client:
        assert client.get(f"http://{address}/healthz").json()["pid"] == second.pid
