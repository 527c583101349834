"""fastgw.metrics.render: the Prometheus text exposition of several workers' snapshots (sums,
histograms whose workers disagree on bounds mid-reload, escaping, the supervisor's own series).
Real workers' snapshots and promtool are in tests/e2e/test_metrics.py."""

from __future__ import annotations

import msgspec

from fastgw.metrics import counter, gauge, histogram, register, render, worker_snapshot


def snap(*families) -> dict:
    return {"pid": 1, "families": list(families)}


def lines_of(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name) and not line.startswith("#")]


def test_counters_and_gauges_sum_over_workers():
    a = snap(counter("fastgw_x_total", "x", ["route"], [[["r1"], 2], [["r2"], 1]]),
             gauge("fastgw_open", "o", [], [[[], 3]]))
    b = snap(counter("fastgw_x_total", "x", ["route"], [[["r1"], 5]]), gauge("fastgw_open", "o", [], [[[], 4]]))
    text = render([a, b], {})
    assert lines_of(text, "fastgw_x_total") == ['fastgw_x_total{route="r1"} 7', 'fastgw_x_total{route="r2"} 1']
    assert lines_of(text, "fastgw_open") == ["fastgw_open 7"]
    assert text.count("# TYPE fastgw_x_total counter") == 1
    assert text.endswith("\n")


def test_histograms_sum_bucket_by_bucket():
    a = snap(histogram("fastgw_d_seconds", "d", ["route"], [0.1, 1.0], [[["r"], [1, 3, 4], 2.5]]))
    b = snap(histogram("fastgw_d_seconds", "d", ["route"], [0.1, 1.0], [[["r"], [0, 1, 2], 1.5]]))
    assert lines_of(render([a, b], {}), "fastgw_d_seconds") == [
        'fastgw_d_seconds_bucket{route="r",le="0.1"} 1',
        'fastgw_d_seconds_bucket{route="r",le="1.0"} 4',
        'fastgw_d_seconds_bucket{route="r",le="+Inf"} 6',
        'fastgw_d_seconds_sum{route="r"} 4.0',
        'fastgw_d_seconds_count{route="r"} 6',
    ]


def test_histograms_with_different_bounds_keep_the_common_ones():
    # one worker reloaded new buckets, the other not yet: cumulative counts at shared bounds still add up
    old = snap(histogram("fastgw_d_seconds", "d", [], [0.1, 0.5, 1.0], [[[], [1, 2, 3, 3], 1.0]]))
    new = snap(histogram("fastgw_d_seconds", "d", [], [0.5, 2.0], [[[], [4, 5, 6], 3.0]]))
    for order in ([old, new], [new, old]):
        assert lines_of(render(order, {}), "fastgw_d_seconds") == [
            'fastgw_d_seconds_bucket{le="0.5"} 6',
            'fastgw_d_seconds_bucket{le="+Inf"} 9',
            'fastgw_d_seconds_sum 4.0',
            'fastgw_d_seconds_count 9',
        ]


def test_label_values_and_help_are_escaped():
    text = render([snap(counter("fastgw_x_total", 'a \\ b\nc "q"', ["plugin"], [[['say "hi"\\\n'], 1]]))], {})
    assert '# HELP fastgw_x_total a \\\\ b\\nc "q"' in text
    assert 'fastgw_x_total{plugin="say \\"hi\\"\\\\\\n"} 1' in text


def test_process_series():
    text = render([], {"version": "1.2.3", "workers": 4, "reloads_ok": 3, "reloads_failed": 1,
                       "last_reload_timestamp": 1_700_000_000.5, "start_timestamp": 1_699_999_000.0})
    assert lines_of(text, "fastgw_build_info") == ['fastgw_build_info{version="1.2.3"} 1']
    assert lines_of(text, "fastgw_workers") == ["fastgw_workers 4"]
    assert lines_of(text, "fastgw_config_reloads_total") == [
        'fastgw_config_reloads_total{result="failed"} 1', 'fastgw_config_reloads_total{result="ok"} 3']
    assert lines_of(text, "fastgw_config_last_reload_success_timestamp_seconds") == [
        "fastgw_config_last_reload_success_timestamp_seconds 1700000000.5"]
    assert lines_of(text, "fastgw_start_time_seconds") == ["fastgw_start_time_seconds 1699999000.0"]
    assert render([], {}) == "\n", "keys the supervisor does not give are left out"


class _NoRuntimeWorker:
    """What worker_snapshot needs of a worker without counters: no runtime metrics, no plugins, no
    connections; the dropped-line counters the logs and tracing branches add."""

    class runtime:
        metrics = None

    access_log_dropped = 7
    spans_dropped = 2

    def plugin_stats(self):
        return {}


def test_snapshot_is_plain_data_and_collectors_can_be_added(monkeypatch):
    from fastgw import metrics

    monkeypatch.setattr(metrics, "_collectors", [metrics._dropped_families])
    register(lambda worker: [gauge("fastgw_extra", "e", [], [[[], 1]])])
    snapshot = worker_snapshot(_NoRuntimeWorker())
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(snapshot)) == snapshot
    assert msgspec.json.decode(msgspec.json.encode(snapshot)) == snapshot
    text = render([snapshot, snapshot], {})
    assert lines_of(text, "fastgw_access_log_dropped_total") == ["fastgw_access_log_dropped_total 14"]
    assert lines_of(text, "fastgw_tracing_spans_dropped_total") == ["fastgw_tracing_spans_dropped_total 4"]
    assert lines_of(text, "fastgw_extra") == ["fastgw_extra 2"]
