"""The HTTP front on the shared port: pipelined requests are served together, answered in order."""

from __future__ import annotations

import json
import socket

from .wsclient import UniClient


def _request(path: str, body: bytes = b"", *, close: bool = False) -> bytes:
    method = "POST" if body else "GET"
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: apikey apikey\r\nContent-Length: {len(body)}\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


def _read_responses(sock: socket.socket) -> list[tuple[int, bytes]]:
    """Every response until the server closes the connection: (status, body)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    responses = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length"))
        responses.append((int(lines[0].split()[1]), rest[:length]))
        data = rest[length:]
    return responses


def test_pipelined_requests_are_answered_in_order(start_server):
    # Two workers and channels owned by either: some API requests wait for the other worker.
    server = start_server({"workers": 2, "health": True, "namespaces": [{"name": "live"}]})
    channels = [f"live:c{i}" for i in range(6)]
    client = UniClient(server.ws_url, {"token": server.token("u1"), "subs": {ch: {} for ch in channels}})
    assert client.recv_json()["type"] == 6
    batches = []
    for k in range(5):
        lines = [json.dumps({"method": "publish", "params": {"channel": ch, "data": {"k": k}}, "id": k + 1})
                 for ch in channels]
        batches.append("\n".join(lines).encode())
    stream = (_request("/api", batches[0]) + _request("/health") + _request("/api", batches[1])
              + _request("/nothing-here") + b"".join(_request("/api", b) for b in batches[2:4])
              + _request("/api", b'{"method":"info"}') + _request("/api", batches[4], close=True)
              + _request("/api", b'{"method":"info"}'))          # after Connection: close: not served
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(stream)
        responses = _read_responses(sock)
    statuses = [status for status, _ in responses]
    assert statuses == [200, 200, 200, 404, 200, 200, 200, 200]
    assert responses[1][1] == b"{}"
    publish_bodies = [responses[i][1] for i in (0, 2, 4, 5, 7)]
    for k, body in enumerate(publish_bodies):
        assert [json.loads(line) for line in body.splitlines()] == [{"id": k + 1, "result": {}}] * len(channels)
    assert "nodes" in json.loads(responses[6][1])["result"]
    got = {ch: [] for ch in channels}
    for _ in range(5 * len(channels)):
        push = client.recv_json(timeout=10)
        got[push["channel"]].append(push["data"]["data"]["k"])
    assert got == {ch: [0, 1, 2, 3, 4] for ch in channels}


def test_continue_waits_for_the_responses_owed_before_it(start_server):
    server = start_server({"workers": 2, "namespaces": [{"name": "live"}]})
    batch = "\n".join(json.dumps({"method": "publish", "params": {"channel": f"live:c{i}", "data": i}})
                      for i in range(50)).encode()
    body = b'{"method":"info"}'
    second = (f"POST /api HTTP/1.1\r\nHost: x\r\nAuthorization: apikey apikey\r\nExpect: 100-continue\r\n"
              f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(_request("/api", batch) + second)
        data = b""
        while b"100 Continue" not in data:
            data += sock.recv(65536)
        first, _, rest = data.partition(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200 OK") and first.count(b'{"result":{}}') == 50
        assert rest == b""
        sock.sendall(body)
        sock.shutdown(socket.SHUT_WR)
        reply = _read_responses(sock)
    assert len(reply) == 1 and reply[0][0] == 200 and b"nodes" in reply[0][1]
