# Target choice: nginx's smooth weighted round robin (ngx_http_upstream_get_peer), over C arrays.
#
# Each pick adds every available target's weight to its current weight, takes the target with the
# largest current weight (the first one on a tie), and subtracts the total weight of the available
# targets from the chosen one. Over one cycle (sum of weights picks) every target is chosen exactly
# `weight` times, and heavy targets are spread out: weights 5,1,1 give 0,0,1,0,2,0,0.
#
# Unavailable targets (health checks, circuit breaking) are skipped and keep their current weight, as
# in nginx: the current weights of the available targets keep a constant sum while one is out, so the
# invariant "all current weights sum to 0" holds again when it comes back.

from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free


cdef class SmoothWeightedRR:
    cdef int64_t* _weight
    cdef int64_t* _current
    cdef unsigned char* _up
    cdef readonly Py_ssize_t n          # number of targets
    cdef readonly Py_ssize_t n_available

    def __cinit__(self):
        self._weight = NULL
        self._current = NULL
        self._up = NULL
        self.n = 0
        self.n_available = 0

    def __dealloc__(self):
        free(self._weight)
        free(self._current)
        free(self._up)

    def __init__(self, weights):
        cdef Py_ssize_t i, n
        if self._weight != NULL:
            raise RuntimeError("SmoothWeightedRR is immutable; build a new one")
        weights = list(weights)
        n = len(weights)
        for w in weights:
            if not isinstance(w, int) or isinstance(w, bool) or w <= 0:
                raise ValueError(f"weights must be positive ints, got {w!r}")
            if w > 0xFFFFFFFF:
                raise ValueError(f"weight too large: {w!r}")
        self._weight = <int64_t*>calloc(n + 1, sizeof(int64_t))
        self._current = <int64_t*>calloc(n + 1, sizeof(int64_t))
        self._up = <unsigned char*>calloc(n + 1, 1)
        if self._weight == NULL or self._current == NULL or self._up == NULL:
            raise MemoryError()
        for i in range(n):
            self._weight[i] = weights[i]
            self._up[i] = 1
        self.n = n
        self.n_available = n

    cdef Py_ssize_t pick(self) noexcept:
        cdef Py_ssize_t i, best = -1
        cdef int64_t total = 0
        cdef int64_t* cur = self._current
        for i in range(self.n):
            if not self._up[i]:
                continue
            cur[i] += self._weight[i]
            total += self._weight[i]
            if best < 0 or cur[i] > cur[best]:
                best = i
        if best >= 0:
            cur[best] -= total
        return best

    cpdef set_available(self, Py_ssize_t index, bint available):
        """Marks a target (un)available; unavailable targets are skipped by pick()."""
        if index < 0 or index >= self.n:
            raise IndexError(f"target index {index} out of range (0..{self.n - 1})")
        if self._up[index] != available:
            self._up[index] = available
            self.n_available += 1 if available else -1

    cdef void set_weight(self, Py_ssize_t index, int64_t weight) noexcept:
        """Slow start (slowstart.pyx): a target's weight while it ramps up."""
        if 0 <= index < self.n and weight > 0:
            self._weight[index] = weight

    def is_available(self, Py_ssize_t index):
        if index < 0 or index >= self.n:
            raise IndexError(f"target index {index} out of range (0..{self.n - 1})")
        return bool(self._up[index])

    def next_index(self):
        """Python entry for tests: index of the next target, -1 if none is available."""
        return self.pick()

    def __len__(self):
        return self.n
