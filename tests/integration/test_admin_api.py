"""Admin endpoints, /health and /metrics over HTTP (spec 08 §10 checks 16-20, and more)."""

from __future__ import annotations

import json

import requests
from prometheus_client.parser import text_string_to_metric_families

from uniws.admin.auth import make_token

from .helpers import api

ADMIN = {"admin": True, "admin_password": "pw", "admin_secret": "s"}
INFO = json.dumps({"method": "info", "params": {}})


def _login(server, password, prefix=""):
    return requests.post(f"{server.base}{prefix}/admin/auth", data={"password": password}, timeout=10)


def _admin_api(server, prefix="", body=INFO, **kwargs):
    return requests.post(f"{server.base}{prefix}/admin/api", data=body, timeout=10, **kwargs)


def test_check_16_admin_login_and_api(start_server):
    server = start_server(ADMIN)
    good = _login(server, "pw")
    assert good.status_code == 200 and good.headers["content-type"] == "application/json"
    assert good.text.endswith("\n")
    token = good.json()["token"]
    bad = _login(server, "bad")
    assert (bad.status_code, bad.text) == (400, "Bad Request\n")
    assert requests.get(server.base + "/admin/auth", timeout=10).status_code == 405
    ok = _admin_api(server, headers={"Authorization": f"token {token}"})
    assert ok.status_code == 200 and ok.json()["result"]["nodes"][0]["version"]
    assert _admin_api(server).status_code == 401
    assert requests.post(server.base + "/admin/api", params={"token": token}, data=INFO, timeout=10).status_code == 200
    assert _admin_api(server, headers={"Authorization": "apikey apikey"}).status_code == 401
    assert _admin_api(server, headers={"Authorization": "token garbage"}).status_code == 401
    # A header present wins over the query string (08 §5.3).
    assert requests.post(server.base + "/admin/api", params={"token": token}, data=INFO, timeout=10,
                         headers={"Authorization": "token garbage"}).status_code == 401
    page = requests.get(server.base + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "uniws admin" in page.text
    # A multipart form (what the UI sends) works too.
    multipart = requests.post(server.base + "/admin/auth", files={"password": (None, "pw")}, timeout=10)
    assert multipart.status_code == 200 and multipart.json()["token"]


def test_admin_tokens_are_signed_with_the_secret(start_server):
    server = start_server(ADMIN)
    token = _login(server, "pw").json()["token"]
    stamp, signature = token.split(".")
    for forged in (make_token("other secret"), f"{int(stamp) + 1}.{signature}", f"{stamp}.{signature[:-1]}{'1' if signature[-1] == '0' else '0'}",
                   make_token("s", now=int(stamp) - 31 * 24 * 3600)):
        assert _admin_api(server, headers={"Authorization": f"token {forged}"}).status_code == 401, forged
    assert _admin_api(server, headers={"Authorization": f"token {make_token('s')}"}).status_code == 200


def test_check_17_admin_insecure(start_server):
    server = start_server({"admin": True, "admin_insecure": True})
    for data in ({"password": "anything"}, None):
        r = requests.post(server.base + "/admin/auth", data=data, timeout=10)
        assert (r.status_code, r.text) == (200, '{"token":"insecure"}\n')
    assert _admin_api(server).status_code == 200
    assert "INSECURE admin mode enabled" in server.log()


def test_check_18_admin_without_password_or_secret(start_server):
    server = start_server({"admin": True, "admin_secret": "s"})
    assert _login(server, "").status_code == 400
    assert _login(server, "anything").status_code == 400
    server = start_server({"admin": True, "admin_password": "pw"})
    assert _login(server, "pw").status_code == 400
    assert _admin_api(server, headers={"Authorization": f"token {make_token('')}"}).status_code == 401


def test_check_19_health(start_server):
    server = start_server({"health": True})
    for method in ("GET", "POST"):
        r = requests.request(method, server.base + "/health", timeout=10)
        assert (r.status_code, r.headers["content-type"], r.text) == (200, "application/json", "{}")


def test_check_20_prometheus(start_server):
    server = start_server({"prometheus": True})
    text = requests.get(server.base + "/metrics", timeout=10).text
    assert any(line.startswith("centrifugo_node_num_clients ") for line in text.splitlines())
    api(server, "publish", {"channel": "news", "data": {}})
    r = requests.get(server.base + "/metrics", timeout=10)
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    lines = r.text.splitlines()
    assert 'centrifugo_api_command_duration_seconds_count{method="publish",protocol="http"} 1' in lines
    assert 'centrifugo_api_command_duration_seconds_histogram_count{method="publish",protocol="http"} 1' in lines
    names = {family.name for family in text_string_to_metric_families(r.text)}
    assert {"centrifugo_node_num_clients", "centrifugo_api_command_duration_seconds",
            "centrifugo_transport_messages_sent", "centrifugo_node_build"} <= names


def test_admin_prefix_api_through_admin_counts_and_404(start_server):
    server = start_server({**ADMIN, "admin_handler_prefix": "/ops", "prometheus": True})
    assert requests.get(server.base + "/", timeout=10).status_code == 404
    assert requests.get(server.base + "/ops/", timeout=10).status_code == 200
    assert requests.get(server.base + "/ops/app.js", timeout=10).headers["content-type"].startswith("text/javascript")
    assert requests.get(server.base + "/ops/missing.js", timeout=10).status_code == 404
    redirect = requests.get(server.base + "/ops", timeout=10, allow_redirects=False)
    assert (redirect.status_code, redirect.headers["location"]) == (301, "/ops/")
    assert requests.post(server.base + "/ops/index.html", timeout=10).status_code == 405
    token = _login(server, "pw", "/ops").json()["token"]
    body = json.dumps({"method": "publish", "params": {"channel": "news", "data": {"x": 1}}})
    r = _admin_api(server, "/ops", body=body, headers={"Authorization": f"token {token}"})
    assert (r.status_code, r.json()) == (200, {"result": {}})
    text = requests.get(server.base + "/metrics", timeout=10).text
    assert 'centrifugo_api_command_duration_seconds_count{method="publish",protocol="http"} 1' in text


def test_admin_web_path_serves_an_operators_files(start_server, tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<p>my own ui</p>")
    server = start_server({**ADMIN, "admin_web_path": str(web)})
    assert requests.get(server.base + "/", timeout=10).text == "<p>my own ui</p>"
    assert requests.get(server.base + "/app.js", timeout=10).status_code == 404
    assert requests.get(server.base + "/../config.json", timeout=10).status_code == 404
    assert requests.get(server.base + "/%2e%2e/config.json", timeout=10).status_code == 404


def test_internal_port_holds_admin_metrics_health_and_admin_external_moves_the_ui(start_server):
    """07 check 37: with `internal_port`, the API, health, metrics and admin are served only there."""
    from .conftest import free_port

    internal = free_port()
    server = start_server({**ADMIN, "prometheus": True, "health": True, "internal_port": internal})
    inside = f"http://127.0.0.1:{internal}"
    for path in ("/", "/health", "/metrics"):
        assert requests.get(inside + path, timeout=10).status_code == 200, path
        assert requests.get(server.base + path, timeout=10).status_code == 404, path
    assert requests.post(inside + "/admin/auth", data={"password": "pw"}, timeout=10).status_code == 200
    assert requests.post(server.base + "/admin/auth", data={"password": "pw"}, timeout=10).status_code == 404

    internal = free_port()
    server = start_server({**ADMIN, "admin_external": True, "health": True, "internal_port": internal})
    inside = f"http://127.0.0.1:{internal}"
    assert requests.get(server.base + "/", timeout=10).status_code == 200
    assert requests.post(server.base + "/admin/auth", data={"password": "pw"}, timeout=10).status_code == 200
    assert requests.get(inside + "/", timeout=10).status_code == 404
    assert requests.get(inside + "/health", timeout=10).status_code == 200


def _raw_exchange(server, head: bytes, body: bytes = b"") -> bytes:
    """Send a request head (and body bytes) on a fresh connection; what the server answers."""
    import socket
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_login_body_is_bounded_on_the_head_and_while_chunked(start_server):
    """A client without credentials cannot make a worker buffer more than a login form's worth:
    an announced body over the bound is refused on its head (no body byte sent), a chunked one
    as soon as it grows past it; the server keeps serving logins."""
    server = start_server(ADMIN)
    announced = _raw_exchange(server, b"POST /admin/auth HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                      b"application/x-www-form-urlencoded\r\nContent-Length: 16000000\r\n\r\n")
    assert announced.startswith(b"HTTP/1.1 413 ")
    chunk = b"password=" + b"x" * 9000
    chunked = _raw_exchange(server, b"POST /admin/auth HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                            b"%x\r\n" % len(chunk) + chunk + b"\r\n")
    assert chunked.startswith(b"HTTP/1.1 413 ")
    # health and metrics read no body at all; the admin API (behind its token) keeps the front's limit
    assert _raw_exchange(server, b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n").startswith(
        b"HTTP/1.1 413 ")
    assert _login(server, "pw").status_code == 200
    token = _login(server, "pw").json()["token"]
    big = json.dumps({"method": "publish", "params": {"channel": "c", "data": "x" * 20000}})
    assert _admin_api(server, body=big, headers={"Authorization": f"token {token}"}).status_code == 200
