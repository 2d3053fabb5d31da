"""Running one worker: event loop, listeners, signals, graceful shutdown (07 §6-§7)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time

import uvloop

from .api import Api
from .http import HttpFront, Routes
from .node import Node
from .transport import UniWebSocket

log = logging.getLogger("uniws.server")


def listening_socket(address: str, port: int) -> socket.socket:
    """A bound, listening TCP socket with SO_REUSEPORT, so workers can share the port."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((address or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def _routes(cfg, node: Node) -> tuple[Routes, Routes | None, list[str], list[str]]:
    """External and (when on another host:port) internal routes, with their endpoint names."""
    api = None if cfg.api_disable else Api(node, api_key=cfg.api_key, api_insecure=cfg.api_insecure,
                                           handler_prefix=cfg.api_handler_prefix,
                                           error_mode=cfg.api_error_mode)
    ws = UniWebSocket(node, cfg) if cfg.uni_websocket else None
    ws_path = _prefix(cfg.uni_websocket_handler_prefix) if ws else None
    health = _prefix(cfg.health_handler_prefix) if cfg.health else None
    internal_separate = (cfg.internal_port and int(cfg.internal_port) != cfg.port) or \
        (cfg.internal_address and cfg.internal_address != cfg.address)
    internal_names = [n for n, on in (("api", api), ("health", health)) if on]
    if not internal_separate:
        names = internal_names + (["uni_websocket"] if ws else [])
        return Routes(ws_path, ws, api, health), None, names, []
    external = Routes(ws_path, ws, None, None)
    internal = Routes(None, None, api, health)
    return external, internal, (["uni_websocket"] if ws else []), internal_names


def _prefix(value: str) -> str:
    return value.rstrip("/") or "/"


async def run(cfg, ready: asyncio.Event | None = None) -> int:
    loop = asyncio.get_running_loop()
    node = Node(cfg, loop)
    external, internal, ext_names, int_names = _routes(cfg, node)
    servers = []
    if internal is not None:
        internal_address = cfg.internal_address or cfg.address
        internal_port = int(cfg.internal_port) if cfg.internal_port else cfg.port
        if int_names:
            servers.append((internal, internal_address, internal_port, int_names))
    if ext_names or internal is None:
        servers.append((external, cfg.address, cfg.port, ext_names))
    started = []
    for routes, address, port, names in servers:
        sock = listening_socket(address, port)
        server = await loop.create_server(lambda r=routes: HttpFront(r), sock=sock)
        started.append(server)
        log.info("serving %s endpoints on %s:%d", ", ".join(names) or "no", address, port)
    node.start()

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("shutting down ...")
    for server in started:
        server.close()
    ok = await node.shutdown(cfg.shutdown_timeout)
    if not ok:
        log.error("shutdown timeout: %d clients still connected", len(node.conns))
        return 1
    if cfg.shutdown_termination_delay:
        await asyncio.sleep(cfg.shutdown_termination_delay)
    return 0


def serve(cfg) -> int:
    """Run the server until SIGINT/SIGTERM; returns the process exit code."""
    pid_file = cfg.pid_file
    if pid_file:
        try:
            with open(pid_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as exc:
            print(f"error writing PID: {exc}", file=sys.stderr)
            return 1
    log.info("starting uniws", extra={"fields": {"version": __import__("uniws").__version__,
                                                  "pid": os.getpid(), "engine": cfg.engine}})
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(run(cfg))
    except OSError as exc:
        log.critical("ListenAndServe: %s", exc)
        return 1
    finally:
        if pid_file:
            try:
                os.unlink(pid_file)
            except OSError:
                pass
