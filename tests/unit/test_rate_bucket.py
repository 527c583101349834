"""The rate limiter's C table with an injected clock (ratelimit.pyx): GCRA as a token bucket,
lazy refill, cost, in-flight counts, and the bound on memory under key rotation."""

from __future__ import annotations

import os

import pytest

from fastgw import _core

S = 1_000_000_000
T0 = 1_000 * S   # any instant on the monotonic clock


def table(capacity=1024):
    return _core.RateTable(capacity, seed=7)


def test_burst_then_refused_then_lazy_refill():
    t = table()
    got = [t.take(b"k", T0, 10, 1.0, 5) for _ in range(6)]
    assert [a for a, _, _ in got] == [True] * 5 + [False]
    assert [r for _, r, _ in got[:5]] == [4, 3, 2, 1, 0]
    assert got[4][2] == S // 2                   # 5 tokens of 100ms each: full again in 500ms
    assert got[5][2] == S // 10                  # refused: one token comes back in 100ms
    assert t.take(b"k", T0 + S // 10 - 1, 10, 1.0, 5)[0] is False
    assert t.take(b"k", T0 + S // 10, 10, 1.0, 5)[:2] == (True, 0)
    # idle long enough, the bucket is full again and holds no more than `burst`
    assert t.take(b"k", T0 + 60 * S, 10, 1.0, 5)[1] == 4


def test_steady_rate_is_the_rate():
    t = table()
    admitted = sum(t.take(b"k", T0 + i * (S // 100), 10, 1.0, 1)[0] for i in range(1000))   # 100/s for 10s
    assert admitted == 100          # at 0, 100ms, ... 9.9s: 10/s over 10s, whatever the offered load


def test_cost():
    t = table()
    assert [t.take(b"k", T0, 10, 1.0, 10, cost=4)[0] for _ in range(3)] == [True, True, False]
    assert t.take(b"k", T0, 10, 1.0, 10, cost=2)[0] is True     # what is left still serves a cheaper request


def test_keys_are_apart():
    t = table()
    assert t.take(b"a", T0, 1, 1.0, 1)[0] and t.take(b"b", T0, 1, 1.0, 1)[0]
    assert not t.take(b"a", T0, 1, 1.0, 1)[0]


def test_in_flight():
    t = table()
    assert [t.enter(b"c", T0, 2)[0] for _ in range(3)] == [True, True, False]
    t.leave(b"c", T0)
    assert t.enter(b"c", T0, 2) == (True, 2)


def test_key_rotation_cannot_grow_memory():
    """A client sending a new key with every request: the table's memory is fixed at creation
    (16 bytes a slot), old keys are evicted (the ones closest to full first), and a key still in
    use keeps being limited."""
    t = table(1024)
    size = t.memory_bytes
    assert size == 64 + 16 * 1024
    rss_before = _rss_kib()
    for i in range(200_000):
        t.take(b"rot-%d" % i, T0, 1, 3600.0, 1)
        if i % 64 == 0:
            t.take(b"steady", T0, 1, 3600.0, 1)   # a real client, refused after its first request
    assert t.memory_bytes == size
    assert t.live_keys(T0) <= 1024
    assert t.evictions > 100_000
    assert t.take(b"steady", T0, 1, 3600.0, 1)[0] is False
    assert _rss_kib() - rss_before < 4096


def test_idle_keys_free_their_slots():
    t = table(8)
    for i in range(8):
        assert t.take(b"x%d" % i, T0, 10, 1.0, 1)[0]
    assert t.live_keys(T0) == 8
    assert t.live_keys(T0 + S) == 0          # each bucket is full again: nothing to remember
    for i in range(8):
        t.take(b"y%d" % i, T0 + S, 10, 1.0, 1)
    assert t.evictions == 0                  # the idle slots were reused, nothing live evicted


def test_in_flight_slots_are_never_evicted():
    t = table(8)
    for i in range(8):
        assert t.enter(b"c%d" % i, T0, 1)[0]
    before = t.misses
    assert t.take(b"other", T0, 1, 1.0, 1) == (True, -1, 0)     # no slot: let through, counted
    assert t.misses == before + 1
    assert t.enter(b"c0", T0, 1)[0] is False


def test_capacity_must_be_a_power_of_two():
    with pytest.raises(ValueError):
        _core.RateTable(1000)


def test_shared_across_fork():
    t = table()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if all(t.take(b"f", T0, 1, 3600.0, 3)[0] for _ in range(3)) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert t.take(b"f", T0, 1, 3600.0, 3)[0] is False     # the child took all three


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_in_flight_ledger_gives_back_a_dead_workers_slots():
    t = _core.RateTable(1024, seed=7, workers=2)
    pid = os.fork()
    if pid == 0:     # worker 1 takes all three slots and dies without leaving
        t.set_worker(1)
        os._exit(0 if all(t.enter(b"c", T0, 3)[0] for _ in range(3)) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert t.enter(b"c", T0, 3)[0] is False          # held by a process that is gone
    assert t.release_worker(0) == 0                  # another worker's row: nothing
    assert t.release_worker(1) == 3
    assert t.release_worker(1) == 0                  # once
    assert t.enter(b"c", T0, 3) == (True, 1)


def test_ledger_follows_enter_and_leave():
    t = _core.RateTable(1024, seed=7, workers=1)
    t.set_worker(0)
    assert t.enter(b"d", T0, 5)[0] and t.enter(b"d", T0, 5)[0]
    t.leave(b"d", T0)
    assert t.release_worker(0) == 1                  # one still held
    assert t.enter(b"d", T0, 1) == (True, 1)         # the count is back to 0 before this one
