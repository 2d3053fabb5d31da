"""The HTTP front against hostile clients: refused on the head, bounded, timed out, never stuck.

Each test runs a real server process. Latencies are printed, never asserted (bench/ measures).
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time

import pytest
import requests

from .helpers import wait_for

KEY = "Authorization: apikey apikey\r\n"


def _connect(server, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response: (status, headers, body); status 0 when the server closed without one."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, {}, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed inside a response body"
        body += chunk
    return int(lines[0].split()[1]), headers, body[:length]


def _closed(sock: socket.socket) -> bool:
    """Read until the server closes (after any response); True when it did."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def _health(server) -> float:
    started = time.monotonic()
    r = requests.get(server.base + "/health", timeout=30)
    assert r.status_code == 200 and r.text == "{}"
    return time.monotonic() - started


def _no_traceback(server) -> None:
    log = server.log()
    assert "Traceback" not in log, log[-3000:]


# -- refused on the head -------------------------------------------------------------------------


def test_keyless_chunked_flood_is_refused_on_its_head(start_server):
    server = start_server()
    with _connect(server) as sock:
        sock.sendall(b"POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        status, headers, _ = _read_response(sock)          # before a single body byte was sent
        assert status == 401 and headers.get("connection") == "close"
        try:
            sock.sendall(b"1\r\nx\r\n" * 30_000)          # ignored, then the connection closes
        except OSError:
            pass
        assert _closed(sock)
    _health(server)
    _no_traceback(server)


def test_keyed_chunked_flood_is_answered_and_health_keeps_answering(start_server):
    server = start_server()
    command = json.dumps({"method": "publish", "params": {"channel": "c", "data": {"n": 1}}}).encode()
    body = command + b" " * (30_000 - len(command))        # 30 000 one-byte chunks
    latencies: list[float] = []
    done = threading.Event()

    def poll_health() -> None:
        while not done.is_set():
            latencies.append(_health(server))

    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        with _connect(server, timeout=60) as sock:
            sock.sendall(b"POST /api HTTP/1.1\r\nHost: x\r\n" + KEY.encode() + b"Transfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(body), 1000):
                sock.sendall(b"".join(b"1\r\n%c\r\n" % byte for byte in body[i:i + 1000]))
            sock.sendall(b"0\r\n\r\n")
            status, _, reply = _read_response(sock)
    finally:
        done.set()
        poller.join()
    assert status == 200 and json.loads(reply) == {"result": {}}
    assert latencies, "health was never answered"
    print(f"/health during the flood: {len(latencies)} requests, max {max(latencies) * 1000:.1f} ms")
    _no_traceback(server)


def test_huge_announced_body_gets_401_or_413_at_once(start_server):
    server = start_server()
    head = b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n"
    with _connect(server) as sock:
        sock.sendall(head + b"\r\n")                          # no key, no body byte
        assert _read_response(sock)[0] == 401
        assert _closed(sock)
    with _connect(server) as sock:
        sock.sendall(head + KEY.encode() + b"\r\n")           # a key, still no body byte
        status, _, body = _read_response(sock)
        assert status == 413 and body == b"Payload Too Large\n"
        assert _closed(sock)
    _health(server)


def test_chunked_body_over_the_limit_is_refused_as_it_passes(start_server):
    server = start_server({"http_max_request_body_size": 1000})
    with _connect(server) as sock:
        sock.sendall(b"POST /api HTTP/1.1\r\nHost: x\r\n" + KEY.encode() + b"Transfer-Encoding: chunked\r\n\r\n"
                     + b"200\r\n" + b" " * 512 + b"\r\n" + b"200\r\n" + b" " * 512 + b"\r\n")   # 1024 > 1000
        assert _read_response(sock)[0] == 413                 # with no terminating chunk sent
    ok = requests.post(server.base + "/api", data=b'{"method":"info"}' + b" " * 900,
                       headers={"Authorization": "apikey apikey"}, timeout=10)
    assert ok.status_code == 200


BAD_FRAMING = {
    "plus sign": b"Content-Length: +5\r\n\r\n{\"a\"}",
    "underscore": b"Content-Length: 1_0\r\n\r\n{}",
    "negative": b"Content-Length: -5\r\n\r\n{}",
    "two lengths": b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "length list": b"Content-Length: 2, 2\r\n\r\n{}",
    "length and chunked": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunked and length": b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "negative chunk": b"Transfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n",
    "hex prefix chunk": b"Transfer-Encoding: chunked\r\n\r\n0x2\r\n{}\r\n0\r\n\r\n",
    "underscore chunk": b"Transfer-Encoding: chunked\r\n\r\n1_0\r\n{}\r\n0\r\n\r\n",
    "huge chunk": b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n{}\r\n0\r\n\r\n",
    "gzip only": b"Transfer-Encoding: gzip\r\n\r\n{}",
    "gzip then chunked": b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "chunk without CRLF": b"Transfer-Encoding: chunked\r\n\r\n1\r\n{}\r\n0\r\n\r\n",
    "space before colon": b"Content-Length : 2\r\n\r\n{}",
    "folded header": b"X-A: 1\r\n b\r\nContent-Length: 2\r\n\r\n{}",
}


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    from .conftest import Server
    server = Server(tmp_path_factory.mktemp("hostile"), {})
    yield server
    server.stop()


@pytest.mark.parametrize("name", sorted(BAD_FRAMING))
def test_bad_framing_is_a_400_and_a_close(shared_server, name):
    with _connect(shared_server) as sock:
        sock.sendall(b"POST /api HTTP/1.1\r\nHost: x\r\n" + KEY.encode() + BAD_FRAMING[name])
        status, headers, _ = _read_response(sock)
        assert status == 400 and headers.get("connection") == "close"
        assert _closed(sock)


@pytest.mark.parametrize("request_line", [b"GET /health HTTP/2.0", b"GET /health HTTP/0.9",
                                          b"GET /health HTTP/1.1 extra", b"G\x00T /health HTTP/1.1"])
def test_bad_request_lines_are_a_400(shared_server, request_line):
    with _connect(shared_server) as sock:
        sock.sendall(request_line + b"\r\nHost: x\r\n\r\n")
        assert _read_response(sock)[0] == 400


def test_head_over_16_kib_is_a_431(shared_server):
    with _connect(shared_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(200)))
        assert _read_response(sock)[0] == 431


# -- timeouts ------------------------------------------------------------------------------------


def _trickle(socks: list[socket.socket], stop: threading.Event, closed: set[int]) -> None:
    """Send one more header line on every open connection, twice a second."""
    n = 0
    while not stop.is_set() and len(closed) < len(socks):
        n += 1
        for i, sock in enumerate(socks):
            if i not in closed:
                try:
                    sock.sendall(b"X-Slow-%d: 1\r\n" % n)
                except OSError:
                    closed.add(i)
        stop.wait(0.5)


def test_trickled_heads_are_closed_after_the_head_timeout(start_server):
    server = start_server({"http_header_read_timeout": "1s"})
    socks = [_connect(server, timeout=30) for _ in range(20)]
    for sock in socks:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    stop, closed = threading.Event(), set()
    trickler = threading.Thread(target=_trickle, args=(socks, stop, closed))
    trickler.start()
    try:
        for sock in socks:
            status, _, body = _read_response(sock)        # 408, then the close
            assert status == 408, (status, body)
            assert _closed(sock)
    finally:
        stop.set()
        trickler.join()
        for sock in socks:
            sock.close()
    _health(server)
    _no_traceback(server)


def test_silent_and_idle_connections_are_closed(start_server):
    server = start_server({"http_header_read_timeout": "1s", "http_idle_timeout": "1s"})
    with _connect(server, timeout=30) as silent, _connect(server, timeout=30) as idle:
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(idle)[0] == 200               # keep-alive, then nothing more
        assert silent.recv(100) == b""                       # closed without an answer
        assert idle.recv(100) == b""


def test_body_that_never_ends_is_closed_after_the_body_timeout(start_server):
    server = start_server({"http_body_read_timeout": "1s"})
    with _connect(server, timeout=30) as sock:
        sock.sendall(b"POST /api HTTP/1.1\r\nHost: x\r\n" + KEY.encode() + b"Content-Length: 100\r\n\r\n{")
        assert _read_response(sock)[0] == 408
        assert _closed(sock)


def test_health_answers_while_many_connections_trickle_heads(start_server):
    server = start_server()
    socks = []
    try:
        for _ in range(500):
            sock = _connect(server, timeout=30)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            socks.append(sock)
        stop, closed = threading.Event(), set()
        trickler = threading.Thread(target=_trickle, args=(socks, stop, closed))
        trickler.start()
        try:
            latencies = [_health(server) for _ in range(40)]
        finally:
            stop.set()
            trickler.join()
        assert not closed                                    # within the 10 s default head timeout
        print(f"/health with 500 trickling heads: max {max(latencies) * 1000:.1f} ms")
    finally:
        for sock in socks:
            sock.close()
    _no_traceback(server)


def test_incomplete_requests_over_the_cap_get_503(start_server):
    server = start_server({"http_max_incomplete_requests": 5})
    socks = [_connect(server) for _ in range(5)]
    try:
        for sock in socks:
            sock.sendall(b"GET /health HTTP/1.1\r\n")

        def refused() -> bool:
            with _connect(server) as extra:       # answered at accept: nothing to send
                extra.settimeout(1)                 # not refused: the server waits for a head
                try:
                    return _read_response(extra)[0] == 503
                except TimeoutError:
                    return False

        wait_for(refused, timeout=10, what="a 503 for the 6th incomplete request")
        socks.pop().close()
        wait_for(lambda: requests.get(server.base + "/health", timeout=10).status_code == 200, timeout=10)
    finally:
        for sock in socks:
            sock.close()


# -- bad input to the API ------------------------------------------------------------------------


@pytest.mark.parametrize("path,body", [
    ("/api", b'{"method":"publish","params":{"channel":"c","data":' + b"[" * 200_000 + b"]" * 200_000 + b"}}"),
    ("/api", b"[" * 200_000),
    ("/api", b'{"method":"info"}\n' + b"{" * 100_000),
    ("/api/publish", b'{"channel":"c","data":' + b"[" * 200_000 + b"]" * 200_000 + b"}"),
    ("/api/batch", b'{"commands":' + b"[" * 200_000 + b"]" * 200_000 + b"}"),
    ("/api", b"\xff\xfe\xfd"),
    ("/api", b'{"method":"publish","params":{"channel":"c","data":"\xff"}'),   # unterminated
])
def test_malformed_api_bodies_are_a_400(shared_server, path, body):
    r = requests.post(shared_server.base + path, data=body, headers={"Authorization": "apikey apikey"}, timeout=30)
    assert r.status_code == 400 and r.text == "Bad Request\n"
    _no_traceback(shared_server)


def test_data_too_deep_to_reencode_is_a_107(shared_server):
    data = b"[" * 1000 + b"]" * 1000                       # orjson decodes it, neither encoder can
    r = requests.post(shared_server.base + "/api", data=b'{"method":"publish","params":{"channel":"c","data":'
                      + data + b"}}", headers={"Authorization": "apikey apikey"}, timeout=30)
    assert r.status_code == 200
    assert r.json() in ({"result": {}}, {"error": {"code": 107, "message": "bad request"}})
    _no_traceback(shared_server)


def test_invalid_utf8_inside_strings_is_replaced_like_go(shared_server):
    r = requests.post(shared_server.base + "/api", data=b'{"method":"publish","params":{"channel":"c","data":"\xff"}}',
                      headers={"Authorization": "apikey apikey"}, timeout=30)
    assert r.status_code == 200 and r.json() == {"result": {}}


# -- random bytes --------------------------------------------------------------------------------

VALID = [
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /api HTTP/1.1\r\nHost: x\r\n" + KEY.encode() + b'Content-Length: 17\r\n\r\n{"method":"info"}',
    b"POST /api/publish HTTP/1.1\r\nX-API-Key: apikey\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'b\r\n{"channel":\r\nd\r\n"c","data":1}\r\n0\r\n\r\n',
    b"GET /connection/uni_websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(4)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 2:
            del data[at:at + rng.randint(1, 16)]
        else:
            data[at:at] = rng.choice([b"\r\n", b":", b" ", b"\r\n\r\n", b"0\r\n", b"-1", b"\x00", b"ffffffff"])
    return bytes(data)


def test_random_and_mutated_requests_leave_the_server_serving(start_server):
    server = start_server({"http_header_read_timeout": "1s", "http_body_read_timeout": "1s",
                           "http_idle_timeout": "1s"})
    rng = random.Random(9)
    started = time.monotonic()
    for n in range(300):
        if n % 3 == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 400)))
        else:
            data = _mutate(rng, rng.choice(VALID) * rng.randint(1, 3))
        with _connect(server, timeout=30) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            try:
                while sock.recv(65536):                     # answered, then closed (at worst on a timeout)
                    pass
            except ConnectionResetError:
                pass
        if n % 50 == 0:
            _health(server)
    print(f"300 random requests in {time.monotonic() - started:.1f} s")
    _health(server)
    _no_traceback(server)
    assert server.proc.poll() is None


# -- the WebSocket hand-off ------------------------------------------------------------------------


def _masked_text(text: str) -> bytes:
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


UPGRADE = (b"GET /connection/uni_websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


@pytest.mark.parametrize("before", [b"", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
                                    b"POST /api HTTP/1.1\r\nHost: x\r\n" + KEY.encode()
                                    + b'Content-Length: 17\r\n\r\n{"method":"info"}'])
def test_upgrade_in_one_packet_with_what_precedes_and_follows_it(shared_server, before):
    """Earlier pipelined requests are answered first; the frame after the head reaches picows."""
    connect = _masked_text(json.dumps({"token": shared_server.token("u1")}))
    with _connect(shared_server) as sock:
        sock.sendall(before + UPGRADE + connect)
        data = b""
        while b'"type":6' not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    if before:
        assert data.startswith(b"HTTP/1.1 200 OK")
        length = int(data.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        data = data.partition(b"\r\n\r\n")[2][length:]
    head, _, frames = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert frames[0] == 0x81                                  # the connect push, a text frame


def test_refused_upgrades_close_cleanly(shared_server):
    for extra in (b"Origin: http://elsewhere\r\n", b"Sec-WebSocket-Version: 8\r\n"):
        with _connect(shared_server) as sock:
            sock.sendall(UPGRADE.replace(b"Host: x\r\n", b"Host: x\r\n" + extra).replace(
                b"Sec-WebSocket-Version: 13\r\n", b"" if b"Version" in extra else b"Sec-WebSocket-Version: 13\r\n"))
            assert _read_response(sock)[0] in (400, 403)
            assert _closed(sock)
    _health(shared_server)
    _no_traceback(shared_server)
