# Passive health (outlier detection): per upstream and per worker, each target's consecutive
# failures (connect refused or timed out, reset before a response) and consecutive 5xx responses,
# counted as exchanges end their attempts. A target reaching a threshold is ejected, taken out of
# its balancer, for a time that grows with each ejection (base x times ejected, up to a maximum) and
# always comes back when the time is up (Kong #15001, #7566: targets stuck unhealthy forever).
#
# Unlike Envoy, which looks at the counts every `interval`, a threshold ejects at once, as nginx's
# max_fails does: with the defaults (1 failure, 10 s) a dead target costs one failed connect per
# worker per 10 s, and the request that met it is retried on another target (Exchange.upstream_failed).
#
# No more than `max_ejected_percent` of the targets are out at once: beyond it a target that fails
# is not ejected, so the balancer always has a share of targets to use (Envoy's panic threshold
# reached from the other side).

from libc.stdint cimport int32_t, uint32_t
from libc.stdlib cimport calloc, free

import time as _time_module

cdef class UpstreamGroup

cdef enum:
    # why a target was ejected
    EJ_NONE = 0
    EJ_FAILURES
    EJ_5XX

cdef tuple EJECT_REASONS = (None, "consecutive failures", "consecutive 5xx")


cdef class OutlierState:
    cdef Py_ssize_t n
    cdef uint32_t* failures          # consecutive connect failures / resets / timeouts
    cdef uint32_t* errors_5xx        # consecutive 5xx responses
    cdef uint32_t* times_ejected
    cdef double* ejected_until       # 0: in service
    cdef double* returned_at
    cdef double* last_transition     # wall-clock time of the last ejection or return, for /upstreams
    cdef unsigned char* reason
    cdef readonly Py_ssize_t n_ejected
    cdef double next_return          # the earliest ejected_until among the ejected
    # settings
    cdef uint32_t max_failures
    cdef uint32_t max_5xx            # 0: 5xx do not eject
    cdef double base_ejection
    cdef double max_ejection
    cdef Py_ssize_t max_ejected
    cdef readonly tuple key          # the settings, for carrying state over a reload

    def __cinit__(self):
        self.failures = NULL
        self.errors_5xx = NULL
        self.times_ejected = NULL
        self.ejected_until = NULL
        self.returned_at = NULL
        self.last_transition = NULL
        self.reason = NULL

    def __dealloc__(self):
        free(self.failures)
        free(self.errors_5xx)
        free(self.times_ejected)
        free(self.ejected_until)
        free(self.returned_at)
        free(self.last_transition)
        free(self.reason)

    def __init__(self, Py_ssize_t n, int consecutive_failures, int consecutive_5xx, double base_ejection,
                 double max_ejection, int max_ejected_percent):
        self.n = n
        self.failures = <uint32_t*>calloc(n + 1, sizeof(uint32_t))
        self.errors_5xx = <uint32_t*>calloc(n + 1, sizeof(uint32_t))
        self.times_ejected = <uint32_t*>calloc(n + 1, sizeof(uint32_t))
        self.ejected_until = <double*>calloc(n + 1, sizeof(double))
        self.returned_at = <double*>calloc(n + 1, sizeof(double))
        self.last_transition = <double*>calloc(n + 1, sizeof(double))
        self.reason = <unsigned char*>calloc(n + 1, 1)
        if (self.failures == NULL or self.errors_5xx == NULL or self.times_ejected == NULL
                or self.ejected_until == NULL or self.returned_at == NULL or self.last_transition == NULL
                or self.reason == NULL):
            raise MemoryError()
        self.max_failures = consecutive_failures
        self.max_5xx = consecutive_5xx
        self.base_ejection = base_ejection
        self.max_ejection = max_ejection
        self.max_ejected = (n * max_ejected_percent) // 100
        self.key = (consecutive_failures, consecutive_5xx, base_ejection, max_ejection, max_ejected_percent)

    cdef bint failed(self, Py_ssize_t i, double now) except -1:
        """An attempt on target i failed before a response. True when it is ejected now."""
        if i < 0 or i >= self.n:
            return False
        self.failures[i] += 1
        if self.failures[i] >= self.max_failures:
            return self._eject(i, now, EJ_FAILURES)
        return False

    cdef void connected(self, Py_ssize_t i) noexcept:
        """A stream connection to target i was made (no response to judge): failures reset."""
        if 0 <= i < self.n:
            self.failures[i] = 0

    cdef bint responded(self, Py_ssize_t i, int status, double now) except -1:
        """Target i answered with `status`. True when a 5xx streak ejects it now."""
        if i < 0 or i >= self.n:
            return False
        self.failures[i] = 0
        if status >= 500 and self.max_5xx:
            self.errors_5xx[i] += 1
            if self.errors_5xx[i] >= self.max_5xx:
                return self._eject(i, now, EJ_5XX)
            return False
        self.errors_5xx[i] = 0
        return False

    cdef bint _eject(self, Py_ssize_t i, double now, int why) except -1:
        cdef double span
        cdef uint32_t healthy_periods
        if self.ejected_until[i] != 0.0 or self.n_ejected >= self.max_ejected:
            return False
        if self.times_ejected[i] and self.returned_at[i]:
            # a period of base_ejection in service forgives one earlier ejection
            healthy_periods = <uint32_t>((now - self.returned_at[i]) / self.base_ejection)
            self.times_ejected[i] = self.times_ejected[i] - healthy_periods if healthy_periods < self.times_ejected[i] else 0
        self.times_ejected[i] += 1
        span = self.base_ejection * self.times_ejected[i]
        if span > self.max_ejection:
            span = self.max_ejection
        self.ejected_until[i] = now + span
        if self.n_ejected == 0 or self.ejected_until[i] < self.next_return:
            self.next_return = self.ejected_until[i]
        self.n_ejected += 1
        self.reason[i] = why
        self.failures[i] = 0
        self.errors_5xx[i] = 0
        self.last_transition[i] = _wall_time()
        return True

    cdef int due(self, double now, list out) except -1:
        """Appends the targets whose ejection is over to `out` and puts them back in service."""
        cdef Py_ssize_t i
        cdef double soonest = 0.0
        for i in range(self.n):
            if self.ejected_until[i] == 0.0:
                continue
            if self.ejected_until[i] <= now:
                self.ejected_until[i] = 0.0
                self.returned_at[i] = now
                self.reason[i] = EJ_NONE
                self.last_transition[i] = _wall_time()
                self.n_ejected -= 1
                out.append(i)
            elif soonest == 0.0 or self.ejected_until[i] < soonest:
                soonest = self.ejected_until[i]
        self.next_return = soonest
        return 0

    def adopt(self, OutlierState old, list old_index):
        """Takes over the state of the targets that were in the old group with the same settings:
        old_index[i] is target i's position in the old group, or -1."""
        cdef Py_ssize_t i, j
        if old.key != self.key:
            return
        for i in range(self.n):
            j = old_index[i]
            if j < 0:
                continue
            self.failures[i] = old.failures[j]
            self.errors_5xx[i] = old.errors_5xx[j]
            self.times_ejected[i] = old.times_ejected[j]
            self.ejected_until[i] = old.ejected_until[j]
            self.returned_at[i] = old.returned_at[j]
            self.last_transition[i] = old.last_transition[j]
            self.reason[i] = old.reason[j]
            if self.ejected_until[i] != 0.0:
                if self.n_ejected == 0 or self.ejected_until[i] < self.next_return:
                    self.next_return = self.ejected_until[i]
                self.n_ejected += 1

    def describe(self, Py_ssize_t i, double now):
        """Target i's health for /upstreams: state, reason, seconds left, last transition."""
        if self.ejected_until[i] != 0.0:
            return {"health": "ejected", "reason": EJECT_REASONS[self.reason[i]],
                    "ejected_for_seconds": round(max(0.0, self.ejected_until[i] - now), 3),
                    "times_ejected": self.times_ejected[i], "last_transition": self.last_transition[i] or None}
        return {"health": "healthy", "consecutive_failures": self.failures[i],
                "consecutive_5xx": self.errors_5xx[i], "times_ejected": self.times_ejected[i],
                "last_transition": self.last_transition[i] or None}


cdef double _wall_time():
    return _time_module.time()


cdef object _outlier_events = None


cdef void _health_event(UpstreamGroup group, Py_ssize_t i, bint ejected) except *:
    """A target ejected or back in service: one event line (transitions only)."""
    global _outlier_events
    cdef OutlierState o = group.outlier
    if _outlier_events is None:
        from fastgw import events as _ev
        _outlier_events = _ev
    target = (<Target>group.targets[i]).address
    if ejected:
        _outlier_events.emit("warning", "target_ejected", msg=f"target {target} of upstream {group.name} "
                             f"ejected ({EJECT_REASONS[o.reason[i]]}) for {o.ejected_until[i] - monotonic():.1f}s",
                             upstream=group.name, target=target, reason=EJECT_REASONS[o.reason[i]],
                             seconds=round(o.ejected_until[i] - monotonic(), 3), times_ejected=o.times_ejected[i])
    else:
        _outlier_events.emit("info", "target_returned", msg=f"target {target} of upstream {group.name} back in service",
                             upstream=group.name, target=target)
