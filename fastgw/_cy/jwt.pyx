# The `jwt` authentication method (docs/auth-jwt.md). Here is the fast path: the token taken from
# where the config says, looked up in the worker's bounded cache of verified tokens (keyed by the
# token's bytes, each entry good until its exp or the cache TTL), and the consumer and forwarded
# claims put on the exchange. A token not in the cache goes to the Python verifier
# (fastgw/jwt_auth.py: joserfc on `cryptography`), which may first need a JWKS fetch: the exchange
# then pauses until the fetch is done (or its deadline passed) and is verified again.

cdef extern from "<time.h>" nogil:
    int CLOCK_REALTIME


cdef inline double _epoch_now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class JwtVerified:
    """A verified token, as the cache keeps it."""
    cdef readonly double until           # epoch seconds after which it must be verified again
    cdef readonly object issuer          # the issuer entry's `iss` (str or None)
    cdef readonly object subject         # the consumer claim's value (str or None)
    cdef readonly dict claims
    cdef readonly bytes consumer_name
    cdef public object consumer          # the Consumer it named, once looked up (cached with the token)
    cdef list edits                      # upstream header edits: (lowercase name, line or None, drop)

    def __init__(self, double until, issuer, subject, dict claims, list edits):
        self.until = until
        self.issuer = issuer
        self.subject = subject
        self.claims = claims
        self.consumer_name = subject.encode() if subject is not None else None
        self.edits = edits if edits else None


cdef class JwtAuth(AuthMethod):
    cdef readonly object verifier
    cdef tuple sources                   # (kind 0 header / 1 cookie / 2 query, name, lowercase prefix)
    # two generations of verified tokens: lookups try the young one, then the old (promoting a hit);
    # when the young one is full it becomes the old one, so the cache stays bounded with O(1) work
    cdef dict young
    cdef dict old
    cdef Py_ssize_t generation_size
    cdef double pause_timeout
    cdef list strip_edits                # the token's own header, removed when forward_token is off
    cdef public object consumers         # the ConsumerTable tokens are bound to consumers by, or None

    def __init__(self, str name, str key, verifier, sources, Py_ssize_t cache_size, bint forward_token,
                 double pause_timeout, config=None):
        AuthMethod.__init__(self, name, "jwt", key, config, b'WWW-Authenticate: Bearer realm="fastgw"\r\n')
        self.verifier = verifier
        self.sources = tuple(sources)
        self.young = {}
        self.old = {}
        self.generation_size = (cache_size + 1) // 2
        self.pause_timeout = pause_timeout
        self.strip_edits = None
        if not forward_token:
            self.strip_edits = [(s[1], None, True) for s in self.sources if s[0] == 0]

    def adopt(self, Policy old):
        if isinstance(old, JwtAuth):
            self.verifier.adopt((<JwtAuth>old).verifier)
            if (<JwtAuth>old).config == self.config:
                self.young = (<JwtAuth>old).young
                self.old = (<JwtAuth>old).old
                # the consumers may have changed with the config: tokens look theirs up again
                for v in self.young.values():
                    (<JwtVerified>v).consumer = None
                for v in self.old.values():
                    (<JwtVerified>v).consumer = None

    def describe(self):
        names = [i.issuer or "any issuer" for i in self.config.issuers] if self.config is not None else []
        return "jwt (" + ", ".join(names) + ")"

    @property
    def cached_tokens(self):
        return len(self.young) + len(self.old)

    cdef bytes _token(self, Exchange ex):
        cdef tuple src
        cdef int kind
        cdef bytes name, prefix, value, part
        cdef Py_ssize_t n
        for src in self.sources:
            kind = src[0]
            name = src[1]
            if kind == 0:
                value = ex.header_value(name)
                if value is None:
                    continue
                prefix = src[2]
                n = len(prefix)
                if n:
                    if len(value) <= n or value[:n].lower() != prefix:
                        continue
                    value = value[n:]
                value = value.strip()
                if value:
                    return value
            elif kind == 1:
                value = ex.header_value(b"cookie")
                if value is None:
                    continue
                for part in value.replace(b",", b";").split(b";"):
                    part = part.strip()
                    if part.startswith(name) and part[len(name):len(name) + 1] == b"=":
                        part = part[len(name) + 1:].strip(b'"')
                        if part:
                            return part
            else:
                value = ex.query_bytes
                for part in value.split(b"&"):
                    if part.startswith(name) and part[len(name):len(name) + 1] == b"=":
                        part = part[len(name) + 1:]
                        if part:
                            return part
        return None

    cdef int authenticate(self, Exchange ex) except -1:
        cdef bytes token = self._token(ex)
        cdef object hit
        cdef double now
        if token is None:
            return AUTH_ABSENT
        now = _epoch_now()
        hit = self.young.get(token)
        if hit is None and self.old:
            hit = self.old.pop(token, None)
            if hit is not None:
                self._remember(token, hit)
        if hit is not None:
            if (<JwtVerified>hit).until > now:
                self._accept(ex, <JwtVerified>hit)
                return AUTH_OK
            self.young.pop(token, None)
        return self._verify(ex, token, now, True)

    cdef void _remember(self, bytes token, JwtVerified v):
        if self.generation_size <= 0:
            return
        if len(self.young) >= self.generation_size:
            self.old = self.young
            self.young = {}
        self.young[token] = v

    cdef int _verify(self, Exchange ex, bytes token, double now, bint may_fetch) except -1:
        cdef object r = self.verifier.check(token, now, ex.worker.loop if ex.worker is not None else None, may_fetch)
        cdef _JwtWait wait
        if type(r) is JwtVerified:
            self._remember(token, <JwtVerified>r)
            self._accept(ex, <JwtVerified>r)
            return AUTH_OK
        if hasattr(r, "add_done_callback"):
            wait = _JwtWait(self, ex, token)
            r.add_done_callback(wait)
            ex.pending = wait
            ex.pause_deadline(self.pause_timeout)
            return AUTH_PAUSED
        ex.auth_answer = (r.status, r.message, r.header_lines, None)
        return AUTH_DENIED

    cdef void _accept(self, Exchange ex, JwtVerified v) except *:
        if v.edits is not None:
            if ex.upstream_edits is None:
                ex.upstream_edits = list(v.edits)
            else:
                ex.upstream_edits.extend(v.edits)
        if self.strip_edits is not None:
            if ex.upstream_edits is None:
                ex.upstream_edits = list(self.strip_edits)
            else:
                ex.upstream_edits.extend(self.strip_edits)
        self.bind_consumer(ex, v)

    cdef void bind_consumer(self, Exchange ex, JwtVerified v) except *:
        """The one place a verified token becomes the exchange's consumer: the consumer that
        `consumers[].credentials.jwt` binds to the token's (iss, subject claim), else one named
        by the claim's value alone (no groups); looked up once per verified token."""
        cdef Consumer c = v.consumer
        if c is None and v.subject is not None:
            if self.consumers is not None:
                c = (<ConsumerTable>self.consumers).for_jwt(v.issuer, v.subject)
            if c is None:       # bound to none: a consumer of the claim's name, without groups
                c = Consumer(v.subject)
            v.consumer = c
        ex.consumer = c
        ex.consumer_name = c.name_bytes if c is not None else None

    cdef void refuse(self, Exchange ex, int result) except *:
        auth_refuse(self, ex, result)

    cdef void jwks_done(self, Exchange ex, bytes token) except *:
        cdef int r
        try:
            r = self._verify(ex, token, _epoch_now(), False)
        except Exception as exc:
            _report_policy_error(self, "request", exc)
            ex.fail(500, b"jwt verification failed", RF_POLICY_ERROR)
            ex.resume()
            return
        self.auth_done(ex, r)


cdef void auth_refuse(AuthMethod method, Exchange ex, int result) except *:
    """A method's own refusal when it left one in ex.auth_answer (a 401 with the reason, a 503, an
    auth service's answer), else the plain 401."""
    cdef tuple a = ex.auth_answer
    if a is None or result == AUTH_ABSENT:
        AuthMethod.refuse(method, ex, result)
        return
    if a[1] is not None:
        ex.answer_json(a[0], a[1], a[2], RF_UNAUTHORIZED)
    else:
        ex.answer(a[0], a[2], a[3], RF_UNAUTHORIZED)


cdef class _JwtWait:
    """One exchange waiting on a JWKS fetch; the exchange's `pending` (cancelling it only stops this
    exchange waiting: the fetch goes on for the others)."""
    cdef JwtAuth policy
    cdef Exchange ex
    cdef bytes token
    cdef bint cancelled

    def __init__(self, JwtAuth policy, Exchange ex, bytes token):
        self.policy = policy
        self.ex = ex
        self.token = token

    def cancel(self):
        self.cancelled = True

    def __call__(self, fut):
        if self.cancelled or self.ex.finished:
            return
        self.ex.pending = None
        self.policy.jwks_done(self.ex, self.token)
