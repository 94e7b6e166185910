"""Storage: write throughput per durability mode, and reopen time against build time.

    python -m benchmarks.storage

1. Inserts of real vectors (GloVe 50-d) in batches of 1 and of 1 000, for each durability mode
   ("sync", "batch", "none") and, in the same run, for an in-memory database: vectors/s and the
   ratio to memory. Batches of 1 also run from 4 threads, which is where group commit pays.
2. The 200k-vector / 1 000-tenant Zipf set: time to build a data directory, then time to reopen
   it, to answer a first query, and to have built every tenant's sub-tree; and the same reopen
   with 100 tenants over the same vectors, to show that opening does not grow with tenants.
Writes benchmarks/results/storage.md and storage.json.
"""

import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import curator
from curator_loadtest import data as D

RESULTS = Path(__file__).parent / "results"


def write_throughput(vectors: np.ndarray, mode: str, batch: int, threads: int = 1) -> float:
    """Vectors per second inserting `vectors` in batches, from `threads` threads."""
    workdir = tempfile.mkdtemp(prefix="curator-bench-")
    try:
        db = curator.open(":memory:") if mode == "memory" else curator.open(workdir + "/d", durability=mode)
        col = db.create_collection("w", dim=vectors.shape[1], metric="cosine", train_size=10**9)
        parts = np.array_split(np.arange(vectors.shape[0]), threads)

        def work(rows):
            for start in range(0, rows.size, batch):
                ids = rows[start : start + batch]
                col.insert(ids, vectors[ids], tenant="t")

        start = time.perf_counter()
        pool = [threading.Thread(target=work, args=(p,)) for p in parts]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - start
        db.close()
        return vectors.shape[0] / elapsed
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def reopen(data: D.MultiTenantData, workdir: str) -> dict:
    path = workdir + "/zipf"
    start = time.perf_counter()
    with curator.open(path) as db:
        col = db.create_collection("z", dim=50, metric="cosine")
        D.load_into(col, data)
        col.train()
    build = time.perf_counter() - start
    start = time.perf_counter()
    db = curator.open(path)
    col = db.collection("z")
    opened = time.perf_counter() - start
    t0 = D.tenant_label(int(data.query_tenants[0]))
    col.search(data.queries[0], k=10, tenant=t0)
    first_query = time.perf_counter() - start
    names = [D.tenant_label(t) for t in range(data.n_tenants)]
    col.search_batch(np.repeat(data.queries[:1], len(names), axis=0), k=10, tenants=names)
    all_built = time.perf_counter() - start
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    db.close()
    shutil.rmtree(path)
    return {"tenants": data.n_tenants, "pairs": data.n_pairs, "build_s": build, "open_s": opened,
            "first_query_s": first_query, "all_tenants_built_s": all_built, "directory_mb": size / 1e6,
            "open_over_build": opened / build}


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    glove = D.glove(120_000)
    rows = []
    for mode in ("memory", "none", "batch", "sync"):
        for batch, n, threads in ((1, 2_000, 1), (1, 2_000, 4), (1000, 100_000, 1)):
            rate = write_throughput(glove[:n], mode, batch, threads)
            rows.append({"mode": mode, "batch": batch, "threads": threads, "vectors_per_s": rate})
            print(rows[-1], flush=True)
    memory = {(r["batch"], r["threads"]): r["vectors_per_s"] for r in rows if r["mode"] == "memory"}
    for r in rows:
        r["vs_memory"] = r["vectors_per_s"] / memory[(r["batch"], r["threads"])]
    workdir = tempfile.mkdtemp(prefix="curator-bench-")
    try:
        opens = [reopen(D.zipf_tenants(), workdir), reopen(D.zipf_tenants(n_tenants=100), workdir)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for o in opens:
        print(o, flush=True)
    lines = ["# Storage benchmark", "", "## Insert throughput (GloVe 50-d, cosine)", "",
             "| durability | batch | threads | vectors/s | vs in-memory |", "|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['batch']} | {r['threads']} | {r['vectors_per_s']:,.0f} | {r['vs_memory']:.2f} |" for r in rows]
    lines += ["", "## Reopen against build (200k GloVe vectors, Zipf tenants, sync)", "",
              "| tenants | pairs | build s | open s | first query s | all tenants built s | directory MB | open / build |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {o['tenants']} | {o['pairs']:,} | {o['build_s']:.1f} | {o['open_s']:.2f} | {o['first_query_s']:.2f} | "
              f"{o['all_tenants_built_s']:.2f} | {o['directory_mb']:.0f} | {o['open_over_build']:.3f} |" for o in opens]
    (RESULTS / "storage.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "storage.json").write_text(json.dumps({"writes": rows, "reopen": opens}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
