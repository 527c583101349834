# Request-path counters for the Prometheus metrics (docs/metrics.md): plain C fields in objects built
# once per config by fastgw/counters.py, bumped from the log phase (record_exchange, called by
# Exchange.finish) and from the few places an upstream connection fails or a pool is asked. Nothing
# here allocates or touches a dict per request; fastgw/metrics.py reads these objects off the request
# path when the supervisor asks a worker for a snapshot.

from libc.stdlib cimport calloc, free

# Why an upstream attempt failed; the index of UpstreamStats.failures, named by FAILURE_KINDS.
cdef enum FailureKind:
    FK_CONNECT_REFUSED = 0
    FK_CONNECT_ERROR
    FK_CONNECT_TIMEOUT
    FK_DNS
    FK_RESET
    FK_RESPONSE_TIMEOUT
    FK_BODY_TIMEOUT
    FK_PROTOCOL_ERROR
    FK_COUNT

FAILURE_KINDS = ("connect_refused", "connect_error", "connect_timeout", "dns", "reset", "response_timeout",
                 "body_timeout", "protocol_error")
assert len(FAILURE_KINDS) == FK_COUNT

cdef enum:
    # a status the parser lets through has three digits; 0 is an exchange that sent none
    _STATUS_SLOTS = 1000
    _CLASS_SLOTS = 10


cdef struct Histogram:
    int64_t* counts               # one per bound, the last for +Inf (not cumulative)
    double sum


cdef inline void _observe(Histogram* hist, const double* bounds, int nbounds, double value) noexcept nogil:
    cdef int i = 0
    # most requests are fast: a scan from the smallest bound ends in a step or two
    while i < nbounds and value > bounds[i]:
        i += 1
    hist.counts[i] += 1
    hist.sum += value


cdef list _cumulative(Histogram* hist, int nbounds):
    cdef int64_t total = 0
    cdef int i
    out = []
    for i in range(nbounds + 1):
        total += hist.counts[i]
        out.append(total)
    return out


cdef class RequestStats:
    """The counters of one (route, upstream) pair in one worker: requests by status (class or code),
    the request duration and upstream first-byte histograms, bytes received and sent. Carried over a
    reload by its key when the bucket bounds and the status label stay the same."""
    cdef readonly str route
    cdef readonly str upstream
    cdef readonly tuple bounds
    cdef readonly bint by_code
    cdef double* bound
    cdef int nbounds
    cdef int nstatus
    cdef int64_t* by_status
    cdef Histogram duration
    cdef Histogram first_byte
    cdef readonly int64_t requests
    cdef readonly int64_t bytes_in
    cdef readonly int64_t bytes_out

    def __cinit__(self, str route, str upstream, tuple bounds, bint by_code):
        cdef int i
        self.route = route
        self.upstream = upstream
        self.bounds = tuple(float(b) for b in bounds)
        self.by_code = by_code
        self.nbounds = len(self.bounds)
        self.nstatus = _STATUS_SLOTS if by_code else _CLASS_SLOTS
        self.bound = <double*>calloc(self.nbounds + 1, sizeof(double))
        self.by_status = <int64_t*>calloc(self.nstatus, sizeof(int64_t))
        self.duration.counts = <int64_t*>calloc(self.nbounds + 1, sizeof(int64_t))
        self.first_byte.counts = <int64_t*>calloc(self.nbounds + 1, sizeof(int64_t))
        if (self.bound == NULL or self.by_status == NULL or self.duration.counts == NULL
                or self.first_byte.counts == NULL):
            raise MemoryError()
        for i in range(self.nbounds):
            self.bound[i] = self.bounds[i]

    def __dealloc__(self):
        free(self.bound)
        free(self.by_status)
        free(self.duration.counts)
        free(self.first_byte.counts)

    def fits(self, tuple bounds, bint by_code):
        """Whether these counters can go on under a config with these buckets and status label."""
        return self.by_code == by_code and self.bounds == tuple(float(b) for b in bounds)

    cdef void record(self, Exchange ex) noexcept:
        cdef int status = ex.status
        if status < 0 or status >= _STATUS_SLOTS:
            status = 0
        self.requests += 1
        self.by_status[status if self.by_code else status // 100] += 1
        _observe(&self.duration, self.bound, self.nbounds, ex.t_done - ex.t_head)
        if ex.t_first_byte > 0.0 and ex.t_connected > 0.0:
            _observe(&self.first_byte, self.bound, self.nbounds, ex.t_first_byte - ex.t_connected)
        self.bytes_in += ex.bytes_in
        self.bytes_out += ex.bytes_out

    def statuses(self):
        """{label: requests}: "2xx" style (class) or "200" style (code); "0" for exchanges that sent
        no status (the client left first)."""
        cdef int i
        out = {}
        for i in range(self.nstatus):
            if self.by_status[i]:
                out[str(i) if self.by_code or i == 0 else f"{i}xx"] = self.by_status[i]
        return out

    def duration_buckets(self):
        """(cumulative counts, one per bound and the last for +Inf; sum of seconds)."""
        return _cumulative(&self.duration, self.nbounds), self.duration.sum

    def first_byte_buckets(self):
        return _cumulative(&self.first_byte, self.nbounds), self.first_byte.sum


cdef class UpstreamStats:
    """The counters of one upstream (by name) in one worker: failed attempts by kind, and how often a
    pooled connection was there to take (hit) or a new one had to be made (miss)."""
    cdef readonly str name
    cdef int64_t failures[FK_COUNT]
    cdef readonly int64_t pool_hits
    cdef readonly int64_t pool_misses
    # retries (retry.pyx): tries sent again (fail-over and route retries), retries the budget or
    # max_retries refused, requests whose route's retries were used up
    cdef readonly int64_t retries
    cdef readonly int64_t retry_overflows
    cdef readonly int64_t retries_exhausted

    def __init__(self, str name):
        self.name = name

    def failure_counts(self):
        """{kind: failures}, every kind."""
        cdef int i
        return {FAILURE_KINDS[i]: self.failures[i] for i in range(<int>FK_COUNT)}


cdef class RouteMetrics:
    """What a Route's exchanges record into: the pair of each of its backends' upstreams, and one for
    exchanges that reached no upstream (answered by a policy, a redirect, a 413 ...)."""
    cdef tuple groups
    cdef tuple stats
    cdef readonly RequestStats no_upstream

    def __init__(self, tuple groups, tuple stats, RequestStats no_upstream not None):
        # the request path casts without checking: the types are checked here, once
        if len(groups) != len(stats) or not all(isinstance(g, UpstreamGroup) for g in groups) \
                or not all(isinstance(st, RequestStats) for st in stats):
            raise TypeError("RouteMetrics needs one RequestStats per UpstreamGroup")
        self.groups = groups
        self.stats = stats
        self.no_upstream = no_upstream

    cdef inline RequestStats for_group(self, UpstreamGroup group):
        cdef Py_ssize_t i
        if group is not None:
            for i in range(len(self.groups)):
                if self.groups[i] is group:
                    return <RequestStats>self.stats[i]
        return self.no_upstream


cdef class RuntimeMetrics:
    """All the counters of one Runtime, for the snapshot: `requests` {(route, upstream): RequestStats}
    (route and upstream "" for exchanges no route took), `upstreams` {name: UpstreamStats}."""
    cdef readonly RequestStats unrouted
    cdef readonly dict requests
    cdef readonly dict upstreams

    def __init__(self, RequestStats unrouted not None, dict requests, dict upstreams):
        self.unrouted = unrouted
        self.requests = requests
        self.upstreams = upstreams


cdef inline void record_exchange(Exchange ex) noexcept:
    """The log phase's share: a handful of C increments into the exchange's (route, upstream) pair."""
    cdef RuntimeMetrics m = ex.rt.metrics
    cdef RouteMetrics rm
    if m is None:
        return
    if ex.route is None:
        m.unrouted.record(ex)
        return
    rm = ex.route.metrics
    if rm is not None:
        rm.for_group(ex.group).record(ex)


cdef inline void count_pool(UpstreamGroup group, bint hit) noexcept:
    cdef UpstreamStats st = group.stats
    if st is not None:
        if hit:
            st.pool_hits += 1
        else:
            st.pool_misses += 1


cdef inline void count_failure(Exchange ex, int kind) noexcept:
    cdef UpstreamStats st
    if ex is None or ex.group is None or kind < 0:
        return
    st = ex.group.stats
    if st is not None:
        st.failures[kind] += 1


cdef int connect_failure_kind(exc):
    if isinstance(exc, ConnectionRefusedError):
        return FK_CONNECT_REFUSED
    if isinstance(exc, _socket.gaierror):
        return FK_DNS
    return FK_CONNECT_ERROR


cdef inline int deadline_failure_kind(int deadline_kind) noexcept:
    """-1 for a deadline that is no upstream's failure (a response policy's)."""
    if deadline_kind == UDL_CONNECT:
        return FK_CONNECT_TIMEOUT
    if deadline_kind == UDL_HEADER:
        return FK_RESPONSE_TIMEOUT
    if deadline_kind == UDL_BODY:
        return FK_BODY_TIMEOUT
    return -1


def connection_counts(Worker worker):
    """(client connections, upstream connections in use or connecting, upstream connections idle in
    a pool) of one worker."""
    cdef UpstreamConn u
    cdef Py_ssize_t idle = 0
    for u in worker.upstreams:
        if u.state == UP_IDLE:
            idle += 1
    return len(worker.clients), len(worker.upstreams) - idle, idle
