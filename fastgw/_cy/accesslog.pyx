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
    "user_agent", "consumer", "attempt_targets", "attempt_results", "attempt_ms",
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
    AF_ATTEMPT_TARGETS        # attempts.pyx: each attempt's target, result, duration
    AF_ATTEMPT_RESULTS
    AF_ATTEMPT_MS

    AL_MAX_OPS = 64
    AL_TARGET_SLOTS = 4       # a power of two

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


# Bytes copied as they are into both line formats: printable ASCII but `"` and `\\`.
cdef unsigned char _PLAIN[256]


cdef void _init_plain():
    cdef int c
    for c in range(256):
        _PLAIN[c] = 1 if 0x20 <= c < 0x7F and c != 34 and c != 92 else 0


_init_plain()


cdef inline void _copy(char* d, const char* s, Py_ssize_t n) noexcept nogil:
    """memcpy for the short runs of a line (keys, literals, names): fixed-size moves that the
    compiler inlines, overlapping when n is not a power of two, instead of a call into libc."""
    if n > 32:
        memcpy(d, s, n)
    elif n >= 16:
        memcpy(d, s, 16)
        memcpy(d + n - 16, s + n - 16, 16)
    elif n >= 8:
        memcpy(d, s, 8)
        memcpy(d + n - 8, s + n - 8, 8)
    elif n >= 4:
        memcpy(d, s, 4)
        memcpy(d + n - 4, s + n - 4, 4)
    elif n > 0:
        d[0] = s[0]
        d[n >> 1] = s[n >> 1]
        d[n - 1] = s[n - 1]


cdef inline int _lit(WBuf* b, const char* s, Py_ssize_t n) except -1:
    if b.len + n > b.cap:
        wb_reserve(b, n)
    _copy(b.data + b.len, s, n)
    b.len += n
    return 0


cdef inline Py_ssize_t _plain_copy(char* o, const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """Copies the bytes of s that need no escaping, up to the first that does: how many."""
    cdef Py_ssize_t i = 0
    while i < n and _PLAIN[s[i]]:
        o[i] = <char>s[i]
        i += 1
    return i


cdef int _json_str(WBuf* b, const char* src, Py_ssize_t n) except -1:
    """`src` as a JSON string, quotes included: copied in one pass when nothing needs escaping
    (the usual case), else by _json_body from the first byte that does."""
    cdef Py_ssize_t i
    if b.len + n + 2 > b.cap:
        wb_reserve(b, n + 2)
    b.data[b.len] = b'"'
    i = _plain_copy(b.data + b.len + 1, <const unsigned char*>src, n)
    b.len += 1 + i
    if i < n:
        _json_body(b, src + i, n - i)
        if b.len + 1 > b.cap:
            wb_reserve(b, 1)
    b.data[b.len] = b'"'
    b.len += 1
    return 0


cdef int _text_str(WBuf* b, const char* src, Py_ssize_t n) except -1:
    cdef Py_ssize_t i
    if b.len + n > b.cap:
        wb_reserve(b, n)
    i = _plain_copy(b.data + b.len, <const unsigned char*>src, n)
    b.len += i
    if i < n:
        _text_body(b, src + i, n - i)
    return 0


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
        return _json_str(b, s, n)
    if n == 0:
        return _lit(b, b"-", 1)
    return _text_str(b, s, n)


cdef inline int _null(WBuf* b, bint json) except -1:
    if json:
        return _lit(b, b"null", 4)
    return _lit(b, b"-", 1)


cdef int _unicode_field(WBuf* b, str s, bint json) except -1:
    cdef Py_ssize_t n
    cdef const char* u
    if s is None:
        return _null(b, json)
    u = PyUnicode_AsUTF8AndSize(s, &n)     # cached in the str: no copy after the first time
    return _str_field(b, u, n, json)


cdef inline int _utoa(char* o, uint64_t v) noexcept nogil:
    """v in decimal at o (room for 20 digits): how many digits."""
    cdef char tmp[20]
    cdef int i = 20, n
    if v < 10:
        o[0] = <char>(48 + v)
        return 1
    if v < 100:
        o[0] = <char>(48 + v // 10)
        o[1] = <char>(48 + v % 10)
        return 2
    while v:
        i -= 1
        tmp[i] = <char>(48 + v % 10)
        v //= 10
    n = 20 - i
    _copy(o, tmp + i, n)
    return n


cdef inline int _num(WBuf* b, int64_t v) except -1:
    if v < 0:
        return wb_put_int(b, v)
    if b.len + 20 > b.cap:
        wb_reserve(b, 20)
    b.len += _utoa(b.data + b.len, <uint64_t>v)
    return 0


cdef int _ms(WBuf* b, double seconds) except -1:
    """Milliseconds with three decimals (microseconds)."""
    cdef int64_t us = <int64_t>(seconds * 1e6 + 0.5)
    cdef char* o
    cdef int n
    if us < 0:
        us = 0
    if b.len + 24 > b.cap:
        wb_reserve(b, 24)
    o = b.data + b.len
    n = _utoa(o, <uint64_t>(us // 1000))
    us %= 1000
    o[n] = b'.'
    o[n + 1] = <char>(48 + us // 100)
    o[n + 2] = <char>(48 + (us // 10) % 10)
    o[n + 3] = <char>(48 + us % 10)
    b.len += n + 4
    return 0


cdef int _flags(WBuf* b, int flags, bint json) except -1:
    """JSON: ["UF","DC"]; text: UF,DC, or - for none."""
    cdef int i
    cdef bint first = True
    if flags == 0:
        return _lit(b, b"[]", 2) if json else _lit(b, b"-", 1)
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
    cdef char* o
    cdef int ms
    clock_gettime(CLOCK_REALTIME, &ts)
    if ts.tv_sec != _time_sec:
        gmtime_r(&ts.tv_sec, &t)
        _time_prefix_len = snprintf(_time_prefix, 32, "%04d-%02d-%02dT%02d:%02d:%02d.", t.tm_year + 1900,
                                    t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)
        _time_sec = ts.tv_sec
    ms = ts.tv_nsec // 1000000
    if b.len + _time_prefix_len + 6 > b.cap:
        wb_reserve(b, _time_prefix_len + 6)
    o = b.data + b.len
    if json:
        o[0] = b'"'
        o += 1
    _copy(o, _time_prefix, _time_prefix_len)
    o += _time_prefix_len
    o[0] = <char>(48 + ms // 100)
    o[1] = <char>(48 + (ms // 10) % 10)
    o[2] = <char>(48 + ms % 10)
    o[3] = b'Z'
    o += 4
    if json:
        o[0] = b'"'
        o += 1
    b.len = o - b.data
    return 0


cdef inline int _stream_key(WBuf* b, bytes key, bint json) except -1:
    """`,"key":` (JSON) or ` key=` (text) before a stream line's field."""
    if json:
        wb_put(b, b',"', 2)
        wb_put(b, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
        return wb_put(b, b'":', 2)
    wb_put(b, b" ", 1)
    wb_put(b, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
    return wb_put(b, b"=", 1)


# ---- the policy --------------------------------------------------------------------------------------

cdef struct ALOp:
    Py_ssize_t lit_off       # the literal written before the field, in AccessLogPolicy.litbuf
    Py_ssize_t lit_len
    int field


cdef bytes _render(str s, bint json):
    """A name as its whole field (quoted and escaped, or null / -): made once per name, see
    AccessLogPolicy._cached."""
    cdef WBuf tmp
    cdef bytes out
    wb_init(&tmp, 64)
    try:
        _unicode_field(&tmp, s, json)
        out = wb_bytes(&tmp)
    finally:
        wb_free(&tmp)
    return out


cdef class AccessLogPolicy(Policy):
    """Writes the access line of every exchange its chain logs (a route's, or the no-route chain)."""
    cdef readonly bint json
    cdef readonly double sample
    cdef int query_mode
    cdef tuple redact                  # bytes names whose values are redacted (empty: every value)
    cdef bytes litbuf                  # the format's literals (keys), end to end, and the tail
    cdef ALOp ops[AL_MAX_OPS]
    cdef int nops
    cdef Py_ssize_t tail_off
    cdef Py_ssize_t tail_len
    cdef tuple outcomes                # the outcome field, rendered, by OC_* value
    # The last route, upstream and target seen, by identity, with their fields rendered: names come
    # from config objects, so an exchange mostly meets the one it met before (a route's chain: always
    # its route). A miss renders the name (one bytes object) and keeps it.
    cdef object c_route
    cdef bytes r_route
    cdef object c_group
    cdef bytes r_group
    cdef list c_targets                # [object, rendered] * AL_TARGET_SLOTS, by address bits
    cdef uint64_t rng

    def __init__(self, str key, bint json, ops, bytes tail, double sample, str query, redact=(),
                 config=None):
        """ops: [(literal bytes, field name)], the format compiled by fastgw/accesslog.py."""
        cdef int i
        cdef Py_ssize_t off = 0
        cdef bytes lit
        Policy.__init__(self, "access_log", "access_log", key, config)
        self.phases = PH_LOG
        self.json = json
        if len(ops) > AL_MAX_OPS:
            raise ValueError(f"an access log format has at most {AL_MAX_OPS} fields")
        for i, (lit, name) in enumerate(ops):
            self.ops[i].lit_off = off
            self.ops[i].lit_len = len(lit)
            self.ops[i].field = ACCESS_LOG_FIELDS.index(name)
            off += len(lit)
        self.nops = len(ops)
        self.tail_off = off
        self.tail_len = len(tail)
        self.litbuf = b"".join([lit for lit, _ in ops]) + tail
        self.outcomes = tuple(_render(name, json) for name in OUTCOME_NAMES)
        self.c_targets = [None] * (2 * AL_TARGET_SLOTS)
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
        cdef const char* lits
        cdef ALOp* op
        cdef bint has_request
        if sink_obj is None or self._sampled_out():
            return 0
        sink = <LineSink>sink_obj
        b = sink.begin_line()
        if b == NULL:
            return 0
        lits = PyBytes_AS_STRING(self.litbuf)
        has_request = ex.h != NULL and ex.outcome != OC_REFUSED
        for i in range(self.nops):
            op = &self.ops[i]
            _lit(b, lits + op.lit_off, op.lit_len)
            self._field(b, op.field, ex, has_request)
        _lit(b, lits + self.tail_off, self.tail_len)
        sink.end_line()
        return 0

    cdef inline int _put_rendered(self, WBuf* b, bytes r) except -1:
        return _lit(b, PyBytes_AS_STRING(r), PyBytes_GET_SIZE(r))

    cdef int _target(self, WBuf* b, object target) except -1:
        cdef Py_ssize_t slot = 2 * ((<size_t><void*>target >> 6) & (AL_TARGET_SLOTS - 1))
        cdef list c = self.c_targets
        cdef bytes r
        if c[slot] is not target:
            r = _render((<Target>target).address, self.json)
            c[slot] = target
            c[slot + 1] = r
        return self._put_rendered(b, <bytes>c[slot + 1])

    cdef int _field(self, WBuf* b, int f, Exchange ex, bint has_request) except -1:
        # one if/elif chain on f: Cython makes it a C switch
        cdef bint json = self.json
        cdef char trace_hex_buf[32]
        if f == AF_TIME:
            return _time(b, json)
        elif f == AF_REQUEST_ID:
            if ex.request_id is None:
                return _null(b, json)
            return _str_field(b, PyBytes_AS_STRING(ex.request_id), PyBytes_GET_SIZE(ex.request_id), json)
        elif f == AF_TRACE_ID:
            if not has_request:
                return _null(b, json)
            if ex.tc.trace_hi | ex.tc.trace_lo:     # traced: hex straight from the ids, no str made
                _hex16(trace_hex_buf, ex.tc.trace_hi)
                _hex16(trace_hex_buf + 16, ex.tc.trace_lo)
                return _str_field(b, trace_hex_buf, 32, json)
            return _unicode_field(b, ex._incoming_trace_id(), json)
        elif f == AF_CLIENT_IP:
            return _str_field(b, PyBytes_AS_STRING(ex.client_addr), PyBytes_GET_SIZE(ex.client_addr), json)
        elif f == AF_STATUS:
            return _num(b, ex.status)
        elif f == AF_BYTES_RECEIVED:
            return _num(b, ex.bytes_in)
        elif f == AF_BYTES_SENT:
            return _num(b, ex.bytes_out)
        elif f == AF_DURATION:
            return _ms(b, ex.t_done - ex.t_head)
        elif f == AF_UPSTREAM_CONNECT:
            return _ms(b, ex.t_connected - ex.t_head) if ex.t_connected else _null(b, json)
        elif f == AF_UPSTREAM_FIRST_BYTE:
            return _ms(b, ex.t_first_byte - ex.t_head) if ex.t_first_byte else _null(b, json)
        elif f == AF_ROUTE:
            if ex.route is None:
                return _null(b, json)
            if ex.route is not self.c_route:
                self.r_route = _render(ex.route.name, json)
                self.c_route = ex.route
            return self._put_rendered(b, self.r_route)
        elif f == AF_UPSTREAM:
            if ex.group is None:
                return _null(b, json)
            if ex.group is not self.c_group:
                self.r_group = _render(ex.group.name, json)
                self.c_group = ex.group
            return self._put_rendered(b, self.r_group)
        elif f == AF_TARGET:
            if ex.target is None:
                return _null(b, json)
            return self._target(b, ex.target)
        elif f == AF_ATTEMPTS:
            return _num(b, (1 + ex.resends) if ex.up_head is not None else 0)
        elif f == AF_FLAGS:
            return _flags(b, ex.flags, json)
        elif f == AF_OUTCOME:
            return self._put_rendered(b, <bytes>self.outcomes[ex.outcome])
        elif f == AF_CONSUMER:
            if ex.consumer_name is None:
                return _null(b, json)
            return _str_field(b, PyBytes_AS_STRING(ex.consumer_name), PyBytes_GET_SIZE(ex.consumer_name), json)
        elif f == AF_ATTEMPT_TARGETS or f == AF_ATTEMPT_RESULTS or f == AF_ATTEMPT_MS:
            return self._attempts(b, f, ex)
        return self._request_field(b, f, ex, has_request)

    cdef int _attempts(self, WBuf* b, int f, Exchange ex) except -1:
        """A list over the exchange's attempts (attempts.pyx): JSON ["a","b"] / [1.5,2.0], text
        a,b (- for none)."""
        cdef bint json = self.json
        cdef int k
        cdef Target t
        if ex.n_att == 0:
            return _lit(b, b"[]", 2) if json else _lit(b, b"-", 1)
        if json:
            _lit(b, b"[", 1)
        for k in range(ex.n_att):
            if k:
                _lit(b, b",", 1)
            if f == AF_ATTEMPT_TARGETS:
                t = attempt_target(ex, k)
                if t is None:
                    _null(b, json)
                else:
                    self._target(b, t)
            elif f == AF_ATTEMPT_RESULTS:
                attempt_result_field(b, ex.att[k].result, json)
            else:
                _ms(b, attempt_seconds(ex, k))
        return _lit(b, b"]", 1) if json else 0

    cdef int _request_field(self, WBuf* b, int f, Exchange ex, bint has_request) except -1:
        """The fields that are the request's own bytes: none for a head the parser refused."""
        cdef bint json = self.json
        cdef MessageHead* h = ex.h
        cdef const char* p = ex.p
        cdef int i
        if not has_request:
            return _null(b, json)
        if f == AF_METHOD:
            return _str_field(b, p + h.method, h.method_len, json)
        elif f == AF_AUTHORITY:
            if h.authority >= 0:
                return _str_field(b, p + h.authority, h.authority_len, json)
            if h.has_host:
                return _str_field(b, p + h.host, h.host_len, json)
            return _null(b, json)
        elif f == AF_PATH:
            return _str_field(b, p + h.target, h.path_len, json)
        elif f == AF_QUERY:
            if self.query_mode == AQ_OMIT or h.path_len >= h.target_len:
                return _null(b, json)
            if json:
                wb_put(b, b'"', 1)
            self._query(b, p + h.target + h.path_len + 1, h.target_len - h.path_len - 1, json)
            return wb_put(b, b'"', 1) if json else 0
        elif f == AF_URI:
            if json:
                wb_put(b, b'"', 1)
                _json_body(b, p + h.target, h.path_len)
            else:
                _text_body(b, p + h.target, h.path_len)
            if self.query_mode != AQ_OMIT and h.path_len < h.target_len:
                wb_put(b, b"?", 1)
                self._query(b, p + h.target + h.path_len + 1, h.target_len - h.path_len - 1, json)
            return wb_put(b, b'"', 1) if json else 0
        elif f == AF_PROTOCOL:
            if ex.down.h2:
                return _lit(b, b'"HTTP/2.0"', 10) if json else _lit(b, b"HTTP/2.0", 8)
            if json:
                return _lit(b, b'"HTTP/1.0"' if h.version_minor == 0 else b'"HTTP/1.1"', 10)
            return _lit(b, b"HTTP/1.0" if h.version_minor == 0 else b"HTTP/1.1", 8)
        elif f == AF_USER_AGENT:
            for i in range(h.nfields):
                if h.fields[i].name_len == 10 and _ci_eq(p + h.fields[i].name, 10, b"user-agent", 10):
                    return _str_field(b, p + h.fields[i].value, h.fields[i].value_len, json)
            return _null(b, json)
        return _null(b, json)

    cdef int on_stream(self, Tunnel t) except -1:
        """The line of a stream connection (tcp, tls-passthrough, tls), written when it ends. It
        has no Exchange, so it has its own fixed fields (docs/tunnels.md#access-log); the text
        template is HTTP's and does not apply: a text line is `key=value` pairs."""
        cdef object sink_obj = t.worker.access_log
        cdef LineSink sink
        cdef WBuf* b
        cdef bint json = self.json
        cdef double now = monotonic()
        if sink_obj is None or self._sampled_out():
            return 0
        sink = <LineSink>sink_obj
        b = sink.begin_line()
        if b == NULL:
            return 0
        wb_put(b, b'{"time":' if json else b"time=", 8 if json else 5)
        _time(b, json)
        _stream_key(b, b"kind", json)
        _str_field(b, b"stream", 6, json)
        _stream_key(b, b"protocol", json)
        _unicode_field(b, t.kind, json)
        _stream_key(b, b"client_ip", json)
        _str_field(b, PyBytes_AS_STRING(t.client_addr), PyBytes_GET_SIZE(t.client_addr), json) \
            if t.client_addr is not None else _null(b, json)
        _stream_key(b, b"client_port", json)
        wb_put_int(b, t.client_port)
        _stream_key(b, b"listener", json)
        _unicode_field(b, t.listener_name, json)
        _stream_key(b, b"sni", json)
        if t.sni is not None:
            _str_field(b, PyBytes_AS_STRING(t.sni), PyBytes_GET_SIZE(t.sni), json)
        else:
            _null(b, json)
        _stream_key(b, b"route", json)
        _unicode_field(b, t.route.name if t.route is not None else None, json)
        _stream_key(b, b"upstream", json)
        _unicode_field(b, t.group.name if t.group is not None else None, json)
        _stream_key(b, b"target", json)
        _unicode_field(b, t.target.address if t.target is not None else None, json)
        _stream_key(b, b"bytes_received", json)
        wb_put_int(b, t.down.nbytes)
        _stream_key(b, b"bytes_sent", json)
        wb_put_int(b, t.up.nbytes)
        _stream_key(b, b"duration_ms", json)
        _ms(b, now - t.t_accept)
        _stream_key(b, b"upstream_connect_ms", json)
        _ms(b, t.t_connected - t.t_accept) if t.t_connected else _null(b, json)
        _stream_key(b, b"termination", json)
        _unicode_field(b, <str>TERMINATION_NAMES[t.termination] or None, json)
        _stream_key(b, b"flags", json)
        _flags(b, t.flags, json)
        wb_put(b, b"}\n" if json else b"\n", 2 if json else 1)
        sink.end_line()
        return 0

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

