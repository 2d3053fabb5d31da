"""The supervisor: forks `workers` worker processes and keeps them running.

It serves no clients. Each worker opens its own SO_REUSEPORT listening socket,
so the kernel spreads connections over them, and joins the bus through the ring
files and eventfds the supervisor creates before the first fork. A worker that dies is restarted (after 0.1 s,
doubling up to 5 s while it keeps dying within 10 s of its start). SIGTERM or
SIGINT is relayed to every worker (as SIGTERM) for a graceful shutdown; SIGHUP re-reads
the config, and if it is valid, is relayed so every worker reloads token keys and
channel rules without dropping connections.

The supervisor owns signal handling. Workers ignore SIGINT: a terminal's Ctrl-C goes to
the whole foreground process group, and a worker that stopped on it by itself would race
the supervisor (which would see an exit it did not ask for). Workers are forked with
SIGTERM and SIGHUP blocked and unblock them once their loop handles them, so a signal
that arrives while a worker starts waits for it instead of killing it. A worker that
exits while the supervisor shuts down is never restarted.

Hangs: every worker's loop beats on a shared pipe (heartbeat.py); a worker that has not
beaten for `worker_hang_timeout` (a stuck loop, SIGSTOP) is killed with SIGKILL and
restarted like a crashed one, as uvicorn's supervisor does with its ping pipe.

Signals are turned into bytes on a pipe (`signal.set_wakeup_fd`) and handled in a
plain select loop: the supervisor has no event loop and no threads, so forking
a worker from it is always safe.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import shutil
import signal
import tempfile
import time
import uuid
from typing import Callable

from .bus import BusFiles
from .heartbeat import BEAT

log = logging.getLogger("uniws.supervisor")

_RESTART_MIN, _RESTART_MAX, _STABLE_AFTER, _STARTUP_GRACE = 0.1, 5.0, 10.0, 5.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Blocked across fork: the child must not run the supervisor's handlers (they write to its
# wakeup pipe), and the worker's loop takes SIGTERM/SIGHUP over from the pending set.
_DEFERRED = {signal.SIGTERM, signal.SIGHUP}


class Supervisor:
    def __init__(self, cfg, count: int, reload: Callable | None = None) -> None:
        self.cfg = cfg
        self.count = count
        self.reload = reload
        self.uid = str(uuid.uuid4())
        self.bus_files = None
        self.pids: dict[int, int] = {}               # pid -> worker index
        self.started: dict[int, float] = {}          # index -> start time
        self.delay: dict[int, float] = {}            # index -> next restart delay
        self.restart_at: dict[int, float] = {}       # index -> when to start it again
        self.restarts = 0
        self.hang_timeout = cfg.worker_hang_timeout       # 0: never
        self.beats: dict[int, float] = {}            # index -> last heartbeat (or start) time
        self.hung: set[int] = set()                  # pids killed for not beating

    # -- workers ---------------------------------------------------------------------------

    def _spawn(self, index: int, restarted: bool = False) -> None:
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:
            self._become_worker(index, restarted, supervisor)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        self.pids[pid] = index
        self.started[index] = self.beats[index] = time.monotonic()
        log.info("worker %d started (pid %d)", index, pid)

    def _become_worker(self, index: int, restarted: bool, supervisor: int) -> None:
        code = 1
        try:
            # A supervisor killed with SIGKILL cannot stop its workers: the kernel does (else
            # they would go on serving the port, orphaned, outside any restart or shutdown).
            _die_with_parent(supervisor)
            signal.set_wakeup_fd(-1)
            for sig in _SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)     # the terminal's; the supervisor relays it
            # SIGTERM/SIGHUP stay blocked until run() handles them (server.py).
            signal.pthread_sigmask(signal.SIG_SETMASK, _DEFERRED)
            os.close(self._wake_r)
            os.close(self._wake_w)
            os.close(self._beat_r)
            from .server import run_worker
            code = run_worker(self.cfg, index=index, count=self.count, bus_files=self.bus_files,
                              restarted=restarted, uid=self.uid, reload=self.reload,
                              heartbeat_fd=self._beat_w)
        except BaseException:
            log.exception("worker %d crashed", index)
        finally:
            logging.shutdown()
            os._exit(code)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            index = self.pids.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            hung = pid in self.hung
            self.hung.discard(pid)
            if self.stopping:
                continue
            alive = time.monotonic() - self.started.get(index, 0.0)
            if code > 0 and index not in self.delay and alive < _STARTUP_GRACE and not hung:
                # A first-generation worker that fails as it starts (the port is taken, say)
                # would fail again: stop with its error instead of restarting forever.
                log.critical("worker %d failed to start (exit %d); stopping", index, code)
                self.startup_failed = True
                continue
            delay = _RESTART_MIN if alive > _STABLE_AFTER else self.delay.get(index, _RESTART_MIN)
            self.delay[index] = min(delay * 2, _RESTART_MAX)
            self.restart_at[index] = time.monotonic() + delay
            self.restarts += 1
            log.error("worker %d (pid %d) exited with %s; restarting in %.1f s", index, pid, code, delay)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for index, when in list(self.restart_at.items()):
            if when <= now:
                del self.restart_at[index]
                self._spawn(index, restarted=True)

    def _signal_workers(self, sig: int) -> None:
        for pid in list(self.pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    # -- main loop --------------------------------------------------------------------------

    def run(self) -> int:
        self.stopping = False
        self.startup_failed = False
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None      # rings in memory, not on disk
        bus_dir = tempfile.mkdtemp(prefix="uniws-bus-", dir=shm)
        self.bus_files = BusFiles.create(bus_dir, self.count)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._beat_r, self._beat_w = os.pipe()
        os.set_blocking(self._beat_r, False)
        os.set_blocking(self._beat_w, False)
        for sig in _SIGNALS:
            signal.signal(sig, lambda *_: None)      # the wakeup fd carries the signal number
        signal.set_wakeup_fd(self._wake_w)
        try:
            for index in range(self.count):
                self._spawn(index)
            return self._loop()
        finally:
            signal.set_wakeup_fd(-1)
            shutil.rmtree(bus_dir, ignore_errors=True)
            for fd in (self._beat_r, self._beat_w):
                os.close(fd)

    def _loop(self) -> int:
        while True:
            timeout = None
            if self.restart_at:
                timeout = max(0.0, min(self.restart_at.values()) - time.monotonic())
            if self.hang_timeout:
                check = min(1.0, self.hang_timeout / 4)
                timeout = check if timeout is None else min(timeout, check)
            ready, _, _ = select.select([self._wake_r, self._beat_r], [], [], timeout)
            if self._beat_r in ready:
                self._read_beats()
            signals = os.read(self._wake_r, 256) if self._wake_r in ready else b""
            # A stop signal wins over anything read with it: a worker exit seen in the same
            # batch is part of the shutdown, not a crash to restart.
            if any(sig in _STOP_SIGNALS for sig in signals):
                return self._shutdown()
            for sig in signals:
                if sig == signal.SIGHUP:
                    self._reload()
                elif sig == signal.SIGCHLD:
                    self._reap()
            if self.startup_failed:
                self._shutdown()
                return 1
            self._kill_hung()
            self._restart_due()

    def _read_beats(self) -> None:
        try:
            data = os.read(self._beat_r, 4096 * BEAT.size)
        except BlockingIOError:
            return
        now = time.monotonic()
        for (index,) in BEAT.iter_unpack(data[:len(data) - len(data) % BEAT.size]):
            if index in self.beats:
                self.beats[index] = now

    def _kill_hung(self) -> None:
        if not self.hang_timeout:
            return
        now = time.monotonic()
        for pid, index in list(self.pids.items()):
            if pid not in self.hung and now - self.beats.get(index, now) > self.hang_timeout:
                log.error("worker %d (pid %d) has not answered for %.1f s (worker_hang_timeout); killing it",
                          index, pid, now - self.beats[index])
                self.hung.add(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _reload(self) -> None:
        if self.reload is not None:
            try:
                self.cfg = self.reload()
            except Exception as exc:
                log.error("configuration reload failed: %s", getattr(exc, "message", exc))
                return
        self._signal_workers(signal.SIGHUP)

    def _shutdown(self) -> int:
        """Relay SIGTERM and wait for every worker, at most shutdown_timeout (+1 s of slack)."""
        self.stopping = True
        self.restart_at.clear()
        log.info("shutting down %d workers", len(self.pids))
        self._signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.shutdown_timeout + 1.0
        failed = False
        while self.pids and time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.02)
                continue
            if self.pids.pop(pid, None) is not None and os.waitstatus_to_exitcode(status) != 0:
                failed = True
        if self.pids:
            log.error("workers %s did not stop in time; killing them", sorted(self.pids.values()))
            self._signal_workers(signal.SIGKILL)
            return 1
        return 1 if failed else 0


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies (Linux prctl); exit now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:                 # died between fork and prctl
        os._exit(1)
