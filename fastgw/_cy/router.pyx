# Route table: placeholder linear matcher until the radix router lands.

cdef class Router:
    cdef list _routes

    def __init__(self, routes):
        self._routes = list(routes)

    cdef object match(self, const char* host, Py_ssize_t host_len,
                      const char* path, Py_ssize_t path_len):
        cdef bytes p = path[:path_len]
        for r in self._routes:
            if r.path_exact is not None:
                if p == r.path_exact.encode():
                    return r.payload
            else:
                pre = (r.path_prefix or "/").rstrip("/").encode()
                if p.startswith(pre) and (len(p) == len(pre) or p[len(pre)] == 47):
                    return r.payload
        return None

    def lookup(self, bytes host, bytes path):
        return self.match(host, len(host), path, len(path))
