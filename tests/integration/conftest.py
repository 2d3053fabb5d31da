"""A real uniws process per test (or module), on 127.0.0.1 and a free port, stopped by PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `uniws -c config.json` process."""

    def __init__(self, tmp: Path, config: dict, env: dict | None = None, args: list[str] | None = None,
                 new_session: bool = False):
        self.port = free_port()
        self.config = {"token_hmac_secret_key": "secret", "api_key": "apikey", "uni_websocket": True,
                       "health": True, "workers": 1, **config}
        # Several nodes of one fleet may share a test's directory: each keeps its own config.
        self.path = tmp / "config.json"
        if self.path.exists():
            self.path = tmp / f"config-{self.port}.json"
        self.path.write_text(json.dumps(self.config))
        self.log_path = tmp / f"server-{self.port}.log"
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "uniws", "-c", str(self.path), "--address", "127.0.0.1",
               "--port", str(self.port), *(args or [])]
        # new_session: its own process group, as a shell job is (for signals sent to the group).
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=tmp,
                                     env={**os.environ, **(env or {})}, start_new_session=new_session)
        self._wait_ready()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/uni_websocket"

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def api(self, method: str, params: dict | None = None) -> dict:
        body = json.dumps({"method": method, "params": params or {}})
        r = requests.post(self.base + "/api", data=body, headers={"Authorization": "apikey apikey"}, timeout=10)
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    def publish(self, channel: str, data) -> dict:
        return self.api("publish", {"channel": channel, "data": data})

    def token(self, user: str, **claims) -> str:
        import jwt
        payload = {"sub": user, **claims}
        return jwt.encode(payload, self.config["token_hmac_secret_key"], algorithm="HS256")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_server(tmp_path):
    started: list[Server] = []

    def start(config: dict | None = None, **kwargs) -> Server:
        server = Server(tmp_path, config or {}, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
