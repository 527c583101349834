# Test and bench entry points: the C parsers, the upstream head serializer, the router on a raw head and
# loops of the router and balancer run from C. Compiled into fastgw._core only when the core is built with
# FASTGW_TESTING=1 (`make build` does; a wheel does not): setup.py writes fastgw/_cy/features.pxi, which
# _core.pyx includes, to include this file or nothing.

class HTTPParseError(ValueError):
    def __init__(self, status, reason):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


def parse_request(bytes data, int max_request_line=8192, int max_head_bytes=65536,
                  int max_headers=100, bint drop_underscores=False):
    """Parses one request head. Returns None while incomplete, else a dict describing the head;
    raises HTTPParseError with the status the gateway would answer."""
    cdef MessageHead h
    cdef HeadLimits lim
    cdef Py_ssize_t r
    lim.max_request_line = max_request_line
    lim.max_head_bytes = max_head_bytes
    lim.max_headers = max_headers
    lim.drop_underscores = drop_underscores
    head_init(&h, max_headers)
    try:
        r = parse_request_head(&h, data, len(data), &lim)
        if r == PARSE_INCOMPLETE:
            return None
        if r == PARSE_ERROR:
            raise HTTPParseError(h.error_status, (<bytes>h.error_reason).decode())
        return {
            "head_length": r,
            "method": data[h.method:h.method + h.method_len],
            "target": data[h.target:h.target + h.target_len],
            "path": data[h.target:h.target + h.path_len],
            "version": (1, h.version_minor),
            "host": data[h.host:h.host + h.host_name_len] if h.has_host else None,
            "authority": data[h.authority:h.authority + h.authority_len] if h.authority >= 0 else None,
            "content_length": h.content_length,
            "chunked": h.framing == FR_CHUNKED,
            "keep_alive": bool(h.conn_keep_alive) if h.version_minor == 0 else not h.conn_close,
            "expect_continue": bool(h.expect_continue),
            "headers": [(data[h.fields[i].name:h.fields[i].name + h.fields[i].name_len],
                         data[h.fields[i].value:h.fields[i].value + h.fields[i].value_len])
                        for i in range(h.nfields) if h.fields[i].kind != HK_DROP],
        }
    finally:
        head_free(&h)


def decode_chunked(bytes data, int max_trailer_bytes=65536):
    """Decodes a whole chunked body. Returns (payload, bytes consumed); raises HTTPParseError."""
    cdef ChunkDecoder d
    cdef Py_ssize_t pos = 0, n = len(data)
    cdef const char* p = data
    cdef int i
    out = bytearray()
    chunk_init(&d, max_trailer_bytes)
    while pos < n and d.state != CS_DONE:
        pos = chunk_decode(&d, p, pos, n)
        if pos < 0:
            raise HTTPParseError(d.error_status, (<bytes>d.error_reason).decode())
        for i in range(d.nspans):
            out += data[d.span_off[i]:d.span_off[i] + d.span_len[i]]
    if d.state != CS_DONE:
        return None
    return bytes(out), pos


_bare_conn = None


def build_upstream_head(bytes raw, bytes client_ip, bytes request_id):
    """The head fastgw would send upstream for request head `raw` (hop-by-hop fields dropped,
    X-Forwarded-* and X-Request-Id added, framing redone); no routing, no filters."""
    global _bare_conn
    cdef ClientConn conn
    cdef const char* p = raw
    cdef Py_ssize_t r
    cdef Exchange ex
    if _bare_conn is None:
        rt = Runtime({}, {}, host_independent=frozenset(), max_request_line=8192,
                     max_head_bytes=65536, max_headers=100, drop_underscores=False, header_timeout=10.0,
                     keepalive_timeout=60.0, max_requests_per_connection=1000, max_body=None,
                     drain_timeout=1.0)
        _bare_conn = Worker(None, rt)()
    conn = _bare_conn
    conn.acquire_buffers()
    r = parse_request_head(&conn.head, p, len(raw), &conn.rt.head_limits)
    if r < 0:
        raise ValueError("not a complete, valid request head")
    conn.client_ip = client_ip
    ex = Exchange.__new__(Exchange)
    ex.init(conn, raw, r, &conn.head)
    ex.request_id = request_id
    ex._normalize_path()
    ex._build_upstream_head()
    return wb_bytes(&conn.uout)


def normalize_request_path(bytes path, bint merge_slashes=False, bint reject_encoded_slash=False,
                           bint in_place=False):
    """The path as the gateway normalizes it (`normalize_path` in pathnorm.pyx): returns
    (normalized path, changed); raises HTTPParseError(400) when the path is refused. `in_place` runs the
    C function with the source as its destination."""
    cdef Py_ssize_t n = len(path), r
    cdef int changed = 0
    cdef int flags = (PN_MERGE_SLASHES if merge_slashes else 0) | \
        (PN_REJECT_ENCODED_SLASH if reject_encoded_slash else 0)
    cdef bytearray buf = bytearray(path) if in_place else bytearray(n)
    cdef char* dst = buf
    cdef const char* src = dst if in_place else <const char*>path
    with nogil:
        r = normalize_path(src, n, dst, flags, &changed)
    if r < 0:
        raise HTTPParseError(400, "invalid path")
    return bytes(buf[:r]), bool(changed)


def route_raw_head(Router router, bytes host, bytes raw, bint drop_underscores=True):
    """Parses a raw request head with the real parser and routes it with `router.match_request`.
    Returns (payload, {capture name: bytes})."""
    cdef MessageHead h
    cdef HeadLimits lim
    cdef Py_ssize_t r, i, n
    cdef Py_ssize_t starts[_RT_MAX_CAPS]
    cdef Py_ssize_t lens[_RT_MAX_CAPS]
    cdef const char* p = raw
    lim.max_request_line = 8192
    lim.max_head_bytes = 65536
    lim.max_headers = 100
    lim.drop_underscores = drop_underscores
    head_init(&h, 100)
    try:
        r = parse_request_head(&h, p, len(raw), &lim)
        if r < 0:
            raise ValueError(f"unparsable head ({r})")
        payload = router.match_request(host, len(host), p, &h)
        n = router.last_captures(starts, lens, _RT_MAX_CAPS)
        caps = {}
        for i in range(n):
            s = h.target + starts[i]
            caps[router._tpl_names[router._cap_tpl][i]] = raw[s:s + lens[i]]
        return payload, caps
    finally:
        head_free(&h)


def bench_match(Router router, bytes host, bytes path, Py_ssize_t n):
    """Calls `router.match()` n times from C (per-match timing without Python-call overhead); returns
    the last result."""
    cdef const char* hp = host
    cdef const char* pp = path
    cdef Py_ssize_t hl = len(host), pl = len(path)
    cdef object r = None
    while n > 0:
        r = router.match(hp, hl, pp, pl)
        n -= 1
    return r


def bench_match_request(Router router, bytes host, bytes path, method, headers, query, Py_ssize_t n):
    """Calls `router.match_request()` n times from C on one request head; returns the last result."""
    cdef _RtRequest rq = _RtRequest(method, path, headers, query)
    cdef const char* hp = host
    cdef const char* bp = rq.buf
    cdef Py_ssize_t hl = len(host)
    cdef object r = None
    while n > 0:
        r = router.match_request(hp, hl, bp, &rq.h)
        n -= 1
    return r


def bench_pick(SmoothWeightedRR balancer, Py_ssize_t n):
    """Calls `balancer.pick()` n times from C; returns the last index."""
    cdef Py_ssize_t r = -1
    while n > 0:
        r = balancer.pick()
        n -= 1
    return r


def bench_picker(TargetPicker picker, Py_ssize_t n):
    """Calls `picker.pick(None)` n times from C (least request's two draws; a hash picker's
    keyless random pick); returns the last index."""
    cdef Py_ssize_t r = -1
    while n > 0:
        r = picker.pick(None)
        n -= 1
    return r


def bench_hash_lookup(HashPicker picker, Py_ssize_t n):
    """n lookups of spread hashes from C (a ring's binary search, a Maglev table index)."""
    cdef Py_ssize_t r = -1
    cdef uint64_t h = 0
    while n > 0:
        h += <uint64_t>0x9e3779b97f4a7c15
        r = picker.lookup(h)
        n -= 1
    return r


def access_log_escape(bytes data, bint json):
    """`data` as the access log writes a field of it: the inside of a JSON string, or text (by the
    line's own writers: the plain-run copy, then the escaping from the first byte that needs it)."""
    cdef WBuf b
    wb_init(&b, 64)
    try:
        if json:
            _json_str(&b, data, len(data))
            return b.data[1:b.len - 1]
        _text_str(&b, data, len(data))
        return wb_bytes(&b)
    finally:
        wb_free(&b)


# ---- auth and IP policies (auth.pyx, apikey.pyx, iprules.pyx) ------------------------------------

cdef Exchange _policy_exchange(bytes raw, bytes client_ip):
    """An Exchange over request head `raw` from `client_ip`, as a request policy sees it."""
    build_upstream_head(raw, client_ip, b"bench-rid")       # sets up the bare connection
    cdef ClientConn conn = _bare_conn
    cdef Py_ssize_t r = parse_request_head(&conn.head, raw, len(raw), &conn.rt.head_limits)
    cdef Exchange ex = Exchange.__new__(Exchange)
    conn.client_ip = client_ip
    ex.init(conn, raw, r, &conn.head)
    ex.request_id = b"bench-rid"
    ex._normalize_path()
    return ex


def run_request_policy(Policy policy, bytes raw, bytes client_ip):
    """One synchronous on_request: (result, answer status, consumer name, client address, the
    X-Forwarded-For it set or None, the upstream edits or None, the upstream query override, the
    lowercase names of the request fields still in the head)."""
    cdef Exchange ex = _policy_exchange(raw, client_ip)
    cdef int r = policy.on_request(ex)
    cdef int i
    kept = [ex.p[ex.h.fields[i].name:ex.h.fields[i].name + ex.h.fields[i].name_len].lower()
            for i in range(ex.h.nfields) if ex.h.fields[i].kind != HK_DROP]
    return (r, ex.answer_status, ex.consumer_name, ex.client_addr, ex.xff_out, ex.upstream_edits, ex.up_query, kept)


def bench_request_policy(Policy policy, bytes raw, bytes client_ip, Py_ssize_t n):
    """n runs of policy.on_request on one exchange (its per-request slots reset each time), from C:
    seconds per run. The policy must not pause."""
    cdef Exchange ex = _policy_exchange(raw, client_ip)
    cdef Py_ssize_t i
    cdef int j
    cdef int kinds[64]
    cdef int nf = min(ex.h.nfields, 64)
    for j in range(nf):
        kinds[j] = ex.h.fields[j].kind
    cdef double t0 = monotonic()
    for i in range(n):
        for j in range(nf):            # a policy may have dropped fields in place (api_key's strip)
            ex.h.fields[j].kind = kinds[j]
        ex.consumer = None
        ex.consumer_name = None
        ex.upstream_edits = None
        ex.client_addr = client_ip
        ex.xff_out = None
        ex.answer_status = 0
        if policy.on_request(ex) == P_PAUSED:
            raise ValueError("the policy paused")
    return (monotonic() - t0) / n


# ---- the log phase's walk (Exchange.finish) ------------------------------------------------------

cdef class _RaisingLogPolicy(Policy):
    def __init__(self, str name):
        Policy.__init__(self, name, "test_raising_log", name)
        self.phases = PH_LOG

    cdef int on_log(self, Exchange ex) except -1:
        raise RuntimeError("log policy failed")


cdef class _CountingLogPolicy(Policy):
    cdef public int logged

    def __init__(self, str name):
        Policy.__init__(self, name, "test_counting_log", name)
        self.phases = PH_LOG

    cdef int on_log(self, Exchange ex) except -1:
        self.logged += 1
        return 0


def run_log_phase(str kinds, bytes raw=b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"):
    """finish() on an exchange whose chain has one log policy per letter of `kinds` ('r' raises,
    'c' counts): what each counting one saw, in order."""
    cdef Exchange ex = _policy_exchange(raw, b"127.0.0.1")
    policies = [_RaisingLogPolicy(f"p{i}") if k == "r" else _CountingLogPolicy(f"p{i}")
                for i, k in enumerate(kinds)]
    ex.chain = PolicyChain(policies)
    ex.resp_complete = True
    ex.finish()
    ex.finish()                     # once only
    return [p.logged for p in policies if isinstance(p, _CountingLogPolicy)]
