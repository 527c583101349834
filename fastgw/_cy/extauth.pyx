# The `external_auth` authentication method (docs/auth-jwt.md): forward auth, as Traefik's
# forwardAuth and Envoy's ext_authz HTTP mode. The request's method, path and selected headers go to
# the auth service (fastgw/external_auth.py: a pooled httpx client on the worker's loop) while the
# exchange is paused; a 2xx answer lets it through with the named answer headers put on the upstream
# request, any other answer is sent to the client as the auth service gave it, and a failure or
# timeout answers 503 or lets through, as configured.

# `request_headers: ["*"]` (the Gateway API filter's empty allowedHeaders): every client header but
# these, which the gateway sets itself or which frame a body the auth service is not sent
cdef frozenset _EXTAUTH_NOT_SENT = frozenset((
    b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"proxy-connection",
    b"te", b"trailer", b"upgrade", b"expect", b"x-forwarded-method", b"x-forwarded-uri", b"x-forwarded-host",
    b"x-forwarded-proto", b"x-forwarded-for", b"x-request-id"))
# `upstream_headers: ["*"]` (empty allowedResponseHeaders): every 2xx answer header but these: the
# gateway frames the upstream request, and the answer's own metadata says nothing about the client
cdef frozenset _EXTAUTH_NOT_COPIED = frozenset((
    b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"proxy-connection",
    b"te", b"trailer", b"upgrade", b"x-request-id", b"content-type", b"content-encoding", b"date", b"server"))
# `client_headers: ["*"]`: every refusal header but the framing ones, which the gateway writes itself
cdef frozenset _EXTAUTH_NOT_PASSED = frozenset((
    b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"proxy-connection", b"te",
    b"trailer", b"upgrade", b"x-request-id"))


cdef class ExternalAuth(AuthMethod):
    cdef readonly object client
    cdef tuple request_headers           # lowercase names of client headers sent along
    cdef tuple upstream_headers          # (lowercase name, name) copied from a 2xx answer
    cdef frozenset client_headers        # lowercase names passed on with a refusal
    cdef bytes consumer_header
    cdef bint allow_on_failure
    cdef double pause_timeout
    cdef bint all_request_headers        # `request_headers: ["*"]`
    cdef bint all_upstream_headers       # `upstream_headers: ["*"]`
    cdef bint all_client_headers         # `client_headers: ["*"]`
    cdef public object consumers         # the ConsumerTable the consumer_header's names are looked up in, or None
    cdef dict named                      # consumer_header value -> Consumer, bounded (_NAMED_MAX)

    def __init__(self, str name, str key, client, request_headers, upstream_headers, client_headers,
                 bytes consumer_header, bint allow_on_failure, double pause_timeout, config=None,
                 bint all_request_headers=False, bint all_upstream_headers=False, bint all_client_headers=False):
        AuthMethod.__init__(self, name, "external_auth", key, config, b"")
        self.client = client
        self.request_headers = tuple(request_headers)
        self.upstream_headers = tuple(upstream_headers)
        self.client_headers = frozenset(client_headers)
        self.consumer_header = consumer_header
        self.allow_on_failure = allow_on_failure
        self.pause_timeout = pause_timeout
        self.all_request_headers = all_request_headers
        self.all_upstream_headers = all_upstream_headers
        self.all_client_headers = all_client_headers
        self.named = {}

    def adopt(self, Policy old):
        # the same auth service: its pooled connections go on serving
        if isinstance(old, ExternalAuth) and (<ExternalAuth>old).client.origin == self.client.origin:
            self.client._client = (<ExternalAuth>old).client._client

    def describe(self):
        return "external_auth " + self.client.origin + self.client.prefix

    cdef int authenticate(self, Exchange ex) except -1:
        cdef bytes name, target, query = ex.query_bytes
        cdef object value
        cdef list headers = []
        host = ex.header_value(b"host")
        if host is not None:
            headers.append((b"host", host))
        if self.all_request_headers:
            for name, value in ex.header_items():
                name = name.lower()
                if name not in _EXTAUTH_NOT_SENT:
                    headers.append((name, value))
        else:
            for name in self.request_headers:
                value = ex.header_value(name)
                if value is not None:
                    headers.append((name, value))
        target = ex.path_bytes or b"/"
        if query:
            target = target + b"?" + query
        method = ex.method
        headers.append((b"x-forwarded-method", method.encode("latin-1")))
        headers.append((b"x-forwarded-uri", target))
        if host is not None:
            headers.append((b"x-forwarded-host", host))
        headers.append((b"x-forwarded-proto", b"http"))
        headers.append((b"x-forwarded-for", ex.client_addr))
        if ex.request_id is not None:
            headers.append((b"x-request-id", ex.request_id))
        task = ex.worker.loop.create_task(self.client.ask(method, target, headers))
        ex.pending = task
        ex.pause_deadline(self.pause_timeout)
        task.add_done_callback(_ExtAuthDone(self, ex))
        return AUTH_PAUSED

    cdef void refuse(self, Exchange ex, int result) except *:
        auth_refuse(self, ex, result)

    cdef void answered(self, Exchange ex, task) except *:
        cdef int status
        cdef list fields, edits
        cdef bytes lname, cname, n, v, lines
        if task.cancelled():            # the exchange ended or timed out first
            return
        ex.pending = None
        exc = task.exception()
        if exc is not None:
            self.client.report(exc)
            if self.allow_on_failure:
                self.auth_done(ex, AUTH_OK)
                return
            ex.auth_answer = (503, b"authentication service unavailable", b"", None)
            self.auth_done(ex, AUTH_DENIED)
            return
        status, fields, body = task.result()
        if 200 <= status < 300:
            if self.upstream_headers:
                edits = ex.upstream_edits
                if edits is None:
                    edits = ex.upstream_edits = []
                for lname, cname in self.upstream_headers:
                    edits.append((lname, None, True))     # what the client sent under that name goes
                    for n, v in fields:
                        if n.lower() == lname and not (b"\r" in v or b"\n" in v or b"\0" in v):
                            edits.append((lname, cname + b": " + v + b"\r\n", False))
            if self.all_upstream_headers:
                edits = ex.upstream_edits
                if edits is None:
                    edits = ex.upstream_edits = []
                for n, v in fields:
                    lname = n.lower()
                    if lname not in _EXTAUTH_NOT_COPIED and not (b"\r" in v or b"\n" in v or b"\0" in v):
                        edits.append((lname, None, True))
                        edits.append((lname, n + b": " + v + b"\r\n", False))
            if self.consumer_header is not None:
                for n, v in fields:
                    if n.lower() == self.consumer_header:
                        ex.consumer = self._consumer(v)
                        ex.consumer_name = (<Consumer>ex.consumer).name_bytes
                        break
            self.auth_done(ex, AUTH_OK)
            return
        if status < 200 or status > 599:
            status = 502
        if self.all_client_headers:
            lines = b"".join([n + b": " + v + b"\r\n" for n, v in fields
                              if n.lower() not in _EXTAUTH_NOT_PASSED and not (b"\r" in v or b"\n" in v)])
        else:
            lines = b"".join([n + b": " + v + b"\r\n" for n, v in fields
                              if n.lower() in self.client_headers and not (b"\r" in v or b"\n" in v)])
        ex.auth_answer = (status, None, lines, body if not ex.head_method else b"")
        self.auth_done(ex, AUTH_DENIED)


    cdef Consumer _consumer(self, bytes value):
        """The consumer the auth service named: the `consumers:` entry of that name, else one of its
        own (no groups), as a JWT's claim names one; kept per name so a name costs one lookup."""
        cdef Consumer c = self.named.get(value)
        cdef str name
        if c is None:
            name = value.decode("latin-1")
            if self.consumers is not None:
                c = (<ConsumerTable>self.consumers).get(name)
            if c is None:
                c = Consumer(name)
            if len(self.named) >= _NAMED_MAX:
                self.named.clear()
            self.named[value] = c
        return c


cdef Py_ssize_t _NAMED_MAX = 4096


cdef class _ExtAuthDone:
    cdef ExternalAuth policy
    cdef Exchange ex

    def __init__(self, ExternalAuth policy, Exchange ex):
        self.policy = policy
        self.ex = ex

    def __call__(self, task):
        try:
            self.policy.answered(self.ex, task)
        except Exception as exc:
            _report_policy_error(self.policy, "request", exc)
            self.ex.fail(500, b"external auth failed", RF_POLICY_ERROR)
            self.ex.resume()
