# Per-route filters, compiled once: header edits, redirect, rewrite. The request path asks them
# cheap questions (is this field removed? what goes after the fields?) while it serializes heads.


from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE

cdef class HeaderOps:
    """remove / set / add on one direction's header fields. `dropped` holds the lowercase names of
    every field that must not pass through as it is (removed or replaced by `set`)."""
    cdef readonly tuple dropped          # lowercase names
    cdef readonly bytes appended         # "Name: value\r\n" lines for set and add

    def __init__(self, set_items, add_items, remove):
        names = [n.lower().encode() for n in remove] + [n.lower().encode() for n, _ in set_items]
        self.dropped = tuple(dict.fromkeys(names))
        lines = [b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in set_items]
        lines += [b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in add_items]
        self.appended = b"".join(lines)

    cdef bint drops(self, const char* name, Py_ssize_t n):
        # per field of a head: the names read borrowed, without the refcounts of a for loop
        cdef tuple dropped = self.dropped
        cdef PyObject* d
        cdef Py_ssize_t i
        for i in range(PyTuple_GET_SIZE(dropped)):
            d = PyTuple_GET_ITEM(dropped, i)
            if PyBytes_GET_SIZE(<bytes>d) == n and _ci_eq(name, n, PyBytes_AS_STRING(<bytes>d), n):
                return True
        return False


import re as _re

_PLACEHOLDER = _re.compile(rb"\{([A-Za-z_][A-Za-z0-9_]*)\}")


cdef tuple _split_placeholders(bytes path):
    """`/u/{id}/x` -> (b"/u/", b"id", b"/x"): literals at even indices, capture names at odd ones;
    None when the path has no placeholder."""
    parts = _PLACEHOLDER.split(path)
    return tuple(parts) if len(parts) > 1 else None


cdef class Redirect:
    cdef readonly bytes scheme          # None: the request's
    cdef readonly bytes hostname        # None: the request's
    cdef readonly int port              # 0: derived
    cdef readonly bytes path_full
    cdef readonly tuple path_full_parts # with template captures: see _split_placeholders
    cdef readonly bytes path_prefix
    cdef readonly int status

    def __init__(self, scheme, hostname, port, path_full, path_prefix, int status):
        self.scheme = scheme.encode() if scheme else None
        self.hostname = hostname.encode() if hostname else None
        self.port = port or 0
        self.path_full = path_full.encode() if path_full is not None else None
        self.path_full_parts = _split_placeholders(self.path_full) if path_full is not None else None
        self.path_prefix = path_prefix.encode() if path_prefix is not None else None
        self.status = status


cdef class Rewrite:
    cdef readonly bytes hostname
    cdef readonly bytes path_full
    cdef readonly tuple path_full_parts
    cdef readonly bytes path_prefix

    def __init__(self, hostname, path_full, path_prefix):
        self.hostname = hostname.encode() if hostname else None
        self.path_full = path_full.encode() if path_full is not None else None
        self.path_full_parts = _split_placeholders(self.path_full) if path_full is not None else None
        self.path_prefix = path_prefix.encode() if path_prefix is not None else None


cdef class Filters:
    """The filters in force for one backend of one route (the route's and the backend's, merged at
    compile time)."""
    cdef readonly HeaderOps request_headers
    cdef readonly HeaderOps response_headers
    cdef readonly Redirect redirect
    cdef readonly Rewrite rewrite
    cdef readonly object mirror_group     # UpstreamGroup
    cdef readonly double mirror_fraction  # 0..1

    def __init__(self, request_headers=None, response_headers=None, redirect=None, rewrite=None,
                 mirror_group=None, double mirror_percent=100.0):
        self.request_headers = request_headers
        self.response_headers = response_headers
        self.redirect = redirect
        self.rewrite = rewrite
        self.mirror_group = mirror_group
        self.mirror_fraction = mirror_percent / 100.0


cdef bytes expand_captures(tuple parts, tuple names, Router routes, const char* path):
    """A full replacement path with `{name}` filled from the template match just made."""
    cdef Py_ssize_t starts[16]
    cdef Py_ssize_t lens[16]
    cdef int n = routes.last_captures(starts, lens, 16)
    cdef int i, k
    out = []
    for i in range(len(parts)):
        if i % 2 == 0:
            out.append(parts[i])
            continue
        k = names.index(parts[i]) if parts[i] in names else -1
        if 0 <= k < n:
            out.append(path[starts[k]:starts[k] + lens[k]])
    return b"".join(out)


cdef bytes replace_path(const char* path, Py_ssize_t path_len, bytes matched_prefix, bytes full,
                        bytes prefix):
    """Gateway API path replacement. `prefix` replaces the part `matched_prefix` matched:
    /foo/bar with /foo -> /xyz gives /xyz/bar; /foo with an empty replacement gives /."""
    cdef bytes rest, repl
    cdef Py_ssize_t n
    if full is not None:
        return full
    n = PyBytes_GET_SIZE(matched_prefix) if matched_prefix is not None else 0
    if n == 1:
        n = 0                           # prefix "/" matched nothing but the root
    rest = path[n:path_len]
    repl = prefix
    if PyBytes_GET_SIZE(repl) and repl[PyBytes_GET_SIZE(repl) - 1] == 47:   # trailing '/'
        repl = repl[:PyBytes_GET_SIZE(repl) - 1]
    if not rest:
        return repl if repl else b"/"
    if not repl:
        return rest
    return repl + rest
