# Route table: compiled once per config into flat C arrays; matched with no Python allocation.
#
# Semantics follow the Kubernetes Gateway API HTTPRoute rules (hostnames + path Exact/PathPrefix):
#   host:  exact host, then wildcard suffixes longest first ('*.example.com' needs at least one label
#          before '.example.com'), then host-less routes. A less specific host is only tried when no
#          route under the more specific one matches the path.
#   path:  within one host: exact (byte-exact, case-sensitive) beats prefix; the longest prefix wins;
#          prefixes match on '/' segment boundaries; one trailing '/' of a prefix is ignored; prefix '/'
#          (stored as the empty key) matches every path. Ties go to the earlier route.
#
# Layout. Every key lives in ONE open-addressing hash table of entries keyed by (ns, kind, bytes):
#   kind HOST_EXACT / HOST_WILD (ns 0): key = host or wildcard suffix ('.example.com'); value = the
#        namespace id (ns) of that host's path table.
#   kind PATH_EXACT / PATH_PREFIX (ns >= 1): key = path or normalised prefix; value = a run of candidates
#        in `_cands`, in precedence order (today: route order).
# Matching hashes the path once (8 bytes a step, forward), remembering the hash of path[:i] at every '/' whose
# length i is a prefix length present in the table, so every prefix probe is O(1) + one memcmp. Hosts
# are hashed backwards so that the hash of every '.'-suffix falls out of one pass as well. Work per
# request is bounded by the longest key in the table, not by the request's path length.
# Hash quality only affects speed: every hit is confirmed with memcmp, and probe chains depend on the
# table alone (a miss stops at the first empty slot), so request bytes cannot lengthen them.
# The prefix/host scratch arrays live on the Router: match() is not reentrant across threads
# (the event loop calls it with the GIL held).
#
# Extension point (methods, headers, query params, regex, templates): a candidate carries its own
# conditions (`n_conds` today is always 0); `_rt_cand_ok` is where they will be checked, and candidates
# in a run will be sorted by Gateway API precedence (method, #headers, #query params, then order).
# A failed condition falls through to the next candidate, next shorter prefix, next less specific host,
# exactly like a failed path match does now. Regex/template candidates would hang off `_rt_NS` as
# an extra per-namespace candidate list tried after the prefix probes.

from cpython.ref cimport PyObject
from libc.stdint cimport int32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy

cdef enum:
    _RT_PATH_EXACT = 1
    _RT_PATH_PREFIX = 2
    _RT_HOST_EXACT = 3
    _RT_HOST_WILD = 4

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #define _RT_FNV_OFFSET 0xcbf29ce484222325ULL
    #define _RT_FNV_PRIME 0x100000001b3ULL
    #define _RT_MIX_K0 0x9e3779b97f4a7c15ULL
    #define _RT_MIX_K1 0xbf58476d1ce4e5b9ULL
    #define _RT_MIX_K2 0x94d049bb133111ebULL
    /* Path keys are hashed 8 bytes at a time; the hash of any prefix path[:n] is the running state
       over its whole words, finished with the (zero-padded) tail and the length. */
    static inline uint64_t _rt_load8(const unsigned char* p) {
        uint64_t w; memcpy(&w, p, 8); return w;
    }
    static inline uint64_t _rt_wstep(uint64_t s, uint64_t w) {
        s = (s ^ w) * 0x9fb21c651e98df25ULL;
        return (s << 31) | (s >> 33);
    }
    static inline uint64_t _rt_wfin(uint64_t s, const unsigned char* tail, Py_ssize_t tl, Py_ssize_t n) {
        uint64_t w = 0;
        memcpy(&w, tail, (size_t)tl);
        return s ^ (w * 0xc2b2ae3d27d4eb4fULL) ^ ((uint64_t)n * 0x165667b19e3779f9ULL);
    }
    """
    const uint64_t _RT_FNV_OFFSET
    const uint64_t _RT_FNV_PRIME
    const uint64_t _RT_MIX_K0
    const uint64_t _RT_MIX_K1
    const uint64_t _RT_MIX_K2
    uint64_t _rt_load8(const unsigned char* p) noexcept nogil
    uint64_t _rt_wstep(uint64_t s, uint64_t w) noexcept nogil
    uint64_t _rt_wfin(uint64_t s, const unsigned char* tail, Py_ssize_t tl, Py_ssize_t n) noexcept nogil


cdef struct _rt_Slot:
    uint64_t hash          # full mixed hash of the entry in `idx`
    int32_t idx            # index into entries, -1 = empty


cdef struct _rt_Entry:
    uint64_t hash
    int32_t ns
    int32_t kind
    Py_ssize_t key_off     # into the key blob
    Py_ssize_t key_len
    int32_t value          # host kinds: ns id; path kinds: first candidate
    int32_t count          # path kinds: number of candidates


cdef struct _rt_Cand:
    PyObject* payload      # borrowed; Router._payloads holds the references
    int32_t route_index
    int32_t n_conds        # future per-candidate conditions (method, headers, query); 0 = none


cdef struct _rt_NS:
    int32_t n_exact        # number of exact-path keys under this host
    Py_ssize_t max_prefix  # longest prefix key under this host, -1 = no prefixes


cdef struct _rt_Mark:
    uint64_t hash          # FNV state over the bytes before the mark
    Py_ssize_t len         # key length at the mark


cdef inline uint64_t _rt_hash_fwd(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    # path keys; must agree with the incremental hashing in Router._match_c
    cdef uint64_t s = _RT_FNV_OFFSET
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        s = _rt_wstep(s, _rt_load8(p + i))
        i += 8
    return _rt_wfin(s, p + i, n - i, n)


cdef inline uint64_t _rt_fnv_rev(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = _RT_FNV_OFFSET
    cdef Py_ssize_t i
    for i in range(n - 1, -1, -1):
        h = (h ^ p[i]) * _RT_FNV_PRIME
    return h


cdef inline uint64_t _rt_mix(uint64_t h, int32_t ns, int32_t kind) noexcept nogil:
    # splitmix64 finaliser over (key hash, namespace, kind)
    h ^= ((<uint64_t>ns) << 3) ^ (<uint64_t>kind) ^ _RT_MIX_K0
    h ^= h >> 30
    h *= _RT_MIX_K1
    h ^= h >> 27
    h *= _RT_MIX_K2
    h ^= h >> 31
    return h


cdef inline bint _rt_cand_ok(const _rt_Cand* c) noexcept nogil:
    # Per-candidate conditions (method/headers/query) will be evaluated here.
    return c.n_conds == 0


cdef inline Py_ssize_t _rt_norm_prefix_len(bytes p):
    # '/abc/' behaves as '/abc'; '/' becomes the empty key (matches every path)
    cdef Py_ssize_t n = len(p)
    if n > 0 and p[n - 1] == 47:  # '/'
        return n - 1
    return n


def _rt_as_bytes(value, what):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"{what} must be str or bytes, got {type(value).__name__}")


def _rt_compile(routes):
    """Groups routes into (ns, kind, key) -> [route index, ...]; assigns a namespace id per host."""
    ns_ids = {}          # ("h", host) / ("w", suffix) / ("*",) -> ns id
    groups = {}          # (ns, kind, key) -> [route_index, ...] (route order)
    payloads = []
    ns_exact = [0]
    ns_maxp = [-1]

    def ns_for(k):
        nid = ns_ids.get(k)
        if nid is None:
            nid = len(ns_exact)
            ns_ids[k] = nid
            ns_exact.append(0)
            ns_maxp.append(-1)
        return nid

    for ri, r in enumerate(routes):
        hosts = getattr(r, "hosts", None)
        pe = getattr(r, "path_exact", None)
        pp = getattr(r, "path_prefix", None)
        if pe is not None and pp is not None:
            raise ValueError(f"route {ri}: path_exact and path_prefix are both set")
        if pe is not None:
            kind = _RT_PATH_EXACT
            key = _rt_as_bytes(pe, "path_exact")
            if not key.startswith(b"/"):
                raise ValueError(f"route {ri}: path_exact must start with '/': {pe!r}")
        else:
            kind = _RT_PATH_PREFIX
            key = b"/" if pp is None else _rt_as_bytes(pp, "path_prefix")
            if not key.startswith(b"/"):
                raise ValueError(f"route {ri}: path_prefix must start with '/': {pp!r}")
            key = key[:_rt_norm_prefix_len(key)]
        payloads.append(r.payload)
        nskeys = []
        if not hosts:
            nskeys.append(("*",))
        else:
            for host in hosts:
                hb = _rt_as_bytes(host, "host").lower()
                if hb == b"*":
                    nk = ("*",)
                elif hb.startswith(b"*."):
                    suffix = hb[1:]
                    if len(suffix) < 2 or b"*" in suffix:
                        raise ValueError(f"route {ri}: bad wildcard host {host!r}")
                    nk = ("w", suffix)
                else:
                    if not hb or b"*" in hb:
                        raise ValueError(f"route {ri}: bad host {host!r}")
                    nk = ("h", hb)
                if nk not in nskeys:
                    nskeys.append(nk)
        for nk in nskeys:
            nid = ns_for(nk)
            gk = (nid, kind, key)
            lst = groups.get(gk)
            if lst is None:
                groups[gk] = [ri]
                if kind == _RT_PATH_EXACT:
                    ns_exact[nid] += 1
                elif len(key) > ns_maxp[nid]:
                    ns_maxp[nid] = len(key)
            else:
                lst.append(ri)

    return groups, ns_ids, payloads, ns_exact, ns_maxp


cdef class Router:
    cdef list _payloads          # keeps candidate payloads alive
    cdef _rt_Slot* _slots
    cdef uint64_t _mask
    cdef _rt_Entry* _ents
    cdef Py_ssize_t _n_ents
    cdef char* _blob
    cdef _rt_Cand* _cands
    cdef Py_ssize_t _n_cands
    cdef _rt_NS* _ns             # indexed by ns id (0 unused)
    cdef Py_ssize_t _n_ns
    cdef int32_t _any_ns         # ns of host-less routes, -1 = none
    cdef unsigned char* _has_plen  # _has_plen[L] = 1 if some prefix key has length L
    cdef Py_ssize_t _max_prefix  # longest prefix key, -1 = none
    cdef Py_ssize_t _max_exact   # longest exact path key, -1 = none
    cdef Py_ssize_t _max_host    # longest exact host key, -1 = none
    cdef Py_ssize_t _max_wild    # longest wildcard suffix key (incl. the leading '.'), -1 = none
    cdef _rt_Mark* _pmarks       # scratch: prefix boundaries of the current path
    cdef _rt_Mark* _hmarks       # scratch: wildcard suffixes of the current host
    cdef readonly Py_ssize_t n_routes

    def __cinit__(self):
        self._slots = NULL
        self._ents = NULL
        self._blob = NULL
        self._cands = NULL
        self._ns = NULL
        self._has_plen = NULL
        self._pmarks = NULL
        self._hmarks = NULL
        self._any_ns = -1
        self._max_prefix = -1
        self._max_exact = -1
        self._max_host = -1
        self._max_wild = -1

    def __dealloc__(self):
        free(self._slots)
        free(self._ents)
        free(self._blob)
        free(self._cands)
        free(self._ns)
        free(self._has_plen)
        free(self._pmarks)
        free(self._hmarks)

    def __init__(self, routes):
        cdef Py_ssize_t n_ents, n_cands = 0, blob_len = 0, i, off = 0, ci = 0, ei = 0, klen
        cdef uint64_t cap = 8, s, h
        cdef bytes kb
        cdef int32_t nsid, knd
        if self._ents != NULL:
            raise RuntimeError("Router is immutable; build a new one")
        routes = list(routes)
        self.n_routes = len(routes)
        groups, ns_ids, payloads, ns_exact, ns_maxp = _rt_compile(routes)
        # ---- lay out C arrays ----
        n_ents = len(groups) + len(ns_ids)
        for lst in groups.values():
            n_cands += len(lst)
        for gk in groups:
            blob_len += len(gk[2])
        for nk in ns_ids:
            if len(nk) == 2:
                blob_len += len(nk[1])

        while cap < <uint64_t>(2 * n_ents):
            cap <<= 1
        self._mask = cap - 1
        self._slots = <_rt_Slot*>malloc(cap * sizeof(_rt_Slot))
        self._ents = <_rt_Entry*>malloc((n_ents + 1) * sizeof(_rt_Entry))
        self._blob = <char*>malloc(blob_len + 1)
        self._cands = <_rt_Cand*>malloc((n_cands + 1) * sizeof(_rt_Cand))
        self._n_ns = len(ns_exact)
        self._ns = <_rt_NS*>malloc(self._n_ns * sizeof(_rt_NS))
        if (self._slots == NULL or self._ents == NULL or self._blob == NULL or self._cands == NULL
                or self._ns == NULL):
            raise MemoryError()
        for s in range(cap):
            self._slots[s].idx = -1
            self._slots[s].hash = 0
        for i in range(self._n_ns):
            self._ns[i].n_exact = ns_exact[i]
            self._ns[i].max_prefix = ns_maxp[i]
        self._payloads = payloads

        for gk, lst in groups.items():
            nsid = gk[0]
            knd = gk[1]
            kb = gk[2]
            klen = len(kb)
            if knd == _RT_PATH_EXACT:
                if klen > self._max_exact:
                    self._max_exact = klen
            elif klen > self._max_prefix:
                self._max_prefix = klen
            self._ents[ei].value = <int32_t>ci
            self._ents[ei].count = <int32_t>len(lst)
            for ri in lst:
                self._cands[ci].payload = <PyObject*>payloads[ri]
                self._cands[ci].route_index = <int32_t>ri
                self._cands[ci].n_conds = 0
                ci += 1
            h = _rt_mix(_rt_hash_fwd(<const unsigned char*><char*>kb, klen), nsid, knd)
            self._add_entry(ei, h, nsid, knd, kb, off)
            off += klen
            ei += 1
        any_ns = ns_ids.get(("*",))
        self._any_ns = -1 if any_ns is None else any_ns
        for nk, nid in ns_ids.items():
            if len(nk) == 1:
                continue
            kb = nk[1]
            klen = len(kb)
            if nk[0] == "h":
                knd = _RT_HOST_EXACT
                if klen > self._max_host:
                    self._max_host = klen
            else:
                knd = _RT_HOST_WILD
                if klen > self._max_wild:
                    self._max_wild = klen
            self._ents[ei].value = <int32_t>nid
            self._ents[ei].count = 0
            h = _rt_mix(_rt_fnv_rev(<const unsigned char*><char*>kb, klen), 0, knd)
            self._add_entry(ei, h, 0, knd, kb, off)
            off += klen
            ei += 1
        self._n_ents = ei
        self._n_cands = ci

        self._has_plen = <unsigned char*>calloc(self._max_prefix + 2, 1)
        self._pmarks = <_rt_Mark*>malloc((self._max_prefix + 3) * sizeof(_rt_Mark))
        self._hmarks = <_rt_Mark*>malloc((self._max_wild + 2) * sizeof(_rt_Mark))
        if self._has_plen == NULL or self._pmarks == NULL or self._hmarks == NULL:
            raise MemoryError()
        for gk in groups:
            if gk[1] == _RT_PATH_PREFIX:
                self._has_plen[len(gk[2])] = 1

    cdef int _add_entry(self, Py_ssize_t ei, uint64_t h, int32_t ns, int32_t kind, bytes key,
                        Py_ssize_t off) except -1:
        cdef Py_ssize_t klen = len(key)
        memcpy(self._blob + off, <char*>key, klen)
        cdef _rt_Entry* e = &self._ents[ei]
        e.hash = h
        e.ns = ns
        e.kind = kind
        e.key_off = off
        e.key_len = klen
        cdef uint64_t s = h & self._mask
        while self._slots[s].idx >= 0:
            s = (s + 1) & self._mask
        self._slots[s].idx = <int32_t>ei
        self._slots[s].hash = h
        return 0

    cdef inline Py_ssize_t _find(self, uint64_t h, int32_t ns, int32_t kind,
                                 const char* key, Py_ssize_t klen) noexcept nogil:
        cdef uint64_t s = h & self._mask
        cdef _rt_Slot* slot
        cdef _rt_Entry* e
        while True:
            slot = &self._slots[s]
            if slot.idx < 0:
                return -1
            if slot.hash == h:
                e = &self._ents[slot.idx]
                if (e.ns == ns and e.kind == kind and e.key_len == klen
                        and memcmp(self._blob + e.key_off, key, klen) == 0):
                    return slot.idx
            s = (s + 1) & self._mask

    cdef inline Py_ssize_t _pick(self, Py_ssize_t ei) noexcept nogil:
        # first candidate of an entry whose conditions hold, or -1
        cdef _rt_Entry* e = &self._ents[ei]
        cdef Py_ssize_t c
        for c in range(e.value, e.value + e.count):
            if _rt_cand_ok(&self._cands[c]):
                return c
        return -1

    cdef Py_ssize_t _match_ns(self, int32_t ns, const char* path, Py_ssize_t path_len,
                              bint full_ok, uint64_t full_h, Py_ssize_t n_marks) noexcept nogil:
        cdef const _rt_NS* info = &self._ns[ns]
        cdef Py_ssize_t ei, c, k, L
        if full_ok and info.n_exact and path_len <= self._max_exact:
            ei = self._find(_rt_mix(full_h, ns, _RT_PATH_EXACT), ns, _RT_PATH_EXACT, path, path_len)
            if ei >= 0:
                c = self._pick(ei)
                if c >= 0:
                    return c
        if info.max_prefix < 0:
            return -1
        for k in range(n_marks - 1, -1, -1):
            L = self._pmarks[k].len
            if L > info.max_prefix:
                continue
            ei = self._find(_rt_mix(self._pmarks[k].hash, ns, _RT_PATH_PREFIX), ns, _RT_PATH_PREFIX,
                            path, L)
            if ei >= 0:
                c = self._pick(ei)
                if c >= 0:
                    return c
        return -1

    cdef Py_ssize_t _match_c(self, const char* host, Py_ssize_t host_len,
                             const char* path, Py_ssize_t path_len) noexcept nogil:
        cdef const unsigned char* p = <const unsigned char*>path
        cdef const unsigned char* hp = <const unsigned char*>host
        cdef uint64_t h = _RT_FNV_OFFSET
        cdef uint64_t hh
        cdef Py_ssize_t i, k, limit, lo, n_marks = 0, n_h = 0, ei, c, wpos = 0
        cdef Py_ssize_t maxp = self._max_prefix
        cdef bint full_ok
        cdef int32_t ns
        # ---- path: one forward pass; remember hashes at candidate prefix boundaries ----
        if maxp >= 0 and self._has_plen[0]:
            # the root prefix ('/') matches every path
            self._pmarks[0].hash = _rt_wfin(h, p, 0, 0)
            self._pmarks[0].len = 0
            n_marks = 1
        # only '/' at offsets <= the longest prefix key can end a prefix that is in the table
        limit = maxp + 1 if maxp + 1 < path_len else path_len
        for i in range(1, limit):
            if p[i] == 47 and self._has_plen[i]:   # '/'
                while wpos + 8 <= i:
                    h = _rt_wstep(h, _rt_load8(p + wpos))
                    wpos += 8
                self._pmarks[n_marks].hash = _rt_wfin(h, p + wpos, i - wpos, i)
                self._pmarks[n_marks].len = i
                n_marks += 1
        full_ok = path_len <= maxp or path_len <= self._max_exact
        if full_ok:
            while wpos + 8 <= path_len:
                h = _rt_wstep(h, _rt_load8(p + wpos))
                wpos += 8
            h = _rt_wfin(h, p + wpos, path_len - wpos, path_len)
            if 0 < path_len <= maxp and self._has_plen[path_len]:
                self._pmarks[n_marks].hash = h
                self._pmarks[n_marks].len = path_len
                n_marks += 1
        # ---- host: one backward pass; hash of every '.'-suffix, and of the whole host ----
        if host_len > 0 and (self._max_host >= 0 or self._max_wild >= 0):
            lo = host_len - self._max_wild
            if host_len <= self._max_host:
                lo = 0
            if lo < 0:
                lo = 0
            hh = _RT_FNV_OFFSET
            for i in range(host_len - 1, lo - 1, -1):
                hh = (hh ^ hp[i]) * _RT_FNV_PRIME
                if hp[i] == 46 and i > 0 and host_len - i <= self._max_wild:   # '.'
                    self._hmarks[n_h].hash = hh
                    self._hmarks[n_h].len = host_len - i
                    n_h += 1
            if lo == 0 and host_len <= self._max_host:
                ei = self._find(_rt_mix(hh, 0, _RT_HOST_EXACT), 0, _RT_HOST_EXACT, host, host_len)
                if ei >= 0:
                    c = self._match_ns(self._ents[ei].value, path, path_len, full_ok, h, n_marks)
                    if c >= 0:
                        return c
            for k in range(n_h - 1, -1, -1):   # longest suffix first
                ei = self._find(_rt_mix(self._hmarks[k].hash, 0, _RT_HOST_WILD), 0, _RT_HOST_WILD,
                                host + host_len - self._hmarks[k].len, self._hmarks[k].len)
                if ei >= 0:
                    c = self._match_ns(self._ents[ei].value, path, path_len, full_ok, h, n_marks)
                    if c >= 0:
                        return c
        if self._any_ns >= 0:
            return self._match_ns(self._any_ns, path, path_len, full_ok, h, n_marks)
        return -1

    cdef object match(self, const char* host, Py_ssize_t host_len,
                      const char* path, Py_ssize_t path_len):
        cdef Py_ssize_t c = self._match_c(host, host_len, path, path_len)
        if c < 0:
            return None
        return <object>self._cands[c].payload

    def lookup(self, bytes host, bytes path):
        """Python entry for tests: payload of the matching route, or None."""
        return self.match(host, len(host), path, len(path))

    def lookup_index(self, bytes host, bytes path):
        """Index (in the routes list) of the matching route, or -1."""
        cdef Py_ssize_t c = self._match_c(host, len(host), path, len(path))
        return -1 if c < 0 else self._cands[c].route_index

    def _bench_match(self, bytes host, bytes path, Py_ssize_t n):
        """Calls match() n times from C (for per-match timing without Python-call overhead)."""
        cdef const char* hp = host
        cdef const char* pp = path
        cdef Py_ssize_t hl = len(host), pl = len(path), i
        cdef object r = None
        for i in range(n):
            r = self.match(hp, hl, pp, pl)
        return r

    def __len__(self):
        return self.n_routes
