"""Several serving processes: the server alone against the server with read replicas, same run.

    python -m benchmarks.replicas [--quick] [--readers N] [--rounds R] [--seconds S]

GloVe x WordNet (curator_loadtest/data.py), k=10, default ef, the blocking SDK. Two servers
(`curator serve`, loopback, each its own data directory): one alone and one with `--readers N`
(default 1: one serving process per core here). Both are loaded the same way through the SDK (so
the second's load is replicated as it goes), then driven in turns, window by window, by the
client processes of benchmarks/capacity.py: 1, 2 and 4 processes of one thread, 1 process of 4
and of 16 threads. Per window: searches/s, p50/p99, and the CPU per search of all the serving
processes together (the server and its readers, from /proc). Then the price on writes: a
one-vector upsert (sync durability) one after another, p50/p99, on each server; and the time a
reader takes from being killed to its successor being ready.

Writes benchmarks/results/replicas.md and replicas.json (replicas_quick.* with --quick: a smoke
run, not a measurement).
"""

import argparse
import contextlib
import os
import platform
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import psutil

import curator
from curator_loadtest import data as D
from curator_loadtest.server import ManagedServer

from . import workers
from .capacity import QUICK_DATA, ROLE, SERVED, SERVED_COLUMNS, label, median_round, served_window
from .checkout import Checkout
from .measure import latency_summary, markdown_table, write_results

RESULTS = Path(__file__).parent / "results"
READY_SECONDS = 300.0
UPSERTS = 300


def wait_for_readers(address: str, n: int) -> float:
    """Seconds until the server names n ready readers."""
    started = time.monotonic()
    db = curator.connect(address)
    try:
        while True:
            db.collection("glove")  # its description names the ready readers
            if len(db.reader_ports()) >= n:
                break
            if time.monotonic() - started > READY_SECONDS:
                raise RuntimeError(f"{n} readers not ready within {READY_SECONDS} s")
            time.sleep(0.05)
    finally:
        db.close()
    return time.monotonic() - started


def reader_pids(server_pid: int) -> list[int]:
    """The server's live readers (a killed one is a zombie until the server reaps it)."""
    pids = []
    for child in psutil.Process(server_pid).children():
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE and "--replica-of" in child.cmdline():
                pids.append(child.pid)
    return pids


def upsert_latency(address: str, dim: int) -> dict:
    """One-vector upserts, one after another, by a tenant of its own."""
    db = curator.connect(address)
    try:
        col = db.collection("glove")
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((UPSERTS, dim)).astype(np.float32)
        ids = np.arange(UPSERTS, dtype=np.int64) + (1 << 40)
        seconds = []
        for i in range(UPSERTS):
            begun = time.perf_counter()
            col.upsert(ids[i % 50:i % 50 + 1], vectors[i:i + 1], tenant="benchmark-writer")
            seconds.append(time.perf_counter() - begun)
        return {k: v for k, v in latency_summary(np.array(seconds)).items() if k != "qps"}
    finally:
        db.close()


def failover(server: ManagedServer, n: int) -> dict:
    """SIGKILL one reader; seconds until the server names n ready readers again."""
    victim = reader_pids(server.pid)[0]
    before = set(reader_pids(server.pid))
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    db = curator.connect(server.address)
    try:
        while True:
            db.collection("glove")
            ports = db.reader_ports()
            fresh = set(reader_pids(server.pid)) - before
            if len(ports) >= n and fresh:
                return {"seconds_to_ready": time.monotonic() - started}
            if time.monotonic() - started > READY_SECONDS:
                raise RuntimeError("no successor ready")
            time.sleep(0.02)
    finally:
        db.close()


def measure(args, data_params: dict) -> dict:
    data = D.glove_wordnet(**data_params)
    described = (f"GloVe x WordNet ({data.vectors.shape[0]:,} vectors, {data.n_tenants} tenants, "
                 f"{len(data.queries):,} queries)")
    settle = 1.0 if args.quick else 2.0
    this = Checkout.this()
    replicated = f"with {args.readers} reader{'s' if args.readers > 1 else ''}"
    setups = {"alone": (), replicated: ("--readers", str(args.readers))}
    runs: dict[str, list[dict]] = {}
    out: dict = {"data": described, "load_seconds": {}, "ready_seconds": {}, "upsert": {}}
    with contextlib.ExitStack() as stack:
        servers, clients = {}, {}
        for name, extra in setups.items():
            servers[name] = stack.enter_context(ManagedServer(extra_args=extra))
            clients[name] = workers.start(this, ROLE, count=max(p for p, _ in SERVED), data=data_params)
            stack.callback(workers.close_all, clients[name])
            out["load_seconds"][name] = clients[name][0].ask(op="load", address=servers[name].address)["seconds"]
            if extra:
                out["ready_seconds"][name] = wait_for_readers(servers[name].address, args.readers)
        for r in range(args.rounds):
            for p, t in SERVED:
                for name, server in servers.items():  # alternating, window by window
                    runs.setdefault(f"{name}/{label(p, t)}", []).append(served_window(
                        clients[name][:p], server.pid, server.address, t, args.seconds, settle))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        for name, server in servers.items():
            out["upsert"][name] = upsert_latency(server.address, data.vectors.shape[1])
        out["failover"] = failover(servers[replicated], args.readers)
    out.update(figures={key: median_round(v) for key, v in runs.items()}, rounds=runs, setups=list(setups))
    return out


def report(results: dict, args) -> str:
    figures, (alone, replicated) = results["figures"], results["setups"]

    def rows(prefix: str) -> list[dict]:
        return [{"what": label(p, t), **figures[f"{prefix}/{label(p, t)}"],
                 "errors": sum(figures[f"{prefix}/{label(p, t)}"]["failures"].values())} for p, t in SERVED]

    ratio = [{"what": label(p, t), **{f"{k}_x": figures[f"{replicated}/{label(p, t)}"][k] / figures[f"{alone}/{label(p, t)}"][k]
                                      for k in ("searches_per_s", "p50_ms", "p99_ms", "server_cpu_us")}}
             for p, t in SERVED]
    upsert = [{"what": name, **results["upsert"][name]} for name in results["setups"]]
    lines = ["# Read replicas: several serving processes", "",
             f"{results['data']}, k=10, default ef, closed loop, {args.seconds:g} s windows, median of {args.rounds} "
             f"round{'s' if args.rounds > 1 else ''}; {results['machine']['cpus']} cores (the clients share them), "
             f"load average {results['machine']['loadavg_before']:.2f} before, {results['machine']['loadavg_after']:.2f} after."
             + (" **Quick run: smoke figures, not measurements.**" if args.quick else ""), "",
             "Server CPU is all serving processes together (the server and its readers).", ""]
    for name in results["setups"]:
        lines += [f"## Served: {name}", "", markdown_table(rows(name), SERVED_COLUMNS), ""]
    lines += [f"## {replicated} / alone", "", markdown_table(ratio, [
        ("what", "clients", ""), ("searches_per_s_x", "searches/s", ".2f"), ("p50_ms_x", "p50", ".2f"),
        ("p99_ms_x", "p99", ".2f"), ("server_cpu_us_x", "server CPU per search", ".2f")]), "",
        f"## Writes: a one-vector upsert, {UPSERTS} one after another (sync durability)", "",
        markdown_table(upsert, [("what", "server", ""), ("p50_ms", "p50 ms", ".3f"), ("p99_ms", "p99 ms", ".3f")]), "",
        "## Starting and replacing readers", "",
        f"- load through the SDK: alone {results['load_seconds'][alone]:.1f} s, with readers "
        f"{results['load_seconds'][replicated]:.1f} s (every write applied by the readers before it returns);",
        f"- readers ready after the load: {results['ready_seconds'][replicated]:.2f} s;",
        f"- a reader SIGKILLed: its successor ready (snapshot, start, catch-up) after "
        f"{results['failover']['seconds_to_ready']:.2f} s; searches meanwhile go to the server."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replicas", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~5k vectors, 1 s windows, 1 round: a smoke run")
    parser.add_argument("--readers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (quick: 1)")
    parser.add_argument("--seconds", type=float, default=None, help="a window (default 10; quick: 1)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (1.0 if args.quick else 10.0)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "grpc": grpc.__version__,
               "loadavg_before": os.getloadavg()[0]}
    started = time.monotonic()
    results = measure(args, QUICK_DATA if args.quick else {})
    machine["loadavg_after"] = os.getloadavg()[0]
    results.update(machine=machine, quick=args.quick, seconds=args.seconds, run_seconds=time.monotonic() - started,
                   checkout=Checkout.this().describe())
    write_results(RESULTS, "replicas" + ("_quick" if args.quick else ""), results, report(results, args))


if __name__ == "__main__":
    main()
