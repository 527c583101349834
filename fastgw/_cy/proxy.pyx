# The proxy: a downstream protocol (ClientConn, client.pyx) and an upstream protocol (UpstreamConn,
# upstream.pyx), with one Exchange (exchange.pyx) at a time per client connection. This file holds
# what they share and the Worker that owns them.
#
# ClientConn states (a client connection is always in exactly one):
#   HEAD  -> waiting for or parsing a request head (idle keep-alive included)
#   BODY  -> the request body is streaming upstream; the response may already be streaming back
#   WAIT  -> the request is complete; the response is in progress; later bytes are a pipelined
#            request and reading is paused until the response ends
#   POLICY -> a request policy paused the exchange (asynchronous work); bytes read meanwhile are
#            kept (reading pauses past QUEUE_HIGH_WATER), so a client that leaves is seen leaving
#   CLOSED
# An exchange ends when both the request body and the response are complete; the upstream
# connection then goes back to its pool if it can carry another request.
#
# UpstreamConn states:
#   CONNECTING -> HEAD (response head awaited; 1xx relayed) -> BODY -> IDLE (in its target's pool)
#   any -> CLOSED

from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp, memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
import functools
import os
import socket as _socket
from ssl import SSLError as _SSLError
import struct as _struct

cdef bytes _LINGER_RESET = _struct.pack("ii", 1, 0)


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec* tp)
    int CLOCK_MONOTONIC


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef enum:
    CL_HEAD = 0
    CL_BODY
    CL_WAIT
    CL_POLICY             # a request policy paused the exchange for asynchronous work
    CL_CLOSED

    # why client reading is paused (bits)
    PR_PIPELINE = 1       # a pipelined request waits for the current response
    PR_UPSTREAM = 2       # the upstream's write buffer is over its high-water mark
    PR_CONNECTING = 4     # body bytes are queued while the upstream connection is made
    PR_POLICY = 8         # a request policy is waiting, and the bytes read meanwhile hit the bound

    # client deadlines
    DL_NONE = 0
    DL_IDLE               # keep-alive idle: close quietly
    DL_HEADER             # request head not complete in time: 408
    DL_BODY               # request body paused too long (by the client): 408
    DL_POLICY             # a paused policy did not finish in time: 504

    # upstream states
    UP_CONNECTING = 0
    UP_IDLE
    UP_HEAD
    UP_BODY
    UP_HELD               # response head parsed, held while a response policy works
    UP_CLOSED

    # upstream deadlines
    UDL_NONE = 0
    UDL_CONNECT
    UDL_HEADER
    UDL_BODY
    UDL_POOL_IDLE
    UDL_POLICY            # a response policy paused the exchange: 504 when it passes

    # what the response phase decided (Exchange.begin_response)
    RESP_ANSWERED = 0
    RESP_RELAY = 1
    RESP_PAUSED = 2

    # how the response body is written to the client
    RM_PASS = 0           # bytes as they are (Content-Length, or close-delimited to HTTP/1.0)
    RM_CHUNK              # re-chunked (HTTP/1.1 client, no length known)

    QUEUE_HIGH_WATER = 262144
    COALESCE_MAX = 16384      # body pieces up to this size are copied to join the head in one write

    # outcomes of the request phase besides a status to answer with
    OUT_PROXY = 0
    OUT_REDIRECT = 1
    OUT_TOO_LARGE = 413
    OUT_POLICY_ANSWER = 2
    OUT_OPTIONS_STAR = 3

    # server.path_normalization
    PATH_OFF = 0
    PATH_NORMALIZE
    PATH_REJECT


cdef dict _REASONS = {
    200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content", 304: b"Not Modified",
    401: b"Unauthorized", 403: b"Forbidden", 409: b"Conflict", 410: b"Gone", 429: b"Too Many Requests",
    301: b"Moved Permanently", 302: b"Found", 303: b"See Other",
    307: b"Temporary Redirect", 308: b"Permanent Redirect", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 413: b"Content Too Large", 414: b"URI Too Long",
    417: b"Expectation Failed", 421: b"Misdirected Request", 431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}

cdef inline bint _idempotent(const char* m, Py_ssize_t n) noexcept nogil:
    # RFC 9110 9.2.2
    if n == 3:
        return memcmp(m, b"GET", 3) == 0 or memcmp(m, b"PUT", 3) == 0
    if n == 4:
        return memcmp(m, b"HEAD", 4) == 0
    if n == 5:
        return memcmp(m, b"TRACE", 5) == 0
    if n == 6:
        return memcmp(m, b"DELETE", 6) == 0
    if n == 7:
        return memcmp(m, b"OPTIONS", 7) == 0
    return False


cdef inline bint _is_hop_by_hop(int kind) noexcept nogil:
    return (kind == HK_CONNECTION or kind == HK_KEEP_ALIVE or kind == HK_PROXY_CONNECTION
            or kind == HK_TE or kind == HK_TRAILER or kind == HK_UPGRADE
            or kind == HK_TRANSFER_ENCODING or kind == HK_CONTENT_LENGTH)


cdef bint _named_by_connection(MessageHead* h, const char* buf, HeaderField* f) noexcept nogil:
    cdef int i
    for i in range(h.nconn_tokens):
        if f.name_len == h.conn_token_lens[i]:
            if _ci_eq_raw(buf + f.name, buf + h.conn_tokens[i], f.name_len):
                return True
    return False


cdef bint _connection_lists(MessageHead* h, const char* buf, const char* lower_name, Py_ssize_t n) noexcept nogil:
    """The message's Connection header names this field (`lower_name` in lowercase)."""
    cdef int i
    for i in range(h.nconn_tokens):
        if h.conn_token_lens[i] == n and _ci_eq(buf + h.conn_tokens[i], n, lower_name, n):
            return True
    return False


cdef inline bint _ci_eq_raw(const char* a, const char* b, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if _LOWER[<uint8_t>a[i]] != _LOWER[<uint8_t>b[i]]:
            return False
    return True


cdef inline int _put_line(WBuf* out, const char* prefix, Py_ssize_t prefix_len, const char* value,
                          Py_ssize_t value_len) except -1:
    wb_put(out, prefix, prefix_len)
    wb_put(out, value, value_len)
    wb_put(out, b"\r\n", 2)
    return 0


cdef inline int _put_field(WBuf* out, const char* buf, HeaderField* f) except -1:
    wb_reserve(out, f.name_len + f.value_len + 4)
    wb_put(out, buf + f.name, f.name_len)
    wb_put(out, b": ", 2)
    wb_put(out, buf + f.value, f.value_len)
    wb_put(out, b"\r\n", 2)
    return 0


cdef struct LineRun:
    # field lines copied as they arrived, adjacent ones joined: buf[start:end] waits to be written
    Py_ssize_t start
    Py_ssize_t end


cdef inline int _run_flush(WBuf* out, const char* buf, LineRun* run) except -1:
    if run.end > run.start:
        wb_put(out, buf + run.start, run.end - run.start)
    run.start = run.end = 0
    return 0


cdef inline int _put_field_line(WBuf* out, const char* buf, HeaderField* f, LineRun* run) except -1:
    """The field as _put_field writes it. A line that already reads "name: value\\r\\n" (one space,
    no trailing whitespace) is the same bytes: it joins the run, and a run is one memcpy."""
    cdef Py_ssize_t end = f.value + f.value_len
    if f.value == f.name + f.name_len + 2 and buf[f.name + f.name_len + 1] == b' ' and buf[end] == b'\r':
        if f.name != run.end or run.end == 0:
            _run_flush(out, buf, run)
            run.start = f.name
        run.end = end + 2
        return 0
    _run_flush(out, buf, run)
    return _put_field(out, buf, f)


cdef class Worker:
    """One process's request path: the current Runtime, the live connections and the clock that
    enforces their deadlines."""
    cdef public Runtime runtime
    cdef object loop
    cdef set clients
    cdef set upstreams
    cdef set tunnels                 # open tunnels (tunnel.pyx): upgrades and stream listeners' connections
    cdef bytes rid_prefix
    cdef uint64_t rid_counter
    cdef readonly bint draining
    cdef object _tick_handle
    cdef double tick_interval
    cdef public object access_log    # the LineSink access lines go to (None: nowhere)
    cdef readonly TraceSink traces     # span ids and the queue the trace exporter drains
    # for the Admin API's /stats: cumulative since the worker started
    cdef readonly uint64_t connections_total
    cdef readonly uint64_t requests_total

    def __init__(self, loop, Runtime runtime, double tick_interval=0.1):
        self.loop = loop
        self.runtime = runtime
        self.clients = set()
        self.upstreams = set()
        self.tunnels = set()
        self.rid_prefix = os.urandom(6).hex().encode() + b"-"
        self.rid_counter = 0
        self.draining = False
        self.tick_interval = tick_interval
        self._tick_handle = None
        self.traces = TraceSink()

    def __call__(self):
        return ClientConn(self)

    def protocol_factory(self, str listen_address, tls_endpoint=None):
        """The protocol factory for one listening socket: its connections route with the tables
        of the listeners configured on that address. tls_endpoint: the address's
        fastgw.tls.TlsEndpoint when it terminates TLS."""
        if self.runtime.streams and listen_address in self.runtime.streams:
            return functools.partial(stream_connection, self, listen_address, tls_endpoint)    # tcpproxy.pyx
        return functools.partial(ClientConn, self, listen_address, tls_endpoint)

    def start(self):
        self._tick_handle = self.loop.call_later(self.tick_interval, self._tick)

    def stop(self):
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None

    def _tick(self):
        cdef double now = monotonic()
        cdef ClientConn c
        cdef UpstreamConn u
        cdef Tunnel t
        for c in list(self.clients):
            if c.deadline > 0 and now >= c.deadline:
                c.on_deadline()
        if self.tunnels:
            for t in list(self.tunnels):
                t.tick(now)
        for u in list(self.upstreams):
            if u.deadline > 0 and now >= u.deadline:
                u.on_deadline()
        self._tick_handle = self.loop.call_later(self.tick_interval, self._tick)

    def swap_runtime(self, Runtime runtime):
        self.runtime = runtime

    def begin_drain(self):
        """Stops keep-alive: idle connections close now, busy ones after their response."""
        cdef ClientConn c
        self.draining = True
        for c in list(self.clients):
            c.drain()

    @property
    def access_log_dropped(self):
        """Access lines dropped because the sink could not keep up (or failed)."""
        return self.access_log.dropped if self.access_log is not None else 0

    def active_clients(self):
        return len(self.clients)

    def active_tunnels(self):
        return len(self.tunnels)

    def tunnel_list(self):
        return list(self.tunnels)

    @property
    def spans_dropped(self):
        """Sampled spans left out because the export queue was full (tracing.otlp.max_queue)."""
        return self.traces.dropped

    @property
    def spans_exported(self):
        return self.traces.exported

    @property
    def spans_failed(self):
        """Spans of batches the collector refused or never answered for."""
        return self.traces.failed
    def active_upstreams(self):
        return len(self.upstreams)

    def plugin_stats(self):
        """{(plugin, phase): HookStats} of the running config's plugins, what the metric
        fastgw_plugin_duration_seconds{plugin,phase} is built from. `plugin` is a top-level
        plugin's name, or a route's plugin's key (routes/<route>/<name>), unique either way."""
        out = {}
        for key, policy in self.runtime.policies.items():
            label = policy.name if key.startswith("policies/") else key
            for phase, st in getattr(policy, "stats", {}).items():
                out[(label, phase)] = st
        return out

    def close_all(self):
        cdef ClientConn c
        cdef UpstreamConn u
        for c in list(self.clients):
            c.abort()
        for u in list(self.upstreams):
            u.close()
        for t in list(self.tunnels):
            t.going_away()

    cdef bytes new_request_id(self):
        """The prefix and the counter in lowercase hex (as b"%x" writes it), made in C: one bytes
        object, no formatting."""
        cdef char digits[16]
        cdef int nd = 0, i
        cdef uint64_t v
        cdef Py_ssize_t plen = PyBytes_GET_SIZE(self.rid_prefix)
        cdef bytes rid
        cdef char* out
        self.rid_counter += 1
        v = self.rid_counter
        while v:
            digits[nd] = _HEXDIGITS[v & 15]
            nd += 1
            v >>= 4
        rid = PyBytes_FromStringAndSize(NULL, plen + nd)
        out = PyBytes_AS_STRING(rid)
        memcpy(out, PyBytes_AS_STRING(self.rid_prefix), plen)
        for i in range(nd):
            out[plen + i] = digits[nd - 1 - i]
        return rid
