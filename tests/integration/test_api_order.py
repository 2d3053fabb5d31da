"""Pipelined API requests on one connection, and the commands inside each, reach every
channel's subscribers in order, whatever the batch size (the README's ordering promise)."""

from __future__ import annotations

import json
import socket

import pytest

from uniws.cluster import owner_of

from .wsclient import UniClient


def _post(body: bytes) -> bytes:
    return (b"POST /api HTTP/1.1\r\nHost: x\r\nAuthorization: apikey apikey\r\nContent-Length: %d\r\n\r\n"
            % len(body)) + body


def _read_responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    data = b""
    responses = []
    while len(responses) < count:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode().split("\r\n")
            length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length"))
            if len(rest) >= length:
                responses.append((int(lines[0].split()[1]), rest[:length]))
                data = rest[length:]
                continue
        chunk = sock.recv(1 << 20)
        assert chunk, "closed before every response arrived"
        data += chunk
    return responses


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("batch", [1, 1024, 1025, 5000])
def test_pipelined_requests_keep_order_on_each_channel(start_server, workers, batch):
    server = start_server({"workers": workers, "namespaces": [{"name": "live"}]})
    # Two channels per owner, so with two workers some commands wait for the other worker.
    channels = [ch for ch in (f"live:c{i}" for i in range(20)) if owner_of(ch, 2) == 0][:2]
    channels += [ch for ch in (f"live:c{i}" for i in range(20)) if owner_of(ch, 2) == 1][:2]
    client = UniClient(server.ws_url, {"token": server.token("u1"), "subs": {ch: {} for ch in channels}})
    assert client.recv_json()["type"] == 6
    first = "\n".join(json.dumps({"method": "publish", "params": {"channel": channels[i % 4], "data": [1, i]}})
                      for i in range(batch)).encode()
    second = "\n".join(json.dumps({"method": "publish", "params": {"channel": ch, "data": [2, 0]}})
                       for ch in channels).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(_post(first) + _post(second))
        responses = _read_responses(sock, 2)
    assert [status for status, _ in responses] == [200, 200]
    assert responses[0][1].count(b'{"result":{}}') == batch
    assert responses[1][1].count(b'{"result":{}}') == len(channels)
    expected = {ch: [[1, i] for i in range(batch) if i % 4 == k] + [[2, 0]] for k, ch in enumerate(channels)}
    got: dict[str, list] = {ch: [] for ch in channels}
    for _ in range(batch + len(channels)):
        push = client.recv_json(timeout=30)
        got[push["channel"]].append(push["data"]["data"])
    assert got == expected
