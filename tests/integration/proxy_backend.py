"""A scriptable application backend for the proxy tests: `python -m tests.integration.proxy_backend`.

It prints `PORT <n>` once listening on 127.0.0.1. Every request to a path other than
/_control/* is recorded and answered with the next scripted reply for that path (the
last one repeats): `{"status": 200, "body": "<text>", "delay": <seconds>, "headers": {...}}`.
Control: POST /_control/script {"path": "/connect", "replies": [...]} (replaces the
path's script and forgets its records); GET /_control/requests?path=/connect returns
the recorded requests as [{"headers": {...}, "body": "<text>"}].
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

OK_EMPTY = {"status": 200, "body": "{}", "delay": 0}


def make_app() -> web.Application:
    scripts: dict[str, list[dict]] = {}
    records: dict[str, list[dict]] = {}

    async def script(request: web.Request) -> web.Response:
        doc = await request.json()
        scripts[doc["path"]] = list(doc["replies"])
        records[doc["path"]] = []
        return web.json_response({})

    async def recorded(request: web.Request) -> web.Response:
        return web.json_response(records.get(request.query["path"], []))

    async def answer(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        records.setdefault(request.path, []).append(
            {"headers": dict(request.headers), "body": body.decode("utf-8", "replace")})
        replies = scripts.get(request.path) or [OK_EMPTY]
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if reply.get("delay"):
            await asyncio.sleep(reply["delay"])
        return web.Response(status=reply.get("status", 200), text=reply.get("body", "{}"),
                            content_type="application/json", headers=reply.get("headers"))

    app = web.Application()
    app.router.add_post("/_control/script", script)
    app.router.add_get("/_control/requests", recorded)
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


async def main() -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
