"""Payload storage follows what the vectors hold, and no tenant's payloads constrain or reveal
another's: one wide payload on a large collection costs kilobytes, not its capacity times its
fields; a field's type is per vector (tenants writing "year" as a keyword and as an integer both
filter correctly); a tenant's filter errors never name fields it cannot see (a hypothesis property);
numbers compare across integer and float; the column bounds leave every writer room; and the
sparse columns agree with a plain dict model through writes, clears, renumbering and reopening."""

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import curator
from curator import filters
from curator.payloads import (BASE_COLUMNS, COLUMNS_PER_PAYLOAD, MAX_KEYWORDS, MAX_PAYLOAD_FIELDS, Payloads,
                              type_of)


def wide_payload(seed: int = 0, fields: int = 20, words: int = MAX_KEYWORDS) -> dict:
    """20 fields, each a list of 64 distinct long keywords: the payload that cost 57.6 MB a field."""
    return {f"field_{f}": [f"keyword-{seed}-{f}-{w}-" + "x" * 80 for w in range(words)] for f in range(fields)}


# -- memory follows what the vectors hold ----------------------------------------------------------

def test_one_wide_payload_on_a_large_collection_costs_kilobytes():
    payloads = Payloads(capacity=225_000)
    empty = payloads.nbytes
    payloads.check([wide_payload()])
    payloads.write(np.array([224_999]), [wide_payload()])
    assert payloads.nbytes < 10_000_000
    assert payloads.nbytes - empty < 1_000_000  # 1 280 keywords of ~130 bytes and 20 columns
    assert payloads.read(np.array([224_999])) == [wide_payload()]
    hit = filters.matches(filters.parse({"field_7": wide_payload()["field_7"][63]}, payloads), payloads, 225_000)
    assert np.flatnonzero(hit).tolist() == [224_999]


def test_one_wide_payload_through_a_collection_of_200k_vectors():
    col = curator.open(":memory:").create_collection("c", dim=4)
    n = 200_000
    col.insert(np.arange(n), np.random.default_rng(0).standard_normal((n, 4)), tenant="t")
    assert col.index.payloads.capacity >= 200_000
    col.set_payloads([12_345], wide_payload())
    assert col.stats()["memory_bytes"]["payloads"] < 10_000_000
    assert col.get_payloads([12_345]) == [wide_payload()]
    assert col.search(np.zeros(4), k=5, tenant="t", filter={"field_3": {"exists": True}}).ids.tolist() == [12_345]


def test_rewriting_one_vector_forever_grows_nothing():
    """Words, shapes and columns no vector uses any more are forgotten."""
    payloads = Payloads(capacity=1000)
    payloads.write(np.arange(1000), [{"u": i} for i in range(1000)])
    sizes = []
    for i in range(120):
        payload = wide_payload(seed=i, fields=4) | {f"own_{i}": i, f"name_{i % 7}": "x"}
        payloads.check([payload])
        payloads.write(np.array([500]), [payload])
        sizes.append(payloads.nbytes)
    assert max(sizes[20:]) < 2 * sizes[10]
    assert payloads.n_columns == 1 + 4 + 2 and len(payloads._shapes) < 2 * payloads.held + 1024 + 1


# -- types per vector: "year" as a keyword for one tenant, an integer for another -----------------

def test_two_tenants_writing_year_with_different_types_both_filter_correctly():
    col = curator.open(":memory:").create_collection("c", dim=2)
    rng = np.random.default_rng(1)
    col.insert(np.arange(100), rng.random((100, 2)), tenant="a",
               payloads=[{"year": f"y{2000 + i % 10}", "lang": "en"} for i in range(100)])
    col.insert(np.arange(100, 200), rng.random((100, 2)), tenant="b",
               payloads=[{"year": 2000 + i % 10} for i in range(100)])
    assert col.payload_schema() == {"lang": "keyword", "year": "integer|keyword"}

    def found(tenant, where):
        return sorted(col.search(np.zeros(2), k=200, tenant=tenant, filter=where).ids.tolist())

    assert found("a", {"year": "y2003"}) == [i for i in range(100) if i % 10 == 3]
    assert found("b", {"year": 2003}) == [i for i in range(100, 200) if i % 10 == 3]
    assert found("b", {"year": {"gte": 2008}}) == [i for i in range(100, 200) if i % 10 >= 8]
    with pytest.raises(curator.InvalidArgumentError, match="does not apply to keyword field 'year'"):
        found("a", {"year": {"gte": 2008}})  # a's years are keywords, whatever b's are
    assert found("b", {"year": {"ne": 2003}}) == [i for i in range(100, 200) if i % 10 != 3]
    assert found(None, {"year": {"in": ["y2001", 2001]}}) == [1, 11, 21, 31, 41, 51, 61, 71, 81, 91,
                                                             101, 111, 121, 131, 141, 151, 161, 171, 181, 191]
    assert found(None, {"year": {"exists": True}}) == list(range(200))
    col.set_payloads([150], {"year": 1999.5})  # a third type on one vector
    assert found("b", {"year": {"lt": 2000}}) == [150]
    assert col.payload_schema()["year"] == "float|integer|keyword"
    with pytest.raises(curator.InvalidArgumentError, match=r"expected a number for a float\|integer field"):
        col.search(np.zeros(2), k=5, tenant="b", filter={"year": True})  # b's error: b's types only
    with pytest.raises(curator.InvalidArgumentError, match=r"a number or a string for a float\|integer\|keyword"):
        col.search(np.zeros(2), k=5, filter={"year": True})  # an admin's: every type


def test_numbers_compare_as_numbers_across_integer_and_float():
    col = curator.open(":memory:").create_collection("c", dim=2)
    values = [1, 2, 2.0, 2.5, 3, -1.5, 10**15, 7.0]
    col.insert(np.arange(len(values)), np.ones((len(values), 2)), tenant="t",
               payloads=[{"x": v} for v in values])

    def found(where):
        return sorted(col.search(np.zeros(2), k=20, tenant="t", filter=where).ids.tolist())

    for where, holds in [({"x": 2}, lambda v: v == 2), ({"x": 2.0}, lambda v: v == 2),
                         ({"x": {"gt": 2}}, lambda v: v > 2), ({"x": {"gte": 2.5}}, lambda v: v >= 2.5),
                         ({"x": {"lt": 1.5}}, lambda v: v < 1.5), ({"x": {"lte": -1.5}}, lambda v: v <= -1.5),
                         ({"x": {"in": [7, 2.5, 10**15]}}, lambda v: v in (7, 2.5, 10**15)),
                         ({"x": {"not_in": [1, 3.0]}}, lambda v: v not in (1, 3)),
                         ({"x": {"ne": 2.5}}, lambda v: v != 2.5)]:
        assert found(where) == [i for i, v in enumerate(values) if holds(v)], where
    assert col.get_payloads([2, 1]) == [{"x": 2.0}, {"x": 2}] and type(col.get_payloads([2])[0]["x"]) is float


NUMBERS = st.one_of(st.integers(-50, 50), st.integers(-50, 50).map(float),
                    st.floats(-50, 50, allow_nan=False).map(lambda f: round(f, 1)))


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.one_of(NUMBERS, st.none()), min_size=1, max_size=30),
       op=st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in"]),
       operand=st.one_of(NUMBERS, st.lists(NUMBERS, max_size=4)))
def test_mixed_number_filters_agree_with_python(values, op, operand):
    payloads = Payloads(64)
    payloads.write(np.arange(len(values)), [None if v is None else {"x": v} for v in values])
    if (op in ("in", "not_in")) != isinstance(operand, list):
        operand = [operand] if op in ("in", "not_in") else (operand[0] if operand else 0)
    python = {"eq": lambda v: v == operand, "ne": lambda v: v != operand, "gt": lambda v: v > operand,
              "gte": lambda v: v >= operand, "lt": lambda v: v < operand, "lte": lambda v: v <= operand,
              "in": lambda v: v in operand, "not_in": lambda v: v not in operand}[op]
    expected = [i for i, v in enumerate(values) if (op in ("ne", "not_in") if v is None else python(v))]
    try:
        where = filters.parse({"x": {op: operand}}, payloads)
    except curator.InvalidArgumentError as error:  # no number held, or only integers and equality with a fraction
        kinds = {type_of(v) for v in values if v is not None}
        assert ("unknown field" in str(error)) if not kinds else kinds == {"integer"} and "an integer" in str(error)
        return
    assert np.flatnonzero(filters.matches(where, payloads, len(values))).tolist() == expected


# -- errors name only what the caller may see --------------------------------------------------------

NAMES = st.text("abcdefgh_", min_size=1, max_size=6)
VALUES = {"keyword": st.sampled_from(["x", "y"]), "integer": st.integers(0, 3), "float": st.sampled_from([0.5, 1.5]),
          "bool": st.booleans(), "keywords": st.lists(st.sampled_from(["x", "y"]), min_size=1, max_size=2)}
PROBES = st.one_of(st.integers(0, 3), st.just(0.5), st.booleans(), st.sampled_from(["x", "zz"]),
                   st.dictionaries(st.sampled_from(["gt", "in", "exists", "near"]),
                                   st.one_of(st.integers(0, 3), st.just("x"), st.just([1, "x"]), st.just("yes")),
                                   min_size=1, max_size=2))


def _kinds_named(message: str) -> set:
    """The payload types an error message states for a field ("for a integer|keyword field")."""
    found = re.findall(r"(?:for an?|to) ([a-z|]+) field", message)
    return {kind for text in found for kind in text.split("|")}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(secret=st.dictionaries(NAMES.map(lambda s: "secret_" + s), st.sampled_from(sorted(VALUES)), min_size=1,
                              max_size=5),
       shared=st.dictionaries(NAMES.map(lambda s: "shared_" + s),
                              st.tuples(st.sampled_from(sorted(VALUES)), st.sampled_from(sorted(VALUES))), max_size=3),
       mine=st.dictionaries(NAMES.map(lambda s: "mine_" + s), st.sampled_from(sorted(VALUES)), max_size=3),
       probe_field=st.one_of(NAMES.map(lambda s: "secret_" + s), NAMES.map(lambda s: "shared_" + s),
                             NAMES.map(lambda s: "mine_" + s), NAMES),
       probe=PROBES, data=st.data())
def test_a_tenants_filter_errors_never_name_another_tenants_fields(secret, shared, mine, probe_field, probe, data):
    """Tenant a's vectors hold the secret_ fields, and the shared_ ones with a's types; b's hold
    mine_ and shared_ with b's types. Whatever b's filter, b gets the same answer or the same
    error as from a twin collection where a never wrote anything; an error names no field b cannot
    see (beyond the one b's filter named itself) and no type b's vectors do not hold."""
    col, twin = (curator.open(":memory:").create_collection("c", dim=2) for _ in range(2))
    a_kinds = secret | {name: kinds[0] for name, kinds in shared.items()}
    b_kinds = mine | {name: kinds[1] for name, kinds in shared.items()}
    for tenant, kinds, first in (("a", a_kinds, 0), ("b", b_kinds, 10)):
        payloads = [{name: data.draw(VALUES[kind]) for name, kind in kinds.items()} for _ in range(3)]
        for target in (col, twin) if tenant == "b" else (col,):  # the twin never had a's vectors
            target.insert(np.arange(first, first + 3), np.ones((3, 2)), tenant=tenant, payloads=payloads)
    for target in (col, twin):
        target.insert([20], np.ones((1, 2)), tenant="c", payloads=[{"zz_other": 1}])
        target.grant([20], tenant="b")  # shared with b: its fields are b's to see
    b_kinds["zz_other"] = "integer"

    def outcome(target):
        try:
            return sorted(target.search(np.zeros(2), k=5, tenant="b", filter={probe_field: probe}).ids.tolist())
        except curator.InvalidArgumentError as error:
            return str(error)

    seen = outcome(col)
    assert seen == outcome(twin)  # b's answer or refusal is the same whatever a holds
    if isinstance(seen, str):
        rest = seen.replace(repr(probe_field), "")
        assert "secret_" not in rest and all(name not in rest for name in shared if name not in b_kinds)
        assert _kinds_named(seen) <= ({b_kinds[probe_field]} if probe_field in b_kinds else set()), seen
        if probe_field in b_kinds:
            assert "unknown field" not in seen
        listed = re.search(r"may see: (.*)$", seen)
        if listed:
            assert set(listed.group(1).split(", ")) <= set(b_kinds) | {"none"}


def test_an_admin_error_may_name_every_field_and_a_tenant_error_only_its_own():
    col = curator.open(":memory:").create_collection("c", dim=2)
    col.insert([1], np.ones((1, 2)), tenant="a", payloads=[{"salary": 100, "year": "y1"}])
    col.insert([2], np.ones((1, 2)), tenant="b", payloads=[{"year": 2020}])
    with pytest.raises(curator.InvalidArgumentError) as raised:
        col.search(np.zeros(2), k=1, tenant="b", filter={"nope": 1})
    assert "may see: year" in str(raised.value) and "salary" not in str(raised.value)
    assert raised.value.__context__ is None and raised.value.__cause__ is None  # no chained original
    with pytest.raises(curator.InvalidArgumentError) as raised:
        col.search(np.zeros(2), k=1, tenant="b", filter={"year": True})
    assert "integer field" in str(raised.value) and "keyword" not in str(raised.value)
    with pytest.raises(curator.InvalidArgumentError, match="may see: salary, year"):
        col.search(np.zeros(2), k=1, filter={"nope": 1})
    with pytest.raises(curator.InvalidArgumentError, match=r"integer\|keyword field"):
        col.search(np.zeros(2), k=1, filter={"year": True})
    with pytest.raises(curator.InvalidArgumentError, match="unknown field 'salary'; fields on the vectors this search "
                                                           "may see: year"):
        col.search(np.zeros(2), k=1, tenant="b", filter={"salary": "high"})  # a's salary is an integer


# -- bounds: per payload, and columns that a few vectors cannot use up ------------------------------

def test_a_payload_holds_at_most_256_fields():
    payloads = Payloads(8)
    payloads.check([{f"f{i}": i for i in range(MAX_PAYLOAD_FIELDS)}])
    with pytest.raises(curator.InvalidArgumentError, match="257 fields; at most 256"):
        payloads.check([{f"f{i}": i for i in range(MAX_PAYLOAD_FIELDS + 1)}])


def test_one_tenant_filling_the_columns_leaves_every_vector_room_for_its_own():
    payloads = Payloads(4096)
    slot = 0

    def add(n_vectors, new_fields, prefix):
        nonlocal slot
        batch = [{f"{prefix}{slot + v}_{f}": 1 for f in range(new_fields)} for v in range(n_vectors)]
        payloads.check(batch)
        payloads.write(np.arange(slot, slot + n_vectors), batch)
        slot += n_vectors

    while True:  # a's vectors, each with 256 fields of its own, until refused
        try:
            add(1, MAX_PAYLOAD_FIELDS, "a")
        except curator.InvalidArgumentError as error:
            assert "past the collection's limit" in str(error)
            break
    assert slot <= BASE_COLUMNS // (MAX_PAYLOAD_FIELDS - COLUMNS_PER_PAYLOAD) + 1  # a few dozen vectors filled it...
    for _ in range(3):  # ...yet each vector b writes may bring 16 columns of its own
        add(1, COLUMNS_PER_PAYLOAD, "b")
    add(4, COLUMNS_PER_PAYLOAD, "b")
    slack = BASE_COLUMNS + COLUMNS_PER_PAYLOAD * payloads.held - payloads.n_columns
    assert 0 <= slack < MAX_PAYLOAD_FIELDS
    with pytest.raises(curator.InvalidArgumentError):
        add(1, slack + COLUMNS_PER_PAYLOAD + 1, "b")  # past its allowance and the slack a left
    assert payloads.schema()[f"b{slot - 1}_0"] == "integer"


# -- the sparse columns against a dict model ---------------------------------------------------------

PAYLOAD_VALUES = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, 2.0, -1.5]), st.booleans(),
                           st.sampled_from(["p", "q", "r"]), st.lists(st.sampled_from(["p", "q", "s"]), max_size=3),
                           st.none())
PAYLOADS = st.one_of(st.none(), st.dictionaries(st.sampled_from(["f", "g", "h"]), PAYLOAD_VALUES, max_size=3))
OPS = st.one_of(
    st.tuples(st.just("write"), st.lists(st.tuples(st.integers(0, 39), PAYLOADS), min_size=1, max_size=8)),
    st.tuples(st.just("clear"), st.lists(st.integers(0, 39), max_size=6)),
    st.tuples(st.just("permute"), st.randoms(use_true_random=False)))
PROBE_FILTERS = [{"f": 1}, {"f": "p"}, {"g": {"in": ["q", 2, True]}}, {"h": {"gt": 0}}, {"f": {"exists": False}},
                 {"g": {"not_in": ["p", 0.5]}}, {"h": {"ne": "s"}}, {"f": {"lte": 2.0}}]


def _model_holds(payload: dict, where: dict) -> bool:
    (field, spec), = where.items()
    ops = spec if isinstance(spec, dict) else {"eq": spec}
    (op, arg), = ops.items()
    value = payload.get(field)
    items = value if isinstance(value, list) else [] if value is None else [value]

    def same(a, b):  # as the filter compares: by type (True is not 1), numbers as numbers
        return isinstance(a, bool) == isinstance(b, bool) and isinstance(a, str) == isinstance(b, str) and a == b

    if op == "exists":
        return (len(items) > 0) == arg
    if op in ("eq", "ne"):
        return any(same(x, arg) for x in items) == (op == "eq")
    if op in ("in", "not_in"):
        return any(same(x, a) for x in items for a in arg) == (op == "in")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and {"gt": value > arg, "gte": value >= arg, "lt": value < arg, "lte": value <= arg}[op]


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(OPS, min_size=1, max_size=12))
def test_sparse_columns_agree_with_a_dict_model(ops):
    payloads, model = Payloads(40), [{} for _ in range(40)]
    for op, arg in ops:
        if op == "write":
            slots = np.array([s for s, _ in arg])
            given_payloads = [p for _, p in arg]
            payloads.check(given_payloads)
            payloads.write(slots, given_payloads)
            for s, p in arg:  # the last payload of a slot wins; None, [] values and None payloads hold nothing
                model[s] = {k: v for k, v in (p or {}).items() if v is not None and v != []}
        elif op == "clear":
            payloads.clear(np.array(arg, np.int64))
            for s in arg:
                model[s] = {}
        else:  # as retraining does: live slots renumbered in some order, the rest cleared
            live = [s for s in range(40) if arg.random() < 0.7]
            arg.shuffle(live)
            for s in set(range(40)) - set(live):
                payloads.clear(np.array([s]))
            payloads.permute(np.array(live, np.int64), len(live))
            model = [model[s] for s in live] + [{} for _ in range(40 - len(live))]
        assert payloads.read(np.arange(40)) == model
        assert payloads.held == sum(1 for p in model if p)
        kinds = {}
        for p in model:
            for field, value in p.items():
                kinds.setdefault(field, set()).add(type_of(value))
        assert payloads.schema() == {f: "|".join(sorted(k)) for f, k in sorted(kinds.items())}
        for where in PROBE_FILTERS:
            try:
                parsed = filters.parse(where, payloads)
            except curator.InvalidArgumentError:
                continue  # a field no vector holds, or no type its value compares with
            expected = [s for s in range(40) if _model_holds(model[s], where)]
            assert np.flatnonzero(filters.matches(parsed, payloads, 40)).tolist() == expected, where


# -- retraining and reopening keep payloads ----------------------------------------------------------

def test_retraining_renumbers_slots_and_keeps_payloads(tmp_path):
    path = str(tmp_path / "d")
    rng = np.random.default_rng(2)
    n = 3000
    expected = {i: {"u": i % 10, "w": f"w{i % 3}"} if i % 4 else {"x": 0.5 * i, "tags": [f"t{i % 5}", "all"]}
                for i in range(n)}
    with curator.open(path) as db:
        col = db.create_collection("c", dim=8, train_size=500, branching=4, leaf_size=32)
        col.insert(np.arange(n), rng.standard_normal((n, 8)), tenant="t", payloads=[expected[i] for i in range(n)])
        col.delete(np.arange(0, n, 7))
        for i in range(0, n, 7):
            del expected[i]
        before = col.index.slot_ids.copy()
        col.train()  # slots renumbered in leaf order
        assert not np.array_equal(col.index.slot_ids[: len(expected)], before[: len(expected)])
        ids = sorted(expected)
        assert col.get_payloads(ids) == [expected[i] for i in ids]
        found = sorted(col.search(np.zeros(8), k=n, tenant="t", filter={"tags": "all", "x": {"gt": 100}}).ids.tolist())
        assert found == [i for i in ids if "x" in expected[i] and expected[i]["x"] > 100]
    with curator.open(path) as db:  # reopened: the columns rebuilt from each vector's stored payload
        col = db.collection("c")
        assert col.get_payloads(ids) == [expected[i] for i in ids]
        assert col.payload_schema() == {"tags": "keywords", "u": "integer", "w": "keyword", "x": "float"}
        assert sorted(col.search(np.zeros(8), k=n, filter={"u": {"in": [3, 4]}}).ids.tolist()) == [
            i for i in ids if expected[i].get("u") in (3, 4)]
