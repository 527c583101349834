"""Span export: a worker's finished sampled exchanges (queued by the request path, see
fastgw/_cy/tracecontext.pyx) become OTLP spans, sent in batches to the collector over OTLP/HTTP with
protobuf bodies, from a task on the worker's own loop.

Nothing here runs on the request path. The request path appends plain tuples to a bounded queue
(`Worker.traces`); this module encodes them with the opentelemetry-proto classes and POSTs them with a
minimal HTTP/1.1 client on asyncio streams (or, with `protocol: grpc`, grpcio from a thread). A collector that is down or slow never slows requests:
the queue fills up to `tracing.otlp.max_queue` spans, later spans are dropped and counted, and a
batch the collector does not accept in `timeout` is counted as failed. Failures are reported as events
at most every REPORT_INTERVAL seconds, and a summary is written at shutdown when anything was lost.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import sys
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from . import __version__, _core
from .config.tracing import Tracing, endpoint_parts

__all__ = ["OtlpHttpClient", "TraceExport", "encode_spans"]

REPORT_INTERVAL = 10.0
# Span.flags (OTLP 1.1): the low byte is the W3C trace flags; these say whether the parent is remote
_FLAG_HAS_IS_REMOTE = 0x100
_FLAG_IS_REMOTE = 0x200
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
                            "QUERY"})
# response flags (consts.pxi) that say why an upstream attempt failed, as error.type values
_ATTEMPT_ERRORS = (("UF", "connect_failure"), ("UT", "timeout"), ("UR", "reset"),
                   ("UPE", "protocol_error"), ("UBT", "body_timeout"))


_KV_CACHE: dict = {}
_KV_CACHE_MAX = 8192


def _kv(key: str, value) -> KeyValue:
    """An attribute, shared between spans: most values repeat (method, route, status, addresses), and
    a cached message is several times cheaper to copy into a span than a new one is to build."""
    kv = _KV_CACHE.get((key, value))
    if kv is not None:
        return kv
    if isinstance(value, int):
        kv = KeyValue(key=key, value=AnyValue(int_value=value))
    else:
        kv = KeyValue(key=key, value=AnyValue(string_value=value))
    if len(_KV_CACHE) >= _KV_CACHE_MAX:
        _KV_CACHE.clear()            # bounded: paths and URLs can take any value
    _KV_CACHE[(key, value)] = kv
    return kv


def _method_attrs(method: str | None) -> tuple[str, list[KeyValue]]:
    """The semantic conventions' method handling: unknown methods are `_OTHER`, the original kept."""
    if method in _KNOWN_METHODS:
        return method, [_kv("http.request.method", method)]
    out = [_kv("http.request.method", "_OTHER")]
    if method:
        out.append(_kv("http.request.method_original", method))
    return "HTTP", out


@functools.lru_cache(maxsize=1024)
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _upstream_target(up_head: bytes | None) -> str:
    """The request target the gateway sent upstream (rewrites included), from its request line."""
    if not up_head:
        return "/"
    line = up_head[:up_head.find(b"\r\n")]
    parts = line.split(b" ")
    return parts[1].decode("latin-1") if len(parts) == 3 else "/"


def _attempt_error(fail_flags: int) -> str | None:
    codes = _core.flag_codes(fail_flags)
    for code, name in _ATTEMPT_ERRORS:
        if code in codes:
            return name
    return None


_TEMPLATES: dict = {}


def _template(key: tuple, build) -> Span:
    """A span's parts that repeat across exchanges (name, kind, the attributes of its route, upstream
    and target), built once: merging a template into a new span is one call into the protobuf runtime,
    where building its attributes one by one is a dozen."""
    span = _TEMPLATES.get(key)
    if span is None:
        if len(_TEMPLATES) >= _KV_CACHE_MAX:
            _TEMPLATES.clear()
        span = _TEMPLATES[key] = build(*key[1:])
    return span


def _server_template(method, host, local_port, vminor, route_pattern, user_agent, route, upstream) -> Span:
    name, attrs = _method_attrs(method)
    attrs = [*attrs, _kv("url.scheme", "http"), _kv("server.port", local_port),
             _kv("network.protocol.version", "2" if vminor < 0 else "1.0" if vminor == 0 else "1.1")]
    if host:
        attrs.append(_kv("server.address", host))
    if route_pattern:
        attrs.append(_kv("http.route", route_pattern))
        name = f"{name} {route_pattern}"
    if user_agent:
        attrs.append(_kv("user_agent.original", user_agent.decode("latin-1")))
    if route:
        attrs.append(_kv("fastgw.route", route))
    if upstream:
        attrs.append(_kv("fastgw.upstream", upstream))
    return Span(name=name, kind=Span.SPAN_KIND_SERVER, attributes=attrs)


def _client_template(method, target, upstream) -> Span:
    name, attrs = _method_attrs(method)
    attrs = [*attrs, _kv("server.address", target.host), _kv("server.port", target.port),
             _kv("network.protocol.version", "1.1")]
    if _is_ip(target.host):
        attrs += [_kv("network.peer.address", target.host), _kv("network.peer.port", target.port)]
    if upstream:
        attrs.append(_kv("fastgw.upstream", upstream))
    return Span(name=name, kind=Span.SPAN_KIND_CLIENT, attributes=attrs)


def _add_spans(out, rec: tuple, offset_ns: int) -> None:
    """The spans of one queued exchange, added to `out` (a repeated Span field): built in place, since
    a Span built apart is copied again when it joins the request."""
    (_n, hi, lo, parent, server_span, flags, state, t_start, t_done, method, path, host, local_port,
     client_ip, status, route, upstream, rflags, vminor, user_agent, route_pattern, up_head, attempts) = rec
    trace_id = hi.to_bytes(8, "big") + lo.to_bytes(8, "big")
    server_id = server_span.to_bytes(8, "big")
    state = state or ""
    attrs = [_kv("url.path", path.decode("latin-1") if path else "/"), _kv("client.address", client_ip)]
    if status:
        attrs.append(_kv("http.response.status_code", status))
    if rflags:
        attrs.append(_kv("fastgw.response_flags", ",".join(_core.flag_codes(rflags))))
    error = None
    if status >= 500:
        error = str(status)
    elif status == 0:
        error = "no_response"          # the exchange ended without a response (flags say why)
    if error is not None:
        attrs.append(_kv("error.type", error))
    span = out.add(
        trace_id=trace_id, span_id=server_id, parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        trace_state=state, flags=flags | _FLAG_HAS_IS_REMOTE | (_FLAG_IS_REMOTE if parent else 0),
        start_time_unix_nano=int(t_start * 1e9) + offset_ns, end_time_unix_nano=int(t_done * 1e9) + offset_ns)
    span.MergeFrom(_template(("S", method, host, local_port, vminor, route_pattern, user_agent, route, upstream),
                             _server_template))
    span.attributes.extend(attrs)
    if error is not None:
        span.status.code = Status.STATUS_CODE_ERROR
        span.status.message = error
    if not attempts:
        return
    target_path = _upstream_target(up_head)
    for span_id, t0, t1, target, fail_flags, up_status in attempts:
        attrs = [_kv("url.full", f"http://{target.address}{target_path}")]
        if up_status:
            attrs.append(_kv("http.response.status_code", up_status))
        error = _attempt_error(fail_flags) if fail_flags else None
        if error is None and up_status >= 400:
            error = str(up_status)
        if error is None and not up_status:
            error = "no_response"
        if error is not None:
            attrs.append(_kv("error.type", error))
        span = out.add(
            trace_id=trace_id, span_id=span_id.to_bytes(8, "big"), parent_span_id=server_id,
            trace_state=state, flags=flags | _FLAG_HAS_IS_REMOTE,
            start_time_unix_nano=int(t0 * 1e9) + offset_ns, end_time_unix_nano=int(t1 * 1e9) + offset_ns)
        span.MergeFrom(_template(("C", method, target, upstream), _client_template))
        span.attributes.extend(attrs)
        if error is not None:
            span.status.code = Status.STATUS_CODE_ERROR
            span.status.message = error


def encode_spans(records: list[tuple], clock_offset: float, service_name: str) -> bytes:
    """An ExportTraceServiceRequest for queued exchanges, serialized. `clock_offset` turns the
    exchanges' monotonic timestamps into unix time (Worker.traces.clock_offset)."""
    offset_ns = int(clock_offset * 1e9)
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([_kv("service.name", service_name), _kv("service.version", __version__),
                                   _kv("process.pid", os.getpid())])
    ss = rs.scope_spans.add()
    ss.scope.name = "fastgw"
    ss.scope.version = __version__
    for rec in records:
        _add_spans(ss.spans, rec, offset_ns)
    return req.SerializeToString()


class ExportError(Exception):
    pass


class OtlpHttpClient:
    """One keep-alive HTTP/1.1 connection to the collector, for POSTs of protobuf bodies. Enough of
    HTTP for a collector's answers: Content-Length, chunked, or close-delimited bodies."""

    def __init__(self, endpoint: str, headers: dict[str, str] | None = None):
        self.host, self.port, self.path = endpoint_parts(endpoint)
        authority = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != 80:
            authority += f":{self.port}"
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head = (f"POST {self.path} HTTP/1.1\r\nHost: {authority}\r\n"
                      f"Content-Type: application/x-protobuf\r\nUser-Agent: fastgw/{__version__}\r\n{extra}")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """(status, body). A kept-alive connection the collector closed meanwhile is replaced once."""
        reused = self._writer is not None and not self._writer.is_closing()
        try:
            return await self._exchange(body)
        except (ConnectionError, asyncio.IncompleteReadError, ExportError):
            self.close()
            if not reused:
                raise
        return await self._exchange(body)

    async def _exchange(self, body: bytes) -> tuple[int, bytes]:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._reader, self._writer
        writer.write(f"{self._head}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body)
        await writer.drain()
        line = await reader.readline()
        if not line:
            raise ExportError("collector closed the connection")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ExportError(f"not an HTTP response: {line[:80]!r}")
        status = int(parts[1])
        length, chunked, close = None, False, parts[0] == b"HTTP/1.0"
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise ExportError("collector closed the connection mid-head")
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.endswith(b"chunked")
            elif name == b"connection":
                close = b"close" in value
        if chunked:
            data = bytearray()
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data += await reader.readexactly(size)
                await reader.readexactly(2)
            data = bytes(data)
        elif length is not None:
            data = await reader.readexactly(length)
        else:
            data = await reader.read()
            close = True
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class OtlpGrpcClient:
    """OTLP/gRPC with grpcio's blocking client, called from one thread per worker: grpcio's asyncio API
    does not run on uvloop, and a thread keeps the loop free whatever the collector does. The body is
    the same serialized ExportTraceServiceRequest the HTTP client sends."""

    METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

    def __init__(self, endpoint: str, headers: dict[str, str] | None = None, timeout: float = 2.0):
        import concurrent.futures

        import grpc
        host, port, _ = endpoint_parts(endpoint)
        self._grpc = grpc
        self._channel = grpc.insecure_channel(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        # no (de)serializers: the request is already bytes, and the answer is parsed like HTTP's
        self._export = self._channel.unary_unary(self.METHOD)
        self._metadata = tuple((k.lower(), v) for k, v in (headers or {}).items())
        self._timeout = timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fastgw-otlp")

    def _call(self, body: bytes) -> bytes:
        try:
            return self._export(body, timeout=self._timeout, metadata=self._metadata)
        except self._grpc.RpcError as exc:
            raise ExportError(f"grpc {exc.code().name}: {exc.details()}") from None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        answer = await asyncio.get_running_loop().run_in_executor(self._pool, self._call, body)
        return 200, answer

    def close(self) -> None:
        self._channel.close()
        self._pool.shutdown(wait=False)


def _report(message: str) -> None:
    sys.stderr.write(f"fastgw: worker {os.getpid()}: {message}\n")
    sys.stderr.flush()


class TraceExport:
    """A worker's exporter: configure() with each config (start, reconfigure, or stop), close() at
    shutdown."""

    def __init__(self, worker, loop: asyncio.AbstractEventLoop):
        self.worker = worker
        self.sink = worker.traces
        self.loop = loop
        self.cfg: Tracing | None = None
        self.client: OtlpHttpClient | OtlpGrpcClient | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._last_report = 0.0
        self._reported_failed = 0
        self._reported_dropped = 0

    def configure(self, cfg: Tracing) -> None:
        if not cfg.enabled:
            self.cfg = None
            self.sink.wakeup = None
            if self._task is not None:
                self._task.cancel()
                self._task = None
            return
        if self.cfg is None or self.cfg.otlp != cfg.otlp:
            if self.client is not None:
                self.client.close()
            if cfg.otlp.protocol == "grpc":
                self.client = OtlpGrpcClient(cfg.otlp.endpoint, cfg.otlp.headers, cfg.otlp.timeout)
            else:
                self.client = OtlpHttpClient(cfg.otlp.endpoint, cfg.otlp.headers)
        self.cfg = cfg
        self.sink.max_queue = cfg.otlp.max_queue
        self.sink.batch_size = cfg.otlp.batch_size
        self.sink.wakeup = self._wake.set
        if self._task is None:
            self._task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.cfg.otlp.flush_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.export_pending()
            self._maybe_report()

    async def export_pending(self, deadline: float | None = None) -> None:
        """Sends everything queued, a batch at a time (until `deadline`, loop time, if given)."""
        while self.sink.pending_spans and self.cfg is not None:
            if deadline is not None and self.loop.time() >= deadline:
                return
            await self._send(self.sink.take(self.cfg.otlp.batch_size))

    async def _send(self, records: list[tuple]) -> None:
        n = sum(r[0] for r in records)
        cfg = self.cfg
        try:
            body = encode_spans(records, self.sink.clock_offset, cfg.service_name)
            status, answer = await asyncio.wait_for(self.client.post(body), cfg.otlp.timeout)
        except asyncio.CancelledError:      # shutdown ran out of time with this batch in flight
            self.sink.count_failed(n)
            raise
        except Exception as exc:            # whatever went wrong, the exporter must live on: counted, reported
            if isinstance(self.client, OtlpHttpClient):
                self.client.close()          # a connection in an unknown state is not reused
            self.sink.count_failed(n)
            self._error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return
        if not 200 <= status < 300:
            self.sink.count_failed(n)
            self._error = f"collector answered {status}"
            return
        rejected = 0
        if answer:
            try:
                rejected = ExportTraceServiceResponse.FromString(answer).partial_success.rejected_spans
            except Exception:           # an answer that is not protobuf: the spans were accepted
                rejected = 0
        if rejected:
            self.sink.count_failed(rejected)
            self._error = f"collector rejected {rejected} spans"
        self.sink.count_exported(n - rejected)

    _error = ""

    def _maybe_report(self, final: bool = False) -> None:
        failed, dropped = self.sink.failed, self.sink.dropped
        if failed == self._reported_failed and dropped == self._reported_dropped:
            return
        now = time.monotonic()
        if not final and now - self._last_report < REPORT_INTERVAL and self._last_report:
            return
        self._last_report = now
        self._reported_failed, self._reported_dropped = failed, dropped
        endpoint = self.cfg.otlp.endpoint if self.cfg is not None else "?"
        _report(f"trace export to {endpoint}: {failed} spans failed, {dropped} dropped "
                f"(queue full), {self.sink.exported} exported so far; last error: {self._error or 'none'}")

    async def close(self, timeout: float) -> None:
        """Shutdown: stop the timer, send what is queued within `timeout`, report losses."""
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            # a batch in flight counts itself failed as the cancellation reaches it: wait for that,
            # or the final report would miss it
            # (bounded: a gRPC call runs on a thread that a cancellation does not stop)
            await asyncio.wait([task], timeout=min(timeout, 1.0))
        if self.cfg is not None:
            deadline = self.loop.time() + timeout
            try:
                await asyncio.wait_for(self.export_pending(deadline), timeout)
            except TimeoutError:
                pass
        left = self.sink.pending_spans
        if left:
            self.sink.take(left)          # what could not be sent in time counts as failed
            self.sink.count_failed(left)
        self._maybe_report(final=True)
        if self.client is not None:
            self.client.close()
