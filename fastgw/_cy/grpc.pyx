# gRPC on the request path (docs/grpc.md): the gateway's own answers to a gRPC request are
# trailers-only responses (HTTP 200, `content-type: application/grpc`, `grpc-status`, `grpc-message`)
# with the status mapped from the HTTP status the gateway would have answered with. One table, used by
# Exchange's answer path (send_error, policy answers); a downstream serializes the header lines as it
# serializes any answer (HTTP/1.1: header fields of a 200 with no body; HTTP/2: one HEADERS frame).

# gRPC status codes (grpc/doc/statuscodes.md)
cdef enum:
    GRPC_OK = 0
    GRPC_UNKNOWN = 2
    GRPC_DEADLINE_EXCEEDED = 4
    GRPC_PERMISSION_DENIED = 7
    GRPC_RESOURCE_EXHAUSTED = 8
    GRPC_UNIMPLEMENTED = 12
    GRPC_INTERNAL = 13
    GRPC_UNAVAILABLE = 14
    GRPC_UNAUTHENTICATED = 16


cdef int grpc_status_for(int http_status) noexcept nogil:
    """The gRPC status of a gateway answer with this HTTP status: no route 12, unavailable upstream
    (502, 503) 14, timeouts (504, 408) 4, rate limited and too large (429, 413) 8, 401 16, 403 7, other
    4xx 13 (INTERNAL, as gRPC's own HTTP mapping), else 2."""
    if http_status == 404 or http_status == 405 or http_status == 501:
        return GRPC_UNIMPLEMENTED
    if http_status == 502 or http_status == 503:
        return GRPC_UNAVAILABLE
    if http_status == 504 or http_status == 408:
        return GRPC_DEADLINE_EXCEEDED
    if http_status == 429 or http_status == 413 or http_status == 431:
        return GRPC_RESOURCE_EXHAUSTED
    if http_status == 401:
        return GRPC_UNAUTHENTICATED
    if http_status == 403:
        return GRPC_PERMISSION_DENIED
    if 400 <= http_status < 500:
        return GRPC_INTERNAL
    return GRPC_UNKNOWN


cdef bint grpc_request(Exchange ex):
    """The request's content-type is application/grpc or application/grpc+... (a gRPC call)."""
    cdef object ct
    cdef bytes v
    if ex.h == NULL or ex.outcome == OC_REFUSED:
        return False
    ct = _field_value(ex.h, ex.p, b"content-type")
    if ct is None:
        return False
    v = (<bytes>ct)[:17].lower()
    return v == b"application/grpc" or (v.startswith(b"application/grpc") and v[16:17] in (b"+", b";"))


cdef bytes _grpc_percent(bytes msg):
    """grpc-message's percent-encoding: bytes outside 0x20-0x7E, and '%'."""
    cdef list out = []
    cdef int c
    for c in msg:
        if c < 0x20 or c > 0x7e or c == 0x25:
            out.append(b"%%%02X" % c)
        else:
            out.append(bytes((c,)))
    return b"".join(out)


cdef bytes grpc_answer_lines(int http_status, bytes message, bytes extra_lines):
    """The header lines of the trailers-only answer for `http_status` (whole "Name: value\\r\\n"
    lines; the HTTP status of the answer itself is 200). `extra_lines`: a policy's own fields
    (Retry-After, WWW-Authenticate ...) kept, its Content-Type and Content-Length left out."""
    cdef bytes out = b"Content-Type: application/grpc\r\nGrpc-Status: %d\r\n" % grpc_status_for(http_status)
    if message:
        out += b"Grpc-Message: " + _grpc_percent(message) + b"\r\n"
    if extra_lines:
        for line in extra_lines.split(b"\r\n"):
            if line and not line.lower().startswith((b"content-type:", b"content-length:")):
                out += line + b"\r\n"
    return out


def grpc_status_of_http(int http_status):
    """grpc_status_for, for tests and the HTTP/2 downstream's Python side."""
    return grpc_status_for(http_status)


def grpc_timeout_of(bytes value):
    """grpc_timeout_seconds (h2upstream.pyx): a `grpc-timeout` value in seconds, 0.0 if malformed."""
    return grpc_timeout_seconds(value)
