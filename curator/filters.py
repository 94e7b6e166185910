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

Every cost is bounded before the work: `check` walks a filter once, without recursion, and refuses
one of more than MAX_CONDITIONS conditions, nested deeper than MAX_DEPTH, or with more than
MAX_VALUES values in one in / not_in list (MAX_TOTAL_VALUES in all of them), before `key`, `parse`
or `matches` touch it. An error message never repeats a long input: values are quoted by `shown`.
"""

import reprlib
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
_OPS = frozenset().union(*OPERATORS.values())
# Generous for what an application writes by hand or generates, and each caps work done under the
# collection's lock (measured before these: 200 000 conditions took 8.4 s, an `in` of 1 000 000
# values 5.6 s, and a filter nested past the interpreter's recursion limit was a RecursionError).
MAX_CONDITIONS = 1_024  # conditions in one filter; {"year": {"gte": 1, "lt": 5}} is two
MAX_DEPTH = 32  # levels of and / or / not (and of lists within a value)
MAX_VALUES = 10_000  # values in one in / not_in list
MAX_TOTAL_VALUES = 100_000  # values in all of a filter's lists together
SHOWN_CHARS = 60  # of a value quoted in an error message

_INT64 = (-(2**63), 2**63)


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


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, SHOWN_CHARS, SHOWN_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdict = 6


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """`value` as an error message quotes it: its repr, cut to `limit` characters with an ellipsis.
    reprlib looks at only the first few items of a container, so a long input costs nothing here."""
    if type(value) is str:  # the common case (a field name, an operator, a keyword), made cheap
        return _cut(repr(value[:limit]), limit)
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int past str()'s digit limit: say what it is
        text = f"<{type(value).__name__}>"
    return _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check(spec) -> None:
    """Refuse a filter over the limits before anything else reads it: one walk without recursion
    that stops at the first limit passed, so it costs at most about MAX_CONDITIONS * MAX_DEPTH
    steps and MAX_TOTAL_VALUES items whatever the input. Malformed parts are left to `parse` to
    name, but counted: each stands for a condition, and lists anywhere within a value count as
    values, so no part of the input is walked without a bound."""
    conditions = values = 0
    stack = [(spec, 0, None)]  # (part, depth, None for a filter or (field, op) for an operand)
    while stack:
        part, depth, where = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidArgumentError(f"filter nests deeper than {MAX_DEPTH} levels")
        if where is not None:
            values += _operand_size(part, where)
            if values > MAX_TOTAL_VALUES:
                raise InvalidArgumentError(f"filter has more than {MAX_TOTAL_VALUES} values in its lists "
                                           "(the limit, all lists together)")
            items = _items(part)
            if len(items) and not _SCALARS.issuperset(map(type, items)):  # usually a list of scalars: no more
                stack.extend((item, depth + 1, where) for item in items if isinstance(item, _CONTAINERS))
            continue
        parts = part if isinstance(part, dict) and part else {None: part}  # {} or a non-dict: one bad part
        if len(parts) > MAX_CONDITIONS:  # each key is at least one condition
            raise InvalidArgumentError(f"filter has {len(parts)} keys in one dict; at most {MAX_CONDITIONS} "
                                       "conditions are allowed in a filter")
        for name, value in parts.items():
            if name in ("and", "or") and isinstance(value, (list, tuple)) and value:
                if len(value) > MAX_CONDITIONS:  # each filter listed is at least one condition
                    raise InvalidArgumentError(f"filter {name!r} lists {len(value)} filters; at most "
                                               f"{MAX_CONDITIONS} conditions are allowed in a filter")
                stack.extend((inner, depth + 1, None) for inner in value)
            elif name == "not":
                stack.append((value, depth + 1, None))
            else:  # a field's conditions, one per operator, or a malformed part
                ops = value if name is not None and isinstance(value, dict) and value else {"eq": value}
                conditions += len(ops)
                if conditions > MAX_CONDITIONS:
                    raise InvalidArgumentError(f"filter has more than {MAX_CONDITIONS} conditions (the limit)")
                for op, operand in ops.items():  # a list's nesting is its own, from 0; a scalar costs nothing
                    if isinstance(operand, _CONTAINERS):
                        stack.append((operand, 0, (name, op)))


_CONTAINERS = (list, tuple, dict, set, frozenset, np.ndarray)
_SCALARS = frozenset((str, int, float, bool, type(None), np.str_, np.bool_, np.int64, np.int32, np.float64,
                      np.float32))


def _items(operand):
    """What within an operand may hold more: a list's items, a dict's pairs, an array's objects."""
    if isinstance(operand, dict):
        return operand.items()
    if isinstance(operand, np.ndarray):
        return operand.ravel() if operand.dtype == object else ()  # numbers hold nothing more
    return operand if isinstance(operand, _CONTAINERS) else ()


def _operand_size(operand, where) -> int:
    """How many values an operand holds (0 for a scalar); a list longer than MAX_VALUES is refused."""
    if not isinstance(operand, _CONTAINERS):
        return 0
    n = operand.size if isinstance(operand, np.ndarray) else len(operand)
    if n > MAX_VALUES:
        field, op = where
        what = "filter" if field is None else f"filter {shown(field)} {op if op in _OPS else shown(op)}"
        raise InvalidArgumentError(f"{what}: {n} values in one list; at most {MAX_VALUES} are allowed")
    return n


def key(spec):
    """A hashable key that is equal for two filters exactly when they are the same data, types
    included (1, 1.0 and True are different filters: one of them may be of the wrong type for its
    field). The cache key of a filter's matches: a long "in" list is frozen as a tuple, at about
    half of repr's cost (an "in" of 480 keywords: 7-14 us against 21-25 us here).

    The first thing a search does with a filter, so it checks the limits first: after `check`,
    the recursion below is at most a few times MAX_DEPTH deep and touches a bounded number of items."""
    check(spec)
    return _key(spec)


def _key(spec):
    kind = type(spec)
    if kind is dict:
        return dict, tuple([(name, _key(value)) for name, value in spec.items()])
    if kind is list or kind is tuple:
        items = tuple(spec)
        try:
            hash(items)
        except TypeError:  # holds dicts or lists: freeze each
            return list, tuple(map(_key, items))
        return list, items, tuple(map(type, items))
    if kind in (str, int, float, bool) or spec is None:
        return kind, spec
    return kind, repr(spec)  # anything else (parse will say what is wrong with it), hashable


def parse(spec, schema: dict[str, str]):
    check(spec)
    return _parse(spec, schema, 0)


def _parse(spec, schema: dict[str, str], depth: int):
    if depth > MAX_DEPTH:  # also refused by `check`; kept so that this recursion is bounded on its own
        raise InvalidArgumentError(f"filter nests deeper than {MAX_DEPTH} levels")
    if not isinstance(spec, dict) or not spec:
        raise InvalidArgumentError(f"a filter is a non-empty dict, got {shown(spec)}")
    parts = []
    for key, value in spec.items():
        if key in ("and", "or"):
            if not isinstance(value, (list, tuple)) or not value:
                raise InvalidArgumentError(f"filter {key!r} takes a non-empty list of filters, got {shown(value)}")
            inner = tuple(_parse(v, schema, depth + 1) for v in value)
            parts.append(All(inner) if key == "and" else Any_(inner))
        elif key == "not":
            parts.append(Not(_parse(value, schema, depth + 1)))
        else:
            parts.extend(_field(key, value, schema))
    return parts[0] if len(parts) == 1 else All(tuple(parts))


def _field(field, spec, schema) -> list[Condition]:
    if not isinstance(field, str):
        raise InvalidArgumentError(f"filter field names are strings, got {shown(field)}")
    kind = schema.get(field)
    if kind is None:
        known = _cut(", ".join(sorted(schema)) or "none yet", 200)  # up to 256 fields: the first few
        raise InvalidArgumentError(f"filter names unknown field {shown(field)}; fields of this collection: {known}")
    ops = spec if isinstance(spec, dict) else {"eq": spec}
    if not ops:
        raise InvalidArgumentError(f"filter on {shown(field)} has no operator; allowed: {sorted(OPERATORS[kind])}")
    out = []
    for op, value in ops.items():
        if op not in OPERATORS[kind]:
            raise InvalidArgumentError(f"operator {shown(op)} does not apply to {kind} field {shown(field)}; "
                                       f"allowed: {sorted(OPERATORS[kind])}")
        out.append(Condition(field, op, _operand(field, kind, op, value)))
    return out


def _operand(field, kind, op, value):
    def bad(expected):
        return InvalidArgumentError(f"filter {shown(field)} {op}: expected {expected} for a {kind} field, "
                                    f"got {shown(value)}")

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
    if isinstance(value, (int, np.integer)) and not _INT64[0] <= value < _INT64[1]:
        raise bad("a number that fits in 64 bits")  # numpy cannot compare a column with a larger int
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
