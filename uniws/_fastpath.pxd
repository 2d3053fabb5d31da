# cython: language_level=3
"""What other modules may touch of the hot path: the Conn, Fanout and PingWheel fields.

Python code (hub, session, node) reaches the `public` fields as attributes; a Cython
module may `cimport` these classes and use every field and cdef method at C speed.
"""

from picows.picows cimport WSListener, WSTransport


cdef class Conn(WSListener):
    # picows side (read only outside _fastpath)
    cdef public object node          # the worker's Node: conn_open / conn_message / conn_lost
    cdef public WSTransport ws
    cdef object tr                   # the asyncio transport under picows
    cdef int fd
    cdef list chunks                 # frames pending for this loop turn, or None
    cdef public Py_ssize_t pending   # bytes in `chunks`
    cdef public Py_ssize_t buffered  # bytes the asyncio transport still held after the last flush
    cdef public double blocked_since # when `buffered` last became non-zero (write timeout)
    cdef public Py_ssize_t size_limit
    cdef Py_ssize_t msg_size         # size of the data message being received
    cdef list fragments              # parts of a fragmented connect message
    cdef public int state            # CONNECTING, CONNECTED, CLOSED
    cdef public bint v2
    cdef public double last_pong
    # Client identity and subscriptions (owned by the session and the hub).
    cdef public str client_id
    cdef public str session
    cdef public str user
    cdef public object info          # compact conn_info JSON or None
    cdef public dict channels        # channel -> Subscription
    cdef public object connect_request   # pre-parsed `cf_connect` request, or None
    cdef public long long expire_at
    cdef public object close_reason  # Disconnect chosen by the server, once closing

    cdef int _flush(self) except -1
    cdef void _note_buffered(self)


cdef class Fanout:
    cdef list dirty
    cdef bint scheduled
    cdef object call_soon
    cdef object flush_cb
    cdef public Py_ssize_t queue_max
    cdef public list slow            # clients over client_queue_max_size, for the node to close
    cdef public object on_slow       # callable() run after a flush that found slow clients
    # Read by metrics.py when scraped: C integers, so counting costs the hot path no Python call.
    cdef public unsigned long long frames_sent   # frames queued to clients (publications, pushes, pings)
    cdef public unsigned long long flushes       # per-turn writes those frames went out in

    cdef int _enqueue(self, Conn c, bytes frame) except -1
    cpdef enqueue(self, Conn c, bytes frame)
    cpdef Py_ssize_t deliver(self, object subscribers, bytes frame) except -1
    cpdef flush(self)


cdef class PingWheel:
    cdef list slots
    cdef Py_ssize_t current
    cdef Fanout fanout
    cdef public double deadline      # seconds without a pong before a peer counts as dead
    cdef public double write_timeout # seconds a socket may refuse our output
    cdef public list dead
    cdef public list stuck           # connections over the write timeout

    cpdef add(self, Conn c)
    cpdef Py_ssize_t tick(self) except -1
