"""How fast one tenant is exported and imported, against the SDK's batched insert of the same data.

    python -m benchmarks.tenant_archive [--vectors 50000] [--dim 128]

One tenant of `--vectors` random vectors (cosine), each with a small payload ({"n": i, "lang":
keyword}), in memory, embedded and through a server in its own process on loopback (`curator
serve --data :memory:`, the blocking SDK), each in the same run:
- insert: `col.insert` in batches of 1 000 into a new collection (the reference rate);
- export: `db.export_tenant(tenant, path, collection=...)` to a file, and how long the
  collection's shared lock was held for the copy (embedded: `EmbeddedCollection.tenant_rows`);
- import: `db.import_tenant(path, collection=...)` into a new collection.
Rates are vectors per second over the call's wall time. The collections do not train their tree
(train_size above the tenant's size): a background retrain started by one phase would otherwise
run into the next, and both writes would pay for the same training. Writes
benchmarks/results/tenant_archive.md and tenant_archive.json.
"""

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

import curator

from .measure import markdown_table, write_results
from .remote import start_server

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 1_000


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def measure(db, label: str, vectors: np.ndarray, payloads: list[dict], workdir: Path, lock_hold=None) -> dict:
    n, dim = vectors.shape
    ids = np.arange(n, dtype=np.int64)
    options = {"train_size": n + 1}  # no training during the timed writes (see the docstring)
    col = db.create_collection(f"{label}-source", dim=dim, metric="cosine", **options)

    def insert():
        for start in range(0, n, BATCH):
            col.insert(ids[start:start + BATCH], vectors[start:start + BATCH], tenant="t",
                       payloads=payloads[start:start + BATCH])

    insert_s, _ = timed(insert)
    path = workdir / f"{label}.npz"
    export_s, archive = timed(lambda: db.export_tenant("t", path, collection=col.name, cache=False))
    assert len(archive) == n and archive.vectors.tobytes() == vectors.tobytes()
    db.create_collection(f"{label}-target", dim=dim, metric="cosine", **options)
    import_s, report = timed(lambda: db.import_tenant(path, collection=f"{label}-target"))
    assert report.inserted == n
    row = {"where": label, "vectors": n, "dim": dim, "insert_s": insert_s, "insert_per_s": n / insert_s,
           "export_s": export_s, "export_per_s": n / export_s, "import_s": import_s, "import_per_s": n / import_s,
           "export_vs_insert": insert_s / export_s, "import_vs_insert": insert_s / import_s,
           "file_bytes": path.stat().st_size}
    if lock_hold is not None:
        row["lock_held_s"] = lock_hold(col.name)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.vectors, args.dim)).astype(np.float32)
    payloads = [{"n": i, "lang": ("en", "de", "fr")[i % 3]} for i in range(args.vectors)]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        workdir = Path(work)
        with curator.open(":memory:") as db:
            def lock_hold(name):  # the copy under the shared lock alone, the best of three
                col = db.collection(name)
                return min(timed(lambda: col.tenant_rows("t"))[0] for _ in range(3))

            rows.append(measure(db, "embedded", vectors, payloads, workdir, lock_hold))
        server, address = start_server(":memory:")
        try:
            with curator.connect(address) as db:
                rows.append(measure(db, "remote", vectors, payloads, workdir))
        finally:
            server.terminate()
            server.wait()
    results = {"machine": platform.node(), "python": platform.python_version(), "rows": rows}
    table = markdown_table(rows, [
        ("where", "where", ""), ("insert_per_s", "insert (batches of 1 000) vectors/s", ",.0f"),
        ("export_per_s", "export to a file vectors/s", ",.0f"), ("export_vs_insert", "export / insert", ".1f"),
        ("import_per_s", "import from the file vectors/s", ",.0f"), ("import_vs_insert", "import / insert", ".2f"),
        ("lock_held_s", "shared lock held s", ".3f"), ("file_bytes", "file bytes", ",")])
    text = (f"# Per-tenant export and import\n\n`python -m benchmarks.tenant_archive --vectors {args.vectors} "
            f"--dim {args.dim}`: one tenant of {args.vectors:,} random {args.dim}-d cosine vectors, each with a "
            "two-field payload, in memory, collections untrained (train_size above the tenant); remote: "
            "`curator serve --data :memory:` in its own process on loopback, the blocking SDK. One run; rates "
            "over each call's wall time.\n\n" + table + "\n")
    write_results(RESULTS, "tenant_archive", results, text)


if __name__ == "__main__":
    main()
