"""The seed scenario with the real wscat CLI (installed from npm by the fixture) and curl-style API calls."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import requests

DEPS = Path(__file__).resolve().parents[1] / ".deps"


@pytest.fixture(scope="session")
def wscat() -> str:
    binary = DEPS / "node_modules" / ".bin" / "wscat"
    if not binary.exists():
        DEPS.mkdir(exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", str(DEPS), "--no-audit", "--no-fund", "wscat@6"],
                       check=True, capture_output=True, timeout=300)
    return str(binary)


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
        time.sleep(1.5)
        key = config["api_key"]
        r = requests.post(server.base + "/api", headers={"Authorization": f"apikey {key}"},
                          data=json.dumps({"method": "publish", "params": {"channel": "abc", "data": {"text": "hello"}}}))
        assert r.status_code == 200 and r.json() == {"result": {}}
        r = requests.post(server.base + "/api/publish", headers={"X-API-Key": key},
                          json={"channel": "#test_user", "data": {"text": "personal"}})
        assert r.json() == {"result": {}}
        session.wait(timeout=20)          # closing stdin would end wscat early: let -w run out
        out = session.stdout.read()
    finally:
        session.kill()
    lines = out.splitlines()
    connect = json.loads(lines[0])
    assert connect["type"] == 6
    assert set(connect["data"]["subs"]) == {"#test_user", "abc"}
    assert connect["data"]["expires"] is True and connect["data"]["ttl"] > 604000
    assert '{"channel":"abc","data":{"data":{"text":"hello"}}}' in lines
    assert '{"channel":"#test_user","data":{"data":{"text":"personal"}}}' in lines
    assert lines.count("") >= 2, (lines, server.log())  # empty pings at the 1 s interval
