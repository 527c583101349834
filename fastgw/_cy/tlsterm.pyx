# TLS termination on a stream listener (`protocol: tls`, Gateway API TLSRoute in Terminate mode): the
# client side of a Tunnel speaks TLS through an ssl.SSLObject over two memory BIOs, so the bytes the
# ClientHello parser already read (clienthello.pyx picked the route by their SNI) are the
# handshake's first bytes, and a passthrough listener on the same address sees the same bytes
# untouched. The handshake uses the address's TlsEndpoint (fastgw/tls.py): its front context's SNI
# callback picks the certificate, so a reload swaps certificates here as on HTTPS listeners.
#
# What the client sends is decrypted and fed to the tunnel as plaintext (TunnelEnd.feed); what goes
# to the client is encrypted into one transport write per chunk. A close_notify from the client is
# its FIN; the tunnel's FIN towards the client is a close_notify then a TCP FIN (TLS half-close).

import ssl as _ssl_mod

cdef object _MemoryBIO = _ssl_mod.MemoryBIO
cdef object _SSLWantReadError = _ssl_mod.SSLWantReadError
cdef object _SSLWantWriteError = _ssl_mod.SSLWantWriteError
cdef object _SSLZeroReturnError = _ssl_mod.SSLZeroReturnError
cdef object _SSLErrorBase = _ssl_mod.SSLError

cdef enum:
    TLS_READ_CHUNK = 65536        # plaintext per SSLObject.read (a record carries at most 16 KiB)


cdef class TlsSide:
    """The TLS session of a tunnel's client side."""
    cdef object sslobj
    cdef object incoming
    cdef object outgoing
    cdef bint handshaken
    cdef bint closed_notify        # the client's close_notify came
    cdef bint sent_notify

    cdef void flush(self, object transport) except *:
        cdef bytes out
        if self.outgoing.pending:
            out = self.outgoing.read()
            if transport is not None and not transport.is_closing():
                transport.write(out)


cdef TlsSide tls_start(object ctx):
    cdef TlsSide s = TlsSide.__new__(TlsSide)
    s.incoming = _MemoryBIO()
    s.outgoing = _MemoryBIO()
    s.sslobj = ctx.wrap_bio(s.incoming, s.outgoing, server_side=True)
    return s


cdef void tls_received(TunnelEnd end, bytes data) except *:
    """Ciphertext from the client: the handshake goes on, or plaintext goes to the tunnel."""
    cdef TlsSide s = end.tls
    cdef Tunnel t = end.tunnel
    cdef bytes chunk
    if data:
        s.incoming.write(data)
    if not s.handshaken:
        try:
            s.sslobj.do_handshake()
        except _SSLWantReadError:
            s.flush(end.transport)
            return
        except (_SSLErrorBase, ValueError):
            s.flush(end.transport)           # the alert OpenSSL made, if any
            stream_handshake_failed(t)
            return
        s.handshaken = True
        s.flush(end.transport)
        stream_handshake_done(t)
        if t.state == T_DONE or t.state == T_CLOSING:
            return
    while not s.closed_notify:
        try:
            chunk = s.sslobj.read(TLS_READ_CHUNK)
        except _SSLWantReadError:
            break
        except _SSLZeroReturnError:
            s.closed_notify = True
            s.flush(end.transport)
            end.eof_received()
            break
        except (_SSLErrorBase, ValueError):
            s.flush(end.transport)
            end.transport.abort()
            return
        if not chunk:
            break
        end.feed(chunk)
        if end.closed or t.state == T_DONE:
            return
        if not s.incoming.pending and not s.sslobj.pending():
            break                            # nothing left to decrypt: no SSLWantReadError raised
    s.flush(end.transport)


cdef void tls_send(TunnelEnd end, bytes data) except *:
    cdef TlsSide s = end.tls
    if s.sent_notify or end.transport is None or end.transport.is_closing():
        return
    s.sslobj.write(data)
    end.transport.write(s.outgoing.read())


cdef void tls_send_eof(TunnelEnd end) except *:
    """The tunnel's FIN towards a TLS client: close_notify, then the TCP FIN."""
    cdef TlsSide s = end.tls
    if s.sent_notify or not s.handshaken or end.transport is None or end.transport.is_closing():
        return
    s.sent_notify = True
    try:
        s.sslobj.unwrap()
    except (_SSLWantReadError, _SSLWantWriteError):
        pass                                 # the client's own close_notify is not awaited
    except (_SSLErrorBase, ValueError):
        pass
    s.flush(end.transport)
    if end.transport.can_write_eof():
        end.transport.write_eof()
