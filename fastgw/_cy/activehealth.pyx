# Active health: the results of the probes fastgw/healthcheck.py runs, per upstream and per worker.
# A target is down after `unhealthy_threshold` failed probes in a row and back after
# `healthy_threshold` passing ones; while down it is out of its balancer, whatever passive health
# says (a target is in service only when neither takes it out: UpstreamGroup._set_available).
#
# The probes are rare (seconds apart), so this is plain Python data: the request path never reads
# it; it only flips the balancer's availability on a transition.


cdef class ActiveHealthState:
    cdef readonly Py_ssize_t n
    cdef list down                  # bool per target
    cdef list passes                # consecutive passing probes
    cdef list fails                 # consecutive failed probes
    cdef list reason                # the last failed probe's reason (str) or None
    cdef list last_transition       # wall-clock time of the last change, or None
    cdef list probes                # probes run, per target
    cdef readonly Py_ssize_t n_down
    cdef readonly int healthy_threshold
    cdef readonly int unhealthy_threshold

    def __init__(self, Py_ssize_t n, int healthy_threshold, int unhealthy_threshold):
        self.n = n
        self.down = [False] * n
        self.passes = [0] * n
        self.fails = [0] * n
        self.reason = [None] * n
        self.last_transition = [None] * n
        self.probes = [0] * n
        self.n_down = 0
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold

    cdef bint is_down(self, Py_ssize_t i):
        return 0 <= i < self.n and self.down[i]

    def result(self, Py_ssize_t i, bint ok, str why=None):
        """A probe of target i ended: -1 when it goes out now, +1 when it comes back, else 0."""
        if i < 0 or i >= self.n:
            return 0
        self.probes[i] += 1
        if ok:
            self.fails[i] = 0
            self.passes[i] += 1
            if self.down[i] and self.passes[i] >= self.healthy_threshold:
                self.down[i] = False
                self.n_down -= 1
                self.reason[i] = None
                self.last_transition[i] = _wall_time()
                return 1
            return 0
        self.passes[i] = 0
        self.fails[i] += 1
        self.reason[i] = why
        if not self.down[i] and self.fails[i] >= self.unhealthy_threshold:
            self.down[i] = True
            self.n_down += 1
            self.last_transition[i] = _wall_time()
            return -1
        return 0

    def adopt(self, ActiveHealthState old, list old_index):
        """Takes over the state of the targets that were in the old group (old_index[i]: target i's
        position there, or -1): a target that was down stays down until it passes again."""
        cdef Py_ssize_t i, j
        for i in range(self.n):
            j = old_index[i]
            if j < 0:
                continue
            self.passes[i] = old.passes[j]
            self.fails[i] = old.fails[j]
            self.reason[i] = old.reason[j]
            self.last_transition[i] = old.last_transition[j]
            self.probes[i] = old.probes[j]
            if old.down[j] and not self.down[i]:
                self.down[i] = True
                self.n_down += 1

    def describe(self, Py_ssize_t i):
        return {"active": "unhealthy" if self.down[i] else "healthy",
                "active_reason": self.reason[i] if self.down[i] or self.fails[i] else None,
                "active_consecutive_passes": self.passes[i], "active_consecutive_failures": self.fails[i],
                "active_probes": self.probes[i], "active_last_transition": self.last_transition[i]}
