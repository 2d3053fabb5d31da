"""Hostile input on the WebSocket path: every bad frame has a clean outcome, nothing is swallowed.

picows reports what goes wrong at its boundary through the logger uniws gives it: a client's
malformed frame is counted (`uniws.ws.client_protocol_errors`), an exception from uniws's own
code would be logged with a traceback and counted (`uniws.ws.listener_exceptions`).
"""

from __future__ import annotations

import os
import random
import socket
import struct

from .helpers import RawClient, connect, node_info, recv_pushes
from .wsclient import UniClient


def _metric(server, name: str) -> float:
    return node_info(server)["metrics"]["items"][name]


def _frame(rng: random.Random) -> bytes:
    """A client frame that is wrong in one of the ways a client can get it wrong."""
    kind = rng.randrange(6)
    payload = rng.randbytes(rng.randrange(0, 300))
    if kind == 0:                                   # bytes that are no frame at all
        return payload
    first = rng.choice([0x81, 0x82, 0x01, 0x80, 0x88, 0x89, 0x8A, 0x83, 0xC1, 0xF1, 0x0F, 0x8F])
    mask = os.urandom(4) if kind != 1 else b""     # kind 1: an unmasked client frame
    n = len(payload)
    if kind == 2:                                   # a length far beyond anything allowed
        header = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, rng.choice([1 << 40, (1 << 63) - 1, 70000]))
    elif n < 126:
        header = struct.pack("!BB", first, (0x80 if mask else 0) | n)
    else:
        header = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, n)
    if kind == 3:                                   # text frame of invalid UTF-8
        header = struct.pack("!BB", 0x81, 0x80 | 4)
        payload = b"\xff\xfe\xc3\x28"
    if kind == 4:                                   # the frame cut anywhere
        whole = header + mask + payload
        return whole[:rng.randrange(len(whole) + 1)]
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if mask else payload
    return header + mask + masked


def _send_and_wait_for_close(port: int, data: bytes) -> None:
    """Upgrade, send `data`, half-close, and read until the server has closed: by then it has
    processed every byte."""
    raw = RawClient(port)
    try:
        raw.sock.sendall(data)
        raw.sock.shutdown(socket.SHUT_WR)
        while raw.sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        raw.close()


def test_deeply_nested_connect_message_is_closed_cleanly(start_server):
    server = start_server({"uni_websocket_message_size_limit": 1_000_000})
    for message in ("[" * 200_000, '{"data":' + "[" * 200_000):
        client = UniClient(server.ws_url, message)
        assert client.until_closed(timeout=10) == []        # a bad connect request: closed silently,
        assert client.close_frame is None                   # no 1011 from an exception (01 §3)
    ok, push = connect(server, "42", subs={"abc": {}})
    assert push["type"] == 6
    server.publish("abc", {"n": 1})
    assert recv_pushes(ok, 1)[0]["data"]["data"] == {"n": 1}
    assert _metric(server, "uniws.ws.listener_exceptions") == 0
    assert "Traceback" not in server.log()


def test_random_frames_are_refused_and_the_server_keeps_serving(start_server):
    server = start_server({"uni_websocket_message_size_limit": 65536, "workers": 2})
    rng = random.Random(20261203)
    for _ in range(150):
        data = b"".join(_frame(rng) for _ in range(rng.randrange(1, 4)))
        if rng.random() < 0.5:                      # half of them after a valid connect message
            token = server.token("u").encode()
            valid = b'{"token":"' + token + b'"}'
            mask = os.urandom(4)
            data = struct.pack("!BB", 0x81, 0x80 | 126) + struct.pack("!H", len(valid)) + mask + \
                bytes(b ^ mask[i % 4] for i, b in enumerate(valid)) + data
        _send_and_wait_for_close(server.port, data)
    ok, push = connect(server, "42", subs={"abc": {}})
    assert push["type"] == 6
    server.publish("abc", {"n": 2})
    assert recv_pushes(ok, 1)[0]["data"]["data"] == {"n": 2}
    assert _metric(server, "uniws.ws.listener_exceptions") == 0
    assert _metric(server, "uniws.ws.client_protocol_errors") > 0
    log = server.log()
    assert "Traceback" not in log and "picows boundary" not in log
