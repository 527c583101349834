# A per-worker buffer of log lines with a writer thread behind it: the access log and the event log
# write through one each. The loop only appends to a C buffer; whole batches (buffer_bytes, or every
# flush_interval) go to the thread, which does the blocking write. A slow disk or a pipe nobody
# reads therefore stalls the thread, never the loop; what would pile up past max_pending bytes is
# dropped and counted instead. O_NONBLOCK is not used: it does nothing for regular files, and on
# stdout it would change the file description the supervisor and the shell share.

import os as _os
import queue as _queue
import threading as _threading

cdef object _REOPEN = object()        # a writer-queue item: reopen the file (SIGUSR1, logrotate)
cdef object _STOP = object()


cdef class LineSink:
    cdef WBuf buf                     # whole lines not yet handed to the writer
    cdef readonly str path            # "stdout", "stderr" or a file path
    cdef Py_ssize_t buffer_bytes
    cdef Py_ssize_t max_pending
    cdef double flush_interval
    cdef Py_ssize_t inflight          # handed to the writer, not yet written
    cdef readonly unsigned long long lines
    cdef readonly unsigned long long dropped
    cdef readonly unsigned long long write_errors
    cdef object loop
    cdef object queue
    cdef object thread
    cdef object timer
    cdef bint flush_soon
    cdef bint closed
    cdef unsigned long long reported
    cdef public object on_drop        # on_drop(dropped since the last call, dropped in all), from the timer

    def __cinit__(self):
        wb_init(&self.buf, 65536)

    def __dealloc__(self):
        wb_free(&self.buf)

    def __init__(self, loop, str path="stdout", Py_ssize_t buffer_bytes=65536, double flush_interval=1.0,
                 Py_ssize_t max_pending=8 << 20):
        self.loop = loop
        self.path = path
        self.buffer_bytes = buffer_bytes
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.queue = _queue.SimpleQueue()
        fd, owned = _open_sink(path)          # here, so that a file that cannot be opened fails the start
        self.thread = _threading.Thread(target=self._writer, args=(fd, owned), name="fastgw-log-writer",
                                        daemon=True)
        self.thread.start()
        if loop is not None and flush_interval > 0:
            self.timer = loop.call_later(flush_interval, self._tick)

    def configure(self, str path, Py_ssize_t buffer_bytes, double flush_interval, Py_ssize_t max_pending):
        """A reload's settings; a new path is opened by the writer after what is queued for the old."""
        self.buffer_bytes = buffer_bytes
        self.max_pending = max_pending
        if flush_interval != self.flush_interval and self.loop is not None:
            self.flush_interval = flush_interval
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if flush_interval > 0:
                self.timer = self.loop.call_later(flush_interval, self._tick)
        if path != self.path:
            self.path = path
            self.flush()
            self.queue.put((_REOPEN, path))

    # ---- the loop side -------------------------------------------------------------------------

    cdef inline WBuf* begin_line(self):
        """The buffer to write one line into, or NULL (counted as dropped) when the sink is behind."""
        if self.closed or self.buf.len + self.inflight >= self.max_pending:
            self.dropped += 1
            return NULL
        return &self.buf

    cdef inline void end_line(self):
        self.lines += 1
        if self.buf.len >= self.buffer_bytes and not self.flush_soon:
            self.flush_soon = True
            self.loop.call_soon(self.flush)

    def write_line(self, bytes line):
        """One whole line (with its newline), from Python: the event log's entry."""
        cdef WBuf* b = self.begin_line()
        if b == NULL:
            return False
        wb_put(b, PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line))
        self.end_line()
        return True

    cpdef flush(self):
        """Hands the buffered lines to the writer (never waits for it)."""
        cdef bytes chunk
        self.flush_soon = False
        if self.buf.len == 0:
            return
        chunk = wb_bytes(&self.buf)
        self.buf.len = 0
        self.inflight += PyBytes_GET_SIZE(chunk)
        self.queue.put(chunk)

    def _tick(self):
        cdef unsigned long long dropped = self.dropped
        self.flush()
        if dropped != self.reported and self.on_drop is not None:
            self.on_drop(dropped - self.reported, dropped)
        self.reported = dropped
        if not self.closed:
            self.timer = self.loop.call_later(self.flush_interval, self._tick)

    def reopen(self):
        """SIGUSR1: lines so far go to the file as it was, later ones to a file opened anew by its
        name (logrotate has renamed the old one)."""
        self.flush()
        self.queue.put((_REOPEN, self.path))

    def close(self, double timeout=1.0):
        """Flushes and stops the writer, waiting at most `timeout` (a stuck pipe must not hold up
        the worker's exit)."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.put(_STOP)
        self.thread.join(timeout)

    @property
    def pending_bytes(self):
        return self.buf.len + self.inflight

    # ---- the writer thread ---------------------------------------------------------------------

    def _writer(self, int fd, bint owned):
        while True:
            item = self.queue.get()
            if item is _STOP:
                break
            if type(item) is tuple:
                if owned:
                    _os.close(fd)
                try:
                    fd, owned = _open_sink(item[1])
                except OSError:
                    fd, owned = -1, False
                continue
            self._write_all(fd, item)
        if owned:
            _os.close(fd)

    def _write_all(self, int fd, bytes chunk):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(chunk)
        view = memoryview(chunk)
        done = 0
        try:
            if fd < 0:
                raise OSError("log file could not be opened")
            while done < n:
                done += _os.write(fd, view[done:])
        except OSError:
            self.write_errors += 1
            self.dropped += chunk.count(b"\n", done)
        finally:
            self.inflight -= n


def _open_sink(str path):
    if path == "stdout":
        return 1, False
    if path == "stderr":
        return 2, False
    return _os.open(path, _os.O_WRONLY | _os.O_APPEND | _os.O_CREAT | _os.O_CLOEXEC, 0o644), True
