"""Passive health and failover over real sockets, with the defaults a new user gets: targets that
refuse or reset are avoided for a while and idempotent requests go on to another target; targets
always come back."""

from __future__ import annotations

import subprocess
import sys
import threading

import httpx
import yaml
from support.admin import admin_client, with_admin
from support.client import wait_until
from support.gateway import simple_config
from support.logs import events, wait_event
from support.upstreams import ClosedPort, EchoServer, RawUpstream, serve_ok


def config_with(addresses, **upstream) -> dict:
    cfg = simple_config(addresses[0])
    cfg["upstreams"]["echo"] = {"targets": [{"address": a} for a in addresses], **upstream}
    return cfg


def get_all(gw, n: int, method: str = "GET") -> list[int]:
    with httpx.Client(base_url=gw.url, headers={"Host": "test.local"}, timeout=10) as c:
        return [c.request(method, f"/r{i}").status_code for i in range(n)]


def test_one_of_three_targets_down_costs_no_errors_by_default(gateway_factory):
    down = ClosedPort()
    with EchoServer("a") as a, EchoServer("b") as b:
        gw = gateway_factory(config_with([a.address, down.address, b.address]))
        statuses = get_all(gw, 1000)
        assert statuses.count(200) == 1000, {s: statuses.count(s) for s in set(statuses)}
        ejected = wait_event(gw, "target_ejected", target=down.address)
        assert ejected["reason"] == "consecutive failures"
        failures = [e for e in events(gw) if e["event"] == "upstream_failure"]
        assert 1 <= len(failures) <= 5, failures       # one per ejection, not one per request
    down.close()


def test_a_post_is_never_sent_again(gateway_factory):
    down = ClosedPort()
    with EchoServer("a") as a:
        cfg = config_with([down.address, a.address], health={"passive": {"enabled": False}})
        gw = gateway_factory(cfg)
        with httpx.Client(base_url=gw.url, headers={"Host": "test.local"}, timeout=10) as c:
            posts = [c.post("/p", content=b"x" * 10).status_code for _ in range(6)]
            gets = [c.get("/g").status_code for _ in range(6)]
        assert posts.count(502) == 3 and posts.count(200) == 3, posts   # round robin: every other one
        assert gets == [200] * 6                                        # GETs fail over
    down.close()


class Flapping:
    """A target that resets every connection while `down` is set, and serves otherwise."""

    def __init__(self):
        self.down = threading.Event()
        self.server = RawUpstream(self.handle, name="flap")

    def handle(self, conn):
        if self.down.is_set():
            conn.reset()
            return
        serve_ok(conn)


def test_an_ejected_target_comes_back(gateway_factory):
    flap = Flapping()
    with EchoServer("a") as a, flap.server as f:
        flap.down.set()
        cfg = with_admin(config_with([a.address, f.address],
                                     health={"passive": {"base_ejection": "0.5s"}}, keepalive={"max_idle": 0}))
        gw = gateway_factory(cfg)
        assert get_all(gw, 10) == [200] * 10
        wait_event(gw, "target_ejected", target=f.address)
        with admin_client(gw) as admin:
            target = admin.get("/upstreams").json()["upstreams"]["echo"]["targets"][1]
        assert target["health"] == "ejected", target
        [view] = target["health_by_worker"].values()
        assert view["reason"] == "consecutive failures" and view["times_ejected"] == 1
        flap.down.clear()
        wait_until(lambda: b"ok-" in httpx.get(gw.url + "/", headers={"Host": "test.local"}).content,
                   what="the target to take requests again")
        wait_event(gw, "target_returned", target=f.address)


def test_a_5xx_streak_ejects(gateway_factory):
    def always_503(conn):
        while conn.read_request() is not None:
            conn.respond(503, b"busy")

    with EchoServer("a") as a, RawUpstream(always_503, name="busy") as busy:
        gw = gateway_factory(config_with([a.address, busy.address],
                                         health={"passive": {"consecutive_5xx": 3}}))
        statuses = get_all(gw, 40)
        assert statuses.count(503) == 3, statuses        # 5xx are answers: returned, and counted
        wait_event(gw, "target_ejected", target=busy.address, reason="consecutive 5xx")


def test_no_more_than_the_share_is_ejected(gateway_factory):
    down1, down2 = ClosedPort(), ClosedPort()
    gw = gateway_factory(config_with([down1.address, down2.address]))
    statuses = get_all(gw, 8)
    assert set(statuses) == {502}, statuses              # the gateway's error, not "no target"
    wait_event(gw, "target_ejected")                     # event lines reach stderr in batches
    get_all(gw, 4)                                       # more failures: still no second ejection
    ejected = [e for e in events(gw) if e["event"] == "target_ejected"]
    assert len(ejected) == 1, ejected                    # 50% of two targets: one
    down1.close()
    down2.close()


def test_a_reset_before_any_byte_fails_over(gateway_factory):
    def reset_all(conn):
        conn.reset()

    with EchoServer("a") as a, RawUpstream(reset_all, name="rst") as rst:
        gw = gateway_factory(config_with([rst.address, a.address], health={"passive": {"enabled": False}},
                                         keepalive={"max_idle": 0}))
        assert get_all(gw, 20) == [200] * 20


def test_health_settings_are_checked(tmp_path):
    cfg = config_with(["127.0.0.1:1", "127.0.0.1:2"],
                      health={"passive": {"base_ejection": "60s", "max_ejection": "10s"}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "fastgw", "check", str(path)], capture_output=True, text=True)
    assert r.returncode == 1 and "$.upstreams.echo.health.passive.max_ejection" in r.stderr, r.stderr

