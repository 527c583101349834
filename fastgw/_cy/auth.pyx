# Authentication methods: each a request-phase policy that looks for its credential, checks it and
# names the consumer (Exchange.consumer / consumer_name). Alone on a route a method answers 401 for a
# missing or bad credential; a combinator (any-of, all-of) calls authenticate() itself and decides.
#
# authenticate() returns one of:
#   AUTH_OK      the credential is good (the consumer, if the method knows one, is set)
#   AUTH_ABSENT  the request carries no credential of this method
#   AUTH_DENIED  a credential is there and is not good
#   AUTH_PAUSED  asynchronous work started (a JWKS fetch, an auth service call); when it ends the
#                method calls self.auth_done(ex, result), which goes on as the synchronous result
#                would have
#
# A method calls auth_done whether it runs alone or inside a combinator: auth_done finds out which
# from the exchange (Exchange.auth_waiter, set by the combinator that is waiting on it), so a method
# never needs to know where it is used. After AUTH_OK, the policy that stands in the chain (the
# method alone, or the combinator) checks the consumer's groups (403) and writes the consumer's
# upstream headers, the client's copies of them removed.

cdef enum:
    AUTH_OK = 0
    AUTH_ABSENT = 1
    AUTH_DENIED = 2
    AUTH_PAUSED = 3


cdef class AuthMethod(Policy):
    cdef bytes challenge             # whole "WWW-Authenticate: ...\r\n" line(s) of a 401, or b""
    cdef frozenset allow_groups      # None: any consumer; else one of these groups is needed
    cdef frozenset deny_groups       # None, or groups refused (403) even when allowed
    cdef bytes name_header           # lowercase name of the consumer-name upstream header, or None
    cdef bytes name_line             # ... as "Name: " for the line
    cdef bytes groups_header
    cdef bytes groups_line

    def __init__(self, str name, str type, str key, config=None, bytes challenge=b""):
        Policy.__init__(self, name, type, key, config)
        self.phases = PH_REQUEST
        self.challenge = challenge
        self.name_header = b"x-consumer-name"
        self.name_line = b"X-Consumer-Name: "

    def set_access(self, allow_groups=None, deny_groups=None, name_header="X-Consumer-Name",
                   groups_header=None):
        """What is checked and forwarded after AUTH_OK when this method stands in the chain itself:
        groups allowed/denied (403) and the upstream headers naming the consumer (None: none)."""
        self.allow_groups = frozenset(allow_groups) if allow_groups is not None else None
        self.deny_groups = frozenset(deny_groups) if deny_groups else None
        self.name_header = name_header.lower().encode() if name_header else None
        self.name_line = name_header.encode() + b": " if name_header else None
        self.groups_header = groups_header.lower().encode() if groups_header else None
        self.groups_line = groups_header.encode() + b": " if groups_header else None

    cdef int authenticate(self, Exchange ex) except -1:
        return AUTH_ABSENT

    cdef int on_request(self, Exchange ex) except -1:
        cdef int r = self.authenticate(ex)
        if r == AUTH_PAUSED:
            return P_PAUSED
        return self.conclude(ex, r)

    cdef int conclude(self, Exchange ex, int r) except -1:
        """The end of authentication on this policy: P_CONTINUE (the consumer's groups admitted and
        its headers written), or P_ANSWERED with the 401 or 403."""
        if r != AUTH_OK:
            self.refuse(ex, r)
            return P_ANSWERED
        if not groups_admit(ex.consumer, self.allow_groups, self.deny_groups):
            ex.answer_json(403, b"forbidden", b"", RF_POLICY_ANSWER)
            return P_ANSWERED
        if self.name_header is not None or self.groups_header is not None:
            self._forward(ex)
        return P_CONTINUE

    cdef void _forward(self, Exchange ex) except *:
        cdef Consumer c = ex.consumer if isinstance(ex.consumer, Consumer) else None
        cdef bytes lines = b""
        # the client's own copies go whatever happens: only the gateway says who the consumer is
        if self.name_header is not None:
            if request_field_at(ex, self.name_header) != NULL:
                drop_upstream_field(ex, self.name_header)
            if c is not None:
                lines = _field_line_of(self.name_line, c.name_bytes)
        if self.groups_header is not None:
            if request_field_at(ex, self.groups_header) != NULL:
                drop_upstream_field(ex, self.groups_header)
            if c is not None and c.groups_bytes:
                lines += _field_line_of(self.groups_line, c.groups_bytes)
        # a consumer named twice (a top-level method, then a route's) is named once, the last time
        ex.up_auth_lines = lines or None

    cdef void refuse(self, Exchange ex, int result) except *:
        ex.answer_json(401, b"unauthorized" if result == AUTH_DENIED else b"authentication required",
                       self.challenge, RF_UNAUTHORIZED)

    cdef void auth_done(self, Exchange ex, int result) except *:
        """The end of a paused authenticate(): a combinator waiting on this method goes on, or (the
        method alone) the exchange goes on or is refused."""
        cdef _AuthWaiting w = ex.auth_waiter
        if w is not None:
            ex.auth_waiter = None
            w.combinator.method_done(ex, w, result)
            return
        self.conclude(ex, result)
        ex.resume()


cdef bytes _field_line_of(bytes start, bytes value):
    """start + value + CRLF, in one allocation."""
    cdef Py_ssize_t a = PyBytes_GET_SIZE(start), b = PyBytes_GET_SIZE(value)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, a + b + 2)
    cdef char* q = PyBytes_AS_STRING(out)
    memcpy(q, PyBytes_AS_STRING(start), a)
    memcpy(q + a, PyBytes_AS_STRING(value), b)
    q[a + b] = b'\r'
    q[a + b + 1] = b'\n'
    return out


cdef bint groups_admit(object consumer, frozenset allow, frozenset deny):
    """The consumer may pass: in one of `allow` (None: any consumer, or none at all), in none of
    `deny`. A request that authenticated without naming a consumer has no groups."""
    cdef frozenset groups
    if allow is None and deny is None:
        return True
    groups = (<Consumer>consumer).groups if isinstance(consumer, Consumer) else frozenset()
    if deny is not None and not groups.isdisjoint(deny):
        return False
    return allow is None or not groups.isdisjoint(allow)


cdef class _AuthWaiting:
    """A combinator's place while one of its methods is paused (only paused exchanges make one)."""
    cdef AuthCombinator combinator
    cdef Py_ssize_t step
    cdef int best
    cdef object before


cdef class AuthCombinator(AuthMethod):
    """Several methods on one route (`type: auth`): any_of passes with the first method that
    accepts (a bad credential of one method does not stop the next from trying); all_of needs
    every method to accept, and the consumers they name to be the same one. Methods run in the
    order written; a method that pauses is waited for, and the next ones run after it."""
    cdef readonly tuple methods
    cdef Py_ssize_t n
    cdef bint all

    def __init__(self, str name, str key, methods, bint all_of, config=None):
        self.methods = tuple(methods)
        self.n = len(self.methods)
        self.all = all_of
        # a refusal offers every method's challenge: the client may satisfy any (or must, all)
        AuthMethod.__init__(self, name, "auth", key, config,
                            b"".join((<AuthMethod>m).challenge for m in self.methods))

    cdef int authenticate(self, Exchange ex) except -1:
        cdef object before = ex.consumer
        cdef int r = (<AuthMethod>self.methods[0]).authenticate(ex)
        if r == AUTH_PAUSED:
            self._wait(ex, 0, AUTH_ABSENT, before)
            return AUTH_PAUSED
        return self._go_on(ex, 0, r, AUTH_ABSENT, before)

    cdef void _wait(self, Exchange ex, Py_ssize_t step, int best, object before):
        cdef _AuthWaiting w = _AuthWaiting.__new__(_AuthWaiting)
        w.combinator = self
        w.step = step
        w.best = best
        w.before = before
        ex.auth_waiter = w

    cdef int _go_on(self, Exchange ex, Py_ssize_t i, int r, int best, object before) except -1:
        """Method i answered r (not AUTH_PAUSED): the combinator's result, or AUTH_PAUSED when a
        later method paused."""
        while True:
            if self.all:
                if r != AUTH_OK:
                    return r
                if before is not None and ex.consumer is not before:
                    return AUTH_DENIED       # two credentials of two different consumers
            else:
                if r == AUTH_OK:
                    return AUTH_OK
                if r == AUTH_DENIED:
                    best = AUTH_DENIED
            i += 1
            if i == self.n:
                return AUTH_OK if self.all else best
            before = ex.consumer
            r = (<AuthMethod>self.methods[i]).authenticate(ex)
            if r == AUTH_PAUSED:
                self._wait(ex, i, best, before)
                return AUTH_PAUSED

    cdef void method_done(self, Exchange ex, _AuthWaiting w, int result) except *:
        cdef int r = self._go_on(ex, w.step, result, w.best, w.before)
        if r != AUTH_PAUSED:
            self.auth_done(ex, r)     # this combinator's own end (a waiter of its own, or alone)

    def adopt(self, Policy old):
        """The methods' state (basic_auth's cache) carries over a reload method by method."""
        if isinstance(old, AuthCombinator):
            for m, o in zip(self.methods, (<AuthCombinator>old).methods):
                if type(m) is type(o):
                    m.adopt(o)

    def describe(self):
        return ("all of " if self.all else "any of ") + ", ".join(
            f"{m.name} ({m.describe()})" for m in self.methods)


cdef class GroupsPolicy(Policy):
    """`type: groups`: the consumer an earlier auth policy named must be in an allowed group and
    in no denied one (403); without a consumer, 401."""
    cdef frozenset allow_groups
    cdef frozenset deny_groups

    def __init__(self, str name, str key, allow_groups, deny_groups, config=None):
        Policy.__init__(self, name, "groups", key, config)
        self.phases = PH_REQUEST
        self.allow_groups = frozenset(allow_groups) if allow_groups is not None else None
        self.deny_groups = frozenset(deny_groups) if deny_groups else None

    cdef int on_request(self, Exchange ex) except -1:
        if ex.consumer is None:
            ex.answer_json(401, b"authentication required", b"", RF_UNAUTHORIZED)
            return P_ANSWERED
        if not groups_admit(ex.consumer, self.allow_groups, self.deny_groups):
            ex.answer_json(403, b"forbidden", b"", RF_POLICY_ANSWER)
            return P_ANSWERED
        return P_CONTINUE

    def describe(self):
        parts = []
        if self.allow_groups is not None:
            parts.append("allow " + ", ".join(sorted(self.allow_groups)))
        if self.deny_groups is not None:
            parts.append("deny " + ", ".join(sorted(self.deny_groups)))
        return "groups: " + "; ".join(parts)
