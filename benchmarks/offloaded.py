"""Offloaded tenants: how long offloading one takes, and restoring it (README, "Tenant states").

    python -m benchmarks.offloaded [--tenants 2000] [--per-tenant 100] [--dim 384] [--restores 300]

A data directory (durability "sync", the default) of `--tenants` tenants of `--per-tenant` random
vectors each (each also granted 5 of the next tenant's, so some vectors are shared and stay in the
live store), trained once. `--restores` tenants chosen at random are offloaded (`offload_tenant`:
deactivate, write the archive file, one batch), then each is restored by its first search (the
latency counted is that search: archive read, one batch written back and fsynced, the archive
removed, wake, search), then searched again (the search alone); as many others are offloaded and
restored explicitly (`activate_tenant`). faiss runs on one thread, as in the server's RPC workers.
Writes benchmarks/results/offloaded.md and offloaded.json.
"""

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from .measure import markdown_table, write_results

RESULTS = Path(__file__).resolve().parent / "results"
SHARED = 5


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(seconds)}


def run(tenants: int, per_tenant: int, dim: int, restores: int, seed: int = 0) -> dict:
    import faiss

    import curator

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as scratch, curator.open(str(Path(scratch) / "data")) as db:
        col = db.create_collection("c", dim=dim)
        for t in range(tenants):
            ids = np.arange(t * per_tenant, (t + 1) * per_tenant)
            col.insert(ids, rng.standard_normal((per_tenant, dim)).astype(np.float32), tenant=f"t{t}")
        for t in range(tenants):
            nxt = (t + 1) % tenants
            col.grant(np.arange(nxt * per_tenant, nxt * per_tenant + SHARED), tenant=f"t{t}")
        col.train()
        chosen = rng.choice(tenants, 2 * restores, replace=False)
        queries = rng.standard_normal((2 * restores, dim)).astype(np.float32)
        offload, first, again, activate = [], [], [], []
        for t in chosen.tolist():
            start = time.perf_counter()
            col.offload_tenant(f"t{t}")
            offload.append(time.perf_counter() - start)
        for i, t in enumerate(chosen[:restores].tolist()):
            start = time.perf_counter()
            col.search(queries[i], k=10, tenant=f"t{t}")
            first.append(time.perf_counter() - start)
            start = time.perf_counter()
            col.search(queries[i], k=10, tenant=f"t{t}")
            again.append(time.perf_counter() - start)
        for t in chosen[restores:].tolist():
            start = time.perf_counter()
            col.activate_tenant(f"t{t}")
            activate.append(time.perf_counter() - start)
        assert col.stats().get("offloaded_tenants", 0) == 0
    return {"tenants": tenants, "per_tenant": per_tenant, "dim": dim, "machine": platform.processor() or platform.machine(),
            "offload": percentiles(offload), "restore_by_search": percentiles(first),
            "search_after": percentiles(again), "restore_by_activate": percentiles(activate)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=2000)
    parser.add_argument("--per-tenant", type=int, default=100)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--restores", type=int, default=300)
    args = parser.parse_args()
    results = run(args.tenants, args.per_tenant, args.dim, args.restores)
    rows = [{"what": name, **results[key]} for name, key in (
        ("offload_tenant (deactivate, archive file, one batch, fsync)", "offload"),
        ("first search of an offloaded tenant (restore + search)", "restore_by_search"),
        ("the next search", "search_after"),
        ("activate_tenant of an offloaded tenant", "restore_by_activate"))]
    text = (f"# Offloaded tenants\n\n{results['tenants']} tenants of {results['per_tenant']} {results['dim']}-d "
            f"vectors, durability sync, one run on {results['machine']}.\n\n"
            + markdown_table(rows, [("what", "", ""), ("p50_ms", "p50 ms", ".2f"), ("p99_ms", "p99 ms", ".2f"),
                                    ("n", "n", "")]) + "\n")
    write_results(RESULTS, "offloaded", results, text)


if __name__ == "__main__":
    main()
