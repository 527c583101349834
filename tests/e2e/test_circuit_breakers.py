"""Circuit breakers over real sockets: at its limit a breaker answers 503 at once with the flag that
names it, and the upstream never sees the request; once what held the limit ends, requests go
through again."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
from support.admin import admin_client, with_admin
from support.client import wait_until
from support.gateway import simple_config
from support.logs import only_line
from support.upstreams import ClosedPort, EchoServer, RawUpstream, wants_close


class Gated:
    """Holds every request until `gate` is set; counts the requests it has seen."""

    def __init__(self):
        self.gate = threading.Event()
        self.seen = 0
        self.server = RawUpstream(self.handle, name="gated")

    def handle(self, conn):
        while (req := conn.read_request()) is not None:
            self.seen += 1
            self.gate.wait(20)
            conn.respond(200, b"held", close=wants_close(req))
            if wants_close(req):
                return


def config_with(addresses, breakers: dict, **upstream) -> dict:
    cfg = with_admin(simple_config(addresses[0]))
    cfg["upstreams"]["echo"] = {"targets": [{"address": a} for a in addresses], "circuit_breakers": breakers,
                                **upstream}
    return cfg


def get(gw, path: str, rid: str) -> httpx.Response:
    return httpx.get(gw.url + path, headers={"Host": "test.local", "X-Request-Id": rid}, timeout=20)


def test_max_requests_opens_at_its_limit_and_closes_after(gateway_factory):
    g = Gated()
    with g.server as s:
        gw = gateway_factory(config_with([s.address], {"max_requests": 2}))
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(get, gw, f"/h{i}", f"held-{i}") for i in range(2)]
            wait_until(lambda: g.seen == 2, what="two requests held upstream")
            r = get(gw, "/over", "over-1")
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "circuit breaker open: max_requests" and r.json()["request_id"] == "over-1"
            assert g.seen == 2                                  # it never reached the upstream
            assert only_line(gw, "over-1")["flags"] == ["UOA"]
            with admin_client(gw) as admin:
                [state] = admin.get("/upstreams").json()["upstreams"]["echo"]["circuit_breakers_by_worker"].values()
            assert state["active_requests"] == 2 and state["overflows"]["max_requests"] >= 1, state
            g.gate.set()
            assert [f.result().status_code for f in held] == [200, 200]
        assert get(gw, "/after", "after-1").status_code == 200     # closed again


def test_max_connections_refuses_a_request_that_needs_a_new_one(gateway_factory):
    g = Gated()
    with g.server as s:
        gw = gateway_factory(config_with([s.address], {"max_connections": 1}))
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(get, gw, "/h", "held")
            wait_until(lambda: g.seen == 1, what="a request held upstream")
            r = get(gw, "/over", "over-c")
            assert r.status_code == 503 and r.json()["error"] == "circuit breaker open: max_connections"
            assert only_line(gw, "over-c")["flags"] == ["UOC"]
            g.gate.set()
            assert held.result().status_code == 200
        # the connection is idle in the pool now: a request may use it
        assert get(gw, "/after", "after-c").status_code == 200


def test_max_pending_requests_counts_connections_being_established(gateway_factory):
    # a TLS upstream that accepts the TCP connection and never answers the ClientHello: the
    # connection stays in its handshake, the request pending
    stop = threading.Event()
    accepted = []

    def silent(conn):
        accepted.append(1)
        stop.wait(20)

    with RawUpstream(silent, name="silent") as s:
        gw = gateway_factory(config_with([s.address], {"max_pending_requests": 1},
                                         tls={"verify": False}, timeouts={"connect": "10s"}))
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(get, gw, "/p", "pending")
            wait_until(lambda: accepted, what="a connection in its handshake")
            r = get(gw, "/over", "over-p")
            assert r.status_code == 503 and r.json()["error"] == "circuit breaker open: max_pending_requests"
            assert only_line(gw, "over-p")["flags"] == ["UOP"]
            assert len(accepted) == 1
            stop.set()
            assert pending.result().status_code == 502          # the handshake failed when it closed


def test_max_retries_stops_fail_over(gateway_factory):
    down = ClosedPort()
    with EchoServer("a") as a:
        cfg = config_with([down.address, a.address], {"max_retries": 0}, health={"passive": {"enabled": False}})
        gw = gateway_factory(cfg)
        statuses = [get(gw, f"/r{i}", f"retry-{i}").status_code for i in range(4)]
        assert sorted(statuses) == [200, 200, 502, 502], statuses       # round robin: every other one fails
        failed = [i for i, s in enumerate(statuses) if s == 502]
        assert "UOR" in only_line(gw, f"retry-{failed[0]}")["flags"]
    down.close()
