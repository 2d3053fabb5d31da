"""Requests, posts and barriers (uniws/rpc.py) between two real buses on one event loop, and the
publication messages the owner broadcasts."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uniws._shmring import RingClosed
from uniws.bus import Bus, BusFiles
from uniws.channels import channel_name_ok
from uniws.cluster import Cluster, decode_pubs, encode_pub, encode_pubs
from uniws.engine.base import Publication
from uniws.errors import ApiError
from uniws.rpc import ANSWER, ANSWERED, FAILED, Rpc


class Worker:
    """One side: a bus, an rpc, and a serve function that records what it served."""

    def __init__(self, loop, index: int, files: BusFiles, serve=None) -> None:
        self.served: list[tuple[int, int, dict, bytes]] = []
        self.rpc = Rpc(loop, serve or self.serve, timeout=60)
        self.bus = Bus(loop, index, files, self)
        self.rpc.attach(self.bus)
        self.gaps = 0

    def serve(self, sender: int, request_id: int, args: dict, tail: bytes):
        self.served.append((sender, request_id, args, tail))
        if args["op"] == "fail":
            raise ApiError(args["code"])
        if args["op"] == "crash":
            raise RuntimeError("boom")
        return {"echo": args.get("n")}, tail

    def on_bus_message(self, sender: int, message: bytes) -> None:
        if message[0] in (ANSWER, FAILED):
            self.rpc.on_answer(message)
        else:
            self.rpc.on_request(sender, message)

    def on_bus_gap(self, sender: int) -> None:
        self.gaps += 1


@pytest.fixture
def pair(tmp_path):
    loop = asyncio.new_event_loop()
    files = BusFiles.create(str(tmp_path), 2, ring_bytes=1 << 16)
    a, b = Worker(loop, 0, files), Worker(loop, 1, files)
    yield loop, a, b
    a.bus.close()
    b.bus.close()
    loop.close()


def test_request_is_answered_with_result_and_tail(pair):
    loop, a, b = pair
    result = loop.run_until_complete(a.rpc.request(1, "echo", {"n": 5}, b"raw"))
    assert result == ({"echo": 5}, b"raw")
    assert b.served == [(0, b.served[0][1], {"op": "echo", "n": 5}, b"raw")] and b.served[0][1] != 0


def test_request_error_is_the_workers_api_error(pair):
    loop, a, b = pair
    with pytest.raises(ApiError) as raised:
        loop.run_until_complete(a.rpc.request(1, "fail", {"code": 108}))
    assert raised.value.code == 108
    with pytest.raises(ApiError) as raised:
        loop.run_until_complete(a.rpc.request(1, "crash", {}))
    assert raised.value.code == 100


def test_posts_of_one_turn_share_a_barrier_and_fail_one_by_one(pair):
    loop, a, b = pair

    async def turn():
        futures = [a.rpc.post(1, "echo", {"n": 1}), a.rpc.post(1, "fail", {"code": 102}),
                   a.rpc.post(1, "echo", {"n": 3}), a.rpc.post(1, "crash", {})]
        return await asyncio.gather(*futures, return_exceptions=True)

    outcomes = loop.run_until_complete(turn())
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], ApiError) and outcomes[1].code == 102
    assert isinstance(outcomes[3], ApiError) and outcomes[3].code == 100
    # Posts are served with request id 0, then one barrier (a request) for the turn.
    assert [(rid, args["op"]) for _, rid, args, _ in b.served][:4] == [(0, "echo"), (0, "fail"), (0, "echo"),
                                                                        (0, "crash")]
    assert [args["op"] for _, _, args, _ in b.served[4:]] == ["barrier"]
    assert not a.rpc._waiting and not a.rpc._barriers          # nothing left behind


def test_unanswered_barrier_fails_its_posts_after_the_timeout(pair):
    loop, a, b = pair
    b.bus.close()                                  # the owner reads nothing any more
    future = a.rpc.post(1, "echo", {})
    loop.run_until_complete(asyncio.sleep(0))     # the flush sends the barrier
    a.rpc.expire(float("inf"))
    with pytest.raises(ApiError) as raised:
        loop.run_until_complete(future)
    assert raised.value.code == 100
    assert not a.rpc._waiting and not a.rpc._barriers


def test_request_too_large_for_the_bus_is_refused_before_sending(pair):
    loop, a, b = pair
    with pytest.raises(ApiError) as raised:
        a.rpc.request(1, "echo", {}, b"x" * a.bus.max_message)
    assert raised.value.code == 100
    with pytest.raises(ApiError):
        a.rpc.post(1, "echo", {}, b"x" * a.bus.max_message)
    assert not a.rpc._waiting and not a.rpc._turn and a.bus.ring.position == 0


def test_a_handler_that_answered_by_other_means(pair):
    loop, a, b = pair
    b.rpc.serve = lambda sender, request_id, args, tail: ANSWERED
    future = a.rpc.request(1, "echo", {})
    loop.run_until_complete(asyncio.sleep(0.05))
    assert not future.done()                       # no answer sent: the handler said it answers
    a.rpc.resolve(next(iter(a.rpc._waiting)), [7, "ep"])
    assert loop.run_until_complete(future) == ([7, "ep"], b"")


def test_send_after_close_raises(pair):
    loop, a, b = pair
    a.bus.close()
    with pytest.raises(RingClosed):
        a.bus.send(1, b"x")


def test_a_turn_larger_than_a_ring_is_published_early_so_readers_keep_up(pair):
    """Writes of one loop turn totalling several rings: the reader gets every one of them."""
    loop, a, b = pair
    got: list[bytes] = []
    b.on_bus_message = lambda sender, message: got.append(message)

    async def burst():
        for n in range(3000):                      # 3000 x 104 bytes: ~5 rings of 64 KiB
            a.bus.send(1, n.to_bytes(4, "little") * 25)
            if a.bus.ring.pending == 0:
                await asyncio.sleep(0.001)          # the reader runs when the doorbell rings
        await asyncio.sleep(0.05)

    loop.run_until_complete(burst())
    assert b.gaps == 0
    assert [int.from_bytes(m[:4], "little") for m in got] == list(range(3000))


# -- the publication messages the owner broadcasts (cluster.py) ----------------------------------

publications = st.builds(Publication, st.binary(max_size=200), st.integers(0, 2**64 - 1),
                         st.one_of(st.none(), st.dictionaries(st.text(max_size=10), st.text(max_size=10),
                                                              min_size=1, max_size=3)))


class _Receiver:
    """The node side of a Cluster that receives P messages: what it delivers, for `wanted` channels."""

    def __init__(self, wanted: set[str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.wanted = wanted
        self.delivered: list[tuple[str, Publication, str]] = []

    def handle_publication(self, channel, pub, epoch) -> None:
        self.delivered.append((channel, pub, epoch))


@given(st.text(min_size=1, max_size=50).filter(channel_name_ok), st.text(max_size=8).filter(
    lambda e: e == "" or channel_name_ok(e)), publications, st.integers(-1, 30), st.integers(0, 2**32 - 1),
    st.booleans())
def test_publication_message_round_trip(channel, epoch, pub, requester, request_id, wanted):
    """What the bus handler decodes of a P message is what was encoded; a channel not wanted
    here is not delivered, and the requester's answer is resolved either way."""
    node = _Receiver({channel} if wanted else set())
    cluster = Cluster(node, 3, 31, None)
    resolved = []
    cluster.rpc.resolve = lambda rid, result: resolved.append((rid, result))
    try:
        cluster.on_bus_message(0, encode_pub(channel, epoch, pub, requester, request_id))
    finally:
        node.loop.close()
    assert node.delivered == ([(channel, pub, epoch)] if wanted else [])
    assert resolved == ([(request_id, [pub.offset, epoch])] if requester == 3 else [])


@given(st.lists(publications, max_size=20))
def test_history_tail_round_trip(pubs):
    assert decode_pubs(encode_pubs(pubs)) == pubs


def test_post_failure_answered_before_its_barrier_is_sent(pair):
    """A turn published early (a large turn): the owner may answer a failed post before the
    turn's barrier is even sent; the failure still lands on that post alone."""
    loop, a, b = pair
    failing = a.rpc.post(1, "fail", {"code": 102})
    fine = a.rpc.post(1, "echo", {})
    a.bus._publish()                               # what an early publish does mid-turn
    b.bus._on_doorbell()                           # the owner serves both posts now
    b.bus.flush()
    a.bus._on_doorbell()                           # the failure arrives; no barrier sent yet
    assert failing.done() and failing.exception().code == 102 and not fine.done()
    assert loop.run_until_complete(fine) is None   # the barrier, sent at the flush, confirms the other

