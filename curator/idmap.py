"""IdMap: the user's 64-bit vector ids to the engine's dense slots, looked up in batches.

An open-addressing hash table (linear probing) in two numpy arrays, edited and read by compiled
loops: a lookup of n ids is one call, and an entry costs 12 bytes a slot at a load of at most
2/3 (~20 bytes an id), against ~56 for a numba typed dict. Deletes leave tombstones, swept out
when the table is rebuilt on growth.

A slot value below -1 is a marker rather than a place in the vector store: `EVICTED` (-2) maps the
ids of vectors that are stored but not in memory (their tenants are inactive, see `states.py`),
so that they stay known to `lookup` (inserts collide with them, reads find them on the shelf).
"""

import numba
import numpy as np

_EMPTY = -1
_TOMBSTONE = -2  # ids are >= 0, so negative keys are free for bookkeeping
EVICTED = -2  # the slot of an evicted id (a slot, not a key: unrelated to _TOMBSTONE)


class IdMap:
    def __init__(self, capacity: int = 1024):
        self._keys = np.full(_power_of_two(capacity), _EMPTY, np.int64)
        self._slots = np.zeros(self._keys.size, np.int32)
        self._count = 0  # live ids
        self._used = 0  # live ids + tombstones

    @classmethod
    def of(cls, ids: np.ndarray, slots: np.ndarray) -> "IdMap":
        """A map holding exactly these (distinct) ids, sized for them."""
        built = cls(capacity=ids.size * 3 // 2 + 1)
        built.assign(ids, slots)
        return built

    def __len__(self) -> int:
        return self._count

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id, -1 where the id is unknown."""
        return _lookup(self._keys, self._slots, np.ascontiguousarray(ids, np.int64))

    def assign(self, ids: np.ndarray, slots: np.ndarray) -> None:
        """Map each id to its slot (new ids are added, known ones re-pointed)."""
        ids = np.ascontiguousarray(ids, np.int64)
        if (self._used + ids.size) * 3 > self._keys.size * 2:
            self._rebuild(self._count + ids.size)
        added, reused = _assign(self._keys, self._slots, ids, np.ascontiguousarray(slots, np.int32))
        self._count += added
        self._used += added - reused

    def discard(self, ids: np.ndarray) -> None:
        self._count -= _discard(self._keys, np.ascontiguousarray(ids, np.int64))

    def ids(self, slot: int | None = None) -> np.ndarray:
        """Every id held (unordered), or those mapped to `slot` (e.g. EVICTED): one pass over the table."""
        live = self._keys >= 0
        if slot is not None:
            live &= self._slots == slot
        return self._keys[live]

    @property
    def nbytes(self) -> int:
        return self._keys.nbytes + self._slots.nbytes

    def _rebuild(self, need: int) -> None:
        live = self._keys >= 0
        keys, slots = self._keys[live], self._slots[live]
        self._keys = np.full(_power_of_two(need * 3 // 2 + 1), _EMPTY, np.int64)
        self._slots = np.zeros(self._keys.size, np.int32)
        _assign(self._keys, self._slots, keys, slots)
        self._used = self._count = keys.size


def _power_of_two(n: int) -> int:
    return 1 << max(int(n - 1).bit_length(), 4)


@numba.njit(cache=True, inline="always")
def _home(key, mask):
    # Fibonacci hashing spreads sequential ids over the table
    return ((key * np.int64(-7046029254386353131)) >> np.int64(20)) & mask


@numba.njit(cache=True)
def _lookup(keys, slots, ids):
    mask = keys.size - 1
    out = np.empty(ids.size, np.int64)
    for i in range(ids.size):
        h = _home(ids[i], mask)
        out[i] = -1
        while keys[h] != _EMPTY:
            if keys[h] == ids[i]:
                out[i] = slots[h]
                break
            h = (h + 1) & mask
    return out


@numba.njit(cache=True)
def _assign(keys, slots, ids, values):
    mask = keys.size - 1
    added = 0
    reused = 0
    for i in range(ids.size):
        h = _home(ids[i], mask)
        free = -1
        while keys[h] != _EMPTY:
            if keys[h] == ids[i]:
                break
            if keys[h] == _TOMBSTONE and free < 0:
                free = h
            h = (h + 1) & mask
        if keys[h] == ids[i]:
            slots[h] = values[i]
            continue
        if free >= 0:
            h = free
            reused += 1
        keys[h] = ids[i]
        slots[h] = values[i]
        added += 1
    return added, reused


@numba.njit(cache=True)
def _discard(keys, ids):
    mask = keys.size - 1
    removed = 0
    for i in range(ids.size):
        h = _home(ids[i], mask)
        while keys[h] != _EMPTY:
            if keys[h] == ids[i]:
                keys[h] = _TOMBSTONE
                removed += 1
                break
            h = (h + 1) & mask
    return removed
