"""The `metrics:` section: defaults, and every bad value reported with its file, line and `$.path`."""

from __future__ import annotations

import textwrap

import pytest

from fastgw.config import ConfigError, load_config
from fastgw.config.metrics import DEFAULT_DURATION_BUCKETS

BASE = "listeners: [{address: 127.0.0.1:0}]\n"


def load(tmp_path, text: str):
    path = tmp_path / "gw.yaml"
    path.write_text(BASE + textwrap.dedent(text))
    return path, load_config(path)


def issues(tmp_path, text: str) -> list[tuple[int, str, str]]:
    path = tmp_path / "gw.yaml"
    path.write_text(BASE + textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert all(i.file == str(path) for i in info.value.errors)
    return [(i.line, i.path, i.message) for i in info.value.errors]


def test_defaults(tmp_path):
    _, cfg = load(tmp_path, "")
    assert cfg.metrics.enabled is True
    assert cfg.metrics.status_label == "class"
    assert cfg.metrics.duration_buckets == list(DEFAULT_DURATION_BUCKETS)


def test_given_values(tmp_path):
    _, cfg = load(tmp_path, """
        metrics:
          enabled: false
          status_label: code
          duration_buckets: [0.01, 1, 10]
        """)
    assert (cfg.metrics.enabled, cfg.metrics.status_label, cfg.metrics.duration_buckets) == (False, "code",
                                                                                            [0.01, 1.0, 10.0])


def test_bounds_out_of_order_and_infinite_all_reported(tmp_path):
    found = issues(tmp_path, """
        metrics:
          duration_buckets:
            - 0.1
            - 0.1
            - 0.05
            - .inf
        """)
    assert [(line, path) for line, path, _ in found] == [
        (6, "$.metrics.duration_buckets[1]"), (7, "$.metrics.duration_buckets[2]"),
        (8, "$.metrics.duration_buckets[3]")]
    assert "must increase" in found[0][2] and "0.05 follows 0.1" in found[1][2]
    assert "finite" in found[2][2]


@pytest.mark.parametrize(("text", "path", "words"), [
    ("metrics: {duration_buckets: [0.5, -1]}", "$.metrics.duration_buckets[1]", "> 0"),
    ("metrics: {duration_buckets: []}", "$.metrics.duration_buckets", "length >= 1"),
    ("metrics: {status_label: status}", "$.metrics.status_label", "invalid enum value 'status'"),
    ("metrics: {enabled: 1}", "$.metrics.enabled", "expected `bool`"),
    ("metrics: {buckets: [1]}", "$.metrics.buckets", "unknown field"),
])
def test_bad_values(tmp_path, text, path, words):
    ((line, got_path, message),) = issues(tmp_path, text)
    assert (line, got_path) == (2, path)
    assert words in message, message
