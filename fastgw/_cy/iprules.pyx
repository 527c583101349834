# IP rules (docs/auth.md): ip_allow / ip_deny on Exchange.client_addr, and trusted_proxies, which
# takes the client address from X-Forwarded-For or Forwarded as far as trusted proxies vouch for it.
#
# An IpSet is the CIDR list compiled into sorted, merged, non-overlapping ranges of 128-bit
# addresses (IPv4 as ::ffff:a.b.c.d), searched by bisection in C: 10,000 CIDRs take 14 steps, 10
# take 4, and a step is two integer compares, so the lookup costs about the same either way.

from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

cdef extern from "arpa/inet.h" nogil:
    int inet_pton(int af, const char* src, void* dst)
    const char* inet_ntop(int af, const void* src, char* dst, int size)

cdef extern from "sys/socket.h" nogil:
    enum:
        AF_INET
        AF_INET6


cdef bint parse_ip(const char* s, Py_ssize_t n, uint64_t* hi, uint64_t* lo) noexcept nogil:
    """An address as written in a peer address, X-Forwarded-For or Forwarded `for=`: IPv4, IPv6,
    optionally quoted, bracketed, with a port. False for anything else (`unknown`, `_hidden`)."""
    cdef char buf[64]
    cdef uint8_t a[16]
    cdef Py_ssize_t i, start = 0, end = n, colons = 0
    cdef int k
    while start < end and (s[start] == b' ' or s[start] == b'\t' or s[start] == b'"'):
        start += 1
    while end > start and (s[end - 1] == b' ' or s[end - 1] == b'\t' or s[end - 1] == b'"'):
        end -= 1
    if end - start <= 0:
        return False
    if s[start] == b'[':                     # [v6] or [v6]:port
        i = start + 1
        while i < end and s[i] != b']':
            i += 1
        if i == end:
            return False
        start += 1
        end = i
        colons = 2
    else:
        for i in range(start, end):
            if s[i] == b':':
                colons += 1
        if colons == 1:                      # v4:port
            i = start
            while s[i] != b':':
                i += 1
            end = i
    if end - start >= 63:
        return False
    memcpy(buf, s + start, end - start)
    buf[end - start] = 0
    memset(a, 0, 16)
    if colons >= 2:
        if inet_pton(AF_INET6, buf, a) != 1:
            return False
    else:
        if inet_pton(AF_INET, buf, a + 12) != 1:
            return False
        a[10] = 0xff
        a[11] = 0xff
    hi[0] = 0
    lo[0] = 0
    for k in range(8):
        hi[0] = (hi[0] << 8) | a[k]
        lo[0] = (lo[0] << 8) | a[k + 8]
    return True


cdef bytes ip_text(uint64_t hi, uint64_t lo):
    """The canonical text of an address (IPv4 for ::ffff:a.b.c.d)."""
    cdef uint8_t a[16]
    cdef char buf[64]
    cdef int k
    for k in range(8):
        a[7 - k] = (hi >> (8 * k)) & 0xff
        a[15 - k] = (lo >> (8 * k)) & 0xff
    if hi == 0 and (lo >> 32) == 0xffff:
        inet_ntop(AF_INET, a + 12, buf, 64)
    else:
        inet_ntop(AF_INET6, a, buf, 64)
    return <bytes>buf


cdef class IpSet:
    cdef uint64_t* start_hi
    cdef uint64_t* start_lo
    cdef uint64_t* end_hi
    cdef uint64_t* end_lo
    cdef readonly Py_ssize_t n_ranges
    cdef readonly Py_ssize_t n_cidrs

    def __init__(self, ranges, Py_ssize_t n_cidrs=0):
        """ranges: sorted, merged [(first, last)] as 128-bit ints (fastgw.auth.ipsets builds them)."""
        cdef Py_ssize_t i, n = len(ranges)
        self.n_cidrs = n_cidrs
        self.start_hi = <uint64_t*>malloc(max(n, 1) * sizeof(uint64_t))
        self.start_lo = <uint64_t*>malloc(max(n, 1) * sizeof(uint64_t))
        self.end_hi = <uint64_t*>malloc(max(n, 1) * sizeof(uint64_t))
        self.end_lo = <uint64_t*>malloc(max(n, 1) * sizeof(uint64_t))
        if not (self.start_hi and self.start_lo and self.end_hi and self.end_lo):
            raise MemoryError()
        for i in range(n):
            first, last = ranges[i]
            self.start_hi[i] = first >> 64
            self.start_lo[i] = first & 0xFFFFFFFFFFFFFFFF
            self.end_hi[i] = last >> 64
            self.end_lo[i] = last & 0xFFFFFFFFFFFFFFFF
        self.n_ranges = n

    def __dealloc__(self):
        free(self.start_hi)
        free(self.start_lo)
        free(self.end_hi)
        free(self.end_lo)

    cdef bint has(self, uint64_t hi, uint64_t lo) noexcept nogil:
        # the last range starting at or before the address, then whether it reaches it
        cdef Py_ssize_t a = 0, b = self.n_ranges, m
        while a < b:
            m = (a + b) >> 1
            if self.start_hi[m] < hi or (self.start_hi[m] == hi and self.start_lo[m] <= lo):
                a = m + 1
            else:
                b = m
        if a == 0:
            return False
        a -= 1
        return self.end_hi[a] > hi or (self.end_hi[a] == hi and self.end_lo[a] >= lo)

    cdef int has_text(self, bytes addr):
        """1 in the set, 0 not, -1 not an address."""
        cdef uint64_t hi, lo
        if not parse_ip(PyBytes_AS_STRING(addr), PyBytes_GET_SIZE(addr), &hi, &lo):
            return -1
        return self.has(hi, lo)

    def __contains__(self, addr):
        return self.has_text(addr.encode() if isinstance(addr, str) else bytes(addr)) == 1


cdef class IpRulePolicy(Policy):
    """ip_allow (only addresses in the set pass) or ip_deny (addresses in it are refused), 403."""
    cdef IpSet cidrs
    cdef bint allow

    def __init__(self, str name, str key, IpSet cidrs, bint allow, config=None):
        Policy.__init__(self, name, "ip_allow" if allow else "ip_deny", key, config)
        self.phases = PH_REQUEST
        self.cidrs = cidrs
        self.allow = allow

    cdef int on_request(self, Exchange ex) except -1:
        cdef uint64_t hi = 0, lo = 0
        cdef bint inside = parse_ip(PyBytes_AS_STRING(ex.client_addr), PyBytes_GET_SIZE(ex.client_addr),
                                    &hi, &lo) and self.cidrs.has(hi, lo)
        if inside != self.allow:
            ex.answer_json(403, b"forbidden", b"", RF_POLICY_ANSWER)
            return P_ANSWERED
        return P_CONTINUE

    def describe(self):
        return f"{'allow only' if self.allow else 'deny'} {self.cidrs.n_cidrs} CIDRs ({self.cidrs.n_ranges} ranges)"


cdef bytes _FORWARDED = b"forwarded"


cdef class TrustedProxies(Policy):
    """Sets Exchange.client_addr from X-Forwarded-For (or Forwarded `for=`) when the peer is a
    trusted proxy: walking the list from the right past addresses in `trusted` (the first one
    outside it is the client), or taking the `depth`-th from the right. The upstream's
    X-Forwarded-For becomes the client and the proxies after it, then the peer; what a client wrote
    before that is dropped, so nobody upstream reads a spoofed first entry."""
    cdef IpSet trusted                  # None: depth mode, any peer
    cdef int depth
    cdef bint use_forwarded

    def __init__(self, str name, str key, IpSet trusted, int depth, bint use_forwarded, config=None):
        Policy.__init__(self, name, "trusted_proxies", key, config)
        self.phases = PH_REQUEST
        self.trusted = trusted
        self.depth = depth
        self.use_forwarded = use_forwarded

    cdef list _entries(self, Exchange ex):
        cdef MessageHead* h = ex.h
        cdef const char* p = ex.p
        cdef HeaderField* f
        cdef int i
        cdef list out = []
        for i in range(h.nfields):
            f = &h.fields[i]
            if self.use_forwarded:
                if f.kind == HK_DROP or f.name_len != 9 or not _ci_eq(p + f.name, 9, b"forwarded", 9):
                    continue
                for element in p[f.value:f.value + f.value_len].split(b","):
                    node = None
                    for pair in element.split(b";"):
                        k, _, v = pair.strip().partition(b"=")
                        if k.lower() == b"for":
                            node = v.strip()
                    out.append(node if node is not None else b"")
            elif f.kind == HK_X_FORWARDED_FOR:
                for item in p[f.value:f.value + f.value_len].split(b","):
                    out.append(item)
        return out

    cdef int on_request(self, Exchange ex) except -1:
        cdef bytes peer = ex.down.client_ip
        cdef uint64_t hi, lo
        cdef list entries
        cdef Py_ssize_t i, n, client_at
        cdef bytes client = peer
        cdef bytes e
        if self.trusted is not None and self.trusted.has_text(peer) != 1:
            ex.xff_out = peer             # an untrusted peer's X-Forwarded-For is its own invention
            return P_CONTINUE
        entries = self._entries(ex)
        n = len(entries)
        client_at = n                     # entries[client_at:] are vouched for
        if self.trusted is not None:
            i = n - 1
            while i >= 0:
                e = <bytes>entries[i]
                if not parse_ip(PyBytes_AS_STRING(e), PyBytes_GET_SIZE(e), &hi, &lo):
                    break                 # garbage from a trusted hop: the hop itself is the client
                client = ip_text(hi, lo)
                client_at = i
                if not self.trusted.has(hi, lo):
                    break
                i -= 1
        elif n >= self.depth:
            e = <bytes>entries[n - self.depth]
            if parse_ip(PyBytes_AS_STRING(e), PyBytes_GET_SIZE(e), &hi, &lo):
                client = ip_text(hi, lo)
                client_at = n - self.depth
        ex.client_addr = client
        if client_at < n:
            ex.xff_out = b", ".join([ip_text_of(<bytes>x) for x in entries[client_at:]] + [peer])
        else:
            ex.xff_out = peer
        return P_CONTINUE

    def describe(self):
        src = "Forwarded" if self.use_forwarded else "X-Forwarded-For"
        if self.trusted is not None:
            return f"client address from {src} through {self.trusted.n_cidrs} trusted CIDRs"
        return f"client address from {src} at depth {self.depth}"


cdef bytes ip_text_of(bytes written):
    cdef uint64_t hi, lo
    if parse_ip(PyBytes_AS_STRING(written), PyBytes_GET_SIZE(written), &hi, &lo):
        return ip_text(hi, lo)
    return written.strip()


def parse_address(addr):
    """(hi, lo) of an address as the request path parses it, or None (for tests)."""
    cdef uint64_t hi, lo
    cdef bytes b = addr.encode() if isinstance(addr, str) else bytes(addr)
    if not parse_ip(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), &hi, &lo):
        return None
    return (<object>hi << 64) | <object>lo
