"""The cluster front against a single server, same run, on a local Ray cluster of three nodes.

    python -m benchmarks.cluster [--quick] [--rounds R] [--seconds S] [--scaling]

GloVe x WordNet (curator_loadtest/data.py), k=10, default ef, the blocking SDK. Two servers,
each `curator serve` on loopback: one alone on its data directory, and one a cluster front
(`--ray`) over two shards of two copies on a local Ray cluster of three nodes (processes on
this machine: `ray.cluster_utils.Cluster`). Both are loaded the same way through the SDK, then
driven in turns, window by window, by the client processes of benchmarks/capacity.py: one
process of one thread (latency), one of four threads and four of one (throughput). Per window:
searches/s, p50/p99, and the CPU per search of the serving processes (the single server; the
front, and the shards' copies apart). Then one-vector upserts one after another on each; and a
node's death: its copies SIGKILLed and the node removed while a client searches for every
tenant, the time until every tenant has answered again.

Writes benchmarks/results/cluster.md and cluster.json (cluster_quick.* with --quick).
"""

import argparse
import contextlib
import os
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import ray
from ray.cluster_utils import Cluster

import curator
from curator_loadtest import data as D
from curator_loadtest.server import ManagedServer

from . import workers
from .capacity import QUICK_DATA, ROLE, label, median_round, served_window
from .checkout import Checkout
from .measure import markdown_table, write_results
from .replicas import upsert_latency

RESULTS = Path(__file__).parent / "results"
WINDOWS = [(1, 1), (1, 4), (4, 1)]
NAME = "benchmark"
NODE = {"num_cpus": 1, "object_store_memory": 200 << 20}  # a local Ray node (snapshots pass through its store)


def copies() -> list[dict]:
    """The copies' actors of the benchmark's cluster: name, node, pid."""
    out = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"].startswith(NAME + "/"):
            actor = ray.get_actor(entry["name"], entry["namespace"])
            with contextlib.suppress(Exception):
                out.append({"name": entry["name"], "node": ray.get(actor.node.remote(), timeout=10),
                            "pid": ray.get(actor.pid.remote(), timeout=10)})
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def failover(nodes: Cluster, address: str, tenants: list[str], dim: int) -> dict:
    """SIGKILL the copies on the worker node holding the most, remove the node; seconds until
    every tenant has answered a search again, and searches that failed meanwhile."""
    held = copies()
    counts = {}
    for c in held:
        counts[c["node"]] = counts.get(c["node"], 0) + 1
    victim = max((n for n in nodes.worker_nodes if n.node_id in counts), key=lambda n: counts[n.node_id])
    db = curator.connect(address)
    col = db.collection("glove")
    query = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    for tenant in tenants:
        col.search(query, k=10, tenant=tenant)
    for c in held:
        if c["node"] == victim.node_id:
            os.kill(c["pid"], signal.SIGKILL)
    nodes.remove_node(victim, allow_graceful=False)
    killed, waiting, failures = time.monotonic(), set(tenants), 0
    while waiting:
        for tenant in list(waiting):
            try:
                col.search(query, k=10, tenant=tenant)
                waiting.discard(tenant)
            except Exception:  # noqa: BLE001 - counted
                failures += 1
        if time.monotonic() - killed > 120:
            break
    answered = time.monotonic() - killed
    db.close()
    return {"copies_killed": counts[victim.node_id], "seconds_to_all_tenants": answered,
            "tenants": len(tenants), "failed_searches": failures, "unanswered": len(waiting)}


def measure(args, data_params: dict) -> dict:
    data = D.glove_wordnet(**data_params)
    described = (f"GloVe x WordNet ({data.vectors.shape[0]:,} vectors, {data.n_tenants} tenants, "
                 f"{len(data.queries):,} queries)")
    nodes = Cluster(initialize_head=True, head_node_args=NODE)
    for _ in range(2):
        nodes.add_node(**NODE)
    ray.init(address=nodes.address, log_to_driver=False)
    nodes.wait_for_nodes()
    this = Checkout.this()
    setups = {"single server": (), "cluster front": ("--ray", nodes.address, "--cluster-name", NAME)}
    runs: dict[str, list[dict]] = {}
    out: dict = {"data": described, "load_seconds": {}, "upsert": {}, "shard_cpu_us": {}}
    try:
        with contextlib.ExitStack() as stack:
            servers, clients = {}, {}
            for name, extra in setups.items():
                servers[name] = stack.enter_context(ManagedServer(extra_args=extra))
                clients[name] = workers.start(this, ROLE, count=max(p for p, _ in WINDOWS), data=data_params)
                stack.callback(workers.close_all, clients[name])
                out["load_seconds"][name] = clients[name][0].ask(op="load", address=servers[name].address)["seconds"]
            shard_pids = [c["pid"] for c in copies()]
            for r in range(args.rounds):
                for p, t in WINDOWS:
                    for name, server in servers.items():  # alternating, window by window
                        before = cpu_seconds(shard_pids)
                        window = served_window(clients[name][:p], server.pid, server.address, t, args.seconds, 1.0)
                        if name == "cluster front":
                            window["shard_cpu_us"] = (cpu_seconds(shard_pids) - before) * 1e6 / max(
                                window["searches_per_s"] * args.seconds, 1)
                        runs.setdefault(f"{name}/{label(p, t)}", []).append(window)
                print(f"round {r + 1}/{args.rounds} done", flush=True)
            for name, server in servers.items():
                out["upsert"][name] = upsert_latency(server.address, data.vectors.shape[1])
            db = curator.connect(servers["single server"].address)
            tenants = db.collection("glove").tenants()[:60]
            db.close()
            out["failover"] = failover(nodes, servers["cluster front"].address, tenants, data.vectors.shape[1])
    finally:
        ray.shutdown()
        nodes.shutdown()
    out.update(figures={key: median_round(v) for key, v in runs.items()}, rounds=runs, setups=list(setups))
    return out


def scaling(args, data_params: dict) -> dict:
    """Searches/s through a front over 1, 2 and 3 local nodes (two shards; two copies where two
    nodes can hold them), one process of four threads, each on a new Ray cluster."""
    out = {}
    this = Checkout.this()
    for n in (1, 2, 3):
        nodes = Cluster(initialize_head=True, head_node_args=NODE)
        for _ in range(n - 1):
            nodes.add_node(**NODE)
        nodes.wait_for_nodes()
        try:
            extra = ("--ray", nodes.address, "--cluster-name", f"scale{n}", "--copies", str(min(2, n)))
            with ManagedServer(extra_args=extra) as front:
                clients = workers.start(this, ROLE, count=1, data=data_params)
                try:
                    clients[0].ask(op="load", address=front.address)
                    windows = [served_window(clients, front.pid, front.address, 4, args.seconds, 1.0)
                               for _ in range(args.rounds)]
                finally:
                    workers.close_all(clients)
            out[n] = median_round(windows)
            print(f"{n} node(s): {out[n]['searches_per_s']:,.0f} searches/s", flush=True)
        finally:
            nodes.shutdown()
    return out


def report(results: dict, args) -> str:
    figures = results["figures"]
    rows = []
    for p, t in WINDOWS:
        for name in results["setups"]:
            f = figures[f"{name}/{label(p, t)}"]
            rows.append({"clients": label(p, t), "server": name, **f, "errors": sum(f["failures"].values())})
    columns = [("clients", "clients", ""), ("server", "server", ""), ("searches_per_s", "searches/s", ",.0f"),
               ("p50_ms", "p50 ms", ".3f"), ("p99_ms", "p99 ms", ".3f"),
               ("server_cpu_us", "serving CPU us/search", ".0f"),
               ("shard_cpu_us", "shards' CPU us/search", ".0f"), ("errors", "errors", "")]
    for row in rows:
        row.setdefault("shard_cpu_us", None)
    single, front = (figures[f"{n}/{label(1, 1)}"] for n in results["setups"])
    up = results["upsert"]
    fo = results["failover"]
    lines = [
        "# Cluster front against a single server",
        "",
        f"{results['data']}, k=10, default ef; {args.seconds:g} s windows, median of {args.rounds} rounds, in turns. "
        "The cluster: two shards of two copies on a local Ray cluster of three nodes, all on this 2-core machine "
        "(`python -m benchmarks.cluster`).",
        "",
        markdown_table(rows, columns),
        "",
        "Serving CPU: the single server's process, or the front's; the shards' copies (Ray actor processes) apart.",
        "",
        "## Latency, same run",
        "",
        "| | single server | cluster front | difference |",
        "|---|---|---|---|",
        f"| search p50 ms (1 thread) | {single['p50_ms']:.3f} | {front['p50_ms']:.3f} | "
        f"{front['p50_ms'] - single['p50_ms']:+.3f} |",
        f"| search p99 ms (1 thread) | {single['p99_ms']:.3f} | {front['p99_ms']:.3f} | "
        f"{front['p99_ms'] - single['p99_ms']:+.3f} |",
        f"| one-vector upsert p50 ms | {up['single server']['p50_ms']:.3f} | {up['cluster front']['p50_ms']:.3f} | "
        f"{up['cluster front']['p50_ms'] - up['single server']['p50_ms']:+.3f} |",
        f"| one-vector upsert p99 ms | {up['single server']['p99_ms']:.3f} | {up['cluster front']['p99_ms']:.3f} | "
        f"{up['cluster front']['p99_ms'] - up['single server']['p99_ms']:+.3f} |",
        "",
        "## A node's death",
        "",
        f"{fo['copies_killed']} copies SIGKILLed with their node: all {fo['tenants']} tenants searched had answered "
        f"again after {fo['seconds_to_all_tenants']:.3f} s ({fo['failed_searches']} searches failed meanwhile, "
        f"{fo['unanswered']} tenants unanswered).",
        "",
        *scaling_lines(results),
        f"Load through the SDK: single server {results['load_seconds']['single server']:.1f} s, cluster front "
        f"{results['load_seconds']['cluster front']:.1f} s.",
    ]
    return "\n".join(lines) + "\n"


def scaling_lines(results: dict) -> list[str]:
    if "scaling" not in results:
        return []
    rows = [{"nodes": n, **f} for n, f in results["scaling"].items()]
    columns = [("nodes", "local nodes", ""), ("searches_per_s", "searches/s (1 process x 4 threads)", ",.0f"),
               ("p50_ms", "p50 ms", ".3f"), ("server_cpu_us", "front CPU us/search", ".0f")]
    return ["## Nodes", "", "Each a new local Ray cluster on this machine's 2 cores (two shards; one copy each "
            "on one node, two on more): more nodes here add processes, not cores.", "",
            markdown_table(rows, columns), ""]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~5k vectors, 1 s windows, 1 round: a smoke run")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--scaling", action="store_true", help="also 1, 2 and 3 nodes, each a new local cluster")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (1.0 if args.quick else 5.0)
    data_params = QUICK_DATA if args.quick else {}
    results = measure(args, data_params)
    if args.scaling:
        results["scaling"] = scaling(args, data_params)
    text = report(results, args)
    print(text)
    write_results(RESULTS, "cluster_quick" if args.quick else "cluster", results, text)


if __name__ == "__main__":
    main()
