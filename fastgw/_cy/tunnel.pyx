# Tunnels: a byte pipe between two transports, once an HTTP/1.1 Upgrade the route allows was answered
# 101 (WebSocket and the like), or from the accept on a tcp or tls-passthrough listener
# (tcpproxy.pyx). Each side's transport gets a TunnelEnd as its protocol (transport.set_protocol):
# what one side reads is written to the other; a side whose write buffer is over its high-water mark
# pauses reading on the other (backpressure both ways); a FIN is passed on as a FIN (half-close), a
# reset as a reset.
#
# The idle clock is the tunnel's own (a route's `tunnel.idle_timeout`), never the request timeouts
# (Envoy #20062: route timeouts that kill WebSockets). A tunnel keeps the Runtime it began on: a
# reload changes nothing for it. When a drain's time is up a WebSocket tunnel gets a close frame
# 1001 (going away) towards each side that is between two frames (frame boundaries are followed
# with a few header bytes' work per frame), the peers' close answers are awaited for a second, then
# FIN; a tunnel that is mid-frame, or not WebSocket, gets a FIN.
#
# A tunnel that began as an upgrade is its Exchange's last part: the exchange's log phase runs when
# the tunnel closes, with the bytes that went through it.

from libc.stdint cimport uint8_t

cdef class TlsSide

cdef enum:
    T_HELLO = 0          # tls-passthrough / tls: waiting for the ClientHello that names the route
    T_CONNECTING         # the upstream connection is being made; the client's bytes are held
    T_OPEN
    T_CLOSING            # going away: close frames sent, the peers' answers awaited
    T_DONE
    T_HANDSHAKE          # tls (terminate): the client's TLS handshake is under way

    # how a stream connection ended (its access log line's `termination`)
    TE_NONE = 0
    TE_DONE              # both directions finished with a FIN (or a TLS close_notify)
    TE_CLIENT_CLOSED     # the client closed (or half-closed towards a side that cannot) first
    TE_UPSTREAM_CLOSED
    TE_CLIENT_RESET
    TE_UPSTREAM_RESET
    TE_IDLE_TIMEOUT
    TE_DRAIN             # the drain's time was up
    TE_REFUSED           # never tunnelled: the flags say why

    TUNNEL_HOLD_MAX = 262144       # client bytes held before the upstream is there: reading pauses past it
    WS_CLOSE_GRACE = 1             # seconds a going-away tunnel waits for the peers' close frames


cdef struct WsTrack:
    # where the frames one side sends begin and end (RFC 6455 5.2), not their content
    long long remaining            # payload bytes left of the current frame
    uint8_t hdr[14]
    int hdr_len
    int opcode                     # of the last frame whose header was complete
    bint lost                      # not a frame header where one had to be: stop following


cdef void ws_track(WsTrack* t, const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t pos = 0, take
    cdef int need, len7, i
    cdef long long plen
    while pos < n and not t.lost:
        if t.remaining > 0:
            take = n - pos
            if take > t.remaining:
                take = <Py_ssize_t>t.remaining
            t.remaining -= take
            pos += take
            continue
        t.hdr[t.hdr_len] = p[pos]
        t.hdr_len += 1
        pos += 1
        if t.hdr_len < 2:
            continue
        len7 = t.hdr[1] & 0x7F
        need = 2 + (2 if len7 == 126 else 8 if len7 == 127 else 0) + (4 if t.hdr[1] & 0x80 else 0)
        if t.hdr_len < need:
            continue
        if len7 < 126:
            plen = len7
        elif len7 == 126:
            plen = (<long long>t.hdr[2] << 8) | t.hdr[3]
        else:
            if t.hdr[2] & 0x80:
                t.lost = True
                return
            plen = 0
            for i in range(2, 10):
                plen = (plen << 8) | t.hdr[i]
        t.opcode = t.hdr[0] & 0x0F
        t.remaining = plen
        t.hdr_len = 0


cdef inline bint ws_between_frames(WsTrack* t) noexcept nogil:
    return not t.lost and t.remaining == 0 and t.hdr_len == 0


# close frame 1001 "going away": unmasked towards the client, masked (RFC 6455 5.3) towards the upstream
cdef bytes _WS_GOING_AWAY_PAYLOAD = b"\x03\xe9going away"
cdef bytes _WS_CLOSE_TO_CLIENT = b"\x88" + bytes([len(_WS_GOING_AWAY_PAYLOAD)]) + _WS_GOING_AWAY_PAYLOAD


cdef bytes _ws_close_to_upstream():
    cdef bytes key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(_WS_GOING_AWAY_PAYLOAD))
    return b"\x88" + bytes([0x80 | len(_WS_GOING_AWAY_PAYLOAD)]) + key + masked


cdef tuple TERMINATION_NAMES = ("", "done", "client_closed", "upstream_closed", "client_reset", "upstream_reset",
                                "idle_timeout", "drain", "refused")


cdef class TunnelSettings:
    """A route's tunnel settings: the Upgrade protocols a client may switch to (None: any), and the
    idle timeout of its tunnels (0: none)."""
    cdef readonly frozenset upgrades
    cdef readonly double idle_timeout

    def __init__(self, upgrades, double idle_timeout):
        self.upgrades = None if upgrades is None else frozenset(u.lower() for u in upgrades)
        self.idle_timeout = idle_timeout

    cdef bint allows(self, bytes value):
        """Every protocol an Upgrade value lists (`websocket`, `foo/2, bar`) is allowed; names are
        compared without their version."""
        cdef str item
        if self.upgrades is None:
            return True
        for item in value.decode("latin-1").lower().split(","):
            item = item.strip(" \t").partition("/")[0]
            if not item or item not in self.upgrades:
                return False
        return True


cdef TunnelSettings DEFAULT_TUNNELS = TunnelSettings(("websocket",), 3600.0)


cdef inline TunnelSettings route_tunnels(Route route):
    return route.tunnels if route is not None and route.tunnels is not None else DEFAULT_TUNNELS


cdef bytes upgrade_requested(Exchange ex):
    """The Upgrade value to forward when the client asks to switch protocols and the route allows
    it, else None: the request is served as HTTP/1.1 without its Upgrade (RFC 9110 7.8 lets a
    server ignore it). Only a bodiless HTTP/1.1 request switches: after a body the switch point is
    the body's end, which is not worth the ambiguity."""
    cdef MessageHead* h = ex.h
    cdef bytes value
    if h.upgrade < 0 or ex.http10 or ex.req_framing != FR_NONE:
        return None
    if not _connection_lists(h, ex.p, b"upgrade", 7):
        return None                     # an Upgrade that Connection does not name is not an offer
    value = ex.p[h.upgrade:h.upgrade + h.upgrade_len]
    if not route_tunnels(ex.route).allows(value):
        return None
    return value


cdef int put_upgrade_request_fields(Exchange ex, WBuf* out) except -1:
    wb_put(out, b"Connection: upgrade\r\nUpgrade: ", 30)
    wb_put(out, PyBytes_AS_STRING(ex.upgrade), PyBytes_GET_SIZE(ex.upgrade))
    wb_put(out, b"\r\n", 2)
    return 0


cdef bint _lists_protocol(bytes offered, bytes chosen):
    cdef set asked = {x.strip(b" \t").lower() for x in offered.split(b",")}
    return chosen.strip(b" \t").lower() in asked


cdef void switch_protocols(Exchange ex, UpstreamConn up, bytes data, Py_ssize_t r, Py_ssize_t n) except *:
    """The upstream answered 101 to an upgrade the route allows: the 101 goes to the client, and
    both connections become a tunnel. The client's bytes held since its head (nothing passes
    before the 101) are the tunnel's first bytes upstream."""
    cdef MessageHead* h = &up.head
    cdef const char* p = PyBytes_AS_STRING(data)
    cdef ClientConn down = ex.down
    cdef WBuf* out = &down.out
    cdef object chosen = _field_value(h, p, b"upgrade")
    cdef Tunnel t
    cdef bytes held
    if chosen is None or not _lists_protocol(ex.upgrade, chosen):
        up.ex = None
        up.close()
        ex.down.keep_alive = False          # the client may already be speaking the protocol it asked for
        count_failure(ex, FK_PROTOCOL_ERROR)
        ex.upstream_failed(up, 502, b"upstream switched to a protocol the client did not ask for", False,
                           RF_UPSTREAM_PROTOCOL_ERROR)
        return
    ex.t_first_byte = monotonic()
    ex.status = 101
    if ex.n_att:
        ex.att[ex.n_att - 1].result = 101
    if ex.dl_list is not None:
        retry_head(ex)                 # route timeouts bound a request, not the tunnel it became
    ex.outcome = OC_PROXIED
    ex.resp_started = True
    ex.resp_complete = True
    out.len = 0
    down._put_status_and_fields(p, h, ex.filters.response_headers if ex.filters is not None else None, ex)
    wb_put(out, b"Upgrade: ", 9)
    wb_put(out, PyBytes_AS_STRING(<bytes>chosen), PyBytes_GET_SIZE(<bytes>chosen))
    wb_put(out, b"\r\nConnection: upgrade\r\nX-Request-Id: ", 37)
    wb_put(out, PyBytes_AS_STRING(ex.request_id), PyBytes_GET_SIZE(ex.request_id))
    wb_put(out, b"\r\n\r\n", 4)
    down.flush()
    t = Tunnel.__new__(Tunnel)
    t.setup(down.worker, route_tunnels(ex.route).idle_timeout, (<bytes>chosen).strip(b" \t").lower() == b"websocket")
    t.ex = ex
    t.down.transport = down.transport
    t.up.transport = up.transport
    held = down.buf
    # the two connections leave the request path: neither pools, deadlines nor drains them now
    down.buf = b""
    down.ex = None
    down.deadline = 0.0
    down.state = CL_CLOSED
    down.worker.clients.discard(down)
    ex.up = None
    up.ex = None
    up.state = UP_CLOSED
    up.deadline = 0.0
    up.connected = False
    up.worker.upstreams.discard(up)
    up._uncount()          # a tunnel is not a pool connection: out of the breakers' count
    up.target.forget(up)
    up.transport = None
    t.down.transport.set_protocol(t.down)
    t.up.transport.set_protocol(t.up)
    t.open(down.write_paused, bool(down.pause_mask & PR_UPSTREAM))
    if r < n:
        t.up.feed(data[r:] if r else data)      # the upstream's first bytes in the new protocol
    if PyBytes_GET_SIZE(held):
        t.down.feed(held)
    down.transport = None


cdef class TunnelEnd:
    """The protocol of one side's transport while the tunnel owns it."""
    cdef Tunnel tunnel
    cdef TunnelEnd peer
    cdef object transport
    cdef bint is_client
    cdef bint eof                # this side sent its FIN
    cdef bint closed             # its connection is gone
    cdef bint write_paused
    cdef bint close_sent         # going away: a close frame went to this side
    cdef long long nbytes        # bytes this side sent (plaintext, when the gateway terminates its TLS)
    cdef WsTrack track           # frames this side sends
    cdef TlsSide tls             # a terminating stream listener's client side (tlsterm.pyx), else None

    cdef inline void send(self, bytes data) except *:
        """Bytes to this side (encrypted first when the gateway terminates its TLS)."""
        if self.tls is None:
            self.transport.write(data)
        else:
            tls_send(self, data)

    cdef bint send_eof(self) except -1:
        """A FIN towards this side; False when its transport cannot half-close."""
        if self.tls is not None:
            tls_send_eof(self)
            return True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            return True
        return False

    def connection_made(self, transport):
        self.transport = transport
        if self.is_client:
            self.tunnel.accepted(self)
        else:
            self.tunnel.upstream_made()

    cdef void feed(self, bytes data) except *:
        cdef Tunnel t = self.tunnel
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        if t.state == T_OPEN:
            t.active = True
            self.nbytes += n
            if t.websocket:
                ws_track(&self.track, <const uint8_t*>PyBytes_AS_STRING(data), n)
            self.peer.send(data)
        elif t.state == T_CLOSING:
            # only a close frame is awaited from a side that was sent one; the rest is dropped
            if self.close_sent:
                ws_track(&self.track, <const uint8_t*>PyBytes_AS_STRING(data), n)
                if self.track.opcode == 8 or self.track.lost:
                    self.transport.close()
        elif self.is_client:
            t.early_data(data)

    def data_received(self, bytes data):
        if self.tls is None:
            self.feed(data)
        else:
            tls_received(self, data)

    def eof_received(self):
        cdef Tunnel t = self.tunnel
        if self.eof:
            return True
        self.eof = True
        if t.state == T_OPEN:
            if self.peer.eof:
                t.ended(TE_DONE)
                t.close_both()          # both directions are done
                return True
            if self.peer.send_eof():
                return True
            t.ended(TE_CLIENT_CLOSED if self.is_client else TE_UPSTREAM_CLOSED)
            t.close_both()
            return True
        if t.state == T_HELLO or t.state == T_CONNECTING or t.state == T_HANDSHAKE:
            return True                 # the FIN follows the held bytes once the upstream is there
        return False

    def connection_lost(self, exc):
        self.closed = True
        self.tunnel.side_lost(self, exc)

    def pause_writing(self):
        self.write_paused = True
        _pause(self.peer.transport)

    def resume_writing(self):
        self.write_paused = False
        if self.tunnel.state == T_OPEN:
            _resume(self.peer.transport)


cdef inline void _pause(object transport) except *:
    if transport is not None and not transport.is_closing():
        transport.pause_reading()


cdef inline void _resume(object transport) except *:
    if transport is not None and not transport.is_closing():
        transport.resume_reading()


cdef class Tunnel:
    cdef Worker worker
    cdef readonly TunnelEnd down          # the client's side
    cdef readonly TunnelEnd up
    cdef Exchange ex                      # an upgrade's exchange (None on stream listeners)
    cdef readonly int state
    cdef readonly bint websocket
    cdef bint active                      # bytes moved since the last tick
    cdef double last_active
    cdef double idle_timeout
    cdef double deadline                  # T_HELLO, T_CONNECTING and T_CLOSING
    # stream listeners (tcpproxy.pyx)
    cdef str listen_address
    cdef StreamListener listener
    cdef Route route
    cdef UpstreamGroup group
    cdef Target target
    cdef object connect_task
    cdef list held
    cdef Py_ssize_t held_bytes
    cdef bint held_paused
    cdef readonly bytes sni
    cdef object tls_endpoint              # the address's fastgw.tls.TlsEndpoint (tls listeners)
    cdef bint terminate                   # the route's listener terminates TLS (tls, not passthrough)
    cdef str listener_name
    cdef bytes client_addr
    cdef int client_port
    cdef Py_ssize_t target_index
    cdef double t_accept
    cdef double t_connected
    cdef readonly int flags               # RF_* bits: why it was refused or how it failed
    cdef readonly int termination         # TE_*

    cdef inline void ended(self, int how) noexcept:
        if self.termination == TE_NONE:
            self.termination = how

    cdef void setup(self, Worker worker, double idle_timeout, bint websocket) except *:
        self.worker = worker
        self.idle_timeout = idle_timeout
        self.websocket = websocket
        self.down = TunnelEnd.__new__(TunnelEnd)
        self.up = TunnelEnd.__new__(TunnelEnd)
        self.down.tunnel = self
        self.up.tunnel = self
        self.down.peer = self.up
        self.up.peer = self.down
        self.down.is_client = True

    cdef void open(self, bint client_write_paused, bint upstream_write_paused) except *:
        """Both transports are ours: bytes move from now on, each side reading unless the other is
        behind."""
        self.state = T_OPEN
        self.last_active = monotonic()
        self.worker.tunnels.add(self)
        self.down.write_paused = client_write_paused
        self.up.write_paused = upstream_write_paused
        if client_write_paused:
            _pause(self.up.transport)
        else:
            _resume(self.up.transport)
        if upstream_write_paused:
            _pause(self.down.transport)
        else:
            _resume(self.down.transport)

    cdef void tick(self, double now) except *:
        if self.state == T_OPEN:
            if self.active:
                self.active = False
                self.last_active = now
            elif self.idle_timeout > 0 and now - self.last_active >= self.idle_timeout:
                self.ended(TE_IDLE_TIMEOUT)
                self.close_both()
        elif self.state != T_DONE and self.deadline > 0 and now >= self.deadline:
            if self.state == T_CLOSING:
                self.ended(TE_DRAIN)
                self.close_both()
            else:
                self.refuse(RF_UPSTREAM_TIMEOUT if self.state == T_CONNECTING else RF_REQUEST_TIMEOUT)

    cpdef going_away(self):
        """The drain's time is up: close frames 1001 where a frame boundary allows, then FIN."""
        if self.state != T_OPEN or not self.websocket:
            if self.state != T_CLOSING:
                self.ended(TE_DRAIN)
                self.close_both()
            return
        self.state = T_CLOSING
        self.deadline = monotonic() + WS_CLOSE_GRACE
        if ws_between_frames(&self.up.track) and not self.down.eof:
            self.down.transport.write(_WS_CLOSE_TO_CLIENT)
            self.down.close_sent = True
            self.down.track.opcode = 0
            _resume(self.down.transport)
        else:
            self.down.transport.close()
        if ws_between_frames(&self.down.track) and not self.up.eof:
            self.up.transport.write(_ws_close_to_upstream())
            self.up.close_sent = True
            self.up.track.opcode = 0
            _resume(self.up.transport)
        else:
            self.up.transport.close()

    cdef void close_both(self) except *:
        if self.down.transport is not None and not self.down.closed:
            if self.down.tls is not None:
                tls_send_eof(self.down)          # a TLS client is told with a close_notify
            self.down.transport.close()
        if self.up.transport is not None and not self.up.closed:
            self.up.transport.close()
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        if (self.down.closed or self.down.transport is None) and (self.up.closed or self.up.transport is None):
            self._finish()

    cdef void side_lost(self, TunnelEnd end, exc) except *:
        cdef TunnelEnd other = end.peer
        if self.state == T_DONE:
            return
        if self.state == T_CLOSING and not other.closed and other.transport is not None:
            return                           # its close answer, or the grace period, ends it
        if exc is not None and self.state == T_OPEN:
            self.ended(TE_CLIENT_RESET if end.is_client else TE_UPSTREAM_RESET)
            self.flags |= RF_DOWNSTREAM_DISCONNECT if end.is_client else RF_UPSTREAM_RESET
        elif end.eof and other.eof:
            self.ended(TE_DONE)
        else:
            self.ended(TE_CLIENT_CLOSED if end.is_client else TE_UPSTREAM_CLOSED)
        if other.transport is not None and not other.closed:
            if exc is not None and self.state == T_OPEN:
                other.transport.abort()      # a reset is passed on as a reset, not as a clean end
            else:
                other.transport.close()
            if self.state == T_OPEN:
                return                       # finished when the other side is gone too
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        self._finish()

    cdef void _finish(self) except *:
        cdef Exchange ex = self.ex
        if self.state == T_DONE:
            return
        self.state = T_DONE
        self.worker.tunnels.discard(self)
        self.held = None
        if ex is not None:
            self.ex = None
            ex.bytes_in += self.down.nbytes
            ex.down.bytes_written += self.up.nbytes
            ex.t_done = monotonic()
            ex.finish()
        else:
            stream_finished(self)

    # ---- stream listeners: before the upstream is connected (tcpproxy.pyx) ---------------------

    cdef void accepted(self, TunnelEnd end) except *:
        stream_accepted(self)

    cdef void early_data(self, bytes data) except *:
        if self.held is None:
            self.held = []
        self.held.append(data)
        self.held_bytes += PyBytes_GET_SIZE(data)
        if self.held_bytes > TUNNEL_HOLD_MAX and not self.held_paused:
            self.held_paused = True
            _pause(self.down.transport)
        if self.state == T_HELLO:
            stream_hello(self)

    cdef void upstream_made(self) except *:
        stream_upstream_made(self)

    cdef void refuse(self, int why) except *:
        stream_refuse(self, why, None)

    def _up_protocol(self):
        return self.up

    @property
    def termination_name(self):
        return TERMINATION_NAMES[self.termination]

    def _connect_done(self, task):
        stream_connect_done(self, task)

    # ---- what the Admin API and tests read -------------------------------------------------------

    @property
    def kind(self):
        if self.ex is not None or self.listen_address is None:
            return "websocket" if self.websocket else "upgrade"
        if self.listener is None:               # refused before a stream listener was known
            return "tcp"
        if self.terminate:
            return "tls"
        return "tls-passthrough" if self.listener.hello else "tcp"

    @property
    def is_open(self):
        return self.state == T_OPEN

    @property
    def bytes_from_client(self):
        return self.down.nbytes

    @property
    def bytes_to_client(self):
        return self.up.nbytes
