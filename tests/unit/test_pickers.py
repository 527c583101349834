"""The target pickers of fastgw/_cy/pickers.pyx on real core Targets: spread, weights, minimal
disruption when a target leaves, and least request under skewed load."""

from __future__ import annotations

from collections import Counter

import pytest

from fastgw import _core


def targets(n: int) -> list:
    return [_core.Target(f"10.0.0.{i + 1}", 8080, 8, 60.0, 100) for i in range(n)]


def keys(count: int) -> list[int]:
    return [_core.hash_key(b"user-%d" % k) for k in range(count)]


@pytest.mark.parametrize("make", [
    lambda t, w: _core.RingHashPicker(t, w, "client_ip", None, 4096),
    lambda t, w: _core.MaglevPicker(t, w, "client_ip", None, 65537),
])
def test_hash_pickers_spread_keys_in_proportion_to_weight(make):
    picker = make(targets(4), [1, 1, 1, 3])
    got = Counter(picker.lookup_for_test(h) for h in keys(60_000))
    assert set(got) == {0, 1, 2, 3}
    share = {i: got[i] / 60_000 for i in got}
    for i in (0, 1, 2):
        assert abs(share[i] - 1 / 6) < 0.04, share
    assert abs(share[3] - 1 / 2) < 0.06, share


def test_maglev_table_is_filled_in_proportion_to_weight():
    picker = _core.MaglevPicker(targets(3), [1, 2, 1], "path", None, 5003)
    table = Counter(picker.table_for_test())
    assert -1 not in table and sum(table.values()) == 5003
    assert abs(table[1] / 5003 - 0.5) < 0.01 and abs(table[0] - table[2]) <= 0.01 * 5003


def test_ring_hash_moves_only_the_keys_of_a_target_that_leaves():
    picker = _core.RingHashPicker(targets(5), [1] * 5, "client_ip", None, 1024)
    hs = keys(20_000)
    before = [picker.lookup_for_test(h) for h in hs]
    picker.set_available(2, False)
    after = [picker.lookup_for_test(h) for h in hs]
    assert 2 not in after
    assert all(old == new for old, new in zip(before, after, strict=True) if old != 2)
    picker.set_available(2, True)
    assert [picker.lookup_for_test(h) for h in hs] == before      # it comes back to its own keys


def test_maglev_disruption_is_minimal_when_a_target_leaves():
    picker = _core.MaglevPicker(targets(10), [1] * 10, "client_ip", None, 65537)
    hs = keys(50_000)
    before = [picker.lookup_for_test(h) for h in hs]
    picker.set_available(4, False)
    after = [picker.lookup_for_test(h) for h in hs]
    assert 4 not in after
    stayed = [old == new for old, new in zip(before, after, strict=True) if old != 4]
    assert sum(stayed) / len(stayed) > 0.97, sum(stayed) / len(stayed)   # Maglev: a few percent move


def test_least_request_prefers_the_less_loaded_target():
    ts = targets(2)
    picker = _core.LeastRequestPicker(ts, [1, 1], 2)
    ts[0].active = 50
    got = Counter(picker.pick_for_test() for _ in range(4000))
    # the two candidates are distinct where they can be: the busy target is never the pick
    assert got == {1: 4000}, got
    ts[0].active = 0
    got = Counter(picker.pick_for_test() for _ in range(4000))
    assert 1600 < got[0] < 2400, got          # a tie: the first candidate, drawn at random


def test_least_request_weights_load_per_unit_of_weight():
    ts = targets(2)
    picker = _core.LeastRequestPicker(ts, [1, 4], 3)
    ts[0].active, ts[1].active = 2, 6        # 2 per unit of weight against 1.5
    got = Counter(picker.pick_for_test() for _ in range(4000))
    assert got[1] > got[0] * 3, got


def test_unavailable_targets_are_never_picked_and_none_left_is_no_pick():
    for picker in (_core.LeastRequestPicker(targets(3), [1, 1, 1], 2),
                   _core.RingHashPicker(targets(3), [1, 1, 1], "path", None, 64),
                   _core.MaglevPicker(targets(3), [1, 1, 1], "path", None, 251)):
        picker.set_available(0, False)
        picker.set_available(2, False)
        assert {picker.pick_for_test() for _ in range(200)} == {1}, picker.kind
        picker.set_available(1, False)
        assert picker.pick_for_test() == -1, picker.kind


def test_the_hash_is_stable_and_spreads_short_keys():
    assert _core.hash_key(b"10.0.0.1") == _core.hash_key(b"10.0.0.1")
    buckets = Counter(_core.hash_key(b"%d" % i) % 16 for i in range(16_000))
    assert min(buckets.values()) > 850, buckets
