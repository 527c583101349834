# Stream listeners: `protocol: tcp` (Gateway API TCPRoute) and `protocol: tls-passthrough` (TLSRoute).
# A connection is a Tunnel (tunnel.pyx) from its accept: on a tcp listener its route's backend and
# target are picked at once (the same weighted backends and smooth weighted round robin as HTTP);
# on a tls-passthrough listener the ClientHello is read first (clienthello.pyx, bounded in bytes by
# HELLO_MAX_LEN and in time by limits.header_timeout), its SNI picks the route (exact, then the
# longest wildcard, then a route without hosts), and an unknown SNI is refused with a TLS
# unrecognized_name alert. The client's bytes wait (reading pauses past TUNNEL_HOLD_MAX) until the
# upstream connection is up, then go first, untouched.

cdef bytes _TLS_ALERT_UNRECOGNIZED_NAME = b"\x15\x03\x01\x00\x02\x02\x70"    # fatal, unrecognized_name (112)
cdef bytes _TLS_ALERT_DECODE_ERROR = b"\x15\x03\x01\x00\x02\x02\x32"         # fatal, decode_error (50)
cdef bytes _TLS_ALERT_INTERNAL_ERROR = b"\x15\x03\x01\x00\x02\x02\x50"       # fatal, internal_error (80)


cdef class StreamStats:
    """Counters of one stream route (or of a listener's refusals): a worker's, cumulative."""
    cdef readonly str listener
    cdef readonly str route
    cdef readonly long long connections      # routed to an upstream
    cdef readonly long long refused          # no route, a bad ClientHello, or it never came
    cdef readonly long long connect_failures
    cdef readonly long long bytes_received   # from clients
    cdef readonly long long bytes_sent       # to clients

    def __init__(self, str listener, str route):
        self.listener = listener
        self.route = route


cdef dict _STREAM_STATS = {}


cdef StreamStats _stats(str listener, Route route):
    key = (listener, route.name if route is not None else None)
    st = _STREAM_STATS.get(key)
    if st is None:
        st = _STREAM_STATS[key] = StreamStats(listener, key[1])
    return <StreamStats>st


def stream_stats():
    """This process's stream-listener counters, one StreamStats per (listener address, route)."""
    return list(_STREAM_STATS.values())


cdef class StreamListener:
    """A tcp or tls-passthrough address's routes, compiled once per config."""
    cdef readonly str mode
    cdef readonly bint passthrough
    cdef readonly Route default_route       # tcp: the route; passthrough: the one without hosts
    cdef dict exact                         # passthrough: lowercase SNI (bytes) -> Route
    cdef list wildcards                     # [(b".suffix", Route)], longest suffix first
    cdef readonly double hello_timeout
    cdef readonly Py_ssize_t max_hello

    def __init__(self, str mode, list routes, double hello_timeout, Py_ssize_t max_hello=HELLO_MAX_LEN):
        """routes: [(hosts or None, Route)] in config order; a host goes to the first route naming it."""
        cdef Route route
        self.mode = mode
        self.passthrough = mode == "tls-passthrough"
        self.hello_timeout = hello_timeout
        self.max_hello = max_hello
        self.exact = {}
        wild = {}
        for hosts, route in routes:
            if not hosts:
                if self.default_route is None:
                    self.default_route = route
                continue
            for host in hosts:
                if host.startswith("*."):
                    wild.setdefault(host[1:].encode(), route)
                else:
                    self.exact.setdefault(host.encode(), route)
        self.wildcards = sorted(wild.items(), key=lambda kv: -len(kv[0]))

    cpdef Route route_for(self, bytes sni):
        """The route of a ClientHello's server name (None: none given)."""
        cdef Route route
        if sni is not None:
            route = self.exact.get(sni)
            if route is not None:
                return route
            for suffix, route in self.wildcards:
                if sni.endswith(suffix) and len(sni) > len(suffix):
                    return route
        return self.default_route


def stream_connection(Worker worker, str listen_address):
    """The protocol of a stream listener's new connection: a tunnel's client side."""
    cdef Tunnel t = Tunnel.__new__(Tunnel)
    t.setup(worker, 0.0, False)
    t.listen_address = listen_address
    t.state = T_HELLO
    return t.down


cdef void stream_accepted(Tunnel t) except *:
    cdef Worker worker = t.worker
    cdef dict streams = worker.runtime.streams
    cdef StreamListener sl = streams.get(t.listen_address) if streams else None
    worker.connections_total += 1
    worker.tunnels.add(t)
    if sl is None or worker.draining:
        stream_refuse(t, 0, None)
        return
    t.listener = sl
    if sl.passthrough:
        t.deadline = monotonic() + sl.hello_timeout
    else:
        stream_connect(t, sl.default_route)


cdef void stream_hello(Tunnel t) except *:
    cdef StreamListener sl = t.listener
    cdef bytes data
    if len(t.held) > 1:
        t.held = [b"".join(t.held)]
    data = <bytes>t.held[0]
    status, value = parse_client_hello(<const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), sl.max_hello)
    if status == HELLO_MORE:
        return
    if status == HELLO_BAD:
        stream_refuse(t, RF_BAD_REQUEST, _TLS_ALERT_DECODE_ERROR)
        return
    t.sni = value
    route = sl.route_for(value)
    if route is None:
        stream_refuse(t, RF_NO_ROUTE, _TLS_ALERT_UNRECOGNIZED_NAME)
        return
    stream_connect(t, route)


cdef void stream_connect(Tunnel t, Route route) except *:
    cdef StreamStats st
    cdef Backend backend = route.pick_backend() if route is not None else None
    cdef UpstreamGroup group = backend.group if backend is not None else None
    cdef Target target = group.pick(None) if group is not None else None
    t.route = route
    if target is None:
        stream_refuse(t, RF_NO_HEALTHY_UPSTREAM if group is not None else RF_NO_ROUTE, _TLS_ALERT_INTERNAL_ERROR)
        return
    t.group = group
    t.target = target
    t.idle_timeout = route_tunnels(route).idle_timeout
    t.state = T_CONNECTING
    t.deadline = monotonic() + group.connect_timeout
    st = _stats(t.listen_address, route)
    st.connections += 1
    loop = t.worker.loop
    t.connect_task = loop.create_task(loop.create_connection(t._up_protocol, target.host, target.port))
    t.connect_task.add_done_callback(t._connect_done)


cdef void stream_connect_done(Tunnel t, task) except *:
    cdef StreamStats st
    t.connect_task = None
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None:
        return
    st = _stats(t.listen_address, t.route)
    st.connect_failures += 1
    stream_refuse(t, RF_UPSTREAM_CONNECT_FAILURE, _TLS_ALERT_INTERNAL_ERROR)


cdef void stream_upstream_made(Tunnel t) except *:
    cdef list held = t.held
    cdef Py_ssize_t n = t.held_bytes
    if t.state != T_CONNECTING:             # refused meanwhile (client gone, timeout)
        t.up.transport.close()
        return
    t.deadline = 0.0
    t.held = None
    t.held_bytes = 0
    t.held_paused = False
    t.open(False, False)
    if held:
        t.down.nbytes += n
        t.active = True
        if len(held) == 1:
            t.up.transport.write(held[0])
        else:
            t.up.transport.writelines(held)
    if t.down.eof:
        t.up.transport.write_eof()


cdef void stream_refuse(Tunnel t, int why, bytes tls_alert) except *:
    """The connection is not tunnelled: an alert where TLS expects one, then FIN."""
    cdef StreamStats st
    if t.state == T_DONE or t.state == T_CLOSING or t.state == T_OPEN:
        return
    t.state = T_CLOSING
    t.deadline = 0.0
    t.held = None
    st = _stats(t.listen_address, t.route)
    st.refused += 1
    if t.connect_task is not None:
        t.connect_task.cancel()
        t.connect_task = None
    if t.down.transport is not None and not t.down.closed:
        if tls_alert is not None and t.listener is not None and t.listener.passthrough:
            t.down.transport.write(tls_alert)
        t.down.transport.close()
    else:
        t._finish()


cdef void stream_finished(Tunnel t) except *:
    cdef StreamStats st
    if t.route is not None and (t.down.nbytes or t.up.nbytes):
        st = _stats(t.listen_address, t.route)
        st.bytes_received += t.down.nbytes
        st.bytes_sent += t.up.nbytes
