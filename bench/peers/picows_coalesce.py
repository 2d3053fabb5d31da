"""Peer (b): the ~60-line picows server that coalesces per loop turn: a publication
is framed once, appended to every subscriber's pending list (a pure Python loop),
and once per loop turn each subscriber with pending frames gets ONE write holding
all of them. Same client protocol and /api endpoint as the other peers."""

import asyncio
import sys
from pathlib import Path

import uvloop
from picows import WSListener, WSMsgType, ws_create_server

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WS_PATH, arguments, connect_reply, pub_push, serve_api, ws_text_frame  # noqa: E402

channels: dict[str, dict] = {}
dirty: list = []
scheduled = False


class Client(WSListener):
    def __init__(self) -> None:
        self.transport = self.subs = self.pending = None

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
        self.pending = None
        for ch in self.subs or ():
            subscribers = channels.get(ch)
            if subscribers is not None:
                subscribers.pop(self, None)
                if not subscribers:
                    del channels[ch]


def flush() -> None:
    global dirty, scheduled
    clients, dirty, scheduled = dirty, [], False
    for client in clients:
        pending, client.pending = client.pending, None
        if pending and not client.transport.is_disconnected:
            client.transport.underlying_transport.write(pending[0] if len(pending) == 1 else b"".join(pending))


def publish(channel: str, data) -> None:
    global scheduled
    subscribers = channels.get(channel)
    if not subscribers:
        return
    frame = ws_text_frame(pub_push(channel, data))
    for client in subscribers:
        if client.pending is None:
            client.pending = [frame]
            dirty.append(client)
        else:
            client.pending.append(frame)
    if not scheduled:
        scheduled = True
        asyncio.get_running_loop().call_soon(flush)


async def main() -> None:
    args = arguments(__doc__)
    route = lambda request: Client() if request.path == WS_PATH.encode() else None  # noqa: E731
    ws = await ws_create_server(route, args.host, args.port, backlog=4096, enable_auto_ping=False)
    api = await serve_api(args.host, args.api_port, publish)
    async with ws, api:
        await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
