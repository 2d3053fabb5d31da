"""A real EngineHandler for engine tests: records every call, lets tests wait on conditions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

DEFAULT_WAIT = 10.0


class RecordingHandler:
    def __init__(self, uid: str = "node-a", survey_answer: Any = None) -> None:
        self.uid = uid
        self.publications: list[tuple[str, Any, str]] = []
        self.join_leaves: list[tuple[str, bool, bytes]] = []
        self.gaps: list[list[str]] = []
        self.controls: list[tuple[str, dict]] = []
        self.surveys: list[tuple[str, dict]] = []
        self.survey_answer = survey_answer if survey_answer is not None else {"from": uid}
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()

    def handle_publication(self, channel, pub, epoch) -> None:
        self.publications.append((channel, pub, epoch))
        self._notify()

    def handle_join_leave(self, channel, join, info) -> None:
        self.join_leaves.append((channel, join, info))
        self._notify()

    def handle_gap(self, channels) -> None:
        self.gaps.append(sorted(channels))
        self._notify()

    def handle_control(self, op, args) -> None:
        self.controls.append((op, args))
        self._notify()

    async def handle_survey(self, op, args):
        self.surveys.append((op, args))
        if op == "fail":
            raise RuntimeError("survey failure requested by the test")
        return self.survey_answer

    def node_info(self) -> dict:
        return {"uid": self.uid, "name": self.uid, "version": "test", "num_clients": 0, "num_users": 0,
                "num_channels": 0, "num_subs": 0, "uptime": 1, "metrics": {"interval": 60, "items": {}}}

    def pubs_of(self, channel: str) -> list:
        return [pub for ch, pub, _ in self.publications if ch == channel]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = DEFAULT_WAIT) -> None:
        """Wait until `condition()` holds, re-checking on every recorded call and every 50 ms
        (for conditions on engine state rather than on calls)."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                try:
                    async with asyncio.timeout(0.05):
                        await self._changed.wait()
                except TimeoutError:
                    pass
