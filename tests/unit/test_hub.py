"""The hub's live position rules (05 §9) when positions and publications travel apart.

With Redis, a connect reads the stream position on one connection while publications arrive
on another: a new subscriber may know a position ahead of what its worker has delivered
(it must not get those publications again, nor be dropped), and a publication may arrive
after the position that includes it (late: subscribers without a position still get it)."""

from __future__ import annotations

import asyncio

import pytest

from uniws._fastpath import CONNECTED, Conn, Fanout
from uniws.engine.base import Publication
from uniws.hub import Hub, Subscription


class RecordingFanout(Fanout):
    """The real Fanout's interface, recording what each connection is given."""

    def __init__(self, loop) -> None:
        super().__init__(loop, 1 << 20, lambda: None)
        self.given: dict[Conn, list[bytes]] = {}

    def enqueue(self, conn, frame):
        self.given.setdefault(conn, []).append(frame)

    def deliver(self, subscribers, frame):
        members = [subscribers] if type(subscribers) is Conn else list(subscribers)
        for conn in members:
            self.enqueue(conn, frame)
        return len(members)


@pytest.fixture
def hub():
    loop = asyncio.new_event_loop()
    dropped: list[tuple[Conn, int]] = []
    hub = Hub(RecordingFanout(loop), lambda conn, reason: dropped.append((conn, reason.code)),
              lambda channel: None, lambda channel: None)
    hub.dropped = dropped
    yield hub
    loop.close()


def client(name: str) -> Conn:
    conn = Conn()
    conn.client_id = name
    conn.channels = {}
    conn.state = CONNECTED
    return conn


def offsets(hub: Hub, conn: Conn) -> list[int]:
    frames = hub.fanout.given.get(conn, [])
    return [int(f.split(b'"offset":')[1].split(b"}")[0]) for f in frames]


def publish(hub: Hub, *numbers: int, epoch: str = "E") -> None:
    for n in numbers:
        hub.handle_publication("ch", Publication(b"{}", n), epoch)


def subscribe(hub: Hub, conn: Conn, offset: int | None, epoch: str = "E") -> bool:
    sub = Subscription(recover=offset is not None, epoch=epoch, offset=offset or 0)
    hub.add(conn, "ch", sub)
    return offset is None or hub.note_position(conn, "ch", epoch, offset)


def test_a_subscriber_ahead_of_live_delivery_waits_for_it(hub):
    old, new = client("old"), client("new")
    assert subscribe(hub, old, 10)
    assert subscribe(hub, new, 12)             # read from Redis before 11 and 12 arrived here
    publish(hub, 11, 12, 13, 14)
    assert offsets(hub, old) == [11, 12, 13, 14]
    assert offsets(hub, new) == [13, 14]       # it had 11 and 12 in its connect push
    assert hub.dropped == []


def test_a_late_publication_reaches_only_subscribers_without_a_position(hub):
    positioned, plain = client("positioned"), client("plain")
    assert subscribe(hub, positioned, 5)       # its position already includes 5
    assert subscribe(hub, plain, None)
    publish(hub, 5, 6)
    assert offsets(hub, positioned) == [6]
    assert offsets(hub, plain) == [5, 6]
    assert hub.dropped == []


def test_a_gap_or_another_epoch_still_drops_positioned_subscribers(hub):
    a, b = client("a"), client("b")
    assert subscribe(hub, a, 3)
    assert subscribe(hub, b, 4)                # held until 4 has been delivered here
    publish(hub, 4, 6)                         # 5 never came
    assert sorted(conn.client_id for conn, code in hub.dropped if code == 3010) == ["a", "b"]


def test_a_subscriber_behind_what_was_delivered_cannot_be_exact(hub):
    a, b = client("a"), client("b")
    assert subscribe(hub, a, 8)
    publish(hub, 9)
    assert not subscribe(hub, b, 7)


def test_a_held_subscriber_that_leaves_is_forgotten(hub):
    old, new = client("old"), client("new")
    assert subscribe(hub, old, 1)
    assert subscribe(hub, new, 3)
    hub.remove(new, "ch")
    publish(hub, 2, 3, 4)
    assert offsets(hub, new) == [] and offsets(hub, old) == [2, 3, 4]
    assert hub.ahead == {}
