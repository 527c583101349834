"""gRPC through the gateway to a real grpcio server (an h2c upstream): calls framed by hand over
HTTP/1.1 with `TE: trailers` (the response's grpc-status arrives in the chunked trailer section),
and a grpcio client end to end, which needs the HTTP/2 downstream (skipped until the gateway
serves h2c)."""

from __future__ import annotations

import socket
import struct
from concurrent import futures

import pytest
from support.gateway import simple_config

grpc = pytest.importorskip("grpc")

SERVICE = "fastgw.test.Echo"


def _say(request: bytes, context) -> bytes:
    context.set_trailing_metadata((("x-served-by", "grpcio"),))
    return b"echo:" + request


def _many(request: bytes, context):
    for i in range(int(request or b"3")):
        yield b"part-%d" % i


def _fail(request: bytes, context) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "nothing here")


@pytest.fixture
def grpc_server():
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Say": grpc.unary_unary_rpc_method_handler(_say),
        "Many": grpc.unary_stream_rpc_method_handler(_many),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
    }),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def grpc_gateway(gateway_factory, address: str):
    cfg = simple_config(address)
    cfg["upstreams"]["echo"]["protocol"] = "h2c"
    return gateway_factory(cfg, workers=1)


def frame(msg: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def unframe(data: bytes) -> list[bytes]:
    out = []
    while data:
        n = struct.unpack(">I", data[1:5])[0]
        out.append(data[5:5 + n])
        data = data[5 + n:]
    return out


def dechunk(body: bytes) -> tuple[bytes, dict]:
    """(data, trailers) of a chunked body."""
    data = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        n = int(size_line, 16)
        if n == 0:
            break
        data += body[:n]
        body = body[n + 2:]
    trailers = {}
    for line in body.split(b"\r\n"):
        if line:
            k, _, v = line.partition(b":")
            trailers[k.strip().lower().decode()] = v.strip().decode()
    return data, trailers


def call_http1(gw, method: str, msg: bytes) -> tuple[dict, list[bytes], dict]:
    """A gRPC call over HTTP/1.1: (response fields, messages, trailers)."""
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    body = frame(msg)
    req = (f"POST /{SERVICE}/{method} HTTP/1.1\r\nHost: test.local\r\nContent-Type: application/grpc\r\n"
           f"TE: trailers\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(req)
        out = b""
        while piece := s.recv(65536):
            out += piece
    head, _, rest = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    fields[":status"] = lines[0].split()[1]
    if fields.get("transfer-encoding") == "chunked":
        data, trailers = dechunk(rest)
    else:
        data, trailers = rest, {}
    return fields, unframe(data), trailers


def test_a_unary_call_reaches_grpcio_and_its_trailers_come_back(gateway_factory, grpc_server):
    gw = grpc_gateway(gateway_factory, grpc_server)
    fields, messages, trailers = call_http1(gw, "Say", b"hello")
    assert fields[":status"] == "200"
    assert fields["content-type"].startswith("application/grpc")
    assert messages == [b"echo:hello"]
    assert trailers["grpc-status"] == "0", trailers
    assert trailers["x-served-by"] == "grpcio"


def test_a_server_streaming_call_relays_every_message(gateway_factory, grpc_server):
    gw = grpc_gateway(gateway_factory, grpc_server)
    fields, messages, trailers = call_http1(gw, "Many", b"5")
    assert messages == [b"part-%d" % i for i in range(5)]
    assert trailers["grpc-status"] == "0"


def test_an_error_status_from_grpcio_reaches_the_client(gateway_factory, grpc_server):
    gw = grpc_gateway(gateway_factory, grpc_server)
    fields, messages, trailers = call_http1(gw, "Fail", b"x")
    status = trailers.get("grpc-status", fields.get("grpc-status"))   # trailers-only: in the head
    message = trailers.get("grpc-message", fields.get("grpc-message"))
    assert (status, message) == ("5", "nothing here")
    assert messages == []


def serves_h2c(gw) -> bool:
    """Whether the gateway's listener answers an HTTP/2 connection preface with a SETTINGS frame."""
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        try:
            first = s.recv(9)
        except OSError:
            return False
    return len(first) == 9 and first[3] == 0x04


def test_a_grpcio_client_end_to_end(gateway_factory, grpc_server):
    gw = grpc_gateway(gateway_factory, grpc_server)
    if not serves_h2c(gw):
        pytest.skip("needs the HTTP/2 downstream (h2c prior knowledge on an HTTP listener), which this "
                    "build does not serve yet")
    target = gw.url.removeprefix("http://")
    with grpc.insecure_channel(target) as channel:
        say = channel.unary_unary(f"/{SERVICE}/Say")
        reply, call = say.with_call(b"hi", timeout=10, metadata=(("host", "test.local"),))
        assert reply == b"echo:hi"
        assert ("x-served-by", "grpcio") in call.trailing_metadata()
        many = channel.unary_stream(f"/{SERVICE}/Many")
        assert list(many(b"4", timeout=10)) == [b"part-%d" % i for i in range(4)]
        fail = channel.unary_unary(f"/{SERVICE}/Fail")
        with pytest.raises(grpc.RpcError) as err:
            fail(b"x", timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        missing = channel.unary_unary("/no.Such/Method")
        with pytest.raises(grpc.RpcError) as err:
            missing(b"x", timeout=10)
        assert err.value.code() in (grpc.StatusCode.UNIMPLEMENTED,)
