# The downstream side of the proxy: one HTTP/1.1 client connection, which carries one Exchange at a
# time (states in proxy.pyx). What belongs to a request lives in its Exchange (exchange.pyx); this
# class owns the transport, the head parser and its buffer, keep-alive, pipelining, the pause
# reasons and the deadlines, and serializes what the Exchange sends into HTTP/1.1.

cdef class ClientConn:
    cdef Worker worker
    cdef object transport
    cdef object transport_write     # transport.write, looked up once (a method lookup per write saved)
    cdef Runtime rt
    cdef int state
    cdef MessageHead head
    cdef WBuf out                   # bytes on their way to the client
    cdef WBuf uout                  # bytes on their way to the upstream (built by the Exchange)
    cdef bytes buf
    cdef bint processing
    cdef bytes client_ip
    cdef Exchange ex
    cdef Exchange spare             # the last exchange, reused for the next request when nothing holds it
    cdef Router routes
    cdef Runtime routes_rt
    cdef int local_port
    cdef str listen_address         # the listener address (as configured) that accepted this
    cdef bytes local_host
    cdef bint keep_alive
    cdef int resp_mode
    cdef int nrequests
    cdef int pause_mask
    cdef bint write_paused
    cdef double deadline
    cdef int deadline_kind
    cdef double t_accept
    cdef int64_t bytes_written
    cdef Py_ssize_t host_len
    cdef char hostbuf[MAX_HOST_LEN + 1]
    # TLS termination (issue 13), set once from the handshake: None/False on plain listeners
    cdef object tls_endpoint        # fastgw.tls.TlsEndpoint of the listening address
    cdef readonly bint tls
    cdef readonly bint h2           # an HTTP/2 connection or stream (h2server.pyx), for the log's protocol
    cdef bytes sni                  # the server name the client asked for (lowercase), or None
    cdef list cert_edits            # client certificate headers: upstream edits every request starts with
    cdef readonly object client_cert   # the verified client certificate (fastgw.tls.client_cert_info)

    # The header array and the two write buffers (about 8 KB) exist only while a request is in
    # progress: taken from the worker's pool (connbufs.pyx) when a head starts, given back when the
    # connection goes idle, so an idle keep-alive connection holds none of them.

    def __init__(self, Worker worker, str listen_address=None, tls_endpoint=None):
        self.worker = worker
        self.listen_address = listen_address
        self.tls_endpoint = tls_endpoint
        self.rt = worker.runtime
        self.state = CL_HEAD
        self.buf = b""

    def __dealloc__(self):
        self.release_buffers()

    cdef inline int acquire_buffers(self) except -1:
        """The head's field array (sized for the current max_headers) and the write buffers."""
        cdef int cap = self.rt.head_limits.max_headers
        if self.out.data != NULL and self.head.fields != NULL and cap <= self.head.fields_cap:
            return 0                    # held already (a pipelined head, a head in pieces)
        if cs_take(&self.head, &self.out, &self.uout, cap):
            return 0
        if self.head.fields == NULL or cap > self.head.fields_cap:
            cb_take_head(&self.head, cap)
        if self.out.data == NULL:
            cb_take_wbuf(&self.out)
        if self.uout.data == NULL:
            cb_take_wbuf(&self.uout)
        return 0

    cdef inline int release_buffers(self) noexcept:
        """Back to the pool: no exchange refers to them any more (a finished one that a log entry
        keeps sees no fields: nfields is 0)."""
        if cs_give(&self.head, &self.out, &self.uout):
            return 0
        if self.head.fields != NULL:
            cb_give_head(&self.head)
        if self.out.data != NULL:
            cb_give_wbuf(&self.out)
        if self.uout.data != NULL:
            cb_give_wbuf(&self.uout)
        return 0

    # ---- asyncio protocol ----------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.transport_write = transport.write
        self.t_accept = monotonic()
        sock = transport.get_extra_info("sockname")
        self.local_port = sock[1] if sock else 0
        self.local_host = (<str>sock[0]).encode() if sock else b"localhost"
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = (<str>peer[0]).encode()
        else:
            self.client_ip = b"unknown"
        if self.tls_endpoint is not None:
            self.tls = True
            ssl_object = transport.get_extra_info("ssl_object")
            self.sni, self.cert_edits, self.client_cert = self.tls_endpoint.connection_info(ssl_object)
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                self.worker.clients.add(self)
                self.worker.connections_total += 1
                h2_take_over(self, None)              # ALPN h2 (h2server.pyx)
                return
        self.worker.clients.add(self)
        self.worker.connections_total += 1
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
            self.ex.request_body(data, 0)
        elif self.state == CL_WAIT:
            self.buf = data if PyBytes_GET_SIZE(self.buf) == 0 else self.buf + data
            self._pause(PR_PIPELINE)
        elif self.state == CL_POLICY:
            # kept for the exchange to resume with; reading goes on (up to a bound) so that a
            # client that leaves while a policy works is seen leaving
            self.buf = data if PyBytes_GET_SIZE(self.buf) == 0 else self.buf + data
            if PyBytes_GET_SIZE(self.buf) > QUEUE_HIGH_WATER:
                self._pause(PR_POLICY)

    def eof_received(self):
        # A half-closed client is done sending; if a request is in flight let it finish and close.
        if self.state == CL_HEAD:
            return False
        if self.state == CL_BODY:
            self.ex.flags |= RF_DOWNSTREAM_DISCONNECT
            self.ex.fail_request(400, b"client closed the connection during the request body")
            return False
        self.keep_alive = False
        return True

    def connection_lost(self, exc):
        cdef Exchange ex = self.ex
        cdef bint mid_head = self.state == CL_HEAD and PyBytes_GET_SIZE(self.buf) > 0
        self.state = CL_CLOSED
        self.worker.clients.discard(self)
        self.spare = None               # it points back here
        if ex is not None:
            ex.drop_upstream()
            if ex.mirror is not None and not ex.req_done:
                ex.mirror.drop()          # a copy that can never be complete
            self._end_exchange()
        elif mid_head:
            self._log_unfinished_head()
        if self.ex is None and not self.h2:
            self.release_buffers()

    def pause_writing(self):
        # kept as a flag: asyncio says it once per crossing, and the next exchange's upstream
        # must start paused if the client is still behind
        self.write_paused = True
        if self.ex is not None and self.ex.up is not None:
            self.ex.up.pause_reading_for_client()

    def resume_writing(self):
        self.write_paused = False
        if self.ex is not None and self.ex.up is not None:
            self.ex.up.resume_reading_for_client()

    # ---- reading and deadlines -----------------------------------------------------------------

    cdef int _set_deadline(self, int kind, double timeout) except -1:
        self.deadline_kind = kind
        self.deadline = monotonic() + timeout if timeout > 0 else 0.0

    cdef int _pause(self, int reason) except -1:
        if self.pause_mask == 0 and self.state != CL_CLOSED:
            self.transport.pause_reading()
        self.pause_mask |= reason
        if self.deadline_kind == DL_BODY and reason != PR_PIPELINE:
            self.deadline = 0.0        # the upstream is the slow one: the body clock stops

    cdef int _resume(self, int reason) except -1:
        if self.pause_mask & reason:
            self.pause_mask &= ~reason
            if self.pause_mask == 0 and self.state != CL_CLOSED:
                self.transport.resume_reading()
                if self.deadline_kind == DL_BODY:
                    self.deadline = monotonic() + self.rt.body_timeout

    cdef int pause_reading_for(self, Exchange ex, int reason) except -1:
        if ex is not self.ex:
            return 0
        if reason == PR_POLICY:
            self.state = CL_POLICY    # reading pauses only once QUEUE_HIGH_WATER bytes wait
            return 0
        self._pause(reason)

    cdef int resume_reading_for(self, Exchange ex, int reason) except -1:
        if ex is self.ex:
            self._resume(reason)

    cdef int set_policy_deadline(self, double timeout) except -1:
        self._set_deadline(DL_POLICY, timeout)

    cdef int clear_policy_deadline(self) except -1:
        if self.deadline_kind == DL_POLICY:
            self.deadline = 0.0
            self.deadline_kind = DL_NONE

    cdef bytes take_stash(self, Exchange ex):
        """The bytes after the head, kept while a policy paused the exchange."""
        cdef bytes rest = ex.stash if ex.stash is not None else b""
        ex.stash = None
        if PyBytes_GET_SIZE(self.buf):
            rest = rest + self.buf
            self.buf = b""
        if self.state == CL_POLICY:
            self.state = CL_WAIT
        return rest

    cdef int _process_buffer(self) except -1:
        # not reentrant: an exchange that ends inside the loop (a keep-alive error answer) leaves
        # the next pipelined request to the loop already running
        if self.processing:
            return 0
        self.processing = True
        try:
            self._process_loop()
        finally:
            self.processing = False

    cdef int _process_loop(self) except -1:
        cdef const char* p
        cdef Py_ssize_t n, r
        while self.state == CL_HEAD and PyBytes_GET_SIZE(self.buf) > 0:
            self.rt = self.worker.runtime
            self.acquire_buffers()               # and a reload may have raised max_headers
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
                return 0
            if r == PARSE_ERROR:
                if self.nrequests == 0 and h2_preface_start(p, n) and _h2_settings(self.rt).prior_knowledge:
                    h2_take_over(self, self.buf)      # h2c with prior knowledge (h2server.pyx)
                    return 0
                self._refuse_head(self.head.error_status, self.head.error_reason, RF_BAD_REQUEST)
                return 0
            self._start_request(r, n)

    cdef Exchange _new_exchange(self, bytes raw, Py_ssize_t head_len):
        cdef Exchange ex
        # reused only when this connection alone holds it: a view, a task or a log entry that kept
        # the last exchange keeps it as it was
        if self.spare is not None and _Py_REFCNT(<PyObject*>self.spare) == 1:
            ex = self.spare
            self.spare = None
            ex.reset()
        else:
            ex = Exchange.__new__(Exchange)
        ex.init(self, raw, head_len, &self.head)
        self.ex = ex
        return ex

    cdef Exchange _refused_exchange(self, MessageHead* h):
        """An exchange for bytes that never became a request (h: what the parser made of them, or
        NULL): a fresh id, no Host, outcome refused."""
        cdef Exchange ex = Exchange.__new__(Exchange)
        ex.init(self, self.buf, 0, h)
        self.buf = b""
        self.host_len = 0
        ex.request_id = self.worker.new_request_id()
        ex.head_method = False
        ex.outcome = OC_REFUSED
        return ex

    cdef int _refuse_head(self, int status, const char* reason, int flag) except -1:
        """The parser refused the head (or it never came whole in time): answered and logged, and
        the connection closes."""
        cdef Exchange ex = self._refused_exchange(&self.head)
        self.ex = ex
        self.keep_alive = False
        ex.flags |= flag
        ex.send_error(status, reason)

    cdef int _log_unfinished_head(self) except -1:
        """The client left in the middle of a head: logged as an exchange nobody answered."""
        self._refused_exchange(NULL).finish()

    cdef int _start_request(self, Py_ssize_t head_len, Py_ssize_t n) except -1:
        cdef MessageHead* h = &self.head
        cdef bytes data = self.buf
        cdef const char* p = PyBytes_AS_STRING(data)
        cdef Exchange ex
        self.deadline = 0.0
        self.deadline_kind = DL_NONE
        self.nrequests += 1
        self.worker.requests_total += 1
        self.keep_alive = h.conn_keep_alive if h.version_minor == 0 else not h.conn_close
        if self.worker.draining or self.nrequests >= self.rt.max_requests_per_connection:
            self.keep_alive = False
        ex = self._new_exchange(data, head_len)
        if h.request_id >= 0 and not (h.nconn_tokens and _connection_lists(h, p, b"x-request-id", 12)):
            ex.request_id = p[h.request_id:h.request_id + h.request_id_len]
        else:
            ex.request_id = self.worker.new_request_id()
        self.buf = b""
        ex.run(data, head_len, n)

    cdef int route_table(self, Exchange ex, const char* p, MessageHead* h) except -1:
        """The lowercased Host (in hostbuf) and the route table of the listener serving it on this
        connection's address (ex.routes)."""
        cdef Runtime rt = ex.rt
        cdef Py_ssize_t hl, i
        cdef const char* host
        if h.authority >= 0:
            host = p + h.authority
            hl = h.authority_name_len
        else:
            host = p + h.host
            hl = h.host_name_len
        if hl > MAX_HOST_LEN:          # the parser refuses these; hostbuf must never overflow
            ex.refusal = b"host too long"
            return 400
        for i in range(hl):
            self.hostbuf[i] = <char>_LOWER[<uint8_t>host[i]]
        if hl > 1 and self.hostbuf[hl - 1] == b'.':
            hl -= 1                    # a fully qualified "example.com." names "example.com"
        self.hostbuf[hl] = 0
        self.host_len = hl
        if self.routes_rt is not rt:
            # the listener depends on the address and the Host; cached while neither can change it
            if self.listen_address is None and len(rt.listener_routers) == 1:
                self.listen_address = next(iter(rt.listener_routers))   # made without a factory
            self.routes = rt.routes_for(self.listen_address, self.hostbuf, hl)
            self.routes_rt = rt if rt.single_listener(self.listen_address) else None
            if self.sni is not None and self.routes_rt is None and rt.routes_for(
                    self.listen_address, PyBytes_AS_STRING(self.sni), PyBytes_GET_SIZE(self.sni)) is not self.routes:
                # Gateway API: the certificate was chosen for another listener than the Host's
                ex.refusal = b"misdirected request: the Host is served by another listener than the TLS server name"
                return 421
        ex.routes = self.routes
        return OUT_PROXY

    cdef int request_dispatched(self, Exchange ex) except -1:
        """The exchange is on its way upstream: the request body (if any) streams now."""
        if ex.req_done:
            self.state = CL_WAIT
        else:
            self.state = CL_BODY
            self._set_deadline(DL_BODY, self.rt.body_timeout)

    cdef int keep_pipelined(self, bytes data, Py_ssize_t off) except -1:
        """Bytes after a complete request: the next request, parsed when this exchange ends."""
        self.buf = data[off:] if off else data
        self._pause(PR_PIPELINE)

    cdef int request_complete(self, Exchange ex, bytes data, Py_ssize_t pos, Py_ssize_t n) except -1:
        self.state = CL_WAIT
        self.deadline = 0.0
        self.deadline_kind = DL_NONE
        if pos < n:
            self.keep_pipelined(data, pos)

    # ---- writing the response ------------------------------------------------------------------

    cdef inline int _write(self, object data, Py_ssize_t n) except -1:
        self.bytes_written += n
        self.transport_write(data)

    cdef int send_interim(self, const char* p, MessageHead* h) except -1:
        cdef WBuf* out
        if self.state == CL_CLOSED:
            return 0
        out = &self.out
        out.len = 0
        self._put_status_and_fields(p, h, None, None)
        wb_put(out, b"\r\n", 2)
        self._write(wb_bytes(out), out.len)

    cdef int _put_status_and_fields(self, const char* p, MessageHead* h, HeaderOps ops, Exchange ex) except -1:
        """The client's status line and the upstream's end-to-end fields, edited by `ops` and by
        the exchange's response policies."""
        cdef HeaderField* f
        cdef int i
        cdef tuple drops = ex.resp_drops if ex is not None else None
        cdef LineRun run
        run.start = run.end = 0
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
            if drops is not None and _names_drop(drops, p + f.name, f.name_len):
                continue
            _put_field_line(&self.out, p, f, &run)
        _run_flush(&self.out, p, &run)
        if ops is not None:
            wb_put(&self.out, PyBytes_AS_STRING(ops.appended), PyBytes_GET_SIZE(ops.appended))
        if ex is not None and ex.resp_extra is not None:
            wb_put(&self.out, PyBytes_AS_STRING(ex.resp_extra), PyBytes_GET_SIZE(ex.resp_extra))

    cdef int send_response_head(self, Exchange ex, const char* p, MessageHead* h, int up_framing,
                                 bint has_body) except -1:
        """Writes the response head into self.out; the caller appends the first body bytes and
        flushes, so a small response leaves in one write."""
        cdef WBuf* out = &self.out
        if up_framing == FR_LENGTH or up_framing == FR_NONE or not has_body:
            # FR_NONE with a body allowed: Content-Length: 0, which no last chunk may follow
            self.resp_mode = RM_PASS
        elif ex.http10:
            self.resp_mode = RM_PASS
            self.keep_alive = False
        else:
            self.resp_mode = RM_CHUNK
        if not ex.req_done:
            self.keep_alive = False
        out.len = 0
        self._put_status_and_fields(p, h, ex.filters.response_headers if ex.filters is not None else None, ex)
        if h.content_length >= 0 and h.status != 204:
            wb_put(out, b"Content-Length: ", 16)
            wb_put_int(out, h.content_length)
            wb_put(out, b"\r\n", 2)
        elif self.resp_mode == RM_CHUNK:
            wb_put(out, b"Transfer-Encoding: chunked\r\n", 28)
        self._end_head(ex, ex.http10)

    cdef int _end_head(self, Exchange ex, bint http10) except -1:
        """X-Request-Id and connection management, then the blank line."""
        cdef WBuf* out = &self.out
        wb_put(out, b"X-Request-Id: ", 14)
        wb_put(out, PyBytes_AS_STRING(ex.request_id), PyBytes_GET_SIZE(ex.request_id))
        if not self.keep_alive:
            wb_put(out, b"\r\nConnection: close\r\n\r\n", 23)
        elif http10:
            wb_put(out, b"\r\nConnection: keep-alive\r\n\r\n", 28)
        else:
            wb_put(out, b"\r\n\r\n", 4)

    cdef int send_body(self, bytes data, Py_ssize_t off, Py_ssize_t n) except -1:
        """Body bytes data[off:off + n] for the client. Small pieces join the pending head in
        self.out (one write); large ones go out as they are (a memoryview, no copy), after it."""
        cdef WBuf* out = &self.out
        cdef object piece
        if n == 0 or self.state == CL_CLOSED:
            return 0
        if n <= COALESCE_MAX:
            if self.resp_mode == RM_CHUNK:
                wb_put_hex(out, n)
                wb_put(out, b"\r\n", 2)
                wb_put(out, PyBytes_AS_STRING(data) + off, n)
                wb_put(out, b"\r\n", 2)
            else:
                wb_put(out, PyBytes_AS_STRING(data) + off, n)
            return 0
        piece = data if (off == 0 and n == PyBytes_GET_SIZE(data)) else memoryview(data)[off:off + n]
        if self.resp_mode == RM_CHUNK:
            wb_put_hex(out, n)
            wb_put(out, b"\r\n", 2)
            self.bytes_written += out.len + n + 2
            self.transport.writelines((wb_bytes(out), piece, b"\r\n"))
            out.len = 0
            return 0
        self.bytes_written += out.len + n
        if out.len:
            self.transport.writelines((wb_bytes(out), piece))
        else:
            self.transport_write(piece)
        out.len = 0

    cdef int flush(self) except -1:
        if self.out.len:
            if self.state != CL_CLOSED:
                self._write(wb_bytes(&self.out), self.out.len)
            self.out.len = 0

    cdef int send_trailers(self, Exchange ex, bytes lines) except -1:
        """Response trailers (Exchange.response_trailers): in the chunked trailer section when the
        response is chunked and the client sent `TE: trailers` (RFC 9110 6.5); otherwise dropped,
        as HTTP/1.1 cannot carry them."""
        cdef object te
        if self.resp_mode != RM_CHUNK or self.state == CL_CLOSED or not PyBytes_GET_SIZE(lines):
            return 0
        te = _field_value(ex.h, ex.p, b"te")
        if te is None or b"trailers" not in (<bytes>te).lower():
            return 0
        wb_put(&self.out, b"0\r\n", 3)
        wb_put(&self.out, PyBytes_AS_STRING(lines), PyBytes_GET_SIZE(lines))
        wb_put(&self.out, b"\r\n", 2)
        self.resp_mode = RM_PASS        # the last chunk is written: end_response adds nothing

    cdef int end_response(self, Exchange ex) except -1:
        if self.resp_mode == RM_CHUNK:
            wb_put(&self.out, b"0\r\n\r\n", 5)
        self.flush()
        if ex.req_done:
            self._exchange_done()
        else:
            # the upstream answered before the request body ended: that connection cannot be
            # reused, and the rest of the body cannot be told from a next request
            self.keep_alive = False
            ex.drop_upstream()
            self._close()

    cdef int send_answer(self, Exchange ex, int status, bytes header_lines, bytes body) except -1:
        """A response the gateway or a policy makes: the exchange ends with it."""
        cdef WBuf* out = &self.out
        if self.state == CL_CLOSED:
            return 0
        if body is None:
            body = b""
        out.len = 0
        wb_put(out, b"HTTP/1.1 ", 9)
        wb_put_int(out, status)
        wb_put(out, b" ", 1)
        reason = _REASONS.get(status, b"Error" if status >= 400 else b"OK")
        wb_put(out, PyBytes_AS_STRING(reason), PyBytes_GET_SIZE(reason))
        wb_put(out, b"\r\n", 2)
        if header_lines is not None:
            wb_put(out, PyBytes_AS_STRING(header_lines), PyBytes_GET_SIZE(header_lines))
        if status != 204 and status != 304:
            wb_put(out, b"Content-Length: ", 16)
            wb_put_int(out, PyBytes_GET_SIZE(body))
            wb_put(out, b"\r\n", 2)
        self._end_head(ex, ex.http10)
        if not ex.head_method and status != 204 and status != 304:
            wb_put(out, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))
        self.flush()
        ex.resp_started = True
        ex.req_done = True
        self.resp_mode = RM_PASS
        if self.keep_alive:
            self.state = CL_WAIT
            self._exchange_done()
        else:
            self._close()

    cdef int truncate(self) except -1:
        """The response cannot be completed: the client must not see a clean end. A FIN would look
        like the end of a close-delimited body, so the connection is reset instead."""
        self.flush()
        self.reset()

    # ---- endings -------------------------------------------------------------------------------

    cdef int _end_exchange(self) except -1:
        cdef Exchange ex = self.ex
        if ex is not None:
            self.ex = None
            ex.finish()
            if self.state != CL_CLOSED:
                self.spare = ex

    cdef int _exchange_done(self) except -1:
        cdef Exchange ex = self.ex
        cdef UpstreamConn up = ex.up if ex is not None else None
        cdef double now = monotonic()   # one reading for the pool, the log and the idle clock
        if up is not None:
            ex.up = None
            up.release(now)
        if ex is not None:
            ex.t_done = now
        self._end_exchange()
        if not self.keep_alive or self.state == CL_CLOSED:
            self._close()
            return 0
        self.state = CL_HEAD
        self._resume(PR_PIPELINE | PR_UPSTREAM | PR_CONNECTING | PR_POLICY)
        if PyBytes_GET_SIZE(self.buf):
            if not self.processing:
                self._process_buffer()
        else:
            self.deadline_kind = DL_IDLE
            self.deadline = now + self.rt.keepalive_timeout
            if not self.h2:
                self.release_buffers()  # idle: nothing pipelined, no exchange

    cdef int _close(self) except -1:
        if self.state == CL_CLOSED:
            self._end_exchange()
            return 0
        self.state = CL_CLOSED
        self.deadline = 0.0
        self.transport.close()
        self._end_exchange()

    cpdef abort(self):
        if self.ex is None and self.state == CL_HEAD and PyBytes_GET_SIZE(self.buf):
            self._log_unfinished_head()
        if self.ex is not None:
            self.ex.drop_upstream()
        if self.transport is not None and self.state != CL_CLOSED:
            self.state = CL_CLOSED
            self.transport.abort()
        self.state = CL_CLOSED
        self._end_exchange()

    cdef int reset(self) except -1:
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

    cdef int drain(self) except -1:
        self.keep_alive = False
        if self.state == CL_HEAD and PyBytes_GET_SIZE(self.buf) == 0:
            self._close()

    cdef int on_deadline(self) except -1:
        cdef int kind = self.deadline_kind
        self.deadline = 0.0
        if kind == DL_HEADER:
            self._refuse_head(408, b"request header timeout", RF_REQUEST_TIMEOUT)
        elif kind == DL_BODY:
            self.deadline_kind = DL_NONE
            self.ex.flags |= RF_REQUEST_TIMEOUT
            self.ex.fail_request(408, b"request body timeout")
        elif kind == DL_POLICY:
            self.deadline_kind = DL_NONE
            self.ex.policy_timed_out()
        else:
            self._close()

    # ---- Python entries: sans-socket tools -----------------------------------------------------

    def explain(self, bytes raw, int local_port, str listen_address=None, bytes client_ip=b"192.0.2.1"):
        """What the request phases decide for `raw` (a request head), with no socket and without
        running policies: for `fastgw explain` and tests. `listen_address` defaults to the
        configured listener address with that port."""
        cdef const char* p = raw
        cdef Py_ssize_t r
        cdef int outcome
        cdef Exchange ex
        self.rt = self.worker.runtime
        self.local_port = local_port
        self.local_host = b"127.0.0.1"
        if listen_address is None:
            listen_address = next((a for a in self.rt.listener_routers
                                   if a.endswith(":%d" % local_port)), None)
        self.listen_address = listen_address
        self.client_ip = client_ip
        self.acquire_buffers()
        r = parse_request_head(&self.head, p, len(raw), &self.rt.head_limits)
        if r == PARSE_INCOMPLETE:
            raise ValueError("incomplete request head")
        if r == PARSE_ERROR:
            return {"status": self.head.error_status, "error": (<bytes>self.head.error_reason).decode()}
        ex = Exchange.__new__(Exchange)
        ex.init(self, raw, r, &self.head)
        rid = self.head.request_id
        ex.request_id = raw[rid:rid + self.head.request_id_len] if rid >= 0 else b"<generated>"
        ex.req_framing = self.head.framing
        self.routes_rt = None
        outcome = ex._route()
        if outcome == OUT_PROXY:
            outcome = ex._upstream_peer()
        out = {"status": outcome, "route": ex.route.name if ex.route is not None else None,
               "match_prefix": ex.rmatch.prefix if ex.rmatch is not None else None,
               "path": ex.path_bytes}
        if ex.route is not None:
            out["backends"] = [(b.group.name if b.group is not None else None, b.weight)
                               for b in ex.route.backends]
            out["policies"] = ex.route.chain.by_phase()
        if ex.filters is not None:
            f = ex.filters
            out["filters"] = {
                "request_headers": f.request_headers, "response_headers": f.response_headers,
                "redirect": f.redirect, "rewrite": f.rewrite,
                "mirror": f.mirror_group.name if f.mirror_group is not None else None,
            }
        if outcome == OUT_REDIRECT:
            out["status"] = ex.filters.redirect.status
            out["location"] = ex.redirect_location()
        elif outcome == OUT_OPTIONS_STAR:
            out["status"] = 200
            out["error"] = "OPTIONS * is answered by the gateway"
        elif outcome == OUT_PROXY:
            out["status"] = 200
            out["upstream"] = ex.group.name
            out["target"] = ex.target.address
            ex._build_upstream_head()
            out["upstream_request"] = wb_bytes(&self.uout)
        else:
            out["error"] = (<bytes>ex.refusal).decode() if ex.refusal != NULL else "refused"
        ex.finished = True
        return out


cdef bint _names_drop(tuple names, const char* name, Py_ssize_t n):
    cdef bytes d
    for d in names:
        if PyBytes_GET_SIZE(d) == n and _ci_eq(name, n, PyBytes_AS_STRING(d), n):
            return True
    return False
