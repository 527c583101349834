"""ActiveHealthState's thresholds and how it combines with passive health in a group."""

from __future__ import annotations

import pytest

from fastgw import _core
from fastgw.config.health import expected_statuses


def group(n: int) -> _core.UpstreamGroup:
    targets = [_core.Target("127.0.0.1", 1000 + i, 0, 1.0, 10) for i in range(n)]
    g = _core.UpstreamGroup("u", targets, [1] * n, 1.0, 1.0, 1.0)
    g.active_health = _core.ActiveHealthState(n, 2, 3)
    return g


def test_thresholds():
    g = group(2)
    assert [g.active_result(0, False, "status 503") for _ in range(3)] == [0, 0, -1]
    assert {g.pick_for_test() for _ in range(6)} == {"127.0.0.1:1001"}
    assert g.active_result(0, True) == 0
    assert g.active_result(0, False, "x") == 0          # a failure resets the passes
    assert [g.active_result(0, True) for _ in range(2)] == [0, 1]
    assert {g.pick_for_test() for _ in range(6)} == {"127.0.0.1:1000", "127.0.0.1:1001"}


def test_every_target_out_leaves_none():
    g = group(1)
    for _ in range(3):
        g.active_result(0, False, "refused")
    assert g.pick_for_test() is None
    assert g.health()[0]["health"] == "unhealthy" and g.health()[0]["active_reason"] == "refused"


def test_carried_over_by_address():
    old = group(2)
    for _ in range(3):
        old.active_result(1, False, "refused")
    new_targets = [old.targets[1], _core.Target("127.0.0.1", 2000, 0, 1.0, 10)]
    new = _core.UpstreamGroup("u", new_targets, [1, 1], 1.0, 1.0, 1.0)
    new.active_health = _core.ActiveHealthState(2, 2, 3)
    new.adopt_health(old)
    assert {new.pick_for_test() for _ in range(6)} == {"127.0.0.1:2000"}


def test_expected_statuses():
    assert expected_statuses([200, "300-302"]) == {200, 300, 301, 302}
    for bad in ("2xx", "299-200", 600, "abc"):
        with pytest.raises(ValueError):
            expected_statuses([bad])
