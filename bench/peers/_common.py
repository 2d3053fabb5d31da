"""What the Python peer servers share: the uniws-compatible publish endpoint and the
uni_websocket message formats.

The endpoint is a minimal HTTP/1.1 server (keep-alive, pipelining, Content-Length
bodies only) on its own port: `POST /api` with one `{"method":"publish","params":
{"channel":...,"data":...}}` command per line, answered with one `{"result":{}}` line
per command, like uniws. Everything runs in the caller's loop, synchronously.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

import orjson

WS_PATH = "/connection/uni_websocket"
_ids = itertools.count(1)


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="WebSocket port")
    parser.add_argument("--api-port", type=int, required=True, help="HTTP publish endpoint port")
    return parser.parse_args()


def connect_reply(payload: bytes) -> tuple[list[str], bytes]:
    """Channels asked for by a connect message, and the connect push that answers it."""
    try:
        subs = orjson.loads(payload).get("subs") or {}
    except (orjson.JSONDecodeError, AttributeError):
        subs = {}
    channels = [ch for ch in subs if isinstance(ch, str)]
    push = orjson.dumps({"type": 6, "data": {"client": str(next(_ids)), "version": "peer",
                                            "subs": {ch: {} for ch in channels}}})
    return channels, push


def pub_push(channel: str, data) -> bytes:
    """The publication push, as uniws sends it to a v1 client."""
    return orjson.dumps({"channel": channel, "data": {"data": data}})


def ws_text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


class ApiProtocol(asyncio.Protocol):
    """Calls `publish(channel, data)` for every command of every request, in order."""

    def __init__(self, publish) -> None:
        self.publish = publish
        self.buf = bytearray()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(buf[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(buf) < end + 4 + length:
                return
            body = bytes(buf[end + 4:end + 4 + length])
            del buf[:end + 4 + length]
            replies = []
            for line in body.split(b"\n"):
                if not line.strip():
                    continue
                try:
                    params = orjson.loads(line)["params"]
                    self.publish(params["channel"], params["data"])
                    replies.append(b'{"result":{}}')
                except Exception:
                    replies.append(b'{"error":{"code":107,"message":"bad request"}}')
            out = b"\n".join(replies)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                                 % len(out) + out)


async def serve_api(host: str, port: int, publish) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: ApiProtocol(publish), host, port, backlog=4096)
