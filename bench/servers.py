"""Starting and stopping the servers under test, by PID, on free loopback ports.

Every process the bench starts (servers, load generator, publisher) is registered
here and stopped by its PID when it is done, at exit, on Ctrl-C or SIGTERM.
Servers run in their own session, so a server's worker processes are stopped with
it (signal to the process group whose id is the server's PID), and get SIGTERM if
the bench itself dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
API_KEY = "bench-api-key"
WS_PATH = "/connection/uni_websocket"
C_EPOLL = HERE / "build" / "c_epoll"    # peer (e); gen.build() compiles it

ALL = ["uniws", "picows_broadcast", "picows_coalesce", "c_epoll", "websockets_broadcast", "nats"]


def is_uniws(name: str) -> bool:
    """`uniws` is this checkout; `uniws@DIR` is the uniws of another checkout (its extensions built
    in place), run the same way: before/after figures side by side in one run."""
    return name == "uniws" or name.startswith("uniws@")

# --------------------------------------------------------------------------- process registry

_live: dict[int, bool] = {}          # pid -> is a process group leader we created


def register(pid: int, group: bool = False) -> None:
    _live[pid] = group


def unregister(pid: int) -> None:
    _live.pop(pid, None)


def _signal(pid: int, group: bool, sig: int) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return os.path.exists(f"/proc/{pid}")


def stop_pid(pid: int, group: bool = False, timeout: float = 10.0) -> None:
    _signal(pid, group, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        _signal(pid, group, signal.SIGKILL)
        time.sleep(0.1)
        _alive(pid)
    if group:
        _signal(pid, group, signal.SIGKILL)   # workers left behind by a leader that exited
    unregister(pid)


def stop_all() -> None:
    for pid, group in list(_live.items()):
        stop_pid(pid, group, timeout=5.0)


atexit.register(stop_all)


interrupted = False                         # set by Ctrl-C / SIGTERM: no further run may start


def _on_sigterm(signum, frame):
    global interrupted
    interrupted = True
    raise SystemExit(128 + signum)          # unwinds through every finally: block


def _on_sigint(signum, frame):
    global interrupted
    interrupted = True
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, _on_sigterm)
signal.signal(signal.SIGINT, _on_sigint)


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# --------------------------------------------------------------------------- /proc

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, ()))
    return out


def proc_rss_kb(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of /proc/<pid>/status in KiB: VmRSS (all resident pages) or, e.g.,
    RssAnon (the process's private heap, without shared-memory rings and mapped files)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


def proc_cpu_s(pid: int) -> float:
    return sum(proc_cpu_split(pid))


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    return float(sum(vals) - idle), float(sum(vals))


def nofile_limit() -> int:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# --------------------------------------------------------------------------- servers

class ServerError(RuntimeError):
    pass


class Server:
    """One server under test. `proto` is what the load generator speaks to it (uni or
    nats), `api_proto` what the publisher speaks to `api_port` (http or nats)."""

    def __init__(self, name: str, *, personal: bool = False, workers: int | None = None,
                 uniws_extra: dict | None = None) -> None:
        self.name = name
        self.personal = personal
        self.workers = workers
        self.uniws_extra = uniws_extra or {}
        self.proto = "nats" if name == "nats" else "uni"
        self.api_proto = "nats" if name == "nats" else "http"
        self.proc: subprocess.Popen | None = None
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{name.split('@')[0]}-"))
        self.ws_port = free_port()
        self.api_port = self.ws_port if is_uniws(name) else free_port()

    @staticmethod
    def available(name: str) -> str | None:
        """None when the server can run here, else why not."""
        if name == "nats" and not shutil.which("nats-server"):
            return "nats-server is not installed (apt-get install -y nats-server)"
        if name == "websockets_broadcast" and importlib.util.find_spec("websockets") is None:
            return "the websockets package is not installed (pip install websockets)"
        if name == "c_epoll" and not shutil.which("gcc") and not C_EPOLL.exists():
            return "gcc is not installed (needed to build peers/c_epoll.c)"
        if name.startswith("uniws@") and not (Path(name[6:]) / "uniws" / "__main__.py").exists():
            return f"{name[6:]} holds no uniws checkout"
        return None

    def _command(self) -> list[str]:
        if is_uniws(self.name):
            cfg = {"token_hmac_secret_key": SECRET, "api_key": API_KEY, "uni_websocket": True,
                   "api_insecure": True, "client_insecure": False, "uni_websocket_ping_interval": "-1s",
                   "log_level": "warn"}
            if self.personal:
                cfg["user_subscribe_to_personal"] = True
            cfg.update(self.uniws_extra)
            path = self.dir / "config.json"
            path.write_text(json.dumps(cfg, indent=1))
            cmd = [sys.executable, "-m", "uniws", "-c", str(path), "--address", "127.0.0.1",
                   "--port", str(self.ws_port)]
            if self.workers is not None:
                cmd += ["--workers", str(self.workers)]
            return cmd
        if self.name == "nats":
            path = self.dir / "nats.conf"
            path.write_text(f'listen: "127.0.0.1:{self.api_port}"\n'
                            f'websocket {{\n  listen: "127.0.0.1:{self.ws_port}"\n  no_tls: true\n'
                            f'  compression: false\n}}\n')
            return ["nats-server", "-c", str(path)]
        if self.name == "c_epoll":      # built by gen.build() when the bench starts
            return [str(C_EPOLL), "--host", "127.0.0.1", "--port", str(self.ws_port),
                    "--api-port", str(self.api_port)]
        return [sys.executable, str(PEERS / f"{self.name}.py"), "--host", "127.0.0.1",
                "--port", str(self.ws_port), "--api-port", str(self.api_port)]

    def start(self, timeout: float = 20.0) -> "Server":
        why = self.available(self.name)
        if why:
            raise ServerError(why)
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()                 # no __exit__ runs for a server that failed to start
            raise

    def _start(self, timeout: float) -> "Server":
        self.log = open(self.dir / "server.log", "wb")
        env = {**os.environ, "PYTHONPATH": self.name[6:]} if self.name.startswith("uniws@") else None
        self.proc = subprocess.Popen(self._command(), stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_die_with_parent, cwd=self.dir)
        register(self.proc.pid, group=True)
        deadline = time.monotonic() + timeout
        pending = {self.ws_port, self.api_port}
        while pending:
            if self.proc.poll() is not None:
                unregister(self.proc.pid)
                raise ServerError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(f"{self.name} did not listen within {timeout}s: {self.log_tail()}")
            for port in list(pending):
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        pending.discard(port)
            time.sleep(0.05)
        time.sleep(0.2)
        return self

    def log_tail(self, n: int = 1500) -> str:
        try:
            return (self.dir / "server.log").read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        return tree(self.pid) if self.proc else []

    def rss_kb(self, field: str = "VmRSS") -> int:
        return sum(proc_rss_kb(p, field) for p in self.pids())

    def cpu_s(self) -> float:
        return sum(proc_cpu_s(p) for p in self.pids())

    def user_cpu_s(self) -> float:
        """User-space CPU seconds: the server's own code, apart from the kernel's socket work
        (which grows with contention for the cores; user time much less)."""
        return sum(proc_cpu_split(p)[0] for p in self.pids())

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid, group=True)
            self.proc = None
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
