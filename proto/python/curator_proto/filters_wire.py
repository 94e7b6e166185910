"""Payloads and filters on the wire: the user's dicts (`curator.payloads`, `curator.filters`) to the
`Payload` and `Filter` messages and back, shared by the server and the SDK.

Only the shape is checked here (a Value with one kind set, a known operator with as many values as
it takes, a non-empty and / or); whether a field exists and has the operator's type is the
engine's check, against the collection's schema. Every malformed part is InvalidArgumentError
naming where it is, e.g. "filter.all[1].condition 'year': op 'gte' takes one value, got 0".

Canonical form: a dict with several keys becomes `all`, {"lang": "en"} an eq condition, and
{"year": {"gte": 1, "lt": 5}} two conditions under `all`; unpacked, a filter is the explicit tree
{"and": [...]}, {"or": [...]}, {"not": ...}, {field: {op: value}}, which means the same.
"""

import numpy as np

from curator.errors import InvalidArgumentError
from curator_proto.v1 import curator_pb2 as pb

ONE_VALUE = ("eq", "ne", "gt", "gte", "lt", "lte", "exists")
LIST_VALUE = ("in", "not_in")
OPERATORS = ONE_VALUE + LIST_VALUE
# The engine's limit too. A message nested past protobuf's own parse limit (100 messages) never
# reaches the server's code: gRPC answers INTERNAL ("Exception deserializing request").
MAX_DEPTH = 32
_INT64 = (-(2**63), 2**63)


# -- values and payloads ---------------------------------------------------------------------------

def pack_value(value, where: str) -> pb.Value:
    """A Python or numpy value as a Value; bool is tested before int (bool is an int in Python)."""
    if isinstance(value, (bool, np.bool_)):
        return pb.Value(flag=bool(value))
    if isinstance(value, str):
        return pb.Value(keyword=value)
    if isinstance(value, (int, np.integer)):
        if not _INT64[0] <= int(value) < _INT64[1]:
            raise InvalidArgumentError(f"{where}: {value} does not fit in 64 bits")
        return pb.Value(integer=int(value))
    if isinstance(value, (float, np.floating)):
        return pb.Value(number=float(value))
    if isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(v, str) for v in value):
        return pb.Value(keywords=pb.StringList(values=[str(v) for v in value]))
    raise InvalidArgumentError(f"{where}: {value!r} ({type(value).__name__}) is not a payload value; "
                               "allowed: str, int, float, bool, list of str")


def unpack_value(message: pb.Value, where: str):
    kind = message.WhichOneof("kind")
    if kind is None:
        raise InvalidArgumentError(f"{where}: a Value with no kind set; set one of keyword, integer, number, "
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
            raise InvalidArgumentError(f"{where}: field names are strings, got {field!r}")
        if value is not None:
            message.fields[field].CopyFrom(pack_value(value, f"{where}, field {field!r}"))
    return message


def unpack_payload(message: pb.Payload, where: str = "payload") -> dict:
    # a map has no order on the wire; fields come back sorted, as the schema lists them
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

def pack_filter(spec: dict, where: str = "filter", depth: int = 0) -> pb.Filter:
    """A filter dict (see `curator.filters`) as a Filter message."""
    if depth > MAX_DEPTH:
        raise InvalidArgumentError(f"{where}: filter nests deeper than {MAX_DEPTH} levels")
    if not isinstance(spec, dict) or not spec:
        raise InvalidArgumentError(f"{where}: a filter is a non-empty dict, got {spec!r}")
    parts = []
    for key, value in spec.items():
        if key in ("and", "or"):
            if not isinstance(value, (list, tuple)) or not value:
                raise InvalidArgumentError(f"{where}: {key!r} takes a non-empty list of filters, got {value!r}")
            inner = pb.FilterList(filters=[pack_filter(v, f"{where}.{key}[{i}]", depth + 1)
                                           for i, v in enumerate(value)])
            parts.append(pb.Filter(all=inner) if key == "and" else pb.Filter(any=inner))
        elif key == "not":
            parts.append(pb.Filter(negate=pack_filter(value, f"{where}.not", depth + 1)))
        elif isinstance(key, str):
            ops = value if isinstance(value, dict) else {"eq": value}
            if not ops:
                raise InvalidArgumentError(f"{where}: {key!r} has no operator; allowed: {', '.join(OPERATORS)}")
            parts.extend(pb.Filter(condition=_pack_condition(key, op, v, where)) for op, v in ops.items())
        else:
            raise InvalidArgumentError(f"{where}: field names are strings, got {key!r}")
    return parts[0] if len(parts) == 1 else pb.Filter(all=pb.FilterList(filters=parts))


def _pack_condition(field: str, op, value, where: str) -> pb.Condition:
    where = f"{where} {field!r} {op}"
    if op in LIST_VALUE:
        if not isinstance(value, (list, tuple, np.ndarray)):
            raise InvalidArgumentError(f"{where}: takes a list of values, got {value!r}")
        values = [pack_value(v, where) for v in value]
    elif op in ONE_VALUE:
        values = [pack_value(value, where)]
    else:
        raise InvalidArgumentError(f"{where}: unknown operator; allowed: {', '.join(OPERATORS)}")
    return pb.Condition(field=field, op=op, values=values)


def unpack_filter(message: pb.Filter, where: str = "filter", depth: int = 0) -> dict:
    """A Filter message as a filter dict, in the explicit tree form; malformed parts are named."""
    if depth > MAX_DEPTH:
        raise InvalidArgumentError(f"{where}: filter nests deeper than {MAX_DEPTH} levels")
    kind = message.WhichOneof("kind")
    if kind in ("all", "any"):
        filters = message.all.filters if kind == "all" else message.any.filters
        if not filters:
            raise InvalidArgumentError(f"{where}.{kind}: an empty list; give at least one filter")
        key = "and" if kind == "all" else "or"
        return {key: [unpack_filter(f, f"{where}.{kind}[{i}]", depth + 1) for i, f in enumerate(filters)]}
    if kind == "negate":
        return {"not": unpack_filter(message.negate, f"{where}.negate", depth + 1)}
    if kind == "condition":
        return _unpack_condition(message.condition, f"{where}.condition")
    raise InvalidArgumentError(f"{where}: a Filter with no kind set; set one of all, any, negate, condition")


def _unpack_condition(condition: pb.Condition, where: str) -> dict:
    field, op = condition.field, condition.op
    where = f"{where} {field!r}"
    if not field:
        raise InvalidArgumentError(f"{where}: no field named")
    if op not in OPERATORS:
        raise InvalidArgumentError(f"{where}: unknown op {op!r}; allowed: {', '.join(OPERATORS)}")
    values = [unpack_value(v, f"{where} {op} value {i}") for i, v in enumerate(condition.values)]
    if op in LIST_VALUE:
        return {field: {op: values}}
    if len(values) != 1:
        raise InvalidArgumentError(f"{where}: op {op!r} takes one value, got {len(values)}")
    return {field: {op: values[0]}}
