"""Scalar codes: every stored vector, prepared for the metric, kept again as one byte a dimension,
which a tenant's scan reads in place of the float32 row.

A scan of shortlists reads rows scattered over the vectors matrix. A 50-d float32 row is four
cache lines and its code one; on a collection larger than the CPU's caches the loads, not the
arithmetic, set the scan's pace. So the scan (`search.py`) ranks candidates by their codes'
approximate distance, keeps the best `RERANK` times k, and orders those by exact distance:
every answer carries its exact distance, and an approximation can only cost recall, never a
wrong distance or a vector the tenant may not see.

For dimension j a byte c stands for lo[j] + step[j] * c. lo and step span the dimension from
its `CLIP` to its 1 - `CLIP` quantile over the vectors the tree was trained on; values outside are
clipped (an outlier then ranks worse, and the exact rerank still measures it truly). The scale is
fitted whenever the tree is trained, and every vector is encoded again then; vectors written
later are encoded on the same scale. Codes are derived from the vectors, so never stored: an
opened data directory encodes its vectors again.

The rows are flat (distance.py's `flat_rows`: `flat`, which the scan reads, and `matrix`, its
(rows, dim) view), so that the scan's loops over a code have a fixed length: it costs SPAN bytes
in all, not a padded row each.
"""

import numpy as np

from .distance import flat_rows

RERANK = 2  # the scan keeps RERANK * k candidates by approximate distance, then ranks them exactly
CLIP = 0.001  # each dimension's scale spans its CLIP .. 1 - CLIP quantiles
LEVELS = 255
FIT_ROWS = 20_000  # the quantiles are taken over at most this many rows (evenly spaced)
CHUNK = 8192  # rows encoded at a time: float32 temporaries stay small (they would stay in the heap)


class ScalarCodes:
    """A uint8 matrix of codes parallel to the index's vectors (one row a slot), and its scale."""

    __slots__ = ("lo", "step", "flat", "matrix")

    def __init__(self, lo: np.ndarray, step: np.ndarray, rows: int):
        self.lo = np.ascontiguousarray(lo, np.float32)
        self.step = np.ascontiguousarray(step, np.float32)
        self.flat, self.matrix = flat_rows(rows, self.lo.shape[0], np.uint8)

    @classmethod
    def fit(cls, prepared: np.ndarray, rows: int) -> "ScalarCodes":
        """The scale of `prepared` (rows prepared for the metric), for a matrix of `rows` rows."""
        sample = prepared[:: max(1, len(prepared) // FIT_ROWS)]
        lo, hi = np.quantile(sample, [CLIP, 1.0 - CLIP], axis=0) if len(sample) else np.zeros((2, prepared.shape[1]))
        return cls(lo, (hi - lo) / LEVELS, rows)

    def encode(self, prepared: np.ndarray) -> np.ndarray:
        scaled = np.divide(prepared - self.lo, self.step, out=np.zeros(prepared.shape, np.float32),
                           where=self.step > 0)
        return np.clip(np.rint(scaled), 0, LEVELS).astype(np.uint8)

    def write(self, slots: np.ndarray, prepared: np.ndarray) -> None:
        """Row i of `prepared` encoded into slot slots[i]."""
        for start in range(0, len(slots), CHUNK):
            self.matrix[slots[start : start + CHUNK]] = self.encode(prepared[start : start + CHUNK])

    def grow(self, rows: int) -> None:
        """Room for `rows` slots, the codes written so far kept."""
        flat, matrix = flat_rows(rows, self.lo.shape[0], np.uint8)
        matrix[: self.matrix.shape[0]] = self.matrix
        self.flat, self.matrix = flat, matrix

    @property
    def nbytes(self) -> int:
        return self.flat.nbytes + self.lo.nbytes + self.step.nbytes


NONE = np.zeros(0, np.uint8)  # the kernels' codes argument when a collection has none (untrained)
NO_SCALE = np.zeros(0, np.float32)
