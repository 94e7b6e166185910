"""Distance metrics: what a collection's `metric` means and how vectors are prepared for it.

Every metric is reported as a distance, smaller is better, so results sort the same way:
- "l2": squared Euclidean distance ||q - x||^2
- "cosine": 1 - cos(q, x); vectors are stored as given, with their inverse norms beside them, and
  compared by dot product scaled by those
- "ip": -<q, x>, the negated inner product
"""

from enum import IntEnum

import numpy as np

from .errors import InvalidArgumentError

FLOAT32_MAX = float(np.finfo(np.float32).max)

# The largest squared norm a vector may have (~4.3e37, |x| < ~6.5e18), for every metric. Distances
# are float32 and must stay finite for any two vectors the engine accepts:
# - l2: |a - b|^2 <= 2|a|^2 + 2|b|^2 <= 4 * bound; faiss and the batch scan use the expanded form
#   |a|^2 + |b|^2 - 2<a, b>, whose partial sums are bounded by the same 4 * bound;
# - ip: |<a, b>| <= |a| |b| <= bound; cosine compares unit vectors;
# - k-means centroids are means of accepted vectors, so no longer than they are.
# 4 * bound is half of float32's range: the other half absorbs rounding in long float32 sums
# (at most dim * 2^-24 relative, 0.4% at the largest dim). A row beyond float32's range makes
# faiss's k-means abort the process (`tree.ClusteringTree.train`), so this bound is a safety one.
# `search.prepare_query` has it compiled in as a constant.
MAX_SQUARED_NORM = FLOAT32_MAX / 8
MAX_NORM = MAX_SQUARED_NORM ** 0.5

# The shortest vector with a direction under cosine. Its inverse norm is kept as float32, and its
# float32 dot products lose at most dim * 2^-150 to underflow: relative to |x| >= 1e-30 that is
# below 1e-10 at any dim. Every shorter vector had a float32 norm of 0 and was refused before too,
# so no stored vector falls below it (`inverse_norms` runs again on opening a data directory).
MIN_COSINE_NORM = 1e-30


def within_norm_bound(vectors: np.ndarray) -> np.ndarray:
    """Per row of a float32 matrix: is its squared norm at most MAX_SQUARED_NORM (never for a row
    with NaN or infinity)? One float32 pass; float64 only for rows near the bound, where float32's
    rounding (or its overflow to inf) could decide."""
    with np.errstate(over="ignore", invalid="ignore"):
        squared = np.einsum("ij,ij->i", vectors, vectors)
    ok = squared <= 0.99 * MAX_SQUARED_NORM  # float32's sum is within 0.4% of the true one; False for NaN
    near = np.flatnonzero(~ok)
    if near.size:
        rows = vectors[near]
        with np.errstate(invalid="ignore"):
            ok[near] = np.einsum("ij,ij->i", rows, rows, dtype=np.float64) <= MAX_SQUARED_NORM
    return ok


class Metric(IntEnum):
    L2 = 0
    COSINE = 1
    IP = 2

    @classmethod
    def parse(cls, name: "str | Metric") -> "Metric":
        if isinstance(name, Metric):
            return name
        try:
            return _BY_NAME[str(name).lower()]
        except KeyError:
            raise InvalidArgumentError(
                f"unknown metric {name!r}: expected one of {', '.join(_BY_NAME)}"
            ) from None

    @property
    def label(self) -> str:
        return self.name.lower()

    def inverse_norms(self, vectors: np.ndarray) -> np.ndarray:
        """1 / |x| per row for cosine (a vector shorter than MIN_COSINE_NORM is an error), ones for
        the other metrics. Norms in float64: in float32 the squares of tiny values underflow and
        those of huge ones overflow, and either would give a wrong direction."""
        if self is not Metric.COSINE:
            return np.ones(vectors.shape[0], np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
        if not (norms >= MIN_COSINE_NORM).all():
            bad = int(np.flatnonzero(~(norms >= MIN_COSINE_NORM))[0])
            if norms[bad] == 0:
                raise InvalidArgumentError("cosine metric: a vector of length zero has no direction")
            raise InvalidArgumentError(
                f"cosine metric: vector {bad} is too short to have a direction in float32 "
                f"(length {norms[bad]:.2g}); at least {MIN_COSINE_NORM:g} is required")
        return (1.0 / norms).astype(np.float32)

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors as the index compares them (unit length for cosine)."""
        if self is not Metric.COSINE:
            return vectors
        return (vectors * self.inverse_norms(vectors)[:, None]).astype(np.float32, copy=False)


_BY_NAME = {"l2": Metric.L2, "cosine": Metric.COSINE, "ip": Metric.IP}
