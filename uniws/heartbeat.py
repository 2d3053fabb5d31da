"""A worker's heartbeat to its supervisor: 2 bytes (its index) on a shared pipe every interval.

The beat is sent by the worker's event loop, so it stops when the loop stops turning (a
hang, a busy loop, SIGSTOP) and not only when the process dies; the supervisor kills and
restarts a worker silent for `worker_hang_timeout`. Writes of 2 bytes to a pipe are atomic,
so beats of several workers never interleave; a full pipe (a supervisor not reading) drops
the beat instead of blocking the loop.
"""

from __future__ import annotations

import asyncio
import os
import struct

BEAT = struct.Struct("<H")


def beat_interval(hang_timeout: float) -> float:
    """Several beats per timeout, so one late loop turn is not a hang."""
    return max(0.05, min(1.0, hang_timeout / 5))


class Heartbeat:
    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, index: int, interval: float) -> None:
        self.loop = loop
        self.fd = fd
        self.message = BEAT.pack(index)
        self.interval = interval
        self.handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._beat()

    def _beat(self) -> None:
        try:
            os.write(self.fd, self.message)
        except (BlockingIOError, BrokenPipeError):
            pass
        self.handle = self.loop.call_later(self.interval, self._beat)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
