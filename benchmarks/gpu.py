"""The GPU check and benchmark (issue 17): Curator's device paths against its CPU paths, one run.

    python3 benchmarks/gpu.py --check --out DIR          # on the device: imports, a tiny end-to-end
                                                         # run, each part's results against numpy's
    python3 benchmarks/gpu.py --bench --out DIR          # the benchmark (sized for ~7 min on one H200)
    python3 benchmarks/gpu.py --check --bench --cpu ...  # here: the device paths run by numpy, small

--check (under a minute): cupy and the device it sees, torch's topk (used for selection when
present), faiss; then on small seeded data each part on the device against the same code on numpy:
the shared tree's k-means (same node count, distortion within 2%), batched tenant search and the
masked exact scan (distances equal to float rounding, ids equal up to distance ties), the kNN
graph (ids equal up to ties) and the HNSW graph built from it (recall within 0.01). Writes
check.json; exits 1 if a part differs.

--bench: seeded synthetic data generated there (clustered, --n x --dim, 1M x 128 by default; GloVe
is too big to bring), --tenants Zipf tenants (s = 1, a fifth of the vectors shared with a second
tenant), and a `bucket` payload (uniform 0..999) for filters. Stages, each written to bench.json
as it ends (what a stopped run leaves still comes back), skipped when --budget seconds would be
passed:
1. training: the shared tree's hierarchical k-means on all n vectors, faiss on the CPU's cores
   against the device (time, nodes, distortion);
2. batched multi-tenant search: batches of 1, 64 and 1 024 queries of tenants drawn by size, the
   CPU path (compiled, every core) against the device path at the same ef, ef swept: recall@10
   against exact per-tenant truth, QPS, and the QPS of each at its least ef with recall >= 0.95;
3. graph: the collection's HNSW graph (M 32, efConstruction 80) built on the device from the kNN
   graph: build time, recall@10 of the project's graph search at beams 32..256;
4. filtered: 1 024 queries with filters at 0.1/1/10/50% selectivity, the planner's CPU plans against
   the device (masked exact scans where the planner picks exact; its graph plan on the CPU
   otherwise, over the graph of stage 3), and the device's exact scan at every selectivity:
   recall@10, QPS, whether every answer held min(k, matches);
5. graph against faiss-cpu: faiss's IndexHNSWFlat on the CPU's cores over as many vectors as the
   time left allows (its insertion rate measured on 50k first), the device's build of the same
   vectors: times, speedup, recall@10 of both at the same beams.
Prints a short table last.

## On the device machine (the device tool; nothing can be downloaded there)

Bring as wheels for its Python 3.12 (what it lacks: faiss-cpu, rocksdict, hnswlib), once, here:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl faiss-cpu==1.15.1 rocksdict
    ~/.pyenv/versions/3.12.1/bin/python3 -m pip wheel --no-deps hnswlib==0.8.0 -w .whl   # no wheels on PyPI

(about 25 MB; cupy, numba, torch, numpy, scipy are there already). Then one call of the device
tool's `run`, carry [".whl"], timeout_s 570, with this command:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; export PYTHONUNBUFFERED=1; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/gpu.txt; timeout 90 python3 benchmarks/gpu.py --check --out $OUT > $OUT/check.log 2>&1; tail -5 $OUT/check.log; timeout 450 python3 benchmarks/gpu.py --bench --budget 400 --commit SHA --out $OUT > $OUT/bench.log 2>&1; tail -40 $OUT/bench.log

(SHA: `git rev-parse HEAD` here; the device's copy has no .git). The bench runs whatever the
check says (its check.json tells); both logs come back whole under $OUT, their ends in the reply.
$OUT brings back gpu.txt, check.json, check.log, bench.json, bench.md, bench.log.

Commit what comes back under benchmarks/results/ (gpu.json, gpu.md) with the GPU's name, the
commit and the date.

## What to expect (floors counted before any run, H200: ~50 TFLOP/s fp32, ~4 TB/s)

- kNN graph of 1M x 128: 2.6e14 flops of fp32 products (>= 5 s) and a top-k over 1e12 distances
  (4 TB read, >= 1 s): 10-20 s predicted; faiss-cpu inserts ~10-20k vectors/s on 16 cores, so
  the 10x of the issue is at its edge (next levers: TF32 products, candidates from the tree's
  leaves instead of every row).
- a batch of 1 024 tenant queries at 4 x ef = 2 048 candidates: their rows gathered, 1 GB read
  and written (~0.5 ms), the CPU's shortlist choice ~2 ms on 16 threads, 8 MB of candidate ids
  sent: ~3-5 ms a batch against the CPU path's ~1 024 x 0.3 ms / 16 = 20 ms.
- training 1M: a few batched products a level; Python bookkeeping per node (~16k nodes) ~1 s.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from the checkout

from curator import device as devices  # noqa: E402
from curator import device_search, knn_graph  # noqa: E402
from curator.graph import Graph  # noqa: E402
from curator.index import CuratorIndex, IndexConfig  # noqa: E402
from curator.metric import Metric  # noqa: E402
from curator.tree import ClusteringTree, TreeShape  # noqa: E402

K = 10


# -- data --------------------------------------------------------------------------------------------


def dataset(n: int, dim: int, n_queries: int, centers: int, seed: int = 17):
    """Clustered vectors (Gaussian blobs of different spreads) and held-out queries of the same
    distribution, float32, seeded: the same on every machine."""
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centers, dim), dtype=np.float32) * 1.5
    spread = rng.uniform(0.5, 1.5, centers).astype(np.float32)
    out = np.empty((n + n_queries, dim), np.float32)
    for start in range(0, n + n_queries, 262_144):  # bounded temporaries
        stop = min(n + n_queries, start + 262_144)
        which = rng.integers(0, centers, stop - start)
        out[start:stop] = middle[which] + rng.standard_normal((stop - start, dim), dtype=np.float32) * spread[which, None]
    return out[:n], out[n:]


def zipf_tenants(n: int, n_tenants: int, seed: int = 18, shared: float = 0.2):
    """Each vector's owner by Zipf (s = 1) over the tenants, and a fifth of them also seen by a
    second tenant drawn the same way: (owner, shared ids, their second tenant)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_tenants + 1)
    weights /= weights.sum()
    owner = rng.choice(n_tenants, n, p=weights)
    ids = np.flatnonzero(rng.random(n) < shared)
    second = rng.choice(n_tenants, ids.size, p=weights)
    keep = second != owner[ids]
    return owner, ids[keep], second[keep]


def build_index(x, owner, shared_ids, second, tree, n_tenants, buckets=None, config=None) -> CuratorIndex:
    """An index over x with a tree trained beforehand (inserts route through it; no retraining)."""
    index = CuratorIndex(x.shape[1], Metric.L2, config or IndexConfig(train_size=10**12))
    index.tree, index.tenancy.tree, index._trained_count = tree, tree, x.shape[0]
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(n_tenants + 1))
    for t in range(n_tenants):  # a loop per tenant, not per vector
        ids = order[bounds[t] : bounds[t + 1]].astype(np.int64)
        if ids.size:
            index.insert(ids, x[ids], f"t{t}")
    order = np.argsort(second, kind="stable")
    bounds = np.searchsorted(second[order], np.arange(n_tenants + 1))
    for t in range(n_tenants):
        ids = shared_ids[order[bounds[t] : bounds[t + 1]]].astype(np.int64)
        if ids.size:
            index.grant(ids, f"t{t}")
    if buckets is not None:
        index.payloads.write(index.ids.lookup(np.arange(x.shape[0], dtype=np.int64)),
                             [{"bucket": int(b)} for b in buckets])
    return index


# -- helpers -----------------------------------------------------------------------------------------


def timed(call, *args, **kwargs):
    start = time.perf_counter()
    out = call(*args, **kwargs)
    return out, time.perf_counter() - start


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """|found ∩ truth| / min(k, |truth|) averaged over queries (truth padded with -1)."""
    total = 0.0
    for row, t in zip(found, truth):
        t = t[t >= 0]
        total += len(set(row[row >= 0].tolist()) & set(t.tolist())) / max(1, min(K, t.size))
    return total / len(found)


def tenant_truth(index, queries, tenants, dev) -> np.ndarray:
    """Exact best K ids of each query among its tenant's vectors (a device scan per tenant)."""
    truth = np.full((len(queries), K), -1, np.int64)
    by_tenant: dict = {}
    for i, t in enumerate(tenants):
        by_tenant.setdefault(t, []).append(i)
    xp = dev.xp
    for t, rows in by_tenant.items():  # a loop per tenant of the queries
        slots = index.tenancy.slots_of(index.tenant_numbers[t])
        top, _ = devices.exact_topk(queries[rows], index.vectors[slots], K, index.metric, xp=xp)
        truth[np.array(rows)[:, None], np.arange(top.shape[1])[None, :]] = index.slot_ids[slots[top]]
    return truth


def masked_truth(index, queries, mask, dev) -> np.ndarray:
    slots = np.flatnonzero(mask)
    top, _ = devices.exact_topk(queries, index.vectors[slots], K, index.metric, xp=dev.xp)
    truth = np.full((len(queries), K), -1, np.int64)
    truth[:, : top.shape[1]] = index.slot_ids[slots[top]]
    return truth


class Results:
    """bench.json / check.json, rewritten after every stage."""

    def __init__(self, path: Path, header: dict):
        self.path, self.data = path, dict(header)

    def put(self, stage: str, value) -> None:
        self.data[stage] = value
        self.path.write_text(json.dumps(self.data, indent=2, default=float))
        shown = value[-1] if isinstance(value, list) and value else value
        if isinstance(shown, dict) and "runs" in shown:
            shown = shown["runs"][-6:]
        print(f"[{time.strftime('%H:%M:%S')}] {stage}: {json.dumps(shown, default=float)[:400]}", flush=True)


def header(dev, args) -> dict:
    import faiss
    import numba

    out = {"device": dev.describe(), "python": platform.python_version(), "numpy": np.__version__,
           "numba": numba.__version__, "numba_threads": numba.config.NUMBA_NUM_THREADS,
           "faiss": faiss.__version__, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "args": {k: v for k, v in vars(args).items() if k != "out"}}
    out["commit"] = getattr(args, "commit", None)
    if not out["commit"]:
        try:
            import subprocess

            out["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                           cwd=Path(__file__).resolve().parent.parent).stdout.strip() or None
        except OSError:
            pass
    if dev.name == "cuda":
        import cupy

        out["cupy"] = cupy.__version__
        out["torch_topk"] = devices._torch_cuda() is not None
    return out


# -- the check ---------------------------------------------------------------------------------------


def check(dev, out: Path) -> bool:
    reference = devices.select("numpy")
    results = Results(out / "check.json", header(dev, argparse.Namespace(mode="check")))
    ok = True
    x, q = dataset(12_000, 32, 300, centers=40, seed=3)

    # the shared tree's k-means
    shape = TreeShape(branching=16, leaf_size=32, kmeans_iterations=10)
    on_dev, t_dev = timed(ClusteringTree.train, x, Metric.L2, shape, dev)
    on_np, t_np = timed(ClusteringTree.train, x, Metric.L2, shape, reference)
    same = on_dev.n_nodes == on_np.n_nodes and np.allclose(on_dev.centroids, on_np.centroids, atol=1e-3)
    part_ok = abs(on_dev.n_nodes - on_np.n_nodes) <= 0.05 * on_np.n_nodes and \
        abs(on_dev.distortion - on_np.distortion) <= 0.02 * on_np.distortion and on_dev.trained_on == dev.name
    results.put("training", {"ok": bool(part_ok), "identical": bool(same), "nodes": [on_dev.n_nodes, on_np.n_nodes],
                             "distortion": [on_dev.distortion, on_np.distortion], "seconds": [t_dev, t_np]})
    ok &= part_ok

    # batched tenant search and the masked scan: the same index, the two devices in turn
    owner, shared_ids, second = zipf_tenants(x.shape[0], 30)
    buckets = np.random.default_rng(4).integers(0, 1000, x.shape[0])
    index = build_index(x, owner, shared_ids, second, on_np, 30, buckets)
    tenants = [f"t{t}" for t in np.random.default_rng(5).choice(owner, q.shape[0])]
    answers = {}
    for name, d in (("device", dev), ("numpy", reference)):
        device_search.attach(index, d)
        index.accelerator.min_batch = 1
        ids, dists = index.search(q, K, tenants, 32, parallel=False)
        allowed = index._allowed(None, {"bucket": {"lt": 20}})
        fids, fdists, plan = index.accelerator.search_group(index, q, None, allowed, "exact", K, 32)
        answers[name] = (ids, dists, fids, fdists, index.accelerator.stats())
        device_search.detach(index)
    for part, (i, j) in (("batched_search", (0, 1)), ("masked_scan", (2, 3))):
        a, b = answers["device"], answers["numpy"]
        close = bool(np.allclose(a[j], b[j], rtol=1e-4, atol=1e-4))
        agree = float((a[i] == b[i]).mean())
        part_ok = close and agree > 0.99
        results.put(part, {"ok": part_ok, "distances_close": close, "ids_equal": agree,
                           "ran_on": a[4]["queries"]})
        ok &= part_ok

    # the kNN graph and the HNSW graph built from it
    xs = x[:4000]
    ids_d, d_d = knn_graph.knn(dev.xp.asarray(xs), 32, Metric.L2, dev)
    ids_n, d_n = knn_graph.knn(xs, 32, Metric.L2, reference)
    close = bool(np.allclose(dev.to_host(d_d), d_n, rtol=1e-4, atol=1e-3))
    agree = float((dev.to_host(ids_d) == ids_n).mean())
    truth = devices.exact_topk(q, xs, K, Metric.L2, xp=np)[0]
    recalls = []
    for d in (dev, reference):
        graph = Graph.adopting(knn_graph.build_hnsw(xs, Metric.L2, 16, 80, d), np.arange(xs.shape[0]), Metric.L2, 16, 80)
        recalls.append(recall(np.array([graph.search(v, K, 32, None)[0] for v in q]), truth))
    part_ok = close and agree > 0.98 and abs(recalls[0] - recalls[1]) <= 0.01
    results.put("knn_graph", {"ok": part_ok, "distances_close": close, "ids_equal": agree,
                              "graph_recall_at_32": recalls})
    ok &= part_ok

    # end to end through the public API on the device
    import curator

    db = curator.open(":memory:", device=dev)
    col = db.create_collection("c", dim=32, branching=8, leaf_size=32, split_limit=32, train_size=2000,
                               retrain_interval=0)
    col.insert(np.arange(6000), x[:6000], tenant="a", payloads=[{"bucket": int(b)} for b in buckets[:6000]])
    col.grant(np.arange(0, 6000, 2), tenant="b")
    engine = db.collection("c")
    engine.retraining.wait()
    engine.index.accelerator.min_batch = 1
    found = col.search_batch(x[:200], K, tenants=["a"] * 100 + ["b"] * 100)
    filtered = col.search_batch(x[:200], K, tenants="a", filter={"bucket": {"lt": 50}})
    stats = col.stats()["device"]
    part_ok = (found.ids[:100, 0] == np.arange(100)).all() and (found.ids[100:] % 2 == 0).all() and \
        all(i < 0 or buckets[i] < 50 for i in filtered.ids.ravel()) and stats["trained_on"] == dev.name and \
        stats["queries"]["tree_search"]["device"] == 200 and stats["queries"]["filtered_search"]["device"] == 200
    results.put("end_to_end", {"ok": bool(part_ok), "stats": stats})
    db.close()
    ok &= part_ok
    results.put("ok", bool(ok))
    return bool(ok)


# -- the benchmark -----------------------------------------------------------------------------------


def bench(dev, out: Path, args) -> None:
    started = time.perf_counter()
    results = Results(out / "bench.json", header(dev, args))

    def left() -> float:
        return args.budget - (time.perf_counter() - started)

    (x, queries), seconds = timed(dataset, args.n, args.dim, args.queries, args.centers)
    owner, shared_ids, second = zipf_tenants(args.n, args.tenants)
    buckets = np.random.default_rng(19).integers(0, 1000, args.n)
    results.put("data", {"n": args.n, "dim": args.dim, "queries": args.queries, "tenants": args.tenants,
                         "shared_pairs": int(shared_ids.size), "largest_tenant": int(np.bincount(owner).max()),
                         "seconds": seconds})

    # 1. training
    shape = TreeShape()
    tree_dev, t_dev = timed(ClusteringTree.train, x, Metric.L2, shape, dev)
    tree_dev, t_dev = timed(ClusteringTree.train, x, Metric.L2, shape, dev) if dev.name == "cuda" else (tree_dev, t_dev)
    stage = {"vectors": args.n, "device": {"seconds": t_dev, "nodes": tree_dev.n_nodes, "distortion": tree_dev.distortion}}
    if left() > 240:
        tree_cpu, t_cpu = timed(ClusteringTree.train, x, Metric.L2, shape, None)
        stage["cpu"] = {"seconds": t_cpu, "nodes": tree_cpu.n_nodes, "distortion": tree_cpu.distortion}
        stage["speedup"] = t_cpu / t_dev
    results.put("training", stage)

    index, seconds = timed(build_index, x, owner, shared_ids, second, tree_dev, args.tenants, buckets)
    results.put("index", {"seconds": seconds, "nodes": index.tree.n_nodes,
                          "shortlists": index.tenancy.n_live_shortlists, "pairs": int(index.tenancy.count.sum())})

    # 2. batched multi-tenant search
    sizes = np.bincount(owner, minlength=args.tenants)
    rng = np.random.default_rng(20)
    tenants = [f"t{t}" for t in rng.choice(args.tenants, queries.shape[0], p=sizes / sizes.sum())]
    truth, seconds = timed(tenant_truth, index, queries, tenants, dev)
    accelerator = device_search.Accelerator(dev, "bench")
    accelerator.min_batch = 1
    runs = []
    for ef in args.efs:
        if left() < 150:
            break
        for batch in (1, 64, 1024):
            n_q = min(queries.shape[0], 256 if batch == 1 else queries.shape[0])
            for path in ("cpu", "device"):
                index.accelerator = accelerator if path == "device" else None
                found = np.empty((n_q, K), np.int64)
                index.search(queries[:batch], K, tenants[:batch], ef, parallel=batch > 1)  # warm
                start = time.perf_counter()
                for s in range(0, n_q, batch):
                    found[s : s + batch] = index.search(queries[s : s + batch], K, tenants[s : s + batch], ef,
                                                        parallel=batch > 1)[0]
                spent = time.perf_counter() - start
                runs.append({"ef": ef, "batch": batch, "path": path, "qps": n_q / spent,
                             "recall": recall(found, truth[:n_q])})
        index.accelerator = None
        results.put("batched_search", {"truth_seconds": seconds, "runs": runs,
                                       "at_recall_095": _at_recall(runs, 0.95)})

    # 3. graph build on the device: the collection's graph (the filtered stage's graph plan walks it)
    graph_q = queries[:1000]
    all_slots = index.ids.lookup(np.arange(args.n, dtype=np.int64))  # graph nodes are the index's slots
    built, t_dev = timed(knn_graph.build_hnsw, x, Metric.L2, 32, 80, dev)
    dev_graph = Graph.adopting(built, all_slots, Metric.L2, 32, 80)
    graph_truth = devices.exact_topk(graph_q, x, K, Metric.L2, xp=dev.xp)[0]
    graph = {"vectors": args.n, "device_seconds": t_dev, **_graph_recall(dev_graph, "device", index, graph_q, graph_truth)}
    results.put("graph", graph)

    # 4. filtered search (no tenant: filters over the whole collection)
    index.graph = dev_graph
    filtered = []
    fq = queries[: min(1024, queries.shape[0])]
    for selectivity in (0.001, 0.01, 0.1, 0.5):
        if left() < 60:
            break
        where = {"bucket": {"lt": max(1, int(selectivity * 1000))}}
        allowed = index._allowed(None, where)
        truth = masked_truth(index, fq, allowed.mask, dev)
        for path, exact_rows in (("cpu", None), ("device", None), ("device_exact", args.n)):
            index.accelerator = None if path == "cpu" else accelerator
            accelerator.exact_rows = exact_rows
            (found, _, plans), spent = timed(index.search_planned_batch, fq, K, [None] * len(fq), where,
                                             index.config.ef)
            filtered.append({"selectivity": selectivity, "path": path, "plan": max(set(plans), key=plans.count),
                             "qps": len(fq) / spent, "recall": recall(found, truth),
                             "always_k": bool((found >= 0).sum(axis=1).min() >= min(K, allowed.count))})
        index.accelerator, accelerator.exact_rows = None, None
        results.put("filtered", filtered)

    # 5. the graph built by faiss on the CPU's cores, on as many vectors as the time left allows
    # (its rate measured on a prefix first), against the device's build of the same vectors
    probe = min(args.n, 50_000)
    _, t_probe = timed(Graph(args.dim, Metric.L2, 32, 80).add, all_slots[:probe], x[:probe])
    rate = probe / t_probe
    n_cmp = int(min(args.n, max(probe, rate * (left() - 30) * 0.5)))  # inserts slow down as the graph grows
    graph["cpu_rate_per_second_at_50k"] = rate
    if left() > 30:
        cpu_graph = Graph(args.dim, Metric.L2, 32, 80)
        _, t_cpu = timed(cpu_graph.add, all_slots[:n_cmp], x[:n_cmp])
        if n_cmp == args.n:
            same, t_same = dev_graph, t_dev
        else:
            built, t_same = timed(knn_graph.build_hnsw, x[:n_cmp], Metric.L2, 32, 80, dev)
            same = Graph.adopting(built, all_slots[:n_cmp], Metric.L2, 32, 80)
        truth = devices.exact_topk(graph_q, x[:n_cmp], K, Metric.L2, xp=dev.xp)[0]
        graph["compared"] = {"vectors": n_cmp, "cpu_seconds": t_cpu, "device_seconds": t_same, "speedup": t_cpu / t_same,
                             **_graph_recall(cpu_graph, "cpu", index, graph_q, truth),
                             **_graph_recall(same, "device", index, graph_q, truth)}
        results.put("graph", graph)
    results.put("seconds", time.perf_counter() - started)
    print(summary(results.data), flush=True)
    (out / "bench.md").write_text(summary(results.data))


def _graph_recall(graph, name: str, index, queries, truth) -> dict:
    """recall@10 and QPS (one thread, the project's graph search) at beams 32..256."""
    out = {}
    for beam in (32, 64, 128, 256):
        found, spent = timed(lambda: np.array([index.slot_ids[graph.search(v, K, beam, None)[0]] for v in queries]))
        out[f"{name}_recall_at_{beam}"] = recall(found, truth)
        out[f"{name}_qps_at_{beam}"] = len(queries) / spent
    return out


def _at_recall(runs: list, target: float) -> dict:
    """Per (path, batch): the QPS at the least ef whose recall reaches the target."""
    best = {}
    for run in sorted(runs, key=lambda r: r["ef"]):
        key = f"{run['path']}_batch_{run['batch']}"
        if run["recall"] >= target and key not in best:
            best[key] = {"ef": run["ef"], "qps": run["qps"], "recall": run["recall"]}
    return best


def summary(data: dict) -> str:
    lines = [f"# GPU benchmark: {data['device']['label']} ({data.get('date', '')}, commit {(data.get('commit') or '?')[:10]})", ""]
    training = data.get("training", {})
    if "cpu" in training:
        lines.append(f"training {training['vectors']} vectors: cpu {training['cpu']['seconds']:.1f} s, "
                     f"device {training['device']['seconds']:.2f} s ({training['speedup']:.1f}x)")
    for key, row in data.get("batched_search", {}).get("at_recall_095", {}).items():
        lines.append(f"search {key}: ef {row['ef']} recall {row['recall']:.3f} {row['qps']:.0f} QPS")
    graph = data.get("graph", {})
    if graph:
        lines.append(f"graph {graph['vectors']} vectors on the device: {graph['device_seconds']:.1f} s, "
                     f"recall@10 at beam 64 {graph['device_recall_at_64']:.3f}")
        cmp = graph.get("compared")
        if cmp:
            lines.append(f"graph {cmp['vectors']} vectors: faiss-cpu {cmp['cpu_seconds']:.1f} s, device "
                         f"{cmp['device_seconds']:.1f} s ({cmp['speedup']:.1f}x); recall@10 at beam 64 cpu "
                         f"{cmp['cpu_recall_at_64']:.3f} device {cmp['device_recall_at_64']:.3f}")
    for row in data.get("filtered", []):
        lines.append(f"filter {row['selectivity']:.1%} {row['path']} ({row['plan']}): recall {row['recall']:.3f} "
                     f"{row['qps']:.0f} QPS always_k {row['always_k']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--bench", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="the device paths run by numpy (small default sizes)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--queries", type=int, default=2048)
    parser.add_argument("--centers", type=int, default=1000)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--commit", default=None, help="the commit measured (the device's copy has no .git)")
    parser.add_argument("--efs", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--budget", type=float, default=450.0, help="seconds the benchmark's stages may take")
    args = parser.parse_args(argv)
    if not (args.check or args.bench):
        parser.error("--check and/or --bench")
    small = args.cpu
    args.n = args.n or (20_000 if small else 1_000_000)
    args.dim = args.dim or (32 if small else 128)
    if small:
        args.queries, args.tenants, args.centers = min(args.queries, 512), min(args.tenants, 100), min(args.centers, 50)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = devices.select("numpy" if args.cpu else "cuda")
    print(f"device: {dev.label}", flush=True)
    ok = True
    if args.check:
        ok = check(dev, out)
        print(f"check: {'ok' if ok else 'DIFFERS (see check.json)'}", flush=True)
    if args.bench:
        bench(dev, out, args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
