"""What payloads cost in memory: one tenant's wide payload on one vector of a large collection,
and a plain payload on every vector.

    python -m benchmarks.payload_memory [--vectors 225000] [--compare PATH]

An embedded in-memory collection of `--vectors` random 16-d vectors (one insert, no payloads),
measured in a process of its own per checkout:
- wide: the resident memory (measure.rss_bytes) and Payloads.nbytes before and after one
  set_payloads on ONE vector of 20 fields, each a list of 64 distinct keywords of ~100 characters
  (the amplification case of issue 20: the old dense columns took capacity x widest list x 4
  bytes per field), and the time that call took;
- full: in a second collection of as many vectors, every vector gets {"lang": keyword, "year":
  integer, "score": float} (the case dense columns are made for): Payloads.nbytes per vector and
  the time set_payloads took.
--compare PATH runs the same in a process from the checkout at PATH (benchmarks/checkout.py), for
example the code before sparse columns checked out with `git worktree add /tmp/payload_old 7b9a64c`.
Writes benchmarks/results/payload_memory.md and payload_memory.json.
"""

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .checkout import Checkout, title
from .measure import markdown_table, rss_bytes, write_results

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 16
FIELDS, KEYWORDS = 20, 64


def wide_payload() -> dict:
    return {f"field_{f}": [f"keyword-{f}-{w}-" + "x" * 90 for w in range(KEYWORDS)] for f in range(FIELDS)}


def measure(n: int) -> dict:
    """The figures of this process's checkout (run in a child: its RSS is the collection's)."""
    import curator

    col = curator.open(":memory:").create_collection("c", dim=DIM)
    col.insert(np.arange(n), np.random.default_rng(0).standard_normal((n, DIM)).astype(np.float32), tenant="t")
    payloads = col.index.payloads
    out = {"vectors": n, "capacity": int(col.index.vectors.shape[0]),
           "rss_before": rss_bytes(), "nbytes_before": payloads.nbytes}
    start = time.perf_counter()
    col.set_payloads([n // 2], wide_payload())
    out["set_seconds"] = time.perf_counter() - start
    payloads = col.index.payloads
    out.update(rss_after=rss_bytes(), nbytes_after=payloads.nbytes)
    assert col.get_payloads([n // 2]) == [wide_payload()]
    full = curator.open(":memory:").create_collection("full", dim=DIM)  # apart: the wide columns not counted
    full.insert(np.arange(n), np.zeros((n, DIM), np.float32), tenant="t")
    langs = ["en", "de", "fr", "es"]
    start = time.perf_counter()
    full.set_payloads(np.arange(n), [{"lang": langs[i % 4], "year": 1990 + i % 35, "score": i / 7} for i in range(n)])
    out["full_set_seconds"] = time.perf_counter() - start
    out["full_nbytes"] = full.index.payloads.nbytes
    return out


def run(checkout: Checkout, n: int) -> dict:
    child = checkout.popen(["-m", "benchmarks.payload_memory", "--child", "--vectors", str(n)],
                           stdout=subprocess.PIPE, text=True)
    output, _ = child.communicate()
    if child.returncode:
        raise SystemExit(f"the measuring process of {checkout.label} failed ({child.returncode})")
    return {"checkout": checkout.describe(), **json.loads(output.splitlines()[-1])}


def report(results: dict) -> str:
    mb = 1e6
    rows = [{"checkout": title(r["checkout"]), "capacity": r["capacity"],
             "rss_before": r["rss_before"] / mb, "rss_after": r["rss_after"] / mb,
             "rss_added": (r["rss_after"] - r["rss_before"]) / mb, "nbytes_before": r["nbytes_before"] / mb,
             "nbytes_after": r["nbytes_after"] / mb, "set_ms": r["set_seconds"] * 1e3,
             "full_b": r["full_nbytes"] / r["vectors"], "full_s": r["full_set_seconds"]}
            for r in results["runs"]]
    return "\n".join([
        "# Payload memory", "",
        f"{results['runs'][0]['vectors']:,} random {DIM}-d vectors in one in-memory collection; one vector then gets "
        f"{FIELDS} fields, each a list of {KEYWORDS} distinct ~100-character keywords (one set_payloads). "
        "RSS after returning freed heap pages (malloc_trim); Payloads.nbytes is the engine's own count. "
        "Then, in a second collection of as many vectors, every vector gets three single-valued fields "
        "(keyword, integer, float): bytes of payload columns per vector, and the seconds set_payloads took.", "",
        markdown_table(rows, [("checkout", "checkout", ""), ("capacity", "slots", ","),
                              ("rss_before", "RSS before (MB)", ".0f"), ("rss_after", "RSS after (MB)", ".0f"),
                              ("rss_added", "RSS added (MB)", ".1f"),
                              ("nbytes_before", "Payloads.nbytes before (MB)", ".2f"),
                              ("nbytes_after", "Payloads.nbytes after (MB)", ".2f"),
                              ("set_ms", "set_payloads (ms)", ".1f"),
                              ("full_b", "3 fields on every vector (bytes/vector)", ".1f"),
                              ("full_s", "... set in (s)", ".2f")]),
        "", f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}.", ""])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.payload_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=225_000)
    parser.add_argument("--compare", metavar="PATH", help="another checkout, measured the same way")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.vectors)))
        return
    checkouts = [Checkout.this()] + ([Checkout.other(args.compare)] if args.compare else [])
    results = {"runs": [run(checkout, args.vectors) for checkout in checkouts]}
    write_results(RESULTS, "payload_memory", results, report(results))


if __name__ == "__main__":
    main(sys.argv[1:])
