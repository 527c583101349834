"""Route retry policies, route timeouts, retry budgets and slow start over real sockets: upstreams
that fail the first N requests (5xx, reset, hang past the per-try timeout), httpx as the client,
counts taken at the upstream (docs/retries.md)."""

from __future__ import annotations

import threading
import time

import httpx
from support.admin import admin_client, with_admin
from support.client import wait_until
from support.gateway import simple_config
from support.logs import access_lines, wait_event
from support.upstreams import EchoServer, RawUpstream, wants_close


class FailFirst:
    """Fails the first `n` requests it reads (across connections) by `mode`: a status, `reset`
    (RST after reading the request), or `hang` (no answer until the gateway gives up); serves
    200 `ok` after."""

    def __init__(self, n: int, mode: int | str = 503, name: str = "failfirst"):
        self.n, self.mode = n, mode
        self.lock = threading.Lock()
        self.seen: list = []
        self.server = RawUpstream(self.handle, name=name)

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.seen)

    def handle(self, conn):
        while (req := conn.read_request()) is not None:
            with self.lock:
                self.seen.append(req)
                k = len(self.seen)
            if k <= self.n:
                if self.mode == "reset":
                    conn.reset()
                    return
                if self.mode == "hang":
                    conn.sleep(30)
                    return
                conn.respond(int(self.mode), b"failing", close=True)
                return
            conn.respond(200, b"ok", close=wants_close(req))


def retry_config(address: str, retry: dict | None = None, timeouts: dict | None = None, **upstream) -> dict:
    cfg = simple_config(address)
    if retry is not None:
        cfg["routes"][0]["retry"] = retry
    if timeouts is not None:
        cfg["routes"][0]["timeouts"] = timeouts
    cfg["upstreams"]["echo"].update(upstream)
    return cfg


def client(gw) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers={"Host": "test.local"}, timeout=30)


FAST = {"base": "1ms", "max": "2ms"}


def test_a_5xx_is_retried_until_the_upstream_answers(gateway_factory):
    up = FailFirst(2, 503)
    with up.server as s:
        gw = gateway_factory(retry_config(s.address, {"attempts": 2, "retry_on": ["gateway-error"], "backoff": FAST}))
        with client(gw) as c:
            r = c.get("/x")
        assert (r.status_code, r.text) == (200, "ok")
        assert up.count == 3
        line = wait_until(lambda: next((a for a in access_lines(gw) if a["path"] == "/x"), None))
        assert line["attempts"] == 3, line


def test_retries_used_up_relay_the_last_answer_flagged_urx(gateway_factory):
    up = FailFirst(100, 500)
    with up.server as s:
        gw = gateway_factory(retry_config(s.address, {"attempts": 2, "statuses": [500], "backoff": FAST}))
        with client(gw) as c:
            r = c.get("/x")
        assert (r.status_code, r.text) == (500, "failing")
        assert up.count == 3
        line = wait_until(lambda: next((a for a in access_lines(gw) if a["path"] == "/x"), None))
        assert "URX" in line["flags"] and line["attempts"] == 3, line


def test_a_status_not_named_is_not_retried(gateway_factory):
    up = FailFirst(1, 503)
    with up.server as s:
        gw = gateway_factory(retry_config(s.address, {"attempts": 3, "statuses": [500], "backoff": FAST}))
        with client(gw) as c:
            assert c.get("/x").status_code == 503
        assert up.count == 1


def test_resets_are_retried_and_exhausted_resets_answer_503(gateway_factory):
    up = FailFirst(2, "reset")
    with up.server as s:
        gw = gateway_factory(retry_config(s.address, {"attempts": 2, "backoff": FAST}))
        with client(gw) as c:
            assert c.get("/a").text == "ok"
            assert up.count == 3
            up.n, up.seen = 100, []
            r = c.get("/b")
        assert r.status_code == 503, r.text
        assert up.count == 3


def test_a_hung_attempt_times_out_per_try_and_is_retried(gateway_factory):
    up = FailFirst(1, "hang")
    with up.server as s:
        gw = gateway_factory(retry_config(s.address, {"attempts": 1, "backoff": FAST},
                                          timeouts={"backend_request": "300ms"}))
        with client(gw) as c:
            r = c.get("/x")
        assert (r.status_code, r.text) == (200, "ok")
        assert up.count == 2


def test_the_request_timeout_caps_all_attempts(gateway_factory):
    up = FailFirst(1000, "hang")
    with up.server as s:
        gw = gateway_factory(retry_config(s.address, {"attempts": 10, "backoff": FAST},
                                          timeouts={"backend_request": "200ms", "request": "500ms"}))
        with client(gw) as c:
            r = c.get("/x")
        assert r.status_code == 504, r.text
        assert 2 <= up.count < 11, up.count
        line = wait_until(lambda: next((a for a in access_lines(gw) if a["path"] == "/x"), None))
        assert "UT" in line["flags"], line


def test_a_post_with_a_body_is_not_retried_by_default(gateway_factory):
    up = FailFirst(1, 503)
    with up.server as s:
        gw = gateway_factory(retry_config(s.address, {"attempts": 3, "retry_on": ["5xx"], "backoff": FAST}))
        with client(gw) as c:
            assert c.post("/p", content=b"payload").status_code == 503
            assert up.count == 1
            # a GET on the same route is
            up.n, up.seen = 1, []
            assert c.get("/g").status_code == 200
            assert up.count == 2


def test_a_buffered_body_is_replayed_whole_when_the_route_allows_posts(gateway_factory):
    up = FailFirst(2, "reset")
    body = bytes(range(256)) * 40
    with up.server as s:
        gw = gateway_factory(retry_config(s.address, {"attempts": 2, "non_idempotent": True, "backoff": FAST}))
        with client(gw) as c:
            r = c.post("/p", content=body)
            assert r.status_code == 200
            assert [q.body for q in up.seen] == [body] * 3
            # a body longer than the buffer is never replayed from nothing
            up.n, up.seen = 1, []
            mark = gw.stderr_line_count()
            gw.reload(retry_config(s.address, {"attempts": 2, "non_idempotent": True, "buffer_body_bytes": 1000,
                                               "backoff": FAST}))
            wait_event(gw, "reload_applied", since=mark)
            r = c.post("/p", content=body)
        assert r.status_code == 502
        assert up.count == 1


class Storm:
    """Holds the first `wave` requests until all have arrived, then answers them all 503; holds
    later ones (the retries) until `release` is set, then answers them 503 too."""

    def __init__(self, wave: int):
        self.wave = wave
        self.lock = threading.Lock()
        self.count = 0
        self.first_wave = threading.Event()
        self.release = threading.Event()
        self.server = RawUpstream(self.handle, name="storm")

    def handle(self, conn):
        if conn.read_request() is None:
            return
        with self.lock:
            self.count += 1
            k = self.count
            if k == self.wave:
                self.first_wave.set()
        (self.first_wave if k <= self.wave else self.release).wait(60)
        conn.respond(503, b"down", close=True)


def test_the_budget_limits_retries_under_a_storm(gateway_factory):
    storm = Storm(20)
    with storm.server as s:
        gw = gateway_factory(with_admin(retry_config(s.address, {"attempts": 1, "retry_on": ["5xx"], "backoff": FAST},
                                                     retry_budget={"percent": 20, "min_retries": 3})), workers=1)
        statuses: list[int] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            with client(gw) as c:
                code = c.get(f"/s{i}").status_code
            with lock:
                statuses.append(code)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        # 20 active when they all fail at once: max(3, 20% of 20) = 4 may retry, 16 are answered
        wait_until(lambda: len(statuses) == 16, timeout=30)
        wait_until(lambda: storm.count == 24, timeout=30)
        assert storm.count == 24
        storm.release.set()
        for t in threads:
            t.join(30)
        assert statuses == [503] * 20
        assert storm.count == 24          # without the budget: 40
        lines = wait_until(lambda: [a for a in access_lines(gw) if a["path"].startswith("/s")]
                           if len(access_lines(gw)) >= 20 else None)
        assert sum("UOR" in a["flags"] for a in lines) == 16
        assert sorted(a["attempts"] for a in lines) == [1] * 16 + [2] * 4
        with admin_client(gw) as admin:
            (budget,) = admin.get("/upstreams").json()["upstreams"]["echo"]["retry_budget_by_worker"].values()
        assert {k: budget[k] for k in ("active_requests", "active_retries", "retried", "overflows")} == {
            "active_requests": 0, "active_retries": 0, "retried": 4, "overflows": 16}


def test_slow_start_gives_a_returning_target_a_small_share(gateway_factory):
    flap = FailFirst(1, "reset", name="flap")
    with EchoServer("a") as a, flap.server as f:
        cfg = simple_config(a.address)
        cfg["upstreams"]["echo"] = {
            "targets": [{"address": a.address}, {"address": f.address}],
            "health": {"passive": {"base_ejection": "0.3s"}},
            "slow_start": {"window": "1h", "min_weight_percent": 10},
        }
        gw = gateway_factory(cfg, workers=1)         # health and ramps are per worker
        with client(gw) as c:
            assert [c.get(f"/w{i}").status_code for i in range(4)] == [200] * 4   # the reset fails over
            wait_event(gw, "target_ejected", target=f.address)
            time.sleep(0.4)                  # its ejection is over: the next pick brings it back
            before = flap.count
            assert [c.get(f"/r{i}").status_code for i in range(220)] == [200] * 220
        got = flap.count - before
        # weights 100 : 10 while it ramps (10% for the first 6 minutes of a 1 h window): 20 of 220,
        # where without slow start it would get 110
        assert 10 <= got <= 30, got
