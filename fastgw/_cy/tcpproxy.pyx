# Stream listeners: `protocol: tcp` (Gateway API TCPRoute), `protocol: tls-passthrough` (TLSRoute,
# Passthrough) and `protocol: tls` (TLSRoute, Terminate). A connection is a Tunnel (tunnel.pyx) from
# its accept: on a tcp listener its route's backend and target are picked at once (the same weighted
# backends and balancers as HTTP, hash balancers keyed by the client's IP); on a tls-passthrough or
# tls listener the ClientHello is read first (clienthello.pyx, bounded in bytes by HELLO_MAX_LEN and
# in time by limits.header_timeout), its SNI picks the route (exact, then the longest wildcard, then
# a route without hosts), and an unknown SNI is refused with a TLS unrecognized_name alert. A route
# of a passthrough listener gets the bytes untouched; one of a tls listener gets them decrypted
# (tlsterm.pyx: the handshake, bounded by the listener's handshake_timeout, starts from the bytes
# already read, so both kinds can share an address). The client's bytes wait (reading pauses past
# TUNNEL_HOLD_MAX) until the upstream connection is up, then go first. A failed connect counts
# against the target's passive health as on HTTP. Each connection writes one access log line when
# it ends (accesslog.pyx, AccessLogPolicy.on_stream).

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
    """A tcp, tls-passthrough or tls address's routes, compiled once per config. Several listeners
    may share a tls address (passthrough for some names, terminated for others): each route entry
    says whether its listener terminates."""
    cdef readonly str mode                  # tcp, tls-passthrough, tls (or tls when both share it)
    cdef readonly bint hello                # the ClientHello is read first (tls-passthrough, tls)
    cdef readonly bint passthrough          # kept for readers: same as hello
    cdef readonly str name                  # the first listener's name on the address
    cdef readonly tuple default_entry       # (Route, terminate, listener name) of the route without hosts
    cdef dict exact                         # lowercase SNI (bytes) -> entry
    cdef list wildcards                     # [(b".suffix", entry)], longest suffix first
    cdef readonly double hello_timeout
    cdef readonly Py_ssize_t max_hello

    def __init__(self, str mode, list routes, double hello_timeout, Py_ssize_t max_hello=HELLO_MAX_LEN,
                 str name=None):
        """routes: [(hosts or None, Route[, terminate, listener name])] in config order; a host goes
        to the first route naming it."""
        self.mode = mode
        self.hello = mode != "tcp"
        self.passthrough = self.hello
        self.name = name
        self.hello_timeout = hello_timeout
        self.max_hello = max_hello
        self.exact = {}
        wild = {}
        for item in routes:
            hosts, route = item[0], item[1]
            entry = (route, bool(item[2]) if len(item) > 2 else False, item[3] if len(item) > 3 else name)
            if not hosts:
                if self.default_entry is None:
                    self.default_entry = entry
                continue
            for host in hosts:
                if host.startswith("*."):
                    wild.setdefault(host[1:].encode(), entry)
                else:
                    self.exact.setdefault(host.encode(), entry)
        self.wildcards = sorted(wild.items(), key=lambda kv: -len(kv[0]))

    @property
    def default_route(self):
        return self.default_entry[0] if self.default_entry is not None else None

    cpdef tuple entry_for(self, bytes sni):
        """(Route, terminate, listener name) of a ClientHello's server name (None: none given), or None."""
        cdef tuple entry
        if sni is not None:
            entry = self.exact.get(sni)
            if entry is not None:
                return entry
            for suffix, entry in self.wildcards:
                if sni.endswith(suffix) and len(sni) > len(suffix):
                    return entry
        return self.default_entry

    def route_for(self, bytes sni):
        """The route of a ClientHello's server name (None: none given)."""
        entry = self.entry_for(sni)
        return entry[0] if entry is not None else None


def stream_connection(Worker worker, str listen_address, tls_endpoint=None):
    """The protocol of a stream listener's new connection: a tunnel's client side. tls_endpoint:
    the address's fastgw.tls.TlsEndpoint when some of its listeners terminate TLS."""
    cdef Tunnel t = Tunnel.__new__(Tunnel)
    t.setup(worker, 0.0, False)
    t.listen_address = listen_address
    t.tls_endpoint = tls_endpoint
    t.state = T_HELLO
    return t.down


cdef void stream_accepted(Tunnel t) except *:
    cdef Worker worker = t.worker
    cdef dict streams = worker.runtime.streams
    cdef StreamListener sl = streams.get(t.listen_address) if streams else None
    t.t_accept = monotonic()
    peer = t.down.transport.get_extra_info("peername")
    if peer:
        t.client_addr = (<str>peer[0]).encode()
        t.client_port = peer[1] if len(peer) > 1 else 0
    else:
        t.client_addr = b"unknown"
    worker.connections_total += 1
    worker.tunnels.add(t)
    if sl is None or worker.draining:
        stream_refuse(t, 0, None)
        return
    t.listener = sl
    t.listener_name = sl.name
    if sl.hello:
        t.deadline = monotonic() + sl.hello_timeout
    else:
        stream_connect(t, sl.default_route)


cdef void stream_hello(Tunnel t) except *:
    cdef StreamListener sl = t.listener
    cdef bytes data
    cdef tuple entry
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
    entry = sl.entry_for(value)
    if entry is None:
        stream_refuse(t, RF_NO_ROUTE, _TLS_ALERT_UNRECOGNIZED_NAME)
        return
    t.route = <Route>entry[0]
    t.listener_name = <str>entry[2]
    if not entry[1]:
        stream_connect(t, t.route)
        return
    if t.tls_endpoint is None:              # a tls listener added by a reload: bound at the next restart
        stream_refuse(t, RF_NO_ROUTE, _TLS_ALERT_INTERNAL_ERROR)
        return
    # terminate: the bytes read so far are the handshake's first; the route connects once it is done
    t.terminate = True
    t.state = T_HANDSHAKE
    t.deadline = monotonic() + t.tls_endpoint.handshake_timeout
    t.held = None
    t.held_bytes = 0
    if t.held_paused:
        t.held_paused = False
        _resume(t.down.transport)
    t.down.tls = tls_start(t.tls_endpoint.ctx)
    tls_received(t.down, data)


cdef void stream_handshake_done(Tunnel t) except *:
    cdef object name = getattr(t.down.tls.sslobj, "fastgw_sni", None)
    if name:
        t.sni = (<str>name).lower().rstrip(".").encode("ascii", "replace")
    stream_connect(t, t.route)


cdef void stream_handshake_failed(Tunnel t) except *:
    stream_refuse(t, RF_BAD_REQUEST, None)


cdef void stream_connect(Tunnel t, Route route) except *:
    cdef StreamStats st
    cdef Backend backend = route.pick_backend() if route is not None else None
    cdef UpstreamGroup group = backend.group if backend is not None else None
    cdef Py_ssize_t i = group.pick_for_key(t.client_addr) if group is not None else -1
    cdef Target target = <Target>group.targets[i] if i >= 0 else None
    t.route = route
    if target is None:
        stream_refuse(t, RF_NO_HEALTHY_UPSTREAM if group is not None else RF_NO_ROUTE, _TLS_ALERT_INTERNAL_ERROR)
        return
    t.group = group
    t.target = target
    t.target_index = i
    target.active += 1                      # least request: an open stream counts as a request
    t.idle_timeout = route_tunnels(route).idle_timeout
    t.state = T_CONNECTING
    t.deadline = monotonic() + group.connect_timeout
    st = _stats(t.listen_address, route)
    st.connections += 1
    loop = t.worker.loop
    if target.ssl_context is not None and t.listener is not None and not (t.listener.hello and not t.terminate):
        # the upstream's own TLS (BackendTLSPolicy): on tcp and terminated routes, never under passthrough
        t.connect_task = loop.create_task(loop.create_connection(
            t._up_protocol, target.host, target.port, ssl=target.ssl_context,
            server_hostname=target.server_hostname, ssl_handshake_timeout=group.connect_timeout))
    else:
        t.connect_task = loop.create_task(loop.create_connection(t._up_protocol, target.host, target.port))
    t.connect_task.add_done_callback(t._connect_done)


cdef void stream_connect_failed(Tunnel t, int why) except *:
    cdef StreamStats st = _stats(t.listen_address, t.route)
    st.connect_failures += 1
    if t.group is not None:
        t.group.attempt_failed(t.target_index)      # passive health, as an HTTP connect failure
    stream_refuse(t, why, _TLS_ALERT_INTERNAL_ERROR)


cdef void stream_connect_done(Tunnel t, task) except *:
    t.connect_task = None
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None:
        return
    if t.state == T_CONNECTING:
        stream_connect_failed(t, RF_UPSTREAM_CONNECT_FAILURE)


cdef void stream_upstream_made(Tunnel t) except *:
    cdef list held = t.held
    cdef Py_ssize_t n = t.held_bytes
    if t.state != T_CONNECTING:             # refused meanwhile (client gone, timeout)
        t.up.transport.close()
        return
    if t.target.peer_check is not None and not t.target.peer_check(t.up.transport.get_extra_info("ssl_object")):
        t.up.transport.close()
        stream_connect_failed(t, RF_UPSTREAM_CONNECT_FAILURE)
        return
    t.group.attempt_connected(t.target_index)
    t.t_connected = monotonic()
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
    if t.down.eof and not t.up.send_eof():
        t.ended(TE_CLIENT_CLOSED)
        t.close_both()


cdef void stream_refuse(Tunnel t, int why, bytes tls_alert) except *:
    """The connection is not tunnelled: an alert where TLS expects one, then FIN."""
    cdef StreamStats st
    if t.state == T_DONE or t.state == T_CLOSING or t.state == T_OPEN:
        return
    if why == RF_UPSTREAM_TIMEOUT and t.state == T_CONNECTING and t.group is not None:
        st = _stats(t.listen_address, t.route)
        st.connect_failures += 1
        t.group.attempt_failed(t.target_index)
    t.state = T_CLOSING
    t.deadline = 0.0
    t.held = None
    t.flags |= why
    t.ended(TE_REFUSED)
    st = _stats(t.listen_address, t.route)
    st.refused += 1
    if t.connect_task is not None:
        t.connect_task.cancel()
        t.connect_task = None
    if t.down.transport is not None and not t.down.closed:
        if tls_alert is not None and t.listener is not None and t.listener.hello and t.down.tls is None:
            t.down.transport.write(tls_alert)
        t.down.transport.close()
    else:
        t._finish()


cdef void stream_finished(Tunnel t) except *:
    cdef StreamStats st
    cdef Route route = t.route
    cdef PolicyChain chain
    if t.target is not None:
        t.target.active -= 1
    if route is not None and (t.down.nbytes or t.up.nbytes):
        st = _stats(t.listen_address, route)
        st.bytes_received += t.down.nbytes
        st.bytes_sent += t.up.nbytes
    chain = route.chain if route is not None else t.worker.runtime.global_chain
    if chain.access_log is not None and t.worker.access_log is not None:
        (<AccessLogPolicy>chain.access_log).on_stream(t)
