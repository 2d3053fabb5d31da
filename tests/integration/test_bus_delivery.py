"""Success means delivered to the owner: a publication the channel's owner refuses, or that the
bus cannot carry, is answered with an error by every worker, in both API formats and in batches."""

from __future__ import annotations

import json
import os
import signal

import requests

from uniws.cluster import owner_of

from .test_workers import _client_on_worker, wait_for, worker_pids
from .wsclient import UniClient

HEADERS = {"Authorization": "apikey apikey", "Connection": "close"}   # a fresh connection: any worker
LONG = "x" * 70_000
BAD_REQUEST = {"code": 107, "message": "bad request"}
UNKNOWN_CHANNEL = {"code": 102, "message": "unknown channel"}


def v3(server, *commands: dict) -> list[dict]:
    body = "\n".join(json.dumps(c) for c in commands)
    r = requests.post(server.base + "/api", data=body, headers=HEADERS, timeout=30)
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.split("\n")]


def v5(server, method: str, params: dict) -> dict:
    r = requests.post(f"{server.base}/api/{method}", json=params, headers=HEADERS, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def publish(channel: str, n) -> dict:
    return {"method": "publish", "params": {"channel": channel, "data": {"n": n}}}


def test_publication_to_an_overlong_channel_is_an_error_on_every_worker(start_server):
    server = start_server({"workers": 2})
    client = UniClient(server.ws_url, {"token": server.token("u1"), "subs": {"ok": {}}})
    assert client.recv_json()["type"] == 6
    for _ in range(8):                            # fresh connections: both workers answer some
        assert v3(server, publish(LONG, 0)) == [{"error": BAD_REQUEST}]
        assert v5(server, "publish", {"channel": LONG, "data": {}}) == {"error": BAD_REQUEST}
        assert v5(server, "broadcast", {"channels": ["ok", LONG], "data": {"n": 1}})["result"]["responses"][1] \
            == {"error": BAD_REQUEST}
        assert v5(server, "history", {"channel": LONG}) == {"error": BAD_REQUEST}
    # Inside batches the other commands still succeed, in order.
    assert v3(server, publish("ok", 2), publish(LONG, 3), publish("ok", 4)) == [
        {"result": {}}, {"error": BAD_REQUEST}, {"result": {}}]
    replies = v5(server, "batch", {"commands": [{"publish": {"channel": "ok", "data": {"n": 5}}},
                                                {"publish": {"channel": LONG, "data": {"n": 6}}},
                                                {"publish": {"channel": "ok", "data": {"n": 7}}}]})["replies"]
    assert replies == [{"publish": {}}, {"error": BAD_REQUEST}, {"publish": {}}]
    assert [client.recv_json()["data"]["data"]["n"] for _ in range(12)] == [1] * 8 + [2, 4, 5, 7]
    assert "Traceback" not in server.log()


def test_publication_refused_by_its_owner_is_an_error_not_a_success(start_server):
    """The owner refuses what the worker that took the call accepted: here the owner alone has
    reloaded a configuration without the channel's namespace (a reload racing publishes). A
    posted publish (no history) must fail with the owner's error, alone in its batch, and
    reach no subscriber."""
    server = start_server({"workers": 2, "namespaces": [{"name": "ns"}]})
    channel = next(f"ns:x{i}" for i in range(100) if owner_of(f"ns:x{i}", 2) == 1)
    watcher = _client_on_worker(server, 0, "w", channel)           # on the worker that still accepts
    config = json.loads(server.path.read_text())
    server.path.write_text(json.dumps({**config, "namespaces": []}))
    os.kill(worker_pids(server)[1], signal.SIGHUP)                 # the owner only
    wait_for(lambda: "configuration successfully reloaded" in server.log())
    for _ in range(8):
        assert v3(server, publish(channel, 0)) == [{"error": UNKNOWN_CHANNEL}]
        assert v5(server, "publish", {"channel": channel, "data": {}}) == {"error": UNKNOWN_CHANNEL}
        assert v3(server, publish("top", 1), publish(channel, 2), publish("top", 3)) == [
            {"result": {}}, {"error": UNKNOWN_CHANNEL}, {"result": {}}]
        replies = v5(server, "batch", {"commands": [{"publish": {"channel": "top", "data": {}}},
                                                    {"publish": {"channel": channel, "data": {}}}]})["replies"]
        assert replies == [{"publish": {}}, {"error": UNKNOWN_CHANNEL}]
        responses = v5(server, "broadcast", {"channels": ["top", channel], "data": {}})["result"]["responses"]
        assert responses == [{"result": {}}, {"error": UNKNOWN_CHANNEL}]
    v3(server, {"method": "disconnect", "params": {"user": "w"}})
    # The watcher was sent nothing for the refused publications before its disconnect.
    assert [json.loads(m).get("type") for m in watcher.until_closed(timeout=10)] == [7]
    assert "Traceback" not in server.log()


def test_every_subscriber_sees_a_channels_publications_in_one_order(start_server):
    """Publications with no history, taken concurrently by both workers (eight API connections
    at once), reach a subscriber on each worker in the same order: the channel's owner sends
    them all, so there is one order per channel even without offsets."""
    import threading

    server = start_server({"workers": 2})
    channel = "order"
    watchers = [_client_on_worker(server, w, f"w{w}", channel) for w in (0, 1)]
    sent = 8 * 25

    def publisher(k: int) -> None:
        session = requests.Session()            # one connection each; the kernel picks its worker
        for batch in range(5):
            body = "\n".join(json.dumps(publish(channel, f"{k}-{batch}-{i}")) for i in range(5))
            r = session.post(server.base + "/api", data=body, headers={"Authorization": "apikey apikey"},
                             timeout=30)
            assert r.status_code == 200 and r.text.count('"result"') == 5, r.text

    threads = [threading.Thread(target=publisher, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = [[w.recv_json()["data"]["data"]["n"] for _ in range(sent)] for w in watchers]
    assert len(set(seen[0])) == sent and seen[0] == seen[1]
