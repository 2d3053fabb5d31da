"""A redis-server for the bench: free loopback port, ready when it answers PING, its CPU
from `INFO cpu`, stopped by PID (registered in servers.py like every other process)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

from . import servers

READY_TIMEOUT = 10.0


class RedisProc:
    def __init__(self, ready_timeout: float = READY_TIMEOUT) -> None:
        self.port = servers.free_port()
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> str | None:
        return None if shutil.which("redis-server") else "redis-server is not installed (apt-get install redis-server)"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RedisProc:
        why = self.available()
        if why:
            raise servers.ServerError(why)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            preexec_fn=servers._die_with_parent)
        servers.register(self.proc.pid)
        deadline = time.monotonic() + self.ready_timeout
        while True:
            try:
                if self.command(b"PING\r\n").startswith(b"+PONG"):
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                self.stop()
                raise servers.ServerError(f"redis-server exited with {self.proc and self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise servers.ServerError(f"redis-server not ready within {self.ready_timeout}s")
            time.sleep(0.02)                     # poll interval of the readiness check

    def command(self, raw: bytes) -> bytes:
        """One inline command over a fresh connection; the whole reply (INFO is one bulk string)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(raw)
            data = s.recv(65536)
            if data.startswith(b"$"):            # bulk string: read until its announced length
                head, _, body = data.partition(b"\r\n")
                want = int(head[1:]) + 2
                while len(body) < want:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                return body[:want - 2]
            return data

    def _info(self, section: bytes) -> dict[str, str]:
        return dict(line.split(":", 1) for line in self.command(b"INFO " + section + b"\r\n").decode().splitlines()
                    if ":" in line)

    def cpu_s(self) -> float:
        """used_cpu_sys + used_cpu_user of the redis-server process (INFO cpu)."""
        fields = self._info(b"cpu")
        return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])

    def writes(self) -> int:
        """Socket writes redis-server has made to its clients (INFO stats, Redis >= 6)."""
        return int(self._info(b"stats").get("total_writes_processed", 0))

    def stop(self) -> None:
        if self.proc is not None:
            servers.stop_pid(self.proc.pid)
            self.proc = None

    def __enter__(self) -> RedisProc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
