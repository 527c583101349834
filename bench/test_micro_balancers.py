"""Micro-benchmarks of the target pickers at 100 targets (issue 12: under 0.3 µs a pick), in C loops
so the figure is the pick, not a Python call. `ns_per_op` in extra_info."""

from __future__ import annotations

import pytest

from fastgw import _core

C_LOOP_N = 10_000
needs_entry_points = pytest.mark.skipif(not hasattr(_core, "bench_picker"),
                                        reason="core built without FASTGW_TESTING")


def targets(n: int) -> list:
    return [_core.Target(f"10.0.{i // 250}.{i % 250 + 1}", 8080, 8, 60.0, 100) for i in range(n)]


def record(benchmark) -> None:
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["ns_per_op"] = benchmark.stats.stats.median / C_LOOP_N * 1e9


@needs_entry_points
def test_least_request_pick_100(benchmark):
    ts = targets(100)
    for i, t in enumerate(ts):
        t.active = i % 7
    picker = _core.LeastRequestPicker(ts, [1 + i % 3 for i in range(100)], 2)
    benchmark.group = "pickers (100 targets)"
    benchmark(_core.bench_picker, picker, C_LOOP_N)
    record(benchmark)


@pytest.mark.parametrize("kind", ["ring_hash", "maglev"])
@needs_entry_points
def test_hash_lookup_100(benchmark, kind):
    ts = targets(100)
    weights = [1 + i % 3 for i in range(100)]
    if kind == "ring_hash":
        picker = _core.RingHashPicker(ts, weights, "client_ip", None, 1024 * 8)
    else:
        picker = _core.MaglevPicker(ts, weights, "client_ip", None, 65537)
    benchmark.group = "pickers (100 targets)"
    benchmark(_core.bench_hash_lookup, picker, C_LOOP_N)
    record(benchmark)


@needs_entry_points
def test_maglev_table_build_100(benchmark):
    benchmark.group = "pickers (100 targets)"
    benchmark.pedantic(_core.MaglevPicker, args=(targets(100), [1] * 100, "client_ip", None, 65537),
                       rounds=5, iterations=1)
