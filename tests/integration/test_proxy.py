"""Connect and refresh proxies (spec 08 §1-3) against a real backend process (proxy_backend.py)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import uuid

import pytest
import requests

from .conftest import ROOT, free_port
from .helpers import api, connect, node_info, wait_for
from .wsclient import UniClient

INTERNAL = {"type": 7, "data": {"code": 3004, "reason": "internal server error", "reconnect": True}}
EXPIRED = {"type": 7, "data": {"code": 3005, "reason": "connection expired", "reconnect": True}}
BAD_REQUEST = {"type": 7, "data": {"code": 3501, "reason": "bad request"}}


class Backend:
    """The scriptable backend process, stopped by PID."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.integration.proxy_backend"], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode() if ready else ""
        assert line.startswith("PORT "), f"backend did not start: {line!r}"
        self.port = int(line.split()[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: dict) -> None:
        """Replies for `path`, in order (the last one repeats); forgets its recorded requests."""
        full = [{"status": 200, "delay": 0, **r} for r in replies]
        for reply in full:
            if not isinstance(reply.get("body", ""), str):
                reply["body"] = json.dumps(reply["body"])
        r = requests.post(self.url("/_control/script"), json={"path": path, "replies": full}, timeout=10)
        assert r.status_code == 200

    def requests(self, path: str) -> list[dict]:
        return requests.get(self.url("/_control/requests"), params={"path": path}, timeout=10).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def backend():
    b = Backend()
    yield b
    b.stop()


def proxied(backend: Backend, **extra) -> dict:
    return {"proxy_connect_endpoint": backend.url("/connect"), "proxy_http_headers": ["Cookie"], **extra}


def closing_push(client: UniClient, timeout: float = 10.0) -> dict:
    """The only non-ping message before the server closed the connection."""
    messages = [json.loads(m) for m in client.until_closed(timeout=timeout) if m]
    assert len(messages) == 1, messages
    return messages[0]


def test_connect_allowed_with_channels_and_subs(start_server, backend):
    backend.script("/connect", {"body": {"result": {
        "user": "56", "channels": ["news"], "subs": {"chat": {"data": {"welcome": 1}}},
        "data": {"x": 1}, "info": {"name": "Alex"}}}})
    server = start_server(proxied(backend, presence=True))
    first = {"data": {"a": 1}, "name": "n", "version": "v", "subs": {"news": {}, "other": {}}}
    client = UniClient(server.ws_url, first, additional_headers={"Cookie": "sid=1"})
    push = client.recv_json(timeout=10)
    assert push["type"] == 6
    assert push["data"]["data"] == {"x": 1}
    assert push["data"]["subs"] == {"news": {}, "chat": {"data": {"welcome": 1}}}
    assert "expires" not in push["data"] and "ttl" not in push["data"]
    # The backend's channels replace the requested ones: "other" is not subscribed.
    server.publish("news", {"n": 1})
    server.publish("other", {"o": 1})
    server.publish("chat", {"c": 1})
    assert client.recv_json(timeout=10) == {"channel": "news", "data": {"data": {"n": 1}}}
    assert client.recv_json(timeout=10) == {"channel": "chat", "data": {"data": {"c": 1}}}
    # The connection is user 56 with the backend's info.
    presence = api(server, "presence", {"channel": "news"})["result"]["presence"]
    assert [(p["user"], p["conn_info"]) for p in presence.values()] == [("56", {"name": "Alex"})]

    [call] = backend.requests("/connect")
    assert call["headers"]["Content-Type"] == "application/json"
    assert call["headers"]["Cookie"] == "sid=1"
    body = json.loads(call["body"])
    assert uuid.UUID(body.pop("client")).version == 4
    assert sorted(body.pop("channels")) == ["news", "other"]
    assert body == {"transport": "uni_websocket", "protocol": "json", "encoding": "json",
                    "name": "n", "version": "v", "data": {"a": 1}}
    assert api(server, "disconnect", {"user": "56"}) == {}
    assert closing_push(client) == {"type": 7, "data": {"code": 3503, "reason": "force disconnect"}}


def test_headers_are_passed_only_when_listed(start_server, backend):
    # The backend sets a cookie in its reply: it must not ride along with later calls.
    backend.script("/connect", {"body": {"result": {"user": "1"}}, "headers": {"Set-Cookie": "leak=1; Path=/"}})
    server = start_server(proxied(backend, proxy_http_headers=["x-real-ip", "User-Agent"],
                                  proxy_connect_endpoint=backend.url("/connect").replace("127.0.0.1", "localhost")))
    headers = {"Cookie": "sid=secret", "X-Real-IP": "10.1.2.3", "Authorization": "Bearer t"}
    clients = []
    for _ in range(2):
        clients.append(UniClient(server.ws_url, {}, additional_headers=headers, user_agent_header="agent/1"))
        assert clients[-1].recv_json(timeout=10)["type"] == 6
    calls = backend.requests("/connect")
    assert len(calls) == 2
    for call in calls:
        sent = {name.lower(): value for name, value in call["headers"].items()}
        assert sent["x-real-ip"] == "10.1.2.3" and sent["user-agent"] == "agent/1"
        assert "cookie" not in sent and "authorization" not in sent
    for client in clients:
        client.close()


def test_connect_refused_with_error(start_server, backend):
    server = start_server(proxied(backend))
    backend.script("/connect", {"body": {"error": {"code": 1000, "message": "nope"}}})
    assert closing_push(UniClient(server.ws_url, {})) == INTERNAL
    backend.script("/connect", {"body": {"error": {"code": 109, "message": "token expired"}}})
    assert closing_push(UniClient(server.ws_url, {})) == EXPIRED
    backend.script("/connect", {"body": {}})
    assert closing_push(UniClient(server.ws_url, {})) == BAD_REQUEST
    backend.script("/connect", {"body": {"result": {"user": "56", "channels": ["nope:x"]}}})
    assert closing_push(UniClient(server.ws_url, {})) == INTERNAL
    backend.script("/connect", {"body": {"result": {"user": "56", "expire_at": int(time.time()) - 10}}})
    assert closing_push(UniClient(server.ws_url, {})) == EXPIRED
    backend.script("/connect", {"body": {"result": {"user": "56", "b64info": "!!!"}}})
    assert closing_push(UniClient(server.ws_url, {})) == INTERNAL


def test_disconnect_with_custom_code(start_server, backend):
    server = start_server(proxied(backend))
    backend.script("/connect", {"body": {"disconnect": {"code": 4001, "reason": "go away", "reconnect": False}}})
    assert closing_push(UniClient(server.ws_url, {})) == {"type": 7, "data": {"code": 4001, "reason": "go away"}}
    # disconnect wins over result (08 §2.3 order); reconnect true is written.
    backend.script("/connect", {"body": {"disconnect": {"code": 4002, "reason": "x", "reconnect": True},
                                         "result": {"user": "1"}}})
    assert closing_push(UniClient(server.ws_url, {})) == {
        "type": 7, "data": {"code": 4002, "reason": "x", "reconnect": True}}


def test_backend_down_or_broken_is_internal_error(start_server, backend):
    down = start_server({"proxy_connect_endpoint": f"http://127.0.0.1:{free_port()}/connect"})
    assert closing_push(UniClient(down.ws_url, {})) == INTERNAL
    assert node_info(down)["metrics"]["items"]["uniws.proxy.connect_errors"] == 1
    server = start_server(proxied(backend))
    backend.script("/connect", {"status": 500, "body": "oops"})
    assert closing_push(UniClient(server.ws_url, {})) == INTERNAL
    backend.script("/connect", {"body": "not json"})
    assert closing_push(UniClient(server.ws_url, {})) == INTERNAL
    assert node_info(server)["metrics"]["items"]["uniws.proxy.connect_errors"] == 2
    assert "Traceback" not in down.log() + server.log()


def test_slow_backend_is_cut_at_the_timeout(start_server, backend):
    backend.script("/connect", {"body": {"result": {"user": "late"}}, "delay": 60})
    server = start_server(proxied(backend, proxy_connect_timeout="500ms"))
    slow = UniClient(server.ws_url, {})
    # While the call is pending, more messages from the client are dropped, not new connects.
    for _ in range(50):
        slow.send({"data": {"again": True}})
    # Others are served meanwhile: a token client connects and receives a publication.
    other, push = connect(server, "42", channels=["news"])
    assert push["type"] == 6
    server.publish("news", "hi")
    assert other.recv_json(timeout=10) == {"channel": "news", "data": {"data": "hi"}}
    started = time.monotonic()
    assert closing_push(slow, timeout=30) == INTERNAL
    # Cut by the 0.5 s timeout, not by the backend's 60 s answer (generous bound for a busy machine).
    assert time.monotonic() - started < 20
    assert len(backend.requests("/connect")) == 1
    other.close()


def test_every_worker_asks_the_backend(start_server, backend):
    backend.script("/connect", {"body": {"result": {"user": "7", "channels": ["news"]}}})
    server = start_server(proxied(backend, workers=2))
    clients = [UniClient(server.ws_url, {}) for _ in range(8)]
    for client in clients:
        assert client.recv_json(timeout=10)["type"] == 6
    wait_for(lambda: node_info(server)["num_clients"] == 8, what="8 clients counted")
    assert node_info(server)["metrics"]["items"]["uniws.proxy.connect_calls"] == 8
    server.publish("news", "all")
    for client in clients:
        assert client.recv_json(timeout=10) == {"channel": "news", "data": {"data": "all"}}
        client.close()


def test_no_result_is_anonymous_when_allowed(start_server, backend):
    backend.script("/connect", {"body": {}})
    server = start_server(proxied(backend, client_anonymous=True))
    client = UniClient(server.ws_url, {"subs": {"news": {}}})
    push = client.recv_json(timeout=10)
    assert push["type"] == 6 and "subs" not in push["data"]      # requested subs are not taken
    assert node_info(server)["num_clients"] == 1
    client.close()


def test_token_connect_does_not_ask_the_proxy(start_server, backend):
    server = start_server(proxied(backend))
    client, push = connect(server, "42", subs={"news": {}})
    assert push["type"] == 6 and set(push["data"]["subs"]) == {"news"}
    server.publish("news", 1)
    assert client.recv_json(timeout=10) == {"channel": "news", "data": {"data": 1}}
    assert backend.requests("/connect") == []
    client.close()


def test_refresh_extends_a_connection_then_expired_ends_it(start_server, backend):
    now = int(time.time())
    backend.script("/connect", {"body": {"result": {"user": "56", "expire_at": now + 2, "channels": ["news"],
                                                    "meta": {"k": "v"}}}})
    backend.script("/refresh", {"body": {"result": {"expire_at": now + 4, "info": {"v": 2}}}},
                   {"body": {"result": {"expired": True}}})
    server = start_server(proxied(backend, proxy_refresh_endpoint=backend.url("/refresh"),
                                  proxy_include_connection_meta=True, presence=True))
    client = UniClient(server.ws_url, {}, additional_headers={"Cookie": "sid=7"})
    push = client.recv_json(timeout=10)
    assert push["type"] == 6 and "expires" not in push["data"] and "ttl" not in push["data"]
    wait_for(lambda: backend.requests("/refresh"), timeout=15, what="first refresh call")
    assert time.time() >= now + 2                      # called at the expiration moment, not before
    # Past its first expiry the connection is alive, with the info the refresh gave it.
    wait_for(lambda: [p["conn_info"] for p in api(server, "presence", {"channel": "news"})["result"]
                      ["presence"].values() if "conn_info" in p] == [{"v": 2}], what="info replaced")
    server.publish("news", "still here")
    assert client.recv_json(timeout=10) == {"channel": "news", "data": {"data": "still here"}}
    # The second refresh says expired: 3005.
    assert closing_push(client, timeout=15) == EXPIRED
    calls = backend.requests("/refresh")
    assert len(calls) == 2
    body = json.loads(calls[0]["body"])
    assert uuid.UUID(body.pop("client")).version == 4
    assert body == {"transport": "uni_websocket", "protocol": "json", "encoding": "json", "user": "56",
                    "meta": {"k": "v"}}
    assert calls[0]["headers"]["Cookie"] == "sid=7"


def test_refresh_for_token_connections_and_failed_calls(start_server, backend):
    """A JWT connection's exp also goes to the refresh proxy; a failed call keeps the connection."""
    backend.script("/refresh", {"status": 500})
    server = start_server({"proxy_refresh_endpoint": backend.url("/refresh")})
    # exp 3 s ahead: with 1 s, a loaded machine verified the token after it had expired (3005).
    client, push = connect(server, "42", channels=["news"], exp=int(time.time()) + 3)
    assert push["type"] == 6 and "expires" not in push["data"], push
    wait_for(lambda: backend.requests("/refresh"), timeout=15, what="refresh call")
    server.publish("news", "kept")
    assert client.recv_json(timeout=10) == {"channel": "news", "data": {"data": "kept"}}
    assert json.loads(backend.requests("/refresh")[0]["body"])["user"] == "42"
    wait_for(lambda: node_info(server)["metrics"]["items"]["uniws.proxy.refresh_errors"] == 1,
             what="refresh error counted")
    client.close()


def test_unsupported_proxy_options_refuse_to_start(tmp_path):
    for option, value in (("proxy_rpc_endpoint", "http://127.0.0.1:1/rpc"), ("granular_proxy_mode", True),
                          ("proxy_connect_endpoint", "grpc://127.0.0.1:1")):
        path = tmp_path / "config.json"
        path.write_text(json.dumps({option: value}))
        command = [sys.executable, "-m", "uniws", "-c", str(path), "--port", str(free_port())]
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=tmp_path, check=False)
        assert done.returncode != 0
        [fatal] = [json.loads(line) for line in (done.stdout + done.stderr).splitlines() if '"fatal"' in line]
        assert fatal["message"].startswith(f'option "{option}"'), fatal
