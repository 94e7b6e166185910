"""Small measuring helpers shared by the benchmarks: resident memory, latency summaries, tables."""

import ctypes
import gc
import socket
import time

import numpy as np
import psutil

_libc = ctypes.CDLL("libc.so.6")


def rss_bytes() -> int:
    """Resident memory of this process after returning freed heap pages to the system."""
    gc.collect()
    _libc.malloc_trim(0)
    return psutil.Process().memory_info().rss


def timed_loop(fn, items) -> np.ndarray:
    """Seconds each call fn(item) took, one call at a time."""
    out = np.empty(len(items))
    clock = time.perf_counter
    for i, item in enumerate(items):
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


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
