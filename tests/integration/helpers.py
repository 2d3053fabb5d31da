"""Shared helpers for the integration tests: connects, API batches, polling, raw sockets, frames."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import requests

from .wsclient import UniClient

_session = requests.Session()


def connect(server, user: str = "42", subs: dict | None = None, *, token: str | None = None,
            query: str = "", **claims) -> tuple[UniClient, dict]:
    """A uni_websocket connection with a token for `user`; returns the client and its first push."""
    first: dict[str, Any] = {"token": token if token is not None else server.token(user, **claims)}
    if subs is not None:
        first["subs"] = subs
    client = UniClient(server.ws_url + query, first)
    return client, client.recv_json(timeout=10)


def api(server, method: str, params: dict | None = None, key: str = "apikey") -> dict:
    body = json.dumps({"method": method, "params": params if params is not None else {}})
    r = _session.post(server.base + "/api", data=body, headers={"Authorization": f"apikey {key}"}, timeout=30)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def api_batch(server, commands: list[tuple[str, dict]], key: str = "apikey") -> list[dict]:
    """Several v3 commands in one request (one per line); the parsed reply lines."""
    body = "\n".join(json.dumps({"method": m, "params": p}) for m, p in commands)
    r = _session.post(server.base + "/api", data=body, headers={"Authorization": f"apikey {key}"}, timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:200])
    replies = [json.loads(line) for line in r.text.split("\n")] if r.text else []
    assert len(replies) == len(commands)
    return replies


def publish_many(server, channel: str, datas: list) -> list[dict]:
    replies = api_batch(server, [("publish", {"channel": channel, "data": d}) for d in datas])
    return [reply["result"] for reply in replies]


def node_info(server, key: str = "apikey") -> dict:
    return api(server, "info", key=key)["result"]["nodes"][0]


def engine_metric(server, name: str = "uniws.engine.streams", key: str = "apikey") -> float:
    return node_info(server, key)["metrics"]["items"][name]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll an observable condition (API state, process state) until truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def channel_clients(server, channel: str) -> int:
    channels = api(server, "channels", {"pattern": ""})["result"]["channels"]
    return channels.get(channel, {}).get("num_clients", 0)


def recv_pushes(client: UniClient, count: int, timeout: float = 10.0) -> list[dict]:
    return [client.recv_json(timeout=timeout) for _ in range(count)]


def assert_silent(client: UniClient, wait: float = 0.3) -> None:
    """Nothing but pings arrives within `wait` (used only to prove an absence)."""
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            message = client.recv(timeout=left)
        except TimeoutError:
            return
        assert message == "", f"unexpected message {message!r}"


def disconnect_push(messages: list) -> dict:
    """The last non-ping message of a closed connection, parsed."""
    pushes = [json.loads(m) for m in messages if m]
    assert pushes, "no push before close"
    return pushes[-1]


def _children(pid: int) -> list[int]:
    children = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return children


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (the server may run worker processes)."""
    total = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        pass
    return total + sum(rss_bytes(child) for child in _children(pid))


# -- a raw-socket WebSocket client (for a peer that stops reading) -----------------------------


class RawClient:
    """Handshake and connect over a plain socket; reads only when told to."""

    def __init__(self, port: int, rcvbuf: int | None = None, path: str = "/connection/uni_websocket") -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        self.sock = sock
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = sock.recv(4096)
            assert chunk, "closed during handshake"
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _fill(self, need: int) -> bool:
        while len(self.buf) < need:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def read_frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next frame; None at EOF."""
        if not self._fill(2):
            return None
        opcode, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
        at = 2
        if n == 126:
            if not self._fill(4):
                return None
            n, at = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            if not self._fill(10):
                return None
            n, at = struct.unpack("!Q", self.buf[2:10])[0], 10
        if not self._fill(at + n):
            return None
        payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
        return opcode, payload

    def read_text(self) -> str | None:
        """The next non-empty text message (pings and empty messages skipped); None at EOF."""
        while True:
            frame = self.read_frame()
            if frame is None:
                return None
            opcode, payload = frame
            if opcode == 1 and payload:
                return payload.decode()

    def read_all_texts(self) -> list[str]:
        texts = []
        while (text := self.read_text()) is not None:
            texts.append(text)
        return texts

    def close(self) -> None:
        self.sock.close()
