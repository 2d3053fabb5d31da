"""The seed scenario with the real wscat CLI (installed into tests/.deps by .ci/deps) and curl-style API calls."""

from __future__ import annotations

import json
import select
import subprocess
import time
from pathlib import Path

import pytest
import requests

DEPS = Path(__file__).resolve().parents[1] / ".deps"


@pytest.fixture(scope="session")
def wscat() -> str:
    binary = DEPS / "node_modules" / ".bin" / "wscat"
    if not binary.exists():          # installed before the tests, never downloaded mid-test
        pytest.fail(f"wscat is not installed in {DEPS}: run .ci/deps (the README's test command does)")
    return str(binary)


def read_line(stream, timeout: float) -> str:
    """The next line a child process prints, waiting at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no line from wscat"
        if select.select([stream], [], [], left)[0]:
            return stream.readline()


def run_uniws(*args: str, cwd: Path) -> str:
    out = subprocess.run(["uniws", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


def test_seed_scenario_with_wscat(wscat, tmp_path, start_server):
    # genconfig, then the two options of the scenario, exactly as a user does it.
    run_uniws("genconfig", "-c", "config.json", cwd=tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(uni_websocket=True, user_subscribe_to_personal=True, uni_websocket_ping_interval="1s")
    server = start_server(config)
    token = run_uniws("-c", str(server.path), "-u", "test_user", cwd=tmp_path).splitlines()[1]

    # wscat reads stdin: keep it open while it prints what arrives.
    session = subprocess.Popen(
        [wscat, "-c", server.ws_url, "-x", json.dumps({"token": token, "subs": {"abc": {}}}), "-w", "4"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = read_line(session.stdout, timeout=10)       # the connect push: subscribed now
        key = config["api_key"]
        r = requests.post(server.base + "/api", headers={"Authorization": f"apikey {key}"},
                          data=json.dumps({"method": "publish", "params": {"channel": "abc", "data": {"text": "hello"}}}))
        assert r.status_code == 200 and r.json() == {"result": {}}
        r = requests.post(server.base + "/api/publish", headers={"X-API-Key": key},
                          json={"channel": "#test_user", "data": {"text": "personal"}})
        assert r.json() == {"result": {}}
        session.wait(timeout=20)          # closing stdin would end wscat early: let -w run out
        out = first + session.stdout.read()
    finally:
        session.kill()
        session.wait()
        for stream in (session.stdin, session.stdout, session.stderr):
            stream.close()
    lines = out.splitlines()
    connect = json.loads(lines[0])
    assert connect["type"] == 6
    assert set(connect["data"]["subs"]) == {"#test_user", "abc"}
    assert connect["data"]["expires"] is True and connect["data"]["ttl"] > 604000
    assert '{"channel":"abc","data":{"data":{"text":"hello"}}}' in lines
    assert '{"channel":"#test_user","data":{"data":{"text":"personal"}}}' in lines
    assert lines.count("") >= 2, (lines, server.log())  # empty pings at the 1 s interval
