"""The ZeroMQ ipc mesh that was uniws's first bus, kept as the alternative bench/bus_bench.py measures.

Every worker binds one PULL inbox and connects a PUSH socket to each peer's
inbox. A message is encoded once; `broadcast` queues the same bytes for every
peer. Messages queued during one loop turn leave as one ZeroMQ frame per peer
(a batch), which is what keeps the bus cheap under load.

A batch carries the sender's index and a per-(sender, receiver) sequence
number. Sends never block: when a peer's queue is full (SNDHWM) the batch is
dropped and counted, and the receiver, seeing the sequence jump, reports the
gap to its handler — so a stalled worker cannot make the others grow without
bound, and loss is never silent. A heartbeat batch each tick lets a receiver
notice a gap even when traffic stops.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Protocol

import zmq

log = logging.getLogger("uniws.bus")

_BATCH = struct.Struct("<HQ")      # sender index, batch sequence number
_LEN = struct.Struct("<I")
HWM = 20_000                       # batches queued per peer before sends are dropped


class BusHandler(Protocol):
    def on_bus_message(self, sender: int, message: bytes) -> None: ...

    def on_bus_gap(self, sender: int, lost: int) -> None: ...


def ipc_endpoint(ipc_dir: str, index: int) -> str:
    return f"ipc://{ipc_dir}/w{index}.ipc"


class Bus:
    def __init__(self, loop: asyncio.AbstractEventLoop, index: int, count: int, ipc_dir: str,
                 handler: BusHandler, hwm: int = HWM) -> None:
        self.loop = loop
        self.index = index
        self.count = count
        self.handler = handler
        self.context = zmq.Context(io_threads=1)
        self.inbox = self.context.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.RCVHWM, hwm)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.bind(ipc_endpoint(ipc_dir, index))
        self.peers: dict[int, zmq.Socket] = {}
        for peer in range(count):
            if peer != index:
                sock = self.context.socket(zmq.PUSH)
                sock.setsockopt(zmq.SNDHWM, hwm)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(ipc_endpoint(ipc_dir, peer))
                self.peers[peer] = sock
        self.queued: dict[int, list[bytes]] = {peer: [] for peer in self.peers}
        self.seq_out = {peer: 0 for peer in self.peers}
        self.seq_in: dict[int, int] = {}
        self.flush_scheduled = False
        self.sent_messages = 0
        self.sent_batches = 0
        self.received_messages = 0
        self.dropped_batches = 0
        self.gaps = 0
        loop.add_reader(self.inbox.getsockopt(zmq.FD), self._on_readable)

    def close(self) -> None:
        self.loop.remove_reader(self.inbox.getsockopt(zmq.FD))
        for sock in self.peers.values():
            sock.close(0)
        self.inbox.close(0)
        self.context.term()

    # -- sending ---------------------------------------------------------------------------

    def send(self, peer: int, message: bytes) -> None:
        self.queued[peer].append(message)
        self._schedule()

    def broadcast(self, message: bytes) -> None:
        for queue in self.queued.values():
            queue.append(message)
        if self.queued:
            self._schedule()

    def _schedule(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        for peer, queue in self.queued.items():
            if queue:
                self.queued[peer] = []
                self._send_batch(peer, queue)

    def heartbeat(self) -> None:
        """An empty batch to each peer, so a receiver notices lost batches without traffic."""
        for peer in self.peers:
            if not self.queued[peer]:
                self._send_batch(peer, [])

    def _send_batch(self, peer: int, messages: list[bytes]) -> None:
        self.seq_out[peer] += 1
        parts = [_BATCH.pack(self.index, self.seq_out[peer])]
        for message in messages:
            parts.append(_LEN.pack(len(message)))
            parts.append(message)
        try:
            self.peers[peer].send(b"".join(parts), zmq.NOBLOCK)
        except zmq.Again:
            self.dropped_batches += 1
            log.warning("bus queue to worker %d is full: dropped a batch of %d messages", peer, len(messages))
            return
        self.sent_batches += 1
        self.sent_messages += len(messages)

    # -- receiving -------------------------------------------------------------------------

    def _on_readable(self) -> None:
        inbox = self.inbox
        # The ZeroMQ fd is edge-triggered: drain while the socket says it has input.
        while inbox.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                batch = inbox.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._dispatch(batch)

    def _dispatch(self, batch: bytes) -> None:
        sender, seq = _BATCH.unpack_from(batch, 0)
        expected = self.seq_in.get(sender)
        self.seq_in[sender] = seq
        if expected is not None and seq != expected + 1 and seq > expected:
            self.gaps += 1
            self.handler.on_bus_gap(sender, seq - expected - 1)
        view = memoryview(batch)
        pos = _BATCH.size
        end = len(batch)
        handler = self.handler
        while pos < end:
            (size,) = _LEN.unpack_from(batch, pos)
            pos += 4
            self.received_messages += 1
            try:
                handler.on_bus_message(sender, bytes(view[pos:pos + size]))
            except Exception:
                log.exception("bus message from worker %d failed", sender)
            pos += size

    def stats(self) -> dict:
        return {"sent_messages": self.sent_messages, "sent_batches": self.sent_batches,
                "received_messages": self.received_messages, "dropped_batches": self.dropped_batches,
                "gaps": self.gaps}
