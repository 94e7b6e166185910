"""Compiled distance from a query to one row of a matrix, for the metrics of `metric.Metric`.

Smaller is better. Rows are indexed in place (matrix[row, j]) rather than sliced: a slice in
compiled code is a reference-counted view, and that bookkeeping would cost more than the
arithmetic on the hot path.
"""

import numba

L2, COSINE, IP = 0, 1, 2  # the values of metric.Metric, as plain ints for compiled code


@numba.njit(cache=True, fastmath=True, inline="always")
def dot_row(q, matrix, row):
    acc = numba.float32(0.0)
    for j in range(q.shape[0]):
        acc += q[j] * matrix[row, j]
    return acc


@numba.njit(cache=True, fastmath=True, inline="always")
def l2_row(q, matrix, row):
    acc = numba.float32(0.0)
    for j in range(q.shape[0]):
        diff = q[j] - matrix[row, j]
        acc += diff * diff
    return acc


@numba.njit(cache=True, fastmath=True, inline="always")
def distance_row(q, matrix, row, metric):
    """Distance from q to matrix[row]; for cosine both must already be unit length."""
    if metric == L2:
        return l2_row(q, matrix, row)
    if metric == COSINE:
        return numba.float32(1.0) - dot_row(q, matrix, row)
    return -dot_row(q, matrix, row)
