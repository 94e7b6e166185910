"""Large filters on the wire: their values read from the message's bytes by numpy (the same values,
of the same types, as read one by one), keyed by those bytes, and one key's heavy filter calls
taking turns so that its Python work cannot hold the GIL from every other caller."""

import threading

import numpy as np
import pytest

import curator
from curator import filters
from curator.errors import InvalidArgumentError
from curator_proto import filters_wire
from curator_proto.v1 import curator_pb2 as pb
from curator_server.app import CuratorServer, ServerConfig
from curator_server.turns import HEAVY_FILTER_BYTES
from tests.conftest import keys_file

N = filters_wire.PACKED_FROM
RNG = np.random.default_rng(0)
LISTS = {
    "small integers": list(range(N * 3)),
    "any int64": RNG.integers(-(2**63), 2**63 - 1, N).tolist() + [0, -1, 1, 127, 128, 2**63 - 1, -(2**63)],
    "numbers": RNG.standard_normal(N).tolist() + [float("inf"), -0.0, 0.0, 1e300],
    "integers and numbers": [1, 2.5] * N,
    "keywords": [f"k{i}" for i in range(N)],
    "flags": [True, False] * N,
    "short integers": list(range(-5, 5)),
}


def received(spec: dict) -> pb.Filter:
    """The Filter message as the server gets it: packed by the SDK, through the wire."""
    return pb.SearchRequest.FromString(pb.SearchRequest(filter=filters_wire.pack_filter(spec)).SerializeToString()).filter


@pytest.mark.parametrize("name", LISTS)
def test_a_long_in_list_reads_the_same_values_of_the_same_types_as_one_by_one(name):
    values = LISTS[name]
    message = received({"field": {"in": values}})
    got = filters_wire.unpack_filter(message)["field"]["in"]
    assert [(type(v), repr(v)) for v in got] == [(type(v), repr(v)) for v in values]
    from_bytes = filters_wire._numbers_of(message.condition, len(values))
    assert (from_bytes is not None) == (name in ("small integers", "any int64", "numbers", "short integers"))
    if from_bytes is not None:
        assert [repr(v) for v in from_bytes] == [repr(v) for v in values]


def test_bytes_that_do_not_tile_as_expected_are_read_one_by_one():
    """A Value with a field this reader does not know, or one with no kind, among many integers:
    the bytes no longer tile as integer records, so the values are read one by one (the unknown
    field ignored, as protobuf does; the empty Value named by its place)."""
    values = [pb.Value(integer=i) for i in range(N)]
    head = pb.Condition(field="n", op="in").SerializeToString()
    odd = pb.Value(integer=7).SerializeToString() + bytes([0x48, 0x01])  # + field 9, varint 1: unknown
    body = b"".join(b"\x1a" + bytes([len(v)]) + v for v in
                    [m.SerializeToString() for m in values[:7]] + [odd] + [m.SerializeToString() for m in values[8:]])
    condition = pb.Condition.FromString(head + body)
    assert filters_wire._numbers_of(condition, N) is None
    assert filters_wire.unpack_filter(pb.Filter(condition=condition)) == {"n": {"in": list(range(N))}}
    condition.values[9].Clear()
    with pytest.raises(InvalidArgumentError, match="value 9: a Value with no kind set"):
        filters_wire.unpack_filter(pb.Filter(condition=condition))


def test_a_filter_from_the_wire_is_keyed_by_its_bytes_without_a_walk(monkeypatch):
    spec = {"or": [{"n": {"eq": i}} for i in range(500)]}  # the explicit form, as unpacked
    one, two = filters_wire.unpack_filter(received(spec)), filters_wire.unpack_filter(received(spec))
    other = filters_wire.unpack_filter(received({"or": [{"n": i} for i in range(501)]}))
    assert one == spec and isinstance(one, filters.Keyed)
    assert filters.key(one) != filters.key(dict(spec))  # only a miss of the cache: never confused
    monkeypatch.setattr(filters, "check", lambda spec: 1 / 0)  # keying a decoded filter walks nothing
    assert filters.key(one) == filters.key(two) != filters.key(other)


KEYS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789", "admin": "key-admin-0123456789"}


def test_one_keys_heavy_filter_calls_take_turns_and_hold_back_no_one_else(tmp_path, monkeypatch):
    keys = keys_file(tmp_path / "keys.toml", {"alice-app": (KEYS["alice"], ["alice"]), "bob-app": (KEYS["bob"], ["bob"]),
                                              "ops": (KEYS["admin"], None)})
    server = CuratorServer(ServerConfig(data=":memory:", port=0, keys=keys, workers=8)).start()
    rng = np.random.default_rng(1)
    with curator.connect(server.address, api_key=KEYS["admin"]) as admin:
        col = admin.create_collection("docs", dim=4)
        for t, tenant in enumerate(("alice", "bob")):
            col.insert(np.arange(t * 50, t * 50 + 50), rng.random((50, 4)), tenant=tenant,
                       payloads=[{"n": i} for i in range(50)])
    heavy = {"n": {"in": list(range(2000))}}
    assert filters_wire.pack_filter(heavy).ByteSize() > HEAVY_FILTER_BYTES
    engine = type(server.db.collection("docs"))
    real = engine.search
    inside = {"alice": 0, "bob": 0}
    most = {"alice": 0, "bob": 0}
    entered = {"alice": threading.Event(), "bob": threading.Event()}
    release = threading.Event()
    lock = threading.Lock()

    def search(self, query, k=10, *, tenant=None, filter=None, ef=None):
        if filter is not None and len(filter["n"]["in"]) == 2000:
            with lock:
                inside[tenant] += 1
                most[tenant] = max(most[tenant], inside[tenant])
            entered[tenant].set()
            release.wait(30)
            with lock:
                inside[tenant] -= 1
        return real(self, query, k, tenant=tenant, filter=filter, ef=ef)

    monkeypatch.setattr(engine, "search", search)
    alice = curator.connect(server.address, api_key=KEYS["alice"]).collection("docs")
    bob = curator.connect(server.address, api_key=KEYS["bob"]).collection("docs")
    query = np.ones(4, np.float32)
    results = []
    calls = [threading.Thread(target=lambda: results.append(alice.search(query, k=3, tenant="alice", filter=heavy)))]
    try:
        calls[0].start()
        assert entered["alice"].wait(30)
        calls += [threading.Thread(target=lambda: results.append(alice.search(query, k=3, tenant="alice", filter=heavy))),
                  threading.Thread(target=lambda: results.append(bob.search(query, k=3, tenant="bob", filter=heavy)))]
        for call in calls[1:]:
            call.start()
        assert entered["bob"].wait(30)  # another key's heavy call is not held back
        assert alice.search(query, k=3, tenant="alice").ids.size == 3  # nor alice's light ones
        assert alice.search(query, k=3, tenant="alice", filter={"n": {"in": [1, 2]}}).ids.size == 2
        threading.Event().wait(0.3)  # time for alice's second heavy call to get in, were it let in
        assert inside["alice"] == 1
    finally:
        release.set()
        for call in calls:
            call.join()
        server.stop()
    assert most == {"alice": 1, "bob": 1} and len(results) == 3 and all(r.ids.size == 3 for r in results)
