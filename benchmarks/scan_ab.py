"""The tenant scan of two revisions side by side, in one process, on the same trained index.

    python -m benchmarks.scan_ab [--against REV] [--dataset zipf|wordnet] [--ef N] [--queries N]
                                 [--rounds R]

`curator/search.py` as committed at REV (default HEAD) and as it is in the working tree are both
compiled in this process (numba, no cache) and called on the same index, query by query, in
alternating rounds: the time a query, recall@10 against brute force, and the candidates it
examined, for each, and the ratio of their times. The rest of the engine is the working tree's,
so this compares kernels only, free of the drift between runs that a whole benchmark has on a
shared machine (on this project's 2-core VM, +-15% from one run to the next, as much as most
kernel changes gain). Prints its table; writes nothing.
"""

import argparse
import subprocess
import time
import types
from pathlib import Path

import numpy as np

import curator
from curator_loadtest import data as D

ROOT = Path(__file__).resolve().parent.parent
K = 10


def kernel_module(source: str, name: str) -> types.ModuleType:
    """search.py's source compiled as a module of its own (imports made absolute, no cache)."""
    source = source.replace("from . import", "from curator import").replace("from .", "from curator.")
    module = types.ModuleType(name)
    exec(compile(source.replace("cache=True", "cache=False"), f"<{name}>", "exec"), module.__dict__)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", default="HEAD", help="the revision to compare with (default HEAD)")
    parser.add_argument("--dataset", choices=["zipf", "wordnet"], default="zipf")
    parser.add_argument("--ef", type=int, default=3072)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    old_source = subprocess.check_output(["git", "show", f"{args.against}:curator/search.py"], cwd=ROOT, text=True)
    kernels = {args.against: kernel_module(old_source, "committed"),
               "working tree": kernel_module((ROOT / "curator/search.py").read_text(), "working")}

    data = D.zipf_tenants() if args.dataset == "zipf" else D.glove_wordnet()
    truth = D.ground_truth(data, K, "cosine")
    col = curator.open(":memory:").create_collection("ab", dim=data.vectors.shape[1], metric="cosine")
    D.load_into(col, data)
    col.train()
    index = col.index
    n = min(args.queries, len(data.queries))
    queries = data.queries[:n] / np.linalg.norm(data.queries[:n], axis=1, keepdims=True)
    tenants = [index._tenant(D.tenant_label(int(t))) for t in data.query_tenants[:n]]
    index.tenancy.ensure_all(np.unique(tenants))
    scan = index._scan_arguments()
    none = np.zeros(0, np.uint8)
    slots, dists = np.empty(K, np.int64), np.empty(K, np.float32)

    def run(kernel) -> tuple[float, float, float]:
        found_ids = np.full((n, K), -1, np.int64)
        examined = 0
        start = time.perf_counter()
        for i in range(n):
            found, candidates = kernel.search_tenant(queries[i], K, args.ef, int(index.metric), tenants[i], *scan,
                                                     none, slots, dists)
            examined += candidates
            found_ids[i, :found] = index.slot_ids[slots[:found]]
        return (time.perf_counter() - start) / n * 1e6, D.recall_at_k(found_ids, truth[:n], K), examined / n

    for kernel in kernels.values():
        run(kernel)  # compiled, and the index warm
    best = {name: None for name in kernels}
    for _ in range(args.rounds):
        for name, kernel in kernels.items():
            result = run(kernel)
            if best[name] is None or result[0] < best[name][0]:
                best[name] = result
    print(f"{args.dataset}, ef {args.ef}, {n} queries, best of {args.rounds} alternating rounds")
    print("| kernel | us a query | recall@10 | candidates |\n|---|---|---|---|")
    for name, (us, recall, candidates) in best.items():
        print(f"| {name} | {us:.1f} | {recall:.4f} | {candidates:.0f} |")
    ratio = best[args.against][0] / best["working tree"][0]
    print(f"working tree: {ratio:.2f}x the speed of {args.against}")


if __name__ == "__main__":
    main()
