"""Connect-time recovery end to end (spec 05 §8, vectors 05 §12 #14-#21) and a recovery soak test."""

from __future__ import annotations

import json
import random
import threading

import pytest
import requests

from .helpers import api, connect, engine_metric, publish_many, wait_for
from .wsclient import UniClient

CONFIG = {
    "recover": True, "history_size": 10, "history_ttl": "300s",
    "namespaces": [
        {"name": "small", "recover": True, "history_size": 3, "history_ttl": "300s"},
        {"name": "short", "recover": True, "history_size": 10, "history_ttl": "1s"},
        {"name": "norecover", "history_size": 10, "history_ttl": "300s"},
    ],
}


def hint(offset: int | None = None, epoch: str | None = None) -> dict:
    h: dict = {"recover": True}
    if offset is not None:
        h["offset"] = offset
    if epoch is not None:
        h["epoch"] = epoch
    return h


def recover(server, channel: str, h: dict, user: str = "42", **claims) -> tuple[UniClient, dict]:
    client, push = connect(server, user, subs={channel: h}, **claims)
    assert push["type"] == 6, push
    return client, push["data"]["subs"][channel]


def offsets(sub: dict) -> list[int]:
    return [p["offset"] for p in sub.get("publications", [])]


@pytest.fixture
def server(start_server):
    return start_server(CONFIG)


def test_vector_14_fresh_channel(server):
    _, sub = recover(server, "fresh", hint())
    assert list(sub) == ["recoverable", "epoch", "recovered", "positioned"]
    assert sub["recoverable"] is sub["recovered"] is sub["positioned"] is True and len(sub["epoch"]) == 4


def test_vectors_15_16_19_20(server):
    results = publish_many(server, "ch", [{"n": i} for i in range(1, 6)])
    epoch = results[0]["epoch"]
    # 15: publications [4,5], recovered, offset 5; then live publications continue at 6.
    client, sub = recover(server, "ch", hint(3, epoch))
    assert list(sub) == ["recoverable", "epoch", "publications", "recovered", "offset", "positioned"]
    assert sub["publications"] == [{"data": {"n": 4}, "offset": 4}, {"data": {"n": 5}, "offset": 5}]
    assert (sub["recovered"], sub["offset"], sub["epoch"]) == (True, 5, epoch)
    server.publish("ch", {"n": 6})
    assert client.recv_json() == {"channel": "ch", "data": {"data": {"n": 6}, "offset": 6}}
    # 16: epoch mismatch: nothing recovered, current position reported.
    _, sub = recover(server, "ch", hint(3, "XXXX"))
    assert sub == {"recoverable": True, "epoch": epoch, "offset": 6, "positioned": True}
    # 19: client at the top with an empty epoch: recovered, nothing to deliver.
    _, sub = recover(server, "ch", hint(6, ""))
    assert sub == {"recoverable": True, "epoch": epoch, "recovered": True, "offset": 6, "positioned": True}
    # 20: client ahead of the stream: not recovered.
    _, sub = recover(server, "ch", hint(9, epoch))
    assert sub == {"recoverable": True, "epoch": epoch, "offset": 6, "positioned": True}
    # Offset 0 with the right epoch recovers everything retained.
    _, sub = recover(server, "ch", hint(0, epoch))
    assert offsets(sub) == [1, 2, 3, 4, 5, 6] and sub["recovered"] is True
    # No hint: just the position.
    _, push = connect(server, "42", subs={"ch": {}})
    assert push["data"]["subs"]["ch"] == {"recoverable": True, "epoch": epoch, "offset": 6, "positioned": True}


def test_vector_17_window_exceeded(server):
    epoch = publish_many(server, "small:ch", [1, 2, 3, 4, 5])[0]["epoch"]
    _, sub = recover(server, "small:ch", hint(1, epoch))
    assert offsets(sub) == [3, 4, 5] and "recovered" not in sub and sub["offset"] == 5
    # Exactly at the window's edge it still recovers.
    _, sub = recover(server, "small:ch", hint(2, epoch))
    assert offsets(sub) == [3, 4, 5] and sub["recovered"] is True


def test_vector_18_history_expired(server):
    epoch = publish_many(server, "short:ch", [1, 2, 3, 4, 5])[0]["epoch"]
    wait_for(lambda: api(server, "history", {"channel": "short:ch", "limit": -1})["result"]["publications"] == [],
             timeout=10, what="history ttl expiry")
    _, sub = recover(server, "short:ch", hint(3, epoch))
    assert sub == {"recoverable": True, "epoch": epoch, "offset": 5, "positioned": True}
    _, sub = recover(server, "short:ch", hint(5, epoch))
    assert sub["recovered"] is True and "publications" not in sub


def test_vector_21_recovery_limit(start_server):
    server = start_server({**CONFIG, "client_recovery_max_publication_limit": 2})
    epoch = publish_many(server, "ch", [1, 2, 3, 4, 5])[0]["epoch"]
    client, sub = recover(server, "ch", hint(1, epoch))
    assert offsets(sub) == [2, 3] and "recovered" not in sub and sub["offset"] == 5
    # 05 §8.3: the live stream continues after the top; 4 and 5 are never delivered.
    server.publish("ch", 6)
    assert client.recv_json()["data"]["offset"] == 6
    _, sub = recover(server, "ch", hint(4, epoch))
    assert offsets(sub) == [5, 6] and sub["recovered"] is True


def test_hints_apply_to_any_server_side_channel(start_server):
    server = start_server({**CONFIG, "user_subscribe_to_personal": True})
    epoch = publish_many(server, "tok", [1, 2, 3])[0]["epoch"]
    personal_epoch = publish_many(server, "#42", [1, 2])[0]["epoch"]
    # Token channel and personal channel take the recovery hints sent in connect `subs`.
    _, push = connect(server, "42", channels=["tok"], subs={"tok": hint(1, epoch), "#42": hint(0, personal_epoch)})
    subs = push["data"]["subs"]
    assert offsets(subs["tok"]) == [2, 3] and subs["tok"]["recovered"] is True
    assert offsets(subs["#42"]) == [1, 2] and subs["#42"]["recovered"] is True
    # A channel without `recover` ignores the hint.
    publish_many(server, "norecover:x", [1])
    _, push = connect(server, "42", subs={"norecover:x": hint(0, "")})
    assert push["data"]["subs"]["norecover:x"] == {}


def test_recovery_across_a_stream_reset(start_server):
    server = start_server({**CONFIG, "history_meta_ttl": "1s"})
    old = publish_many(server, "ch", [1, 2, 3])[0]["epoch"]
    wait_for(lambda: engine_metric(server) == 0, timeout=10, what="stream metadata expiry")
    new = publish_many(server, "ch", ["a", "b"])[0]["epoch"]
    assert new != old
    # The old epoch no longer matches: nothing recovered, the new position is reported.
    _, sub = recover(server, "ch", hint(3, old))
    assert sub == {"recoverable": True, "epoch": new, "offset": 2, "positioned": True}
    # 05 §8.2: an empty epoch skips the check.
    _, sub = recover(server, "ch", hint(0, ""))
    assert offsets(sub) == [1, 2] and sub["recovered"] is True and sub["epoch"] == new


# -- soak ------------------------------------------------------------------------------------


class Publisher(threading.Thread):
    """Publishes `total` publications to `channel` through the HTTP API in small batches,
    never past `allowed` (the test moves it): the test, not the machine's speed, decides how
    far the stream runs ahead of the reader, so what a reconnect misses is deterministic."""

    def __init__(self, server, channel: str, total: int, batch: int) -> None:
        super().__init__(daemon=True)
        self.server, self.channel, self.total, self.batch = server, channel, total, batch
        self.top = 0                      # last offset the API returned
        self.epoch = ""
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.allowed = 0
        self.changed = threading.Condition()

    def allow(self, upto: int) -> None:
        with self.changed:
            if upto > self.allowed:
                self.allowed = upto
                if self.allowed - self.top >= self.batch or self.allowed >= self.total:
                    self.changed.notify_all()       # wake the publisher only for a whole batch

    def wait_top(self, target: int, timeout: float = 30.0) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: self.top >= target or self.done.is_set(), timeout):
                raise AssertionError(f"publisher did not reach offset {target} (at {self.top})")

    def run(self) -> None:
        session = requests.Session()
        url = self.server.base + "/api"
        headers = {"Authorization": "apikey apikey"}
        sent = 0
        try:
            while sent < self.total:
                with self.changed:
                    # Whole batches only: one request per publication would take a minute.
                    if not self.changed.wait_for(lambda: self.allowed - sent >= min(self.batch, self.total - sent),
                                                 timeout=60):
                        raise AssertionError(f"reader stopped allowing publications at {sent}")
                    n = min(self.batch, self.total - sent, self.allowed - sent)
                body = "\n".join(json.dumps({"method": "publish", "params": {"channel": self.channel,
                                                                             "data": {"i": sent + k + 1}}})
                                 for k in range(n))
                r = session.post(url, data=body, headers=headers, timeout=30)
                assert r.status_code == 200, r.text
                results = [json.loads(line)["result"] for line in r.text.split("\n")]
                for k, result in enumerate(results):
                    assert result["offset"] == sent + k + 1, (result, sent + k + 1)
                    assert not self.epoch or result["epoch"] == self.epoch
                    self.epoch = result["epoch"]
                sent += n
                with self.changed:
                    self.top = sent
                    self.changed.notify_all()
        except BaseException as exc:                 # reported by the test
            self.error = exc
        finally:
            with self.changed:
                self.done.set()
                self.changed.notify_all()


def run_soak(server, history_size: int, total: int = 10_000, reconnects: int = 100, seed: int = 20240611,
             forced_losses: int = 0) -> dict:
    """One client reconnecting with recovery hints at random moments while the publisher runs.

    Asserts every publication the client processes comes in order without duplicates, that
    reconnects recover exactly when the missed publications still fit in the history window,
    and (with no losses) that every offset 1..total was seen exactly once.
    """
    rng = random.Random(seed)
    channel = "soak"
    publisher = Publisher(server, channel, total, batch=10)
    # How far the stream may run ahead of what the reader took: well inside the window, so
    # a quick reconnect always recovers; a forced absence lets it run past the window.
    lead = min(history_size // 2, 50)
    assert lead > publisher.batch
    stats = {"recovered": 0, "lost": 0, "recovered_pubs": 0, "live_pubs": 0, "sessions": 0,
             "not_recovered": 0}
    seen: list[int] = []               # offsets in processing order, across all sessions
    last = 0
    epoch = ""
    # Reconnect points: random positions in the stream (sorted), each followed by a random pause.
    points = sorted(rng.sample(range(1, total - 50), reconnects))
    # Forced long absences only where the stream still has far more than a window to go.
    forced = set(rng.sample(range(reconnects * 8 // 10), forced_losses)) if forced_losses else set()

    def session(hint_: dict) -> tuple[UniClient, dict]:
        # An unbounded receive queue: with a bounded one, a client that leaves publications
        # unread stops reading its socket and its close() waits out the close timeout.
        client = UniClient(server.ws_url, {"token": server.token("soaker"), "subs": {channel: hint_}},
                           max_queue=None)
        push = client.recv_json(timeout=20)
        assert push["type"] == 6, push
        return client, push["data"]["subs"][channel]

    def take(offset: int) -> None:
        nonlocal last
        assert offset == last + 1, f"offset {offset} after {last} (session {stats['sessions']})"
        last = offset
        seen.append(offset)
        publisher.allow(last + lead)

    def open_session() -> UniClient:
        nonlocal last, epoch
        h = {"recover": True, "offset": last, "epoch": epoch} if stats["sessions"] else {"recover": True}
        client, sub = session(h)
        stats["sessions"] += 1
        top = sub.get("offset", 0)
        assert sub["epoch"] == (epoch or sub["epoch"])
        epoch = sub["epoch"]
        pubs = [p["offset"] for p in sub.get("publications", [])]
        missed = top - last
        if sub.get("recovered"):
            # Recovered: exactly the missed publications, in order.
            assert missed <= history_size, (last, top, history_size)
            assert pubs == list(range(last + 1, top + 1)), (last, top, pubs[:5])
            for offset in pubs:
                take(offset)
            if stats["sessions"] > 1:
                stats["recovered"] += 1
            stats["recovered_pubs"] += len(pubs)
        else:
            # Not recovered only when the window really was exceeded; the retained tail comes.
            assert missed > history_size, f"recovered:false with {missed} missed, history_size {history_size}"
            assert pubs == list(range(top - history_size + 1, top + 1)), (last, top, pubs[:5])
            stats["lost"] += missed - len(pubs)
            stats["not_recovered"] += 1
            last = pubs[0] - 1 if pubs else top
            for offset in pubs:
                take(offset)
        return client

    publisher_started = False
    client = open_session()
    publisher.allow(lead)
    publisher.start()
    publisher_started = True
    try:
        for index, point in enumerate(points):
            # Live part of the session: until the stream passed the planned point.
            while last < point:
                message = client.recv_json(timeout=20)
                assert message.get("channel") == channel and "type" not in message, message
                take(message["data"]["offset"])
                stats["live_pubs"] += 1
            assert publisher.error is None, publisher.error
            client.close()                  # unread buffered publications are dropped with it
            if index in forced:
                # Stay away until more than the window was published.
                target = min(last + history_size + 5, total)
                publisher.allow(target + publisher.batch)
                publisher.wait_top(target)
            else:
                # Stay away while a random number of publications (that the lead allows) pass.
                publisher.wait_top(min(last + rng.randint(0, lead - publisher.batch), total))
            client = open_session()
        # The last session reads up to the end of the stream.
        publisher.allow(total)
        publisher.done.wait(120)
        assert publisher.error is None, publisher.error
        while last < total:
            message = client.recv_json(timeout=20)
            take(message["data"]["offset"])
            stats["live_pubs"] += 1
        client.close()
    finally:
        if publisher_started:
            publisher.done.wait(60)
    assert publisher.top == total and stats["sessions"] == reconnects + 1
    assert seen == sorted(set(seen))                       # in order, each at most once
    if not stats["lost"]:
        assert seen == list(range(1, total + 1))
    return stats


def test_recovery_soak_everything_recovers(start_server):
    server = start_server({"recover": True, "history_size": 20_000, "history_ttl": "300s",
                           "client_recovery_max_publication_limit": 0})
    stats = run_soak(server, history_size=20_000)
    assert stats["recovered"] == 100 and stats["not_recovered"] == stats["lost"] == 0, stats
    assert stats["recovered_pubs"] > 0, stats
    assert "Traceback" not in server.log()


def test_recovery_soak_small_history(start_server):
    server = start_server({"recover": True, "history_size": 100, "history_ttl": "300s",
                           "client_recovery_max_publication_limit": 0})
    stats = run_soak(server, history_size=100, forced_losses=10, seed=7)
    # Exactly the forced long absences lost publications; every quick reconnect recovered.
    assert stats["not_recovered"] == 10 and stats["lost"] > 0, stats
    assert stats["recovered"] == 90, stats
    assert "Traceback" not in server.log()
