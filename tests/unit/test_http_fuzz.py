"""Property tests of the HTTP front (uniws.http) and the API decoder (uniws.api).

The front is driven byte-split by byte-split through its asyncio.Protocol methods with an
in-memory transport; responses are read back with llhttp's response parser.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import httptools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uniws.api import Api
from uniws.http import FrontLimits, HttpFront, Routes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_api import StandInNode  # noqa: E402  (the API's in-memory node of its unit tests)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Wire:
    """The transport side of one connection, in memory."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.half_closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.half_closed, "write after close"
        self.out += data

    def write_eof(self) -> None:
        self.half_closed = True

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return default


class EchoApi:
    """Answers each API request with its own body; `X-API-Key: k` is the key."""

    def matches(self, path: str) -> bool:
        return path == "/api"

    def head_check(self, method, path, query, headers):
        return None if headers.get("x-api-key") == "k" else (401, [], b"")

    def body_limit(self, path: str) -> int:
        return 1 << 62                  # the front's limit alone, as the real API

    async def handle(self, method, path, query, headers, body, dispatched=None):
        await asyncio.sleep(0)
        return 200, [("Content-Type", "application/octet-stream")], body


class Responses:
    def __init__(self) -> None:
        self.parsed: list[tuple[int, bytes]] = []
        self._body = bytearray()
        self.parser = httptools.HttpResponseParser(self)

    def on_body(self, data: bytes) -> None:
        self._body += data

    def on_message_complete(self) -> None:
        self.parsed.append((self.parser.get_status_code(), bytes(self._body)))
        self._body.clear()


def read_responses(out: bytes) -> list[tuple[int, bytes]]:
    responses = Responses()
    responses.parser.feed_data(out)          # raises on anything that is not well-formed HTTP
    return responses.parsed


async def _drive(pieces: list[bytes], limits: FrontLimits, settle: int = 20) -> tuple[HttpFront, Wire]:
    front = HttpFront(Routes(api=EchoApi(), health_path="/health"), limits)
    wire = Wire()
    front.connection_made(wire)
    for piece in pieces:
        if wire.closed:
            break
        front.data_received(piece)
        await asyncio.sleep(0)
    for _ in range(settle):
        await asyncio.sleep(0)
    return front, wire


def run(pieces: list[bytes], limits: FrontLimits | None = None) -> tuple[HttpFront, Wire, FrontLimits]:
    limits = limits or FrontLimits()
    front, wire = asyncio.run(_drive(pieces, limits))
    front.connection_lost(None)
    assert limits.incomplete == 0 and not limits.fronts      # nothing left counted or registered
    return front, wire, limits


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points + [len(data)]:
        pieces.append(data[last:point])
        last = point
    return [p for p in pieces if p]


token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(lambda s: "x-" + s)
value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)


@st.composite
def api_request(draw) -> tuple[bytes, bytes]:
    """(request bytes, body) of a keyed API request, Content-Length or chunked at random sizes."""
    body = draw(st.binary(max_size=300))
    headers = b"".join(f"{n}: {v}\r\n".encode() for n, v in draw(st.lists(st.tuples(token, value), max_size=5)))
    head = b"POST /api?x=1 HTTP/1.1\r\nHost: h\r\nX-API-Key: k\r\n" + headers
    if draw(st.booleans()):
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body, body
    sizes = draw(st.lists(st.integers(1, 50), max_size=20))
    chunks, at = [], 0
    for size in sizes:
        if at >= len(body):
            break
        chunks.append(body[at:at + size])
        at += size
    if at < len(body):
        chunks.append(body[at:])
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    return head + b"Transfer-Encoding: chunked\r\n\r\n" + encoded, body


@SETTINGS
@given(st.lists(api_request(), min_size=1, max_size=6), st.lists(st.integers(0, 10_000), max_size=30))
def test_pipelined_requests_split_anywhere_are_answered_in_order(requests, cuts):
    stream = b"".join(raw for raw, _ in requests)
    _, wire, _ = run(split(stream, cuts))
    assert read_responses(bytes(wire.out)) == [(200, body) for _, body in requests]
    assert not wire.closed


@SETTINGS
@given(st.binary(max_size=2000), st.lists(st.integers(0, 10_000), max_size=20))
def test_random_bytes_get_well_formed_answers_or_a_close(data, cuts):
    _, wire, _ = run(split(data, cuts))
    read_responses(bytes(wire.out))


MUTATIONS = [b"\r\n", b":", b" ", b"\r\n\r\n", b"0\r\n", b"-1", b"\x00", b"ffffffff", b"Content-Length: 9\r\n",
             b"Transfer-Encoding: chunked\r\n", b"Expect: 100-continue\r\n", b"Connection: close\r\n"]


@SETTINGS
@given(st.lists(api_request(), min_size=1, max_size=3), st.lists(st.tuples(st.integers(0, 10_000),
       st.sampled_from(MUTATIONS)), min_size=1, max_size=6), st.lists(st.integers(0, 10_000), max_size=20))
def test_mutated_requests_get_well_formed_answers_or_a_close(requests, mutations, cuts):
    stream = bytearray(b"".join(raw for raw, _ in requests))
    for at, insert in mutations:
        at %= len(stream) + 1
        stream[at:at] = insert
    _, wire, _ = run(split(bytes(stream), cuts))
    for status, _ in read_responses(bytes(wire.out)):
        assert status in (100, 200, 400, 401, 404, 413, 431)


@SETTINGS
@given(st.integers(1, 5000), st.lists(st.integers(1, 64), min_size=1, max_size=200))
def test_chunked_bodies_over_the_limit_are_refused_before_they_are_buffered(limit, sizes):
    head = b"POST /api HTTP/1.1\r\nX-API-Key: k\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = b"".join(b"%x\r\n%s\r\n" % (n, b"a" * n) for n in sizes)
    front, wire, _ = run([head, chunks, b"0\r\n\r\n"], FrontLimits(max_body=limit))
    expected = 413 if sum(sizes) > limit else 200
    assert [status for status, _ in read_responses(bytes(wire.out))] == [expected]
    if expected == 413:
        assert wire.half_closed                             # answered, then closing
        assert front.body is None or sum(map(len, front.body)) <= limit


@SETTINGS
@given(st.integers(0, 10**12))
def test_announced_length_is_judged_on_the_head(length):
    limit = 1000
    head = b"POST /api HTTP/1.1\r\nX-API-Key: k\r\nContent-Length: %d\r\n\r\n" % length
    _, wire, _ = run([head], FrontLimits(max_body=limit))
    statuses = [status for status, _ in read_responses(bytes(wire.out))]
    assert statuses == ([413] if length > limit else ([200] if length == 0 else []))


def test_keyless_head_is_refused_before_the_body():
    head = b"POST /api HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    front, wire, _ = run([head])
    assert read_responses(bytes(wire.out)) == [(401, b"")]
    assert front.parser is None and wire.half_closed         # nothing more is parsed


# -- the API decoder -------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
commands = st.fixed_dictionaries({}, optional={
    "method": st.sampled_from(["publish", "broadcast", "info", "history", "presence", "channels", "x"]) | json_values,
    "params": st.fixed_dictionaries({}, optional={"channel": st.sampled_from(["c", "", "ns:c"]) | json_values,
                                                  "channels": json_values, "data": json_values}) | json_values,
    "id": st.integers(0, 2**33) | json_values,
})


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _handle(path: str, body: bytes) -> int:
    """The status of one API request; an error logged on the way fails the test."""
    api = Api(StandInNode(), api_key="secret", api_insecure=False)
    errors = _Errors()
    logger = logging.getLogger("uniws.api")
    logger.addHandler(errors)
    try:
        status, _, _ = asyncio.run(api.handle("POST", path, "", {"authorization": "apikey secret"}, body))
    finally:
        logger.removeHandler(errors)
    assert not errors.records, [r.getMessage() for r in errors.records]
    return status


@SETTINGS
@given(st.lists(commands, max_size=5), st.sampled_from([b"\n", b" ", b"\r\n"]))
def test_api_command_streams_never_fail_inside(stream, separator):
    body = separator.join(json.dumps(c).encode() for c in stream)
    assert _handle("/api", body) in (200, 400)


@SETTINGS
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
       st.sampled_from(["/api", "/api/publish", "/api/batch", "/api/broadcast", "/api/info"]))
def test_api_any_body_is_200_or_400(body, path):
    assert _handle(path, body) in (200, 400)


@settings(max_examples=30, deadline=None)
@given(st.integers(200, 300_000), st.sampled_from([b"[", b'{"a":', b'{"data":[']),
       st.sampled_from(["/api", "/api/publish", "/api/batch"]))
def test_api_deep_nesting_is_a_400_or_a_107(depth, opener, path):
    inner = opener * depth
    for path_body in (inner, b'{"method":"publish","params":{"channel":"c","data":' + inner + b"}}"):
        assert _handle(path, path_body) in (200, 400)


@SETTINGS
@given(st.integers(0, 300), st.booleans(), st.lists(st.integers(0, 10_000), max_size=10), st.integers(1, 64))
def test_a_handlers_body_limit_refuses_before_buffering(size, chunked, cuts, chunk_size):
    """A handler's own smaller body limit: within it the request is answered, over it 413 (on
    the head when the length is announced, as soon as a chunked body passes it), and the front
    never holds more than the limit of the body."""
    limit = 100

    class Small(EchoApi):
        def body_limit(self, path: str) -> int:
            return limit

    body = b"b" * size
    if chunked:
        parts = [body[i:i + chunk_size] for i in range(0, size, chunk_size)]
        payload = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in parts) + b"0\r\n\r\n"
        head = b"POST /api HTTP/1.1\r\nX-API-Key: k\r\nTransfer-Encoding: chunked\r\n\r\n"
    else:
        payload = body
        head = b"POST /api HTTP/1.1\r\nX-API-Key: k\r\nContent-Length: %d\r\n\r\n" % size

    async def drive():
        front = HttpFront(Routes(api=Small()), FrontLimits())
        wire = Wire()
        front.connection_made(wire)
        held = 0
        for piece in split(head + payload, cuts):
            if wire.closed:
                break
            front.data_received(piece)
            held = max(held, front.body_size)
            await asyncio.sleep(0)
        for _ in range(20):
            await asyncio.sleep(0)
        front.connection_lost(None)
        return wire, held

    wire, held = asyncio.run(drive())
    responses = read_responses(bytes(wire.out))
    assert held <= limit + chunk_size           # at most the piece that crossed the limit was counted
    if size <= limit:
        assert responses == [(200, body)]
    else:
        assert [status for status, _ in responses] == [413]
