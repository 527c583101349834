# Shared constants of the request path.

# Header kinds: what the proxy must do with a field, decided once per field while parsing.
cdef enum HeaderKind:
    HK_OTHER = 0
    HK_HOST
    HK_CONTENT_LENGTH
    HK_TRANSFER_ENCODING
    HK_CONNECTION
    HK_KEEP_ALIVE
    HK_PROXY_CONNECTION
    HK_TE
    HK_TRAILER
    HK_UPGRADE
    HK_EXPECT
    HK_X_FORWARDED_FOR
    HK_X_FORWARDED_PROTO
    HK_X_FORWARDED_HOST
    HK_X_REQUEST_ID
    HK_DROP          # dropped by policy: underscore names in drop mode
    HK_TRACE_CONTEXT # traceparent/tracestate with tracing on: the gateway sends its own (tracecontext.pyx)

# Body framing of one message.
cdef enum Framing:
    FR_NONE = 0      # no body
    FR_LENGTH        # Content-Length
    FR_CHUNKED       # Transfer-Encoding: chunked
    FR_CLOSE         # until the peer closes (responses only)

cdef enum:
    PARSE_INCOMPLETE = -1
    PARSE_ERROR = -2
    MAX_CONNECTION_TOKENS = 16
    MAX_HOST_LEN = 255
    MAX_CHUNK_EXT = 4096           # one chunk-size line's extension
    MAX_CHUNK_EXT_TOTAL = 16384    # all chunk extensions of one message
    MAX_SPANS = 64
    MAX_REQUEST_ID_LEN = 200

# Response flags of an exchange (bits), in the spirit of Envoy's %RESPONSE_FLAGS%; the short codes
# the log phase reports are in exchange.pyx (FLAG_CODES).
cdef enum ResponseFlag:
    RF_NO_ROUTE = 1 << 0                     # NR: no route matched
    RF_UPSTREAM_CONNECT_FAILURE = 1 << 1     # UF
    RF_UPSTREAM_TIMEOUT = 1 << 2             # UT: no response head in time
    RF_UPSTREAM_RESET = 1 << 3               # UR: the upstream closed or reset before or during the response
    RF_DOWNSTREAM_DISCONNECT = 1 << 4        # DC: the client went away before the response ended
    RF_RATE_LIMITED = 1 << 5                 # RL
    RF_UNAUTHORIZED = 1 << 6                 # UAEX: refused by an authentication or access policy
    RF_NO_HEALTHY_UPSTREAM = 1 << 7          # UH: no target to send to
    RF_BAD_REQUEST = 1 << 8                  # DPE: the request was malformed (parser or body framing)
    RF_REQUEST_TIMEOUT = 1 << 9              # RT: the client was too slow (408)
    RF_BODY_TOO_LARGE = 1 << 10              # BL: 413
    RF_UPSTREAM_PROTOCOL_ERROR = 1 << 11     # UPE: the upstream's response was malformed
    RF_POLICY_ANSWER = 1 << 12               # PA: a policy answered instead of the upstream
    RF_POLICY_ERROR = 1 << 13                # PE: a policy (plugin) failed
    RF_POLICY_TIMEOUT = 1 << 14              # PT: a paused policy did not finish in time
    RF_UPSTREAM_BODY_TIMEOUT = 1 << 15       # UBT: the upstream stalled mid-body
    RF_NO_BACKEND = 1 << 16                  # NB: the route's backend is not resolvable (500)
    RF_REDIRECT = 1 << 17                    # RD: answered with a configured redirect
    # circuit breakers (breakers.pyx): which one refused (Envoy has one code, UO, for them all)
    RF_OVERFLOW_CONNECTIONS = 1 << 18        # UOC: max_connections
    RF_OVERFLOW_PENDING = 1 << 19            # UOP: max_pending_requests
    RF_OVERFLOW_REQUESTS = 1 << 20           # UOA: max_requests (active)
    RF_OVERFLOW_RETRIES = 1 << 21            # UOR: max_retries: a failed attempt was not retried
    RF_RETRY_LIMIT = 1 << 22                 # URX: a route's retries were used up (retry.pyx)

# What became of an exchange, for the log phase.
cdef enum Outcome:
    OC_NONE = 0
    OC_PROXIED        # the upstream's response reached the client whole
    OC_ANSWERED       # the gateway answered itself (404, 413, 5xx, redirect)
    OC_POLICY         # a policy answered
    OC_REFUSED        # the parser refused the request (400, 408, 431 ...)
    OC_ABORTED        # no complete response: client gone, or the upstream cut it

# Each upstream attempt of an exchange, for the log phase (attempts.pyx): the first ATT_MAX - 1 and
# the last. `result`: the status answered (> 0), how the attempt failed (AR_*, < 0), or AR_NONE.
cdef enum:
    ATT_MAX = 8
    AR_NONE = 0               # no result: the exchange ended first (the client left, a bad body)
    AR_REFUSED = -1           # connection refused
    AR_CONNECT_FAILURE = -2   # another connect failure (unresolved name, TLS handshake)
    AR_CONNECT_TIMEOUT = -3
    AR_RESET = -4             # closed or reset before a response head
    AR_TIMEOUT = -5           # no response head in time, or a route timeout cut it
    AR_PROTOCOL_ERROR = -6    # a malformed response head

cdef struct Attempt:
    int target                # index in the exchange's group's targets
    int result
    double start              # monotonic
    double end                # 0.0: until the exchange ended (t_done)
