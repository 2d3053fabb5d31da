"""Per-second buckets of connection checks (stale connect, expiry): no timer, task or tuple per connection.

A scheduled check costs one list slot holding the client id (a string the node
already keeps). Checks are never early: a deadline is rounded up to the next
whole second, and the node's tick, at most a second apart, collects what is due.
A check whose connection is gone or was rescheduled is simply found harmless then.
"""

from __future__ import annotations

import heapq
import math


class Deadlines:
    def __init__(self) -> None:
        self._buckets: dict[int, list[str]] = {}
        self._seconds: list[int] = []          # heap of the bucket keys

    def add(self, when: float, client_id: str) -> None:
        second = math.ceil(when)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = []
            heapq.heappush(self._seconds, second)
        bucket.append(client_id)

    def pop_due(self, now: float) -> list[str]:
        """Client ids whose deadline is at or before `now`, oldest first."""
        due: list[str] = []
        while self._seconds and self._seconds[0] <= now:
            due += self._buckets.pop(heapq.heappop(self._seconds))
        return due

    def __len__(self) -> int:
        return sum(map(len, self._buckets.values()))
