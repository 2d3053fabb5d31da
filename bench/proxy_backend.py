"""The connect-proxy backend of `python -m bench.connect_proxy`: aiohttp, one process.

POST /connect answers every connect with the user named in the client's connect `data`
and the server-side channel the bench clients listen on:
`{"result":{"user":"<data.user>","channels":["bench"]}}`. Prints `PORT <n>` when listening.
"""

from __future__ import annotations

import asyncio
import sys

import orjson
from aiohttp import web


async def connect(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    user = (body.get("data") or {}).get("user", "")
    return web.Response(body=orjson.dumps({"result": {"user": user, "channels": ["bench"]}}),
                        content_type="application/json")


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_post("/connect", connect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
