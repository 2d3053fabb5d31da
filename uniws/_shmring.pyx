# cython: language_level=3, boundscheck=False, wraparound=False
"""A shared-memory broadcast ring: one writer process, any number of reader processes.

The mapped file holds a header of two cursors, each alone on its cache line, and
`capacity` bytes of records `[u32 length][u16 target][payload][pad to 8]`; a length
of 0xFFFFFFFF marks a wrap to the start. Target 0xFFFF means every reader.

- `published`: readers may read every record before it (the writer stores it once
  per loop turn, in `publish`).
- `reserved`: the writer may be writing anything before it. It is stored before
  each record is copied in, so it runs ahead of `published` within a loop turn.

The writer never waits for readers. A reader reads from its position up to
`published`, copies the records out, then checks `reserved`: if the writer has
reserved past its start + capacity, what it copied may have been overwritten
(even by writes not yet published), so it reports `lapped` and drops the copies,
seqlock-style. Every record length is checked against the ring and the published
end before use: a length that does not fit is reported the same way, never
followed. So loss or damage is always detected, never silent. Stores of the
cursors are release, loads acquire, with a fence between copying and the check.
"""

import mmap
import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from *:
    """
    static inline unsigned long long uniws_load(unsigned long long *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void uniws_store(unsigned long long *p, unsigned long long v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline void uniws_release_fence(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
    static inline void uniws_acquire_fence(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
    """
    uint64_t uniws_load(uint64_t* p) nogil
    void uniws_store(uint64_t* p, uint64_t v) nogil
    void uniws_release_fence() nogil
    void uniws_acquire_fence() nogil

cdef uint32_t WRAP = 0xFFFFFFFF
cdef Py_ssize_t RESERVED_AT = 64             # offset of the reserved cursor (own cache line)
cdef Py_ssize_t HEADER = 128
cdef uint64_t MIN_CAPACITY = 64
ALL = 0xFFFF
HEADER_BYTES = HEADER


class RingClosed(Exception):
    """The ring was used after `close()`."""


class MessageTooLarge(ValueError):
    """A record larger than half the ring (it could lap every reader by itself)."""


def file_size(uint64_t capacity):
    """Bytes a ring file of `capacity` takes (header included)."""
    return HEADER + capacity


def create(str path, uint64_t capacity):
    """Create (or reset) the ring file with every byte reserved up front (no page is
    allocated later, so a full /dev/shm fails here, not with SIGBUS in a worker).
    The supervisor does this once per worker; raises OSError (ENOSPC) when it does not fit."""
    if capacity < MIN_CAPACITY or capacity % 8:
        raise ValueError(f"ring capacity must be a multiple of 8 and at least {MIN_CAPACITY}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, HEADER + capacity)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


cdef inline uint64_t record_size(uint64_t n) nogil:
    return (6 + n + 7) & ~(<uint64_t>7)


cdef class Ring:
    cdef object mm
    cdef object view
    cdef uint64_t* published_at      # NULL once closed
    cdef uint64_t* reserved_at
    cdef char* data
    cdef readonly uint64_t capacity
    cdef readonly uint64_t position  # write position (writer) or read position (reader)
    cdef readonly uint64_t reserved  # writer: the last reserved cursor it stored
    cdef readonly uint64_t published # writer: the last published cursor it stored
    cdef public bint lapped          # set by read() when records were lost or damaged

    def __init__(self, str path, bint writer, bint from_start=False):
        cdef unsigned char[:] view
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER + MIN_CAPACITY or (size - HEADER) % 8:
                raise ValueError(f"{path} is not a ring file ({size} bytes)")
            self.mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        view = self.mm
        self.view = view
        self.published_at = <uint64_t*>&view[0]
        self.reserved_at = <uint64_t*>&view[RESERVED_AT]
        self.data = <char*>&view[0] + HEADER
        self.capacity = size - HEADER
        # A (re)started writer continues after what was published, and keeps the reserved
        # cursor where its predecessor left it (it only ever grows): a reader whose unread
        # records the dead writer overwrote still sees it. A reader of the first generation
        # of workers reads from the start (nothing it missed while starting up); a restarted
        # one starts at the end (what it missed was for its predecessor).
        self.published = uniws_load(self.published_at)
        self.reserved = uniws_load(self.reserved_at)
        self.position = 0 if from_start and not writer else self.published

    def close(self):
        """Unmap; any later call raises RingClosed (no pointer into the unmapped file survives)."""
        self.published_at = NULL
        self.reserved_at = NULL
        self.data = NULL
        self.view = None
        if self.mm is not None:
            self.mm.close()
            self.mm = None

    @property
    def closed(self):
        return self.data == NULL

    @property
    def pending(self):
        """Bytes written since the last publish (writer)."""
        return self.position - self.published

    @property
    def max_message(self):
        """The longest message `write` accepts."""
        return ((self.capacity // 2) & ~(<uint64_t>7)) - 6

    cdef inline int _check_open(self) except -1:
        if self.data == NULL:
            raise RingClosed("the bus ring is closed")
        return 0

    cpdef write(self, bytes message, uint16_t target=0xFFFF):
        """Append one record (visible to readers after `publish`). Raises MessageTooLarge
        for a message over `max_message` before writing anything."""
        self._check_open()
        cdef uint64_t n = PyBytes_GET_SIZE(message)
        cdef uint64_t size = record_size(n)
        cdef uint64_t at = self.position % self.capacity
        cdef uint64_t skip = 0
        cdef uint64_t end
        if size > self.capacity // 2:
            raise MessageTooLarge(f"a bus message of {n} bytes is over the ring's limit of "
                                  f"{self.max_message} bytes")
        if at + size > self.capacity:
            skip = self.capacity - at
        end = self.position + skip + size
        if end > self.reserved:
            # Readers must see the reservation before any byte of the record changes.
            self.reserved = end
            uniws_store(self.reserved_at, end)
            uniws_release_fence()
        if skip:
            (<uint32_t*>(self.data + at))[0] = WRAP
            self.position += skip
            at = 0
        (<uint32_t*>(self.data + at))[0] = <uint32_t>n
        (<uint16_t*>(self.data + at + 4))[0] = target
        memcpy(self.data + at + 6, PyBytes_AS_STRING(message), n)
        self.position += size

    cpdef publish(self):
        self._check_open()
        self.published = self.position
        uniws_store(self.published_at, self.position)

    cpdef list read(self, uint16_t me):
        """Records published since the last call that are for everyone or for reader `me`.
        Sets `lapped` (and returns []) when records since the last call were lost or damaged;
        the reader then continues at the published end."""
        self._check_open()
        cdef uint64_t end = uniws_load(self.published_at)
        cdef uint64_t start = self.position
        cdef uint64_t capacity = self.capacity
        cdef uint64_t pos = start
        cdef uint64_t at, size
        cdef uint32_t n
        cdef uint16_t target
        cdef bint damaged = False
        cdef list out = []
        if end == start:
            return out
        if end < start or end - start > capacity or uniws_load(self.reserved_at) - start > capacity:
            return self._lapped(end)
        while pos < end:
            at = pos % capacity
            n = (<uint32_t*>(self.data + at))[0]
            if n == WRAP:
                pos += capacity - at
                if pos > end:
                    damaged = True
                    break
                continue
            size = record_size(n)
            if at + size > capacity or pos + size > end:
                damaged = True                     # a torn or overwritten header: never follow it
                break
            target = (<uint16_t*>(self.data + at + 4))[0]
            if target == 0xFFFF or target == me:
                out.append(PyBytes_FromStringAndSize(self.data + at + 6, n))
            pos += size
        uniws_acquire_fence()                      # the copies above happen before this check
        if damaged or uniws_load(self.reserved_at) - start > capacity:
            return self._lapped(end)
        self.position = end
        return out

    cdef list _lapped(self, uint64_t end):
        self.position = end
        self.lapped = True
        return []
