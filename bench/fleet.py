"""`python -m bench fleet`: uniws with the Redis engine across nodes, beside the memory engine
(one node, same workload) and nats-server (the broker reference).

Configurations (`--configs`, any subset; each run starts its own redis-server on a free port):

  memory-1w, memory-2w  one uniws node (1 or 2 workers), memory engine: publish and subscribe there
  redis-1w, redis-2w    node A (publish API) and node B (every subscriber), 1 or 2 workers each
  redis-relay           node A 1 worker, node B 2 workers: each channel crosses Redis once per node
                        and B's owner worker relays it over the bus to the other worker
  redis-split           node A 1 worker, nodes B1 and B2 1 worker each, the same subscribers split
                        over them: Redis delivers each publication to two subscriber connections
                        (the "one Redis subscriber per worker" shape, without the relay)
  nats                  nats-server: publish on its TCP port, subscribers over WebSocket

Two phases per run:
  light   `--clients` subscribers of channel `bench` on the subscriber node(s), 5 publications/s
          for `--light-duration` s on node A's API: publish -> receive p50/p99 across nodes.
  load    `--channels` channels x `--subs` subscribers each (client i on c<i % channels>),
          `--rounds` publications per channel sent as fast as node A accepts them (API batches
          of `--batch`): accepted/s, delivered/s, redis-server CPU (INFO cpu, sys+user) and uniws
          CPU (every node's process tree) per 100k publications.
  paced   the load phase's subscribers at `--paced-rate` publications/s for `--paced-duration` s:
          redis-server and uniws CPU per publication when publications are not pipelined by the
          hundred (each costs Redis a write per subscriber connection).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from . import gen, report, servers
from .redisproc import RedisProc
from .report import Progress, fmt, median, note, table

LIGHT_RATE = 5.0


@dataclass(frozen=True)
class Layout:
    engine: str                   # memory, redis, nats
    publisher: int | None         # workers of the publishing node (None: it is the subscriber node)
    subscribers: tuple[int, ...]  # workers of each subscriber node

    @property
    def nodes(self) -> str:
        if self.engine == "nats":
            return "nats-server"
        pub = f"A {self.publisher}w + " if self.publisher else ""
        return pub + " + ".join(f"{'B' if len(self.subscribers) == 1 else f'B{i + 1}'} {w}w"
                                for i, w in enumerate(self.subscribers))


CONFIGS = {
    "memory-1w": Layout("memory", None, (1,)),
    "memory-2w": Layout("memory", None, (2,)),
    "redis-1w": Layout("redis", 1, (1,)),
    "redis-2w": Layout("redis", 2, (2,)),
    "redis-relay": Layout("redis", 1, (2,)),
    "redis-split": Layout("redis", 1, (1, 1)),
    "nats": Layout("nats", None, (1,)),
}


# --------------------------------------------------------------------------- the processes of one run

class Fleet:
    """The processes of one configuration: redis-server (redis engine), the uniws nodes or
    nats-server. `pub` takes the publications, `subs` get the subscribers (split evenly)."""

    def __init__(self, layout: Layout, args) -> None:
        self.layout = layout
        self.args = args
        self.redis: RedisProc | None = None
        self.pub: servers.Server | None = None
        self.subs: list[servers.Server] = []
        self._stack = ExitStack()

    def _uniws(self, workers: int) -> servers.Server:
        extra = {"health": True}
        if self.layout.engine == "redis":
            extra.update(engine="redis", redis_address=[self.redis.address], redis_prefix="bench")
        if self.args.history:
            extra.update(history_size=self.args.history, history_ttl="300s")
        server = self._stack.enter_context(servers.Server("uniws", workers=workers, uniws_extra=extra))
        _wait_healthy(server, self.args.ready_timeout)
        return server

    def __enter__(self) -> Fleet:
        try:
            if self.layout.engine == "nats":
                self.pub = self._stack.enter_context(servers.Server("nats"))
                self.subs = [self.pub]
                return self
            if self.layout.engine == "redis":
                self.redis = self._stack.enter_context(RedisProc())
            self.subs = [self._uniws(w) for w in self.layout.subscribers]
            self.pub = self._uniws(self.layout.publisher) if self.layout.publisher else self.subs[0]
            return self
        except BaseException:
            self._stack.close()
            raise

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def nodes(self) -> list[servers.Server]:
        return list(dict.fromkeys([self.pub, *self.subs]))

    def cpu_s(self) -> float:
        return sum(s.cpu_s() for s in self.nodes())

    def redis_cpu_s(self) -> float | None:
        return self.redis.cpu_s() if self.redis else None

    def redis_writes(self) -> int | None:
        return self.redis.writes() if self.redis else None


def _wait_healthy(server: servers.Server, timeout: float) -> None:
    """/health answers 200 only once the engine is up (a redis node says 503 until connected)."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{server.api_port}/health"
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"{exc.code} {exc.read()[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)                         # poll interval of the readiness check
    raise servers.ServerError(f"uniws on {server.api_port} not healthy within {timeout}s: {last}")


# --------------------------------------------------------------------------- subscribers on several nodes

def _conn_files(tag: str, clients: int, nodes: int, channel_of) -> list[tuple[Path, int]]:
    """Client i goes to node i * nodes // clients: with c<i % channels> and 2 nodes, every
    channel has subscribers on both."""
    gen.BUILD.mkdir(exist_ok=True)
    out, start = [], 0
    for k in range(nodes):
        end = clients * (k + 1) // nodes
        path = gen.BUILD / f"conns-fleet-{tag}-{clients}-{k}of{nodes}.txt"
        gen.write_conns(path, end - start, lambda i, s=start: channel_of(i + s), servers.SECRET)
        out.append((path, end - start))
        start = end
    return out


class Subscribers:
    """One load generator per subscriber node; waits and reports are merged."""

    def __init__(self, fleet: Fleet, files: list[tuple[Path, int]], procs: int) -> None:
        self.lgs: list[gen.LoadGen] = []
        self._stack = ExitStack()
        per = max(1, procs // len(files))
        for server, (path, n) in zip(fleet.subs, files):
            self.lgs.append(self._stack.enter_context(
                gen.LoadGen(server.ws_port, path, n, proto=server.proto, procs=per)))

    def __enter__(self) -> Subscribers:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def ready(self) -> int:
        return sum(lg.wait_ready()["ready"] for lg in self.lgs)

    def reset(self) -> None:
        for lg in self.lgs:
            lg.reset()

    def wait(self, expect: int, timeout_s: float, idle_s: float) -> dict:
        for lg in self.lgs:                       # every load generator waits at once
            lg.start_wait(expect, timeout_s, idle_s)
        reports = [lg.wait_report(timeout_s) for lg in self.lgs]
        hist: dict[int, int] = {}
        for r in reports:
            for low, count in r["hist"]:
                hist[low] = hist.get(low, 0) + count
        merged = {k: sum(r[k] for r in reports) for k in ("msgs", "lost", "dup", "seq_err", "bad", "closed")}
        merged["t_last_msg"] = max((r["t_last_msg"] for r in reports if r["t_last_msg"]), default=0)
        merged["p50_ms"], merged["p99_ms"] = _pct(hist, .5), _pct(hist, .99)
        merged["max_ms"] = max(r["max_ms"] for r in reports)
        return merged


def _pct(hist: dict[int, int], q: float) -> float | None:
    """A percentile of loadgen's log-linear histogram ({bucket low ns: count}), at the bucket's
    middle as loadgen.c computes it."""
    n = sum(hist.values())
    if not n:
        return None
    rank, acc = min(int(q * n), n - 1), 0
    for low in sorted(hist):
        acc += hist[low]
        if acc > rank:
            mid = low if low < 64 else low + ((1 << (low.bit_length() - 6)) >> 1)
            return mid / 1e6
    return None


# --------------------------------------------------------------------------- one run

def _run(name: str, args, progress: Progress, done: int, rep: int) -> dict:
    layout = CONFIGS[name]
    nsub = len(layout.subscribers)
    light_files = _conn_files("light", args.clients, nsub, lambda i: "bench")
    load_clients = args.channels * args.subs
    load_files = _conn_files(f"load{args.channels}", load_clients, nsub, lambda i: f"c{i % args.channels}")
    label = f"rep {rep + 1}/{args.reps} {name}"
    run = {"server": name, "rep": rep, "nodes": layout.nodes}
    with Fleet(layout, args) as fleet:
        progress.update(done + .1, f"{label} light")
        with Subscribers(fleet, light_files, args.procs) as subs:
            ready = subs.ready()
            subs.reset()
            count = max(2, round(LIGHT_RATE * args.light_duration))
            pub = gen.publish(fleet.pub.api_port, proto=fleet.pub.api_proto, rate=LIGHT_RATE, count=count,
                              batch=args.batch, pad=args.pad, max_seconds=int(args.light_duration * 5 + 30))
            res = subs.wait(pub["acked"], timeout_s=args.light_duration * 5 + 10, idle_s=args.idle)
            run.update(light_ready=ready, light_p50_ms=res["p50_ms"], light_p99_ms=res["p99_ms"],
                       light_max_ms=res["max_ms"], light_lost=res["lost"] + (count - pub["acked"]) * ready,
                       light_dup_order=res["dup"] + res["seq_err"], light_pub_errors=pub["errors"])
        progress.update(done + .5, f"{label} load")
        with Subscribers(fleet, load_files, args.procs) as subs:
            ready = subs.ready()
            subs.reset()
            count = args.channels * args.rounds
            cpu0, redis0, writes0 = fleet.cpu_s(), fleet.redis_cpu_s(), fleet.redis_writes()
            pub = gen.publish(fleet.pub.api_port, proto=fleet.pub.api_proto, rate=0, count=count, channel="c",
                              nchan=args.channels, batch=args.batch, inflight=args.pub_inflight, pad=args.pad)
            res = subs.wait(args.rounds, timeout_s=60, idle_s=args.idle)
            cpu, redis = fleet.cpu_s() - cpu0, (fleet.redis_cpu_s() - redis0 if fleet.redis else None)
            acked, t0 = pub["acked"], pub["t_start"]
            per100k = 1e5 / max(acked, 1)
            run.update(load_ready=ready, published=acked, pub_errors=pub["errors"],
                       accepted_per_s=acked / ((pub["t_done"] - t0) / 1e9),
                       delivered_per_s=res["msgs"] / ((res["t_last_msg"] - t0) / 1e9) if res["t_last_msg"] else None,
                       delivered=res["msgs"], lost=res["lost"] + (count - acked) * args.subs,
                       dup_order=res["dup"] + res["seq_err"], load_p50_ms=res["p50_ms"], load_p99_ms=res["p99_ms"],
                       server_cpu_100k=cpu * per100k, redis_cpu_100k=redis * per100k if redis is not None else None,
                       redis_cpu_us_per_pub=redis * 1e6 / max(acked, 1) if redis is not None else None,
                       redis_writes_per_pub=(fleet.redis_writes() - writes0) / max(acked, 1)
                       if fleet.redis else None)
            if args.paced_rate:
                run.update(_paced(fleet, subs, args))
            if run["lost"] or run["dup_order"] or pub["errors"] or run["light_lost"] or run["light_pub_errors"]:
                note(f"{name}: LOSS load: {run['lost']} lost, {run['dup_order']} dup/order, {pub['errors']} API "
                     f"errors; light: {run['light_lost']} lost, {run['light_pub_errors']} API errors")
    return run


def _paced(fleet: Fleet, subs: Subscribers, args) -> dict:
    """The load phase's subscribers at a steady `--paced-rate` (publications spread over the
    channels): here a publication is not pipelined with hundreds of others, so each one costs
    Redis its own write to every subscriber connection - what the subscriber shape changes."""
    subs.reset()
    per_channel = max(1, round(args.paced_rate * args.paced_duration / args.channels))
    count = per_channel * args.channels
    cpu0, redis0, writes0 = fleet.cpu_s(), fleet.redis_cpu_s(), fleet.redis_writes()
    pub = gen.publish(fleet.pub.api_port, proto=fleet.pub.api_proto, rate=args.paced_rate, count=count,
                      channel="c", nchan=args.channels, batch=args.batch, inflight=args.pub_inflight, pad=args.pad,
                      max_seconds=int(args.paced_duration * 5 + 30))
    res = subs.wait(per_channel, timeout_s=args.paced_duration * 5 + 10, idle_s=args.idle)
    cpu, redis = fleet.cpu_s() - cpu0, (fleet.redis_cpu_s() - redis0 if fleet.redis else None)
    acked = max(pub["acked"], 1)
    return {"paced_published": pub["acked"], "paced_achieved": pub["achieved_rate"],
            "paced_lost": res["lost"] + (count - pub["acked"]) * args.subs, "paced_dup_order": res["dup"] + res["seq_err"],
            "paced_pub_errors": pub["errors"], "paced_p50_ms": res["p50_ms"], "paced_p99_ms": res["p99_ms"],
            "paced_redis_us_per_pub": redis * 1e6 / acked if redis is not None else None,
            "paced_redis_writes_per_pub": (fleet.redis_writes() - writes0) / acked if fleet.redis else None,
            "paced_server_us_per_pub": cpu * 1e6 / acked}


# --------------------------------------------------------------------------- the scenario

KEYS = [("accepted_per_s", "accepted/s", 0), ("delivered_per_s", "delivered/s", 0),
        ("light_p50_ms", "light p50 ms", 1), ("light_p99_ms", "light p99 ms", 1),
        ("redis_cpu_100k", "redis CPU s/100k pubs", 2), ("redis_cpu_us_per_pub", "redis µs/pub", 1),
        ("redis_writes_per_pub", "redis writes/pub", 2),
        ("server_cpu_100k", "uniws CPU s/100k pubs", 2), ("load_p99_ms", "load p99 ms", 0)]
PACED = [("paced_achieved", "achieved/s", 0), ("paced_p50_ms", "p50 ms", 1), ("paced_p99_ms", "p99 ms", 1),
         ("paced_redis_us_per_pub", "redis µs/pub", 2),
         ("paced_redis_writes_per_pub", "redis writes/pub", 2), ("paced_server_us_per_pub", "uniws µs/pub", 1)]


def fleet(args) -> None:
    from .scenarios import _attempt, _errors, _order  # the shared run driver

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    for n in names:
        if n not in CONFIGS:
            raise SystemExit(f"unknown configuration {n!r}; known: {', '.join(CONFIGS)}")
    for n, why in (("nats", servers.Server.available("nats")), ("redis", RedisProc.available())):
        if why:
            note(f"skipping {n} configurations: {why}")
            names = [m for m in names if CONFIGS[m].engine != n]
    progress = Progress(args.reps * len(names), "fleet")
    runs: list[dict] = []
    for rep in range(args.reps):
        for name in _order(names, rep):
            _attempt(runs, name, rep, lambda: _run(name, args, progress, len(runs), rep))
            progress.update(len(runs), f"rep {rep + 1} {name}", force=True)
    progress.finish()
    medians = {n: {k: median([r.get(k) for r in runs if r["server"] == n and "error" not in r])
                   for k, *_ in KEYS + PACED} for n in names}
    rows = []
    for n in names:
        mine = [r for r in runs if r["server"] == n and "error" not in r]
        loss = sum(r["lost"] + r["dup_order"] + r["light_lost"] + r["light_dup_order"] + r["pub_errors"]
                   + r["light_pub_errors"] + r.get("paced_lost", 0) + r.get("paced_dup_order", 0)
                   + r.get("paced_pub_errors", 0) for r in mine)
        rows.append([n, CONFIGS[n].nodes, f"{len(mine)}/{args.reps}",
                     *[fmt(medians[n][k], d) for k, _, d in KEYS], loss])
    text = "\n" + table(["config", "nodes", "runs", *[h for _, h, _ in KEYS], "lost+dup+err"], rows,
                        f"fleet: light = {args.clients} subscribers of one channel, {LIGHT_RATE:g} publications/s "
                        f"for {args.light_duration:g} s (publish -> receive across nodes); load = {args.channels} "
                        f"channels x {args.subs} subscribers, {args.rounds} publications per channel "
                        f"({args.channels * args.rounds}) as fast as accepted, batches of {args.batch}"
                        f"{f', history {args.history}' if args.history else ', no history'}; "
                        f"medians of {args.reps}")
    if args.paced_rate:
        text += "\n\n" + table(["config", "nodes", *[h for _, h, _ in PACED]],
                               [[n, CONFIGS[n].nodes, *[fmt(medians[n][k], d) for k, _, d in PACED]] for n in names],
                               f"paced: the load phase's subscribers, {args.paced_rate:g} publications/s for "
                               f"{args.paced_duration:g} s spread over the {args.channels} channels; CPU per "
                               f"publication, medians of {args.reps}")
    print(text + _errors(runs))
    path = report.save("fleet", {"args": {k: v for k, v in vars(args).items() if k != "func"},
                                 "runs": runs, "medians": medians})
    print(f"\nresults: {path}")


def add_parser(sub) -> None:
    from .scenarios import add_common

    p = sub.add_parser("fleet", help="uniws with the Redis engine across nodes (1 and 2 workers, relay vs "
                                     "split), beside the memory engine and nats-server")
    add_common(p, 1000)
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    p.add_argument("--channels", type=int, default=1000, help="channels of the load phase")
    p.add_argument("--subs", type=int, default=2, help="subscribers per channel in the load phase")
    p.add_argument("--rounds", type=int, default=50, help="publications per channel in the load phase")
    p.add_argument("--light-duration", type=float, default=3.0, help="seconds of the 5/s light phase")
    p.add_argument("--paced-rate", type=float, default=2000.0,
                   help="publications/s of the paced phase (0: no paced phase)")
    p.add_argument("--paced-duration", type=float, default=3.0, help="seconds of the paced phase")
    p.add_argument("--history", type=int, default=0, help="history_size of every channel (0: no history)")
    p.add_argument("--ready-timeout", type=float, default=20.0, help="seconds for a node's /health to say 200")
    p.set_defaults(func=fleet)
