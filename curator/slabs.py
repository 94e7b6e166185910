"""Slabs: many growable lists of int32 in one flat pool, editable in batches from compiled code.

The tenant structures (shortlists of vector slots, each tenant's directory of shortlists, each
vector's access list of tenants) are millions of short lists that grow and shrink one value at a
time. Python lists or one numpy array per list would cost ~100 bytes each and could not be read
by a compiled search; here every list is a region [start, start + size) of one `data` array with
room for `cap` values. A full list moves to the end of the pool with 1.5x the room; the regions it
leaves behind are reclaimed by `compact` once they outweigh the live data.

Edits take parallel arrays (lists[i], values[i]) and run in one compiled loop: no Python loop per
value. Values within one list are unordered.
"""

import numba
import numpy as np

_EMPTY = np.empty(0, np.int32)


class Slabs:
    def __init__(self, n_lists: int = 0, capacity: int = 1024):
        self.data = np.empty(capacity, np.int32)
        self.start = np.zeros(max(n_lists, 16), np.int64)
        self.size = np.zeros(max(n_lists, 16), np.int32)
        self.cap = np.zeros(max(n_lists, 16), np.int32)
        self.end = 0
        self.garbage = 0

    def reserve(self, n_lists: int) -> None:
        """Make list ids 0..n_lists-1 valid (new lists start empty)."""
        have = self.start.shape[0]
        if n_lists <= have:
            return
        grown = max(n_lists, have + (have >> 1))
        for attr in ("start", "size", "cap"):
            old = getattr(self, attr)
            new = np.zeros(grown, old.dtype)
            new[:have] = old
            setattr(self, attr, new)

    def renumber(self, old_ids: np.ndarray) -> None:
        """List old_ids[i] becomes list i; lists not named become empty."""
        n = old_ids.size
        for attr in ("start", "size", "cap"):
            old = getattr(self, attr)
            new = np.zeros_like(old)
            new[:n] = old[old_ids]
            setattr(self, attr, new)
        self.garbage = self.end - int(self.cap.sum())
        self._maybe_compact()

    def append(self, lists: np.ndarray, values: np.ndarray) -> None:
        lists = np.ascontiguousarray(lists, np.int64)
        if lists.size > 1:
            # Room for the whole batch in one move per list, with 1/8 to spare, instead of
            # growing 1.5x at a time and leaving a trail of abandoned regions.
            named, counts = np.unique(lists, return_counts=True)
            need = self.size[named] + counts
            short = need > self.cap[named]
            if short.any():
                need = need[short]
                self.data, self.end, garbage = _relocate(
                    self.data, self.end, self.start, self.size, self.cap, named[short], need + (need >> 3) + 1)
                self.garbage += garbage
        self.data, self.end, garbage = _append(
            self.data, self.end, self.start, self.size, self.cap, lists, np.ascontiguousarray(values, np.int32))
        self.garbage += garbage
        self._maybe_compact()

    def remove(self, lists: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Remove values[i] from lists[i]; returns which pairs were present."""
        return _remove(
            self.data, self.start, self.size,
            np.ascontiguousarray(lists, np.int64), np.ascontiguousarray(values, np.int32),
        )

    def contains(self, lists: np.ndarray, values: np.ndarray) -> np.ndarray:
        return _contains(
            self.data, self.start, self.size,
            np.ascontiguousarray(lists, np.int64), np.ascontiguousarray(values, np.int32),
        )

    def clear(self, lists: np.ndarray) -> None:
        """Empty the lists and give their room back to the pool."""
        lists = np.asarray(lists, np.int64)
        self.garbage += int(self.cap[lists].sum())
        self.size[lists] = 0
        self.cap[lists] = 0
        self._maybe_compact()

    def get(self, list_id: int) -> np.ndarray:
        """A read-only view of one list (valid until the next edit)."""
        s = self.start[list_id]
        view = self.data[s : s + self.size[list_id]]
        view.flags.writeable = False
        return view

    def gather(self, lists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated values of several lists, and which list each came from (as an index into `lists`)."""
        lists = np.ascontiguousarray(lists, np.int64)
        if lists.size == 0:
            return _EMPTY, np.empty(0, np.int64)
        return _gather(self.data, self.start, self.size, lists)

    def compact(self) -> None:
        """Pack the live lists together, each with 1/8 to spare."""
        self.data, self.end = _compact(self.data, self.start, self.size, self.cap)
        self.garbage = 0

    @property
    def nbytes(self) -> int:
        """Bytes in use: the pool up to its high-water mark (pages past it are never touched) and the list table."""
        return self.end * self.data.itemsize + self.start.nbytes + self.size.nbytes + self.cap.nbytes

    def _maybe_compact(self) -> None:
        if self.garbage > max(self.end // 2, 1 << 16):
            self.compact()


@numba.njit(cache=True)
def _move(data, end, start, size, cap, l, new_cap):
    """Move list l to the end of the pool with room for new_cap values; returns (data, end)."""
    if end + new_cap > data.shape[0]:
        grown = np.empty(max(data.shape[0] + (data.shape[0] >> 1), end + new_cap), data.dtype)
        grown[:end] = data[:end]
        data = grown
    s = start[l]
    for j in range(size[l]):
        data[end + j] = data[s + j]
    start[l] = end
    cap[l] = new_cap
    return data, end + new_cap


@numba.njit(cache=True)
def _relocate(data, end, start, size, cap, lists, new_caps):
    garbage = 0
    for i in range(lists.shape[0]):
        garbage += cap[lists[i]]
        data, end = _move(data, end, start, size, cap, lists[i], new_caps[i])
    return data, end, garbage


@numba.njit(cache=True)
def _append(data, end, start, size, cap, lists, values):
    garbage = 0
    for i in range(lists.shape[0]):
        l = lists[i]
        if size[l] == cap[l]:
            garbage += cap[l]
            data, end = _move(data, end, start, size, cap, l, cap[l] + (cap[l] >> 1) + 2)
        data[start[l] + size[l]] = values[i]
        size[l] += 1
    return data, end, garbage


@numba.njit(cache=True)
def _remove(data, start, size, lists, values):
    found = np.zeros(lists.shape[0], np.bool_)
    for i in range(lists.shape[0]):
        l = lists[i]
        s = start[l]
        n = size[l]
        for j in range(n):
            if data[s + j] == values[i]:
                data[s + j] = data[s + n - 1]
                size[l] = n - 1
                found[i] = True
                break
    return found


@numba.njit(cache=True)
def _contains(data, start, size, lists, values):
    found = np.zeros(lists.shape[0], np.bool_)
    for i in range(lists.shape[0]):
        s = start[lists[i]]
        for j in range(size[lists[i]]):
            if data[s + j] == values[i]:
                found[i] = True
                break
    return found


@numba.njit(cache=True)
def _gather(data, start, size, lists):
    total = 0
    for i in range(lists.shape[0]):
        total += size[lists[i]]
    out = np.empty(total, data.dtype)
    origin = np.empty(total, np.int64)
    pos = 0
    for i in range(lists.shape[0]):
        s = start[lists[i]]
        for j in range(size[lists[i]]):
            out[pos] = data[s + j]
            origin[pos] = i
            pos += 1
    return out, origin


@numba.njit(cache=True)
def _compact(data, start, size, cap):
    total = 0
    for l in range(start.shape[0]):
        if cap[l] > 0:
            cap[l] = size[l] + (size[l] >> 3) + 1
            total += cap[l]
    out = np.empty(total + (total >> 3) + 1024, data.dtype)
    end = 0
    for l in range(start.shape[0]):
        if cap[l] > 0:
            s = start[l]
            for j in range(size[l]):
                out[end + j] = data[s + j]
            start[l] = end
            end += cap[l]
    return out, end
