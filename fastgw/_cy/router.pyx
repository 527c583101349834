# Route table: filled in by the router work (see docs/architecture.md, "Router").

cdef class Router:
    cdef list _routes

    def __init__(self, routes):
        self._routes = list(routes)

    cdef object match(self, const char* host, Py_ssize_t host_len,
                      const char* path, Py_ssize_t path_len):
        return None

    def lookup(self, bytes host, bytes path):
        return self.match(host, len(host), path, len(path))
