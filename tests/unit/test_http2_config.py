"""`limits.http2` (docs/http2.md): bad values are reported at their file, line and `$.path`; good ones
reach the core's H2Settings, with the defaults taken from the HTTP/1.1 limits."""

from __future__ import annotations

import textwrap

import pytest

from fastgw.config import ConfigError, load_config, loads_config
from fastgw.runtime import compile_runtime

BASE = "listeners: [{address: 127.0.0.1:1}]\nupstreams: {u: {targets: [{address: 127.0.0.1:2}]}}\n"


@pytest.mark.parametrize("value,key,needle", [
    ("initial_window_size: 1000", "initial_window_size", ">= 65535"),
    ("initial_window_size: 2147483648", "initial_window_size", "<= 2147483647"),
    ("max_concurrent_streams: 0", "max_concurrent_streams", ">= 1"),
    ("max_header_list_size: 10", "max_header_list_size", ">= 1024"),
    ("ping_timeout: 0s", "ping_timeout", ""),
    ("prior_knowledge: maybe", "prior_knowledge", "expected `bool`"),
    ("streams: 5", "streams", "unknown field"),
])
def test_bad_values_point_at_their_path(tmp_path, value, key, needle):
    path = tmp_path / "gw.yaml"
    path.write_text(BASE + "limits:\n  http2:\n    " + value + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [issue] = info.value.errors
    assert issue.file == str(path) and issue.line == 5
    assert issue.path in (f"$.limits.http2.{key}", "$.limits.http2")
    assert needle in issue.message


def test_settings_reach_the_core():
    cfg = loads_config(BASE + textwrap.dedent("""\
        limits:
          max_header_bytes: 32768
          keepalive_timeout: 7s
          http2: {max_concurrent_streams: 250, initial_window_size: 1048576, ping_interval: 30s}
        """), "yaml")
    h2 = compile_runtime(cfg).http2
    assert (h2.max_concurrent_streams, h2.initial_window_size, h2.max_header_list_size, h2.idle_timeout,
            h2.ping_interval, h2.ping_timeout, h2.prior_knowledge) == (250, 1 << 20, 32768, 7.0, 30.0, 20.0, True)
    assert h2.connection_window_size == min(250 << 20, 2**31 - 1)


def test_defaults():
    h2 = compile_runtime(loads_config(BASE, "yaml")).http2
    assert (h2.max_concurrent_streams, h2.initial_window_size, h2.max_header_list_size, h2.idle_timeout,
            h2.ping_interval) == (100, 65535, 65536, 60.0, 0.0)
