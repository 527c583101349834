# HTTP/2 downstream (RFC 9113; docs/http2.md): libnghttp2's server session (declared in nghttp2.pxd)
# driven with cdef callbacks. A cleartext connection whose first bytes are the 24-byte client preface
# (prior knowledge, told apart from HTTP/1.1 as Envoy does) or a TLS connection that chose ALPN `h2` is
# taken over from its ClientConn by an H2Conn. Each stream is an H2Stream, a ClientConn whose seam
# methods (send_response_head, send_body, flush, end_response, send_answer, send_interim, truncate,
# pause_reading_for / resume_reading_for, request_dispatched, keep_pipelined ...) speak HTTP/2 frames
# instead of HTTP/1.1 bytes, so the Exchange runs the same phases, policies and routing.
#
# The validated HEADERS (nghttp2 enforces RFC 9113 section 8: pseudo-header rules, connection-specific
# and uppercase names, content-length against the DATA sum; an invalid field resets the stream) become
# an HTTP/1.1 request head, `Host: <:authority>`, that the HTTP/1.1 parser checks again and the Exchange
# points into. A body without content-length is chunk-framed for it. DATA is consumed (WINDOW_UPDATE)
# only when the Exchange takes it, so the client cannot send faster than the upstream accepts; response
# bodies go through a data provider, deferred while nothing waits.

from libc.stdint cimport int32_t, uint8_t, uint32_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memmove, memcmp
from fastgw._cy.nghttp2 cimport *
import sys as _sys
import traceback as _traceback

cdef bytes H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

cdef enum:
    H2_BODY_HIGH = 65536         # response bytes waiting for the client above which the upstream pauses
    H2_BODY_LOW = 16384          # ... and below which it reads again
    H2_SEND_BATCH = 65536        # frames gathered into one transport write


cdef class H2Settings:
    """`limits.http2` compiled (docs/http2.md)."""
    cdef readonly bint prior_knowledge
    cdef readonly uint32_t max_concurrent_streams
    cdef readonly uint32_t initial_window_size
    cdef readonly uint32_t connection_window_size
    cdef readonly uint32_t max_header_list_size
    cdef readonly double idle_timeout
    cdef readonly double ping_interval
    cdef readonly double ping_timeout

    def __init__(self, *, bint prior_knowledge=True, int max_concurrent_streams=100,
                 int initial_window_size=65535, int max_header_list_size=65536, double idle_timeout=60.0,
                 double ping_interval=0.0, double ping_timeout=20.0, int connection_window_size=0):
        self.prior_knowledge = prior_knowledge
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_window_size = initial_window_size
        if connection_window_size <= 0:
            # every stream may use its whole window at once: one slow stream cannot block the rest
            connection_window_size = min(<long long>initial_window_size * max_concurrent_streams, 2 ** 31 - 1)
            connection_window_size = max(connection_window_size, 65535)
        self.connection_window_size = connection_window_size
        self.max_header_list_size = max_header_list_size
        self.idle_timeout = idle_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout


cdef H2Settings _H2_DEFAULTS = H2Settings()


cdef inline H2Settings _h2_settings(Runtime rt):
    return rt.http2 if rt.http2 is not None else _H2_DEFAULTS


cdef bint h2_preface_start(const char* p, Py_ssize_t n) noexcept:
    """The buffer starts as the HTTP/2 client preface does (at least its request line)."""
    if n < 16:
        return False
    if n > 24:
        n = 24
    return memcmp(p, PyBytes_AS_STRING(H2_PREFACE), n) == 0


cdef int h2_take_over(ClientConn c, bytes initial) except -1:
    """The connection speaks HTTP/2: an H2Conn takes its transport and place."""
    cdef H2Conn conn = H2Conn(c.worker, c.listen_address, None)
    conn.transport = c.transport
    conn.transport_write = c.transport_write
    conn.t_accept = c.t_accept
    conn.local_port = c.local_port
    conn.local_host = c.local_host
    conn.client_ip = c.client_ip
    conn.tls = c.tls
    conn.sni = c.sni
    conn.cert_edits = c.cert_edits
    conn.client_cert = c.client_cert
    conn.write_paused = c.write_paused
    c.worker.clients.discard(c)
    c.state = CL_CLOSED
    c.transport = None
    c.transport_write = None
    c.buf = b""
    c.deadline = 0.0
    conn.worker.clients.add(conn)
    conn.transport.set_protocol(conn)
    conn.start()
    if initial is not None and PyBytes_GET_SIZE(initial):
        conn.data_received(initial)


cdef void _h2_report(str where):
    try:
        _sys.stderr.write("fastgw: error in the HTTP/2 %s callback\n%s" % (where, _traceback.format_exc()))
    except BaseException:
        pass


# ---- nghttp2 callbacks (one table for every session) -------------------------------------------

cdef nghttp2_session_callbacks* _h2_callbacks = NULL


cdef nghttp2_session_callbacks* _h2_server_callbacks() except NULL:
    global _h2_callbacks
    if _h2_callbacks == NULL:
        if nghttp2_session_callbacks_new(&_h2_callbacks) != 0:
            raise MemoryError()
        nghttp2_session_callbacks_set_on_begin_headers_callback(_h2_callbacks, _h2_on_begin_headers)
        nghttp2_session_callbacks_set_on_header_callback(_h2_callbacks, _h2_on_header)
        nghttp2_session_callbacks_set_on_invalid_header_callback(_h2_callbacks, _h2_on_invalid_header)
        nghttp2_session_callbacks_set_on_frame_recv_callback(_h2_callbacks, _h2_on_frame_recv)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(_h2_callbacks, _h2_on_data_chunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(_h2_callbacks, _h2_on_stream_close)
        nghttp2_session_callbacks_set_on_frame_send_callback(_h2_callbacks, _h2_on_frame_send)
    return _h2_callbacks


cdef int _h2_on_begin_headers(nghttp2_session* s, const nghttp2_frame* frame, void* ud) noexcept:
    if frame.hd.type != NGHTTP2_HEADERS or frame.headers.cat != NGHTTP2_HCAT_REQUEST:
        return 0
    try:
        (<H2Conn>ud).begin_stream(frame.hd.stream_id)
    except BaseException:
        _h2_report("begin_headers")
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _h2_on_header(nghttp2_session* s, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                       const uint8_t* value, size_t valuelen, uint8_t flags, void* ud) noexcept:
    cdef void* st
    if frame.hd.type != NGHTTP2_HEADERS:
        return 0
    st = nghttp2_session_get_stream_user_data(s, frame.hd.stream_id)
    if st == NULL:
        return 0
    try:
        if frame.headers.cat != NGHTTP2_HCAT_REQUEST:
            (<H2Stream>st).add_trailer(<const char*>name, namelen, <const char*>value, valuelen)
            return 0
        (<H2Stream>st).add_field(<const char*>name, namelen, <const char*>value, valuelen)
    except BaseException:
        _h2_report("header")
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _h2_on_invalid_header(nghttp2_session* s, const nghttp2_frame* frame, const uint8_t* name,
                               size_t namelen, const uint8_t* value, size_t valuelen, uint8_t flags,
                               void* ud) noexcept:
    # a field nghttp2 would silently drop (CR, LF or NUL in a value, a name with characters outside
    # the token set): RFC 9113 8.2.1 makes the message malformed, so the stream is reset
    # (RST_STREAM PROTOCOL_ERROR) rather than forwarded without it
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE


cdef int _h2_on_frame_recv(nghttp2_session* s, const nghttp2_frame* frame, void* ud) noexcept:
    cdef void* st
    cdef uint8_t t = frame.hd.type
    try:
        if t == NGHTTP2_DATA or t == NGHTTP2_HEADERS:
            st = nghttp2_session_get_stream_user_data(s, frame.hd.stream_id)
            if st == NULL:
                return 0
            if t == NGHTTP2_HEADERS and frame.headers.cat == NGHTTP2_HCAT_REQUEST:
                (<H2Stream>st).headers_done(frame.hd.flags & NGHTTP2_FLAG_END_STREAM)
            elif frame.hd.flags & NGHTTP2_FLAG_END_STREAM:
                (<H2Stream>st).remote_end()
        elif t == NGHTTP2_PING and frame.hd.flags & NGHTTP2_FLAG_ACK:
            (<H2Conn>ud).ping_sent_at = 0.0
    except BaseException:
        _h2_report("frame_recv")
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _h2_on_data_chunk(nghttp2_session* s, uint8_t flags, int32_t stream_id, const uint8_t* data,
                           size_t length, void* ud) noexcept:
    cdef void* st = nghttp2_session_get_stream_user_data(s, stream_id)
    if st == NULL:
        nghttp2_session_consume(s, stream_id, length)
        return 0
    try:
        (<H2Stream>st).body_data(<const char*>data, length)
    except BaseException:
        _h2_report("data_chunk")
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _h2_on_stream_close(nghttp2_session* s, int32_t stream_id, uint32_t error_code, void* ud) noexcept:
    cdef void* st = nghttp2_session_get_stream_user_data(s, stream_id)
    cdef H2Stream stream
    if st == NULL:
        return 0
    try:
        stream = <H2Stream>st            # a reference of its own: the connection lets go of it
        nghttp2_session_set_stream_user_data(s, stream_id, NULL)
        (<H2Conn>ud).stream_closed(stream, error_code)
    except BaseException:
        _h2_report("stream_close")
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _h2_on_frame_send(nghttp2_session* s, const nghttp2_frame* frame, void* ud) noexcept:
    cdef void* st
    cdef uint8_t t = frame.hd.type
    if (t == NGHTTP2_DATA or t == NGHTTP2_HEADERS) and frame.hd.flags & NGHTTP2_FLAG_END_STREAM:
        st = nghttp2_session_get_stream_user_data(s, frame.hd.stream_id)
        if st != NULL and (<H2Stream>st).discard and not (<H2Stream>st).remote_ended:
            # the response is complete before the request body: the rest of it is not wanted
            # (RFC 9113 8.1). A request whose body is whole but whose END_STREAM is still on its
            # way is left to end by itself (clients choke on a reset there)
            nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, frame.hd.stream_id, NGHTTP2_NO_ERROR)
    return 0


cdef ssize_t _h2_read_body(nghttp2_session* s, int32_t stream_id, uint8_t* buf, size_t length,
                           uint32_t* data_flags, nghttp2_data_source* source, void* ud) noexcept:
    cdef H2Stream st = <H2Stream>source.ptr
    cdef Py_ssize_t avail = st.rbuf.len - st.roff
    cdef Py_ssize_t n
    if avail == 0:
        if st.resp_eof:
            _h2_body_eof(st, data_flags)
            return 0
        st.deferred = True
        return NGHTTP2_ERR_DEFERRED
    n = avail if avail < <Py_ssize_t>length else <Py_ssize_t>length
    memcpy(buf, st.rbuf.data + st.roff, n)
    st.roff += n
    if st.roff == st.rbuf.len:
        st.roff = 0
        st.rbuf.len = 0
        if st.resp_eof:
            _h2_body_eof(st, data_flags)
    elif st.roff >= H2_BODY_HIGH:
        memmove(st.rbuf.data, st.rbuf.data + st.roff, st.rbuf.len - st.roff)
        st.rbuf.len -= st.roff
        st.roff = 0
    if st.up_paused and st.rbuf.len - st.roff < H2_BODY_LOW:
        try:
            st.resume_upstream()
        except BaseException:
            _h2_report("data_read")
    return n


cdef void _h2_body_eof(H2Stream st, uint32_t* data_flags) noexcept:
    """The response body's end: END_STREAM on its last DATA frame, or, when the upstream gave
    trailers (gRPC's grpc-status), no END_STREAM there and a trailing HEADERS frame that ends the
    stream (nghttp2_submit_trailer may be called from the read callback)."""
    data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
    if st.trailers is None:
        return
    try:
        if st.conn.submit_trailers(st):
            data_flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM
    except BaseException:
        _h2_report("data_read")
    st.trailers = None


# ---- the connection ----------------------------------------------------------------------------

cdef struct NvSpan:
    Py_ssize_t name
    Py_ssize_t namelen
    Py_ssize_t value
    Py_ssize_t valuelen


cdef class H2Conn(ClientConn):
    """One HTTP/2 client connection: the nghttp2 session, its streams, the writes."""
    cdef nghttp2_session* session
    cdef dict streams                # stream id -> H2Stream (owns them while nghttp2 points at them)
    cdef H2Settings cfg
    cdef bint in_recv
    cdef bint sending
    cdef bint goaway_sent
    cdef double last_active          # the last bytes from the client (the ping clock)
    cdef double idle_since           # when the last stream ended (the idle clock)
    cdef double ping_sent_at
    cdef WBuf hbuf                   # response header names and values, for one nghttp2_nv array
    cdef NvSpan* spans
    cdef nghttp2_nv* nva
    cdef int nv_cap
    cdef int nspans

    def __cinit__(self):
        wb_init(&self.hbuf, 1024)
        self.nv_cap = 0

    def __dealloc__(self):
        if self.session != NULL:
            nghttp2_session_del(self.session)
            self.session = NULL
        wb_free(&self.hbuf)
        if self.spans != NULL:
            free(self.spans)
        if self.nva != NULL:
            free(self.nva)

    cdef int start(self) except -1:
        cdef nghttp2_option* opt
        cdef nghttp2_settings_entry iv[4]
        cdef int rv
        self.h2 = True
        self.acquire_buffers()          # held for the connection's life (connbufs.pyx)
        self.streams = {}
        self.cfg = _h2_settings(self.rt)
        if nghttp2_option_new(&opt) != 0:
            raise MemoryError()
        nghttp2_option_set_no_auto_window_update(opt, 1)
        nghttp2_option_set_max_continuations(opt, 8)                 # CVE-2024-28182
        nghttp2_option_set_stream_reset_rate_limit(opt, 1000, 33)    # CVE-2023-44487 (nghttp2's defaults)
        nghttp2_option_set_max_outbound_ack(opt, 1000)
        nghttp2_option_set_max_settings(opt, 32)
        rv = nghttp2_session_server_new2(&self.session, _h2_server_callbacks(), <void*>self, opt)
        nghttp2_option_del(opt)
        if rv != 0:
            raise MemoryError()
        iv[0].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        iv[0].value = self.cfg.max_concurrent_streams
        iv[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        iv[1].value = self.cfg.initial_window_size
        iv[2].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        iv[2].value = self.cfg.max_header_list_size
        iv[3].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
        iv[3].value = 0
        nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, iv, 4)
        if self.cfg.connection_window_size > 65535:
            nghttp2_session_set_local_window_size(self.session, NGHTTP2_FLAG_NONE, 0,
                                                  <int32_t>self.cfg.connection_window_size)
        self.state = CL_WAIT
        self.last_active = self.idle_since = monotonic()
        self._arm()
        if self.worker.draining:
            self.drain()
        self.send_pending()

    # ---- asyncio protocol ----------------------------------------------------------------------

    def data_received(self, bytes data):
        cdef ssize_t rv
        if self.session == NULL or self.state == CL_CLOSED:
            return
        self.last_active = monotonic()
        self.ping_sent_at = 0.0          # the client is alive
        self.in_recv = True
        try:
            rv = nghttp2_session_mem_recv(self.session, <const uint8_t*>PyBytes_AS_STRING(data),
                                          PyBytes_GET_SIZE(data))
        finally:
            self.in_recv = False
        if rv < 0:
            # a connection error: nghttp2 has queued its GOAWAY where the protocol wants one
            if rv != NGHTTP2_ERR_BAD_CLIENT_MAGIC:
                nghttp2_session_terminate_session(self.session, NGHTTP2_PROTOCOL_ERROR)
                self.send_pending()
            self._close_now(False)
            return
        self.send_pending()

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self._close_now(True)

    def pause_writing(self):
        self.write_paused = True

    def resume_writing(self):
        self.write_paused = False
        self.send_pending()

    # ---- writing -------------------------------------------------------------------------------

    cdef int send_pending(self) except -1:
        """Everything nghttp2 has to send (frames, and DATA as the providers give it), batched into
        few writes; nothing while the transport is over its high-water mark."""
        cdef const uint8_t* ptr
        cdef ssize_t n
        cdef WBuf* out = &self.out
        if self.in_recv or self.sending or self.session == NULL or self.state == CL_CLOSED:
            return 0
        self.sending = True
        try:
            out.len = 0
            while not self.write_paused:
                n = nghttp2_session_mem_send(self.session, &ptr)
                if n < 0:
                    out.len = 0
                    self.sending = False
                    self._close_now(False)
                    return 0
                if n == 0:
                    break
                wb_put(out, <const char*>ptr, n)
                if out.len >= H2_SEND_BATCH:
                    self.transport_write(wb_bytes(out))
                    out.len = 0
            if out.len:
                self.transport_write(wb_bytes(out))
                out.len = 0
        finally:
            self.sending = False
        if self.state != CL_CLOSED and self.session != NULL and not nghttp2_session_want_read(self.session) \
                and not nghttp2_session_want_write(self.session):
            self._close_now(False)      # GOAWAY sent and every stream done
        return 0

    # ---- streams -------------------------------------------------------------------------------

    cdef int begin_stream(self, int32_t stream_id) except -1:
        cdef H2Stream st = H2Stream(self.worker, self.listen_address, None)
        st.setup(self, stream_id)
        self.streams[stream_id] = st
        nghttp2_session_set_stream_user_data(self.session, stream_id, <void*>st)
        if len(self.streams) == 1:
            self._arm()

    cdef int stream_closed(self, H2Stream st, uint32_t error_code) except -1:
        self.streams.pop(st.stream_id, None)
        if st.pending_consume:
            nghttp2_session_consume_connection(self.session, st.pending_consume)
            st.pending_consume = 0
        st.closed(error_code)
        if not self.streams:
            self.idle_since = monotonic()
            self._arm()

    cdef int submit(self, H2Stream st, int status, bint interim, bint has_body) except -1:
        """Sends the header block gathered in hbuf/spans (the caller put the fields there after
        begin_fields) as the stream's response head."""
        cdef int i, n = self.nspans
        cdef nghttp2_data_provider prd
        cdef char* base = self.hbuf.data
        for i in range(n):
            self.nva[i].name = <uint8_t*>(base + self.spans[i].name)
            self.nva[i].namelen = self.spans[i].namelen
            self.nva[i].value = <uint8_t*>(base + self.spans[i].value)
            self.nva[i].valuelen = self.spans[i].valuelen
            self.nva[i].flags = NGHTTP2_NV_FLAG_NONE
        if interim:
            nghttp2_submit_headers(self.session, NGHTTP2_FLAG_NONE, st.stream_id, NULL, self.nva, n, NULL)
            return 0
        if has_body:
            prd.source.ptr = <void*>st
            prd.read_callback = _h2_read_body
            nghttp2_submit_response(self.session, st.stream_id, self.nva, n, &prd)
        else:
            nghttp2_submit_response(self.session, st.stream_id, self.nva, n, NULL)

    cdef bint submit_trailers(self, H2Stream st) except -1:
        """The stream's trailer lines as a HEADERS frame with END_STREAM (after its last DATA).
        False when none is left to send (all were connection-specific)."""
        cdef int i, n
        cdef char* base
        self.hbuf.len = 0
        self.nspans = 0
        self.add_lines(st.trailers)
        n = self.nspans
        if n == 0:
            return False
        base = self.hbuf.data
        for i in range(n):
            self.nva[i].name = <uint8_t*>(base + self.spans[i].name)
            self.nva[i].namelen = self.spans[i].namelen
            self.nva[i].value = <uint8_t*>(base + self.spans[i].value)
            self.nva[i].valuelen = self.spans[i].valuelen
            self.nva[i].flags = NGHTTP2_NV_FLAG_NONE
        return nghttp2_submit_trailer(self.session, st.stream_id, self.nva, n) == 0

    cdef int begin_fields(self, int status) except -1:
        self.hbuf.len = 0
        self.nspans = 0
        self._span(b":status", 7, NULL, 0)
        wb_put_int(&self.hbuf, status)
        self.spans[0].valuelen = self.hbuf.len - self.spans[0].value

    cdef int _span(self, const char* name, Py_ssize_t namelen, const char* value, Py_ssize_t valuelen) except -1:
        cdef NvSpan* sp
        cdef Py_ssize_t i
        if self.nspans == self.nv_cap:
            self.nv_cap = self.nv_cap * 2 if self.nv_cap else 32
            self.spans = <NvSpan*>realloc(self.spans, self.nv_cap * sizeof(NvSpan))
            self.nva = <nghttp2_nv*>realloc(self.nva, self.nv_cap * sizeof(nghttp2_nv))
            if self.spans == NULL or self.nva == NULL:
                raise MemoryError()
        sp = &self.spans[self.nspans]
        self.nspans += 1
        wb_reserve(&self.hbuf, namelen + valuelen)
        sp.name = self.hbuf.len
        sp.namelen = namelen
        for i in range(namelen):         # HTTP/2 field names are lowercase
            self.hbuf.data[self.hbuf.len + i] = <char>_LOWER[<uint8_t>name[i]]
        self.hbuf.len += namelen
        sp.value = self.hbuf.len
        sp.valuelen = valuelen
        if valuelen:
            wb_put(&self.hbuf, value, valuelen)

    cdef int add_lines(self, bytes lines) except -1:
        """Whole "Name: value\\r\\n" lines (the gateway's, a policy's, header edits') as fields."""
        cdef const char* p
        cdef Py_ssize_t n, i = 0, colon, vs, ve, eol
        if lines is None:
            return 0
        p = PyBytes_AS_STRING(lines)
        n = PyBytes_GET_SIZE(lines)
        while i < n:
            eol = i
            while eol < n and p[eol] != b'\n':
                eol += 1
            ve = eol
            if ve > i and p[ve - 1] == b'\r':
                ve -= 1
            colon = i
            while colon < ve and p[colon] != b':':
                colon += 1
            if colon < ve and colon > i:
                vs = colon + 1
                while vs < ve and (p[vs] == b' ' or p[vs] == b'\t'):
                    vs += 1
                while ve > vs and (p[ve - 1] == b' ' or p[ve - 1] == b'\t'):
                    ve -= 1
                if not _h2_conn_specific(p + i, colon - i):
                    self._span(p + i, colon - i, p + vs, ve - vs)
            i = eol + 1

    # ---- lifecycle -----------------------------------------------------------------------------

    cdef int _arm(self) except -1:
        """The connection's deadline: the next check of its streams' deadlines while it has any,
        else the idle timeout; the ping clock."""
        cdef double now = monotonic()
        cdef double d
        if self.streams:
            d = now + 0.5
        else:
            d = self.idle_since + self.cfg.idle_timeout
        if self.cfg.ping_interval > 0:
            if self.ping_sent_at > 0:
                d = min(d, self.ping_sent_at + self.cfg.ping_timeout)
            else:
                d = min(d, self.last_active + self.cfg.ping_interval)
        self.deadline = d
        self.deadline_kind = DL_IDLE

    cdef int on_deadline(self) except -1:
        cdef double now = monotonic()
        cdef H2Stream st
        if self.state == CL_CLOSED or self.session == NULL:
            return 0
        if self.streams:
            for st in list(self.streams.values()):
                if st.deadline > 0 and now >= st.deadline:
                    st.on_deadline()
        elif now >= self.idle_since + self.cfg.idle_timeout:
            self.goaway(NGHTTP2_NO_ERROR)
            self.send_pending()
            self._close_now(False)
            return 0
        if self.cfg.ping_interval > 0:
            if self.ping_sent_at > 0 and now >= self.ping_sent_at + self.cfg.ping_timeout:
                self._close_now(False)       # no PING ACK in time: the peer is gone
                return 0
            if self.ping_sent_at == 0 and now >= self.last_active + self.cfg.ping_interval:
                nghttp2_submit_ping(self.session, NGHTTP2_FLAG_NONE, NULL)
                self.ping_sent_at = now
        self.send_pending()
        if self.state != CL_CLOSED:
            self._arm()

    cdef int goaway(self, uint32_t code) except -1:
        if self.session != NULL and not self.goaway_sent:
            self.goaway_sent = True
            nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(self.session), code, NULL, 0)

    cdef int drain(self) except -1:
        """Drain (SIGTERM) or a close a reload asks for: GOAWAY with the last stream taken, so
        the client retries later streams elsewhere; the connection closes when its streams end."""
        self.goaway(NGHTTP2_NO_ERROR)
        if not self.streams:
            self.send_pending()
            self._close_now(False)
        else:
            self.send_pending()

    cpdef abort(self):
        if self.state != CL_CLOSED and self.session != NULL:
            self.goaway(NGHTTP2_NO_ERROR)
            self.send_pending()
        self._close_now(False)

    cdef int reset(self) except -1:
        self.abort()

    cdef int _close_now(self, bint lost) except -1:
        cdef H2Stream st
        cdef list streams
        if self.state != CL_CLOSED:
            self.state = CL_CLOSED
            self.deadline = 0.0
            if self.transport is not None and not lost:
                self.transport.close()
        self.worker.clients.discard(self)
        if self.streams:
            streams = list(self.streams.values())
            self.streams = {}
            for st in streams:
                if self.session != NULL:
                    nghttp2_session_set_stream_user_data(self.session, st.stream_id, NULL)
                st.closed(NGHTTP2_CANCEL)
        if self.session != NULL and not self.in_recv and not self.sending:
            nghttp2_session_del(self.session)
            self.session = NULL


cdef inline bint _h2_conn_specific(const char* name, Py_ssize_t n) noexcept:
    """Fields RFC 9113 8.2.2 forbids in HTTP/2 (Connection and the ones it governs)."""
    return ((n == 10 and (_ci_eq(name, n, b"connection", 10) or _ci_eq(name, n, b"keep-alive", 10)))
            or (n == 16 and _ci_eq(name, n, b"proxy-connection", 16))
            or (n == 17 and _ci_eq(name, n, b"transfer-encoding", 17))
            or (n == 7 and _ci_eq(name, n, b"upgrade", 7))
            or (n == 2 and _ci_eq(name, n, b"te", 2))
            or (n == 14 and _ci_eq(name, n, b"content-length", 14)))


# ---- a stream ----------------------------------------------------------------------------------

cdef class H2Stream(ClientConn):
    """One request/response of an H2Conn, carried as the Exchange's connection."""
    cdef H2Conn conn
    cdef int32_t stream_id
    cdef bytes method
    cdef bytes path
    cdef bytes authority
    cdef bytes host_field
    cdef list cookies
    cdef bint has_length
    cdef bint too_large
    cdef Py_ssize_t field_bytes
    cdef bint chunked                # the body is chunk-framed for the HTTP/1.1 head it travels with
    cdef readonly bint remote_ended  # END_STREAM from the client
    cdef bint started                # the exchange started
    cdef bint discard                # the exchange is over before the request: DATA is dropped
    cdef bint responded
    cdef bint stream_done
    cdef Py_ssize_t pending_consume  # DATA bytes held (in self.buf) and not yet given back as window
    # the response body on its way to nghttp2's data provider
    cdef WBuf rbuf
    cdef Py_ssize_t roff
    cdef bint resp_eof
    cdef bint deferred
    cdef bint up_paused
    cdef bint provider               # the response head was submitted with a data provider
    cdef list req_trailers           # the request's trailer lines, handed to the Exchange at its end
    cdef bytes trailers              # response trailer lines, sent after the body's end

    def __cinit__(self):
        wb_init(&self.rbuf, 256)

    def __dealloc__(self):
        wb_free(&self.rbuf)

    cdef int setup(self, H2Conn conn, int32_t stream_id) except -1:
        self.conn = conn
        self.stream_id = stream_id
        self.h2 = True
        self.transport = None
        self.t_accept = monotonic()
        self.local_port = conn.local_port
        self.local_host = conn.local_host
        self.client_ip = conn.client_ip
        self.tls = conn.tls
        self.sni = conn.sni
        self.cert_edits = conn.cert_edits
        self.client_cert = conn.client_cert
        self.routes = conn.routes
        self.routes_rt = conn.routes_rt
        self.nrequests = 0
        self.state = CL_HEAD
        self.acquire_buffers()          # held for the stream's life (connbufs.pyx)
        self.out.len = 0

    # ---- the request head ----------------------------------------------------------------------

    cdef int add_field(self, const char* name, size_t namelen, const char* value, size_t valuelen) except -1:
        cdef Py_ssize_t limit = self.conn.cfg.max_header_list_size
        self.field_bytes += namelen + valuelen + 32        # RFC 9113 6.5.2's size of a field
        if self.too_large or self.field_bytes > limit:
            self.too_large = True                           # answered 431 once the block ends
            return 0
        if namelen and name[0] == b':':
            if namelen == 7 and memcmp(name, b":method", 7) == 0:
                self.method = value[:valuelen]
            elif namelen == 5 and memcmp(name, b":path", 5) == 0:
                self.path = value[:valuelen]
            elif namelen == 10 and memcmp(name, b":authority", 10) == 0:
                self.authority = value[:valuelen]
            return 0                                        # :scheme: the listener's own
        if namelen == 4 and memcmp(name, b"host", 4) == 0:
            self.host_field = value[:valuelen]
            return 0
        if namelen == 6 and memcmp(name, b"cookie", 6) == 0:
            # split crumbs are one field again for HTTP/1.1 (RFC 9113 8.2.3)
            if self.cookies is None:
                self.cookies = []
            self.cookies.append(value[:valuelen])
            return 0
        if namelen == 14 and memcmp(name, b"content-length", 14) == 0:
            self.has_length = True
        wb_put(&self.out, name, namelen)
        wb_put(&self.out, b": ", 2)
        wb_put(&self.out, value, valuelen)
        wb_put(&self.out, b"\r\n", 2)

    cdef int headers_done(self, bint end_stream) except -1:
        """The request's header block is complete: its HTTP/1.1 head, parsed and run as an Exchange."""
        cdef WBuf* h = &self.uout
        cdef bytes host = self.authority if self.authority is not None else self.host_field
        cdef bytes raw
        cdef Py_ssize_t r, n
        self.remote_ended = end_stream
        self.rt = self.worker.runtime
        self.acquire_buffers()
        h.len = 0
        if self.method is not None:
            wb_put(h, PyBytes_AS_STRING(self.method), PyBytes_GET_SIZE(self.method))
        wb_put(h, b" ", 1)
        if self.path is not None:
            wb_put(h, PyBytes_AS_STRING(self.path), PyBytes_GET_SIZE(self.path))
        wb_put(h, b" HTTP/1.1\r\n", 11)
        if host is not None:
            wb_put(h, b"Host: ", 6)
            wb_put(h, PyBytes_AS_STRING(host), PyBytes_GET_SIZE(host))
            wb_put(h, b"\r\n", 2)
        wb_put(h, self.out.data, self.out.len)
        self.out.len = 0
        if self.cookies is not None:
            wb_put(h, b"cookie: ", 8)
            raw = b"; ".join(self.cookies)
            wb_put(h, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
            wb_put(h, b"\r\n", 2)
            self.cookies = None
        if not end_stream and not self.has_length:
            self.chunked = True
            wb_put(h, b"Transfer-Encoding: chunked\r\n", 28)
        wb_put(h, b"\r\n", 2)
        raw = wb_bytes(h)
        self.method = self.path = self.authority = self.host_field = None
        self.buf = raw
        self.started = True
        if self.too_large:
            self._refuse_head(431, b"request header fields too large", RF_BAD_REQUEST)
            return 0
        if host is None:
            self._refuse_head(400, b"missing :authority and host", RF_BAD_REQUEST)
            return 0
        n = PyBytes_GET_SIZE(raw)
        r = parse_request_head(&self.head, PyBytes_AS_STRING(raw), n, &self.rt.head_limits)
        if r == PARSE_INCOMPLETE:
            self._refuse_head(400, b"bad request head", RF_BAD_REQUEST)
            return 0
        if r == PARSE_ERROR:
            self._refuse_head(self.head.error_status, self.head.error_reason, RF_BAD_REQUEST)
            return 0
        self._start_request(r, n)
        self.conn.routes = self.routes
        self.conn.routes_rt = self.routes_rt

    # ---- the request body ----------------------------------------------------------------------

    cdef int body_data(self, const char* data, size_t n) except -1:
        cdef WBuf* w
        if self.discard or self.ex is None or self.stream_done:
            nghttp2_session_consume(self.conn.session, self.stream_id, n)
            return 0
        if self.chunked:
            w = &self.uout
            w.len = 0
            wb_put_hex(w, n)
            wb_put(w, b"\r\n", 2)
            wb_put(w, data, n)
            wb_put(w, b"\r\n", 2)
            self._take(w.data, w.len, n)
        else:
            self._take(data, n, n)

    cdef int add_trailer(self, const char* name, size_t namelen, const char* value, size_t valuelen) except -1:
        """A request trailer field (nghttp2 checked it: no pseudo-headers, RFC 9113 8.1). Fields that
        cannot be trailers (framing, Host, connection-specific) are left out; the size counts
        against max_header_list_size with the head's."""
        self.field_bytes += namelen + valuelen + 32
        if self.field_bytes > self.conn.cfg.max_header_list_size or _h2_conn_specific(name, namelen) \
                or (namelen == 4 and memcmp(name, b"host", 4) == 0):
            return 0
        if self.req_trailers is None:
            self.req_trailers = []
        self.req_trailers.append(name[:namelen] + b": " + value[:valuelen] + b"\r\n")

    cdef int remote_end(self) except -1:
        self.remote_ended = True
        if self.req_trailers is not None:
            if self.ex is not None and not self.discard:
                self.ex.request_trailers = b"".join(self.req_trailers)
            self.req_trailers = None
        if self.chunked and not self.discard and self.ex is not None:
            self._take(b"0\r\n\r\n", 5, 0)

    cdef int _take(self, const char* p, Py_ssize_t n, Py_ssize_t window) except -1:
        """Request bytes for the Exchange: handed on now when it is reading, else held (and their
        window not given back) until it is."""
        cdef bytes piece = p[:n]
        self.buf = piece if PyBytes_GET_SIZE(self.buf) == 0 else self.buf + piece
        self.pending_consume += window
        if self.state == CL_BODY and self.deadline_kind == DL_BODY:
            self.deadline = monotonic() + self.rt.body_timeout
        self._feed()

    cdef int _feed(self) except -1:
        cdef bytes data
        if self.state != CL_BODY or self.pause_mask or self.ex is None or PyBytes_GET_SIZE(self.buf) == 0:
            return 0
        data = self.buf
        self.buf = b""
        self._consume()
        self.ex.request_body(data, 0)

    cdef int _consume(self) except -1:
        if self.pending_consume and self.conn.session != NULL:
            nghttp2_session_consume(self.conn.session, self.stream_id, self.pending_consume)
        self.pending_consume = 0

    cdef int pause_reading_for(self, Exchange ex, int reason) except -1:
        if ex is not self.ex:
            return 0
        if reason == PR_POLICY:
            self.state = CL_POLICY
            return 0
        self.pause_mask |= reason
        if self.deadline_kind == DL_BODY:
            self.deadline = 0.0        # the upstream is the slow one: the body clock stops

    cdef int resume_reading_for(self, Exchange ex, int reason) except -1:
        if ex is not self.ex or not (self.pause_mask & reason):
            return 0
        self.pause_mask &= ~reason
        if self.pause_mask == 0:
            if self.deadline_kind == DL_BODY:
                self.deadline = monotonic() + self.rt.body_timeout
            self._feed()
            self.conn.send_pending()      # WINDOW_UPDATEs

    cdef bytes take_stash(self, Exchange ex):
        cdef bytes rest = ClientConn.take_stash(self, ex)
        self._consume()
        return rest

    cdef int keep_pipelined(self, bytes data, Py_ssize_t off) except -1:
        return 0                          # nothing follows a request on its stream

    cdef int request_complete(self, Exchange ex, bytes data, Py_ssize_t pos, Py_ssize_t n) except -1:
        self.state = CL_WAIT
        self.deadline = 0.0
        self.deadline_kind = DL_NONE

    # ---- the response --------------------------------------------------------------------------

    cdef int send_interim(self, const char* p, MessageHead* h) except -1:
        cdef H2Conn c = self.conn
        if self.stream_done or self.responded or h.status == 101:
            return 0
        c.begin_fields(h.status)
        self._put_fields(p, h, None, None)
        c.submit(self, h.status, True, False)
        c.send_pending()

    cdef int _put_fields(self, const char* p, MessageHead* h, HeaderOps ops, Exchange ex) except -1:
        cdef H2Conn c = self.conn
        cdef HeaderField* f
        cdef int i
        cdef tuple drops = ex.resp_drops if ex is not None else None
        for i in range(h.nfields):
            f = &h.fields[i]
            if _is_hop_by_hop(f.kind) or f.kind == HK_X_REQUEST_ID:
                continue
            if h.nconn_tokens and _named_by_connection(h, p, f):
                continue
            if ops is not None and ops.drops(p + f.name, f.name_len):
                continue
            if drops is not None and _names_drop(drops, p + f.name, f.name_len):
                continue
            c._span(p + f.name, f.name_len, p + f.value, f.value_len)
        if ops is not None:
            c.add_lines(ops.appended)
        if ex is not None and ex.resp_extra is not None:
            c.add_lines(ex.resp_extra)

    cdef int _put_request_id(self, Exchange ex) except -1:
        self.conn._span(b"x-request-id", 12, PyBytes_AS_STRING(ex.request_id), PyBytes_GET_SIZE(ex.request_id))

    cdef int send_response_head(self, Exchange ex, const char* p, MessageHead* h, int up_framing,
                                bint has_body) except -1:
        cdef H2Conn c = self.conn
        cdef char num[24]
        cdef WBuf* hb
        if self.stream_done:
            return 0
        self.responded = True
        c.begin_fields(h.status)
        self._put_fields(p, h, ex.filters.response_headers if ex.filters is not None else None, ex)
        if h.content_length >= 0 and h.status != 204 and h.status != 304:
            hb = &c.hbuf
            c._span(b"content-length", 14, NULL, 0)
            wb_put_int(hb, h.content_length)
            c.spans[c.nspans - 1].valuelen = hb.len - c.spans[c.nspans - 1].value
        self._put_request_id(ex)
        self.rbuf.len = 0
        self.roff = 0
        self.resp_eof = False
        self.trailers = None
        if h.content_length == 0:
            # nothing follows the head (a gRPC trailers-only answer among them): one HEADERS
            # frame with END_STREAM, not HEADERS and an empty DATA
            has_body = False
        self.provider = has_body
        c.submit(self, h.status, False, has_body)

    cdef int send_body(self, bytes data, Py_ssize_t off, Py_ssize_t n) except -1:
        if n == 0 or self.stream_done:
            return 0
        wb_put(&self.rbuf, PyBytes_AS_STRING(data) + off, n)
        self.bytes_written += n
        if self.deferred:
            self.deferred = False
            nghttp2_session_resume_data(self.conn.session, self.stream_id)
        if not self.up_paused and self.rbuf.len - self.roff > H2_BODY_HIGH:
            # the client (or this stream's window) is behind: the upstream waits
            self.up_paused = True
            self.write_paused = True
            if self.ex is not None and self.ex.up is not None:
                self.ex.up.pause_reading_for_client()

    cdef int resume_upstream(self) except -1:
        self.up_paused = False
        self.write_paused = False
        if self.ex is not None and self.ex.up is not None:
            self.ex.up.resume_reading_for_client()

    cdef int flush(self) except -1:
        self.conn.send_pending()

    cdef int send_trailers(self, Exchange ex, bytes lines) except -1:
        """Response trailers (Exchange.response_trailers): kept until the body's data provider
        reaches its end, then a HEADERS frame with END_STREAM (_h2_body_eof). A response whose head
        ended the stream (no body) cannot carry them: dropped."""
        if self.stream_done or not self.provider or self.resp_eof or not PyBytes_GET_SIZE(lines):
            return 0
        self.trailers = lines if self.trailers is None else self.trailers + lines

    cdef int end_response(self, Exchange ex) except -1:
        cdef UpstreamConn up = ex.up
        cdef double now = monotonic()
        self.resp_eof = True
        if self.deferred and not self.stream_done:
            self.deferred = False
            nghttp2_session_resume_data(self.conn.session, self.stream_id)
        if ex.req_done:
            if up is not None:
                ex.up = None
                up.release(now)
        else:
            # the upstream answered before the request ended: that connection cannot be reused,
            # and the rest of the request is refused with RST_STREAM NO_ERROR after the response
            self.discard = True
            self._consume()
            ex.drop_upstream()
        ex.t_done = now
        self._end_exchange()
        self.conn.send_pending()

    cdef int send_answer(self, Exchange ex, int status, bytes header_lines, bytes body) except -1:
        cdef H2Conn c = self.conn
        cdef bint has_body
        if self.stream_done:
            ex.resp_started = True
            ex.req_done = True
            self._end_exchange()
            return 0
        if body is None:
            body = b""
        self.responded = True
        c.begin_fields(status)
        c.add_lines(header_lines)
        if status != 204 and status != 304:
            c._span(b"content-length", 14, NULL, 0)
            wb_put_int(&c.hbuf, PyBytes_GET_SIZE(body))
            c.spans[c.nspans - 1].valuelen = c.hbuf.len - c.spans[c.nspans - 1].value
        self._put_request_id(ex)
        has_body = not ex.head_method and status != 204 and status != 304 and PyBytes_GET_SIZE(body) > 0
        self.rbuf.len = 0
        self.roff = 0
        if has_body:
            wb_put(&self.rbuf, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))
            self.bytes_written += PyBytes_GET_SIZE(body)
        self.resp_eof = True
        self.trailers = None
        self.provider = has_body
        c.submit(self, status, False, has_body)
        ex.resp_started = True
        if not ex.req_done:
            self.discard = True
            self._consume()
        ex.req_done = True
        self.state = CL_WAIT
        self._end_exchange()
        c.send_pending()

    cdef int truncate(self) except -1:
        self._rst(NGHTTP2_INTERNAL_ERROR)
        self._end_exchange()
        self.conn.send_pending()

    cdef int _rst(self, uint32_t code) except -1:
        if not self.stream_done and self.conn.session != NULL:
            self.discard = True
            nghttp2_submit_rst_stream(self.conn.session, NGHTTP2_FLAG_NONE, self.stream_id, code)

    cdef int _end_exchange(self) except -1:
        cdef Exchange ex = self.ex
        if ex is not None:
            self.ex = None
            ex.finish()

    cpdef abort(self):
        if self.ex is not None:
            self.ex.drop_upstream()
        self._rst(NGHTTP2_INTERNAL_ERROR)
        self._end_exchange()
        if not self.conn.in_recv:
            self.conn.send_pending()

    cdef int reset(self) except -1:
        self.abort()

    cdef int drain(self) except -1:
        return 0

    cdef int _close(self) except -1:
        self._end_exchange()

    cdef int on_deadline(self) except -1:
        cdef int kind = self.deadline_kind
        if kind == DL_BODY or kind == DL_POLICY:
            ClientConn.on_deadline(self)
        else:
            self.deadline = 0.0

    cdef int closed(self, uint32_t error_code) except -1:
        """nghttp2 closed the stream (both ends done, a reset either way, or the connection went)."""
        cdef Exchange ex = self.ex
        self.stream_done = True
        self.state = CL_CLOSED
        self.deadline = 0.0
        if ex is not None:
            ex.drop_upstream()
            if ex.mirror is not None and not ex.req_done:
                ex.mirror.drop()
            self._end_exchange()
        self.buf = b""
