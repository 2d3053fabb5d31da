"""`/health` that means it (08 §6, stricter than the reference's constant `{}`).

200 `{}` only when every other worker of the node answers a bus request within
`health_worker_timeout` and the engine, when it can tell, says it is fine; otherwise 503
with `{"error": "...", "reasons": [...]}`. A shutting-down worker answers 503 too, so a
load balancer stops sending it requests while its clients drain.

Engine hook: an engine with a `healthy()` method (sync or async) returning None when fine
or a reason string (the Redis engine: "redis unreachable: ...") is asked on every check.
"""

from __future__ import annotations

import asyncio
import inspect

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
    healthy = getattr(node.engine, "healthy", None)
    if healthy is not None:
        try:
            reason = healthy()
            if inspect.isawaitable(reason):
                reason = await asyncio.wait_for(reason, timeout)
        except Exception as exc:          # a check that fails is an unhealthy engine
            reason = f"engine check failed: {exc!r}"
        if reason:
            reasons.append(str(reason))
    return reasons


class HealthHandler(PathHandler):
    """Any method on `health_handler_prefix`."""

    async def respond(self):
        reasons = await problems(self.node, self.timeout)
        if not reasons:
            return 200, _JSON, b"{}"
        return 503, _JSON, orjson.dumps({"error": "; ".join(reasons), "reasons": reasons})
