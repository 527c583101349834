# Target choice: filled in by the balancer work (see docs/architecture.md, "Balancer").

cdef class SmoothWeightedRR:
    cdef list _weights

    def __init__(self, weights):
        self._weights = list(weights)

    cdef Py_ssize_t pick(self):
        return 0 if self._weights else -1

    def next_index(self):
        return self.pick()
