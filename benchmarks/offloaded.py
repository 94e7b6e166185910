"""Offloaded tenants: opening with them, how long offloading one takes, and restoring it (README,
"Tenant states").

    python -m benchmarks.offloaded [--tenants 2000] [--per-tenant 100] [--dim 384] [--restores 300]

A data directory (durability "sync", the default) of `--tenants` tenants of `--per-tenant` random
vectors each (each also granted 5 of the next tenant's, so some vectors are shared and stay in the
live store), trained once, is closed and opened again three times: all active, with `--away` of
the tenants (chosen at random) inactive, then with the same tenants offloaded; each state's
opening seconds (the fastest of OPENS) and the index's own count of its memory (ids in the id map, bytes by
`CuratorIndex.nbytes`) are recorded. In the last opening, `--restores` of the active tenants are
offloaded (`offload_tenant`: deactivate, archive file, one batch, fsync), timed; then
`--restores` of the tenants offloaded before that opening are each restored by their first
search (the latency counted is that search: archive read and checked, one batch written back and
fsynced, the archive removed, wake, search) and searched again (the search alone), and as many
others restored by `activate_tenant`. faiss runs on one thread, as in the server's RPC workers.
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
OPENS = 3  # each state is opened this many times; the fastest counts (the first reads a cold cache)


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(seconds)}


def opened(path: str, change=None) -> dict:
    """Open the directory (after `change(col)` in a previous opening), timed, and the index's memory."""
    import curator

    if change is not None:
        with curator.open(path) as db:
            change(db.collection("c"))
    seconds = []
    for _ in range(OPENS):
        start = time.perf_counter()
        with curator.open(path) as db:
            seconds.append(time.perf_counter() - start)
            index = db.collection("c").index
            figures = {"ids_in_memory": len(index.ids), "index_mb": sum(index.nbytes.values()) / 1e6,
                       "resident": index.resident_count()}
    return {"open_s": min(seconds), **figures}


def run(tenants: int, per_tenant: int, dim: int, restores: int, away: float, seed: int = 0) -> dict:
    import faiss

    import curator

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as scratch:
        path = str(Path(scratch) / "data")
        with curator.open(path) as db:
            col = db.create_collection("c", dim=dim)
            for t in range(tenants):
                ids = np.arange(t * per_tenant, (t + 1) * per_tenant)
                col.insert(ids, rng.standard_normal((per_tenant, dim)).astype(np.float32), tenant=f"t{t}")
            for t in range(tenants):
                nxt = (t + 1) % tenants
                col.grant(np.arange(nxt * per_tenant, nxt * per_tenant + SHARED), tenant=f"t{t}")
            col.train()
        gone = rng.choice(tenants, int(tenants * away), replace=False).tolist()
        openings = {"all active": opened(path)}
        openings["inactive"] = opened(path, lambda col: [col.deactivate_tenant(f"t{t}") for t in gone])
        openings["offloaded"] = opened(path, lambda col: [col.offload_tenant(f"t{t}") for t in gone])
        db = curator.open(path)
        col = db.collection("c")
        active = sorted(set(range(tenants)) - set(gone))
        timed = rng.choice(active, min(restores, len(active)), replace=False)  # offloaded now, timed
        back = rng.choice(gone, min(2 * restores, len(gone)), replace=False)  # offloaded before this opening
        queries = rng.standard_normal((len(back), dim)).astype(np.float32)
        offload, first, again, activate = [], [], [], []
        for t in timed.tolist():
            start = time.perf_counter()
            col.offload_tenant(f"t{t}")
            offload.append(time.perf_counter() - start)
        half = len(back) // 2
        for i, t in enumerate(back[:half].tolist()):
            start = time.perf_counter()
            col.search(queries[i], k=10, tenant=f"t{t}")
            first.append(time.perf_counter() - start)
            start = time.perf_counter()
            col.search(queries[i], k=10, tenant=f"t{t}")
            again.append(time.perf_counter() - start)
        for t in back[half:].tolist():
            start = time.perf_counter()
            col.activate_tenant(f"t{t}")
            activate.append(time.perf_counter() - start)
        assert col.stats()["offloaded_tenants"] == len(gone) + len(timed) - len(back)
        db.close()
    return {"tenants": tenants, "per_tenant": per_tenant, "dim": dim, "away": away, "openings": openings,
            "machine": platform.processor() or platform.machine(),
            "offload": percentiles(offload), "restore_by_search": percentiles(first),
            "search_after": percentiles(again), "restore_by_activate": percentiles(activate)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=2000)
    parser.add_argument("--per-tenant", type=int, default=100)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--restores", type=int, default=300)
    parser.add_argument("--away", type=float, default=0.9, help="share of tenants made inactive, then offloaded")
    args = parser.parse_args()
    results = run(args.tenants, args.per_tenant, args.dim, args.restores, args.away)
    rows = [{"what": name, **results[key]} for name, key in (
        ("offload_tenant of an active tenant (deactivate, archive file, one batch, fsync)", "offload"),
        ("first search of an offloaded tenant (restore + search)", "restore_by_search"),
        ("the next search", "search_after"),
        ("activate_tenant of an offloaded tenant", "restore_by_activate"))]
    opens = [{"state": f"{results['away']:.0%} {name}" if name != "all active" else name, **figures}
             for name, figures in results["openings"].items()]
    text = (f"# Offloaded tenants\n\n{results['tenants']} tenants of {results['per_tenant']} {results['dim']}-d "
            f"vectors, durability sync, one run on {results['machine']}.\n\n## Opening\n\n"
            + markdown_table(opens, [("state", "", ""), ("open_s", "open s", ".2f"),
                                     ("ids_in_memory", "ids in memory", ""), ("resident", "vectors in memory", ""),
                                     ("index_mb", "index MB", ".1f")])
            + "\n\n## Offloading, and restoring tenants offloaded before the last opening\n\n"
            + markdown_table(rows, [("what", "", ""), ("p50_ms", "p50 ms", ".2f"), ("p99_ms", "p99 ms", ".2f"),
                                    ("n", "n", "")]) + "\n")
    write_results(RESULTS, "offloaded", results, text)


if __name__ == "__main__":
    main()
