# api_key (docs/auth.md): a key from a header or a query parameter, looked up by its SHA-256
# digest. Keys are kept only as digests; the digest a request's key hashes to is compared with the
# stored one by hmac.compare_digest, so the comparison takes the same time wherever the two differ
# (the dict that finds the candidate is keyed by the digest's first 8 bytes, which say nothing of
# the key). The credential is taken out of the upstream request unless `strip: false`.

import hashlib as _hashlib
import hmac as _hmac
from urllib.parse import unquote_to_bytes as _unquote_to_bytes

# The one comparison of secrets on the request path (tests check it is the constant-time one).
_secret_equal = _hmac.compare_digest
cdef object _sha256 = _hashlib.sha256


cdef object request_field(Exchange ex, bytes lower_name):
    """The first request field of that (lowercase) name, its value as bytes, or None."""
    cdef MessageHead* h = ex.h
    cdef const char* p = ex.p
    cdef HeaderField* f
    cdef int i
    cdef Py_ssize_t n = PyBytes_GET_SIZE(lower_name)
    if h == NULL:
        return None
    for i in range(h.nfields):
        f = &h.fields[i]
        if f.kind != HK_DROP and f.name_len == n and _ci_eq(p + f.name, n, PyBytes_AS_STRING(lower_name), n):
            return p[f.value:f.value + f.value_len]
    return None


cdef void drop_upstream_field(Exchange ex, bytes lower_name) except *:
    if ex.upstream_edits is None:
        ex.upstream_edits = []
    ex.upstream_edits.append((lower_name, None, True))


cdef object digest_lookup(dict buckets, bytes digest):
    """The value stored under a SHA-256 `digest` in buckets keyed by its first 8 bytes, compared in
    constant time, every entry of the bucket compared whether or not one matched; None if none."""
    cdef list bucket = buckets.get(digest[:8])
    cdef object found = None
    if bucket is None:
        return None
    for stored, value in bucket:
        if _secret_equal(<bytes>stored, digest):
            found = value
    return found


cdef class SecretDigests:
    """Secrets kept as SHA-256 digests, each with what it stands for (a Consumer)."""
    cdef dict buckets                  # digest[:8] -> [(digest, value), ...]
    cdef readonly Py_ssize_t count

    def __init__(self, pairs=()):
        """pairs: (secret bytes, value)."""
        self.buckets = {}
        for secret, value in pairs:
            d = _sha256(secret).digest()
            self.buckets.setdefault(d[:8], []).append((d, value))
            self.count += 1

    cdef object find(self, bytes secret):
        return digest_lookup(self.buckets, _sha256(secret).digest())

    def lookup(self, secret):
        return self.find(secret)


cdef class ApiKeyAuth(AuthMethod):
    cdef tuple headers                 # lowercase names
    cdef tuple params                  # query parameter names
    cdef SecretDigests keys
    cdef bint strip

    def __init__(self, str name, str key, headers, params, SecretDigests keys, bint strip, config=None):
        AuthMethod.__init__(self, name, "api_key", key, config, b"")
        self.headers = tuple(h.lower().encode() for h in headers)
        self.params = tuple(q.encode() for q in params)
        self.keys = keys
        self.strip = strip

    cdef int authenticate(self, Exchange ex) except -1:
        cdef bytes name, value = None
        cdef object c
        for name in self.headers:
            value = request_field(ex, name)
            if value is not None:
                if self.strip:
                    drop_upstream_field(ex, name)
                break
        if value is None and self.params:
            value = self._from_query(ex)
        if value is None:
            return AUTH_ABSENT
        c = self.keys.find(value.strip())
        if c is None:
            return AUTH_DENIED
        ex.consumer = c
        ex.consumer_name = (<Consumer>c).name_bytes
        return AUTH_OK

    cdef object _from_query(self, Exchange ex):
        cdef MessageHead* h = ex.h
        cdef bytes query, pname, found = None
        cdef list kept, parts
        if h == NULL or h.path_len >= h.target_len:
            return None
        query = ex.up_query[1:] if ex.up_query is not None else ex.p[h.target + h.path_len + 1:h.target + h.target_len]
        parts = query.split(b"&")
        kept = []
        for part in parts:
            pname, eq, pvalue = (<bytes>part).partition(b"=")
            if found is None and eq and pname in self.params:
                found = _unquote_to_bytes(pvalue.replace(b"+", b" "))
                continue
            kept.append(part)
        if found is not None and self.strip:
            ex.up_query = (b"?" + b"&".join(kept)) if kept else b""
        return found

    def describe(self):
        where = [f"header {h.decode()}" for h in self.headers] + [f"query {q.decode()}" for q in self.params]
        return f"api key from {' or '.join(where)} ({self.keys.count} keys)"
