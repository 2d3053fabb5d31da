"""The PyPI `cent` clients against a real server: 5.x (/api/<method>) in-process, 4.x (/api) in a subprocess.

Both major versions are named `cent`, so 4.1.0 is installed into tests/.deps/cent4 (by .ci/deps)
and run by a child interpreter with that directory first on its path.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import cent

from .wsclient import UniClient

DEPS = Path(__file__).resolve().parents[1] / ".deps"
CONFIG = {"history_size": 10, "history_ttl": "300s", "presence": True, "join_leave": True,
          "namespaces": [{"name": "nohist"}]}


@pytest.fixture(scope="session")
def cent4_path() -> str:
    target = DEPS / "cent4"
    if not (target / "cent" / "core.py").exists():    # installed before the tests, never mid-test
        pytest.fail(f"cent 4.1.0 is not installed in {target}: run .ci/deps (the README's test command does)")
    return str(target)


def run_cent4(cent4_path: str, server, body: str) -> dict:
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {cent4_path!r})
        import cent
        assert cent.__file__.startswith({cent4_path!r})
        client = cent.Client("{server.base}/api", api_key="apikey", timeout=5)
        out = {{}}
    """) + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_cent4_every_method(start_server, cent4_path):
    server = start_server(CONFIG)
    client = UniClient(server.ws_url, {"token": server.token("42"), "subs": {"chat": {}}})
    connect = client.recv_json()
    out = run_cent4(cent4_path, server, """
        out["publish"] = client.publish("chat", {"text": "1"})
        out["broadcast"] = client.broadcast(["chat", "nohist:x"], {"b": 1})
        out["presence"] = client.presence("chat")
        out["presence_stats"] = client.presence_stats("chat")
        out["history"] = client.history("chat", limit=10)
        client.subscribe("42", "extra")
        client.unsubscribe("42", "extra")
        out["channels"] = client.channels()
        out["info"] = client.info()
        client.history_remove("chat")
        out["history_after_remove"] = client.history("chat", limit=10)
        try:
            client.publish("nope:x", 1)
        except cent.ResponseError as exc:
            out["error"] = str(exc)
        client.add("publish", {"channel": "chat", "data": 2})
        client.add("presence_stats", {"channel": "chat"})
        out["batch"] = client.send()
        client.disconnect("42")
        bad = cent.Client("%s/api" % client.address.rsplit("/api", 1)[0], api_key="wrong")
        try:
            bad.info()
        except cent.RequestException as exc:
            out["wrong_key"] = str(exc)
    """)
    epoch = out["publish"]["epoch"]
    assert out["publish"] == {"offset": 1, "epoch": epoch}
    assert out["broadcast"]["responses"] == [{"result": {"offset": 2, "epoch": epoch}}, {"result": {}}]
    assert list(out["presence"]) == [connect["data"]["client"]]
    assert out["presence"][connect["data"]["client"]]["user"] == "42"
    assert out["presence_stats"] == {"num_clients": 1, "num_users": 1}
    assert [p["offset"] for p in out["history"][0]] == [1, 2] if isinstance(out["history"], list) else True
    assert out["channels"] == {"chat": {"num_clients": 1}}
    assert out["info"]["nodes"][0]["num_clients"] == 1
    assert "102" in out["error"] or "unknown channel" in out["error"]
    assert len(out["batch"]) == 2 and out["batch"][1]["result"] == {"num_clients": 1, "num_users": 1}
    assert out["wrong_key"] == "wrong status code: 401"
    # What the connected client saw, in order.
    pushes = [json.loads(m) for m in client.until_closed() if m]
    kinds = [(p.get("type", 0), p.get("channel")) for p in pushes]
    assert kinds == [(1, "chat"), (0, "chat"), (0, "chat"), (5, "extra"), (1, "extra"), (2, "extra"), (3, "extra"),
                     (0, "chat"), (7, None)], kinds
    assert pushes[-1] == {"type": 7, "data": {"code": 3503, "reason": "force disconnect"}}


def test_cent5_every_method(start_server):
    server = start_server(CONFIG)
    client = UniClient(server.ws_url, {"token": server.token("42", exp=int(time.time()) + 600)})
    connect = client.recv_json()
    api = cent.Client(f"{server.base}/api", "apikey")
    published = api.publish(cent.PublishRequest(channel="chat", data={"text": "1"}))
    assert published.offset == 1 and len(published.epoch) == 4
    result = api.broadcast(cent.BroadcastRequest(channels=["chat", "nope:x"], data={"b": 1}))
    assert result.responses[0].result.offset == 2 and result.responses[1].error.code == 102
    api.subscribe(cent.SubscribeRequest(user="42", channel="chat"))
    assert client.recv_json()["type"] == 5
    assert client.recv_json()["type"] == 1          # join (join_leave on)
    presence = api.presence(cent.PresenceRequest(channel="chat"))
    assert list(presence.presence) == [connect["data"]["client"]]
    stats = api.presence_stats(cent.PresenceStatsRequest(channel="chat"))
    assert (stats.num_clients, stats.num_users) == (1, 1)
    history = api.history(cent.HistoryRequest(channel="chat", limit=10))
    assert [p.offset for p in history.publications] == [1, 2] and history.offset == 2
    channels = api.channels(cent.ChannelsRequest())
    assert set(channels.channels) == {"chat"}
    info = api.info(cent.InfoRequest())
    assert info.nodes[0].num_clients == 1
    api.refresh(cent.RefreshRequest(user="42", expire_at=int(time.time()) + 100))
    refresh = client.recv_json()
    assert refresh["type"] == 8 and refresh["data"]["expires"] is True and 98 <= refresh["data"]["ttl"] <= 100
    api.unsubscribe(cent.UnsubscribeRequest(user="42", channel="chat"))
    assert client.recv_json()["type"] == 2          # its own leave, then the unsubscribe push
    assert client.recv_json() == {"type": 3, "channel": "chat", "data": {"code": 2000, "reason": "server unsubscribe"}}
    api.history_remove(cent.HistoryRemoveRequest(channel="chat"))
    assert api.history(cent.HistoryRequest(channel="chat", limit=10)).publications == []
    batch = api.batch(cent.BatchRequest(requests=[cent.PublishRequest(channel="chat", data=1),
                                                  cent.InfoRequest()]))
    assert batch.replies[0].offset == 3
    with pytest.raises(cent.CentApiResponseError) as err:
        api.publish(cent.PublishRequest(channel="nope:x", data=1))
    assert err.value.code == 102
    with pytest.raises(cent.CentUnauthorizedError):
        cent.Client(f"{server.base}/api", "wrong").info(cent.InfoRequest())
    api.disconnect(cent.DisconnectRequest(user="42", disconnect=cent.Disconnect(code=4500, reason="banned")))
    assert client.until_closed() == ['{"type":7,"data":{"code":4500,"reason":"banned"}}']
