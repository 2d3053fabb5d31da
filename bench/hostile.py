"""/health latency while clients without credentials attack the HTTP front (issue 9).

    python -m bench.hostile [--conns 1000] [--seconds 10] [--workers N] [--servers uniws,uniws@DIR]

For each server (uniws, or another checkout's with uniws@DIR) and each attack, a fresh
server is started with `health: true`; the attack runs for --seconds while /health is asked
every 20 ms on a keep-alive connection of its own (a new one if the server closed it). The
figure is the /health latency (p50, p99, max) and how many probes got no 200 within 1 s.

Attacks (all keyless unless said otherwise; every socket on 127.0.0.1):
  chunked  --conns/10 connections, each POST /api with Transfer-Encoding: chunked sending
           1-byte chunks as fast as the socket takes them; reconnect when closed
  chunked-key  the same with the API key: a client allowed to publish, abusing it (each body
           is read up to http_max_request_body_size, then 413)
  trickle  --conns connections that each send one header line a second and never finish
  huge     --conns/10 connections announcing Content-Length: 50000000 (half of them with
           the API key) and then trickling body bytes; reconnect when closed
Not a test: no pass/fail, just the figures (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time

from . import servers
from .report import fmt, median, note, table

PROBE_EVERY = 0.02
PROBE_TIMEOUT = 1.0


async def _open(port: int):
    return await asyncio.open_connection("127.0.0.1", port)


async def _flood(port: int, stop: asyncio.Event, key: str | None, framing: str, piece: bytes,
                 pause: float) -> int:
    """POST /api bodies with `framing` (a header), writing `piece` every `pause` seconds until the
    server closes; then again, until `stop`. Returns how many connections it opened."""
    opened = 0
    auth = f"Authorization: apikey {key}\r\n" if key else ""
    while not stop.is_set():
        try:
            reader, writer = await _open(port)
            opened += 1
            writer.write(f"POST /api HTTP/1.1\r\nHost: x\r\n{auth}{framing}\r\n\r\n".encode())
            while not stop.is_set() and not reader.at_eof():
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(pause)
            writer.close()
        except OSError:
            await asyncio.sleep(0.01)
    return opened


def _chunked(port: int, stop: asyncio.Event, key: str | None):
    """1-byte chunks as fast as the socket takes them."""
    return _flood(port, stop, key, "Transfer-Encoding: chunked", b"1\r\nx\r\n" * 64, 0)


def _huge(port: int, stop: asyncio.Event, key: str | None):
    """A 50 MB body announced, then trickled."""
    return _flood(port, stop, key, "Content-Length: 50000000", b"x" * 1024, 0.05)


async def _trickle(port: int, stop: asyncio.Event) -> int:
    lines = 0
    try:
        reader, writer = await _open(port)
        writer.write(b"GET /health HTTP/1.1\r\n")
        while not stop.is_set():
            await asyncio.sleep(1.0)
            if reader.at_eof():
                reader, writer = await _open(port)      # closed by a timeout: start again
                writer.write(b"GET /health HTTP/1.1\r\n")
            writer.write(b"X-Trickle: %d\r\n" % lines)
            lines += 1
        writer.close()
    except OSError:
        pass
    return lines


async def _probe(port: int, stop: asyncio.Event) -> tuple[list[float], int]:
    latencies, failed = [], 0
    reader = writer = None
    while not stop.is_set():
        started = time.perf_counter()
        try:
            if writer is None or reader.at_eof():
                reader, writer = await asyncio.wait_for(_open(port), PROBE_TIMEOUT)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PROBE_TIMEOUT)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await asyncio.wait_for(reader.readexactly(length), PROBE_TIMEOUT)
            if not head.startswith(b"HTTP/1.1 200"):
                failed += 1
            latencies.append((time.perf_counter() - started) * 1000)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, IndexError, ValueError):
            failed += 1
            writer = None
        await asyncio.sleep(PROBE_EVERY)
    return latencies, failed


async def _attackers(kind: str, port: int, conns: int, seconds: float) -> None:
    stop = asyncio.Event()
    n = max(1, conns // 10)
    if kind in ("chunked", "chunked-key"):
        attackers = [_chunked(port, stop, servers.API_KEY if kind == "chunked-key" else None) for _ in range(n)]
    elif kind == "trickle":
        attackers = [_trickle(port, stop) for _ in range(conns)]
    elif kind == "huge":
        attackers = [_huge(port, stop, servers.API_KEY if i % 2 else None) for i in range(n)]
    else:
        attackers = []
    tasks = [asyncio.ensure_future(a) for a in attackers]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


def _attack_process(kind: str, port: int, conns: int, seconds: float) -> None:
    asyncio.run(_attackers(kind, port, conns, seconds))


async def _probe_for(port: int, seconds: float) -> tuple[list[float], int]:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    return await _probe(port, stop)


def _attack(kind: str, port: int, args) -> dict:
    """The attack in a process of its own (its busy loop must not delay the probe's)."""
    attacker = multiprocessing.Process(target=_attack_process, args=(kind, port, args.conns, args.seconds + 1))
    attacker.start()
    try:
        time.sleep(0.5)                         # the attack under way before the first probe
        latencies, failed = asyncio.run(_probe_for(port, args.seconds))
    finally:
        attacker.join(30)
        if attacker.is_alive():
            attacker.kill()
            attacker.join()
    latencies.sort()
    pick = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None)
    return {"probes": len(latencies) + failed, "failed": failed, "p50_ms": pick(.5), "p99_ms": pick(.99),
            "max_ms": latencies[-1] if latencies else None}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conns", type=int, default=1000, help="attacking connections (trickle; /10 for the others)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each attack")
    parser.add_argument("--attacks", default="none,chunked,trickle,huge,chunked-key")
    parser.add_argument("--servers", default="uniws")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    rows, runs = [], []
    for name in args.servers.split(","):
        for kind in args.attacks.split(","):
            results = []
            for _ in range(args.reps):
                with servers.Server(name, workers=args.workers, uniws_extra={"health": True, "api_insecure": False}) as s:
                    results.append(_attack(kind, s.ws_port, args))
            runs.append({"server": name, "attack": kind, "results": results})
            m = {k: median([r[k] for r in results]) for k in ("p50_ms", "p99_ms", "max_ms", "failed", "probes")}
            rows.append([name, kind, fmt(m["probes"]), fmt(m["failed"]), fmt(m["p50_ms"], 2), fmt(m["p99_ms"], 2),
                         fmt(m["max_ms"], 2)])
            note(f"{name} {kind}: {results}")
    print("\n" + table(["server", "attack", "probes", "no 200 in 1 s", "p50 ms", "p99 ms", "max ms"], rows,
                       f"/health every {PROBE_EVERY * 1000:.0f} ms during {args.seconds:g} s of each attack, "
                       f"{args.conns} connections (trickle; {max(1, args.conns // 10)} for chunked and huge), "
                       f"medians of {args.reps}"))


if __name__ == "__main__":
    main()
