# The downstream side of the proxy: one client connection, one exchange at a time (states in
# proxy.pyx).

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
    cdef RouteMatch rmatch
    cdef UpstreamGroup group
    cdef Filters filters
    cdef MirrorConn mirror
    cdef Router routes
    cdef Runtime routes_rt
    cdef const char* refusal
    cdef int local_port
    cdef str listen_address         # the listener address (as configured) that accepted this
    cdef bytes local_host
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
    cdef bint write_paused
    cdef double deadline
    cdef int deadline_kind
    cdef char hostbuf[MAX_HOST_LEN + 1]

    def __cinit__(self):
        head_init(&self.head, 1)
        wb_init(&self.out, 2048)
        wb_init(&self.uout, 2048)

    def __init__(self, Worker worker, str listen_address=None):
        cdef int cap
        self.worker = worker
        self.listen_address = listen_address
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
        sock = transport.get_extra_info("sockname")
        self.local_port = sock[1] if sock else 0
        self.local_host = (<str>sock[0]).encode() if sock else b"localhost"
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
            if self.deadline_kind == DL_BODY:
                self.deadline = monotonic() + self.rt.body_timeout
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
        if self.mirror is not None and not self.req_done:
            self.mirror.drop()          # a copy that can never be complete
        self.mirror = None

    def pause_writing(self):
        # kept as a flag: asyncio says it once per crossing, and the next exchange's upstream
        # must start paused if the client is still behind
        self.write_paused = True
        if self.up is not None:
            self.up.pause_reading_for_client()

    def resume_writing(self):
        self.write_paused = False
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
        if self.deadline_kind == DL_BODY and reason != PR_PIPELINE:
            self.deadline = 0.0        # the upstream is the slow one: the body clock stops

    cdef void _resume(self, int reason):
        if self.pause_mask & reason:
            self.pause_mask &= ~reason
            if self.pause_mask == 0 and self.state != CL_CLOSED:
                self.transport.resume_reading()
                if self.deadline_kind == DL_BODY:
                    self.deadline = monotonic() + self.rt.body_timeout

    cdef void _process_buffer(self):
        # not reentrant: an exchange that ends inside the loop (a keep-alive error answer) leaves
        # the next pipelined request to the loop already running
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
            if self.rt.head_limits.max_headers > self.head.fields_cap:
                head_free(&self.head)            # a reload raised the limit
                head_init(&self.head, self.rt.head_limits.max_headers)
            p = PyBytes_AS_STRING(self.buf)
            n = PyBytes_GET_SIZE(self.buf)
            r = parse_request_head(&self.head, p, n, &self.rt.head_limits)
            if r == PARSE_INCOMPLETE:
                if self.deadline_kind != DL_HEADER:
                    if self.nrequests == 0 and self.deadline_kind == DL_IDLE:
                        # a new connection's head is due header_timeout after the accept: the
                        # silence before its first byte counts, and a trickle cannot extend it
                        self.deadline_kind = DL_HEADER
                    else:
                        # keep-alive: the wait for the next request is keepalive_timeout's; the
                        # head's own clock starts at its first byte
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
        if h.request_id >= 0 and not (h.nconn_tokens and _connection_lists(h, p, b"x-request-id", 12)):
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

        outcome = self._route(p)
        if outcome != OUT_PROXY:
            if outcome == OUT_TOO_LARGE:
                self.keep_alive = False
            self._refuse_before_upstream(data, head_len, n, outcome, self.refusal)
            return
        self.retry_ok = h.framing == FR_NONE and _idempotent(p, h.method_len)
        self._build_upstream_head(p)
        self.up_head = wb_bytes(&self.uout)
        self.up_queue = [self.up_head]
        self.up_queued = PyBytes_GET_SIZE(self.up_head)
        if self.filters is not None and self.filters.mirror_group is not None:
            self.mirror = start_mirror(self.worker, self.filters, self.up_head)
        self.state = CL_WAIT if self.req_done else CL_BODY
        if self.state == CL_BODY:
            self._set_deadline(DL_BODY, rt.body_timeout)
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

    cdef int _route(self, const char* p) except -1:
        """The decisions of the request phase: listener, route, body limit, backend, filters,
        target. Sets the exchange's fields; returns OUT_PROXY or the status to answer with
        (`self.refusal` says why), or OUT_REDIRECT."""
        cdef MessageHead* h = &self.head
        cdef Runtime rt = self.rt
        cdef Py_ssize_t hl, i
        cdef const char* host
        cdef object payload
        cdef Backend backend
        # route on the lowercased host without its port, and the path without its query
        if h.authority >= 0:
            host = p + h.authority
            hl = h.authority_name_len
        else:
            host = p + h.host
            hl = h.host_name_len
        if hl > MAX_HOST_LEN:          # the parser refuses these; hostbuf must never overflow
            self.refusal = b"host too long"
            return 400
        for i in range(hl):
            self.hostbuf[i] = <char>_LOWER[<uint8_t>host[i]]
        self.hostbuf[hl] = 0
        if self.routes_rt is not rt:
            # the listener depends on the address and the Host; cached while neither can change it
            if self.listen_address is None and len(rt.listener_routers) == 1:
                self.listen_address = next(iter(rt.listener_routers))   # made without a factory
            self.routes = rt.routes_for(self.listen_address, self.hostbuf, hl)
            self.routes_rt = rt if rt.single_listener(self.listen_address) else None
        if self.routes is None or (h.target_len == 1 and p[h.target] == b'*'):
            payload = None
        else:
            payload = self.routes.match_request(self.hostbuf, hl, p, h)
        if payload is None:
            self.refusal = b"no route"
            return 404
        self.rmatch = <RouteMatch>payload
        self.route = self.rmatch.route
        self.max_body = self.route.max_body if self.route.max_body >= 0 else rt.max_body
        if self.max_body >= 0 and h.framing == FR_LENGTH and h.content_length > self.max_body:
            self.refusal = b"request body too large"
            return OUT_TOO_LARGE
        backend = self.route.pick_backend()
        if backend is None:
            self.refusal = b"route has no backends"
            return 500
        self.filters = backend.filters
        if self.filters is not None and self.filters.redirect is not None:
            return OUT_REDIRECT
        self.group = backend.group
        if self.group is None:
            self.refusal = b"backend not found"
            return 500
        self.target = self.group.pick()
        if self.target is None:
            self.refusal = b"no upstream target available"
            return 503
        return OUT_PROXY

    cdef void _refuse_before_upstream(self, bytes data, Py_ssize_t head_len, Py_ssize_t n,
                                      int status, const char* reason):
        """Answers without an upstream. Keep-alive survives only when there is no body to skip."""
        if self.req_framing != FR_NONE:
            self.keep_alive = False
        elif head_len < n:
            self.buf = data[head_len:]
        if status == OUT_REDIRECT:
            self._send_redirect(PyBytes_AS_STRING(data))
        else:
            self._send_error(status, reason)

    cdef void _build_upstream_head(self, const char* p) except *:
        cdef MessageHead* h = &self.head
        cdef WBuf* out = &self.uout
        cdef HeaderField* f
        cdef int i, k
        cdef Filters flt = self.filters
        cdef HeaderOps ops = flt.request_headers if flt is not None else None
        cdef Rewrite rw = flt.rewrite if flt is not None else None
        cdef bytes new_path
        cdef const char* client_host
        cdef Py_ssize_t client_host_len
        out.len = 0
        wb_put(out, p + h.method, h.method_len)
        wb_put(out, b" ", 1)
        if rw is not None and rw.path_full_parts is not None:
            new_path = expand_captures(rw.path_full_parts, self.rmatch.capture_names, self.routes, p + h.target)
            wb_put(out, PyBytes_AS_STRING(new_path), PyBytes_GET_SIZE(new_path))
            wb_put(out, p + h.target + h.path_len, h.target_len - h.path_len)
        elif rw is not None and (rw.path_full is not None or rw.path_prefix is not None):
            new_path = replace_path(p + h.target, h.path_len, self.rmatch.prefix, rw.path_full, rw.path_prefix)
            wb_put(out, PyBytes_AS_STRING(new_path), PyBytes_GET_SIZE(new_path))
            wb_put(out, p + h.target + h.path_len, h.target_len - h.path_len)
        else:
            if h.target_len == 0 or p[h.target] == b'?':
                wb_put(out, b"/", 1)
            wb_put(out, p + h.target, h.target_len)
        wb_put(out, b" HTTP/1.1\r\n", 11)
        # Host: a rewrite's, else absolute-form's authority, else the client's; an HTTP/1.0 request
        # without one gets the target's address (HTTP/1.1 upstream requests need a Host)
        if h.authority >= 0:
            client_host = p + h.authority
            client_host_len = h.authority_len
        elif h.has_host:
            client_host = p + h.host
            client_host_len = h.host_len
        else:
            client_host = PyBytes_AS_STRING(self.target.address_bytes)
            client_host_len = PyBytes_GET_SIZE(self.target.address_bytes)
        if rw is not None and rw.hostname is not None:
            _put_line(out, b"Host: ", 6, PyBytes_AS_STRING(rw.hostname), PyBytes_GET_SIZE(rw.hostname))
        else:
            _put_line(out, b"Host: ", 6, client_host, client_host_len)
        for i in range(h.nfields):
            f = &h.fields[i]
            k = f.kind
            if k == HK_OTHER or k == HK_EXPECT:
                if h.nconn_tokens and _named_by_connection(h, p, f):
                    continue
                if ops is not None and ops.drops(p + f.name, f.name_len):
                    continue
                _put_field(out, p, f)
        wb_put(out, b"X-Forwarded-For: ", 17)
        if h.n_xff:
            for i in range(h.nfields):
                f = &h.fields[i]
                if f.kind == HK_X_FORWARDED_FOR and f.value_len and not (
                        h.nconn_tokens and _named_by_connection(h, p, f)):
                    wb_put(out, p + f.value, f.value_len)
                    wb_put(out, b", ", 2)
        wb_put(out, PyBytes_AS_STRING(self.client_ip), PyBytes_GET_SIZE(self.client_ip))
        wb_put(out, b"\r\nX-Forwarded-Proto: http\r\n", 27)
        if h.authority >= 0 or h.has_host:
            _put_line(out, b"X-Forwarded-Host: ", 18, client_host, client_host_len)
        wb_put(out, b"X-Request-Id: ", 14)
        wb_put(out, PyBytes_AS_STRING(self.request_id), PyBytes_GET_SIZE(self.request_id))
        wb_put(out, b"\r\n", 2)
        if ops is not None:
            wb_put(out, PyBytes_AS_STRING(ops.appended), PyBytes_GET_SIZE(ops.appended))
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
        self.deadline = 0.0
        self.deadline_kind = DL_NONE
        if pos < n:
            self.buf = data[pos:]
            self._pause(PR_PIPELINE)
        if self.up is not None and self.up.connected and self.up_queue is None:
            self.up.expect_response(True)

    cdef void _send_up(self, bytes chunk):
        if self.mirror is not None:
            self.mirror.send(chunk)
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
        if self.mirror is not None:
            self.mirror.drop()
            self.mirror = None
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
        up.start_connect(self.group.connect_timeout)

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
        if self.write_paused:
            self.up.pause_reading_for_client()
        self.up.expect_response(self.req_done)

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
        self._resume(PR_CONNECTING)
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
        self._put_status_and_fields(p, h, None)
        wb_put(out, b"\r\n", 2)
        self.transport.write(wb_bytes(out))

    cdef void _put_status_and_fields(self, const char* p, MessageHead* h, HeaderOps ops) except *:
        """The client's status line and the upstream's end-to-end fields, edited by `ops`."""
        cdef HeaderField* f
        cdef int i
        wb_put(&self.out, b"HTTP/1.1 ", 9)
        wb_put_int(&self.out, h.status)
        wb_put(&self.out, b" ", 1)
        wb_put(&self.out, p + h.reason, h.reason_len)
        wb_put(&self.out, b"\r\n", 2)
        for i in range(h.nfields):
            f = &h.fields[i]
            if _is_hop_by_hop(f.kind) or f.kind == HK_X_REQUEST_ID:
                continue
            if h.nconn_tokens and _named_by_connection(h, p, f):
                continue
            if ops is not None and ops.drops(p + f.name, f.name_len):
                continue
            _put_field(&self.out, p, f)
        if ops is not None:
            wb_put(&self.out, PyBytes_AS_STRING(ops.appended), PyBytes_GET_SIZE(ops.appended))

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
        self._put_status_and_fields(p, h, self.filters.response_headers if self.filters is not None else None)
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

    cdef void response_body(self, bytes data, Py_ssize_t off, Py_ssize_t n) except *:
        """Body bytes data[off:off + n] for the client. Small pieces join the pending head in
        self.out (one write); large ones go out as they are (a memoryview, no copy), after it."""
        cdef WBuf* out = &self.out
        cdef object piece
        if n == 0 or self.state == CL_CLOSED:
            return
        if n <= COALESCE_MAX:
            if self.resp_mode == RM_CHUNK:
                wb_put_hex(out, n)
                wb_put(out, b"\r\n", 2)
                wb_put(out, PyBytes_AS_STRING(data) + off, n)
                wb_put(out, b"\r\n", 2)
            else:
                wb_put(out, PyBytes_AS_STRING(data) + off, n)
            return
        piece = data if (off == 0 and n == PyBytes_GET_SIZE(data)) else memoryview(data)[off:off + n]
        if self.resp_mode == RM_CHUNK:
            wb_put_hex(out, n)
            wb_put(out, b"\r\n", 2)
            self.transport.writelines((wb_bytes(out), piece, b"\r\n"))
        elif out.len:
            self.transport.writelines((wb_bytes(out), piece))
        else:
            self.transport.write(piece)
        out.len = 0

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
        self.rmatch = None
        self.group = None
        self.filters = None
        self.mirror = None
        self.target = None
        self.up_head = None
        if not self.keep_alive or self.state == CL_CLOSED:
            self._close()
            return
        self.state = CL_HEAD
        self._resume(PR_PIPELINE | PR_UPSTREAM | PR_CONNECTING)
        if PyBytes_GET_SIZE(self.buf):
            if not self.processing:
                self._process_buffer()
        else:
            self._set_deadline(DL_IDLE, self.rt.keepalive_timeout)

    cdef void response_truncated(self):
        """The upstream died mid-body: the client must not see a clean end. A FIN would look like
        the end of a close-delimited body, so the connection is reset instead."""
        self.flush_response()
        self.reset()

    # ---- endings -----------------------------------------------------------------------------

    cdef bytes _redirect_location(self, const char* p):
        """Gateway API RequestRedirect: unset parts keep the request's; the port is the given one,
        else the well-known port of a given scheme, else the listener's; the scheme's default port is
        left out."""
        cdef MessageHead* h = &self.head
        cdef Redirect r = self.filters.redirect
        cdef bytes scheme = r.scheme if r.scheme is not None else b"http"
        cdef int port
        cdef bytes host, path, location
        if r.port:
            port = r.port
        elif r.scheme is not None:
            port = 443 if scheme == b"https" else 80
        else:
            port = self.local_port
        if r.hostname is not None:
            host = r.hostname
        elif h.authority >= 0:
            host = p[h.authority:h.authority + h.authority_name_len]
        elif h.has_host:
            host = p[h.host:h.host + h.host_name_len]
        else:                           # HTTP/1.0 without Host: the address the client reached
            host = b"[%s]" % self.local_host if b":" in self.local_host else self.local_host
        if r.path_full_parts is not None:
            path = expand_captures(r.path_full_parts, self.rmatch.capture_names, self.routes, p + h.target)
        elif r.path_full is not None or r.path_prefix is not None:
            path = replace_path(p + h.target, h.path_len, self.rmatch.prefix, r.path_full, r.path_prefix)
        else:
            path = p[h.target:h.target + h.path_len] or b"/"
        location = scheme + b"://" + host
        if not ((scheme == b"http" and port == 80) or (scheme == b"https" and port == 443)):
            location += b":%d" % port
        return location + path + p[h.target + h.path_len:h.target + h.target_len]

    cdef void _send_redirect(self, const char* p):
        cdef Redirect r = self.filters.redirect
        cdef bytes head = (b"HTTP/1.1 %d %s\r\nLocation: %s\r\nContent-Length: 0\r\nX-Request-Id: %s\r\n%s\r\n") % (
            r.status, _REASONS.get(r.status, b"Redirect"), self._redirect_location(p), self.request_id,
            b"" if self.keep_alive else b"Connection: close\r\n")
        self._answer(head)

    def serialize_upstream_head(self, bytes raw, bytes client_ip, bytes request_id):
        """The upstream head for a request head, no routing or filters: for benchmarks and tests."""
        cdef const char* p = raw
        if parse_request_head(&self.head, p, len(raw), &self.rt.head_limits) < 0:
            raise ValueError("not a complete, valid request head")
        self.client_ip = client_ip
        self.request_id = request_id
        self.filters = None
        self._build_upstream_head(p)
        return wb_bytes(&self.uout)

    def explain(self, bytes raw, int local_port, str listen_address=None, bytes client_ip=b"192.0.2.1"):
        """What the request phase decides for `raw` (a request head), with no socket: for
        `fastgw explain` and tests. `listen_address` defaults to the configured listener address
        with that port."""
        cdef const char* p = raw
        cdef Py_ssize_t r
        cdef int outcome
        self.rt = self.worker.runtime
        self.local_port = local_port
        self.local_host = b"127.0.0.1"
        if listen_address is None:
            listen_address = next((a for a in self.rt.listener_routers
                                   if a.endswith(":%d" % local_port)), None)
        self.listen_address = listen_address
        self.client_ip = client_ip
        r = parse_request_head(&self.head, p, len(raw), &self.rt.head_limits)
        if r == PARSE_INCOMPLETE:
            raise ValueError("incomplete request head")
        if r == PARSE_ERROR:
            return {"status": self.head.error_status, "error": (<bytes>self.head.error_reason).decode()}
        rid = self.head.request_id
        self.request_id = raw[rid:rid + self.head.request_id_len] if rid >= 0 else b"<generated>"
        self.routes_rt = None
        outcome = self._route(p)
        out = {"status": outcome, "route": self.route.name if self.route is not None else None,
               "match_prefix": self.rmatch.prefix if self.rmatch is not None else None}
        if self.route is not None:
            out["backends"] = [(b.group.name if b.group is not None else None, b.weight)
                               for b in self.route.backends]
        if self.filters is not None:
            f = self.filters
            out["filters"] = {
                "request_headers": f.request_headers, "response_headers": f.response_headers,
                "redirect": f.redirect, "rewrite": f.rewrite,
                "mirror": f.mirror_group.name if f.mirror_group is not None else None,
            }
        if outcome == OUT_REDIRECT:
            out["status"] = self.filters.redirect.status
            out["location"] = self._redirect_location(p)
        elif outcome == OUT_PROXY:
            out["status"] = 200
            out["upstream"] = self.group.name
            out["target"] = self.target.address
            self._build_upstream_head(p)
            out["upstream_request"] = wb_bytes(&self.uout)
        else:
            out["error"] = (<bytes>self.refusal).decode()
        return out

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
        self._answer(head + body if not self.head_method else head)

    cdef void _answer(self, bytes response):
        """A response the gateway makes itself: the exchange ends with it."""
        self.transport.write(response)
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

    cdef void reset(self):
        """Ends the connection with a TCP reset (SO_LINGER 0), which no client mistakes for the
        end of a response."""
        if self.transport is not None and self.state != CL_CLOSED:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, _LINGER_RESET)
                except OSError:
                    pass
        self.abort()

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
        elif self.deadline_kind == DL_BODY:
            self.deadline_kind = DL_NONE
            self._fail_request(408, b"request body timeout")
        else:
            self._close()
        self.deadline = 0.0
