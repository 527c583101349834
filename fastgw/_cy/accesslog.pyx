# The access log: a native log-phase policy, one per route (and one for exchanges no route took),
# that writes one line per exchange straight from the Exchange's C fields into the worker's
# LineSink (linesink.pyx). No Python object is made per line on the common path: the line is
# JSON-escaped or text-escaped as it is copied into the sink's buffer.
#
# A format is compiled to ops: (literal, field) pairs and a tail. The JSON format is such a list
# too, its literals being the keys: `{"time":` time `,"request_id":` request_id ... `}\n`.

from libc.stdint cimport uint64_t
from libc.string cimport strlen
from cpython.unicode cimport PyUnicode_AsUTF8AndSize

cdef extern from "<time.h>" nogil:
    cdef struct tm:
        int tm_sec
        int tm_min
        int tm_hour
        int tm_mday
        int tm_mon
        int tm_year
    tm* gmtime_r(const time_t* timep, tm* result)
    int CLOCK_REALTIME

cdef extern from "<stdio.h>" nogil:
    int snprintf(char* s, size_t n, const char* fmt, ...)

# The field names, index = field id. fastgw/config/logs.py keeps the same list for validation (a
# unit test holds them equal).
ACCESS_LOG_FIELDS = (
    "time", "request_id", "trace_id", "client_ip", "method", "authority", "path", "query", "uri",
    "protocol", "status", "bytes_received", "bytes_sent", "duration_ms", "upstream_connect_ms",
    "upstream_first_byte_ms", "route", "upstream", "target", "attempts", "flags", "outcome",
    "user_agent", "consumer",
)
# The JSON line: every field but `uri` (path and query are there apart).
ACCESS_LOG_JSON_FIELDS = tuple(f for f in ACCESS_LOG_FIELDS if f != "uri")

cdef enum:
    AF_TIME = 0
    AF_REQUEST_ID
    AF_TRACE_ID
    AF_CLIENT_IP
    AF_METHOD
    AF_AUTHORITY
    AF_PATH
    AF_QUERY
    AF_URI
    AF_PROTOCOL
    AF_STATUS
    AF_BYTES_RECEIVED
    AF_BYTES_SENT
    AF_DURATION
    AF_UPSTREAM_CONNECT
    AF_UPSTREAM_FIRST_BYTE
    AF_ROUTE
    AF_UPSTREAM
    AF_TARGET
    AF_ATTEMPTS
    AF_FLAGS
    AF_OUTCOME
    AF_USER_AGENT
    AF_CONSUMER

    AL_MAX_OPS = 64

    # access_log.query
    AQ_FULL = 0
    AQ_REDACT
    AQ_OMIT


# Response flag codes as C strings, in FLAG_CODES order (the bytes objects are kept alive here).
cdef tuple _FLAG_CODE_BYTES = tuple(code.encode() for _, code in FLAG_CODES)
cdef int _n_flags = len(FLAG_CODES)
cdef int _flag_bit[32]
cdef const char* _flag_code[32]


cdef void _init_flag_table():
    cdef int i
    for i in range(_n_flags):
        _flag_bit[i] = FLAG_CODES[i][0]
        _flag_code[i] = PyBytes_AS_STRING(<bytes>_FLAG_CODE_BYTES[i])


_init_flag_table()


# ---- escaping --------------------------------------------------------------------------------------

cdef inline Py_ssize_t _utf8_len(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """The length of the well-formed UTF-8 sequence at s[i] (RFC 3629's table: no overlongs, no
    surrogates, nothing past U+10FFFF), or 0."""
    cdef unsigned char c = s[i], c1, c2, c3
    if c < 0xC2 or c > 0xF4:
        return 0
    if i + 1 >= n:
        return 0
    c1 = s[i + 1]
    if c < 0xE0:
        return 2 if 0x80 <= c1 <= 0xBF else 0
    if i + 2 >= n:
        return 0
    c2 = s[i + 2]
    if not (0x80 <= c2 <= 0xBF):
        return 0
    if c < 0xF0:
        if c == 0xE0:
            return 3 if 0xA0 <= c1 <= 0xBF else 0
        if c == 0xED:
            return 3 if 0x80 <= c1 <= 0x9F else 0
        return 3 if 0x80 <= c1 <= 0xBF else 0
    if i + 3 >= n:
        return 0
    c3 = s[i + 3]
    if not (0x80 <= c3 <= 0xBF):
        return 0
    if c == 0xF0:
        return 4 if 0x90 <= c1 <= 0xBF else 0
    if c == 0xF4:
        return 4 if 0x80 <= c1 <= 0x8F else 0
    return 4 if 0x80 <= c1 <= 0xBF else 0


cdef int _json_body(WBuf* b, const char* src, Py_ssize_t n) except -1:
    """`src` as the inside of a JSON string. Well-formed UTF-8 is copied; a byte that is not part
    of it is written as \\u00XX (its Latin-1 reading), so the line is always valid UTF-8 JSON
    whatever the client sent."""
    cdef const unsigned char* s = <const unsigned char*>src
    cdef Py_ssize_t i = 0, k
    cdef unsigned char c
    cdef char* o
    wb_reserve(b, n * 6)
    o = b.data + b.len
    while i < n:
        c = s[i]
        if c >= 0x20 and c < 0x7F and c != 34 and c != 92:
            o[0] = <char>c
            o += 1
            i += 1
        elif c == 34 or c == 92:
            o[0] = b'\\'
            o[1] = <char>c
            o += 2
            i += 1
        else:
            k = _utf8_len(s, i, n) if c >= 0x80 else 0
            if k:
                memcpy(o, src + i, k)
                o += k
                i += k
                continue
            o[0] = b'\\'
            o[1] = b'u'
            o[2] = b'0'
            o[3] = b'0'
            o[4] = _HEXDIGITS[c >> 4]
            o[5] = _HEXDIGITS[c & 15]
            o += 6
            i += 1
    b.len = o - b.data
    return 0


cdef int _text_body(WBuf* b, const char* src, Py_ssize_t n) except -1:
    """`src` for a text line, as nginx escapes variables: `"`, `\\`, controls and bytes from 0x7F
    as \\xXX, so a field can neither end the line nor fake a quote."""
    cdef const unsigned char* s = <const unsigned char*>src
    cdef Py_ssize_t i
    cdef unsigned char c
    cdef char* o
    wb_reserve(b, n * 4)
    o = b.data + b.len
    for i in range(n):
        c = s[i]
        if c >= 0x20 and c < 0x7F and c != 34 and c != 92:
            o[0] = <char>c
            o += 1
        else:
            o[0] = b'\\'
            o[1] = b'x'
            o[2] = _HEXDIGITS[c >> 4]
            o[3] = _HEXDIGITS[c & 15]
            o += 4
    b.len = o - b.data
    return 0


cdef inline int _str_field(WBuf* b, const char* s, Py_ssize_t n, bint json) except -1:
    if json:
        wb_put(b, b'"', 1)
        _json_body(b, s, n)
        return wb_put(b, b'"', 1)
    if n == 0:
        return wb_put(b, b"-", 1)
    return _text_body(b, s, n)


cdef inline int _null(WBuf* b, bint json) except -1:
    if json:
        return wb_put(b, b"null", 4)
    return wb_put(b, b"-", 1)


cdef int _unicode_field(WBuf* b, str s, bint json) except -1:
    cdef Py_ssize_t n
    cdef const char* u
    if s is None:
        return _null(b, json)
    u = PyUnicode_AsUTF8AndSize(s, &n)     # cached in the str: no copy after the first time
    return _str_field(b, u, n, json)


cdef int _ms(WBuf* b, double seconds) except -1:
    """Milliseconds with three decimals (microseconds)."""
    cdef int64_t us = <int64_t>(seconds * 1e6 + 0.5)
    cdef char frac[3]
    if us < 0:
        us = 0
    wb_put_int(b, us // 1000)
    us %= 1000
    frac[0] = <char>(48 + us // 100)
    frac[1] = <char>(48 + (us // 10) % 10)
    frac[2] = <char>(48 + us % 10)
    wb_put(b, b".", 1)
    return wb_put(b, frac, 3)


cdef int _flags(WBuf* b, int flags, bint json) except -1:
    """JSON: ["UF","DC"]; text: UF,DC, or - for none."""
    cdef int i
    cdef bint first = True
    if json:
        wb_put(b, b"[", 1)
    for i in range(_n_flags):
        if flags & _flag_bit[i]:
            if not first:
                wb_put(b, b",", 1)
            if json:
                wb_put(b, b'"', 1)
            wb_put(b, _flag_code[i], strlen(_flag_code[i]))
            if json:
                wb_put(b, b'"', 1)
            first = False
    if json:
        return wb_put(b, b"]", 1)
    return wb_put(b, b"-", 1) if first else 0


# RFC 3339 UTC with milliseconds: the part up to the seconds is formatted once a second.
cdef time_t _time_sec = -1
cdef char _time_prefix[32]
cdef int _time_prefix_len = 0


cdef int _time(WBuf* b, bint json) except -1:
    global _time_sec, _time_prefix_len
    cdef timespec ts
    cdef tm t
    cdef char frac[4]
    cdef int ms
    clock_gettime(CLOCK_REALTIME, &ts)
    if ts.tv_sec != _time_sec:
        gmtime_r(&ts.tv_sec, &t)
        _time_prefix_len = snprintf(_time_prefix, 32, "%04d-%02d-%02dT%02d:%02d:%02d.", t.tm_year + 1900,
                                    t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)
        _time_sec = ts.tv_sec
    ms = ts.tv_nsec // 1000000
    frac[0] = <char>(48 + ms // 100)
    frac[1] = <char>(48 + (ms // 10) % 10)
    frac[2] = <char>(48 + ms % 10)
    frac[3] = b'Z'
    if json:
        wb_put(b, b'"', 1)
    wb_put(b, _time_prefix, _time_prefix_len)
    wb_put(b, frac, 4)
    if json:
        wb_put(b, b'"', 1)
    return 0


# ---- the policy --------------------------------------------------------------------------------------

cdef class AccessLogPolicy(Policy):
    """Writes the access line of every exchange its chain logs (a route's, or the no-route chain)."""
    cdef readonly bint json
    cdef readonly double sample
    cdef int query_mode
    cdef tuple redact                  # bytes names whose values are redacted (empty: every value)
    cdef tuple lits                    # ops: lits[i] is written before field fields[i]
    cdef int fields[AL_MAX_OPS]
    cdef int nops
    cdef bytes tail
    cdef uint64_t rng

    def __init__(self, str key, bint json, ops, bytes tail, double sample, str query, redact=(),
                 config=None):
        """ops: [(literal bytes, field name)], the format compiled by fastgw/accesslog.py."""
        cdef int i
        Policy.__init__(self, "access_log", "access_log", key, config)
        self.phases = PH_LOG
        self.json = json
        if len(ops) > AL_MAX_OPS:
            raise ValueError(f"an access log format has at most {AL_MAX_OPS} fields")
        self.lits = tuple(lit for lit, _ in ops)
        for i, (_, name) in enumerate(ops):
            self.fields[i] = ACCESS_LOG_FIELDS.index(name)
        self.nops = len(ops)
        self.tail = tail
        self.sample = sample
        self.query_mode = {"full": AQ_FULL, "redact": AQ_REDACT, "omit": AQ_OMIT}[query]
        self.redact = tuple(n.encode() for n in redact)
        self.rng = int.from_bytes(os.urandom(8), "little") | 1

    def describe(self):
        return f"access log ({'json' if self.json else 'text'}, sample {self.sample:g})"

    cdef bint _sampled_out(self):
        cdef uint64_t x
        if self.sample >= 1.0:
            return False
        x = self.rng                  # xorshift64: a cheap, good enough coin per exchange
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        self.rng = x
        return (x >> 11) * (1.0 / 9007199254740992.0) >= self.sample

    cdef int on_log(self, Exchange ex) except -1:
        cdef object sink_obj = ex.worker.access_log
        cdef LineSink sink
        cdef WBuf* b
        cdef Py_ssize_t i
        cdef bytes lit
        if sink_obj is None or self._sampled_out():
            return 0
        sink = <LineSink>sink_obj
        b = sink.begin_line()
        if b == NULL:
            return 0
        for i in range(self.nops):
            lit = <bytes>self.lits[i]
            wb_put(b, PyBytes_AS_STRING(lit), PyBytes_GET_SIZE(lit))
            self._field(b, self.fields[i], ex)
        wb_put(b, PyBytes_AS_STRING(self.tail), PyBytes_GET_SIZE(self.tail))
        sink.end_line()
        return 0

    cdef int _field(self, WBuf* b, int f, Exchange ex) except -1:
        cdef bint json = self.json
        cdef MessageHead* h = ex.h
        cdef const char* p = ex.p
        cdef bint has_request = h != NULL and ex.outcome != OC_REFUSED
        cdef int i
        cdef char trace_hex_buf[32]
        if f == AF_TIME:
            return _time(b, json)
        if f == AF_REQUEST_ID:
            if ex.request_id is None:
                return _null(b, json)
            return _str_field(b, PyBytes_AS_STRING(ex.request_id), PyBytes_GET_SIZE(ex.request_id), json)
        if f == AF_TRACE_ID:
            if not has_request:
                return _null(b, json)
            if ex.tc.trace_hi | ex.tc.trace_lo:     # traced: hex straight from the ids, no str made
                _hex16(trace_hex_buf, ex.tc.trace_hi)
                _hex16(trace_hex_buf + 16, ex.tc.trace_lo)
                return _str_field(b, trace_hex_buf, 32, json)
            return _unicode_field(b, ex._incoming_trace_id(), json)
        if f == AF_CLIENT_IP:
            return _str_field(b, PyBytes_AS_STRING(ex.client_addr), PyBytes_GET_SIZE(ex.client_addr), json)
        if f == AF_STATUS:
            return wb_put_int(b, ex.status)
        if f == AF_BYTES_RECEIVED:
            return wb_put_int(b, ex.bytes_in)
        if f == AF_BYTES_SENT:
            return wb_put_int(b, ex.bytes_out)
        if f == AF_DURATION:
            return _ms(b, ex.t_done - ex.t_head)
        if f == AF_UPSTREAM_CONNECT:
            return _ms(b, ex.t_connected - ex.t_head) if ex.t_connected else _null(b, json)
        if f == AF_UPSTREAM_FIRST_BYTE:
            return _ms(b, ex.t_first_byte - ex.t_head) if ex.t_first_byte else _null(b, json)
        if f == AF_ROUTE:
            return _unicode_field(b, ex.route.name if ex.route is not None else None, json)
        if f == AF_UPSTREAM:
            return _unicode_field(b, ex.group.name if ex.group is not None else None, json)
        if f == AF_TARGET:
            return _unicode_field(b, ex.target.address if ex.target is not None else None, json)
        if f == AF_ATTEMPTS:
            return wb_put_int(b, (2 if ex.retried else 1) if ex.up_head is not None else 0)
        if f == AF_FLAGS:
            return _flags(b, ex.flags, json)
        if f == AF_OUTCOME:
            return _unicode_field(b, <str>OUTCOME_NAMES[ex.outcome], json)
        if f == AF_CONSUMER:
            if ex.consumer_name is None:
                return _null(b, json)
            return _str_field(b, PyBytes_AS_STRING(ex.consumer_name), PyBytes_GET_SIZE(ex.consumer_name), json)
        # the rest are the request's own bytes: none for a head the parser refused
        if not has_request:
            return _null(b, json)
        if f == AF_METHOD:
            return _str_field(b, p + h.method, h.method_len, json)
        if f == AF_AUTHORITY:
            if h.authority >= 0:
                return _str_field(b, p + h.authority, h.authority_len, json)
            if h.has_host:
                return _str_field(b, p + h.host, h.host_len, json)
            return _null(b, json)
        if f == AF_PATH:
            return _str_field(b, p + h.target, h.path_len, json)
        if f == AF_QUERY:
            if self.query_mode == AQ_OMIT or h.path_len >= h.target_len:
                return _null(b, json)
            if json:
                wb_put(b, b'"', 1)
            self._query(b, p + h.target + h.path_len + 1, h.target_len - h.path_len - 1, json)
            return wb_put(b, b'"', 1) if json else 0
        if f == AF_URI:
            if json:
                wb_put(b, b'"', 1)
                _json_body(b, p + h.target, h.path_len)
            else:
                _text_body(b, p + h.target, h.path_len)
            if self.query_mode != AQ_OMIT and h.path_len < h.target_len:
                wb_put(b, b"?", 1)
                self._query(b, p + h.target + h.path_len + 1, h.target_len - h.path_len - 1, json)
            return wb_put(b, b'"', 1) if json else 0
        if f == AF_PROTOCOL:
            if ex.down.h2:
                return _str_field(b, b"HTTP/2.0", 8, json)
            return _str_field(b, b"HTTP/1.0" if h.version_minor == 0 else b"HTTP/1.1", 8, json)
        if f == AF_USER_AGENT:
            for i in range(h.nfields):
                if h.fields[i].name_len == 10 and _ci_eq(p + h.fields[i].name, 10, b"user-agent", 10):
                    return _str_field(b, p + h.fields[i].value, h.fields[i].value_len, json)
            return _null(b, json)
        return _null(b, json)

    cdef int _query(self, WBuf* b, const char* q, Py_ssize_t n, bint json) except -1:
        """The query, with the values of the redacted parameters (all, when none is named) as
        `REDACTED`. Names are compared as written, not percent-decoded."""
        cdef Py_ssize_t i = 0, start, eq, end
        if self.query_mode == AQ_FULL:
            return _json_body(b, q, n) if json else _text_body(b, q, n)
        while i <= n:
            start = i
            end = start
            while end < n and q[end] != b'&':
                end += 1
            eq = start
            while eq < end and q[eq] != b'=':
                eq += 1
            if start > 0:
                wb_put(b, b"&", 1)
            if eq < end and self._redacted(q + start, eq - start):
                _json_body(b, q + start, eq - start + 1) if json else _text_body(b, q + start, eq - start + 1)
                wb_put(b, b"REDACTED", 8)
            elif json:
                _json_body(b, q + start, end - start)
            else:
                _text_body(b, q + start, end - start)
            i = end + 1
        return 0

    cdef bint _redacted(self, const char* name, Py_ssize_t n):
        cdef bytes r
        if not self.redact:
            return True
        for r in self.redact:
            if PyBytes_GET_SIZE(r) == n and memcmp(PyBytes_AS_STRING(r), name, n) == 0:
                return True
        return False

