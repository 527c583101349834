# Runtime tables built once per config (Runtime, Route, UpstreamGroup) and the per-target
# keep-alive pools. Targets and groups carry over a reload by stable keys so pools and balancer
# state survive it.

cdef class UpstreamConn
cdef class ClientConn
cdef class H2Settings
cdef class Exchange
cdef class PolicyChain
cdef class RouteMetrics
cdef class UpstreamStats
cdef class RuntimeMetrics
cdef class TargetPicker
cdef class OutlierState
cdef class ActiveHealthState
cdef class CircuitBreakers
cdef class RetryPolicy
cdef class RetryBudget
cdef class SlowStart
cdef class TunnelSettings
cdef class StreamListener


cdef class Target:
    """One upstream address and its idle keep-alive connections (LIFO: the warmest first)."""
    cdef readonly str host
    cdef readonly int port
    cdef readonly str address
    cdef readonly bytes address_bytes
    # idle[:n_idle] are the pooled connections; the slots after them stay allocated (None), so a take
    # and a put on a warm pool allocate nothing (a list popped to empty frees its storage)
    cdef list idle
    cdef Py_ssize_t n_idle
    cdef public int max_idle
    cdef public double idle_timeout
    cdef public int max_requests
    cdef readonly bint retired
    cdef public int active            # exchanges dispatched to it and not yet finished (least request)
    cdef readonly int open_connections  # connecting, busy or idle (circuit breakers' max_connections)
    # TLS to the target (issue 13): None for plain TCP; the pool key says what the connections share
    cdef readonly object ssl_context
    cdef readonly str server_hostname
    cdef readonly object pool_key
    cdef readonly object peer_check     # callable(ssl_object) -> bool, or None: the names to accept
    # HTTP/2 to the target (h2upstream.pyx): H2_OFF (HTTP/1.1, the pool above), H2_CLEAR (h2c) or H2_TLS;
    # its connections (each multiplexing up to h2_max_streams exchanges) instead of `idle`
    cdef public int h2_mode
    cdef public int h2_max_streams
    cdef list h2conns

    def __init__(self, str host, int port, int max_idle, double idle_timeout, int max_requests,
                 ssl_context=None, str server_hostname=None, tls_key=None, peer_check=None):
        self.ssl_context = ssl_context
        self.peer_check = peer_check
        self.server_hostname = server_hostname
        self.host = host
        self.port = port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.address_bytes = self.address.encode()
        self.pool_key = (self.address, tls_key)
        self.idle = []
        self.n_idle = 0
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.max_requests = max_requests
        self.h2conns = []
        self.h2_max_streams = 100

    @property
    def h2_connections(self):
        """(connections, streams in use) of this target's HTTP/2 connections on this worker."""
        return len(self.h2conns), sum(h2_conn_active(c) for c in self.h2conns)

    cdef UpstreamConn take_idle(self):
        cdef UpstreamConn conn
        while self.n_idle:
            self.n_idle -= 1
            conn = <UpstreamConn>self.idle[self.n_idle]
            self.idle[self.n_idle] = None
            conn.pooled = False
            if conn.usable_from_pool():
                return conn
            conn.close()
        return None

    cdef int give_back(self, UpstreamConn conn, double now) except -1:
        if self.retired or self.n_idle >= self.max_idle or conn.nrequests >= self.max_requests:
            conn.close()
            return 0
        conn.idle_since_pool(now + self.idle_timeout)
        if self.n_idle < len(self.idle):
            self.idle[self.n_idle] = conn
        else:
            self.idle.append(conn)
        self.n_idle += 1
        conn.pooled = True

    cdef int forget(self, UpstreamConn conn) except -1:
        """Out of the pool, keeping the others' order; a connection not pooled costs a flag test."""
        cdef Py_ssize_t i, j
        if not conn.pooled:
            return 0
        conn.pooled = False
        for i in range(self.n_idle):
            if self.idle[i] is conn:
                for j in range(i, self.n_idle - 1):
                    self.idle[j] = self.idle[j + 1]
                self.n_idle -= 1
                self.idle[self.n_idle] = None
                return 0

    @property
    def idle_connections(self):
        return self.n_idle

    def retire(self):
        """A reload dropped this target: its idle connections close now, and busy ones close when
        their exchange ends instead of coming back to a pool nothing will take from."""
        cdef UpstreamConn conn
        cdef Py_ssize_t n = self.n_idle
        self.retired = True
        idle, self.idle = self.idle, []
        self.n_idle = 0
        for conn in idle[:n]:
            conn.pooled = False
            conn.close()
        for conn in list(self.h2conns):
            h2_conn_retire(conn)


cdef class UpstreamGroup:
    cdef readonly str name
    cdef readonly list targets
    cdef SmoothWeightedRR balancer
    cdef readonly double connect_timeout
    cdef readonly double header_timeout
    cdef readonly double body_timeout
    cdef readonly tuple key           # what must be equal for balancer state to carry over a reload
    cdef public UpstreamStats stats   # None: metrics are off
    cdef public TargetPicker picker   # None: smooth weighted round robin (balancer), no stickiness
    cdef public object picker_config  # the balancer config the picker was built from (for adopt)
    cdef public OutlierState outlier  # passive health; None: off
    cdef public bint failover         # an idempotent request whose connection fails goes to another target
    cdef public ActiveHealthState active_health   # active checks' results (activehealth.pyx); None: off
    cdef public CircuitBreakers breakers          # breakers.pyx; None: no limits
    cdef public RetryBudget budget                # retry.pyx; None: no budget
    cdef public SlowStart slow_start              # slowstart.pyx; None: off

    def __init__(self, str name, list targets, list weights, double connect_timeout,
                 double header_timeout, double body_timeout):
        self.name = name
        self.targets = targets
        self.balancer = SmoothWeightedRR(weights)
        self.connect_timeout = connect_timeout
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.key = tuple((t.address, w) for t, w in zip(targets, weights))

    cdef Target pick(self, Exchange ex):
        """ex: the exchange the target is for (a hash key, a sticky cookie), or None (a mirror)."""
        cdef Py_ssize_t i
        if not self.targets:
            return None
        if self.outlier is not None and self.outlier.n_ejected:
            self._return_due()
        if self.slow_start is not None and self.slow_start.n_ramping:
            self.slow_start.apply(self)
        if self.picker is None:
            i = self.balancer.pick()
        elif ex is None:
            i = self.picker.pick(None)
        else:
            i = self.picker.choose(ex)
        if i < 0:
            return None
        if ex is not None:
            ex.target_index = i
        return <Target>self.targets[i]

    cdef Py_ssize_t pick_for_key(self, bytes client_ip) except -2:
        """A stream connection's target index (-1: none): as pick(), with the client's IP as the key
        of a hash balancer (a stream has no request to take a header, cookie or path from)."""
        if not self.targets:
            return -1
        if self.outlier is not None and self.outlier.n_ejected:
            self._return_due()
        if self.picker is None:
            return self.balancer.pick()
        return self.picker.pick_for_client(client_ip)

    cdef void attempt_connected(self, Py_ssize_t i) except *:
        """A stream's connect to target i succeeded: its run of connect failures ends."""
        if self.outlier is not None:
            self.outlier.connected(i)

    cdef Target pick_other(self, Exchange ex, Target avoid):
        """A target other than `avoid` for a retry, or None when the balancer offers no other."""
        cdef Target t
        cdef Py_ssize_t k
        for k in range(len(self.targets) + 1):
            t = self.pick(ex)
            if t is None or t is not avoid:
                return t
        return None

    cdef void _return_due(self) except *:
        cdef double now = monotonic()
        cdef list back
        if now < self.outlier.next_return:
            return
        back = []
        self.outlier.due(now, back)
        for i in back:
            self._set_available(i, True)
            _health_event(self, i, False)

    cdef void _set_available(self, Py_ssize_t i, bint available) except *:
        # in service only when neither passive nor active health takes the target out
        if available and ((self.active_health is not None and self.active_health.is_down(i))
                          or (self.outlier is not None and self.outlier.ejected_until[i] != 0.0)):
            return
        if available and self.slow_start is not None and not self.balancer._up[i]:
            self.slow_start.begin(i)          # back in: its weight ramps up
        self.balancer.set_available(i, available)
        if self.picker is not None:
            self.picker.set_available(i, available)

    cdef void attempt_failed(self, Py_ssize_t i) except *:
        """An attempt on target i failed before any response byte (refused, timed out, reset)."""
        if self.outlier is not None and self.outlier.failed(i, monotonic()):
            self._set_available(i, False)
            _health_event(self, i, True)

    cdef void attempt_answered(self, Py_ssize_t i, int status) except *:
        if self.outlier is not None and self.outlier.responded(i, status, monotonic()):
            self._set_available(i, False)
            _health_event(self, i, True)

    def active_result(self, Py_ssize_t i, bint ok, str why=None):
        """An active probe of target i ended (fastgw/healthcheck.py): -1 when it goes out of the
        balancer now, +1 when it is back in (if passive health does not hold it out), else 0."""
        if self.active_health is None:
            return 0
        change = self.active_health.result(i, ok, why)
        if change:
            self._set_available(i, change > 0)
        return change

    def adopt_health(self, UpstreamGroup old):
        """Keeps each target's passive health across a reload (by address), when the settings did
        not change; the ejected stay out of the new balancer until their time is up. Active health
        carries over by address whatever the settings."""
        cdef Py_ssize_t i
        where = {(<Target>t).address: j for j, t in enumerate(old.targets)}
        if self.active_health is not None and old.active_health is not None:
            self.active_health.adopt(old.active_health, [where.get((<Target>t).address, -1) for t in self.targets])
            for i in range(len(self.targets)):
                if self.active_health.is_down(i):
                    self._set_available(i, False)
        if self.outlier is None or old.outlier is None:
            return
        self.outlier.adopt(old.outlier, [where.get((<Target>t).address, -1) for t in self.targets])
        for i in range(len(self.targets)):
            if self.outlier.ejected_until[i] != 0.0:
                self._set_available(i, False)

    def health(self):
        """Each target's passive and active health (for /upstreams), or None when both are off."""
        if self.outlier is None and self.active_health is None:
            return None
        now = monotonic()
        out = [self.outlier.describe(i, now) if self.outlier is not None else {"health": "healthy"}
               for i in range(len(self.targets))]
        if self.active_health is not None:
            for i in range(len(self.targets)):
                out[i].update(self.active_health.describe(i))
                if self.active_health.is_down(i):
                    out[i]["health"] = "unhealthy"
        return out

    def adopt_balancer(self, UpstreamGroup old):
        """Keeps the old rotation when the targets, weights and balancer did not change."""
        if old.key == self.key:
            self.balancer = old.balancer
            if old.picker is not None and self.picker is not None and old.picker.kind == self.picker.kind \
                    and old.picker_config == self.picker_config:
                self.picker = old.picker

    def pick_for_test(self):
        t = self.pick(None)
        return None if t is None else t.address


cdef class Backend:
    """One weighted backend of a route. No group: answers 500 (an unresolvable backend)."""
    cdef readonly UpstreamGroup group
    cdef readonly Filters filters
    cdef readonly int weight

    def __init__(self, UpstreamGroup group, Filters filters, int weight):
        self.group = group
        self.filters = filters
        self.weight = weight


cdef class Route:
    cdef readonly str name
    cdef readonly int64_t max_body    # -1: unlimited
    cdef readonly list backends       # those with a positive weight
    cdef SmoothWeightedRR balancer
    cdef readonly PolicyChain chain
    cdef public RouteMetrics metrics  # None: metrics are off
    cdef public TunnelSettings tunnels  # upgrades allowed and the tunnels' idle timeout (None: the defaults)
    cdef public RetryPolicy retry     # retry policy and timeouts (retry.pyx); None: the upstream's fail-over

    def __init__(self, str name, list backends, max_body, PolicyChain chain=None):
        self.name = name
        self.chain = chain if chain is not None else EMPTY_CHAIN
        self.backends = [b for b in backends if (<Backend>b).weight > 0]
        self.balancer = SmoothWeightedRR([(<Backend>b).weight for b in self.backends]) if self.backends else None
        self.max_body = -1 if max_body is None else max_body

    cdef Backend pick_backend(self):
        cdef Py_ssize_t i
        if not self.backends:
            return None
        if len(self.backends) == 1:
            return <Backend>self.backends[0]
        i = self.balancer.pick()
        return None if i < 0 else <Backend>self.backends[i]


cdef class RouteMatch:
    """What the router returns: the route, and the path prefix this match used (for rewrites that
    replace the matched prefix)."""
    cdef readonly Route route
    cdef readonly bytes prefix
    cdef readonly tuple capture_names   # of the match's path template, in order (bytes)
    cdef readonly str pattern           # the path as configured, for traces' http.route (or None)

    def __init__(self, Route route, prefix, capture_names=(), str pattern=None):
        self.pattern = pattern
        self.route = route
        self.prefix = prefix.encode() if isinstance(prefix, str) else prefix
        self.capture_names = tuple(n.encode() if isinstance(n, str) else n for n in capture_names)


cdef class Runtime:
    """Everything a request needs, compiled once per config and never mutated: a reload builds a
    new one and swaps it in with one assignment."""
    cdef readonly dict listener_routers   # listening address -> Router whose payloads are route Routers
    cdef readonly frozenset host_independent   # addresses one hostname-less listener serves alone
    cdef HeadLimits head_limits
    cdef readonly double header_timeout
    cdef readonly double body_timeout
    cdef readonly double keepalive_timeout
    cdef readonly int max_requests_per_connection
    cdef readonly int64_t max_body
    cdef readonly dict groups
    cdef readonly double drain_timeout
    cdef readonly PolicyChain global_chain    # for exchanges no route took: top-level policies
    cdef readonly dict policies               # key -> Policy, for carrying state over a reload
    cdef readonly int path_mode               # PATH_OFF / PATH_NORMALIZE / PATH_REJECT
    cdef readonly int path_flags              # PN_* flags of normalize_path
    cdef public RuntimeMetrics metrics        # None: metrics are off (set by fastgw/counters.py)
    cdef readonly TraceSettings tracing       # None: tracing off, and the request path skips it
    cdef public dict streams                  # tcp and tls-passthrough addresses -> StreamListener (tcpproxy.pyx)
    cdef public H2Settings http2              # limits.http2 (h2server.pyx); None: the defaults

    def __init__(self, dict listener_routers, dict groups, *, frozenset host_independent,
                 int max_request_line, int max_head_bytes,
                 int max_headers, bint drop_underscores, double header_timeout,
                 double keepalive_timeout, double body_timeout=60.0, int max_requests_per_connection, max_body,
                 double drain_timeout, PolicyChain global_chain=None, dict policies=None,
                 str path_normalization="normalize", bint merge_slashes=False, bint reject_encoded_slashes=False,
                 TraceSettings tracing=None):
        self.tracing = tracing
        self.path_mode = {"off": PATH_OFF, "normalize": PATH_NORMALIZE, "reject": PATH_REJECT}[path_normalization]
        self.path_flags = ((PN_MERGE_SLASHES if merge_slashes else 0)
                           | (PN_REJECT_ENCODED_SLASH if reject_encoded_slashes else 0))
        self.global_chain = global_chain if global_chain is not None else EMPTY_CHAIN
        self.policies = policies if policies is not None else {}
        self.listener_routers = listener_routers
        self.host_independent = host_independent
        self.groups = groups
        self.head_limits.max_request_line = max_request_line
        self.head_limits.max_head_bytes = max_head_bytes
        self.head_limits.max_headers = max_headers
        self.head_limits.drop_underscores = drop_underscores
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_requests_per_connection = max_requests_per_connection
        self.max_body = -1 if max_body is None else max_body
        self.drain_timeout = drain_timeout


    cdef Router routes_for(self, str address, const char* host, Py_ssize_t host_len):
        """The route table of the listener that serves this Host on this listening address."""
        cdef Router listeners = self.listener_routers.get(address)
        if listeners is None:
            return None
        return listeners.match(host, host_len, b"/", 1)

    cdef bint single_listener(self, str address):
        """True when one listener without a hostname serves the address: its route table does not
        depend on the Host, so a connection can keep it."""
        return address in self.host_independent

    def route_table(self, str address, bytes host):
        return self.routes_for(address, host, len(host))
