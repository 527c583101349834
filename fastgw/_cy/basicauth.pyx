# basic_auth (docs/auth.md): users with bcrypt or argon2 hashes, from `consumers:` and htpasswd
# files. A hash takes milliseconds by design, so it is checked on the default thread pool while the
# exchange is paused (the loop keeps serving); a credential that checked good is kept, by its
# SHA-256 digest, in a bounded cache, so the next request with it costs a hash lookup. An unknown
# user is checked against a dummy hash of the same cost, so the answer's timing does not say
# whether a user exists.

import base64 as _base64
import binascii as _binascii

cdef bytes _AUTHORIZATION = b"authorization"


cdef class UserHash:
    """One user's password hash and the consumer it authenticates."""
    cdef readonly bytes hash
    cdef readonly object consumer

    def __init__(self, bytes hash, consumer):
        self.hash = hash
        self.consumer = consumer


cdef class BasicAuth(AuthMethod):
    cdef dict users                    # username bytes -> UserHash
    cdef object verify                 # (hash bytes or None, password bytes) -> bool, thread-safe
    cdef dict cache                    # bucket_key(credential digest) -> [(digest, consumer)]
    cdef Py_ssize_t cache_size
    cdef Py_ssize_t cached
    cdef double timeout
    cdef bint strip
    cdef readonly int64_t hashes_checked

    def __init__(self, str name, str key, str realm, users, verify, Py_ssize_t cache_size, double timeout,
                 bint strip, config=None):
        AuthMethod.__init__(self, name, "basic_auth", key, config,
                            b'WWW-Authenticate: Basic realm="%s", charset="UTF-8"\r\n' % realm.encode())
        self.users = dict(users)
        self.verify = verify
        self.cache = {}
        self.cache_size = cache_size
        self.timeout = timeout
        self.strip = strip

    cdef int authenticate(self, Exchange ex) except -1:
        cdef bytes value = request_field(ex, _AUTHORIZATION)
        cdef bytes cred, digest, user, password
        cdef object c
        cdef UserHash entry
        if value is None or len(value) < 6 or value[:6].lower() != b"basic ":
            return AUTH_ABSENT          # no credential of this scheme (a Bearer token is another method's)
        if self.strip:
            drop_upstream_field(ex, _AUTHORIZATION)
        cred = value[6:].strip()
        digest = sha256_of(PyBytes_AS_STRING(cred), PyBytes_GET_SIZE(cred))
        c = self._cached(digest)
        if c is not None:
            ex.consumer = c
            ex.consumer_name = (<Consumer>c).name_bytes
            return AUTH_OK
        try:
            user, sep, password = _base64.b64decode(cred, validate=True).partition(b":")
        except (_binascii.Error, ValueError):
            return AUTH_DENIED
        if not sep:
            return AUTH_DENIED
        entry = self.users.get(user)
        self.hashes_checked += 1
        fut = ex.worker.loop.run_in_executor(None, self.verify, entry.hash if entry is not None else None, password)
        ex.pending = fut
        ex.pause_deadline(self.timeout)
        fut.add_done_callback(_Verified(self, ex, entry.consumer if entry is not None else None, digest))
        return AUTH_PAUSED

    cdef object _cached(self, bytes digest):
        return digest_lookup(self.cache, digest)

    cdef void _remember(self, bytes digest, object consumer):
        if self.cached >= self.cache_size:
            # the oldest entry goes (dicts keep insertion order): a plain bound, no LRU bookkeeping
            # on the hit path
            oldest = next(iter(self.cache))
            self.cached -= len(self.cache.pop(oldest))
        self.cache.setdefault(bucket_key(digest), []).append((digest, consumer))
        self.cached += 1

    cdef void verified(self, Exchange ex, object consumer, bytes digest, fut) except *:
        cdef int r
        if fut.cancelled():             # the exchange ended or timed out first
            return
        exc = fut.exception()
        if exc is None and fut.result() and consumer is not None:
            self._remember(digest, consumer)
            ex.consumer = consumer
            ex.consumer_name = (<Consumer>consumer).name_bytes
            r = AUTH_OK
        else:
            r = AUTH_DENIED
        self.auth_done(ex, r)

    def adopt(self, Policy old):
        """The same policy after a reload: its cache of good credentials goes on when every user's
        hash and consumer name are what they were (a changed or removed user empties it: no old
        password stays good), each entry now naming the new config's consumer record."""
        cdef BasicAuth prev
        if not isinstance(old, BasicAuth):
            return
        prev = <BasicAuth>old
        if _fingerprint(prev.users) != _fingerprint(self.users):
            return
        now = {(<Consumer>(<UserHash>e).consumer).name: (<UserHash>e).consumer for e in self.users.values()}
        for key, bucket in prev.cache.items():
            entries = [(d, now[(<Consumer>c).name]) for d, c in bucket if (<Consumer>c).name in now]
            if entries and self.cached + len(entries) <= self.cache_size:
                self.cache[key] = entries
                self.cached += len(entries)

    def describe(self):
        return f"basic auth ({len(self.users)} users)"

    @property
    def cache_entries(self):
        return self.cached


cdef dict _fingerprint(dict users):
    return {u: ((<UserHash>e).hash, (<Consumer>(<UserHash>e).consumer).name) for u, e in users.items()}


cdef class _Verified:
    cdef BasicAuth policy
    cdef Exchange ex
    cdef object consumer
    cdef bytes digest

    def __init__(self, BasicAuth policy, Exchange ex, consumer, bytes digest):
        self.policy = policy
        self.ex = ex
        self.consumer = consumer
        self.digest = digest

    def __call__(self, fut):
        self.policy.verified(self.ex, self.consumer, self.digest, fut)
