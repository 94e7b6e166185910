"""Every cost is bounded before the work: a batch search whose reply could not fit one message is
refused before searching, with the numbers and how to split it; a filter over the limits (too many
conditions, nested too deep, too many values in its lists) is refused before it is read, with a
short message that never repeats the input, embedded and over a real gRPC server, and the server
answers the next call. A filter or a batch just within each limit still answers, as brute force does."""

import logging

import grpc
import numpy as np
import pytest

import curator
from curator import filters
from curator_proto import filters_wire
from curator_proto.v1 import curator_pb2 as pb
from curator_proto.v1 import curator_pb2_grpc as rpc
from curator_server.app import CuratorServer, ServerConfig
from curator_server.service import Limits

from tests.conftest import brute_force

N, DIM, K = 1_500, 8, 10
VECTORS = np.random.default_rng(7).standard_normal((N, DIM)).astype(np.float32)
QUERIES = np.random.default_rng(8).standard_normal((4, DIM)).astype(np.float32)
U = np.arange(N)  # payload "u" of vector i is i; "w" is f"w{i}"
SHORT = 300  # characters: an error message is at most this long, whatever was sent


def fill(db) -> None:
    # every search exact (exact_limit above N), so that brute force is the expected answer
    col = db.create_collection("c", dim=DIM, exact_limit=100_000)
    col.insert(U, VECTORS, tenant="t", payloads=[{"u": int(i), "w": f"w{i}"} for i in U])


@pytest.fixture(scope="module")
def served():
    """A server with the default limits, its SDK client and an embedded twin, filled alike."""
    server = CuratorServer(ServerConfig(data=":memory:", port=0)).start()
    remote, twin = curator.connect(server.address), curator.open(":memory:")
    for db in (remote, twin):
        fill(db)
    channel = grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 << 20)])
    yield server, remote, twin, rpc.SearchStub(channel)
    channel.close()
    remote.close()
    twin.close()
    server.stop()


@pytest.fixture(params=["embedded", "remote"])
def col(served, request):
    _, remote, twin, _ = served
    return (twin if request.param == "embedded" else remote).collection("c")


@pytest.fixture
def no_error_logs(caplog):
    """No traceback in the server's log: a refused request is the caller's error, not the server's."""
    caplog.set_level(logging.ERROR)
    yield
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def still_serving(stub) -> None:
    reply = stub.Search(pb.SearchRequest(collection="c", query=pb.Vectors(dim=DIM, data=QUERIES[0].tobytes()), k=3,
                                         tenant="t"), timeout=30)
    assert len(reply.ids) == 3


def expected(query: np.ndarray, mask: np.ndarray, k: int = K) -> np.ndarray:
    rows, _ = brute_force(VECTORS[mask], query, "l2", k)
    return U[mask][rows]


# -- the reply of a batch search ------------------------------------------------------------------

def test_a_batch_whose_reply_cannot_fit_a_message_is_refused_before_searching(served, no_error_logs):
    server, remote, _, stub = served
    nq, k = 20_000, 1_000  # measured before: 2.3 GB held for 7 s, then no reply
    queries = np.repeat(QUERIES[:1], nq, axis=0)
    projected = Limits.batch_reply_bytes(nq, k)
    with pytest.raises(curator.ResourceExhaustedError) as raised:
        remote.collection("c").search_batch(queries, k=k, tenants="t")
    message = str(raised.value)
    for part in (f"{nq} queries", f"k={k}", str(projected), str(64 << 20), "max_message_bytes", "split"):
        assert part in message, message
    assert len(message) < SHORT
    request = pb.SearchBatchRequest(collection="c", queries=pb.Vectors(dim=DIM, data=queries.tobytes()), k=k)
    with pytest.raises(grpc.RpcError) as raw:
        stub.SearchBatch(request, timeout=30)
    assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_message_bytes" in raw.value.details()
    still_serving(stub)


def test_a_large_batch_must_ask_for_the_packed_reply(served, no_error_logs):
    """Over Limits.MAX_LISTED results a reply is only sent packed (a listed one is serialized in
    one call that holds the server's GIL); the SDK asks for packed and gets the same answer."""
    server, remote, twin, stub = served
    nq, k = Limits.MAX_LISTED // 1000 + 1, 1000
    queries = np.repeat(QUERIES[:1], nq, axis=0)
    request = pb.SearchBatchRequest(collection="c", queries=pb.Vectors(dim=DIM, data=queries.tobytes()), k=k,
                                    tenants=["t"])
    with pytest.raises(grpc.RpcError) as raw:
        stub.SearchBatch(request, timeout=30)
    assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "packed" in raw.value.details()
    request.packed = True
    reply = stub.SearchBatch(request, timeout=60)
    ids = np.frombuffer(reply.packed_ids, "<i8").reshape(nq, k)
    found = remote.collection("c").search_batch(queries, k=k, tenants="t")
    np.testing.assert_array_equal(found.ids, ids)
    np.testing.assert_array_equal(found.ids[0], twin.collection("c").search(queries[0], k=k, tenant="t").ids)
    still_serving(stub)


def test_the_reply_bound_is_never_below_the_reply_itself():
    """The bound is conservative: a reply of -1 pads (10-byte varints), the largest id and the
    longest plan name is no longer than it."""
    for nq, k in ((1, 1), (3, 7), (20, 1_000)):
        reply = pb.SearchBatchResponse(ids=[-1] * (nq * k - 1) + [2**63 - 1], distances=[np.inf] * (nq * k),
                                       plans=["exact"] * nq)
        assert reply.ByteSize() <= Limits.batch_reply_bytes(nq, k)


def test_a_batch_just_within_the_reply_limit_answers_as_brute_force():
    limits = Limits(max_message_bytes=1 << 20)
    server = CuratorServer(ServerConfig(data=":memory:", port=0, limits=limits)).start()
    remote = curator.connect(server.address)
    try:
        fill(remote)
        col, k = remote.collection("c"), 1_000
        fits = (limits.max_message_bytes - Limits.batch_reply_bytes(0, k)) // (
            Limits.batch_reply_bytes(1, k) - Limits.batch_reply_bytes(0, k))
        assert Limits.batch_reply_bytes(fits, k) <= limits.max_message_bytes < Limits.batch_reply_bytes(fits + 1, k)
        queries = np.random.default_rng(9).standard_normal((fits + 1, DIM)).astype(np.float32)
        with pytest.raises(curator.ResourceExhaustedError, match=f"at most {fits} queries at this k"):
            col.search_batch(queries, k=k)
        found = col.search_batch(queries[:fits], k=k)  # every vector (an admin in open mode): exact
        assert found.ids.shape == (fits, k)
        for i in (0, fits // 2, fits - 1):
            rows, distances = brute_force(VECTORS, queries[i], "l2", k)
            assert set(found.ids[i].tolist()) == set(rows.tolist())
            np.testing.assert_allclose(np.sort(found.distances[i]), distances, rtol=1e-4, atol=1e-4)
    finally:
        remote.close()
        server.stop()


def test_a_batch_with_more_tenants_than_queries_is_refused_before_they_are_read(served, no_error_logs):
    _, _, _, stub = served
    request = pb.SearchBatchRequest(collection="c", queries=pb.Vectors(dim=DIM, data=QUERIES[:2].tobytes()), k=3,
                                    tenants=[f"t{i}" for i in range(200_000)])
    with pytest.raises(grpc.RpcError) as raised:
        stub.SearchBatch(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "2 queries but 200000 tenants" in raised.value.details() and len(raised.value.details()) < SHORT
    still_serving(stub)


# -- filters over the limits ----------------------------------------------------------------------

def _nested(levels: int, kind: str) -> dict:
    spec = {"u": {"lt": 100}}
    for _ in range(levels):
        spec = {"not": spec} if kind == "not" else {kind: [spec]}
    return spec


OVER = [  # (a filter over one limit, what its error says)
    ({"or": [{"u": i} for i in range(200_000)]}, "lists 200000 filters; at most 1024 conditions"),
    ({"or": [{"u": i} for i in range(filters.MAX_CONDITIONS + 1)]}, "at most 1024 conditions"),
    ({"or": [{"and": [{"u": i}, {"w": f"w{i}"}]} for i in range(600)]}, "more than 1024 conditions"),
    ({"u": {"gte": 1, "lt": 5}, **{f"f{i}": 1 for i in range(1_023)}}, "more than 1024 conditions"),
    (_nested(filters.MAX_DEPTH + 1, "not"), "deeper than 32 levels"),
    (_nested(filters.MAX_DEPTH + 1, "and"), "deeper than 32 levels"),
    ({"u": {"in": list(range(1_000_000))}}, "1000000 values in one list; at most 10000"),
    ({"w": {"not_in": [f"w{i}" for i in range(filters.MAX_VALUES + 1)]}}, "10001 values in one list"),
    ({"or": [{"u": {"in": list(range(10_000))}}] * 10 + [{"u": {"in": [1]}}]}, "more than 100000 values"),
]


@pytest.mark.parametrize("spec, words", OVER, ids=[w.split(";")[0] for _, w in OVER])
def test_a_filter_over_a_limit_is_refused_with_a_short_message(col, spec, words, no_error_logs):
    for search in (lambda: col.search(QUERIES[0], k=K, tenant="t", filter=spec),
                   lambda: col.search_batch(QUERIES, k=K, tenants="t", filter=spec)):
        with pytest.raises(curator.InvalidArgumentError, match=words) as raised:
            search()
        assert len(str(raised.value)) < SHORT


def test_a_filter_nested_past_the_interpreters_recursion_limit_is_refused(col, no_error_logs):
    spec = _nested(5_000, "not")
    with pytest.raises(curator.InvalidArgumentError, match="deeper than 32 levels"):
        col.search(QUERIES[0], k=K, tenant="t", filter=spec)


def _condition(field: str, op: str, values: list) -> pb.Filter:
    return pb.Filter(condition=pb.Condition(field=field, op=op, values=values))


def _huge_in(n: int) -> pb.Filter:
    """An `in` of n integers, built as bytes (n Value objects would take longer than the server)."""
    value = pb.Value(integer=7).SerializeToString()
    head = pb.Condition(field="u", op="in").SerializeToString()
    return pb.Filter(condition=pb.Condition.FromString(head + (b"\x1a" + bytes([len(value)]) + value) * n))


def _deep_message(levels: int, kind: str) -> pb.Filter:
    message = _condition("u", "lt", [pb.Value(integer=100)])
    for _ in range(levels):
        message = pb.Filter(negate=message) if kind == "negate" else pb.Filter(all=pb.FilterList(filters=[message]))
    return message


OVER_ON_THE_WIRE = [  # messages another client could send, which the SDK would not
    (pb.Filter(any=pb.FilterList(filters=[_condition("u", "eq", [pb.Value(integer=i)]) for i in range(200_000)])),
     "filter.any lists 200000 filters"),
    (pb.Filter(all=pb.FilterList(filters=[pb.Filter(any=pb.FilterList(filters=[
        _condition("u", "eq", [pb.Value(integer=j)]) for j in range(64)])) for _ in range(64)])),
     "more than 1024 conditions"),
    (pb.Filter(all=pb.FilterList(filters=[pb.Filter()] * 2_000)), "filter.all lists 2000 filters"),
    (_deep_message(40, "negate"), "deeper than 32 levels"),  # within protobuf's own nesting limit (~97)
    (_deep_message(40, "all"), "deeper than 32 levels"),
    (_huge_in(1_000_000), "'u' in: 1000000 values in one list; at most 10000"),
    (_condition("w", "eq", [pb.Value(keyword="x")] * 20_000), "20000 values in one list"),
    (_condition("u", "eq", [pb.Value(keyword="x" * 1_000_000)]), "expected a number"),  # quoted, cut short
]


@pytest.mark.parametrize("message, words", OVER_ON_THE_WIRE, ids=[w for _, w in OVER_ON_THE_WIRE])
def test_a_filter_message_over_a_limit_is_an_invalid_argument_and_the_server_goes_on(served, message, words,
                                                                                     no_error_logs):
    _, _, _, stub = served
    single = pb.SearchRequest(collection="c", query=pb.Vectors(dim=DIM, data=QUERIES[0].tobytes()), k=K, tenant="t",
                              filter=message)
    batch = pb.SearchBatchRequest(collection="c", queries=pb.Vectors(dim=DIM, data=QUERIES.tobytes()), k=K,
                                  tenants=["t"], filter=message)
    for call, request in ((stub.Search, single), (stub.SearchBatch, batch)):
        with pytest.raises(grpc.RpcError) as raised:
            call(request, timeout=60)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
        assert words in raised.value.details() and len(raised.value.details()) < SHORT, raised.value.details()
    still_serving(stub)


def _length_delimited(field: int, body: bytes) -> bytes:
    length, size = bytearray(), len(body)
    while True:
        length.append((size & 0x7F) | (0x80 if size > 0x7F else 0))
        size >>= 7
        if not size:
            break
    return bytes([(field << 3) | 2]) + bytes(length) + body


def _deep_bytes(levels: int, kind: str) -> bytes:
    """A Filter nested `levels` deep as bytes: protobuf's Python runtime refuses to build it."""
    message = _length_delimited(4, _condition("u", "lt", [pb.Value(integer=100)]).condition.SerializeToString())
    for _ in range(levels):
        message = (_length_delimited(3, message) if kind == "negate"
                   else _length_delimited(1, _length_delimited(1, message)))
    return message


@pytest.mark.parametrize("levels, kind", [(60, "all"), (120, "negate"), (5_000, "negate")])
@pytest.mark.parametrize("method", ["Search", "SearchBatch", "SearchStream"])
def test_a_filter_nested_past_protobufs_limit_is_an_invalid_argument(served, levels, kind, method, no_error_logs):
    """Deeper than protobuf decodes (about 100 messages): the request itself is refused, as the
    caller's error, not answered INTERNAL with the server's traceback in its log."""
    server = served[0]
    head = (pb.SearchBatchRequest(collection="c", queries=pb.Vectors(dim=DIM, data=QUERIES.tobytes()), k=K,
                                  tenants=["t"]) if method == "SearchBatch" else
            pb.SearchRequest(collection="c", query=pb.Vectors(dim=DIM, data=QUERIES[0].tobytes()), k=K, tenant="t"))
    request = head.SerializeToString() + _length_delimited(6, _deep_bytes(levels, kind))
    with grpc.insecure_channel(server.address) as channel:
        path = f"/curator.v1.Search/{method}"
        if method == "SearchStream":
            call = channel.stream_stream(path)
            replies = call(iter([request]), timeout=60)
            with pytest.raises(grpc.RpcError) as raised:
                list(replies)
        else:
            with pytest.raises(grpc.RpcError) as raised:
                channel.unary_unary(path)(request, timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert "nested deeper than protobuf allows" in raised.value.details()
    still_serving(served[3])


@pytest.mark.parametrize("spec", [
    {"u": {"in": list(range(1_000_000))}},
    {"u": "x" * 1_000_000},
    {"w": {"in": ["x" * 1_000_000, 5]}},
    {"nope" * 100_000: 1},
    {"u": {"near" * 100_000: 1}},
    {"u": 10**5000},
    {"w": list(range(5_000))},
], ids=["huge in", "long keyword", "long keyword in a wrong in", "long field", "long operator", "huge int",
        "long list as eq"])
def test_no_error_message_repeats_a_long_input(col, spec, no_error_logs):
    with pytest.raises(curator.InvalidArgumentError) as raised:
        col.search(QUERIES[0], k=K, tenant="t", filter=spec)
    assert len(str(raised.value)) < SHORT, str(raised.value)[:SHORT]


def test_the_sdk_refuses_a_filter_over_a_limit_before_sending_as_the_engine_does(served):
    _, remote, twin, _ = served
    for spec, _ in OVER[:3] + OVER[6:7]:
        with pytest.raises(curator.InvalidArgumentError) as packing:
            filters_wire.pack_filter(spec)
        with pytest.raises(curator.InvalidArgumentError) as embedded:
            twin.collection("c").search(QUERIES[0], k=K, tenant="t", filter=spec)
        assert str(packing.value) == str(embedded.value)


# -- filters just within the limits ---------------------------------------------------------------

WITHIN = [  # (a filter at a limit, the vectors it allows)
    ({"or": [{"u": i} for i in range(filters.MAX_CONDITIONS)]}, U < filters.MAX_CONDITIONS),
    ({"or": [{"and": [{"u": {"gte": 2 * i}}, {"u": {"lt": 2 * i + 1}}]} for i in range(512)]},
     (U % 2 == 0) & (U < 1_024)),
    (_nested(filters.MAX_DEPTH, "not"), U < 100),  # an even number of nots
    (_nested(filters.MAX_DEPTH, "and"), U < 100),
    (_nested(filters.MAX_DEPTH, "or"), U < 100),
    ({"u": {"in": list(range(0, 2 * filters.MAX_VALUES, 2))}}, U % 2 == 0),
    ({"w": {"not_in": [f"w{i}" for i in range(filters.MAX_VALUES)]}}, U >= filters.MAX_VALUES),  # none
    ({"or": [{"u": {"in": list(range(j, j + 30 * filters.MAX_VALUES, 30))}} for j in range(10)]}, U % 30 < 10),
]


@pytest.mark.parametrize("spec, allowed", WITHIN, ids=["1024 conditions", "1024 in pairs", "32 nots", "32 ands",
                                                      "32 ors", "an in of 10000", "a not_in of 10000",
                                                      "100000 values in 10 lists"])
def test_a_filter_just_within_the_limits_answers_as_brute_force(col, spec, allowed, no_error_logs):
    found = col.search(QUERIES[0], k=K, tenant="t", filter=spec)
    np.testing.assert_array_equal(found.ids, expected(QUERIES[0], allowed) if allowed.any() else [])
    batch = col.search_batch(QUERIES[:2], k=K, tenants="t", filter=spec)
    for i in range(2):
        want = expected(QUERIES[i], allowed) if allowed.any() else np.array([], np.int64)
        np.testing.assert_array_equal(batch.ids[i, : want.size], want)
        assert (batch.ids[i, want.size:] == -1).all()


def test_a_get_whose_vectors_could_not_be_sent_is_refused_before_reading(tmp_path):
    """100 000 ids of dimension 256 are 100 MB of vectors: over a 1 MiB limit they are refused
    with the count that fits, and a Get within it answers."""
    from curator_server.app import CuratorServer, ServerConfig
    from curator_server.service import Limits

    server = CuratorServer(ServerConfig(data=":memory:", port=0, limits=Limits(max_message_bytes=1 << 20))).start()
    try:
        db = curator.connect(server.address, max_message_bytes=1 << 20)
        col = db.create_collection("wide", dim=256)
        for start in range(0, 2000, 500):
            col.insert(np.arange(start, start + 500), np.ones((500, 256), np.float32), tenant="t")
        with pytest.raises(curator.ResourceExhaustedError, match="at most 1023 at a time"):
            col.get(np.arange(2000))
        assert col.get(np.arange(1000)).shape == (1000, 256)
    finally:
        server.stop()
