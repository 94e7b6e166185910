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

A row is `row_width(dim)` bytes, the code and zeros after it (64 for 50 dimensions), and rows
start on cache lines: the scan's loop over a row then has a length fixed when it is compiled,
which the compiler turns into whole vector instructions, and a row of up to 64 bytes is one
cache line, where a 50-byte row straddled two three times in four. On the 200k Zipf set at ef
3072 this took a query's scan from 35.8 to 31.5 us (benchmarks/scan_ab.py); it costs 14 bytes a
vector at 50 dimensions (2 bytes a (vector, tenant) pair there), none at multiples of 64.
"""

import numpy as np

RERANK = 2  # the scan keeps RERANK * k candidates by approximate distance, then ranks them exactly
CLIP = 0.001  # each dimension's scale spans its CLIP .. 1 - CLIP quantiles
LEVELS = 255
FIT_ROWS = 20_000  # the quantiles are taken over at most this many rows (evenly spaced)
CHUNK = 8192  # rows encoded at a time: float32 temporaries stay small (they would stay in the heap)
LINE = 64  # bytes in a cache line


def row_width(dim: int) -> int:
    """Bytes of a code's row: 64 for 33 to 64 dimensions (the width the scan has a loop of fixed
    length for), a multiple of 64 above (rows on cache lines), the dimension itself below."""
    return dim if dim <= LINE // 2 else -(-dim // LINE) * LINE


def _rows(rows: int, width: int) -> np.ndarray:
    """A zeroed (rows, width) uint8 matrix whose first row starts on a cache line."""
    buffer = np.zeros(rows * width + LINE, np.uint8)
    skip = -buffer.ctypes.data % LINE
    return buffer[skip : skip + rows * width].reshape(rows, width)


class ScalarCodes:
    """A uint8 matrix of codes parallel to the index's vectors (one row a slot), and its scale."""

    __slots__ = ("lo", "step", "matrix")

    def __init__(self, lo: np.ndarray, step: np.ndarray, rows: int):
        self.lo = np.ascontiguousarray(lo, np.float32)
        self.step = np.ascontiguousarray(step, np.float32)
        self.matrix = _rows(rows, row_width(self.lo.shape[0]))

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
        dim = self.lo.shape[0]
        for start in range(0, len(slots), CHUNK):
            self.matrix[slots[start : start + CHUNK], :dim] = self.encode(prepared[start : start + CHUNK])

    def grow(self, rows: int) -> None:
        """Room for `rows` slots, the codes written so far kept."""
        grown = _rows(rows, self.matrix.shape[1])
        grown[: self.matrix.shape[0]] = self.matrix
        self.matrix = grown

    @property
    def unpadded(self) -> np.ndarray:
        """The codes without the zeros that pad their rows: a (rows, dim) view."""
        return self.matrix[:, : self.lo.shape[0]]

    @property
    def nbytes(self) -> int:
        return self.matrix.nbytes + self.lo.nbytes + self.step.nbytes


NONE = np.zeros((0, 0), np.uint8)  # the kernels' codes argument when a collection has none (untrained)
NO_SCALE = np.zeros(0, np.float32)
