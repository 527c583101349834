# The `cors` policy (docs/cors.md): Gateway API HTTPCORSFilter semantics. A preflight (OPTIONS with
# Origin and Access-Control-Request-Method) is answered here, in the request phase: 204 with the
# CORS headers when its origin, method and headers are allowed, else 403 without them. Any other
# request with an allowed Origin gets Access-Control-Allow-Origin (and -Credentials, -Expose-Headers)
# on its response, in place of any the upstream sent. Every answer whose CORS headers depend on the
# Origin carries `Vary: Origin`, whether or not this one had an allowed Origin, so a cache never hands
# one origin's answer to another. Answers made without the upstream's response (a later policy's 401
# or 429, the gateway's 502 ...) get the same headers (on_answer), so a page can read the refusal.

cdef frozenset _CORS_SAFELISTED_METHODS = frozenset((b"GET", b"HEAD", b"POST"))
cdef list _CORS_UPSTREAM_DROPS = [
    (b"access-control-allow-origin", None, True), (b"access-control-allow-credentials", None, True),
    (b"access-control-expose-headers", None, True), (b"access-control-allow-methods", None, True),
    (b"access-control-allow-headers", None, True), (b"access-control-max-age", None, True),
]


cdef bytes cors_origin_key(bytes origin):
    """`scheme://host:port` (lowercase, the default port written out) of an Origin value, or None."""
    cdef Py_ssize_t i = origin.find(b"://")
    cdef bytes scheme, rest, host, port
    cdef Py_ssize_t j
    if i <= 0:
        return None
    scheme = origin[:i].lower()
    rest = origin[i + 3:].lower()
    if scheme != b"http" and scheme != b"https":
        return None
    if rest.startswith(b"["):
        j = rest.find(b"]")
        if j < 0:
            return None
        host = rest[:j + 1]
        port = rest[j + 1:]
    else:
        j = rest.rfind(b":")
        if j < 0:
            host, port = rest, b""
        else:
            host, port = rest[:j], rest[j:]
    if not host or b"/" in host:
        return None
    if port:
        if len(port) < 2 or not port[1:].isdigit():
            return None
        port = port[1:]
    else:
        port = b"443" if scheme == b"https" else b"80"
    return scheme + b"://" + host + b":" + str(int(port)).encode()


cdef class Cors(Policy):
    cdef frozenset exact                 # origin keys (cors_origin_key)
    cdef tuple wildcards                 # (scheme://, suffix such as b".bar.com" or b"", b":port")
    cdef bint any_origin
    cdef tuple regexes
    cdef frozenset methods               # None: `*`
    cdef bytes methods_line
    cdef frozenset headers               # lowercase; None: `*`
    cdef bytes headers_line
    cdef bint credentials
    cdef bytes fixed_lines               # -Credentials and -Expose-Headers, for every allowed answer
    cdef bytes max_age_line
    cdef bint star_origin                # Access-Control-Allow-Origin: * (every origin, no credentials)
    cdef bytes vary_line                 # on actual responses (b"" when nothing depends on Origin)
    cdef bytes preflight_vary

    def __init__(self, str name, str key, exact, wildcards, bint any_origin, regexes, methods, headers,
                 expose, bint credentials, int max_age, config=None):
        Policy.__init__(self, name, "cors", key, config)
        self.phases = PH_REQUEST | PH_RESPONSE | PH_ANSWER
        self.exact = frozenset(exact)
        self.wildcards = tuple(wildcards)
        self.any_origin = any_origin
        self.regexes = tuple(regexes)
        self.credentials = credentials
        self.methods = None if methods == ["*"] else frozenset(m.encode() for m in methods)
        self.methods_line = (b"Access-Control-Allow-Methods: " + ", ".join(methods).encode() + b"\r\n"
                             if methods and (methods != ["*"] or not credentials) else b"")
        self.headers = None if headers == ["*"] else frozenset(h.lower().encode() for h in headers)
        self.headers_line = (b"Access-Control-Allow-Headers: " + ", ".join(headers).encode() + b"\r\n"
                             if headers and (headers != ["*"] or not credentials) else b"")
        self.fixed_lines = ((b"Access-Control-Allow-Credentials: true\r\n" if credentials else b"")
                            + (b"Access-Control-Expose-Headers: " + ", ".join(expose).encode() + b"\r\n"
                               if expose else b""))
        self.max_age_line = b"Access-Control-Max-Age: %d\r\n" % max_age
        self.star_origin = any_origin and not credentials
        self.vary_line = b"" if self.star_origin else b"Vary: Origin\r\n"
        self.preflight_vary = (b"" if self.star_origin else
                               b"Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n")

    def describe(self):
        return "cors"

    cdef bint allowed(self, bytes origin):
        cdef bytes key
        cdef tuple w
        if self.any_origin:
            return True
        key = cors_origin_key(origin)
        if key is not None:
            if key in self.exact:
                return True
            for w in self.wildcards:
                if key.startswith(<bytes>w[0]) and key.endswith(<bytes>w[2]):
                    host = key[len(<bytes>w[0]):len(key) - len(<bytes>w[2])]
                    if len(host) > len(<bytes>w[1]) and host.endswith(<bytes>w[1]) and b":" not in host:
                        return True
        for rx in self.regexes:
            if rx.fullmatch(origin) is not None:
                return True
        return False

    cdef bytes origin_line(self, bytes origin):
        if self.star_origin:
            return b"Access-Control-Allow-Origin: *\r\n"
        return b"Access-Control-Allow-Origin: " + origin + b"\r\n"

    cdef int on_request(self, Exchange ex) except -1:
        cdef MessageHead* h = ex.h
        cdef object origin, method, asked
        cdef bytes lines, name
        if h.method_len != 7 or memcmp(ex.p + h.method, b"OPTIONS", 7) != 0:
            return P_CONTINUE
        origin = ex.header_value(b"origin")
        method = ex.header_value(b"access-control-request-method")
        if origin is None or method is None:
            return P_CONTINUE             # a plain OPTIONS: the upstream's to answer
        method = (<bytes>method).strip()
        if not self.allowed(origin):
            ex.answer_json(403, b"CORS origin not allowed", self.preflight_vary)
            return P_ANSWERED
        if self.methods is not None and method not in _CORS_SAFELISTED_METHODS and method not in self.methods:
            ex.answer_json(403, b"CORS method not allowed", self.preflight_vary)
            return P_ANSWERED
        asked = ex.header_value(b"access-control-request-headers")
        if asked is not None and self.headers is not None:
            for name in (<bytes>asked).split(b","):
                name = name.strip().lower()
                if name and name not in self.headers:
                    ex.answer_json(403, b"CORS header not allowed", self.preflight_vary)
                    return P_ANSWERED
        lines = self.origin_line(origin) + self.fixed_lines
        if self.methods_line:
            lines += self.methods_line
        elif self.methods is None:        # `*` with credentials: the method asked for
            lines += b"Access-Control-Allow-Methods: " + method + b"\r\n"
        if self.headers_line:
            lines += self.headers_line
        elif self.headers is None and asked is not None:
            lines += b"Access-Control-Allow-Headers: " + (<bytes>asked).strip() + b"\r\n"
        ex.answer(204, lines + self.max_age_line + self.preflight_vary, b"", RF_POLICY_ANSWER)
        return P_ANSWERED

    cdef int on_response(self, Exchange ex) except -1:
        cdef object origin = ex.header_value(b"origin")
        cdef list edits = ex.resp_edits_py
        if edits is None:
            edits = ex.resp_edits_py = []
        edits.extend(_CORS_UPSTREAM_DROPS)
        if origin is not None and self.allowed(origin):
            edits.append((b"access-control-allow-origin", self.origin_line(origin) + self.fixed_lines, False))
        if self.vary_line:
            edits.append((b"vary", self.vary_line, False))
        return P_CONTINUE

    cdef bytes on_answer(self, Exchange ex, bytes header_lines):
        cdef MessageHead* h = ex.h
        cdef object origin
        cdef bytes lines = header_lines if header_lines is not None else b""
        if h == NULL:
            return header_lines
        origin = ex.header_value(b"origin")
        if (origin is not None and h.method_len == 7 and memcmp(ex.p + h.method, b"OPTIONS", 7) == 0
                and ex.header_value(b"access-control-request-method") is not None):
            return header_lines           # a preflight: answered by on_request, or refused before it
        if origin is not None and self.allowed(origin):
            lines += self.origin_line(origin) + self.fixed_lines
        if self.vary_line:
            lines += self.vary_line
        return lines
