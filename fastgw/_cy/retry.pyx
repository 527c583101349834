# Route retry policies, route timeouts and upstream retry budgets (issue 12 section 2,
# docs/retries.md). A route without `retry` or `timeouts` has no RetryPolicy (Route.retry is None)
# and its exchanges pay one None test at each hook; an upstream without a budget pays one more.
#
# The hooks, in the Exchange (exchange.pyx):
#   _upstream_phases  retry_begin: whether the request may be sent again (method, body size), the
#                     request's deadline (timeouts.request, from the head)
#   _upstream_peer    budget_admit: the exchange counts as active on its upstream's budget
#   _dispatch         retry_arm: one timer for the nearer of the attempt's deadline
#                     (timeouts.backend_request) and the request's
#   _send_up          retry_keep: body bytes kept (up to buffer_body_bytes) for a replay
#   upstream_failed   retry_after_failure: connect failure / reset before a response / timeout
#   begin_response    retry_after_status: a retriable status drops the attempt's connection; any
#                     other head goes to the client and the deadlines go on bounding its body
#                     (Gateway API: `request` to the end of the response, `backendRequest` each
#                     attempt to its full response, GEP-1742): one passing mid-body aborts the
#                     client's response (_body_timed_out); a 101's tunnel leaves them (retry_head)
#   finish            retry_end: the timer cancelled, the budget given back
# A retry waits its backoff on the same timer, then re-enters upstream_peer's target pick,
# preferring a target other than the last one (retry_go).

from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memset

cdef class Exchange

cdef enum:
    RT_CONNECT_FAILURE = 1
    RT_RESET = 2
    RT_TIMEOUT = 4
    RT_5XX = 8
    RT_GATEWAY_ERROR = 16

cdef dict RETRY_ON = {"connect-failure": RT_CONNECT_FAILURE, "reset": RT_RESET, "timeout": RT_TIMEOUT,
                      "5xx": RT_5XX, "gateway-error": RT_GATEWAY_ERROR}


cdef class RetryPolicy:
    """A route's retry policy and timeouts, compiled (fastgw/runtime.py). `failover_only`: the
    route has timeouts but no retry policy, so the upstream's default fail-over stands (one retry,
    connect failure or reset, another target, no body)."""
    cdef readonly int attempts
    cdef readonly int on
    cdef unsigned char statuses[600]
    cdef readonly double backoff_base
    cdef readonly double backoff_max
    cdef readonly bint non_idempotent
    cdef readonly int64_t buffer_bytes
    cdef readonly double request_timeout
    cdef readonly double try_timeout
    cdef readonly bint failover_only
    cdef uint64_t rng
    cdef object deadlines            # DeadlineList of this worker's exchanges on the policy's routes

    def __init__(self, int attempts=1, on=("connect-failure", "reset", "timeout"), statuses=(),
                 double backoff_base=0.025, double backoff_max=0.25, bint non_idempotent=False,
                 int64_t buffer_bytes=65536, double request_timeout=0.0, double try_timeout=0.0,
                 bint failover_only=False):
        cdef int s
        memset(self.statuses, 0, sizeof(self.statuses))
        self.attempts = attempts
        self.on = 0
        for name in on:
            self.on |= RETRY_ON[name]
        for s in statuses:
            if 0 <= s < 600:
                self.statuses[s] = 1
        if self.on & RT_5XX:
            for s in range(500, 600):
                self.statuses[s] = 1
        if self.on & RT_GATEWAY_ERROR:
            self.statuses[502] = self.statuses[503] = self.statuses[504] = 1
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.non_idempotent = non_idempotent
        self.buffer_bytes = buffer_bytes
        self.request_timeout = request_timeout
        self.try_timeout = try_timeout
        self.failover_only = failover_only
        self.rng = int.from_bytes(os.urandom(8), "little") | 1

    cdef inline bint retries_status(self, int status) noexcept:
        return 0 <= status < 600 and self.statuses[status] != 0

    cdef double backoff(self, int n) noexcept:
        """The wait before retry n (1-based): Envoy's full jitter, uniform in
        [0, min(base x (2^n - 1), max))."""
        cdef double upper
        cdef uint64_t x = self.rng       # xorshift64
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        self.rng = x
        if n > 30:
            n = 30
        upper = self.backoff_base * ((1 << n) - 1)
        if upper > self.backoff_max:
            upper = self.backoff_max
        return upper * (<double>(x >> 11) / 9007199254740992.0)

    def backoff_for_test(self, int n):
        return self.backoff(n)

    def retries_status_for_test(self, int status):
        return self.retries_status(status)


cdef class RetryBudget:
    """Envoy's retry budget, per upstream and worker: retries in flight may be at most `percent` of
    the upstream's active requests, or `min_retries`, whichever is more. Each retry counts, as
    Envoy's, from when it is decided (its backoff included) until its own outcome (a response head,
    or its failure) or the exchange's end; every retry is checked, not only an exchange's first.
    One object serves an upstream across reloads (set_limits), as CircuitBreakers does."""
    cdef readonly int active
    cdef readonly int retries
    cdef readonly double percent
    cdef readonly int min_retries
    cdef readonly int64_t retried        # exchanges that were retried (since start)
    cdef readonly int64_t retry_attempts # retries made (since start)
    cdef readonly int64_t overflows      # retries the budget refused

    def __init__(self, double percent=20.0, int min_retries=3):
        self.set_limits(percent, min_retries)

    def set_limits(self, double percent, int min_retries):
        self.percent = percent
        self.min_retries = min_retries

    cdef bint may_retry(self) noexcept:
        cdef int allowed = <int>(self.active * self.percent / 100.0)
        if allowed < self.min_retries:
            allowed = self.min_retries
        if self.retries < allowed:
            return True
        self.overflows += 1
        return False

    def describe(self):
        return {"percent": self.percent, "min_retries": self.min_retries, "active_requests": self.active,
                "active_retries": self.retries, "retried": self.retried, "retry_attempts": self.retry_attempts,
                "overflows": self.overflows}


# ---- hooks ---------------------------------------------------------------------------------------

cdef int budget_admit(Exchange ex) except -1:
    if ex.rb is None:
        ex.rb = ex.group.budget
        ex.rb.active += 1


cdef int retry_begin(Exchange ex) except -1:
    """The upstream phases start: may this request be sent again, and when is its deadline."""
    cdef RetryPolicy p = ex.route.retry
    cdef MessageHead* h = ex.h
    if p.request_timeout > 0:
        ex.deadline_at = ex.t_head + p.request_timeout
    if p.on & RT_RESET and not p.failover_only:
        ex.retried = True        # a stale pooled connection's replay is one of the policy's retries
    if not (p.non_idempotent or _idempotent(ex.p + h.method, h.method_len)):
        ex.retry_ok = False
        return 0
    if ex.req_framing == FR_NONE:
        ex.retry_ok = True
        return 0
    if p.buffer_bytes == 0 or (ex.req_framing == FR_LENGTH and h.content_length > p.buffer_bytes):
        ex.retry_ok = False
        return 0
    ex.retry_ok = True
    ex.replay = []


cdef int retry_keep(Exchange ex, bytes chunk) except -1:
    ex.replay_bytes += PyBytes_GET_SIZE(chunk)
    if ex.replay_bytes > ex.route.retry.buffer_bytes:
        ex.replay = None             # too long to keep: this request is not sent again
        ex.retry_ok = False
    else:
        ex.replay.append(chunk)


cdef int retry_requeue_body(Exchange ex) except -1:
    cdef bytes chunk
    for chunk in ex.replay:
        ex.up_queue.append(chunk)
        ex.up_queued += PyBytes_GET_SIZE(chunk)


cdef class DeadlineList:
    """A worker's attempt and request deadlines of one route policy: exchanges in a list sorted by
    deadline, linked through their own fields (dl_prev, dl_next), under one event loop timer set for
    the first. A deadline is (almost always) later than every one before it, so adding one is an
    append and removing one is an unlink: no allocation and no event loop timer per request (uvloop's
    call_later and cancel cost about as much as the rest of a request)."""
    cdef Exchange head
    cdef Exchange tail
    cdef object loop
    cdef object handle
    cdef double next_fire

    def __init__(self, loop):
        self.loop = loop

    cdef int add(self, Exchange ex, double when, double now) except -1:
        cdef Exchange after = self.tail
        if ex.dl_list is not None:
            (<DeadlineList>ex.dl_list).remove(ex)
        while after is not None and after.dl_when > when:
            after = after.dl_prev
        ex.dl_when = when
        ex.dl_list = self
        ex.dl_prev = after
        if after is None:
            ex.dl_next = self.head
            self.head = ex
        else:
            ex.dl_next = after.dl_next
            after.dl_next = ex
        if ex.dl_next is None:
            self.tail = ex
        else:
            ex.dl_next.dl_prev = ex
        if self.handle is None or self.head.dl_when < self.next_fire:
            self._schedule(self.head.dl_when, now)

    cdef int remove(self, Exchange ex) except -1:
        if ex.dl_prev is None:
            self.head = ex.dl_next
        else:
            ex.dl_prev.dl_next = ex.dl_next
        if ex.dl_next is None:
            self.tail = ex.dl_prev
        else:
            ex.dl_next.dl_prev = ex.dl_prev
        ex.dl_next = None
        ex.dl_prev = None
        ex.dl_list = None

    cdef int _schedule(self, double when, double now) except -1:
        if self.handle is not None:
            self.handle.cancel()
        self.next_fire = when
        self.handle = self.loop.call_later(when - now if when > now else 0.0, _deadlines_due, self)

    cdef int fire(self) except -1:
        cdef Exchange ex
        cdef double now = monotonic()
        self.handle = None
        while self.head is not None and self.head.dl_when <= now + 0.0005:
            ex = self.head
            self.remove(ex)
            _retry_timer_fired(ex)
        if self.head is not None and (self.handle is None or self.head.dl_when < self.next_fire):
            self._schedule(self.head.dl_when, monotonic())


def _deadlines_due(DeadlineList dl):
    dl.fire()


def _backoff_done(Exchange ex):
    ex.timer = None
    _retry_timer_fired(ex)


cdef int _set_timer(Exchange ex, double delay) except -1:
    """A backoff (rare): an event loop timer of its own."""
    if ex.timer is not None:
        ex.timer.cancel()
    ex.timer = ex.worker.loop.call_later(delay if delay > 0 else 0.0, _backoff_done, ex)


cdef int retry_arm(Exchange ex) except -1:
    """An attempt starts: the timer for the nearer of its deadline and the request's."""
    cdef RetryPolicy p = ex.route.retry
    cdef double now, when
    if p.try_timeout <= 0 and ex.deadline_at == 0.0:
        return 0
    now = monotonic()
    when = ex.deadline_at
    if p.try_timeout > 0 and (when == 0.0 or now + p.try_timeout < when):
        when = now + p.try_timeout
    if p.deadlines is None:
        p.deadlines = DeadlineList(ex.worker.loop)
    (<DeadlineList>p.deadlines).add(ex, when, now)


cdef int retry_end(Exchange ex) except -1:
    """The log phase: the timer cancelled, the budget's counts given back."""
    if ex.timer is not None:
        ex.timer.cancel()
        ex.timer = None
    if ex.dl_list is not None:
        (<DeadlineList>ex.dl_list).remove(ex)
    if ex.rb is not None:
        ex.rb.active -= 1
        if ex.rb_retry:
            ex.rb.retries -= 1
        ex.rb = None
        ex.rb_retry = False


cdef int retry_attempt_counted(Exchange ex) except -1:
    """A retry is decided: it counts as active on the breakers' max_retries and the budget until
    its outcome (retry_attempt_done) or the exchange's end (retry_end, CircuitBreakers.release)."""
    if ex.br is not None and not ex.br_retry:
        ex.br_retry = True
        ex.br.retries += 1
    if ex.rb is not None and not ex.rb_retry:
        ex.rb_retry = True
        ex.rb.retries += 1
        ex.rb.retry_attempts += 1
        if ex.tries <= 1:
            ex.rb.retried += 1          # the exchange's first retry (a fail-over's: tries stays 0)


cdef int retry_attempt_done(Exchange ex) except -1:
    """A retry's outcome came (a response head, or a failure): it is no longer an active retry."""
    if ex.rb_retry:
        ex.rb_retry = False
        ex.rb.retries -= 1
    if ex.br_retry:
        ex.br_retry = False
        ex.br.retries -= 1


cdef int retry_head(Exchange ex) except -1:
    """The deadlines end: the exchange became a tunnel (an upgrade's 101)."""
    if ex.dl_list is not None:
        (<DeadlineList>ex.dl_list).remove(ex)


cdef bint _may_retry(Exchange ex, RetryPolicy p) except -1:
    if ex.finished or ex.resp_started or not ex.retry_ok:
        return False
    if p.failover_only and not ex.group.failover:
        return False
    if ex.tries >= p.attempts:
        if p.attempts > 0:
            ex.flags |= RF_RETRY_LIMIT
            if ex.group.stats is not None:
                ex.group.stats.retries_exhausted += 1
        return False
    if ex.deadline_at != 0.0 and monotonic() >= ex.deadline_at:
        return False
    # each retry is checked; the failed attempt's own retry count was given back at its outcome
    if (ex.br is not None and not ex.br.may_retry()) or (ex.rb is not None and not ex.rb.may_retry()):
        ex.flags |= RF_OVERFLOW_RETRIES
        if ex.group.stats is not None:
            ex.group.stats.retry_overflows += 1
        return False
    return True


cdef bint retry_after_failure(Exchange ex, int status, const char* reason, int flag) except -1:
    """An attempt failed before any response byte; True when a retry is under way."""
    cdef RetryPolicy p = ex.route.retry
    cdef int cond = (RT_CONNECT_FAILURE if flag == RF_UPSTREAM_CONNECT_FAILURE
                     else RT_TIMEOUT if flag == RF_UPSTREAM_TIMEOUT else RT_RESET)
    if not (p.on & cond) or not _may_retry(ex, p):
        return False
    if p.failover_only:
        ex.next_target = ex.group.pick_other(ex, ex.target)
        if ex.next_target is None:
            return False
    _upstream_failure_event(ex, status, reason, flag)     # the attempt, logged
    _schedule(ex, flag)
    return True


cdef bint retry_after_status(Exchange ex, int status) except -1:
    """A response head with `status` came: True when it is dropped for a retry (its connection
    closes unread)."""
    cdef RetryPolicy p = ex.route.retry
    if not p.retries_status(status) or not _may_retry(ex, p):
        return False                 # the deadlines stay: they bound the response body too
    if ex.n_att:
        ex.att[ex.n_att - 1].end = ex.t_first_byte
    _upstream_failure_event(ex, status, b"upstream answered a retriable status", 0)
    ex.drop_upstream()
    ex.status = 0
    _schedule(ex, 0)
    return True


cdef int _schedule(Exchange ex, int flag) except -1:
    cdef RetryPolicy p = ex.route.retry
    cdef double delay, now
    ex.tries += 1
    ex.up = None
    retry_attempt_counted(ex)
    if ex.active_target is not None:
        ex.active_target.active -= 1
        ex.active_target = None
    # body bytes the client sends meanwhile wait here (and in `replay`), with the usual high water
    ex.up_queue = []
    ex.up_queued = 0
    delay = p.backoff(ex.tries) if not p.failover_only else 0.0
    if ex.deadline_at != 0.0:
        now = monotonic()
        if now + delay > ex.deadline_at:
            delay = ex.deadline_at - now
    ex.backing_off = True
    if ex.dl_list is not None:
        (<DeadlineList>ex.dl_list).remove(ex)     # the request's deadline is the backoff's limit
    if ex.tc.trace_hi | ex.tc.trace_lo:
        ex.up_head = trace_retry(ex, flag, ex.up_head)
    if delay <= 0 and ex.deadline_at == 0.0:
        ex.backing_off = False
        retry_go(ex)
    else:
        _set_timer(ex, delay)


cdef int retry_go(Exchange ex) except -1:
    """The backoff is over: upstream_peer's target pick again, another target preferred."""
    cdef Target t = ex.next_target
    ex.next_target = None
    if t is None:
        t = ex.group.pick_other(ex, ex.target)
    if t is None:
        t = ex.group.pick(ex)
    if t is None:
        ex.flags |= RF_NO_HEALTHY_UPSTREAM
        _give_up(ex, 503, b"no upstream target available")
        return 0
    ex.target = t
    ex.resends += 1
    if ex.group.stats is not None:
        ex.group.stats.retries += 1
    ex._requeue()
    ex._dispatch()


cdef int _give_up(Exchange ex, int status, const char* reason) except -1:
    ex.up_queue = None
    ex.down.resume_reading_for(ex, PR_CONNECTING)
    if ex.resp_started:
        ex.down.abort()
        return 0
    if not ex.req_done:
        ex.down.keep_alive = False
    ex.send_error(status, reason)


cdef int _retry_timer_fired(Exchange ex) except -1:
    cdef UpstreamConn up
    ex.timer = None
    if ex.finished:
        return 0
    if ex.resp_started:
        if not ex.resp_complete:     # a whole response stands, whatever the request body does
            _body_timed_out(ex)
        return 0
    if ex.deadline_at != 0.0 and monotonic() >= ex.deadline_at - 0.0005:
        # the whole request's deadline: whatever attempt or backoff is under way ends
        ex.backing_off = False
        ex.next_target = None
        attempt_cut(ex, AR_TIMEOUT)
        ex.drop_upstream()
        ex.flags |= RF_UPSTREAM_TIMEOUT
        _upstream_failure_event(ex, 504, b"request timeout", RF_UPSTREAM_TIMEOUT)
        _give_up(ex, 504, b"request timeout")
        return 0
    if ex.backing_off:
        ex.backing_off = False
        retry_go(ex)
        return 0
    up = ex.up
    if up is None:
        return 0
    # the attempt's own deadline (timeouts.backend_request): as a response timeout
    up.detach_and_close()
    count_failure(ex, FK_RESPONSE_TIMEOUT)
    ex.upstream_failed(up, 504, b"upstream request timeout", False, RF_UPSTREAM_TIMEOUT)


cdef int _body_timed_out(Exchange ex) except -1:
    """A route timeout (the request's, or the attempt's backend_request) passed after the response
    head went to the client: the response cannot end in time, so the client must not see a clean
    end (HTTP/1.1: the connection reset; HTTP/2: RST_STREAM), flagged UT."""
    ex.flags |= RF_UPSTREAM_TIMEOUT
    _upstream_failure_event(ex, 0, b"route timeout passed mid-response", RF_UPSTREAM_TIMEOUT)
    ex.drop_upstream()
    ex.up_queue = None
    ex.down.truncate()
