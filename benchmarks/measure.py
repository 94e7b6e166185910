"""Small measuring helpers shared by the benchmarks: resident memory, latency summaries, tables,
CPU time of other processes, closed-loop callers."""

import contextlib
import ctypes
import gc
import json
import os
import threading
import time
from collections import Counter

import numpy as np
import psutil

from curator_loadtest.server import free_port  # noqa: F401 - where the tests and benchmarks take it from

_libc = ctypes.CDLL("libc.so.6")


def rss_bytes() -> int:
    """Resident memory of this process after returning freed heap pages to the system."""
    gc.collect()
    _libc.malloc_trim(0)
    return psutil.Process().memory_info().rss


def timed_loop(fn, items, gap: float = 0.0) -> np.ndarray:
    """Seconds each call fn(item) took, one call at a time (`gap` seconds of sleep before each)."""
    out = np.empty(len(items))
    clock = time.perf_counter
    for i, item in enumerate(items):
        if gap:
            time.sleep(gap)
        start = clock()
        fn(item)
        out[i] = clock() - start
    return out


def latency_summary(seconds: np.ndarray) -> dict:
    return {
        "qps": len(seconds) / seconds.sum(),
        "p50_ms": float(np.percentile(seconds, 50) * 1e3),
        "p99_ms": float(np.percentile(seconds, 99) * 1e3),
    }


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """rows of dicts -> markdown; columns are (key, header, format)."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("" if value is None else format(value, fmt) if fmt else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(results_dir, name: str, results: dict, text: str) -> None:
    """results_dir/name.json (the figures) and name.md (the report), and the report on stdout."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{name}.json").write_text(json.dumps(results, indent=1))
    (results_dir / f"{name}.md").write_text(text)
    print(text)


_BLAS_SETTERS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                 "scipy_openblas_set_num_threads", "openblas_set_num_threads64_")


def _loaded_openblas() -> list[tuple[str, ctypes.CDLL, str]]:
    """(path, library, setter name) of each OpenBLAS loaded in this process (numpy's, faiss's...)."""
    with open("/proc/self/maps") as f:
        paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    found = []
    for path in paths:
        lib = ctypes.CDLL(path)
        for setter in _BLAS_SETTERS:
            if hasattr(lib, setter):
                found.append((path, lib, setter))
                break
    return found


@contextlib.contextmanager
def blas_threads(n: int):
    """Run the block with every loaded OpenBLAS at n threads, then put back what was there.

    Single-query benchmarks mean one thread, BLAS included. On this 2-core machine a single-query
    matrix-vector product through numpy's OpenBLAS with 2 threads was also measured ~30x slower
    than with 1 (8 ms against 0.2 ms for 40 000 x 50), at random, depending on thread state."""
    libs = _loaded_openblas()
    before = []
    for _, lib, setter in libs:
        getter = getattr(lib, setter.replace("set_", "get_"), None)
        before.append(getter() if getter is not None else None)
        getattr(lib, setter)(n)
    try:
        yield [path for path, _, _ in libs]
    finally:
        for (_, lib, setter), old in zip(libs, before):
            if old is not None:
                getattr(lib, setter)(old)


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process and its descendants have used so far, from
    /proc/<pid>/stat: utime + stime of the process and of each live descendant, plus cutime +
    cstime (the children it has reaped). Read before and after a window, so that what another
    process on the same cores does (the load generator) does not count."""
    total = 0
    for p in [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces and ')'
        except FileNotFoundError:  # a child that ended meanwhile: its parent's cutime has it
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / _TICKS


def calls_until(call, start: float, end: float, first: int, n: int, warm: int = 0) -> tuple[list[float], Counter]:
    """call(i) back to back for i = first, first + 1, ... (mod n) from `start` until `end`
    (time.monotonic(), comparable between processes), after `warm` calls before `start`: seconds
    of each call that succeeded and ended in the window, and the failures by exception class."""
    clock = time.monotonic
    for i in range(first, first + warm):
        call(i % n)
    time.sleep(max(0.0, start - clock()))
    seconds, failures, i = [], Counter(), first
    while (begun := clock()) < end:
        try:
            call(i % n)
        except Exception as error:  # noqa: BLE001 - counted, the load goes on
            failures[type(error).__name__] += 1
        else:
            if (ended := clock()) <= end:
                seconds.append(ended - begun)
        i += 1
    return seconds, failures


def closed_loop(call, n: int, threads: int, start: float, end: float, first: int = 0,
                warm: int = 0) -> tuple[np.ndarray, Counter]:
    """`threads` callers, each running calls_until over its own share of items 0..n-1 (thread j
    starts at item first + j * n / threads): every successful call's seconds, and the failures."""
    out: list = [None] * threads

    def run(j: int) -> None:
        try:
            out[j] = calls_until(call, start, end, first + j * n // threads, n, warm)
        except BaseException as error:  # a warm-up call failed: raised again below
            out[j] = error

    workers = [threading.Thread(target=run, args=(j,)) for j in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for o in out:
        if isinstance(o, BaseException):
            raise o
    failures = Counter()
    for _, f in out:
        failures.update(f)
    return np.array([s for seconds, _ in out for s in seconds]), failures
