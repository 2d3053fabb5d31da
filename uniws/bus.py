"""The inter-worker bus: one shared-memory ring per worker, eventfd doorbells.

Each worker writes every message it sends into its own ring (`_shmring.Ring`):
a broadcast once for all readers, a message for one peer tagged with that
peer's index. Messages written during one loop turn become visible together
(one cursor store) and each peer's doorbell eventfd is rung once, so the bus
batches by itself under load. Every worker reads the rings of all others when
its doorbell rings.

The writer never waits: a reader that falls a whole ring behind is lapped, sees
it, and reports the gap to its handler (the node then reconnects its clients so
they recover) — a stalled worker cannot make the others grow without bound, and
loss is never silent. Measured against a ZeroMQ ipc mesh (bench/bus_bench.py):
about 2.5x the throughput and half the latency between two workers.

The supervisor creates the ring files and the eventfds before forking, so a
restarted worker finds them again: as a writer it continues after what was
published, as a reader it starts at the current end. The files' memory is
reserved when they are created: a /dev/shm too small for them is an error at
startup that names the size needed, never a SIGBUS in a worker later.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from dataclasses import dataclass
from typing import Protocol

from . import _shmring

log = logging.getLogger("uniws.bus")

RING_BYTES = 32 << 20
MIN_RING_BYTES = 4 << 20     # the smallest ring the default may shrink to (a 2 MiB message limit)


class BusHandler(Protocol):
    def on_bus_message(self, sender: int, message: bytes) -> None: ...

    def on_bus_gap(self, sender: int) -> None: ...


class BusSpaceError(Exception):
    """The ring files do not fit where they are to be created; `message` says what is needed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


@dataclass(frozen=True, slots=True)
class BusFiles:
    """What the supervisor prepares for `count` workers: ring files and doorbells."""

    directory: str
    doorbells: tuple[int, ...]

    def ring(self, index: int) -> str:
        return os.path.join(self.directory, f"worker{index}.ring")

    @classmethod
    def create(cls, directory: str, count: int, ring_bytes: int | None = None) -> "BusFiles":
        """Create the ring files with all their memory reserved now (a worker never meets a
        full /dev/shm later, as a SIGBUS). Raises BusSpaceError naming the size needed.

        By default each ring is RING_BYTES; where that does not fit (Docker's 64 MiB /dev/shm
        with 2 workers) the rings shrink to the largest power of two that fits in three
        quarters of the free space, down to MIN_RING_BYTES, with a warning: a smaller ring
        only means a reader is lapped (and its clients reconnect) after a shorter stall."""
        fs = os.statvfs(directory)
        free = fs.f_bavail * fs.f_frsize
        wanted = RING_BYTES if ring_bytes is None else ring_bytes
        if ring_bytes is None and count * _shmring.file_size(RING_BYTES) > free:
            fitting = RING_BYTES
            while fitting > MIN_RING_BYTES and count * _shmring.file_size(fitting) > free * 3 // 4:
                fitting //= 2
            if count * _shmring.file_size(fitting) <= free * 3 // 4:
                log.warning("only %s of shared memory is free in %s: the bus rings are %s each instead of %s "
                            "(publications over half a ring are refused; give /dev/shm more room, e.g. "
                            "Docker --shm-size=%dm, for the default)", _mib(free), directory, _mib(fitting),
                            _mib(RING_BYTES), (count * RING_BYTES >> 20) + 32)
                ring_bytes = fitting
        ring_bytes = ring_bytes or RING_BYTES
        need = count * _shmring.file_size(ring_bytes)
        created = []
        try:
            if free < need:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            for index in range(count):
                path = os.path.join(directory, f"worker{index}.ring")
                _shmring.create(path, ring_bytes)
                created.append(path)
        except OSError as exc:
            for path in created:
                os.unlink(path)
            if exc.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise
            need = count * _shmring.file_size(wanted)
            raise BusSpaceError(
                f"the inter-worker bus needs {_mib(need)} of shared memory in {directory} "
                f"({count} workers x {_mib(wanted)} ring each) but only {_mib(free)} is free: "
                f"give /dev/shm more room (Docker: --shm-size={(need >> 20) + 32}m) or run fewer "
                f"workers (option workers)") from None
        doorbells = tuple(os.eventfd(0, os.EFD_NONBLOCK) for _ in range(count))
        return cls(directory, doorbells)


class Bus:
    def __init__(self, loop: asyncio.AbstractEventLoop, index: int, files: BusFiles,
                 handler: BusHandler, *, first_start: bool = True) -> None:
        self.loop = loop
        self.index = index
        self.handler = handler
        self.doorbells = files.doorbells
        self.peers = [peer for peer in range(len(files.doorbells)) if peer != index]
        self.ring = _shmring.Ring(files.ring(index), True)
        self.inbound = {peer: _shmring.Ring(files.ring(peer), False, first_start) for peer in self.peers}
        self.flush_scheduled = False
        self.early_publish = self.ring.capacity // 4
        self.before_flush = None                 # called first at each flush; may send more
        self.sent_messages = 0
        self.received_messages = 0
        self.gaps = 0
        loop.add_reader(self.doorbells[index], self._on_doorbell)
        loop.call_soon(self._on_doorbell)        # whatever was sent before we listened

    def close(self) -> None:
        """Publish what this turn wrote, stop reading and unmap the rings: a later send
        raises RingClosed."""
        if self.flush_scheduled:
            self.flush()
        self.loop.remove_reader(self.doorbells[self.index])
        self.ring.close()
        for ring in self.inbound.values():
            ring.close()

    # -- sending ---------------------------------------------------------------------------

    def send(self, peer: int, message: bytes) -> None:
        """Raises MessageTooLarge (nothing sent) for a message over `max_message`."""
        self.ring.write(message, peer)
        self.sent_messages += 1
        self.schedule()

    def broadcast(self, message: bytes) -> None:
        self.ring.write(message, _shmring.ALL)
        self.sent_messages += 1
        self.schedule()

    @property
    def max_message(self) -> int:
        return self.ring.max_message

    def schedule(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)
        elif self.ring.pending > self.early_publish:
            # A turn that writes more than a ring would lap every reader by itself: let
            # them read what is there now (order is kept; the turn's barriers still follow).
            self._publish()

    def flush(self) -> None:
        """Publish this turn's messages and ring every peer once."""
        if self.before_flush is not None:
            self.before_flush()
        self.flush_scheduled = False
        self._publish()

    def _publish(self) -> None:
        self.ring.publish()
        for peer in self.peers:
            os.eventfd_write(self.doorbells[peer], 1)

    # -- receiving -------------------------------------------------------------------------

    def _on_doorbell(self) -> None:
        try:
            os.eventfd_read(self.doorbells[self.index])
        except BlockingIOError:
            pass
        handler = self.handler
        for sender, ring in self.inbound.items():
            messages = ring.read(self.index)
            if ring.lapped:
                ring.lapped = False
                self.gaps += 1
                handler.on_bus_gap(sender)
            self.received_messages += len(messages)
            for message in messages:
                try:
                    handler.on_bus_message(sender, message)
                except Exception:
                    log.exception("bus message from worker %d failed", sender)

    def stats(self) -> dict:
        return {"sent_messages": self.sent_messages, "received_messages": self.received_messages,
                "gaps": self.gaps}
