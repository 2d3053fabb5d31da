"""Peer (c): the `websockets` library (asyncio implementation) and its `broadcast()`.
Same client protocol and /api endpoint as the other peers."""

import asyncio
import sys
from pathlib import Path

import uvloop
from websockets.asyncio.server import broadcast, serve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WS_PATH, arguments, connect_reply, pub_push, serve_api  # noqa: E402

channels: dict[str, dict] = {}


async def handler(ws) -> None:
    if ws.request.path != WS_PATH:
        await ws.close(1008)
        return
    subs, push = connect_reply(await ws.recv(decode=False))
    for ch in subs:
        channels.setdefault(ch, {})[ws] = None
    try:
        await ws.send(push.decode())
        await ws.wait_closed()
    finally:
        for ch in subs:
            subscribers = channels.get(ch)
            if subscribers is not None:
                subscribers.pop(ws, None)
                if not subscribers:
                    del channels[ch]


def publish(channel: str, data) -> None:
    subscribers = channels.get(channel)
    if subscribers:
        broadcast(subscribers, pub_push(channel, data).decode())


async def main() -> None:
    args = arguments(__doc__)
    async with serve(handler, args.host, args.port, backlog=4096, ping_interval=None, compression=None,
                     max_size=65536):
        api = await serve_api(args.host, args.api_port, publish)
        async with api:
            await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
