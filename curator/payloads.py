"""Metadata payloads of a collection's vectors, kept as sparse columns over slots, and what a filter
matches.

A payload is a flat dict of field -> value, one per vector. A value's type is one of

    keyword   str                 integer  int (64-bit)        float  float
    bool      bool                keywords list of str (a filter matches if any element does)

Types are not fixed collection-wide: the vectors of one tenant may hold "year" as a keyword and
another's as an integer. Each (field, type) pair that some vector holds is a column, and a filter
condition picks the columns by the type of the value it compares with (`curator.filters`).

Memory follows what the vectors hold, never the collection's capacity times its fields: a column
keeps only the slots (the rows of the vector store) that have a value, ascending, beside their
values; keywords are int32 codes into the column's vocabulary, and a list of keywords is one entry
per element under the same slot. The one array over every slot is the *shape* of each slot's
payload (4 bytes a slot, whatever the number of fields): an id of the tuple of columns the slot has
values in, so that a write or a delete touches only the columns its slots held. A column left
without values is dropped, and unused vocabulary and shapes are compacted once they outnumber the
live ones, so rewriting one vector forever does not grow anything.

Bounds, so that no tenant takes the collection's payload room from another:
- MAX_PAYLOAD_FIELDS (256) fields in one payload, MAX_KEYWORDS (64) elements in one list;
- at most BASE_COLUMNS (4 096) columns plus COLUMNS_PER_PAYLOAD (16) for each vector holding a
  payload. A batch of b payloads may thus always bring 16 * b new columns of its own, whatever
  other tenants created (unless deletes since shrank the allowance below what is held); one tenant
  needs 1 vector in 16 of the collection to fill it, not a few vectors.

A matching mask is one vectorised comparison per column a condition reads, scattered into a mask
over slots (a column whose slots are exactly 0..m-1, as after retraining when every vector has the
field, is written into the mask without a scatter). Payloads arrive as Python dicts (the user's
form): splitting a batch of dicts into columns is one loop over the dicts; everything after that
is numpy.

This module knows slots, not user ids or tenants; it never decides a search plan.
"""

import sys

import numba
import numpy as np

from .errors import InvalidArgumentError

KEYWORD, INTEGER, FLOAT, BOOL, KEYWORDS = "keyword", "integer", "float", "bool", "keywords"
MAX_PAYLOAD_FIELDS = 256  # fields in one payload
MAX_KEYWORDS = 64  # elements in one list value
BASE_COLUMNS = 4_096  # (field, type) columns of a collection, before the allowance per vector
COLUMNS_PER_PAYLOAD = 16  # more columns allowed for each vector that holds a payload
SHOWN_CHARS = 60  # of a field name or value quoted in an error message

_DTYPES = {KEYWORD: np.int32, KEYWORDS: np.int32, INTEGER: np.int64, FLOAT: np.float64, BOOL: np.bool_}
# Python objects behind one column (the Column, two array headers, its dict entries, vocabulary
# containers): tracemalloc counted 1.1 KB for a one-entry keyword column with its name and shape,
# 0.74 KB for a number column; counted on the high side for every type.
_COLUMN_BYTES = 1_024
_WORD_BYTES = 100  # a vocabulary entry besides the string itself: dict slot, list slot, hash
_SHAPE_BYTES = 120  # a shape tuple's header and its dict entry, besides 8 bytes per column


def type_of(value) -> str | None:
    if isinstance(value, bool) or isinstance(value, np.bool_):
        return BOOL
    if isinstance(value, str):
        return KEYWORD
    if isinstance(value, (int, np.integer)):
        return INTEGER
    if isinstance(value, (float, np.floating)):
        return FLOAT
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return KEYWORDS
    return None


def kinds_text(kinds) -> str:
    """A field's types as the schema and error messages write them: "integer" or "integer|keyword"."""
    return "|".join(sorted(kinds))


def _quoted(value) -> str:
    text = repr(value[:SHOWN_CHARS] if isinstance(value, str) else value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _describe(value) -> str:
    return f"{_quoted(value)} ({type(value).__name__})"


def _check_value(field: str, kind: str, value) -> None:
    if kind == FLOAT and not np.isfinite(value):
        raise InvalidArgumentError(f"payload field {_quoted(field)}: {value!r} is not finite")
    if kind == KEYWORDS and len(value) > MAX_KEYWORDS:
        raise InvalidArgumentError(f"payload field {_quoted(field)}: {len(value)} keywords; at most "
                                   f"{MAX_KEYWORDS} are allowed")
    if kind == INTEGER and not -(2**63) <= int(value) < 2**63:
        raise InvalidArgumentError(f"payload field {_quoted(field)}: {_quoted(value)} does not fit in 64 bits")


class Column:
    """The values of one field of one type: `slots` ascending (a list of keywords: one entry per
    element, in the list's order, under the same slot) and `values` beside them; the arrays may
    be longer than `size` (room to append)."""

    __slots__ = ("field", "kind", "size", "slots", "values", "vocabulary", "words", "word_bytes")

    def __init__(self, field: str, kind: str):
        self.field, self.kind = field, kind
        self.size = 0
        self.slots = np.zeros(0, np.int32)  # a slot is a row of the vector store: far below 2**31
        self.values = np.zeros(0, _DTYPES[kind])
        self.vocabulary: dict[str, int] | None = {} if kind in (KEYWORD, KEYWORDS) else None
        self.words: list[str] | None = [] if kind in (KEYWORD, KEYWORDS) else None
        self.word_bytes = 0

    # -- writing -------------------------------------------------------------------------------

    def encode(self, values: list) -> np.ndarray:
        """Python values of this column's type as its values (keywords: codes, new words added)."""
        if self.vocabulary is None:
            return np.array(values, _DTYPES[self.kind])
        vocabulary, words = self.vocabulary, self.words
        codes = np.empty(len(values), np.int32)
        for i, word in enumerate(values):
            code = vocabulary.get(word)
            if code is None:
                code = vocabulary[word] = len(words)
                words.append(word)
                self.word_bytes += sys.getsizeof(word) + _WORD_BYTES
            codes[i] = code
        return codes

    def put(self, slots: np.ndarray, values: np.ndarray) -> None:
        """Add entries for `slots` (ascending, holding nothing in this column yet). Entries before
        the first new one stay where they are: appending costs the new entries, a slot reused
        after deletes the entries after it."""
        k, size = slots.size, self.size
        first = size if size == 0 or slots[0] > self.slots[size - 1] else int(np.searchsorted(self.slots[:size], slots[0]))
        if first < size:  # among held slots: the tail merged with the new entries
            at = np.searchsorted(self.slots[first:size], slots)
            slots = np.insert(self.slots[first:size], at, slots)
            values = np.insert(self.values[first:size], at, values)
        if size + k > self.slots.size:
            room = max(size + k, self.slots.size * 3 // 2)
            self.slots = _grown(self.slots, first, room)
            self.values = _grown(self.values, first, room)
        self.slots[first : size + k] = slots
        self.values[first : size + k] = values
        self.size = size + k
        self._compact_words()

    def remove(self, slots: np.ndarray) -> None:
        """Drop the entries of `slots` (ascending, unique; those not held are ignored); only the
        entries after the first one dropped move."""
        size = self.size
        held = self.slots[:size]
        lo = np.searchsorted(held, slots, "left")
        hi = np.searchsorted(held, slots, "right")
        some = lo < hi
        if not some.any():
            return
        first = int(lo[some][0])
        lo, hi = lo[some] - first, hi[some] - first
        if self.kind == KEYWORDS:  # runs of entries: mark each run [lo, hi)
            edges = np.zeros(size - first + 1, np.int32)
            edges[lo] = 1
            edges[hi] -= 1
            keep = np.cumsum(edges[:-1]) == 0
        else:
            keep = np.ones(size - first, bool)
            keep[lo] = False
        tail_slots, tail_values = held[first:][keep], self.values[first:size][keep]
        kept = first + tail_slots.size
        if self.slots.size > 2 * kept + 16:  # mostly empty room: give it back
            self.slots = _grown(self.slots, first, kept)
            self.values = _grown(self.values, first, kept)
        self.slots[first:kept] = tail_slots
        self.values[first:kept] = tail_values
        self.size = kept
        self._compact_words()

    def renumber(self, new_slot: np.ndarray) -> None:
        """Each entry moves to new_slot[its slot]; entries whose new slot is -1 are dropped."""
        moved = new_slot[self.slots[: self.size]]
        keep = moved >= 0
        moved, values = moved[keep], self.values[: self.size][keep]
        order = np.argsort(moved, kind="stable")  # stable: a list keeps its order
        self.slots, self.values = moved[order].astype(np.int32), values[order]
        self.size = self.slots.size
        self._compact_words()

    def _compact_words(self) -> None:
        """Forget words no entry uses once they outnumber the entries (each word is forgotten once,
        after at least as many were added: the cost is amortised)."""
        if self.words is None or len(self.words) <= 2 * self.size + 16:
            return
        codes = self.values[: self.size]
        used = np.flatnonzero(np.bincount(codes, minlength=len(self.words)))
        renumbered = np.zeros(len(self.words), np.int32)
        renumbered[used] = np.arange(used.size, dtype=np.int32)
        codes[:] = renumbered[codes]
        self.words = [self.words[c] for c in used.tolist()]
        self.vocabulary = {word: code for code, word in enumerate(self.words)}
        self.word_bytes = sum(sys.getsizeof(w) + _WORD_BYTES for w in self.words)

    # -- reading -------------------------------------------------------------------------------

    def read(self, slots: np.ndarray) -> tuple[np.ndarray, list]:
        """(positions in `slots` that hold a value here, their values as Python values)."""
        held, size = self.slots[: self.size], self.size
        if size == 0:
            return np.zeros(0, np.int64), []
        if self.kind == KEYWORDS:
            lo = np.searchsorted(held, slots, "left")
            hi = np.searchsorted(held, slots, "right")
            found = np.flatnonzero(lo < hi)
            words, codes = self.words, self.values
            return found, [[words[c] for c in codes[a:b].tolist()] for a, b in zip(lo[found], hi[found])]
        at = np.minimum(np.searchsorted(held, slots), size - 1)
        found = np.flatnonzero(held[at] == slots)
        values = self.values[at[found]].tolist()
        if self.kind == KEYWORD:
            values = [self.words[c] for c in values]
        return found, values

    def match(self, op: str, value, mask: np.ndarray) -> None:
        """Set mask[slot] for every slot whose value here satisfies `op value` (numbers compared as
        numbers, an integer column with a float as well); mask holds no other column's slots of this
        field (a slot holds one value of a field), so this column's slots may be assigned."""
        size = self.size
        values = self.values[:size]
        if op == "exists":
            _mark_all(mask, self.slots[:size])
            return
        if self.vocabulary is not None:  # keywords: compare codes
            codes = [self.vocabulary[w] for w in ((value,) if op == "eq" else value) if w in self.vocabulary]
            if not codes:
                return
            if len(codes) <= 4:
                hit = values == codes[0]
                for code in codes[1:]:
                    hit |= values == code
            else:  # a table over the vocabulary: one gather, whatever the list's length
                table = np.zeros(len(self.words), bool)
                table[codes] = True
                hit = table[values]
        elif op == "eq" or op == "in":
            wanted = (value,) if op == "eq" else value
            if self.kind == INTEGER:  # an integer equals only a whole number
                wanted = [int(v) for v in wanted if v == int(v)]
            if not wanted:
                return
            hit = values == wanted[0] if len(wanted) == 1 else np.isin(values, np.array(wanted, values.dtype))
        elif op == "gt":
            hit = values > value
        elif op == "gte":
            hit = values >= value
        elif op == "lt":
            hit = values < value
        else:
            hit = values <= value
        slots = self.slots[:size]
        if self.kind == KEYWORDS:  # a slot may have several entries: set, never clear
            _mark_hits(mask, slots, hit)
        elif size and slots[size - 1] == size - 1:  # ascending and unique, so exactly 0..size-1
            mask[:size] = hit
        else:
            _mark(mask, slots, hit)

    @property
    def nbytes(self) -> int:
        return self.slots.nbytes + self.values.nbytes + self.word_bytes + _COLUMN_BYTES


# Scattering a column's matches into the mask over slots: compiled, since numpy's fancy
# assignment first copies int32 indices to intp (142 us against 29 us for 50 000 slots).
@numba.njit(cache=True, nogil=True)
def _mark(mask, slots, hit):
    for i in range(slots.size):
        mask[slots[i]] = hit[i]


@numba.njit(cache=True, nogil=True)
def _mark_hits(mask, slots, hit):
    for i in range(slots.size):
        if hit[i]:
            mask[slots[i]] = True


@numba.njit(cache=True, nogil=True)
def _mark_all(mask, slots):
    for i in range(slots.size):
        mask[slots[i]] = True


def _grown(array: np.ndarray, used: int, rows: int) -> np.ndarray:
    grown = np.empty(rows, array.dtype)
    grown[:used] = array[:used]
    return grown


class Payloads:
    """The payload columns of one collection: `columns` is field -> type -> Column, each holding
    at least one value."""

    def __init__(self, capacity: int = 1024):
        self.capacity = capacity
        self.columns: dict[str, dict[str, Column]] = {}
        self.n_columns = 0
        self.held = 0  # slots holding a payload
        self._shape = np.zeros(capacity, np.int32)  # slot -> id of the columns it has values in
        self._shapes: list[tuple] = [()]  # id -> ((field, type), ...); 0: no payload
        self._shape_ids: dict[tuple, int] = {(): 0}
        self._shape_bytes = 0

    # -- schema --------------------------------------------------------------------------------

    def schema(self, visible: np.ndarray | None = None) -> dict[str, str]:
        """Field -> its types ("integer", or "integer|keyword" where vectors hold it with several),
        over the whole collection, or over the slots where `visible` is True."""
        kinds = self.columns if visible is None else self.kinds_on(visible)
        return {field: kinds_text(held) for field, held in sorted(kinds.items())}

    def kinds_on(self, visible: np.ndarray) -> dict[str, set[str]]:
        """Field -> the types held by the slots where `visible` (a mask over slots 0..n-1) is True:
        one pass over the mask and the shapes it reaches, none over the columns."""
        shapes = self._shape[: visible.size][visible]
        out: dict[str, set[str]] = {}
        for shape in np.flatnonzero(np.bincount(shapes, minlength=1)).tolist():
            for field, kind in self._shapes[shape]:
                out.setdefault(field, set()).add(kind)
        return out

    # -- writing -------------------------------------------------------------------------------

    def check(self, payloads: list[dict]) -> None:
        """Raise InvalidArgumentError for any payload that cannot be stored; changes nothing."""
        new: set[tuple[str, str]] = set()
        for i, payload in enumerate(payloads):
            if payload is None:
                continue
            if not isinstance(payload, dict):
                raise InvalidArgumentError(f"payload {i} must be a dict of field -> value, got {_describe(payload)}")
            if len(payload) > MAX_PAYLOAD_FIELDS:
                raise InvalidArgumentError(f"payload {i} has {len(payload)} fields; at most {MAX_PAYLOAD_FIELDS} "
                                           "are allowed in one payload")
            for field, value in payload.items():
                if not isinstance(field, str) or not field or field in ("and", "or", "not"):
                    raise InvalidArgumentError(f"payload {i}: field names are non-empty strings other than "
                                               f"and / or / not; got {_quoted(field)}")
                if value is None:
                    continue
                kind = type_of(value)
                if kind is None:
                    raise InvalidArgumentError(
                        f"payload {i}, field {_quoted(field)}: {_describe(value)} is not a payload value; allowed: "
                        "str, int, float, bool, list of str")
                _check_value(field, kind, value)
                if kind not in self.columns.get(field, ()):
                    new.add((field, kind))
        if new:
            limit = BASE_COLUMNS + COLUMNS_PER_PAYLOAD * (self.held + len(payloads))
            if self.n_columns + len(new) > limit:
                raise InvalidArgumentError(
                    f"these payloads would add {len(new)} payload columns (a column is one field with one type) "
                    f"past the collection's limit: {BASE_COLUMNS} plus {COLUMNS_PER_PAYLOAD} for each vector "
                    "with a payload")

    def write(self, slots: np.ndarray, payloads: list[dict]) -> None:
        """Replace the payloads of `slots` (checked first by `check`; None or {}: no payload). A
        slot given twice takes its last payload."""
        slots = np.asarray(slots, np.int64)
        order = np.argsort(slots, kind="stable")
        slots = slots[order]
        last = np.ones(slots.size, bool)
        last[:-1] = slots[1:] != slots[:-1]
        order, slots = order[last], slots[last]
        self.clear(slots)
        entries: dict[tuple[str, str], tuple[list, list]] = {}
        shapes = np.zeros(slots.size, np.int32)
        for j, (i, slot) in enumerate(zip(order.tolist(), slots.tolist())):
            payload = payloads[i]
            if not payload:
                continue
            keys = []
            for field, value in payload.items():
                if value is None:
                    continue
                kind = type_of(value)
                if kind == KEYWORDS:
                    if not value:  # an empty list is no value
                        continue
                    held = entries.setdefault((field, kind), ([], []))
                    held[0].extend([slot] * len(value))
                    held[1].extend(value)
                else:
                    held = entries.setdefault((field, kind), ([], []))
                    held[0].append(slot)
                    held[1].append(value)
                keys.append((field, kind))
            if keys:
                shapes[j] = self._shape_id(tuple(keys))
        for (field, kind), (held_slots, values) in entries.items():
            column = self.columns.setdefault(field, {}).get(kind)
            if column is None:
                column = self.columns[field][kind] = Column(field, kind)
                self.n_columns += 1
            column.put(np.array(held_slots, np.int32), column.encode(values))
        self._shape[slots] = shapes
        self.held += int(np.count_nonzero(shapes))
        self._compact_shapes()

    def _shape_id(self, keys: tuple) -> int:
        shape = self._shape_ids.get(keys)
        if shape is None:
            shape = self._shape_ids[keys] = len(self._shapes)
            self._shapes.append(keys)
            self._shape_bytes += _SHAPE_BYTES + 8 * len(keys)
        return shape

    def _compact_shapes(self) -> None:
        """Forget shapes no slot has once they outnumber the slots holding payloads (amortised as
        the vocabulary's: at least as many shapes were made since the last time)."""
        if len(self._shapes) <= 2 * self.held + 1024:
            return
        holding = np.flatnonzero(self._shape)  # reads the untouched part as zero pages
        counts = np.bincount(self._shape[holding], minlength=1)
        counts[0] = 1  # the empty shape keeps id 0
        used = np.flatnonzero(counts)
        renumbered = np.zeros(len(self._shapes), np.int32)
        renumbered[used] = np.arange(used.size, dtype=np.int32)
        self._shape[holding] = renumbered[self._shape[holding]]
        self._shapes = [self._shapes[s] for s in used.tolist()]
        self._shape_ids = {keys: s for s, keys in enumerate(self._shapes)}
        self._shape_bytes = sum(_SHAPE_BYTES + 8 * len(keys) for keys in self._shapes)

    def read(self, slots: np.ndarray) -> list[dict]:
        slots = np.asarray(slots, np.int64)
        out: list[dict] = [{} for _ in range(slots.size)]
        for field, kind in sorted(self._keys_of(self._shape[slots])):
            column = self.columns[field][kind]
            found, values = column.read(slots)
            for i, value in zip(found.tolist(), values):
                out[i][field] = value
        return out

    def _keys_of(self, shapes: np.ndarray) -> set:
        keys: set = set()
        for shape in np.unique(shapes).tolist():
            keys.update(self._shapes[shape])
        return keys

    def clear(self, slots: np.ndarray) -> None:
        slots = np.unique(np.asarray(slots, np.int64))
        shapes = self._shape[slots]
        holding = shapes != 0
        if not holding.any():
            return
        slots, shapes = slots[holding], shapes[holding]
        for field, kind in self._keys_of(shapes):
            kinds = self.columns[field]
            column = kinds[kind]
            column.remove(slots)
            if column.size == 0:
                self._drop(field, kind)
        self._shape[slots] = 0
        self.held -= slots.size

    def _drop(self, field: str, kind: str) -> None:
        kinds = self.columns[field]
        del kinds[kind]
        if not kinds:
            del self.columns[field]
        self.n_columns -= 1

    # -- layout --------------------------------------------------------------------------------

    def resize(self, capacity: int) -> None:
        if capacity > self.capacity:
            grown = np.zeros(capacity, np.int32)  # the spare part stays untouched (not resident)
            grown[: self.capacity] = self._shape
            self._shape, self.capacity = grown, capacity

    def permute(self, old: np.ndarray, n: int) -> None:
        """Slot i takes the payload of slot old[i] (after the store renumbered its slots); slots
        >= n are cleared."""
        new_slot = np.full(self.capacity, -1, np.int64)
        new_slot[old] = np.arange(n)
        for field, kinds in list(self.columns.items()):
            for kind, column in list(kinds.items()):
                column.renumber(new_slot)
                if column.size == 0:
                    self._drop(field, kind)
        shape = np.zeros(self.capacity, np.int32)
        shape[:n] = self._shape[old]
        self._shape = shape
        self.held = int(np.count_nonzero(shape[:n]))

    @property
    def nbytes(self) -> int:
        columns = sum(column.nbytes for kinds in self.columns.values() for column in kinds.values())
        return columns + self._shape.nbytes + self._shape_bytes
