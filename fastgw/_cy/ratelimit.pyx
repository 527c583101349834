# Rate limiting (docs/rate-limiting.md): token buckets and in-flight counts in one fixed-size C
# table that every worker shares.
#
# The bucket is GCRA, the token bucket written as one number: a key's "theoretical arrival time"
# (tat, ns on CLOCK_MONOTONIC). A request of cost c passes when max(tat, now) + c*T - now <= tau,
# T = period/rate being the time one token takes to come back and tau = burst*T the bucket's size;
# then tat becomes max(tat, now) + c*T. Tokens left = (tau - (tat - now)) / T. Refill is lazy (only
# `now` moves), and the state is one int64, so one compare-and-swap updates it: the table lives in
# an anonymous MAP_SHARED mapping the supervisor makes before it forks, and a local limit holds for
# the gateway as a whole, however many workers it has.
#
# The table: `capacity` slots of 16 bytes (key hash, value), open addressing over a window of
# RL_PROBES slots. A key whose bucket is full (tat <= now), or whose in-flight count is 0, carries
# no state, so its slot is free for any other key: idle keys expire by themselves. When a window is
# full of live keys, the one closest to full is evicted (it forgets the least). Memory is fixed at
# 16 * capacity bytes whatever the clients send; a client rotating keys can only evict, never grow.
#
# Keys are 64-bit hashes (seeded per gateway start, so a client cannot aim collisions) of the
# limit's identity and the key parts. The identity covers the limit's definition and its policy's
# key: a reload that leaves a limit unchanged finds its buckets where they were; a changed limit
# hashes elsewhere and starts fresh (its old slots expire).

from libc.stdint cimport uint64_t, int64_t, int32_t
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <time.h>
    typedef struct { uint64_t key; int64_t val; } rl_slot;
    typedef struct {
        uint64_t magic, seed, mask, evictions, misses, pad[3];
        rl_slot slots[];
    } rl_table;
    #define RL_PROBES 8
    #define RL_CONC_BIT 0x8000000000000000ULL
    #define RL_MAGIC 0x666173746777726cULL

    static inline int64_t rl_now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }
    static inline uint64_t rl_mix(uint64_t h, const char* p, size_t n) {
        size_t i;
        for (i = 0; i < n; i++) { h ^= (unsigned char)p[i]; h *= 0x100000001b3ULL; }
        h ^= n; h *= 0x9e3779b97f4a7c15ULL;   /* the length ends a part: ("ab","c") != ("a","bc") */
        return h;
    }
    static inline uint64_t rl_final(uint64_t h) {
        h ^= h >> 30; h *= 0xbf58476d1ce4e5b9ULL;
        h ^= h >> 27; h *= 0x94d049bb133111ebULL;
        h ^= h >> 31;
        return h;
    }
    static inline int rl_idle(uint64_t key, int64_t val, int64_t now) {
        return (key & RL_CONC_BIT) ? val <= 0 : val <= now;
    }
    /* The slot of `k`, claiming one when it has none; NULL when every slot of the window holds a
       live in-flight count (never evicted: the log phase will give it back). */
    static rl_slot* rl_find(rl_table* t, uint64_t k, int64_t now) {
        uint64_t mask = t->mask, start = k & mask, sk;
        rl_slot *s, *victim = NULL;
        int64_t v, victim_val = INT64_MAX;
        int p;
        for (p = 0; p < RL_PROBES; p++) {
            s = &t->slots[(start + p) & mask];
            sk = __atomic_load_n(&s->key, __ATOMIC_ACQUIRE);
            if (sk == k) return s;
            if (sk == 0) break;   /* claimed in order, never released to 0: nothing of k beyond */
        }
        for (p = 0; p < RL_PROBES; p++) {
            s = &t->slots[(start + p) & mask];
            sk = __atomic_load_n(&s->key, __ATOMIC_ACQUIRE);
            if (sk == k) return s;
            v = __atomic_load_n(&s->val, __ATOMIC_ACQUIRE);
            if (sk == 0 || rl_idle(sk, v, now)) {
                if (__atomic_compare_exchange_n(&s->key, &sk, k, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                    __atomic_store_n(&s->val, 0, __ATOMIC_RELEASE);
                    return s;
                }
                if (sk == k) return s;
                continue;
            }
            if (!(sk & RL_CONC_BIT) && v < victim_val) { victim = s; victim_val = v; }
        }
        if (victim != NULL) {
            sk = __atomic_load_n(&victim->key, __ATOMIC_ACQUIRE);
            if (!(sk & RL_CONC_BIT) &&
                __atomic_compare_exchange_n(&victim->key, &sk, k, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                __atomic_store_n(&victim->val, 0, __ATOMIC_RELEASE);
                __atomic_fetch_add(&t->evictions, 1, __ATOMIC_RELAXED);
                return victim;
            }
        }
        __atomic_fetch_add(&t->misses, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    /* GCRA: 1 and the new tat when the request passes, 0 and the tat as it stays when not. */
    static inline int rl_take(rl_slot* s, int64_t now, int64_t inc, int64_t tau, int64_t* out) {
        int64_t tat = __atomic_load_n(&s->val, __ATOMIC_ACQUIRE), base, next;
        for (;;) {
            base = tat > now ? tat : now;
            next = base + inc;
            if (next - now > tau) { *out = tat; return 0; }
            if (__atomic_compare_exchange_n(&s->val, &tat, next, 1, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                *out = next;
                return 1;
            }
        }
    }
    static inline void rl_refund(rl_slot* s, int64_t inc) {
        __atomic_fetch_sub(&s->val, inc, __ATOMIC_ACQ_REL);
    }
    static inline int64_t rl_enter(rl_slot* s) {
        return __atomic_add_fetch(&s->val, 1, __ATOMIC_ACQ_REL);
    }
    static inline void rl_leave(rl_slot* s) {
        __atomic_fetch_sub(&s->val, 1, __ATOMIC_ACQ_REL);
    }
    static inline void rl_sub(int64_t* p, int64_t d) {
        __atomic_fetch_sub(p, d, __ATOMIC_ACQ_REL);
    }
    """
    ctypedef struct rl_slot:
        uint64_t key
        int64_t val
    ctypedef struct rl_table:
        uint64_t magic
        uint64_t seed
        uint64_t mask
        uint64_t evictions
        uint64_t misses
        rl_slot* slots
    uint64_t RL_CONC_BIT
    uint64_t RL_MAGIC
    int RL_PROBES
    int64_t rl_now_ns() nogil
    uint64_t rl_mix(uint64_t h, const char* p, size_t n) nogil
    uint64_t rl_final(uint64_t h) nogil
    rl_slot* rl_find(rl_table* t, uint64_t k, int64_t now) nogil
    bint rl_take(rl_slot* s, int64_t now, int64_t inc, int64_t tau, int64_t* out) nogil
    void rl_refund(rl_slot* s, int64_t inc) nogil
    int64_t rl_enter(rl_slot* s) nogil
    void rl_leave(rl_slot* s) nogil
    void rl_sub(int64_t* p, int64_t d) nogil

cdef enum:
    RL_HEADER_BYTES = 64      # sizeof(rl_table) before the slots
    RL_SLOT_BYTES = 16

    KP_ROUTE = 0
    KP_CLIENT_IP
    KP_CONSUMER
    KP_HEADER
    KP_QUERY
    KP_CAPTURE

    WM_SHARED = 0
    WM_SKIP
    WM_DENY

    RL_MAX_LIMITS = 32        # per policy: what one request's bookkeeping holds on the stack


cdef class RateTable:
    """The slots every limit of the gateway keys into: `capacity` (a power of two) slots in one
    mapping, MAP_SHARED when made before the workers fork."""
    cdef object mapping
    cdef Py_buffer buf
    cdef bint has_buf
    cdef rl_table* t
    cdef readonly Py_ssize_t capacity
    # The in-flight ledger: per worker, how many in-flight counts it holds in each slot (int32 x
    # capacity a worker, also MAP_SHARED), so that the supervisor can give back what a worker that
    # died held (release_worker): its requests never reached their log phase.
    cdef object ledger_map
    cdef Py_buffer lbuf
    cdef bint has_lbuf
    cdef int32_t* mine
    cdef readonly int workers

    def __init__(self, Py_ssize_t capacity=262144, seed=None, int workers=0):
        import mmap
        import os
        if capacity < RL_PROBES or capacity & (capacity - 1):
            raise ValueError("capacity must be a power of two of at least 8")
        self.capacity = capacity
        self.mapping = mmap.mmap(-1, RL_HEADER_BYTES + RL_SLOT_BYTES * capacity)   # anonymous, MAP_SHARED
        PyObject_GetBuffer(self.mapping, &self.buf, PyBUF_WRITABLE)
        self.has_buf = True
        self.t = <rl_table*>self.buf.buf
        self.t.magic = RL_MAGIC
        self.t.seed = int.from_bytes(os.urandom(8), "little") if seed is None else seed
        self.t.mask = capacity - 1
        if workers > 0:
            self.workers = workers
            self.ledger_map = mmap.mmap(-1, 4 * capacity * workers)
            PyObject_GetBuffer(self.ledger_map, &self.lbuf, PyBUF_WRITABLE)
            self.has_lbuf = True

    def __dealloc__(self):
        if self.has_buf:
            PyBuffer_Release(&self.buf)
        if self.has_lbuf:
            PyBuffer_Release(&self.lbuf)

    def set_worker(self, int index):
        """In a worker: count its in-flight slots in ledger row `index` (no ledger: no-op)."""
        if self.has_lbuf and 0 <= index < self.workers:
            self.mine = <int32_t*>self.lbuf.buf + <Py_ssize_t>index * self.capacity

    def release_worker(self, int index):
        """In the supervisor, after worker `index` exited: give back every in-flight count it held;
        returns how many."""
        cdef int32_t* row
        cdef Py_ssize_t i
        cdef int64_t n = 0
        cdef int32_t c
        if not self.has_lbuf or not 0 <= index < self.workers:
            return 0
        row = <int32_t*>self.lbuf.buf + <Py_ssize_t>index * self.capacity
        for i in range(self.capacity):
            c = row[i]
            if c != 0:
                rl_sub(&self.slot_at(i).val, c)
                row[i] = 0
                n += c
        return n

    cdef inline void held(self, rl_slot* s, int d) noexcept:
        """This worker's ledger entry of slot `s` moves by `d` (after an enter, before a leave)."""
        if self.mine != NULL:
            self.mine[(<char*>s - <char*>self.t - RL_HEADER_BYTES) // RL_SLOT_BYTES] += d

    cdef inline rl_slot* slot_at(self, Py_ssize_t i) noexcept:
        return <rl_slot*>(<char*>self.t + RL_HEADER_BYTES + RL_SLOT_BYTES * i)

    cdef inline uint64_t key_hash(self, uint64_t h, bint concurrency) noexcept:
        h = rl_final(h ^ self.t.seed)
        h = (h | RL_CONC_BIT) if concurrency else (h & ~RL_CONC_BIT)
        return h if h != 0 else 1

    cdef inline rl_slot* find(self, uint64_t k, int64_t now) noexcept:
        return rl_find(self._view(), k, now)

    cdef inline rl_table* _view(self) noexcept:
        # rl_table's flexible array starts right after the header; the Cython-side struct declares
        # `slots` as a pointer only for the type checker, so the C code is the one that indexes it
        return self.t

    @property
    def evictions(self):
        return self.t.evictions

    @property
    def misses(self):
        """Requests no slot could be found for (every slot of their window in flight): let through."""
        return self.t.misses

    def live_keys(self, now_ns=None):
        """How many slots hold state that matters at `now_ns` (a scan: for tests and the admin API)."""
        cdef int64_t now = rl_now_ns() if now_ns is None else now_ns
        cdef Py_ssize_t i, n = 0
        cdef rl_slot* s
        for i in range(self.capacity):
            s = self.slot_at(i)
            if s.key != 0 and not ((s.val <= 0) if (s.key & RL_CONC_BIT) else (s.val <= now)):
                n += 1
        return n

    @property
    def memory_bytes(self):
        return RL_HEADER_BYTES + RL_SLOT_BYTES * self.capacity

    # ---- the bucket with an injected clock: unit tests and the micro-benchmark --------------------

    def take(self, bytes key, int64_t now_ns, double rate, double period, int64_t burst, int64_t cost=1):
        """One request of `cost` on `key`'s bucket at `now_ns`: (allowed, remaining, ns until full
        or, refused, ns until it would pass)."""
        cdef int64_t interval = <int64_t>(period * 1e9 / rate)
        cdef uint64_t k = self.key_hash(rl_mix(0, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)), False)
        cdef rl_slot* s = self.find(k, now_ns)
        cdef int64_t tat
        if s == NULL:
            return (True, -1, 0)
        if rl_take(s, now_ns, interval * cost, interval * burst, &tat):
            return (True, (interval * burst - (tat - now_ns)) // interval, tat - now_ns)
        return (False, 0, (tat if tat > now_ns else now_ns) + interval * cost - interval * burst - now_ns)

    def take_many(self, Py_ssize_t n, Py_ssize_t nkeys, int64_t now_ns, double rate, double period, int64_t burst):
        """`n` requests over `nkeys` keys (8-byte keys, round robin), 1ns apart, all in C: the
        micro-benchmark's measure of hashing, lookup and the compare-and-swap. Returns how many passed."""
        cdef int64_t interval = <int64_t>(period * 1e9 / rate)
        cdef int64_t tat
        cdef Py_ssize_t i, passed = 0
        cdef uint64_t kv
        cdef rl_slot* s
        for i in range(n):
            kv = <uint64_t>(i % nkeys)
            s = self.find(self.key_hash(rl_mix(0x1234, <const char*>&kv, 8), False), now_ns + i)
            if s != NULL and rl_take(s, now_ns + i, interval, interval * burst, &tat):
                passed += 1
        return passed

    def enter(self, bytes key, int64_t now_ns, int64_t limit):
        """An in-flight slot on `key`: (admitted, count) (a refused one is not held)."""
        cdef uint64_t k = self.key_hash(rl_mix(0, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)), True)
        cdef rl_slot* s = self.find(k, now_ns)
        cdef int64_t n
        if s == NULL:
            return (True, -1)
        n = rl_enter(s)
        if n > limit:
            rl_leave(s)
            return (False, n - 1)
        self.held(s, 1)
        return (True, n)

    def leave(self, bytes key, int64_t now_ns):
        cdef uint64_t k = self.key_hash(rl_mix(0, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)), True)
        cdef rl_slot* s = self.find(k, now_ns)
        if s != NULL:
            self.held(s, -1)
            rl_leave(s)


cdef class ClusterLease:
    """One key's lease of a cluster limit in one worker (fastgw/ratelimit_cluster.py manages it): a
    cdef class so that a request spending from it (the common case) is a few C reads and writes, not
    Python attribute lookups. Times are CLOCK_MONOTONIC seconds, as time.monotonic() gives them."""
    cdef public int64_t tokens
    cdef public double expires
    cdef public double blocked_until
    cdef public object fetching       # the lease request in flight, or None
    cdef public int64_t seen          # requests since `since`, for the rate estimate
    cdef public double since
    cdef public double rate           # requests/s this worker sees for the key (smoothed)
    cdef public double refresh_at     # past it, a request starts the next lease request ahead of need
    cdef public int64_t owed          # tokens of a replaced lease, given back with the next call

    def __init__(self, double now):
        self.since = now
        self.refresh_at = 1e300


cdef RateTable _rate_table = None


def rate_table(Py_ssize_t capacity=0, int workers=0):
    """The gateway's table, made on first use (the supervisor makes it before it forks, so workers
    share it; an in-process gateway gets its own). `capacity` and `workers` (the in-flight ledger's
    rows) count only on that first call."""
    global _rate_table
    if _rate_table is None:
        _rate_table = RateTable(capacity or 262144, None, workers)
    return _rate_table


def limit_identity(str text):
    """A limit's identity hash from its canonical description."""
    cdef bytes b = text.encode()
    return rl_mix(0x84222325cbf29ce4, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


cdef class LimitSpec:
    """One compiled limit of a RateLimitPolicy."""
    cdef uint64_t identity
    cdef bint concurrency
    cdef int64_t interval      # ns per token
    cdef int64_t inc           # interval * cost
    cdef int64_t tau           # interval * burst
    cdef int64_t quota         # what the headers call the limit: rate, or the in-flight cap
    cdef int64_t window        # seconds, for RateLimit-Policy's w
    cdef int when_missing
    cdef tuple parts           # ((KP_*, bytes argument), ...)
    cdef bytes name            # the policy item's name in the headers
    cdef readonly str description
    cdef object _cluster       # a ClusterLimit (fastgw/ratelimit_cluster.py) for `scope: cluster`
    cdef dict leases           # its leases by key hash (ClusterLease), read in C on the fast path
    cdef int64_t cost

    def __init__(self, identity, bint concurrency, double rate, double period, int64_t burst, int64_t cost,
                 int64_t concurrent, parts, int when_missing, bytes name, str description):
        self.identity = identity
        self.concurrency = concurrency
        if concurrency:
            self.quota = concurrent
        else:
            self.interval = <int64_t>(period * 1e9 / rate)
            if self.interval < 1:        # the config refuses such rates; a bucket never divides by 0
                self.interval = 1
            self.inc = self.interval * cost
            self.tau = self.interval * burst
            self.quota = <int64_t>rate
            self.window = <int64_t>(period + 0.999999)
        self.parts = tuple(parts)
        self.cost = cost
        self.when_missing = when_missing
        self.name = name
        self.description = description

    @property
    def cluster(self):
        return self._cluster

    @cluster.setter
    def cluster(self, value):
        self._cluster = value
        self.leases = value.leases if value is not None else None


cdef inline ClusterLease _spendable(LimitSpec spec, uint64_t ck, double now):
    """The key's lease when a request of the spec's cost can spend from it now, else None."""
    cdef object found = spec.leases.get(ck)
    cdef ClusterLease lease
    if found is None:
        return None
    lease = <ClusterLease>found
    if lease.tokens >= spec.cost and now < lease.expires:
        if now >= lease.refresh_at:   # half the lease gone: the next one is asked for now, in the background
            lease.refresh_at = 1e300
            spec._cluster.refresh(ck)
        return lease
    return None


cdef inline int64_t _ceil_s(int64_t ns) noexcept:
    return (ns + 999999999) // 1000000000 if ns > 0 else 0


cdef class RateLimitPolicy(Policy):
    """The `rate_limit` policy: each request takes from every limit's bucket (or an in-flight slot),
    and a request any limit refuses is answered 429 (or 503) instead, unless in shadow mode."""
    cdef tuple specs
    cdef RateTable table
    cdef bint shadow
    cdef int status
    cdef int concurrency_status
    cdef bint ietf, legacy, xrl
    cdef bint on_allowed
    cdef bint has_concurrency
    cdef readonly int64_t allowed
    cdef readonly int64_t limited
    cdef readonly int64_t shadow_limited
    cdef double last_event
    cdef int64_t unreported
    cdef public object clock   # None: CLOCK_MONOTONIC; else a callable giving ns (tests)
    cdef bint has_cluster
    cdef double cluster_deadline

    def __init__(self, str name, str key, specs, bint shadow, int status, int concurrency_status, headers,
                 bint headers_on_allowed, RateTable table, config=None):
        Policy.__init__(self, name, "rate_limit", key, config)
        self.specs = tuple(specs)
        if len(self.specs) > RL_MAX_LIMITS:
            raise ValueError(f"at most {RL_MAX_LIMITS} limits a policy")
        self.table = table
        self.shadow = shadow
        self.status = status
        self.concurrency_status = concurrency_status
        self.ietf = "ietf" in headers
        self.legacy = "legacy" in headers
        self.xrl = "x-ratelimit" in headers
        self.on_allowed = headers_on_allowed and (self.ietf or self.legacy or self.xrl)
        self.has_concurrency = any((<LimitSpec>s).concurrency for s in self.specs)
        self.has_cluster = any((<LimitSpec>s).cluster is not None for s in self.specs)
        self.cluster_deadline = max([(<LimitSpec>s).cluster.link.settings.timeout for s in self.specs
                                     if (<LimitSpec>s).cluster is not None] or [0.0]) + 1.0
        self.phases = PH_REQUEST
        if self.on_allowed:
            self.phases |= PH_RESPONSE
        if self.has_concurrency:
            self.phases |= PH_LOG

    cdef object _part(self, Exchange ex, int kind, bytes arg):
        cdef Py_ssize_t starts[16]
        cdef Py_ssize_t lens[16]
        cdef int n, k
        if kind == KP_CLIENT_IP:
            return ex.client_addr
        if kind == KP_ROUTE:
            return ex.route.name if ex.route is not None else ""
        if kind == KP_CONSUMER:
            return ex.consumer_name
        if kind == KP_HEADER:
            return ex.header_value(arg)
        if kind == KP_QUERY:
            return _query_value(ex.query_bytes, arg)
        if kind == KP_CAPTURE:
            if ex.routes is None or ex.rmatch is None or arg not in ex.rmatch.capture_names:
                return None
            k = ex.rmatch.capture_names.index(arg)
            n = ex.routes.last_captures(starts, lens, 16)
            if k >= n:
                return None
            return ex.path[starts[k]:starts[k] + lens[k]]
        return None

    cdef int _key(self, Exchange ex, LimitSpec spec, uint64_t* out) except -1:
        """The key hash of `ex` for `spec` (not yet seeded); 1 when a part was missing."""
        cdef uint64_t h = spec.identity
        cdef bint missing = False
        cdef Py_ssize_t vlen
        cdef const char* vp
        for part in spec.parts:
            value = self._part(ex, <int>part[0], <bytes>part[1])
            if value is None:
                missing = True
                value = b""
            if isinstance(value, str):
                vp = PyUnicode_AsUTF8AndSize(value, &vlen)
            else:
                vp = PyBytes_AS_STRING(value)
                vlen = PyBytes_GET_SIZE(value)
            h = rl_mix(h, vp, vlen)
        out[0] = h
        return 1 if missing else 0

    cdef int on_request(self, Exchange ex) except -1:
        if self.has_cluster:
            return self._cluster_first(ex)
        return self._evaluate(ex, NULL, NULL)

    cdef int _cluster_first(self, Exchange ex) except -1:
        """A cluster limit without a usable lease pauses the request until its lease request
        answers (or its deadline passes); then every limit is evaluated at once."""
        cdef LimitSpec spec
        cdef uint64_t h
        cdef int missing, i
        cdef double now = <double>rl_now_ns() / 1e9
        cdef uint64_t hs[RL_MAX_LIMITS]      # every limit's key, for _evaluate (not computed twice)
        cdef int misses[RL_MAX_LIMITS]
        for i in range(len(self.specs)):
            spec = <LimitSpec>self.specs[i]
            missing = misses[i] = self._key(ex, spec, &hs[i])
            h = hs[i]
            if spec._cluster is None:
                continue
            if missing and spec.when_missing != WM_SHARED:
                continue
            if _spendable(spec, rl_final(h), now) is not None:
                continue
            if spec.cluster.needs_lease(rl_final(h), spec.cost):
                import asyncio
                waiter = asyncio.shield(spec.cluster.fetch(rl_final(h), spec.cost))
                ex.pending = waiter
                ex.pause_deadline(self.cluster_deadline)
                waiter.add_done_callback(_LeaseArrived(self, ex))
                return P_PAUSED
        return self._evaluate(ex, hs, misses)

    cdef int _evaluate(self, Exchange ex, uint64_t* hs, int* misses) except -1:
        """`hs`, `misses`: every limit's key hash and missing flag, when the caller has them."""
        cdef int64_t now = rl_now_ns() if self.clock is None else self.clock()
        cdef object cluster_taken = None
        cdef rl_slot* taken[RL_MAX_LIMITS]
        cdef int64_t taken_inc[RL_MAX_LIMITS]
        cdef int n_taken = 0
        cdef LimitSpec spec, report = None, refuser = None
        cdef rl_slot* s
        cdef uint64_t h
        cdef int64_t tat, remaining, reset, retry = 0, best_remaining = 0, best_reset = 0, n
        cdef double ratio, best_ratio = 2.0
        cdef bint missing
        cdef bint store_down = False
        cdef int i, j
        cdef list held = None
        cdef ClusterLease lease
        cdef uint64_t ck
        cdef Py_ssize_t last = len(self.specs) - 1
        cdef double now_s = <double>(now if self.clock is None else rl_now_ns()) / 1e9   # a lease's clock
        for i in range(len(self.specs)):
            spec = <LimitSpec>self.specs[i]
            if hs != NULL:
                h = hs[i]
                missing = misses[i]
            else:
                missing = self._key(ex, spec, &h)
            if missing:
                if spec.when_missing == WM_SKIP:
                    continue
                if spec.when_missing == WM_DENY:
                    refuser = spec
                    retry = 0
                    break
            if spec._cluster is not None:
                ck = rl_final(h)
                lease = _spendable(spec, ck, now_s)
                if lease is not None:        # the common case, in C: spend from the lease
                    lease.seen += spec.cost
                    lease.tokens -= spec.cost
                    n = lease.tokens
                else:
                    n = spec.cluster.take(ck, spec.cost)
                if n == -3:                  # Redis away, failing open
                    continue
                if n < 0:
                    refuser = spec
                    if spec.cluster.failing():
                        store_down = True
                        retry = 1000000000
                    else:
                        retry = spec.cluster.retry_after_ns(ck)
                    break
                if i < last:                 # only a later limit's refusal gives it back
                    if cluster_taken is None:
                        cluster_taken = []
                    cluster_taken.append((spec, ck))
                remaining = n
                reset = 0
                ratio = <double>remaining / <double>spec.quota
                if ratio < best_ratio:
                    best_ratio = ratio
                    report = spec
                    best_remaining = remaining
                    best_reset = reset
                continue
            s = self.table.find(self.table.key_hash(h, spec.concurrency), now)
            if s == NULL:
                continue
            if spec.concurrency:
                n = rl_enter(s)
                if n > spec.quota:
                    rl_leave(s)
                    refuser = spec
                    retry = 1000000000
                    break
                self.table.held(s, 1)
                if held is None:
                    held = []
                held.append(<Py_ssize_t>(<char*>s - <char*>self.table.t))
                remaining = spec.quota - n
                reset = 0
            elif rl_take(s, now, spec.inc, spec.tau, &tat):
                taken[n_taken] = s
                taken_inc[n_taken] = spec.inc
                n_taken += 1
                remaining = (spec.tau - (tat - now)) // spec.interval
                reset = tat - now
            else:
                refuser = spec
                retry = (tat if tat > now else now) + spec.inc - spec.tau - now
                break
            ratio = <double>remaining / <double>spec.quota
            if ratio < best_ratio:
                best_ratio = ratio
                report = spec
                best_remaining = remaining
                best_reset = reset
        if refuser is not None:
            if self.shadow:
                self.shadow_limited += 1
                self._note(ex, refuser, True)
            else:
                for j in range(n_taken):
                    rl_refund(taken[j], taken_inc[j])
                if cluster_taken is not None:
                    for cspec, ck in cluster_taken:
                        (<LimitSpec>cspec).cluster.refund(ck, (<LimitSpec>cspec).cost)
                if held is not None:
                    for off in held:
                        self.table.held(<rl_slot*>(<char*>self.table.t + <Py_ssize_t>off), -1)
                        rl_leave(<rl_slot*>(<char*>self.table.t + <Py_ssize_t>off))
                self.limited += 1
                self._note(ex, refuser, False)
                if store_down:
                    ex.answer_json(503, b"rate limit store unavailable", b"Retry-After: 1\r\n", RF_RATE_LIMITED)
                    return P_ANSWERED
                ex.answer_json(self.concurrency_status if refuser.concurrency else self.status,
                               b"rate limit exceeded" if not refuser.concurrency else b"too many requests in flight",
                               self._lines(refuser, 0, retry, True), RF_RATE_LIMITED)
                return P_ANSWERED
        self.allowed += 1
        if held is not None:
            if ex.rl_held is None:
                ex.rl_held = held
            else:
                ex.rl_held.extend(held)
        if self.on_allowed and report is not None and (ex.rl_lines is None or best_ratio < ex.rl_ratio):
            ex.rl_lines = self._lines(report, best_remaining, best_reset, False)
            ex.rl_ratio = best_ratio
        return P_CONTINUE

    cdef bytes _lines(self, LimitSpec spec, int64_t remaining, int64_t reset_ns, bint refused):
        """The header lines of one limit's state (`reset_ns`: until full, or, refused, until a retry
        can pass)."""
        cdef int64_t t = _ceil_s(reset_ns)
        cdef list out = []
        if refused:
            out.append(b"Retry-After: %d\r\n" % (t if t > 0 else 1))
        if self.ietf:
            if spec.concurrency:
                out.append(b'RateLimit-Policy: "%s";q=%d;qu="concurrency"\r\n' % (spec.name, spec.quota))
            else:
                out.append(b'RateLimit-Policy: "%s";q=%d;w=%d\r\n' % (spec.name, spec.quota, spec.window))
            out.append(b'RateLimit: "%s";r=%d;t=%d\r\n' % (spec.name, remaining, t))
        if self.legacy:
            out.append(b"RateLimit-Limit: %d\r\nRateLimit-Remaining: %d\r\nRateLimit-Reset: %d\r\n"
                       % (spec.quota, remaining, t))
        if self.xrl:
            out.append(b"X-RateLimit-Limit: %d\r\nX-RateLimit-Remaining: %d\r\nX-RateLimit-Reset: %d\r\n"
                       % (spec.quota, remaining, t))
        return b"".join(out)

    cdef void _note(self, Exchange ex, LimitSpec spec, bint shadow) except *:
        """A refusal (or, in shadow mode, a would-be refusal) as an event, at most once a second per
        policy, with how many went unreported since."""
        cdef double now = monotonic()
        self.unreported += 1
        if now - self.last_event < 1.0:
            return
        self.last_event = now
        from fastgw import events
        events.emit("warning" if not shadow else "info", "rate_limited_shadow" if shadow else "rate_limited",
                    msg=f"{'would limit' if shadow else 'limited'} {self.unreported} request(s) by "
                        f"{spec.name.decode()} ({self.name})",
                    policy=self.name, limit=spec.name.decode(), count=self.unreported, shadow=shadow,
                    route=ex.route.name if ex.route is not None else None)
        self.unreported = 0

    cdef int on_response(self, Exchange ex) except -1:
        if ex.rl_lines is not None:
            if ex.resp_edits_py is None:
                ex.resp_edits_py = []
            ex.resp_edits_py.append((b"ratelimit", ex.rl_lines, False))
            ex.rl_lines = None
        return P_CONTINUE

    cdef int on_log(self, Exchange ex) except -1:
        cdef list held = ex.rl_held
        if held is not None:
            ex.rl_held = None
            for off in held:
                self.table.held(<rl_slot*>(<char*>self.table.t + <Py_ssize_t>off), -1)
                rl_leave(<rl_slot*>(<char*>self.table.t + <Py_ssize_t>off))
        return 0

    def adopt(self, Policy old):
        """The buckets carry over by themselves (ratelimit.pyx's header); the counters the metrics
        report carry over here, so they never go backwards at a reload."""
        cdef RateLimitPolicy prev
        if isinstance(old, RateLimitPolicy):
            prev = <RateLimitPolicy>old
            self.allowed += prev.allowed
            self.limited += prev.limited
            self.shadow_limited += prev.shadow_limited

    def describe(self):
        n = len(self.specs)
        return f"rate_limit, {n} limit{'s' if n != 1 else ''}{', shadow' if self.shadow else ''}"

    @property
    def table_stats(self):
        return {"capacity": self.table.capacity, "evictions": self.table.evictions, "misses": self.table.misses}


cdef class _LeaseArrived:
    """A paused request's lease request answered (or failed): evaluate every limit now."""
    cdef RateLimitPolicy policy
    cdef Exchange ex

    def __init__(self, RateLimitPolicy policy, Exchange ex):
        self.policy = policy
        self.ex = ex

    def __call__(self, fut):
        cdef Exchange ex = self.ex
        if ex.finished or not ex.paused or fut.cancelled():
            return
        try:
            r = self.policy._cluster_first(ex)
        except Exception as exc:
            _report_policy_error(self.policy, "request", exc)
            ex.fail(500, b"policy failed", RF_POLICY_ERROR)
            ex.resume()
            return
        if r != P_PAUSED:
            ex.resume()


cdef object _query_value(bytes query, bytes name):
    """The first value of `name` in a raw query string (no percent-decoding, as route matching)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
    for pair in query.split(b"&"):
        if pair[:n] == name and (len(pair) == n or pair[n:n + 1] == b"="):
            return pair[n + 1:]
    return None
