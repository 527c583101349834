# Each upstream attempt of an exchange, for the log phase (issue 12: "attempt count and each
# attempt's outcome"), as nginx's $upstream_addr / $upstream_status / $upstream_response_time lists:
# the target, the result (a status, or how the attempt failed) and the duration, kept in a small C
# array in the Exchange (Exchange.att, ATT_MAX slots: the first ATT_MAX - 1 attempts and the last).
# No Python object per request: the access log renders the array straight into its line
# (`attempt_targets`, `attempt_results`, `attempt_ms`, docs/observability.md); a plugin's LogEntry
# gets lists.
#
# The hooks, in the Exchange (exchange.pyx): _dispatch and a stale connection's replay begin an
# attempt (attempt_begin); begin_response sets its status; upstream_failed its failure
# (attempt_failed); a route timeout that cuts an attempt marks it (attempt_cut). An attempt still
# open at the log phase ends at the exchange's end.

from libc.string cimport strcmp

cdef class Exchange

cdef tuple ATTEMPT_FAILURES = ("none", "refused", "connect-failure", "connect-timeout", "reset",
                               "timeout", "protocol-error")
cdef tuple _ATTEMPT_FAILURE_BYTES = tuple(n.encode() for n in ATTEMPT_FAILURES)


cdef inline void attempt_begin(Exchange ex, double now) noexcept:
    cdef int k = ex.n_att
    if k >= ATT_MAX:
        k = ATT_MAX - 1                # the last slot keeps the latest attempt
    else:
        ex.n_att = k + 1
    ex.att[k].target = <int>ex.target_index
    ex.att[k].result = AR_NONE
    ex.att[k].start = now
    ex.att[k].end = 0.0


cdef void attempt_failed(Exchange ex, int status, const char* reason, int flag) noexcept:
    """The current attempt failed before a response head (Exchange.upstream_failed's arguments)."""
    cdef int r
    if ex.n_att == 0:
        return
    if flag == RF_UPSTREAM_CONNECT_FAILURE:
        if status == 504:
            r = AR_CONNECT_TIMEOUT
        elif reason != NULL and strcmp(reason, b"upstream connection refused") == 0:
            r = AR_REFUSED
        else:
            r = AR_CONNECT_FAILURE
    elif flag == RF_UPSTREAM_TIMEOUT:
        r = AR_TIMEOUT
    elif flag == RF_UPSTREAM_RESET:
        r = AR_RESET
    else:
        r = AR_PROTOCOL_ERROR
    ex.att[ex.n_att - 1].result = r
    ex.att[ex.n_att - 1].end = monotonic()


cdef void attempt_cut(Exchange ex, int result) noexcept:
    """A route timeout ended the current attempt (one with no result yet)."""
    if ex.n_att and ex.att[ex.n_att - 1].result == AR_NONE and ex.att[ex.n_att - 1].end == 0.0:
        ex.att[ex.n_att - 1].result = result
        ex.att[ex.n_att - 1].end = monotonic()


cdef inline double attempt_seconds(Exchange ex, int k) noexcept:
    cdef double end = ex.att[k].end if ex.att[k].end != 0.0 else ex.t_done
    return end - ex.att[k].start if end > ex.att[k].start else 0.0


cdef inline Target attempt_target(Exchange ex, int k):
    cdef int i = ex.att[k].target
    if ex.group is None or i < 0 or i >= PyList_GET_SIZE(ex.group.targets):
        return None
    return <Target>PyList_GET_ITEM(ex.group.targets, i)


cdef int attempt_result_field(WBuf* b, int result, bint json) except -1:
    """One result as a string: the status's digits, or the failure's name."""
    cdef bytes name
    if json:
        wb_put(b, b'"', 1)
    if result > 0:
        wb_put_int(b, result)
    else:
        name = <bytes>_ATTEMPT_FAILURE_BYTES[-result if -result < len(ATTEMPT_FAILURES) else 0]
        wb_put(b, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
    if json:
        wb_put(b, b'"', 1)
    return 0


def attempt_result_name(int result):
    return str(result) if result > 0 else ATTEMPT_FAILURES[-result if -result < len(ATTEMPT_FAILURES) else 0]


cdef list attempt_targets_list(Exchange ex):
    cdef int k
    cdef Target t
    out = []
    for k in range(ex.n_att):
        t = attempt_target(ex, k)
        out.append(t.address if t is not None else None)
    return out


cdef list attempt_results_list(Exchange ex):
    cdef int k
    return [attempt_result_name(ex.att[k].result) for k in range(ex.n_att)]


cdef list attempt_ms_list(Exchange ex):
    cdef int k
    return [round(attempt_seconds(ex, k) * 1000.0, 3) for k in range(ex.n_att)]
