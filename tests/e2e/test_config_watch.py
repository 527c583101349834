"""A config directory laid out as the kubelet mounts a ConfigMap, changed the way the kubelet changes
it (one atomic swap of `..data`), and the gateway following it without SIGHUP."""

from __future__ import annotations

import signal
import socket
import ssl
import threading
import time

import httpx
import pytest
import yaml
from support.admin import admin_client, with_admin
from support.certs import CA
from support.client import wait_until
from support.gateway import Gateway, simple_config
from support.kubelet import kubelet_update
from support.logs import events, wait_event
from support.upstreams import EchoServer


class DirGateway(Gateway):
    """A gateway run with `-c DIR`, DIR a ConfigMap volume whose keys are `files(config)`."""

    def __init__(self, config: dict, workdir, split=True, **kw):
        super().__init__(config, workdir, **kw)
        self.config_path = self.workdir / "config"
        self.split = split

    def files(self, config: dict | str) -> dict[str, str]:
        if isinstance(config, str):
            return {"gateway.yaml": config}
        if not self.split:
            return {"gateway.yaml": yaml.safe_dump(config, sort_keys=False)}
        # the routes and upstreams in one key, everything else in another: merged in name order
        rest = {k: v for k, v in config.items() if k not in ("routes", "upstreams")}
        return {"00-gateway.yaml": yaml.safe_dump(rest, sort_keys=False),
                "10-routes.yaml": yaml.safe_dump({k: config[k] for k in ("routes", "upstreams") if k in config},
                                                 sort_keys=False)}

    def write_config(self, config: dict | str) -> None:
        kubelet_update(self.config_path, self.files(config))


@pytest.fixture
def dir_gateway(tmp_path):
    started = []

    def make(config, **kw):
        gw = DirGateway(config, tmp_path / f"gw{len(started)}", **kw)
        started.append(gw)
        return gw.start()

    yield make
    for gw in started:
        gw.close()


def answered_by(gw) -> str:
    return httpx.get(gw.url + "/", headers={"Host": "test.local"}, timeout=10).json()["name"]


def test_directory_config_serves_and_follows_a_configmap_swap(dir_gateway, tmp_path):
    with EchoServer("one") as one, EchoServer("two") as two:
        gw = dir_gateway(simple_config(one.address))
        assert answered_by(gw) == "one"
        mark = gw.stderr_line_count()
        kubelet_update(gw.config_path, gw.files(simple_config(two.address)))
        wait_until(lambda: answered_by(gw) == "two", timeout=30, what="the swapped ConfigMap to be served")
        accepted = wait_event(gw, "reload_accepted", mark, source="watch")
        assert accepted["generation"] == 2
        # the same content swapped in again (the kubelet resyncs): nothing to reload
        kubelet_update(gw.config_path, gw.files(simple_config(two.address)))
        wait_until(lambda: not (gw.config_path / "..data").resolve().name.endswith("1"), what="the swap")
        time.sleep(2.5)    # two watch rounds; a reload would have been logged by now
        assert [e for e in events(gw, mark) if e["event"] == "reload_accepted"] == [accepted]


def test_a_bad_swap_keeps_the_running_config_and_says_where(dir_gateway):
    with EchoServer("one") as one:
        gw = with_admin(simple_config(one.address))
        gw = dir_gateway(gw)
        mark = gw.stderr_line_count()
        bad = simple_config(one.address)
        bad["routes"][0]["upstream"] = "missing"
        kubelet_update(gw.config_path, gw.files(with_admin(bad)))
        rejected = wait_event(gw, "reload_rejected", mark, source="watch")
        assert any("10-routes.yaml" in e and "$.routes[0].upstream" in e for e in rejected["errors"]), rejected
        assert answered_by(gw) == "one" and gw.alive()
        with admin_client(gw) as admin:
            last = admin.get("/reloads").json()
        assert any(r["source"] == "watch" and not r["ok"] for r in last["reloads"]), last
        # fixed: applied on the next change, without a signal
        kubelet_update(gw.config_path, gw.files(with_admin(simple_config(one.address))))
        wait_event(gw, "reload_accepted", mark, source="watch")


def test_a_single_file_is_not_watched_unless_asked(tmp_path, gateway_factory):
    with EchoServer("one") as one, EchoServer("two") as two:
        gw = gateway_factory(simple_config(one.address))
        gw.write_config(simple_config(two.address))
        time.sleep(2.5)
        assert answered_by(gw) == "one"          # files follow SIGHUP alone, as before
        watched = simple_config(one.address)
        watched["server"] = {"watch_config": True, "watch_interval": "0.2s"}
        gw2 = gateway_factory(watched)
        changed = simple_config(two.address)
        changed["server"] = watched["server"]
        gw2.write_config(changed)
        wait_until(lambda: answered_by(gw2) == "two", timeout=30, what="the watched file to be reloaded")


def test_shutdown_delay_turns_readiness_off_first_and_keeps_serving(dir_gateway):
    with EchoServer("one") as one:
        config = with_admin(simple_config(one.address))
        config["server"] = {"shutdown_delay": "3s", "drain_timeout": "5s"}
        gw = dir_gateway(config)
        with admin_client(gw) as admin:
            assert admin.get("/readyz").status_code == 200
            started = time.monotonic()
            gw.signal(signal.SIGTERM)
            wait_until(lambda: admin.get("/readyz").status_code == 503, what="readiness to turn false")
            served = 0
            while time.monotonic() - started < 1.5:   # well inside the delay: still serving
                assert answered_by(gw) == "one"
                served += 1
                time.sleep(0.05)
            assert served > 0 and gw.alive()
        assert gw.wait(30) == 0, gw.describe()
        assert any(e["event"] == "shutdown_delay" for e in events(gw))


def test_rolling_update_loses_no_request(dir_gateway):
    """Two gateway processes, as an old and a new pod; the client, as kube-proxy would, sends to the old
    one until its readiness turns false and then to the new one. SIGTERM to the old one under steady
    load: every request is answered."""
    with EchoServer("one") as one:
        config = with_admin(simple_config(one.address))
        config["server"] = {"shutdown_delay": "2s", "drain_timeout": "5s"}
        old = dir_gateway(config)
        new = dir_gateway(config)
        failures, answered = [], [0]
        current = [old]
        stop = threading.Event()

        def endpoints():       # kube-proxy's view: the ready endpoints
            with admin_client(old) as a:
                while not stop.is_set():
                    try:
                        ready = a.get("/readyz", timeout=2).status_code == 200
                    except httpx.HTTPError:
                        ready = False
                    if not ready:
                        current[0] = new
                        return
                    time.sleep(0.05)

        def load():
            with httpx.Client(timeout=10, headers={"Host": "test.local"}) as c:
                while not stop.is_set():
                    gw = current[0]
                    try:
                        r = c.get(gw.url + "/")
                        if r.status_code != 200:
                            failures.append(r.status_code)
                        answered[0] += 1
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))

        threads = [threading.Thread(target=endpoints), *(threading.Thread(target=load) for _ in range(4))]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: answered[0] > 50, what="steady load")
            old.signal(signal.SIGTERM)
            assert old.wait(30) == 0, old.describe()
            before = answered[0]
            wait_until(lambda: answered[0] > before + 50, what="load on the new gateway")
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        assert current[0] is new
        assert failures == [], failures[:5]


def test_a_swapped_tls_secret_serves_its_new_certificate_without_a_signal(dir_gateway, tmp_path):
    """A kubernetes.io/tls Secret mounted beside the ConfigMap: the kubelet swaps in a new tls.crt and
    tls.key, and new handshakes get the new certificate; the config itself did not change."""
    ca = CA(tmp_path / "ca", "Watch CA")
    first = ca.issue("first", ["first.example.com", "gw.example.com"])
    second = ca.issue("second", ["second.example.com", "gw.example.com"])
    secret = tmp_path / "secret"
    kubelet_update(secret, {"tls.crt": first.cert_pem, "tls.key": first.key_pem})
    with EchoServer("one") as one:
        config = simple_config(one.address)
        config["listeners"] = [{"address": "127.0.0.1:0", "tls": {"certificates": [
            {"cert": str(secret / "tls.crt"), "key": str(secret / "tls.key")}]}}]
        config["server"] = {"watch_interval": "0.2s"}
        gw = dir_gateway(config)
        ctx = ssl.create_default_context(cafile=str(ca.cert_path))

        def served() -> list[str]:
            with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw, \
                    ctx.wrap_socket(raw, server_hostname="gw.example.com") as s:
                return [v for k, v in s.getpeercert()["subjectAltName"] if k == "DNS"]

        assert "first.example.com" in served()
        mark = gw.stderr_line_count()
        kubelet_update(secret, {"tls.crt": second.cert_pem, "tls.key": second.key_pem})
        wait_until(lambda: "second.example.com" in served(), timeout=30, what="the new certificate")
        wait_event(gw, "reload_accepted", mark, source="watch")
