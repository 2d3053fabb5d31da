"""The uni_websocket endpoint against a real server process (spec 01, 03 §5, 04)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import time

import pytest
import requests

from .wsclient import UniClient


def connect_push(server, user="test_user", subs=None, **claims):
    client = UniClient(server.ws_url, {"token": server.token(user, **claims), "subs": subs or {}})
    return client, client.recv_json()


def test_seed_scenario_connect_push_and_publications(start_server):
    server = start_server({"user_subscribe_to_personal": True})
    client, push = connect_push(server, subs={"abc": {}}, exp=int(time.time()) + 604800)
    assert push["type"] == 6
    data = push["data"]
    assert list(data) == ["client", "version", "subs", "expires", "ttl", "session"]
    assert data["subs"] == {"#test_user": {}, "abc": {}}
    assert data["expires"] is True and 604790 <= data["ttl"] <= 604800
    assert server.publish("abc", {"text": "hello"}) == {"result": {}}
    assert client.recv() == '{"channel":"abc","data":{"data":{"text":"hello"}}}'
    r = requests.post(server.base + "/api/publish", json={"channel": "#test_user", "data": {"text": "hi"}},
                      headers={"X-API-Key": "apikey"}, timeout=5)
    assert r.json() == {"result": {}}
    assert client.recv() == '{"channel":"#test_user","data":{"data":{"text":"hi"}}}'
    client.close()


def test_offsets_with_history(start_server):
    server = start_server({"history_size": 10, "history_ttl": "300s", "recover": True})
    client, push = connect_push(server, subs={"abc": {}})
    sub = push["data"]["subs"]["abc"]
    assert sub["recoverable"] and sub["positioned"] and len(sub["epoch"]) == 4 and "offset" not in sub
    result = server.publish("abc", {"n": 1})["result"]
    assert result == {"offset": 1, "epoch": sub["epoch"]}
    assert client.recv() == '{"channel":"abc","data":{"data":{"n":1},"offset":1}}'


@pytest.mark.parametrize("first", [b"hello", "", "[]", '"x"', "  ", '{"token":123}'])
def test_malformed_first_message_closes_silently(start_server, first):
    server = start_server()
    client = UniClient(server.ws_url, first)
    assert client.until_closed() == []
    assert client.close_frame is None
    # The server keeps serving others.
    other, push = connect_push(server)
    assert push["type"] == 6


@pytest.mark.parametrize("first, expected", [
    ("null", '{"type":7,"data":{"code":3501,"reason":"bad request"}}'),
    ("{}", '{"type":7,"data":{"code":3501,"reason":"bad request"}}'),
    ('{"token":"x"} trailing', '{"type":7,"data":{"code":3500,"reason":"invalid token"}}'),
    ('{"token":"abc"}', '{"type":7,"data":{"code":3500,"reason":"invalid token"}}'),
])
def test_rejected_connect_gets_disconnect_push_without_close_frame(start_server, first, expected):
    server = start_server()
    client = UniClient(server.ws_url, first)
    assert client.until_closed() == [expected]
    assert client.close_frame is None


def test_token_outcomes(start_server):
    server = start_server({"namespaces": [{"name": "ns"}]})
    import jwt
    cases = [
        (jwt.encode({"sub": "42"}, "wrong", algorithm="HS256"), 3500),
        (server.token("42", exp=int(time.time()) - 10), 3005),
        (jwt.encode({"sub": "42", "exp": int(time.time()) - 10}, "wrong", algorithm="HS256"), 3500),
        (server.token("42", nbf=int(time.time()) + 60), 3005),
        (server.token(42), 3500),
        (server.token("42", channels=["nope:x"]), 3004),
        (server.token("42", channels=[f"c{i}" for i in range(129)]), 3505),
        (server.token("42", expire_at=int(time.time()) - 10), 3005),
    ]
    for token, code in cases:
        client = UniClient(server.ws_url, {"token": token})
        messages = client.until_closed()
        assert len(messages) == 1 and json.loads(messages[0])["data"]["code"] == code, (token, messages)
    client = UniClient(server.ws_url, {"token": server.token("42"), "subs": {"nope:x": {}}})
    assert json.loads(client.until_closed()[0])["data"]["code"] == 3501


def test_token_without_exp_and_anonymous_token(start_server):
    server = start_server()
    client, push = connect_push(server, user="42")
    assert list(push["data"]) == ["client", "version", "session"]
    client2 = UniClient(server.ws_url, {"token": server.token("")})
    assert client2.recv_json()["type"] == 6


def test_client_subs_rules(start_server):
    server = start_server({"user_subscribe_to_personal": True,
                           "namespaces": [{"name": "secure", "protected": True}]})
    _, push = connect_push(server, user="42", subs={"news": {}, "$priv": {}, "dialog#42,43": {}, "dialog#7": {},
                                                    "secure:a": {}, "secure:b#42": {}, "x": None})
    assert set(push["data"]["subs"]) == {"#42", "news", "dialog#42,43", "secure:b#42", "x"}


def test_anonymous_and_insecure(start_server):
    server = start_server({"client_anonymous": True})
    client = UniClient(server.ws_url, {"subs": {"news": {}}})
    push = client.recv_json()
    assert push["type"] == 6 and "subs" not in push["data"]
    insecure = start_server({"client_insecure": True})
    client, push = connect_push(insecure, user="42", exp=int(time.time()) + 60)
    assert "expires" not in push["data"]


def test_binary_connect_frame_and_later_messages_ignored(start_server):
    server = start_server()
    client = UniClient(server.ws_url, json.dumps({"token": server.token("42")}).encode())
    assert client.recv_json()["type"] == 6
    client.send('{"method":1}')
    client.send(b"\x00\x01 garbage")
    server.publish("any", 1)
    with pytest.raises(TimeoutError):
        client.recv(timeout=0.3)


def test_message_size_limit(start_server):
    server = start_server({"uni_websocket_message_size_limit": 400})
    client = UniClient(server.ws_url, "x" * 401)
    assert client.until_closed() == []
    assert client.close_frame is not None and client.close_frame.code == 1009
    ok = UniClient(server.ws_url, json.dumps({"token": server.token("42"), "name": "x" * 40}))
    assert ok.recv_json()["type"] == 6
    ok.send("y" * 401)                    # later messages are limited too
    assert ok.until_closed() == [] and ok.close_frame.code == 1009


def test_fragmented_connect_message(start_server):
    server = start_server()
    client = UniClient(server.ws_url)
    text = json.dumps({"token": server.token("42")})
    client.ws.send(iter([text[:10], text[10:]]))
    assert client.recv_json()["type"] == 6


def test_client_close_frame_is_echoed(start_server):
    server = start_server()
    client, _ = connect_push(server)
    client.ws.close(code=4001)
    assert client.ws.protocol.close_rcvd is not None and client.ws.protocol.close_rcvd.code == 4001


def test_pings_are_empty_messages(start_server):
    server = start_server({"uni_websocket_ping_interval": "1s"})
    client, _ = connect_push(server)
    assert client.recv(timeout=3) == ""
    assert client.recv(timeout=3) == ""


def test_stale_connection_gets_3502(start_server):
    server = start_server({"client_stale_close_delay": "1s"})
    client = UniClient(server.ws_url)
    messages = [m for m in client.until_closed(timeout=5) if m != ""]
    assert messages == ['{"type":7,"data":{"code":3502,"reason":"stale"}}']


def _raw_handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /connection/uni_websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


def test_dead_peer_is_closed(start_server):
    """A peer that never answers pings is closed after the read deadline."""
    server = start_server({"uni_websocket_ping_interval": "1s"})
    sock = _raw_handshake(server.port)
    sock.settimeout(10)                  # far beyond the ~2 s read deadline: a timeout fails the test
    with sock:
        while sock.recv(65536):          # read pings, never pong
            pass


def test_refused_origin_is_logged_once_with_the_option_to_set(start_server):
    server = start_server({"allowed_origins": []})
    base = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13", "Origin": "https://app.example"}
    for _ in range(3):
        r = requests.get(server.ws_url.replace("ws://", "http://"), headers=base, timeout=5)
        assert r.status_code == 403
    lines = [json.loads(line) for line in server.log().splitlines() if "origin refused" in line]
    assert [(e["level"], e["origin"], e["allowed_origins"]) for e in lines] == [("info", "https://app.example", [])]
    assert '"allowed_origins"' in lines[0]["message"]


@pytest.mark.parametrize("headers, method, status", [
    ({"Origin": "https://evil.com"}, "GET", 403),
    ({}, "POST", 405),
    ({"Connection": "keep-alive"}, "GET", 400),
])
def test_handshake_errors(start_server, headers, method, status):
    server = start_server()
    base = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13"}
    r = requests.request(method, server.ws_url.replace("ws://", "http://"), headers={**base, **headers}, timeout=5)
    assert r.status_code == status
    assert r.headers["Sec-Websocket-Version"] == "13"


def test_allowed_origins_glob(start_server):
    server = start_server({"allowed_origins": ["https://*.example.com"]})
    client = UniClient(server.ws_url, {"token": server.token("1")}, origin="https://A.Example.com")
    assert client.recv_json()["type"] == 6


def test_bad_protocol_version_and_other_paths(start_server):
    server = start_server()
    r = requests.get(server.base + "/connection/uni_websocket?cf_protocol_version=v3", timeout=5)
    assert r.status_code == 400 and r.text == ""
    r = requests.get(server.base + "/connection/uni_websocket/", timeout=5)
    assert r.status_code == 404


def test_protocol_v2_pushes(start_server):
    server = start_server()
    client = UniClient(server.ws_url + "?cf_protocol_version=v2", {"token": server.token("42"), "subs": {"abc": {}}})
    push = client.recv_json()
    assert list(push) == ["connect"] and push["connect"]["ping"] == 25
    server.publish("abc", {"a": 1})
    assert client.recv() == '{"channel":"abc","pub":{"data":{"a":1}}}'


def test_cf_connect_query_parameter(start_server):
    server = start_server()
    from urllib.parse import quote
    query = quote(json.dumps({"token": server.token("42")}))
    client = UniClient(server.ws_url + "?cf_connect=" + query)
    assert client.recv_json()["type"] == 6
    r = requests.get(server.base + "/connection/uni_websocket?cf_connect=%7Bbad", timeout=5,
                     headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert r.status_code == 400 and r.text == "invalid connect request\n"


def test_graceful_shutdown_sends_3001(start_server):
    server = start_server()
    client, _ = connect_push(server)
    server.proc.send_signal(signal.SIGTERM)
    assert client.until_closed() == ['{"type":7,"data":{"code":3001,"reason":"shutdown","reconnect":true}}']
    assert client.close_frame is None
    assert server.proc.wait(10) == 0
    assert "Traceback" not in server.log()


def test_ctrl_c_to_the_process_group_stops_every_worker_once(start_server):
    """A terminal's Ctrl-C sends SIGINT to the whole foreground process group: the workers
    ignore it and stop on the supervisor's word, so nothing is restarted and every client of
    both workers gets the shutdown disconnect."""
    server = start_server({"workers": 2}, new_session=True)
    clients = [connect_push(server, user=f"u{i}")[0] for i in range(8)]
    os.killpg(server.proc.pid, signal.SIGINT)
    for client in clients:
        assert client.until_closed() == ['{"type":7,"data":{"code":3001,"reason":"shutdown","reconnect":true}}']
    assert server.proc.wait(10) == 0
    log = server.log()
    assert "restarting" not in log and "Traceback" not in log, log


def test_sigterm_while_workers_are_starting_is_a_clean_shutdown(start_server):
    """SIGTERM as soon as the first worker listens: the others are still starting. Each waits
    until its loop can shut down cleanly (it used to die of the signal, and the supervisor
    exited 1)."""
    server = start_server({"workers": 4})
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0, server.log()
    log = server.log()
    assert "restarting" not in log and "Traceback" not in log, log


def test_health_endpoint(start_server):
    server = start_server()
    r = requests.get(server.base + "/health", timeout=5)
    assert r.status_code == 200 and r.text == "{}"


def test_no_tracebacks_after_bad_inputs(start_server):
    server = start_server()
    for first in ["hello", "null", '{"token":"x"}', "x" * 70000]:
        UniClient(server.ws_url, first).until_closed()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    client, push = connect_push(server)
    assert push["type"] == 6
    assert "Traceback" not in server.log()


def test_the_101_answer_is_exact_and_a_malformed_key_is_refused(start_server):
    """RFC 6455 §1.3's sample key; a key that is not 16 bytes of base64 gets a 400 (picows's check)."""
    server = start_server()
    for key, answer in (("dGhlIHNhbXBsZSBub25jZQ==",
                         b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
                         b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"),
                        ("c2hvcnQ=", b"HTTP/1.1 400 ")):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall((f"GET /connection/uni_websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                          ).encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            assert head.startswith(answer) if answer.endswith(b" ") else head == answer
