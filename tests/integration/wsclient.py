"""A small synchronous uni_websocket test client on top of the `websockets` library."""

from __future__ import annotations

import json

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


class UniClient:
    def __init__(self, url: str, first: str | bytes | dict | None = None, **kwargs) -> None:
        # Entered as a context manager (websockets >= 17.1 warns otherwise); close() exits it.
        self.ws = connect(url, compression=None, max_size=None, open_timeout=10, ping_interval=None,
                          **kwargs).__enter__()
        self.close_frame = None
        if first is not None:
            self.send(first)

    def send(self, message: str | bytes | dict) -> None:
        self.ws.send(json.dumps(message) if isinstance(message, dict) else message)

    def recv(self, timeout: float = 5.0) -> str | bytes:
        return self.ws.recv(timeout=timeout)

    def recv_json(self, timeout: float = 5.0, skip_pings: bool = True) -> dict:
        while True:
            message = self.recv(timeout)
            if message == "" and skip_pings:
                continue
            return json.loads(message)

    def until_closed(self, timeout: float = 5.0) -> list:
        """Messages received until the server closed; sets `close_frame` (None = no close frame)."""
        messages = []
        try:
            while True:
                messages.append(self.recv(timeout))
        except ConnectionClosed as exc:
            self.close_frame = exc.rcvd
        return messages

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> "UniClient":
        return self

    def __exit__(self, *exc) -> None:
        self.ws.close()
