# In-process Python plugins: a policy whose phases call a Python object's hooks (on_request,
# on_response, on_log; each plain or async), looked up once when the config is compiled. Hooks see
# cheap views of the exchange (nothing of the head is copied until asked for); an async hook pauses
# the exchange until it finishes or its timeout passes. docs/plugins.md.

import asyncio as _asyncio
import inspect as _inspect
import traceback as _traceback

# Fields the gateway owns on the way upstream and back: a plugin cannot set or remove them.
cdef frozenset _OWNED_FIELDS = frozenset((
    b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"proxy-connection",
    b"te", b"trailer", b"upgrade", b"x-request-id", b"x-forwarded-for", b"x-forwarded-proto",
    b"x-forwarded-host",
))

# Upper bounds (seconds) of the duration histogram's buckets, Prometheus style (cumulative on export).
DURATION_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
cdef enum:
    _NBUCKETS = 18
assert len(DURATION_BUCKETS) == _NBUCKETS     # HookStats.counts is sized by it


cdef bytes _field_name(name):
    """A field name a plugin gave, as bytes; ValueError unless it is a token."""
    cdef bytes b = name.encode("latin-1") if isinstance(name, str) else bytes(name)
    cdef Py_ssize_t i
    if not b:
        raise ValueError("empty header name")
    for i in range(len(b)):
        if not _TCHAR[b[i]]:
            raise ValueError(f"invalid header name {name!r}")
    return b


cdef bytes _editable_name(name):
    """The lowercase name of a field a plugin may set or remove (not one the gateway owns)."""
    cdef bytes lname = _field_name(name).lower()
    if lname in _OWNED_FIELDS:
        raise ValueError(f"{name} is the gateway's to set")
    return lname


cdef bytes _field_line(bytes name, value):
    """The field line `name: value` with its CRLF; ValueError for a value with CR, LF or NUL."""
    cdef bytes v = value.encode("latin-1") if isinstance(value, str) else bytes(value)
    if b"\r" in v or b"\n" in v or b"\0" in v:
        raise ValueError(f"invalid value for header {name.decode()!r}")
    return name + b": " + v + b"\r\n"


cdef class HookStats:
    """Calls, failures and a duration histogram of one hook of one plugin, kept in the worker."""
    cdef readonly int64_t calls
    cdef readonly int64_t errors
    cdef readonly int64_t over_budget
    cdef readonly double total_seconds
    cdef int64_t counts[_NBUCKETS + 1]   # one per bucket, the last for +Inf
    cdef double last_warned

    cdef void record(self, double seconds, bint failed):
        cdef int i = 0
        self.calls += 1
        self.total_seconds += seconds
        if failed:
            self.errors += 1
        while i < _NBUCKETS and seconds > DURATION_BUCKETS[i]:
            i += 1
        self.counts[i] += 1

    def buckets(self):
        """[(upper bound, cumulative count)], the last bound float('inf')."""
        cdef int i
        cdef int64_t total = 0
        out = []
        for i in range(_NBUCKETS + 1):
            total += self.counts[i]
            out.append((DURATION_BUCKETS[i] if i < _NBUCKETS else float("inf"), total))
        return out


cdef class _HeaderEdits:
    """A plugin's view of request or response fields: reads see its own edits first."""
    cdef Exchange ex
    cdef bint response

    def __init__(self, Exchange ex, bint response):
        self.ex = ex
        self.response = response

    cdef Exchange _live(self):
        # the head the view reads is the connection's, and the next request reuses it
        if self.ex.finished or (self.response and self.ex.resp_h == NULL and self.ex.resp_started):
            raise RuntimeError("the exchange (or its response phase) is over")
        return self.ex

    def get(self, name, default=None):
        """The value (str) of a field, repeated fields joined with ", "; `default` when absent."""
        self._live()
        cdef bytes lname = _field_name(name).lower()
        cdef list edits = self.ex.resp_edits_py if self.response else self.ex.upstream_edits
        cdef object v
        if edits is not None:
            values = [line[len(lname) + 2:len(line) - 2] for n, line, _ in edits if n == lname and line is not None]
            if any(n == lname and drop for n, _, drop in edits):
                return b", ".join(values).decode("latin-1") if values else default
        else:
            values = []
        v = self.ex.response_header_value(lname) if self.response else self.ex.header_value(lname)
        if v is None:
            return b", ".join(values).decode("latin-1") if values else default
        return b", ".join([v, *values]).decode("latin-1")

    def __getitem__(self, name):
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def __contains__(self, name):
        return self.get(name) is not None

    def set(self, name, value):
        """Replaces every field of that name with one."""
        self._edit(_editable_name(name), _field_line(_field_name(name), value), True)

    def add(self, name, value):
        """One more field, after those already there."""
        self._edit(_editable_name(name), _field_line(_field_name(name), value), False)

    def remove(self, name):
        self._edit(_editable_name(name), None, True)

    cdef void _edit(self, bytes lname, bytes line, bint drop):
        cdef Exchange ex = self._live()
        if self.response:
            if ex.resp_edits_py is None:
                ex.resp_edits_py = []
            edits = ex.resp_edits_py
        else:
            if ex.upstream_edits is None:
                ex.upstream_edits = []
            edits = ex.upstream_edits
        if drop:
            edits[:] = [e for e in edits if e[0] != lname]
        edits.append((lname, line, drop))

    def items(self):
        """Every (name, value) as the client sent them (requests) or the upstream did (responses),
        as str, before edits."""
        self._live()
        if self.response:
            return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.ex.response_header_items()]
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.ex.header_items()]


cdef class RequestView:
    """What a plugin's on_request sees of the request. Reading copies only what is read."""
    cdef Exchange ex
    cdef _HeaderEdits _headers

    def __init__(self, Exchange ex):
        self.ex = ex

    cdef Exchange _live(self):
        if self.ex.finished:
            raise RuntimeError("the exchange is over")
        return self.ex

    @property
    def method(self):
        return self._live().method

    @property
    def path(self):
        """The path as routed (normalized), percent-encoded as it came."""
        return self._live().path_bytes.decode("latin-1")

    @property
    def query(self):
        """The raw query string, without '?'."""
        return self._live().query_bytes.decode("latin-1")

    @property
    def host(self):
        return self._live().host

    @property
    def headers(self):
        if self._headers is None:
            self._headers = _HeaderEdits(self._live(), False)
        return self._headers

    @property
    def client_ip(self):
        return self._live().client_ip

    @property
    def route(self):
        return self._live().route_name

    @property
    def request_id(self):
        return self._live().request_id.decode("latin-1")

    @property
    def client_cert(self):
        """The verified TLS client certificate: {subject, sans, fingerprint}, or None (no TLS, none sent)."""
        cdef object c = self._live().down.client_cert
        if c is None:
            return None
        return {"subject": c["subject"], "sans": list(c["sans"]), "fingerprint": c["fingerprint"]}

    @property
    def consumer(self):
        """The authenticated consumer (None until an authentication policy sets one)."""
        return self._live().consumer


cdef class ResponseView:
    """What a plugin's on_response sees: the upstream's status and fields, editable, and the
    request."""
    cdef Exchange ex
    cdef _HeaderEdits _headers
    cdef readonly RequestView request

    def __init__(self, Exchange ex, RequestView request):
        self.ex = ex
        self.request = request

    @property
    def status(self):
        if self.ex.finished:
            raise RuntimeError("the exchange is over")
        return self.ex.status

    @property
    def headers(self):
        if self.ex.finished:
            raise RuntimeError("the exchange is over")
        if self._headers is None:
            self._headers = _HeaderEdits(self.ex, True)
        return self._headers


cdef class LogEntry:
    """What a plugin's on_log gets: a snapshot of the finished exchange (safe to keep)."""
    cdef readonly str request_id
    cdef readonly object method
    cdef readonly object path
    cdef readonly object host
    cdef readonly object route
    cdef readonly object upstream
    cdef readonly object target
    cdef readonly int status
    cdef readonly str outcome
    cdef readonly list flags
    cdef readonly int64_t bytes_received
    cdef readonly int64_t bytes_sent
    cdef readonly dict timings
    cdef readonly str client_ip
    cdef readonly str trace_id           # 32 hex digits with tracing on, else None
    cdef readonly int attempts           # upstream attempts made (the access log's `attempts`)
    cdef readonly list attempt_targets   # per attempt: the target's address
    cdef readonly list attempt_results   # ... "200", "refused", "reset", "timeout" ... (attempts.pyx)
    cdef readonly list attempt_ms        # ... its duration in milliseconds

    def __repr__(self):
        return (f"LogEntry({self.request_id} {self.method} {self.path} -> {self.status} "
                f"{self.outcome} {','.join(self.flags) or '-'})")


cdef LogEntry _log_entry(Exchange ex):
    cdef LogEntry e = LogEntry.__new__(LogEntry)
    path = ex.path_bytes
    e.request_id = ex.request_id.decode("latin-1") if ex.request_id is not None else None
    e.method = ex.method
    e.path = path.decode("latin-1") if path is not None else None
    e.host = ex.host if ex.h != NULL else None
    e.route = ex.route_name
    e.upstream = ex.upstream_name
    e.target = ex.target_address
    e.status = ex.status
    e.outcome = OUTCOME_NAMES[ex.outcome]
    e.flags = flag_codes(ex.flags)
    e.bytes_received = ex.bytes_in
    e.bytes_sent = ex.bytes_out
    e.timings = ex.timings()
    e.client_ip = ex.client_addr.decode()
    e.trace_id = ex.trace_id_hex
    e.attempts = (1 + ex.resends) if ex.up_head is not None else 0
    e.attempt_targets = attempt_targets_list(ex)
    e.attempt_results = attempt_results_list(ex)
    e.attempt_ms = attempt_ms_list(ex)
    return e


cdef class PluginPolicy(Policy):
    cdef readonly object instance
    cdef readonly str module
    cdef object hook_request
    cdef object hook_response
    cdef object hook_log
    cdef bint async_request
    cdef bint async_response
    cdef bint async_log
    cdef double timeout
    cdef double budget
    cdef bytes failure
    cdef readonly dict stats              # phase -> HookStats
    cdef set log_tasks

    def __init__(self, str name, str key, str module, instance, double timeout, double budget, config=None):
        Policy.__init__(self, name, "plugin", key, config)
        self.module = module
        self.instance = instance
        self.timeout = timeout
        self.budget = budget
        self.failure = ("plugin %s failed" % name).encode()
        self.stats = {}
        self.log_tasks = set()
        self.hook_request = getattr(instance, "on_request", None)
        self.hook_response = getattr(instance, "on_response", None)
        self.hook_log = getattr(instance, "on_log", None)
        if self.hook_request is not None:
            self.phases |= PH_REQUEST
            self.async_request = _inspect.iscoroutinefunction(self.hook_request)
            self.stats["request"] = HookStats()
        if self.hook_response is not None:
            self.phases |= PH_RESPONSE
            self.async_response = _inspect.iscoroutinefunction(self.hook_response)
            self.stats["response"] = HookStats()
        if self.hook_log is not None:
            self.phases |= PH_LOG
            self.async_log = _inspect.iscoroutinefunction(self.hook_log)
            self.stats["log"] = HookStats()

    def adopt(self, Policy old):
        """The same plugin (by key) in the previous config: its counters go on."""
        if isinstance(old, PluginPolicy):
            for phase, st in (<PluginPolicy>old).stats.items():
                if phase in self.stats:
                    self.stats[phase] = st

    def describe(self):
        return f"plugin {self.module}"

    cdef void _timed(self, str phase, double t0, bint failed):
        cdef double took = monotonic() - t0
        cdef HookStats st = <HookStats>self.stats[phase]
        st.record(took, failed)
        if took > self.budget:
            st.over_budget += 1
            if t0 - st.last_warned >= 1.0:
                st.last_warned = t0
                from fastgw import events
                events.emit("warning", "plugin_over_budget",
                            msg=f"plugin {self.name} ({self.module}) on_{phase} took {took * 1000:.1f} ms, "
                                f"over its budget of {self.budget * 1000:.1f} ms",
                            plugin=self.name, phase=phase, took_ms=round(took * 1000, 3),
                            budget_ms=round(self.budget * 1000, 3))

    cdef int _failed(self, Exchange ex, str phase, exc) except -1:
        _report_policy_error(self, phase, exc)
        ex.fail(500, self.failure, RF_POLICY_ERROR)
        return P_ANSWERED

    cdef int _result(self, Exchange ex, str phase, result) except -1:
        if result is None:
            return P_CONTINUE
        try:
            status, header_lines, body = _response_parts(result)
        except (TypeError, ValueError) as exc:
            (<HookStats>self.stats[phase]).errors += 1      # a bad answer is the hook's failure
            return self._failed(ex, phase, exc)
        ex.answer(status, header_lines, body, RF_POLICY_ANSWER)
        return P_ANSWERED

    # ---- request -------------------------------------------------------------------------------

    cdef int on_request(self, Exchange ex) except -1:
        if ex.view is None:
            ex.view = RequestView(ex)
        return self._call(ex, False, self.hook_request, ex.view, self.async_request)

    cdef int on_response(self, Exchange ex) except -1:
        if ex.view is None:
            ex.view = RequestView(ex)
        return self._call(ex, True, self.hook_response, ResponseView(ex, ex.view), self.async_response)

    cdef int _call(self, Exchange ex, bint response, hook, view, bint is_async) except -1:
        """One hook of the request or response phase: its answer now, or (async) a pause that
        hook_done ends."""
        cdef double t0 = monotonic()
        cdef str phase = "response" if response else "request"
        try:
            result = hook(view)
        except Exception as exc:
            self._timed(phase, t0, True)
            return self._failed(ex, phase, exc)
        if not is_async:
            self._timed(phase, t0, False)
            return self._result(ex, phase, result)
        task = ex.worker.loop.create_task(result)
        ex.pending = task
        if response:
            ex.pause_response_deadline(self.timeout)
        else:
            ex.pause_deadline(self.timeout)
        task.add_done_callback(_HookDone(self, ex, t0, response))
        return P_PAUSED

    cdef void hook_done(self, Exchange ex, double t0, bint response, task) except *:
        cdef str phase = "response" if response else "request"
        cdef int r
        if task.cancelled():          # the exchange ended or timed out first: nothing to resume
            self._timed(phase, t0, True)
            return
        exc = task.exception()
        if exc is not None:
            self._timed(phase, t0, True)
            r = self._failed(ex, phase, exc)
        else:
            self._timed(phase, t0, False)
            r = self._result(ex, phase, task.result())
        if response:
            ex.resume_response(r)
        else:
            ex.resume()

    # ---- log -----------------------------------------------------------------------------------

    cdef int on_log(self, Exchange ex) except -1:
        cdef double t0 = monotonic()
        cdef LogEntry entry = _log_entry(ex)
        if self.async_log:
            # the exchange is over: nothing waits for this; the task is kept until it ends
            task = ex.worker.loop.create_task(self.hook_log(entry))
            self.log_tasks.add(task)
            task.add_done_callback(_LogDone(self, t0))
            return 0
        try:
            self.hook_log(entry)
        except Exception as exc:
            self._timed("log", t0, True)
            _report_policy_error(self, "log", exc)
            return 0
        self._timed("log", t0, False)
        return 0

    cdef void log_done(self, double t0, task) except *:
        self.log_tasks.discard(task)
        if task.cancelled():
            self._timed("log", t0, True)
            return
        exc = task.exception()
        self._timed("log", t0, exc is not None)
        if exc is not None:
            _report_policy_error(self, "log", exc)


# Done-callbacks as small cdef objects rather than closures: they keep the exchange and the start
# time without a Python frame.
cdef class _HookDone:
    cdef PluginPolicy policy
    cdef Exchange ex
    cdef double t0
    cdef bint response

    def __init__(self, PluginPolicy policy, Exchange ex, double t0, bint response):
        self.policy = policy
        self.ex = ex
        self.t0 = t0
        self.response = response

    def __call__(self, task):
        self.policy.hook_done(self.ex, self.t0, self.response, task)


cdef class _LogDone:
    cdef PluginPolicy policy
    cdef double t0

    def __init__(self, PluginPolicy policy, double t0):
        self.policy = policy
        self.t0 = t0

    def __call__(self, task):
        self.policy.log_done(self.t0, task)


cdef tuple _response_parts(result):
    """A hook's answer: fastgw.plugin.Response, or (status, headers, body)."""
    status = getattr(result, "status", None)
    if status is not None:
        headers = result.headers
        body = result.body
    elif isinstance(result, tuple) and len(result) == 3:
        status, headers, body = result
    else:
        raise TypeError(f"a hook returns None or a Response, not {type(result).__name__}")
    status = int(status)
    if not 200 <= status <= 599:
        raise ValueError(f"invalid status {status}")
    if isinstance(body, str):
        body = body.encode()
    elif body is None:
        body = b""
    else:
        body = bytes(body)
    parts = []
    for name, value in (headers.items() if hasattr(headers, "items") else headers or ()):
        _editable_name(name)
        parts.append(_field_line(_field_name(name), value))
    return status, b"".join(parts), body
