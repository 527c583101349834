# Policies: the steps a route's exchanges go through, compiled once per config into a PolicyChain
# per route. Per request a policy costs a C call per phase it takes part in; a native policy keeps
# no Python object per request (what it needs lives in the Exchange's slots).
#
# A phase method returns one of:
#   P_CONTINUE  the next policy runs
#   P_ANSWERED  the policy answered (Exchange.answer); the chain stops and the answer is sent
#   P_PAUSED    the policy started asynchronous work; it calls Exchange.resume() (or answer())
#               when done, and the chain goes on from the next policy

cdef enum:
    P_CONTINUE = 0
    P_ANSWERED = 1
    P_PAUSED = 2

    # the phases a policy takes part in (bits of Policy.phases)
    PH_REQUEST = 1
    PH_RESPONSE = 2
    PH_LOG = 4
    PH_ANSWER = 8       # adds header lines to answers the gateway or a policy makes (on_answer)

from cpython.sequence cimport PySequence_Fast_ITEMS

cdef tuple PHASE_NAMES = ("request", "upstream_peer", "upstream_request", "response", "log")


cdef class Policy:
    """One compiled policy. `key` is what its state carries over a reload by (the route and the
    policy's name or position)."""
    cdef readonly str name
    cdef readonly str type
    cdef readonly str key
    cdef readonly int phases
    cdef readonly object config          # the validated config Struct, for explain

    def __init__(self, str name, str type, str key, config=None):
        self.name = name
        self.type = type
        self.key = key
        self.config = config

    cdef int on_request(self, Exchange ex) except -1:
        return P_CONTINUE

    cdef int on_response(self, Exchange ex) except -1:
        return P_CONTINUE

    cdef int on_log(self, Exchange ex) except -1:
        return 0

    cdef bytes on_answer(self, Exchange ex, bytes header_lines):
        """An answer made without the upstream's response (a policy's 401 or 429, the gateway's 404
        or 502 ...) is about to go out with `header_lines`: returns them, with any lines this policy
        adds (the cors policy's Access-Control-Allow-Origin). Only policies with PH_ANSWER are asked."""
        return header_lines

    def adopt(self, Policy old):
        """Takes over the state of the policy with the same key in the previous config."""

    def phase_names(self):
        out = []
        if self.phases & PH_REQUEST:
            out.append("request")
        if self.phases & PH_RESPONSE:
            out.append("response")
        if self.phases & PH_LOG:
            out.append("log")
        return out

    def describe(self):
        return self.type


cdef class PolicyChain:
    """A route's policies, in configuration order, split by phase once so a request walks only
    the policies of the phase it is in."""
    cdef readonly tuple policies
    cdef tuple request
    cdef tuple response
    cdef tuple log
    cdef tuple answer                    # PH_ANSWER policies, asked for every answer (Exchange._answer_lines)
    cdef Py_ssize_t n_answer
    cdef Py_ssize_t n_request
    cdef Py_ssize_t n_response
    cdef Py_ssize_t n_log
    # the phase tuples' item arrays (borrowed: the tuples above own the references and live as long
    # as the chain), so a walk calls each policy through its vtable with no refcounting or checks
    cdef PyObject** request_items
    cdef PyObject** response_items
    cdef PyObject** log_items
    cdef readonly Policy access_log

    def __init__(self, policies=(), Policy access_log=None):
        """access_log: the route's access log step, run last in the log phase; not one of the
        configured `policies` (explain lists those)."""
        self.policies = tuple(policies)
        self.access_log = access_log
        self.request = tuple(p for p in self.policies if p.phases & PH_REQUEST)
        self.response = tuple(p for p in self.policies if p.phases & PH_RESPONSE)
        self.log = tuple(p for p in self.policies if p.phases & PH_LOG) + ((access_log,) if access_log is not None else ())
        self.n_request = len(self.request)
        self.n_response = len(self.response)
        self.n_log = len(self.log)
        self.answer = tuple(p for p in self.policies if p.phases & PH_ANSWER)
        self.n_answer = len(self.answer)
        self.request_items = PySequence_Fast_ITEMS(self.request)
        self.response_items = PySequence_Fast_ITEMS(self.response)
        self.log_items = PySequence_Fast_ITEMS(self.log)

    def by_phase(self):
        return {"request": list(self.request), "response": list(self.response),
                "log": [p for p in self.log if p is not self.access_log]}

    def __len__(self):
        return len(self.policies)


cdef PolicyChain EMPTY_CHAIN = PolicyChain()


# ---- native policies ------------------------------------------------------------------------------

cdef class NoopPolicy(Policy):
    """Takes part in every phase and does nothing: a placeholder, and the measure of what the chain
    itself costs (the benchmark's policy scenario)."""

    def __init__(self, str name, str key, config=None):
        Policy.__init__(self, name, "noop", key, config)
        self.phases = PH_REQUEST | PH_RESPONSE | PH_LOG


cdef class RespondPolicy(Policy):
    """Answers with a fixed status, headers and body (nginx's `return`). With `on_upstream_status`
    it runs in the response phase instead and replaces an upstream response with one of those
    statuses (nginx's `error_page`, Kong's exit transformers)."""
    cdef int status
    cdef bytes header_lines
    cdef bytes body
    cdef frozenset upstream_statuses

    def __init__(self, str name, str key, int status, headers, body, upstream_statuses, config=None):
        Policy.__init__(self, name, "respond", key, config)
        self.status = status
        self.header_lines = b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in headers)
        self.body = body.encode() if isinstance(body, str) else (body or b"")
        self.upstream_statuses = frozenset(upstream_statuses or ())
        self.phases = PH_RESPONSE if self.upstream_statuses else PH_REQUEST

    cdef int on_request(self, Exchange ex) except -1:
        ex.answer(self.status, self.header_lines, self.body, RF_POLICY_ANSWER)
        return P_ANSWERED

    cdef int on_response(self, Exchange ex) except -1:
        if ex.status in self.upstream_statuses:
            ex.answer(self.status, self.header_lines, self.body, RF_POLICY_ANSWER)
            return P_ANSWERED
        return P_CONTINUE

    def describe(self):
        if self.upstream_statuses:
            return f"respond {self.status} instead of upstream {sorted(self.upstream_statuses)}"
        return f"respond {self.status}"
