"""Compiled distance from a query to one row of a matrix, for the metrics of `metric.Metric`.

Smaller is better. Rows are indexed in place (matrix[row, j]) rather than sliced: a slice in
compiled code is a reference-counted view, and that bookkeeping would cost more than the
arithmetic on the hot path.

Rows kept flat (`flat_rows`: end to end in one buffer, SPAN spare zeros after the last) are read
by loops of a length fixed when they are compiled: for 33 to 64 dimensions, SPAN values from a
row's start, the next row's weighed by zero. Over a bound known only at run time (GloVe's 50),
the compiler's vector loop, unrolled to 64 values a step on AVX-512, never ran and the values
went one at a time. Their indexes are unsigned: numba checks a signed index for a negative
value (counted from the end), and that check kept the loops from being vectorised. The tenant
scan's codes (codes.py), the tree's centroids and an exact plan's rows are kept so, and read in
search.py, where each loop is written out in the function that runs it: a shared inlined
function for the float rows' distance took the ranking from 29 to 47 us a Zipf query and the
exact scan 5.8x longer (not vectorised).
"""

import numba
import numpy as np

L2, COSINE, IP = 0, 1, 2  # the values of metric.Metric, as plain ints for compiled code
SPAN = 64  # values a loop of fixed length reads from a flat row's start (rows of 33 to 64 values)


def flat_rows(rows: int, dim: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(flat, matrix): a zeroed buffer of rows * dim values and SPAN spare ones, and the (rows,
    dim) matrix viewing it."""
    flat = np.zeros(rows * dim + SPAN, dtype)
    return flat, flat[: rows * dim].reshape(rows, dim)


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
