# cython: language_level=3, boundscheck=False, wraparound=False
"""A shared-memory broadcast ring (one writer, any number of readers), for the bus comparison.

Layout of the mapped file: an 8-byte write cursor, then `capacity` bytes of
records `[u32 length][payload][pad to 8]`; a length of 0xFFFFFFFF marks a wrap.
The writer never waits: a reader that falls more than `capacity` bytes behind
finds out (its cursor is older than write - capacity) and reports an overflow.
Wake-ups go through one eventfd per reader, written once per flush.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy

import mmap
import os

cdef extern from *:
    """
    static inline unsigned long long ring_load(unsigned long long *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void ring_store(unsigned long long *p, unsigned long long v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    """
    uint64_t ring_load(uint64_t* p) nogil
    void ring_store(uint64_t* p, uint64_t v) nogil

cdef uint32_t WRAP = 0xFFFFFFFF


class Overflow(Exception):
    pass


cdef class Ring:
    cdef object mm
    cdef char* base
    cdef uint64_t* cursor
    cdef char* data
    cdef uint64_t capacity
    cdef uint64_t position        # this process's write position (writer) or read position (reader)

    def __init__(self, str path, uint64_t capacity, bint create):
        cdef const unsigned char[:] view
        size = 8 + capacity
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
        if create:
            os.ftruncate(fd, size)
        self.mm = mmap.mmap(fd, size)
        os.close(fd)
        view = self.mm
        self.base = <char*>&view[0]
        self.cursor = <uint64_t*>self.base
        self.data = self.base + 8
        self.capacity = capacity
        self.position = ring_load(self.cursor)

    cpdef write(self, bytes message):
        cdef uint64_t n = PyBytes_GET_SIZE(message)
        cdef uint64_t size = (4 + n + 7) & ~(<uint64_t>7)
        cdef uint64_t at = self.position % self.capacity
        if at + size > self.capacity:            # no room before the end: mark a wrap
            (<uint32_t*>(self.data + at))[0] = WRAP
            self.position += self.capacity - at
            at = 0
        (<uint32_t*>(self.data + at))[0] = <uint32_t>n
        memcpy(self.data + at + 4, PyBytes_AS_STRING(message), n)
        self.position += size

    cpdef publish(self):
        """Make everything written so far visible to readers."""
        ring_store(self.cursor, self.position)

    cpdef list read(self):
        """Every record published since the last read; raises Overflow if the writer lapped us."""
        cdef uint64_t end = ring_load(self.cursor)
        cdef uint64_t start = self.position
        cdef uint64_t at
        cdef uint32_t n
        cdef list out = []
        while self.position < end:
            if end - self.position > self.capacity:
                self.position = end
                raise Overflow()
            at = self.position % self.capacity
            n = (<uint32_t*>(self.data + at))[0]
            if n == WRAP:
                self.position += self.capacity - at
                continue
            out.append(PyBytes_FromStringAndSize(self.data + at + 4, n))
            self.position += (4 + n + 7) & ~(<uint64_t>7)
        # A record copied while the writer lapped us may be torn: validate after copying.
        if ring_load(self.cursor) - start > self.capacity:
            raise Overflow()
        return out
