# Strict HTTP/1.1 message heads and body framing (RFC 9112), for requests from clients and responses
# from upstreams. One validating pass over the raw bytes, no Python objects: the result is offsets
# into the caller's buffer. Anything RFC 9112 calls invalid or ambiguous is an error with the status
# to answer; nothing is repaired, because a proxy that repairs framing is a proxy that can be smuggled
# through.

from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport malloc, free, realloc
from libc.string cimport memcpy, memchr, memcmp
from cpython.bytes cimport PyBytes_FromStringAndSize


cdef struct HeaderField:
    Py_ssize_t name
    Py_ssize_t name_len
    Py_ssize_t value
    Py_ssize_t value_len
    int kind


cdef struct HeadLimits:
    Py_ssize_t max_request_line
    Py_ssize_t max_head_bytes
    int max_headers
    bint drop_underscores


cdef struct MessageHead:
    # request line
    Py_ssize_t method
    Py_ssize_t method_len
    Py_ssize_t target
    Py_ssize_t target_len
    Py_ssize_t path_len              # target up to '?'
    Py_ssize_t authority             # absolute-form: the authority in the target, else -1
    Py_ssize_t authority_len
    Py_ssize_t authority_name_len    # without ":port"
    int version_minor
    bint is_head_method
    # status line
    int status
    Py_ssize_t reason
    Py_ssize_t reason_len
    # fields
    HeaderField* fields
    int nfields
    int fields_cap
    int64_t content_length
    int framing
    bint conn_close
    bint conn_keep_alive
    bint expect_continue
    bint has_host
    Py_ssize_t host                  # Host field value
    Py_ssize_t host_len
    Py_ssize_t host_name_len         # without ":port"
    Py_ssize_t conn_tokens[MAX_CONNECTION_TOKENS]
    Py_ssize_t conn_token_lens[MAX_CONNECTION_TOKENS]
    int nconn_tokens
    Py_ssize_t request_id
    Py_ssize_t request_id_len
    int n_xff
    Py_ssize_t upgrade               # Upgrade field value (a protocol switch the route may allow), else -1
    Py_ssize_t upgrade_len
    # error
    int error_status
    const char* error_reason


# Character classes, filled once at import.
cdef uint8_t _TCHAR[256]
cdef uint8_t _FIELD_VCHAR[256]      # allowed inside a field value (VCHAR, obs-text, SP, HTAB)
cdef uint8_t _TARGET_CHAR[256]
cdef uint8_t _HOST_CHAR[256]
cdef uint8_t _REQUEST_ID_CHAR[256]
cdef uint8_t _HEXVAL[256]
cdef uint8_t _LOWER[256]
cdef uint8_t _METHOD_CHAR[256]      # as nginx: upper-case letters, '-' and '_'


cdef void _init_char_tables():
    cdef int c
    cdef bytes tspecials = b"!#$%&'*+-.^_`|~"
    cdef bytes host_extra = b"-._~!$&'()*+,;=%[]:"
    cdef bytes rid_extra = b"-._:+=/@"
    for c in range(256):
        _TCHAR[c] = 0
        _FIELD_VCHAR[c] = 1 if (c == 9 or c == 32 or (0x21 <= c <= 0x7E) or c >= 0x80) else 0
        _TARGET_CHAR[c] = 1 if (0x21 <= c <= 0x7E and c != 35) else 0
        _HOST_CHAR[c] = 0
        _REQUEST_ID_CHAR[c] = 0
        _HEXVAL[c] = 0xFF
        _LOWER[c] = c + 32 if 65 <= c <= 90 else c
        _METHOD_CHAR[c] = 1 if (65 <= c <= 90 or c == 45 or c == 95) else 0
        if 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122:
            _TCHAR[c] = 1
            _HOST_CHAR[c] = 1
            _REQUEST_ID_CHAR[c] = 1
        if 48 <= c <= 57:
            _HEXVAL[c] = c - 48
        elif 65 <= c <= 70:
            _HEXVAL[c] = c - 55
        elif 97 <= c <= 102:
            _HEXVAL[c] = c - 87
    for c in tspecials:
        _TCHAR[c] = 1
    for c in host_extra:
        _HOST_CHAR[c] = 1
    for c in rid_extra:
        _REQUEST_ID_CHAR[c] = 1


_init_char_tables()


# Scans that skip the common bytes of a field line many at a time: 16 with SSE2 (every x86-64 has it),
# else 8 in a 64-bit word, which any target compiles (arm64 included). They only skip: the byte loops
# after them stay the judges of what is valid, so a scan that stops early is slower, never wrong.
# FASTGW_NO_SSE2 forces the word scan (tests/unit/test_field_scan.py compiles this block both ways).
cdef extern from *:
    """
    /* fastgw field scan (begin) */
    #include <stdint.h>
    #include <string.h>
    #if defined(__SSE2__) && defined(__GNUC__) && !defined(FASTGW_NO_SSE2)
    #include <emmintrin.h>
    #define FGW_SSE2 1
    #else
    #define FGW_SSE2 0
    #endif
    #define FGW_ONES 0x0101010101010101ULL
    #define FGW_HIGH 0x8080808080808080ULL

    static inline uint64_t fgw_load64(const char* p) { uint64_t v; memcpy(&v, p, 8); return v; }

    /* For a word of 7-bit bytes: the high bit of each byte in [lo, hi] (no carry crosses a byte). */
    static inline uint64_t fgw_in_range7(uint64_t x, unsigned lo, unsigned hi) {
        uint64_t ge = x + FGW_ONES * (0x80 - lo);
        uint64_t gt = x + FGW_ONES * (0x7F - hi);
        return ge & ~gt & FGW_HIGH;
    }

    /* The first position from pos on that may not be a letter, digit or '-': header names are
       almost always made of these alone, all of them tchar. */
    static inline Py_ssize_t fgw_name_run(const char* p, Py_ssize_t pos, Py_ssize_t n) {
    #if FGW_SSE2
        const __m128i c0 = _mm_set1_epi8('0'), ca = _mm_set1_epi8('a'), lower = _mm_set1_epi8(0x20);
        const __m128i dash = _mm_set1_epi8('-'), nine = _mm_set1_epi8(9), z = _mm_set1_epi8(25);
        while (pos + 16 <= n) {
            __m128i x = _mm_loadu_si128((const __m128i*)(p + pos));
            __m128i d = _mm_sub_epi8(x, c0);
            __m128i l = _mm_sub_epi8(_mm_or_si128(x, lower), ca);
            __m128i ok = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(d, nine), d),
                                                   _mm_cmpeq_epi8(_mm_min_epu8(l, z), l)),
                                      _mm_cmpeq_epi8(x, dash));
            unsigned m = (unsigned)_mm_movemask_epi8(ok) ^ 0xFFFFu;
            if (m) return pos + __builtin_ctz(m);
            pos += 16;
        }
    #endif
        while (pos + 8 <= n) {
            uint64_t x = fgw_load64(p + pos);
            if (x & FGW_HIGH) break;
            if ((fgw_in_range7(x | (FGW_ONES * 0x20), 'a', 'z') | fgw_in_range7(x, '0', '9')
                 | fgw_in_range7(x, '-', '-')) != FGW_HIGH) break;
            pos += 8;
        }
        return pos;
    }

    /* The first position from pos on that may not be a plain field-value byte (0x20-0x7E, and with
       SSE2 obs-text 0x80-0xFF too): a CR, a CTL, HTAB and DEL stop it. */
    static inline Py_ssize_t fgw_value_run(const char* p, Py_ssize_t pos, Py_ssize_t n) {
    #if FGW_SSE2
        const __m128i ctl = _mm_set1_epi8(0x1F), del = _mm_set1_epi8(0x7F);
        while (pos + 16 <= n) {
            __m128i x = _mm_loadu_si128((const __m128i*)(p + pos));
            __m128i bad = _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(x, ctl), x), _mm_cmpeq_epi8(x, del));
            unsigned m = (unsigned)_mm_movemask_epi8(bad);
            if (m) return pos + __builtin_ctz(m);
            pos += 16;
        }
    #endif
        while (pos + 8 <= n) {
            uint64_t x = fgw_load64(p + pos);
            if (x & FGW_HIGH) break;
            if (fgw_in_range7(x, 0x20, 0x7E) != FGW_HIGH) break;
            pos += 8;
        }
        return pos;
    }
    /* The first position from pos on (before end) that may not be a letter, digit, '-' or '.': the
       bytes of a host name or an IPv4 address, none of them special to the authority check. Hosts are
       short and end inside the head: 8 bytes at a time, never past end. */
    static inline Py_ssize_t fgw_host_run(const char* p, Py_ssize_t pos, Py_ssize_t end) {
        while (pos + 8 <= end) {
            uint64_t x = fgw_load64(p + pos);
            if (x & FGW_HIGH) break;
            if ((fgw_in_range7(x | (FGW_ONES * 0x20), 'a', 'z') | fgw_in_range7(x, '0', '9')
                 | fgw_in_range7(x, '-', '.')) != FGW_HIGH) break;
            pos += 8;
        }
        return pos;
    }
    /* The first position from pos on whose 8-byte word may hold a '%' or a '.': path bytes before
       it cannot start an escape or a dot segment (pathnorm's plain-path check). */
    static inline Py_ssize_t fgw_path_plain_run(const char* p, Py_ssize_t pos, Py_ssize_t n) {
        while (pos + 8 <= n) {
            uint64_t x = fgw_load64(p + pos);
            uint64_t pct = x ^ (FGW_ONES * '%'), dot = x ^ (FGW_ONES * '.');
            if (((pct - FGW_ONES) & ~pct & FGW_HIGH) | ((dot - FGW_ONES) & ~dot & FGW_HIGH)) break;
            pos += 8;
        }
        return pos;
    }
    /* fastgw field scan (end) */
    """
    Py_ssize_t fgw_name_run(const char* p, Py_ssize_t pos, Py_ssize_t n) noexcept nogil
    Py_ssize_t fgw_value_run(const char* p, Py_ssize_t pos, Py_ssize_t n) noexcept nogil
    Py_ssize_t fgw_host_run(const char* p, Py_ssize_t pos, Py_ssize_t end) noexcept nogil
    Py_ssize_t fgw_path_plain_run(const char* p, Py_ssize_t pos, Py_ssize_t n) noexcept nogil

cdef const char* _HTTP_SLASH = b"HTTP/"
cdef const char* _HEXDIGITS = b"0123456789abcdef"


cdef inline bint _ci_eq(const char* p, Py_ssize_t n, const char* lit, Py_ssize_t litn) noexcept nogil:
    # `lit` is lowercase ASCII
    cdef Py_ssize_t i
    if n != litn:
        return False
    for i in range(n):
        if _LOWER[<uint8_t>p[i]] != <uint8_t>lit[i]:
            return False
    return True


cdef int _classify(const char* p, Py_ssize_t n) noexcept nogil:
    cdef uint8_t c0 = _LOWER[<uint8_t>p[0]]
    if n == 4:
        if _ci_eq(p, n, b"host", 4):
            return HK_HOST
    elif n == 2:
        if _ci_eq(p, n, b"te", 2):
            return HK_TE
    elif n == 6:
        if _ci_eq(p, n, b"expect", 6):
            return HK_EXPECT
    elif n == 7:
        if c0 == b't' and _ci_eq(p, n, b"trailer", 7):
            return HK_TRAILER
        if c0 == b'u' and _ci_eq(p, n, b"upgrade", 7):
            return HK_UPGRADE
    elif n == 10:
        if c0 == b'c' and _ci_eq(p, n, b"connection", 10):
            return HK_CONNECTION
        if c0 == b'k' and _ci_eq(p, n, b"keep-alive", 10):
            return HK_KEEP_ALIVE
    elif n == 12:
        if c0 == b'x' and _ci_eq(p, n, b"x-request-id", 12):
            return HK_X_REQUEST_ID
    elif n == 14:
        if c0 == b'c' and _ci_eq(p, n, b"content-length", 14):
            return HK_CONTENT_LENGTH
    elif n == 15:
        if c0 == b'x' and _ci_eq(p, n, b"x-forwarded-for", 15):
            return HK_X_FORWARDED_FOR
    elif n == 16:
        if c0 == b'p' and _ci_eq(p, n, b"proxy-connection", 16):
            return HK_PROXY_CONNECTION
        if c0 == b'x' and _ci_eq(p, n, b"x-forwarded-host", 16):
            return HK_X_FORWARDED_HOST
    elif n == 17:
        if c0 == b't' and _ci_eq(p, n, b"transfer-encoding", 17):
            return HK_TRANSFER_ENCODING
        if c0 == b'x' and _ci_eq(p, n, b"x-forwarded-proto", 17):
            return HK_X_FORWARDED_PROTO
    return HK_OTHER


cdef inline int _fail(MessageHead* h, int status, const char* reason) noexcept nogil:
    h.error_status = status
    h.error_reason = reason
    return PARSE_ERROR


cdef int head_init(MessageHead* h, int cap) except -1:
    h.fields = <HeaderField*>malloc(sizeof(HeaderField) * (cap + 1))
    if h.fields == NULL:
        raise MemoryError()
    h.fields_cap = cap
    return 0


cdef void head_free(MessageHead* h) noexcept:
    if h.fields != NULL:
        free(h.fields)
        h.fields = NULL


cdef inline void _head_reset(MessageHead* h) noexcept nogil:
    h.method = h.method_len = h.target = h.target_len = h.path_len = 0
    h.authority = -1
    h.authority_len = 0
    h.version_minor = 1
    h.is_head_method = False
    h.status = 0
    h.reason = h.reason_len = 0
    h.nfields = 0
    h.content_length = -1
    h.framing = FR_NONE
    h.conn_close = False
    h.conn_keep_alive = False
    h.expect_continue = False
    h.has_host = False
    h.host = h.host_len = h.host_name_len = 0
    h.nconn_tokens = 0
    h.request_id = -1
    h.request_id_len = 0
    h.n_xff = 0
    h.upgrade = -1
    h.upgrade_len = 0
    h.error_status = 0
    h.error_reason = NULL


cdef int64_t parse_decimal(const char* p, Py_ssize_t n) noexcept nogil:
    """Content-Length = 1*DIGIT. Returns -1 for anything else, including values past 2**62."""
    cdef Py_ssize_t i
    cdef int64_t v = 0
    cdef uint8_t c
    if n <= 0 or n > 18:
        return -1
    for i in range(n):
        c = <uint8_t>p[i]
        if c < 48 or c > 57:
            return -1
        v = v * 10 + (c - 48)
    return v


cdef inline Py_ssize_t _trim_ows_end(const char* buf, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    while end > start and (buf[end - 1] == b' ' or buf[end - 1] == b'\t'):
        end -= 1
    return end


cdef inline int _fields_incomplete(MessageHead* h, Py_ssize_t n, HeadLimits* lim, bint is_request) noexcept nogil:
    """More bytes are needed; but a head already past the limit is refused now rather than buffered
    (a header line without its CRLF would otherwise grow without bound)."""
    if n > lim.max_head_bytes:
        return _fail(h, 431 if is_request else 502, b"header block too large")
    return PARSE_INCOMPLETE


cdef int _parse_fields(MessageHead* h, const char* buf, Py_ssize_t pos, Py_ssize_t n,
                       HeadLimits* lim, bint is_request) noexcept nogil:
    """Parses header fields from `pos` up to and including the blank line. Returns the head length,
    PARSE_INCOMPLETE, or PARSE_ERROR."""
    cdef Py_ssize_t name, name_end, vstart, vend
    cdef uint8_t c
    cdef int kind
    cdef int bad = 400 if is_request else 502
    cdef bint plain_name
    while True:
        if pos >= n:
            return _fields_incomplete(h, n, lim, is_request)
        c = <uint8_t>buf[pos]
        if c == b'\r':
            if pos + 1 >= n:
                return _fields_incomplete(h, n, lim, is_request)
            if buf[pos + 1] != b'\n':
                return _fail(h, bad, b"bare CR in header block")
            if pos + 2 > lim.max_head_bytes:
                return _fail(h, 431 if is_request else 502, b"header block too large")
            return <int>(pos + 2)
        if c == b' ' or c == b'\t':
            return _fail(h, bad, b"obsolete line folding")
        # field-name
        name = pos
        pos = fgw_name_run(buf, pos, n)
        plain_name = pos < n and buf[pos] == b':'    # letters, digits and '-' only: no '_' in it
        while pos < n and _TCHAR[<uint8_t>buf[pos]]:
            pos += 1
        if pos >= n:
            return _fields_incomplete(h, n, lim, is_request)
        name_end = pos
        if buf[pos] != b':':
            if name_end == name:
                return _fail(h, bad, b"empty or invalid header name")
            return _fail(h, bad, b"invalid character in header name")
        if name_end == name:
            return _fail(h, bad, b"empty header name")
        pos += 1
        # OWS, field-value, OWS, CRLF
        while pos < n and (buf[pos] == b' ' or buf[pos] == b'\t'):
            pos += 1
        vstart = pos
        pos = fgw_value_run(buf, pos, n)
        while pos < n and _FIELD_VCHAR[<uint8_t>buf[pos]]:
            pos += 1
        if pos >= n:
            return _fields_incomplete(h, n, lim, is_request)
        if buf[pos] != b'\r':
            return _fail(h, bad, b"invalid character in header value")
        if pos + 1 >= n:
            return _fields_incomplete(h, n, lim, is_request)
        if buf[pos + 1] != b'\n':
            return _fail(h, bad, b"bare CR in header value")
        vend = _trim_ows_end(buf, vstart, pos)
        pos += 2
        if h.nfields >= lim.max_headers or h.nfields >= h.fields_cap:
            return _fail(h, 431 if is_request else 502, b"too many header fields")
        kind = _classify(buf + name, name_end - name)
        if kind == HK_OTHER and is_request and not plain_name:
            if memchr(buf + name, b'_', name_end - name) != NULL:
                if not lim.drop_underscores:
                    return _fail(h, 400, b"underscore in header name")
                kind = HK_DROP
        h.fields[h.nfields].name = name
        h.fields[h.nfields].name_len = name_end - name
        h.fields[h.nfields].value = vstart
        h.fields[h.nfields].value_len = vend - vstart
        h.fields[h.nfields].kind = kind
        h.nfields += 1
        if kind != HK_OTHER and kind != HK_DROP:
            if _field_semantics(h, buf, kind, vstart, vend, is_request) < 0:
                return PARSE_ERROR


cdef int _connection_tokens(MessageHead* h, const char* buf, Py_ssize_t p, Py_ssize_t end,
                            int bad) noexcept nogil:
    cdef Py_ssize_t t
    while p < end:
        while p < end and (buf[p] == b' ' or buf[p] == b'\t' or buf[p] == b','):
            p += 1
        if p >= end:
            break
        t = p
        while p < end and _TCHAR[<uint8_t>buf[p]]:
            p += 1
        if p == t:
            return _fail(h, bad, b"invalid Connection header")
        if _ci_eq(buf + t, p - t, b"close", 5):
            h.conn_close = True
        elif _ci_eq(buf + t, p - t, b"keep-alive", 10):
            h.conn_keep_alive = True
        else:
            if h.nconn_tokens >= MAX_CONNECTION_TOKENS:
                return _fail(h, bad, b"too many Connection options")
            h.conn_tokens[h.nconn_tokens] = t
            h.conn_token_lens[h.nconn_tokens] = p - t
            h.nconn_tokens += 1
        while p < end and (buf[p] == b' ' or buf[p] == b'\t'):
            p += 1
        if p < end and buf[p] != b',':
            return _fail(h, bad, b"invalid Connection header")
    return 0


cdef int _transfer_encoding(MessageHead* h, const char* buf, Py_ssize_t p, Py_ssize_t end,
                            bint is_request) noexcept nogil:
    """Only exactly `chunked` is accepted. A well-formed list of codings we do not implement is 501
    (RFC 9112 6.1); anything else, `chunked` not last or repeated included, is malformed."""
    cdef int bad = 400 if is_request else 502
    cdef Py_ssize_t t
    cdef int ntokens = 0
    cdef bint chunked_seen = False
    cdef bint last_chunked = False
    if h.framing == FR_CHUNKED:
        return _fail(h, bad, b"duplicate Transfer-Encoding")
    while p < end:
        while p < end and (buf[p] == b' ' or buf[p] == b'\t'):
            p += 1
        t = p
        while p < end and _TCHAR[<uint8_t>buf[p]]:
            p += 1
        if p == t:
            return _fail(h, bad, b"invalid Transfer-Encoding")
        ntokens += 1
        last_chunked = _ci_eq(buf + t, p - t, b"chunked", 7)
        if last_chunked:
            if chunked_seen:
                return _fail(h, bad, b"chunked applied twice")
            chunked_seen = True
        while p < end and (buf[p] == b' ' or buf[p] == b'\t'):
            p += 1
        if p < end:
            if buf[p] != b',':
                return _fail(h, bad, b"invalid Transfer-Encoding")
            p += 1
            if p >= end:
                return _fail(h, bad, b"invalid Transfer-Encoding")
    if ntokens == 0:
        return _fail(h, bad, b"empty Transfer-Encoding")
    if chunked_seen and not last_chunked:
        return _fail(h, bad, b"chunked is not the final transfer coding")
    if ntokens > 1 or not chunked_seen:
        return _fail(h, 501 if is_request else 502, b"unsupported transfer coding")
    h.framing = FR_CHUNKED
    return 0


cdef Py_ssize_t _check_authority(MessageHead* h, const char* buf, Py_ssize_t p, Py_ssize_t end) noexcept nogil:
    """RFC 3986 uri-host [ ":" port ] with a 1-5 digit port, at most 255 bytes. Returns the length
    of the host part, or -1 (with h's error set)."""
    cdef Py_ssize_t i, colon = -1, name_len
    cdef uint8_t c
    cdef bint bracket = False
    if end - p <= 0 or end - p > MAX_HOST_LEN:
        return _fail(h, 400, b"invalid host")
    if buf[p] == b'[':
        bracket = True
    # plain host bytes change nothing below: skipped a word at a time
    for i in range(p if bracket else fgw_host_run(buf, p, end), end):
        c = <uint8_t>buf[i]
        if not _HOST_CHAR[c]:
            return _fail(h, 400, b"invalid host")
        if c == b':':
            if not bracket or (i > p and buf[i - 1] == b']'):
                colon = i
                break
        elif c == b'[' and i != p:
            return _fail(h, 400, b"invalid host")
        elif c == b']':
            if not bracket:
                return _fail(h, 400, b"invalid host")
    if colon >= 0:
        if colon == p or end - colon - 1 < 1 or end - colon - 1 > 5:
            return _fail(h, 400, b"invalid host")
        for i in range(colon + 1, end):
            if buf[i] < b'0' or buf[i] > b'9':
                return _fail(h, 400, b"invalid host")
        name_len = colon - p
    else:
        name_len = end - p
    if bracket and (name_len < 3 or buf[p + name_len - 1] != b']'):
        return _fail(h, 400, b"invalid host")
    return name_len


cdef int _host_value(MessageHead* h, const char* buf, Py_ssize_t p, Py_ssize_t end) noexcept nogil:
    cdef Py_ssize_t name_len
    if h.has_host:
        return _fail(h, 400, b"duplicate Host header")
    h.has_host = True
    name_len = _check_authority(h, buf, p, end)
    if name_len < 0:
        return PARSE_ERROR
    h.host = p
    h.host_len = end - p
    h.host_name_len = name_len
    return 0


cdef int _field_semantics(MessageHead* h, const char* buf, int kind, Py_ssize_t vstart,
                          Py_ssize_t vend, bint is_request) noexcept nogil:
    cdef int bad = 400 if is_request else 502
    cdef int64_t v
    cdef Py_ssize_t i
    if kind == HK_CONTENT_LENGTH:
        if h.content_length >= 0:
            return _fail(h, bad, b"duplicate Content-Length")
        v = parse_decimal(buf + vstart, vend - vstart)
        if v < 0:
            return _fail(h, bad, b"invalid Content-Length")
        h.content_length = v
        return 0
    if kind == HK_TRANSFER_ENCODING:
        return _transfer_encoding(h, buf, vstart, vend, is_request)
    if kind == HK_CONNECTION or kind == HK_PROXY_CONNECTION:
        if kind == HK_CONNECTION:
            return _connection_tokens(h, buf, vstart, vend, bad)
        return 0
    if not is_request:
        return 0
    if kind == HK_HOST:
        return _host_value(h, buf, vstart, vend)
    if kind == HK_EXPECT:
        if _ci_eq(buf + vstart, vend - vstart, b"100-continue", 12) and not h.expect_continue:
            h.expect_continue = True
            return 0
        return _fail(h, 417, b"unsupported expectation")
    if kind == HK_UPGRADE:
        if _ci_eq(buf + vstart, vend - vstart, b"h2c", 3):
            return 0       # an optional upgrade: ignored, the request is served as HTTP/1.1
        if h.upgrade >= 0:
            return _fail(h, 400, b"duplicate Upgrade header")
        if vend == vstart:
            return _fail(h, 400, b"empty Upgrade header")
        # the route decides (tunnel.pyx): switched after a 101, else served as HTTP/1.1 without it
        h.upgrade = vstart
        h.upgrade_len = vend - vstart
        return 0
    if kind == HK_X_REQUEST_ID:
        if h.request_id >= 0 or h.request_id_len < 0:
            h.request_id = -1            # repeated: not well formed, a new one is generated
            h.request_id_len = -1
            return 0
        if vend - vstart < 1 or vend - vstart > MAX_REQUEST_ID_LEN:
            return 0
        for i in range(vstart, vend):
            if not _REQUEST_ID_CHAR[<uint8_t>buf[i]]:
                return 0
        h.request_id = vstart
        h.request_id_len = vend - vstart
        return 0
    if kind == HK_X_FORWARDED_FOR:
        h.n_xff += 1
    return 0


cdef Py_ssize_t parse_request_head(MessageHead* h, const char* buf, Py_ssize_t n,
                                   HeadLimits* lim) noexcept nogil:
    """Returns the length of a complete, valid head; PARSE_INCOMPLETE; or PARSE_ERROR with
    h.error_status set."""
    cdef Py_ssize_t pos = 0, line_end, t, q
    cdef uint8_t c
    cdef int r
    _head_reset(h)
    # method
    while pos < n and _METHOD_CHAR[<uint8_t>buf[pos]]:
        pos += 1
    if pos >= n:
        if n > lim.max_request_line:
            return _fail(h, 414, b"request line too long")
        return PARSE_INCOMPLETE
    if buf[pos] != b' ' or pos == 0:
        return _fail(h, 400, b"invalid request method")
    h.method = 0
    h.method_len = pos
    pos += 1
    # request-target
    t = pos
    q = -1
    while pos < n:
        c = <uint8_t>buf[pos]
        if not _TARGET_CHAR[c]:
            break
        if c == b'?' and q < 0:
            q = pos
        pos += 1
    if pos >= n:
        if n > lim.max_request_line:
            return _fail(h, 414, b"request line too long")
        return PARSE_INCOMPLETE
    if pos > lim.max_request_line:
        return _fail(h, 414, b"request line too long")
    if buf[pos] != b' ':
        if buf[pos] == b'\r' or buf[pos] == b'\n':
            return _fail(h, 400, b"HTTP/0.9 request")
        if buf[pos] == b'#':
            return _fail(h, 400, b"fragment in request target")
        return _fail(h, 400, b"invalid character in request target")
    if pos == t:
        return _fail(h, 400, b"empty request target")
    h.target = t
    h.target_len = pos - t
    h.path_len = (q - t) if q >= 0 else (pos - t)
    pos += 1
    # HTTP-version CRLF
    if n - pos < 10:
        # refuse a wrong protocol name at once rather than waiting for more bytes
        for r in range(<int>min(n - pos, 5)):
            if buf[pos + r] != _HTTP_SLASH[r]:
                return _fail(h, 400, b"invalid protocol")
        if n > lim.max_request_line + 10:
            return _fail(h, 414, b"request line too long")
        return PARSE_INCOMPLETE
    if not (buf[pos] == b'H' and buf[pos + 1] == b'T' and buf[pos + 2] == b'T' and buf[pos + 3] == b'P'
            and buf[pos + 4] == b'/'):
        return _fail(h, 400, b"invalid protocol")
    if not (b'0' <= buf[pos + 5] <= b'9' and buf[pos + 6] == b'.' and b'0' <= buf[pos + 7] <= b'9'):
        return _fail(h, 400, b"invalid HTTP version")
    if buf[pos + 8] != b'\r' or buf[pos + 9] != b'\n':
        return _fail(h, 400, b"invalid request line")
    if buf[pos + 5] != b'1' or buf[pos + 7] > b'1':
        return _fail(h, 505, b"HTTP version not supported")
    h.version_minor = buf[pos + 7] - 48
    line_end = pos + 10
    if line_end - 2 > lim.max_request_line:
        return _fail(h, 414, b"request line too long")
    if h.method_len == 7 and memcmp(buf, b"CONNECT", 7) == 0:
        return _fail(h, 405, b"CONNECT is not supported")
    # target form
    if buf[t] == b'/':
        pass
    elif h.target_len == 1 and buf[t] == b'*':
        if not (h.method_len == 7 and memcmp(buf, b"OPTIONS", 7) == 0):
            return _fail(h, 400, b"asterisk-form is only for OPTIONS")
    elif _absolute_form(h, buf, t, pos - 1) < 0:
        return PARSE_ERROR
    h.is_head_method = h.method_len == 4 and memcmp(buf, b"HEAD", 4) == 0
    r = _parse_fields(h, buf, line_end, n, lim, True)
    if r < 0:
        return r
    # message-level rules (RFC 9112 3.2, 6.1, 6.3)
    if h.framing == FR_CHUNKED:
        if h.version_minor == 0:
            return _fail(h, 400, b"Transfer-Encoding in an HTTP/1.0 request")
        if h.content_length >= 0:
            return _fail(h, 400, b"both Content-Length and Transfer-Encoding")
    elif h.content_length > 0:
        h.framing = FR_LENGTH
    if h.version_minor == 1 and not h.has_host:
        return _fail(h, 400, b"missing Host header")
    if h.version_minor == 0:
        h.expect_continue = False
    return r


cdef int _absolute_form(MessageHead* h, const char* buf, Py_ssize_t t, Py_ssize_t end) noexcept nogil:
    """absolute-form (RFC 9112 3.2.2): the authority replaces Host; the path is forwarded."""
    cdef Py_ssize_t p = t, a, i
    if end - t >= 7 and _ci_eq(buf + t, 7, b"http://", 7):
        p = t + 7
    elif end - t >= 8 and _ci_eq(buf + t, 8, b"https://", 8):
        p = t + 8
    else:
        return _fail(h, 400, b"invalid request target")
    a = p
    while p < end and buf[p] != b'/' and buf[p] != b'?':
        if buf[p] == b'@':
            return _fail(h, 400, b"userinfo in request target")
        if not _HOST_CHAR[<uint8_t>buf[p]]:
            return _fail(h, 400, b"invalid authority in request target")
        p += 1
    if p == a:
        return _fail(h, 400, b"empty authority in request target")
    h.authority_name_len = _check_authority(h, buf, a, p)
    if h.authority_name_len < 0:
        return PARSE_ERROR
    h.authority = a
    h.authority_len = p - a
    h.target = p
    h.target_len = end - p
    i = p
    while i < end and buf[i] != b'?':
        i += 1
    h.path_len = i - p
    return 0


cdef Py_ssize_t parse_response_head(MessageHead* h, const char* buf, Py_ssize_t n,
                                    HeadLimits* lim) noexcept nogil:
    cdef Py_ssize_t pos, r
    _head_reset(h)
    if n < 13:
        for pos in range(n):
            if pos < 5 and buf[pos] != _HTTP_SLASH[pos]:
                return _fail(h, 502, b"invalid upstream status line")
        return PARSE_INCOMPLETE
    if not (buf[0] == b'H' and buf[1] == b'T' and buf[2] == b'T' and buf[3] == b'P' and buf[4] == b'/'
            and buf[5] == b'1' and buf[6] == b'.' and (buf[7] == b'0' or buf[7] == b'1')
            and buf[8] == b' '):
        return _fail(h, 502, b"invalid upstream status line")
    if not (b'1' <= buf[9] <= b'5' and b'0' <= buf[10] <= b'9' and b'0' <= buf[11] <= b'9'):
        return _fail(h, 502, b"invalid upstream status code")
    h.version_minor = buf[7] - 48
    h.status = (buf[9] - 48) * 100 + (buf[10] - 48) * 10 + (buf[11] - 48)
    pos = 12
    if buf[pos] == b' ':
        pos += 1
    elif buf[pos] != b'\r':
        return _fail(h, 502, b"invalid upstream status line")
    h.reason = pos
    while pos < n and _FIELD_VCHAR[<uint8_t>buf[pos]]:
        pos += 1
    if pos >= n:
        if pos > lim.max_request_line:
            return _fail(h, 502, b"upstream status line too long")
        return PARSE_INCOMPLETE
    if buf[pos] != b'\r':
        return _fail(h, 502, b"invalid upstream status line")
    h.reason_len = pos - h.reason
    if pos + 1 >= n:
        return PARSE_INCOMPLETE
    if buf[pos + 1] != b'\n':
        return _fail(h, 502, b"invalid upstream status line")
    r = _parse_fields(h, buf, pos + 2, n, lim, False)
    if r < 0:
        return r
    if h.framing == FR_CHUNKED and h.content_length >= 0:
        return _fail(h, 502, b"upstream sent both Content-Length and Transfer-Encoding")
    return r


cdef inline bint response_has_body(int status, bint head_request) noexcept nogil:
    return not (head_request or status < 200 or status == 204 or status == 304)


# ---- chunked transfer coding --------------------------------------------------------------------

cdef enum ChunkState:
    CS_SIZE = 0       # first hex digit of a chunk size
    CS_SIZE_MORE      # further hex digits, ';' or CR
    CS_EXT            # chunk extension up to CR
    CS_SIZE_LF
    CS_DATA
    CS_DATA_CR
    CS_DATA_LF
    CS_TRAILER_START  # CR (end) or a trailer field
    CS_TRAILER
    CS_TRAILER_LF
    CS_END_LF
    CS_DONE


cdef struct ChunkDecoder:
    int state
    int64_t remaining
    int digits
    Py_ssize_t ext_len
    Py_ssize_t ext_total             # extension bytes over the whole message
    Py_ssize_t trailer_bytes
    Py_ssize_t max_trailer_bytes
    bint trailer_name_done
    bint trailer_line_empty_name
    int error_status
    const char* error_reason
    # data spans found by the last decode call: offsets into the caller's buffer
    Py_ssize_t span_off[MAX_SPANS]
    Py_ssize_t span_len[MAX_SPANS]
    int nspans
    int64_t span_bytes


cdef void chunk_init(ChunkDecoder* d, Py_ssize_t max_trailer_bytes) noexcept nogil:
    d.state = CS_SIZE
    d.remaining = 0
    d.digits = 0
    d.ext_len = 0
    d.ext_total = 0
    d.trailer_bytes = 0
    d.max_trailer_bytes = max_trailer_bytes
    d.trailer_name_done = False
    d.error_status = 0
    d.error_reason = NULL
    d.nspans = 0
    d.span_bytes = 0


cdef inline Py_ssize_t _chunk_fail(ChunkDecoder* d, const char* reason) noexcept nogil:
    d.error_status = 400
    d.error_reason = reason
    return -1


cdef Py_ssize_t chunk_decode(ChunkDecoder* d, const char* buf, Py_ssize_t pos, Py_ssize_t n) noexcept nogil:
    """Decodes from buf[pos:n]; records data spans; returns the position reached (stops early when
    the span list is full or the body ended), or -1 on a framing error."""
    cdef uint8_t c, hv
    cdef int64_t take
    d.nspans = 0
    d.span_bytes = 0
    while pos < n:
        c = <uint8_t>buf[pos]
        if d.state == CS_DATA:
            take = n - pos
            if take > d.remaining:
                take = d.remaining
            if d.nspans == MAX_SPANS:
                return pos
            d.span_off[d.nspans] = pos
            d.span_len[d.nspans] = <Py_ssize_t>take
            d.nspans += 1
            d.span_bytes += take
            d.remaining -= take
            pos += <Py_ssize_t>take
            if d.remaining == 0:
                d.state = CS_DATA_CR
            continue
        if d.state == CS_SIZE or d.state == CS_SIZE_MORE:
            hv = _HEXVAL[c]
            if hv != 0xFF:
                d.digits += 1
                if d.digits > 15:
                    return _chunk_fail(d, b"chunk size too large")
                d.remaining = d.remaining * 16 + hv
                d.state = CS_SIZE_MORE
            elif d.state == CS_SIZE:
                return _chunk_fail(d, b"invalid chunk size")
            elif c == b';':
                d.state = CS_EXT
                d.ext_len = 0
            elif c == b'\r':
                d.state = CS_SIZE_LF
            else:
                return _chunk_fail(d, b"invalid chunk size")
        elif d.state == CS_EXT:
            if c == b'\r':
                d.state = CS_SIZE_LF
            elif c != b'\t' and (c < 0x20 or c == 0x7F):
                return _chunk_fail(d, b"invalid chunk extension")
            else:
                d.ext_len += 1
                d.ext_total += 1
                if d.ext_len > MAX_CHUNK_EXT:
                    return _chunk_fail(d, b"chunk size line too long")
                if d.ext_total > MAX_CHUNK_EXT_TOTAL:
                    # many small chunks each with a large extension: cheap to send, costly to
                    # parse (Node's answer to CVE-2024-22019 is the same bound)
                    return _chunk_fail(d, b"too many chunk extension bytes")
        elif d.state == CS_SIZE_LF:
            if c != b'\n':
                return _chunk_fail(d, b"bare CR in chunk size line")
            d.digits = 0
            d.state = CS_DATA if d.remaining > 0 else CS_TRAILER_START
        elif d.state == CS_DATA_CR:
            if c != b'\r':
                return _chunk_fail(d, b"missing CRLF after chunk data")
            d.state = CS_DATA_LF
        elif d.state == CS_DATA_LF:
            if c != b'\n':
                return _chunk_fail(d, b"missing CRLF after chunk data")
            d.state = CS_SIZE
            d.remaining = 0
        elif d.state == CS_TRAILER_START:
            if c == b'\r':
                d.state = CS_END_LF
            elif _TCHAR[c]:
                d.state = CS_TRAILER
                d.trailer_name_done = False
            else:
                return _chunk_fail(d, b"invalid trailer field")
            d.trailer_bytes += 1
        elif d.state == CS_TRAILER:
            d.trailer_bytes += 1
            if d.trailer_bytes > d.max_trailer_bytes:
                d.error_status = 431
                d.error_reason = b"trailer section too large"
                return -1
            if not d.trailer_name_done:
                if c == b':':
                    d.trailer_name_done = True
                elif not _TCHAR[c]:
                    return _chunk_fail(d, b"invalid trailer field name")
            elif c == b'\r':
                d.state = CS_TRAILER_LF
            elif not _FIELD_VCHAR[c]:
                return _chunk_fail(d, b"invalid trailer field value")
        elif d.state == CS_TRAILER_LF:
            if c != b'\n':
                return _chunk_fail(d, b"bare CR in trailer")
            d.state = CS_TRAILER_START
        elif d.state == CS_END_LF:
            if c != b'\n':
                return _chunk_fail(d, b"bare CR at end of chunked body")
            d.state = CS_DONE
            return pos + 1
        else:
            return pos
        pos += 1
    return pos


# ---- output buffer ------------------------------------------------------------------------------

cdef struct WBuf:
    char* data
    Py_ssize_t len
    Py_ssize_t cap


cdef int wb_init(WBuf* b, Py_ssize_t cap) except -1:
    b.data = <char*>malloc(cap)
    if b.data == NULL:
        raise MemoryError()
    b.len = 0
    b.cap = cap
    return 0


cdef void wb_free(WBuf* b) noexcept:
    if b.data != NULL:
        free(b.data)
        b.data = NULL


cdef int wb_reserve(WBuf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap
    cdef char* p
    if b.len + extra <= b.cap:
        return 0
    cap = b.cap * 2
    while cap < b.len + extra:
        cap *= 2
    p = <char*>realloc(b.data, cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef inline int wb_put(WBuf* b, const char* p, Py_ssize_t n) except -1:
    if b.len + n > b.cap:
        wb_reserve(b, n)
    memcpy(b.data + b.len, p, n)
    b.len += n
    return 0


cdef int wb_put_int(WBuf* b, int64_t v) except -1:
    cdef char tmp[24]
    cdef int i = 24
    cdef char* d
    if 0 <= v < 1000:
        # statuses and small lengths, the usual case: at most three digits, no division loop
        if b.len + 3 > b.cap:
            wb_reserve(b, 3)
        d = b.data + b.len
        if v >= 100:
            d[0] = <char>(48 + v // 100)
            d[1] = <char>(48 + (v // 10) % 10)
            d[2] = <char>(48 + v % 10)
            b.len += 3
        elif v >= 10:
            d[0] = <char>(48 + v // 10)
            d[1] = <char>(48 + v % 10)
            b.len += 2
        else:
            d[0] = <char>(48 + v)
            b.len += 1
        return 0
    if v == 0:
        return wb_put(b, b"0", 1)
    while v > 0:
        i -= 1
        tmp[i] = <char>(48 + v % 10)
        v //= 10
    return wb_put(b, tmp + i, 24 - i)


cdef int wb_put_hex(WBuf* b, int64_t v) except -1:
    cdef char tmp[20]
    cdef int i = 20
    if v == 0:
        return wb_put(b, b"0", 1)
    while v > 0:
        i -= 1
        tmp[i] = _HEXDIGITS[v & 15]
        v >>= 4
    return wb_put(b, tmp + i, 20 - i)


cdef inline bytes wb_bytes(WBuf* b):
    return PyBytes_FromStringAndSize(b.data, b.len)
