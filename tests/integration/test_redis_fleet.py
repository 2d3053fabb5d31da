"""A fleet: two uniws nodes, each with 2 workers, on one Redis (or two shards), as a load
balancer would spread clients over them. Real redis-server processes on free ports."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from tests.redisfixture import RedisServer

from .helpers import connect, wait_for
from .wsclient import UniClient

HISTORY = {"history_size": 1000, "history_ttl": "300s", "recover": True, "presence": True, "join_leave": False}


def fleet_config(*redis: RedisServer, **extra) -> dict:
    return {"engine": "redis", "redis_address": [r.address for r in redis], "workers": 2,
            "redis_prefix": "fleet", **HISTORY, **extra}


@pytest.fixture
def fleet(start_server, redis_server):
    """(node A, node B, redis) on one Redis."""
    config = fleet_config(redis_server)
    return start_server(config), start_server(config), redis_server


def nodes(server) -> list[dict]:
    reply = server.api("info")
    return reply["result"]["nodes"] if "result" in reply else []


def health(server) -> tuple[int, str]:
    r = requests.get(server.base + "/health", timeout=5)
    return r.status_code, r.text


def pushes(client: UniClient, count: int, timeout: float = 10.0) -> list[dict]:
    out = []
    while len(out) < count:
        out.append(client.recv_json(timeout=timeout))
    return out


def test_publish_on_one_node_reaches_the_other_in_order(fleet):
    a, b, _ = fleet
    client, push = connect(b, "56", subs={"chat": {}})
    assert push["type"] == 6 and push["data"]["subs"]["chat"]["recoverable"] is True
    results = [a.publish("chat", {"n": n})["result"] for n in range(200)]
    assert [r["offset"] for r in results] == list(range(1, 201))
    assert len({r["epoch"] for r in results}) == 1 and results[0]["epoch"].isdigit()   # 08 check 25
    got = pushes(client, 200)
    assert [p["data"]["offset"] for p in got] == list(range(1, 201))
    assert [p["data"]["data"]["n"] for p in got] == list(range(200))
    # One order per channel whichever node publishes.
    for n in range(20):
        (a if n % 2 else b).publish("chat", {"n": 200 + n})
    assert [p["data"]["offset"] for p in pushes(client, 20)] == list(range(201, 221))
    client.close()


def test_info_lists_every_node_and_a_stopped_one_leaves(fleet):
    a, b, _ = fleet
    # Whichever worker answers (the registry lives on worker 0, the others copy it each second).
    both = lambda server: all(len(nodes(server)) == 2 for _ in range(4))  # noqa: E731
    wait_for(lambda: both(a) and both(b), timeout=10, what="both nodes in every worker's info")
    assert {n["uid"] for n in nodes(a)} == {n["uid"] for n in nodes(b)}
    client, _ = connect(b, "56")
    wait_for(lambda: sum(n["num_clients"] for n in nodes(a)) == 1, timeout=10, what="B's client seen from A")
    client.close()
    b.stop()
    wait_for(lambda: all(len(nodes(a)) == 1 for _ in range(4)), timeout=3, what="B gone from A's info after its SHUTDOWN")


def test_presence_channels_and_user_commands_across_nodes(fleet):
    a, b, _ = fleet
    on_a = [connect(a, f"u{i}", subs={"room": {}})[0] for i in range(3)]
    on_b = [connect(b, f"u{i}", subs={"room": {}})[0] for i in range(3)]
    # Presence is written after each connect push (eventually consistent, 08 §8.5).
    wait_for(lambda: a.api("presence_stats", {"channel": "room"}).get("result") == {"num_clients": 6, "num_users": 3},
             what="presence of the six clients")
    assert len(b.api("presence", {"channel": "room"})["result"]["presence"]) == 6
    def summed():
        reply = a.api("channels", {"pattern": "room"})
        assert "result" in reply, (reply, a.log()[-3000:], b.log()[-3000:])
        return reply["result"]["channels"] == {"room": {"num_clients": 6}}
    wait_for(summed, what="channels summed over nodes")                                     # 08 check 23
    a.api("disconnect", {"user": "u1"})                                             # 08 check 24
    assert on_b[1].until_closed(timeout=10) == ['{"type":7,"data":{"code":3503,"reason":"force disconnect"}}']
    assert on_a[1].until_closed(timeout=10) == ['{"type":7,"data":{"code":3503,"reason":"force disconnect"}}']
    b.api("subscribe", {"user": "u2", "channel": "extra"})
    for client in (on_a[2], on_b[2]):
        push = client.recv_json(timeout=10)
        assert (push["type"], push["channel"], push["data"]["recoverable"]) == (5, "extra", True)
    wait_for(lambda: a.api("presence_stats", {"channel": "room"})["result"]["num_clients"] == 4,
             what="presence without u1")
    for client in on_a + on_b:
        client.close()


def test_a_client_moving_to_the_other_node_recovers_exactly(fleet):
    a, b, _ = fleet
    client, push = connect(a, "56", subs={"chat": {"recover": True}})
    epoch = push["data"]["subs"]["chat"]["epoch"]
    for n in range(5):
        a.publish("chat", n)
    assert [p["data"]["offset"] for p in pushes(client, 5)] == [1, 2, 3, 4, 5]
    client.close()
    for n in range(5, 12):
        b.publish("chat", n)
    client, push = connect(b, "56", subs={"chat": {"recover": True, "offset": 5, "epoch": epoch}})
    sub = push["data"]["subs"]["chat"]
    assert sub["recovered"] is True and sub["epoch"] == epoch
    assert [p["offset"] for p in sub["publications"]] == list(range(6, 13))
    a.publish("chat", 12)
    assert client.recv_json(timeout=10)["data"]["offset"] == 13
    client.close()


def test_history_survives_a_node_restart(start_server, redis_server):
    config = fleet_config(redis_server, workers=1)
    node = start_server(config)
    client, push = connect(node, "56", subs={"chat": {"recover": True}})
    epoch = push["data"]["subs"]["chat"]["epoch"]
    for n in range(3):
        node.publish("chat", n)
    pushes(client, 3)
    client.close()
    node.stop()
    restarted = start_server(config)
    restarted.publish("chat", 3)
    client, push = connect(restarted, "56", subs={"chat": {"recover": True, "offset": 3, "epoch": epoch}})
    sub = push["data"]["subs"]["chat"]
    assert (sub["recovered"], sub["epoch"], [p["offset"] for p in sub["publications"]]) == (True, epoch, [4])
    client.close()


def test_node_killed_its_clients_reconnect_to_the_other_and_recover(fleet):
    a, b, _ = fleet
    client, push = connect(a, "56", subs={"chat": {"recover": True}})
    epoch = push["data"]["subs"]["chat"]["epoch"]
    b.publish("chat", 0)
    assert client.recv_json(timeout=10)["data"]["offset"] == 1
    a.stop(sig=9)
    for n in range(1, 4):
        b.publish("chat", n)
    client, push = connect(b, "56", subs={"chat": {"recover": True, "offset": 1, "epoch": epoch}})
    sub = push["data"]["subs"]["chat"]
    assert sub["recovered"] is True and [p["data"] for p in sub["publications"]] == [1, 2, 3]
    client.close()


def test_two_redis_shards_carry_one_fleet(start_server):
    shards = [RedisServer().start(), RedisServer().start()]
    try:
        config = fleet_config(*shards)
        a, b = start_server(config), start_server(config)
        channels = [f"ch{i}" for i in range(20)]
        client, push = connect(b, "56", subs={ch: {} for ch in channels})
        assert set(push["data"].get("subs", ())) == set(channels), (push, b.log()[-3000:])
        for ch in channels:
            assert a.publish(ch, ch)["result"]["offset"] == 1
        got = pushes(client, 20)
        assert sorted(p["channel"] for p in got) == sorted(channels)
        streams = [len(shard.command("KEYS", "fleet.stream.meta.*")) for shard in shards]
        assert sum(streams) == 20 and all(streams), streams      # both shards hold some channels
        client.close()
    finally:
        for shard in shards:
            shard.kill()


def test_redis_down_at_start_then_up(start_server):
    redis = RedisServer()                                    # a port nobody listens on yet
    node = start_server(fleet_config(redis, workers=1))
    status, body = health(node)
    assert status == 503 and redis.address in body, body
    assert node.publish("chat", 1) == {"error": {"code": 100, "message": "internal server error"}}
    redis.start()
    try:
        wait_for(lambda: health(node)[0] == 200, timeout=15, what="health 200 once Redis is up")
        assert node.publish("chat", 1)["result"]["offset"] == 1
    finally:
        redis.kill()


def test_redis_restart_under_load_leaves_no_silent_gap(fleet):
    """Publishes fail while Redis is gone; a subscriber either sees every accepted publication
    in order, or is told it cannot (3010, then recovered false) — never a silent gap."""
    a, b, redis = fleet
    client, push = connect(b, "56", subs={"chat": {"recover": True}})
    epoch, position = push["data"]["subs"]["chat"]["epoch"], 0
    accepted, failed, stop = [], [], threading.Event()

    def publisher():
        n = 0
        while not stop.is_set():
            try:
                reply = a.publish("chat", n)
            except Exception:
                reply = {"error": "transport"}
            (accepted if "result" in reply else failed).append((n, reply))
            n += 1
            time.sleep(0.002)                 # paces the load (about 300/s), not a synchronisation

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    wait_for(lambda: len(accepted) >= 50, what="publications before the fault")
    redis.kill()
    wait_for(lambda: health(a)[0] == 503 and health(b)[0] == 503, timeout=10, what="both nodes report 503")
    wait_for(lambda: len(failed) >= 10, what="publishes failing while Redis is down")
    redis.start()                                   # empty: Redis lost the streams
    wait_for(lambda: health(a)[0] == 200 and health(b)[0] == 200, timeout=15, what="health back to 200")
    wait_for(lambda: len(accepted) >= 100 and accepted[-1][1]["result"]["epoch"] != epoch,
             what="publications accepted after the restart")
    stop.set()
    thread.join(timeout=10)
    assert all(reply.get("error", {}).get("code") == 100 for _, reply in failed if reply != {"error": "transport"})

    seen: list[tuple[str, int]] = []
    told_insufficient = False
    try:
        while True:
            push = client.recv_json(timeout=3)
            if push.get("type") == 7:
                told_insufficient = push["data"]["code"] == 3010
                break
            seen.append((epoch, push["data"]["offset"]))
    except Exception:
        pass
    offsets = [o for _, o in seen]
    assert offsets == list(range(1, len(offsets) + 1)), "offsets delivered out of order or with a gap"
    last_old_epoch = max((r["result"]["offset"] for _, r in accepted if r["result"]["epoch"] == epoch), default=0)
    if offsets[-1:] != [last_old_epoch] or any(r["result"]["epoch"] != epoch for _, r in accepted):
        # Publications the client did not get were accepted: it must have been told.
        assert told_insufficient, f"silent gap: got {len(offsets)} of the old epoch, no 3010"
        client, push = connect(b, "56", subs={"chat": {"recover": True, "offset": offsets[-1] if offsets else 0,
                                                       "epoch": epoch}})
        sub = push["data"]["subs"]["chat"]
        assert not sub.get("recovered") and sub["epoch"] != epoch        # a new epoch: the app re-syncs
    client.close()


def _worker_pids(server) -> dict[int, int]:
    import re
    pids = {}
    for index, pid in re.findall(r'"worker (\d+) started \(pid (\d+)\)"', server.log()):
        pids[int(index)] = int(pid)
    return pids


def _on_which_worker(server, connect_one) -> tuple[object, int]:
    """Connect one client and find the worker it landed on (per-worker counts from info)."""
    before = [w["num_clients"] for w in nodes(server)[0]["workers"]]
    client = connect_one()
    after = [w["num_clients"] for w in nodes(server)[0]["workers"]]
    return client, next(i for i, (x, y) in enumerate(zip(before, after)) if y > x)


def test_relaying_worker_killed_its_channels_recover_and_flow_again(start_server, redis_server):
    """The worker that receives channels from Redis for the node dies: the other worker's
    positioned subscribers are told (3010) and recover; plain subscribers get publications
    again once the restarted owner has resubscribed."""
    import os
    import signal

    from uniws.cluster import owner_of

    namespace = {"name": "rec", "history_size": 100, "history_ttl": "300s", "recover": True}
    node = start_server(fleet_config(redis_server, recover=False, history_size=0, history_ttl="0s",
                                     namespaces=[namespace]))
    probe, worker = _on_which_worker(node, lambda: connect(node, "p", subs={})[0])
    probe.close()
    other = 1 - worker
    plain_channel = next(f"ch{i}" for i in range(100) if owner_of(f"ch{i}", 2) == other)
    rec_channel = next(f"rec:ch{i}" for i in range(100) if owner_of(f"rec:ch{i}", 2) == other)
    wait_for(lambda: nodes(node)[0]["num_clients"] == 0, what="the probe gone")
    clients = []                       # both on `worker`, subscribed to channels `other` relays
    while len(clients) < 2:
        subs = {rec_channel: {"recover": True}} if not clients else {plain_channel: {}}
        client, landed = _on_which_worker(node, lambda: connect(node, "u", subs=subs)[0])
        if landed == worker:
            clients.append(client)
        else:
            client.close()
    positioned, plain = clients
    for n in range(3):
        node.publish(rec_channel, n)
        node.publish(plain_channel, n)
    assert [p["data"]["data"] for p in pushes(positioned, 3)] == [0, 1, 2]
    assert [p["data"]["data"] for p in pushes(plain, 3)] == [0, 1, 2]
    owner_pid = _worker_pids(node)[other]
    os.kill(owner_pid, signal.SIGKILL)
    wait_for(lambda: _worker_pids(node)[other] != owner_pid, what="owner restarted")
    assert positioned.until_closed(timeout=10)[-1] == \
        '{"type":7,"data":{"code":3010,"reason":"insufficient state","reconnect":true}}'

    def delivered_again() -> bool:
        node.publish(plain_channel, "again")
        try:
            while True:
                push = plain.recv_json(timeout=0.3)
                if push.get("data", {}).get("data") == "again":
                    return True
        except TimeoutError:
            return False

    wait_for(delivered_again, timeout=15, what="publications flowing again to the plain subscriber")
    plain.close()


def test_connects_during_a_publication_stream_are_exact_and_stay(fleet):
    """A position is read from Redis on one connection while publications arrive on another:
    a client may learn a position ahead of what its worker has delivered. It must then get
    neither those publications again nor a 3010 for them."""
    a, b, _ = fleet
    stop = threading.Event()

    def publisher():
        body = "\n".join(json.dumps({"method": "publish", "params": {"channel": "live", "data": {}}})
                         for _ in range(20))
        with requests.Session() as session:
            while not stop.wait(0.01):          # paces the stream (about 2000/s), not a synchronisation
                session.post(a.base + "/api", data=body, headers={"Authorization": "apikey apikey"}, timeout=10)

    # Positioned watchers on both of B's workers keep a live position there.
    watchers = [UniClient(b.ws_url, {"token": b.token("w"), "subs": {"live": {"recover": True}}}, max_queue=None)
                for _ in range(4)]
    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    try:
        for _ in range(60):
            # An unbounded receive queue: the library keeps reading under the stream, so its
            # close handshake completes at once.
            client = UniClient(b.ws_url, {"token": b.token("56"), "subs": {"live": {"recover": True}}},
                               max_queue=None)
            push = client.recv_json(timeout=10)
            assert push["type"] == 6, push
            start = push["data"]["subs"]["live"].get("offset", 0)
            got = [client.recv_json(timeout=10) for _ in range(5)]
            assert [p.get("type") for p in got] == [None] * 5, got          # no disconnect (3010)
            assert [p["data"]["offset"] for p in got] == list(range(start + 1, start + 6))
            client.close()
    finally:
        stop.set()
        thread.join(timeout=10)
