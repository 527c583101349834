"""`protocol` and `http2` of an upstream (docs/upstreams.md): defaults, what the compile step makes of
them, errors at their `$.path`; the gRPC status table and `grpc-timeout` values (grpc.pyx)."""

from __future__ import annotations

import textwrap

import pytest

from fastgw import _core
from fastgw.config import ConfigError, load_config
from fastgw.runtime import compile_runtime

BASE = """\
listeners: [{address: "127.0.0.1:0"}]
routes: [{name: r, match: {path: {prefix: /}}, upstream: u}]
upstreams:
  u:
    targets: [{address: "127.0.0.1:9"}]
"""


def load(tmp_path, extra: str):
    p = tmp_path / "gw.yaml"
    p.write_text(BASE + textwrap.indent(textwrap.dedent(extra), "    "))
    return p


def issue(tmp_path, extra: str):
    with pytest.raises(ConfigError) as info:
        load_config(load(tmp_path, extra))
    [only] = info.value.errors
    return only


def test_defaults_are_http1_and_100_streams(tmp_path):
    cfg = load_config(load(tmp_path, ""))
    assert cfg.upstreams["u"].protocol == "http1"
    assert cfg.upstreams["u"].http2.max_concurrent_streams == 100
    [t] = compile_runtime(cfg).groups["u"].targets
    assert t.h2_mode == 0


def test_h2c_targets_carry_the_mode_and_the_stream_cap(tmp_path):
    cfg = load_config(load(tmp_path, "protocol: h2c\nhttp2: {max_concurrent_streams: 7}\n"))
    [t] = compile_runtime(cfg).groups["u"].targets
    assert (t.h2_mode, t.h2_max_streams) == (1, 7)
    assert t.h2_connections == (0, 0)


def test_a_protocol_change_is_a_new_pool(tmp_path):
    old = compile_runtime(load_config(load(tmp_path, "")))
    new = compile_runtime(load_config(load(tmp_path, "protocol: h2c\n")), old)
    assert new.groups["u"].targets[0] is not old.groups["u"].targets[0]
    assert new.groups["u"].targets[0].h2_mode == 1


def test_h2_needs_tls(tmp_path):
    i = issue(tmp_path, "protocol: h2\n")
    assert (i.path, i.line) == ("$.upstreams.u.protocol", 6)
    assert "needs 'tls'" in i.message


def test_h2c_with_tls_is_refused(tmp_path):
    i = issue(tmp_path, "protocol: h2c\ntls: {verify: false}\n")
    assert i.path == "$.upstreams.u.protocol" and "use protocol 'h2'" in i.message


def test_h2_with_alpn_without_h2_is_refused(tmp_path):
    i = issue(tmp_path, "protocol: h2\ntls: {verify: false, alpn: [http/1.1]}\n")
    assert i.path == "$.upstreams.u.tls.alpn"


def test_unknown_protocol_and_bad_cap(tmp_path):
    assert issue(tmp_path, "protocol: h3\n").path == "$.upstreams.u.protocol"
    assert issue(tmp_path, "protocol: h2c\nhttp2: {max_concurrent_streams: 0}\n").path == \
        "$.upstreams.u.http2.max_concurrent_streams"


@pytest.mark.parametrize("http,grpc", [
    (404, 12), (502, 14), (503, 14), (504, 4), (408, 4), (429, 8), (413, 8), (401, 16), (403, 7),
    (400, 13), (500, 2),
])
def test_grpc_status_of_gateway_answers(http, grpc):
    assert _core.grpc_status_of_http(http) == grpc


@pytest.mark.parametrize("value,seconds", [
    (b"1S", 1.0), (b"200m", 0.2), (b"2M", 120.0), (b"1H", 3600.0), (b"500u", 0.0005), (b"99999999n", 0.099999999),
    (b"", 0.0), (b"S", 0.0), (b"123456789S", 0.0), (b"1x", 0.0), (b"-1S", 0.0), (b"1.5S", 0.0),
])
def test_grpc_timeout_values(value, seconds):
    assert _core.grpc_timeout_of(value) == pytest.approx(seconds)
