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
        cs_flush()
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


# The busy path: a keep-alive connection takes its three buffers at each head and gives them back at
# each idle, so both ends are a few inline moves over a pool of whole sets (same sizes), with the
# per-buffer functions above for everything else (a first use, a reload, a grown buffer, a full pool).
cdef HeaderField* _cs_heads[CB_POOL]
cdef char* _cs_out[CB_POOL]
cdef char* _cs_uout[CB_POOL]
cdef int _cs_n = 0


cdef inline bint cs_take(MessageHead* h, WBuf* out, WBuf* uout, int cap) noexcept:
    """Whole set from the pool into empty buffers, or False (the caller takes them one by one)."""
    global _cs_n, _cb_live_heads, _cb_live_wbufs
    if _cs_n == 0 or cap != _cb_heads_cap or h.fields != NULL or out.data != NULL or uout.data != NULL:
        return False
    _cs_n -= 1
    h.fields = _cs_heads[_cs_n]
    h.fields_cap = cap
    h.nfields = 0
    out.data = _cs_out[_cs_n]
    out.len = 0
    out.cap = CB_WBUF_CAP
    uout.data = _cs_uout[_cs_n]
    uout.len = 0
    uout.cap = CB_WBUF_CAP
    _cb_live_heads += 1
    _cb_live_wbufs += 2
    return True


cdef inline bint cs_give(MessageHead* h, WBuf* out, WBuf* uout) noexcept:
    """The three buffers back as a set, or False (the caller gives them one by one)."""
    global _cs_n, _cb_live_heads, _cb_live_wbufs
    if (_cs_n >= CB_POOL or h.fields == NULL or h.fields_cap != _cb_heads_cap
            or out.cap != CB_WBUF_CAP or uout.cap != CB_WBUF_CAP or out.data == NULL or uout.data == NULL):
        return False
    _cs_heads[_cs_n] = h.fields
    _cs_out[_cs_n] = out.data
    _cs_uout[_cs_n] = uout.data
    _cs_n += 1
    h.fields = NULL
    h.fields_cap = 0
    h.nfields = 0
    out.data = uout.data = NULL
    out.len = out.cap = uout.len = uout.cap = 0
    _cb_live_heads -= 1
    _cb_live_wbufs -= 2
    return True


cdef void cs_flush() noexcept:
    """max_headers changed: the pooled sets' arrays have the old size."""
    global _cs_n
    while _cs_n:
        _cs_n -= 1
        free(_cs_heads[_cs_n])
        free(_cs_out[_cs_n])
        free(_cs_uout[_cs_n])


def connection_buffers():
    """(field arrays held by connections, write buffers held, arrays pooled, buffers pooled): for
    tests and the memory benchmark."""
    return _cb_live_heads, _cb_live_wbufs, _cb_nheads + _cs_n, _cb_nwbufs + 2 * _cs_n
