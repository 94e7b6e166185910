"""How many searches one collection serves, embedded and over gRPC, and what each costs the server.

    python -m benchmarks.capacity [--quick] [--only embedded] [--threads N] [--compare PATH] [--rounds R]
                                  [--seconds S]

GloVe x WordNet (curator_loadtest/data.py), k=10, default ef. Every caller runs a closed loop (its next
search when the last returns) over its own stream of the data's queries, query i as its tenant
(data.searcher, as benchmarks/remote.py), for `--seconds` a window:
- embedded: 1..N threads searching one collection in this process. One thread's mean time per
  search is the engine time.
- served: `curator serve` on loopback (curator_loadtest/server.py), loaded through the SDK before
  timing, driven by 1, 2 and 4 client processes of one thread and by 4 and 16 threads in one
  client process (the blocking SDK, in processes of their own: benchmarks/workers.py):
  searches/s, p50/p99, and the CPU per search of the server (its process and any children) and
  of the clients, each read from /proc before and after the window (measure.cpu_seconds), so that
  the load generator sharing the cores does not blur the server's figure.
- the floor: benchmarks/floor.py's gRPC server, which answers each SearchStream message with a
  prepared reply, driven the same way with 1 and 16 threads: its CPU per message. The issue's
  bound: server CPU per search <= the floor's per message (1 thread) + 1.2 x the engine time.
  To tell where a served search's CPU goes, each served window also reads the server's own time
  in its search handlers (its latency histogram: the engine's search and the handler's Python)
  and reports the CPU beyond it (gRPC's part, to set against the floor): with one client thread
  the server idles between searches and its search runs with cold caches, several times the
  embedded loop's time.
- --compare PATH: the served windows again with server and clients run from the checkout at PATH
  (benchmarks/checkout.py), alternating with this checkout window by window; ratios this / that.
- --only embedded: the embedded windows alone (no server, no floor): a minute where the whole run
  takes many; written to capacity_embedded.* so that the full run's results stay.
Each round runs every window once, in turns, so that the machine's mood is shared; each figure is
the median round's (by searches/s). Writes benchmarks/results/capacity.md and capacity.json
(capacity_quick.* with --quick: a smoke run, not a measurement).
"""

import argparse
import contextlib
import os
import platform
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

import curator
from curator import handoff
from curator_loadtest import data as D
from curator_loadtest.server import ManagedServer
from curator_loadtest.server_metrics import handled_seconds

from . import cores, floor, workers
from .checkout import Checkout, title
from .measure import (blas_threads, closed_loop, cpu_seconds, free_port, latency_summary, markdown_table,
                      write_results)

RESULTS = Path(__file__).parent / "results"
ROLE = "benchmarks.capacity:search_client"
SERVED = [(1, 1), (2, 1), (4, 1), (1, 4), (1, 16)]  # (client processes, threads in each)
FLOOR = [(1, 1), (1, 16)]
QUICK_DATA = {"n_queries": 200, "min_size": 100, "max_size": 120}  # ~5k vectors, 55 tenants
WARM = 3  # searches per thread before its window (opens its stream)


def search_client(data: dict):
    """Role of a client process: loads a server (op "load") or runs a window of searches."""
    dataset = D.glove_wordnet(**data)
    n = len(dataset.queries)

    def handle(command: dict) -> dict:
        db = curator.connect(command["address"])
        try:
            if command["op"] == "load":
                started = time.monotonic()
                D.create_loaded(db, dataset)
                return {"seconds": time.monotonic() - started}
            search = D.searcher(db.collection("glove"), dataset)
            seconds, failures = closed_loop(search, n, command["threads"], command["start"], command["end"],
                                            first=command["part"] * n // command["parts"], warm=WARM)
            return {"latency_us": np.rint(seconds * 1e6).astype(int).tolist(), "failures": failures}
        finally:
            db.close()
    return handle


def summary(latencies: np.ndarray, seconds: float, failures: Counter) -> dict:
    out = {"searches_per_s": latencies.size / seconds, "failures": dict(failures)}
    if latencies.size:
        out.update({k: v for k, v in latency_summary(latencies).items() if k != "qps"},
                   mean_us=float(latencies.mean() * 1e6))
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all the machine's cores have been busy so far (/proc/stat: user to softirq)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def embedded_window(search, n: int, threads: int, seconds: float) -> dict:
    """Also: the searches that waited for another thread to let go of the GIL (curator/handoff.py)
    and the CPU other processes used meanwhile (other engineers' work shares the cores)."""
    start = time.monotonic() + 0.1
    handoff.reset_counts()
    busy, own = machine_busy_seconds(), cpu_seconds(os.getpid())
    with blas_threads(1):
        latencies, failures = closed_loop(search, n, threads, start, start + seconds, warm=WARM)
    other = (machine_busy_seconds() - busy) - (cpu_seconds(os.getpid()) - own)
    waits = handoff.counts()
    return {**summary(latencies, seconds, failures), "waited": waits["waits"] / max(latencies.size, 1),
            "mean_wait_us": waits["mean_wait_us"], "other_cpu_s": max(other, 0.0),
            "round_trip_ns": cores.round_trip_ns() if threads > 1 else None}


def served_window(clients: list[workers.Worker], server_pid: int, address: str, threads: int,
                  seconds: float, settle: float, metrics_url: str | None = None) -> dict:
    """One window of len(clients) processes x `threads` threads; CPU of server and clients from
    /proc; with `metrics_url` (Curator's servers), the server's own time per search in its handlers
    (engine and handler Python, from its latency histogram), scraped outside the CPU readings."""
    start = time.monotonic() + settle
    end = start + seconds
    for part, client in enumerate(clients):
        client.send(op="search", address=address, threads=threads, start=start, end=end,
                    part=part, parts=len(clients))
    workers.sleep_until(start)
    handled0 = handled_seconds(metrics_url) if metrics_url else None
    server0, clients0 = cpu_seconds(server_pid), sum(cpu_seconds(c.pid) for c in clients)
    workers.sleep_until(end)
    server1, clients1 = cpu_seconds(server_pid), sum(cpu_seconds(c.pid) for c in clients)
    handled1 = handled_seconds(metrics_url) if metrics_url else None
    answers = [c.receive() for c in clients]
    latencies = np.concatenate([np.array(a["latency_us"], dtype=float) for a in answers]) / 1e6
    out = summary(latencies, seconds, sum((Counter(a["failures"]) for a in answers), Counter()))
    per = 1e6 / max(latencies.size, 1)
    out.update(server_cpu_us=(server1 - server0) * per, server_cores=(server1 - server0) / seconds,
               client_cpu_us=(clients1 - clients0) * per, client_cores=(clients1 - clients0) / seconds)
    if handled0 is not None and handled1[1] > handled0[1]:
        out["handler_us"] = 1e6 * (handled1[0] - handled0[0]) / (handled1[1] - handled0[1])
        out["beyond_handler_us"] = out["server_cpu_us"] - out["handler_us"]
    return out


def wait_for_floor(address: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with grpc.insecure_channel(address) as channel:
                grpc.channel_ready_future(channel).result(timeout=1)
            return
        except grpc.FutureTimeoutError:
            if time.monotonic() > deadline:
                raise RuntimeError("the floor server did not start") from None


def median_round(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["searches_per_s"])[len(runs) // 2]


def label(processes: int, threads: int) -> str:
    return f"{processes} process{'es' if processes > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"


def measure(args, data_params: dict, checkouts: list[Checkout]) -> dict:
    data = D.glove_wordnet(**data_params)
    n = len(data.queries)
    described = (f"GloVe x WordNet ({data.vectors.shape[0]:,} vectors, {data.n_tenants} tenants, "
                 f"{n:,} queries)")
    settle = 1.0 if args.quick else 2.0
    runs: dict[str, list[dict]] = {}
    served = args.only != "embedded"
    with contextlib.ExitStack() as stack:
        local = curator.open(":memory:")
        search = D.searcher(D.create_loaded(local, data), data)
        search(0)  # compiles the kernels where numba's cache is cold, before any window's clock
        if not served:
            for r in range(args.rounds):
                for threads in range(1, args.threads + 1):
                    runs.setdefault(f"embedded/{threads}", []).append(
                        embedded_window(search, n, threads, args.seconds))
                print(f"round {r + 1}/{args.rounds} done", flush=True)
            return {"data": described, "figures": {key: median_round(v) for key, v in runs.items()}, "rounds": runs,
                    "load_seconds": {}}
        floor_address = f"127.0.0.1:{free_port()}"
        floor_server = floor.start("grpc", int(floor_address.split(":")[1]))
        stack.callback(lambda: (floor_server.terminate(), floor_server.wait(60)))
        servers, clients, load_s = {}, {}, {}
        for c in checkouts:
            servers[c.label] = stack.enter_context(ManagedServer(checkout=c))
            clients[c.label] = workers.start(c, ROLE, count=max(p for p, _ in SERVED), data=data_params)
            stack.callback(workers.close_all, clients[c.label])
            load_s[c.label] = clients[c.label][0].ask(op="load", address=servers[c.label].address)["seconds"]
        wait_for_floor(floor_address)
        for r in range(args.rounds):
            for threads in range(1, args.threads + 1):
                runs.setdefault(f"embedded/{threads}", []).append(embedded_window(search, n, threads, args.seconds))
            for p, t in FLOOR:
                runs.setdefault(f"floor/{label(p, t)}", []).append(served_window(
                    clients[checkouts[0].label][:p], floor_server.pid, floor_address, t, args.seconds, settle))
            for p, t in SERVED:
                for c in checkouts:  # alternating old and new, window by window
                    server = servers[c.label]
                    runs.setdefault(f"{c.label}/{label(p, t)}", []).append(served_window(
                        clients[c.label][:p], server.pid, server.address, t, args.seconds, settle,
                        server.metrics_url))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    return {"data": described, "figures": {key: median_round(v) for key, v in runs.items()}, "rounds": runs,
            "load_seconds": load_s}


def ratio_of(new: dict, old: dict, key: str) -> float | None:
    return new[key] / old[key] if new.get(key) and old.get(key) else None


def checks(figures: dict, checkouts: list[Checkout], threads: int) -> list[dict]:
    """The issue's targets that this run can judge."""
    new = checkouts[0].label
    one = figures["embedded/1"]
    out = []
    if threads >= 2:
        x = figures["embedded/2"]["searches_per_s"] / one["searches_per_s"]
        out.append({"check": "embedded, 2 threads / 1 thread", "value": x, "target": ">= 1.8", "ok": x >= 1.8})
    if f"floor/{label(1, 1)}" not in figures:  # embedded windows only
        return out
    engine_us = one["mean_us"]
    floor_us = figures[f"floor/{label(1, 1)}"]["server_cpu_us"]
    bound = floor_us + 1.2 * engine_us
    for p, t in SERVED:
        us = figures[f"{new}/{label(p, t)}"]["server_cpu_us"]
        out.append({"check": f"server CPU per search, {label(p, t)} (us)", "value": us,
                    "target": f"<= {bound:.0f} (floor {floor_us:.0f} + 1.2 x engine {engine_us:.0f})", "ok": us <= bound})
    single = figures[f"{new}/{label(1, 1)}"]
    if "handler_us" in single:  # not a target: where the one-thread figure goes
        out.append({"check": f"(not a target) {label(1, 1)}: server CPU beyond its handlers (us)",
                    "value": single["beyond_handler_us"], "target": f"the floor's {floor_us:.0f} a message",
                    "ok": single["beyond_handler_us"] <= floor_us})
        hot = 1.2 * engine_us
        out.append({"check": f"(not a target) {label(1, 1)}: time in its handlers (us)", "value": single["handler_us"],
                    "target": f"1.2 x engine {engine_us:.0f} = {hot:.0f}", "ok": single["handler_us"] <= hot})
    if len(checkouts) > 1:
        old = checkouts[1].label
        for (p, t), factor in (((1, 16), 3.0), ((4, 1), 1.0)):
            x = ratio_of(figures[f"{new}/{label(p, t)}"], figures[f"{old}/{label(p, t)}"], "searches_per_s")
            out.append({"check": f"searches/s {new} / {old}, {label(p, t)}", "value": x, "target": f">= {factor:g}",
                        "ok": x is not None and x >= factor})
    return out


def rounds_of_two(results: dict) -> str:
    """Each round's 2 threads / 1 thread, with the cores' round trip measured after it."""
    rounds = results["rounds"]
    def trip(two: dict) -> str:
        return "" if two.get("round_trip_ns") is None else f" ({two['round_trip_ns']:.0f} ns)"

    return ", ".join(f"{two['searches_per_s'] / one['searches_per_s']:.2f}x{trip(two)}"
                     for one, two in zip(rounds["embedded/1"], rounds.get("embedded/2", [])))


SERVED_COLUMNS = [("what", "clients", ""), ("searches_per_s", "searches/s", ",.0f"), ("p50_ms", "p50 ms", ".3f"),
                  ("p99_ms", "p99 ms", ".3f"), ("server_cpu_us", "server CPU us/search", ".0f"),
                  ("server_cores", "server cores", ".2f"), ("client_cpu_us", "client CPU us/search", ".0f"),
                  ("handler_us", "in its handlers us/search", ".0f"),
                  ("beyond_handler_us", "CPU beyond them us", ".0f"),
                  ("errors", "errors", "")]


def report(results: dict, checkouts: list[Checkout], args) -> str:
    figures = results["figures"]

    def rows(prefix: str, configs) -> list[dict]:
        return [{"what": label(p, t), **figures[f"{prefix}/{label(p, t)}"],
                 "errors": sum(figures[f"{prefix}/{label(p, t)}"]["failures"].values())} for p, t in configs]

    one = figures["embedded/1"]["searches_per_s"]
    embedded = [{"what": f"{t} thread{'s' if t > 1 else ''}", **figures[f"embedded/{t}"],
                 "x": figures[f"embedded/{t}"]["searches_per_s"] / one} for t in range(1, args.threads + 1)]
    lines = ["# Capacity: searches side by side", "",
             f"{results['data']}, k=10, default ef, closed loop, {args.seconds:g} s windows, median of "
             f"{args.rounds} round{'s' if args.rounds > 1 else ''}; {results['machine']['cpus']} cores, load average "
             f"{results['machine']['loadavg_before']:.2f} before, {results['machine']['loadavg_after']:.2f} after."
             + (" **Quick run: smoke figures, not measurements.**" if args.quick else ""), "",
             "## Embedded, one collection", "",
             markdown_table(embedded, [("what", "threads", ""), ("searches_per_s", "searches/s", ",.0f"),
                                       ("x", "x 1 thread", ".2f"), ("p50_ms", "p50 ms", ".3f"),
                                       ("p99_ms", "p99 ms", ".3f"), ("mean_us", "mean us", ".1f"),
                                       ("waited", "waited for the GIL's holder", ".2f"),
                                       ("mean_wait_us", "mean wait us", ".1f"),
                                       ("other_cpu_s", "other processes' CPU s", ".2f"),
                                       ("round_trip_ns", "cores' round trip ns", ".0f")]), "",
             f"Rounds, 2 threads / 1 thread (the cores' round trip after the window): {rounds_of_two(results)}.", "",
             f"Engine time per search (1 thread, mean): {figures['embedded/1']['mean_us']:.1f} us. \"Waited\": "
             "the share of searches whose compiled call, before returning, waited for another searching "
             "thread to let go of the GIL (curator/handoff.py), and their mean wait. \"Round trip\": a cache "
             "line's between the first two cores (benchmarks/cores.py): the host places this VM's vCPUs near "
             "or far apart and moves them, and two searching threads gain much less when they are far.", ""]
    for c in checkouts if args.only != "embedded" else []:
        lines += [f"## Served: {title(results['checkouts'][c.label])}", "",
                  markdown_table(rows(c.label, SERVED), SERVED_COLUMNS), ""]
    lines += [] if args.only == "embedded" else ["## The floor: benchmarks/floor.py's no-op SearchStream server, same clients", "",
              markdown_table(rows("floor", FLOOR), SERVED_COLUMNS).replace("searches", "messages").replace(
                  "search", "message"), ""]
    if len(checkouts) > 1 and args.only != "embedded":
        new, old = (c.label for c in checkouts)
        ratio = []
        for p, t in SERVED:
            a, b = figures[f"{new}/{label(p, t)}"], figures[f"{old}/{label(p, t)}"]
            ratio.append({"what": label(p, t), **{f"{k}_x": ratio_of(a, b, k)
                                                  for k in ("searches_per_s", "p50_ms", "p99_ms", "server_cpu_us")}})
        lines += [f"## {new} / {old}", "", markdown_table(ratio, [
            ("what", "clients", ""), ("searches_per_s_x", "searches/s", ".2f"), ("p50_ms_x", "p50", ".2f"),
            ("p99_ms_x", "p99", ".2f"), ("server_cpu_us_x", "server CPU per search", ".2f")]), ""]
    lines += ["## The issue's targets", "", markdown_table(
        [{**c, "ok": "yes" if c["ok"] else "**no**"} for c in results["checks"]],
        [("check", "check", ""), ("value", "value", ".2f"), ("target", "target", ""), ("ok", "met", "")])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~5k vectors, 1 s windows, 1 round: a smoke run")
    parser.add_argument("--threads", type=int, default=2, help="embedded: 1..N threads (default 2)")
    parser.add_argument("--only", choices=["embedded"], help="run these windows alone")
    parser.add_argument("--compare", metavar="PATH", help="another checkout, served the same way in turns")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (quick: 1)")
    parser.add_argument("--seconds", type=float, default=None, help="a window (default 10; quick: 1)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (1.0 if args.quick else 10.0)
    data_params = QUICK_DATA if args.quick else {}
    checkouts = [Checkout.this()] + ([Checkout.other(args.compare)] if args.compare else [])
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "grpc": grpc.__version__,
               "loadavg_before": os.getloadavg()[0]}
    started = time.monotonic()
    results = measure(args, data_params, checkouts)
    machine["loadavg_after"] = os.getloadavg()[0]
    results.update(machine=machine, quick=args.quick,
                   seconds=args.seconds, run_seconds=time.monotonic() - started,
                   checkouts={c.label: c.describe() for c in checkouts})
    results["checks"] = checks(results["figures"], checkouts, args.threads)
    name = "capacity" + ("_embedded" if args.only == "embedded" else "") + ("_quick" if args.quick else "")
    write_results(RESULTS, name, results, report(results, checkouts, args))


if __name__ == "__main__":
    main()
