"""The server API against a live server: every vector of tests/api_vectors.py (spec 06 §8) in order,
the transport vectors 06 §8 #1-#14, and the effects of subscribe / unsubscribe / disconnect /
refresh / channels / info on real uni_websocket connections, through both the v3 (`/api`) and the
v5 (`/api/<method>`) formats.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from tests import api_vectors as V

from .conftest import Server
from .helpers import connect, publish_many, wait_for
from .wsclient import UniClient

VECTOR_CONFIG = {"api_key": "secret", "history_size": 10, "history_ttl": "300s", "presence": True,
                 "namespaces": [{"name": "nohist"}]}


# -- 06 §8 vectors -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vector_outcomes(tmp_path_factory) -> dict[str, tuple[int, bytes, list[str]]]:
    """Run every vector once, in list order, on one fresh server; outcome per vector name."""
    server = Server(tmp_path_factory.mktemp("vectors"), VECTOR_CONFIG)
    state: dict = {}
    outcomes = {}
    session = requests.Session()
    try:
        for name, request, expected in V.VECTORS:
            body = V.render_body(request, state)
            url = server.base + request.path + (f"?{request.query}" if request.query else "")
            r = session.request(request.method, url, data=body, headers=request.headers, timeout=30)
            outcomes[name] = (r.status_code, r.content, V.check(expected, r.status_code, r.content, state))
        assert "Traceback" not in server.log()
    finally:
        server.stop()
    return outcomes


@pytest.mark.parametrize("name, request_, expected", V.VECTORS, ids=[v[0] for v in V.VECTORS])
def test_api_vector(vector_outcomes, name, request_, expected):
    status, body, problems = vector_outcomes[name]
    if problems and expected.optional:
        pytest.skip(f"optional vector not implemented: {problems}")
    assert not problems, (name, status, body)


INFO = '{"method":"info","params":{}}'


@pytest.mark.parametrize("method, path, headers, body, status, response", [
    ("GET", "/api", {"Authorization": "apikey secret"}, INFO, 405, b""),                     # 1
    ("POST", "/api", {}, INFO, 401, b""),                                                      # 2
    ("POST", "/api", {"Authorization": "apikey wrong"}, INFO, 401, b""),                       # 3
    ("POST", "/api", {"Authorization": "Bearer secret"}, INFO, 401, b""),                      # 4
    ("POST", "/api", {"Authorization": "APIKEY secret"}, INFO, 200, None),                     # 5
    ("POST", "/api?api_key=secret", {}, INFO, 200, None),                                      # 6
    ("POST", "/api", {"X-API-Key": "secret"}, INFO, 200, None),                                # 7
    ("POST", "/api", {"Authorization": "apikey secret"}, "", 400, b"Bad Request\n"),            # 8
    ("POST", "/api", {"Authorization": "apikey secret"}, "not json", 400, b"Bad Request\n"),    # 9
    ("POST", "/api", {"Authorization": "apikey secret"}, '{"method":"unknown","params":{}}', 400,
     b"Bad Request\n"),                                                                        # 10
    ("POST", "/api", {"Authorization": "apikey secret"}, "[1,2]", 400, b"Bad Request\n"),       # 11
], ids=["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"])
def test_transport_vectors(vector_server, method, path, headers, body, status, response):
    r = requests.request(method, vector_server.base + path, headers=headers, data=body, timeout=10)
    assert r.status_code == status
    if response is not None:
        assert r.content == response
    else:
        nodes = r.json()["result"]["nodes"]
        assert V.matches(V.IDLE_NODES, nodes, {})


@pytest.fixture(scope="module")
def vector_server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("transport"), VECTOR_CONFIG)
    yield server
    server.stop()


def test_transport_vector_12_info_without_params(vector_server):
    r = requests.post(vector_server.base + "/api", data='{"method":"info"}',
                      headers={"Authorization": "apikey secret"}, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    assert V.matches({"result": {"nodes": V.IDLE_NODES}}, r.json(), {})


def test_transport_vectors_13_14_key_configuration(start_server):
    no_key = start_server({"api_key": ""})
    for headers in ({}, {"Authorization": "apikey "}, {"Authorization": "apikey apikey"}):
        r = requests.post(no_key.base + "/api", data=INFO, headers=headers, timeout=10)
        assert r.status_code == 401 and r.content == b""
    insecure = start_server({"api_key": "", "api_insecure": True})
    r = requests.post(insecure.base + "/api", data=INFO, timeout=10)
    assert r.status_code == 200 and "nodes" in r.json()["result"]
    r = requests.post(insecure.base + "/api/info", data="{}", timeout=10)
    assert r.status_code == 200 and "nodes" in r.json()["result"]


# -- effects on live connections, in both formats -----------------------------------------------


def call(server, fmt: str, method: str, params: dict) -> dict:
    """One API call in the v3 or v5 format; returns `{"result": ...}` or `{"error": ...}`."""
    if fmt == "v3":
        r = requests.post(server.base + "/api", data=json.dumps({"method": method, "params": params}),
                          headers={"Authorization": "apikey apikey"}, timeout=10)
        assert r.status_code == 200, (r.status_code, r.text)
        reply = r.json()
        if method in ("subscribe", "unsubscribe", "disconnect", "refresh", "history_remove") and "error" not in reply:
            assert r.content == b"{}"          # void v3 replies are the bare object (06 §2.5)
            return {"result": {}}
        return reply
    r = requests.post(f"{server.base}/api/{method}", data=json.dumps(params), headers={"X-API-Key": "apikey"},
                      timeout=10)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def marker(server, client: UniClient, channel: str) -> None:
    """Publish to `channel` and require that to be the client's next push: proves nothing came before."""
    token = f"marker-{time.monotonic_ns()}"
    server.publish(channel, token)
    message = client.recv_json()
    assert message == {"channel": channel, "data": {"data": token}}, message


FORMATS = pytest.mark.parametrize("fmt", ["v3", "v5"])

EFFECTS_CONFIG = {"namespaces": [
    {"name": "rec", "recover": True, "history_size": 10, "history_ttl": "300s"},
    {"name": "pos", "position": True, "history_size": 10, "history_ttl": "300s"},
    {"name": "hist", "history_size": 10, "history_ttl": "300s"},
    {"name": "jl", "join_leave": True, "presence": True},
]}


@FORMATS
def test_subscribe(start_server, fmt):
    server = start_server(EFFECTS_CONFIG)
    a, push_a = connect(server, "42", channels=["ctl-a"])
    b, push_b = connect(server, "42", channels=["ctl-b"])
    c, push_c = connect(server, "43", channels=["ctl-c"])
    ca, cb, cc = (p["data"]["client"] for p in (push_a, push_b, push_c))
    # Every connection of the user gets the push; other users' connections do not.
    assert call(server, fmt, "subscribe", {"user": "42", "channel": "news"}) == {"result": {}}
    for client in (a, b):
        assert client.recv() == '{"type":5,"channel":"news","data":{}}'
    server.publish("news", "n1")
    for client in (a, b):
        assert client.recv_json() == {"channel": "news", "data": {"data": "n1"}}
    marker(server, c, "ctl-c")
    # Filters: client id, session.
    call(server, fmt, "subscribe", {"user": "42", "channel": "only-a", "client": ca})
    call(server, fmt, "subscribe", {"user": "42", "channel": "only-b", "session": push_b["data"]["session"]})
    call(server, fmt, "subscribe", {"user": "42", "channel": "nobody", "client": cc})     # cc is not user 42
    assert a.recv_json() == {"type": 5, "channel": "only-a", "data": {}}
    assert b.recv_json() == {"type": 5, "channel": "only-b", "data": {}}
    marker(server, a, "ctl-a")
    marker(server, b, "ctl-b")
    marker(server, c, "ctl-c")
    # recover / position options: the push carries epoch and offset; later publications continue.
    epoch = publish_many(server, "rec:x", [1, 2, 3])[0]["epoch"]
    call(server, fmt, "subscribe", {"user": "43", "channel": "rec:x", "data": {"welcome": 1}})
    assert c.recv() == ('{"type":5,"channel":"rec:x","data":{"recoverable":true,"epoch":"%s","offset":3,'
                        '"positioned":true,"data":{"welcome":1}}}' % epoch)
    server.publish("rec:x", 4)
    assert c.recv_json() == {"channel": "rec:x", "data": {"data": 4, "offset": 4}}
    call(server, fmt, "subscribe", {"user": "43", "channel": "pos:x"})
    push = c.recv_json()
    assert list(push["data"]) == ["epoch", "positioned"] and push["data"]["positioned"] is True
    server.publish("pos:x", 1)
    assert c.recv_json() == {"channel": "pos:x", "data": {"data": 1, "offset": 1}}
    # Overrides (v5 aliases included) on a history namespace without recover/position.
    override = {"force_recovery": {"value": True}} if fmt == "v5" else {"recover": {"value": True}}
    call(server, fmt, "subscribe", {"user": "43", "channel": "hist:x", "override": override})
    push = c.recv_json()
    assert push["data"]["recoverable"] is True and push["data"]["positioned"] is True
    override = {"force_positioning": {"value": True}} if fmt == "v5" else {"position": {"value": True}}
    call(server, fmt, "subscribe", {"user": "43", "channel": "hist:y", "override": override})
    push = c.recv_json()
    assert list(push["data"]) == ["epoch", "positioned"]
    # info becomes chan_info in the Join and in presence; re-subscribing repeats the push.
    call(server, fmt, "subscribe", {"user": "43", "channel": "jl:x", "info": {"r": 1}})
    assert c.recv_json() == {"type": 5, "channel": "jl:x", "data": {}}
    join = {"type": 1, "channel": "jl:x", "data": {"info": {"user": "43", "client": cc, "chan_info": {"r": 1}}}}
    assert c.recv_json() == join
    presence = call(server, fmt, "presence", {"channel": "jl:x"})["result"]["presence"]
    assert presence == {cc: {"user": "43", "client": cc, "chan_info": {"r": 1}}}
    call(server, fmt, "subscribe", {"user": "43", "channel": "jl:x", "info": {"r": 1}})
    assert c.recv_json() == {"type": 5, "channel": "jl:x", "data": {}}
    assert c.recv_json() == join
    assert call(server, fmt, "presence_stats", {"channel": "jl:x"})["result"] == {"num_clients": 1, "num_users": 1}
    # expire_at in the past: error 100 when the user has connections here, success otherwise.
    past = int(time.time()) - 10
    assert call(server, fmt, "subscribe", {"user": "43", "channel": "late", "expire_at": past}) == {
        "error": {"code": 100, "message": "internal server error"}}
    assert call(server, fmt, "subscribe", {"user": "nobody", "channel": "late", "expire_at": past}) == {"result": {}}
    marker(server, c, "ctl-c")
    channels = call(server, fmt, "channels", {})["result"]["channels"]
    assert channels["news"] == {"num_clients": 2} and channels["rec:x"] == {"num_clients": 1}
    assert "nobody" not in channels


@FORMATS
def test_subscribe_channel_limit(start_server, fmt):
    server = start_server({"client_channel_limit": 2})
    client, _ = connect(server, "42", channels=["a", "b"])
    # Re-subscribing an existing channel at the limit is fine.
    assert call(server, fmt, "subscribe", {"user": "42", "channel": "b"}) == {"result": {}}
    assert client.recv_json() == {"type": 5, "channel": "b", "data": {}}
    # A new channel over the limit disconnects the connection; the call still succeeds.
    assert call(server, fmt, "subscribe", {"user": "42", "channel": "c"}) == {"result": {}}
    assert [m for m in client.until_closed(timeout=10) if m] == [
        '{"type":7,"data":{"code":3505,"reason":"channel limit"}}']


@FORMATS
def test_unsubscribe(start_server, fmt):
    server = start_server(EFFECTS_CONFIG)
    a, push_a = connect(server, "42", channels=["ctl-a", "jl:room", "news"])
    b, push_b = connect(server, "42", channels=["ctl-b", "jl:room", "news"])
    c, push_c = connect(server, "43", channels=["ctl-c", "jl:room", "news"])
    ca, cb, cc = (p["data"]["client"] for p in (push_a, push_b, push_c))
    # Drain the Joins (each connection sees its own and the later ones).
    for client, count in ((a, 3), (b, 2), (c, 1)):
        for _ in range(count):
            assert client.recv_json()["type"] == 1
    # One connection only (client filter): Leave to everybody in the room, then the push.
    assert call(server, fmt, "unsubscribe", {"user": "42", "channel": "jl:room", "client": ca}) == {"result": {}}
    leave_a = {"type": 2, "channel": "jl:room", "data": {"info": {"user": "42", "client": ca}}}
    assert a.recv_json() == leave_a
    assert a.recv_json() == {"type": 3, "channel": "jl:room", "data": {"code": 2000, "reason": "server unsubscribe"}}
    assert b.recv_json() == leave_a and c.recv_json() == leave_a
    assert set(call(server, fmt, "presence", {"channel": "jl:room"})["result"]["presence"]) == {cb, cc}
    # All connections of the user: no more publications for them; the other user still gets them.
    call(server, fmt, "unsubscribe", {"user": "42", "channel": "news"})
    for client in (a, b):
        assert client.recv_json() == {"type": 3, "channel": "news", "data": {"code": 2000,
                                                                               "reason": "server unsubscribe"}}
    server.publish("news", "after")
    assert c.recv_json() == {"channel": "news", "data": {"data": "after"}}
    marker(server, a, "ctl-a")
    marker(server, b, "ctl-b")
    assert call(server, fmt, "channels", {"pattern": "news"})["result"]["channels"] == {"news": {"num_clients": 1}}
    assert call(server, fmt, "unsubscribe", {"user": "42", "channel": "nope:x"})["error"]["code"] == 102


@FORMATS
def test_disconnect(start_server, fmt):
    server = start_server({})
    a, push_a = connect(server, "42")
    b, push_b = connect(server, "42")
    c, push_c = connect(server, "42")
    anon, _ = connect(server, "")
    other, _ = connect(server, "43", channels=["ctl-other"])
    cb = push_b["data"]["client"]
    # Custom code/reason/reconnect, whitelisting one connection and picking one by session.
    custom = {"code": 4000, "reason": "custom", "reconnect": True}
    assert call(server, fmt, "disconnect", {"user": "42", "session": push_a["data"]["session"],
                                            "disconnect": custom}) == {"result": {}}
    assert a.until_closed(timeout=10) == ['{"type":7,"data":{"code":4000,"reason":"custom","reconnect":true}}']
    call(server, fmt, "disconnect", {"user": "42", "whitelist": [cb],
                                     "disconnect": {"code": 4501, "reason": "bye", "reconnect": False}})
    assert c.until_closed(timeout=10) == ['{"type":7,"data":{"code":4501,"reason":"bye"}}']
    # The whitelisted connection and other users stay; `user: ""` targets anonymous connections.
    call(server, fmt, "disconnect", {"user": ""})
    assert anon.until_closed(timeout=10) == ['{"type":7,"data":{"code":3503,"reason":"force disconnect"}}']
    marker(server, other, "ctl-other")
    call(server, fmt, "subscribe", {"user": "42", "channel": "still"})
    assert b.recv_json() == {"type": 5, "channel": "still", "data": {}}
    wait_for(lambda: call(server, fmt, "info", {})["result"]["nodes"][0]["num_clients"] == 2,
             what="disconnected connections gone")


@FORMATS
def test_refresh(start_server, fmt):
    server = start_server({"namespaces": [{"name": "jl", "join_leave": True}]})
    now = int(time.time())
    a, push = connect(server, "42", exp=now + 100)
    assert push["data"]["expires"] is True
    # Extend: Refresh push with the new ttl.
    call(server, fmt, "refresh", {"user": "42", "expire_at": now + 3600, "info": {"v": 2}})
    refresh = a.recv_json()
    assert refresh["type"] == 8 and refresh["data"]["expires"] is True
    assert 3590 <= refresh["data"]["ttl"] <= 3600
    # The new connection info shows up in later Join pushes.
    call(server, fmt, "subscribe", {"user": "42", "channel": "jl:x"})
    assert a.recv_json()["type"] == 5
    assert a.recv_json()["data"]["info"] == {"user": "42", "client": push["data"]["client"], "conn_info": {"v": 2}}
    # No expire_at: the connection stops expiring.
    call(server, fmt, "refresh", {"user": "42"})
    assert a.recv() == '{"type":8,"data":{}}'
    # expired: true, and an expire_at in the past: 3005.
    b, _ = connect(server, "43")
    call(server, fmt, "refresh", {"user": "43", "expired": True})
    expired = '{"type":7,"data":{"code":3005,"reason":"connection expired","reconnect":true}}'
    assert b.until_closed(timeout=10) == [expired]
    call(server, fmt, "refresh", {"user": "42", "expire_at": now - 5})
    assert [m for m in a.until_closed(timeout=10) if m] == [expired]


@FORMATS
def test_channels_with_pattern(start_server, fmt):
    server = start_server({})
    names = ["chat.1", "chat.2", "chat.10", "dialog#42,43", "other", "a*b"]
    keep = [connect(server, "42", channels=names), connect(server, "43", channels=["chat.1"])]

    def channels(pattern: str) -> dict:
        return call(server, fmt, "channels", {"pattern": pattern})["result"]["channels"]

    assert set(channels("")) == set(names)
    assert channels("chat.*") == {"chat.1": {"num_clients": 2}, "chat.2": {"num_clients": 1},
                                  "chat.10": {"num_clients": 1}}
    assert set(channels("chat.?")) == {"chat.1", "chat.2"}
    assert set(channels("chat.[!1]")) == {"chat.2"}
    assert set(channels("chat.[0-9][0-9]")) == {"chat.10"}
    assert set(channels("{other,chat.2}")) == {"other", "chat.2"}
    assert set(channels("*#*")) == {"dialog#42,43"}
    assert set(channels("a\\*b")) == {"a*b"}
    assert channels("chat") == {}
    assert call(server, fmt, "channels", {"pattern": "["}) == {"error": {"code": 100,
                                                                         "message": "internal server error"}}
    assert len(keep) == 2


@FORMATS
def test_info(start_server, fmt):
    server = start_server({"history_size": 5, "history_ttl": "60s"})

    def node() -> dict:
        nodes = call(server, fmt, "info", {})["result"]["nodes"]
        assert len(nodes) == 1
        return nodes[0]

    first = node()
    assert first["name"] == f"{socket.gethostname()}_{server.port}" and first["version"]
    keep = [connect(server, "42", channels=["a", "b"]), connect(server, "42", channels=["a"]),
            connect(server, "", channels=["c"])]
    entry = node()
    assert entry["uid"] == first["uid"]
    assert (entry["num_clients"], entry["num_users"], entry["num_channels"], entry["num_subs"]) == (3, 2, 3, 4)
    # Engine figures (06 §4.12 `metrics.items`).
    assert entry["metrics"]["items"]["uniws.engine.streams"] == 0
    publish_many(server, "a", [1])
    publish_many(server, "z", [1])
    assert node()["metrics"]["items"]["uniws.engine.streams"] == 2
    assert wait_for(lambda: node().get("uptime", 0) >= 1, timeout=5, interval=0.1, what="uptime")
    assert len(keep) == 3
