"""Connect storm through the connect proxy, side by side with JWT connects (issue 12).

    python -m bench.connect_proxy --clients 5000 [--reps 3] [--workers N] [--inflight 512]

Per repetition (order alternating) two fresh uniws servers take the same storm from the C
load generator: "uniws_jwt", every client with its own HS256 JWT (as `python -m bench
connect`), and "uniws_proxy", every client without a token and `{"data":{"user":"u<i>"}}`,
so that each connect is one POST to a local aiohttp backend (bench/proxy_backend.py, one
process) answering `{"result":{"user":"u<i>","channels":["bench"]}}`. Figure: connects/s =
clients / (first connect() -> last connect push), medians; server and backend CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import select
import subprocess
import sys
from pathlib import Path

from . import gen, report, servers
from .report import Progress, fmt, median, note, table
from .scenarios import _clients, _conns, _cpu_since, _cpu_window

HERE = Path(__file__).resolve().parent


def _proxy_conns(clients: int) -> Path:
    gen.BUILD.mkdir(exist_ok=True)
    path = gen.BUILD / f"conns-proxy-{clients}.txt"
    with open(path, "w") as f:
        f.writelines("bench\t" + json.dumps({"data": {"user": f"u{i}"}, "subs": {"bench": {}}},
                                            separators=(",", ":")) + "\n" for i in range(clients))
    return path


class Backend:
    def __init__(self) -> None:
        self.port = servers.free_port()
        self.proc = subprocess.Popen([sys.executable, str(HERE / "proxy_backend.py"), str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        servers.register(self.proc.pid, group=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("PORT "):
            self.stop()
            raise servers.ServerError(f"proxy backend did not start: {line!r}")

    def cpu_s(self) -> float:
        return servers.proc_cpu_s(self.proc.pid)

    def stop(self) -> None:
        servers.stop_pid(self.proc.pid, group=True)


def _run(name: str, args, clients: int, conns: Path, progress, done: int, rep: int) -> dict:
    backend = Backend() if name == "uniws_proxy" else None
    extra = {"proxy_connect_endpoint": f"http://127.0.0.1:{backend.port}/connect"} if backend else {}
    try:
        with servers.Server("uniws", workers=args.workers, uniws_extra=extra) as s:
            srv0, window = s.cpu_s(), _cpu_window()
            be0 = backend.cpu_s() if backend else 0.0
            with gen.LoadGen(s.ws_port, conns, clients, procs=args.procs, inflight=args.inflight,
                             connect_timeout=30) as lg:
                ready = lg.wait_ready(lambda m: progress.update(done + m["ready"] / clients,
                                                                f"rep {rep + 1} {name} {m['ready']}/{clients}"))
                cpu = _cpu_since(window, s, srv0)
            if ready["ready"] < clients:
                note(f"{name}: {clients - ready['ready']} of {clients} clients got no connect push: "
                     f"{s.log_tail(400)}")
            return {"server": name, "rep": rep, "failed": clients - ready["ready"],
                    "connects_per_s": ready["connects_per_s"] if ready["ready"] == clients else None,
                    "connect_s": ready["connect_s"],
                    "backend_cpu_s": round(backend.cpu_s() - be0, 3) if backend else None, **cpu}
    finally:
        if backend is not None:
            backend.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.connect_proxy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--inflight", type=int, default=512, help="handshakes in flight per loadgen process")
    args = parser.parse_args()
    gen.build()
    servers.nofile_limit()
    clients = _clients(args)
    conns = {"uniws_jwt": _conns("bench", clients, lambda i: "bench"), "uniws_proxy": _proxy_conns(clients)}
    names = list(conns)
    progress = Progress(args.reps * len(names), f"connect_proxy {clients} clients")
    runs = []
    try:
        for rep in range(args.reps):
            for name in names[rep % 2:] + names[:rep % 2]:
                try:
                    runs.append(_run(name, args, clients, conns[name], progress, len(runs), rep))
                except (servers.ServerError, gen.LoadGenError, OSError, ValueError) as exc:
                    note(f"ERROR {name} rep {rep + 1}: {exc}")
                    runs.append({"server": name, "rep": rep, "error": str(exc)[:2000]})
        progress.finish()
    finally:
        servers.stop_all()
    keys = ("connects_per_s", "connect_s", "failed", "server_cpu_s", "backend_cpu_s")
    medians = {n: {k: median([r.get(k) for r in runs if r["server"] == n and "error" not in r]) for k in keys}
               for n in names}
    rows = [[n] + [fmt(medians[n][k], 2 if k != "connects_per_s" else 0) for k in keys] for n in names]
    print("\n" + table(["server", "connects/s", "seconds", "failed", "server cpu s", "backend cpu s"], rows,
                       f"connect storm, {clients} clients, {args.inflight} in flight x {args.procs} loadgen "
                       f"processes; JWT per client vs connect proxy (aiohttp backend, 1 process); "
                       f"medians of {args.reps}:"))
    path = report.save("connect_proxy", {"args": vars(args), "clients": clients, "runs": runs, "medians": medians})
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
