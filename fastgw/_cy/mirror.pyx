# Request mirroring: a copy of the request, as it streams, to a target of another upstream. The copy
# asks the upstream to close after answering, its response is read and thrown away, and nothing it
# does reaches the main exchange: a mirror that cannot keep up (its write buffer over the limit) or
# takes too long is dropped.

import random as _random

cdef object _mirror_random = _random.random


cdef class MirrorConn:
    cdef object transport
    cdef list queue               # bytes waiting for the connection
    cdef Py_ssize_t queued
    cdef bint dead
    cdef object timer

    def __init__(self, Worker worker, Target target, bytes head, double timeout):
        self.queue = [head]
        self.queued = PyBytes_GET_SIZE(head)
        loop = worker.loop
        if target.ssl_context is None:
            task = loop.create_task(loop.create_connection(self, target.host, target.port))
        else:
            task = loop.create_task(loop.create_connection(self, target.host, target.port, ssl=target.ssl_context,
                                                           server_hostname=target.server_hostname))
        task.add_done_callback(self._connect_done)
        self.timer = loop.call_later(timeout, self.drop)

    def __call__(self):
        return self

    def _connect_done(self, task):
        if task.cancelled() or task.exception() is not None:
            self.drop()

    def connection_made(self, transport):
        self.transport = transport
        if self.dead:
            transport.abort()
            return
        transport.writelines(self.queue)
        self.queue = None

    cdef void send(self, bytes data):
        if self.dead:
            return
        if self.queue is not None:
            self.queued += PyBytes_GET_SIZE(data)
            if self.queued > QUEUE_HIGH_WATER:
                self.drop()
            else:
                self.queue.append(data)
            return
        if self.transport.get_write_buffer_size() > QUEUE_HIGH_WATER:
            self.drop()       # a slow mirror never slows the main request
            return
        self.transport.write(data)

    def data_received(self, data):
        pass

    def eof_received(self):
        return False

    def pause_writing(self):
        pass

    def resume_writing(self):
        pass

    def connection_lost(self, exc):
        self.dead = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def drop(self):
        self.dead = True
        self.queue = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()


cdef bytes mirror_head(bytes head):
    """The mirror's copy of the upstream head, asking the upstream to close after answering."""
    return head[:PyBytes_GET_SIZE(head) - 2] + b"Connection: close\r\n\r\n"


cdef MirrorConn start_mirror(Worker worker, Filters filters, bytes head):
    cdef UpstreamGroup group = <UpstreamGroup>filters.mirror_group
    cdef Target target
    if filters.mirror_fraction < 1.0 and _mirror_random() >= filters.mirror_fraction:
        return None
    target = group.pick(None)
    if target is None:
        return None
    return MirrorConn(worker, target, mirror_head(head),
                      group.connect_timeout + group.header_timeout + group.body_timeout)
