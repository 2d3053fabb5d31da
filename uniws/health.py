"""`/health` that means it (08 §6, stricter than the reference's constant `{}`).

200 `{}` only when every other worker of the node answers a bus request within
`health_worker_timeout` and the engine, when it can tell, says it is fine; otherwise 503
with `{"error": "...", "reasons": [...]}`. A shutting-down worker answers 503 too, so a
load balancer stops sending it requests while its clients drain.

The engine's `healthy()` (engine/base.py: None, or why it cannot serve, e.g. a Redis shard
that cannot be reached) is asked on every check.
"""

from __future__ import annotations

import asyncio

import orjson

from .http import PathHandler

_JSON = [("Content-Type", "application/json")]


async def problems(node, timeout: float) -> list[str]:
    """Why this node is not healthy; empty when it is."""
    reasons: list[str] = []
    if node.shutting_down:
        reasons.append("shutting down")
    cluster = node.cluster
    if cluster is not None:
        others = [w for w in range(cluster.count) if w != cluster.index]
        # `barrier` is answered by a worker's loop as soon as it reads it: the cheapest ping.
        answers = await asyncio.gather(
            *(asyncio.wait_for(cluster.request(w, "barrier", {}), timeout) for w in others), return_exceptions=True)
        for worker, answer in zip(others, answers):
            if isinstance(answer, BaseException):
                reasons.append(f"worker {worker} did not answer within {timeout:g} s")
    reason = node.engine.healthy()        # engine/base.py: None, or why it cannot serve
    if reason:
        reasons.append(reason)
    return reasons


class HealthHandler(PathHandler):
    """Any method on `health_handler_prefix`."""

    async def respond(self):
        reasons = await problems(self.node, self.timeout)
        if not reasons:
            return 200, _JSON, b"{}"
        return 503, _JSON, orjson.dumps({"error": "; ".join(reasons), "reasons": reasons})
