"""Maximal marginal relevance (Carbonell and Goldstein, 1998) over numpy arrays.

Picks, one at a time, the candidate with the best `lambda_mult * sim(query, c) - (1 - lambda_mult)
* max sim(c, chosen)`: near the query, far from what was already chosen. Similarities are cosine
whatever the collection's metric, as MMR is defined on them.
"""

import numpy as np


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.maximum(norms, np.finfo(np.float32).tiny)  # a zero vector stays zero: similarity 0


def mmr(query, candidates, k: int, lambda_mult: float = 0.5) -> np.ndarray:
    """Indices into `candidates` ((n, d)) of the `min(k, n)` chosen, in the order chosen.
    `lambda_mult`: 1 ranks by similarity to the query alone, 0 by diversity alone."""
    if not 0.0 <= lambda_mult <= 1.0:
        raise ValueError(f"lambda_mult must be in [0, 1], got {lambda_mult!r}")
    rows = _unit(np.asarray(candidates, dtype=np.float32).reshape(len(candidates), -1))
    relevance = rows @ _unit(np.asarray(query, dtype=np.float32).ravel())
    n = min(int(k), rows.shape[0])
    chosen = np.empty(n, dtype=np.int64)
    closest = np.zeros(rows.shape[0], dtype=np.float32)  # each candidate's best similarity to the chosen
    free = np.ones(rows.shape[0], dtype=bool)
    for step in range(n):
        score = lambda_mult * relevance - (1.0 - lambda_mult) * closest
        score[~free] = -np.inf
        best = int(np.argmax(score))
        chosen[step], free[best] = best, False
        closest = np.maximum(closest, rows @ rows[best]) if step else rows @ rows[best]
    return chosen
