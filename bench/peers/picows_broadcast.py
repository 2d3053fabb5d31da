"""Peer (a): a picows server that sends each publication with one `transport.send`
per subscriber. Same client protocol as uniws's uni_websocket (connect message in,
connect push out, one push per publication); publishes arrive on the /api endpoint
of _common.py on --api-port."""

import asyncio
import sys
from pathlib import Path

import uvloop
from picows import WSListener, WSMsgType, ws_create_server

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WS_PATH, arguments, connect_reply, pub_push, serve_api  # noqa: E402

channels: dict[str, dict] = {}


class Client(WSListener):
    def __init__(self) -> None:
        self.transport = None
        self.subs = None

    def on_ws_connected(self, transport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()
        elif frame.msg_type == WSMsgType.TEXT and self.subs is None:
            self.subs, push = connect_reply(frame.get_payload_as_bytes())
            for ch in self.subs:
                channels.setdefault(ch, {})[self] = None
            transport.send(WSMsgType.TEXT, push)

    def on_ws_disconnected(self, transport) -> None:
        for ch in self.subs or ():
            subscribers = channels.get(ch)
            if subscribers is not None:
                subscribers.pop(self, None)
                if not subscribers:
                    del channels[ch]


def publish(channel: str, data) -> None:
    subscribers = channels.get(channel)
    if subscribers:
        msg = pub_push(channel, data)
        for client in subscribers:
            client.transport.send(WSMsgType.TEXT, msg)


async def main() -> None:
    args = arguments(__doc__)
    route = lambda request: Client() if request.path == WS_PATH.encode() else None  # noqa: E731
    ws = await ws_create_server(route, args.host, args.port, backlog=4096, enable_auto_ping=False)
    api = await serve_api(args.host, args.api_port, publish)
    async with ws, api:
        await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
