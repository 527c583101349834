"""Tracing end to end: a real gateway, real upstreams that report the headers they got, and a real OTLP
receiver (opentelemetry-proto) that decodes the spans the gateway exports."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from support.client import RawConn, wait_until
from support.gateway import simple_config
from support.otlp import OtlpReceiver
from support.upstreams import ClosedPort, RawUpstream, stale_after_first

SERVER, CLIENT = 2, 3               # Span.SPAN_KIND_SERVER / SPAN_KIND_CLIENT
STATUS_ERROR = 2
TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
FAST = {"connect": "2s", "response_header": "5s", "body_idle": "5s"}


def tracing(endpoint: str, rate: float, **otlp) -> dict:
    return {"enabled": True, "sample_rate": rate,
            "otlp": {"endpoint": endpoint, "flush_interval": "100ms", **otlp}}


def config(upstream: str, endpoint: str, rate: float, **otlp) -> dict:
    cfg = simple_config(upstream, timeouts=FAST)
    cfg["tracing"] = tracing(endpoint, rate, **otlp)
    return cfg


def upstream_headers(resp) -> dict[str, list[str]]:
    """What the echo upstream received, by lowercase name."""
    out: dict[str, list[str]] = {}
    for k, v in json.loads(resp.body)["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def sent_traceparent(resp) -> tuple[str, str, str]:
    got = upstream_headers(resp).get("traceparent")
    assert got is not None and len(got) == 1, f"the upstream must get exactly one traceparent, got {got}"
    m = TRACEPARENT_RE.match(got[0])
    assert m, f"not a valid version-00 traceparent: {got[0]!r}"
    trace_id, span_id, flags = m.groups()
    assert int(trace_id, 16) and int(span_id, 16)
    return trace_id, span_id, flags


def get(port: int, path: str = "/", headers=()):
    with RawConn(port) as c:
        return c.request("GET", path, list(headers))


@pytest.fixture(scope="module")
def receiver():
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def gw0(echo, receiver, module_gateway_factory):
    """sample_rate 0: only callers' sampled traces are exported."""
    return module_gateway_factory(config(echo.address, receiver.endpoint, 0.0))


@pytest.fixture(scope="module")
def gw1(echo, receiver, module_gateway_factory):
    """sample_rate 1: every trace the gateway starts is exported."""
    return module_gateway_factory(config(echo.address, receiver.endpoint, 1.0))


def test_continues_the_callers_trace_with_a_client_span_the_upstream_sees_as_parent(gw0, echo, receiver):
    state = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    resp = get(gw0.port, "/users/7", [("traceparent", f"00-{TRACE}-{PARENT}-01"), ("tracestate", state),
                                      ("User-Agent", "trace-test/1")])
    assert resp.status == 200
    trace_id, upstream_parent, flags = sent_traceparent(resp)
    assert (trace_id, flags) == (TRACE, "01")
    assert upstream_parent != PARENT, "the gateway must put its own span in between"
    assert upstream_headers(resp)["tracestate"] == [state]

    spans = receiver.trace(TRACE, 2)
    server = [s for s in spans if s.kind == SERVER]
    client = [s for s in spans if s.kind == CLIENT]
    assert len(server) == 1 and len(client) == 1, [(s.span.name, s.kind) for s in spans]
    server, client = server[0], client[0]
    assert server.parent_id == PARENT
    assert client.parent_id == server.span_id
    assert client.span_id == upstream_parent, "the upstream's parent must be a span the gateway exported"
    assert server.span.trace_state == state
    assert server.span.start_time_unix_nano <= client.span.start_time_unix_nano
    assert client.span.end_time_unix_nano <= server.span.end_time_unix_nano
    assert server.span.end_time_unix_nano > 1_600_000_000 * 10**9, "unix time, not monotonic"
    sa = server.attrs
    assert sa["http.request.method"] == "GET"
    assert sa["url.path"] == "/users/7"
    assert sa["url.scheme"] == "http"
    assert sa["server.address"] == "test.local"          # the Host the client asked for
    assert sa["server.port"] == gw0.port
    assert sa["client.address"] == "127.0.0.1"
    assert sa["http.response.status_code"] == 200
    assert sa["http.route"] == "/*"
    assert sa["network.protocol.version"] == "1.1"
    assert sa["user_agent.original"] == "trace-test/1"
    assert sa["fastgw.route"] == "all"
    assert sa["fastgw.upstream"] == "echo"
    assert "error.type" not in sa and server.span.status.code != STATUS_ERROR
    assert server.span.name == "GET /*"
    ca = client.attrs
    assert ca["server.address"] == "127.0.0.1" and ca["server.port"] == echo.port
    assert ca["network.peer.address"] == "127.0.0.1"
    assert ca["url.full"] == f"http://{echo.address}/users/7"
    assert ca["http.response.status_code"] == 200
    assert server.resource["service.name"] == "fastgw"
    assert server.content_type == "application/x-protobuf"


def test_a_future_version_is_continued_as_version_00(gw0, receiver):
    trace = "0af7651916cd43dd8448eb211c80319c"
    resp = get(gw0.port, "/future", [("traceparent", f"cc-{trace}-b7ad6b7169203331-01-what-the-future-holds")])
    trace_id, _, flags = sent_traceparent(resp)
    assert (trace_id, flags) == (trace, "01")
    assert receiver.trace(trace, 2)


def test_unsampled_caller_is_not_exported_even_at_rate_1(gw1, receiver):
    unsampled = "11111111111111111111111111111111"
    resp = get(gw1.port, "/unsampled", [("traceparent", f"00-{unsampled}-{PARENT}-00")])
    trace_id, span_id, flags = sent_traceparent(resp)
    assert (trace_id, flags) == (unsampled, "00") and span_id != PARENT
    marker = "22222222222222222222222222222222"
    get(gw1.port, "/marker", [("traceparent", f"00-{marker}-{PARENT}-01")])
    spans = receiver.trace(marker, 2)          # exported in order: the unsampled one would be here by now
    assert spans and not [s for s in receiver.spans if s.trace_id == unsampled]


def test_gateway_started_trace_sampled_at_rate_1(gw1, receiver):
    resp = get(gw1.port, "/fresh")
    trace_id, span_id, flags = sent_traceparent(resp)
    assert flags == "01"
    spans = receiver.trace(trace_id, 2)
    server = next(s for s in spans if s.kind == SERVER)
    client = next(s for s in spans if s.kind == CLIENT)
    assert server.span.parent_span_id == b"", "a trace the gateway starts has a root span"
    assert client.parent_id == server.span_id and client.span_id == span_id


def test_gateway_started_trace_at_rate_0_is_propagated_unsampled_and_not_exported(gw0, receiver):
    resp = get(gw0.port, "/fresh0")
    trace_id, _, flags = sent_traceparent(resp)
    assert flags == "00"
    marker = "33333333333333333333333333333333"
    get(gw0.port, "/marker", [("traceparent", f"00-{marker}-{PARENT}-01")])
    receiver.trace(marker, 2)
    assert not [s for s in receiver.spans if s.trace_id == trace_id]


INVALID_TRACEPARENTS = {
    "uppercase": f"00-{TRACE.upper()}-{PARENT}-01",
    "zero-trace-id": f"00-{'0' * 32}-{PARENT}-01",
    "zero-parent-id": f"00-{TRACE}-{'0' * 16}-01",
    "version-ff": f"ff-{TRACE}-{PARENT}-01",
    "short-trace-id": f"00-{TRACE[:31]}-{PARENT}-01",
    "v00-with-more": f"00-{TRACE}-{PARENT}-01-extra",
    "bad-delimiter": f"00_{TRACE}_{PARENT}_01",
    "non-hex": f"00-{TRACE[:31]}g-{PARENT}-01",
    "future-version-bad-tail": f"cc-{TRACE}-{PARENT}-01.extra",
    "empty": "",
}


@pytest.mark.parametrize("value", INVALID_TRACEPARENTS.values(), ids=INVALID_TRACEPARENTS.keys())
def test_invalid_traceparent_is_replaced_by_a_new_trace(gw1, receiver, value):
    resp = get(gw1.port, "/invalid", [("traceparent", value), ("tracestate", "congo=t61rcWkgMzE")])
    trace_id, span_id, flags = sent_traceparent(resp)
    assert trace_id != TRACE and span_id != PARENT
    assert flags == "01", "a new trace at rate 1 is sampled"
    assert "tracestate" not in upstream_headers(resp), "the old trace's tracestate goes with it"
    server = next(s for s in receiver.trace(trace_id, 2) if s.kind == SERVER)
    assert server.span.parent_span_id == b""


def test_repeated_traceparent_restarts_the_trace(gw1):
    resp = get(gw1.port, "/twice", [("traceparent", f"00-{TRACE}-{PARENT}-01"),
                                    ("traceparent", f"00-{TRACE}-b7ad6b7169203331-01")])
    trace_id, _, _ = sent_traceparent(resp)
    assert trace_id != TRACE


def test_tracestate_fields_are_joined_and_an_oversized_one_dropped(gw0):
    tp = ("traceparent", f"00-{TRACE}-{PARENT}-00")
    resp = get(gw0.port, "/ts", [tp, ("tracestate", "a=1"), ("tracestate", "b=2")])
    assert upstream_headers(resp)["tracestate"] == ["a=1,b=2"]
    many = ",".join(f"k{i}=v" for i in range(33))
    resp = get(gw0.port, "/ts", [tp, ("tracestate", many)])
    assert "tracestate" not in upstream_headers(resp)
    assert sent_traceparent(resp)[0] == TRACE, "a bad tracestate never affects the traceparent"


def test_tracing_off_forwards_trace_headers_untouched(echo, module_gateway_factory):
    gw = module_gateway_factory(simple_config(echo.address, timeouts=FAST))
    value = f"00-{TRACE}-{PARENT}-01"
    resp = get(gw.port, "/", [("traceparent", value), ("tracestate", "congo=x")])
    h = upstream_headers(resp)
    assert h["traceparent"] == [value] and h["tracestate"] == ["congo=x"]


def test_502_is_an_error_span_with_a_failed_client_span(receiver, module_gateway_factory):
    closed = ClosedPort()
    try:
        gw = module_gateway_factory(config(closed.address, receiver.endpoint, 0.0))
        trace = "44444444444444444444444444444444"
        resp = get(gw.port, "/down", [("traceparent", f"00-{trace}-{PARENT}-01")])
        assert resp.status == 502
        spans = receiver.trace(trace, 2)
    finally:
        closed.close()
    server = next(s for s in spans if s.kind == SERVER)
    client = next(s for s in spans if s.kind == CLIENT)
    assert server.span.status.code == STATUS_ERROR
    assert server.attrs["http.response.status_code"] == 502
    assert server.attrs["error.type"] == "502"
    assert "UF" in server.attrs["fastgw.response_flags"]
    assert client.span.status.code == STATUS_ERROR
    assert client.attrs["error.type"] == "connect_failure"
    assert "http.response.status_code" not in client.attrs


def test_a_retried_attempt_is_a_client_span_of_its_own(receiver, module_gateway_factory):
    up = RawUpstream(stale_after_first, "stale")
    try:
        gw = module_gateway_factory(config(up.address, receiver.endpoint, 0.0))
        trace = "55555555555555555555555555555555"
        with RawConn(gw.port) as c:
            assert c.request("GET", "/warm").status == 200       # leaves a pooled connection behind
            r = c.request("GET", "/retried", [("traceparent", f"00-{trace}-{PARENT}-01"),
                                              ("X-Request-Id", "trace-retry-1")])
        assert r.status == 200
        seen = [q for q in up.requests if q.request_id == "trace-retry-1"]
    finally:
        up.close()
    assert len(seen) == 2, "the stale pooled connection, then a fresh one"
    parents = []
    for q in seen:
        m = TRACEPARENT_RE.match(q.headers.get("traceparent"))
        assert m and m.group(1) == trace and m.group(3) == "01"
        parents.append(m.group(2))
    assert parents[0] != parents[1], "each attempt names its own span"
    spans = receiver.trace(trace, 3)
    server = next(s for s in spans if s.kind == SERVER)
    clients = sorted((s for s in spans if s.kind == CLIENT), key=lambda s: s.span.start_time_unix_nano)
    assert [s.span_id for s in clients] == parents
    assert all(s.parent_id == server.span_id for s in clients)
    assert clients[0].span.status.code == STATUS_ERROR and clients[0].attrs["error.type"] == "reset"
    assert clients[1].attrs["http.response.status_code"] == 200 and clients[1].span.status.code != STATUS_ERROR


def _loss_report(gw) -> tuple[int, int]:
    """(failed, dropped) from the exporter's last report line."""
    reports = re.findall(r"trace export to \S+: (\d+) spans failed, (\d+) dropped", gw.stderr)
    assert reports, f"no trace export report in the gateway's log\n{gw.describe()}"
    failed, dropped = reports[-1]
    return int(failed), int(dropped)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_collector_refusing_connections_never_fails_requests(echo, gateway_factory, protocol):
    closed = ClosedPort()
    try:
        gw = gateway_factory(config(echo.address, f"http://{closed.address}/v1/traces", 1.0, batch_size=4,
                                    protocol=protocol))
        for i in range(10):
            assert get(gw.port, f"/r{i}").status == 200
        assert gw.stop() == 0
    finally:
        closed.close()
    failed, dropped = _loss_report(gw)
    assert failed + dropped == 20, "every span (a server and a client span per request) is accounted for"
    assert failed > 0


def test_stalled_collector_drops_beyond_the_queue_and_requests_go_on(echo, gateway_factory):
    with OtlpReceiver(hang=True) as stalled:
        gw = gateway_factory(config(echo.address, stalled.endpoint, 1.0, batch_size=2, max_queue=4,
                                    timeout="5s"))
        assert get(gw.port, "/first").status == 200
        wait_until(lambda: stalled.requests >= 1, what="the first batch in flight")
        for i in range(10):
            assert get(gw.port, f"/r{i}").status == 200
        assert gw.stop() == 0
    failed, dropped = _loss_report(gw)
    assert dropped >= 10, "with the queue full, later requests' spans are dropped"
    assert failed + dropped == 22



def test_spans_still_queued_at_shutdown_are_sent(echo, receiver, gateway_factory):
    gw = gateway_factory(config(echo.address, receiver.endpoint, 0.0, flush_interval="60s", batch_size=512))
    trace = "66666666666666666666666666666666"
    assert get(gw.port, "/last", [("traceparent", f"00-{trace}-{PARENT}-01")]).status == 200
    assert gw.stop() == 0
    assert len(receiver.trace(trace, 2, timeout=1)) == 2, "the drain flushes the queue"


def test_reload_turns_tracing_on(echo, receiver, gateway_factory):
    cfg = simple_config(echo.address, timeouts=FAST)
    gw = gateway_factory(cfg)
    value = f"00-{TRACE}-{PARENT}-01"
    assert upstream_headers(get(gw.port, "/", [("traceparent", value)]))["traceparent"] == [value]
    gw.reload(config(echo.address, receiver.endpoint, 0.0))
    trace = "77777777777777777777777777777777"

    def continued():
        got = upstream_headers(get(gw.port, "/", [("traceparent", f"00-{trace}-{PARENT}-01")]))["traceparent"]
        return got[0].split("-")[2] != PARENT
    wait_until(continued, what="the reloaded config's tracing")
    assert receiver.trace(trace, 2)


def test_grpc_export(echo, gateway_factory):
    from support.otlp import OtlpGrpcReceiver

    with OtlpGrpcReceiver() as grpc_receiver:
        gw = gateway_factory(config(echo.address, grpc_receiver.endpoint, 0.0, protocol="grpc",
                                    headers={"X-Api-Key": "k1"}))
        trace = "88888888888888888888888888888888"
        resp = get(gw.port, "/grpc", [("traceparent", f"00-{trace}-{PARENT}-01")])
        _, upstream_parent, _ = sent_traceparent(resp)
        spans = grpc_receiver.trace(trace, 2)
        assert grpc_receiver.metadata[0].get("x-api-key") == "k1"
    server = next(s for s in spans if s.kind == SERVER)
    client = next(s for s in spans if s.kind == CLIENT)
    assert server.parent_id == PARENT and client.parent_id == server.span_id
    assert client.span_id == upstream_parent


def test_http2_stream_span_says_protocol_2(gw0, receiver):
    trace = "4bf92f3577b34da6a3ce929d0e0e4737"
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-H", f"traceparent: 00-{trace}-{PARENT}-01",
                          f"http://127.0.0.1:{gw0.port}/h2"], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    [server] = [s for s in receiver.trace(trace, 2) if s.kind == SERVER]
    assert server.attrs["network.protocol.version"] == "2"
