"""SmoothWeightedRR: nginx's smooth weighted round robin."""

from collections import Counter

import pytest
from fastgw._core import SmoothWeightedRR
from support.core_testing import bench_pick


def picks(b, n):
    return [b.next_index() for _ in range(n)]


def test_nginx_5_1_1_sequence():
    b = SmoothWeightedRR([5, 1, 1])
    assert picks(b, 7) == [0, 0, 1, 0, 2, 0, 0]
    assert picks(b, 7) == [0, 0, 1, 0, 2, 0, 0]  # the cycle repeats


@pytest.mark.parametrize(
    "weights",
    [[1], [1, 1], [2, 1], [5, 1, 1], [3, 7, 2, 9], [1] * 10, [100, 1], [4, 4, 4, 1], [13, 8, 21, 1, 5]],
)
def test_one_cycle_gives_exact_weights(weights):
    b = SmoothWeightedRR(weights)
    total = sum(weights)
    for _ in range(3):  # every cycle, not just the first
        counts = Counter(picks(b, total))
        assert [counts[i] for i in range(len(weights))] == weights


def test_smoothness_no_long_runs():
    # with 2:1 weights the heavy target is never picked three times in a row
    b = SmoothWeightedRR([2, 1])
    seq = picks(b, 30)
    assert all(seq[i : i + 3] != [0, 0, 0] for i in range(len(seq) - 2))


def test_single_target():
    b = SmoothWeightedRR([3])
    assert picks(b, 5) == [0] * 5


def test_empty():
    b = SmoothWeightedRR([])
    assert b.next_index() == -1
    assert len(b) == 0


def test_set_available_skips():
    b = SmoothWeightedRR([5, 1, 1])
    b.set_available(0, False)
    assert not b.is_available(0)
    assert b.n_available == 2
    seq = picks(b, 10)
    assert 0 not in seq
    assert Counter(seq) == {1: 5, 2: 5}
    b.set_available(0, True)
    assert b.n_available == 3
    counts = Counter(picks(b, 700))
    assert counts[0] == pytest.approx(500, abs=5)
    assert counts[1] == pytest.approx(100, abs=5)


def test_set_available_restores_exact_cycle():
    # an unavailable target keeps its current weight, so when it returns the weights again sum to zero
    # and every full cycle is exact again
    b = SmoothWeightedRR([3, 2, 1])
    picks(b, 4)
    b.set_available(1, False)
    picks(b, 5)
    b.set_available(1, True)
    for _ in range(3):
        assert Counter(picks(b, 6)) == {0: 3, 1: 2, 2: 1}


def test_all_unavailable():
    b = SmoothWeightedRR([1, 2])
    b.set_available(0, False)
    b.set_available(1, False)
    b.set_available(1, False)  # idempotent
    assert b.n_available == 0
    assert picks(b, 3) == [-1, -1, -1]
    b.set_available(1, True)
    assert picks(b, 3) == [1, 1, 1]


def test_set_available_bad_index():
    b = SmoothWeightedRR([1])
    with pytest.raises(IndexError):
        b.set_available(1, False)
    with pytest.raises(IndexError):
        b.set_available(-1, False)


@pytest.mark.parametrize("weights", [[0], [-1], [1, 0], [1.5], [True], ["1"]])
def test_bad_weights(weights):
    with pytest.raises(ValueError):
        SmoothWeightedRR(weights)


def test_bench_helper():
    b = SmoothWeightedRR([5, 1, 1])
    assert bench_pick(b, 7) == 0
    assert b.next_index() == 0
