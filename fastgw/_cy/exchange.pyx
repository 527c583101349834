# One request and its response: the phases of docs/architecture.md's phase chart, over state that
# belongs to the request alone. The connection that carries it (ClientConn today, an HTTP/2 stream
# later) owns the transport; the Exchange reaches the client only through that connection's
# methods (send_response_head, send_body, flush, send_answer, send_interim, exchange_ended,
# truncate, pause_reading_for / resume_reading_for).
#
# Phases, in order (each may end the exchange early with an answer):
#   request           routing, the body limit, then the chain's request policies (may answer, or
#                     pause for asynchronous work and resume)
#   upstream_peer     backend (weighted), its filters (a redirect answers here), target; re-entered
#                     for a retry
#   upstream_request  the upstream head: hop-by-hop fields dropped, header edits and rewrites,
#                     X-Forwarded-*, X-Request-Id, framing redone
#   response          the upstream's status and fields, edited; policies may add fields or answer
#                     in its place
#   log               exactly once, whatever became of the exchange (finish())

cimport cython
from libc.string cimport memset
from cpython.ref cimport PyObject, _Py_REFCNT
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.tuple cimport PyTuple_GET_ITEM

cdef tuple FLAG_CODES = (
    (RF_NO_ROUTE, "NR"), (RF_UPSTREAM_CONNECT_FAILURE, "UF"), (RF_UPSTREAM_TIMEOUT, "UT"),
    (RF_UPSTREAM_RESET, "UR"), (RF_DOWNSTREAM_DISCONNECT, "DC"), (RF_RATE_LIMITED, "RL"),
    (RF_UNAUTHORIZED, "UAEX"), (RF_NO_HEALTHY_UPSTREAM, "UH"), (RF_BAD_REQUEST, "DPE"),
    (RF_REQUEST_TIMEOUT, "RT"), (RF_BODY_TOO_LARGE, "BL"), (RF_UPSTREAM_PROTOCOL_ERROR, "UPE"),
    (RF_POLICY_ANSWER, "PA"), (RF_POLICY_ERROR, "PE"), (RF_POLICY_TIMEOUT, "PT"),
    (RF_UPSTREAM_BODY_TIMEOUT, "UBT"), (RF_NO_BACKEND, "NB"), (RF_REDIRECT, "RD"),
    (RF_OVERFLOW_CONNECTIONS, "UOC"), (RF_OVERFLOW_PENDING, "UOP"), (RF_OVERFLOW_REQUESTS, "UOA"),
    (RF_OVERFLOW_RETRIES, "UOR"), (RF_RETRY_LIMIT, "URX"),
)
cdef tuple OUTCOME_NAMES = ("none", "proxied", "answered", "policy", "refused", "aborted")


cdef bytes _OPTIONS_STAR_ALLOW = b"Allow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS\r\n"


def flag_codes(int flags):
    """The short codes of a set of response flags, in a fixed order."""
    return [code for bit, code in FLAG_CODES if flags & bit]


@cython.freelist(32)
cdef class Exchange:
    # A connection reuses its last Exchange: a field added here must be cleared in reset() too (a unit
    # test reads these declarations and fails on one reset() leaves out).
    cdef ClientConn down
    cdef Worker worker
    cdef Runtime rt
    cdef MessageHead* h              # the connection's parsed head: valid until exchange_ended
    cdef bytes raw                   # the bytes the head's offsets point into
    cdef const char* p
    cdef Py_ssize_t head_len
    cdef readonly bytes request_id
    # who asked: the client address that logs, limits and X-Forwarded-For use (the peer's until a
    # trusted-proxy policy takes it from X-Forwarded-For/Forwarded), and the authenticated
    # consumer (an auth policy's record, and its name for keys and headers), None until then
    cdef bytes client_addr
    cdef public object consumer
    cdef public bytes consumer_name
    cdef bint http10
    cdef bint head_method
    # routing
    cdef const char* path            # the path routed and forwarded (normalized), not terminated
    cdef Py_ssize_t path_len
    cdef bytes npath                 # owns `path` when normalization changed it
    cdef Router routes
    cdef RouteMatch rmatch
    cdef readonly Route route
    cdef PolicyChain chain
    cdef Filters filters
    cdef UpstreamGroup group
    cdef Target target
    cdef Target active_target        # the target counted as having this exchange (least request)
    cdef Py_ssize_t target_index     # `target`'s place in `group` (passive health)
    cdef Target next_target          # the target a failed attempt goes on to
    cdef public bytes sticky_line    # the Set-Cookie line of a sticky session the balancer started
    cdef const char* refusal
    # request body
    cdef int req_framing
    cdef int64_t req_remaining
    cdef int64_t req_body_seen
    cdef int64_t max_body
    cdef bint req_done
    cdef ChunkDecoder chunk
    # upstream
    cdef UpstreamConn up
    cdef bytes up_head
    cdef list up_queue               # bytes waiting for the upstream connection
    cdef Py_ssize_t up_queued
    cdef MirrorConn mirror
    cdef bint retry_ok
    cdef bint retried
    # response
    cdef bint resp_started
    cdef bint resp_complete
    cdef readonly int status
    cdef list resp_edits_py          # plugins' (lowercase name, line or None, drop) for the response
    cdef bytes resp_extra            # ... folded: the lines to add to the client's head
    cdef tuple resp_drops            # ... folded: the lowercase names to leave out
    cdef const char* resp_p          # the upstream's head while the response phase runs
    cdef MessageHead* resp_h
    cdef int resp_framing
    cdef bint resp_has_body
    cdef bint paused_response
    cdef int answer_status
    cdef bint answer_error           # fail(): the gateway's JSON error for a failed policy
    cdef bytes answer_headers
    cdef bytes answer_body
    cdef bytes request_trailers      # an HTTP/2 client's request trailer lines (H2Stream.remote_end)
    # policies
    cdef Py_ssize_t next_policy      # where a paused request phase resumes
    cdef object pending              # the paused policy's work (cancelled if the exchange ends)
    cdef bytes stash                 # bytes after the head, kept while paused
    cdef bint paused
    cdef public object view          # the plugins' RequestView, made on first use
    cdef list upstream_edits         # plugins' (lowercase name, line or None, drop) for the upstream head
    # authentication (jwt, external_auth): a method's own refusal, (status, JSON message or None,
    # header lines, body), which its refuse() answers with in place of the plain 401
    cdef object auth_answer
    # auth (auth.pyx, apikey.pyx, iprules.pyx): the combinator waiting on a paused method; the query
    # sent upstream once a credential was taken out of it ("?..." or b""); the X-Forwarded-For
    # value a trusted-proxy policy rebuilt (what it could not vouch for left out); whole header
    # lines naming the consumer (X-Consumer-Name ...). None: as received / none
    cdef object auth_waiter
    cdef bytes up_query
    cdef bytes xff_out
    cdef bytes up_auth_lines
    # rate limiting (ratelimit.pyx): the headers of the limit closest to exhaustion, which the
    # response phase adds, and the in-flight slots the log phase gives back
    cdef bytes rl_lines
    cdef double rl_ratio
    cdef list rl_held
    # log
    cdef readonly int flags
    cdef int outcome
    cdef int64_t bytes_in
    cdef int64_t bytes_out_base
    cdef readonly int64_t bytes_out
    cdef double t_accept
    cdef double t_head
    cdef double t_connected
    cdef double t_first_byte
    cdef double t_done
    cdef bint finished
    # tracing (tracecontext.pyx): all zero while tracing is off
    cdef TraceCtx tc
    cdef TraceExtra trace_extra      # the rare parts: a joined tracestate, retried attempts
    # tunnels (tunnel.pyx): the Upgrade value forwarded when the route allows the switch, else None
    cdef bytes upgrade
    # circuit breakers (breakers.pyx): the upstream's breakers this exchange is counted in (None:
    # not admitted, or none configured), and whether it counts as pending and as a retry
    cdef CircuitBreakers br
    cdef bint br_pending
    cdef bint br_retry
    # retries (retry.pyx): re-sends after the first attempt (a stale connection's replay included),
    # the route policy's retries made, the timer of a deadline or a backoff, the request's deadline,
    # the body kept for a replay, and the upstream's retry budget this exchange is counted in
    cdef int resends
    cdef int tries
    cdef object timer                # a backoff's event loop timer
    cdef object dl_list              # the DeadlineList holding this exchange's deadline (retry.pyx)
    cdef Exchange dl_prev
    cdef Exchange dl_next
    cdef double dl_when
    cdef double deadline_at
    cdef bint backing_off
    cdef list replay
    cdef int64_t replay_bytes
    cdef RetryBudget rb
    cdef bint rb_retry
    # attempts (attempts.pyx): each upstream attempt's target, result and times, in a C array
    # (valid up to n_att; reset() clears the count)
    cdef int n_att
    cdef Attempt att[ATT_MAX]

    cdef int reset(self) except -1:
        """Every field back to what a new Exchange has (None, 0, NULL), so a connection can reuse its
        last exchange for the next request (ClientConn._new_exchange). A field added to the class
        must be cleared here too: tests/unit/test_request_path_internals.py reads the declarations
        and fails on any this leaves out. Most object fields are None already: tested, not stored."""
        if self.down is not None: self.down = None
        if self.worker is not None: self.worker = None
        if self.rt is not None: self.rt = None
        self.h = NULL
        if self.raw is not None: self.raw = None
        self.p = NULL
        self.head_len = 0
        if self.request_id is not None: self.request_id = None
        if self.request_trailers is not None: self.request_trailers = None
        if self.client_addr is not None: self.client_addr = None
        if self.consumer is not None: self.consumer = None
        if self.consumer_name is not None: self.consumer_name = None
        self.http10 = False
        self.head_method = False
        self.path = NULL
        self.path_len = 0
        if self.npath is not None: self.npath = None
        if self.routes is not None: self.routes = None
        if self.rmatch is not None: self.rmatch = None
        if self.route is not None: self.route = None
        if self.chain is not None: self.chain = None
        if self.filters is not None: self.filters = None
        if self.group is not None: self.group = None
        if self.target is not None: self.target = None
        if self.active_target is not None: self.active_target = None
        self.target_index = 0
        if self.next_target is not None: self.next_target = None
        if self.sticky_line is not None: self.sticky_line = None
        if self.upgrade is not None: self.upgrade = None
        if self.auth_answer is not None: self.auth_answer = None
        if self.auth_waiter is not None: self.auth_waiter = None
        if self.up_query is not None: self.up_query = None
        if self.xff_out is not None: self.xff_out = None
        if self.up_auth_lines is not None: self.up_auth_lines = None
        if self.rl_lines is not None: self.rl_lines = None
        self.rl_ratio = 0.0
        if self.rl_held is not None: self.rl_held = None
        if self.br is not None: self.br = None
        self.br_pending = False
        self.br_retry = False
        self.resends = 0
        self.tries = 0
        if self.timer is not None: self.timer = None
        if self.dl_list is not None: self.dl_list = None
        if self.dl_prev is not None: self.dl_prev = None
        if self.dl_next is not None: self.dl_next = None
        self.dl_when = 0.0
        self.deadline_at = 0.0
        self.backing_off = False
        if self.replay is not None: self.replay = None
        self.replay_bytes = 0
        if self.rb is not None: self.rb = None
        self.rb_retry = False
        self.n_att = 0
        self.refusal = NULL
        self.req_framing = 0
        self.req_remaining = 0
        self.req_body_seen = 0
        self.max_body = 0
        self.req_done = False
        chunk_init(&self.chunk, 0)       # all a decoder reads before it writes
        self.chunk.trailer_line_empty_name = False
        if self.up is not None: self.up = None
        if self.up_head is not None: self.up_head = None
        if self.up_queue is not None: self.up_queue = None
        self.up_queued = 0
        if self.mirror is not None: self.mirror = None
        self.retry_ok = False
        self.retried = False
        self.resp_started = False
        self.resp_complete = False
        self.status = 0
        if self.resp_edits_py is not None: self.resp_edits_py = None
        if self.resp_extra is not None: self.resp_extra = None
        if self.resp_drops is not None: self.resp_drops = None
        self.resp_p = NULL
        self.resp_h = NULL
        self.resp_framing = 0
        self.resp_has_body = False
        self.paused_response = False
        self.answer_status = 0
        self.answer_error = False
        if self.answer_headers is not None: self.answer_headers = None
        if self.answer_body is not None: self.answer_body = None
        self.next_policy = 0
        if self.pending is not None: self.pending = None
        if self.stash is not None: self.stash = None
        self.paused = False
        if self.view is not None: self.view = None
        if self.upstream_edits is not None: self.upstream_edits = None
        self.flags = 0
        self.outcome = 0
        self.bytes_in = 0
        self.bytes_out_base = 0
        self.bytes_out = 0
        self.t_accept = 0.0
        self.t_head = 0.0
        self.t_connected = 0.0
        self.t_first_byte = 0.0
        self.t_done = 0.0
        self.finished = False
        memset(&self.tc, 0, sizeof(self.tc))
        if self.trace_extra is not None: self.trace_extra = None
        return 0

    cdef int init(self, ClientConn down, bytes raw, Py_ssize_t head_len, MessageHead* h) except -1:
        self.down = down
        self.worker = down.worker
        self.rt = down.rt
        self.h = h
        self.raw = raw
        self.p = PyBytes_AS_STRING(raw)
        self.head_len = head_len
        self.bytes_in = head_len
        self.bytes_out_base = down.bytes_written
        self.t_accept = down.t_accept
        self.client_addr = down.client_ip
        if down.cert_edits is not None:     # TLS client certificate headers (issue 13)
            self.upstream_edits = list(down.cert_edits)
        self.t_head = monotonic()
        self.chain = self.rt.global_chain
        if h != NULL:                 # NULL: a head that never came whole
            self.http10 = h.version_minor == 0
            self.head_method = h.is_head_method

    # ---- request phase -------------------------------------------------------------------------

    cdef int run(self, bytes data, Py_ssize_t off, Py_ssize_t n) except -1:
        """The head is parsed; data[off:n] are the bytes after it (body, or a pipelined request)."""
        cdef MessageHead* h = self.h
        cdef int outcome
        if self.rt.tracing is not None:
            trace_begin(self)
        self.req_framing = h.framing
        self.req_remaining = h.content_length if h.framing == FR_LENGTH else 0
        self.req_done = h.framing == FR_NONE
        if h.framing == FR_CHUNKED:
            chunk_init(&self.chunk, self.rt.head_limits.max_head_bytes)
        outcome = self._route()
        if outcome != OUT_PROXY:
            if outcome == OUT_TOO_LARGE:
                self.down.keep_alive = False
            self._answer_before_upstream(data, off, n, outcome)
            return 0
        self._request_policies(0, data, off, n)

    cdef int _request_policies(self, Py_ssize_t first, bytes data, Py_ssize_t off, Py_ssize_t n) except -1:
        cdef PolicyChain chain = self.chain
        cdef PyObject** items = chain.request_items
        cdef Py_ssize_t i
        cdef int r
        for i in range(first, chain.n_request):
            r = (<Policy>items[i]).on_request(self)
            if r == P_CONTINUE:
                continue
            if r == P_ANSWERED:
                self._answer_before_upstream(data, off, n, OUT_POLICY_ANSWER)
                return 0
            if r == P_PAUSED:
                self.next_policy = i + 1
                self.paused = True
                if off < n:
                    self.stash = data[off:n] if off else data
                self.down.pause_reading_for(self, PR_POLICY)
                return 0
        self._upstream_phases(data, off, n)

    cdef int pause_deadline(self, double timeout) except -1:
        """A paused policy's deadline (504 when it passes; see policy_timed_out)."""
        self.down.set_policy_deadline(timeout)

    cpdef resume(self):
        """A paused policy finished: the chain goes on from the next policy (or, when the policy
        called answer(), that answer is sent)."""
        cdef bytes rest
        if not self.paused or self.finished:
            return
        self.pending = None
        self.down.clear_policy_deadline()
        rest = self._unpause()
        if self.answer_status:
            self._answer_before_upstream(rest, 0, PyBytes_GET_SIZE(rest), OUT_POLICY_ANSWER)
        else:
            self._request_policies(self.next_policy, rest, 0, PyBytes_GET_SIZE(rest))

    cdef int policy_timed_out(self) except -1:
        cdef bytes rest
        if not self.paused:
            return 0
        self._cancel_pending()
        rest = self._unpause()
        self.fail(504, b"policy timed out", RF_POLICY_TIMEOUT)
        self._answer_before_upstream(rest, 0, PyBytes_GET_SIZE(rest), OUT_POLICY_ANSWER)

    cdef bytes _unpause(self):
        """The request phase goes on: the bytes kept while paused, and reading again."""
        cdef bytes rest
        self.paused = False
        rest = self.down.take_stash(self)
        self.down.resume_reading_for(self, PR_POLICY)
        return rest

    cdef int _cancel_pending(self) except -1:
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None

    cpdef answer(self, int status, bytes header_lines, bytes body, int flag=RF_POLICY_ANSWER):
        """A policy's answer in place of the upstream's: `header_lines` are whole "Name: value\\r\\n"
        lines. Takes effect when the policy returns P_ANSWERED (or calls resume() after pausing)."""
        self.answer_status = status
        self.answer_error = False
        self.answer_headers = header_lines
        self.answer_body = body
        self.flags |= flag

    cpdef answer_json(self, int status, bytes message, bytes header_lines=b"", int flag=RF_POLICY_ANSWER):
        """A policy's refusal as the gateway's own JSON error, with the request id, and extra whole
        header lines (WWW-Authenticate, Retry-After ...). `message` is plain ASCII text without
        quotes or backslashes (policies pass constants)."""
        cdef bytes rid = self.request_id if self.request_id is not None else b""
        self.answer(status, b"Content-Type: application/json\r\n" + header_lines,
                    b'{"error":"%s","request_id":"%s"}' % (message, rid), flag)

    cdef int fail(self, int status, const char* reason, int flag) except -1:
        """A policy failed: the gateway's JSON error answers for it."""
        self.flags |= flag
        self.refusal = reason
        self.answer_status = status
        self.answer_error = True

    cdef int _route(self) except -1:
        """Listener, route, path and body limit. Returns OUT_PROXY or a status (self.refusal says
        why)."""
        cdef MessageHead* h = self.h
        cdef ClientConn down = self.down
        cdef Runtime rt = self.rt
        cdef const char* p = self.p
        cdef object payload
        cdef int r
        r = down.route_table(self, p, h)
        if r != OUT_PROXY:
            return r
        r = self._normalize_path()
        if r != OUT_PROXY:
            return r
        if h.target_len == 1 and p[h.target] == b'*':
            return OUT_OPTIONS_STAR
        if self.routes is None:
            payload = None
        else:
            payload = self.routes.match_path(down.hostbuf, down.host_len, self.path, self.path_len, p, h)
        if payload is None:
            self.refusal = b"no route"
            self.flags |= RF_NO_ROUTE
            return 404
        self.rmatch = <RouteMatch>payload
        self.route = self.rmatch.route
        self.chain = self.route.chain     # from here on, even a 413 is the route's to log
        self.max_body = self.route.max_body if self.route.max_body >= 0 else rt.max_body
        if self.max_body >= 0 and h.framing == FR_LENGTH and h.content_length > self.max_body:
            self.refusal = b"request body too large"
            self.flags |= RF_BODY_TOO_LARGE
            return OUT_TOO_LARGE
        return OUT_PROXY

    cdef int _normalize_path(self) except -1:
        """The path as routed and forwarded (server.path_normalization, docs/http.md): the
        request's own bytes when normalization leaves them as they are, else a copy."""
        cdef MessageHead* h = self.h
        cdef Runtime rt = self.rt
        cdef const char* src = self.p + h.target
        cdef Py_ssize_t n = h.path_len, m
        cdef int changed = 0
        cdef char stack[2048]
        cdef char* dst
        cdef bytes heap = None
        self.path = src
        self.path_len = n
        if rt.path_mode == PATH_OFF or n == 0 or src[0] != b'/':
            return OUT_PROXY
        if _plainly_normal(src, n, rt.path_flags & PN_MERGE_SLASHES):
            return OUT_PROXY
        if n <= 2048:
            dst = stack
        else:
            heap = PyBytes_FromStringAndSize(NULL, n)
            dst = PyBytes_AS_STRING(heap)
        m = normalize_path(src, n, dst, rt.path_flags, &changed)
        if m < 0:
            self.refusal = b"invalid path"
            self.flags |= RF_BAD_REQUEST
            return 400
        if not changed:
            return OUT_PROXY
        if rt.path_mode == PATH_REJECT:
            self.refusal = b"path is not in normal form"
            self.flags |= RF_BAD_REQUEST
            return 400
        self.npath = dst[:m]
        self.path = PyBytes_AS_STRING(self.npath)
        self.path_len = m
        return OUT_PROXY

    # ---- upstream_peer -------------------------------------------------------------------------

    cdef int _upstream_peer(self) except -1:
        """Backend, its filters, target. Returns OUT_PROXY, OUT_REDIRECT or a status."""
        cdef Backend backend = self.route.pick_backend()
        if backend is None:
            self.refusal = b"route has no backends"
            self.flags |= RF_NO_BACKEND
            return 500
        self.filters = backend.filters
        if self.filters is not None and self.filters.redirect is not None:
            self.flags |= RF_REDIRECT
            return OUT_REDIRECT
        self.group = backend.group
        if self.group is None:
            self.refusal = b"backend not found"
            self.flags |= RF_NO_BACKEND
            return 500
        self.target = self.group.pick(self)
        if self.target is None:
            self.refusal = b"no upstream target available"
            self.flags |= RF_NO_HEALTHY_UPSTREAM
            return 503
        if self.group.budget is not None:
            budget_admit(self)
        if self.group.breakers is not None:
            return self._admit(<CircuitBreakers>self.group.breakers)
        return OUT_PROXY

    cdef int _admit(self, CircuitBreakers br) except -1:
        cdef int flag = br.admit(self.group.targets, self.target)
        if flag == 0:
            self.br = br
            return OUT_PROXY
        self.flags |= flag
        if flag == RF_OVERFLOW_REQUESTS:
            self.refusal = b"circuit breaker open: max_requests"
        elif flag == RF_OVERFLOW_PENDING:
            self.refusal = b"circuit breaker open: max_pending_requests"
        else:
            self.refusal = b"circuit breaker open: max_connections"
        return 503

    cdef int _br_connected(self) except -1:
        if self.br_pending:
            self.br_pending = False
            self.br.pending -= 1

    cdef int _upstream_phases(self, bytes data, Py_ssize_t off, Py_ssize_t n) except -1:
        cdef ClientConn down = self.down
        cdef int outcome = self._upstream_peer()
        if outcome != OUT_PROXY:
            self._answer_before_upstream(data, off, n, outcome)
            return 0
        self.retry_ok = self.req_framing == FR_NONE and _idempotent(self.p + self.h.method, self.h.method_len)
        if self.route.retry is not None:
            retry_begin(self)
        if self.h.upgrade >= 0 and not self.target.h2_mode:
            self.upgrade = upgrade_requested(self)
        self._build_upstream_head()
        self.up_head = wb_bytes(&down.uout)
        self.up_queue = [self.up_head]
        self.up_queued = PyBytes_GET_SIZE(self.up_head)
        if self.filters is not None and self.filters.mirror_group is not None and self.upgrade is None:
            self.mirror = start_mirror(self.worker, self.filters, self.up_head)   # a tunnel is not mirrored
        down.request_dispatched(self)
        # Body bytes that came with the head are checked before anything is sent upstream, so a
        # request malformed anywhere in its first packet reaches the upstream not at all.
        if off < n:
            if not self.req_done:
                self.request_body(data, off)
                if self.finished or self.up_queue is None:
                    return 0
            else:
                down.keep_pipelined(data, off)
        self._dispatch()

    # ---- upstream_request ----------------------------------------------------------------------

    cdef int _build_upstream_head(self) except -1:
        cdef MessageHead* h = self.h
        cdef const char* p = self.p
        cdef ClientConn down = self.down
        cdef WBuf* out = &down.uout
        cdef HeaderField* f
        cdef int i, k
        cdef Filters flt = self.filters
        cdef HeaderOps ops = flt.request_headers if flt is not None else None
        cdef Rewrite rw = flt.rewrite if flt is not None else None
        cdef bytes new_path
        cdef const char* client_host
        cdef Py_ssize_t client_host_len
        cdef const char* query = p + h.target + h.path_len
        cdef Py_ssize_t query_len = h.target_len - h.path_len
        cdef list edits = self.upstream_edits       # plugins' edits: None on most routes
        cdef LineRun run
        run.start = run.end = 0
        if self.up_query is not None:
            query = PyBytes_AS_STRING(self.up_query)
            query_len = PyBytes_GET_SIZE(self.up_query)
        out.len = 0
        wb_put(out, p + h.method, h.method_len)
        wb_put(out, b" ", 1)
        if rw is not None and rw.path_full_parts is not None:
            new_path = expand_captures(rw.path_full_parts, self.rmatch.capture_names, self.routes, self.path)
            wb_put(out, PyBytes_AS_STRING(new_path), PyBytes_GET_SIZE(new_path))
        elif rw is not None and (rw.path_full is not None or rw.path_prefix is not None):
            new_path = replace_path(self.path, self.path_len, self.rmatch.prefix, rw.path_full, rw.path_prefix)
            wb_put(out, PyBytes_AS_STRING(new_path), PyBytes_GET_SIZE(new_path))
        elif self.path_len == 0:
            wb_put(out, b"/", 1)
        else:
            wb_put(out, self.path, self.path_len)
        wb_put(out, query, query_len)
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
                if edits is not None and _edits_drop(edits, p + f.name, f.name_len):
                    continue
                _put_field_line(out, p, f, &run)
        _run_flush(out, p, &run)
        wb_put(out, b"X-Forwarded-For: ", 17)
        if self.xff_out is not None:
            wb_put(out, PyBytes_AS_STRING(self.xff_out), PyBytes_GET_SIZE(self.xff_out))
        else:
            if h.n_xff:
                for i in range(h.nfields):
                    f = &h.fields[i]
                    if f.kind == HK_X_FORWARDED_FOR and f.value_len and not (
                            h.nconn_tokens and _named_by_connection(h, p, f)):
                        wb_put(out, p + f.value, f.value_len)
                        wb_put(out, b", ", 2)
            wb_put(out, PyBytes_AS_STRING(self.client_addr), PyBytes_GET_SIZE(self.client_addr))
        if self.down.tls:
            wb_put(out, b"\r\nX-Forwarded-Proto: https\r\n", 28)
        else:
            wb_put(out, b"\r\nX-Forwarded-Proto: http\r\n", 27)
        if h.authority >= 0 or h.has_host:
            _put_line(out, b"X-Forwarded-Host: ", 18, client_host, client_host_len)
        wb_put(out, b"X-Request-Id: ", 14)
        wb_put(out, PyBytes_AS_STRING(self.request_id), PyBytes_GET_SIZE(self.request_id))
        wb_put(out, b"\r\n", 2)
        if ops is not None:
            wb_put(out, PyBytes_AS_STRING(ops.appended), PyBytes_GET_SIZE(ops.appended))
        if self.upstream_edits is not None:
            _put_edit_lines(out, self.upstream_edits)
        if self.up_auth_lines is not None:
            wb_put(out, PyBytes_AS_STRING(self.up_auth_lines), PyBytes_GET_SIZE(self.up_auth_lines))
        if self.tc.trace_hi | self.tc.trace_lo:
            trace_put_upstream(self, out)
        if h.framing == FR_CHUNKED:
            wb_put(out, b"Transfer-Encoding: chunked\r\n", 28)
        elif h.content_length >= 0:
            wb_put(out, b"Content-Length: ", 16)
            wb_put_int(out, h.content_length)
            wb_put(out, b"\r\n", 2)
        if self.upgrade is not None:
            put_upgrade_request_fields(self, out)
        wb_put(out, b"\r\n", 2)

    # ---- request body --------------------------------------------------------------------------

    cdef int request_body(self, bytes data, Py_ssize_t off) except -1:
        cdef const char* p = PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t take, pos, i
        cdef WBuf* out
        if self.req_framing == FR_LENGTH:
            take = n - off
            if take > self.req_remaining:
                take = <Py_ssize_t>self.req_remaining
            self.req_remaining -= take
            self.bytes_in += take
            if take > 0:
                self._send_up(data if (off == 0 and take == n) else data[off:off + take])
            if self.req_remaining == 0:
                self._request_complete(data, off + take, n)
            return 0
        # chunked: decode, count against the limit, re-chunk for the upstream
        pos = off
        while pos < n and not self.req_done and not self.finished:
            i = pos
            pos = chunk_decode(&self.chunk, p, pos, n)
            if pos < 0:
                self.flags |= RF_BAD_REQUEST
                self.fail_request(self.chunk.error_status, self.chunk.error_reason)
                return 0
            self.bytes_in += pos - i
            self.req_body_seen += self.chunk.span_bytes
            if self.max_body >= 0 and self.req_body_seen > self.max_body:
                self.flags |= RF_BODY_TOO_LARGE
                self.fail_request(413, b"request body too large")
                return 0
            if self.target is not None and self.target.h2_mode:
                # HTTP/2 frames the body itself (h2upstream.pyx): the decoded bytes as they are
                for i in range(self.chunk.nspans):
                    self._send_up(data[self.chunk.span_off[i]:self.chunk.span_off[i] + self.chunk.span_len[i]])
                if self.chunk.state == CS_DONE:
                    self._request_complete(data, pos, n)
                    return 0
                continue
            out = &self.down.uout
            out.len = 0
            for i in range(self.chunk.nspans):
                wb_put_hex(out, self.chunk.span_len[i])
                wb_put(out, b"\r\n", 2)
                wb_put(out, p + self.chunk.span_off[i], self.chunk.span_len[i])
                wb_put(out, b"\r\n", 2)
            if self.chunk.state == CS_DONE:
                if self.request_trailers is not None:
                    # an HTTP/2 client's trailers, in the chunked trailer section (docs/http2.md)
                    wb_put(out, b"0\r\n", 3)
                    wb_put(out, PyBytes_AS_STRING(self.request_trailers), PyBytes_GET_SIZE(self.request_trailers))
                    wb_put(out, b"\r\n", 2)
                else:
                    wb_put(out, b"0\r\n\r\n", 5)
            if out.len:
                self._send_up(wb_bytes(out))
            if self.chunk.state == CS_DONE:
                self._request_complete(data, pos, n)
                return 0

    cdef int _request_complete(self, bytes data, Py_ssize_t pos, Py_ssize_t n) except -1:
        self.req_done = True
        self.down.request_complete(self, data, pos, n)
        if self.up is not None and self.up.connected and self.up_queue is None:
            self.up.expect_response(True, monotonic())

    cdef int _send_up(self, bytes chunk) except -1:
        if self.replay is not None:
            retry_keep(self, chunk)
        if self.mirror is not None:
            self.mirror.send(chunk)
        if self.up_queue is None:
            if self.up is not None:
                self.up.send_request_bytes(chunk)
            return 0
        self.up_queue.append(chunk)
        self.up_queued += PyBytes_GET_SIZE(chunk)
        if self.up_queued > QUEUE_HIGH_WATER:
            self.down.pause_reading_for(self, PR_CONNECTING)

    cdef int fail_request(self, int status, const char* reason) except -1:
        """A request that turned out bad after its head: nothing more goes upstream."""
        self.down.keep_alive = False
        self.drop_upstream()
        if self.mirror is not None:
            self.mirror.drop()
            self.mirror = None
        self.up_queue = None
        if self.resp_started:
            self.down.abort()
        else:
            self.send_error(status, reason)

    cdef int drop_upstream(self) except -1:
        if self.up is not None:
            self.up.detach_and_close()
            self.up = None

    # ---- upstream connection -------------------------------------------------------------------

    cdef int _dispatch(self) except -1:
        cdef UpstreamConn up
        cdef double now = monotonic()
        attempt_begin(self, now)
        if self.target.h2_mode:
            self.target.active += 1
            self.active_target = self.target
            self._dispatch_h2()
            return 0
        up = self.target.take_idle()
        self.target.active += 1
        self.active_target = self.target
        count_pool(self.group, up is not None)
        if self.tc.sampled:
            self.tc.t_attempt = now
        if self.route.retry is not None:
            retry_arm(self)
        if up is not None:
            up.attach(self, True)
            self.up = up
            self.t_connected = now
            self._flush_queue()
        else:
            self._connect()

    cdef int _requeue(self) except -1:
        """The request again, for another attempt: its head, and the body kept so far."""
        self.up_queue = [self.up_head]
        self.up_queued = PyBytes_GET_SIZE(self.up_head)
        if self.replay is not None:
            retry_requeue_body(self)

    cdef int _dispatch_h2(self) except -1:
        """A stream on one of the target's HTTP/2 connections (h2upstream.pyx): at once when that
        connection is ready, else once it is."""
        cdef UpstreamConn up = h2_stream_for(self)
        count_pool(self.group, up.connected)
        if self.tc.sampled:
            self.tc.t_attempt = monotonic()
        up.attach(self, up.connected)
        self.up = up
        if up.connected:
            self.t_connected = monotonic()
            self._flush_queue()
        elif self.br is not None and not self.br_pending:
            self.br_pending = True
            self.br.pending += 1

    cdef int _connect(self) except -1:
        cdef UpstreamConn up
        if self.target.h2_mode:
            self._dispatch_h2()
            return 0
        up = UpstreamConn(self.worker, self.target)
        if self.br is not None and not self.br_pending:
            self.br_pending = True
            self.br.pending += 1
        up.attach(self, False)
        self.up = up
        up.start_connect(self.group.connect_timeout)

    cdef int upstream_connected(self) except -1:
        if self.br_pending:
            self._br_connected()
        self.t_connected = monotonic()
        self._flush_queue()

    cdef int _flush_queue(self) except -1:
        cdef list q = self.up_queue
        self.up_queue = None
        self.up_queued = 0
        self.up.send_queue(q)
        self.down.resume_reading_for(self, PR_CONNECTING)
        if self.down.write_paused:
            self.up.pause_reading_for_client()
        self.up.expect_response(self.req_done, self.t_connected)

    cdef int upstream_failed(self, UpstreamConn up, int status, const char* reason, bint may_retry,
                              int flag) except -1:
        """The upstream connection broke before a response byte arrived."""
        if up is not self.up:
            return 0
        self.up = None
        attempt_failed(self, status, reason, flag)
        if self.rb_retry or self.br_retry:
            retry_attempt_done(self)
        if self.br_pending:
            self._br_connected()
        if may_retry and up.reused and self.retry_ok and not self.retried and not self.finished:
            # a pooled connection the upstream had closed: replay once on a fresh connection to
            # the same target (upstream_peer would pick another; the target did nothing wrong)
            self.retried = True
            self.resends += 1
            if self.tc.trace_hi | self.tc.trace_lo:
                self.up_head = trace_retry(self, flag, self.up_head)
            self._requeue()
            attempt_begin(self, monotonic())
            self._connect()
            return 0
        if flag == RF_UPSTREAM_CONNECT_FAILURE or flag == RF_UPSTREAM_TIMEOUT or (
                flag == RF_UPSTREAM_RESET and may_retry):
            self.group.attempt_failed(self.target_index)
            if self.route.retry is not None:
                if retry_after_failure(self, status, reason, flag):
                    return 0
                if self.flags & RF_RETRY_LIMIT and flag != RF_UPSTREAM_TIMEOUT:
                    status = 503          # retries used up, as Envoy answers
            # a response timeout is not failed over: the request may still be at work there
            elif flag != RF_UPSTREAM_TIMEOUT and self._may_fail_over():
                _upstream_failure_event(self, status, reason, flag)    # the attempt, logged
                self._fail_over(flag)
                return 0
        self.flags |= flag
        _upstream_failure_event(self, status, reason, flag)
        self.up_queue = None
        self.down.resume_reading_for(self, PR_CONNECTING)
        if self.resp_started:
            self.down.abort()
            return 0
        if not self.req_done:
            self.down.keep_alive = False
        self.send_error(status, reason)

    cdef bint _may_fail_over(self) except -1:
        """nginx's `proxy_next_upstream error timeout`: an idempotent request without a body whose
        connection failed before any response byte (refused, connect timeout, reset) goes once to
        another target of the upstream, when the balancer has one to offer."""
        cdef Target other
        if not self.group.failover or not self.retry_ok or self.retried or self.finished:
            return False
        if (self.br is not None and not self.br.may_retry()) or (self.rb is not None and not self.rb.may_retry()):
            self.flags |= RF_OVERFLOW_RETRIES
            return False
        other = self.group.pick_other(self, self.target)
        if other is None:
            return False
        self.next_target = other
        return True

    cdef int _fail_over(self, int flag) except -1:
        cdef Target other = self.next_target
        self.next_target = None
        self.retried = True
        self.resends += 1
        if self.group.stats is not None:
            self.group.stats.retries += 1
        retry_attempt_counted(self)
        if self.tc.trace_hi | self.tc.trace_lo:
            self.up_head = trace_retry(self, flag, self.up_head)
        self.target = other
        if self.active_target is not None:
            self.active_target.active -= 1
            self.active_target = None
        self._requeue()
        self._dispatch()
        return 0

    # ---- response phase ------------------------------------------------------------------------

    cdef int relay_interim(self, const char* p, MessageHead* h) except -1:
        if self.http10:
            return 0
        self.down.send_interim(p, h)

    cdef int begin_response(self, const char* p, MessageHead* h, int up_framing, bint has_body) except -1:
        """The upstream's head arrived: the response phase. Returns RESP_RELAY (the head went to the
        client: relay the body), RESP_ANSWERED (a policy answered instead; the upstream connection
        was dropped) or RESP_PAUSED (a policy is at work: hold the response until
        resume_response)."""
        self.t_first_byte = monotonic()
        self.status = h.status
        if self.n_att:
            self.att[self.n_att - 1].result = h.status
        if self.rb_retry or self.br_retry:
            retry_attempt_done(self)
        if self.group.outlier is not None:
            self.group.attempt_answered(self.target_index, h.status)
        if self.route.retry is not None and retry_after_status(self, h.status):
            return RESP_ANSWERED          # dropped for a retry
        self.resp_p = p
        self.resp_h = h
        self.resp_framing = up_framing
        self.resp_has_body = has_body
        return self._response_policies(0)

    cdef int _response_policies(self, Py_ssize_t first) except -1:
        cdef PolicyChain chain = self.chain
        cdef PyObject** items = chain.response_items
        cdef Py_ssize_t i
        cdef int r
        for i in range(first, chain.n_response):
            r = (<Policy>items[i]).on_response(self)
            if r == P_CONTINUE:
                continue
            if r == P_ANSWERED:
                self._response_answered()
                return RESP_ANSWERED
            if r == P_PAUSED:
                self.next_policy = i + 1
                self.paused_response = True
                return RESP_PAUSED
        if self.resp_edits_py is not None:
            self._fold_response_edits()
        if self.sticky_line is not None:
            self.resp_extra = self.sticky_line if self.resp_extra is None else self.resp_extra + self.sticky_line
        self.resp_started = True
        self.outcome = OC_PROXIED
        self.down.send_response_head(self, self.resp_p, self.resp_h, self.resp_framing, self.resp_has_body)
        self.resp_p = NULL
        self.resp_h = NULL
        return RESP_RELAY

    cdef int _response_answered(self) except -1:
        self.resp_p = NULL
        self.resp_h = NULL
        self.drop_upstream()
        self.up_queue = None
        if not self.req_done:
            self.down.keep_alive = False
        self._send_policy_answer()

    cdef int pause_response_deadline(self, double timeout) except -1:
        if self.up is not None:
            self.up.set_policy_deadline(timeout)

    cdef int resume_response(self, int r) except -1:
        """A paused response policy finished with `r` (P_CONTINUE or P_ANSWERED)."""
        cdef UpstreamConn up
        if not self.paused_response or self.finished:
            return 0
        self.paused_response = False
        self.pending = None
        if r == P_ANSWERED:
            self._response_answered()
            return 0
        if self._response_policies(self.next_policy) == RESP_RELAY:
            up = self.up
            if up is not None:
                up.continue_held()

    cdef int response_policy_timed_out(self) except -1:
        if not self.paused_response:
            return 0
        self.paused_response = False
        self._cancel_pending()
        self.fail(504, b"policy timed out", RF_POLICY_TIMEOUT)
        self._response_answered()

    cdef int _fold_response_edits(self) except -1:
        """Plugins' response edits as the client's head is written with them: names to leave out,
        lines to add."""
        drops = [lname for lname, _, drop in self.resp_edits_py if drop]
        lines = [line for _, line, _ in self.resp_edits_py if line is not None]
        self.resp_drops = tuple(drops) if drops else None
        self.resp_extra = b"".join(lines) if lines else None

    cdef object response_header_value(self, bytes lower_name):
        """An upstream response field's value while the response phase runs, or None."""
        return _field_value(self.resp_h, self.resp_p, lower_name)

    cdef list response_header_items(self):
        return _field_items(self.resp_h, self.resp_p)

    cdef int response_body(self, bytes data, Py_ssize_t off, Py_ssize_t n) except -1:
        self.down.send_body(data, off, n)

    cdef int flush_response(self) except -1:
        self.down.flush()

    cdef int response_trailers(self, bytes lines) except -1:
        """The upstream's response trailers ("name: value\r\n" lines; an HTTP/2 upstream's, with
        gRPC's grpc-status and grpc-message), before response_complete. The downstream carries them
        if it can (`send_trailers`: HTTP/1.1 in the chunked trailer section when the client sent
        `TE: trailers`; an HTTP/2 stream in a HEADERS frame)."""
        self.down.send_trailers(self, lines)

    cdef int response_complete(self) except -1:
        self.resp_complete = True
        self.down.end_response(self)

    cdef int response_truncated(self, int flag) except -1:
        """The upstream died or stalled mid-body: the client must not see a clean end."""
        self.flags |= flag
        _upstream_failure_event(self, 0, b"upstream response cut short", flag)
        self.up = None
        self.down.truncate()

    # ---- answers the gateway makes -------------------------------------------------------------

    cdef int _answer_before_upstream(self, bytes data, Py_ssize_t off, Py_ssize_t n, int status) except -1:
        """Answers without an upstream. Keep-alive survives only when there is no body to skip."""
        if self.req_framing != FR_NONE:
            self.down.keep_alive = False
        elif off < n:
            self.down.keep_pipelined(data, off)
        if status == OUT_REDIRECT:
            self._send_redirect()
        elif status == OUT_OPTIONS_STAR:
            # `OPTIONS *` asks about the server, not a resource (RFC 9110 9.3.7): the gateway is
            # the server the client reached, so it answers, as Apache and Envoy's direct responses do
            self.outcome = OC_ANSWERED
            self.status = 200
            self.resp_complete = True
            self.down.send_answer(self, 200, _OPTIONS_STAR_ALLOW, b"")
        elif status == OUT_POLICY_ANSWER:
            self._send_policy_answer()
        else:
            self.send_error(status, self.refusal)

    cdef int _send_policy_answer(self) except -1:
        if self.answer_error:
            self.send_error(self.answer_status, self.refusal)
            return 0
        self.outcome = OC_POLICY
        if self.answer_status >= 400 and grpc_request(self):
            self._send_grpc_answer(self.answer_status, _REASONS.get(self.answer_status, b"refused"),
                                   self.answer_headers)
            return 0
        self.status = self.answer_status
        self.resp_complete = True
        self.down.send_answer(self, self.answer_status, self._answer_lines(self.answer_headers), self.answer_body)

    cdef int send_error(self, int status, const char* reason) except -1:
        cdef bytes rid = self.request_id if self.request_id is not None else b""
        if reason == NULL:
            reason = b"gateway error"
        if self.outcome == OC_NONE:
            self.outcome = OC_ANSWERED
        if grpc_request(self):
            self._send_grpc_answer(status, <bytes>reason, None)
            return 0
        cdef bytes body = b'{"error":"%s","request_id":"%s"}' % (<bytes>reason, rid)
        self.status = status
        self.resp_complete = True
        self.down.send_answer(self, status, self._answer_lines(b"Content-Type: application/json\r\n"), body)

    cdef bytes _answer_lines(self, bytes lines):
        """An answer's header lines with what the chain's answer-side policies add (cors: a 401 or 429
        a browser's page must be allowed to read). No such policy on most routes: a loop of none."""
        cdef PolicyChain chain = self.chain
        cdef Py_ssize_t i
        if chain is not None:
            for i in range(chain.n_answer):
                lines = (<Policy>chain.answer[i]).on_answer(self, lines)
        return lines

    cdef int _send_grpc_answer(self, int status, bytes message, bytes extra_lines) except -1:
        """A gRPC call's gateway answer: trailers-only, the status mapped in one table (grpc.pyx)."""
        self.status = 200
        self.resp_complete = True
        self.down.send_answer(self, 200, grpc_answer_lines(status, message, extra_lines), b"")

    cdef bytes redirect_location(self):
        """Gateway API RequestRedirect: unset parts keep the request's; the port is the given one,
        else the well-known port of a given scheme, else the listener's; the scheme's default port is
        left out."""
        cdef MessageHead* h = self.h
        cdef const char* p = self.p
        cdef Redirect r = self.filters.redirect
        cdef bytes scheme = r.scheme if r.scheme is not None else (b"https" if self.down.tls else b"http")
        cdef int port
        cdef bytes host, path, location
        cdef bytes local_host = self.down.local_host
        if r.port:
            port = r.port
        elif r.scheme is not None:
            port = 443 if scheme == b"https" else 80
        else:
            port = self.down.local_port
        if r.hostname is not None:
            host = r.hostname
        elif h.authority >= 0:
            host = p[h.authority:h.authority + h.authority_name_len]
        elif h.has_host:
            host = p[h.host:h.host + h.host_name_len]
        else:                           # HTTP/1.0 without Host: the address the client reached
            host = b"[%s]" % local_host if b":" in local_host else local_host
        if r.path_full_parts is not None:
            path = expand_captures(r.path_full_parts, self.rmatch.capture_names, self.routes, self.path)
        elif r.path_full is not None or r.path_prefix is not None:
            path = replace_path(self.path, self.path_len, self.rmatch.prefix, r.path_full, r.path_prefix)
        else:
            path = self.path[:self.path_len] or b"/"
        location = scheme + b"://" + host
        if not ((scheme == b"http" and port == 80) or (scheme == b"https" and port == 443)):
            location += b":%d" % port
        return location + path + p[h.target + h.path_len:h.target + h.target_len]

    cdef int _send_redirect(self) except -1:
        cdef Redirect r = self.filters.redirect
        self.outcome = OC_ANSWERED
        self.status = r.status
        self.resp_complete = True
        self.down.send_answer(self, r.status, self._answer_lines(b"Location: %s\r\n" % self.redirect_location()), b"")

    # ---- log phase -----------------------------------------------------------------------------

    cdef int finish(self) except -1:
        """The exchange is over, whichever way: the log phase runs, once."""
        cdef PolicyChain chain = self.chain
        cdef PyObject** items
        cdef Py_ssize_t i = 0, n
        if self.finished:
            return 0
        self.finished = True
        if self.t_done == 0.0:          # the connection may have read the clock already
            self.t_done = monotonic()
        self.bytes_out = self.down.bytes_written - self.bytes_out_base
        self._cancel_pending()
        if not self.resp_complete:
            if self.outcome != OC_REFUSED:
                self.outcome = OC_ABORTED
            if not (self.flags & (RF_UPSTREAM_RESET | RF_UPSTREAM_BODY_TIMEOUT | RF_UPSTREAM_PROTOCOL_ERROR
                                  | RF_UPSTREAM_TIMEOUT
                                  | RF_BAD_REQUEST | RF_BODY_TOO_LARGE | RF_REQUEST_TIMEOUT
                                  | RF_POLICY_ERROR | RF_POLICY_TIMEOUT)):
                self.flags |= RF_DOWNSTREAM_DISCONNECT
        if self.active_target is not None:
            self.active_target.active -= 1
            self.active_target = None
        if self.br is not None:
            self.br.release(self.br_pending, self.br_retry)
            self.br = None
            self.br_pending = self.br_retry = False
        if self.timer is not None or self.rb is not None or self.dl_list is not None:
            retry_end(self)
        record_exchange(self)
        if self.rt.tracing is not None:
            trace_end(self)
        if chain is not None and chain.n_log:
            # one try around the walk, entered again after the policy that raised
            items = chain.log_items
            n = chain.n_log
            while i < n:
                try:
                    while i < n:
                        i += 1
                        (<Policy>items[i - 1]).on_log(self)
                except Exception as exc:      # a log policy must never take the connection down
                    _report_policy_error(<Policy>items[i - 1], "log", exc)
        self.up = None
        self.mirror = None
        self.up_queue = None
        self.view = None
        self.stash = None

    # ---- what the log phase and plugins read ---------------------------------------------------

    @property
    def trace_id(self):
        """The trace's id (32 hex digits, bytes), or None when tracing is off."""
        return None if self.tc.trace_hi == 0 and self.tc.trace_lo == 0 else hex64(self.tc.trace_hi) + hex64(self.tc.trace_lo)

    @property
    def span_id(self):
        """The gateway's SERVER span id (16 hex digits, bytes), or None."""
        return hex64(self.tc.server_span) if self.tc.server_span else None

    @property
    def trace_id_hex(self):
        """The exchange's trace id: the one tracing continued or started, else (tracing off) that of
        a valid incoming `traceparent`, which goes upstream untouched, so the access log still ties
        the line to the caller's trace."""
        if self.tc.trace_hi | self.tc.trace_lo:
            return trace_hex(self.tc.trace_hi, self.tc.trace_lo)
        return self._incoming_trace_id()

    cdef object _incoming_trace_id(self):
        cdef object tp
        if self.h == NULL or self.outcome == OC_REFUSED:
            return None
        tp = _field_value(self.h, self.p, b"traceparent")
        if tp is None or len(tp) != 55:
            return None
        tp = (<bytes>tp).lower()
        if tp[2:3] != b"-" or tp[35:36] != b"-" or tp[52:53] != b"-" or tp[:2] == b"ff":
            return None
        trace_id = tp[3:35]
        if trace_id.strip(b"0123456789abcdef") or trace_id == b"0" * 32 or tp[36:52].strip(b"0123456789abcdef"):
            return None
        return trace_id.decode()

    @property
    def outcome_name(self):
        return OUTCOME_NAMES[self.outcome]

    @property
    def flag_codes(self):
        return flag_codes(self.flags)

    @property
    def method(self):
        if self.h == NULL or self.h.method_len <= 0:
            return None
        return self.p[self.h.method:self.h.method + self.h.method_len].decode("latin-1")

    @property
    def path_bytes(self):
        if self.path == NULL:
            return self.p[self.h.target:self.h.target + self.h.path_len] if self.h != NULL else None
        return self.path[:self.path_len]

    @property
    def query_bytes(self):
        cdef MessageHead* h = self.h
        if h == NULL or h.path_len >= h.target_len:
            return b""
        return self.p[h.target + h.path_len + 1:h.target + h.target_len]

    @property
    def host(self):
        return self.down.hostbuf[:self.down.host_len].decode("latin-1") if self.down.host_len else None

    @property
    def client_ip(self):
        return self.client_addr.decode()

    @property
    def route_name(self):
        return self.route.name if self.route is not None else None

    @property
    def upstream_name(self):
        return self.group.name if self.group is not None else None

    @property
    def target_address(self):
        return self.target.address if self.target is not None else None

    @property
    def bytes_received(self):
        return self.bytes_in

    @property
    def bytes_sent(self):
        return self.bytes_out if self.finished else self.down.bytes_written - self.bytes_out_base

    def timings(self):
        """Seconds since the connection's accept at each point (None where the exchange never
        got there)."""
        cdef double t0 = self.t_accept
        return {
            "accept": 0.0,
            "head": self.t_head - t0,
            "upstream_connected": self.t_connected - t0 if self.t_connected else None,
            "first_byte": self.t_first_byte - t0 if self.t_first_byte else None,
            "done": self.t_done - t0 if self.t_done else None,
        }

    cdef object header_value(self, bytes lower_name):
        """A request header's value (repeated fields joined with ", "), or None."""
        return _field_value(self.h, self.p, lower_name)

    cdef list header_items(self):
        return _field_items(self.h, self.p)


cdef inline bint _plainly_normal(const char* path, Py_ssize_t n, bint merge) noexcept nogil:
    """No `%`, no `/.` (every dot segment starts so) and, when merging, no `//`: normalization would
    leave the path as it is. Most paths are so, and this scan is cheaper than normalizing."""
    cdef Py_ssize_t i
    cdef char c
    # words with neither '%' nor '.' are skipped whole; '//' needs the pairs, so merging reads bytes
    for i in range(1 if merge else fgw_path_plain_run(path, 1, n), n):
        c = path[i]
        if c == b'%' or (path[i - 1] == b'/' and (c == b'.' or (merge and c == b'/'))):
            return False
    return path[0] != b'%'


cdef object _field_value(MessageHead* h, const char* p, bytes lower_name):
    cdef HeaderField* f
    cdef int i
    cdef Py_ssize_t n = PyBytes_GET_SIZE(lower_name)
    cdef list found = None
    if h == NULL:
        return None
    for i in range(h.nfields):
        f = &h.fields[i]
        if f.kind != HK_DROP and f.name_len == n and _ci_eq(p + f.name, n, PyBytes_AS_STRING(lower_name), n):
            if found is None:
                found = []
            found.append(p[f.value:f.value + f.value_len])
    if found is None:
        return None
    return found[0] if len(found) == 1 else b", ".join(found)


cdef list _field_items(MessageHead* h, const char* p):
    cdef HeaderField* f
    cdef int i
    out = []
    if h == NULL:
        return out
    for i in range(h.nfields):
        f = &h.fields[i]
        if f.kind != HK_DROP:
            out.append((p[f.name:f.name + f.name_len], p[f.value:f.value + f.value_len]))
    return out


cdef extern from *:
    PyObject* _Py_TRUE "Py_True"
    PyObject* _Py_FALSE "Py_False"


cdef bint _edits_drop(list edits, const char* name, Py_ssize_t n) except -1:
    """An edit drops the field of that name. Per field of the upstream head, so C-level: the edits
    are (lowercase name bytes, line or None, drop) tuples, read without unpacking or refcounts."""
    cdef Py_ssize_t i
    cdef PyObject* e
    cdef PyObject* lname
    cdef PyObject* drop
    for i in range(PyList_GET_SIZE(edits)):
        e = PyList_GET_ITEM(edits, i)
        drop = PyTuple_GET_ITEM(<tuple>e, 2)
        if drop != _Py_TRUE and (drop == _Py_FALSE or not <object>drop):
            continue
        lname = PyTuple_GET_ITEM(<tuple>e, 0)
        if PyBytes_GET_SIZE(<bytes>lname) == n and _ci_eq(name, n, PyBytes_AS_STRING(<bytes>lname), n):
            return True
    return False


cdef int _put_edit_lines(WBuf* out, list edits) except -1:
    cdef Py_ssize_t i
    cdef PyObject* line
    for i in range(PyList_GET_SIZE(edits)):
        line = PyTuple_GET_ITEM(<tuple>PyList_GET_ITEM(edits, i), 1)
        if line != <PyObject*>None:
            wb_put(out, PyBytes_AS_STRING(<bytes>line), PyBytes_GET_SIZE(<bytes>line))
    return 0


_policy_errors_seen = set()


cdef int _report_policy_error(Policy policy, str phase, exc) except -1:
    """A failing policy is reported with its traceback the first time each kind of failure happens
    (per policy, phase and exception type); after that with one line, so a hot failure cannot
    flood the log."""
    import traceback
    from fastgw import events
    key = (policy.key, phase, type(exc))
    fields = {"policy": policy.name, "type": policy.type, "phase": phase, "error": repr(exc)}
    if key not in _policy_errors_seen:
        _policy_errors_seen.add(key)
        fields["traceback"] = "".join(traceback.format_exception(exc)).rstrip("\n").split("\n")
    events.emit("error", "policy_error", msg=f"policy {policy.name} ({policy.type}) failed in {phase}", **fields)
