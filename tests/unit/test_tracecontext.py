"""W3C Trace Context sans-socket: the request path's traceparent and tracestate checks with the spec's
examples, and the exchange's trace on the fake loop (tests/support/fakeloop.py): the headers written
upstream, the queue of finished spans and its bound, and what the exporter encodes."""

from __future__ import annotations

import re

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from support import phase_plugins
from support.fakeloop import CONFIG, Harness, ok_head

from fastgw import _core
from fastgw.config import ConfigError, loads_config
from fastgw.tracing import encode_spans

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
parse = _core.parse_traceparent_value


def test_spec_examples_sampled_and_not():
    assert parse(f"00-{TRACE}-{PARENT}-01".encode()) == (TRACE, PARENT, True)
    assert parse(f"00-{TRACE}-{PARENT}-00".encode()) == (TRACE, PARENT, False)
    assert parse(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") == (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", True)


def test_only_the_sampled_bit_of_the_flags_counts():
    assert parse(f"00-{TRACE}-{PARENT}-09".encode())[2] is True
    assert parse(f"00-{TRACE}-{PARENT}-fe".encode())[2] is False


@pytest.mark.parametrize("value", [
    f"01-{TRACE}-{PARENT}-01",                      # exactly the v00 layout
    f"cc-{TRACE}-{PARENT}-01-and-more",             # longer, the flags followed by '-'
])
def test_higher_versions_are_read_by_the_v00_layout(value):
    assert parse(value.encode()) == (TRACE, PARENT, True)


@pytest.mark.parametrize("value", [
    "",
    f"00-{TRACE}-{PARENT}",                          # no flags
    f"00-{TRACE}-{PARENT}-1",                        # short flags
    f"00-{TRACE}-{PARENT}-01-",                      # v00 must be exactly 55
    f"00-{TRACE}-{PARENT}-010",
    f"00-{TRACE.upper()}-{PARENT}-01",               # uppercase hex is not allowed
    f"00-{TRACE}-{PARENT.upper()}-01",
    f"00-{TRACE}-{PARENT}-0A",
    f"0A-{TRACE}-{PARENT}-01",
    f"ff-{TRACE}-{PARENT}-01",                       # version ff is forbidden
    f"00-{'0' * 32}-{PARENT}-01",                    # all-zero ids are invalid
    f"00-{TRACE}-{'0' * 16}-01",
    f"00-{TRACE[:-1]}-{PARENT}-01x",                 # lengths off by one, same total
    f"00-{TRACE}x{PARENT}-01",
    f"00 {TRACE}-{PARENT}-01",
    f"cc-{TRACE}-{PARENT}-01x",                      # a future version still needs '-' after the flags
    f"0-{TRACE}-{PARENT}-01x",
    f"00-{TRACE[:31]}z-{PARENT}-01",
])
def test_invalid_traceparents(value):
    assert parse(value.encode()) is None


@pytest.mark.parametrize("value,ok", [
    ("congo=t61rcWkgMzE", True),
    ("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", True),
    ("a=1 , ,\tb=2", True),                             # OWS and empty members are allowed
    ("tenant@system=v", True),
    ("x/y*z_-=v v", True),
    (",".join(f"k{i}=v" for i in range(32)), True),
    (",".join(f"k{i}=v" for i in range(33)), False),    # at most 32 members
    ("k=" + "v" * 256, True),
    ("k=" + "v" * 200 + "," + "j=" + "w" * 310, False),  # over 512 characters
    ("Congo=x", False),                                 # keys are lowercase
    ("congo", False),
    ("=x", False),
    ("congo=", False),
    ("congo=a=b", False),
    ("congo=caf\xe9", False),
])
def test_tracestate_bounds_and_syntax(value, ok):
    assert _core.tracestate_acceptable(value.encode("latin-1")) is ok


TRACED = CONFIG + """
tracing: {enabled: true, sample_rate: 0}
"""


def _upstream_traceparent(ut) -> tuple[str, str, str]:
    lines = re.findall(rb"(?im)^traceparent: (.*)\r$", bytes(ut.written))
    assert len(lines) == 1, bytes(ut.written)
    m = re.match(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$", lines[0].decode())
    assert m, lines[0]
    return m.groups()


def _exchange(h: Harness, index: int, extra: bytes = b"") -> None:
    h.client.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n" + extra + b"\r\n")
    up, ut = h.upstream(index) if index >= 0 else (None, None)
    if up is not None:
        up.data_received(ok_head(2) + b"ok")
    return ut


def test_sampled_exchange_is_queued_with_its_client_span():
    h = Harness(TRACED)
    ut = _exchange(h, 0, f"traceparent: 00-{TRACE}-{PARENT}-01\r\nTraceState: congo=x\r\n".encode())
    trace_id, span_id, flags = _upstream_traceparent(ut)
    assert (trace_id, flags) == (TRACE, "01") and span_id != PARENT
    assert b"tracestate: congo=x\r\n" in bytes(ut.written)
    assert bytes(ut.written).lower().count(b"tracestate:") == 1, "the caller's field is replaced, not doubled"
    assert h.worker.traces.pending_spans == 2
    req = ExportTraceServiceRequest.FromString(
        encode_spans(h.worker.traces.take(100), h.worker.traces.clock_offset, "svc"))
    spans = req.resource_spans[0].scope_spans[0].spans
    server, client = spans
    assert server.parent_span_id.hex() == PARENT and server.trace_id.hex() == TRACE
    assert client.parent_span_id == server.span_id and client.span_id.hex() == span_id
    assert server.trace_state == "congo=x"


def test_unsampled_exchange_costs_no_queue_entry_but_still_propagates():
    h = Harness(TRACED)
    ut = _exchange(h, 0)
    _, _, flags = _upstream_traceparent(ut)
    assert flags == "00"
    assert h.worker.traces.pending_spans == 0


def test_the_log_phase_sees_the_trace_id():
    """Exchange.trace_id_hex (what the access log reads) is there in the log phase, for a refused
    head too; with tracing off, the incoming traceparent's (forwarded untouched)."""
    h = Harness(TRACED.replace("routes:", "policies: [{type: plugin, module: 'support.phase_plugins:MemLog'}]\nroutes:"))
    phase_plugins.ENTRIES.clear()
    _exchange(h, 0, f"traceparent: 00-{TRACE}-{PARENT}-00\r\n".encode())
    h.client.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
    continued, refused = phase_plugins.ENTRIES
    assert continued.trace_id == TRACE
    assert refused.status == 400 and re.fullmatch(r"[0-9a-f]{32}", refused.trace_id) and refused.trace_id != TRACE
    h = Harness(CONFIG.replace("routes:", "policies: [{type: plugin, module: 'support.phase_plugins:MemLog'}]\nroutes:"))
    phase_plugins.ENTRIES.clear()
    _exchange(h, 0, f"traceparent: 00-{TRACE}-{PARENT}-01\r\n".encode())
    assert phase_plugins.ENTRIES[0].trace_id == TRACE


def test_queue_bound_drops_and_counts():
    h = Harness(TRACED)
    h.worker.traces.max_queue = 4     # what the exporter sets from otlp.max_queue: two exchanges fit
    for i in range(5):
        _exchange(h, 0 if i == 0 else -1, f"traceparent: 00-{TRACE}-{PARENT}-01\r\n".encode())
        if i == 0:
            up = h.loop.connects[0][0]
        else:
            up.data_received(ok_head(2) + b"ok")      # later requests reuse the pooled connection
    assert h.worker.traces.pending_spans == 4
    assert h.worker.spans_dropped == 6
    assert len(h.worker.traces.take(2)) == 1 and h.worker.traces.pending_spans == 2


def test_tracing_off_leaves_trace_headers_alone_and_queues_nothing():
    h = Harness()
    ut = _exchange(h, 0, f"traceparent: 00-{TRACE}-{PARENT}-01\r\n".encode())
    assert f"traceparent: 00-{TRACE}-{PARENT}-01\r\n".encode() in bytes(ut.written)
    assert h.worker.runtime.tracing is None
    assert h.worker.traces.pending_spans == 0 and h.worker.spans_dropped == 0


@pytest.mark.parametrize("section,path", [
    ("{sample_rate: 1.5}", "$.tracing.sample_rate"),
    ("{sample_rate: -0.1}", "$.tracing.sample_rate"),
    ("{otlp: {endpoint: 'ftp://collector:4318/v1/traces'}}", "$.tracing.otlp.endpoint"),
    ("{otlp: {endpoint: 'http://:4318/v1/traces'}}", "$.tracing.otlp.endpoint"),
    ("{otlp: {endpoint: 'http://collector:99999/v1/traces'}}", "$.tracing.otlp.endpoint"),
    ("{otlp: {protocol: http/json}}", "$.tracing.otlp.protocol"),
    ("{otlp: {batch_size: 100, max_queue: 10}}", "$.tracing.otlp.batch_size"),
])
def test_config_errors_name_the_path(section, path):
    with pytest.raises(ConfigError) as err:
        loads_config(CONFIG + f"tracing: {section}\n", "yaml")
    assert path in str(err.value)
    assert "<config>:" in str(err.value)
