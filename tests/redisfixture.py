"""Real redis-server processes on free 127.0.0.1 ports for tests (killed by PID).

`RedisServer.start()` waits for readiness by PING (bounded by `ready_timeout`), never by
sleeping; `kill()` then `start()` again restarts on the same port (fault tests).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

READY_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _connect(port: int, tls: bool, timeout: float) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return _client_tls().wrap_socket(sock) if tls else sock


def _ping(port: int, tls: bool = False) -> bool:
    """Ready when it answers at all (+PONG, or -NOAUTH from a password-protected server)."""
    try:
        with _connect(port, tls, 0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """(cert, key) of a throwaway self-signed certificate for 127.0.0.1 (openssl CLI)."""
    cert, key = directory / "redis.crt", directory / "redis.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class RedisServer:
    def __init__(self, port: int | None = None, ready_timeout: float = READY_TIMEOUT,
                 extra_args: tuple[str, ...] = (), tls_dir: Path | None = None) -> None:
        """`tls_dir`: serve TLS only (self-signed certificate written there)."""
        self.port = port or free_port()
        self.extra_args = extra_args
        self.tls = tls_dir is not None
        if tls_dir is not None:
            cert, key = self_signed_cert(tls_dir)
            self.extra_args += ("--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                                "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                                "--tls-auth-clients", "no")
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server not installed (see .ci/deps)")
        # Its own working directory: a replica writes the RDB it receives there.
        self.workdir = tempfile.mkdtemp(prefix="uniws-redis-")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.workdir,
             *self.extra_args],
            cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.ready_timeout
        while not _ping(self.port, self.tls):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} not ready in {self.ready_timeout}s")
            time.sleep(0.02)                 # poll interval of the readiness check, not a sync
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
        if getattr(self, "workdir", None):
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def command(self, *args: str | bytes, prefix: tuple = ()) -> object:
        """One command over a fresh connection, for assertions (hiredis parses the reply);
        `prefix` commands (AUTH, SELECT) run first and their replies are skipped."""
        import hiredis

        reader = hiredis.Reader()
        with _connect(self.port, self.tls, 5) as s:
            s.sendall(b"".join(hiredis.pack_command(c) for c in (*prefix, args)))
            skip = len(prefix)
            while skip:
                while (reply := reader.gets()) is False:
                    reader.feed(s.recv(65536))
                skip -= 1
            while (reply := reader.gets()) is False:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("redis closed the connection")
                reader.feed(chunk)
        return reply


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture
def redis_servers():
    """Factory: redis_servers(n) -> n started servers, all killed at teardown."""
    started: list[RedisServer] = []

    def make(n: int = 1) -> list[RedisServer]:
        servers = [RedisServer().start() for _ in range(n)]
        started.extend(servers)
        return servers

    yield make
    for server in started:
        server.kill()


class RedisSentinel(RedisServer):
    """A `redis-server --sentinel` monitoring `master` as `name` (quorum 1, fast failure
    detection); its config file lives in `workdir` (sentinel rewrites it), also its cwd."""

    def __init__(self, master: RedisServer, workdir, name: str = "mymaster") -> None:
        super().__init__()
        self.master, self.name, self.confdir = master, name, workdir

    def start(self) -> RedisSentinel:
        conf = self.confdir / f"sentinel-{self.port}.conf"
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\n"
                        f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 1\n"
                        f"sentinel down-after-milliseconds {self.name} 1000\n"
                        f"sentinel failover-timeout {self.name} 5000\n")
        binary = shutil.which("redis-server")
        self.proc = subprocess.Popen([binary, str(conf), "--sentinel"], cwd=self.confdir, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.ready_timeout
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis sentinel on port {self.port} did not start")
            time.sleep(0.02)                 # poll interval of the readiness check, not a sync
        return self
