# Upstream failures in the event log (fastgw/events.py): called by the Exchange where it records a
# failure flag, so Python runs on the failure path only.

cdef object _events = None
cdef dict _FAILURE_KINDS = {
    RF_UPSTREAM_CONNECT_FAILURE: "connect", RF_UPSTREAM_TIMEOUT: "timeout", RF_UPSTREAM_RESET: "reset",
    RF_UPSTREAM_PROTOCOL_ERROR: "protocol_error", RF_UPSTREAM_BODY_TIMEOUT: "body_timeout",
    0: "status",
}
cdef dict _CONNECT_KINDS = {
    b"upstream connection refused": "refused", b"upstream name not resolved": "dns",
    b"upstream connect timeout": "connect_timeout",
}


cdef void _upstream_failure_event(Exchange ex, int status, const char* reason, int flag) except *:
    """An upstream failed this exchange: one event line (the failure path only; the access line
    follows in the log phase)."""
    global _events
    cdef bytes why = <bytes>reason if reason != NULL else b"upstream failure"
    if _events is None:
        from fastgw import events as _ev
        _events = _ev
    if not _events.enabled("error"):
        return
    kind = _FAILURE_KINDS.get(flag, "other")
    if kind == "connect":
        kind = _CONNECT_KINDS.get(why, "connect")
    _events.emit("error", "upstream_failure", msg=why.decode("latin-1"), kind=kind,
                 status=status or None, request_id=ex.request_id.decode("latin-1") if ex.request_id else None,
                 route=ex.route.name if ex.route is not None else None,
                 upstream=ex.group.name if ex.group is not None else None,
                 target=ex.target.address if ex.target is not None else None,
                 attempts=1 + ex.resends)
