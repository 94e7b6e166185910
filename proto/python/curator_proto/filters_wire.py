"""Payloads and filters on the wire: the user's dicts (`curator.payloads`, `curator.filters`) to the
`Payload` and `Filter` messages and back, shared by the server and the SDK.

Only the shape is checked here (a Value with one kind set, a known operator with as many values as
it takes, a non-empty and / or); whether a field exists and has the operator's type is the
engine's check, against the collection's schema. Every malformed part is InvalidArgumentError
naming where it is, e.g. "filter.all[1].condition 'year': op 'gte' takes one value, got 0".

Canonical form: a dict with several keys becomes `all`, {"lang": "en"} an eq condition, and
{"year": {"gte": 1, "lt": 5}} two conditions under `all`; unpacked, a filter is the explicit tree
{"and": [...]}, {"or": [...]}, {"not": ...}, {field: {op: value}}, which means the same.

The engine's limits (`curator.filters`: conditions, depth, values in lists) are checked before a
filter is packed or unpacked, by one walk without recursion; error messages quote user input
through `shown` and cut long places, so they stay short whatever was sent.
"""

import numpy as np

from curator.errors import InvalidArgumentError
from curator.filters import MAX_CONDITIONS, MAX_DEPTH, MAX_TOTAL_VALUES, MAX_VALUES, Keyed, check, shown
from curator_proto.v1 import curator_pb2 as pb

ONE_VALUE = ("eq", "ne", "gt", "gte", "lt", "lte", "exists")
LIST_VALUE = ("in", "not_in")
OPERATORS = ONE_VALUE + LIST_VALUE
# MAX_DEPTH is the engine's. A message nested past protobuf's own parse limit (about 100 messages,
# 48 levels of all / any) never reaches the server's code: gRPC answers INTERNAL ("Exception
# deserializing request") before any handler runs.
_INT64 = (-(2**63), 2**63)
PLACE_CHARS = 100  # of a place named in an error message (filter.all[3].negate...)


def _at(where: str) -> str:
    """A place for an error message: a deep one loses its middle (its start and its end say most)."""
    return where if len(where) <= PLACE_CHARS else f"{where[:24]}...{where[27 - PLACE_CHARS:]}"


# -- values and payloads ---------------------------------------------------------------------------

def pack_value(value, where: str) -> pb.Value:
    """A Python or numpy value as a Value; bool is tested before int (bool is an int in Python)."""
    if isinstance(value, (bool, np.bool_)):
        return pb.Value(flag=bool(value))
    if isinstance(value, str):
        return pb.Value(keyword=value)
    if isinstance(value, (int, np.integer)):
        if not _INT64[0] <= int(value) < _INT64[1]:
            raise InvalidArgumentError(f"{_at(where)}: {shown(value)} does not fit in 64 bits")
        return pb.Value(integer=int(value))
    if isinstance(value, (float, np.floating)):
        return pb.Value(number=float(value))
    if isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(v, str) for v in value):
        return pb.Value(keywords=pb.StringList(values=[str(v) for v in value]))
    raise InvalidArgumentError(f"{_at(where)}: {shown(value)} ({type(value).__name__}) is not a payload value; "
                               "allowed: str, int, float, bool, list of str")


def unpack_value(message: pb.Value, where: str):
    kind = message.WhichOneof("kind")
    if kind is None:
        raise InvalidArgumentError(f"{_at(where)}: a Value with no kind set; set one of keyword, integer, number, "
                                   "flag, keywords")
    value = getattr(message, kind)
    return list(value.values) if kind == "keywords" else value


def pack_payload(payload: dict | None, where: str = "payload") -> pb.Payload:
    """None and {} are both "no fields"; a field whose value is None is left out (it has no value)."""
    if payload is None:
        return pb.Payload()
    if not isinstance(payload, dict):
        raise InvalidArgumentError(f"{where} must be a dict of field -> value, got {type(payload).__name__}")
    message = pb.Payload()
    for field, value in payload.items():
        if not isinstance(field, str):
            raise InvalidArgumentError(f"{where}: field names are strings, got {shown(field)}")
        if value is not None:
            message.fields[field].CopyFrom(pack_value(value, f"{where}, field {field!r}"))  # cut by _at if need be
    return message


def unpack_payload(message: pb.Payload, where: str = "payload") -> dict:
    # a map has no order on the wire; fields come back sorted, as the schema lists them
    # (repr, not shown, for the place: this runs for every field of every payload written)
    return {field: unpack_value(message.fields[field], f"{where}, field {field!r}") for field in sorted(message.fields)}


def pack_payloads(payloads, n: int) -> list[pb.Payload]:
    """One Payload per vector, for `n` vectors; None: none given (an empty list on the wire)."""
    if payloads is None:
        return []
    if isinstance(payloads, dict) or len(payloads := list(payloads)) != n:
        got = "one dict" if isinstance(payloads, dict) else f"{len(payloads)} payloads"
        raise InvalidArgumentError(f"{got} for {n} vectors; give a list of one dict per vector")
    return [pack_payload(p, f"payload {i}") for i, p in enumerate(payloads)]


def unpack_payloads(messages) -> list[dict]:
    return [unpack_payload(m, f"payload {i}") for i, m in enumerate(messages)]


# -- filters ---------------------------------------------------------------------------------------

def pack_filter(spec: dict) -> pb.Filter:
    """A filter dict (see `curator.filters`) as a Filter message; one over the engine's limits is
    refused here, as the engine would refuse it, before any of it is packed."""
    check(spec)
    return _pack_filter(spec, "filter", 0)


def _pack_filter(spec: dict, where: str, depth: int) -> pb.Filter:
    if depth > MAX_DEPTH:  # also refused by `check`; kept so that this recursion is bounded on its own
        raise InvalidArgumentError(f"{_at(where)}: filter nests deeper than {MAX_DEPTH} levels")
    if not isinstance(spec, dict) or not spec:
        raise InvalidArgumentError(f"{_at(where)}: a filter is a non-empty dict, got {shown(spec)}")
    parts = []
    for key, value in spec.items():
        if key in ("and", "or"):
            if not isinstance(value, (list, tuple)) or not value:
                raise InvalidArgumentError(f"{_at(where)}: {key!r} takes a non-empty list of filters, "
                                           f"got {shown(value)}")
            inner = pb.FilterList(filters=[_pack_filter(v, f"{where}.{key}[{i}]", depth + 1)
                                           for i, v in enumerate(value)])
            parts.append(pb.Filter(all=inner) if key == "and" else pb.Filter(any=inner))
        elif key == "not":
            parts.append(pb.Filter(negate=_pack_filter(value, f"{where}.not", depth + 1)))
        elif isinstance(key, str):
            ops = value if isinstance(value, dict) else {"eq": value}
            if not ops:
                raise InvalidArgumentError(f"{_at(where)}: {shown(key)} has no operator; "
                                           f"allowed: {', '.join(OPERATORS)}")
            parts.extend(pb.Filter(condition=_pack_condition(key, op, v, where)) for op, v in ops.items())
        else:
            raise InvalidArgumentError(f"{_at(where)}: field names are strings, got {shown(key)}")
    return parts[0] if len(parts) == 1 else pb.Filter(all=pb.FilterList(filters=parts))


def _pack_condition(field: str, op, value, where: str) -> pb.Condition:
    where = f"{where} {shown(field)} {op if op in OPERATORS else shown(op)}"
    if op in LIST_VALUE:
        if not isinstance(value, (list, tuple, np.ndarray)):
            raise InvalidArgumentError(f"{_at(where)}: takes a list of values, got {shown(value)}")
        values = [pack_value(v, where) for v in value]
    elif op in ONE_VALUE:
        values = [pack_value(value, where)]
    else:
        raise InvalidArgumentError(f"{_at(where)}: unknown operator; allowed: {', '.join(OPERATORS)}")
    return pb.Condition(field=field, op=op, values=values)


def unpack_filter(message: pb.Filter) -> dict:
    """A Filter message as a filter dict, in the explicit tree form; malformed parts are named.
    The limits are checked first, so a message over them costs one short walk and no unpacking.
    The dict is keyed by the message's bytes (`curator.filters.Keyed`): the engine's cache of a
    filter's matches then needs no walk over it."""
    _check_message(message)
    try:
        spec = _unpack_filter(message, None, 0)  # no places: they are for an error's message
    except InvalidArgumentError:
        _unpack_filter(message, "filter", 0)  # the same error again, saying where
        raise
    return Keyed(spec, message.SerializeToString())


def _check_message(message: pb.Filter) -> None:
    """`curator.filters.check` for a Filter message: the same limits and messages where they can be
    the same, one walk without recursion that stops at the first limit passed. A malformed leaf
    (no kind, an empty list) counts as a condition, so the walk is bounded by the limits alone."""
    conditions = values = 0
    stack = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidArgumentError(f"filter nests deeper than {MAX_DEPTH} levels")
        kind = part.WhichOneof("kind")
        if kind == "all" or kind == "any":
            inner = part.all.filters if kind == "all" else part.any.filters
            if len(inner) > MAX_CONDITIONS:  # each filter listed is at least one condition
                raise InvalidArgumentError(f"filter.{kind} lists {len(inner)} filters; at most {MAX_CONDITIONS} "
                                           "conditions are allowed in a filter")
            if inner:
                stack.extend((f, depth + 1) for f in inner)
                continue
        elif kind == "negate":
            stack.append((part.negate, depth + 1))
            continue
        elif kind == "condition":
            n, op = len(part.condition.values), part.condition.op
            if n > MAX_VALUES:
                op = op if op in OPERATORS else shown(op)
                raise InvalidArgumentError(f"filter {shown(part.condition.field)} {op}: {n} values in one list; "
                                           f"at most {MAX_VALUES} are allowed")
            values += n
            if values > MAX_TOTAL_VALUES:
                raise InvalidArgumentError(f"filter has more than {MAX_TOTAL_VALUES} values in its lists "
                                           "(the limit, all lists together)")
        conditions += 1
        if conditions > MAX_CONDITIONS:
            raise InvalidArgumentError(f"filter has more than {MAX_CONDITIONS} conditions (the limit)")


def _place(where) -> str:
    """A place in a filter message kept as (parent, step) pairs and written out only for an error
    message; None when places are not kept (a filter's first reading: making one for each of a
    thousand conditions cost more than the rest, and each was one more object to collect)."""
    if where is None:
        return "filter"
    steps = []
    while isinstance(where, tuple):
        where, step = where
        steps.append(step)
    return where + "".join(reversed(steps))


def _unpack_filter(message: pb.Filter, where, depth: int) -> dict:
    if depth > MAX_DEPTH:  # also refused by `_check_message`; kept so that this recursion is bounded on its own
        raise InvalidArgumentError(f"{_at(_place(where))}: filter nests deeper than {MAX_DEPTH} levels")
    kind = message.WhichOneof("kind")
    if kind in ("all", "any"):
        filters = message.all.filters if kind == "all" else message.any.filters
        if not filters:
            raise InvalidArgumentError(f"{_at(_place(where) + '.' + kind)}: an empty list; give at least one filter")
        key = "and" if kind == "all" else "or"
        return {key: [_unpack_filter(f, None if where is None else (where, f".{kind}[{i}]"), depth + 1)
                      for i, f in enumerate(filters)]}
    if kind == "negate":
        return {"not": _unpack_filter(message.negate, None if where is None else (where, ".negate"), depth + 1)}
    if kind == "condition":
        return _unpack_condition(message.condition, where)
    raise InvalidArgumentError(f"{_at(_place(where))}: a Filter with no kind set; set one of all, any, negate, "
                               "condition")


def _unpack_condition(condition: pb.Condition, where) -> dict:
    field, op = condition.field, condition.op
    if not field:
        raise InvalidArgumentError(f"{_at(_place(where) + '.condition ' + shown(field))}: no field named")
    if op not in OPERATORS:
        raise InvalidArgumentError(f"{_at(_place(where) + '.condition ' + shown(field))}: unknown op {shown(op)}; "
                                   f"allowed: {', '.join(OPERATORS)}")
    values = _unpack_values(condition, where)
    if op in LIST_VALUE:
        return {field: {op: values}}
    if len(values) != 1:
        raise InvalidArgumentError(f"{_at(_place(where) + '.condition ' + shown(field))}: op {op!r} takes one value, "
                                   f"got {len(values)}")
    return {field: {op: values[0]}}


# A long `in` list is read from the condition's bytes by numpy when its values are all integers or
# all numbers (an attacker's 7 812-value `in` took ~4 ms of Python value by value, holding the GIL).
PACKED_FROM = 256  # values in a condition from which the bytes are looked at first (below, one by one is as quick)


def _unpack_values(condition: pb.Condition, where) -> list:
    values = condition.values
    if len(values) >= PACKED_FROM:
        packed = _numbers_of(condition, len(values))
        if packed is not None:
            return packed
    out = []
    for i, value in enumerate(values):
        kind = value.WhichOneof("kind")
        if kind is None:
            unpack_value(value, f"{_place(where)}.condition {shown(condition.field)} {condition.op} value {i}")
        inner = getattr(value, kind)
        out.append(list(inner.values) if kind == "keywords" else inner)
    return out


_NUMBER_HEAD = np.array([0x1A, 0x09, 0x19], np.uint8)  # a Value (field 3, 9 bytes): number (field 3, fixed64)


def _numbers_of(condition: pb.Condition, n: int) -> list | None:
    """The values of a condition whose `n` values are all integers, or all numbers, read from its
    serialized bytes with numpy; None for any other mix (the caller reads them one by one).

    The bytes are the field and op (fields 1 and 2) and then the n values (field 3), each
    `1A <length> <Value>`, where a Value is `10 <varint>` (integer) or `19 <8 bytes>` (number).
    Anything else (another order, other fields, unknown fields in a Value) does not tile the bytes
    exactly as expected, and is left to the slow reading."""
    raw = np.frombuffer(condition.SerializeToString(), np.uint8)
    at = 0
    for tag in (0x0A, 0x12):  # field, op: skipped (read from the message itself)
        if at < raw.size and raw[at] == tag:
            length, shift, at = 0, 0, at + 1
            while at < raw.size and raw[at] & 0x80:
                length |= (int(raw[at]) & 0x7F) << shift
                shift, at = shift + 7, at + 1
            if at >= raw.size or shift > 28:
                return None
            at += 1 + (length | (int(raw[at]) << shift))
    body = raw[at:]
    if body.size == 11 * n:  # all numbers: fixed-size records
        rows = body.reshape(n, 11)
        if (rows[:, :3] == _NUMBER_HEAD).all():
            return rows[:, 3:].copy().view("<f8").ravel().tolist()
    # all integers: per value, the bytes 1A, its length L, 10 and the varint's last byte are the
    # only ones below 0x80 (a varint's other bytes have the top bit set)
    ends = np.flatnonzero(body < 0x80)
    if ends.size != 4 * n:
        return None
    ends = ends.reshape(n, 4)
    start, last = ends[:, 0], ends[:, 3]
    length = body[ends[:, 1]].astype(np.int64)
    tiled = ((ends[:, 1] == start + 1).all() and (ends[:, 2] == start + 2).all() and (body[start] == 0x1A).all()
             and (body[ends[:, 2]] == 0x10).all() and (last == start + 1 + length).all() and (length <= 11).all()
             and start[0] == 0 and (start[1:] == last[:-1] + 1).all() and last[-1] == body.size - 1)
    if not tiled:
        return None
    digits = length - 1  # each varint's bytes (1 to 10), all of them one after another:
    first = np.cumsum(digits) - digits  # where each value's begin among them
    place = np.arange(first[-1] + digits[-1]) - np.repeat(first, digits)  # a byte's place in its varint
    parts = (body[np.repeat(start + 3, digits) + place] & 0x7F).astype(np.uint64) << (7 * place).astype(np.uint64)
    return np.add.reduceat(parts, first).view(np.int64).tolist()
