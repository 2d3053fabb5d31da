# cython: language_level=3, boundscheck=False, wraparound=False
"""A shared-memory broadcast ring: one writer process, any number of reader processes.

The mapped file holds a header (the published write cursor) and `capacity` bytes
of records `[u32 length][u16 target][payload][pad to 8]`; a length of 0xFFFFFFFF
marks a wrap to the start. Target 0xFFFF means every reader.

The writer never waits for readers. A reader that falls more than `capacity`
bytes behind has been lapped: `read` reports it (`lapped` is set and the reader
jumps to the current cursor), so loss is detected, never silent. Records are
copied out and validated afterwards, so a record overwritten while being copied
is caught the same way. Cursor stores and loads use release/acquire ordering.
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
    """
    uint64_t uniws_load(uint64_t* p) nogil
    void uniws_store(uint64_t* p, uint64_t v) nogil

cdef uint32_t WRAP = 0xFFFFFFFF
cdef Py_ssize_t HEADER = 64                  # the cursor, alone on its cache line
ALL = 0xFFFF


def create(str path, uint64_t capacity):
    """Create (or reset) the ring file; the supervisor does this once per worker."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, HEADER + capacity)
    finally:
        os.close(fd)


cdef class Ring:
    cdef object mm
    cdef object view
    cdef uint64_t* cursor
    cdef char* data
    cdef readonly uint64_t capacity
    cdef readonly uint64_t position  # write position (writer) or read position (reader)
    cdef public bint lapped          # set by read() when records were lost

    def __init__(self, str path, bint writer, bint from_start=False):
        cdef unsigned char[:] view
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            self.mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        view = self.mm
        self.view = view
        self.cursor = <uint64_t*>&view[0]
        self.data = <char*>&view[0] + HEADER
        self.capacity = size - HEADER
        # A (re)started writer continues after what was published. A reader of the first
        # generation of workers reads from the start (nothing it missed while starting up);
        # a restarted one starts at the end (what it missed was for its predecessor).
        self.position = 0 if from_start and not writer else uniws_load(self.cursor)

    def close(self):
        self.view = None
        self.mm.close()

    cpdef write(self, bytes message, uint16_t target=0xFFFF):
        """Append one record (visible to readers after `publish`)."""
        cdef uint64_t n = PyBytes_GET_SIZE(message)
        cdef uint64_t size = (6 + n + 7) & ~(<uint64_t>7)
        cdef uint64_t at = self.position % self.capacity
        if size > self.capacity // 2:
            raise ValueError("message larger than half the ring")
        if at + size > self.capacity:
            (<uint32_t*>(self.data + at))[0] = WRAP
            self.position += self.capacity - at
            at = 0
        (<uint32_t*>(self.data + at))[0] = <uint32_t>n
        (<uint16_t*>(self.data + at + 4))[0] = target
        memcpy(self.data + at + 6, PyBytes_AS_STRING(message), n)
        self.position += size

    cpdef publish(self):
        uniws_store(self.cursor, self.position)

    cpdef list read(self, uint16_t me):
        """Records published since the last call that are for everyone or for reader `me`."""
        cdef uint64_t end = uniws_load(self.cursor)
        cdef uint64_t start = self.position
        cdef uint64_t at
        cdef uint32_t n
        cdef uint16_t target
        cdef list out = []
        if end - start > self.capacity or end < start:
            self.position = end
            self.lapped = True
            return out
        while self.position < end:
            at = self.position % self.capacity
            n = (<uint32_t*>(self.data + at))[0]
            if n == WRAP:
                self.position += self.capacity - at
                continue
            target = (<uint16_t*>(self.data + at + 4))[0]
            if target == 0xFFFF or target == me:
                out.append(PyBytes_FromStringAndSize(self.data + at + 6, n))
            self.position += (6 + n + 7) & ~(<uint64_t>7)
        if uniws_load(self.cursor) - start > self.capacity:   # overwritten while we copied
            self.lapped = True
            return []
        return out
