"""Requests between workers over the bus: ids, answers, timeouts, posts and their barriers.

A request gets one answer (or fails with error 100 after `timeout`). A post is a
request whose success is not answered, only its failure: a batch of publishes to
channels without history costs one answer per owner and loop turn instead of one
each. At each bus flush, every worker that was posted to in this turn gets one
barrier request after the posts (the bus keeps order), and its answer means the
worker has served them all: posts that failed were answered with their error
before it, the others succeed then. Each post has its own future, so a failed
one fails exactly the command that sent it.

Wire format (each a bus message, one kind byte first):
  R  request  <II>   request id, len(json) + json + raw tail; always answered
  Q  post     <III>  barrier id, index in the barrier's turn, len(json) + json + raw tail
  A  answer   <IBI>  request id, status (0 ok, else the API error code), len(json) + json + raw tail
  F  failed   <IIB>  barrier id, index, status: the answer to a post that failed
Other posted kinds (`post_message`, e.g. cluster.py's U) start with the same <II> barrier id
and index and are answered the same way. A turn's posts to one worker share the id of the barrier that follows them, so a post
costs no id and no table entry of its own.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
import time
from typing import Any, Callable

import orjson

from ._shmring import MessageTooLarge
from .errors import ApiError

log = logging.getLogger("uniws.rpc")

REQUEST = 0x52      # R
POST = 0x51         # Q
ANSWER = 0x41       # A
FAILED = 0x46       # F
_REQ = struct.Struct("<II")
_POST = struct.Struct("<III")
_POSTED = struct.Struct("<II")      # the head every posted kind starts with: barrier id, index
_LEN = struct.Struct("<I")
_ANS = struct.Struct("<IBI")
_FAILED = struct.Struct("<IIB")
REQUEST_TIMEOUT = 5.0
_BARRIER = orjson.dumps({"op": "barrier"})

ANSWERED = object()     # what a handler returns when it answered by other means (see Cluster)

# serve(sender, request id (0 for a post), args, tail) -> (result, tail) | ANSWERED; raises ApiError
Serve = Callable[[int, int, dict, bytes], Any]


def split(message: bytes, head: struct.Struct) -> tuple[tuple, Any, bytes]:
    """(header fields, decoded JSON, raw tail) of a message `kind + head + json + tail`."""
    fields = head.unpack_from(message, 1)
    start = 1 + head.size
    end = start + fields[-1]
    return fields, orjson.loads(message[start:end]), message[end:]


class Rpc:
    def __init__(self, loop: asyncio.AbstractEventLoop, serve: Serve, timeout: float = REQUEST_TIMEOUT,
                 posted: Any = None) -> None:
        self.loop = loop
        self.serve = serve
        self.timeout = timeout
        self.posted = posted                   # the result of a post that succeeded
        self.bus = None                        # set by attach(); a Bus
        self._next_id = 0
        # request id -> (future, shape: (result, tail) -> the future's result, or None for the pair)
        self._waiting: dict[int, tuple[asyncio.Future, Callable | None]] = {}
        self._timeouts: collections.deque[tuple[float, int]] = collections.deque()   # FIFO: one timeout
        self._turn: dict[int, tuple[int, list]] = {}   # worker -> (barrier id, futures of this turn's posts)
        self._barriers: dict[int, list] = {}           # barrier id -> futures of the posts it confirms

    def attach(self, bus) -> None:
        self.bus = bus
        bus.before_flush = self._send_barriers

    def _new_id(self) -> int:
        self._next_id = self._next_id % 0xFFFFFFFF + 1     # 1..2**32-1
        return self._next_id

    def _send(self, worker: int, message: bytes) -> None:
        try:
            self.bus.send(worker, message)
        except MessageTooLarge as exc:
            log.warning("request not sent to worker %d: %s", worker, exc)
            raise ApiError(100) from None

    # -- sending -------------------------------------------------------------------------------

    def request(self, worker: int, op: str, args: dict, tail: bytes = b"",
                shape: Callable[[Any, bytes], Any] | None = None) -> asyncio.Future:
        """Send a request now (so it keeps its place in bus order); the future of (result, tail),
        or of `shape(result, tail)`. Raises ApiError(100), nothing sent, for a request too large
        for the bus."""
        request_id = self._new_id()
        body = orjson.dumps({"op": op, **args})
        self._send(worker, b"R" + _REQ.pack(request_id, len(body)) + body + tail)
        future = self.loop.create_future()
        self._waiting[request_id] = (future, shape)
        self._timeouts.append((time.monotonic() + self.timeout, request_id))
        return future

    def post(self, worker: int, op: str, args: dict, tail: bytes = b"") -> asyncio.Future:
        """Send a request answered only if it fails; its future is done (result `posted`) when
        this turn's barrier to `worker` is answered, or fails with the worker's error."""
        body = orjson.dumps({"op": op, **args})
        return self.post_message(worker, b"Q", _LEN.pack(len(body)) + body + tail)

    def post_message(self, worker: int, kind: bytes, body: bytes) -> asyncio.Future:
        """`post` of a message of the caller's own kind: `kind`, <II> barrier id and index, `body`;
        the worker serving it answers a failure with `failed()`."""
        turn = self._turn.get(worker)
        barrier_id, index = (turn[0], len(turn[1])) if turn is not None else (self._new_id(), 0)
        self._send(worker, kind + _POSTED.pack(barrier_id, index) + body)
        future = self.loop.create_future()
        if turn is None:
            self._turn[worker] = (barrier_id, [future])
        else:
            turn[1].append(future)
        return future

    def _send_barriers(self) -> None:
        """Bus flush hook: close this turn's posts to each worker with one barrier request."""
        if not self._turn:
            return
        turn, self._turn = self._turn, {}
        deadline = time.monotonic() + self.timeout
        for worker, (barrier_id, futures) in turn.items():
            self.bus.send(worker, b"R" + _REQ.pack(barrier_id, len(_BARRIER)) + _BARRIER)
            self._barriers[barrier_id] = futures
            self._timeouts.append((deadline, barrier_id))

    def expire(self, now: float) -> None:
        """Fail requests (and posts) unanswered within the timeout (called from the node's tick)."""
        timeouts = self._timeouts
        while timeouts and timeouts[0][0] <= now:
            _, request_id = timeouts.popleft()
            if request_id in self._barriers or request_id in self._waiting:
                log.warning("a worker did not answer request %d within %.0f s", request_id, self.timeout)
                self._settle(request_id, 100, None, b"")

    # -- receiving -----------------------------------------------------------------------------

    def on_request(self, sender: int, message: bytes) -> None:
        """Serve a request or post at once, in bus order, and answer it as its kind says."""
        post = message[0] == POST
        fields, args, tail = split(message, _POST if post else _REQ)
        status, result, out_tail = 0, None, b""
        try:
            outcome = self.serve(sender, 0 if post else fields[0], args, tail)
            if outcome is ANSWERED or post:
                return
            if isinstance(outcome, asyncio.Future):      # served later (it waits on a broker)
                outcome.add_done_callback(lambda done: self._answer_done(sender, fields[0], args, done))
                return
            result, out_tail = outcome
        except ApiError as exc:
            status = exc.code
        except Exception:
            log.exception("%s %s from worker %d failed", "post" if post else "request", args.get("op"), sender)
            status = 100
        if post:
            self.failed(sender, fields[0], fields[1], status)
        else:
            self.answer(sender, fields[0], status, result, out_tail)

    def failed(self, worker: int, barrier_id: int, index: int, status: int) -> None:
        """Answer a post (of any kind) that failed with an API error code."""
        self.bus.send(worker, b"F" + _FAILED.pack(barrier_id, index, status))

    def _answer_done(self, sender: int, request_id: int, args: dict, done: asyncio.Future) -> None:
        status, result, tail = 0, None, b""
        exc = done.exception() if not done.cancelled() else ApiError(100)
        if isinstance(exc, ApiError):
            status = exc.code
        elif exc is not None:
            log.error("request %s from worker %d failed", args.get("op"), sender, exc_info=exc)
            status = 100
        else:
            result, tail = done.result()
        try:
            self.answer(sender, request_id, status, result, tail)
        except Exception:
            log.exception("answer to worker %d not sent", sender)

    def answer(self, worker: int, request_id: int, status: int, result: Any, tail: bytes = b"") -> None:
        body = orjson.dumps(result)
        self.bus.send(worker, b"A" + _ANS.pack(request_id, status, len(body)) + body + tail)

    def on_answer(self, message: bytes) -> None:
        """An A (answer) or F (failed post) message."""
        if message[0] == FAILED:
            barrier_id, index, status = _FAILED.unpack_from(message, 1)
            futures = self._barriers.get(barrier_id)
            if futures is None:                      # the barrier is still being sent this turn
                turn = next((t for t in self._turn.values() if t[0] == barrier_id), None)
                futures = turn[1] if turn is not None else None
            if futures is not None and index < len(futures) and not futures[index].done():
                futures[index].set_exception(ApiError(status))
            return
        (request_id, status, _), result, tail = split(message, _ANS)
        self._settle(request_id, status, result, tail)

    def resolve(self, request_id: int, result: Any) -> None:
        """A request answered by other means (a publication broadcast carries the answer)."""
        self._settle(request_id, 0, result, b"")

    def _settle(self, request_id: int, status: int, result: Any, tail: bytes) -> None:
        futures = self._barriers.pop(request_id, None)
        if futures is not None:                      # a barrier: every post not failed already
            for future in futures:
                if not future.done():
                    if status:
                        future.set_exception(ApiError(status))
                    else:
                        future.set_result(self.posted)
            return
        waiting = self._waiting.pop(request_id, None)
        if waiting is None:
            return
        future, shape = waiting
        if future.done():
            return
        if status:
            future.set_exception(ApiError(status))
        else:
            try:
                future.set_result((result, tail) if shape is None else shape(result, tail))
            except Exception as exc:             # an answer of the wrong shape
                future.set_exception(exc)

    def stats(self) -> dict:
        return {"requests_waiting": len(self._waiting)}

