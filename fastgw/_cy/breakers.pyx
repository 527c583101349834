# Circuit breakers (Envoy's), per upstream and per worker: counts of what is in flight to the
# upstream and the limits on them. An exchange is admitted in its upstream_peer phase (admit) and
# gives back what it holds when it ends (Exchange: br, br_pending, br_retry). One object serves an
# upstream across reloads (set_limits), so the exchanges of the old config still count.

cdef class CircuitBreakers:
    cdef readonly int max_connections
    cdef readonly int max_pending
    cdef readonly int max_requests
    cdef readonly int max_retries
    cdef readonly int active          # exchanges admitted and not yet ended
    cdef readonly int pending         # of those, waiting for a new connection
    cdef readonly int retries         # of those, on a retry
    cdef readonly object overflows    # breaker -> times it refused

    def __init__(self, int max_connections, int max_pending, int max_requests, int max_retries):
        self.overflows = {"max_connections": 0, "max_pending_requests": 0, "max_requests": 0, "max_retries": 0}
        self.set_limits(max_connections, max_pending, max_requests, max_retries)

    def set_limits(self, int max_connections, int max_pending, int max_requests, int max_retries):
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.max_requests = max_requests
        self.max_retries = max_retries

    cdef int admit(self, list targets, Target target) except -1:
        """0 when a request to `target` may go (and it is counted active), else the flag of the
        breaker that refuses it."""
        cdef Target t
        cdef int conns = 0
        if self.active >= self.max_requests:
            self.overflows["max_requests"] += 1
            return RF_OVERFLOW_REQUESTS
        if target.n_idle == 0:
            # it will need a new connection
            if self.pending >= self.max_pending:
                self.overflows["max_pending_requests"] += 1
                return RF_OVERFLOW_PENDING
            for t in targets:
                conns += t.open_connections
            if conns >= self.max_connections:
                self.overflows["max_connections"] += 1
                return RF_OVERFLOW_CONNECTIONS
        self.active += 1
        return 0

    cdef bint may_retry(self) except -1:
        if self.retries >= self.max_retries:
            self.overflows["max_retries"] += 1
            return False
        return True

    cdef int release(self, bint pending, bint retry) except -1:
        self.active -= 1
        if pending:
            self.pending -= 1
        if retry:
            self.retries -= 1

    def describe(self, list targets):
        return {"max_connections": self.max_connections, "max_pending_requests": self.max_pending,
                "max_requests": self.max_requests, "max_retries": self.max_retries,
                "connections": sum((<Target>t).open_connections for t in targets),
                "active_requests": self.active, "pending_requests": self.pending,
                "active_retries": self.retries, "overflows": dict(self.overflows)}
