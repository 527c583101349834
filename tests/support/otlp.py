"""Real OTLP trace receivers for the tests: OTLP/HTTP (POST /v1/traces with an ExportTraceServiceRequest,
protobuf) and OTLP/gRPC (TraceService/Export, grpcio), decoded with the opentelemetry-proto classes and
answered as a collector does."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span


@dataclass
class ReceivedSpan:
    span: Span
    resource: dict
    content_type: str

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def kind(self) -> int:
        return self.span.kind

    @property
    def attrs(self) -> dict:
        out = {}
        for kv in self.span.attributes:
            v = kv.value
            out[kv.key] = getattr(v, v.WhichOneof("value"))
        return out


def _received(req: ExportTraceServiceRequest, content_type: str) -> list[ReceivedSpan]:
    got = []
    for rs in req.resource_spans:
        resource = {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            got += [ReceivedSpan(s, resource, content_type) for s in ss.spans]
    return got


class _Collected:
    def __init__(self):
        self.requests = 0
        self.spans: list[ReceivedSpan] = []
        self.lock = threading.Lock()

    def wait_for(self, predicate, timeout: float = 15.0) -> list[ReceivedSpan]:
        """Waits until predicate(spans) holds; returns the spans (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"OTLP receiver: condition not met in {timeout}s; got {len(spans)} spans: "
                                     + ", ".join(f"{s.span.name}/{s.kind}/{s.trace_id}" for s in spans))
            time.sleep(0.02)

    def trace(self, trace_id: str, count: int, timeout: float = 15.0) -> list[ReceivedSpan]:
        """The spans of one trace, once `count` of them arrived."""
        spans = self.wait_for(lambda ss: sum(s.trace_id == trace_id for s in ss) >= count, timeout)
        return [s for s in spans if s.trace_id == trace_id]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class OtlpReceiver(_Collected):
    """OTLP/HTTP. Collects spans; `status` is what it answers (200 by default). `hang` makes it read a
    request and never answer (a stalled collector)."""

    def __init__(self, status: int = 200, hang: bool = False):
        super().__init__()
        self.status = status
        self.hang = hang
        self._stop = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.requests += 1
                if receiver.hang:
                    receiver._stop.wait(30)
                    self.close_connection = True
                    return
                if self.path != "/v1/traces":
                    self._answer(404, b"")
                    return
                got = _received(ExportTraceServiceRequest.FromString(body), self.headers["Content-Type"])
                if receiver.status == 200:
                    with receiver.lock:
                        receiver.spans += got
                self._answer(receiver.status, ExportTraceServiceResponse().SerializeToString())

            def _answer(self, status, body):
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}/v1/traces"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self):
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


class OtlpGrpcReceiver(_Collected):
    """OTLP/gRPC: a grpcio server with the generated TraceService; `metadata` keeps each call's."""

    def __init__(self):
        super().__init__()
        from concurrent.futures import ThreadPoolExecutor

        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        receiver = self
        self.metadata: list[dict] = []

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                got = _received(request, "application/grpc")
                with receiver.lock:
                    receiver.requests += 1
                    receiver.spans += got
                    receiver.metadata.append(dict(context.invocation_metadata()))
                return ExportTraceServiceResponse()

        self.server = grpc.server(ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server.start()

    def close(self):
        self.server.stop(0)
