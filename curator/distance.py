"""Compiled distance between two vectors, for the metrics of `metric.Metric` (smaller is better)."""

import numba

L2, COSINE, IP = 0, 1, 2  # the values of metric.Metric, as plain ints for compiled code


@numba.njit(cache=True, fastmath=True, inline="always")
def distance(a, b, metric):
    if metric == L2:
        acc = numba.float32(0.0)
        for j in range(a.shape[0]):
            diff = a[j] - b[j]
            acc += diff * diff
        return acc
    dot = numba.float32(0.0)
    for j in range(a.shape[0]):
        dot += a[j] * b[j]
    if metric == COSINE:
        return numba.float32(1.0) - dot
    return -dot
