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
        """1 / |x| per row for cosine (a zero vector is an error), ones for the other metrics."""
        if self is not Metric.COSINE:
            return np.ones(vectors.shape[0], np.float32)
        norms = np.linalg.norm(vectors, axis=1)
        if (norms == 0).any():
            raise InvalidArgumentError("cosine metric: a vector of length zero has no direction")
        return (1.0 / norms).astype(np.float32)

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors as the index compares them (unit length for cosine)."""
        if self is not Metric.COSINE:
            return vectors
        return (vectors * self.inverse_norms(vectors)[:, None]).astype(np.float32, copy=False)


_BY_NAME = {"l2": Metric.L2, "cosine": Metric.COSINE, "ip": Metric.IP}
