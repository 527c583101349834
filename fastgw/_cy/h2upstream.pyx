# HTTP/2 to upstreams (`protocol: h2c` or `h2`, docs/upstreams.md): libnghttp2's client session over one
# connection per target that multiplexes many exchanges.
#
#   H2UpstreamConn    the connection (an asyncio protocol, in worker.upstreams for its deadlines): the session,
#             its streams by id, the exchanges waiting for it to connect, the streams limit (the
#             peer's SETTINGS_MAX_CONCURRENT_STREAMS, capped by `http2.max_concurrent_streams`)
#   H2UpstreamStream  one exchange's stream: what the Exchange sees as its UpstreamConn (the same methods,
#             overridden), so every phase and policy works as over HTTP/1.1
#
# The Exchange builds an HTTP/1.1 request head (Exchange._build_upstream_head); it becomes HEADERS here
# (pseudo-headers from the request line and Host, connection-specific fields dropped, `te: trailers`
# sent). The response's HEADERS become an HTTP/1.1 head parsed by the same strict parser, so the
# response phase and ClientConn read it as they read any upstream's. Trailers go to
# Exchange.response_trailers. Flow control: the stream's window is consumed as the client takes the
# bytes (paused with a slow client), so one slow client stalls its stream, not the connection.

from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memcmp
from libc.stdint cimport int32_t, uint32_t, uint8_t
from cpython.bytes cimport PyBytes_FromStringAndSize
from fastgw._cy.nghttp2 cimport *

cdef enum:
    H2_OFF = 0
    H2_CLEAR = 1          # h2c: prior knowledge over TCP
    H2_TLS = 2            # h2: ALPN h2 over the upstream's TLS
    H2_STREAM_WINDOW = 262144          # bytes a stream may have unread by its client (QUEUE_HIGH_WATER)
    H2_CONN_WINDOW = 16777216

cdef nghttp2_session_callbacks* _h2u_callbacks = NULL
cdef nghttp2_option* _h2u_option = NULL


cdef int _h2u_setup() except -1:
    global _h2u_callbacks, _h2u_option
    if _h2u_callbacks != NULL:
        return 0
    if nghttp2_session_callbacks_new(&_h2u_callbacks) != 0:
        raise MemoryError()
    nghttp2_session_callbacks_set_on_frame_recv_callback(_h2u_callbacks, _h2u_on_frame_recv)
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(_h2u_callbacks, _h2u_on_data_chunk)
    nghttp2_session_callbacks_set_on_stream_close_callback(_h2u_callbacks, _h2u_on_stream_close)
    nghttp2_session_callbacks_set_on_header_callback(_h2u_callbacks, _h2u_on_header)
    if nghttp2_option_new(&_h2u_option) != 0:
        raise MemoryError()
    nghttp2_option_set_no_auto_window_update(_h2u_option, 1)
    return 0


cdef class H2UpstreamConn(UpstreamConn):
    cdef nghttp2_session* session
    cdef dict streams               # stream id -> H2UpstreamStream, until nghttp2 closes the stream
    cdef list waiting               # H2Streams whose exchange waits for the connection
    cdef list touched               # streams given response bytes during one read: flushed after it
    cdef int nactive                # streams assigned and not yet released
    cdef int cap                    # http2.max_concurrent_streams
    cdef int limit                  # min(cap, the peer's SETTINGS_MAX_CONCURRENT_STREAMS)
    cdef bint ready
    cdef bint goaway                # the peer said GOAWAY, or we retire it: no new streams
    cdef bint busy                  # inside nghttp2 (recv or send): sending waits until it returns
    cdef bint want_flush
    cdef object cb_error

    def __init__(self, Worker worker, Target target):
        UpstreamConn.__init__(self, worker, target)
        self.streams = {}
        self.waiting = []
        self.touched = []
        self.cap = target.h2_max_streams
        self.limit = self.cap

    def __dealloc__(self):
        if self.session != NULL:
            nghttp2_session_del(self.session)
            self.session = NULL

    cdef bint accepting(self):
        return (not self.goaway and self.state != UP_CLOSED and self.nactive < self.limit
                and self.nrequests < self.target.max_requests)

    # ---- connecting ----------------------------------------------------------------------------

    def _connect_done(self, task):
        self.connect_task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if isinstance(exc, ConnectionRefusedError):
            reason = b"upstream connection refused"
        elif isinstance(exc, _socket.gaierror):
            reason = b"upstream name not resolved"
        elif isinstance(exc, _SSLError):
            reason = b"upstream TLS handshake failed"
        else:
            reason = b"upstream connect failed"
        self._fail_waiting(connect_failure_kind(exc), 502, reason, RF_UPSTREAM_CONNECT_FAILURE)
        self.close()

    cdef int _fail_waiting(self, int kind, int status, const char* reason, int flag) except -1:
        cdef H2UpstreamStream s
        cdef Exchange ex
        waiting, self.waiting = self.waiting, []
        for s in waiting:
            ex = s.ex
            s.detach()
            if ex is not None:
                count_failure(ex, kind)
                ex.upstream_failed(s, status, reason, False, flag)

    def connection_made(self, transport):
        cdef nghttp2_settings_entry iv[2]
        cdef H2UpstreamStream s
        self.transport = transport
        self.transport_write = transport.write
        self.transport_is_closing = transport.is_closing
        self.connected = True
        self.deadline = 0.0
        if self.target.ssl_context is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            if self.target.peer_check is not None and not self.target.peer_check(ssl_object):
                self._fail_waiting(connect_failure_kind(_SSLError()), 502, b"upstream TLS handshake failed",
                                   RF_UPSTREAM_CONNECT_FAILURE)
                self.close()
                return
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                self._fail_waiting(FK_PROTOCOL_ERROR, 502, b"upstream did not negotiate h2 (ALPN)",
                                   RF_UPSTREAM_PROTOCOL_ERROR)
                self.close()
                return
        _h2u_setup()
        if nghttp2_session_client_new2(&self.session, _h2u_callbacks, <void*>self, _h2u_option) != 0:
            raise MemoryError()
        iv[0].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
        iv[0].value = 0
        iv[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        iv[1].value = H2_STREAM_WINDOW
        nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, iv, 2)
        nghttp2_session_set_local_window_size(self.session, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW)
        self.ready = True
        self.state = UP_BODY if self.nactive else UP_IDLE
        waiting, self.waiting = self.waiting, []
        self.busy = True           # one write for the preface and every waiting request
        try:
            for s in waiting:
                s.conn_ready()
        finally:
            self.busy = False
        self.flush()
        self._idle_check()

    # ---- reading -------------------------------------------------------------------------------

    def data_received(self, bytes data):
        cdef ssize_t r
        cdef H2UpstreamStream s
        if self.session == NULL:
            return
        self.got_bytes = True
        self.busy = True
        try:
            r = nghttp2_session_mem_recv(self.session, <const uint8_t*>PyBytes_AS_STRING(data),
                                         PyBytes_GET_SIZE(data))
        finally:
            self.busy = False
        if self.cb_error is not None:
            exc = self.cb_error
            self.cb_error = None
            self._lost_all(None, True)
            raise exc
        if r < 0:
            self._lost_all(None, True)
            return
        if self.touched:
            touched, self.touched = self.touched, []
            for s in touched:
                s.touched = False
                if s.ex is not None:
                    s.ex.flush_response()
        self.flush()
        if self.session != NULL and not nghttp2_session_want_read(self.session) \
                and not nghttp2_session_want_write(self.session):
            self._lost_all(None, False)

    cdef int flush(self) except -1:
        """What nghttp2 has to send, in one write (deferred while inside nghttp2)."""
        cdef const uint8_t* data
        cdef ssize_t n
        cdef list pieces = None
        cdef bytes piece, first = None
        if self.busy:
            self.want_flush = True
            return 0
        if self.session == NULL or self.transport is None:
            return 0
        self.busy = True
        try:
            while True:
                self.want_flush = False
                n = nghttp2_session_mem_send(self.session, &data)
                if n < 0:
                    break
                if n == 0:
                    if self.want_flush:
                        continue
                    break
                piece = PyBytes_FromStringAndSize(<const char*>data, n)
                if first is None:
                    first = piece
                else:
                    if pieces is None:
                        pieces = [first]
                    pieces.append(piece)
        finally:
            self.busy = False
        if pieces is not None:
            self.transport.writelines(pieces)
        elif first is not None:
            self.transport_write(first)
        if n < 0:
            self._lost_all(None, True)
        return 0

    cdef int arm(self, double d) except -1:
        """A stream's deadline: the connection's is the earliest of them (swept in on_deadline)."""
        if d > 0 and (self.deadline == 0.0 or d < self.deadline or self.deadline_kind == UDL_POOL_IDLE):
            self.deadline = d
            self.deadline_kind = UDL_NONE

    cdef int stream_released(self, H2UpstreamStream s) except -1:
        if s.counted_active:
            s.counted_active = False
            self.nactive -= 1
        self._idle_check()

    cdef int _idle_check(self) except -1:
        if self.nactive == 0 and self.state != UP_CLOSED and self.ready:
            if self.goaway or self.target.retired or self.nrequests >= self.target.max_requests:
                self.close()
                return 0
            self.state = UP_IDLE
            if self.deadline_kind != UDL_NONE or self.deadline == 0.0:
                self.deadline_kind = UDL_POOL_IDLE
                self.deadline = monotonic() + self.target.idle_timeout
        elif self.nactive and self.ready:
            self.state = UP_BODY

    cdef int on_deadline(self) except -1:
        cdef double now = monotonic()
        cdef double nxt = 0.0
        cdef H2UpstreamStream s
        kind = self.deadline_kind
        self.deadline = 0.0
        if kind == UDL_CONNECT:
            self._fail_waiting(FK_CONNECT_TIMEOUT, 504, b"upstream connect timeout", RF_UPSTREAM_CONNECT_FAILURE)
            self.close()
            return 0
        if kind == UDL_POOL_IDLE:
            if self.nactive == 0:
                self.close()
            return 0
        self.busy = True
        try:
            for s in list(self.streams.values()):
                if (s.deadline > 0 and now >= s.deadline) or (0 < s.call_deadline <= now and s.ex is not None):
                    s.on_deadline()
        finally:
            self.busy = False
        for s in self.streams.values():
            if s.ex is None:
                continue
            if s.deadline > 0 and (nxt == 0.0 or s.deadline < nxt):
                nxt = s.deadline
            if s.call_deadline > 0 and (nxt == 0.0 or s.call_deadline < nxt):
                nxt = s.call_deadline
        self.deadline_kind = UDL_NONE
        self.deadline = nxt
        self.flush()
        self._idle_check()

    # ---- settings, goaway ----------------------------------------------------------------------

    cdef int settings_received(self) except -1:
        cdef uint32_t peer = nghttp2_session_get_remote_settings(self.session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
        self.limit = self.cap if peer > <uint32_t>self.cap else <int>peer

    # ---- endings -------------------------------------------------------------------------------

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.connected = False
        self.transport = None
        self.transport_write = self.transport_is_closing = None
        self._lost_all(exc, False)

    cdef int _lost_all(self, exc, bint protocol_error) except -1:
        """The connection is gone: every exchange on it learns so, as over HTTP/1.1."""
        cdef H2UpstreamStream s
        cdef Exchange ex
        cdef list all_streams = list(self.streams.values())
        self.streams = {}
        self._fail_waiting(FK_PROTOCOL_ERROR if protocol_error else FK_RESET, 502,
                           b"upstream closed the connection", RF_UPSTREAM_RESET)
        self.close()
        for s in all_streams:
            ex = s.ex
            if ex is None:
                continue
            s.detach()
            if s.response_complete:
                continue
            count_failure(ex, FK_PROTOCOL_ERROR if protocol_error else FK_RESET)
            if s.head_done:
                ex.response_truncated(RF_UPSTREAM_PROTOCOL_ERROR if protocol_error else RF_UPSTREAM_RESET)
            else:
                ex.upstream_failed(s, 502, b"upstream HTTP/2 protocol error" if protocol_error else
                                   (b"upstream reset the connection" if isinstance(exc, ConnectionResetError)
                                    else b"upstream closed the connection"),
                                   not protocol_error and not s.got_bytes and s.reused,
                                   RF_UPSTREAM_PROTOCOL_ERROR if protocol_error else RF_UPSTREAM_RESET)

    cpdef close(self):
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        self._uncount()
        self._untrack()
        self.deadline = 0.0
        self.goaway = True
        if self.state != UP_CLOSED:
            self.state = UP_CLOSED
            if self.transport is not None:
                self.transport.abort()
        try:
            self.target.h2conns.remove(self)
        except ValueError:
            pass
        if self.waiting:
            self._fail_waiting(FK_RESET, 502, b"upstream connection closed", RF_UPSTREAM_RESET)
        if self.streams:
            self._lost_all(None, False)


cdef class H2UpstreamStream(UpstreamConn):
    cdef H2UpstreamConn conn
    cdef int32_t stream_id
    cdef list body                  # request bytes nghttp2 has not taken yet
    cdef Py_ssize_t body_off        # into body[0]
    cdef int64_t body_pending
    cdef bint submitted
    cdef bint eof_sent              # END_STREAM sent (the request is whole upstream)
    cdef bint head_done             # the final response head arrived
    cdef bint stream_closed         # nghttp2 closed it
    cdef bint counted_active        # in conn.nactive
    cdef bint touched
    cdef bint ended_while_held
    cdef bint body_paused_client    # client reading paused for this stream's request body
    cdef bint has_cl
    cdef int resp_status
    cdef double call_deadline       # a gRPC call's `grpc-timeout` passes then: the whole call, body too
    cdef int64_t unconsumed         # response bytes received and not yet given back to the window
    cdef WBuf rbuf                  # response field lines (then trailer lines) as HEADERS decode

    def __cinit__(self):
        wb_init(&self.rbuf, 256)

    def __dealloc__(self):
        wb_free(&self.rbuf)

    def __init__(self, Worker worker, Target target, H2UpstreamConn conn):
        UpstreamConn.__init__(self, worker, target)
        self.conn = conn

    cdef int attach(self, Exchange ex, bint reused) except -1:
        cdef object v
        cdef double t
        UpstreamConn.attach(self, ex, reused)
        if ex.h != NULL and ex.h.nfields:
            v = _field_value(ex.h, ex.p, b"grpc-timeout")
            if v is not None:
                t = grpc_timeout_seconds(<bytes>v)
                if t > 0:
                    self.call_deadline = monotonic() + t
                if t > 0 and (self.header_timeout <= 0 or t < self.header_timeout):
                    self.header_timeout = t

    cdef int detach(self) except -1:
        self.ex = None
        self.deadline = 0.0
        self.conn.stream_released(self)

    cdef int conn_ready(self) except -1:
        cdef Exchange ex = self.ex
        self.connected = True
        self.state = UP_HEAD
        self.deadline = 0.0
        if ex is not None:
            ex.upstream_connected()

    cdef int start_connect(self, double timeout) except -1:
        return 0        # the connection's own (H2UpstreamConn.start_connect) covers it

    # ---- the request ---------------------------------------------------------------------------

    cdef int send_queue(self, list q) except -1:
        cdef Py_ssize_t i
        if self.conn.session == NULL or self.ex is None:
            return 0
        if len(q) > 1:
            self.body = q[1:]
            for i in range(1, len(q)):
                self.body_pending += PyBytes_GET_SIZE(<bytes>q[i])
        self._submit(<bytes>q[0])
        self.conn.flush()

    cdef int send_request_bytes(self, bytes chunk) except -1:
        if self.conn.session == NULL or self.stream_closed or self.eof_sent:
            return 0
        if PyBytes_GET_SIZE(chunk) == 0:
            return 0
        if self.body is None:
            self.body = []
        self.body.append(chunk)
        self.body_pending += PyBytes_GET_SIZE(chunk)
        if self.body_pending > QUEUE_HIGH_WATER and self.ex is not None and not self.body_paused_client:
            self.body_paused_client = True
            self.ex.down.pause_reading_for(self.ex, PR_UPSTREAM)
        if self.submitted and self.stream_id > 0:
            nghttp2_session_resume_data(self.conn.session, self.stream_id)
            self.conn.flush()

    cdef bint request_finished(self):
        return self.ex is None or self.ex.req_done

    cdef int _submit(self, bytes head) except -1:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(head)
        cdef bytes low = PyBytes_FromStringAndSize(PyBytes_AS_STRING(head), n)
        cdef char* p = PyBytes_AS_STRING(low)
        cdef Py_ssize_t i, lines = 0, pos, sp1 = -1, sp2 = -1, eol, colon, vs, ve, k, j
        cdef nghttp2_nv* nva
        cdef nghttp2_data_provider prd
        cdef bint with_body
        cdef int32_t sid
        cdef bytes authority = None
        for i in range(n):
            if p[i] == b'\n':
                lines += 1
        nva = <nghttp2_nv*>malloc(sizeof(nghttp2_nv) * (lines + 5))
        if nva == NULL:
            raise MemoryError()
        try:
            # request line: METHOD SP target SP HTTP/1.1 CRLF
            pos = 0
            while p[pos] != b'\r':
                if p[pos] == b' ':
                    if sp1 < 0:
                        sp1 = pos
                    else:
                        sp2 = pos
                pos += 1
            _nv(&nva[0], b":method", 7, p, sp1)
            if self.target.h2_mode == H2_TLS:
                _nv(&nva[1], b":scheme", 7, b"https", 5)
            else:
                _nv(&nva[1], b":scheme", 7, b"http", 4)
            _nv(&nva[3], b":path", 5, p + sp1 + 1, sp2 - sp1 - 1)
            k = 4
            pos += 2
            while pos + 1 < n and p[pos] != b'\r':
                eol = pos
                while p[eol] != b'\r':
                    eol += 1
                colon = pos
                while p[colon] != b':':
                    p[colon] = <char>_LOWER[<uint8_t>p[colon]]
                    colon += 1
                vs = colon + 1
                while vs < eol and (p[vs] == b' ' or p[vs] == b'\t'):
                    vs += 1
                ve = eol
                while ve > vs and (p[ve - 1] == b' ' or p[ve - 1] == b'\t'):
                    ve -= 1
                if _h2u_dropped(p + pos, colon - pos):
                    pass
                elif colon - pos == 4 and memcmp(p + pos, b"host", 4) == 0:
                    if authority is None:
                        _nv(&nva[2], b":authority", 10, p + vs, ve - vs)
                        authority = b""
                else:
                    _nv(&nva[k], p + pos, colon - pos, p + vs, ve - vs)
                    k += 1
                pos = eol + 2
            if authority is None:
                authority = self.target.address_bytes
                _nv(&nva[2], b":authority", 10, PyBytes_AS_STRING(authority), PyBytes_GET_SIZE(authority))
            _nv(&nva[k], b"te", 2, b"trailers", 8)
            k += 1
            with_body = not (self.ex.req_done and self.body_pending == 0)
            prd.source.ptr = <void*>self
            prd.read_callback = _h2u_read_body
            sid = nghttp2_submit_request(self.conn.session, NULL, nva, k, &prd if with_body else NULL, NULL)
        finally:
            free(nva)
        if sid < 0:
            raise RuntimeError("nghttp2_submit_request: %s" % (<bytes>nghttp2_strerror(sid)).decode())
        self.stream_id = sid
        self.submitted = True
        self.eof_sent = not with_body
        self.conn.streams[sid] = self

    cdef ssize_t read_body(self, uint8_t* buf, size_t length, uint32_t* data_flags) except? -1:
        cdef size_t copied = 0
        cdef Py_ssize_t avail, take
        cdef bytes piece
        while self.body and copied < length:
            piece = <bytes>self.body[0]
            avail = PyBytes_GET_SIZE(piece) - self.body_off
            take = avail if <size_t>avail <= length - copied else <Py_ssize_t>(length - copied)
            memcpy(buf + copied, PyBytes_AS_STRING(piece) + self.body_off, take)
            copied += take
            self.body_off += take
            if self.body_off == PyBytes_GET_SIZE(piece):
                del self.body[0]
                self.body_off = 0
        self.body_pending -= copied
        if self.body_paused_client and self.body_pending <= QUEUE_HIGH_WATER // 2:
            self.body_paused_client = False
            if self.ex is not None:
                self.ex.down.resume_reading_for(self.ex, PR_UPSTREAM)
        if not self.body and self.request_finished():
            data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
            self.eof_sent = True
            if self.ex is not None and self.ex.request_trailers is not None \
                    and self._submit_trailers(self.ex.request_trailers):
                data_flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM     # the trailers end the stream
            return copied
        if copied == 0:
            return NGHTTP2_ERR_DEFERRED
        return copied

    cdef bint _submit_trailers(self, bytes lines) except -1:
        """The client's request trailers ("name: value\\r\\n" lines, lowercase names from an HTTP/2
        client) as a HEADERS frame with END_STREAM after the body (nghttp2 copies the fields)."""
        cdef const char* p = PyBytes_AS_STRING(lines)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(lines), pos = 0, eol, colon, vs
        cdef int k = 0, cap = lines.count(b"\n")
        cdef nghttp2_nv* nva
        cdef int rv
        if cap == 0:
            return False
        nva = <nghttp2_nv*>malloc(cap * sizeof(nghttp2_nv))
        if nva == NULL:
            raise MemoryError()
        try:
            while pos < n and k < cap:
                eol = pos
                while eol < n and p[eol] != b'\r':
                    eol += 1
                colon = pos
                while colon < eol and p[colon] != b':':
                    colon += 1
                if colon < eol and colon > pos:
                    vs = colon + 1
                    while vs < eol and p[vs] == b' ':
                        vs += 1
                    _nv(&nva[k], p + pos, colon - pos, p + vs, eol - vs)
                    k += 1
                pos = eol + 2
            rv = nghttp2_submit_trailer(self.conn.session, self.stream_id, nva, k) if k else -1
        finally:
            free(nva)
        return rv == 0

    cdef int expect_response(self, bint request_sent, double now) except -1:
        if request_sent and self.state == UP_HEAD:
            self.request_sent = True
            self.deadline_kind = UDL_HEADER
            self.deadline = 0.0 if self.paused else now + self.header_timeout
            self.conn.arm(self.deadline)
            self.conn.arm(self.call_deadline)
        if request_sent and self.submitted and not self.eof_sent and self.stream_id > 0 \
                and self.conn.session != NULL:
            nghttp2_session_resume_data(self.conn.session, self.stream_id)
            self.conn.flush()

    # ---- the response --------------------------------------------------------------------------

    cdef int on_field(self, const uint8_t* name, size_t namelen, const uint8_t* value, size_t valuelen) except -1:
        cdef Py_ssize_t i
        cdef int st = 0
        if not self.head_done and namelen == 7 and memcmp(name, b":status", 7) == 0:
            for i in range(<Py_ssize_t>valuelen):
                st = st * 10 + (value[i] - 48)
            self.resp_status = st
            return 0
        if namelen and name[0] == b':':
            return 0
        if not self.head_done and namelen == 14 and memcmp(name, b"content-length", 14) == 0:
            self.has_cl = True
        wb_put(&self.rbuf, <const char*>name, namelen)
        wb_put(&self.rbuf, b": ", 2)
        wb_put(&self.rbuf, <const char*>value, valuelen)
        wb_put(&self.rbuf, b"\r\n", 2)

    cdef int on_headers(self, bint end_stream) except -1:
        cdef Exchange ex = self.ex
        if self.head_done:
            self._on_trailers()
            return 0
        if self.resp_status < 200:
            self.rbuf.len = 0          # an interim response: not relayed
            self.has_cl = False
            return 0
        self.head_done = True
        self.got_bytes = True
        reason = _REASONS.get(self.resp_status, b"")
        lines = wb_bytes(&self.rbuf)
        self.rbuf.len = 0
        if end_stream and not self.has_cl and response_has_body(self.resp_status, ex.head_method):
            lines += b"content-length: 0\r\n"
        data = b"HTTP/1.1 %d %s\r\n%s\r\n" % (self.resp_status, reason, lines)
        self._begin(data, end_stream)

    cdef int _begin(self, bytes data, bint end_stream) except -1:
        cdef Exchange ex = self.ex
        cdef MessageHead* h = &self.head
        cdef Py_ssize_t r
        cdef bint has_body
        if ex.rt.head_limits.max_headers > h.fields_cap:
            head_free(h)
            head_init(h, ex.rt.head_limits.max_headers)
        r = parse_response_head(h, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), &ex.rt.head_limits)
        if r != PyBytes_GET_SIZE(data):
            self._reset_stream(NGHTTP2_PROTOCOL_ERROR)
            self.detach()
            count_failure(ex, FK_PROTOCOL_ERROR)
            if r == PARSE_ERROR:
                ex.upstream_failed(self, 502, h.error_reason, False, RF_UPSTREAM_PROTOCOL_ERROR)
            else:
                ex.upstream_failed(self, 502, b"invalid upstream response head", False, RF_UPSTREAM_PROTOCOL_ERROR)
            return 0
        has_body = response_has_body(h.status, ex.head_method)
        if not has_body or h.content_length == 0:
            self.framing = FR_NONE
        elif h.content_length > 0:
            self.framing = FR_LENGTH
        else:
            self.framing = FR_CLOSE          # until END_STREAM
        self.held = data                     # the head's offsets point into it
        rr = ex.begin_response(PyBytes_AS_STRING(data), h, self.framing, has_body)
        if rr == RESP_ANSWERED:
            return 0
        if rr == RESP_PAUSED:
            self.state = UP_HELD
            self.ended_while_held = end_stream
            return 0
        self._relay_started(end_stream)

    cdef int _relay_started(self, bint end_stream) except -1:
        self.state = UP_BODY
        self.deadline_kind = UDL_BODY
        self.deadline = monotonic() + self.body_timeout if self.body_timeout > 0 else 0.0
        self.conn.arm(self.deadline)
        if end_stream:
            self._complete()
        else:
            self._touch()

    cdef int _touch(self) except -1:
        if not self.touched:
            self.touched = True
            self.conn.touched.append(self)

    cdef int on_data(self, const uint8_t* data, size_t n) except -1:
        cdef bytes piece
        if self.ex is None or not self.head_done or self.state == UP_HELD:
            if self.state == UP_HELD and self.ex is not None:
                if self.held_tail is None:
                    self.held_tail = []
                self.held_tail.append(PyBytes_FromStringAndSize(<const char*>data, n))
                self.unconsumed += n
                return 0
            nghttp2_session_consume(self.conn.session, self.stream_id, n)
            return 0
        if self.paused:
            self.unconsumed += n
        else:
            nghttp2_session_consume(self.conn.session, self.stream_id, n)
        if self.framing == FR_NONE:
            return 0
        if self.body_timeout > 0:
            self.deadline = monotonic() + self.body_timeout
            self.conn.arm(self.deadline)
        piece = PyBytes_FromStringAndSize(<const char*>data, n)
        self.ex.response_body(piece, 0, n)
        self._touch()

    cdef int on_end(self) except -1:
        if self.ex is None:
            return 0
        if self.state == UP_HELD:
            self.ended_while_held = True
            return 0
        if self.state == UP_BODY:
            self._complete()

    cdef int _on_trailers(self) except -1:
        cdef bytes lines = wb_bytes(&self.rbuf)
        self.rbuf.len = 0
        if self.ex is None:
            return 0
        if self.state == UP_HELD:
            self.held_tail = (self.held_tail or []) + [lines, None]     # None: the trailers marker
            self.ended_while_held = True
            return 0
        if self.state != UP_BODY:
            return 0
        self.ex.response_trailers(lines)
        if self.ex is not None:
            self._complete()

    cdef int _complete(self) except -1:
        cdef Exchange ex = self.ex
        self.response_complete = True
        self.deadline = 0.0
        if self.touched and ex is not None:
            ex.flush_response()
        ex.response_complete()

    cdef int continue_held(self) except -1:
        cdef list tail = self.held_tail
        cdef bint ended = self.ended_while_held
        cdef Py_ssize_t i
        self.held_tail = None
        self.ended_while_held = False
        self.state = UP_BODY
        self.deadline_kind = UDL_BODY
        self.deadline = monotonic() + self.body_timeout if self.body_timeout > 0 else 0.0
        self.conn.arm(self.deadline)
        if tail is not None:
            for i in range(len(tail)):
                if self.ex is None:
                    return 0
                if tail[i] is None:
                    continue
                if i + 1 < len(tail) and tail[i + 1] is None:
                    self.ex.response_trailers(<bytes>tail[i])
                elif self.framing != FR_NONE:
                    self.ex.response_body(<bytes>tail[i], 0, PyBytes_GET_SIZE(<bytes>tail[i]))
        if self.ex is None:
            return 0
        if not self.paused:
            self._give_back_window()
        if ended:
            self._complete()
        else:
            self.ex.flush_response()
            self.conn.flush()

    cdef int _give_back_window(self) except -1:
        if self.unconsumed and self.conn.session != NULL and not self.stream_closed:
            nghttp2_session_consume(self.conn.session, self.stream_id, self.unconsumed)
        self.unconsumed = 0

    cdef int set_policy_deadline(self, double timeout) except -1:
        self.deadline_kind = UDL_POLICY
        self.deadline = monotonic() + timeout
        self.conn.arm(self.deadline)

    cdef int pause_reading_for_client(self) except -1:
        if not self.paused:
            self.paused = True
            self.deadline = 0.0         # a slow client is not the upstream's fault

    cdef int resume_reading_for_client(self) except -1:
        if self.paused:
            self.paused = False
            if self.state == UP_BODY and self.body_timeout > 0:
                self.deadline = monotonic() + self.body_timeout
            elif self.state == UP_HEAD and self.request_sent:
                self.deadline_kind = UDL_HEADER
                self.deadline = monotonic() + self.header_timeout
            self.conn.arm(self.deadline)
            if self.state != UP_HELD:
                self._give_back_window()
                self.conn.flush()

    cdef int on_closed(self, uint32_t error_code) except -1:
        """nghttp2 closed the stream (after END_STREAM both ways, or a reset)."""
        cdef Exchange ex = self.ex
        self.stream_closed = True
        if ex is None or self.response_complete:
            return 0
        if self.state == UP_HELD and self.ended_while_held:
            return 0                    # all of it is held: judged when the policy lets it through
        self.detach()
        count_failure(ex, FK_RESET)
        if self.head_done:
            ex.response_truncated(RF_UPSTREAM_RESET)
        else:
            if error_code == NGHTTP2_REFUSED_STREAM:
                self.reused = True      # not processed (RFC 9113 8.7): safe to replay once
            ex.upstream_failed(self, 502, b"upstream refused the stream" if error_code == NGHTTP2_REFUSED_STREAM
                               else b"upstream reset the stream", error_code == NGHTTP2_REFUSED_STREAM,
                               RF_UPSTREAM_RESET)

    # ---- endings -------------------------------------------------------------------------------

    cdef int _reset_stream(self, uint32_t code) except -1:
        if self.conn.session != NULL and self.submitted and not self.stream_closed:
            nghttp2_submit_rst_stream(self.conn.session, NGHTTP2_FLAG_NONE, self.stream_id, code)
            self.stream_closed = True
        if not self.submitted:
            try:
                self.conn.waiting.remove(self)
            except ValueError:
                pass

    cdef int release(self, double now) except -1:
        if self.ex is not None and not (self.response_complete and self.eof_sent):
            self._reset_stream(NGHTTP2_CANCEL)
        elif not self.submitted:
            self._reset_stream(NGHTTP2_CANCEL)
        self.detach()
        self.conn.flush()

    cdef int detach_and_close(self) except -1:
        self._reset_stream(NGHTTP2_CANCEL)
        self.detach()
        self.conn.flush()

    cpdef close(self):
        self.detach_and_close()

    cdef int on_deadline(self) except -1:
        cdef Exchange ex = self.ex
        kind = self.deadline_kind
        self.deadline = 0.0
        if ex is None:
            return 0
        if 0 < self.call_deadline <= monotonic() and self.state != UP_HELD:
            self._call_deadline_passed(ex)
            return 0
        self._reset_stream(NGHTTP2_CANCEL)
        self.detach()
        count_failure(ex, deadline_failure_kind(kind))
        if kind == UDL_BODY:
            ex.response_truncated(RF_UPSTREAM_BODY_TIMEOUT)
        elif kind == UDL_POLICY:
            ex.response_policy_timed_out()
        else:
            ex.upstream_failed(self, 504, b"upstream response timeout", False, RF_UPSTREAM_TIMEOUT)


    cdef int _call_deadline_passed(self, Exchange ex) except -1:
        """`grpc-timeout` passed (docs/grpc.md, Deadlines): the upstream's stream is cancelled
        (RST_STREAM CANCEL, which a gRPC server sees as the call's cancellation). Before the response
        head: the gateway's DEADLINE_EXCEEDED answer. After it: trailers with grpc-status 4 end the
        client's stream, as Envoy does (a non-gRPC request is cut short instead). The client's own
        deadline is not the upstream's failure: no passive-health count."""
        self.call_deadline = 0.0
        self._reset_stream(NGHTTP2_CANCEL)
        self.detach()
        if not ex.resp_started:
            ex.upstream_failed(self, 504, b"grpc-timeout passed", False, RF_UPSTREAM_TIMEOUT)
        elif grpc_request(ex):
            ex.flags |= RF_UPSTREAM_TIMEOUT
            ex.up = None
            ex.response_trailers(b"grpc-status: 4\r\ngrpc-message: Deadline Exceeded\r\n")
            ex.response_complete()
        else:
            ex.response_truncated(RF_UPSTREAM_TIMEOUT)


# ---- the Exchange's entry ---------------------------------------------------------------------

cdef UpstreamConn h2_stream_for(Exchange ex):
    """A stream for the exchange on one of its target's HTTP/2 connections with room, or on a new
    one (connecting). `connected` says whether the connection is ready."""
    cdef Target t = ex.target
    cdef H2UpstreamConn c, conn = None
    cdef H2UpstreamStream s
    for c in t.h2conns:
        if c.accepting():
            conn = c
            break
    if conn is None:
        conn = H2UpstreamConn(ex.worker, t)
        t.h2conns.append(conn)
        conn.start_connect(ex.group.connect_timeout)
    s = H2UpstreamStream(ex.worker, t, conn)
    s.counted_active = True
    conn.nactive += 1
    conn.nrequests += 1
    if conn.deadline_kind == UDL_POOL_IDLE:
        conn.deadline = 0.0
        conn.deadline_kind = UDL_NONE
    if conn.ready:
        conn.state = UP_BODY
        s.connected = True
        s.state = UP_HEAD
    else:
        conn.waiting.append(s)
    return s


cdef int h2_conn_active(object c) except -1:
    return (<H2UpstreamConn>c).nactive


cdef int h2_conn_retire(object c) except -1:
    cdef H2UpstreamConn conn = <H2UpstreamConn>c
    conn.goaway = True
    if conn.nactive == 0:
        conn.close()


cdef double grpc_timeout_seconds(bytes v):
    """A `grpc-timeout` value (1 to 8 digits and a unit: H M S m u n) in seconds; 0 if malformed."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(v), i
    cdef const char* p = PyBytes_AS_STRING(v)
    cdef double x = 0
    cdef char unit
    if n < 2 or n > 9:
        return 0
    for i in range(n - 1):
        if not (b'0' <= p[i] <= b'9'):
            return 0
        x = x * 10 + (p[i] - 48)
    unit = p[n - 1]
    if unit == b'H':
        return x * 3600
    if unit == b'M':
        return x * 60
    if unit == b'S':
        return x
    if unit == b'm':
        return x / 1e3
    if unit == b'u':
        return x / 1e6
    if unit == b'n':
        return x / 1e9
    return 0


cdef inline void _nv(nghttp2_nv* nv, const char* name, Py_ssize_t namelen, const char* value,
                     Py_ssize_t valuelen) noexcept:
    nv.name = <uint8_t*>name
    nv.namelen = namelen
    nv.value = <uint8_t*>value
    nv.valuelen = valuelen
    nv.flags = NGHTTP2_NV_FLAG_NONE


cdef bint _h2u_dropped(const char* name, Py_ssize_t n) noexcept:
    """Connection-specific fields HTTP/2 forbids (RFC 9113 8.2.2), and `te`, which is sent as
    `te: trailers` once."""
    if n == 2:
        return memcmp(name, b"te", 2) == 0
    if n == 7:
        return memcmp(name, b"upgrade", 7) == 0
    if n == 10:
        return memcmp(name, b"connection", 10) == 0 or memcmp(name, b"keep-alive", 10) == 0
    if n == 16:
        return memcmp(name, b"proxy-connection", 16) == 0
    if n == 17:
        return memcmp(name, b"transfer-encoding", 17) == 0
    if n == 14:
        return memcmp(name, b"http2-settings", 14) == 0
    return False


# ---- nghttp2 callbacks (user_data: the H2UpstreamConn) -------------------------------------------------

cdef inline H2UpstreamStream _h2u_stream(H2UpstreamConn c, int32_t sid):
    return <H2UpstreamStream>c.streams.get(sid)


cdef int _h2u_on_header(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name,
                       size_t namelen, const uint8_t* value, size_t valuelen, uint8_t flags,
                       void* user_data) noexcept:
    cdef H2UpstreamConn c = <H2UpstreamConn>user_data
    cdef H2UpstreamStream s
    try:
        if frame.hd.type != NGHTTP2_HEADERS:
            return 0
        s = _h2u_stream(c, frame.hd.stream_id)
        if s is not None and s.ex is not None:
            s.on_field(name, namelen, value, valuelen)
    except BaseException as exc:
        c.cb_error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _h2u_on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) noexcept:
    cdef H2UpstreamConn c = <H2UpstreamConn>user_data
    cdef H2UpstreamStream s
    cdef uint8_t t = frame.hd.type
    try:
        if t == NGHTTP2_SETTINGS:
            c.settings_received()
            return 0
        if t == NGHTTP2_GOAWAY:
            c.goaway = True
            return 0
        if frame.hd.stream_id == 0:
            return 0
        s = _h2u_stream(c, frame.hd.stream_id)
        if s is None or s.ex is None:
            return 0
        if t == NGHTTP2_HEADERS:
            s.on_headers(frame.hd.flags & NGHTTP2_FLAG_END_STREAM)
        elif t == NGHTTP2_DATA and frame.hd.flags & NGHTTP2_FLAG_END_STREAM:
            s.on_end()
    except BaseException as exc:
        c.cb_error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _h2u_on_data_chunk(nghttp2_session* session, uint8_t flags, int32_t stream_id, const uint8_t* data,
                           size_t n, void* user_data) noexcept:
    cdef H2UpstreamConn c = <H2UpstreamConn>user_data
    cdef H2UpstreamStream s
    try:
        s = _h2u_stream(c, stream_id)
        if s is None:
            nghttp2_session_consume(session, stream_id, n)
        else:
            s.on_data(data, n)
    except BaseException as exc:
        c.cb_error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _h2u_on_stream_close(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                             void* user_data) noexcept:
    cdef H2UpstreamConn c = <H2UpstreamConn>user_data
    cdef H2UpstreamStream s
    try:
        s = <H2UpstreamStream>c.streams.pop(stream_id, None)
        if s is not None:
            s.on_closed(error_code)
    except BaseException as exc:
        c.cb_error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef ssize_t _h2u_read_body(nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length,
                           uint32_t* data_flags, nghttp2_data_source* source, void* user_data) noexcept:
    cdef H2UpstreamConn c = <H2UpstreamConn>user_data
    cdef H2UpstreamStream s = _h2u_stream(c, stream_id)
    try:
        if s is None:
            data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
            return 0
        return s.read_body(buf, length, data_flags)
    except BaseException as exc:
        c.cb_error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
