# The server name (SNI) of a TLS ClientHello (RFC 8446 4.1.2, RFC 6066 3), read without terminating
# TLS, for tls-passthrough listeners. Strict and bounded: the handshake message is reassembled from
# as many handshake records as it spans (a fragmented ClientHello), each record and length is checked
# against what holds it before it is used, at most `max_len` bytes are ever gathered, and every loop
# advances by a checked positive step, so no input crashes, loops or grows it. Anything the RFCs do
# not allow (another record type first, an empty record, lengths that disagree, a repeated SNI, a
# name that is not a host name) is refused, never repaired.

from libc.stdint cimport uint8_t
from libc.stdlib cimport malloc, free

cdef enum:
    HELLO_MORE = 0
    HELLO_OK = 1
    HELLO_BAD = 2
    HELLO_MAX_LEN = 65536          # as Envoy's tls_inspector: ClientHellos with big key shares fit
    TLS_RECORD_MAX = 16384


cdef inline int _u16(const uint8_t* b) noexcept nogil:
    return (b[0] << 8) | b[1]


cdef inline bint _host_char(uint8_t c) noexcept nogil:
    return (48 <= c <= 57) or (97 <= c <= 122) or (65 <= c <= 90) or c == b'-' or c == b'_'


cdef int _check_host_name(const uint8_t* b, Py_ssize_t n) noexcept nogil:
    """A DNS host name (RFC 6066: no trailing dot): labels of 1-63 allowed bytes, 255 in all."""
    cdef Py_ssize_t i, label = 0
    if n < 1 or n > 255:
        return -1
    for i in range(n):
        if b[i] == b'.':
            if label == 0:
                return -1
            label = 0
        elif _host_char(b[i]):
            label += 1
            if label > 63:
                return -1
        else:
            return -1
    return 0 if label > 0 else -1


cdef int _parse_body(const uint8_t* b, Py_ssize_t m, Py_ssize_t* sni, Py_ssize_t* sni_len,
                     const char** why) noexcept nogil:
    """The ClientHello body b[0:m]. Finds the host_name, if any (sni -1 when there is none)."""
    cdef Py_ssize_t q, end, elen, list_end, nlen
    cdef int n, etype
    cdef bint seen = False
    sni[0] = -1
    sni_len[0] = 0
    if m < 35 or b[0] != 3 or b[1] < 1 or b[1] > 3:
        why[0] = b"bad ClientHello version"
        return HELLO_BAD
    q = 34                                       # legacy_version, random
    n = b[q]
    q += 1
    if n > 32 or q + n > m:
        why[0] = b"bad session id"
        return HELLO_BAD
    q += n
    if q + 2 > m:
        why[0] = b"truncated ClientHello"
        return HELLO_BAD
    n = _u16(b + q)
    q += 2
    if n < 2 or n & 1 or q + n > m:
        why[0] = b"bad cipher suites"
        return HELLO_BAD
    q += n
    if q + 1 > m:
        why[0] = b"truncated ClientHello"
        return HELLO_BAD
    n = b[q]
    q += 1
    if n < 1 or q + n > m:
        why[0] = b"bad compression methods"
        return HELLO_BAD
    q += n
    if q == m:
        return HELLO_OK                          # no extensions: no SNI
    if q + 2 > m:
        why[0] = b"truncated extensions"
        return HELLO_BAD
    n = _u16(b + q)
    q += 2
    if q + n != m:
        why[0] = b"extensions length disagrees with the ClientHello"
        return HELLO_BAD
    end = m
    while q < end:
        if q + 4 > end:
            why[0] = b"truncated extension"
            return HELLO_BAD
        etype = _u16(b + q)
        elen = _u16(b + q + 2)
        q += 4
        if q + elen > end:
            why[0] = b"extension past the end"
            return HELLO_BAD
        if etype == 0:
            if seen:
                why[0] = b"repeated server_name extension"
                return HELLO_BAD
            seen = True
            if elen < 2 or _u16(b + q) != elen - 2:
                why[0] = b"bad server_name list"
                return HELLO_BAD
            list_end = q + elen
            q += 2
            if q == list_end:
                why[0] = b"empty server_name list"
                return HELLO_BAD
            while q < list_end:
                if q + 3 > list_end:
                    why[0] = b"truncated server name"
                    return HELLO_BAD
                if b[q] != 0:                    # host_name is the only name type there is
                    why[0] = b"unknown server name type"
                    return HELLO_BAD
                nlen = _u16(b + q + 1)
                q += 3
                if q + nlen > list_end:
                    why[0] = b"server name past the end"
                    return HELLO_BAD
                if sni[0] >= 0:
                    why[0] = b"more than one host name"
                    return HELLO_BAD
                if _check_host_name(b + q, nlen) < 0:
                    why[0] = b"server name is not a host name"
                    return HELLO_BAD
                sni[0] = q
                sni_len[0] = nlen
                q += nlen
        else:
            q += elen
    return HELLO_OK


cdef tuple parse_client_hello(const uint8_t* p, Py_ssize_t n, Py_ssize_t max_len):
    """(HELLO_MORE, None), (HELLO_BAD, reason) or (HELLO_OK, the lowercase SNI or None), from the first
    bytes a client sent."""
    cdef Py_ssize_t pos = 0, rlen, take, have = 0, hlen = -1, sni, sni_len, i
    cdef uint8_t* hs
    cdef const char* why = NULL
    cdef int r
    cdef bytes name
    if max_len > HELLO_MAX_LEN:
        max_len = HELLO_MAX_LEN
    hs = <uint8_t*>malloc(max_len + 4)
    if hs == NULL:
        raise MemoryError()
    try:
        while True:
            if pos + 5 > n:
                if pos < n and p[pos] != 22:
                    return (HELLO_BAD, "not a TLS handshake record")
                return (HELLO_MORE, None)
            if p[pos] != 22:
                return (HELLO_BAD, "not a TLS handshake record")
            if p[pos + 1] != 3 or p[pos + 2] < 1 or p[pos + 2] > 3:
                return (HELLO_BAD, "bad record version")
            rlen = _u16(p + pos + 3)
            if rlen == 0 or rlen > TLS_RECORD_MAX:
                return (HELLO_BAD, "bad record length")
            pos += 5
            take = rlen if pos + rlen <= n else n - pos
            if hlen >= 0 and take > hlen + 4 - have:
                take = hlen + 4 - have           # the rest of the record is not the ClientHello's
            elif have + take > max_len + 4:
                take = max_len + 4 - have
            for i in range(take):
                hs[have + i] = p[pos + i]
            have += take
            if hlen < 0 and have >= 4:
                if hs[0] != 1:
                    return (HELLO_BAD, "first handshake message is not a ClientHello")
                hlen = (hs[1] << 16) | (hs[2] << 8) | hs[3]
                if hlen > max_len:
                    return (HELLO_BAD, "ClientHello too large")
                if have > hlen + 4:
                    have = hlen + 4
            if hlen >= 0 and have >= hlen + 4:
                break
            if take < rlen:
                return (HELLO_MORE, None)        # the record is still coming
            pos += rlen
        r = _parse_body(hs + 4, hlen, &sni, &sni_len, &why)
        if r != HELLO_OK:
            return (HELLO_BAD, (<bytes>why).decode())
        if sni < 0:
            return (HELLO_OK, None)
        name = (<char*>hs)[4 + sni:4 + sni + sni_len]
        return (HELLO_OK, name.lower())
    finally:
        free(hs)


def client_hello_sni(bytes data, Py_ssize_t max_len=HELLO_MAX_LEN):
    """("more", None), ("bad", reason) or ("ok", sni or None): what a tls-passthrough listener
    makes of the first bytes of a connection."""
    status, value = parse_client_hello(<const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), max_len)
    return ("more", "ok", "bad")[status], value.decode() if isinstance(value, bytes) else value
