# The upstream side of the proxy: one connection to a target, pooled between exchanges.

cdef class UpstreamConn:
    cdef Worker worker
    cdef Target target
    cdef object transport
    cdef object transport_write     # transport.write and is_closing, looked up once
    cdef object transport_is_closing
    cdef Exchange ex                # the exchange this connection serves now (None when idle)
    cdef object connect_task
    cdef readonly bint connected
    cdef bint reused
    cdef bint reusable
    cdef bint pooled                # in its target's idle list (Target.take_idle/give_back/forget)
    cdef bint tracked               # in worker.upstreams (the deadline sweep's set): added once, not per request
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
    cdef bytes held                 # UP_HELD: the bytes the response head was parsed from
    cdef list held_tail             # bytes read after it while held
    cdef bint request_sent          # the whole request is on its way: the header clock may run
    cdef bint counted               # in target.open_connections (circuit breakers)
    cdef Py_ssize_t held_off
    cdef bint lost_while_held
    cdef object lost_exc

    def __cinit__(self):
        head_init(&self.head, 128)

    def __init__(self, Worker worker, Target target):
        self.worker = worker
        self.target = target
        self.state = UP_CONNECTING
        self.buf = b""

    def __dealloc__(self):
        head_free(&self.head)

    def __call__(self):
        return self

    cdef int attach(self, Exchange ex, bint reused) except -1:
        self.ex = ex
        self.reused = reused
        if ex.group is not None:
            # per exchange: a pooled connection may serve another group, or outlive a reload
            self.body_timeout = ex.group.body_timeout
            self.header_timeout = ex.group.header_timeout
        self.got_bytes = False
        self.response_complete = False
        self.request_sent = False
        self.nrequests += 1
        if reused:
            self.state = UP_HEAD
            self.deadline = 0.0

    cdef inline int _track(self) except -1:
        if not self.tracked:
            self.worker.upstreams.add(self)
            self.tracked = True
        return 0

    cdef inline int _untrack(self) except -1:
        if self.tracked:
            self.worker.upstreams.discard(self)
            self.tracked = False
        return 0

    cdef bint usable_from_pool(self):
        return self.state == UP_IDLE and self.transport is not None and not self.transport_is_closing()

    cdef int _uncount(self) except -1:
        if self.counted:
            self.counted = False
            self.target.open_connections -= 1
        return 0

    cdef int start_connect(self, double timeout) except -1:
        if not self.counted:
            self.counted = True
            self.target.open_connections += 1
        self._track()
        self.deadline_kind = UDL_CONNECT
        self.deadline = monotonic() + timeout if timeout > 0 else 0.0
        loop = self.worker.loop
        if self.target.ssl_context is None:
            self.connect_task = loop.create_task(
                loop.create_connection(self, self.target.host, self.target.port))
        else:
            self.connect_task = loop.create_task(loop.create_connection(
                self, self.target.host, self.target.port, ssl=self.target.ssl_context,
                server_hostname=self.target.server_hostname, ssl_handshake_timeout=timeout))
        self.connect_task.add_done_callback(self._connect_done)

    def _connect_done(self, task):
        self.connect_task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        self.state = UP_CLOSED
        self._uncount()
        self._untrack()
        if self.ex is not None:
            ex = self.ex
            self.ex = None
            count_failure(ex, connect_failure_kind(exc))
            if isinstance(exc, ConnectionRefusedError):
                ex.upstream_failed(self, 502, b"upstream connection refused", False, RF_UPSTREAM_CONNECT_FAILURE)
            elif isinstance(exc, _socket.gaierror):
                ex.upstream_failed(self, 502, b"upstream name not resolved", False, RF_UPSTREAM_CONNECT_FAILURE)
            elif isinstance(exc, _SSLError):
                ex.upstream_failed(self, 502, b"upstream TLS handshake failed", False, RF_UPSTREAM_CONNECT_FAILURE)
            else:
                ex.upstream_failed(self, 502, b"upstream connect failed", False, RF_UPSTREAM_CONNECT_FAILURE)

    cdef int expect_response(self, bint request_sent, double now) except -1:
        """The response-header clock starts once the whole request is on its way (and not while
        reading is paused for a slow client, which is not the upstream's fault)."""
        if request_sent and self.state == UP_HEAD:
            self.request_sent = True
            self.deadline_kind = UDL_HEADER
            self.deadline = 0.0 if self.paused else now + self.header_timeout
        self._track()

    cdef int send_queue(self, list q) except -1:
        """The request so far (head, then body bytes) once connected: one write."""
        if len(q) == 1:
            self.transport_write(q[0])
        else:
            self.transport.writelines(q)

    cdef int send_request_bytes(self, bytes chunk) except -1:
        """More request body bytes (framed for HTTP/1.1 by the Exchange)."""
        if self.transport is not None:
            self.transport_write(chunk)

    cdef int idle_since_pool(self, double until) except -1:
        self.state = UP_IDLE
        self.ex = None
        self.deadline_kind = UDL_POOL_IDLE
        self.deadline = until

    # ---- asyncio protocol ----------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.transport_write = transport.write
        self.transport_is_closing = transport.is_closing
        self.connected = True
        self.state = UP_HEAD
        self.deadline = 0.0
        if self.ex is None:
            transport.close()
            return
        if self.target.peer_check is not None and not self.target.peer_check(transport.get_extra_info("ssl_object")):
            # the certificate chains to a trusted CA but carries none of the names asked for
            self.state = UP_CLOSED
            self.worker.upstreams.discard(self)
            transport.abort()
            ex = self.ex
            self.ex = None
            count_failure(ex, connect_failure_kind(_SSLError()))
            ex.upstream_failed(self, 502, b"upstream TLS handshake failed", False, RF_UPSTREAM_CONNECT_FAILURE)
            return
        self.ex.upstream_connected()

    def data_received(self, bytes data):
        cdef Exchange ex = self.ex
        if ex is None or self.state == UP_IDLE:
            # bytes while no request is outstanding: this connection can no longer be trusted
            self.close()
            return
        if self.state == UP_HELD:
            # read before the pause took effect; kept apart, since the exchange's view of the
            # response head points into `held`
            if self.held_tail is None:
                self.held_tail = []
            self.held_tail.append(data)
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
            if self.ex is not None:
                self.ex.flush_response()

    cdef int _parse_heads(self) except -1:
        cdef Exchange ex = self.ex
        cdef bytes data
        cdef const char* p
        cdef Py_ssize_t n, r
        cdef bint has_body
        cdef MessageHead* h = &self.head
        if ex.rt.head_limits.max_headers > h.fields_cap:
            head_free(h)                      # configured above the initial size
            head_init(h, ex.rt.head_limits.max_headers)
        while True:
            data = self.buf
            p = PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
            r = parse_response_head(h, p, n, &ex.rt.head_limits)
            if r == PARSE_INCOMPLETE:
                return 0
            if r == PARSE_ERROR:
                self.ex = None
                self.close()
                count_failure(ex, FK_PROTOCOL_ERROR)
                ex.upstream_failed(self, 502, h.error_reason, False, RF_UPSTREAM_PROTOCOL_ERROR)
                return 0
            if h.status < 200:
                if h.status == 101 and ex.upgrade is not None:
                    self.buf = b""
                    switch_protocols(ex, self, data, r, n)     # tunnel.pyx
                    return 0
                if h.status == 101:
                    self.ex = None
                    self.close()
                    count_failure(ex, FK_PROTOCOL_ERROR)
                    ex.upstream_failed(self, 502, b"upstream switched protocols unasked", False,
                                       RF_UPSTREAM_PROTOCOL_ERROR)
                    return 0
                ex.relay_interim(p, h)
                self.buf = data[r:]
                if r == n:
                    return 0
                continue
            break
        self.buf = b""
        has_body = response_has_body(h.status, ex.head_method)
        if not has_body:
            self.framing = FR_NONE
        elif h.framing == FR_CHUNKED:
            self.framing = FR_CHUNKED
            chunk_init(&self.chunk, ex.rt.head_limits.max_head_bytes)
        elif h.content_length >= 0:
            self.framing = FR_LENGTH if h.content_length > 0 else FR_NONE
            self.remaining = h.content_length
        else:
            self.framing = FR_CLOSE
        self.reusable = (not h.conn_close if h.version_minor == 1 else h.conn_keep_alive) \
            and self.framing != FR_CLOSE
        rr = ex.begin_response(p, h, self.framing, has_body)
        if rr == RESP_ANSWERED:
            return 0                    # a response policy answered instead; ex dropped this connection
        if rr == RESP_PAUSED:
            # the head's offsets point into `data`: keep it, and read nothing more until the
            # policy is done
            self.held = data
            self.held_off = r
            self.state = UP_HELD
            if self.transport is not None:
                self.transport.pause_reading()
            return 0
        self._relay_after_head(data, r, n, ex.t_first_byte)

    cdef int _relay_after_head(self, bytes data, Py_ssize_t r, Py_ssize_t n, double now) except -1:
        self.state = UP_BODY
        self.deadline_kind = UDL_BODY
        self.deadline = now + self.body_timeout if self.body_timeout > 0 else 0.0
        if self.framing == FR_NONE:
            if r < n:
                self.reusable = False
            self._complete()
            return 0
        if r < n:
            self._body(data, r, n)
        if self.ex is not None:
            self.ex.flush_response()

    cdef int set_policy_deadline(self, double timeout) except -1:
        self.deadline_kind = UDL_POLICY
        self.deadline = monotonic() + timeout

    cdef int continue_held(self) except -1:
        """The response phase let the held response through: relay it, and read on."""
        cdef bytes data = self.held
        cdef list tail = self.held_tail
        cdef bint lost = self.lost_while_held
        self.held = None
        self.held_tail = None
        self.lost_while_held = False
        if self.transport is not None and not lost and not self.paused:
            self.transport.resume_reading()
        self._relay_after_head(data, self.held_off, PyBytes_GET_SIZE(data), monotonic())
        if tail is not None:
            for piece in tail:
                if self.ex is None:
                    break
                self.data_received(piece)
        if lost and self.ex is not None:
            self._lost(self.lost_exc, UP_BODY)

    cdef int _body(self, bytes data, Py_ssize_t off, Py_ssize_t n) except -1:
        cdef Exchange ex = self.ex
        cdef const char* p = PyBytes_AS_STRING(data)
        cdef Py_ssize_t take, pos, i
        if self.framing == FR_LENGTH:
            take = n - off
            if take > self.remaining:
                take = <Py_ssize_t>self.remaining
                self.reusable = False       # bytes past the end of the response
            self.remaining -= take
            ex.response_body(data, off, take)
            if self.remaining == 0:
                self._complete()
        elif self.framing == FR_CHUNKED:
            pos = off
            while pos < n:
                pos = chunk_decode(&self.chunk, p, pos, n)
                if pos < 0:
                    self.reusable = False
                    count_failure(ex, FK_PROTOCOL_ERROR)
                    self._truncated(RF_UPSTREAM_PROTOCOL_ERROR)
                    return 0
                for i in range(self.chunk.nspans):
                    ex.response_body(data, self.chunk.span_off[i], self.chunk.span_len[i])
                if self.chunk.state == CS_DONE:
                    if pos < n:
                        self.reusable = False
                    self._complete()
                    return 0
        else:
            ex.response_body(data, off, n - off)

    cdef int _complete(self) except -1:
        self.response_complete = True
        self.deadline = 0.0
        self.ex.response_complete()

    cdef int _truncated(self, int flag) except -1:
        cdef Exchange ex = self.ex
        self.ex = None
        self.close()
        if ex is not None:
            ex.response_truncated(flag)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        cdef int was = self.state
        self.connected = False
        if was == UP_HELD and self.ex is not None:
            # the whole response may be in the held bytes: judged once the policy lets it through
            self.lost_while_held = True
            self.lost_exc = exc
            self.transport = None
            self.transport_write = self.transport_is_closing = None
            return
        self._lost(exc, was)

    cdef int _lost(self, exc, int was) except -1:
        cdef Exchange ex = self.ex
        self.state = UP_CLOSED
        self.deadline = 0.0
        self._uncount()
        self._untrack()
        if ex is None:
            self.target.forget(self)
            return 0
        self.ex = None
        if was == UP_BODY:
            if self.framing == FR_CLOSE and not self.response_complete and exc is None:
                # a close-delimited body ends at a clean close (FIN), never at a reset
                ex.up = None
                self.response_complete = True
                ex.response_complete()
            elif not self.response_complete:
                count_failure(ex, FK_RESET)
                ex.response_truncated(RF_UPSTREAM_RESET)
        elif was == UP_HEAD or was == UP_CONNECTING:
            count_failure(ex, FK_RESET)
            ex.upstream_failed(self, 502,
                               b"upstream reset the connection" if isinstance(exc, ConnectionResetError)
                               else b"upstream closed the connection",
                               not self.got_bytes, RF_UPSTREAM_RESET)

    def pause_writing(self):
        if self.ex is not None:
            self.ex.down.pause_reading_for(self.ex, PR_UPSTREAM)

    def resume_writing(self):
        if self.ex is not None:
            self.ex.down.resume_reading_for(self.ex, PR_UPSTREAM)

    cdef int pause_reading_for_client(self) except -1:
        if not self.paused and self.transport is not None and self.connected:
            self.paused = True
            self.deadline = 0.0         # a slow client is not the upstream's fault
            self.transport.pause_reading()

    cdef int resume_reading_for_client(self) except -1:
        if self.paused and self.transport is not None and self.connected:
            self.paused = False
            if self.state == UP_BODY and self.body_timeout > 0:
                self.deadline = monotonic() + self.body_timeout
            elif self.state == UP_HEAD and self.request_sent:
                self.deadline_kind = UDL_HEADER
                self.deadline = monotonic() + self.header_timeout
            if self.state != UP_HELD:      # a held response reads nothing until let through
                self.transport.resume_reading()

    # ---- endings -----------------------------------------------------------------------------

    cdef int release(self, double now) except -1:
        """The exchange ended: back to the pool if this connection can carry another request."""
        self.ex = None
        if self.reusable and self.connected and self.state == UP_BODY and self.target.max_idle > 0:
            if self.paused:
                self.paused = False
                self.transport.resume_reading()
            self.state = UP_IDLE
            self.target.give_back(self, now)
            if self.state == UP_IDLE:
                self._track()
        else:
            self.close()

    cdef int detach_and_close(self) except -1:
        self.ex = None
        self.close()

    cpdef close(self):
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        self._uncount()
        self._untrack()
        self.deadline = 0.0
        if self.state != UP_CLOSED:
            self.state = UP_CLOSED
            if self.transport is not None:
                self.transport.abort()
        self.target.forget(self)

    cdef int on_deadline(self) except -1:
        cdef Exchange ex = self.ex
        kind = self.deadline_kind
        self.deadline = 0.0
        self.ex = None
        self.close()
        if ex is None:
            return 0
        count_failure(ex, deadline_failure_kind(kind))
        if kind == UDL_BODY:
            ex.response_truncated(RF_UPSTREAM_BODY_TIMEOUT)
        elif kind == UDL_POLICY:
            ex.response_policy_timed_out()
        else:
            ex.upstream_failed(self, 504, b"upstream connect timeout" if kind == UDL_CONNECT
                               else b"upstream response timeout", False,
                               RF_UPSTREAM_CONNECT_FAILURE if kind == UDL_CONNECT else RF_UPSTREAM_TIMEOUT)
