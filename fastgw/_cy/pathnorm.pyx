# Path normalization before routing (RFC 3986 section 6.2.2; issue 7 section 3). One C function over
# the raw path bytes, no allocation, no GIL: the caller gives a destination of at least `n` bytes
# (normalization never lengthens a path), which may be the source itself (in place).
#
# The steps, in this order (docs/http.md, "Path normalization"):
#   1. one pass over the bytes:
#      - `%XX` where XX encodes an unreserved character (ALPHA / DIGIT / "-" / "." / "_" / "~") is
#        decoded (6.2.2.2); every other `%XX` stays encoded with its hex digits uppercased (6.2.2.1);
#      - `%2F`, `%5C` and `%00` (any case) are never decoded: kept encoded (and uppercased), so they are
#        never segment separators, or, with PN_REJECT_ENCODED_SLASH, the path is refused;
#      - a `%` not followed by two hex digits refuses the path;
#      - with PN_MERGE_SLASHES, a `/` directly after a `/` is dropped (runs of `/` become one);
#      - every other byte is copied as is (the request parser has already validated the target).
#   2. remove_dot_segments (RFC 3986 section 5.2.4) over the result of step 1, so a decoded `%2E` is a
#      dot like any other (`/a/%2e%2E/b` -> `/b`).
#
# Slashes are merged BEFORE dot segments are removed (Envoy merges after): with merge_slashes the
# gateway declares that an empty segment means nothing, so it must not count as a segment that `..`
# removes either. Envoy's order gives `/a//../b` -> `/a/b` (the `..` eats the empty segment), ours gives
# `/b`, the same as for `/a/../b`, and the same as nginx (whose parser merges slashes and resolves
# dot segments in one left-to-right pass). The invariant the tests pin: with merge_slashes, doubling
# any `/` of the input never changes the result.

cdef enum:
    PN_MERGE_SLASHES = 1
    PN_REJECT_ENCODED_SLASH = 2

cdef uint8_t _PN_UNRESERVED[256]      # RFC 3986 unreserved: ALPHA / DIGIT / "-" / "." / "_" / "~"
cdef const char* _PN_HEXUPPER = b"0123456789ABCDEF"


cdef void _init_pathnorm_tables():
    cdef int c
    for c in range(256):
        _PN_UNRESERVED[c] = 1 if (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122
                                  or c == 45 or c == 46 or c == 95 or c == 126) else 0


_init_pathnorm_tables()


cdef Py_ssize_t _pn_remove_dot_segments(char* b, Py_ssize_t m) noexcept nogil:
    # RFC 3986 5.2.4 over b[0:m], in place (the output never runs ahead of the input); returns the new
    # length. `i` is the start of the input buffer, b[0:o] the output buffer.
    cdef Py_ssize_t i = 0, o = 0
    # A and D: a leading "../" or "./", or an input that is only "." or ".." (relative paths only;
    # origin-form starts with '/' and skips this).
    while i < m:
        if b[i] == b'.' and i + 1 < m and b[i + 1] == b'.' and i + 2 < m and b[i + 2] == b'/':
            i += 3
        elif b[i] == b'.' and i + 1 < m and b[i + 1] == b'/':
            i += 2
        elif b[i] == b'.' and (i + 1 == m or (b[i + 1] == b'.' and i + 2 == m)):
            i = m
        else:
            break
    # E for a first segment without a leading '/'
    while i < m and b[i] != b'/':
        b[o] = b[i]
        o += 1
        i += 1
    # from here on the input starts with '/'
    while i < m:
        if i + 1 < m and b[i + 1] == b'.':
            if i + 2 == m:                                  # B: "/." at the end -> "/"
                b[o] = b'/'
                o += 1
                break
            if b[i + 2] == b'/':                            # B: "/./" -> "/"
                i += 2
                continue
            if b[i + 2] == b'.' and (i + 3 == m or b[i + 3] == b'/'):
                # C: "/../" -> "/", or "/.." at the end -> "/"; the last output segment and its
                # preceding '/' go (at the root there is nothing to remove: `..` stays at root)
                while o > 0:
                    o -= 1
                    if b[o] == b'/':
                        break
                if i + 3 == m:
                    b[o] = b'/'
                    o += 1
                    break
                i += 3
                continue
        # E: move "/segment" to the output
        b[o] = b'/'
        o += 1
        i += 1
        while i < m and b[i] != b'/':
            b[o] = b[i]
            o += 1
            i += 1
    return o


cdef Py_ssize_t normalize_path(const char* src, Py_ssize_t n, char* dst, int flags,
                               int* changed) noexcept nogil:
    """Normalizes the path `src[0:n]` (origin-form, no query) into `dst` (room for `n` bytes; `dst` may
    be `src`). Returns the new length, or -1 when the request must be refused with 400: a `%` not
    followed by two hex digits, or, with PN_REJECT_ENCODED_SLASH, `%2F`, `%5C` or `%00` in any case.
    `*changed` (when `changed` is not NULL) is set to 1 when the result differs from the input, else 0;
    it is meaningless when -1 is returned."""
    cdef Py_ssize_t i = 0, o = 0, m
    cdef uint8_t c, h1, h2, v
    cdef bint diff = False
    cdef bint merge = (flags & PN_MERGE_SLASHES) != 0
    cdef bint reject_enc = (flags & PN_REJECT_ENCODED_SLASH) != 0
    if changed != NULL:
        changed[0] = 0
    while i < n:
        c = <uint8_t>src[i]
        if c == b'%':
            if i + 2 >= n:
                return -1
            h1 = _HEXVAL[<uint8_t>src[i + 1]]
            h2 = _HEXVAL[<uint8_t>src[i + 2]]
            if h1 == 0xFF or h2 == 0xFF:
                return -1
            v = (h1 << 4) | h2
            if _PN_UNRESERVED[v]:
                dst[o] = <char>v
                o += 1
                diff = True
            else:
                if reject_enc and (v == 0x2F or v == 0x5C or v == 0):
                    return -1
                if src[i + 1] != _PN_HEXUPPER[h1] or src[i + 2] != _PN_HEXUPPER[h2]:
                    diff = True
                dst[o] = b'%'
                dst[o + 1] = _PN_HEXUPPER[h1]
                dst[o + 2] = _PN_HEXUPPER[h2]
                o += 3
            i += 3
        elif c == b'/' and merge and o > 0 and dst[o - 1] == b'/':
            # the byte before is a literal '/' (an encoded one is kept as "%2F", which ends in 'F')
            diff = True
            i += 1
        else:
            dst[o] = <char>c
            o += 1
            i += 1
    m = _pn_remove_dot_segments(dst, o)
    if changed != NULL:
        # step 1 changed bytes, or step 2 removed some (it only ever shortens)
        changed[0] = 1 if (diff or m != o) else 0
    return m
