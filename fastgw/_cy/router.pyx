# Route table: compiled once per config into flat C arrays; matched with no Python allocation
# (only routes with regular expressions pay for Python objects, and only when they are tried).
#
# Semantics follow the Kubernetes Gateway API HTTPRoute rules (apis/v1/httproute_types.go):
#   host:  exact host, then wildcard suffixes longest first ('*.example.com' needs at least one label
#          before '.example.com'), then host-less routes. A less specific host is only tried when no
#          route under the more specific one matches the request (path AND conditions).
#   path:  Exact (byte-exact, case-sensitive) first. Then, implementation-defined (the API leaves
#          RegularExpression precedence to implementations; templates are our extension):
#            templates ('/users/{id}/repos/{name}', '/files/{path...}'), more literal characters first
#            (the characters outside '{...}', '/' included);
#            regular expressions (Python `re`, fullmatch on the path), longer pattern first (or the
#            spec's `path_score`, higher first: gRPC matches, ranked by service then method characters);
#          then PathPrefix, the longest first: prefixes match on '/' segment boundaries; one
#          trailing '/' of a prefix is ignored; prefix '/' (stored as the empty key) matches every path.
#          So: exact > template > regex > prefix.
#   then:  a method condition beats none; more header conditions first; more query conditions
#          first; then `order` (the compile step's creation-time / name / rule-index key), lower first;
#          then the spec's index.
# Within one spec every condition must hold (AND); several matches of one rule are several specs (OR).
# Conditions: methods (any of, exact, case-sensitive); headers (name case-insensitive; the values of a
# repeated header joined with ',' as Envoy does; exact is case-sensitive; regex is a fullmatch;
# present); query params (name exact; FIRST value of a repeated name; raw, no percent-decoding;
# 'a' alone has the empty value). Regular expressions are Python `re` patterns compiled as bytes
# (str patterns are UTF-8 encoded, so classes like \d and \w are ASCII) and always fullmatch.
# A missing header / param never matches. Only the first condition of a repeated header name
# (case-insensitively) or query name is kept, as the API requires.
# Template captures: '{x}' is one whole non-empty segment (no '/'); '{x...}' is the non-empty rest of
# the path ('/' allowed), only as the last element. Captures must occupy whole segments.
#
# Layout. Every key lives in ONE open-addressing hash table of entries keyed by (ns, kind, bytes):
#   kind HOST_EXACT / HOST_WILD (ns 0): key = host or wildcard suffix ('.example.com'); value = the
#        namespace id (ns) of that host's path table.
#   kind PATH_EXACT / PATH_PREFIX (ns >= 1): key = path or normalised prefix; value = a run of candidates
#        in `_cands`, sorted by the precedence above (method, #headers, #query, order, index).
#   Template and regex candidates of a namespace are one more run (`_rt_NS.pat_off/n_pat`), sorted by
#   (template before regex, score, method, #headers, #query, order, index), tried after the exact
#   probe and before the prefix probes. This run is a linear scan (first hit wins); templates are
#   rejected on the path's '/' count before they are walked; regexes call into `re`.
# Matching hashes the path once (8 bytes a step, forward), remembering the hash of path[:i] at every '/' whose
# length i is a prefix length present in the table, so every prefix probe is O(1) + one memcmp. Hosts
# are hashed backwards so that the hash of every '.'-suffix falls out of one pass as well. Work per
# request is bounded by the longest key in the table, not by the request's path length.
# Hash quality only affects speed: every hit is confirmed with memcmp, and probe chains depend on the
# table alone (a miss stops at the first empty slot), so request bytes cannot lengthen them.
# A candidate's conditions are `n_conds` consecutive `_rt_Cond`s evaluated in C against the parsed
# MessageHead (offsets into the request buffer). A failed condition falls through to the next
# candidate, next shorter prefix, next less specific host, exactly like a failed path match.
# The prefix/host/capture scratch arrays live on the Router: match() is not reentrant across threads
# (the event loop calls it with the GIL held).

import gc as _rt_gc
import re as _rt_re

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.ref cimport PyObject
from libc.stdint cimport int32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy

cdef enum:
    _RT_PATH_EXACT = 1
    _RT_PATH_PREFIX = 2
    _RT_HOST_EXACT = 3
    _RT_HOST_WILD = 4
    _RT_PATH_TEMPLATE = 5
    _RT_PATH_REGEX = 6
    # condition subjects
    _RT_W_METHOD = 1
    _RT_W_HEADER = 2
    _RT_W_QUERY = 3
    # condition kinds
    _RT_K_EXACT = 1
    _RT_K_REGEX = 2
    _RT_K_PRESENT = 3
    # template pieces
    _RT_P_LIT = 1
    _RT_P_SEG = 2
    _RT_P_REST = 3
    _RT_MAX_CAPS = 16

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
    int32_t n_conds        # conditions (method set, headers, query params); 0 = none
    int32_t cond_off       # first condition in Router._conds
    int32_t path_kind      # pattern runs: _RT_PATH_TEMPLATE / _RT_PATH_REGEX; else the entry's kind
    int32_t path_ref       # template index (Router._tpls) / regex index (Router._regexes)
    int32_t slashes        # templates: '/' count of a matching path: n (exactly), or -1-n (n or more)


cdef struct _rt_Cond:
    int32_t what           # _RT_W_*
    int32_t kind           # _RT_K_*; for a method set: _RT_K_EXACT
    int32_t regex          # index into Router._regexes, -1 = none
    int32_t n              # method set: number of methods (in Router._meths from name_off)
    Py_ssize_t name_off    # into the condition blob (header names lowercased)
    Py_ssize_t name_len
    Py_ssize_t val_off
    Py_ssize_t val_len


cdef struct _rt_Str:
    Py_ssize_t off
    Py_ssize_t len


cdef struct _rt_Piece:
    int32_t kind           # _RT_P_*
    Py_ssize_t off         # literal: into the condition blob
    Py_ssize_t len


cdef struct _rt_Tpl:
    int32_t piece_off
    int32_t n_pieces
    int32_t n_caps
    Py_ssize_t min_len


cdef struct _rt_NS:
    int32_t n_exact        # number of exact-path keys under this host
    Py_ssize_t max_prefix  # longest prefix key under this host, -1 = no prefixes
    int32_t pat_off        # template/regex candidates of this host in _cands
    int32_t n_pat


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


# ---------------------------------------------------------------- condition evaluation (C)

cdef unsigned char _rt_lower[256]


cdef void _rt_init_lower() noexcept:
    cdef int c
    for c in range(256):
        _rt_lower[c] = <unsigned char>(c + 32 if 65 <= c <= 90 else c)


_rt_init_lower()


cdef inline bint _rt_name_eq(const char* p, const char* lower, Py_ssize_t n) noexcept nogil:
    # `lower` is already lowercase
    cdef Py_ssize_t i
    for i in range(n):
        if _rt_lower[<unsigned char>p[i]] != <unsigned char>lower[i]:
            return False
    return True


cdef inline bint _rt_method_ok(const _rt_Cond* d, const _rt_Str* meths, const char* cblob,
                               const char* m, Py_ssize_t mlen) noexcept nogil:
    cdef Py_ssize_t i
    cdef const _rt_Str* s
    for i in range(d.name_off, d.name_off + d.n):
        s = &meths[i]
        if s.len == mlen and memcmp(cblob + s.off, m, mlen) == 0:
            return True
    return False


cdef bint _rt_header_ok(const _rt_Cond* d, const char* cblob, const char* buf,
                        const MessageHead* h) noexcept nogil:
    # exact / present; exact compares against the values of every field of that name joined by ','
    # without building the joined value
    cdef const char* name = cblob + d.name_off
    cdef const char* want = cblob + d.val_off
    cdef Py_ssize_t pos = 0, i
    cdef bint found = False
    cdef const HeaderField* f
    for i in range(h.nfields):
        f = &h.fields[i]
        if f.name_len != d.name_len or f.kind == HK_DROP or not _rt_name_eq(buf + f.name, name, f.name_len):
            continue
        if d.kind == _RT_K_PRESENT:
            return True
        if found:
            if pos >= d.val_len or want[pos] != 44:   # ','
                return False
            pos += 1
        if pos + f.value_len > d.val_len or memcmp(want + pos, buf + f.value, f.value_len) != 0:
            return False
        pos += f.value_len
        found = True
    return found and pos == d.val_len


cdef Py_ssize_t _rt_query_find(const char* q, Py_ssize_t qlen, const char* name, Py_ssize_t nlen,
                               Py_ssize_t* vlen) noexcept nogil:
    # offset (into q) of the value of the FIRST parameter called `name`, -1 if none
    cdef Py_ssize_t i = 0, j, e
    while i < qlen:
        j = i
        while j < qlen and q[j] != 38:       # '&'
            j += 1
        e = i
        while e < j and q[e] != 61:          # '='
            e += 1
        if e - i == nlen and memcmp(q + i, name, nlen) == 0:
            if e < j:
                vlen[0] = j - e - 1
                return e + 1
            vlen[0] = 0
            return j
        i = j + 1
    return -1


cdef int _rt_tpl_match(const _rt_Tpl* t, const _rt_Piece* pieces, const char* cblob,
                       const char* path, Py_ssize_t n, Py_ssize_t* cs, Py_ssize_t* cl) noexcept nogil:
    # number of captures (offset, length into path) on a match, -1 otherwise
    cdef Py_ssize_t pos = 0, s
    cdef int k = 0, i
    cdef const _rt_Piece* pc
    if n < t.min_len:
        return -1
    for i in range(t.piece_off, t.piece_off + t.n_pieces):
        pc = &pieces[i]
        if pc.kind == _RT_P_LIT:
            if pos + pc.len > n or memcmp(path + pos, cblob + pc.off, pc.len) != 0:
                return -1
            pos += pc.len
        elif pc.kind == _RT_P_SEG:
            s = pos
            while pos < n and path[pos] != 47:   # '/'
                pos += 1
            if pos == s:
                return -1
            cs[k] = s
            cl[k] = pos - s
            k += 1
        else:
            if pos >= n:
                return -1
            cs[k] = pos
            cl[k] = n - pos
            k += 1
            pos = n
    return k if pos == n else -1


# ---------------------------------------------------------------- compile step (Python)

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


_RT_KINDS = {"exact": _RT_K_EXACT, "regex": _RT_K_REGEX, "regularexpression": _RT_K_REGEX,
             "present": _RT_K_PRESENT}
_RT_KIND_NAMES = {_RT_K_EXACT: "exact", _RT_K_REGEX: "regex", _RT_K_PRESENT: "present"}


def _rt_regex(ri, pattern, what):
    try:
        return _rt_re.compile(_rt_as_bytes(pattern, what))
    except _rt_re.error as e:
        raise ValueError(f"route {ri}: bad {what} regex {pattern!r}: {e}") from None


def _rt_conds(ri, r):
    """(methods, headers, query) of a spec, normalised: methods as bytes; headers as (lowercased
    name, kind, value or compiled regex); query as (name, kind, value or compiled regex). Later
    entries repeating a name are ignored (Gateway API: only the first is considered)."""
    methods = getattr(r, "methods", None) or ()
    headers = getattr(r, "headers", None) or ()
    query = getattr(r, "query", None) or ()
    ms = []
    for m in methods:
        mb = _rt_as_bytes(m, "method")
        if not mb:
            raise ValueError(f"route {ri}: empty method")
        if mb not in ms:
            ms.append(mb)
    out = []
    for what, items in (("header", headers), ("query", query)):
        conds, seen = [], set()
        for item in items:
            if len(item) == 2:
                name, value = item
                kind = "exact"
            else:
                name, kind, value = item
            nb = _rt_as_bytes(name, what + " name")
            if not nb:
                raise ValueError(f"route {ri}: empty {what} name")
            if what == "header":
                nb = nb.lower()
            k = _RT_KINDS.get(str(kind).lower())
            if k is None:
                raise ValueError(f"route {ri}: unknown {what} match kind {kind!r}")
            if nb in seen:
                continue
            seen.add(nb)
            if k == _RT_K_REGEX:
                v = _rt_regex(ri, value, what)
            elif k == _RT_K_EXACT:
                v = _rt_as_bytes(value, what + " value")
            else:
                v = b""
            conds.append((nb, k, v))
        out.append(conds)
    return ms, out[0], out[1]


def _rt_parse_template(ri, t):
    """'/users/{id}/files/{rest...}' -> (pieces [(kind, literal bytes)], names, literal chars, min len,
    slashes: the '/' count of a matching path, as _rt_Cand.slashes)."""
    tb = _rt_as_bytes(t, "path_template")
    if not tb.startswith(b"/"):
        raise ValueError(f"route {ri}: path_template must start with '/': {t!r}")
    pieces, names, lit, i, n = [], [], 0, 0, len(tb)
    minlen = 0
    while i < n:
        j = tb.find(b"{", i)
        if j < 0:
            j = n
        literal = tb[i:j]
        if b"}" in literal:
            raise ValueError(f"route {ri}: stray '}}' in path_template {t!r}")
        if literal:
            pieces.append((_RT_P_LIT, literal))
            lit += len(literal)
            minlen += len(literal)
        if j == n:
            break
        e = tb.find(b"}", j)
        if e < 0:
            raise ValueError(f"route {ri}: unclosed '{{' in path_template {t!r}")
        name = tb[j + 1:e]
        rest = name.endswith(b"...")
        if rest:
            name = name[:len(name) - 3]
        if not name or b"{" in name or b"/" in name:
            raise ValueError(f"route {ri}: bad capture name in path_template {t!r}")
        if tb[j - 1:j] != b"/" or (e + 1 < n and tb[e + 1:e + 2] != b"/"):
            raise ValueError(f"route {ri}: a capture must be a whole segment in path_template {t!r}")
        if rest and e + 1 != n:
            raise ValueError(f"route {ri}: '{{...}}' capture must be last in path_template {t!r}")
        sname = name.decode("utf-8")
        if sname in names:
            raise ValueError(f"route {ri}: capture {sname!r} repeated in path_template {t!r}")
        names.append(sname)
        pieces.append((_RT_P_REST if rest else _RT_P_SEG, b""))
        minlen += 1
        i = e + 1
    if len(names) > _RT_MAX_CAPS:
        raise ValueError(f"route {ri}: more than {_RT_MAX_CAPS} captures in path_template {t!r}")
    slashes = tb.count(b"/")
    if pieces and pieces[len(pieces) - 1][0] == _RT_P_REST:
        slashes = -1 - slashes
    return pieces, names, lit, minlen, slashes


def _rt_path(ri, r):
    """(kind, key bytes | pattern, score): score is the path-length criterion (see the header)."""
    pe = getattr(r, "path_exact", None)
    pp = getattr(r, "path_prefix", None)
    pt = getattr(r, "path_template", None)
    px = getattr(r, "path_regex", None)
    if (pe is not None) + (pp is not None) + (pt is not None) + (px is not None) > 1:
        raise ValueError(f"route {ri}: more than one of path_exact / path_prefix / path_template / "
                         "path_regex is set")
    if pe is not None:
        key = _rt_as_bytes(pe, "path_exact")
        if not key.startswith(b"/"):
            raise ValueError(f"route {ri}: path_exact must start with '/': {pe!r}")
        return _RT_PATH_EXACT, key, len(key)
    if pt is not None:
        tpl = _rt_parse_template(ri, pt)
        return _RT_PATH_TEMPLATE, tpl, tpl[2]
    if px is not None:
        pat = _rt_as_bytes(px, "path_regex")
        score = getattr(r, "path_score", None)     # gRPC matches: GRPCRoute precedence (runtime._grpc_path)
        return _RT_PATH_REGEX, _rt_regex(ri, px, "path"), len(pat) if score is None else score
    key = b"/" if pp is None else _rt_as_bytes(pp, "path_prefix")
    if not key.startswith(b"/"):
        raise ValueError(f"route {ri}: path_prefix must start with '/': {pp!r}")
    key = key[:_rt_norm_prefix_len(key)]
    return _RT_PATH_PREFIX, key, len(key)


def _rt_rkey(list rconds, list orders, Py_ssize_t ri):
    """Precedence after hostname and path, ascending: (-has method, -#headers, -#query, order, index)."""
    cd = rconds[ri]
    if cd is None:
        return (0, 0, 0, orders[ri], ri)
    return (-(len(cd[0]) > 0), -len(cd[1]), -len(cd[2]), orders[ri], ri)


def _rt_compile(routes):
    """Groups routes into (ns, kind, key) -> [route index, ...] and ns -> [pattern route index, ...];
    assigns a namespace id per host; normalises every spec's path and conditions."""
    ns_ids = {}          # ("h", host) / ("w", suffix) / ("*",) -> ns id
    groups = {}          # (ns, kind, key) -> [route_index, ...]
    pats = {}            # ns -> [route_index, ...] (templates and regexes)
    payloads = []
    paths = []           # per route: (kind, key | template | regex, score)
    conds = []           # per route: (methods, headers, query) or None
    orders = []          # per route: the `order` tie-breaker
    special = []         # routes with conditions, a template or a regex
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
        kind, key, score = _rt_path(ri, r)
        order = getattr(r, "order", None)
        if order is None:
            order = ri
        elif not isinstance(order, int):
            raise TypeError(f"route {ri}: order must be an int")
        if getattr(r, "methods", None) or getattr(r, "headers", None) or getattr(r, "query", None):
            cd = _rt_conds(ri, r)
            special.append(ri)
        else:
            cd = None
            if kind == _RT_PATH_TEMPLATE or kind == _RT_PATH_REGEX:
                special.append(ri)
        payloads.append(r.payload)
        paths.append((kind, key, score))
        conds.append(cd)
        orders.append(order)
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
            if kind == _RT_PATH_TEMPLATE or kind == _RT_PATH_REGEX:
                pats.setdefault(nid, []).append(ri)
                continue
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

    for lst in groups.values():
        if len(lst) > 1:
            lst.sort(key=lambda ri: _rt_rkey(conds, orders, ri))
    for lst in pats.values():
        lst.sort(key=lambda ri: (paths[ri][0], -paths[ri][2]) + _rt_rkey(conds, orders, ri))
    return groups, pats, ns_ids, payloads, paths, conds, orders, special, ns_exact, ns_maxp


cdef class _RtRequest:
    """A request head built from Python values (for lookup/explain/tests), laid out as the parser
    would: offsets into one buffer."""
    cdef bytes buf
    cdef MessageHead h

    def __cinit__(self):
        self.h.fields = NULL

    def __init__(self, method, bytes path, headers, query):
        cdef Py_ssize_t off, i
        mb = _rt_as_bytes(method, "method")
        qb = _rt_as_bytes(query, "query") if query is not None else b""
        hs = [(_rt_as_bytes(n, "header name"), _rt_as_bytes(v, "header value")) for n, v in headers]
        parts = [mb, path]
        if qb:
            parts.append(b"?")
            parts.append(qb)
        self.h.fields = <HeaderField*>malloc(sizeof(HeaderField) * (len(hs) + 1))
        if self.h.fields == NULL:
            raise MemoryError()
        self.h.method = 0
        self.h.method_len = len(mb)
        self.h.target = len(mb)
        self.h.path_len = len(path)
        self.h.target_len = len(path) + (1 + len(qb) if qb else 0)
        off = self.h.target + self.h.target_len
        self.h.nfields = len(hs)
        for i, (n, v) in enumerate(hs):
            self.h.fields[i].name = off
            self.h.fields[i].name_len = len(n)
            self.h.fields[i].value = off + len(n)
            self.h.fields[i].value_len = len(v)
            self.h.fields[i].kind = HK_OTHER
            off += len(n) + len(v)
            parts.append(n)
            parts.append(v)
        self.buf = b"".join(parts)

    def __dealloc__(self):
        free(self.h.fields)


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
    # conditions, templates, regexes
    cdef _rt_Cond* _conds
    cdef _rt_Str* _meths
    cdef char* _cblob            # method / header / query strings and template literals
    cdef _rt_Tpl* _tpls
    cdef _rt_Piece* _pieces
    cdef list _regexes           # compiled `re` objects (bytes patterns)
    cdef list _tpl_names         # per template: capture names
    # the last match_request's template captures (offset into the path, length)
    cdef Py_ssize_t _cap_s[_RT_MAX_CAPS]
    cdef Py_ssize_t _cap_l[_RT_MAX_CAPS]
    cdef Py_ssize_t _tcap_s[_RT_MAX_CAPS]
    cdef Py_ssize_t _tcap_l[_RT_MAX_CAPS]
    cdef int _n_caps
    cdef int _cap_tpl
    cdef int32_t _max_tpl_slash  # largest '/' count a template needs
    # for explain()
    cdef dict _ns_ids
    cdef list _paths
    cdef list _rconds
    cdef list _orders
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
        self._conds = NULL
        self._meths = NULL
        self._cblob = NULL
        self._tpls = NULL
        self._pieces = NULL
        self._any_ns = -1
        self._max_prefix = -1
        self._max_exact = -1
        self._max_host = -1
        self._max_wild = -1
        self._n_caps = 0
        self._cap_tpl = -1
        self._max_tpl_slash = 0

    def __dealloc__(self):
        free(self._slots)
        free(self._ents)
        free(self._blob)
        free(self._cands)
        free(self._ns)
        free(self._has_plen)
        free(self._pmarks)
        free(self._hmarks)
        free(self._conds)
        free(self._meths)
        free(self._cblob)
        free(self._tpls)
        free(self._pieces)

    def __init__(self, routes):
        cdef Py_ssize_t n_ents, n_cands = 0, blob_len = 0, i, off = 0, ci = 0, ei = 0, klen
        cdef uint64_t cap = 8, s, h
        cdef bytes kb
        cdef int32_t nsid, knd
        if self._ents != NULL:
            raise RuntimeError("Router is immutable; build a new one")
        routes = list(routes)
        self.n_routes = len(routes)
        gc_was_enabled = _rt_gc.isenabled()
        _rt_gc.disable()     # the compile step makes many small tuples; collections only cost time
        try:
            (groups, pats, ns_ids, payloads, paths, rconds, orders, special, ns_exact,
             ns_maxp) = _rt_compile(routes)
        finally:
            if gc_was_enabled:
                _rt_gc.enable()
        self._ns_ids = ns_ids
        self._paths = paths
        self._rconds = rconds
        self._orders = orders
        # ---- conditions, templates, regexes ----
        cond_off, path_refs = self._build_conds(paths, rconds, special)
        # ---- lay out C arrays ----
        n_ents = len(groups) + len(ns_ids)
        for lst in groups.values():
            n_cands += len(lst)
        for lst in pats.values():
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
            self._ns[i].pat_off = 0
            self._ns[i].n_pat = 0
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
                self._set_cand(ci, ri, knd, 0, payloads, rconds, cond_off)
                ci += 1
            h = _rt_mix(_rt_hash_fwd(<const unsigned char*><char*>kb, klen), nsid, knd)
            self._add_entry(ei, h, nsid, knd, kb, off)
            off += klen
            ei += 1
        for nid, lst in pats.items():
            self._ns[nid].pat_off = <int32_t>ci
            self._ns[nid].n_pat = <int32_t>len(lst)
            for ri in lst:
                self._set_cand(ci, ri, paths[ri][0], path_refs[ri], payloads, rconds, cond_off)
                ci += 1
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

    cdef int _set_cand(self, Py_ssize_t ci, Py_ssize_t ri, int32_t kind, int32_t path_ref,
                       list payloads, list rconds, list cond_off) except -1:
        cdef _rt_Cand* c = &self._cands[ci]
        c.payload = <PyObject*>payloads[ri]
        c.route_index = <int32_t>ri
        c.path_kind = kind
        c.path_ref = path_ref
        c.slashes = 0
        if kind == _RT_PATH_TEMPLATE:
            c.slashes = <int32_t>self._paths[ri][1][4]
        cd = rconds[ri]
        if cd is None:
            c.n_conds = 0
            c.cond_off = 0
        else:
            c.n_conds = <int32_t>((len(cd[0]) > 0) + len(cd[1]) + len(cd[2]))
            c.cond_off = <int32_t>cond_off[ri]
        return 0

    def _build_conds(self, list paths, list rconds, list special):
        """Lays out the conditions of every spec that has some, the templates and the regexes.
        Returns (per-route first condition, per-route template/regex index)."""
        cdef Py_ssize_t n_conds = 0, n_meths = 0, n_tpls = 0, n_pieces = 0, k
        cdef _rt_Cond* d
        blob = bytearray()
        self._regexes = []
        self._tpl_names = []
        for ri in special:
            cd = rconds[ri]
            if cd is not None:
                n_conds += (len(cd[0]) > 0) + len(cd[1]) + len(cd[2])
                n_meths += len(cd[0])
            kind, key, _ = paths[ri]
            if kind == _RT_PATH_TEMPLATE:
                n_tpls += 1
                n_pieces += len(key[0])
        self._conds = <_rt_Cond*>malloc((n_conds + 1) * sizeof(_rt_Cond))
        self._meths = <_rt_Str*>malloc((n_meths + 1) * sizeof(_rt_Str))
        self._tpls = <_rt_Tpl*>malloc((n_tpls + 1) * sizeof(_rt_Tpl))
        self._pieces = <_rt_Piece*>malloc((n_pieces + 1) * sizeof(_rt_Piece))
        if self._conds == NULL or self._meths == NULL or self._tpls == NULL or self._pieces == NULL:
            raise MemoryError()
        cond_off = [0] * len(rconds)
        path_refs = [0] * len(paths)
        n_conds = n_meths = n_tpls = n_pieces = 0
        for ri in special:
            cd = rconds[ri]
            if cd is None:
                continue
            cond_off[ri] = n_conds
            methods, headers, query = cd
            if methods:
                d = &self._conds[n_conds]
                n_conds += 1
                d.what = _RT_W_METHOD
                d.kind = _RT_K_EXACT
                d.regex = -1
                d.n = <int32_t>len(methods)
                d.name_off = n_meths
                d.name_len = d.val_off = d.val_len = 0
                for m in methods:
                    self._meths[n_meths].off = len(blob)
                    self._meths[n_meths].len = len(m)
                    blob += m
                    n_meths += 1
            for what, items in ((_RT_W_HEADER, headers), (_RT_W_QUERY, query)):
                for name, k, value in items:
                    d = &self._conds[n_conds]
                    n_conds += 1
                    d.what = what
                    d.kind = <int32_t>k
                    d.n = 0
                    d.name_off = len(blob)
                    d.name_len = len(name)
                    blob += name
                    d.regex = -1
                    d.val_off = len(blob)
                    d.val_len = 0
                    if k == _RT_K_REGEX:
                        d.regex = <int32_t>len(self._regexes)
                        self._regexes.append(value)
                    elif k == _RT_K_EXACT:
                        d.val_len = len(value)
                        blob += value
        for ri in special:
            kind, key, _ = paths[ri]
            if kind == _RT_PATH_TEMPLATE:
                pieces, names, _, minlen, slashes = key
                if slashes >= self._max_tpl_slash:
                    self._max_tpl_slash = slashes
                elif -1 - slashes > self._max_tpl_slash:
                    self._max_tpl_slash = -1 - slashes
                path_refs[ri] = n_tpls
                self._tpls[n_tpls].piece_off = <int32_t>n_pieces
                self._tpls[n_tpls].n_pieces = <int32_t>len(pieces)
                self._tpls[n_tpls].n_caps = <int32_t>len(names)
                self._tpls[n_tpls].min_len = minlen
                self._tpl_names.append(names)
                n_tpls += 1
                for pk, literal in pieces:
                    self._pieces[n_pieces].kind = pk
                    self._pieces[n_pieces].off = len(blob)
                    self._pieces[n_pieces].len = len(literal)
                    blob += literal
                    n_pieces += 1
            elif kind == _RT_PATH_REGEX:
                path_refs[ri] = len(self._regexes)
                self._regexes.append(key)
        self._cblob = <char*>malloc(len(blob) + 1)
        if self._cblob == NULL:
            raise MemoryError()
        if len(blob):
            memcpy(self._cblob, <char*>blob, len(blob))
        return cond_off, path_refs

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

    # ---- conditions ----

    cdef int _regex_ok(self, int32_t ri, const char* p, Py_ssize_t n) except -1:
        return self._regexes[ri].fullmatch(PyBytes_FromStringAndSize(p, n)) is not None

    cdef int _header_regex_ok(self, const _rt_Cond* d, const char* buf, const MessageHead* h) except -1:
        cdef Py_ssize_t i
        cdef const HeaderField* f
        vals = None
        for i in range(h.nfields):
            f = &h.fields[i]
            if (f.name_len == d.name_len and f.kind != HK_DROP
                    and _rt_name_eq(buf + f.name, self._cblob + d.name_off, f.name_len)):
                if vals is None:
                    vals = []
                vals.append(PyBytes_FromStringAndSize(buf + f.value, f.value_len))
        if vals is None:
            return 0
        return self._regexes[d.regex].fullmatch(vals[0] if len(vals) == 1 else b",".join(vals)) is not None

    cdef int _cond_fail(self, const _rt_Cand* c, const char* buf, const MessageHead* h) except -2:
        """-1 when every condition of `c` holds, else the index of the first one that fails."""
        cdef int i, ok
        cdef const _rt_Cond* d
        cdef const char* q
        cdef Py_ssize_t qlen, v, vlen = 0
        if c.n_conds == 0:
            return -1
        if h == NULL:
            return 0
        for i in range(c.n_conds):
            d = &self._conds[c.cond_off + i]
            if d.what == _RT_W_METHOD:
                ok = _rt_method_ok(d, self._meths, self._cblob, buf + h.method, h.method_len)
            elif d.what == _RT_W_HEADER:
                if d.regex >= 0:
                    ok = self._header_regex_ok(d, buf, h)
                else:
                    ok = _rt_header_ok(d, self._cblob, buf, h)
            else:
                ok = 0
                if h.path_len < h.target_len:
                    q = buf + h.target + h.path_len + 1
                    qlen = h.target_len - h.path_len - 1
                    v = _rt_query_find(q, qlen, self._cblob + d.name_off, d.name_len, &vlen)
                    if v >= 0:
                        if d.kind == _RT_K_PRESENT:
                            ok = 1
                        elif d.regex >= 0:
                            ok = self._regex_ok(d.regex, q + v, vlen)
                        else:
                            ok = vlen == d.val_len and memcmp(q + v, self._cblob + d.val_off, vlen) == 0
            if not ok:
                return i
        return -1

    cdef int _path_ok(self, const _rt_Cand* c, const char* path, Py_ssize_t path_len) except -1:
        """Template / regex candidates: does the path match? Template captures go to _tcap_*."""
        cdef int k
        if c.path_kind == _RT_PATH_TEMPLATE:
            k = _rt_tpl_match(&self._tpls[c.path_ref], self._pieces, self._cblob, path, path_len,
                              self._tcap_s, self._tcap_l)
            return k >= 0
        if c.path_kind == _RT_PATH_REGEX:
            return self._regex_ok(c.path_ref, path, path_len)
        return 1

    # ---- matching ----

    cdef inline Py_ssize_t _pick(self, Py_ssize_t ei, const char* buf, const MessageHead* h) except -2:
        # first candidate of an entry whose conditions hold, or -1
        cdef _rt_Entry* e = &self._ents[ei]
        cdef Py_ssize_t c
        cdef _rt_Cand* cand
        for c in range(e.value, e.value + e.count):
            cand = &self._cands[c]
            if cand.n_conds == 0 or self._cond_fail(cand, buf, h) < 0:
                return c
        return -1

    cdef Py_ssize_t _pick_pattern(self, const _rt_NS* info, const char* path, Py_ssize_t path_len,
                                  const char* buf, const MessageHead* h) except -2:
        cdef Py_ssize_t c, j
        cdef _rt_Cand* cand
        cdef int i
        cdef int32_t nsl = -1
        for c in range(info.pat_off, info.pat_off + info.n_pat):
            cand = &self._cands[c]
            if cand.path_kind == _RT_PATH_TEMPLATE:
                # cheap reject on the number of segments (counted once, capped)
                if nsl < 0:
                    nsl = 0
                    for j in range(path_len):
                        if path[j] == 47:   # '/'
                            nsl += 1
                            if nsl > self._max_tpl_slash:
                                break
                if cand.slashes >= 0:
                    if nsl != cand.slashes:
                        continue
                elif nsl < -1 - cand.slashes:
                    continue
            if not self._path_ok(cand, path, path_len):
                continue
            if cand.n_conds and self._cond_fail(cand, buf, h) >= 0:
                continue
            if cand.path_kind == _RT_PATH_TEMPLATE:
                self._n_caps = self._tpls[cand.path_ref].n_caps
                self._cap_tpl = cand.path_ref
                for i in range(self._n_caps):
                    self._cap_s[i] = self._tcap_s[i]
                    self._cap_l[i] = self._tcap_l[i]
            return c
        return -1

    cdef Py_ssize_t _match_ns(self, int32_t ns, const char* path, Py_ssize_t path_len,
                              bint full_ok, uint64_t full_h, Py_ssize_t n_marks,
                              const char* buf, const MessageHead* h) except -2:
        cdef const _rt_NS* info = &self._ns[ns]
        cdef Py_ssize_t ei, c, k, L
        if full_ok and info.n_exact and path_len <= self._max_exact:
            ei = self._find(_rt_mix(full_h, ns, _RT_PATH_EXACT), ns, _RT_PATH_EXACT, path, path_len)
            if ei >= 0:
                c = self._pick(ei, buf, h)
                if c >= 0:
                    return c
        if info.n_pat:
            c = self._pick_pattern(info, path, path_len, buf, h)
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
                c = self._pick(ei, buf, h)
                if c >= 0:
                    return c
        return -1

    cdef Py_ssize_t _match_c(self, const char* host, Py_ssize_t host_len,
                             const char* path, Py_ssize_t path_len,
                             const char* buf, const MessageHead* h) except -2:
        cdef const unsigned char* p = <const unsigned char*>path
        cdef const unsigned char* hp = <const unsigned char*>host
        cdef uint64_t hsh = _RT_FNV_OFFSET
        cdef uint64_t hh
        cdef Py_ssize_t i, k, limit, lo, n_marks = 0, n_h = 0, ei, c, wpos = 0
        cdef Py_ssize_t maxp = self._max_prefix
        cdef bint full_ok
        self._n_caps = 0
        # ---- path: one forward pass; remember hashes at candidate prefix boundaries ----
        if maxp >= 0 and self._has_plen[0]:
            # the root prefix ('/') matches every path
            self._pmarks[0].hash = _rt_wfin(hsh, p, 0, 0)
            self._pmarks[0].len = 0
            n_marks = 1
        # only '/' at offsets <= the longest prefix key can end a prefix that is in the table
        limit = maxp + 1 if maxp + 1 < path_len else path_len
        for i in range(1, limit):
            if p[i] == 47 and self._has_plen[i]:   # '/'
                while wpos + 8 <= i:
                    hsh = _rt_wstep(hsh, _rt_load8(p + wpos))
                    wpos += 8
                self._pmarks[n_marks].hash = _rt_wfin(hsh, p + wpos, i - wpos, i)
                self._pmarks[n_marks].len = i
                n_marks += 1
        full_ok = path_len <= maxp or path_len <= self._max_exact
        if full_ok:
            while wpos + 8 <= path_len:
                hsh = _rt_wstep(hsh, _rt_load8(p + wpos))
                wpos += 8
            hsh = _rt_wfin(hsh, p + wpos, path_len - wpos, path_len)
            if 0 < path_len <= maxp and self._has_plen[path_len]:
                self._pmarks[n_marks].hash = hsh
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
                    c = self._match_ns(self._ents[ei].value, path, path_len, full_ok, hsh, n_marks,
                                       buf, h)
                    if c != -1:
                        return c
            for k in range(n_h - 1, -1, -1):   # longest suffix first
                ei = self._find(_rt_mix(self._hmarks[k].hash, 0, _RT_HOST_WILD), 0, _RT_HOST_WILD,
                                host + host_len - self._hmarks[k].len, self._hmarks[k].len)
                if ei >= 0:
                    c = self._match_ns(self._ents[ei].value, path, path_len, full_ok, hsh, n_marks,
                                       buf, h)
                    if c != -1:
                        return c
        if self._any_ns >= 0:
            return self._match_ns(self._any_ns, path, path_len, full_ok, hsh, n_marks, buf, h)
        return -1

    cdef object match(self, const char* host, Py_ssize_t host_len,
                      const char* path, Py_ssize_t path_len):
        """No request head: only candidates without method/header/query conditions can match
        (template and regex paths are still matched)."""
        cdef Py_ssize_t c = self._match_c(host, host_len, path, path_len, NULL, NULL)
        if c < 0:
            return None
        return <object>self._cands[c].payload

    cdef object match_request(self, const char* host, Py_ssize_t host_len, const char* buf,
                              MessageHead* h):
        """Path, method, headers and query from the parsed head (offsets into `buf`); `host` is the
        routing host (lowercased, no port). Captures of a template winner: last_captures()."""
        cdef Py_ssize_t c = self._match_c(host, host_len, buf + h.target, h.path_len, buf, h)
        if c < 0:
            return None
        return <object>self._cands[c].payload

    cdef object match_path(self, const char* host, Py_ssize_t host_len, const char* path,
                           Py_ssize_t path_len, const char* buf, MessageHead* h):
        """As match_request, on a path other than the head's own (the normalized one): method,
        headers and query still come from the head."""
        cdef Py_ssize_t c = self._match_c(host, host_len, path, path_len, buf, h)
        if c < 0:
            return None
        return <object>self._cands[c].payload

    cdef int last_captures(self, Py_ssize_t* starts, Py_ssize_t* lens, int max) noexcept:
        """(offset into the path, length) of the last match's template captures; returns how many
        were written (0 when the winner was not a template)."""
        cdef int i, n = self._n_caps if self._n_caps < max else max
        if n < 0:
            n = 0
        for i in range(n):
            starts[i] = self._cap_s[i]
            lens[i] = self._cap_l[i]
        return n

    # ---- Python entries ----

    def lookup(self, bytes host, bytes path, method=b"GET", headers=(), query=b""):
        """Payload of the winning spec, or None. `headers`: (name, value) pairs; `query`: the raw
        query string without '?'."""
        cdef _RtRequest rq = _RtRequest(method, path, headers, query)
        return self.match_request(host, len(host), rq.buf, &rq.h)

    def lookup_index(self, bytes host, bytes path, method=b"GET", headers=(), query=b""):
        """Index (in the routes list) of the winning spec, or -1."""
        cdef _RtRequest rq = _RtRequest(method, path, headers, query)
        cdef Py_ssize_t c = self._match_c(host, len(host), path, len(path), rq.buf, &rq.h)
        return -1 if c < 0 else self._cands[c].route_index

    def lookup_captures(self, bytes host, bytes path, method=b"GET", headers=(), query=b""):
        """Template captures of the winning spec as {name: bytes} ({} for a non-template winner);
        None when nothing matches."""
        cdef _RtRequest rq = _RtRequest(method, path, headers, query)
        cdef Py_ssize_t starts[_RT_MAX_CAPS]
        cdef Py_ssize_t lens[_RT_MAX_CAPS]
        if self.match_request(host, len(host), rq.buf, &rq.h) is None:
            return None
        n = self.last_captures(starts, lens, _RT_MAX_CAPS)
        if n == 0:
            return {}
        names = self._tpl_names[self._cap_tpl]
        return {names[i]: path[starts[i]:starts[i] + lens[i]] for i in range(n)}

    def explain(self, bytes host, bytes path, method=b"GET", headers=(), query=b""):
        """Every candidate considered for the request, in precedence order, as
        (spec_index, matched, precedence_key, reason); the first matched one is the winner (it is
        what lookup() returns). Candidates come from the host tiers (exact host, wildcards longest
        first, host-less), and within a tier from the exact key, the templates/regexes, and every
        prefix key that is a segment prefix of the path (longest first). precedence_key =
        (host tier 0 exact / 1 wildcard / 2 any, -host chars, path class 0 exact / 1 template /
        2 regex / 3 prefix, -path score, -has method, -#headers, -#query, order, spec index):
        ascending. Lower-precedence candidates after the winner are listed too."""
        cdef _RtRequest rq = _RtRequest(method, path, headers, query)
        cdef const char* pp = path
        cdef Py_ssize_t n = len(path), ei, c, L
        cdef const _rt_NS* info
        cdef _rt_Cand* cand
        tiers = []
        nid = self._ns_ids.get(("h", host))
        if nid is not None and host:
            tiers.append((0, -len(host), nid))
        for i in range(1, len(host)):
            if host[i] == 46:
                nid = self._ns_ids.get(("w", host[i:]))
                if nid is not None:
                    tiers.append((1, -(len(host) - i), nid))
        if self._any_ns >= 0:
            tiers.append((2, 0, self._any_ns))
        out = []
        for hk, hl, nid in tiers:
            info = &self._ns[<int32_t>nid]
            runs = []
            if info.n_exact:
                ei = self._find(_rt_mix(_rt_hash_fwd(<const unsigned char*>pp, n), nid, _RT_PATH_EXACT),
                                nid, _RT_PATH_EXACT, pp, n)
                if ei >= 0:
                    runs.append((self._ents[ei].value, self._ents[ei].count))
            if info.n_pat:
                runs.append((info.pat_off, info.n_pat))
            if info.max_prefix >= 0:
                for L in range(min(n, info.max_prefix), -1, -1):
                    if L == 0 or L == n or pp[L] == 47:
                        ei = self._find(_rt_mix(_rt_hash_fwd(<const unsigned char*>pp, L), nid,
                                                _RT_PATH_PREFIX), nid, _RT_PATH_PREFIX, pp, L)
                        if ei >= 0:
                            runs.append((self._ents[ei].value, self._ents[ei].count))
            for start, count in runs:
                for c in range(start, start + count):
                    cand = &self._cands[c]
                    ri = cand.route_index
                    pkind, _, score = self._paths[ri]
                    prank = {_RT_PATH_EXACT: 0, _RT_PATH_TEMPLATE: 1, _RT_PATH_REGEX: 2}.get(pkind, 3)
                    key = (hk, hl, prank, -score) + _rt_rkey(self._rconds, self._orders, ri)
                    if not self._path_ok(cand, pp, n):
                        what = "template" if pkind == _RT_PATH_TEMPLATE else "regex"
                        out.append((ri, False, key, f"path does not match the {what}"))
                        continue
                    f = self._cond_fail(cand, rq.buf, &rq.h)
                    if f < 0:
                        out.append((ri, True, key, "match"))
                    else:
                        out.append((ri, False, key, self._reason(ri, f, rq)))
        return out

    def _reason(self, ri, int f, _RtRequest rq):
        methods, headers, query = self._rconds[ri]
        conds = []
        if methods:
            conds.append(("method", None, None, methods))
        conds += [("header", n, k, v) for n, k, v in headers]
        conds += [("query", n, k, v) for n, k, v in query]
        what, name, k, v = conds[f]
        buf = rq.buf
        if what == "method":
            got = buf[rq.h.method:rq.h.method + rq.h.method_len]
            return f"method {got.decode('latin-1')} not in {[m.decode('latin-1') for m in v]}"
        want = v.pattern if k == _RT_K_REGEX else v
        desc = f"{what} {name.decode('latin-1')!r} {_RT_KIND_NAMES[k]}"
        if k != _RT_K_PRESENT:
            desc += f" {want!r}"
        if what == "header":
            vals = [buf[rq.h.fields[i].value:rq.h.fields[i].value + rq.h.fields[i].value_len]
                    for i in range(rq.h.nfields)
                    if buf[rq.h.fields[i].name:rq.h.fields[i].name + rq.h.fields[i].name_len].lower() == name]
            got = b",".join(vals) if vals else None
        else:
            got = None
            q = buf[rq.h.target + rq.h.path_len + 1:rq.h.target + rq.h.target_len]
            if rq.h.path_len < rq.h.target_len:
                for part in q.split(b"&"):
                    if part.split(b"=", 1)[0] == name:
                        got = part.split(b"=", 1)[1] if b"=" in part else b""
                        break
        if got is None:
            return f"{desc}: missing"
        return f"{desc}: got {got!r}"

    def __len__(self):
        return self.n_routes
