# The worker's pool of client connection buffers (issue 16, memory): the header field array and the
# two 2 KB write buffers a ClientConn needs only while a request is in progress (client.pyx
# acquire_buffers / release_buffers). An idle keep-alive connection gives them back here, so 10,000
# idle connections hold none of them; the pool keeps at most CB_POOL of each (about 0.5 MB in all)
# for the next busy connection, so a busy worker takes and gives them with a few pointer moves and
# no malloc. One event loop thread a worker: no lock.

cdef enum:
    CB_POOL = 64
    CB_WBUF_CAP = 2048

cdef HeaderField* _cb_heads[CB_POOL]
cdef int _cb_nheads = 0
cdef int _cb_heads_cap = 0          # the capacity (max_headers) of every array in the pool
cdef char* _cb_wbufs[CB_POOL]
cdef int _cb_nwbufs = 0
cdef Py_ssize_t _cb_live_heads = 0  # arrays held by connections (a debug figure for tests)
cdef Py_ssize_t _cb_live_wbufs = 0


cdef int cb_take_head(MessageHead* h, int cap) except -1:
    """h gets a field array for `cap` fields (one it had is given back first)."""
    global _cb_nheads, _cb_heads_cap, _cb_live_heads
    if h.fields != NULL:
        cb_give_head(h)
    if cap != _cb_heads_cap:
        # a reload changed max_headers: the pooled arrays have the old size
        while _cb_nheads:
            _cb_nheads -= 1
            free(_cb_heads[_cb_nheads])
        _cb_heads_cap = cap
    if _cb_nheads:
        _cb_nheads -= 1
        h.fields = _cb_heads[_cb_nheads]
        h.fields_cap = cap
    else:
        head_init(h, cap)
    h.nfields = 0
    _cb_live_heads += 1
    return 0


cdef void cb_give_head(MessageHead* h) noexcept:
    global _cb_nheads, _cb_live_heads
    if h.fields == NULL:
        return
    _cb_live_heads -= 1
    if h.fields_cap == _cb_heads_cap and _cb_nheads < CB_POOL:
        _cb_heads[_cb_nheads] = h.fields
        _cb_nheads += 1
    else:
        free(h.fields)
    h.fields = NULL
    h.fields_cap = 0
    h.nfields = 0                   # a finished exchange that is still read sees no fields


cdef int cb_take_wbuf(WBuf* b) except -1:
    global _cb_nwbufs, _cb_live_wbufs
    if _cb_nwbufs:
        _cb_nwbufs -= 1
        b.data = _cb_wbufs[_cb_nwbufs]
        b.len = 0
        b.cap = CB_WBUF_CAP
    else:
        wb_init(b, CB_WBUF_CAP)
    _cb_live_wbufs += 1
    return 0


cdef void cb_give_wbuf(WBuf* b) noexcept:
    global _cb_nwbufs, _cb_live_wbufs
    if b.data == NULL:
        return
    _cb_live_wbufs -= 1
    if b.cap == CB_WBUF_CAP and _cb_nwbufs < CB_POOL:
        _cb_wbufs[_cb_nwbufs] = b.data     # one that grew for a large head is freed instead
        _cb_nwbufs += 1
    else:
        free(b.data)
    b.data = NULL
    b.len = b.cap = 0


def connection_buffers():
    """(field arrays held by connections, write buffers held, arrays pooled, buffers pooled): for
    tests and the memory benchmark."""
    return _cb_live_heads, _cb_live_wbufs, _cb_nheads, _cb_nwbufs
