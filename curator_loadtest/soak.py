"""The soak: one fixed rate for a long time while the server's memory and open files are sampled.

Memory is judged after a settling period (caches, RocksDB memtables and the clients' live id sets
fill up first): the median RSS of the last tenth of the run against the median just after
settling, and a least-squares slope over the settled part. The read-back of every acknowledged
write is `verify.read_back`, run by the caller once the load has stopped.
"""

import threading
import time

import numpy as np

from .driver import Phase, WorkerPool
from .report import phase_summary


class ServerSampler:
    """RSS, open files and threads of one process every `interval` seconds, on a thread."""

    def __init__(self, pid: int, interval: float, run_start: float):
        import psutil  # the `loadtest` extra; `curator loadtest -h` works without it

        self.process, self.interval, self.run_start = psutil.Process(pid), interval, run_start
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="server-sampler", daemon=True)

    def sample(self) -> None:
        with self.process.oneshot():
            self.samples.append({"t": round(time.monotonic() - self.run_start, 2),
                                 "rss_mb": self.process.memory_info().rss / 2**20,
                                 "open_files": self.process.num_fds(), "threads": self.process.num_threads()})

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


def memory_trend(samples: list[dict], settle_fraction: float, max_growth_pct: float) -> dict:
    t = np.array([s["t"] for s in samples])
    rss = np.array([s["rss_mb"] for s in samples])
    span = t[-1] - t[0]
    settled_at = t[0] + settle_fraction * span
    settled = rss[(t >= settled_at) & (t <= settled_at + 0.1 * span)]
    end = rss[t >= t[-1] - 0.1 * span]
    after = t >= settled_at
    slope = float(np.polyfit(t[after], rss[after], 1)[0]) if after.sum() >= 3 else float("nan")
    base = float(np.median(settled)) if settled.size else float(rss[0])
    growth = float(np.median(end)) - base
    return {"start_mb": float(rss[0]), "settled_at_s": float(settled_at - t[0]), "settled_mb": base,
            "end_mb": float(np.median(end)), "max_mb": float(rss.max()), "growth_mb": growth,
            "growth_pct": 100 * growth / base, "growth_from_start_mb": float(np.median(end) - rss[0]),
            "slope_mb_per_hour": slope * 3600, "max_growth_pct": max_growth_pct,
            "flat": 100 * growth / base <= max_growth_pct}


def run_soak(pool: WorkerPool, rate: float, seconds: float, pid: int | None, run_start: float, progress=None,
             interval: float = 5.0, settle_fraction: float = 0.2, max_growth_pct: float = 10.0) -> tuple[dict, dict]:
    """The soak phase's summary and the soak verdict (memory, open files, errors)."""
    phase = Phase("soak", "open", seconds, rate=rate)
    if pid is None:
        step = phase_summary(pool.run(phase, progress), run_start)
        return step, {"rate": rate, "seconds": seconds, "errors": sum(step["errors"].values()), "samples": [],
                      "memory": None, "open_files": None, "note": "no server pid: memory not sampled"}
    with ServerSampler(pid, interval, run_start) as sampler:
        step = phase_summary(pool.run(phase, progress), run_start)
    samples = sampler.samples
    files = [s["open_files"] for s in samples]
    return step, {"rate": rate, "seconds": seconds, "errors": sum(step["errors"].values()),
                  "unsent": step["unsent"], "samples": samples,
                  "memory": memory_trend(samples, settle_fraction, max_growth_pct),
                  "open_files": {"start": files[0], "end": files[-1], "max": max(files)},
                  "threads": {"start": samples[0]["threads"], "end": samples[-1]["threads"]}}
