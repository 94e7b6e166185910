"""Filtered search: Curator's planner against hnswlib + filter callback, faiss HNSW + IDSelectorBitmap
and an exact scan, on payload filters correlated and uncorrelated with the vectors.

    python -m benchmarks.filtered [--quick] [--queries 1000] [--rebuild]

Data (curator_loadtest/data.py, ``glove_filtered``): all 400 000 GloVe 6B 50-d vectors, cosine, with
payloads ``{"u": int, "cluster": "c<k>"}``. ``u`` is uniform in [0, 1000), independent of the vector
(uncorrelated: ``{"u": {"lt": 1}}`` matches 0.1%, ``lt 10`` 1%, ...); ``cluster`` is the vector's
spherical k-means cluster (1 000 clusters), and a correlated filter is ``{"cluster": {"in": [...]}}``
over neighbouring clusters covering about the target fraction, i.e. one region of the space. Its
queries come from inside the region (correlated near) or outside it (correlated far). Selectivities
0.1%, 1%, 10%, 50%. Every vector is inserted, so queries are perturbed GloVe vectors (a random row
plus a random direction of half its length); 1 000 per filter, k=10. Ground truth: exact top-10 over
the matching vectors (cached under .cache/data/).

Methods, one query at a time on one thread, each at a few settings of its recall knob:
1. Curator: one collection with hnsw=True, ``col.search(q, k, filter=...)``, letting the planner pick
   exact / tree / graph (plan counts reported); and the same with ``tenant="all"``.
2. hnswlib (M=32, ef_construction=80) with a Python filter callback: slow at narrow filters, so
   about HNSWLIB_SECONDS per setting (fewer queries where it is slow; every query where it is fast,
   since the best of a few short passes of few queries would flatter it).
3. faiss IndexHNSWFlat (M=32, efConstruction=80, inner product on unit vectors) with an
   IDSelectorBitmap built once per filter, not per query.
4. Exact scan: matching vectors gathered once per filter, one matrix-vector product per query.
The hnswlib and faiss graphs are built once and cached under .cache/data/ (with their build times).
Writes benchmarks/results/filtered.md and filtered.json (--quick: filtered_quick.*).
"""

import argparse
import gc
import json
import os
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np

import curator
from curator_loadtest import data as D

from .baselines import ExactScan, FaissHnswSelector, HnswlibFilter
from .measure import blas_threads, latency_summary, markdown_table, rss_bytes, timed_loop

K = 10
TARGET_RECALL = 0.95
# Knob sweeps run in ascending order and stop once recall reaches STOP_RECALL: larger settings
# only cost more, and the narrow filters are slow.
STOP_RECALL = 0.995
# Curator's ef: candidates a tree search examines (the collection default is 2048); the graph plan
# scales its beam from it.
CURATOR_EF = [256, 512, 768, 1024, 1280, 1536, 2048, 3072, 4096, 8192, 16384]
HNSWLIB_EF = [16, 32, 64, 128, 256]
FAISS_EF = [16, 64, 256, 1024, 4096]
HNSWLIB_SECONDS = 8.0
MAX_SECONDS = 10.0  # per method, filter and knob: a slow setting is measured on fewer queries
REPEAT_BUDGET = 1.5  # passes are repeated while they took less than this in all, and the fastest counts
MAX_PASSES = 10
RETIME_ROUNDS = 6  # each method's best setting is timed again in this many alternating rounds...
RETIME_PASS_SECONDS = 0.5  # ...when a pass over every query takes at most this
INSERT_BATCH = 10_000
RESULTS = Path(__file__).parent / "results"


# ---------------------------------------------------------------------------
# Running queries


def run_queries(search, queries: np.ndarray, max_queries: int | None = None, max_seconds: float = MAX_SECONDS):
    """Results (n, K), per-query seconds of the fastest pass, and what search returned besides ids.

    search(q) -> (ids, extra). The first pass stops after max_queries or max_seconds; the same n
    queries are run again while the passes so far took under REPEAT_BUDGET (up to MAX_PASSES in
    all), since this machine is shared and the least disturbed pass is the fairest: a pass of a
    fast method lasts milliseconds, and one disturbance would decide it. Python's garbage
    collector is held off while timing (collected before), the same for every method.
    """
    limit = len(queries) if max_queries is None else min(max_queries, len(queries))
    results = np.full((limit, K), -1, np.int64)
    extras = []
    seconds = np.empty(limit)
    gc.collect()
    gc.disable()
    try:
        return _timed_passes(search, queries, limit, results, extras, seconds, max_seconds)
    finally:
        gc.enable()


def _timed_passes(search, queries, limit, results, extras, seconds, max_seconds):
    """run_queries' passes, with the collector off."""
    clock = time.perf_counter
    began = clock()
    n = 0
    while n < limit and (n == 0 or clock() - began < max_seconds):
        start = clock()
        ids, extra = search(queries[n])
        seconds[n] = clock() - start
        results[n, : len(ids)] = ids[:K]
        extras.append(extra)
        n += 1
    best = seconds[:n].copy()
    spent = best.sum()
    for _ in range(MAX_PASSES - 1):
        if spent > REPEAT_BUDGET:
            break
        again = np.empty(n)
        for i in range(n):
            start = clock()
            search(queries[i])
            again[i] = clock() - start
        spent += again.sum()
        if again.sum() < best.sum():
            best = again
    return results[:n], best, extras


def sweep(method: str, variant: str, search, knobs, set_knob, queries, truth, allowed: np.ndarray,
          max_queries=None, max_seconds=MAX_SECONDS) -> list[dict]:
    """One row per knob setting, ascending, stopping once recall reaches STOP_RECALL.

    Besides recall and speed, a row counts results that do not match the filter (`wrong`, which
    must be 0) and queries answered with fewer than min(K, matches) results (`short`)."""
    rows = []
    for knob in knobs:
        set_knob(knob)
        results, seconds, extras = run_queries(search, queries, max_queries, max_seconds)
        n = len(seconds)
        returned = results[results >= 0]
        row = {"method": method, "variant": variant, "knob": knob, "queries": n,
               "recall": D.recall_at_k(results, truth[:n], K), **latency_summary(seconds),
               "wrong": int(np.count_nonzero(~allowed[returned])),
               "short": int(np.count_nonzero((results >= 0).sum(axis=1) < min(K, int(allowed.sum()))))}
        plans = Counter(e for e in extras if e is not None)
        if plans:
            row["plans"] = dict(sorted(plans.items()))
        rows.append(row)
        print(f"    {method:32s} {knob_text(row):>14s}  recall {row['recall']:.4f}  "
              f"{row['qps']:>9,.0f} QPS  ({n} queries){'  ' + str(row.get('plans')) if plans else ''}", flush=True)
        if row["recall"] >= STOP_RECALL:
            break
    return rows


def retime(rows: list[dict], runners: dict, queries: np.ndarray) -> None:
    """Time each method's best setting again, in alternating passes over the same queries, and keep
    each one's fastest pass. This machine's speed drifts by tens of percent from one minute to the
    next, so a fast method timed alone in a slow minute would lose to a rival timed in a fast one;
    in alternation both meet the same minutes. Only settings that answered every query with a
    pass of at most RETIME_PASS_SECONDS: a longer pass is already an average over time."""
    contenders = []
    for method, (search, set_knob) in runners.items():
        best = best_row([r for r in rows if r["method"] == method])
        if best and best["queries"] == len(queries) and len(queries) / best["qps"] <= RETIME_PASS_SECONDS:
            contenders.append((best, search, set_knob))
    if len(contenders) < 2:
        return
    fastest = {id(row): None for row, _, _ in contenders}
    gc.collect()
    gc.disable()
    try:
        for _ in range(RETIME_ROUNDS):
            for row, search, set_knob in contenders:
                set_knob(row["knob"])
                seconds = timed_loop(search, queries)
                if fastest[id(row)] is None or seconds.sum() < fastest[id(row)].sum():
                    fastest[id(row)] = seconds
    finally:
        gc.enable()
    for row, _, _ in contenders:
        row.update(latency_summary(fastest[id(row)]), retimed=True)
    print("    re-timed in alternation: " + ", ".join(f"{row['method']} {row['qps']:,.0f}"
                                                     for row, _, _ in contenders), flush=True)


def knob_text(row) -> str:
    knob = row["knob"]
    if row["method"].startswith("Curator"):
        return f"ef={knob}"
    if row["method"].startswith("faiss"):
        return f"efSearch={knob}"
    return "exact" if knob is None else f"ef={knob}"


# ---------------------------------------------------------------------------
# Building


def build_baseline(index, vectors: np.ndarray, data_name: str, rebuild: bool) -> dict:
    """Build the index once, or load it from the cache; its build time is kept with it."""
    if not hasattr(index, "save"):
        start = time.perf_counter()
        index.build(vectors)
        return {"build_s": time.perf_counter() - start, "cached": False}
    params = {"data": data_name, "n": int(vectors.shape[0]), **index.params()}
    path = D.cache_file("index", params, ".bin")
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists() and not rebuild:
        start = time.perf_counter()
        index.load(path, vectors)
        meta = json.loads(meta_path.read_text())
        return {**meta, "load_s": time.perf_counter() - start, "cached": True}
    r0 = rss_bytes()
    start = time.perf_counter()
    index.build(vectors)
    build_s = time.perf_counter() - start
    meta = {"build_s": build_s, "memory_mb": (rss_bytes() - r0) / 1e6, "built": time.strftime("%Y-%m-%d %H:%M")}
    path.parent.mkdir(parents=True, exist_ok=True)
    index.save(path)
    meta_path.write_text(json.dumps(meta))
    return {**meta, "cached": False}


def engine_missing() -> str | None:
    """Why this Curator cannot run the benchmark (None when it can): an engine from before
    payload filters, the planner and the hnsw collection option."""
    try:
        x = np.random.default_rng(0).standard_normal((64, 50)).astype(np.float32)
        col = curator.open(":memory:").create_collection("probe", dim=50, metric="cosine", hnsw=True)
        col.insert(np.arange(64), x, tenant="all", payloads=[{"u": i, "cluster": "c0"} for i in range(64)])
        res = col.search(x[0], k=10, filter={"u": {"lt": 32}})
        if not hasattr(res, "plan"):
            return "search results carry no plan"
        return None
    except Exception as e:  # noqa: BLE001 - any failure means "not there yet"
        return f"{type(e).__name__}: {e}"


def warm_up_curator(data: D.FilteredData) -> None:
    """Compile every kernel (insert, each plan) once, so that no timing includes the compiler."""
    n = min(20_000, data.vectors.shape[0])
    col = curator.open(":memory:").create_collection("warm", dim=50, metric="cosine", hnsw=True)
    rows = np.arange(n)
    col.insert(rows, data.vectors[rows], tenant="all", payloads=data.payloads(rows))
    for fi, f in enumerate(data.filters):
        for q in data.queries[data.queries_of(fi)[:3]]:
            col.search(q, K, filter=f["spec"])
            col.search(q, K, tenant="all", filter=f["spec"])


def build_curator(data: D.FilteredData):
    col = curator.open(":memory:").create_collection("glove", dim=50, metric="cosine", hnsw=True)
    n = data.vectors.shape[0]
    r0 = rss_bytes()
    start = time.perf_counter()
    for lo in range(0, n, INSERT_BATCH):
        rows = np.arange(lo, min(lo + INSERT_BATCH, n))
        col.insert(rows, data.vectors[rows], tenant="all", payloads=data.payloads(rows))
    build_s = time.perf_counter() - start
    return col, {"build_s": build_s, "memory_mb": (rss_bytes() - r0) / 1e6, "cached": False,
                 "insert_vectors_per_s": n / build_s}


# ---------------------------------------------------------------------------
# Summary


def best_row(rows: list[dict]) -> dict | None:
    """The fastest setting reaching TARGET_RECALL, else the one with the best recall."""
    if not rows:
        return None
    ok = [r for r in rows if r["recall"] >= TARGET_RECALL]
    retimed = [r for r in ok if r.get("retimed")]  # chosen before, and timed again (`retime`)
    if retimed:
        return retimed[0]
    return max(ok, key=lambda r: r["qps"]) if ok else max(rows, key=lambda r: (r["recall"], r["qps"]))


def summarise(rows: list[dict], filters: list[dict], methods: list[str]) -> list[dict]:
    out = []
    for fi, f in enumerate(filters):
        entry = {"filter": fi, "kind": f["kind"], "target": f["target"], "fraction": f["fraction"],
                 "matches": f["matches"], "name": f["name"], "methods": {}}
        for m in methods:
            b = best_row([r for r in rows if r["filter"] == fi and r["method"] == m])
            if b is not None:
                entry["methods"][m] = b
        baselines = [b for m, b in entry["methods"].items() if not m.startswith("Curator")]
        good = [b for b in baselines if b["recall"] >= TARGET_RECALL]
        best_base = max(good, key=lambda r: r["qps"]) if good else None
        entry["best_baseline"] = best_base and best_base["method"]
        for m in methods:
            ours = entry["methods"].get(m)
            # A ratio only means something at equal recall: none when Curator misses the target.
            if m.startswith("Curator") and ours and best_base and ours["recall"] >= TARGET_RECALL:
                ours["ratio_vs_best_baseline"] = ours["qps"] / best_base["qps"]
        out.append(entry)
    return out


def cell(row: dict | None, n_queries: int) -> str:
    if row is None:
        return ""
    mark = "" if row["recall"] >= TARGET_RECALL else " ✗"
    text = f"{row['recall']:.3f}{mark} / {row['qps']:,.0f} ({knob_text(row)}"
    if row["queries"] < n_queries:
        text += f", {row['queries']} q"
    return text + ")"


def summary_table(summary: list[dict], methods: list[str], n_queries: int) -> str:
    columns = [("kind", "filter kind", ""), ("sel", "selectivity (actual)", ""), ("matches", "matches", ",")]
    columns += [(m, m, "") for m in methods]
    curators = [m for m in methods if m.startswith("Curator")]
    columns += [(f"plans:{m}", f"plans ({m})", "") for m in curators]
    columns += [(f"ratio:{m}", f"{m} QPS / best baseline", "") for m in curators]
    columns += [("best_baseline", "best baseline", "")]
    table = []
    for e in summary:
        row = {"kind": e["kind"].replace("_", " "), "sel": f"{e['target']:.1%} ({e['fraction']:.2%})",
               "matches": e["matches"], "best_baseline": e["best_baseline"] or "none reaches 0.95"}
        for m in methods:
            r = e["methods"].get(m)
            row[m] = cell(r, n_queries)
            if m in curators and r is not None:
                row[f"plans:{m}"] = ", ".join(f"{p} {c}" for p, c in r.get("plans", {}).items())
                ratio = r.get("ratio_vs_best_baseline")
                row[f"ratio:{m}"] = f"{ratio:.2f}" if ratio is not None else "- (recall < 0.95)"
        table.append(row)
    return markdown_table(table, columns)


ALL_COLUMNS = [("kind", "filter kind", ""), ("target", "selectivity", ".1%"), ("method", "method", ""),
               ("knob_text", "knob", ""), ("queries", "queries", ""), ("recall", "recall@10", ".4f"),
               ("qps", "QPS", ",.0f"), ("p50_ms", "p50 ms", ".3f"), ("p99_ms", "p99 ms", ".3f"),
               ("wrong", "wrong", ""), ("short", "short", ""), ("plans_text", "plans", "")]


# ---------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 000 vectors and 200 queries per filter")
    parser.add_argument("--queries", type=int, default=None, help="queries per filter (default 1000; quick 200)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached hnswlib and faiss graphs")
    parser.add_argument("--methods", default="curator,hnswlib,faiss,exact")
    args = parser.parse_args(argv)
    n_vectors = 50_000 if args.quick else None
    n_queries = args.queries or (200 if args.quick else 1000)
    wanted = set(args.methods.split(","))
    began = time.perf_counter()
    version = engine_version()  # now: the engine's modules are already imported

    import faiss

    data = D.glove_filtered(n_vectors=n_vectors, n_queries=n_queries)
    truth = D.ground_truth(data.as_tenants(), K, "cosine")
    n = data.vectors.shape[0]
    print(f"== {data.name}: {n:,} vectors, {len(data.filters)} filters x {n_queries} queries "
          f"({time.perf_counter() - began:.0f} s)", flush=True)

    builds, indexes = {}, {}
    for key, index in (("hnswlib", HnswlibFilter()), ("faiss", FaissHnswSelector()), ("exact", ExactScan())):
        if key not in wanted:
            continue
        builds[index.name] = build_baseline(index, data.vectors, data.name, args.rebuild)
        indexes[key] = index
        print(f"  built {index.name}: {builds[index.name]}", flush=True)
    faiss.omp_set_num_threads(1)  # searches run on one thread; the builds above used both cores

    col, missing = None, None
    if "curator" in wanted:
        missing = engine_missing()
        if missing is None:
            warm_up_curator(data)
            col, builds["Curator"] = build_curator(data)
            print(f"  built Curator: {builds['Curator']}", flush=True)
        else:
            print(f"  Curator skipped: the filtered planner is not there yet ({missing})", flush=True)

    rows = []
    with blas_threads(1):  # one query at a time on one thread, numpy's matrix products included
        for fi, f in enumerate(data.filters):
            rows += bench_filter(data, truth, fi, f, col, indexes, began)

    methods = list(dict.fromkeys(r["method"] for r in rows))
    summary = summarise(rows, data.filters, methods)
    total_s = time.perf_counter() - began
    write_report(args, data, n_queries, builds, rows, summary, methods, missing, total_s, version)


def bench_filter(data, truth, fi, f, col, indexes, began) -> list[dict]:
    """Every method on one filter and its queries."""
    qi = data.queries_of(fi)
    queries, ftruth = data.queries[qi], [truth[i] for i in qi]
    print(f"  [{time.perf_counter() - began:5.0f} s] {f['kind']} {f['target']:.1%}: {f['name']}, "
          f"{f['matches']:,} matches", flush=True)
    allowed = np.zeros(data.vectors.shape[0], bool)
    allowed[data.matching(fi)] = True
    found, runners = [], {}
    if col is not None:
        spec, knob = f["spec"], {"ef": None}

        def plain(q):
            res = col.search(q, K, filter=spec, ef=knob["ef"])
            return res[0], res.plan

        def with_tenant(q):
            res = col.search(q, K, tenant="all", filter=spec, ef=knob["ef"])
            return res[0], res.plan

        def set_ef(ef):
            knob["ef"] = ef

        found += sweep("Curator", "filter", plain, CURATOR_EF, set_ef, queries, ftruth, allowed)
        found += sweep("Curator (tenant)", "tenant + filter", with_tenant, CURATOR_EF, set_ef, queries, ftruth,
                       allowed)
        runners = {"Curator": (plain, set_ef), "Curator (tenant)": (with_tenant, set_ef)}
    for key, knobs, cap, seconds in (("hnswlib", HNSWLIB_EF, None, HNSWLIB_SECONDS),
                                    ("faiss", FAISS_EF, None, MAX_SECONDS),
                                    ("exact", [None], None, MAX_SECONDS)):
        index = indexes.get(key)
        if index is None:
            continue
        index.restrict(data.matching(fi))
        search = lambda q, index=index: (index.search(q, K), None)  # noqa: E731
        found += sweep(index.name, "", search, knobs, index.set_knob, queries, ftruth, allowed, cap, seconds)
        runners[index.name] = (search, index.set_knob)
    retime(found, runners, queries)
    for r in found:
        r.update(filter=fi, kind=f["kind"], target=f["target"], fraction=f["fraction"])
    return found


def engine_version() -> str:
    """The commit the engine was measured at, and whether curator/ had uncommitted changes."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "curator"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in curator/" if dirty else "")


def write_report(args, data, n_queries, builds, rows, summary, methods, missing, total_s, version):
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "filtered_quick" if args.quick else "filtered"
    n = data.vectors.shape[0]
    for r in rows:
        r["knob_text"] = knob_text(r) + (" ↻" if r.get("retimed") else "")
        r["plans_text"] = ", ".join(f"{p} {c}" for p, c in r.get("plans", {}).items())
    build_rows = [{"method": m, **b, "cached": "yes (time of the cached build)" if b.get("cached") else "no"}
                  for m, b in builds.items()]
    lines = [
        f"# Filtered search: {n:,} GloVe 6B 50-d vectors, cosine, k={K}",
        "",
        f"`python -m benchmarks.filtered{' --quick' if args.quick else ''}` on {platform.node()} "
        f"({platform.machine()}, {os.cpu_count()} cores), one query at a time on one thread (BLAS "
        f"included; builds use every core), Curator at {version}; whole run "
        f"{total_s / 60:.1f} min.",
        "",
        "Payloads: `u` uniform integer in [0, 1000), independent of the vector (uncorrelated; filter "
        "`{\"u\": {\"lt\": s*1000}}`); `cluster`, the vector's spherical k-means cluster out of 1 000 "
        "(correlated; filter `{\"cluster\": {\"in\": [...]}}` over neighbouring clusters covering about "
        "the target fraction, i.e. one region). Correlated filters are asked queries from inside the region "
        "(near) and from outside it (far).",
        f"Queries: {n_queries} per filter, each a GloVe vector of the base set plus a random direction of half "
        "its length (every vector is inserted, so none is held out). Recall@10 = |result ∩ truth| / "
        "min(10, |truth|) against an exact scan of the matching vectors.",
        "",
        f"Each cell: recall@10 / QPS (setting) at the fastest setting reaching recall {TARGET_RECALL} "
        "(✗: none did; its best recall is shown). Knob sweeps run upwards and stop once recall reaches "
        f"{STOP_RECALL}. hnswlib with a Python filter callback is measured for about "
        f"{HNSWLIB_SECONDS:.0f} s per setting; any setting stops after about "
        f"{MAX_SECONDS:.0f} s (smaller query counts are shown). faiss: the IDSelectorBitmap is built "
        "once per filter, not per query. Best baseline: the fastest of hnswlib, faiss and exact scan "
        f"reaching recall {TARGET_RECALL}. Each setting's QPS is its fastest pass over the queries (up to "
        f"{MAX_PASSES} passes while they are short); then each method's chosen setting, where a pass over "
        f"every query takes at most {RETIME_PASS_SECONDS} s, is timed again in {RETIME_ROUNDS} rounds of "
        "alternating passes, the fastest pass of each counting, so that rivals meet the same moments of "
        "this shared machine (re-timed rows are marked ↻ in the table of every setting).",
        "",
    ]
    if missing:
        lines += [f"**Curator not measured**: the filtered planner was not available ({missing}).", ""]
    wrong = {m: sum(r["wrong"] for r in rows if r["method"] == m) for m in methods}
    lines += ["## Summary", "", summary_table(summary, methods, n_queries), "",
              "Results that do not match the filter, over every setting: "
              + ", ".join(f"{m} {w}" for m, w in wrong.items()) + ".", "", "## Build", "",
              markdown_table(build_rows, [("method", "method", ""), ("build_s", "build s", ".1f"),
                                          ("memory_mb", "RSS growth MB", ",.0f"), ("cached", "loaded from cache", ""),
                                          ("insert_vectors_per_s", "insert vectors/s", ",.0f")]),
              "", "## Every setting", "",
              "wrong: returned ids that do not match the filter (must be 0); short: queries answered with "
              "fewer than min(10, matches) ids.", "", markdown_table(rows, ALL_COLUMNS), ""]
    text = "\n".join(lines)
    (RESULTS / f"{stem}.md").write_text(text)
    payload = {"data": data.name, "curator_commit": version, "vectors": n, "queries_per_filter": n_queries, "k": K,
               "filters": data.filters, "builds": builds, "curator_missing": missing, "summary": summary,
               "rows": rows, "total_s": total_s}
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=_json_default))
    print(text, flush=True)


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"cannot serialise {type(x).__name__}")


if __name__ == "__main__":
    main()
