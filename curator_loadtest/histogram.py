"""Latency histograms with fixed log-spaced buckets, merged across processes by adding arrays.

Every process uses the same bucket edges (1 us to 100 s, each bucket 2% wider than the last), so
a worker ships a few hundred integers per operation per second instead of one number per request,
and the parent adds them up. A percentile read from a bucket is within 1% of the true value.
"""

import math

import numpy as np

LOWEST = 1e-6  # seconds: anything faster lands in the first bucket
HIGHEST = 100.0  # seconds: anything slower lands in the last bucket
GROWTH = 1.02
N_BUCKETS = int(math.ceil(math.log(HIGHEST / LOWEST) / math.log(GROWTH))) + 1
_INV_LOG_GROWTH = 1.0 / math.log(GROWTH)
# The value a bucket stands for: the geometric middle of its edges.
MIDDLES = LOWEST * GROWTH ** (np.arange(N_BUCKETS) + 0.5)


def bucket_of(seconds: float) -> int:
    if seconds <= LOWEST:
        return 0
    return min(N_BUCKETS - 1, int(math.log(seconds / LOWEST) * _INV_LOG_GROWTH))


class Histogram:
    """Counts of latencies by bucket."""

    __slots__ = ("counts",)

    def __init__(self, counts: np.ndarray | None = None):
        self.counts = np.zeros(N_BUCKETS, np.int64) if counts is None else counts

    def record(self, seconds: float) -> None:
        self.counts[bucket_of(seconds)] += 1

    def add(self, other: "Histogram") -> "Histogram":
        self.counts += other.counts
        return self

    def sparse(self) -> tuple[np.ndarray, np.ndarray]:
        """(bucket indices, counts) of the non-empty buckets: what crosses a process boundary."""
        index = np.flatnonzero(self.counts)
        return index.astype(np.int32), self.counts[index]

    @classmethod
    def from_sparse(cls, index: np.ndarray, counts: np.ndarray) -> "Histogram":
        hist = cls()
        hist.counts[index] = counts
        return hist

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def percentile(self, q: float) -> float:
        """The latency (seconds) at percentile q (0..100); NaN when empty."""
        n = self.count
        if n == 0:
            return float("nan")
        rank = max(1, math.ceil(q / 100.0 * n))
        return float(MIDDLES[int(np.searchsorted(np.cumsum(self.counts), rank))])

    def max(self) -> float:
        nonzero = np.flatnonzero(self.counts)
        return float(MIDDLES[nonzero[-1]]) if nonzero.size else float("nan")

    def mean(self) -> float:
        n = self.count
        return float((self.counts * MIDDLES).sum() / n) if n else float("nan")
