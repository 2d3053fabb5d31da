"""The engine contract against the Redis engine: one shard and two shards."""

from __future__ import annotations

import contextlib
import uuid

import pytest

from uniws.engine.redis import RedisEngine
from uniws.engine.redis_shards import parse_address

from .contract import *


@pytest.fixture(params=[1, 2], ids=["one-shard", "two-shards"])
def engine_factory(request, redis_servers):
    servers = redis_servers(request.param)

    @contextlib.asynccontextmanager
    async def make(handler, **opts):
        engine = RedisEngine(handler, [parse_address(s.address) for s in servers],
                             node_uid=str(uuid.uuid4()), **opts)
        await engine.start()
        try:
            yield engine
        finally:
            await engine.close()

    return make
