"""Tenant states: server memory and open time with every tenant active against 90% inactive, and
how long waking an inactive tenant takes.

    python -m benchmarks.tenant_states [--tenants 10000] [--per-tenant 100] [--dim 384] [--inactive 0.9]

A data directory of `--tenants` tenants of `--per-tenant` vectors each (random vectors around
one of 512 anchors per tenant, so tenants are spread over the tree; each tenant is also granted 5
vectors of the next one, so some vectors are shared), trained once, is built and checkpointed
(`db.snapshot`): one copy stays all active, in the other `--inactive` of the tenants (chosen at
random) are deactivated. Each copy is then opened by a fresh process of its own (so that its RSS
is only that directory's), `--repeats` times in alternation, which measures:
- open: seconds for `curator.open` (every collection restored), and RSS right after
  (measure.rss_bytes: after malloc_trim);
- served: RSS once every active tenant has been searched once (its sub-tree built), the memory of
  a server that has served each of them;
- in the inactive copy: `--wakes` inactive tenants, chosen at random, each woken by its first
  search (the latency counted is that search: wake + search), then searched again (the search
  alone), and as many woken explicitly (`activate_tenant`, which waits for its fsync) after being
  deactivated again; RSS after. faiss runs on one thread, as in the server's RPC workers. The woken tenants are deactivated again before the process ends, so runs compare.
A process that opens a directory of one tenant of 10 vectors and searches it gives the baseline
RSS (Python, numpy, numba and its compiled kernels, faiss, RocksDB's fixed costs). Writes benchmarks/results/tenant_states.md and tenant_states.json.
"""

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .measure import markdown_table, rss_bytes, write_results

RESULTS = Path(__file__).resolve().parent / "results"
ANCHORS = 512
SHARED = 5  # vectors of the next tenant each tenant is granted


def vectors_of(t: int, per: int, dim: int, anchors: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1_000_003 + t)
    return (anchors[t % ANCHORS] + 0.5 * rng.standard_normal((per, dim))).astype(np.float32)


def query_of(t: int, dim: int, anchors: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(7 + t)
    return (anchors[t % ANCHORS] + 0.5 * rng.standard_normal(dim)).astype(np.float32)


def anchors_for(dim: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((ANCHORS, dim)).astype(np.float32) * 2


def build(root: Path, tenants: int, per: int, dim: int, inactive: float) -> dict:
    """Both copies of the data directory; returns the build's figures."""
    import curator

    anchors = anchors_for(dim)
    out = {}
    start = time.perf_counter()
    with curator.open(str(root / "build"), durability="none") as db:
        col = db.create_collection("c", dim=dim, train_size=10**9)  # trained once, below
        for t in range(tenants):
            col.insert(np.arange(t * per, (t + 1) * per), vectors_of(t, per, dim, anchors), tenant=f"t{t}")
        col.train()
        for t in range(tenants):
            nxt = (t + 1) % tenants
            col.grant(np.arange(nxt * per, nxt * per + SHARED), tenant=f"t{t}")
        out["build_seconds"] = time.perf_counter() - start
        db.snapshot(str(root / "active"))
        chosen = np.random.default_rng(1).permutation(tenants)[: int(round(inactive * tenants))]
        seconds = np.empty(chosen.size)
        for i, t in enumerate(chosen.tolist()):
            began = time.perf_counter()
            col.deactivate_tenant(f"t{t}")
            seconds[i] = time.perf_counter() - began
        out["deactivate_p50_ms"] = float(np.percentile(seconds, 50) * 1e3)
        out["deactivate_p99_ms"] = float(np.percentile(seconds, 99) * 1e3)
        out["build_stats"] = {k: v for k, v in col.stats().items() if k != "memory_bytes"}
    shutil.move(str(root / "build"), str(root / "inactive"))
    with curator.open(str(root / "baseline")) as db:  # one tenant of 10 vectors: the fixed costs alone
        db.create_collection("c", dim=dim).insert(np.arange(10), vectors_of(0, 10, dim, anchors), tenant="t0")
    return out


def measure(path: str, dim: int, wakes: int, seed: int) -> dict:
    """The figures of one directory, in this process (a child: its RSS is this directory's)."""
    import faiss

    import curator

    anchors = anchors_for(dim)
    start = time.perf_counter()
    db = curator.open(path)
    collections = [db.collection(name) for name in db.list_collections()]
    out = {"open_seconds": time.perf_counter() - start, "rss_open": rss_bytes()}
    if not collections:
        db.close()
        return out
    col = collections[0]
    index = col.index
    out["stats"] = {k: v for k, v in col.stats().items() if k != "memory_bytes"}
    out["memory_bytes_open"] = col.stats()["memory_bytes"]
    names = [name for name in index.tenant_names if name is not None]
    active = [name for name in names if col.tenant_state(name) == "active"]
    asleep = [name for name in names if col.tenant_state(name) == "inactive"]
    start = time.perf_counter()
    for name in active:  # every active tenant served once: its sub-tree is built
        col.search(query_of(int(name[1:]), dim, anchors), k=10, tenant=name)
    out["serve_all_active_seconds"] = time.perf_counter() - start
    out["rss_served"] = rss_bytes()
    out["memory_bytes_served"] = col.stats()["memory_bytes"]
    if wakes and asleep:
        faiss.omp_set_num_threads(1)  # as the server's RPC workers, which make the calls (server/app.py)
        rng = np.random.default_rng(seed)
        picked = [asleep[i] for i in rng.choice(len(asleep), min(wakes, len(asleep)), replace=False)]
        first, again, explicit = np.empty(len(picked)), np.empty(len(picked)), np.empty(len(picked))
        clock = time.perf_counter
        for i, name in enumerate(picked):
            q = query_of(int(name[1:]), dim, anchors)
            began = clock()
            col.search(q, k=10, tenant=name)  # wakes it
            first[i] = clock() - began
            began = clock()
            col.search(q, k=10, tenant=name)
            again[i] = clock() - began
        out["rss_after_wakes"] = rss_bytes()
        for i, name in enumerate(picked):
            col.deactivate_tenant(name)
            began = clock()
            col.activate_tenant(name)
            explicit[i] = clock() - began
        for name in picked:  # as it was: the next run finds the same states
            col.deactivate_tenant(name)
        out.update(wakes=len(picked), **{f"{label}_{p}_ms": float(np.percentile(s, q) * 1e3)
                                         for label, s in (("first_search", first), ("search", again),
                                                          ("activate", explicit))
                                         for p, q in (("p50", 50), ("p99", 99), ("max", 100))})
    db.close()
    return out


def run_child(path: Path, dim: int, wakes: int, seed: int) -> dict:
    child = subprocess.run([sys.executable, "-m", "benchmarks.tenant_states", "--child", str(path), "--dim", str(dim),
                            "--wakes", str(wakes), "--seed", str(seed)], stdout=subprocess.PIPE, text=True,
                           cwd=Path(__file__).resolve().parent.parent)
    if child.returncode:
        raise SystemExit(f"the measuring process for {path} failed ({child.returncode})")
    return json.loads(child.stdout.splitlines()[-1])


def report(results: dict) -> str:
    mb = 1e6
    cfg = results["config"]
    runs = results["runs"]
    base = float(np.median([r["rss_served"] for r in runs["baseline"]]))
    rows = []
    for state in ("active", "inactive"):
        rs = runs[state]
        median = {key: float(np.median([r[key] for r in rs])) for key in ("open_seconds", "rss_open", "rss_served")}
        rows.append({"state": "all active" if state == "active" else f"{cfg['inactive']:.0%} inactive",
                     "resident": rs[0]["stats"]["resident_vectors"], "evicted": rs[0]["stats"]["evicted_vectors"],
                     "open": median["open_seconds"], "rss_open": median["rss_open"] / mb,
                     "rss_served": median["rss_served"] / mb, "net": (median["rss_served"] - base) / mb})
    ratio = rows[1]["rss_served"] / rows[0]["rss_served"]
    net_ratio = rows[1]["net"] / rows[0]["net"]
    wake_rows = [{"what": label, "p50": float(np.median([r[f"{key}_p50_ms"] for r in runs["inactive"]])),
                  "p99": float(np.median([r[f"{key}_p99_ms"] for r in runs["inactive"]])),
                  "max": float(np.max([r[f"{key}_max_ms"] for r in runs["inactive"]]))}
                 for label, key in (("first search (wake + search)", "first_search"),
                                    ("next search", "search"), ("activate_tenant", "activate"))]
    build = results["build"]
    return "\n".join([
        "# Tenant states", "",
        f"{cfg['tenants']:,} tenants of {cfg['per_tenant']} vectors each ({cfg['tenants'] * cfg['per_tenant']:,} "
        f"random {cfg['dim']}-d vectors around {ANCHORS} anchors, l2; each tenant also granted {SHARED} vectors of "
        f"the next), one data directory trained once, checkpointed: one copy all active, in the other "
        f"{cfg['inactive']:.0%} of the tenants deactivated. Each copy opened by a fresh process "
        f"({cfg['repeats']} times, in alternation; medians): RSS after malloc_trim, right after open and once "
        "every active tenant has been searched once (its sub-tree built). Net: above the baseline, a process "
        f"that opened a directory of one tenant of 10 vectors and searched it ({base / mb:.0f} MB: Python, numpy, "
        "numba and its compiled kernels, faiss, RocksDB's fixed costs).", "",
        markdown_table(rows, [("state", "tenants", ""), ("resident", "vectors in memory", ","),
                              ("evicted", "evicted", ","), ("open", "open (s)", ".2f"),
                              ("rss_open", "RSS open (MB)", ".0f"), ("rss_served", "RSS served (MB)", ".0f"),
                              ("net", "net of baseline (MB)", ".0f")]), "",
        f"Server memory with {cfg['inactive']:.0%} inactive: {ratio:.1%} of all active ({net_ratio:.1%} net of "
        "the baseline).", "",
        f"Waking an inactive tenant: {runs['inactive'][0]['wakes']} inactive tenants chosen at random per run, each "
        "woken by its first search (wake + search), then searched again, then deactivated and woken by "
        "`activate_tenant` (ms; p50 and p99 the median over runs, max over all):", "",
        markdown_table(wake_rows, [("what", "", ""), ("p50", "p50 (ms)", ".2f"), ("p99", "p99 (ms)", ".2f"),
                                   ("max", "max (ms)", ".2f")]), "",
        f"Building took {build['build_seconds']:.0f} s; deactivating {build['build_stats']['inactive_tenants']:,} "
        f"tenants one call each: p50 {build['deactivate_p50_ms']:.2f} ms, p99 {build['deactivate_p99_ms']:.2f} ms. "
        "The directory's records were in the OS page cache (a cold disk adds its reads to open and wake).", "",
        f"Machine: {platform.processor() or platform.machine()}, {results['cpus']} cores, "
        f"Python {platform.python_version()}.", ""])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tenant_states", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--per-tenant", type=int, default=100)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--inactive", type=float, default=0.9)
    parser.add_argument("--wakes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print the report only")
    parser.add_argument("--child", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.dim, args.wakes, args.seed)))
        return
    import os

    config = {"tenants": args.tenants, "per_tenant": args.per_tenant, "dim": args.dim, "inactive": args.inactive,
              "wakes": args.wakes, "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="curator-states-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        built = build(root, args.tenants, args.per_tenant, args.dim, args.inactive)
        runs = {"baseline": [], "active": [], "inactive": []}
        for repeat in range(args.repeats):
            for state in ("baseline", "active", "inactive"):
                runs[state].append(run_child(root / state, args.dim, args.wakes if state == "inactive" else 0,
                                             args.seed + repeat))
        results = {"config": config, "build": built, "runs": runs, "cpus": os.cpu_count(),
                   "seconds": time.perf_counter() - started}
    text = report(results) + f"\nThe whole benchmark took {results['seconds']:.0f} s.\n"
    if args.no_write:
        print(text)
    else:
        write_results(RESULTS, "tenant_states", results, text)


if __name__ == "__main__":
    main(sys.argv[1:])
