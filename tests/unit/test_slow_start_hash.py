"""Slow start on the hash balancers (ring hash, Maglev): a ramping target keeps a deterministic share
of the keys that hash to it, the rest go where they went while it was out (pickers.pyx set_share;
docs/retries.md#slow-start). Driven in C through the test entry points, the clock injected."""

from __future__ import annotations

import pytest

from fastgw import _core


def targets(n: int) -> list:
    return [_core.Target(f"10.0.1.{i + 1}", 8080, 8, 60.0, 100) for i in range(n)]


def keys(count: int) -> list[int]:
    return [_core.hash_key(b"user-%d" % i) for i in range(count)]


MAKERS = {
    "ring_hash": lambda t, w: _core.RingHashPicker(t, w, "client_ip", None, 4096),
    "maglev": lambda t, w: _core.MaglevPicker(t, w, "client_ip", None, 65537),
}
KEYS = keys(20000)


@pytest.mark.parametrize("kind", MAKERS)
def test_a_ramping_target_keeps_its_share_of_its_own_keys(kind):
    ts = targets(4)
    p = MAKERS[kind](ts, [100] * 4)
    full = [p.lookup_for_test(h) for h in KEYS]
    own = {h for h, i in zip(KEYS, full, strict=True) if i == 2}
    p.set_available(2, False)
    out = [p.lookup_for_test(h) for h in KEYS]
    p.set_available(2, True)
    kept_before: set[int] = set()
    for pct in (10, 30, 60, 99):
        p.set_share_for_test(2, pct)
        now = [p.lookup_for_test(h) for h in KEYS]
        kept = {h for h, i in zip(KEYS, now, strict=True) if i == 2}
        assert kept <= own                                  # it gets only keys of its own
        assert abs(len(kept) / len(own) - pct / 100) < 0.03, (pct, len(kept) / len(own))
        assert kept_before <= kept                          # a key it kept stays kept as the share grows
        kept_before = kept
        for a, b, c in zip(full, out, now, strict=True):
            if a != 2:
                assert c == a                               # other targets' keys never move
            elif c != 2:
                assert c == b                               # the rest go where they went while it was out
    p.set_share_for_test(2, 100)
    assert [p.lookup_for_test(h) for h in KEYS] == full     # the ramp over: the full table again


@pytest.mark.parametrize("kind", MAKERS)
def test_the_key_share_follows_slow_start_over_the_window(kind):
    ts = targets(3)
    weights = [100] * 3
    g = _core.UpstreamGroup("u", ts, weights, 1.0, 1.0, 1.0)
    g.picker = MAKERS[kind](ts, weights)
    g.slow_start = _core.SlowStart(weights, 100.0, 1.0, 10.0)
    g.slow_start.clock = 0.0
    full = [g.picker.lookup_for_test(h) for h in KEYS]
    own = sum(i == 1 for i in full)
    g.slow_start.begin_for_test(1)
    seen = []
    for now in (0.0, 25.0, 50.0, 90.0, 100.0):
        g.slow_start.clock = now
        g.pick_for_test()                                   # a pick applies the ramp
        seen.append(sum(g.picker.lookup_for_test(h) == 1 for h in KEYS) / own)
    # max(10%, t / window): 10%, 25%, 50%, 90%, then all its keys
    for got, want in zip(seen, (0.10, 0.25, 0.50, 0.90, 1.0), strict=True):
        assert abs(got - want) < 0.03, seen
    assert g.slow_start.n_ramping == 0
    assert [g.picker.lookup_for_test(h) for h in KEYS] == full


def test_two_ramping_targets_and_a_share_of_zero():
    ts = targets(3)
    p = MAKERS["ring_hash"](ts, [100] * 3)
    full = [p.lookup_for_test(h) for h in KEYS]
    p.set_share_for_test(0, 0)
    p.set_share_for_test(1, 50)
    now = [p.lookup_for_test(h) for h in KEYS]
    assert 0 not in now
    own1 = sum(i == 1 for i in full)
    kept1 = sum(a == 1 and c == 1 for a, c in zip(full, now, strict=True))
    assert abs(kept1 / own1 - 0.5) < 0.03
    # target 0's keys walk on to the next target that keeps them: the ramping 1 keeps half of those too
    assert all(c == 2 or (c == 1 and a in (0, 1)) for a, c in zip(full, now, strict=True))
    p.set_share_for_test(1, 0)
    assert set(p.lookup_for_test(h) for h in KEYS) == {2}     # only the target that does not ramp
    p.set_share_for_test(2, 0)
    assert set(p.lookup_for_test(h) for h in KEYS) <= {0, 1, 2}   # all ramping: the table's own choice
