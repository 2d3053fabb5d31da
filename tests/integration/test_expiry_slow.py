"""Connection and subscription expiry (04 §6.2, 05 §11) and slow clients (05 §4, 03 §5: 3008)."""

from __future__ import annotations

import json
import threading
import time

from .helpers import RawClient, api, api_batch, channel_clients, connect, node_info, wait_for
from .wsclient import UniClient

EXPIRED = '{"type":7,"data":{"code":3005,"reason":"connection expired","reconnect":true}}'
SUB_EXPIRED = '{"type":7,"data":{"code":3006,"reason":"subscription expired","reconnect":true}}'
SLOW = '{"type":7,"data":{"code":3008,"reason":"slow","reconnect":true}}'


def marker(server, client: UniClient, channel: str) -> None:
    """The client is alive and nothing else was pushed to it: the marker is its next message."""
    token = f"marker-{time.monotonic_ns()}"
    server.publish(channel, token)
    assert client.recv_json(timeout=10) == {"channel": channel, "data": {"data": token}}


def test_connection_expiry_and_refresh(start_server):
    server = start_server({"client_expired_close_delay": "1s", "client_expired_sub_close_delay": "1s"})
    exp = int(time.time()) + 3
    stale, push = connect(server, "42", exp=exp)                  # never refreshed
    assert push["data"]["expires"] is True and 1 <= push["data"]["ttl"] <= 3
    refreshed, _ = connect(server, "43", exp=exp, channels=["ctl-43"])
    # Subscription expiry on the same timeline (05 §11): 3006 once expire_at + delay passed.
    sub_expiring, _ = connect(server, "44", exp=exp + 600, channels=["ctl-44"])
    assert api(server, "subscribe", {"user": "44", "channel": "temp", "expire_at": exp}) == {}
    assert sub_expiring.recv_json() == {"type": 5, "channel": "temp", "data": {}}
    # Refresh before exp: the Refresh push, and no expiry at exp + delay.
    assert api(server, "refresh", {"user": "43", "expire_at": int(time.time()) + 60}) == {}
    refresh = refreshed.recv_json()
    assert refresh["type"] == 8 and refresh["data"]["expires"] is True and 58 <= refresh["data"]["ttl"] <= 60

    messages = [m for m in stale.until_closed(timeout=15) if m]
    closed_at = time.time()
    assert messages == [EXPIRED]
    assert closed_at >= exp + 1 - 0.05, closed_at - exp          # not before exp + client_expired_close_delay
    assert closed_at <= exp + 1 + 5, closed_at - exp
    # The refreshed connection was checked at the same deadline and stays.
    marker(server, refreshed, "ctl-43")
    assert [m for m in sub_expiring.until_closed(timeout=15) if m] == [SUB_EXPIRED]
    assert time.time() >= exp + 1 - 0.05
    marker(server, refreshed, "ctl-43")


def test_expire_at_claim_overrides_exp(start_server):
    server = start_server({"client_expired_close_delay": "1s"})
    now = int(time.time())
    # expire_at <= 0: never expires despite exp; expire_at in the future: expires then.
    forever, push = connect(server, "1", exp=now + 2, expire_at=0, channels=["ctl-1"])
    assert "expires" not in push["data"]
    soon, push = connect(server, "2", exp=now + 600, expire_at=now + 2)
    assert push["data"]["expires"] is True and push["data"]["ttl"] <= 2
    assert [m for m in soon.until_closed(timeout=15) if m] == [EXPIRED]
    assert time.time() >= now + 2 + 1 - 0.05
    marker(server, forever, "ctl-1")


# -- slow clients --------------------------------------------------------------------------------


class Reader(threading.Thread):
    """Reads a websocket client continuously (a fast consumer), collecting publication data."""

    def __init__(self, client: UniClient, expected: int) -> None:
        super().__init__(daemon=True)
        self.client, self.expected = client, expected
        self.datas: list = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while len(self.datas) < self.expected:
                message = self.client.recv_json(timeout=30)
                self.datas.append(message["data"]["data"])
        except BaseException as exc:
            self.error = exc


def publish_big(server, channel: str, count: int, size: int, batch: int = 20) -> None:
    payload = "x" * size
    for start in range(0, count, batch):
        api_batch(server, [("publish", {"channel": channel, "data": {"seq": i, "p": payload}})
                           for i in range(start, min(count, start + batch))])


def test_slow_client_is_closed_with_3008(start_server):
    server = start_server({"client_queue_max_size": 65536})
    fast, _ = connect(server, "fast", channels=["big"])
    count, size = 200, 50_000                   # 10 MB: more than the kernel buffers can hide
    reader = Reader(fast, count)
    reader.start()
    slow = RawClient(server.port, rcvbuf=4096)
    slow.send_text(json.dumps({"token": server.token("slow", channels=["big"])}))
    assert json.loads(slow.read_text())["type"] == 6
    # From now on the slow client reads nothing until the server gave up on it.
    publisher = threading.Thread(target=publish_big, args=(server, "big", count, size), daemon=True)
    publisher.start()
    wait_for(lambda: channel_clients(server, "big") == 1, timeout=30, what="slow client unsubscribed")
    # Reading at last (within the write timeout): an in-order prefix of the stream, 3008, EOF.
    texts = slow.read_all_texts()
    slow.close()
    assert texts[-1] == SLOW
    seqs = [json.loads(t)["data"]["data"]["seq"] for t in texts[:-1]]
    assert seqs == list(range(len(seqs))) and len(seqs) < count
    # The fast subscriber is unaffected and receives everything, in order.
    publisher.join(60)
    reader.join(60)
    assert reader.error is None and [d["seq"] for d in reader.datas] == list(range(count))
    marker(server, fast, "big")
    assert node_info(server)["num_clients"] == 1
    assert "Traceback" not in server.log()


def test_closed_slow_client_that_never_reads_is_dropped(start_server):
    """After 3008 a peer that still reads nothing must not hold its socket and queue forever."""
    server = start_server({"client_queue_max_size": 65536, "uni_websocket_ping_interval": "1s",
                           "uni_websocket_write_timeout": "1s"})
    fast, _ = connect(server, "fast", channels=["big"])
    reader = Reader(fast, 200)
    reader.start()
    slow = RawClient(server.port, rcvbuf=4096)
    slow.send_text(json.dumps({"token": server.token("slow", channels=["big"])}))
    assert json.loads(slow.read_text())["type"] == 6
    publish_big(server, "big", 200, 50_000)
    wait_for(lambda: channel_clients(server, "big") == 1, timeout=30, what="slow client unsubscribed")
    reader.join(60)
    assert reader.error is None and len(reader.datas) == 200
    # Still not reading: the server gives up on the socket after the write timeout.
    wait_for(lambda: node_info(server)["num_clients"] == 1, timeout=15, interval=0.1,
             what="closing slow connection dropped")
    slow.close()
