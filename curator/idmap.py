"""IdMap: the user's 64-bit vector ids to the engine's dense slots, looked up in batches.

A numba typed dict behind batch calls, so a lookup of n ids is one compiled loop rather than
n Python dict probes.
"""

import numba
import numpy as np
from numba import types
from numba.typed import Dict


class IdMap:
    def __init__(self):
        self._map = Dict.empty(key_type=types.int64, value_type=types.int64)

    def __len__(self) -> int:
        return len(self._map)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id, -1 where the id is unknown."""
        return _lookup(self._map, np.ascontiguousarray(ids, np.int64))

    def assign(self, ids: np.ndarray, slots: np.ndarray) -> None:
        _assign(self._map, np.ascontiguousarray(ids, np.int64), np.ascontiguousarray(slots, np.int64))

    def discard(self, ids: np.ndarray) -> None:
        _discard(self._map, np.ascontiguousarray(ids, np.int64))

    @property
    def nbytes(self) -> int:
        # A typed dict entry holds key, value and hash (24 bytes) plus ~1.5 index bytes of 8.
        return len(self._map) * 40


@numba.njit(cache=True)
def _lookup(d, ids):
    out = np.empty(ids.shape[0], np.int64)
    for i in range(ids.shape[0]):
        out[i] = d.get(ids[i], -1)
    return out


@numba.njit(cache=True)
def _assign(d, ids, slots):
    for i in range(ids.shape[0]):
        d[ids[i]] = slots[i]


@numba.njit(cache=True)
def _discard(d, ids):
    for i in range(ids.shape[0]):
        if ids[i] in d:
            del d[ids[i]]
