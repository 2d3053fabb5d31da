"""Progress bar, medians, tables with uniws/peer ratios, JSON results and PNG plots."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


class Progress:
    """A `\\r` text bar on stderr: `units` is the total amount of work in any unit."""

    def __init__(self, units: float, label: str) -> None:
        self.units = max(units, 1e-9)
        self.label = label
        self.done = 0.0
        self.last = 0.0
        self.t0 = time.monotonic()

    def update(self, done: float, text: str = "", force: bool = False) -> None:
        self.done = min(done, self.units)
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        frac = self.done / self.units
        bar = "#" * int(frac * 30)
        line = f"\r[{bar:<30}] {frac * 100:3.0f}% {time.monotonic() - self.t0:5.0f}s {self.label} {text}"
        sys.stderr.write(line[:150].ljust(150))
        sys.stderr.flush()

    def finish(self) -> None:
        self.update(self.units, "done", force=True)
        sys.stderr.write("\n")
        sys.stderr.flush()


def note(text: str) -> None:
    """A line that must not be overwritten by the bar."""
    sys.stderr.write("\r" + " " * 150 + "\r" + text + "\n")
    sys.stderr.flush()


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b) -> str:
    if a is None or b is None or b == 0:
        return "-"
    r = a / b
    if r == 0:
        return "0x"
    if r >= 100:
        return f"{r:.0f}x"
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.3f}x" if r >= 0.001 else f"{r:.1e}x"


def fmt(v, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)) and abs(v) >= 1e6:
        return f"{v / 1e6:.2f}M"
    if isinstance(v, (int, float)) and abs(v) >= 1e4 and digits == 0:
        return f"{v / 1e3:.1f}k"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table(headers: list[str], rows: list[list], title: str = "") -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [title] if title else []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine_info() -> dict:
    import resource

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                  cwd=Path(__file__).resolve().parent.parent).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    try:
        import uniws
        version = uniws.__version__
    except Exception:
        version = "?"
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE), "uniws_version": version,
            "git_head": git("rev-parse", "--short", "HEAD"),
            "uniws_tree_dirty": bool(git("status", "--porcelain", "--", "uniws"))}


def save(scenario: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{scenario}-{stamp}.json"
    data = {"scenario": scenario, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine_info(), **data}
    path.write_text(json.dumps(data, indent=1))
    return path


# --------------------------------------------------------------------------- plots

def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        note("matplotlib is not installed (pip install matplotlib): no plots")
        return None


def plot_fanout(base: Path, curves: dict[str, list[dict]], clients: int) -> list[Path]:
    """curves: server -> [{rate, delivered_per_s, p50_ms, p99_ms}] (medians)."""
    plt = _plt()
    if plt is None:
        return []
    out = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for server, pts in curves.items():
        pts = [p for p in pts if p.get("delivered_per_s")]
        ax.plot([p["rate"] for p in pts], [p["delivered_per_s"] for p in pts], marker="o", label=server)
    rates = sorted({p["rate"] for pts in curves.values() for p in pts})
    if rates:
        ax.plot(rates, [r * clients for r in rates], color="grey", linestyle=":", label="offered (rate x clients)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("publish rate (publications/s)")
    ax.set_ylabel("delivered messages/s")
    ax.set_title(f"fanout, {clients} clients on one channel (medians)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path = base.with_name(base.stem + "-delivered.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.append(path)

    fig, ax = plt.subplots(figsize=(8, 5))
    for n, (server, pts) in enumerate(curves.items()):
        color = f"C{n}"
        ax.plot([p["rate"] for p in pts], [p["p50_ms"] for p in pts], marker="o", color=color,
                label=f"{server} p50")
        ax.plot([p["rate"] for p in pts], [p["p99_ms"] for p in pts], marker="^", linestyle="--", color=color,
                label=f"{server} p99")
    for limit in (100, 150):
        ax.axhline(limit, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("publish rate (publications/s)")
    ax.set_ylabel("latency publish -> receive (ms)")
    ax.set_title(f"fanout latency, {clients} clients (medians)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    path = base.with_name(base.stem + "-latency.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.append(path)
    return out


def plot_bars(base: Path, values: dict[str, float | None], ylabel: str, title: str) -> list[Path]:
    plt = _plt()
    if plt is None:
        return []
    names = [n for n, v in values.items() if v is not None]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bars = ax.bar(names, [values[n] for n in names], color=[f"C{i}" for i in range(len(names))])
    ax.bar_label(bars, labels=[fmt(values[n], 1) for n in names], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right")
    path = base.with_name(base.stem + ".png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
