"""Metadata payloads of a collection's vectors, kept as columns over slots, and what a filter matches.

A payload is a flat dict of field -> value, one per vector. A field's type is fixed by the first
value written to it (the collection's payload schema):

    keyword   str                 integer  int (64-bit)        float  float (ints accepted)
    bool      bool                keywords list of str (a filter matches if any element does)

Each field is a column over slots (the rows of the vector store), so a filter condition is one
vectorised comparison over the column, and matching slots come out as a boolean mask. Keywords
are stored as int32 codes into a per-field vocabulary; lists of keywords as a padded code matrix.
Payloads arrive as Python dicts (the user's form): turning a batch of dicts into columns is one
comprehension per field; everything after that is numpy.

This module knows slots, not user ids; it never decides a search plan.
"""

import numpy as np

from .errors import InvalidArgumentError

KEYWORD, INTEGER, FLOAT, BOOL, KEYWORDS = "keyword", "integer", "float", "bool", "keywords"
MAX_FIELDS = 256
MAX_KEYWORDS = 64  # elements in one list value
_MISSING = -1


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


def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})"


class Column:
    """One field over slots: values plus presence, or keyword codes (-1: absent)."""

    def __init__(self, name: str, kind: str, capacity: int):
        self.name, self.kind = name, kind
        self.vocabulary: dict[str, int] = {}
        self.words: list[str] = []
        if kind in (KEYWORD, BOOL):
            self.codes = np.full(capacity, _MISSING, np.int32)  # bool: 0 / 1
        elif kind == KEYWORDS:
            self.codes = np.full((capacity, 1), _MISSING, np.int32)
        else:
            self.values = np.zeros(capacity, np.int64 if kind == INTEGER else np.float64)
            self.present = np.zeros(capacity, bool)

    # -- writing -------------------------------------------------------------------------------

    def check(self, value) -> None:
        kind = type_of(value)
        if kind == self.kind or (self.kind == FLOAT and kind == INTEGER):
            if kind == FLOAT and not np.isfinite(value):
                raise InvalidArgumentError(f"payload field {self.name!r}: {value!r} is not finite")
            if kind == KEYWORDS and len(value) > MAX_KEYWORDS:
                raise InvalidArgumentError(f"payload field {self.name!r}: {len(value)} keywords; at most "
                                           f"{MAX_KEYWORDS} are allowed")
            if kind == INTEGER and not -(2**63) <= int(value) < 2**63:
                raise InvalidArgumentError(f"payload field {self.name!r}: {value} does not fit in 64 bits")
            return
        raise InvalidArgumentError(f"payload field {self.name!r} holds {self.kind} values; got {_describe(value)}")

    def _code(self, word: str) -> int:
        code = self.vocabulary.get(word)
        if code is None:
            code = self.vocabulary[word] = len(self.words)
            self.words.append(word)
        return code

    def write(self, slots: np.ndarray, values: list) -> None:
        """values[i] for slots[i]; None clears the slot."""
        given = np.fromiter((v is not None for v in values), bool, len(values))
        if self.kind == KEYWORD:
            self.codes[slots] = [self._code(v) if v is not None else _MISSING for v in values]
        elif self.kind == BOOL:
            self.codes[slots] = [int(v) if v is not None else _MISSING for v in values]
        elif self.kind == KEYWORDS:
            width = max((len(v) for v in values if v is not None), default=0)
            if width > self.codes.shape[1]:
                wider = np.full((self.codes.shape[0], width), _MISSING, np.int32)
                wider[:, : self.codes.shape[1]] = self.codes
                self.codes = wider
            rows = np.full((len(values), self.codes.shape[1]), _MISSING, np.int32)
            for i, v in enumerate(values):
                if v:
                    rows[i, : len(v)] = [self._code(w) for w in v]
            self.codes[slots] = rows
        else:
            self.values[slots] = [v if v is not None else 0 for v in values]
            self.present[slots] = given

    def clear(self, slots: np.ndarray) -> None:
        if self.kind in (KEYWORD, BOOL, KEYWORDS):
            self.codes[slots] = _MISSING
        else:
            self.present[slots] = False

    def read(self, slot: int):
        if self.kind == KEYWORD:
            code = self.codes[slot]
            return None if code < 0 else self.words[code]
        if self.kind == BOOL:
            code = self.codes[slot]
            return None if code < 0 else bool(code)
        if self.kind == KEYWORDS:
            row = self.codes[slot]
            return None if row[0] < 0 else [self.words[c] for c in row[row >= 0]]
        if not self.present[slot]:
            return None
        return int(self.values[slot]) if self.kind == INTEGER else float(self.values[slot])

    # -- layout --------------------------------------------------------------------------------

    def resize(self, capacity: int) -> None:
        for name, fill in (("codes", _MISSING), ("values", 0), ("present", False)):
            array = getattr(self, name, None)
            if array is not None and array.shape[0] < capacity:
                grown = np.full((capacity,) + array.shape[1:], fill, array.dtype)
                grown[: array.shape[0]] = array
                setattr(self, name, grown)

    def permute(self, old: np.ndarray, n: int) -> None:
        """Row i takes the row of old[i] (after the store renumbered its slots); rows >= n are cleared."""
        for name in ("codes", "values", "present"):
            array = getattr(self, name, None)
            if array is not None:
                array[:n] = array[old]
        self.clear(np.arange(n, self._rows()))

    def _rows(self) -> int:
        return (self.codes if self.kind in (KEYWORD, BOOL, KEYWORDS) else self.values).shape[0]

    def exists(self, n: int) -> np.ndarray:
        if self.kind == KEYWORDS:
            return self.codes[:n, 0] >= 0
        if self.kind in (KEYWORD, BOOL):
            return self.codes[:n] >= 0
        return self.present[:n].copy()

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, a).nbytes for a in ("codes", "values", "present") if hasattr(self, a))


class Payloads:
    """The payload columns of one collection."""

    def __init__(self, capacity: int = 1024):
        self.capacity = capacity
        self.columns: dict[str, Column] = {}

    def schema(self) -> dict[str, str]:
        return {name: column.kind for name, column in sorted(self.columns.items())}

    def check(self, payloads: list[dict]) -> None:
        """Raise InvalidArgumentError for any value that does not fit its field; changes nothing."""
        new_kinds: dict[str, str] = {}
        for i, payload in enumerate(payloads):
            if payload is None:
                continue
            if not isinstance(payload, dict):
                raise InvalidArgumentError(f"payload {i} must be a dict of field -> value, got {_describe(payload)}")
            for field, value in payload.items():
                if not isinstance(field, str) or not field or field in ("and", "or", "not"):
                    raise InvalidArgumentError(f"payload {i}: field names are non-empty strings other than "
                                               f"and / or / not; got {field!r}")
                if value is None:
                    continue
                column = self.columns.get(field)
                if column is not None:
                    column.check(value)
                    continue
                kind = type_of(value)
                if kind is None:
                    raise InvalidArgumentError(
                        f"payload {i}, field {field!r}: {_describe(value)} is not a payload value; allowed: str, "
                        "int, float, bool, list of str")
                seen = new_kinds.setdefault(field, kind)
                if seen != kind and {seen, kind} != {INTEGER, FLOAT}:
                    raise InvalidArgumentError(f"payload field {field!r} gets both {seen} and {kind} values in "
                                               "one batch; a field holds one type")
                if kind == FLOAT:
                    new_kinds[field] = FLOAT
                Column(field, new_kinds[field], 0).check(value)
        if len(self.columns) + len(set(new_kinds) - set(self.columns)) > MAX_FIELDS:
            raise InvalidArgumentError(f"a collection holds at most {MAX_FIELDS} payload fields")

    def write(self, slots: np.ndarray, payloads: list[dict]) -> None:
        """Replace the payloads of `slots` (checked first by `check`)."""
        fields = sorted({f for p in payloads if p for f, v in p.items() if v is not None} | set(self.columns))
        for field in fields:
            values = [p.get(field) if p else None for p in payloads]
            column = self.columns.get(field)
            if column is None:
                kinds = {type_of(v) for v in values if v is not None}
                column = self.columns[field] = Column(field, FLOAT if FLOAT in kinds else kinds.pop(), self.capacity)
            if all(v is None for v in values):
                column.clear(slots)
            else:
                column.write(slots, values)

    def read(self, slots: np.ndarray) -> list[dict]:
        out = []
        for slot in slots.tolist():
            payload = {}
            for name, column in self.columns.items():
                value = column.read(slot)
                if value is not None:
                    payload[name] = value
            out.append(payload)
        return out

    def clear(self, slots: np.ndarray) -> None:
        for column in self.columns.values():
            column.clear(slots)

    def resize(self, capacity: int) -> None:
        if capacity > self.capacity:
            self.capacity = capacity
            for column in self.columns.values():
                column.resize(capacity)

    def permute(self, old: np.ndarray, n: int) -> None:
        for column in self.columns.values():
            column.permute(old, n)

    @property
    def nbytes(self) -> int:
        return sum(column.nbytes for column in self.columns.values())
