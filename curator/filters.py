"""The filter language: conditions on payload fields, combined with and / or / not.

A filter is plain data, the same in embedded and remote use (the SDK sends it as the `Filter`
message of proto/):

    {"lang": "en"}                                   eq (shorthand)
    {"year": {"gte": 2020, "lt": 2024}}              several operators on one field: all must hold
    {"lang": {"in": ["en", "de"]}, "draft": False}   several fields in one dict: all must hold
    {"or": [{"lang": "en"}, {"not": {"tags": "old"}}]}

Operators: eq, ne, in, not_in (keyword, keywords, integer, bool; eq/in also float), gt, gte, lt,
lte (integer, float), exists (True / False). On a list-of-keywords field, eq and in match when
any element does. A vector without the field matches ne, not_in and exists=False, and nothing
else, so `not` of a condition is its exact complement.

`parse` checks a filter against the collection's payload schema once (an unknown field, an
operator its type does not have, or a value of the wrong type is InvalidArgumentError naming it)
and returns a tree of `Condition`, `All`, `Any`, `Not`; `matches` evaluates one over the payload
columns as a boolean mask over slots, one numpy operation per condition.
"""

from dataclasses import dataclass

import numpy as np

from .errors import InvalidArgumentError
from .payloads import BOOL, FLOAT, INTEGER, KEYWORD, KEYWORDS, Payloads

OPERATORS = {
    KEYWORD: {"eq", "ne", "in", "not_in", "exists"},
    KEYWORDS: {"eq", "ne", "in", "not_in", "exists"},
    BOOL: {"eq", "ne", "exists"},
    INTEGER: {"eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "exists"},
    FLOAT: {"eq", "ne", "gt", "gte", "lt", "lte", "exists"},
}
LOGICAL = ("and", "or", "not")
MAX_DEPTH = 32
MAX_VALUES = 10_000


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: object


@dataclass(frozen=True)
class All:
    parts: tuple


@dataclass(frozen=True)
class Any_:
    parts: tuple


@dataclass(frozen=True)
class Not:
    part: object


def key(spec):
    """A hashable key that is equal for two filters exactly when they are the same data, types
    included (1, 1.0 and True are different filters: one of them may be of the wrong type for its
    field). The cache key of a filter's matches: a long "in" list is frozen as a tuple, at about
    half of repr's cost (an "in" of 480 keywords: 7-14 us against 21-25 us here)."""
    kind = type(spec)
    if kind is dict:
        return dict, tuple([(name, key(value)) for name, value in spec.items()])
    if kind is list or kind is tuple:
        items = tuple(spec)
        try:
            hash(items)
        except TypeError:  # holds dicts or lists: freeze each
            return list, tuple(map(key, items))
        return list, items, tuple(map(type, items))
    if kind in (str, int, float, bool) or spec is None:
        return kind, spec
    return kind, repr(spec)  # anything else (parse will say what is wrong with it), hashable


def parse(spec, schema: dict[str, str], depth: int = 0):
    if depth > MAX_DEPTH:
        raise InvalidArgumentError(f"filter nests deeper than {MAX_DEPTH} levels")
    if not isinstance(spec, dict) or not spec:
        raise InvalidArgumentError(f"a filter is a non-empty dict, got {spec!r}")
    parts = []
    for key, value in spec.items():
        if key in ("and", "or"):
            if not isinstance(value, (list, tuple)) or not value:
                raise InvalidArgumentError(f"filter {key!r} takes a non-empty list of filters, got {value!r}")
            inner = tuple(parse(v, schema, depth + 1) for v in value)
            parts.append(All(inner) if key == "and" else Any_(inner))
        elif key == "not":
            parts.append(Not(parse(value, schema, depth + 1)))
        else:
            parts.extend(_field(key, value, schema))
    return parts[0] if len(parts) == 1 else All(tuple(parts))


def _field(field, spec, schema) -> list[Condition]:
    if not isinstance(field, str):
        raise InvalidArgumentError(f"filter field names are strings, got {field!r}")
    kind = schema.get(field)
    if kind is None:
        known = ", ".join(sorted(schema)) or "none yet"
        raise InvalidArgumentError(f"filter names unknown field {field!r}; fields of this collection: {known}")
    ops = spec if isinstance(spec, dict) else {"eq": spec}
    if not ops:
        raise InvalidArgumentError(f"filter on {field!r} has no operator; allowed: {sorted(OPERATORS[kind])}")
    out = []
    for op, value in ops.items():
        if op not in OPERATORS[kind]:
            raise InvalidArgumentError(f"operator {op!r} does not apply to {kind} field {field!r}; "
                                       f"allowed: {sorted(OPERATORS[kind])}")
        out.append(Condition(field, op, _operand(field, kind, op, value)))
    return out


def _operand(field, kind, op, value):
    def bad(expected):
        return InvalidArgumentError(f"filter {field!r} {op}: expected {expected} for a {kind} field, got {value!r}")

    if op == "exists":
        if not isinstance(value, (bool, np.bool_)):
            raise bad("true or false")
        return bool(value)
    if op in ("in", "not_in"):
        if not isinstance(value, (list, tuple)) or len(value) > MAX_VALUES:
            raise bad(f"a list of at most {MAX_VALUES} values")
        return tuple(_scalar(field, kind, op, v, bad) for v in value)
    return _scalar(field, kind, op, value, bad)


def _scalar(field, kind, op, value, bad):
    if kind in (KEYWORD, KEYWORDS):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind == BOOL:
        if not isinstance(value, (bool, np.bool_)):
            raise bad("true or false")
        return bool(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise bad("a number")
    if not np.isfinite(value):
        raise bad("a finite number")
    if kind == INTEGER and isinstance(value, (float, np.floating)) and op in ("eq", "ne", "in", "not_in"):
        if value != int(value):
            raise bad("an integer")
        return int(value)
    return value


def matches(node, payloads: Payloads, n: int) -> np.ndarray:
    """Boolean mask over slots [0, n): which slots' payloads satisfy the parsed filter."""
    if isinstance(node, All):
        mask = matches(node.parts[0], payloads, n)
        for part in node.parts[1:]:
            mask &= matches(part, payloads, n)
        return mask
    if isinstance(node, Any_):
        mask = matches(node.parts[0], payloads, n)
        for part in node.parts[1:]:
            mask |= matches(part, payloads, n)
        return mask
    if isinstance(node, Not):
        return ~matches(node.part, payloads, n)
    return _condition(node, payloads.columns[node.field], n)


def _condition(c: Condition, column, n: int) -> np.ndarray:
    op, value = c.op, c.value
    if op == "exists":
        present = column.exists(n)
        return present if value else ~present
    if op in ("ne", "not_in"):
        return ~_condition(Condition(c.field, "eq" if op == "ne" else "in", value), column, n)
    if column.kind in (KEYWORD, KEYWORDS, BOOL):
        wanted = (value,) if op == "eq" else value
        if column.kind == BOOL:
            codes = [int(v) for v in wanted]
        else:
            codes = [column.vocabulary[w] for w in wanted if w in column.vocabulary]
        if not codes:
            return np.zeros(n, bool)
        rows = column.codes[:n]
        if len(codes) == 1:
            hit = rows == codes[0]
        else:
            hit = np.isin(rows, np.array(codes, np.int32))
        return hit.any(axis=1) if hit.ndim == 2 else hit
    values, present = column.values[:n], column.present[:n]
    if op == "eq":
        hit = values == value
    elif op == "in":
        hit = np.isin(values, np.array(value, values.dtype))
    elif op == "gt":
        hit = values > value
    elif op == "gte":
        hit = values >= value
    elif op == "lt":
        hit = values < value
    else:
        hit = values <= value
    return hit & present
