# The proxy: a downstream protocol (ClientConn) and an upstream protocol (UpstreamConn), one exchange
# at a time per client connection, with no per-request Python object besides the bytes that move.
#
# ClientConn states (a client connection is always in exactly one):
#   HEAD  -> waiting for or parsing a request head (idle keep-alive included)
#   BODY  -> the request body is streaming upstream; the response may already be streaming back
#   WAIT  -> the request is complete; the response is in progress; later bytes are a pipelined
#            request and reading is paused until the response ends
#   CLOSED
# An exchange ends when both the request body and the response are complete; the upstream
# connection then goes back to its pool if it can carry another request.

from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
import asyncio
import os
import sys


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
    CL_CLOSED

    # why client reading is paused (bits)
    PR_PIPELINE = 1       # a pipelined request waits for the current response
    PR_UPSTREAM = 2       # the upstream's write buffer is over its high-water mark
    PR_CONNECTING = 4     # body bytes are queued while the upstream connection is made

    # client deadlines
    DL_NONE = 0
    DL_IDLE               # keep-alive idle: close quietly
    DL_HEADER             # request head not complete in time: 408

    # upstream states
    UP_CONNECTING = 0
    UP_IDLE
    UP_HEAD
    UP_BODY
    UP_CLOSED

    # upstream deadlines
    UDL_NONE = 0
    UDL_CONNECT
    UDL_HEADER
    UDL_BODY
    UDL_POOL_IDLE

    # how the response body is written to the client
    RM_PASS = 0           # bytes as they are (Content-Length, or close-delimited to HTTP/1.0)
    RM_CHUNK              # re-chunked (HTTP/1.1 client, no length known)

    QUEUE_HIGH_WATER = 262144


cdef dict _REASONS = {
    200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 413: b"Content Too Large", 414: b"URI Too Long",
    417: b"Expectation Failed", 431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
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


cdef inline bint _ci_eq_raw(const char* a, const char* b, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if _LOWER[<uint8_t>a[i]] != _LOWER[<uint8_t>b[i]]:
            return False
    return True


cdef inline int _put_field(WBuf* out, const char* buf, HeaderField* f) except -1:
    wb_reserve(out, f.name_len + f.value_len + 4)
    wb_put(out, buf + f.name, f.name_len)
    wb_put(out, b": ", 2)
    wb_put(out, buf + f.value, f.value_len)
    wb_put(out, b"\r\n", 2)
    return 0


cdef class Worker:
    """One process's request path: the current Runtime, the live connections and the clock that
    enforces their deadlines."""
    cdef public Runtime runtime
    cdef object loop
    cdef set clients
    cdef set upstreams
    cdef bytes rid_prefix
    cdef uint64_t rid_counter
    cdef readonly bint draining
    cdef object _tick_handle
    cdef double tick_interval

    def __init__(self, loop, Runtime runtime, double tick_interval=0.1):
        self.loop = loop
        self.runtime = runtime
        self.clients = set()
        self.upstreams = set()
        self.rid_prefix = os.urandom(6).hex().encode() + b"-"
        self.rid_counter = 0
        self.draining = False
        self.tick_interval = tick_interval
        self._tick_handle = None

    def __call__(self):
        return ClientConn(self)

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
        for c in list(self.clients):
            if c.deadline > 0 and now >= c.deadline:
                c.on_deadline()
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

    def active_clients(self):
        return len(self.clients)

    def close_all(self):
        cdef ClientConn c
        cdef UpstreamConn u
        for c in list(self.clients):
            c.abort()
        for u in list(self.upstreams):
            u.close()

    cdef bytes new_request_id(self):
        self.rid_counter += 1
        return self.rid_prefix + (b"%x" % self.rid_counter)


cdef class ClientConn:
    cdef Worker worker
    cdef object transport
    cdef Runtime rt
    cdef int state
    cdef MessageHead head
    cdef ChunkDecoder chunk
    cdef WBuf out                   # bytes on their way to the client
    cdef WBuf uout                  # bytes on their way to the upstream
    cdef bytes buf
    cdef bint processing
    cdef bytes client_ip
    cdef bytes request_id
    cdef UpstreamConn up
    cdef Target target
    cdef Route route
    cdef bytes up_head
    cdef list up_queue
    cdef Py_ssize_t up_queued
    cdef int req_framing
    cdef int64_t req_remaining
    cdef int64_t req_body_seen
    cdef int64_t max_body
    cdef bint req_done
    cdef bint resp_started
    cdef bint keep_alive
    cdef bint http10
    cdef bint head_method
    cdef bint retry_ok
    cdef bint retried
    cdef int resp_mode
    cdef int nrequests
    cdef int pause_mask
    cdef double deadline
    cdef int deadline_kind
    cdef char hostbuf[MAX_HOST_LEN + 1]

    def __cinit__(self):
        head_init(&self.head, 1)
        wb_init(&self.out, 4096)
        wb_init(&self.uout, 4096)

    def __init__(self, Worker worker):
        cdef int cap
        self.worker = worker
        self.rt = worker.runtime
        cap = self.rt.head_limits.max_headers
        head_free(&self.head)
        head_init(&self.head, cap)
        self.state = CL_HEAD
        self.buf = b""

    def __dealloc__(self):
        head_free(&self.head)
        wb_free(&self.out)
        wb_free(&self.uout)

    # ---- asyncio protocol ----------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = (<str>peer[0]).encode()
        else:
            self.client_ip = b"unknown"
        self.worker.clients.add(self)
        self._set_deadline(DL_IDLE, self.rt.header_timeout)
        if self.worker.draining:
            self.abort()

    def data_received(self, bytes data):
        if self.state == CL_HEAD:
            self.buf = data if PyBytes_GET_SIZE(self.buf) == 0 else self.buf + data
            self._process_buffer()
        elif self.state == CL_BODY:
            self._body_data(data, 0)
        elif self.state == CL_WAIT:
            self.buf = data if PyBytes_GET_SIZE(self.buf) == 0 else self.buf + data
            self._pause(PR_PIPELINE)

    def eof_received(self):
        # A half-closed client is done sending; if a request is in flight let it finish and close.
        if self.state == CL_HEAD:
            return False
        if self.state == CL_BODY:
            self._fail_request(400, b"client closed the connection during the request body")
            return False
        self.keep_alive = False
        return True

    def connection_lost(self, exc):
        self.state = CL_CLOSED
        self.worker.clients.discard(self)
        if self.up is not None:
            self.up.detach_and_close()
            self.up = None

    def pause_writing(self):
        if self.up is not None:
            self.up.pause_reading_for_client()

    def resume_writing(self):
        if self.up is not None:
            self.up.resume_reading_for_client()

    # ---- request side --------------------------------------------------------------------------

    cdef void _set_deadline(self, int kind, double timeout):
        self.deadline_kind = kind
        self.deadline = monotonic() + timeout if timeout > 0 else 0.0

    cdef void _pause(self, int reason):
        if self.pause_mask == 0 and self.state != CL_CLOSED:
            self.transport.pause_reading()
        self.pause_mask |= reason

    cdef void _resume(self, int reason):
        if self.pause_mask & reason:
            self.pause_mask &= ~reason
            if self.pause_mask == 0 and self.state != CL_CLOSED:
                self.transport.resume_reading()

    cdef void _process_buffer(self):
        cdef const char* p
        cdef Py_ssize_t n, r
        if self.processing:
            return
        self.processing = True
        try:
            self._process_loop()
        finally:
            self.processing = False

    cdef void _process_loop(self) except *:
        cdef const char* p
        cdef Py_ssize_t n, r
        while self.state == CL_HEAD and PyBytes_GET_SIZE(self.buf) > 0:
            self.rt = self.worker.runtime
            p = PyBytes_AS_STRING(self.buf)
            n = PyBytes_GET_SIZE(self.buf)
            r = parse_request_head(&self.head, p, n, &self.rt.head_limits)
            if r == PARSE_INCOMPLETE:
                if self.deadline_kind != DL_HEADER:
                    self._set_deadline(DL_HEADER, self.rt.header_timeout)
                return
            if r == PARSE_ERROR:
                self.keep_alive = False
                self.head_method = False
                self.request_id = self.worker.new_request_id()
                self._send_error(self.head.error_status, self.head.error_reason)
                return
            self._start_request(p, r, n)

    cdef void _start_request(self, const char* p, Py_ssize_t head_len, Py_ssize_t n):
        cdef MessageHead* h = &self.head
        cdef Runtime rt = self.rt
        cdef Py_ssize_t hl, i
        cdef const char* host
        cdef object payload
        cdef bytes data = self.buf
        self.deadline = 0.0
        self.deadline_kind = DL_NONE
        self.nrequests += 1
        self.http10 = h.version_minor == 0
        self.head_method = h.is_head_method
        self.keep_alive = h.conn_keep_alive if self.http10 else not h.conn_close
        if self.worker.draining or self.nrequests >= rt.max_requests_per_connection:
            self.keep_alive = False
        if h.request_id >= 0:
            self.request_id = p[h.request_id:h.request_id + h.request_id_len]
        else:
            self.request_id = self.worker.new_request_id()
        self.req_framing = h.framing
        self.req_remaining = h.content_length if h.framing == FR_LENGTH else 0
        self.req_body_seen = 0
        self.req_done = h.framing == FR_NONE
        self.resp_started = False
        self.retried = False
        self.buf = b""
        if h.framing == FR_CHUNKED:
            chunk_init(&self.chunk, rt.head_limits.max_head_bytes)

        # route on the lowercased host without its port, and the path without its query
        if h.authority >= 0:
            host = p + h.authority
            hl = h.authority_len
            for i in range(hl):
                if host[i] == b':' and host[0] != b'[':
                    hl = i
                    break
        else:
            host = p + h.host
            hl = h.host_name_len
        for i in range(hl):
            self.hostbuf[i] = <char>_LOWER[<uint8_t>host[i]]
        self.hostbuf[hl] = 0
        if h.target_len == 1 and p[h.target] == b'*':
            payload = None
        else:
            payload = rt.router.match_request(self.hostbuf, hl, p, h)
        if payload is None:
            self._refuse_before_upstream(data, head_len, n, 404, b"no route")
            return
        self.route = <Route>payload
        self.max_body = self.route.max_body if self.route.max_body >= 0 else rt.max_body
        if self.max_body >= 0 and h.framing == FR_LENGTH and h.content_length > self.max_body:
            self.keep_alive = False
            self._send_error(413, b"request body too large")
            return
        self.target = self.route.group.pick()
        if self.target is None:
            self._refuse_before_upstream(data, head_len, n, 503, b"no upstream target available")
            return
        self.retry_ok = h.framing == FR_NONE and _idempotent(p, h.method_len)
        self._build_upstream_head(p)
        self.up_head = wb_bytes(&self.uout)
        self.up_queue = [self.up_head]
        self.up_queued = PyBytes_GET_SIZE(self.up_head)
        self.state = CL_WAIT if self.req_done else CL_BODY
        # Body bytes that came with the head are checked before anything is sent upstream, so a
        # request malformed anywhere in its first packet reaches the upstream not at all.
        if head_len < n:
            if self.state == CL_BODY:
                self._body_data(data, head_len)
                if self.state == CL_CLOSED or self.up_queue is None:
                    return
            else:
                self.buf = data[head_len:]
                self._pause(PR_PIPELINE)
        self._dispatch()

    cdef void _refuse_before_upstream(self, bytes data, Py_ssize_t head_len, Py_ssize_t n,
                                      int status, const char* reason):
        """Answers without an upstream. Keep-alive survives only when there is no body to skip."""
        if self.req_framing != FR_NONE:
            self.keep_alive = False
        elif head_len < n:
            self.buf = data[head_len:]
        self._send_error(status, reason)

    cdef void _build_upstream_head(self, const char* p) except *:
        cdef MessageHead* h = &self.head
        cdef WBuf* out = &self.uout
        cdef HeaderField* f
        cdef int i, k
        out.len = 0
        wb_put(out, p + h.method, h.method_len)
        wb_put(out, b" ", 1)
        if h.target_len == 0 or p[h.target] == b'?':
            wb_put(out, b"/", 1)
        wb_put(out, p + h.target, h.target_len)
        wb_put(out, b" HTTP/1.1\r\n", 11)
        for i in range(h.nfields):
            f = &h.fields[i]
            k = f.kind
            if k == HK_OTHER or k == HK_EXPECT:
                if h.nconn_tokens and _named_by_connection(h, p, f):
                    continue
                _put_field(out, p, f)
            elif k == HK_HOST:
                if h.authority >= 0:
                    wb_put(out, b"Host: ", 6)
                    wb_put(out, p + h.authority, h.authority_len)
                    wb_put(out, b"\r\n", 2)
                else:
                    _put_field(out, p, f)
        if not h.has_host:
            wb_put(out, b"Host: ", 6)
            if h.authority >= 0:
                wb_put(out, p + h.authority, h.authority_len)
            else:
                wb_put(out, PyBytes_AS_STRING(self.target.address_bytes), PyBytes_GET_SIZE(self.target.address_bytes))
            wb_put(out, b"\r\n", 2)
        wb_put(out, b"X-Forwarded-For: ", 17)
        if h.n_xff:
            for i in range(h.nfields):
                f = &h.fields[i]
                if f.kind == HK_X_FORWARDED_FOR and f.value_len:
                    wb_put(out, p + f.value, f.value_len)
                    wb_put(out, b", ", 2)
        wb_put(out, PyBytes_AS_STRING(self.client_ip), PyBytes_GET_SIZE(self.client_ip))
        wb_put(out, b"\r\nX-Forwarded-Proto: http\r\n", 27)
        if h.authority >= 0:
            wb_put(out, b"X-Forwarded-Host: ", 18)
            wb_put(out, p + h.authority, h.authority_len)
            wb_put(out, b"\r\n", 2)
        elif h.has_host:
            wb_put(out, b"X-Forwarded-Host: ", 18)
            wb_put(out, p + h.host, h.host_len)
            wb_put(out, b"\r\n", 2)
        wb_put(out, b"X-Request-Id: ", 14)
        wb_put(out, PyBytes_AS_STRING(self.request_id), PyBytes_GET_SIZE(self.request_id))
        wb_put(out, b"\r\n", 2)
        if h.framing == FR_CHUNKED:
            wb_put(out, b"Transfer-Encoding: chunked\r\n", 28)
        elif h.content_length >= 0:
            wb_put(out, b"Content-Length: ", 16)
            wb_put_int(out, h.content_length)
            wb_put(out, b"\r\n", 2)
        wb_put(out, b"\r\n", 2)

    cdef void _body_data(self, bytes data, Py_ssize_t off):
        cdef const char* p = PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t take, pos, i
        cdef WBuf* out
        if self.req_framing == FR_LENGTH:
            take = n - off
            if take > self.req_remaining:
                take = <Py_ssize_t>self.req_remaining
            self.req_remaining -= take
            if take > 0:
                self._send_up(data if (off == 0 and take == n) else data[off:off + take])
            if self.req_remaining == 0:
                self._request_complete(data, off + take, n)
            return
        # chunked: decode, count against the limit, re-chunk for the upstream
        pos = off
        while pos < n and self.state == CL_BODY:
            pos = chunk_decode(&self.chunk, p, pos, n)
            if pos < 0:
                self._fail_request(self.chunk.error_status, self.chunk.error_reason)
                return
            self.req_body_seen += self.chunk.span_bytes
            if self.max_body >= 0 and self.req_body_seen > self.max_body:
                self._fail_request(413, b"request body too large")
                return
            out = &self.uout
            out.len = 0
            for i in range(self.chunk.nspans):
                wb_put_hex(out, self.chunk.span_len[i])
                wb_put(out, b"\r\n", 2)
                wb_put(out, p + self.chunk.span_off[i], self.chunk.span_len[i])
                wb_put(out, b"\r\n", 2)
            if self.chunk.state == CS_DONE:
                wb_put(out, b"0\r\n\r\n", 5)
            if out.len:
                self._send_up(wb_bytes(out))
            if self.chunk.state == CS_DONE:
                self._request_complete(data, pos, n)
                return

    cdef void _request_complete(self, bytes data, Py_ssize_t pos, Py_ssize_t n):
        self.req_done = True
        self.state = CL_WAIT
        if pos < n:
            self.buf = data[pos:]
            self._pause(PR_PIPELINE)
        if self.up is not None and self.up.connected and self.up_queue is None:
            self.up.expect_response(self.target, self.route.group.header_timeout)

    cdef void _send_up(self, bytes chunk):
        if self.up_queue is None:
            if self.up is not None:
                self.up.transport.write(chunk)
            return
        self.up_queue.append(chunk)
        self.up_queued += PyBytes_GET_SIZE(chunk)
        if self.up_queued > QUEUE_HIGH_WATER:
            self._pause(PR_CONNECTING)

    cdef void _fail_request(self, int status, const char* reason):
        """A request that turned out bad after its head: nothing more goes upstream."""
        self.keep_alive = False
        if self.up is not None:
            self.up.detach_and_close()
            self.up = None
        self.up_queue = None
        if self.resp_started:
            self.abort()
        else:
            self._send_error(status, reason)

    # ---- upstream choice ---------------------------------------------------------------------

    cdef void _dispatch(self):
        cdef UpstreamConn up = self.target.take_idle()
        if up is not None:
            up.attach(self, True)
            self.up = up
            self._flush_queue()
        else:
            self._connect()

    cdef void _connect(self):
        cdef UpstreamConn up = UpstreamConn(self.worker, self.target)
        up.attach(self, False)
        self.up = up
        up.start_connect(self.route.group.connect_timeout)

    cdef void upstream_connected(self):
        self._flush_queue()

    cdef void _flush_queue(self):
        cdef list q = self.up_queue
        self.up_queue = None
        self.up_queued = 0
        if len(q) == 1:
            self.up.transport.write(q[0])
        else:
            self.up.transport.writelines(q)
        self._resume(PR_CONNECTING)
        if self.req_done:
            self.up.expect_response(self.target, self.route.group.header_timeout)
        else:
            self.up.expect_response(self.target, 0.0)

    cdef void upstream_failed(self, UpstreamConn up, int status, const char* reason, bint may_retry):
        """The upstream connection broke before a response byte arrived."""
        if up is not self.up:
            return
        self.up = None
        if may_retry and up.reused and self.retry_ok and not self.retried and self.state != CL_CLOSED:
            # a pooled connection the upstream had closed: replay once on a fresh connection
            self.retried = True
            self.up_queue = [self.up_head]
            self.up_queued = PyBytes_GET_SIZE(self.up_head)
            self._connect()
            return
        self.up_queue = None
        if self.resp_started:
            self.abort()
            return
        if not self.req_done:
            self.keep_alive = False
        self._send_error(status, reason)

    # ---- response side -----------------------------------------------------------------------

    cdef void relay_interim(self, const char* p, MessageHead* h) except *:
        cdef WBuf* out
        if self.http10 or self.state == CL_CLOSED:
            return
        out = &self.out
        out.len = 0
        wb_put(out, b"HTTP/1.1 ", 9)
        wb_put_int(out, h.status)
        wb_put(out, b" ", 1)
        wb_put(out, p + h.reason, h.reason_len)
        wb_put(out, b"\r\n", 2)
        self._put_response_fields(p, h)
        wb_put(out, b"\r\n", 2)
        self.transport.write(wb_bytes(out))

    cdef void _put_response_fields(self, const char* p, MessageHead* h) except *:
        cdef HeaderField* f
        cdef int i
        for i in range(h.nfields):
            f = &h.fields[i]
            if _is_hop_by_hop(f.kind) or f.kind == HK_X_REQUEST_ID:
                continue
            if h.nconn_tokens and _named_by_connection(h, p, f):
                continue
            _put_field(&self.out, p, f)

    cdef void begin_response(self, const char* p, MessageHead* h, int up_framing, bint has_body) except *:
        """Writes the response head into self.out; the caller appends the first body bytes and
        flushes, so a small response leaves in one write."""
        cdef WBuf* out = &self.out
        if up_framing == FR_LENGTH or not has_body:
            self.resp_mode = RM_PASS
        elif self.http10:
            self.resp_mode = RM_PASS
            self.keep_alive = False
        else:
            self.resp_mode = RM_CHUNK
        if not self.req_done:
            self.keep_alive = False
        self.resp_started = True
        out.len = 0
        wb_put(out, b"HTTP/1.1 ", 9)
        wb_put_int(out, h.status)
        wb_put(out, b" ", 1)
        wb_put(out, p + h.reason, h.reason_len)
        wb_put(out, b"\r\n", 2)
        self._put_response_fields(p, h)
        if h.content_length >= 0 and h.status != 204:
            wb_put(out, b"Content-Length: ", 16)
            wb_put_int(out, h.content_length)
            wb_put(out, b"\r\n", 2)
        elif self.resp_mode == RM_CHUNK:
            wb_put(out, b"Transfer-Encoding: chunked\r\n", 28)
        wb_put(out, b"X-Request-Id: ", 14)
        wb_put(out, PyBytes_AS_STRING(self.request_id), PyBytes_GET_SIZE(self.request_id))
        if not self.keep_alive:
            wb_put(out, b"\r\nConnection: close\r\n\r\n", 23)
        elif self.http10:
            wb_put(out, b"\r\nConnection: keep-alive\r\n\r\n", 28)
        else:
            wb_put(out, b"\r\n\r\n", 4)

    cdef void response_body(self, const char* p, Py_ssize_t n, bytes whole) except *:
        """Body bytes for the client. `whole` is the bytes object when (p, n) is all of it, so an
        unbuffered pass-through needs no copy."""
        cdef WBuf* out = &self.out
        if n == 0:
            return
        if self.resp_mode == RM_CHUNK:
            wb_put_hex(out, n)
            wb_put(out, b"\r\n", 2)
            wb_put(out, p, n)
            wb_put(out, b"\r\n", 2)
        elif out.len == 0 and whole is not None:
            if self.state != CL_CLOSED:
                self.transport.write(whole)
        else:
            wb_put(out, p, n)

    cdef void flush_response(self):
        if self.out.len:
            if self.state != CL_CLOSED:
                self.transport.write(wb_bytes(&self.out))
            self.out.len = 0

    cdef void response_complete(self) except *:
        if self.resp_mode == RM_CHUNK:
            wb_put(&self.out, b"0\r\n\r\n", 5)
        self.flush_response()
        if self.req_done:
            self._exchange_done()
        else:
            # the upstream answered before the request body ended: that connection cannot be
            # reused, and the rest of the body cannot be told from a next request
            self.keep_alive = False
            if self.up is not None:
                self.up.detach_and_close()
                self.up = None
            self._close()

    cdef void _exchange_done(self):
        cdef UpstreamConn up = self.up
        self.up = None
        if up is not None:
            up.release()
        self.route = None
        self.target = None
        self.up_head = None
        if not self.keep_alive or self.state == CL_CLOSED:
            self._close()
            return
        self.state = CL_HEAD
        self._resume(PR_PIPELINE | PR_UPSTREAM)
        if PyBytes_GET_SIZE(self.buf):
            if not self.processing:
                self._process_buffer()
        else:
            self._set_deadline(DL_IDLE, self.rt.keepalive_timeout)

    cdef void response_truncated(self):
        """The upstream died mid-body: the client must not see a clean end."""
        self.flush_response()
        self.abort()

    # ---- endings -----------------------------------------------------------------------------

    cdef void _send_error(self, int status, const char* reason):
        cdef bytes body, reason_phrase, head
        cdef bytes rid = self.request_id if self.request_id is not None else b""
        if self.state == CL_CLOSED:
            return
        body = b'{"error":"%s","request_id":"%s"}' % (<bytes>reason, rid)
        reason_phrase = _REASONS.get(status, b"Error")
        head = (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"X-Request-Id: %s\r\n%s\r\n") % (
                    status, reason_phrase, len(body), rid,
                    b"" if self.keep_alive else b"Connection: close\r\n")
        self.transport.write(head + body if not self.head_method else head)
        self.resp_started = True
        self.req_done = True
        self.resp_mode = RM_PASS
        if self.keep_alive:
            self.state = CL_WAIT
            self._exchange_done()
        else:
            self._close()

    cdef void _close(self):
        if self.state == CL_CLOSED:
            return
        self.state = CL_CLOSED
        self.deadline = 0.0
        self.transport.close()

    cpdef abort(self):
        if self.up is not None:
            self.up.detach_and_close()
            self.up = None
        if self.transport is not None and self.state != CL_CLOSED:
            self.state = CL_CLOSED
            self.transport.abort()
        self.state = CL_CLOSED

    cdef void drain(self):
        self.keep_alive = False
        if self.state == CL_HEAD and PyBytes_GET_SIZE(self.buf) == 0:
            self._close()

    cdef void on_deadline(self):
        if self.deadline_kind == DL_HEADER:
            self.keep_alive = False
            self.request_id = self.worker.new_request_id()
            self.head_method = False
            self._send_error(408, b"request header timeout")
        else:
            self._close()
        self.deadline = 0.0


cdef class UpstreamConn:
    cdef Worker worker
    cdef Target target
    cdef object transport
    cdef ClientConn client
    cdef object connect_task
    cdef readonly bint connected
    cdef bint reused
    cdef bint reusable
    cdef bint got_bytes
    cdef bint paused
    cdef bint response_complete
    cdef int nrequests
    cdef int state
    cdef bytes buf
    cdef MessageHead head
    cdef ChunkDecoder chunk
    cdef int framing
    cdef int64_t remaining
    cdef double deadline
    cdef int deadline_kind
    cdef double body_timeout
    cdef double header_timeout

    def __cinit__(self):
        head_init(&self.head, 256)

    def __init__(self, Worker worker, Target target):
        self.worker = worker
        self.target = target
        self.state = UP_CONNECTING
        self.buf = b""

    def __dealloc__(self):
        head_free(&self.head)

    def __call__(self):
        return self

    cdef void attach(self, ClientConn client, bint reused):
        self.client = client
        self.reused = reused
        self.got_bytes = False
        self.response_complete = False
        self.nrequests += 1
        if reused:
            self.state = UP_HEAD
            self.deadline = 0.0

    cdef bint usable_from_pool(self):
        return self.state == UP_IDLE and self.transport is not None and not self.transport.is_closing()

    cdef void start_connect(self, double timeout):
        self.worker.upstreams.add(self)
        self.deadline_kind = UDL_CONNECT
        self.deadline = monotonic() + timeout if timeout > 0 else 0.0
        loop = self.worker.loop
        self.connect_task = loop.create_task(
            loop.create_connection(self, self.target.host, self.target.port))
        self.connect_task.add_done_callback(self._connect_done)

    def _connect_done(self, task):
        self.connect_task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        self.state = UP_CLOSED
        self.worker.upstreams.discard(self)
        if self.client is not None:
            client = self.client
            self.client = None
            if isinstance(exc, ConnectionRefusedError):
                client.upstream_failed(self, 502, b"upstream connection refused", False)
            else:
                client.upstream_failed(self, 502, b"upstream connect failed", False)

    cdef void expect_response(self, Target target, double header_timeout):
        self.header_timeout = header_timeout if header_timeout > 0 else self.header_timeout
        if header_timeout > 0 and self.state == UP_HEAD:
            self.deadline_kind = UDL_HEADER
            self.deadline = monotonic() + header_timeout
        self.worker.upstreams.add(self)

    cdef void idle_since_pool(self, double until):
        self.state = UP_IDLE
        self.client = None
        self.deadline_kind = UDL_POOL_IDLE
        self.deadline = until

    # ---- asyncio protocol ----------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.connected = True
        self.state = UP_HEAD
        self.deadline = 0.0
        if self.client is None:
            transport.close()
            return
        group = self.client.route.group if self.client.route is not None else None
        if group is not None:
            self.body_timeout = (<UpstreamGroup>group).body_timeout
            self.header_timeout = (<UpstreamGroup>group).header_timeout
        self.client.upstream_connected()

    def data_received(self, bytes data):
        cdef ClientConn client = self.client
        if client is None or self.state == UP_IDLE:
            # bytes while no request is outstanding: this connection can no longer be trusted
            self.close()
            return
        self.got_bytes = True
        if self.state == UP_HEAD:
            self.buf = data if PyBytes_GET_SIZE(self.buf) == 0 else self.buf + data
            self._parse_heads()
        elif self.state == UP_BODY:
            if self.response_complete:
                self.reusable = False
                return
            if self.body_timeout > 0:
                self.deadline = monotonic() + self.body_timeout
            self._body(data, 0, PyBytes_GET_SIZE(data))
            client.flush_response()

    cdef void _parse_heads(self):
        cdef ClientConn client = self.client
        cdef bytes data
        cdef const char* p
        cdef Py_ssize_t n, r
        cdef bint has_body
        cdef MessageHead* h = &self.head
        while True:
            data = self.buf
            p = PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
            r = parse_response_head(h, p, n, &client.rt.head_limits)
            if r == PARSE_INCOMPLETE:
                return
            if r == PARSE_ERROR:
                self.client = None
                self.close()
                client.upstream_failed(self, 502, h.error_reason, False)
                return
            if h.status < 200:
                if h.status == 101:
                    self.client = None
                    self.close()
                    client.upstream_failed(self, 502, b"upstream switched protocols unasked", False)
                    return
                client.relay_interim(p, h)
                self.buf = data[r:]
                if r == n:
                    return
                continue
            break
        self.buf = b""
        has_body = response_has_body(h.status, client.head_method)
        if not has_body:
            self.framing = FR_NONE
        elif h.framing == FR_CHUNKED:
            self.framing = FR_CHUNKED
            chunk_init(&self.chunk, client.rt.head_limits.max_head_bytes)
        elif h.content_length >= 0:
            self.framing = FR_LENGTH if h.content_length > 0 else FR_NONE
            self.remaining = h.content_length
        else:
            self.framing = FR_CLOSE
        self.reusable = (not h.conn_close if h.version_minor == 1 else h.conn_keep_alive) \
            and self.framing != FR_CLOSE
        client.begin_response(p, h, self.framing, has_body)
        self.state = UP_BODY
        self.deadline_kind = UDL_BODY
        self.deadline = monotonic() + self.body_timeout if self.body_timeout > 0 else 0.0
        if self.framing == FR_NONE:
            if r < n:
                self.reusable = False
            self._complete()
            return
        if r < n:
            self._body(data, r, n)
        client.flush_response()

    cdef void _body(self, bytes data, Py_ssize_t off, Py_ssize_t n):
        cdef ClientConn client = self.client
        cdef const char* p = PyBytes_AS_STRING(data)
        cdef Py_ssize_t take, pos, i
        if self.framing == FR_LENGTH:
            take = n - off
            if take > self.remaining:
                take = <Py_ssize_t>self.remaining
                self.reusable = False       # bytes past the end of the response
            self.remaining -= take
            client.response_body(p + off, take, data if (off == 0 and take == n) else None)
            if self.remaining == 0:
                self._complete()
        elif self.framing == FR_CHUNKED:
            pos = off
            while pos < n:
                pos = chunk_decode(&self.chunk, p, pos, n)
                if pos < 0:
                    self.reusable = False
                    self._truncated()
                    return
                for i in range(self.chunk.nspans):
                    client.response_body(p + self.chunk.span_off[i], self.chunk.span_len[i], None)
                if self.chunk.state == CS_DONE:
                    if pos < n:
                        self.reusable = False
                    self._complete()
                    return
        else:
            client.response_body(p + off, n - off, data if off == 0 else None)

    cdef void _complete(self):
        self.response_complete = True
        self.deadline = 0.0
        self.client.response_complete()

    cdef void _truncated(self):
        cdef ClientConn client = self.client
        self.client = None
        self.close()
        if client is not None:
            client.up = None
            client.response_truncated()

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        cdef ClientConn client = self.client
        self.connected = False
        was = self.state
        self.state = UP_CLOSED
        self.deadline = 0.0
        self.worker.upstreams.discard(self)
        if client is None:
            self.target.forget(self)
            return
        self.client = None
        if was == UP_BODY:
            if self.framing == FR_CLOSE and not self.response_complete:
                client.up = None
                self.response_complete = True
                client.response_complete()
            elif not self.response_complete:
                client.up = None
                client.response_truncated()
        elif was == UP_HEAD or was == UP_CONNECTING:
            client.upstream_failed(self, 502,
                                   b"upstream reset the connection" if isinstance(exc, ConnectionResetError)
                                   else b"upstream closed the connection",
                                   not self.got_bytes)

    def pause_writing(self):
        if self.client is not None:
            self.client._pause(PR_UPSTREAM)

    def resume_writing(self):
        if self.client is not None:
            self.client._resume(PR_UPSTREAM)

    cdef void pause_reading_for_client(self):
        if not self.paused and self.transport is not None and self.connected:
            self.paused = True
            self.deadline = 0.0         # a slow client is not the upstream's fault
            self.transport.pause_reading()

    cdef void resume_reading_for_client(self):
        if self.paused and self.transport is not None and self.connected:
            self.paused = False
            if self.state == UP_BODY and self.body_timeout > 0:
                self.deadline = monotonic() + self.body_timeout
            self.transport.resume_reading()

    # ---- endings -----------------------------------------------------------------------------

    cdef void release(self):
        """The exchange ended: back to the pool if this connection can carry another request."""
        self.client = None
        if self.reusable and self.connected and self.state == UP_BODY and self.target.max_idle > 0:
            if self.paused:
                self.paused = False
                self.transport.resume_reading()
            self.state = UP_IDLE
            self.target.give_back(self, monotonic())
            if self.state == UP_IDLE:
                self.worker.upstreams.add(self)
        else:
            self.close()

    cdef void detach_and_close(self):
        self.client = None
        self.close()

    cpdef close(self):
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        self.worker.upstreams.discard(self)
        self.deadline = 0.0
        if self.state != UP_CLOSED:
            self.state = UP_CLOSED
            if self.transport is not None:
                self.transport.abort()
        self.target.forget(self)

    cdef void on_deadline(self):
        cdef ClientConn client = self.client
        kind = self.deadline_kind
        self.deadline = 0.0
        self.client = None
        self.close()
        if client is None:
            return
        if kind == UDL_BODY:
            client.up = None
            client.response_truncated()
        else:
            client.upstream_failed(self, 504, b"upstream connect timeout" if kind == UDL_CONNECT
                                   else b"upstream response timeout", False)
