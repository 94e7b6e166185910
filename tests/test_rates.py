"""Key rates (server/rates.py): token buckets of reads and writes per API key, against a real
server on loopback with a stepped clock (no sleeping): a key's burst exactly used up passes, the
next call is refused RESOURCE_EXHAUSTED naming the limit with a retry-after, and after that many
seconds the call passes; searches on streams count one by one; rates set through the API persist
and override the keys file, which is read strictly; refusals are metrics."""

import grpc
import numpy as np
import pytest
from prometheus_client import generate_latest

import curator
from curator import PermissionDeniedError, ResourceExhaustedError
from curator_proto.v1 import curator_pb2 as pb
from curator_proto.v1 import curator_pb2_grpc as rpc
from curator_server.app import CuratorServer, ServerConfig
from curator_server.auth import KeysFileError, digest_of, parse_keys
from curator_server.rates import READS, WRITES, TokenBucket, kind_of

KEYS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789", "admin": "key-admin-0123456789"}
DIM = 4


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def keys_file(path, alice_rates: str = "reads_per_second = 2\nwrites_per_second = 1\nburst = 3\n"):
    path.write_text(
        f'[[keys]]\nname = "alice-app"\nsha256 = "{digest_of(KEYS["alice"])}"\ntenants = ["alice"]\n{alice_rates}'
        f'[[keys]]\nname = "bob-app"\nsha256 = "{digest_of(KEYS["bob"])}"\ntenants = ["bob"]\n'
        f'[[keys]]\nname = "ops"\nsha256 = "{digest_of(KEYS["admin"])}"\nadmin = true\n')
    return str(path)


def start(tmp_path, data: str = ":memory:") -> tuple[CuratorServer, Clock]:
    server = CuratorServer(ServerConfig(data=data, port=0, keys=keys_file(tmp_path / "keys.toml"))).start()
    clock = server.rates.clock = Clock()
    return server, clock


@pytest.fixture
def served(tmp_path):
    server, clock = start(tmp_path)
    with curator.connect(server.address, api_key=KEYS["admin"]) as admin:
        col = admin.create_collection("docs", dim=DIM)
        col.insert(np.arange(10), np.random.default_rng(0).random((10, DIM)), tenant="alice")
    alice = curator.connect(server.address, api_key=KEYS["alice"], retries=0)
    yield server, clock, alice
    alice.close()
    server.stop()


def refused(call, limit: str) -> ResourceExhaustedError:
    with pytest.raises(ResourceExhaustedError) as caught:
        call()
    assert caught.value.limit == limit and f"({limit}" in str(caught.value)
    return caught.value


# -- the bucket alone --------------------------------------------------------------------------------


def test_a_bucket_exactly_at_just_over_and_after_the_window():
    bucket = TokenBucket(rate=4.0, burst=3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst, exactly used up
    assert bucket.take(0.0) == pytest.approx(0.25)  # just over: one token is 1/4 s away
    assert bucket.take(0.2499) > 0  # not yet
    assert bucket.take(0.25) == 0.0  # after the window
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(100.0) == 0.0 and bucket.tokens == 2.0  # idle time fills it to the burst, no more
    assert bucket.take(100.0, 3) == pytest.approx(0.25)  # several at once: all or none
    assert bucket.tokens == 2.0


def test_a_tenant_archive_export_is_a_read_and_an_import_a_write():
    assert kind_of("/curator.v1.TenantArchive/Export") == READS
    assert kind_of("/curator.v1.TenantArchive/Import") == WRITES


def test_every_method_of_the_contract_is_a_read_a_write_or_counted_per_search():
    kinds = {}
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            kinds[f"{service.name}/{method.name}"] = kind_of(f"/{service.full_name}/{method.name}")
    reads = {m for m, k in kinds.items() if k == READS}
    assert {"Search/Search", "Search/SearchBatch", "VectorsService/Get", "VectorsService/Count",
            "VectorsService/Scroll", "VectorsService/GetPayloads", "Collections/Describe", "Cache/Lookup"} <= reads
    writes = {m for m, k in kinds.items() if k == WRITES}
    assert {"VectorsService/Insert", "VectorsService/SetPayloads", "VectorsService/Grant", "VectorsService/Revoke",
            "VectorsService/Delete", "Cache/Store", "Cache/Complete", "Collections/Create", "Admin/Snapshot"} <= writes
    uncounted = {m for m, k in kinds.items() if k is None}
    assert uncounted == {"Search/SearchStream", "Search/SearchGroups", "Limits/SetQuota", "Limits/GetQuota",
                         "Limits/SetKeyRates", "Limits/GetKeyRates"}
    assert kind_of("/grpc.health.v1.Health/Check") is None


# -- a served key ------------------------------------------------------------------------------------


def test_reads_exactly_at_just_over_and_after_the_window(served):
    server, clock, alice = served
    col = alice.collection("docs")  # Describe: a read (1 of the burst of 3)
    assert col.count("alice") == 10 and col.get([1]).shape == (1, DIM)  # exactly the burst
    error = refused(lambda: col.count("alice"), "reads_per_second")
    assert error.retry_after == pytest.approx(0.5)  # 2 reads a second: one is half a second away
    assert "key 'alice-app' is over its rate of 2 reads per second" in str(error)
    clock.now += 0.499
    refused(lambda: col.count("alice"), "reads_per_second")
    clock.now += 0.001
    assert col.count("alice") == 10  # after the window
    col.insert([10], np.ones((1, DIM)), tenant="alice")  # writes have their own bucket
    clock.now += 100
    for _ in range(3):
        col.count("alice")
    refused(lambda: col.count("alice"), "reads_per_second")


def test_a_refusal_carries_retry_after_in_the_trailing_metadata(served):
    server, clock, _ = served
    channel = grpc.insecure_channel(server.address)
    stub, auth = rpc.VectorsServiceStub(channel), (("authorization", f"Bearer {KEYS['alice']}"),)
    request = pb.GrantRequest(collection="docs", ids=[1], tenant="alice")
    stub.Grant(request, metadata=auth)  # writes: 1 a second, burst 3
    stub.Grant(request, metadata=auth)
    stub.Grant(request, metadata=auth)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Grant(request, metadata=auth)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(caught.value.trailing_metadata())
    assert trailers["retry-after"] == "1.000" and trailers["curator-limit"] == "writes_per_second"
    assert "writes_per_second" in caught.value.details()
    channel.close()


def test_other_keys_are_not_limited_by_alices_rate(served):
    server, clock, alice = served
    for _ in range(3):
        alice.list_collections()
    refused(alice.list_collections, "reads_per_second")
    with curator.connect(server.address, api_key=KEYS["bob"]) as bob:
        for _ in range(20):
            bob.list_collections()


@pytest.mark.parametrize("options", [dict(), dict(coalesce=False), dict(search_stream=False)])
def test_each_search_on_a_stream_counts_as_a_read(served, options):
    server, clock, _ = served
    with curator.connect(server.address, api_key=KEYS["alice"], retries=0, **options) as alice:
        col = alice.collection("docs")  # 1 read
        query = np.ones(DIM, np.float32)
        col.search(query, k=3, tenant="alice")
        col.search(query, k=3, tenant="alice")  # the burst of 3
        error = refused(lambda: col.search(query, k=3, tenant="alice"), "reads_per_second")
        assert error.retry_after == pytest.approx(0.5)
        clock.now += 0.5
        assert col.search(query, k=3, tenant="alice").ids.size == 3


def test_a_group_of_searches_past_the_rate_is_answered_one_by_one(served):
    server, clock, _ = served
    channel = grpc.insecure_channel(server.address)
    stub = rpc.SearchStub(channel)
    search = pb.SearchRequest(collection="docs", k=2, tenant="alice", query=pb.Vectors(dim=DIM, data=bytes(4 * DIM)))
    group = pb.SearchGroup(searches=[search] * 5)
    replies = next(stub.SearchGroups(iter([group]), metadata=(("authorization", f"Bearer {KEYS['alice']}"),)))
    outcomes = [reply.WhichOneof("outcome") for reply in replies.replies]
    assert outcomes == ["result"] * 3 + ["error"] * 2  # a burst of 3
    failure = replies.replies[3].error
    assert failure.code == "RESOURCE_EXHAUSTED" and failure.limit == "reads_per_second"
    assert failure.retry_after == pytest.approx(0.5)
    channel.close()


def test_rates_set_by_an_admin_persist_and_override_the_keys_file(tmp_path):
    data = str(tmp_path / "data")
    server, clock = start(tmp_path, data)
    try:
        with curator.connect(server.address, api_key=KEYS["alice"], retries=0) as alice:
            with pytest.raises(PermissionDeniedError):
                alice.set_key_rates("alice-app", reads_per_second=None)
            with pytest.raises(PermissionDeniedError):
                alice.key_rates("bob-app")
            assert alice.key_rates() == {"reads_per_second": 2.0, "writes_per_second": 1.0, "burst": 3.0}
        with curator.connect(server.address, api_key=KEYS["admin"]) as admin:
            assert admin.set_key_rates("alice-app", reads_per_second=None, burst=None) == {
                "reads_per_second": None, "writes_per_second": 1.0, "burst": None}
            with pytest.raises(curator.NotFoundError):
                admin.set_key_rates("nobody", reads_per_second=1)
            with pytest.raises(curator.InvalidArgumentError):
                admin.set_key_rates("bob-app", reads_per_second=0)
            assert admin.set_key_rates("bob-app", writes_per_second=0.5)["writes_per_second"] == 0.5
    finally:
        server.stop()
    server, clock = start(tmp_path, data)  # the same keys file, which still says 2 reads a second
    try:
        with curator.connect(server.address, api_key=KEYS["alice"], retries=0) as alice:
            for _ in range(20):
                alice.list_collections()
            assert alice.key_rates()["writes_per_second"] == 1.0
        with curator.connect(server.address, api_key=KEYS["bob"], retries=0) as bob:
            assert bob.key_rates() == {"reads_per_second": None, "writes_per_second": 0.5, "burst": None}
    finally:
        server.stop()


def test_an_admin_can_lift_a_limit_while_its_key_is_over_its_rates(tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[[keys]]\nname = "ops"\nsha256 = "{digest_of(KEYS["admin"])}"\nadmin = true\n'
                    "reads_per_second = 1\nwrites_per_second = 1\nburst = 1\n")
    server = CuratorServer(ServerConfig(data=":memory:", port=0, keys=str(keys))).start()
    server.rates.clock = Clock()
    try:
        with curator.connect(server.address, api_key=KEYS["admin"], retries=0) as admin:
            admin.list_collections()
            refused(admin.list_collections, "reads_per_second")
            admin.set_key_rates("ops", reads_per_second=None)  # Limits is not rate-limited
            admin.set_quota("alice", vectors=1)
            for _ in range(5):
                admin.list_collections()
    finally:
        server.stop()


def test_refusals_are_counted_per_limit(served):
    server, clock, alice = served
    for _ in range(3):
        alice.list_collections()
    for _ in range(2):
        refused(alice.list_collections, "reads_per_second")
    text = generate_latest(server.metrics.registry).decode()
    assert 'curator_quota_refused_total{limit="reads_per_second"} 2.0' in text
    assert 'curator_refused_total{reason="rate_limit"} 2.0' in text


def test_open_mode_has_no_rates(tmp_path):
    server = CuratorServer(ServerConfig(data=":memory:", port=0)).start()
    try:
        with curator.connect(server.address) as db:
            for _ in range(50):
                db.list_collections()
            with pytest.raises(curator.NotFoundError, match="without keys"):
                db.key_rates()
    finally:
        server.stop()


# -- the keys file ---------------------------------------------------------------------------------


def entry(name: str, digest: str, extra: str) -> str:
    return f'[[keys]]\nname = "{name}"\nsha256 = "{digest}"\ntenants = ["t"]\n{extra}'


D1, D2 = digest_of("one"), digest_of("two")


@pytest.mark.parametrize("extra, message", [
    ('reads_per_second = "10"\n', "reads_per_second must be a number"),
    ("reads_per_second = 0\n", "reads_per_second must be above 0"),
    ("writes_per_second = -1.5\n", "writes_per_second must be above 0"),
    ("burst = 0.5\n", "burst must be at least 1"),
    ("burst = true\n", "burst must be a number"),
    ("reads_per_second = inf\n", "must be a finite number"),
    ("reads_per_second = 1e12\n", "at most"),
    ("read_per_second = 1\n", "unknown field 'read_per_second'"),
])
def test_rates_in_the_keys_file_are_read_strictly(extra, message):
    with pytest.raises(KeysFileError) as caught:
        parse_keys(entry("a", D1, extra))
    assert message in str(caught.value) and "key entry 1" in str(caught.value)


def test_keys_of_one_name_share_rates_and_must_agree():
    agreeing = entry("app", D1, "reads_per_second = 5\n") + entry("app", D2, "reads_per_second = 5.0\n")
    assert {p.reads_per_second for p in parse_keys(agreeing).values()} == {5.0}
    with pytest.raises(KeysFileError, match="rates differ from those of another entry named 'app'"):
        parse_keys(entry("app", D1, "reads_per_second = 5\n") + entry("app", D2, "reads_per_second = 6\n"))


def test_the_asyncio_sdk_raises_the_rate_with_its_retry_after(served):
    import asyncio

    from curator_client import aio

    server, clock, _ = served

    async def run():
        async with await aio.connect(server.address, api_key=KEYS["alice"], retries=0) as alice:
            col = await alice.collection("docs")
            query = np.ones(DIM, np.float32)
            await col.search(query, k=2, tenant="alice")
            await col.search(query, k=2, tenant="alice")
            for call in (lambda: col.search(query, k=2, tenant="alice"), lambda: col.count("alice")):
                with pytest.raises(ResourceExhaustedError) as caught:
                    await call()
                assert caught.value.limit == "reads_per_second" and caught.value.retry_after == pytest.approx(0.5)
            clock.now += 0.5
            assert await col.count("alice") == 10

    asyncio.run(run())
