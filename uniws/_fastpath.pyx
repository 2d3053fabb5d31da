# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The measured hot path: push framing, per-loop-turn write coalescing, fan-out, ping wheel.

A publication is encoded and framed once (`pub_frame`); `Fanout.deliver` appends
the same bytes object to every subscriber's pending list in a C loop; once per
loop turn `Fanout.flush` gives every client with pending frames one `writev`
holding all of them. Nothing here allocates per subscriber except a list slot.

`Conn` is the picows listener and the per-connection state in one object, so an
idle connection costs one Python object besides picows's own.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from picows.picows cimport MemoryBuffer, WSFrame, WSMsgType, WSTransport

from .codec import json_string as _codec_json_string

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec* iov, int iovcnt)

cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    int MSG_NOSIGNAL

cdef extern from "<time.h>" nogil:
    ctypedef int clockid_t
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk_id, timespec* tp)
    clockid_t CLOCK_MONOTONIC

DEF MAX_IOV = 64

# Connection states, shared with node.py.
CONNECTING = 0
CONNECTED = 1
CLOSED = 2

cdef bytes PING_V1 = b"\x81\x00\x89\x00"     # empty text message, then an empty ping frame (01 §6.1)
cdef bytes PING_V2_CONNECTING = b"\x89\x00"  # v2: ping frame only
cdef bytes PING_V2 = b"\x89\x00\x81\x02{}"   # v2, connected: ping frame and the `{}` ping push


cpdef double monotonic() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline Py_ssize_t _header_size(Py_ssize_t n) noexcept:
    if n < 126:
        return 2
    if n < 65536:
        return 4
    return 10


cdef inline void _write_header(char* p, Py_ssize_t n) noexcept:
    cdef int i
    p[0] = <char>0x81
    if n < 126:
        p[1] = <char>n
    elif n < 65536:
        p[1] = <char>126
        p[2] = <char>((n >> 8) & 0xFF)
        p[3] = <char>(n & 0xFF)
    else:
        p[1] = <char>127
        for i in range(8):
            p[2 + i] = <char>((<uint64_t>n >> (56 - 8 * i)) & 0xFF)


cpdef bytes frame_text(bytes payload):
    """One final, unmasked text frame holding `payload` (same bytes as codec.frame_text)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t h = _header_size(n)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, h + n)
    cdef char* p = PyBytes_AS_STRING(out)
    _write_header(p, n)
    memcpy(p + h, PyBytes_AS_STRING(payload), n)
    return out


cdef inline Py_ssize_t _put(char* p, Py_ssize_t at, const char* s, Py_ssize_t n) noexcept:
    memcpy(p + at, s, n)
    return at + n


cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    const char* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)


cpdef bytes json_str(str value):
    """`value` as a JSON string literal: equals codec.json_string (pinned by tests/unit/test_codec.py).
    A channel name is nearly always ASCII with nothing to escape: that case is one scan and one
    allocation in C; anything else goes to the reference encoder."""
    cdef Py_ssize_t n, i
    cdef const unsigned char* p
    cdef unsigned char c
    cdef bytes out
    cdef char* o
    if PyUnicode_IS_COMPACT_ASCII(value):
        n = PyUnicode_GET_LENGTH(value)
        p = <const unsigned char*>PyUnicode_DATA(value)
        for i in range(n):
            c = p[i]
            if c < 0x20 or c == 0x22 or c == 0x5C or c == 0x3C or c == 0x3E or c == 0x26:
                break
        else:
            out = PyBytes_FromStringAndSize(NULL, n + 2)
            o = PyBytes_AS_STRING(out)
            o[0] = 0x22
            memcpy(o + 1, p, n)
            o[n + 1] = 0x22
            return out
    return _codec_json_string(value)


cpdef bytes pub_frame(bint v2, bytes channel_json, bytes data, uint64_t offset, bytes tags_json):
    """The framed publication push, built in one allocation.

    Equals `codec.frame_text(codec.pub_push(...))`: `channel_json` is the channel as a
    JSON string literal, `data` compact raw JSON without line feeds, `tags_json` a
    JSON object or None. Pinned to the pure encoder by tests/unit/test_codec.py.
    """
    cdef bytes off = str(offset).encode() if offset else b""
    cdef Py_ssize_t n_tags = PyBytes_GET_SIZE(tags_json) if tags_json is not None else 0
    cdef const char* head = b'{"channel":'
    cdef const char* mid = b',"pub":{"data":' if v2 else b',"data":{"data":'
    cdef Py_ssize_t n_head = 11
    cdef Py_ssize_t n_mid = 15 if v2 else 16
    cdef Py_ssize_t n = (n_head + PyBytes_GET_SIZE(channel_json) + n_mid + PyBytes_GET_SIZE(data)
                         + (10 + PyBytes_GET_SIZE(off) if offset else 0)
                         + (8 + n_tags if n_tags else 0) + 2)
    cdef Py_ssize_t h = _header_size(n)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, h + n)
    cdef char* p = PyBytes_AS_STRING(out)
    cdef Py_ssize_t at = h
    _write_header(p, n)
    at = _put(p, at, head, n_head)
    at = _put(p, at, PyBytes_AS_STRING(channel_json), PyBytes_GET_SIZE(channel_json))
    at = _put(p, at, mid, n_mid)
    at = _put(p, at, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    if offset:
        at = _put(p, at, b',"offset":', 10)
        at = _put(p, at, PyBytes_AS_STRING(off), PyBytes_GET_SIZE(off))
    if n_tags:
        at = _put(p, at, b',"tags":', 8)
        at = _put(p, at, PyBytes_AS_STRING(tags_json), n_tags)
    at = _put(p, at, b"}}", 2)
    return out


cdef class Conn(WSListener):
    """One WebSocket client: picows listener, output queue and the state node.py keeps.

    picows calls the on_ws_* methods; node.py reads and sets the public fields.
    Output goes through `Fanout.enqueue`, which keeps per-turn coalescing and
    `client_queue_max_size` accounting in one place.
    """

    # Fields: see _fastpath.pxd.

    def __cinit__(self):
        self.fd = -1
        self.size_limit = -1

    cpdef on_ws_connected(self, WSTransport transport):
        # An idle connection should cost as little as possible: the parsed upgrade request and
        # response (header multidicts) are not needed after the handshake, and picows's 1 KiB
        # frame-building buffer is only used for the rare pong or close frame (it grows on demand).
        transport.request = None
        transport.response = None
        transport._write_buffer = MemoryBuffer(64)
        real = getattr(transport.underlying_transport, "real", None)
        if real is not None:          # transport._Handover, used only for picows's connection_made
            transport.underlying_transport = real
        self.ws = transport
        self.tr = transport.underlying_transport
        self.fd = transport._socket      # picows already looked the socket up: no second lookup
        self.last_pong = monotonic()
        self.node.conn_open(self)

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef WSMsgType mt = frame.msg_type
        if mt == WSMsgType.PONG:
            self.last_pong = monotonic()
            return
        if mt == WSMsgType.PING:
            return                    # picows answers pings itself
        if mt == WSMsgType.CLOSE:
            self.node.conn_close_frame(self, frame.get_close_code() if frame.payload_size >= 2 else None)
            return
        self.msg_size += frame.payload_size
        if self.size_limit >= 0 and self.msg_size > self.size_limit:
            self.node.conn_too_big(self)
            return
        if self.state == CONNECTING and self.connect_request is None:
            if frame.fin and self.fragments is None:
                self.msg_size = 0
                self.node.conn_message(self, frame.get_payload_as_bytes())
                return
            if self.fragments is None:
                self.fragments = []
            self.fragments.append(frame.get_payload_as_bytes())
            if frame.fin:
                payload = b"".join(self.fragments)
                self.fragments = None
                self.msg_size = 0
                self.node.conn_message(self, payload)
            return
        if frame.fin:                 # later messages are read and dropped (01 §4.1)
            self.msg_size = 0

    cpdef on_ws_disconnected(self, WSTransport transport):
        self.state = CLOSED
        self.chunks = None
        self.node.conn_lost(self)

    cdef int _flush(self) except -1:
        """Write every pending frame with one writev; hand what the socket refuses to asyncio."""
        cdef list chunks = self.chunks
        cdef Py_ssize_t total = self.pending
        cdef Py_ssize_t count = PyList_GET_SIZE(chunks)
        cdef Py_ssize_t i, written, skip
        cdef iovec iov[MAX_IOV]
        cdef object item
        self.chunks = None
        self.pending = 0
        if self.state == CLOSED or self.tr is None:
            return 0
        if self.buffered:
            self._note_buffered()
        if self.buffered or self.fd < 0 or count > MAX_IOV:
            self.tr.write(b"".join(chunks))
            self._note_buffered()
            return 0
        if count == 1:
            # The many-channel case: one frame. send() skips writev's file-position lock.
            item = <object>PyList_GET_ITEM(chunks, 0)
            written = send(self.fd, PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item), MSG_NOSIGNAL)
        else:
            for i in range(count):
                item = <object>PyList_GET_ITEM(chunks, i)
                iov[i].iov_base = PyBytes_AS_STRING(item)
                iov[i].iov_len = PyBytes_GET_SIZE(item)
            written = writev(self.fd, iov, <int>count)
        if written == total:
            return 0
        if written < 0:
            if errno != EAGAIN and errno != EINTR:
                self.tr.abort()       # peer gone: connection_lost follows
                return 0
            written = 0
        # Keep the unsent tail in order behind any later writes.
        rest = b"".join(chunks)[written:] if count > 1 else (<bytes>chunks[0])[written:]
        self.tr.write(rest)
        self._note_buffered()
        return 0

    cdef void _note_buffered(self):
        cdef Py_ssize_t before = self.buffered
        self.buffered = self.tr.get_write_buffer_size()
        if self.buffered and not before:
            self.blocked_since = monotonic()

    def write_blocked_for(self, double now):
        """Seconds the socket has refused part of our output (0 when it takes everything)."""
        if self.buffered and self.tr is not None:
            self.buffered = self.tr.get_write_buffer_size()
        return now - self.blocked_since if self.buffered else 0.0

    def write_now(self, bytes data):
        """Queue `data` after any pending frames and write everything at once (close paths)."""
        if self.chunks is None:
            self.chunks = []
        self.chunks.append(data)
        self.pending += PyBytes_GET_SIZE(data)
        self._flush()

    def flush_now(self):
        if self.chunks is not None:
            self._flush()

    def close_transport(self, bint graceful=True):
        """Close TCP (no close frame): graceful flushes what asyncio still buffers."""
        if self.tr is not None:
            if graceful:
                self.tr.close()
            else:
                self.tr.abort()

    @property
    def queued(self):
        return self.pending + self.buffered


cdef class Fanout:
    """Per-worker output scheduler: coalesce frames per client, flush once per loop turn."""

    # Fields: see _fastpath.pxd.

    def __init__(self, loop, Py_ssize_t queue_max, on_slow):
        self.dirty = []
        self.slow = []
        self.call_soon = loop.call_soon
        self.flush_cb = self.flush
        self.queue_max = queue_max
        self.on_slow = on_slow

    cdef int _enqueue(self, Conn c, bytes frame) except -1:
        if c.state == CLOSED or c.close_reason is not None:
            return 0
        if c.chunks is None:
            c.chunks = [frame]
            self.dirty.append(c)
        else:
            c.chunks.append(frame)
        c.pending += PyBytes_GET_SIZE(frame)
        self.frames_sent += 1
        if c.pending + c.buffered > self.queue_max:
            self.slow.append(c)
        if not self.scheduled:
            self.scheduled = True
            self.call_soon(self.flush_cb)
        return 0

    cpdef enqueue(self, Conn c, bytes frame):
        self._enqueue(c, frame)

    cpdef Py_ssize_t deliver(self, object subscribers, bytes frame) except -1:
        """Append `frame` to every subscriber: a dict of connections (keys), or one Conn.

        A channel with a single subscriber (a personal channel, typically) is stored as the
        Conn itself: an idle connection then costs no dict per channel.
        """
        cdef Py_ssize_t pos = 0
        cdef PyObject* key
        cdef PyObject* value
        cdef Py_ssize_t n = 0
        if type(subscribers) is Conn:
            self._enqueue(<Conn>subscribers, frame)
            return 1
        while PyDict_Next(<dict>subscribers, &pos, &key, &value):
            self._enqueue(<Conn>key, frame)
            n += 1
        return n

    cpdef flush(self):
        cdef list dirty = self.dirty
        cdef Conn c
        self.dirty = []
        self.scheduled = False
        for c in dirty:
            if c.chunks is not None:
                self.flushes += 1
                c._flush()
                if c.buffered > self.queue_max:
                    self.slow.append(c)
        if self.slow:
            self.on_slow()


cdef class PingWheel:
    """Pings and read deadlines for every connection from one periodic callback.

    Connections are spread over `nslots` slots; each tick visits one slot, so a
    connection is visited once per ping interval. Closed connections are dropped
    from their slot lazily when it is next visited.
    """

    # Fields: see _fastpath.pxd.

    def __init__(self, Fanout fanout, Py_ssize_t nslots, double deadline, double write_timeout):
        self.slots = [[] for _ in range(max(1, nslots))]
        self.current = 0
        self.fanout = fanout
        self.deadline = deadline
        self.write_timeout = write_timeout
        self.dead = []
        self.stuck = []

    cpdef add(self, Conn c):
        # The slot just visited comes round again after a full interval.
        (<list>self.slots[self.current]).append(c)

    cpdef Py_ssize_t tick(self) except -1:
        """Visit the next slot: ping live connections, collect dead ones in `dead`."""
        cdef Py_ssize_t nslots = PyList_GET_SIZE(self.slots)
        cdef list slot, keep
        cdef Conn c
        cdef double now = monotonic()
        cdef Py_ssize_t pinged = 0
        self.current = (self.current + 1) % nslots
        slot = <list>self.slots[self.current]
        keep = []
        for c in slot:
            if c.state == CLOSED:
                continue
            if now - c.last_pong > self.deadline:
                self.dead.append(c)
                continue
            if c.buffered and c.write_blocked_for(now) > self.write_timeout:
                self.stuck.append(c)
                continue
            keep.append(c)
            if c.v2:
                self.fanout.enqueue(c, PING_V2 if c.state == CONNECTED else PING_V2_CONNECTING)
            else:
                self.fanout.enqueue(c, PING_V1)
            pinged += 1
        self.slots[self.current] = keep
        return pinged
