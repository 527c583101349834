# api_key (docs/auth.md): a key from a header or a query parameter, looked up by its SHA-256
# digest. Keys are kept only as digests, in a C table addressed by the digest's first 8 bytes (which
# say nothing of the key); every digest met on the probe is compared with the request's in constant
# time, so how much of a wrong key matched never shows in the time taken. No Python object is made
# per request: the digest is computed onto the stack from the key where it lies in the head. The
# credential is taken out of the upstream request unless `strip: false`.

import hashlib as _hashlib
from libc.stdint cimport uint64_t
from libc.string cimport memcpy
import hmac as _hmac
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from urllib.parse import unquote_to_bytes as _unquote_to_bytes

# The comparison of secrets held in Python objects (basic auth's cache of verified credentials).
_secret_equal = _hmac.compare_digest
cdef object _sha256 = _hashlib.sha256

# SHA-256 of a request's credential, in place in the head's bytes: hashlib's OpenSSL object (an EVP
# context made, copied and freed per call) cost more than the hash itself. FIPS 180-4; checked
# against hashlib in tests/unit/test_auth_config.py.
cdef extern from *:
    """
    static const uint32_t fgw_sha256_k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    #define FGW_ROR32(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
    /* Eight rounds a step with the roles of a..h rotated by name (no register shuffling), and
       the message schedule kept as 16 words, each overwritten when it is next needed. */
    #define FGW_S0(x) (FGW_ROR32(x, 2) ^ FGW_ROR32(x, 13) ^ FGW_ROR32(x, 22))
    #define FGW_S1(x) (FGW_ROR32(x, 6) ^ FGW_ROR32(x, 11) ^ FGW_ROR32(x, 25))
    #define FGW_G0(x) (FGW_ROR32(x, 7) ^ FGW_ROR32(x, 18) ^ ((x) >> 3))
    #define FGW_G1(x) (FGW_ROR32(x, 17) ^ FGW_ROR32(x, 19) ^ ((x) >> 10))
    #define FGW_W(i) (w[(i) & 15] += FGW_G1(w[((i) - 2) & 15]) + w[((i) - 7) & 15] + FGW_G0(w[((i) - 15) & 15]))
    #define FGW_RND(a, b, c, d, e, f, g, h, i, wi) do { \
            uint32_t t1_ = h + FGW_S1(e) + (g ^ (e & (f ^ g))) + fgw_sha256_k[i] + (wi); \
            d += t1_; h = t1_ + FGW_S0(a) + ((a & b) | (c & (a | b))); } while (0)
    static void fgw_sha256_block(uint32_t* st, const unsigned char* p) {
        uint32_t w[16], a, b, c, d, e, f, g, h;
        int i;
        for (i = 0; i < 16; i++)
            w[i] = ((uint32_t)p[4 * i] << 24) | ((uint32_t)p[4 * i + 1] << 16)
                   | ((uint32_t)p[4 * i + 2] << 8) | (uint32_t)p[4 * i + 3];
        a = st[0]; b = st[1]; c = st[2]; d = st[3]; e = st[4]; f = st[5]; g = st[6]; h = st[7];
        for (i = 0; i < 16; i += 8) {
            FGW_RND(a, b, c, d, e, f, g, h, i, w[i]);
            FGW_RND(h, a, b, c, d, e, f, g, i + 1, w[i + 1]);
            FGW_RND(g, h, a, b, c, d, e, f, i + 2, w[i + 2]);
            FGW_RND(f, g, h, a, b, c, d, e, i + 3, w[i + 3]);
            FGW_RND(e, f, g, h, a, b, c, d, i + 4, w[i + 4]);
            FGW_RND(d, e, f, g, h, a, b, c, i + 5, w[i + 5]);
            FGW_RND(c, d, e, f, g, h, a, b, i + 6, w[i + 6]);
            FGW_RND(b, c, d, e, f, g, h, a, i + 7, w[i + 7]);
        }
        for (; i < 64; i += 8) {
            FGW_RND(a, b, c, d, e, f, g, h, i, FGW_W(i));
            FGW_RND(h, a, b, c, d, e, f, g, i + 1, FGW_W(i + 1));
            FGW_RND(g, h, a, b, c, d, e, f, i + 2, FGW_W(i + 2));
            FGW_RND(f, g, h, a, b, c, d, e, i + 3, FGW_W(i + 3));
            FGW_RND(e, f, g, h, a, b, c, d, i + 4, FGW_W(i + 4));
            FGW_RND(d, e, f, g, h, a, b, c, i + 5, FGW_W(i + 5));
            FGW_RND(c, d, e, f, g, h, a, b, i + 6, FGW_W(i + 6));
            FGW_RND(b, c, d, e, f, g, h, a, i + 7, FGW_W(i + 7));
        }
        st[0] += a; st[1] += b; st[2] += c; st[3] += d; st[4] += e; st[5] += f; st[6] += g; st[7] += h;
    }
    /* x86 SHA extensions (Intel's and AMD's since Zen), when the CPU has them: four rounds an
       instruction pair, the schedule by sha256msg1/msg2. Chosen once, at the first hash. */
    #if defined(__GNUC__) && defined(__x86_64__) && !defined(FASTGW_NO_SHANI)
    #include <immintrin.h>
    #define FGW_SHANI 1
    __attribute__((target("sha,sse4.1,ssse3")))
    static void fgw_sha256_block_shani(uint32_t* st, const unsigned char* p) {
        const __m128i mask = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
        __m128i s0, s1, tmp, msg, w[4], save0, save1;
        int g;
        tmp = _mm_loadu_si128((const __m128i*)&st[0]);          /* DCBA */
        s1 = _mm_loadu_si128((const __m128i*)&st[4]);           /* HGFE */
        tmp = _mm_shuffle_epi32(tmp, 0xB1);                     /* CDAB */
        s1 = _mm_shuffle_epi32(s1, 0x1B);                       /* EFGH */
        s0 = _mm_alignr_epi8(tmp, s1, 8);                       /* ABEF */
        s1 = _mm_blend_epi16(s1, tmp, 0xF0);                    /* CDGH */
        save0 = s0;
        save1 = s1;
        for (g = 0; g < 16; g++) {
            __m128i* wg = &w[g & 3];
            if (g < 4) {
                *wg = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(p + 16 * g)), mask);
            } else {
                /* W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16], four at a time */
                tmp = _mm_alignr_epi8(w[(g - 1) & 3], w[(g - 2) & 3], 4);
                *wg = _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32(*wg, w[(g - 3) & 3]), tmp),
                                           w[(g - 1) & 3]);
            }
            msg = _mm_add_epi32(*wg, _mm_loadu_si128((const __m128i*)&fgw_sha256_k[4 * g]));
            s1 = _mm_sha256rnds2_epu32(s1, s0, msg);
            msg = _mm_shuffle_epi32(msg, 0x0E);
            s0 = _mm_sha256rnds2_epu32(s0, s1, msg);
        }
        s0 = _mm_add_epi32(s0, save0);
        s1 = _mm_add_epi32(s1, save1);
        tmp = _mm_shuffle_epi32(s0, 0x1B);                      /* FEBA */
        s1 = _mm_shuffle_epi32(s1, 0xB1);                       /* DCHG */
        s0 = _mm_blend_epi16(tmp, s1, 0xF0);                    /* DCBA */
        s1 = _mm_alignr_epi8(s1, tmp, 8);                       /* HGFE */
        _mm_storeu_si128((__m128i*)&st[0], s0);
        _mm_storeu_si128((__m128i*)&st[4], s1);
    }
    #else
    #define FGW_SHANI 0
    #endif
    #if FGW_SHANI
    #include <cpuid.h>
    #endif
    static int fgw_sha256_shani = -1;          /* -1: not looked at yet; 1: SHA extensions */
    static void fgw_sha256_probe(void) {
        fgw_sha256_shani = 0;
    #if FGW_SHANI
        {
            unsigned int a, b, c, d;
            /* SSSE3 and SSE4.1: leaf 1, ECX bits 9 and 19; SHA: leaf 7, EBX bit 29 */
            if (__get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 9)) && (c & (1u << 19))
                    && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 29)))
                fgw_sha256_shani = 1;
        }
    #endif
    }
    static inline void fgw_sha256_blocks(uint32_t* st, const unsigned char* p, size_t nblocks) {
    #if FGW_SHANI
        if (fgw_sha256_shani < 0)
            fgw_sha256_probe();
        if (fgw_sha256_shani > 0) {
            for (; nblocks; nblocks--, p += 64) fgw_sha256_block_shani(st, p);
            return;
        }
    #endif
        for (; nblocks; nblocks--, p += 64) fgw_sha256_block(st, p);
    }
    /* For the tests: whether the SHA extensions run; and a switch to the plain rounds (0) and
       back (the value it returns). */
    static int fgw_sha256_uses_shani(void) {
        if (fgw_sha256_shani < 0)
            fgw_sha256_probe();
        return fgw_sha256_shani > 0;
    }
    static int fgw_sha256_set_shani(int on) {
        int was = fgw_sha256_uses_shani();
        fgw_sha256_shani = on;
        return was;
    }
    static void fgw_sha256(const unsigned char* data, size_t n, unsigned char* out) {
        uint32_t st[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                          0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
        unsigned char tail[128];
        uint64_t bits = (uint64_t)n * 8;
        size_t rest, end, i;
        fgw_sha256_blocks(st, data, n / 64);
        data += n & ~(size_t)63;
        n &= 63;
        rest = n;
        memcpy(tail, data, rest);
        tail[rest] = 0x80;
        end = rest < 56 ? 64 : 128;
        memset(tail + rest + 1, 0, end - rest - 1 - 8);
        for (i = 0; i < 8; i++)
            tail[end - 1 - i] = (unsigned char)(bits >> (8 * i));
        fgw_sha256_blocks(st, tail, end / 64);
        for (i = 0; i < 8; i++) {
            out[4 * i] = (unsigned char)(st[i] >> 24); out[4 * i + 1] = (unsigned char)(st[i] >> 16);
            out[4 * i + 2] = (unsigned char)(st[i] >> 8); out[4 * i + 3] = (unsigned char)st[i];
        }
    }
    """
    void fgw_sha256(const unsigned char* data, size_t n, unsigned char* out) noexcept nogil
    int fgw_sha256_uses_shani() noexcept nogil
    int fgw_sha256_set_shani(int on) noexcept nogil


cdef bytes sha256_of(const char* p, Py_ssize_t n):
    """The SHA-256 digest of p[:n] (32 bytes)."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 32)
    fgw_sha256(<const unsigned char*>p, n, <unsigned char*>PyBytes_AS_STRING(out))
    return out


cdef inline bint _is_ascii_space(char c) noexcept nogil:
    return c == b' ' or c == b'\t' or c == b'\n' or c == b'\r' or c == b'\x0b' or c == b'\x0c'


def sha256_digest(bytes data, bint portable=False):
    """sha256_of, for tests: hashlib.sha256(data).digest(). portable: with the plain C rounds even
    where the CPU has SHA extensions."""
    cdef int was
    if not portable:
        return sha256_of(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    was = fgw_sha256_set_shani(0)
    try:
        return sha256_of(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    finally:
        fgw_sha256_set_shani(was)


def sha256_uses_cpu_extensions():
    """Whether the request path's SHA-256 runs on the CPU's SHA extensions."""
    return bool(fgw_sha256_uses_shani())


cdef HeaderField* request_field_at(Exchange ex, bytes lower_name) noexcept:
    """The first request field of that (lowercase) name, or NULL."""
    cdef MessageHead* h = ex.h
    cdef const char* p = ex.p
    cdef HeaderField* f
    cdef int i
    cdef Py_ssize_t n = PyBytes_GET_SIZE(lower_name)
    if h == NULL:
        return NULL
    for i in range(h.nfields):
        f = &h.fields[i]
        if f.kind != HK_DROP and f.name_len == n and _ci_eq(p + f.name, n, PyBytes_AS_STRING(lower_name), n):
            return f
    return NULL


cdef object request_field(Exchange ex, bytes lower_name):
    """The first request field of that (lowercase) name, its value as bytes, or None."""
    cdef MessageHead* h = ex.h
    cdef const char* p = ex.p
    cdef HeaderField* f
    cdef int i
    cdef Py_ssize_t n = PyBytes_GET_SIZE(lower_name)
    if h == NULL:
        return None
    for i in range(h.nfields):
        f = &h.fields[i]
        if f.kind != HK_DROP and f.name_len == n and _ci_eq(p + f.name, n, PyBytes_AS_STRING(lower_name), n):
            return p[f.value:f.value + f.value_len]
    return None


cdef void drop_upstream_field(Exchange ex, bytes lower_name) except *:
    if ex.upstream_edits is None:
        ex.upstream_edits = []
    ex.upstream_edits.append((lower_name, None, True))


cdef void drop_request_fields(Exchange ex, bytes lower_name) noexcept:
    """Takes every field of that (lowercase) name out of the request, in place: the upstream head,
    a mirror's and a retry's are built without it, and later policies no longer see it (the cheap
    form of drop_upstream_field, for names the head builder copies as plain fields)."""
    cdef MessageHead* h = ex.h
    cdef const char* p = ex.p
    cdef HeaderField* f
    cdef int i
    cdef Py_ssize_t n = PyBytes_GET_SIZE(lower_name)
    for i in range(h.nfields):
        f = &h.fields[i]
        if f.kind == HK_OTHER and f.name_len == n and _ci_eq(p + f.name, n, PyBytes_AS_STRING(lower_name), n):
            f.kind = HK_DROP


cdef object bucket_key(bytes digest):
    """What buckets of digests are keyed by: the digest's first 8 bytes, as an int (no slice to
    make and hash per lookup)."""
    cdef uint64_t k
    memcpy(&k, PyBytes_AS_STRING(digest), 8)
    return k


cdef object digest_lookup(dict buckets, bytes digest):
    """The value stored under a SHA-256 `digest` in buckets keyed by its first 8 bytes, compared in
    constant time, every entry of the bucket compared whether or not one matched; None if none."""
    cdef list bucket = buckets.get(bucket_key(digest))
    cdef object found = None
    if bucket is None:
        return None
    for stored, value in bucket:
        if _secret_equal(<bytes>stored, digest):
            found = value
    return found


cdef inline bint digest_equal(const unsigned char* a, const unsigned char* b) noexcept nogil:
    """Whether two SHA-256 digests are equal, in the same time wherever they differ."""
    cdef unsigned char acc = 0
    cdef int i
    for i in range(32):
        acc |= a[i] ^ b[i]
    return acc == 0


cdef struct DigestSlot:
    unsigned char digest[32]
    PyObject* value                    # borrowed: SecretDigests.values owns it; NULL: an empty slot


cdef class SecretDigests:
    """Secrets kept as SHA-256 digests, each with what it stands for (a Consumer): an
    open-addressing table at most half full, so a probe ends at an empty slot within a few steps."""
    cdef DigestSlot* slots
    cdef uint64_t mask
    cdef list values                   # owns what the slots point to
    cdef readonly Py_ssize_t count

    def __init__(self, pairs=()):
        """pairs: (secret bytes, value)."""
        cdef list entries = [(_sha256(secret).digest(), value) for secret, value in pairs]
        cdef uint64_t size = 8
        cdef uint64_t i
        cdef bytes d
        while size < 2 * <uint64_t>len(entries):
            size *= 2
        self.slots = <DigestSlot*>PyMem_Calloc(size, sizeof(DigestSlot))
        if self.slots == NULL:
            raise MemoryError()
        self.mask = size - 1
        self.values = []
        for d, value in entries:
            self.values.append(value)
            i = _digest_home(PyBytes_AS_STRING(d)) & self.mask
            while self.slots[i].value != NULL:
                i = (i + 1) & self.mask
            memcpy(self.slots[i].digest, PyBytes_AS_STRING(d), 32)
            self.slots[i].value = <PyObject*>value
            self.count += 1

    def __dealloc__(self):
        PyMem_Free(self.slots)

    cdef object _lookup(self, const unsigned char* digest):
        """The value stored under `digest`, or None. Every digest on the probe is compared, the
        match or not, each in constant time."""
        cdef uint64_t i = _digest_home(<const char*>digest) & self.mask
        cdef PyObject* found = NULL
        while self.slots[i].value != NULL:
            if digest_equal(self.slots[i].digest, digest):
                found = self.slots[i].value
            i = (i + 1) & self.mask
        if found == NULL:
            return None
        return <object>found

    cdef object find(self, bytes secret):
        return self.find_at(PyBytes_AS_STRING(secret), PyBytes_GET_SIZE(secret))

    cdef object find_at(self, const char* p, Py_ssize_t n):
        """find(p[:n].strip()), without the copies."""
        cdef unsigned char digest[32]
        while n > 0 and _is_ascii_space(p[0]):
            p += 1
            n -= 1
        while n > 0 and _is_ascii_space(p[n - 1]):
            n -= 1
        fgw_sha256(<const unsigned char*>p, n, digest)
        return self._lookup(digest)

    def lookup(self, secret):
        return self.find(secret)


cdef inline uint64_t _digest_home(const char* digest) noexcept nogil:
    cdef uint64_t k
    memcpy(&k, digest, 8)
    return k


cdef class ApiKeyAuth(AuthMethod):
    cdef tuple headers                 # lowercase names
    cdef tuple params                  # query parameter names
    cdef SecretDigests keys
    cdef bint strip

    def __init__(self, str name, str key, headers, params, SecretDigests keys, bint strip, config=None):
        AuthMethod.__init__(self, name, "api_key", key, config, b"")
        self.headers = tuple(h.lower().encode() for h in headers)
        self.params = tuple(q.encode() for q in params)
        self.keys = keys
        self.strip = strip

    cdef int authenticate(self, Exchange ex) except -1:
        cdef bytes name, value = None
        cdef object c
        cdef HeaderField* f = NULL
        for name in self.headers:
            f = request_field_at(ex, name)
            if f != NULL:
                break
        if f != NULL:                   # hashed where it lies in the head, no copy
            c = self.keys.find_at(ex.p + f.value, f.value_len)
            if self.strip:
                if f.kind == HK_OTHER:
                    drop_request_fields(ex, name)
                else:
                    drop_upstream_field(ex, name)
        else:
            if self.params:
                value = self._from_query(ex)
            if value is None:
                return AUTH_ABSENT
            c = self.keys.find(value.strip())
        if c is None:
            return AUTH_DENIED
        ex.consumer = c
        ex.consumer_name = (<Consumer>c).name_bytes
        return AUTH_OK

    cdef object _from_query(self, Exchange ex):
        cdef MessageHead* h = ex.h
        cdef bytes query, pname, found = None
        cdef list kept, parts
        if h == NULL or h.path_len >= h.target_len:
            return None
        query = ex.up_query[1:] if ex.up_query is not None else ex.p[h.target + h.path_len + 1:h.target + h.target_len]
        parts = query.split(b"&")
        kept = []
        for part in parts:
            pname, eq, pvalue = (<bytes>part).partition(b"=")
            if found is None and eq and pname in self.params:
                found = _unquote_to_bytes(pvalue.replace(b"+", b" "))
                continue
            kept.append(part)
        if found is not None and self.strip:
            ex.up_query = (b"?" + b"&".join(kept)) if kept else b""
        return found

    def describe(self):
        where = [f"header {h.decode()}" for h in self.headers] + [f"query {q.decode()}" for q in self.params]
        return f"api key from {' or '.join(where)} ({self.keys.count} keys)"
