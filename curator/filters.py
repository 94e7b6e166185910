"""The filter language: conditions on payload fields, combined with and / or / not.

A filter is plain data, the same in embedded and remote use (the SDK sends it as the `Filter`
message of proto/):

    {"lang": "en"}                                   eq (shorthand)
    {"year": {"gte": 2020, "lt": 2024}}              several operators on one field: all must hold
    {"lang": {"in": ["en", "de"]}, "draft": False}   several fields in one dict: all must hold
    {"or": [{"lang": "en"}, {"not": {"tags": "old"}}]}

A field may hold values of several types on different vectors (`curator.payloads`: one column per
field and type), so a condition compares with the columns of its value's type: a string with the
field's keyword and keywords values, a number with its integer and float values (as numbers: 2 and
2.0 are equal), true / false with its bool values. Operators: eq, ne, in, not_in (any value; an
`in` list may mix types), gt, gte, lt, lte (numbers), exists (True / False: a value of any type).
On a list of keywords, eq and in match when any element does. A vector without a value of the
compared type matches ne, not_in and exists=False, and nothing else, so `not` of a condition is
its exact complement.

`parse` turns a filter into a tree of `Condition`, `All`, `Any_`, `Not`; `matches` evaluates one
over the payload columns as a boolean mask over slots, one numpy operation per condition and
column. For an admin's search `parse` is strict: a field no vector holds, or an operator or value
none of its types takes, is InvalidArgumentError naming it. A tenant's search must learn nothing
of other tenants' fields, by message or by refusal, so for it what depends on the columns is never
refused: a condition compares with the columns that exist and matches nothing where none does,
and only when the filter matched none of the tenant's vectors does `explain` check it strictly
against the fields and types on those vectors alone (one pass over them, on that path only).

Every cost is bounded before the work: `check` walks a filter once, without recursion, and refuses
one of more than MAX_CONDITIONS conditions, nested deeper than MAX_DEPTH, or with more than
MAX_VALUES values in one in / not_in list (MAX_TOTAL_VALUES in all of them), before `key`, `parse`
or `matches` touch it. An error message never repeats a long input: values are quoted by `shown`.
"""

import reprlib
from dataclasses import dataclass

import numpy as np

from .errors import InvalidArgumentError
from .payloads import BOOL, FLOAT, INTEGER, KEYWORD, KEYWORDS, Payloads, kinds_text

_EQUALITY = {"eq", "ne", "in", "not_in", "exists"}
OPERATORS = {
    KEYWORD: _EQUALITY,
    KEYWORDS: _EQUALITY,
    BOOL: _EQUALITY,
    INTEGER: _EQUALITY | {"gt", "gte", "lt", "lte"},
    FLOAT: _EQUALITY | {"gt", "gte", "lt", "lte"},
}
_RANGES = ("gt", "gte", "lt", "lte")
# A filter value's type -> the column types it is compared with, and how a message names it.
_STRING, _NUMBER, _FLAG = "string", "number", "flag"
_COMPARED = {_STRING: (KEYWORD, KEYWORDS), _NUMBER: (INTEGER, FLOAT), _FLAG: (BOOL,)}
_EXPECTED = {KEYWORD: "a string", KEYWORDS: "a string", INTEGER: "a number", FLOAT: "a number",
             BOOL: "true or false"}
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
    """`field op value` over the field's columns of types `kinds` (op: eq, in, gt, gte, lt, lte,
    exists; ne, not_in and exists=False are parsed as Not of eq, in and exists=True)."""
    field: str
    op: str
    value: object
    kinds: tuple = ()


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


class Keyed(dict):
    """A filter that carries its key, made by whoever decoded it from a form that is a key already
    (the server: a Filter message's bytes, `curator_proto.filters_wire`), within the limits. Keying
    a large filter as data cost as much as the search (an `or` of 781 conditions: ~3 ms of Python,
    hashing included); its bytes cost ~20 us. Equal bytes are equal filters; equal filters that
    came as other bytes only miss the cache."""

    __slots__ = ("key",)

    def __init__(self, spec: dict, key):
        super().__init__(spec)
        self.key = key


def key(spec):
    """A hashable key that is equal for two filters exactly when they are the same data, types
    included (1, 1.0 and True are different filters: one of them may be of the wrong type for its
    field). The cache key of a filter's matches: a long "in" list is frozen as a tuple, at about
    half of repr's cost (an "in" of 480 keywords: 7-14 us against 21-25 us here); a `Keyed`
    filter's is its own.

    The first thing a search does with a filter, so it checks the limits first: after `check`,
    the recursion below is at most a few times MAX_DEPTH deep and touches a bounded number of items."""
    if type(spec) is Keyed:
        return Keyed, spec.key
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


def parse(spec, payloads: Payloads, strict: bool = True):
    """The filter `spec` as a tree to evaluate with `matches`, over the columns of `payloads`.

    Strict (an admin's search, every vector): a field no vector holds, or a value none of its
    types can match, is InvalidArgumentError naming it. Not strict (a tenant's search): what
    depends on other tenants' payloads is never refused, a condition simply compares with the
    columns that exist and matches nothing where none does, so the answer over the tenant's
    vectors is the same whatever other tenants hold; `explain` then says what was wrong when
    nothing matched."""
    check(spec)
    return _parse(spec, payloads.columns, 0, strict)


def explain(spec, payloads: Payloads, visible: np.ndarray) -> None:
    """Raise the error a strict parse gives against only the fields and types on the vectors
    where `visible` is True (a tenant's, before the filter): called when a tenant's filtered
    search matched nothing, so that a misspelt field is named, never another tenant's field.
    Costs one pass over `visible`, on that path only."""
    _parse(spec, payloads.kinds_on(visible), 0, True)


def _parse(spec, schema, depth: int, strict: bool):
    """`schema`: field -> its types (any container of type names)."""
    if depth > MAX_DEPTH:  # also refused by `check`; kept so that this recursion is bounded on its own
        raise InvalidArgumentError(f"filter nests deeper than {MAX_DEPTH} levels")
    if not isinstance(spec, dict) or not spec:
        raise InvalidArgumentError(f"a filter is a non-empty dict, got {shown(spec)}")
    parts = []
    for key, value in spec.items():
        if key in ("and", "or"):
            if not isinstance(value, (list, tuple)) or not value:
                raise InvalidArgumentError(f"filter {key!r} takes a non-empty list of filters, got {shown(value)}")
            inner = tuple(_parse(v, schema, depth + 1, strict) for v in value)
            parts.append(All(inner) if key == "and" else Any_(inner))
        elif key == "not":
            parts.append(Not(_parse(value, schema, depth + 1, strict)))
        else:
            parts.extend(_field(key, value, schema, strict))
    return parts[0] if len(parts) == 1 else All(tuple(parts))


def _operators(kinds) -> list[str]:
    return sorted(set().union(*(OPERATORS[k] for k in kinds)))


def _field(field, spec, schema, strict: bool) -> list:
    if not isinstance(field, str):
        raise InvalidArgumentError(f"filter field names are strings, got {shown(field)}")
    kinds = schema.get(field) or ()
    if not kinds and strict:
        known = _cut(", ".join(sorted(schema)) or "none", 200)  # many fields: the first few
        raise InvalidArgumentError(f"filter names unknown field {shown(field)}; fields on the vectors this "
                                   f"search may see: {known}")
    ops = spec if isinstance(spec, dict) else {"eq": spec}
    allowed = _operators(kinds) if strict else sorted(_OPS)
    if not ops:
        raise InvalidArgumentError(f"filter on {shown(field)} has no operator; allowed: {allowed}")
    out = []
    for op, value in ops.items():
        if op not in _OPS and not strict:  # nothing about the field: its types may be another tenant's
            raise InvalidArgumentError(f"unknown operator {shown(op)} on field {shown(field)}; allowed: {allowed}")
        if op not in _OPS or (strict and op in _RANGES and INTEGER not in kinds and FLOAT not in kinds):
            raise InvalidArgumentError(f"operator {shown(op)} does not apply to {kinds_text(kinds)} field "
                                       f"{shown(field)}; allowed: {allowed}")
        out.append(_condition_of(field, kinds, op, value, strict))
    return out


def _condition_of(field, kinds, op, value, strict: bool):
    """One operator on a field: a Condition per type of value compared, under Any_ (an `in` list of
    several types) and Not (ne, not_in: the complement of eq, in)."""
    def bad(expected):
        if not strict:  # not a word about the field's types: they may be another tenant's
            wanted = expected or "a string, a number or true / false"
            return InvalidArgumentError(f"filter {shown(field)} {op}: expected {wanted}, got {shown(value)}")
        wanted = expected or " or ".join(sorted({_EXPECTED[k] for k in kinds}))
        of = f" for a {kinds_text(kinds)} field"
        return InvalidArgumentError(f"filter {shown(field)} {op}: expected {wanted}{of}, got {shown(value)}")

    if op == "exists":
        if not isinstance(value, (bool, np.bool_)):
            raise bad("true or false")
        node = Condition(field, op, True, tuple(kinds))
        return node if value else Not(node)
    if op in ("in", "not_in"):
        if not isinstance(value, (list, tuple)) or len(value) > MAX_VALUES:
            raise bad(f"a list of at most {MAX_VALUES} values")
        groups: dict[str, list] = {}
        for v in value:
            groups.setdefault(_value_type(v, bad), []).append(v)
        parts = [Condition(field, "in", tuple(_scalar(vs, kinds, bad)), _compared(kind, vs, kinds, op, bad, strict))
                 for kind, vs in groups.items()]
        node = Condition(field, "in", (), ()) if not parts else parts[0] if len(parts) == 1 else Any_(tuple(parts))
        return Not(node) if op == "not_in" else node
    kind = _value_type(value, bad)
    if op in _RANGES and kind != _NUMBER:
        raise bad("a number")
    node = Condition(field, "eq" if op == "ne" else op, _scalar([value], kinds, bad)[0],
                     _compared(kind, [value], kinds, op, bad, strict))
    return Not(node) if op == "ne" else node


def _value_type(value, bad) -> str:
    if isinstance(value, (bool, np.bool_)):
        return _FLAG
    if isinstance(value, str):
        return _STRING
    if isinstance(value, (int, float, np.integer, np.floating)):
        return _NUMBER
    raise bad(None)


def _scalar(values: list, kinds, bad) -> list:
    """Values of one type as compared: numbers checked to be finite and within 64 bits."""
    out = []
    for value in values:
        if isinstance(value, (bool, np.bool_)):
            out.append(bool(value))
        elif isinstance(value, str):
            out.append(value)
        elif isinstance(value, (int, np.integer)):
            if not _INT64[0] <= value < _INT64[1]:
                raise bad("a number that fits in 64 bits")  # numpy cannot compare a column with a larger int
            out.append(int(value))
        else:
            if not np.isfinite(value):
                raise bad("a finite number")
            out.append(float(value))
    return out


def _compared(value_type: str, values: list, kinds, op: str, bad, strict: bool) -> tuple:
    """The field's column types compared with values of `value_type`. Strict: refused when there
    are none (the field holds no value that could match), or when only integers are held and
    equality asks for a fraction; otherwise those compare with nothing, or match no integer."""
    compared = tuple(k for k in _COMPARED[value_type] if k in kinds)
    if not strict:
        return compared
    if not compared:
        raise bad(None)
    if compared == (INTEGER,) and op in ("eq", "ne", "in", "not_in") and any(
            isinstance(v, (float, np.floating)) and v != int(v) for v in values):
        raise bad("an integer")
    return compared


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
    mask = np.zeros(n, bool)
    columns = payloads.columns.get(node.field, {})
    for kind in node.kinds:  # a slot holds one value of a field: the columns fill apart
        column = columns.get(kind)
        if column is not None:
            column.match(node.op, node.value, mask)
    return mask
