# Target pickers beside smooth weighted round robin (balancer.pyx), built once per config per
# upstream: least request with the power of two choices, and consistent hashing of a request key
# (ring hash, Maglev), each optionally behind a sticky-session cookie. A pick is C arithmetic over
# C arrays: a few random draws, a ring binary search, a Maglev table index.
#
# Availability (health, ejection) is a flag per target, as in SmoothWeightedRR: least request and
# the ring skip unavailable targets; Maglev rebuilds its table without them, which is what keeps its
# disruption minimal (only the keys of the target that left move).
#
# Slow start on the hash pickers (slowstart.pyx, set_share): a weight change would move keys, not
# load, so a ramping target with share f (1..99%) keeps a deterministic f-share of the keys that hash
# to it, chosen by a second hash of the key salted with the target's id; the rest go where they
# went while the target was out (the ring: the next target on it; Maglev: a second table built
# without the ramping targets). As f grows, the keys it keeps stay kept and others join them, so a
# key moves at most once, to its own target. Keyless requests draw by the ramped weights.

from libc.stdint cimport uint32_t, uint64_t, int32_t
from libc.stdlib cimport malloc, calloc, free

cdef class Exchange

cdef enum:
    # where a hash key comes from (config `hash_on.source`)
    KS_CLIENT_IP = 0
    KS_HEADER
    KS_COOKIE
    KS_QUERY
    KS_PATH

cdef dict KEY_SOURCES = {"client_ip": KS_CLIENT_IP, "header": KS_HEADER, "cookie": KS_COOKIE,
                         "query": KS_QUERY, "path": KS_PATH}


# ---- hashing -----------------------------------------------------------------------------------------

cdef inline uint64_t _mix64(uint64_t x) noexcept nogil:
    # splitmix64's finalizer: FNV-1a alone clusters short keys that differ in their last bytes
    x ^= x >> 30
    x *= <uint64_t>0xbf58476d1ce4e5b9
    x ^= x >> 27
    x *= <uint64_t>0x94d049bb133111eb
    x ^= x >> 31
    return x


cdef uint64_t hash_bytes(const char* s, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = <uint64_t>0xcbf29ce484222325
    cdef Py_ssize_t i
    for i in range(n):
        h ^= <unsigned char>s[i]
        h *= <uint64_t>0x100000001b3
    return _mix64(h)


def hash_key(bytes key):
    """The 64-bit hash the pickers use (for tests and tools)."""
    return hash_bytes(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))


cdef bint _find_pair(const char* s, Py_ssize_t n, char sep, const char* name, Py_ssize_t name_len,
                     const char** value, Py_ssize_t* value_len) noexcept:
    """`name=value` in a `sep`-separated list (a query with '&', a Cookie value with ';', spaces
    after the separator skipped): the first value of `name`."""
    cdef Py_ssize_t i = 0, start, end
    while i <= n:
        while i < n and s[i] == b' ':
            i += 1
        start = i
        while i < n and s[i] != sep:
            i += 1
        end = i
        if end - start > name_len and s[start + name_len] == b'=' and memcmp(s + start, name, name_len) == 0:
            value[0] = s + start + name_len + 1
            value_len[0] = end - start - name_len - 1
            return True
        i += 1
    return False


cdef bint request_key(Exchange ex, int source, bytes name, uint64_t* out) except -1:
    """The hash of the request's key from `source`; False when the request has none (the picker
    then picks as if it had no key)."""
    cdef MessageHead* h = ex.h
    cdef const char* p = ex.p
    cdef const char* v
    cdef Py_ssize_t vn, i
    cdef const char* nm
    cdef Py_ssize_t nn
    if source == KS_CLIENT_IP:
        out[0] = hash_bytes(PyBytes_AS_STRING(ex.client_addr), PyBytes_GET_SIZE(ex.client_addr))
        return True
    if source == KS_PATH:
        out[0] = hash_bytes(ex.path, ex.path_len)
        return True
    if h == NULL:
        return False
    nm = PyBytes_AS_STRING(name)
    nn = PyBytes_GET_SIZE(name)
    if source == KS_QUERY:
        if h.path_len >= h.target_len:
            return False
        if not _find_pair(p + h.target + h.path_len + 1, h.target_len - h.path_len - 1, b'&', nm, nn, &v, &vn):
            return False
        out[0] = hash_bytes(v, vn)
        return True
    for i in range(h.nfields):
        if source == KS_HEADER and h.fields[i].name_len == nn and _ci_eq(p + h.fields[i].name, nn, nm, nn):
            out[0] = hash_bytes(p + h.fields[i].value, h.fields[i].value_len)
            return True
        if source == KS_COOKIE and h.fields[i].name_len == 6 and _ci_eq(p + h.fields[i].name, 6, b"cookie", 6):
            if _find_pair(p + h.fields[i].value, h.fields[i].value_len, b';', nm, nn, &v, &vn):
                out[0] = hash_bytes(v, vn)
                return True
    return False


cdef bint _cookie_value(Exchange ex, bytes name, const char** v, Py_ssize_t* vn) noexcept:
    cdef MessageHead* h = ex.h
    cdef const char* p = ex.p
    cdef Py_ssize_t i
    if h == NULL:
        return False
    for i in range(h.nfields):
        if h.fields[i].name_len == 6 and _ci_eq(p + h.fields[i].name, 6, b"cookie", 6):
            if _find_pair(p + h.fields[i].value, h.fields[i].value_len, b';', PyBytes_AS_STRING(name),
                          PyBytes_GET_SIZE(name), v, vn):
                return True
    return False


# ---- pickers -----------------------------------------------------------------------------------------

cdef class TargetPicker:
    """What an upstream's balancer config compiles to when it is not plain round robin. choose()
    returns a target index or -1 (none available)."""
    cdef list targets
    cdef Py_ssize_t n
    cdef uint32_t* weight
    cdef unsigned char* up
    cdef uint64_t rng
    # the available targets compacted, with their cumulative weights, for an O(log n) weighted draw
    cdef int32_t* avail
    cdef uint64_t* cum
    cdef int32_t* avail_pos          # a target's place in `avail`, or -1
    cdef Py_ssize_t navail
    cdef readonly str kind
    # sticky sessions: the cookie naming a target (an id derived from its address), or None
    cdef bytes sticky_cookie
    cdef bytes sticky_attributes       # "; Path=/; HttpOnly ..." after the value
    cdef uint64_t* target_ids
    cdef SmoothWeightedRR rr           # the first pick of a sticky round-robin upstream

    def __cinit__(self):
        self.weight = NULL
        self.up = NULL
        self.target_ids = NULL
        self.avail = NULL
        self.cum = NULL
        self.avail_pos = NULL

    def __dealloc__(self):
        free(self.weight)
        free(self.up)
        free(self.target_ids)
        free(self.avail)
        free(self.cum)
        free(self.avail_pos)

    def __init__(self, str kind, list targets, list weights, str sticky_cookie=None, str sticky_attributes=""):
        cdef Py_ssize_t i
        cdef bytes address
        self.kind = kind
        self.targets = targets
        self.n = len(targets)
        self.weight = <uint32_t*>calloc(self.n + 1, sizeof(uint32_t))
        self.up = <unsigned char*>calloc(self.n + 1, 1)
        self.target_ids = <uint64_t*>calloc(self.n + 1, sizeof(uint64_t))
        self.avail = <int32_t*>calloc(self.n + 1, sizeof(int32_t))
        self.cum = <uint64_t*>calloc(self.n + 1, sizeof(uint64_t))
        self.avail_pos = <int32_t*>calloc(self.n + 1, sizeof(int32_t))
        if (self.weight == NULL or self.up == NULL or self.target_ids == NULL or self.avail == NULL
                or self.cum == NULL or self.avail_pos == NULL):
            raise MemoryError()
        for i in range(self.n):
            self.weight[i] = weights[i]
            self.up[i] = 1
            address = (<Target>targets[i]).address_bytes
            self.target_ids[i] = hash_bytes(PyBytes_AS_STRING(address), PyBytes_GET_SIZE(address))
        self._compact()
        self.rng = int.from_bytes(os.urandom(8), "little") | 1
        self.sticky_cookie = sticky_cookie.encode() if sticky_cookie else None
        self.sticky_attributes = sticky_attributes.encode()
        if kind == "round_robin":
            self.rr = SmoothWeightedRR(weights)

    cdef inline uint64_t _random(self) noexcept:
        cdef uint64_t x = self.rng     # xorshift64
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        self.rng = x
        return x

    cdef Py_ssize_t choose(self, Exchange ex) except -2:
        cdef const char* v
        cdef Py_ssize_t vn, i, j
        cdef uint64_t wanted
        cdef char idhex[16]
        if self.sticky_cookie is not None:
            if _cookie_value(ex, self.sticky_cookie, &v, &vn) and vn == 16 and _hex64(v, 16, &wanted):
                for i in range(self.n):
                    if self.target_ids[i] == wanted and self.up[i]:
                        return i
            j = self.pick(ex)
            if j >= 0:
                _hex16(idhex, self.target_ids[j])
                ex.sticky_line = b"Set-Cookie: %s=%s%s\r\n" % (self.sticky_cookie, idhex[:16],
                                                               self.sticky_attributes)
            return j
        return self.pick(ex)

    cdef Py_ssize_t pick(self, Exchange ex) except -2:
        return self.rr.pick()

    cdef Py_ssize_t pick_for_client(self, bytes client_ip) except -2:
        """A stream connection's pick: only the client's IP is known (hash pickers keyed on it use it;
        the others pick as for a keyless request)."""
        return self.pick(None)

    cdef void _compact(self) noexcept:
        cdef Py_ssize_t i
        cdef uint64_t total = 0
        self.navail = 0
        for i in range(self.n):
            self.avail_pos[i] = -1
            if self.up[i]:
                total += self.weight[i]
                self.avail[self.navail] = <int32_t>i
                self.cum[self.navail] = total
                self.avail_pos[i] = <int32_t>self.navail
                self.navail += 1

    cdef inline Py_ssize_t _draw(self, uint64_t r) noexcept:
        """The available target whose cumulative-weight interval holds r (< the total)."""
        cdef Py_ssize_t lo = 0, hi = self.navail - 1, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.cum[mid] > r:
                hi = mid
            else:
                lo = mid + 1
        return self.avail[lo]

    cdef Py_ssize_t _random_available(self) noexcept:
        """A target drawn in proportion to weight among the available ones, or -1."""
        if self.navail == 0:
            return -1
        return self._draw(self._random() % self.cum[self.navail - 1])

    cdef Py_ssize_t _random_available_except(self, Py_ssize_t skip) noexcept:
        """As _random_available, leaving out `skip` (an available target); -1 when no other is."""
        cdef Py_ssize_t at = self.avail_pos[skip]
        cdef uint64_t w, before, r
        if self.navail < 2 or at < 0:
            return -1
        w = self.weight[skip]
        before = self.cum[at] - w
        r = self._random() % (self.cum[self.navail - 1] - w)
        if r >= before:
            r += w          # over skip's interval
        return self._draw(r)

    cpdef set_available(self, Py_ssize_t index, bint available):
        if index < 0 or index >= self.n:
            raise IndexError(f"target index {index} out of range (0..{self.n - 1})")
        self.up[index] = available
        self._compact()
        if self.rr is not None:
            self.rr.set_available(index, available)
        self.availability_changed()

    cdef void availability_changed(self):
        pass

    cdef void set_weight(self, Py_ssize_t index, int64_t weight) except *:
        """Slow start (slowstart.pyx): a target's weight while it ramps up."""
        if index < 0 or index >= self.n or weight <= 0:
            return
        self.weight[index] = <uint32_t>weight
        self._compact()
        if self.rr is not None:
            self.rr.set_weight(index, weight)

    cdef void set_share(self, Py_ssize_t index, int percent) except *:
        """Slow start on a hash picker: the share of its keys a ramping target keeps (HashPicker)."""
        pass

    def pick_for_test(self, Exchange ex=None):
        """Python entry for tests: the index choose() returns for `ex` (None: a keyless pick)."""
        return self.pick(ex) if ex is None else self.choose(ex)

    def __len__(self):
        return self.n


cdef class LeastRequestPicker(TargetPicker):
    """Envoy's default: `choices` targets drawn at random (in proportion to weight, distinct where
    possible), the one with the fewest active requests per unit of weight taken."""
    cdef int choices

    def __init__(self, list targets, list weights, int choices=2, **sticky):
        TargetPicker.__init__(self, "least_request", targets, weights, **sticky)
        self.choices = choices

    cdef Py_ssize_t pick(self, Exchange ex) except -2:
        cdef Py_ssize_t best, c
        cdef int k
        cdef uint64_t best_load, load
        if self.n == 1:
            return 0 if self.up[0] else -1
        best = self._random_available()
        if best < 0:
            return -1
        best_load = (<uint64_t>(<Target>self.targets[best]).active) * 1000000 // self.weight[best]
        for k in range(1, self.choices):
            # distinct candidates where there are: with two targets, drawing one twice would send
            # a quarter of the picks to a target however loaded it is
            c = self._random_available_except(best)
            if c < 0:
                break
            load = (<uint64_t>(<Target>self.targets[c]).active) * 1000000 // self.weight[c]
            if load < best_load:
                best, best_load = c, load
        return best


cdef class HashPicker(TargetPicker):
    """The base of the consistent-hash pickers: the key's source, and a random pick for requests
    without one (as Envoy does)."""
    cdef int source
    cdef bytes key_name
    cdef unsigned char* share         # slow start: percent of its keys each target keeps (NULL: all)
    cdef Py_ssize_t n_partial         # targets keeping less than all

    def __cinit__(self):
        self.share = NULL
        self.n_partial = 0

    def __dealloc__(self):
        free(self.share)

    cdef Py_ssize_t pick(self, Exchange ex) except -2:
        cdef uint64_t h
        if ex is None or not request_key(ex, self.source, self.key_name, &h):
            return self._random_available()
        return self.lookup_ramped(h)

    cdef Py_ssize_t lookup(self, uint64_t h) noexcept:
        return -1

    cdef Py_ssize_t lookup_without_partial(self, uint64_t h) noexcept:
        """Where key h goes when the targets that do not keep it are left out."""
        return -1

    cdef inline bint keeps(self, Py_ssize_t i, uint64_t h) noexcept:
        return self.share[i] >= 100 or _mix64(h ^ self.target_ids[i]) % 100 < self.share[i]

    cdef inline Py_ssize_t lookup_ramped(self, uint64_t h) noexcept:
        cdef Py_ssize_t i = self.lookup(h), j
        if self.n_partial == 0 or i < 0 or self.keeps(i, h):
            return i
        j = self.lookup_without_partial(h)
        return j if j >= 0 else i

    cdef void set_share(self, Py_ssize_t index, int percent) except *:
        cdef Py_ssize_t k
        cdef bint was
        if index < 0 or index >= self.n:
            return
        if percent > 100:
            percent = 100
        if percent < 0:
            percent = 0
        if self.share == NULL:
            if percent >= 100:
                return
            self.share = <unsigned char*>malloc(self.n + 1)
            if self.share == NULL:
                raise MemoryError()
            for k in range(self.n + 1):
                self.share[k] = 100
        was = self.share[index] < 100
        self.share[index] = <unsigned char>percent
        if was != (percent < 100):
            self.n_partial += -1 if was else 1
            self.partial_changed()

    cdef void partial_changed(self) except *:
        pass

    cdef Py_ssize_t pick_for_client(self, bytes client_ip) except -2:
        if self.source != KS_CLIENT_IP or client_ip is None:
            return self._random_available()
        return self.lookup_ramped(hash_bytes(PyBytes_AS_STRING(client_ip), PyBytes_GET_SIZE(client_ip)))

    def pick_for_client_for_test(self, bytes client_ip):
        return self.pick_for_client(client_ip)

    def lookup_for_test(self, uint64_t h):
        return self.lookup_ramped(h)

    def set_share_for_test(self, Py_ssize_t index, int percent):
        self.set_share(index, percent)


cdef class RingHashPicker(HashPicker):
    """Ketama-style ring: each target holds points in proportion to its weight (about `ring_size`
    in all); a key goes to the first available target at or after its hash on the ring."""
    cdef uint64_t* ring_hash
    cdef int32_t* ring_target
    cdef Py_ssize_t npoints

    def __cinit__(self):
        self.ring_hash = NULL
        self.ring_target = NULL

    def __dealloc__(self):
        free(self.ring_hash)
        free(self.ring_target)

    def __init__(self, list targets, list weights, str source, bytes key_name=None, int ring_size=1024,
                 **sticky):
        cdef Py_ssize_t i, k, count, total
        TargetPicker.__init__(self, "ring_hash", targets, weights, **sticky)
        self.source = KEY_SOURCES[source]
        self.key_name = key_name.lower() if key_name is not None and self.source == KS_HEADER else key_name
        total = sum(weights) if weights else 1
        points = []
        for i in range(self.n):
            count = max(1, (ring_size * weights[i] + total - 1) // total)
            address = (<Target>targets[i]).address_bytes
            for k in range(count):
                key = b"%s_%d" % (address, k)
                points.append((hash_bytes(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)), i))
        points.sort()
        self.npoints = len(points)
        self.ring_hash = <uint64_t*>malloc((self.npoints + 1) * sizeof(uint64_t))
        self.ring_target = <int32_t*>malloc((self.npoints + 1) * sizeof(int32_t))
        if self.ring_hash == NULL or self.ring_target == NULL:
            raise MemoryError()
        for k, (hv, i) in enumerate(points):
            self.ring_hash[k] = hv
            self.ring_target[k] = i

    cdef Py_ssize_t lookup(self, uint64_t h) noexcept:
        return self._walk(h, False)

    cdef Py_ssize_t lookup_without_partial(self, uint64_t h) noexcept:
        return self._walk(h, True)

    cdef Py_ssize_t _walk(self, uint64_t h, bint ramped) noexcept:
        """The first available target at or after h on the ring (ramped: that also keeps h)."""
        cdef Py_ssize_t lo = 0, hi = self.npoints, mid, k, idx
        if self.npoints == 0:
            return -1
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.ring_hash[mid] < h:
                lo = mid + 1
            else:
                hi = mid
        for k in range(self.npoints):
            idx = self.ring_target[(lo + k) % self.npoints]
            if self.up[idx] and (not ramped or self.keeps(idx, h)):
                return idx
        return -1


cdef class MaglevPicker(HashPicker):
    """Maglev (Eisenbud et al., NSDI 2016) with Envoy's weighting: a table of `table_size` (a
    prime) entries filled by each available target's permutation in turn, a target taking turns in
    proportion to its weight; a key goes to table[hash % size]."""
    cdef int32_t* table
    cdef int32_t* alt                 # slow start: the table without the targets that ramp (or NULL)
    cdef Py_ssize_t size
    cdef uint64_t* offset
    cdef uint64_t* skip
    cdef uint32_t* table_weight       # the configured weights (slow start does not move keys by weight)

    def __cinit__(self):
        self.table = NULL
        self.alt = NULL
        self.offset = NULL
        self.skip = NULL
        self.table_weight = NULL

    def __dealloc__(self):
        free(self.table)
        free(self.alt)
        free(self.offset)
        free(self.skip)
        free(self.table_weight)

    def __init__(self, list targets, list weights, str source, bytes key_name=None, int table_size=65537,
                 **sticky):
        cdef Py_ssize_t i
        cdef bytes address, salted
        TargetPicker.__init__(self, "maglev", targets, weights, **sticky)
        self.source = KEY_SOURCES[source]
        self.key_name = key_name.lower() if key_name is not None and self.source == KS_HEADER else key_name
        self.size = table_size
        self.table = <int32_t*>malloc(table_size * sizeof(int32_t))
        self.offset = <uint64_t*>malloc((self.n + 1) * sizeof(uint64_t))
        self.skip = <uint64_t*>malloc((self.n + 1) * sizeof(uint64_t))
        self.table_weight = <uint32_t*>malloc((self.n + 1) * sizeof(uint32_t))
        if self.table == NULL or self.offset == NULL or self.skip == NULL or self.table_weight == NULL:
            raise MemoryError()
        for i in range(self.n):
            self.table_weight[i] = self.weight[i]
            address = (<Target>targets[i]).address_bytes
            salted = address + b"#skip"
            self.offset[i] = hash_bytes(PyBytes_AS_STRING(address), PyBytes_GET_SIZE(address)) % table_size
            self.skip[i] = hash_bytes(PyBytes_AS_STRING(salted), PyBytes_GET_SIZE(salted)) % (table_size - 1) + 1
        self._build()

    cdef void availability_changed(self):
        self._build()

    cdef void partial_changed(self) except *:
        if self.n_partial and self.alt == NULL:
            self.alt = <int32_t*>malloc(self.size * sizeof(int32_t))
            if self.alt == NULL:
                raise MemoryError()
        if self.n_partial:
            self._fill(self.alt, True)

    cdef Py_ssize_t lookup_without_partial(self, uint64_t h) noexcept:
        if self.alt == NULL or self.size == 0:
            return -1
        return self.alt[h % <uint64_t>self.size]

    cdef void _build(self) noexcept:
        self._fill(self.table, False)
        if self.n_partial and self.alt != NULL:
            self._fill(self.alt, True)

    cdef inline bint _in_table(self, Py_ssize_t i, bint without_partial) noexcept:
        return self.up[i] and not (without_partial and self.share != NULL and self.share[i] < 100)

    cdef void _fill(self, int32_t* table, bint without_partial) noexcept:
        cdef Py_ssize_t i, filled = 0, c
        cdef uint32_t max_weight = 0
        cdef uint64_t* nxt = <uint64_t*>calloc(self.n + 1, sizeof(uint64_t))
        cdef double* credit = <double*>calloc(self.n + 1, sizeof(double))
        cdef bint any_up = False
        for c in range(self.size):
            table[c] = -1
        for i in range(self.n):
            if self._in_table(i, without_partial):
                any_up = True
                if self.table_weight[i] > max_weight:
                    max_weight = self.table_weight[i]
        if any_up and nxt != NULL and credit != NULL:
            while filled < self.size:
                for i in range(self.n):
                    if not self._in_table(i, without_partial):
                        continue
                    credit[i] += <double>self.table_weight[i] / max_weight
                    if credit[i] < 1.0:
                        continue
                    credit[i] -= 1.0
                    c = <Py_ssize_t>((self.offset[i] + nxt[i] * self.skip[i]) % self.size)
                    while table[c] >= 0:
                        nxt[i] += 1
                        c = <Py_ssize_t>((self.offset[i] + nxt[i] * self.skip[i]) % self.size)
                    table[c] = <int32_t>i
                    nxt[i] += 1
                    filled += 1
                    if filled == self.size:
                        break
        free(nxt)
        free(credit)

    cdef Py_ssize_t lookup(self, uint64_t h) noexcept:
        if self.size == 0:
            return -1
        return self.table[h % <uint64_t>self.size]

    def table_for_test(self):
        return [self.table[c] for c in range(self.size)]
