"""`curator import` of a large Parquet file, interrupted and resumed, against the SDK's batched insert.

    python -m benchmarks.bulk_import [--vectors 400000] [--batch 8192]

The file: the first `--vectors` GloVe 6B 50-d vectors (real data, datasets.md) with their word in
a payload ({"word", "n", "length", "initial"}), owned by 8 tenants in contiguous blocks (a file
exported tenant by tenant looks like this), written once with pyarrow's defaults (one large row
group) under .cache/bulk_import/. Embedded, each phase writes into a fresh data
directory (durability "sync", as `curator import --data` does by default), in the same run:
- insert: `col.insert` in batches of `--batch` rows, one call per owner in a batch, from arrays
  and payload dicts already in memory (the reference rate; reading the file is not counted);
- import: `curator.bulk.import_file` with the same batch, stopped after half of the batches as an
  interruption would, then run again, which resumes from the progress file (its first batch
  written again with upsert). The rate is the file's rows over both runs' wall time, reading and
  parsing the file included.
The imported collection is then checked equal to the file (ids without duplicate or gap, vectors
bit-exact, payloads, owners), and exported to Parquet (`export_collection`, for its rate). A small
insert and upsert first compile the write path, so neither timed phase pays for it. Collections
do not train their tree (train_size above the file's rows): a background training started by one
phase would run into the next. The same two phases run again through a server in its own process
on loopback (`curator serve --data :memory:`, the blocking SDK; `--embedded-only` skips it). Writes
benchmarks/results/bulk_import.md and bulk_import.json.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

import curator
from curator import bulk

from .measure import markdown_table, write_results
from .remote import start_server

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "bulk_import"
TENANTS = 8


def make_file(n: int) -> Path:
    """The Parquet file of n GloVe vectors with payloads (cached)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curator_loadtest.data import glove, glove_words

    path = CACHE / f"glove-{n}.parquet"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    vectors = glove(n)
    words = glove_words()[:n]
    owners = [f"tenant-{i * TENANTS // n}" for i in range(n)]
    payloads = [json.dumps({"word": w, "n": i, "length": len(w), "initial": w[:1]}, ensure_ascii=False)
                for i, w in enumerate(words)]
    table = pa.table({"id": np.arange(n, dtype=np.int64),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
                      "tenant": owners, "payload": payloads})
    temporary = path.with_suffix(".tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)
    return path


def load_all(path: Path):
    """The file's rows in memory, as the SDK reference gets them."""
    rows = list(bulk.read_rows(path, batch=1 << 30))[0]
    return rows.ids, rows.vectors, rows.tenants, rows.payloads


def warm_up(expected) -> None:
    """Compile the write path (numba) before either phase is timed."""
    ids, vectors, owners, payloads = expected
    with curator.open(":memory:") as db:
        col = db.create_collection("warm", dim=vectors.shape[1], metric="cosine")
        col.insert(ids[:2000], vectors[:2000], tenant="warm", payloads=payloads[:2000])
        col.upsert(ids[:1000], vectors[:1000], tenant="warm", payloads=payloads[:1000])


def insert_rate(db, name, expected, batch: int, options: dict) -> float:
    ids, vectors, owners, payloads = expected
    col = db.create_collection(name, dim=vectors.shape[1], metric="cosine", **options)
    began = time.perf_counter()
    for lo in range(0, ids.size, batch):
        hi = min(lo + batch, ids.size)
        part = owners[lo:hi]
        for owner in dict.fromkeys(part.tolist()):
            picked = np.flatnonzero(part == owner) + lo
            col.insert(ids[picked], vectors[picked], tenant=owner, payloads=[payloads[i] for i in picked])
    seconds = time.perf_counter() - began
    assert col.count() == ids.size
    return ids.size / seconds


def import_rate(db, name, path: Path, expected, batch: int, options: dict, workdir: Path) -> dict:
    ids, vectors, owners, payloads = expected
    half = (ids.size // batch) // 2
    col = db.create_collection(name, dim=vectors.shape[1], metric="cosine", **options)
    progress = workdir / f"{name}.progress"
    first = bulk.import_file(col, path, batch=batch, progress_file=progress, limit_batches=half, show_progress=False)
    assert not first.done and col.count() == first.rows
    second = bulk.import_file(col, path, batch=batch, progress_file=progress, show_progress=False)
    assert second.done and second.resumed_at == first.rows
    seconds = first.seconds + second.seconds
    pages, after = [], -1
    while True:
        page, after = col.scroll(after_id=after, limit=100_000)
        pages.append(page)
        if after == -1:
            break
    equal = np.concatenate(pages).tolist() == ids.tolist()
    for lo in range(0, ids.size, 50_000):
        part = ids[lo:lo + 50_000]
        equal &= col.get(part).tobytes() == vectors[lo:lo + 50_000].tobytes()
        equal &= col.get_payloads(part) == payloads[lo:lo + 50_000]
    for owner in dict.fromkeys(owners.tolist()):
        equal &= bool(col.owned(ids[owners == owner], tenant=owner).all())
    exported = bulk.export_collection(col, workdir / f"{name}.parquet", show_progress=False)
    return {"rate": ids.size / seconds, "seconds": seconds, "interrupted_at": first.rows,
            "first_run_s": first.seconds, "resumed_run_s": second.seconds, "equal_to_file": bool(equal),
            "export_rate": exported.rate, "export_s": exported.seconds}


def embedded(path, expected, batch, options) -> dict:
    """Each phase into a fresh data directory (durability sync)."""
    with tempfile.TemporaryDirectory(dir=CACHE) as data, curator.open(data) as db:
        insert = insert_rate(db, "insert", expected, batch, options)
    with tempfile.TemporaryDirectory(dir=CACHE) as data, curator.open(data) as db:
        imported = import_rate(db, "import", path, expected, batch, options, Path(data))
    return {"insert_rate": insert, "import": imported, "ratio": imported["rate"] / insert}


def remote(path, expected, batch, options) -> dict:
    """Through a server in its own process on loopback (`curator serve --data :memory:`)."""
    process, address = start_server(":memory:")
    try:
        with tempfile.TemporaryDirectory(dir=CACHE) as work, curator.connect(address, timeout=60) as db:
            insert = insert_rate(db, "insert", expected, batch, options)
            imported = import_rate(db, "import", path, expected, batch, options, Path(work))
    finally:
        process.terminate()
        process.wait()
    return {"insert_rate": insert, "import": imported, "ratio": imported["rate"] / insert}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=400_000)
    parser.add_argument("--batch", type=int, default=bulk.BATCH)
    parser.add_argument("--embedded-only", action="store_true")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    path = make_file(args.vectors)
    expected = load_all(path)
    options = {"train_size": args.vectors + 1}
    warm_up(expected)
    runs = {"embedded": embedded(path, expected, args.batch, options)}
    if not args.embedded_only:
        runs["remote"] = remote(path, expected, args.batch, options)
    results = {"vectors": args.vectors, "dim": int(expected[1].shape[1]), "batch": args.batch,
               "file_mb": round(path.stat().st_size / 1e6, 1), **runs, "target_ratio": 0.8,
               "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "wall_s": time.perf_counter() - began}
    rows = []
    for where, run in runs.items():
        imported = run["import"]
        rows += [{"where": where, "phase": f"SDK insert, batches of {args.batch}", "rate": run["insert_rate"],
                  "seconds": args.vectors / run["insert_rate"]},
                 {"where": where, "phase": f"import, interrupted at row {imported['interrupted_at']} and resumed",
                  "rate": imported["rate"], "seconds": imported["seconds"], "ratio": run["ratio"],
                  "equal": imported["equal_to_file"]},
                 {"where": where, "phase": "export of the imported collection (Parquet)",
                  "rate": imported["export_rate"], "seconds": imported["export_s"]}]
    table = markdown_table(rows, [("where", "", ""), ("phase", "phase", ""), ("rate", "vectors/s", ",.0f"),
                                  ("seconds", "seconds", ".1f"), ("ratio", "import / insert", ".2f"),
                                  ("equal", "equal to the file", "")])
    text = (f"# Bulk import\n\n`python -m benchmarks.bulk_import --vectors {args.vectors} --batch {args.batch}`: "
            f"a Parquet file ({results['file_mb']} MB) of {args.vectors} GloVe 6B 50-d vectors, each with a "
            f"four-field payload, 8 owners; embedded (durability sync) and through a server on loopback, "
            f"collections untrained (see the module docstring).\n\n{table}\n\n"
            f"Target: import / insert >= 0.8. 'equal to the file': ids without duplicate or gap, vectors "
            f"bit-exact, payloads, owners. {os.cpu_count()} CPUs, shared with other work.\n")
    write_results(RESULTS, "bulk_import", results, text)


if __name__ == "__main__":
    main()
