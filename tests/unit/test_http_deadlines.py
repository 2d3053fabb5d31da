"""The HTTP front's timeouts: deadline buckets swept with a given clock, no timers, no sleeps."""

from __future__ import annotations

import asyncio
import time

import pytest

from uniws.config import ConfigError, load_config
from uniws.http import LINGER, FrontLimits, HttpFront, Routes

from .test_http_fuzz import EchoApi, Wire, read_responses


def _front(limits: FrontLimits) -> tuple[HttpFront, Wire]:
    front = HttpFront(Routes(api=EchoApi(), health_path="/health"), limits)
    wire = Wire()
    front.connection_made(wire)
    return front, wire


def test_a_silent_connection_is_closed_without_an_answer_after_the_head_timeout():
    limits = FrontLimits(head_timeout=10)
    _, wire = _front(limits)
    limits.sweep(time.monotonic() + 5)
    assert not wire.closed
    limits.sweep(time.monotonic() + 12)
    assert wire.closed and wire.out == b""
    assert limits.incomplete == 0 and not limits.fronts


def test_a_trickled_head_gets_408_then_the_connection_lingers_and_closes():
    limits = FrontLimits(head_timeout=10)
    front, wire = _front(limits)
    front.data_received(b"GET /health HTTP/1.1\r\n")
    front.data_received(b"X-A: 1\r\n")
    limits.sweep(time.monotonic() + 12)
    assert read_responses(bytes(wire.out)) == [(408, b"Request Timeout\n")]
    assert wire.half_closed and not wire.closed              # waiting for the client's FIN
    front.data_received(b"X-B: 2\r\n")                        # dropped
    limits.sweep(time.monotonic() + 12 + LINGER + 1)
    assert wire.closed


def test_a_body_that_stalls_gets_408_after_the_body_timeout():
    limits = FrontLimits(head_timeout=10, body_timeout=30)
    front, wire = _front(limits)
    front.data_received(b"POST /api HTTP/1.1\r\nX-API-Key: k\r\nContent-Length: 10\r\n\r\n12345")
    limits.sweep(time.monotonic() + 20)                       # past the head timeout, body still in time
    assert wire.out == b""
    limits.sweep(time.monotonic() + 32)
    assert read_responses(bytes(wire.out)) == [(408, b"Request Timeout\n")]


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout():
    limits = FrontLimits(head_timeout=10, idle_timeout=60)
    front, wire = _front(limits)
    front.data_received(b"GET /health HTTP/1.1\r\n\r\n")
    assert read_responses(bytes(wire.out)) == [(200, b"{}")]
    limits.sweep(time.monotonic() + 30)                       # past the head timeout: idle now
    assert not wire.closed
    limits.sweep(time.monotonic() + 62)
    assert wire.closed and limits.incomplete == 0


def test_zero_timeouts_never_close():
    limits = FrontLimits(head_timeout=0, body_timeout=0, idle_timeout=0)
    front, wire = _front(limits)
    front.data_received(b"GET /health HTTP/1.1\r\n")
    limits.sweep(time.monotonic() + 10**6)
    assert not wire.closed and len(limits.deadlines) == 0


def test_many_requests_on_one_connection_keep_few_deadline_entries():
    limits = FrontLimits()
    front, wire = _front(limits)
    for _ in range(1000):
        front.data_received(b"GET /health HTTP/1.1\r\n\r\n")
    assert len(read_responses(bytes(wire.out))) == 1000
    assert len(limits.deadlines) <= 4                         # re-armed later, not once per request


def test_pipelined_api_requests_start_one_after_another():
    started = []

    class Recorder(EchoApi):
        async def handle(self, method, path, query, headers, body, dispatched=None):
            started.append(body)
            await asyncio.sleep(0)
            dispatched()                                      # all of this request's commands started
            started.append(b"dispatched " + body)
            await asyncio.sleep(0)
            return 200, [], body

    async def drive():
        front = HttpFront(Routes(api=Recorder()), FrontLimits())
        wire = Wire()
        front.connection_made(wire)
        front.data_received(b"".join(b"POST /api HTTP/1.1\r\nX-API-Key: k\r\nContent-Length: 1\r\n\r\n%d" % i
                                     for i in range(3)))
        for _ in range(20):
            await asyncio.sleep(0)
        return wire

    wire = asyncio.run(drive())
    assert started[:6] == [b"0", b"dispatched 0", b"1", b"dispatched 1", b"2", b"dispatched 2"]
    assert read_responses(bytes(wire.out)) == [(200, b"0"), (200, b"1"), (200, b"2")]


def test_http_options_load_and_refuse_negative_sizes():
    cfg, _ = load_config(None, {}, {"http_max_request_body_size": 1024, "http_header_read_timeout": "2s",
                                    "http_body_read_timeout": "3s", "http_idle_timeout": "4s",
                                    "http_max_incomplete_requests": 7})
    limits = FrontLimits.from_config(cfg)
    assert (limits.max_body, limits.head_timeout, limits.body_timeout, limits.idle_timeout,
            limits.max_incomplete) == (1024, 2.0, 3.0, 4.0, 7)
    default = FrontLimits.from_config(load_config(None, {}, {})[0])
    assert (default.max_body, default.head_timeout, default.body_timeout, default.idle_timeout,
            default.max_incomplete) == (16 << 20, 10.0, 30.0, 60.0, 10_000)
    for name in ("http_max_request_body_size", "http_max_incomplete_requests"):
        with pytest.raises(ConfigError, match=name):
            load_config(None, {}, {name: -1})
    with pytest.raises(ConfigError):
        load_config(None, {}, {"http_idle_timeout": "-1s"})
