"""`logging`, `access_log` and a route's `access_log`: defaults, and errors with file, line and `$.path`."""

from __future__ import annotations

import textwrap

import pytest

from fastgw.config import ConfigError, load_config

BASE = """\
listeners: [{address: 127.0.0.1:8080}]
upstreams: {a: {targets: [{address: 127.0.0.1:9001}]}}
"""


def load(tmp_path, text: str):
    path = tmp_path / "gw.yaml"
    path.write_text(BASE + textwrap.dedent(text))
    return load_config(path), path


def issues(tmp_path, text: str):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return [(i.line, i.path, i.message) for i in info.value.errors]


def test_defaults_access_log_on_to_stdout_in_json(tmp_path):
    cfg, _ = load(tmp_path, "routes: [{name: r, upstream: a, access_log: false}]\n")
    assert (cfg.access_log.enabled, cfg.access_log.path, cfg.access_log.format, cfg.access_log.sample) == (
        True, "stdout", None, 1.0)
    assert (cfg.logging.format, cfg.logging.level, cfg.logging.events) == ("json", "info", "stderr")
    assert cfg.access_log.flush_interval == 1.0 and cfg.routes[0].access_log is False


def test_route_access_log_object(tmp_path):
    cfg, _ = load(tmp_path, "routes: [{name: r, upstream: a, access_log: {sample: 0.25}}]\n")
    assert cfg.routes[0].access_log.sample == 0.25 and cfg.routes[0].access_log.enabled


def test_unknown_template_field_and_stray_redact_params(tmp_path):
    got = issues(tmp_path, """\
        access_log:
          template: "$time $nope"
          redact_params: [token]
        """)
    assert [(line, path) for line, path, _ in got] == [(4, "$.access_log.template"), (5, "$.access_log.redact_params")]
    assert got[0][2].startswith("unknown access log field $nope (known: time, request_id")
    assert got[1][2] == "only used with `query: redact`"


@pytest.mark.parametrize("text, line, path, message", [
    ("routes: [{name: r, upstream: a, access_log: {sample: 2}}]\n", 3, "$.routes[0].access_log.sample",
     "expected `float` <= 1.0"),
    ("access_log: {query: hide}\n", 3, "$.access_log.query", "invalid enum value 'hide'"),
    ("logging: {format: xml}\n", 3, "$.logging.format", "invalid enum value 'xml'"),
    ("access_log: {flush_interval: 0s}\n", 3, "$.access_log.flush_interval", "duration must be greater than zero"),
])
def test_bad_values(tmp_path, text, line, path, message):
    ((got_line, got_path, got_message),) = issues(tmp_path, text)
    assert (got_line, got_path) == (line, path)
    assert message in got_message, got_message
