"""Build and drive the C load generator (loadgen.c) and publisher (publisher.c).

`build()` compiles both, and the C peer server peers/c_epoll.c, with gcc -O2 into
bench/build/ when a source is newer than its binary. `LoadGen` runs `loadgen sub`
and speaks its stdin/stdout line protocol; `publish()` runs one `publisher` and
returns its JSON result. Connection files (one `CHANNEL<TAB>CONNECT-MESSAGE` line
per client) come from `write_conns()`, with an HS256 JWT per client signed with the
server config's secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

from . import servers

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build"
LOADGEN = BUILD / "loadgen"
PUBLISHER = BUILD / "publisher"


def build() -> None:
    BUILD.mkdir(exist_ok=True)
    for src, exe in ((HERE / "loadgen.c", LOADGEN), (HERE / "publisher.c", PUBLISHER),
                     (HERE / "peers" / "c_epoll.c", servers.C_EPOLL)):
        if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
            subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(src)], check=True)


# --------------------------------------------------------------------------- tokens

def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def hs256_token(secret: str, claims: dict) -> str:
    head = _b64(b'{"alg":"HS256","typ":"JWT"}')
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = _b64(hmac.new(secret.encode(), head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def write_conns(path: Path, clients: int, channel_of, secret: str) -> Path:
    """One line per client i: its channel, and its connect message carrying its own
    token (user `u<i>`) and a subscription request for that channel."""
    with open(path, "w") as f:
        for i in range(clients):
            channel = channel_of(i)
            token = hs256_token(secret, {"sub": f"u{i}"})
            msg = json.dumps({"token": token, "subs": {channel: {}}}, separators=(",", ":"))
            f.write(f"{channel}\t{msg}\n")
    return path


# --------------------------------------------------------------------------- loadgen

class LoadGenError(RuntimeError):
    pass


class LoadGen:
    """`loadgen sub` as a child process; every method blocks until its answer line."""

    def __init__(self, port: int, conns: Path, clients: int, *, proto: str = "uni", procs: int = 2,
                 inflight: int = 512, src_addrs: int = 8, connect_timeout: int = 60,
                 path: str = "/connection/uni_websocket") -> None:
        cmd = [str(LOADGEN), "sub", "--port", str(port), "--conns", str(conns), "--clients", str(clients),
               "--proto", proto, "--procs", str(procs), "--inflight", str(inflight),
               "--src-addrs", str(src_addrs), "--connect-timeout", str(connect_timeout), "--path", path]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        servers.register(self.proc.pid)
        self.children: list[int] = []
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _next(self, timeout: float) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise LoadGenError(f"loadgen silent for {timeout:.0f}s") from None
        if line is None:
            raise LoadGenError(f"loadgen exited (code {self.proc.poll()})")
        return json.loads(line)

    def _until(self, ev: str, progress=None, timeout: float = 120.0) -> dict:
        while True:
            msg = self._next(timeout)
            if msg["ev"] == "started":
                self.children = msg["children"]
            elif msg["ev"] == "progress":
                if progress:
                    progress(msg)
            elif msg["ev"] == ev:
                return msg
            elif msg["ev"] == "error":
                raise LoadGenError(str(msg))

    def _send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_ready(self, progress=None) -> dict:
        return self._until("ready", progress)

    def reset(self) -> None:
        self._send("reset")
        self._until("reset")

    def wait(self, expect: int, timeout_s: float, idle_s: float, progress=None) -> dict:
        self._send(f"wait {expect} {int(timeout_s * 1000)} {int(idle_s * 1000)}")
        return self._until("report", progress, timeout=timeout_s + 30)

    def start_wait(self, expect: int, timeout_s: float, idle_s: float) -> None:
        """`wait` in two halves, so several load generators can wait at once."""
        self._send(f"wait {expect} {int(timeout_s * 1000)} {int(idle_s * 1000)}")

    def wait_report(self, timeout_s: float, progress=None) -> dict:
        return self._until("report", progress, timeout=timeout_s + 30)

    def cpu_s(self) -> float:
        return sum(servers.proc_cpu_s(pid) for pid in self.children)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send("quit")
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                os.kill(self.proc.pid, signal.SIGTERM)   # its children die with it (PDEATHSIG)
                self.proc.wait(timeout=5)
        servers.unregister(self.proc.pid)

    def __enter__(self) -> "LoadGen":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- publisher

def publish(port: int, *, proto: str = "http", rate: float, count: int, channel: str = "bench", nchan: int = 0,
            batch: int = 1000, inflight: int = 2, pad: int = 60, tick_us: int = 1000, api_key: str = "",
            on_tick=None, max_seconds: int = 600) -> dict:
    """Run one publisher to completion; `on_tick(elapsed_s)` is called every 0.1 s meanwhile."""
    cmd = [str(PUBLISHER), "--port", str(port), "--proto", proto, "--rate", str(rate), "--count", str(count),
           "--channel", channel, "--nchan", str(nchan), "--batch", str(batch), "--inflight", str(inflight),
           "--pad", str(pad), "--tick-us", str(tick_us), "--max-seconds", str(max_seconds)]
    if api_key:
        cmd += ["--api-key", api_key]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    servers.register(proc.pid)
    t0 = time.monotonic()
    try:
        while proc.poll() is None:
            if on_tick:
                on_tick(time.monotonic() - t0)
            try:
                proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        out = proc.stdout.read().strip()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        servers.unregister(proc.pid)
    if not out:
        raise LoadGenError(f"publisher printed nothing (exit {proc.returncode})")
    result = json.loads(out.splitlines()[-1])
    result["exit"] = proc.returncode
    return result


def blast(port: int, clients: int, count: int, pad: int = 60) -> subprocess.Popen:
    """`loadgen blast`: a C WebSocket server flooding `count` frames to each of `clients`."""
    proc = subprocess.Popen([str(LOADGEN), "blast", "--port", str(port), "--clients", str(clients),
                             "--count", str(count), "--pad", str(pad), "--max-seconds", "600"],
                            stdout=subprocess.PIPE, text=True)
    servers.register(proc.pid)
    proc.stdout.readline()                     # {"ev":"listening"}
    return proc
