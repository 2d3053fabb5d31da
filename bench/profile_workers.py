"""py-spy profiles of uniws's workers under a bench workload: `python -m bench.profile_workers`.

Starts uniws (`--workers`, the bench config), drives `connect` (a storm of `--clients` JWT
connects, personal channel on) or `channels` (one publication to each of `--clients` channels,
`--rounds` times), records every worker with `py-spy record --native -f raw` for the whole
workload, and prints each function's share of the samples: self (innermost frame) and
inclusive, and each worker's user and system CPU per operation (connect or publication) from
/proc. Raw files stay in `--out` for flame graphs. Needs py-spy (pip install py-spy);
`--no-profile` measures the CPU split alone, without py-spy's sampling cost.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import gen, servers


def summarize(paths: list[Path], top: int) -> str:
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = [re.sub(r" \(.*/", " (", re.sub(r":\d+\)$", ")", f)) for f in stack.split(";")]
            own[frames[-1]] += n
            for frame in set(frames):
                inclusive[frame] += n
    out = [f"{total} samples", "self:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out.append("inclusive:")
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top * 2)]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=("connect", "channels"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--clients", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--no-profile", action="store_true", help="only the per-worker CPU split")
    args = p.parse_args()
    if not args.no_profile and not shutil.which("py-spy"):
        sys.exit("py-spy is not installed (pip install py-spy)")
    gen.build()
    args.out.mkdir(parents=True, exist_ok=True)
    personal = args.scenario == "connect"
    channel_of = (lambda i: "bench") if personal else (lambda i: f"c{i}")
    conns = gen.write_conns(gen.BUILD / f"conns-profile-{args.scenario}-{args.clients}.txt", args.clients,
                            channel_of, servers.SECRET)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with servers.Server("uniws", personal=personal, workers=args.workers) as server:
        workers = [pid for pid in server.pids() if pid != server.proc.pid]
        paths = [args.out / f"profile-{args.scenario}-{stamp}-w{i}.txt" for i in range(len(workers))]
        with gen.LoadGen(server.ws_port, conns, args.clients, connect_timeout=60) as lg:
            if not personal:
                lg.wait_ready(lambda m: None)
                lg.reset()
            spies = [] if args.no_profile else [
                subprocess.Popen(["py-spy", "record", "-p", str(pid), "-r", str(args.rate), "--native", "-f", "raw",
                                  "-o", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for pid, path in zip(workers, paths)]
            if spies:
                time.sleep(1.0)                  # py-spy attaches
            before = [servers.proc_cpu_split(pid) for pid in workers]
            if personal:
                operations = lg.wait_ready(lambda m: None)["ready"]
            else:
                operations = gen.publish(server.api_port, proto=server.api_proto, rate=0,
                                         count=args.clients * args.rounds, channel="c", nchan=args.clients,
                                         batch=1000, inflight=2, pad=60)["acked"]
                lg.wait(args.rounds, timeout_s=120, idle_s=3)
            after = [servers.proc_cpu_split(pid) for pid in workers]
            for spy in spies:
                spy.send_signal(2)               # SIGINT: py-spy writes its file and exits
            for spy in spies:
                spy.wait(timeout=30)
    unit = "connect" if personal else "publication"
    for i, (b, a) in enumerate(zip(before, after)):
        print(f"worker {i}: {(a[0] - b[0]) / operations * 1e6:.2f} us user + {(a[1] - b[1]) / operations * 1e6:.2f} "
              f"us system per {unit}" + (" (with py-spy attached)" if spies else ""))
    if spies:
        print(f"raw profiles: {', '.join(map(str, paths))}")
        print(summarize([path for path in paths if path.exists()], args.top))


if __name__ == "__main__":
    main()
