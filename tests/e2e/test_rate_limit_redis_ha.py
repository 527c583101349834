"""Cluster-wide rate limits on highly available Redis (issue 11 section 2): a primary and replica
watched by a real Sentinel, with a failover during traffic (SENTINEL FAILOVER, and the primary
killed first) under fail-open and fail-closed limits; and a real 3-node Redis Cluster, each key's
bucket on the node of its hash-tagged slot."""

from __future__ import annotations

import threading
import time

import pytest
from support.client import RawConn, assert_gateway_error, wait_until
from support.gateway import simple_config, upstream_config
from support.redis_topologies import ClusterSet, SentinelSet, cli

from .ratelimit_accuracy import accuracy, config, run_load

RATE = 100
BURST = 10
LEASE = 0.1


@pytest.fixture
def sentinel_set():
    s = SentinelSet()
    yield s
    s.stop()


@pytest.fixture
def cluster_set():
    c = ClusterSet()
    yield c
    c.stop()


def sentinel_config(echo_address: str, sentinels: SentinelSet, on_error: str) -> dict:
    cfg = config(echo_address, "redis://", RATE, on_error=on_error)
    cfg["routes"][0]["policies"][0]["limits"][0]["burst"] = BURST
    cfg["redis"].update(mode="sentinel", sentinels=[sentinels.sentinel_address], service=sentinels.service,
                        lease=f"{int(LEASE * 1000)}ms")
    return cfg


class Load:
    """Keep-alive connections sending back to back; every answer's (time, status)."""

    def __init__(self, ports: list[int], conns: int = 2) -> None:
        self.events: list[tuple[float, int]] = []
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(p,), daemon=True) for p in ports for _ in range(conns)]
        for t in self.threads:
            t.start()

    def _run(self, port: int) -> None:
        while not self.stop_event.is_set():
            try:
                with RawConn(port) as c:
                    for _ in range(500):
                        if self.stop_event.is_set():
                            return
                        self.events.append((time.monotonic(), c.request("GET", "/").status))
            except (OSError, AssertionError):
                time.sleep(0.01)

    def between(self, a: float, b: float, status: int | None = None) -> int:
        return sum(1 for t, s in list(self.events) if a <= t < b and (status is None or s == status))

    def first_after(self, t0: float, status: int) -> float | None:
        return next((t for t, s in list(self.events) if t >= t0 and s == status), None)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(10)


def _bound(seconds: float) -> float:
    """docs/rate-limiting.md: the gateways admit at most B + R * (w + lease) in a window of w."""
    return BURST + RATE * (seconds + LEASE)


@pytest.mark.slow
def test_sentinel_failover_during_traffic(echo, sentinel_set, gateway_factory):
    """SENTINEL FAILOVER with both servers up: the gateways follow the new primary and the limit
    holds through it (fail closed: nothing past the bound)."""
    gws = [gateway_factory(sentinel_config(echo.address, sentinel_set, "closed")) for _ in range(2)]
    old = sentinel_set.primary_port()
    load = Load([g.port for g in gws])
    try:
        start = time.monotonic()
        time.sleep(2.0)
        assert load.between(start, time.monotonic(), 429) > 0, "load not above the limit"
        new = sentinel_set.failover()
        done = time.monotonic()
        back = wait_until(lambda: load.first_after(done, 429), timeout=20, what="the limit after the failover")
        time.sleep(2.0)
        keys = cli(new, "KEYS", "fastgw:rl:*")
        end = time.monotonic()
    finally:
        load.stop()
    assert new != old
    statuses = {s for _, s in load.events}
    assert statuses <= {200, 429, 503}, statuses
    admitted = load.between(start, end, 200)
    # fail closed never admits past the bound; a failover may lose the replica's last few writes
    # (replication is asynchronous), so allow one more bucket's worth
    assert admitted <= _bound(end - start) + BURST, (admitted, end - start)
    steady = load.between(back + 0.5, end, 200) / (RATE * (end - back - 0.5))
    assert 0.8 <= steady <= 1.1, steady
    assert "fastgw:rl:" in keys, "the buckets live on the new primary"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["open", "closed"])
def test_sentinel_primary_lost_then_failover(echo, sentinel_set, gateway_factory, mode):
    """The primary dies mid-run: the limit fails open or closed while there is none; after SENTINEL
    FAILOVER promotes the replica the gateways find it through the Sentinel and limit again."""
    gws = [gateway_factory(sentinel_config(echo.address, sentinel_set, mode)) for _ in range(2)]
    load = Load([g.port for g in gws])
    try:
        start = time.monotonic()
        time.sleep(1.5)
        assert load.between(start, time.monotonic(), 429) > 0, "load not above the limit"
        sentinel_set.node(sentinel_set.primary_port()).stop()
        killed = time.monotonic()
        time.sleep(1.5)
        outage_end = time.monotonic()
        new = sentinel_set.failover()
        done = time.monotonic()
        back = wait_until(lambda: load.first_after(done, 429), timeout=20, what="the limit after the failover")
        time.sleep(1.5)
        end = time.monotonic()
    finally:
        load.stop()
    # the outage, from a moment after the kill (leases already held may still be spent)
    a, b = killed + LEASE + 0.2, outage_end
    admitted, total = load.between(a, b, 200), load.between(a, b)
    print(f"{mode}: in the outage {admitted} of {total} admitted; after: "
          f"{load.between(back, end, 200)} admitted in {end - back:.1f}s")
    if mode == "open":
        assert admitted > 2 * RATE * (b - a), "failing open lets the load through"
    else:
        assert admitted == 0 and load.between(a, b, 503) > 0
    assert load.between(back + 0.5, end, 200) <= _bound(end - back - 0.5) + BURST
    assert load.between(back + 0.5, end, 429) > 0
    assert gws[0].stderr.count("redis_unavailable") >= 1
    assert new == sentinel_set.primary_port()


def test_sentinel_store_unavailable_answer(echo, sentinel_set, gateway_factory):
    """Fail closed with no primary: the 503 answer names the store."""
    gw = gateway_factory(sentinel_config(echo.address, sentinel_set, "closed"))
    with RawConn(gw.port) as c:
        assert c.request("GET", "/").status == 200
    sentinel_set.node(sentinel_set.primary_port()).stop()
    time.sleep(LEASE * 2)   # the lease held expires

    def refused():
        with RawConn(gw.port) as c:
            r = c.request("GET", "/")
        return r if r.status == 503 else None

    r = wait_until(refused, timeout=10, what="a 503")
    assert assert_gateway_error(r, 503)["error"] == "rate limit store unavailable"


def test_cluster_keys_spread_and_each_limit_holds(echo, cluster_set, gateway_factory):
    """Two gateways on a 3-node Redis Cluster, seeded with one node: each key's limit holds
    exactly, and the buckets spread over the nodes by their hash-tagged slots."""
    cfg = simple_config(upstreams={"echo": upstream_config(echo.address)}, routes=[{
        "name": "c", "match": {"path": {"prefix": "/"}}, "upstream": "echo",
        "policies": [{"type": "rate_limit", "name": "c", "limits": [
            {"rate": 5, "period": "1h", "key": ["header:X-Key"], "scope": "cluster"}]}]}])
    cfg["redis"] = {"url": f"redis://127.0.0.1:{cluster_set.ports[0]}", "lease": "200ms", "timeout": "1s",
                    "mode": "cluster"}
    a, b = gateway_factory(cfg), gateway_factory(cfg)
    keys = [f"k{i}" for i in range(12)]
    admitted = dict.fromkeys(keys, 0)
    deadline = time.monotonic() + 30
    while any(n < 5 for n in admitted.values()) and time.monotonic() < deadline:
        for k in keys:
            for gw in (a, b):
                with RawConn(gw.port) as c:
                    r = c.request("GET", "/", headers={"X-Key": k})
                admitted[k] += r.status == 200
                assert r.status in (200, 429), r.status
        time.sleep(0.05)
    assert admitted == dict.fromkeys(keys, 5)
    time.sleep(0.5)
    for gw in (a, b):
        with RawConn(gw.port) as c:
            assert all(c.request("GET", "/", headers={"X-Key": k}).status == 429 for k in keys)
    found = cluster_set.keys("fastgw:rl:*")
    assert sum(len(v) for v in found.values()) == len(keys), found
    assert sum(1 for v in found.values() if v) >= 2, f"the buckets all on one node: {found}"
    # each key is a hash tag of the limit and the key hash; CLUSTER KEYSLOT agrees with the node
    for port, names in found.items():
        for name in names:
            assert "{" in name and name.endswith("}")
            slot = int(cli(port, "CLUSTER", "KEYSLOT", name))
            assert int(cli(port, "CLUSTER", "COUNTKEYSINSLOT", str(slot))) >= 1


@pytest.mark.slow
def test_cluster_accuracy_three_gateways(echo, cluster_set, gateway_factory):
    rate, seconds = 200, 6.0
    cfg = config(echo.address, f"redis://127.0.0.1:{cluster_set.ports[1]}", rate)
    cfg["redis"]["mode"] = "cluster"
    gws = [gateway_factory(cfg) for _ in range(3)]
    stamps, statuses, start = run_load([g.port for g in gws], seconds)
    figure = accuracy(stamps, start, seconds, rate)
    print(f"cluster: admitted/allowed = {figure:.4f}; statuses {statuses}")
    assert statuses.get(429, 0) > 3 * statuses.get(200, 0), f"load not well above the limit: {statuses}"
    assert 0.95 <= figure <= 1.02, f"admitted/allowed {figure:.4f} ({statuses})"

