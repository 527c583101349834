# Target choice: placeholder rotation until smooth weighted round robin lands.

cdef class SmoothWeightedRR:
    cdef list _weights
    cdef Py_ssize_t _i

    def __init__(self, weights):
        self._weights = list(weights)
        self._i = 0

    cdef Py_ssize_t pick(self):
        if not self._weights:
            return -1
        self._i = (self._i + 1) % len(self._weights)
        return self._i

    def next_index(self):
        return self.pick()
