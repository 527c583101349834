"""gRPC end to end over the HTTP/2 downstream: a real grpcio client (h2c prior knowledge on an HTTP
listener, and h2 over TLS with ssl channel credentials) through the gateway to a real grpcio server
(an h2c upstream). Generic handlers carry raw bytes, so no generated code is needed. Plus raw HTTP/2
frames (support.h2raw) where the frame layout is the point: trailers after DATA, trailers-only as one
HEADERS frame, and the gateway's own `grpc-timeout` deadline (grpcio clients enforce their deadline
themselves, so a raw client shows that the gateway does too)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from concurrent import futures

import pytest
from hyperframe.frame import DataFrame, HeadersFrame
from support.certs import CA
from support.gateway import simple_config
from support.h2raw import RawH2
from support.upstreams import RawUpstream

grpc = pytest.importorskip("grpc")

SERVICE = "fastgw.test.Echo"
BIG = 4 * 1024 * 1024
OPTIONS = [("grpc.max_send_message_length", 2 * BIG), ("grpc.max_receive_message_length", 2 * BIG)]


class Upstream:
    """The grpcio server's handlers, and what they saw."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()       # a stream handler saw its call end early
        self.stalled = threading.Event()
        self.time_remaining: list[float | None] = []
        self.metadata: list[tuple] = []
        self.deadlines: list[float | None] = []   # Slow's and Stall's time_remaining()

    def say(self, request: bytes, context) -> bytes:
        md = tuple(context.invocation_metadata())
        self.metadata.append(md)
        self.time_remaining.append(context.time_remaining())
        echo = [(k, v) for k, v in md if k.startswith("x-")]
        context.send_initial_metadata((("x-initial", "yes"), *(("echo-" + k, v) for k, v in echo)))
        context.set_trailing_metadata((("x-served-by", "grpcio"), ("x-trailer-bin", b"\x00\x01\xff")))
        return b"echo:" + request

    def many(self, request: bytes, context):
        for i in range(int(request or b"3")):
            yield b"part-%d" % i

    def total(self, requests, context) -> bytes:
        parts = [r for r in requests]
        return b"%d:%d" % (len(parts), sum(len(p) for p in parts))

    def chat(self, requests, context):
        for r in requests:
            yield b"re:" + r

    def fail(self, request: bytes, context) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "nothing here")

    def big(self, request: bytes, context) -> bytes:
        return bytes(reversed(request[:16])) + b"\x07" * (BIG - 16)

    def slow(self, request: bytes, context) -> bytes:
        """Answers late (after 30 s) unless the call ends first."""
        self.deadlines.append(context.time_remaining())
        deadline = time.monotonic() + 30
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not context.is_active():
            self.cancelled.set()
        return b"late"

    def stall(self, request: bytes, context):
        """One message, then nothing (for 30 s) until the call ends. The end is seen by a callback:
        grpcio stops iterating a generator whose call was cancelled, so code after a `yield` may
        never run."""
        self.deadlines.append(context.time_remaining())
        context.add_callback(self.cancelled.set)     # the call ended: here, only by a cancel or deadline
        yield b"first"
        self.stalled.set()
        deadline = time.monotonic() + 30
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.02)

    def handler(self):
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Say": grpc.unary_unary_rpc_method_handler(self.say),
            "Many": grpc.unary_stream_rpc_method_handler(self.many),
            "Total": grpc.stream_unary_rpc_method_handler(self.total),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            "Big": grpc.unary_unary_rpc_method_handler(self.big),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            "Stall": grpc.unary_stream_rpc_method_handler(self.stall),
        })


@pytest.fixture
def upstream():
    up = Upstream()
    server = grpc.server(futures.ThreadPoolExecutor(16), options=OPTIONS)
    server.add_generic_rpc_handlers((up.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    up.address = f"127.0.0.1:{port}"
    yield up
    server.stop(0)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(address: str, **listener) -> dict:
    cfg = simple_config(address, timeouts={"connect": "2s", "response_header": "30s", "body_idle": "30s"})
    cfg["upstreams"]["echo"]["protocol"] = "h2c"
    cfg["upstreams"]["down"] = {"protocol": "h2c", "targets": [{"address": f"127.0.0.1:{closed_port()}"}],
                                "timeouts": {"connect": "2s"}}
    cfg["routes"] = [
        {"name": "down", "match": {"grpc": {"service": "fastgw.test.Down"}}, "upstream": "down"},
        # `x-deaf: 1`: grpc-timeout is not forwarded, so only the gateway enforces it
        {"name": "deaf", "match": {"grpc": {"service": SERVICE}, "headers": [{"name": "x-deaf", "value": "1"}]},
         "upstream": "echo", "filters": {"request_headers": {"remove": ["grpc-timeout"]}}},
        {"name": "echo", "match": {"grpc": {"service": SERVICE}}, "upstream": "echo"},
    ]
    if listener:
        cfg["listeners"] = [{"address": "127.0.0.1:0", **listener}]
    return cfg


@pytest.fixture
def gw(upstream, gateway_factory):
    return gateway_factory(config(upstream.address), workers=1)


@pytest.fixture
def channel(gw):
    with grpc.insecure_channel(gw.url.removeprefix("http://"), options=OPTIONS) as ch:
        yield ch


def method(channel, kind: str, name: str):
    return getattr(channel, kind)(f"/{SERVICE}/{name}")


# ---- grpcio client over h2c ----------------------------------------------------------------------

def test_unary_with_request_metadata_initial_and_trailing_metadata(channel, upstream):
    reply, call = method(channel, "unary_unary", "Say").with_call(
        b"hi", timeout=10, metadata=(("x-tenant", "acme"), ("x-blob-bin", b"\x00\xfe")))
    assert reply == b"echo:hi"
    assert call.code() == grpc.StatusCode.OK
    initial = dict(call.initial_metadata())
    assert initial["x-initial"] == "yes"
    assert initial["echo-x-tenant"] == "acme"
    assert initial["echo-x-blob-bin"] == b"\x00\xfe"
    trailing = dict(call.trailing_metadata())
    assert trailing["x-served-by"] == "grpcio"
    assert trailing["x-trailer-bin"] == b"\x00\x01\xff"
    seen = dict(upstream.metadata[-1])
    assert seen["x-tenant"] == "acme"
    assert "x-request-id" in seen and "x-forwarded-for" in seen


def test_the_client_deadline_reaches_the_upstream_as_grpc_timeout(channel, upstream):
    method(channel, "unary_unary", "Say")(b"x", timeout=20)
    left = upstream.time_remaining[-1]
    assert left is not None and 0 < left <= 20


def test_server_streaming(channel):
    assert list(method(channel, "unary_stream", "Many")(b"50", timeout=10)) == [b"part-%d" % i for i in range(50)]
    assert list(method(channel, "unary_stream", "Many")(b"0", timeout=10)) == []


def test_client_streaming(channel):
    reply = method(channel, "stream_unary", "Total")(iter([b"a" * 10, b"b" * 20, b"c" * 30_000]), timeout=10)
    assert reply == b"3:30030"


def test_bidirectional_streaming_interleaved(channel):
    """Each reply is read before the next request is sent: the gateway relays both ways at once."""
    outbox: list[bytes] = []
    ready = threading.Condition()

    def requests():
        for i in range(20):
            with ready:
                outbox.append(b"m%d" % i)
                ready.notify_all()
                yield b"m%d" % i
                ready.wait_for(lambda: not outbox, timeout=10)

    replies = []
    for reply in method(channel, "stream_stream", "Chat")(requests(), timeout=20):
        with ready:
            replies.append(reply)
            outbox.clear()
            ready.notify_all()
    assert replies == [b"re:m%d" % i for i in range(20)]


def test_large_messages_both_ways(channel):
    payload = bytes(range(256)) * (BIG // 256)
    reply = method(channel, "unary_unary", "Big")(payload, timeout=30)
    assert len(reply) == BIG
    assert reply[:16] == bytes(reversed(payload[:16])) and reply[16:] == b"\x07" * (BIG - 16)


def test_error_status_from_the_upstream_is_passed_through(channel):
    with pytest.raises(grpc.RpcError) as err:
        method(channel, "unary_unary", "Fail")(b"x", timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "nothing here"


def test_no_route_is_unimplemented(channel):
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/no.Such/Method")(b"x", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_upstream_down_is_unavailable(channel):
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/fastgw.test.Down/Call")(b"x", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_deadline_exceeded_and_the_upstream_call_ends(channel, upstream):
    with pytest.raises(grpc.RpcError) as err:
        method(channel, "unary_unary", "Slow")(b"x", timeout=1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert upstream.cancelled.wait(10), "the upstream call went on after the deadline"


def test_deadline_exceeded_mid_stream(channel, upstream):
    call = method(channel, "unary_stream", "Stall")(b"x", timeout=2)
    assert next(call) == b"first"
    with pytest.raises(grpc.RpcError) as err:
        next(call)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert upstream.cancelled.wait(10)


def test_a_cancelled_stream_is_cancelled_upstream(channel, upstream):
    call = method(channel, "unary_stream", "Stall")(b"x", timeout=60)
    assert next(call) == b"first"
    assert upstream.stalled.wait(10)
    call.cancel()
    assert upstream.cancelled.wait(10), "the upstream did not see the cancel (RST_STREAM)"
    # the connection goes on serving
    assert method(channel, "unary_unary", "Say")(b"after", timeout=10) == b"echo:after"


def test_many_concurrent_calls_on_one_channel(channel):
    say = method(channel, "unary_unary", "Say")
    fs = [say.future(b"%d" % i, timeout=20) for i in range(100)]
    assert [f.result() for f in fs] == [b"echo:%d" % i for i in range(100)]


# ---- grpcio client over TLS (ALPN h2) ------------------------------------------------------------

def test_grpcio_over_tls(upstream, gateway_factory, tmp_path):
    ca = CA(tmp_path / "ca", "gRPC Test CA")
    site = ca.issue("site", ["grpc.example.com"], kind="ecdsa")
    gw = gateway_factory(config(upstream.address, tls={"certificates": [
        {"cert": str(site.cert_path), "key": str(site.key_path)}]}), workers=1)
    creds = grpc.ssl_channel_credentials(root_certificates=ca.cert_path.read_bytes())
    target = f"127.0.0.1:{gw.port}"
    with grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", "grpc.example.com"),
                                                     *OPTIONS]) as ch:
        reply, call = method(ch, "unary_unary", "Say").with_call(b"tls", timeout=10)
        assert reply == b"echo:tls"
        assert dict(call.trailing_metadata())["x-served-by"] == "grpcio"
        assert list(method(ch, "unary_stream", "Many")(b"3", timeout=10)) == [b"part-0", b"part-1", b"part-2"]
        with pytest.raises(grpc.RpcError) as err:
            method(ch, "unary_unary", "Fail")(b"x", timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/no.Such/Method")(b"x", timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    seen = dict(upstream.metadata[-1])
    assert seen["x-forwarded-proto"] == "https"


# ---- the frames ----------------------------------------------------------------------------------

def frame(msg: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def grpc_fields(*extra) -> list[tuple[str, str]]:
    return [("content-type", "application/grpc"), ("te", "trailers"), *extra]


def stream_frames(h2: RawH2, sid: int) -> list:
    return [f for f in h2.frames if getattr(f, "stream_id", None) == sid and isinstance(f, (HeadersFrame, DataFrame))]


def test_trailers_follow_the_data_in_a_headers_frame_with_end_stream(gw):
    with RawH2(gw.port) as h2:
        sid = h2.request("POST", f"/{SERVICE}/Say", headers=grpc_fields(), body=frame(b"raw"))
        st = h2.response(sid)
        frames = stream_frames(h2, sid)
        assert isinstance(frames[0], HeadersFrame) and "END_STREAM" not in frames[0].flags
        assert isinstance(frames[-1], HeadersFrame) and "END_STREAM" in frames[-1].flags
        assert all("END_STREAM" not in f.flags for f in frames[:-1])
        assert bytes(st.data) == frame(b"echo:raw")
        assert st.header("grpc-status") == "0"
        assert st.header("x-served-by") == "grpcio"


@pytest.mark.parametrize("path", [f"/{SERVICE}/Fail", "/no.Such/Method", "/fastgw.test.Down/Call"])
def test_trailers_only_answers_are_one_headers_frame(gw, path):
    """The upstream's trailers-only answer (grpcio's abort) and the gateway's own (no route,
    upstream down) reach the client as one HEADERS frame with END_STREAM: no DATA."""
    with RawH2(gw.port) as h2:
        sid = h2.request("POST", path, headers=grpc_fields(), body=frame(b"x"))
        st = h2.response(sid)
        frames = stream_frames(h2, sid)
        assert len(frames) == 1 and isinstance(frames[0], HeadersFrame), frames
        assert "END_STREAM" in frames[0].flags
        assert st.status == 200 and st.header("content-type").startswith("application/grpc")
        expected = {f"/{SERVICE}/Fail": ("5", "nothing here"), "/no.Such/Method": ("12", None),
                    "/fastgw.test.Down/Call": ("14", None)}[path]
        assert st.header("grpc-status") == expected[0]
        if expected[1]:
            assert st.header("grpc-message") == expected[1]


DEAF = ("x-deaf", "1")


def test_grpc_timeout_is_enforced_by_the_gateway_before_the_head(gw, upstream):
    """A client (and an upstream) that do not enforce the deadline: the gateway answers
    DEADLINE_EXCEEDED and cancels the upstream's call."""
    with RawH2(gw.port, timeout=15) as h2:
        path = f"/{SERVICE}/Slow"
        sid = h2.request("POST", path, headers=grpc_fields(("grpc-timeout", "500m"), DEAF), body=frame(b"x"))
        st = h2.response(sid)
        assert st.reset is None
        assert st.header("grpc-status") == "4"
    assert upstream.cancelled.wait(10)
    assert upstream.deadlines[0] > 3600          # the upstream did not know the deadline (no grpc-timeout)


def test_grpc_timeout_is_enforced_by_the_gateway_mid_stream(gw, upstream):
    """The head and one message went out, then the upstream stalls: trailers with grpc-status 4 end
    the stream when grpc-timeout passes (as Envoy does), and the upstream's stream is reset."""
    with RawH2(gw.port, timeout=15) as h2:
        path = f"/{SERVICE}/Stall"
        sid = h2.request("POST", path, headers=grpc_fields(("grpc-timeout", "1S"), DEAF), body=frame(b"x"))
        st = h2.response(sid)
        assert st.status == 200
        assert bytes(st.data) == frame(b"first")
        assert st.reset is None, "reset instead of DEADLINE_EXCEEDED trailers"
        assert st.header("grpc-status") == "4"
    assert upstream.cancelled.wait(10)
    assert upstream.deadlines[0] > 3600


def test_client_rst_stream_reaches_the_upstream(gw, upstream):
    with RawH2(gw.port, timeout=15) as h2:
        path = f"/{SERVICE}/Stall"
        sid = h2.request("POST", path, headers=grpc_fields(), body=frame(b"x"))
        h2.until(lambda: bytes(h2.streams[sid].data) == frame(b"first"), what="the first message")
        h2.rst(sid)
        assert upstream.cancelled.wait(10)
        sid2 = h2.request("POST", f"/{SERVICE}/Say", headers=grpc_fields(), body=frame(b"y"))
        assert h2.response(sid2).header("grpc-status") == "0"


def test_trailers_only_answer_of_an_http11_upstream_is_one_headers_frame(gateway_factory):
    """An HTTP/1.1 upstream's trailers-only gRPC answer (the status in the head, content-length 0)
    reaches an HTTP/2 client as one HEADERS frame with END_STREAM too."""
    def handler(conn):
        while conn.read_request() is not None:
            conn.respond(200, b"", headers=[("Content-Type", "application/grpc"), ("Grpc-Status", "7"),
                                            ("Grpc-Message", "denied")])

    with RawUpstream(handler, "h1-grpc") as up:
        gw = gateway_factory(simple_config(up.address), workers=1)
        with RawH2(gw.port) as h2:
            path = f"/{SERVICE}/Say"
            sid = h2.request("POST", path, headers=grpc_fields(), body=frame(b"x"))
            st = h2.response(sid)
            frames = stream_frames(h2, sid)
            assert len(frames) == 1 and "END_STREAM" in frames[0].flags, frames
            assert (st.header("grpc-status"), st.header("grpc-message")) == ("7", "denied")
