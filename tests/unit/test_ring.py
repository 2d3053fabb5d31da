"""The shared-memory ring with a writer and readers in one process: every loss or damage is
reported (`lapped`), never returned as data."""

from __future__ import annotations

import mmap
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uniws import _shmring
from uniws._shmring import ALL, HEADER_BYTES, MessageTooLarge, Ring, RingClosed

CAPACITY = 1024


@pytest.fixture
def ring_path(tmp_path):
    path = str(tmp_path / "w.ring")
    _shmring.create(path, CAPACITY)
    return path


def record(n: int, size: int = 10) -> bytes:
    """A message that says which one it is: n, then filler up to `size` bytes."""
    return struct.pack("<I", n) + bytes([n % 251]) * (size - 4)


def record_bytes(size: int) -> int:
    return (6 + size + 7) & ~7


def poke(path: str, offset: int, raw: bytes) -> None:
    """Write bytes into the ring's data area as a third party would (a torn or garbage header)."""
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        mm[HEADER_BYTES + offset:HEADER_BYTES + offset + len(raw)] = raw


def test_file_is_reserved_up_front(ring_path):
    st_ = os.stat(ring_path)
    assert st_.st_size == HEADER_BYTES + CAPACITY
    assert st_.st_blocks * 512 >= st_.st_size          # allocated, not sparse


def test_records_in_order_and_by_target(ring_path):
    writer, reader = Ring(ring_path, True), Ring(ring_path, False, True)
    writer.write(b"all-1")
    writer.write(b"for-2", 2)
    writer.write(b"for-3", 3)
    writer.write(b"all-2", ALL)
    assert reader.read(2) == []                         # nothing published yet
    writer.publish()
    assert reader.read(2) == [b"all-1", b"for-2", b"all-2"] and not reader.lapped
    assert reader.read(2) == []


def test_overrun_within_one_turn_is_detected(ring_path):
    """Published records overwritten by writes of the same turn, not yet published."""
    writer, reader = Ring(ring_path, True), Ring(ring_path, False, True)
    writer.write(record(0, 100))
    writer.publish()
    n = 1
    while writer.position - 0 <= CAPACITY:            # lap the reader's start, no publish
        writer.write(record(n, 100))
        n += 1
    assert reader.read(0) == [] and reader.lapped


def test_unpublished_writes_that_do_not_reach_the_reader_are_harmless(ring_path):
    writer, reader = Ring(ring_path, True), Ring(ring_path, False, True)
    writer.write(record(0, 100))
    writer.publish()
    while writer.position + record_bytes(100) <= CAPACITY:
        writer.write(record(1, 100))
    assert reader.read(0) == [record(0, 100)] and not reader.lapped


def test_lapped_exactly_at_the_boundary(ring_path):
    """A reader exactly one ring behind still reads everything; one record more is a lap."""
    size = 58                                         # 64-byte records: 16 fill the ring exactly
    assert record_bytes(size) * 16 == CAPACITY
    writer = Ring(ring_path, True)
    for n in range(3):
        writer.write(record(n, size))
    writer.publish()
    reader = Ring(ring_path, False)                   # starts at the published end (3 records in)
    for n in range(3, 19):
        writer.write(record(n, size))
    writer.publish()
    assert writer.position - reader.position == CAPACITY
    assert reader.read(0) == [record(n, size) for n in range(3, 19)] and not reader.lapped

    late = Ring(ring_path, False)
    for n in range(19, 35):
        writer.write(record(n, size))
    writer.publish()
    assert late.read(0) == [record(n, size) for n in range(19, 35)] and not late.lapped
    writer.write(record(35, size))                    # one more, even unpublished: a lap
    assert reader.read(0) == [] and reader.lapped


def test_torn_header_is_never_followed(ring_path):
    writer, reader = Ring(ring_path, True), Ring(ring_path, False, True)
    writer.write(record(0, 20))
    writer.write(record(1, 20))
    writer.publish()
    poke(ring_path, record_bytes(20), b"\xff\xff\xff\x7f")       # second header: a huge length
    assert reader.read(0) == [] and reader.lapped
    writer.write(record(2, 20))
    writer.publish()
    reader.lapped = False
    assert reader.read(0) == [record(2, 20)] and not reader.lapped  # continues after the damage


@pytest.mark.parametrize("length", [1 << 31, CAPACITY, CAPACITY - 6, 0xFFFFFFFE, 40])
def test_garbage_length_is_reported(ring_path, length):
    writer, reader = Ring(ring_path, True), Ring(ring_path, False, True)
    writer.write(record(0, 20))
    writer.publish()
    poke(ring_path, 0, struct.pack("<I", length))
    assert reader.read(0) == [] and reader.lapped


def test_wrap_marker_beyond_the_published_end_is_damage(ring_path):
    writer, reader = Ring(ring_path, True), Ring(ring_path, False, True)
    writer.write(record(0, 20))
    writer.publish()
    poke(ring_path, 0, b"\xff\xff\xff\xff")
    assert reader.read(0) == [] and reader.lapped


def test_restarted_writer_keeps_the_evidence_of_an_overrun(ring_path):
    """A writer that died after overwriting unread records: its successor must not hide it."""
    writer, reader = Ring(ring_path, True), Ring(ring_path, False, True)
    writer.write(record(0, 100))
    writer.publish()
    while writer.position <= CAPACITY:
        writer.write(record(1, 100))                  # never published: the writer dies here
    writer.close()
    successor = Ring(ring_path, True)
    successor.write(record(2, 10))
    successor.publish()
    assert reader.read(0) == [] and reader.lapped


def test_message_over_half_the_ring_is_refused_before_writing(ring_path):
    writer = Ring(ring_path, True)
    writer.write(b"x" * writer.max_message)
    before = writer.position
    with pytest.raises(MessageTooLarge):
        writer.write(b"x" * (writer.max_message + 1))
    assert writer.position == before


def test_use_after_close_raises(ring_path):
    writer, reader = Ring(ring_path, True), Ring(ring_path, False)
    writer.close()
    reader.close()
    reader.close()                                    # idempotent
    assert writer.closed
    with pytest.raises(RingClosed):
        writer.write(b"x")
    with pytest.raises(RingClosed):
        writer.publish()
    with pytest.raises(RingClosed):
        reader.read(0)


def test_not_a_ring_file(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"\0" * 10)
    with pytest.raises(ValueError):
        Ring(str(path), False)
    with pytest.raises(ValueError):
        _shmring.create(str(tmp_path / "odd"), 1001)


# -- property: random writes, publishes and reads ----------------------------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 500), st.sampled_from([ALL, 1, 2])),
    st.tuples(st.just("publish")),
    st.tuples(st.just("read"), st.sampled_from([0, 1])),
), max_size=120)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_reader_gets_exactly_the_records_or_is_told_it_lapped(tmp_path_factory, steps):
    path = str(tmp_path_factory.mktemp("ring") / "w.ring")
    _shmring.create(path, CAPACITY)
    writer = Ring(path, True)
    readers = [Ring(path, False, True), Ring(path, False, True)]   # reader i has index i + 1
    written: list[tuple[int, bytes, int]] = []        # (end position, message, target), in order
    published = 0
    n = 0
    for step in steps:
        if step[0] == "write":
            size, target = step[1], step[2]
            message = record(n, max(size, 4)) if size >= 4 else bytes([n % 256]) * size
            n += 1
            if record_bytes(len(message)) > CAPACITY // 2:
                with pytest.raises(MessageTooLarge):
                    writer.write(message, target)
                continue
            writer.write(message, target)
            written.append((writer.position, message, target))
        elif step[0] == "publish":
            writer.publish()
            published = writer.position
        else:
            reader = readers[step[1]]
            me = step[1] + 1
            start = reader.position
            got = reader.read(me)
            if reader.lapped:
                assert got == []
                assert writer.position - start > CAPACITY   # a lap only when it really happened
                reader.lapped = False
            else:
                expected = [m for end, m, t in written if start < end <= published and t in (ALL, me)]
                assert got == expected
            assert reader.position == published
    writer.close()
    for reader in readers:
        reader.close()


# -- ring files for a node: reserved up front, a clear error when they do not fit ---------------

def test_bus_files_that_do_not_fit_are_a_clear_error(tmp_path):
    from uniws.bus import BusFiles, BusSpaceError
    fs = os.statvfs(tmp_path)
    too_big = (fs.f_bavail * fs.f_frsize) & ~7                   # two of these never fit
    with pytest.raises(BusSpaceError) as raised:
        BusFiles.create(str(tmp_path), 2, ring_bytes=too_big)
    message = raised.value.message
    assert str(tmp_path) in message and "2 workers" in message and "--shm-size" in message
    assert f"{2 * (too_big + HEADER_BYTES) / (1 << 20):.1f} MiB" in message
    assert os.listdir(tmp_path) == []                            # nothing left behind


def test_allocation_failure_while_creating_is_the_same_error(tmp_path):
    """posix_fallocate itself refusing (here: the file size limit) after the free-space check."""
    import resource
    import signal
    from uniws.bus import BusFiles, BusSpaceError
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (HEADER_BYTES + 4096, limit[1]))
    try:
        with pytest.raises(BusSpaceError):
            BusFiles.create(str(tmp_path), 2, ring_bytes=1 << 20)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, previous)
    assert os.listdir(tmp_path) == []
