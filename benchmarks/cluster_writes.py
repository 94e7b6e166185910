"""One-vector upserts from four threads through a cluster front: a collection's writes holding
the ids they name (server/cluster/front.py, IdLocks: 64 stripes) against one lock for them all
(1 stripe, as before), same run, in turns.

    python -m benchmarks.cluster_writes [--seconds S] [--rounds R]

A local Ray cluster of three nodes on this machine (`ray.cluster_utils.Cluster`), two shards of
two copies, the front in this process; four tenants, two on each shard, 100 16-d vectors each;
each thread upserts one of its tenant's vectors at a time. Writes benchmarks/results/cluster_writes.md.
"""

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import ray
from ray.cluster_utils import Cluster as RayCluster

import curator
from curator_server.app import CuratorServer, ServerConfig
from curator_server.cluster import front
from curator_server.cluster.controller import Cluster

from .measure import write_results

NODE = {"num_cpus": 1, "object_store_memory": 80 << 20}
TENANTS = ["tenant-0", "tenant-3", "carol", "dave"]  # two on each shard of two (placement.py)
DIM = 16


def upserts_per_second(cluster, root: str, stripes: int, seconds: float) -> float:
    front.IdLocks.STRIPES = stripes
    server = CuratorServer(ServerConfig(data=tempfile.mkdtemp(dir=root), port=0, ray="given"), cluster=cluster).start()
    db = curator.connect(server.address)
    try:
        col = db.create_collection("writes", dim=DIM)
        rng = np.random.default_rng(0)
        for i, tenant in enumerate(TENANTS):
            col.insert(np.arange(i * 1000, i * 1000 + 100), rng.random((100, DIM), dtype=np.float32), tenant=tenant)
        done, stop = [0] * len(TENANTS), time.monotonic() + seconds

        def write(i):
            own = curator.connect(server.address).collection("writes")
            draw = np.random.default_rng(i)
            while time.monotonic() < stop:
                own.upsert([i * 1000 + int(draw.integers(100))], draw.random((1, DIM), dtype=np.float32),
                           tenant=TENANTS[i])
                done[i] += 1

        threads = [threading.Thread(target=write, args=(i,)) for i in range(len(TENANTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        db.drop_collection("writes")
        return sum(done) / seconds
    finally:
        db.close()
        server.stop()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster_writes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    nodes = RayCluster(initialize_head=True, head_node_args=NODE)
    for _ in range(2):
        nodes.add_node(**NODE)
    ray.init(address=nodes.address, namespace="curator", log_to_driver=False)
    nodes.wait_for_nodes()
    root = tempfile.mkdtemp(prefix="curator-writes-")
    cluster = Cluster(nodes.address, root + "/front-cluster", root=root + "/shards")
    runs: dict[int, list[float]] = {1: [], 64: []}
    try:
        for _ in range(args.rounds):
            for stripes in runs:  # in turns
                runs[stripes].append(upserts_per_second(cluster, root, stripes, args.seconds))
                print(f"{stripes} stripe(s): {runs[stripes][-1]:.0f} upserts/s", flush=True)
    finally:
        cluster.close(destroy=True)
        ray.shutdown()
        nodes.shutdown()
    one, striped = (float(np.median(runs[s])) for s in (1, 64))
    text = "\n".join([
        "# Concurrent upserts through a cluster front",
        "",
        f"Four threads, each one-vector upserts of its own tenant (two tenants on each of two shards of two copies, "
        f"a local Ray cluster of three nodes on this 2-core machine), {args.seconds:g} s windows, median of "
        f"{args.rounds} rounds in turns (`python -m benchmarks.cluster_writes`).",
        "",
        "| a collection's writes | upserts/s | rounds |",
        "|---|---|---|",
        f"| one lock (1 stripe, as before) | {one:,.0f} | {', '.join(f'{x:,.0f}' for x in runs[1])} |",
        f"| the ids they name (64 stripes) | {striped:,.0f} | {', '.join(f'{x:,.0f}' for x in runs[64])} |",
        "",
        f"Ratio: {striped / one:.2f}x.",
    ]) + "\n"
    print(text)
    write_results(Path(__file__).parent / "results", "cluster_writes", {"runs": runs, "args": vars(args)}, text)


if __name__ == "__main__":
    main()
