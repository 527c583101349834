# W3C Trace Context (https://www.w3.org/TR/trace-context/) on the request path: `traceparent` and
# `tracestate` parsed and validated, trace and span ids drawn, the headers sent upstream, and the
# finished sampled exchange handed to the worker's span queue. Encoding and export (OTLP) happen off
# the request path, in fastgw/tracing.py.
#
# Everything here runs only when the Runtime has tracing on (Runtime.tracing is not None): with it off
# an exchange pays one pointer comparison in run() and finish(), and one integer test in the upstream
# head (tc.trace_hi | tc.trace_lo, zero when no trace began).

from libc.stdint cimport int8_t, int64_t, uint8_t, uint64_t
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memcpy
import os as _tc_os

cdef enum:
    TRACEPARENT_V00_LEN = 55          # 2 + 1 + 32 + 1 + 16 + 1 + 2
    TRACEPARENT_LINE_LEN = 70         # "traceparent: " + 55 + CRLF
    TRACESTATE_MAX_MEMBERS = 32
    TRACESTATE_MAX_LEN = 512          # what the spec asks a vendor to propagate at least
    TRACE_FLAG_SAMPLED = 1


# An exchange's trace, inside the Exchange (zeroed with it: trace_hi == trace_lo == 0 is "none").
cdef struct TraceCtx:
    uint64_t trace_hi
    uint64_t trace_lo
    uint64_t parent          # the caller's span id; 0 when the gateway started the trace
    uint64_t server_span
    uint64_t client_span     # the current upstream attempt's span: the parent the upstream sees
    uint8_t flags            # as sent upstream: the sampled bit only (the spec's "other flags" are 0)
    bint sampled
    Py_ssize_t state_off     # the incoming tracestate to forward (one field), in the raw head
    Py_ssize_t state_len     # 0: none to forward (or ex.trace_state holds fields joined)
    Py_ssize_t span_hex_off  # where the client span id's hex sits in the upstream head (0: not there)
    double t_attempt         # when the current upstream attempt began (sampled traces only)


cdef int8_t _LCHEX[256]


cdef void _init_lchex():
    cdef int c
    for c in range(256):
        _LCHEX[c] = -1
    for c in range(48, 58):
        _LCHEX[c] = c - 48
    for c in range(97, 103):
        _LCHEX[c] = c - 87


_init_lchex()


cdef inline bint _hex64(const char* p, int n, uint64_t* out) noexcept nogil:
    """n (<= 16) lowercase hex digits; the spec allows no uppercase."""
    cdef uint64_t v = 0
    cdef int i
    cdef int8_t d
    for i in range(n):
        d = _LCHEX[<uint8_t>p[i]]
        if d < 0:
            return False
        v = (v << 4) | <uint64_t>d
    out[0] = v
    return True


cdef bint parse_traceparent(const char* p, Py_ssize_t n, TraceCtx* tc) noexcept nogil:
    """Fills trace id, parent and flags from a traceparent value; False when it is invalid (the
    caller then starts a new trace). Version 00 must be exactly 55 characters; a higher version is
    read by the 00 layout as the spec's versioning rules say, provided the flags end the value or are
    followed by '-'. Version ff is forbidden."""
    cdef uint64_t version, hi, lo, parent, flags
    if n < TRACEPARENT_V00_LEN:
        return False
    if not _hex64(p, 2, &version) or version == 0xff or p[2] != b'-':
        return False
    if version == 0 and n != TRACEPARENT_V00_LEN:
        return False
    if version != 0 and n > TRACEPARENT_V00_LEN and p[TRACEPARENT_V00_LEN] != b'-':
        return False
    if p[35] != b'-' or p[52] != b'-':
        return False
    if not (_hex64(p + 3, 16, &hi) and _hex64(p + 19, 16, &lo) and _hex64(p + 36, 16, &parent)
            and _hex64(p + 53, 2, &flags)):
        return False
    if (hi == 0 and lo == 0) or parent == 0:
        return False
    tc.trace_hi = hi
    tc.trace_lo = lo
    tc.parent = parent
    tc.flags = <uint8_t>(flags & TRACE_FLAG_SAMPLED)
    return True


cdef inline bint _ts_key_char(uint8_t c) noexcept nogil:
    return (97 <= c <= 122) or (48 <= c <= 57) or c == b'_' or c == b'-' or c == b'*' or c == b'/' or c == b'@'


cdef bint tracestate_valid(const char* p, Py_ssize_t n) noexcept nogil:
    """A tracestate worth forwarding: at most 512 characters and 32 list-members, each `key=value`
    with the spec's key and value characters (empty members allowed). Anything else is dropped
    whole, which the spec allows a proxy to do; forwarding a malformed one would only move the
    problem downstream."""
    cdef Py_ssize_t i = 0, start, end, eq, k
    cdef int members = 0
    cdef uint8_t c
    if n > TRACESTATE_MAX_LEN:
        return False
    while i <= n:
        start = i
        while i < n and p[i] != b',':
            i += 1
        end = i
        i += 1                                      # past the comma (or the end)
        while start < end and (p[start] == b' ' or p[start] == b'\t'):
            start += 1
        while end > start and (p[end - 1] == b' ' or p[end - 1] == b'\t'):
            end -= 1
        if start == end:
            continue                                # an empty member
        members += 1
        if members > TRACESTATE_MAX_MEMBERS:
            return False
        eq = start
        while eq < end and p[eq] != b'=':
            eq += 1
        if eq == start or end - eq - 1 <= 0 or eq - start > 256 or end - eq - 1 > 256:
            return False
        c = <uint8_t>p[start]
        if not ((97 <= c <= 122) or (48 <= c <= 57)):
            return False
        for k in range(start + 1, eq):
            if not _ts_key_char(<uint8_t>p[k]):
                return False
        for k in range(eq + 1, end):
            c = <uint8_t>p[k]
            if c < 0x20 or c > 0x7e or c == b',' or c == b'=':
                return False
    return True


cdef class TraceExtra:
    """What only some traces have, made when needed so that an Exchange carries one pointer for it."""
    cdef bytes state                 # a tracestate sent in several fields, joined
    cdef list attempts               # upstream attempts of a sampled trace that failed and were retried


cdef inline TraceExtra _extra(Exchange ex):
    if ex.trace_extra is None:
        ex.trace_extra = TraceExtra.__new__(TraceExtra)
    return ex.trace_extra


cdef class TraceSettings:
    """The request path's part of the `tracing:` config, compiled into the Runtime."""
    cdef readonly double sample_rate
    cdef uint64_t threshold       # a new trace is sampled when the next random number is below it
    cdef bint always

    def __init__(self, double sample_rate):
        self.sample_rate = sample_rate
        self.always = sample_rate >= 1.0
        # 2**64 * rate, as an integer the RNG's output compares with; 0 never samples
        self.threshold = <uint64_t>(sample_rate * 18446744073709551616.0) if not self.always else 0


cdef class TraceSink:
    """A worker's ids and its queue of finished sampled exchanges, drained by the exporter
    (fastgw/tracing.py). The queue is bounded in spans: beyond max_queue an exchange's spans are
    dropped and counted, so a collector that is down or slow costs memory up to the bound and no
    time on the request path."""
    cdef uint64_t rng
    cdef list pending
    cdef readonly Py_ssize_t pending_spans
    cdef public Py_ssize_t max_queue
    cdef public Py_ssize_t batch_size
    cdef public object wakeup          # called once the queue holds batch_size spans (or None)
    cdef bint woken
    cdef readonly int64_t dropped
    cdef readonly int64_t exported
    cdef readonly int64_t failed
    cdef readonly double clock_offset  # unix time minus monotonic time, read once per worker

    def __init__(self, Py_ssize_t max_queue=4096, Py_ssize_t batch_size=512):
        import time
        self.pending = []
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.wakeup = None
        self.rng = 0
        while self.rng == 0:
            self.rng = int.from_bytes(_tc_os.urandom(8), "little")
        self.clock_offset = time.time() - monotonic()

    cdef inline uint64_t next_random(self) noexcept:
        # xorshift64*: a few instructions, and never 0 from a nonzero state
        cdef uint64_t x = self.rng
        x ^= x >> 12
        x ^= x << 25
        x ^= x >> 27
        self.rng = x
        return x * <uint64_t>2685821657736338717

    cdef inline uint64_t next_id(self) noexcept:
        cdef uint64_t v = self.next_random()
        while v == 0:                    # ids may never be zero (the spec's invalid value)
            v = self.next_random()
        return v

    cdef void add(self, tuple record, Py_ssize_t nspans) except *:
        if self.pending_spans + nspans > self.max_queue:
            self.dropped += nspans
            return
        self.pending.append(record)
        self.pending_spans += nspans
        if self.pending_spans >= self.batch_size and not self.woken and self.wakeup is not None:
            self.woken = True
            self.wakeup()

    def take(self, Py_ssize_t max_spans):
        """Finished exchanges holding at most max_spans spans (at least one exchange), oldest first."""
        cdef Py_ssize_t i = 0, spans = 0, n = len(self.pending)
        cdef tuple rec
        while i < n:
            rec = <tuple>self.pending[i]
            if i and spans + <Py_ssize_t>rec[0] > max_spans:
                break
            spans += <Py_ssize_t>rec[0]
            i += 1
        out = self.pending[:i]
        del self.pending[:i]
        self.pending_spans -= spans
        if self.pending_spans < self.batch_size:
            self.woken = False
        return out

    def count_exported(self, int64_t n):
        self.exported += n

    def count_failed(self, int64_t n):
        self.failed += n

    def random_id(self):
        """A fresh nonzero 64-bit id (the exporter's tests and tools)."""
        return self.next_id()

    def seed(self, uint64_t value):
        """Restarts the ids and the sampling coin from `value` (nonzero): repeatable runs for
        bench/instructions.py; never called by the gateway."""
        if value == 0:
            raise ValueError("the seed must be nonzero")
        self.rng = value


cdef char _HEXPAIRS[512]          # "000102...ff": a byte's two hex digits at 2 * byte


cdef void _init_hexpairs():
    cdef int i
    for i in range(256):
        _HEXPAIRS[2 * i] = _HEXDIGITS[i >> 4]
        _HEXPAIRS[2 * i + 1] = _HEXDIGITS[i & 15]


_init_hexpairs()


cdef inline void _hex16(char* dst, uint64_t v) noexcept nogil:
    """v as 16 lowercase hex digits at dst, a byte at a time."""
    cdef int i
    for i in range(7, -1, -1):
        memcpy(dst + 2 * i, &_HEXPAIRS[2 * (v & 0xff)], 2)
        v >>= 8


cdef bytes hex64(uint64_t v):
    cdef char tmp[16]
    _hex16(tmp, v)
    return PyBytes_FromStringAndSize(tmp, 16)


cdef void trace_new(TraceCtx* tc, TraceSink sink, TraceSettings ts) noexcept:
    """A trace the gateway starts: random ids, sampled at the configured rate."""
    tc.trace_hi = sink.next_random()
    tc.trace_lo = sink.next_id()
    tc.parent = 0
    tc.sampled = ts.always or sink.next_random() < ts.threshold
    tc.flags = TRACE_FLAG_SAMPLED if tc.sampled else 0
    tc.server_span = sink.next_id()


cdef void trace_begin(Exchange ex) except *:
    """The request head is parsed: continue the caller's trace or start one. Both headers are marked
    so that the upstream head leaves them out; trace_put_upstream writes the gateway's own."""
    cdef MessageHead* h = ex.h
    cdef const char* p = ex.p
    cdef TraceCtx* tc = &ex.tc
    cdef HeaderField* f
    cdef HeaderField* parent_field = NULL
    cdef HeaderField* state_field = NULL
    cdef int i, nparent = 0, nstate = 0
    cdef list parts
    cdef bytes joined
    for i in range(h.nfields):
        f = &h.fields[i]
        if f.kind != HK_OTHER:
            continue
        if f.name_len == 11 and _ci_eq(p + f.name, 11, b"traceparent", 11):
            f.kind = HK_TRACE_CONTEXT
            parent_field = f
            nparent += 1
        elif f.name_len == 10 and _ci_eq(p + f.name, 10, b"tracestate", 10):
            f.kind = HK_TRACE_CONTEXT
            if state_field == NULL:
                state_field = f
            nstate += 1
    # a repeated traceparent is ambiguous: restarted, as the spec's test suite expects
    if nparent == 1 and parse_traceparent(p + parent_field.value, parent_field.value_len, tc):
        tc.sampled = tc.flags & TRACE_FLAG_SAMPLED
        tc.server_span = ex.worker.traces.next_id()
        if nstate == 1:
            if state_field.value_len and tracestate_valid(p + state_field.value, state_field.value_len):
                tc.state_off = state_field.value
                tc.state_len = state_field.value_len
        elif nstate > 1:
            # several fields are one list (RFC 9110 5.3), joined in order
            parts = []
            for i in range(h.nfields):
                f = &h.fields[i]
                if f.kind == HK_TRACE_CONTEXT and f.name_len == 10 and f.value_len:
                    parts.append(p[f.value:f.value + f.value_len])
            joined = b",".join(parts)
            if joined and tracestate_valid(joined, PyBytes_GET_SIZE(joined)):
                _extra(ex).state = joined
        return
    # invalid or absent: a new trace, and the tracestate (which belonged to the old one) is dropped
    trace_new(tc, ex.worker.traces, ex.rt.tracing)


cdef void trace_put_upstream(Exchange ex, WBuf* out) except *:
    """traceparent (naming the upstream attempt's CLIENT span, which is exported, as the parent)
    and the tracestate that came with the caller's traceparent."""
    cdef TraceCtx* tc = &ex.tc
    cdef char* dst
    tc.client_span = ex.worker.traces.next_id()
    wb_reserve(out, TRACEPARENT_LINE_LEN)
    dst = out.data + out.len
    memcpy(dst, b"traceparent: 00-", 16)
    _hex16(dst + 16, tc.trace_hi)
    _hex16(dst + 32, tc.trace_lo)
    dst[48] = b'-'
    _hex16(dst + 49, tc.client_span)
    memcpy(dst + 65, b"-01\r\n" if tc.flags & TRACE_FLAG_SAMPLED else b"-00\r\n", 5)
    tc.span_hex_off = out.len + 49
    out.len += TRACEPARENT_LINE_LEN
    # (wb_put rather than _put_line: another caller of that would stop it being inlined on the hot path)
    if tc.state_len:
        wb_put(out, b"tracestate: ", 12)
        wb_put(out, ex.p + tc.state_off, tc.state_len)
        wb_put(out, b"\r\n", 2)
    elif ex.trace_extra is not None and ex.trace_extra.state is not None:
        wb_put(out, b"tracestate: ", 12)
        wb_put(out, PyBytes_AS_STRING(ex.trace_extra.state), PyBytes_GET_SIZE(ex.trace_extra.state))
        wb_put(out, b"\r\n", 2)


cdef bytes trace_retry(Exchange ex, int failure_flag, bytes head):
    """An upstream attempt failed and is retried: the failed attempt becomes a CLIENT span of its
    own, and the replayed head names the new attempt's span (a copy of `head` with its span id
    replaced)."""
    cdef TraceCtx* tc = &ex.tc
    cdef double now = monotonic()
    cdef bytes patched
    cdef TraceExtra extra
    if tc.sampled:
        extra = _extra(ex)
        if extra.attempts is None:
            extra.attempts = []
        extra.attempts.append((tc.client_span, tc.t_attempt, now, ex.target, failure_flag, 0))
    tc.client_span = ex.worker.traces.next_id()
    tc.t_attempt = now
    if tc.span_hex_off <= 0 or tc.span_hex_off + 16 > PyBytes_GET_SIZE(head):
        return head
    patched = PyBytes_FromStringAndSize(PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head))
    _hex16(PyBytes_AS_STRING(patched) + tc.span_hex_off, tc.client_span)
    return patched


cdef int _UPSTREAM_FAILURES = (RF_UPSTREAM_CONNECT_FAILURE | RF_UPSTREAM_TIMEOUT | RF_UPSTREAM_RESET
                              | RF_UPSTREAM_PROTOCOL_ERROR | RF_UPSTREAM_BODY_TIMEOUT)


cdef void trace_end(Exchange ex) except *:
    """The log phase: a sampled exchange's spans go to the worker's queue, as plain values (the
    exporter encodes them later). An exchange that never ran its request phase (a refused head)
    gets a trace of its own here."""
    cdef TraceCtx* tc = &ex.tc
    cdef list attempts
    cdef double t_start
    cdef str state = None
    cdef object route_pattern = None
    cdef TraceExtra extra = ex.trace_extra
    if tc.trace_hi == 0 and tc.trace_lo == 0:
        trace_new(tc, ex.worker.traces, ex.rt.tracing)
    if not tc.sampled:
        return
    attempts = extra.attempts if extra is not None and extra.attempts is not None else []
    if tc.t_attempt != 0.0 and ex.target is not None:
        attempts.append((tc.client_span, tc.t_attempt, ex.t_done, ex.target,
                         ex.flags & _UPSTREAM_FAILURES, ex.status if ex.t_first_byte != 0.0 else 0))
    # a connection's first exchange began at the accept; a keep-alive one when its head arrived
    t_start = ex.t_accept if ex.down.nrequests <= 1 else ex.t_head
    if tc.state_len:
        state = ex.p[tc.state_off:tc.state_off + tc.state_len].decode("ascii")
    elif extra is not None and extra.state is not None:
        state = extra.state.decode("ascii")
    if ex.rmatch is not None:
        route_pattern = ex.rmatch.pattern
    ex.worker.traces.add((
        1 + len(attempts), tc.trace_hi, tc.trace_lo, tc.parent, tc.server_span, tc.flags, state,
        t_start, ex.t_done, ex.method, ex.path_bytes, ex.host, ex.down.local_port, ex.client_ip,
        ex.status, ex.route_name, ex.upstream_name, ex.flags,
        -1 if ex.down.h2 else ex.h.version_minor if ex.h != NULL else 1,     # -1: HTTP/2
        ex.header_value(b"user-agent") if ex.h != NULL else None,
        route_pattern, ex.up_head, attempts,
    ), 1 + len(attempts))


cdef object trace_hex(uint64_t hi, uint64_t lo):
    if hi == 0 and lo == 0:
        return None
    return (hex64(hi) + hex64(lo)).decode("ascii")


def parse_traceparent_value(bytes value):
    """(trace_id, parent_id, sampled) as hex strings and a bool, or None for an invalid value: the
    request path's parser, for tests and tools."""
    cdef TraceCtx tc
    if not parse_traceparent(value, PyBytes_GET_SIZE(value), &tc):
        return None
    return (trace_hex(tc.trace_hi, tc.trace_lo), hex64(tc.parent).decode("ascii"),
            bool(tc.flags & TRACE_FLAG_SAMPLED))


def tracestate_acceptable(bytes value):
    """Whether the request path forwards this tracestate value."""
    return tracestate_valid(value, PyBytes_GET_SIZE(value))
