"""Prometheus metrics (08 §7): Centrifugo's names where they exist, uniws's own beside them.

Every worker keeps its own counts; a scrape of any worker asks the others for theirs over
the bus (the `metrics` survey, as `info` does with `stats`) and answers for the whole
node, with a `worker` label on the series where a worker's own value matters. The text
format is written directly: the few dozen lines of a scrape cost less than building
prometheus_client's registries, and nothing is counted through it on the hot path. The
hot-path counts (frames queued to clients, per-turn writes) are C integers in the Cython
`Fanout`, read when scraped.

A worker that does not answer within `health_worker_timeout` is reported with
`uniws_worker_up{worker="N"} 0` and left out of the sums.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from . import __version__
from .http import PathHandler

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# prometheus_client's default histogram buckets, as Centrifugo uses.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WorkerMetrics:
    """One worker's counts beyond what the node and fan-out keep (API command durations)."""

    def __init__(self, node) -> None:
        self.node = node
        # (protocol, method) -> [count per bucket (cumulative at render), ..., +Inf count, sum]
        self.api: dict[str, list[float]] = {}

    def observe_api(self, tally: dict[str, int], seconds: float) -> None:
        """`tally[method]` commands took `seconds` (the request they came in) each."""
        slot = len(BUCKETS)
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                slot = i
                break
        api = self.api
        for method, n in tally.items():
            row = api.get(method)
            if row is None:
                row = api[method] = [0.0] * (len(BUCKETS) + 2)
            row[slot] += n
            row[-1] += seconds * n

    def snapshot(self) -> dict[str, Any]:
        """This worker's figures as plain JSON values (sent over the bus when surveyed)."""
        node = self.node
        stats = node.stats()
        fanout = node.fanout
        snap = {
            "worker": node.index,
            "num_clients": stats["num_clients"], "num_users": stats["num_users"],
            "num_channels": stats["num_channels"], "num_subs": stats["num_subs"],
            "uptime": time.time() - node.started,
            "frames_sent": fanout.frames_sent, "flushes": fanout.flushes,
            "connects": node.connects,
            "disconnects": {str(code): n for code, n in node.disconnects.items()},
            "publications": node.publications,
            "sequenced": node.cluster.sequenced if node.cluster is not None else node.publications,
            "api": self.api,
            "items": stats["metrics"]["items"],
        }
        return snap


async def node_snapshots(node, timeout: float) -> tuple[list[dict], list[int]]:
    """Every worker's snapshot (this one first) and the workers that did not answer in time."""
    snaps = [node.metrics.snapshot()]
    cluster = node.cluster
    missing: list[int] = []
    if cluster is not None:
        others = [w for w in range(cluster.count) if w != cluster.index]
        answers = await asyncio.gather(
            *(asyncio.wait_for(cluster.request(w, "metrics", {}), timeout) for w in others), return_exceptions=True)
        for worker, answer in zip(others, answers):
            if isinstance(answer, BaseException):
                missing.append(worker)
            else:
                snaps.append(answer[0])
    snaps.sort(key=lambda s: s["worker"])
    return snaps, missing


def _labels(**labels: Any) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **labels: Any) -> None:
        self.lines.append(f"{name}{_labels(**labels)} {_num(value)}")

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode()


def render(snaps: list[dict], missing: list[int], count: int) -> bytes:
    """The Prometheus text exposition of one node from its workers' snapshots."""
    out = _Text()

    def total(key: str) -> float:
        return sum(s[key] for s in snaps)

    def item(s: dict, key: str) -> float:
        return s["items"].get(key, 0.0)

    for key, name, what in (("num_clients", "num_clients", "Number of clients connected."),
                            ("num_users", "num_users", "Number of unique users connected (per worker, summed)."),
                            ("num_subs", "num_subscriptions", "Number of subscriptions."),
                            ("num_channels", "num_channels", "Number of channels with one or more subscribers "
                                                             "(per worker, summed).")):
        out.family(f"centrifugo_node_{name}", "gauge", what)
        out.sample(f"centrifugo_node_{name}", total(key))
    out.family("centrifugo_node_num_nodes", "gauge", "Number of nodes in the cluster.")
    out.sample("centrifugo_node_num_nodes", 1)
    out.family("centrifugo_node_build", "gauge", "Node build info.")
    out.sample("centrifugo_node_build", 1, version=__version__)

    out.family("centrifugo_node_messages_sent_count", "counter", "Number of messages sent to the engine.")
    out.sample("centrifugo_node_messages_sent_count", total("sequenced"), type="publication")
    out.family("centrifugo_node_messages_received_count", "counter", "Number of messages received from the engine.")
    out.sample("centrifugo_node_messages_received_count", total("sequenced"), type="publication")

    out.family("centrifugo_transport_messages_sent", "counter", "Number of messages sent to client connections.")
    out.sample("centrifugo_transport_messages_sent", total("frames_sent"), transport="uni_websocket")
    out.family("centrifugo_transport_connect_count", "counter", "Number of connections to a transport.")
    out.sample("centrifugo_transport_connect_count", total("connects"), transport="uni_websocket")

    codes: dict[str, float] = {}
    for s in snaps:
        for code, n in s["disconnects"].items():
            codes[code] = codes.get(code, 0) + n
    out.family("centrifugo_client_num_server_disconnects", "counter", "Number of server-initiated disconnects.")
    for code in sorted(codes, key=int):
        out.sample("centrifugo_client_num_server_disconnects", codes[code], code=code)

    _api_families(out, snaps)

    out.family("centrifugo_proxy_errors", "counter", "Number of proxy call errors.")
    for kind in ("connect", "refresh"):
        out.sample("centrifugo_proxy_errors", sum(item(s, f"uniws.proxy.{kind}_errors") for s in snaps),
                   protocol="http", type=kind)

    # uniws's own.
    out.family("uniws_workers", "gauge", "Worker processes of this node.")
    out.sample("uniws_workers", count)
    out.family("uniws_worker_up", "gauge", "1 when the worker answered this scrape in time.")
    for s in snaps:
        out.sample("uniws_worker_up", 1, worker=s["worker"])
    for worker in missing:
        out.sample("uniws_worker_up", 0, worker=worker)
    per_worker = (
        ("uniws_worker_num_clients", "gauge", "Clients connected to the worker.", lambda s: s["num_clients"]),
        ("uniws_worker_num_subscriptions", "gauge", "Subscriptions on the worker.", lambda s: s["num_subs"]),
        ("uniws_worker_uptime_seconds", "gauge", "Seconds since the worker started.", lambda s: s["uptime"]),
        ("uniws_worker_publications_total", "counter", "Publications handed to the worker's hub.",
         lambda s: s["publications"]),
        ("uniws_worker_messages_sent_total", "counter", "Frames queued to the worker's clients.",
         lambda s: s["frames_sent"]),
        ("uniws_worker_writes_total", "counter", "Per-turn socket writes carrying those frames.",
         lambda s: s["flushes"]),
        ("uniws_bus_messages_sent_total", "counter", "Messages the worker wrote to the bus.",
         lambda s: item(s, "uniws.bus.sent_messages")),
        ("uniws_bus_messages_received_total", "counter", "Messages the worker read from the bus.",
         lambda s: item(s, "uniws.bus.received_messages")),
        ("uniws_bus_gaps_total", "counter", "Times the worker fell a whole ring behind a peer.",
         lambda s: item(s, "uniws.bus.gaps")),
        ("uniws_bus_overflows_total", "counter", "Bus overflows that reconnected the worker's clients.",
         lambda s: item(s, "uniws.bus.overflows")),
    )
    for name, kind, what, value in per_worker:
        out.family(name, kind, what)
        for s in snaps:
            out.sample(name, value(s), worker=s["worker"])
    writes = total("flushes")
    out.family("uniws_write_coalescing_ratio", "gauge",
               "Frames per socket write since start (above 1: several frames shared one write).")
    out.sample("uniws_write_coalescing_ratio", total("frames_sent") / writes if writes else 0)
    out.family("uniws_slow_client_closes_total", "counter",
               "Clients disconnected for exceeding client_queue_max_size (code 3008).")
    out.sample("uniws_slow_client_closes_total", codes.get("3008", 0))
    return out.text()


def _api_families(out: _Text, snaps: list[dict]) -> None:
    rows: dict[str, list[float]] = {}
    for s in snaps:
        for method, row in s["api"].items():
            acc = rows.setdefault(method, [0.0] * len(row))
            for i, v in enumerate(row):
                acc[i] += v
    summary = "centrifugo_api_command_duration_seconds"
    out.family(summary, "summary", "Duration of API commands (per HTTP request they came in).")
    for method in sorted(rows):
        row = rows[method]
        out.sample(summary + "_sum", row[-1], method=method, protocol="http")
        out.sample(summary + "_count", sum(row[:-1]), method=method, protocol="http")
    hist = summary + "_histogram"
    out.family(hist, "histogram", "Duration of API commands (per HTTP request they came in).")
    for method in sorted(rows):
        row = rows[method]
        running = 0.0
        for bound, n in zip(BUCKETS, row):
            running += n
            out.sample(hist + "_bucket", running, method=method, protocol="http", le=repr(bound))
        running += row[len(BUCKETS)]
        out.sample(hist + "_bucket", running, method=method, protocol="http", le="+Inf")
        out.sample(hist + "_sum", row[-1], method=method, protocol="http")
        out.sample(hist + "_count", running, method=method, protocol="http")


class MetricsHandler(PathHandler):
    """`GET <prometheus_handler_prefix>` on the HTTP front (any method is answered)."""

    async def respond(self):
        snaps, missing = await node_snapshots(self.node, self.timeout)
        count = self.node.cluster.count if self.node.cluster is not None else 1
        return 200, [("Content-Type", CONTENT_TYPE)], render(snaps, missing, count)
