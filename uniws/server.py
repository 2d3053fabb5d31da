"""Running a worker: event loop, listeners, signals, graceful shutdown (07 §6-§7).

`serve` runs one worker in this process when `workers` is 1, and otherwise hands
over to the supervisor, which forks the workers and calls `run_worker` in each.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import signal
import socket
import sys
from typing import Callable

import uvloop

from . import __version__
from .api import Api
from .bus import Bus, BusFiles, BusSpaceError
from .http import FrontLimits, HttpFront, Routes
from .node import Node
from .transport import UniWebSocket

log = logging.getLogger("uniws.server")

BACKLOG = 4096          # connect storms: the kernel caps it at net.core.somaxconn


def listening_socket(address: str, port: int) -> socket.socket:
    """A bound, listening TCP socket with SO_REUSEPORT, so workers can share the port."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((address or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def _prefix(value: str) -> str:
    return value.rstrip("/") or "/"


def _listeners(cfg, node: Node) -> list[tuple[Routes, str, int, list[str]]]:
    """(routes, address, port, endpoint names) for the external and, when separate, internal listener."""
    api = None if cfg.api_disable else Api(node, api_key=cfg.api_key, api_insecure=cfg.api_insecure,
                                           handler_prefix=cfg.api_handler_prefix,
                                           error_mode=cfg.api_error_mode)
    ws = UniWebSocket(node, cfg) if cfg.uni_websocket else None
    ws_path = _prefix(cfg.uni_websocket_handler_prefix) if ws else None
    health = _prefix(cfg.health_handler_prefix) if cfg.health else None
    internal_port = int(cfg.internal_port) if cfg.internal_port else cfg.port
    internal_address = cfg.internal_address or cfg.address
    internal_names = [name for name, on in (("api", api), ("health", health)) if on]
    check = node.engine.healthy            # a Redis shard down: /health says 503 and why
    if (internal_address, internal_port) == (cfg.address, cfg.port):
        names = internal_names + (["uni_websocket"] if ws else [])
        return [(Routes(ws_path, ws, api, health, check), cfg.address, cfg.port, names)]
    listeners = [(Routes(ws_path, ws, None, None), cfg.address, cfg.port, ["uni_websocket"] if ws else [])]
    if internal_names:
        listeners.append((Routes(None, None, api, health, check), internal_address, internal_port, internal_names))
    return listeners


def reload_node(node: Node, reload: Callable | None) -> None:
    """SIGHUP: token keys and channel rules from the re-read config; anything invalid keeps the old."""
    if reload is None:
        return
    log.info("reloading configuration")
    try:
        node.reload(reload())
    except Exception as exc:           # ConfigError, or a key that does not parse
        log.error("configuration reload failed: %s", getattr(exc, "message", exc))
        return
    log.info("configuration successfully reloaded")


async def run(cfg, *, index: int = 0, count: int = 1, bus_files: BusFiles | None = None,
              restarted: bool = False, uid: str | None = None, reload: Callable | None = None) -> int:
    loop = asyncio.get_running_loop()
    node = Node(cfg, loop, index=index, count=count, uid=uid)
    bus = None
    if count > 1:
        bus = Bus(loop, index, bus_files, node.cluster, first_start=not restarted)
        node.cluster.attach(bus)
        if restarted:
            # Tell the others this worker lost its previous life's state (engine/relay.py).
            node.cluster.command("hello", {"worker": index})
    await node.engine.start()          # a broker that cannot be reached is retried, not fatal
    servers = []
    limits = node.http = FrontLimits.from_config(cfg)     # swept by the node's tick
    for routes, address, port, names in _listeners(cfg, node):
        sock = listening_socket(address, port)
        # create_server listens again with its own default backlog (100): ask for the large one.
        servers.append(await loop.create_server(lambda r=routes: HttpFront(r, limits), sock=sock, backlog=BACKLOG))
        if index == 0:
            log.info("serving %s endpoints on %s:%d", ", ".join(names) or "no", address, port)
    node.start()

    stop = asyncio.Event()
    # A supervised worker (count > 1) stops only on its supervisor's SIGTERM and ignores the
    # terminal's SIGINT (see supervisor.py); a single process handles both itself.
    for sig in (signal.SIGTERM,) if count > 1 else (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_node, node, reload)
    # The supervisor forks workers with SIGTERM/SIGHUP blocked: one sent during start-up is
    # delivered now, to the handlers above.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGHUP))
    await stop.wait()

    if index == 0:
        log.info("shutting down ...")
    for server in servers:
        server.close()
    ok = await node.shutdown(cfg.shutdown_timeout)
    if bus is not None:
        bus.close()
    if not ok:
        log.error("shutdown timeout: %d clients still connected", len(node.conns))
        return 1
    if cfg.shutdown_termination_delay:
        await asyncio.sleep(cfg.shutdown_termination_delay)
    return 0


# A batch of publications allocates thousands of short-lived containers (commands,
# coroutines, futures) per loop turn. With the default first threshold (700) the cyclic
# collector ran hundreds of times a second and, in its older generations, walked every
# connection each time: 18% of a worker's CPU in a profile of many-channel publishing.
# Garbage cycles are rare here (everything is freed by reference counting), so collect
# seldom; what exists at start-up (modules, config) is frozen out of every collection.
GC_THRESHOLDS = (50_000, 20, 20)


def run_worker(cfg, **kwargs) -> int:
    """One worker's event loop until SIGINT/SIGTERM; returns its exit code."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(run(cfg, **kwargs))
    except OSError as exc:
        log.critical("ListenAndServe: %s", exc)
        return 1


def _raise_fd_limit() -> None:
    """Each client is a socket: allow as many open files as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(cfg, reload: Callable | None = None) -> int:
    """Run the server until SIGINT/SIGTERM; returns the process exit code."""
    _raise_fd_limit()
    pid_file = cfg.pid_file
    if pid_file:
        try:
            with open(pid_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as exc:
            print(f"error writing PID: {exc}", file=sys.stderr)
            return 1
    workers = cfg.workers or os.cpu_count() or 1
    log.info("starting uniws", extra={"fields": {"version": __version__, "pid": os.getpid(),
                                                  "engine": cfg.engine, "workers": workers}})
    try:
        if workers == 1:
            return run_worker(cfg, reload=reload)
        from .supervisor import Supervisor
        return Supervisor(cfg, workers, reload).run()
    except BusSpaceError as exc:
        log.critical(exc.message)
        return 1
    finally:
        if pid_file:
            try:
                os.unlink(pid_file)
            except OSError:
                pass
