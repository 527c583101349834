# Slow start (Envoy's slow_start_config, nginx's `slow_start`), per upstream and worker: a target
# that comes back into its balancer (ejection over, active checks passing again) or that a reload or
# a DNS change added gets weight x max(min_weight_percent, (t / window) ^ (1 / aggression)) until
# `window` has passed since it returned. docs/retries.md.
#
# The balancer's weights are the configured ones x 100 (fastgw/runtime.py) so a ramping target's
# share moves in 1% steps with integer weights; a step changes one weight of the smooth weighted
# round robin or the least-request picker (its cumulative weights recomputed); a hash picker (ring
# hash, Maglev) gets the percentage as the share of its keys the target keeps (pickers.pyx
# set_share), since a weight there would move keys, not load. UpstreamGroup.pick calls apply() only
# while a target is ramping.

from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free

cdef class UpstreamGroup


cdef class SlowStart:
    cdef Py_ssize_t n
    cdef double window
    cdef double aggression
    cdef double min_fraction
    cdef double* since                # when the target came back
    cdef unsigned char* ramping
    cdef int64_t* base                # configured weights
    cdef int* percent                 # the share of its weight last applied, 1..100
    cdef readonly Py_ssize_t n_ramping
    cdef readonly tuple key
    cdef public double clock          # tests: the time apply() uses when >= 0 (else monotonic)

    def __cinit__(self):
        self.since = NULL
        self.ramping = NULL
        self.base = NULL
        self.percent = NULL

    def __dealloc__(self):
        free(self.since)
        free(self.ramping)
        free(self.base)
        free(self.percent)

    def __init__(self, list weights, double window, double aggression=1.0, double min_weight_percent=10.0):
        cdef Py_ssize_t i
        self.n = len(weights)
        self.since = <double*>calloc(self.n + 1, sizeof(double))
        self.ramping = <unsigned char*>calloc(self.n + 1, 1)
        self.base = <int64_t*>calloc(self.n + 1, sizeof(int64_t))
        self.percent = <int*>calloc(self.n + 1, sizeof(int))
        if self.since == NULL or self.ramping == NULL or self.base == NULL or self.percent == NULL:
            raise MemoryError()
        for i in range(self.n):
            self.base[i] = weights[i]
            self.percent[i] = 100
        self.window = window
        self.aggression = aggression
        self.min_fraction = min_weight_percent / 100.0
        self.clock = -1.0
        self.key = (tuple(weights), window, aggression, min_weight_percent)

    cdef inline double _now(self) noexcept:
        return self.clock if self.clock >= 0 else monotonic()

    cdef int begin(self, Py_ssize_t i) except -1:
        """Target i is back in its balancer: its ramp starts now."""
        if i < 0 or i >= self.n:
            return 0
        if not self.ramping[i]:
            self.ramping[i] = 1
            self.n_ramping += 1
        self.since[i] = self._now()
        self.percent[i] = 0           # applied at the next pick

    cdef int apply(self, UpstreamGroup g) except -1:
        """Each ramping target's weight as of now; the ramps that are over end."""
        cdef double now = self._now()
        cdef double f
        cdef Py_ssize_t i
        cdef int pct
        cdef int64_t w
        for i in range(self.n):
            if not self.ramping[i]:
                continue
            f = (now - self.since[i]) / self.window
            if f >= 1.0:
                self.ramping[i] = 0
                self.n_ramping -= 1
                pct = 100
            else:
                if f < 0.0:
                    f = 0.0
                if self.aggression != 1.0:
                    f = f ** (1.0 / self.aggression)
                if f < self.min_fraction:
                    f = self.min_fraction
                pct = <int>(f * 100.0)
                if pct < 1:
                    pct = 1
            if pct != self.percent[i]:
                self.percent[i] = pct
                w = self.base[i] * pct // 100
                if w < 1:
                    w = 1
                g.balancer.set_weight(i, w)
                if g.picker is not None:
                    g.picker.set_weight(i, w)
                    g.picker.set_share(i, pct)       # a hash picker: the share of its keys it keeps
        return 0

    def adopt(self, SlowStart old, list old_index, UpstreamGroup g):
        """A reload: ramps under way go on (same settings); targets the old group did not have
        (old_index[i] < 0) start theirs now."""
        cdef Py_ssize_t i, j
        for i in range(self.n):
            j = old_index[i]
            if j < 0:
                self.begin(i)
            elif old is not None and old.key[1:] == self.key[1:] and j < old.n and old.ramping[j]:
                self.ramping[i] = 1
                self.n_ramping += 1
                self.since[i] = old.since[j]
                self.percent[i] = 0
        if self.n_ramping:
            self.apply(g)

    def begin_for_test(self, Py_ssize_t i):
        self.begin(i)

    def describe(self, Py_ssize_t i):
        if not self.ramping[i]:
            return None
        return {"weight_percent": self.percent[i] or None,
                "seconds_left": round(max(0.0, self.window - (self._now() - self.since[i])), 3)}
