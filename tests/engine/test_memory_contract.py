"""The engine contract against the memory engine of one worker."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from uniws.engine.memory import MemoryEngine

from .contract import *  # noqa: F403


@pytest.fixture
def engine_factory():
    @contextlib.asynccontextmanager
    async def make(handler, history_meta_ttl: float = 0.0):
        engine = MemoryEngine(handler, asyncio.get_running_loop(), history_meta_ttl=history_meta_ttl)
        await engine.start()
        try:
            yield engine
        finally:
            await engine.close()

    return make
