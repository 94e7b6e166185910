"""Payloads and filters over the wire: the dict <-> message conversions of curator_proto/filters_wire.py
on their own, then a real server on loopback answering filtered searches and payload calls exactly as
the embedded engine does, with tenant keys kept to their tenants' vectors."""

import asyncio

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import curator
from curator import filters
from curator_client.calls import Call
from curator_proto import filters_wire as fw
from curator_proto.v1 import curator_pb2 as pb
from curator_proto.v1 import curator_pb2_grpc as rpc
from curator_server.app import CuratorServer, ServerConfig

from tests.conftest import clustered, keys_file

# -- the conversions, no server -------------------------------------------------------------------

# (a filter as a user writes it, the same filter unpacked from the wire: the explicit tree)
ROUND_TRIPS = [
    ({"lang": "en"}, {"lang": {"eq": "en"}}),
    ({"lang": {"ne": "en"}}, {"lang": {"ne": "en"}}),
    ({"lang": {"in": ["en", "de"]}}, {"lang": {"in": ["en", "de"]}}),
    ({"lang": {"not_in": ("en",)}}, {"lang": {"not_in": ["en"]}}),
    ({"year": {"in": []}}, {"year": {"in": []}}),
    ({"year": {"gt": 2020}}, {"year": {"gt": 2020}}),
    ({"score": {"gte": 0.5}}, {"score": {"gte": 0.5}}),
    ({"score": {"lt": -1e300}}, {"score": {"lt": -1e300}}),
    ({"year": {"lte": -(2**63)}}, {"year": {"lte": -(2**63)}}),
    ({"year": {"gte": 2020, "lt": 2024}}, {"and": [{"year": {"gte": 2020}}, {"year": {"lt": 2024}}]}),
    ({"score": {"exists": True}}, {"score": {"exists": True}}),
    ({"score": {"exists": False}}, {"score": {"exists": False}}),
    ({"draft": False}, {"draft": {"eq": False}}),
    ({"draft": {"ne": True}}, {"draft": {"ne": True}}),
    ({"year": 0}, {"year": {"eq": 0}}),
    ({"year": 1.0}, {"year": {"eq": 1.0}}),
    ({"tags": ["a", "b"]}, {"tags": {"eq": ["a", "b"]}}),  # the engine says eq takes one keyword
    ({"lang": "en", "draft": False}, {"and": [{"lang": {"eq": "en"}}, {"draft": {"eq": False}}]}),
    ({"and": [{"lang": "en"}]}, {"and": [{"lang": {"eq": "en"}}]}),
    ({"or": [{"lang": "en"}, {"not": {"tags": "old"}}]},
     {"or": [{"lang": {"eq": "en"}}, {"not": {"tags": {"eq": "old"}}}]}),
    ({"not": {"and": [{"year": {"gt": 1}}, {"or": [{"draft": True}, {"score": {"exists": False}}]}]}},
     {"not": {"and": [{"year": {"gt": 1}}, {"or": [{"draft": {"eq": True}}, {"score": {"exists": False}}]}]}}),
    ({"year": {"gte": np.int64(3)}, "score": {"lt": np.float32(0.25)}, "draft": np.bool_(True), "lang": np.str_("en"),
      "tags": {"in": np.array(["a", "b"])}},
     {"and": [{"year": {"gte": 3}}, {"score": {"lt": 0.25}}, {"draft": {"eq": True}}, {"lang": {"eq": "en"}},
              {"tags": {"in": ["a", "b"]}}]}),
]


@pytest.mark.parametrize("spec, unpacked", ROUND_TRIPS)
def test_filters_travel_as_their_canonical_tree(spec, unpacked):
    message = fw.pack_filter(spec)
    back = fw.unpack_filter(pb.Filter.FromString(message.SerializeToString()))
    assert back == unpacked
    assert _types(back) == _types(unpacked)  # False stays a bool, 0 an int, 1.0 a float
    assert fw.pack_filter(back) == message  # the canonical form is a fixed point


def _types(spec):
    if isinstance(spec, dict):
        return {k: _types(v) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_types(v) for v in spec]
    return type(spec)


def test_bools_are_flags_and_ints_are_integers():
    kinds = [fw.pack_value(v, "v").WhichOneof("kind") for v in (True, np.bool_(False), 1, np.uint8(1), 1.0,
                                                                 np.float16(1), "1", ["1"], ())]
    assert kinds == ["flag", "flag", "integer", "integer", "number", "number", "keyword", "keywords", "keywords"]


def test_the_wire_knows_the_engines_operators():
    assert set(fw.OPERATORS) == set().union(*filters.OPERATORS.values())


def test_payloads_round_trip():
    payload = {"lang": "en", "year": 2**63 - 1, "low": -(2**63), "score": 0.1, "draft": False, "ok": True,
               "tags": ["a", "b"], "none": [], "n": np.int32(7), "x": np.float64(2.5), "gone": None}
    back = fw.unpack_payloads(pb.PayloadsResponse(payloads=fw.pack_payloads([payload, None, {}], 3)).payloads)
    assert back == [{k: v for k, v in payload.items() if v is not None}, {}, {}]
    assert list(back[0]) == sorted(back[0])
    assert type(back[0]["draft"]) is bool and type(back[0]["n"]) is int and type(back[0]["x"]) is float
    assert fw.pack_payloads(None, 3) == []


@pytest.mark.parametrize("payloads, message", [
    ([{"year": 2**63}], "does not fit in 64 bits"),
    ([{"year": {"a": 1}}], r"payload 0, field 'year'.*not a payload value"),
    ([{"tags": [1, 2]}], "not a payload value"),
    ([{"tags": {"a"}}], "not a payload value"),
    ([{1: "x"}], "field names are strings"),
    (["x"], "payload 0 must be a dict"),
    ([{}, {}], "2 payloads for 1 vectors"),
    ({"year": 1}, "one dict for 1 vectors"),
])
def test_payloads_the_wire_cannot_carry_are_rejected_before_sending(payloads, message):
    with pytest.raises(curator.InvalidArgumentError, match=message):
        fw.pack_payloads(payloads, 1)


@pytest.mark.parametrize("spec, message", [
    ({}, "non-empty dict"),
    ("lang", "non-empty dict"),
    ({"and": []}, "'and' takes a non-empty list"),
    ({"or": {"lang": "en"}}, "'or' takes a non-empty list"),
    ({"not": {}}, r"filter\.not: a filter is a non-empty dict"),
    ({"lang": {}}, "'lang' has no operator"),
    ({"lang": {"like": "e%"}}, "unknown operator"),
    ({"lang": {"in": "en"}}, "takes a list of values"),
    ({"lang": {"eq": {"nested": 1}}}, "not a payload value"),
    ({"year": 2**64}, "does not fit in 64 bits"),
    ({1: "x"}, "field names are strings"),
    ({"and": [{"lang": "en"}, {"or": [{"year": {"gt": None}}]}]}, r"filter\.and\[1\]\.or\[0\] 'year' gt"),
])
def test_filters_the_wire_cannot_carry_are_rejected_before_sending(spec, message):
    with pytest.raises(curator.InvalidArgumentError, match=message):
        fw.pack_filter(spec)


def _condition(field="lang", op="eq", *values) -> pb.Filter:
    return pb.Filter(condition=pb.Condition(field=field, op=op, values=list(values)))


EN = pb.Value(keyword="en")
MALFORMED = [
    (pb.Filter(), "filter: a Filter with no kind set"),
    (pb.Filter(all=pb.FilterList()), r"filter\.all: an empty list"),
    (pb.Filter(any=pb.FilterList()), r"filter\.any: an empty list"),
    (pb.Filter(negate=pb.Filter()), r"filter\.negate: a Filter with no kind set"),
    (_condition("lang", "eq"), r"filter\.condition 'lang': op 'eq' takes one value, got 0"),
    (_condition("lang", "eq", EN, EN), "takes one value, got 2"),
    (_condition("score", "exists"), "op 'exists' takes one value, got 0"),
    (_condition("lang", "like", EN), "unknown op 'like'"),
    (_condition("lang", "", EN), "unknown op ''"),
    (_condition("", "eq", EN), "no field named"),
    (_condition("lang", "eq", pb.Value()), r"'lang' eq value 0: a Value with no kind set"),
    (_condition("lang", "in", EN, pb.Value()), r"'lang' in value 1: a Value with no kind set"),
    (pb.Filter(any=pb.FilterList(filters=[_condition("lang", "eq", EN), pb.Filter(negate=pb.Filter(
        all=pb.FilterList(filters=[_condition("year", "gt")])))])),
     r"filter\.any\[1\]\.negate\.all\[0\]\.condition 'year': op 'gt' takes one value"),
]


def _deep(levels: int) -> pb.Filter:
    message = _condition("lang", "eq", EN)
    for _ in range(levels):
        message = pb.Filter(negate=message)
    return message


@pytest.mark.parametrize("message, error", MALFORMED + [(_deep(40), "deeper than 32 levels")])
def test_each_malformed_wire_filter_is_an_invalid_argument_naming_its_part(message, error):
    with pytest.raises(curator.InvalidArgumentError, match=error):
        fw.unpack_filter(message)


def test_a_payload_value_with_no_kind_is_named():
    message = pb.Payload(fields={"lang": EN, "year": pb.Value()})
    with pytest.raises(curator.InvalidArgumentError, match="payload 1, field 'year': a Value with no kind set"):
        fw.unpack_payloads([pb.Payload(), message])


# -- a server on loopback -------------------------------------------------------------------------

KEYS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789", "admin": "key-admin-0123456789"}
N, DIM = 400, 4
VECTORS = clustered(N, DIM, seed=3)


def payload_of(i: int) -> dict:
    payload = {"lang": ("en", "de", "fr")[i % 3], "year": 2000 + i % 25, "draft": i % 2 == 0,
               "tags": [f"t{i % 5}", f"u{i % 7}"]}
    if i % 10:
        payload["score"] = i / 7  # absent from every tenth vector: exists, ne and not_in see that
    return payload


def fill(col) -> None:
    """The same writes on an embedded and a remote collection: alice 0..299, bob 300..399 (one shared)."""
    col.insert(np.arange(300), VECTORS[:300], tenant="alice", payloads=[payload_of(i) for i in range(300)])
    col.insert(np.arange(300, N), VECTORS[300:], tenant="bob", payloads=[payload_of(i) for i in range(300, N)])
    col.grant([350], tenant="alice")


FILTERS = [
    {"lang": "en"},
    {"lang": {"ne": "en"}},
    {"lang": {"in": ["de", "fr"]}, "draft": True},
    {"lang": {"not_in": ["de"]}},
    {"year": {"gte": 2005, "lt": 2010}},
    {"year": {"in": [2001, 2003, 2024]}},
    {"year": {"not_in": [2001]}, "score": {"gt": 10.5}},
    {"score": {"lte": 3}},
    {"score": {"exists": False}},
    {"score": {"exists": True}, "draft": {"ne": True}},
    {"tags": "t1"},
    {"tags": {"in": ["t2", "u3"]}},
    {"tags": {"not_in": ["t0"]}},
    {"or": [{"lang": "fr", "year": {"lt": 2003}}, {"not": {"tags": {"in": ["t0", "t1", "t2"]}}}]},
    {"not": {"or": [{"draft": True}, {"year": {"gt": 2012}}]}},
    {"year": 1999},  # nothing matches
]


@pytest.fixture(scope="module", params=["server", "cluster"])
def served(request, tmp_path_factory):
    """A server with tenant keys (or a cluster front with the same keys, before conftest's
    session cluster), its collection filled like an embedded twin."""
    tmp = tmp_path_factory.mktemp("filters")
    keys = keys_file(tmp / "keys.toml", {"alice-app": (KEYS["alice"], ["alice"]), "bob-app": (KEYS["bob"], ["bob"]),
                                          "ops": (KEYS["admin"], None)})
    config = ServerConfig(data=str(tmp / "d"), port=0, keys=keys)
    if request.param == "cluster":
        config.ray = "given"
        server = CuratorServer(config, cluster=request.getfixturevalue("curator_cluster")).start()
    else:
        server = CuratorServer(config).start()
    admin = curator.connect(server.address, api_key=KEYS["admin"])
    twin = curator.open(":memory:")
    for db in (admin, twin):  # a low exact_limit and a cheap graph: every plan has a turn
        fill(db.create_collection("docs", dim=DIM, train_size=64, leaf_size=16, exact_limit=40, hnsw_visit_cost=0.1))
    yield server, admin.collection("docs"), twin.collection("docs")
    if request.param == "cluster":  # the session's cluster, left as found
        admin.drop_collection("docs")
    twin.close()
    admin.close()
    server.stop()


def _same(remote, local) -> None:
    np.testing.assert_array_equal(remote.ids, local.ids)
    np.testing.assert_allclose(remote.distances, local.distances, rtol=1e-6)
    assert remote.plan == local.plan


def test_filtered_searches_find_what_the_embedded_engine_finds(served):
    server, remote, local = served
    unary = curator.connect(server.address, api_key=KEYS["admin"], search_stream=False).collection("docs")
    queries = VECTORS[::80] + 0.1
    plans = set()
    for spec in FILTERS:
        for query in queries[:2]:
            for tenant in ("alice", "bob", None):
                expected = local.search(query, k=25, tenant=tenant, filter=spec)
                assert isinstance(expected, curator.api.SearchResult)
                found = remote.search(query, k=25, tenant=tenant, filter=spec)  # over the search stream
                assert isinstance(found, curator.api.SearchResult) and found.plan in ("exact", "tree", "graph")
                _same(found, expected)
                _same(unary.search(query, k=25, tenant=tenant, filter=spec), expected)
                plans.add(found.plan)
        # the canonical tree the server unpacks means what the user's dict means
        _same(local.search(queries[0], k=25, tenant="alice", filter=fw.unpack_filter(fw.pack_filter(spec))),
              local.search(queries[0], k=25, tenant="alice", filter=spec))
        batch = remote.search_batch(queries, k=10, tenants=["alice", "bob", "alice", "bob", "alice"], filter=spec)
        expected = local.search_batch(queries, k=10, tenants=["alice", "bob", "alice", "bob", "alice"], filter=spec)
        np.testing.assert_array_equal(batch.ids, expected.ids)
        assert batch.plan == list(expected.plan) and len(batch.plan) == len(queries)
    assert {"exact", "graph"} <= plans  # (every plan, tree included, runs in test_filters.py)
    everyone = remote.search_batch(queries, k=10, filter={"lang": "de"})
    np.testing.assert_array_equal(everyone.ids, local.search_batch(queries, k=10, filter={"lang": "de"}).ids)
    mixed = ["alice", None, "bob", None, "alice"]  # None: that query searches every vector
    np.testing.assert_array_equal(remote.search_batch(queries, k=10, tenants=mixed, filter={"draft": True}).ids,
                                  local.search_batch(queries, k=10, tenants=mixed, filter={"draft": True}).ids)
    ids, _ = remote.search(queries[0], k=N, tenant=None, filter={"lang": "de", "year": {"lt": 2003}})
    assert sorted(ids.tolist()) == [i for i in range(N) if i % 3 == 1 and i % 25 < 3]


def test_payload_calls_round_trip(served):
    server, remote, local = served
    ids = [0, 7, 10, 299, 350]
    assert remote.get_payloads(ids) == local.get_payloads(ids) == [payload_of(i) for i in ids]
    assert remote.payload_schema() == local.payload_schema() == {
        "draft": "bool", "lang": "keyword", "score": "float", "tags": "keywords", "year": "integer"}
    for col in (remote, local):
        col.set_payloads([7, 8], [{"lang": "de", "year": 1990}, {}])
        col.set_payloads([9, 11], {"lang": "xx", "tags": ["solo"]})
        col.upsert([12], VECTORS[12:13], tenant="alice")  # no payloads given: kept
        col.upsert([13], VECTORS[13:14], tenant="alice", payloads=[{"draft": True}])
    expected = [{"lang": "de", "year": 1990}, {}, {"lang": "xx", "tags": ["solo"]}, {"lang": "xx", "tags": ["solo"]},
                payload_of(12), {"draft": True}]
    assert remote.get_payloads([7, 8, 9, 11, 12, 13]) == local.get_payloads([7, 8, 9, 11, 12, 13]) == expected
    _same(remote.search(VECTORS[9], k=5, tenant="alice", filter={"lang": "xx"}),
          local.search(VECTORS[9], k=5, tenant="alice", filter={"lang": "xx"}))

    async def from_asyncio():
        from curator_client import aio

        async with await aio.connect(server.address, api_key=KEYS["admin"]) as db:
            col = await db.collection("docs")
            found = await col.search(VECTORS[9], k=5, tenant="alice", filter={"lang": "xx"})
            return found, await col.get_payloads([9]), await col.payload_schema()

    found, payloads, schema = asyncio.run(from_asyncio())
    _same(found, local.search(VECTORS[9], k=5, tenant="alice", filter={"lang": "xx"}))
    assert payloads == [{"lang": "xx", "tags": ["solo"]}] and schema == local.payload_schema()


def test_a_tenant_key_stays_within_its_tenants(served):
    server, _, local = served
    alice = curator.connect(server.address, api_key=KEYS["alice"]).collection("docs")
    unary = curator.connect(server.address, api_key=KEYS["alice"], search_stream=False).collection("docs")
    for col in (alice, unary):
        with pytest.raises(curator.PermissionDeniedError, match="name a tenant"):
            col.search(VECTORS[0], k=5, filter={"lang": "en"})
    for call in (lambda: alice.search_batch(VECTORS[:2], k=5),
                 lambda: alice.search_batch(VECTORS[:2], k=5, tenants=["alice", None]),
                 lambda: alice.search(VECTORS[0], k=5, tenant="bob", filter={"lang": "en"}),
                 lambda: alice.payload_schema()):  # field names of every tenant
        with pytest.raises(curator.PermissionDeniedError):
            call()
    for call in (lambda: alice.get_payloads([1, 320]),
                 lambda: alice.set_payloads([320], {"lang": "mine"}),
                 lambda: alice.set_payloads([1, 99_999], [{}, {}])):
        with pytest.raises(curator.NotFoundError):
            call()
    assert alice.get_payloads([350]) == local.get_payloads([350])  # shared with her: visible
    _same(alice.search(VECTORS[0], k=10, tenant="alice", filter={"lang": "fr"}),
          local.search(VECTORS[0], k=10, tenant="alice", filter={"lang": "fr"}))
    assert set(alice.search(VECTORS[0], k=50, tenant="alice", filter={"lang": "fr"}).ids.tolist()) <= set(range(300))


def test_bad_filters_and_payloads_are_invalid_arguments_remotely(served):
    server, remote, _ = served
    for spec, message in (({"nope": 1}, "unknown field 'nope'"), ({"year": {"gt": "x"}}, "expected a number"),
                          ({"lang": {"gt": "a"}}, "expected a number"), ({"lang": {"gt": 1}}, "operator 'gt' does not apply")):
        with pytest.raises(curator.InvalidArgumentError, match=message):
            remote.search(VECTORS[0], k=5, tenant="alice", filter=spec)
        with pytest.raises(curator.InvalidArgumentError, match=message):
            remote.search_batch(VECTORS[:2], k=5, tenants="alice", filter=spec)
    with pytest.raises(curator.InvalidArgumentError, match="payload field 'year'"):
        remote.insert([10_000], VECTORS[:1], tenant="alice", payloads=[{"year": float("inf")}])
    assert not remote.contains([10_000])[0]
    # malformed messages, as another client could send them: over the stream, unary, and raw gRPC
    db = curator.connect(server.address, api_key=KEYS["admin"])
    query = db.collection("docs")._calls.search(VECTORS[0], 5, "alice", None).request
    for message, error in MALFORMED[:6]:
        request = pb.SearchRequest()
        request.CopyFrom(query)
        request.filter.CopyFrom(message)
        call = Call("search", "Search", request, True)
        for run in (db._channel.search, db._channel.run):
            with pytest.raises(curator.InvalidArgumentError, match=error):
                run(call)
    channel = grpc.insecure_channel(server.address)
    meta = (("authorization", f"Bearer {KEYS['admin']}"),)
    bad = pb.SetPayloadsRequest(collection="docs", ids=[1, 2, 3], payloads=[pb.Payload(), pb.Payload()])
    with pytest.raises(grpc.RpcError) as raised:
        rpc.VectorsServiceStub(channel).SetPayloads(bad, metadata=meta, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "one per id" in raised.value.details()
    bad = pb.InsertRequest(collection="docs", ids=[10_001], vectors=pb.Vectors(dim=DIM, data=VECTORS[0].tobytes()),
                           tenant="alice", payloads=[pb.Payload(fields={"lang": pb.Value()})])
    with pytest.raises(grpc.RpcError) as raised:
        rpc.VectorsServiceStub(channel).Insert(bad, metadata=meta, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no kind set" in raised.value.details()
    channel.close()
    db.close()


KINDS = {"lang": "keyword", "tags": "keywords", "year": "integer", "score": "float", "draft": "bool"}
TYPED = {"lang": st.sampled_from(["en", "de", "fr", "xx"]).map(lambda s: pb.Value(keyword=s)),
         "tags": st.sampled_from(["t0", "t1", "u3"]).map(lambda s: pb.Value(keyword=s)),
         "year": st.integers(1995, 2030).map(lambda i: pb.Value(integer=i)),
         "score": st.floats(-5, 60).map(lambda x: pb.Value(number=x)),
         "draft": st.booleans().map(lambda b: pb.Value(flag=b))}
ANY_VALUE = st.one_of(*TYPED.values(), st.just(pb.Value()), st.floats().map(lambda x: pb.Value(number=x)),
                      st.lists(st.sampled_from(["t0", "x"]), max_size=2).map(
                          lambda w: pb.Value(keywords=pb.StringList(values=w))))


def _mostly(good, bad):
    """`good` nine times in ten: most messages are well formed, and the rest are wrong in one part."""
    return st.integers(0, 9).flatmap(lambda r: bad if r == 0 else good)


def _condition(field: str, op: str):
    value = _mostly(TYPED.get(field, ANY_VALUE), ANY_VALUE)
    if op == "exists":
        value = _mostly(st.booleans().map(lambda b: pb.Value(flag=b)), ANY_VALUE)
    values = st.lists(value, max_size=4) if op in fw.LIST_VALUE else value.map(lambda v: [v])
    return _mostly(values, st.lists(ANY_VALUE, max_size=2)).map(
        lambda vs: pb.Filter(condition=pb.Condition(field=field, op=op, values=vs)))


def _field_and_op(field: str):
    ops = sorted(filters.OPERATORS[KINDS[field]]) if field in KINDS else list(fw.OPERATORS)
    return _mostly(st.sampled_from(ops), st.sampled_from(fw.OPERATORS + ("like",))).map(lambda op: (field, op))


CONDITIONS = _mostly(st.sampled_from(sorted(KINDS)), st.just("ghost")).flatmap(_field_and_op).flatmap(
    lambda pair: _condition(*pair))
WIRE_FILTERS = st.recursive(
    _mostly(CONDITIONS, st.just(pb.Filter())),
    lambda inner: st.one_of(st.lists(inner, max_size=3).map(lambda fs: pb.Filter(all=pb.FilterList(filters=fs))),
                            st.lists(inner, max_size=3).map(lambda fs: pb.Filter(any=pb.FilterList(filters=fs))),
                            inner.map(lambda f: pb.Filter(negate=f))),
    max_leaves=6)


@settings(max_examples=120, deadline=None)
@given(message=WIRE_FILTERS, tenant=st.sampled_from(["alice", "bob", None]), row=st.integers(0, N - 1))
def test_any_filter_message_is_answered_as_the_engine_answers_its_dict_or_refused(served, message, tenant, row):
    _, remote, local = served
    try:
        expected = local.search(VECTORS[row], k=10, tenant=tenant, filter=fw.unpack_filter(message))
    except curator.InvalidArgumentError as error:
        expected = error
    call = remote._calls.search(VECTORS[row], 10, tenant, None)
    call.request.filter.CopyFrom(message)
    for run in (remote._search, remote._run):  # over the stream, and unary
        if isinstance(expected, Exception):
            with pytest.raises(curator.InvalidArgumentError) as raised:
                run(call)
            assert str(raised.value) == str(expected)
        else:
            _same(run(call), expected)
