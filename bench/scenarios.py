"""The benchmark scenarios: fanout, memory, connect, channels (and selftest, soak).

Each scenario runs every selected server side by side: for each repetition, the
servers one after another (the order rotates per repetition), each freshly
started. Figures are medians over the repetitions, printed with the ratio
uniws/peer, and saved as JSON (+ PNG) under bench/results/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import gen, report, servers
from .report import Progress, fmt, median, note, ratio, table

LIGHT_RATE = 5.0                      # the light-load point, publications/s
DELIVERY_LADDER = [2e5, 5e5, 1e6, 2e6, 5e6, 1e7, 2e7]  # msgs/s offered; rate = this / clients


# --------------------------------------------------------------------------- helpers

def _servers(args) -> list[str]:
    names = []
    for name in args.servers.split(","):
        name = name.strip()
        if name not in servers.ALL and not servers.is_uniws(name):
            raise SystemExit(f"unknown server {name!r}; known: {', '.join(servers.ALL)}")
        why = servers.Server.available(name)
        if why:
            note(f"skipping {name}: {why}")
            continue
        names.append(name)
    if "uniws" not in names:
        note("uniws is not among the servers: no ratios")
    return names


def _server(name: str, args, personal: bool = False) -> servers.Server:
    return servers.Server(name, personal=personal, workers=args.workers if servers.is_uniws(name) else None)


def _order(names: list[str], rep: int) -> list[str]:
    k = rep % len(names)
    return names[k:] + names[:k]


def _clients(args) -> int:
    limit = servers.nofile_limit() - 100      # what one server process can hold, with some spare fds
    if args.clients > limit:
        note(f"NOTE: RLIMIT_NOFILE hard limit here is {limit + 100} and cannot be raised, so a single-process "
             f"server holds at most ~{limit} connections: running {limit} clients instead of {args.clients}")
        return limit
    return args.clients


def _conns(tag: str, clients: int, channel_of) -> Path:
    gen.BUILD.mkdir(exist_ok=True)
    return gen.write_conns(gen.BUILD / f"conns-{tag}-{clients}.txt", clients, channel_of, servers.SECRET)


def _loadgen(s: servers.Server, conns: Path, clients: int, args, **kw) -> gen.LoadGen:
    return gen.LoadGen(s.ws_port, conns, clients, proto=s.proto, procs=args.procs, **kw)


def _cpu_window(s: servers.Server | None = None):
    busy, total = servers.machine_cpu()
    return busy, total, time.monotonic(), s.user_cpu_s() if s is not None else None


def _cpu_since(window, s: servers.Server, srv_cpu0: float) -> dict:
    busy0, total0, t0, user0 = window
    busy, total = servers.machine_cpu()
    wall = time.monotonic() - t0
    out = {"wall_s": round(wall, 3), "server_cpu_s": round(s.cpu_s() - srv_cpu0, 3),
           "machine_busy": round((busy - busy0) / max(total - total0, 1), 3)}
    if user0 is not None:
        out["server_user_s"] = round(s.user_cpu_s() - user0, 3)
    return out


def _attempt(runs: list[dict], name: str, rep: int, fn) -> None:
    """Run one (server, repetition); a server that fails to start or a load generator
    that dies is recorded as an error of that run, and the scenario goes on."""
    if servers.interrupted:
        raise KeyboardInterrupt
    try:
        runs.append(fn())
    except (servers.ServerError, gen.LoadGenError, OSError, ValueError) as exc:
        if servers.interrupted:           # Ctrl-C also kills loadgen/publisher: not a run failure
            raise KeyboardInterrupt from exc
        note(f"ERROR {name} (rep {rep + 1}): {exc}")
        runs.append({"server": name, "rep": rep, "error": str(exc)[:2000]})


def _errors(runs: list[dict]) -> str:
    bad = [f"  {r['server']} rep {r['rep'] + 1}: {r['error'][:300]}" for r in runs if "error" in r]
    return ("\nruns that failed (left out of the medians):\n" + "\n".join(bad)) if bad else ""


def _rank(runs: list[dict], key: str) -> dict[str, float | None]:
    by: dict[str, list] = {}
    for run in runs:
        by.setdefault(run["server"], []).append(None if "error" in run else run.get(key))
    return {name: median(vals) for name, vals in by.items()}


def _ratio_table(title: str, medians: dict[str, dict], keys: list[tuple]) -> str:
    """One row per server: each key's median and, for keys marked with a 4th item True, uniws/peer."""
    uni = medians.get("uniws", {})
    headers = ["server"]
    for key in keys:
        headers += [key[1], "uniws/peer"] if key[3:] and key[3] else [key[1]]
    rows = []
    for name, m in medians.items():
        row = [name]
        for key in keys:
            row.append(fmt(m.get(key[0]), key[2]))
            if key[3:] and key[3]:
                row.append("" if name == "uniws" else ratio(uni.get(key[0]), m.get(key[0])))
        rows.append(row)
    return table(headers, rows, title)


def _finish(scenario: str, args, data: dict, text: str, plots) -> None:
    print(text + _errors(data.get("runs", [])))
    path = report.save(scenario, {"args": {k: v for k, v in vars(args).items() if k != "func"}, **data})
    pngs = plots(path)
    print(f"\nresults: {path}")
    for png in pngs:
        print(f"plot:    {png}")


# --------------------------------------------------------------------------- fanout

def fanout(args) -> None:
    names = _servers(args)
    clients = _clients(args)
    rates = [float(r) for r in args.rates.split(",")] if args.rates else \
        sorted({round(d / clients, 1) for d in DELIVERY_LADDER if d / clients >= 1})
    rates = [r for r in rates if r != LIGHT_RATE]
    conns = _conns("bench", clients, lambda i: "bench")
    progress = Progress(args.reps * len(names) * (len(rates) + 2), f"fanout {clients} clients")
    runs = []
    for rep in range(args.reps):
        for name in _order(names, rep):
            base = (len(runs)) * (len(rates) + 2)
            _attempt(runs, name, rep, lambda: _fanout_run(name, args, clients, conns, rates, progress, base, rep))
    progress.finish()
    _fanout_report(args, clients, names, rates, runs)


def _fanout_run(name, args, clients, conns, rates, progress, base, rep) -> dict:
    run = {"server": name, "rep": rep, "steps": []}
    label = f"rep {rep + 1}/{args.reps} {name}"
    with _server(name, args) as s, _loadgen(s, conns, clients, args) as lg:
        ready = lg.wait_ready(lambda m: progress.update(base, f"{label} connect {m['ready']}/{clients}"))
        run.update(ready=ready["ready"], connect_failed=clients - ready["ready"], processes=len(s.pids()),
                   rss_kb=s.rss_kb())
        if ready["ready"] < clients:
            note(f"{name}: only {ready['ready']} of {clients} clients connected")
        for n, rate in enumerate([LIGHT_RATE] + rates):
            duration = args.light_duration if n == 0 else args.duration
            count = max(2, round(rate * duration))
            text = f"{label} rate {fmt(rate)}/s"
            lg.reset()
            srv0, window = s.cpu_s(), _cpu_window(s)
            pub = gen.publish(s.api_port, proto=s.api_proto, rate=rate, count=count, batch=args.batch,
                              inflight=args.pub_inflight, pad=args.pad, max_seconds=int(duration * 5 + 30),
                              on_tick=lambda t: progress.update(base + 1 + n + min(t / duration, 1) * .8, text))
            res = lg.wait(pub["acked"], timeout_s=duration * 5 + 10, idle_s=args.idle,
                          progress=lambda m: progress.update(base + 1.8 + n, f"{text} {fmt(m['msgs'])}/"
                                                                               f"{fmt(m['target'])}"))
            step = _fanout_step(rate, count, pub, res, ready["ready"])
            step.update(_cpu_since(window, s, srv0))
            step["loadgen_cpu_s"] = res["cpu_s"]
            step["loadgen_busiest_proc"] = round(res["cpu_max_proc_s"] / max(step["wall_s"], 1e-9), 3)
            step["loadgen_saturated"] = step["loadgen_busiest_proc"] >= 0.9
            run["steps"].append(step)
            progress.update(base + 2 + n, text, force=True)
            if n > 0 and not step["sustained"]:
                break                     # higher rates only pile up more backlog
        run["rss_kb_end"] = s.rss_kb()
    return run


def _fanout_step(rate, count, pub, res, ready) -> dict:
    """One rate step. Completion of a publication = when the last client received it.
    delivered/s = messages of publications 2..N over the time between the completion of
    the first and of the last one (exact when the server keeps up, whatever the spread
    of one broadcast); the server keeps up when the last publication's completion
    latency exceeds the first one's by at most 10% of the step + 100 ms."""
    acked = pub["acked"]
    span = (res["done_last"] - res["done_first"]) / 1e9 if res["done_first"] and res["done_last"] else 0
    delivered_per_s = res["msgs"] * (acked - 1) / acked / span if acked > 1 and span > 0 else None
    first_done_ms = (res["done_first"] - res["sent_first"]) / 1e6 if res["done_first"] else None
    last_done_ms = (res["done_last"] - res["sent_last"]) / 1e6 if res["done_last"] else None
    send_span_ms = (res["sent_last"] - res["sent_first"]) / 1e6 if res["sent_last"] else 0
    growth_ms = last_done_ms - first_done_ms if last_done_ms is not None and first_done_ms is not None else None
    lost = res["lost"] + (count - acked) * ready            # never accepted counts as lost too
    clean = lost == 0 and res["dup"] == 0 and res["seq_err"] == 0 and res["bad"] == 0 and pub["errors"] == 0
    reached = pub["achieved_rate"] >= 0.95 * rate and not pub["timed_out"]
    keeps_up = growth_ms is not None and growth_ms <= 0.1 * send_span_ms + 100
    return {"rate": rate, "count": count, "published": acked, "pub_errors": pub["errors"],
            "first_done_ms": first_done_ms, "last_done_ms": last_done_ms, "backlog_growth_ms": growth_ms,
            "achieved_rate": round(pub["achieved_rate"], 2), "rate_reached": reached,
            "pub_max_lag_ms": pub["max_lag_ms"], "pub_requests": pub["requests"],
            "expected": acked * ready, "delivered": res["msgs"], "delivered_per_s": delivered_per_s,
            "offered_per_s": rate * ready, "lost": lost, "dup": res["dup"], "seq_err": res["seq_err"],
            "closed": res["closed"], "bad": res["bad"], "wait_end": res["why"], "no_loss": clean,
            "keeps_up": keeps_up, "sustained": clean and reached and keeps_up,
            "p50_ms": res["p50_ms"], "p90_ms": res["p90_ms"], "p99_ms": res["p99_ms"], "p999_ms": res["p999_ms"],
            "max_ms": res["max_ms"], "lat_samples": res["lat_n"], "hist": res["hist"]}


def _max_rate(steps: list[dict], p99: float | None) -> float:
    ok = [s["rate"] for s in steps if s["sustained"] and (p99 is None or s["p99_ms"] < p99)]
    return max(ok) if ok else 0.0


def _fanout_report(args, clients, names, rates, runs) -> None:
    for run in runs:
        if "error" in run:
            continue
        run["max_rate_p99_100"] = _max_rate(run["steps"], 100)
        run["max_rate_p99_150"] = _max_rate(run["steps"], 150)
        run["max_rate_sustained"] = _max_rate(run["steps"], None)
        light = run["steps"][0] if run["steps"] else {}
        run["light_p50_ms"], run["light_p99_ms"] = light.get("p50_ms"), light.get("p99_ms")
        best = [s for s in run["steps"] if s["sustained"]]
        run["best_delivered_per_s"] = max((s["delivered_per_s"] or 0 for s in run["steps"]), default=0)
        run["sustained_delivered_per_s"] = max((s["delivered_per_s"] or 0 for s in best), default=0)
    keys = ["max_rate_p99_100", "max_rate_p99_150", "max_rate_sustained", "sustained_delivered_per_s",
            "best_delivered_per_s", "light_p50_ms", "light_p99_ms"]
    medians = {name: {k: _rank(runs, k)[name] for k in keys} for name in names}

    out = [f"\nfanout: {clients} clients on one channel, publish steps of {args.duration}s "
           f"(light point {LIGHT_RATE}/s for {args.light_duration}s), medians of {args.reps} runs"]
    curves = {}
    for name in names:
        rows, curve = [], []
        for rate in [LIGHT_RATE] + rates:
            steps = [st for r in runs if r["server"] == name for st in r.get("steps", ()) if st["rate"] == rate]
            if not steps:
                continue
            m = {k: median([st[k] for st in steps]) for k in
                 ("delivered_per_s", "p50_ms", "p99_ms", "max_ms", "achieved_rate", "loadgen_busiest_proc",
                  "backlog_growth_ms",
                  "server_cpu_s", "wall_s", "machine_busy")}
            curve.append({"rate": rate, **m})
            rows.append([fmt(rate), f"{len(steps)}/{args.reps}", fmt(m["achieved_rate"], 1),
                         fmt(m["delivered_per_s"]), fmt(m["p50_ms"], 1), fmt(m["p99_ms"], 1), fmt(m["max_ms"], 1),
                         fmt(m["backlog_growth_ms"], 0),
                         sum(st["lost"] for st in steps), sum(st["dup"] + st["seq_err"] for st in steps),
                         f"{sum(st['sustained'] for st in steps)}/{len(steps)}",
                         f"{m['server_cpu_s'] / m['wall_s']:.2f}" if m["wall_s"] else "-",
                         fmt(m["loadgen_busiest_proc"], 2), fmt(m["machine_busy"], 2)])
        curves[name] = curve
        procs = median([r.get("processes") for r in runs if r["server"] == name])
        out.append("\n" + table(["rate/s", "runs", "achieved/s", "delivered/s", "p50 ms", "p99 ms", "max ms",
                                 "growth ms", "lost", "dup+order", "sustained", "srv cores", "lg core", "machine"], rows,
                                f"{name} ({procs} process(es))"))
    out.append("\n" + _ratio_table("max publish rate (publications/s) and delivered msgs/s, medians:", medians, [
        ("max_rate_p99_100", "rate p99<100ms", 0, True), ("max_rate_p99_150", "rate p99<150ms", 0, True),
        ("max_rate_sustained", "sustained rate", 0, True), ("sustained_delivered_per_s", "delivered/s", 0, True)]))
    out.append("\n" + _ratio_table(f"light load ({LIGHT_RATE:g} publications/s), latency ms (lower is better):",
                                   medians, [("light_p50_ms", "p50", 1, True), ("light_p99_ms", "p99", 1, True)]))
    sat = [(r["server"], st["rate"]) for r in runs for st in r.get("steps", ()) if st["loadgen_saturated"]]
    busy = [(r["server"], st["rate"]) for r in runs for st in r.get("steps", ()) if st["machine_busy"] >= 0.95]
    out.append("\nsustained = every connection got every publication exactly once and in order, the publisher "
               "reached >= 95% of the rate, and the server kept up: growth = how much later the last "
               "publication was complete (received by every client) than the first, <= 10% of the step + 100 ms.")
    out.append("loadgen saturated a core (busiest loadgen process >= 90% of a core) at: "
               + (", ".join(f"{n}@{fmt(r)}/s" for n, r in sorted(set(sat))) or "never"))
    out.append("machine fully busy (>= 95% of both cores) at: "
               + (", ".join(f"{n}@{fmt(r)}/s" for n, r in sorted(set(busy))) or "never"))
    _finish("fanout", args, {"clients": clients, "rates": rates, "runs": runs, "medians": medians,
                             "curves": curves}, "\n".join(out),
            lambda path: report.plot_fanout(path, curves, clients))


def _repeat(args, kind: str, prefix: str, channel_of, run, report_) -> None:
    """One `run` per server per repetition (servers alternating), then `report_` of them all:
    the driver of the scenarios whose runs are one step each (memory, connect, channels)."""
    names = _servers(args)
    clients = _clients(args)
    conns = _conns(prefix, clients, channel_of)
    progress = Progress(args.reps * len(names), f"{kind} {clients} clients")
    runs = []
    for rep in range(args.reps):
        for name in _order(names, rep):
            label = f"rep {rep + 1}/{args.reps} {name}"
            _attempt(runs, name, rep, lambda: run(name, args, clients, conns, progress, label, rep, len(runs)))
            progress.update(len(runs), label, force=True)
    progress.finish()
    report_(args, clients, names, runs)


# --------------------------------------------------------------------------- memory

def memory(args) -> None:
    _repeat(args, "memory", "personal", lambda i: f"#u{i}", _memory_run, _memory_report)


def _memory_run(name, args, clients, conns, progress, label, rep, done) -> dict:
    with _server(name, args, personal=True) as s:
        time.sleep(1.0)
        rss0 = s.rss_kb()
        with _loadgen(s, conns, clients, args) as lg:
            ready = lg.wait_ready(lambda m: progress.update(done + m["ready"] / clients * .8,
                                                            f"{label} {m['ready']}/{clients}"))
            time.sleep(args.settle)
            rss1 = s.rss_kb()
            n = ready["ready"]
            if n < clients:
                note(f"{name}: only {n} of {clients} clients connected")
            return {"server": name, "rep": rep, "ready": n, "failed": clients - n,
                    "processes": len(s.pids()), "rss_before_kb": rss0, "rss_after_kb": rss1,
                    "bytes_per_conn": (rss1 - rss0) * 1024 / n if n else None,
                    "rss_total_mb": rss1 / 1024}


def _memory_report(args, clients, names, runs) -> None:
    medians = {name: {"kib_per_conn": (lambda v: v / 1024 if v else None)(_rank(runs, "bytes_per_conn")[name]),
                      "rss_total_mb": _rank(runs, "rss_total_mb")[name], "failed": _rank(runs, "failed")[name],
                      "processes": _rank(runs, "processes")[name]}
               for name in names}
    text = "\n" + _ratio_table(
        f"memory: {clients} idle authenticated clients (HS256 JWT each, personal channel #u<i>), "
        f"RSS of the server's process tree, medians of {args.reps} (lower is better):", medians,
        [("kib_per_conn", "KiB/conn", 2, True), ("rss_total_mb", "RSS MB", 1, True), ("failed", "failed", 0),
         ("processes", "procs", 0)])
    _finish("memory", args, {"clients": clients, "runs": runs, "medians": medians}, text,
            lambda path: report.plot_bars(path, {n: m["kib_per_conn"] for n, m in medians.items()},
                                          "KiB per connection", f"memory per idle connection ({clients} clients)"))


# --------------------------------------------------------------------------- connect

def connect(args) -> None:
    _repeat(args, "connect", "bench", lambda i: "bench", _connect_run, _connect_report)


def _connect_run(name, args, clients, conns, progress, label, rep, done) -> dict:
    with _server(name, args, personal=args.personal) as s:
        srv0, window = s.cpu_s(), _cpu_window(s)
        with _loadgen(s, conns, clients, args, inflight=args.inflight, connect_timeout=30) as lg:
            ready = lg.wait_ready(lambda m: progress.update(done + m["ready"] / clients,
                                                            f"{label} {m['ready']}/{clients}"))
            lg_cpu = lg.cpu_s()
            cpu = _cpu_since(window, s, srv0)
            if ready["ready"] < clients:
                note(f"{name}: {clients - ready['ready']} of {clients} clients got no connect push")
            return {"server": name, "rep": rep, "ready": ready["ready"],
                    "failed": clients - ready["ready"], "connect_s": ready["connect_s"],
                    "connects_per_s": ready["connects_per_s"] if ready["ready"] == clients else None,
                    "connects_per_s_raw": ready["connects_per_s"], "loadgen_cpu_s": lg_cpu,
                    "processes": len(s.pids()), **cpu}


def _connect_report(args, clients, names, runs) -> None:
    medians = {name: {k: _rank(runs, k)[name] for k in
                      ("connects_per_s", "connect_s", "failed", "server_cpu_s", "loadgen_cpu_s")}
               for name in names}
    # Only uniws has a personal channel; the peers do the same handshake and subscription without one.
    personal = ("uniws also subscribes each client to its personal channel #u<i> (user_subscribe_to_personal; "
                "the peers have no such thing)" if args.personal else "personal channel off")
    text = "\n" + _ratio_table(
        f"connect storm: {clients} clients, each with its own HS256 JWT; {personal}; "
        f"{args.inflight} handshakes in flight per loadgen process x {args.procs}; time from the first connect() "
        f"to the last connect push; medians of {args.reps} (connects/s: higher is better; '-' = some client got "
        f"no push):", medians,
        [("connects_per_s", "connects/s", 0, True), ("connect_s", "seconds", 2), ("failed", "failed", 0),
         ("server_cpu_s", "server cpu s", 2), ("loadgen_cpu_s", "loadgen cpu s", 2)])
    _finish("connect", args, {"clients": clients, "personal": args.personal, "runs": runs, "medians": medians},
            text,
            lambda path: report.plot_bars(path, {n: m["connects_per_s"] for n, m in medians.items()},
                                          "connects/s", f"connect storm ({clients} clients)"))


# --------------------------------------------------------------------------- channels

def channels(args) -> None:
    _repeat(args, "channels", "chan", lambda i: f"c{i}", _channels_run, _channels_report)


def _channels_run(name, args, clients, conns, progress, label, rep, done) -> dict:
    with _server(name, args) as s, _loadgen(s, conns, clients, args) as lg:
        ready = lg.wait_ready(lambda m: progress.update(done + m["ready"] / clients * .3,
                                                        f"{label} connect {m['ready']}/{clients}"))
        n = ready["ready"]
        lg.reset()
        srv0, window = s.cpu_s(), _cpu_window(s)
        count = clients * args.rounds
        pub = gen.publish(s.api_port, proto=s.api_proto, rate=0, count=count, channel="c", nchan=clients,
                          batch=args.batch, inflight=args.pub_inflight, pad=args.pad,
                          on_tick=lambda t: progress.update(done + .5, f"{label} publishing"))
        res = lg.wait(args.rounds, timeout_s=60, idle_s=args.idle,
                      progress=lambda m: progress.update(done + .3 + .7 * m["msgs"] / max(m["target"], 1),
                                                         f"{label} {fmt(m['msgs'])}/{fmt(m['target'])}"))
        cpu = _cpu_since(window, s, srv0)
        t0 = pub["t_start"]
        lost = res["lost"]            # an unaccepted publication shows up here as well
        clean = res["lost"] == 0 and res["dup"] == 0 and res["seq_err"] == 0 and pub["errors"] == 0 \
            and pub["acked"] == count
        if not clean:
            note(f"{name}: LOSS {res['lost']} lost, {res['dup']} duplicated, {res['seq_err']} out of "
                 f"order, {pub['errors']} API errors, {count - pub['acked']} not accepted")
        return {"server": name, "rep": rep, "ready": n, "published": pub["acked"],
                     "pub_errors": pub["errors"], "requests": pub["requests"],
                     "accepted_per_s": pub["acked"] / ((pub["t_done"] - t0) / 1e9),
                     "delivered_per_s": res["msgs"] / ((res["t_last_msg"] - t0) / 1e9)
                     if res["t_last_msg"] else None,
                     "delivered": res["msgs"], "lost": lost, "dup": res["dup"], "seq_err": res["seq_err"],
                     "no_loss": clean, "p50_ms": res["p50_ms"], "p99_ms": res["p99_ms"],
                     "max_ms": res["max_ms"], "loadgen_cpu_s": res["cpu_s"], "processes": len(s.pids()),
                     **cpu}


def _channels_report(args, clients, names, runs) -> None:
    medians = {name: {k: _rank(runs, k)[name] for k in
                      ("accepted_per_s", "delivered_per_s", "p99_ms", "lost")} for name in names}
    for name in names:
        medians[name]["loss_runs"] = sum(1 for r in runs if r["server"] == name and not r.get("no_loss", True))
    text = "\n" + _ratio_table(
        f"channels: {clients} clients each on its own channel c<i>, {args.rounds} rounds of one publication per "
        f"channel ({clients * args.rounds} publications) in API batches of {args.batch}, as fast as accepted; "
        f"medians of {args.reps} (higher is better; p99 = publish->receive):", medians,
        [("accepted_per_s", "accepted/s", 0, True), ("delivered_per_s", "delivered/s", 0, True), ("p99_ms", "p99 ms", 1, True),
         ("loss_runs", "runs with loss", 0)])
    _finish("channels", args, {"clients": clients, "runs": runs, "medians": medians}, text,
            lambda path: report.plot_bars(path, {n: m["delivered_per_s"] for n, m in medians.items()},
                                          "publications delivered/s", f"personal channels ({clients} clients)"))


# --------------------------------------------------------------------------- soak

def soak(args) -> None:
    """Not a comparison: one long run per server that holds the clients under steady publishing
    and reports RSS growth, lost, duplicated and reordered messages."""
    names = _servers(args)
    clients = _clients(args)
    conns = _conns(f"soak{args.channels}", clients, lambda i: f"s{i % args.channels}")
    seconds = args.minutes * 60
    progress = Progress(len(names), f"soak {clients} clients, {args.minutes:g} min")
    runs = []
    for name in names:
        _attempt(runs, name, 0, lambda: _soak_run(name, args, clients, conns, seconds, progress, len(runs)))
    progress.finish()
    rows = [[r["server"], fmt(r["rss_start_kb"] / 1024, 1), fmt(r["rss_end_kb"] / 1024, 1), fmt(r["rss_growth_kb"], 0),
             fmt(r["anon_start_kb"] / 1024, 1), fmt(r["anon_max_kb"] / 1024, 1), fmt(r["anon_end_kb"] / 1024, 1),
             fmt(r["anon_growth_kb"], 0), fmt(r["anon_growth_kb"] / clients * 1024, 1),
             fmt(r["published"]), fmt(r["delivered"]), r["lost"], r["dup"], r["seq_err"], r["pub_errors"]]
            for r in runs if "error" not in r]
    text = "\n" + table(["server", "RSS start MiB", "end MiB", "growth KiB", "private start MiB", "max MiB",
                         "end MiB", "growth KiB", "growth B/client", "published", "delivered", "lost", "dup",
                         "reordered", "API errors"], rows,
                        f"soak: {clients} clients on {args.channels} channels, {args.rate:g} publications/s for "
                        f"{args.minutes:g} min, sampled every {args.sample:g} s. RSS counts every resident page, "
                        f"including each worker's touched pages of the shared-memory bus rings (up to 2 x 32 MiB "
                        f"per worker, filled once); 'private' is RssAnon, the processes' own heap: a leak shows "
                        f"there")
    _finish("soak", args, {"clients": clients, "runs": runs}, text, lambda path: [])


def _soak_run(name, args, clients, conns, seconds, progress, done) -> dict:
    with _server(name, args, personal=False) as s, _loadgen(s, conns, clients, args) as lg:
        label = f"{name}"
        ready = lg.wait_ready(lambda m: progress.update(done, f"{label} connect {m['ready']}/{clients}"))
        lg.reset()
        start_kb, anon_kb = s.rss_kb(), s.rss_kb("RssAnon")
        samples = [(0.0, start_kb, anon_kb)]

        def tick(t: float) -> None:
            if t - samples[-1][0] >= args.sample:
                samples.append((round(t, 1), s.rss_kb(), s.rss_kb("RssAnon")))
            progress.update(done + min(t / seconds, 1) * .95, f"{label} {t / 60:.1f}/{args.minutes:g} min, "
                                                             f"RSS {samples[-1][1] / 1024:.1f} MiB, private "
                                                             f"{samples[-1][2] / 1024:.1f} MiB")

        count = max(args.channels, round(args.rate * seconds) // args.channels * args.channels)
        pub = gen.publish(s.api_port, proto=s.api_proto, rate=args.rate, count=count, channel="s",
                          nchan=args.channels, batch=args.batch, inflight=args.pub_inflight, pad=args.pad,
                          on_tick=tick, max_seconds=int(seconds * 1.5 + 60))
        per_conn = pub["acked"] // args.channels
        res = lg.wait(per_conn, timeout_s=60, idle_s=args.idle)
        end_kb, anon_end_kb = s.rss_kb(), s.rss_kb("RssAnon")
        samples.append((round(seconds, 1), end_kb, anon_end_kb))
        return {"server": name, "rep": 0, "ready": ready["ready"], "published": pub["acked"],
                "pub_errors": pub["errors"], "not_accepted": count - pub["acked"], "delivered": res["msgs"],
                "expected": per_conn * ready["ready"], "lost": res["lost"], "dup": res["dup"],
                "seq_err": res["seq_err"], "rss_start_kb": start_kb, "rss_end_kb": end_kb,
                "rss_max_kb": max(kb for _, kb, _ in samples), "rss_growth_kb": end_kb - start_kb,
                "anon_start_kb": anon_kb, "anon_end_kb": anon_end_kb, "anon_growth_kb": anon_end_kb - anon_kb,
                "anon_max_kb": max(kb for _, _, kb in samples),
                "rss_samples": samples, "p99_ms": res["p99_ms"], "max_ms": res["max_ms"]}


# --------------------------------------------------------------------------- selftest

def selftest(args) -> None:
    """The load generator's own ceiling: `loadgen blast` (C) floods it, no Python server involved."""
    clients = args.clients
    conns = _conns("bench", clients, lambda i: "bench")
    rows, runs = [], []
    procs_list = [int(p) for p in args.procs_list.split(",")]
    progress = Progress(args.reps * len(procs_list), f"selftest {clients} clients")
    for rep in range(args.reps):
        for procs in procs_list:
            port = servers.free_port()
            blaster = gen.blast(port, clients, args.messages, pad=args.pad)
            try:
                with gen.LoadGen(port, conns, clients, procs=procs) as lg:
                    lg.wait_ready()
                    res = lg.wait(args.messages, timeout_s=120, idle_s=5,
                                  progress=lambda m: progress.update(len(runs) + m["msgs"] / max(m["target"], 1),
                                                                     f"procs {procs}"))
                window = (res["t_last_msg"] - res["t_first_msg"]) / 1e9
                runs.append({"procs": procs, "rep": rep, "msgs": res["msgs"], "lost": res["lost"],
                             "seq_err": res["seq_err"], "msgs_per_s": res["msgs"] / window,
                             "loadgen_cpu_s": res["cpu_s"], "loadgen_cores": res["cpu_s"] / window,
                             "blaster_cpu_s": servers.proc_cpu_s(blaster.pid), "window_s": window})
            finally:
                servers.stop_pid(blaster.pid)
            progress.update(len(runs), f"procs {procs}", force=True)
    progress.finish()
    for procs in procs_list:
        mine = [r for r in runs if r["procs"] == procs]
        rows.append([procs, fmt(median([r["msgs_per_s"] for r in mine])),
                     fmt(median([r["loadgen_cores"] for r in mine]), 2),
                     fmt(median([r["blaster_cpu_s"] / r["window_s"] for r in mine]), 2),
                     sum(r["lost"] + r["seq_err"] for r in mine)])
    text = "\n" + table(["loadgen procs", "received msgs/s", "loadgen cores", "blaster cores", "lost+order"], rows,
                        f"selftest: {clients} connections x {args.messages} messages from the C blaster, "
                        f"medians of {args.reps}")
    _finish("selftest", args, {"runs": runs}, text, lambda path: [])


# --------------------------------------------------------------------------- command line

def add_common(p: argparse.ArgumentParser, clients: int) -> None:
    p.add_argument("--clients", type=int, default=clients)
    p.add_argument("--servers", default=",".join(servers.ALL),
                   help="comma-separated subset of: " + ", ".join(servers.ALL) + "; uniws@DIR runs the uniws "
                        "of another checkout DIR (extensions built in place) beside this one")
    p.add_argument("--reps", type=int, default=3, help="repetitions (servers alternate within each)")
    p.add_argument("--workers", type=int, default=None, help="pass --workers N to uniws (default: not passed)")
    p.add_argument("--procs", type=int, default=2, help="load generator processes")
    p.add_argument("--idle", type=float, default=3.0, help="seconds without progress that end a wait")
    p.add_argument("--pad", type=int, default=60, help="padding bytes in each publication (~100 B payload)")
    p.add_argument("--batch", type=int, default=1000, help="max publications per API request")
    p.add_argument("--pub-inflight", type=int, default=2, help="API requests in flight (pipelined)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="scenario", required=True)
    p = sub.add_parser("fanout", help="one channel, rising publish rates: delivered/s, latency, loss")
    add_common(p, 10000)
    p.add_argument("--rates", default="", help="publish rates, comma-separated (default: a ladder scaled to "
                                               "0.2M..20M offered msgs/s)")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per rate step")
    p.add_argument("--light-duration", type=float, default=3.0, help="seconds of the 5/s light-load point")
    p.set_defaults(func=fanout)
    p = sub.add_parser("crossworker", help="uniws with --workers 2: cross-worker publish-to-delivery latency "
                                           "at 10 000 publications/s (fanout with these defaults)")
    add_common(p, 100)
    p.add_argument("--rates", default="10000")
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--light-duration", type=float, default=3.0)
    p.set_defaults(func=fanout, servers="uniws", workers=2)
    p = sub.add_parser("memory", help="idle authenticated clients: server RSS per connection")
    add_common(p, 20000)
    p.add_argument("--settle", type=float, default=2.0, help="seconds between the last connect and the RSS read")
    p.set_defaults(func=memory)
    p = sub.add_parser("connect", help="connect storm with a JWT per client: connects/s")
    add_common(p, 10000)
    p.add_argument("--inflight", type=int, default=512, help="handshakes in flight per loadgen process")
    p.add_argument("--personal", action=argparse.BooleanOptionalAction, default=True,
                   help="uniws subscribes each client to its personal channel too (user_subscribe_to_personal; "
                        "the issue's workload, default on); --no-personal for the token's channel only")
    p.set_defaults(func=connect)
    p = sub.add_parser("channels", help="a channel per client, one publication to each: publications/s")
    add_common(p, 10000)
    p.add_argument("--rounds", type=int, default=5, help="publications per channel")
    p.set_defaults(func=channels)
    p = sub.add_parser("soak", help="hold the clients under steady publishing for a long time: RSS growth, "
                                     "lost/duplicated/reordered messages (uniws only unless --servers)")
    add_common(p, 10000)
    p.add_argument("--minutes", type=float, default=30.0, help="how long to publish")
    p.add_argument("--rate", type=float, default=100.0, help="publications/s, spread over the channels")
    p.add_argument("--channels", type=int, default=100, help="channels the clients are spread over")
    p.add_argument("--sample", type=float, default=30.0, help="seconds between RSS samples")
    p.set_defaults(func=soak, servers="uniws")
    p = sub.add_parser("selftest", help="the load generator's own ceiling against a C blaster")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--messages", type=int, default=20000, help="messages per connection")
    p.add_argument("--procs-list", default="1,2", help="loadgen process counts to try")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--pad", type=int, default=60)
    p.set_defaults(func=selftest)
    from .fleet import add_parser as add_fleet   # its own module: it imports this one's helpers
    add_fleet(sub)
    return parser
