"""Tenant quotas (curator/quotas.py), embedded (in memory, on a data directory) and remote (a real
server through the SDK): a write exactly reaching a quota succeeds, one just over is refused whole
naming the tenant, the limit, the usage and the quota, and after room is made the same write
succeeds; usage follows what each tenant can see, over every collection and the cache; quotas set
through the API persist and override the configured ones; refusals and usage are metrics."""

import threading

import numpy as np
import pytest
from prometheus_client import generate_latest

import curator
from curator_loadtest.stand_in_llm import StandInLLM
from curator import InvalidArgumentError, PermissionDeniedError, Quota, ResourceExhaustedError
from curator.quotas import parse_config, payload_bytes, read_config
from curator_server.app import CuratorServer, ServerConfig
from curator_server.cli import main as cli
from tests.conftest import KINDS, SMALL_TREE, database, keys_file, opened

pytestmark = pytest.mark.cluster

DIM = 4
ROW = DIM * 4  # bytes of one vector
MODEL, MODEL_DIM = "unit-test-8d", 8


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, DIM)).astype(np.float32)


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(MODEL_DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture(params=KINDS)
def db(request, tmp_path):
    with opened(request, request.param, tmp_path, retries=0) as db:
        yield db


def refused(call, limit: str) -> ResourceExhaustedError:
    with pytest.raises(ResourceExhaustedError) as caught:
        call()
    assert caught.value.limit == limit and f"({limit})" in str(caught.value)
    return caught.value


# -- each limit: exactly at, just over, after room is made -------------------------------------------


def test_vectors_exactly_at_just_over_and_after_room_is_made(db):
    col = db.create_collection("docs", dim=DIM)
    assert db.set_quota("alice", vectors=10) == Quota(vectors=10)
    col.insert(np.arange(10), vectors(10), tenant="alice")  # exactly at the quota
    error = refused(lambda: col.insert([10], vectors(1), tenant="alice"), "vectors")
    assert str(error) == "tenant 'alice' would hold 11 vectors (10 now); its quota is 10 (vectors)"
    assert col.count("alice") == 10 and not col.contains([10])[0]  # nothing changed
    col.delete([0])
    col.insert([10], vectors(1), tenant="alice")  # room made: the same write succeeds
    assert db.quota("alice").usage.vectors == 10
    col.insert(np.arange(100, 105), vectors(5), tenant="bob")  # another tenant has no quota


def test_a_refused_batch_changes_nothing(db):
    col = db.create_collection("docs", dim=DIM)
    db.set_quota("alice", vectors=5)
    col.insert(np.arange(3), vectors(3), tenant="alice")
    refused(lambda: col.insert(np.arange(3, 6), vectors(3, 1), tenant="alice"), "vectors")  # 2 would fit
    assert col.count("alice") == 3 and not col.contains(np.arange(3, 6)).any()
    col.insert(np.arange(3, 5), vectors(2, 1), tenant="alice")
    assert col.count("alice") == 5


def test_vector_bytes_follow_each_collections_dimension(db):
    small, large = db.create_collection("small", dim=DIM), db.create_collection("large", dim=2 * DIM)
    db.set_quota("alice", vector_bytes=3 * ROW + 2 * 2 * ROW)
    small.insert(np.arange(3), vectors(3), tenant="alice")
    large.insert(np.arange(2), np.ones((2, 2 * DIM), np.float32), tenant="alice")  # exactly at
    error = refused(lambda: small.insert([9], vectors(1), tenant="alice"), "vector_bytes")
    assert f"would hold {7 * ROW + ROW} bytes of vectors ({7 * ROW} now); its quota is {7 * ROW}" in str(error)
    large.revoke([0], tenant="alice")  # the vector goes with its last tenant: 2 x ROW bytes free
    small.insert([9, 10], vectors(2), tenant="alice")
    usage = db.quota("alice").usage
    assert (usage.vectors, usage.vector_bytes) == (6, 7 * ROW)


def test_payload_bytes_count_the_stored_json(db):
    col = db.create_collection("docs", dim=DIM)
    payloads = [{"lang": "en", "year": 2024}, {"tags": ["a", "b"], "score": 0.5, "ok": True}]
    size = sum(payload_bytes(p) for p in payloads)
    assert payload_bytes(payloads[0]) == len('{"lang":"en","year":2024}')
    db.set_quota("alice", payload_bytes=size)
    col.insert([1, 2], vectors(2), tenant="alice", payloads=payloads)  # exactly at
    assert db.quota("alice").usage.payload_bytes == size
    error = refused(lambda: col.insert([3], vectors(1), tenant="alice", payloads=[{"x": 1}]), "payload_bytes")
    assert f"would hold {size + 7} bytes of payloads ({size} now); its quota is {size}" in str(error)
    refused(lambda: col.set_payloads([1], {"lang": "english", "year": 2024}), "payload_bytes")  # grows by 5
    assert col.get_payloads([1]) == [payloads[0]]
    col.insert([3], vectors(1), tenant="alice")  # a vector without a payload holds no payload bytes
    col.set_payloads([2], {"ok": True})  # smaller: room for 7 more
    col.set_payloads([3], {"x": 1})
    assert db.quota("alice").usage.payload_bytes == size - payload_bytes(payloads[1]) + 11 + 7


def test_a_grant_brings_the_payload_and_a_shared_payload_counts_for_every_tenant(db):
    col = db.create_collection("docs", dim=DIM)
    col.insert([1], vectors(1), tenant="alice", payloads=[{"text": "x" * 40}])
    one = payload_bytes({"text": "x" * 40})
    db.set_quota("bob", payload_bytes=one, vectors=1)
    col.grant([1], tenant="bob")  # bob now sees the vector and its payload: exactly at
    assert db.quota("bob").usage.payload_bytes == one and db.quota("alice").usage.payload_bytes == one
    refused(lambda: col.set_payloads([1], {"text": "x" * 41}), "payload_bytes")  # it would grow bob past his
    col.set_payloads([1], {"text": "x" * 41}, tenant="alice")  # the owner's own write: her quota alone
    assert db.quota("bob").usage.payload_bytes == one + 1  # bob's tally follows, past his quota
    db.set_quota("alice", payload_bytes=one + 1)
    refused(lambda: col.set_payloads([1], {"text": "x" * 42}, tenant="alice"), "payload_bytes")  # hers bounds her
    db.set_quota("alice", payload_bytes=None)
    col.insert([2], vectors(1), tenant="alice", payloads=[{"text": "y"}])
    refused(lambda: col.grant([2], tenant="bob"), "vectors")
    col.revoke([1], tenant="bob")
    assert db.quota("bob").usage == curator.Usage()
    col.set_payloads([1], {"text": "x" * 41})  # bob no longer sees it
    col.grant([2], tenant="bob")
    assert db.quota("bob").usage.payload_bytes == payload_bytes({"text": "y"})


def test_upserts_count_only_what_they_add(db):
    col = db.create_collection("docs", dim=DIM)
    db.set_quota("alice", vectors=4, payload_bytes=2 * payload_bytes({"a": 1}))
    col.insert([1, 2], vectors(2), tenant="alice", payloads=[{"a": 1}, {"a": 2}])
    col.upsert([1, 2], vectors(2, 1), tenant="alice", payloads=[{"a": 3}, {"a": 4}])  # same sizes: nothing added
    col.upsert([1, 2, 3, 4], vectors(4, 2), tenant="alice")  # two new vectors, payloads kept: exactly at
    refused(lambda: col.upsert([5], vectors(1), tenant="alice"), "vectors")
    refused(lambda: col.upsert([1], vectors(1), tenant="alice", payloads=[{"a": 10}]), "payload_bytes")
    usage = db.quota("alice").usage
    assert (usage.vectors, usage.payload_bytes) == (4, 2 * payload_bytes({"a": 1}))


def test_usage_is_summed_over_collections_and_tenants_apart(db):
    first, second = db.create_collection("first", dim=DIM), db.create_collection("second", dim=DIM)
    db.set_quota("alice", vectors=6)
    first.insert(np.arange(4), vectors(4), tenant="alice")
    second.insert(np.arange(2), vectors(2), tenant="alice")
    refused(lambda: second.insert([2], vectors(1), tenant="alice"), "vectors")
    first.insert(np.arange(10, 20), vectors(10), tenant="bob")
    db.drop_collection("first")
    second.insert(np.arange(2, 6), vectors(4), tenant="alice")
    assert db.quota("alice").usage.vectors == 6


def test_a_quota_lowered_below_the_usage_refuses_growth_only(db):
    col = db.create_collection("docs", dim=DIM)
    col.insert(np.arange(5), vectors(5), tenant="alice", payloads=[{"k": "v"}] * 5)
    db.set_quota("alice", vectors=2, payload_bytes=0)
    refused(lambda: col.insert([9], vectors(1), tenant="alice"), "vectors")
    col.set_payloads([0], {"k": ""})  # smaller: allowed although over the quota
    col.upsert([1], vectors(1, 1), tenant="alice")  # no growth
    col.delete([2])
    col.revoke([3], tenant="alice")
    assert db.quota("alice").usage.vectors == 3
    db.set_quota("alice", vectors=None, payload_bytes=None)  # None: unlimited
    col.insert([9], vectors(1), tenant="alice")


def test_a_write_failing_on_its_own_says_so_before_the_quota(db):
    col = db.create_collection("docs", dim=DIM)
    db.set_quota("alice", vectors=1)
    col.insert([1], vectors(1), tenant="alice")
    with pytest.raises(curator.AlreadyExistsError):
        col.insert([1, 2], vectors(2), tenant="alice")
    with pytest.raises(curator.NotFoundError):
        col.grant([7, 8], tenant="alice")


def test_the_default_quota_and_configured_ones(tmp_path):
    config = {"default": {"vectors": 2}, "tenants": {"bob": {"vectors": 3}}}
    with curator.open(":memory:", quotas=config) as db:
        col = db.create_collection("docs", dim=DIM)
        col.insert(np.arange(2), vectors(2), tenant="alice")
        refused(lambda: col.insert([2], vectors(1), tenant="alice"), "vectors")
        col.insert(np.arange(10, 13), vectors(3), tenant="bob")
        refused(lambda: col.insert([13], vectors(1), tenant="bob"), "vectors")
        db.set_quota(None, vectors=3)  # the API's default overrides the configured default ...
        col.insert([2], vectors(1), tenant="alice")
        db.set_quota(None, vectors=100)  # ... but not a tenant's own
        refused(lambda: col.insert([13], vectors(1), tenant="bob"), "vectors")
        assert db.quota(None).quota == Quota(vectors=100) and db.quota(None).usage == curator.Usage()


def test_quotas_set_through_the_api_persist_and_override_the_configuration(tmp_path):
    path = str(tmp_path / "data")
    config = {"tenants": {"alice": {"vectors": 1, "cache_entries": 7}}}
    with curator.open(path, quotas=config) as db:
        col = db.create_collection("docs", dim=DIM)
        db.set_quota("alice", vectors=3, payload_bytes=100)
        col.insert(np.arange(3), vectors(3), tenant="alice", payloads=[{"n": i} for i in range(3)])
        before = db.quota("alice")
    with curator.open(path, quotas=config) as db:
        after = db.quota("alice")
        assert after == before and after.quota == Quota(vectors=3, payload_bytes=100, cache_entries=7)
        assert after.usage.payload_bytes == 3 * payload_bytes({"n": 0})  # rebuilt from the stored payloads
        refused(lambda: db.collection("docs").insert([3], vectors(1), tenant="alice"), "vectors")


def test_payload_quotas_set_after_the_payloads_count_them(db):
    col = db.create_collection("docs", dim=DIM)
    col.insert(np.arange(4), vectors(4), tenant="alice", payloads=[{"t": "abc"}] * 4)
    col.grant([0, 1], tenant="bob")
    one = payload_bytes({"t": "abc"})
    db.set_quota("bob", payload_bytes=2 * one)  # the tally starts from what is stored
    assert db.quota("bob").usage.payload_bytes == 2 * one
    refused(lambda: col.grant([2], tenant="bob"), "payload_bytes")
    col.delete([0])
    col.grant([2], tenant="bob")
    col.drop_tenant("alice")  # bob keeps what he sees
    assert db.quota("bob").usage.payload_bytes == 2 * one and db.quota("alice").usage == curator.Usage()


def test_cache_entries(db):
    cache = db.cache
    db.set_quota("acme", cache_entries=2)

    def store(i, category="code"):
        return cache.store("acme", f"prompt {i}", f"answer {i}", embedding=unit(i), category=category,
                           embedding_model=MODEL)

    store(1)
    store(2, "legal")  # exactly at, over two categories
    error = refused(lambda: store(3), "cache_entries")
    assert "would hold 3 cache entries (2 now); its quota is 2 (cache_entries)" in str(error)
    assert db.quota("acme").usage.cache_entries == 2
    cache.set_policy("code", max_entries=1)  # a store that evicts as much as it adds grows nothing
    store(4)
    cache.invalidate("acme", "legal")
    store(5, "legal")
    assert db.quota("acme").usage.cache_entries == 2


def test_complete_answers_uncached_when_the_entries_are_full(tmp_path):
    upstream = StandInLLM()
    try:
        with curator.open(":memory:", cache={"upstream": {"url": upstream.url, "timeout": 5.0}}) as db:
            db.set_quota("acme", cache_entries=0)
            done = db.cache.complete("acme", [{"role": "user", "content": "hi"}], category="code",
                                     embedding=unit(1), embedding_model=MODEL)
            assert done.answer and not done.cached and done.entry_id == -1
            assert db.quota("acme").usage.cache_entries == 0
    finally:
        upstream.close()


def test_concurrent_writes_of_one_tenant_in_two_collections_never_pass_the_quota():
    with curator.open(":memory:") as db:
        cols = [db.create_collection(name, dim=DIM) for name in ("a", "b")]
        db.set_quota("alice", vectors=50)
        outcomes = []

        def fill(col, base):
            for i in range(40):
                try:
                    col.insert([base + i], vectors(1, i), tenant="alice")
                    outcomes.append(True)
                except ResourceExhaustedError:
                    outcomes.append(False)

        threads = [threading.Thread(target=fill, args=(col, 1000 * n)) for n, col in enumerate(cols)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(outcomes) == 50 and db.quota("alice").usage.vectors == 50


def test_limits_are_checked(db):
    for bad in ({"vectors": -1}, {"vectors": 1.5}, {"vectors": True}, {"entries": 3}):
        with pytest.raises(InvalidArgumentError):
            db.set_quota("alice", **bad)


# -- the configuration file ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("[default]\nvectors = -1\n", "[default]: vectors must be an integer from 0"),
    ("[default]\nvectors = 1.5\n", "vectors must be an integer"),
    ('[default]\nvectors = "10"\n', "vectors must be an integer"),
    ("[default]\nvectros = 10\n", "unknown limit(s) ['vectros']"),
    ("[tenants.alice]\nvectors = true\n", "[tenants.alice]: vectors must be an integer"),
    ("[quotas]\nvectors = 1\n", "unknown top-level entries ['quotas']"),
    ("tenants = 3\n", "tenants must be tables"),
    ("[default\n", "cannot read the quotas file"),
])
def test_the_quotas_file_is_read_strictly(tmp_path, text, message):
    path = tmp_path / "quotas.toml"
    path.write_text(text)
    with pytest.raises(InvalidArgumentError) as caught:
        read_config(path)
    assert message in str(caught.value)
    assert cli(["serve", "--data", ":memory:", "--quotas", str(path)]) == 2


def test_a_quotas_file(tmp_path):
    path = tmp_path / "quotas.toml"
    path.write_text("[default]\nvectors = 1000\npayload_bytes = 1048576\n\n[tenants.alice]\nvectors = 10\n")
    assert read_config(path) == {"default": {"vectors": 1000, "payload_bytes": 1 << 20},
                                 "tenants": {"alice": {"vectors": 10}}}
    assert parse_config({}) == {"default": {}, "tenants": {}}


# -- over gRPC: keys, codes, metrics -------------------------------------------------------------------

KEYS = {"alice": "key-alice-0123456789", "admin": "key-admin-0123456789"}


@pytest.fixture
def secured(tmp_path):
    keys = keys_file(tmp_path / "keys.toml", {"alice-app": (KEYS["alice"], ["alice"]), "ops": (KEYS["admin"], None)})
    server = CuratorServer(ServerConfig(data=str(tmp_path / "data"), port=0, keys=keys,
                                        quotas={"tenants": {"alice": {"vectors": 3}}})).start()
    admin = curator.connect(server.address, api_key=KEYS["admin"], retries=0)
    alice = curator.connect(server.address, api_key=KEYS["alice"], retries=0)
    admin.create_collection("docs", dim=DIM)
    yield server, admin, alice
    alice.close()
    admin.close()
    server.stop()


def test_only_an_admin_sets_quotas_and_a_tenant_reads_its_own(secured):
    server, admin, alice = secured
    with pytest.raises(PermissionDeniedError):
        alice.set_quota("alice", vectors=100)
    with pytest.raises(PermissionDeniedError):
        alice.quota("bob")
    col = alice.collection("docs")
    col.insert(np.arange(3), vectors(3), tenant="alice")
    assert alice.quota("alice").usage.vectors == 3 and alice.quota(None).quota == Quota()
    error = refused(lambda: col.insert([3], vectors(1), tenant="alice"), "vectors")
    assert error.retry_after is None  # a quota is not a rate: waiting does not help
    assert admin.set_quota("alice", vectors=4) == Quota(vectors=4)
    col.insert([3], vectors(1), tenant="alice")


def test_refusals_and_usage_are_metrics(secured):
    server, admin, alice = secured
    col = alice.collection("docs")
    col.insert(np.arange(3), vectors(3), tenant="alice")
    for _ in range(2):
        refused(lambda: col.insert([3], vectors(1), tenant="alice"), "vectors")
    admin.collection("docs").insert([10], vectors(1), tenant="bob")
    text = generate_latest(server.metrics.registry).decode()
    assert 'curator_quota_refused_total{limit="vectors"} 2.0' in text
    assert 'curator_quota_usage{limit="vectors",tenant="alice"} 3.0' in text
    assert 'curator_quota_limit{limit="vectors",tenant="alice"} 3.0' in text
    assert 'tenant="bob"' not in text  # no quota of its own: no series


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_payload_tally_matches_a_recount_through_every_kind_of_write(seed):
    """Random inserts, upserts, payload writes, grants, revokes, deletes, tenant drops and retrains
    (small trees), then each tenant's payload bytes from the tally against a recount of what it sees."""
    rng = np.random.default_rng(seed)
    tenants = ["a", "b", "c"]
    with curator.open(":memory:") as db:
        col = db.create_collection("docs", dim=DIM, **SMALL_TREE)
        db.set_quota("a", payload_bytes=10**9)  # a payload quota somewhere: the tally is kept
        next_id = 0
        for step in range(300):
            live = col.scroll(limit=100_000)[0]
            op = rng.integers(0, 8)
            payload = (lambda: {"t": "x" * int(rng.integers(0, 30))} if rng.random() < 0.7 else {})
            tenant = tenants[rng.integers(0, 3)]
            try:
                if op <= 1 or live.size < 5:
                    n = int(rng.integers(1, 8))
                    col.insert(np.arange(next_id, next_id + n), vectors(n, step), tenant=tenant,
                               payloads=[payload() for _ in range(n)] if rng.random() < 0.8 else None)
                    next_id += n
                elif op == 2:
                    ids = rng.choice(live, min(4, live.size), replace=False)
                    col.upsert(ids, vectors(ids.size, step), tenant=tenant,
                               payloads=[payload() for _ in ids] if rng.random() < 0.5 else None)
                elif op == 3:
                    ids = rng.choice(live, min(4, live.size), replace=False)
                    col.set_payloads(ids, [payload() for _ in ids])
                elif op == 4:
                    col.grant(rng.choice(live, min(6, live.size), replace=False), tenant=tenant)
                elif op == 5:
                    col.revoke(rng.choice(live, min(3, live.size), replace=False), tenant=tenant)
                elif op == 6:
                    col.delete(rng.choice(live, min(2, live.size), replace=False))
                elif step % 50 == 7 and tenant in col.tenants():
                    col.drop_tenant(tenant)
            except (curator.NotFoundError, PermissionDeniedError):
                pass  # a revoke of vectors the tenant never saw, an unknown tenant, another's vector
        col.train()
        for tenant in tenants:
            seen = col.scroll(tenant=tenant, limit=100_000)[0] if tenant in col.tenants() else np.zeros(0, np.int64)
            expected = sum(payload_bytes(p) for p in col.get_payloads(seen)) if seen.size else 0
            assert db.usage(tenant, ("payload_bytes",)) == {"payload_bytes": expected}
            assert db.quota(tenant).usage.vectors == seen.size


def test_the_asyncio_sdk_sets_and_reads_quotas(tmp_path):
    import asyncio

    from curator_client import aio

    server = CuratorServer(ServerConfig(data=":memory:", port=0)).start()

    async def run():
        async with await aio.connect(server.address, retries=0) as db:
            col = await db.create_collection("docs", dim=DIM)
            assert await db.set_quota("alice", vectors=1) == Quota(vectors=1)
            await col.insert([1], vectors(1), tenant="alice")
            with pytest.raises(ResourceExhaustedError) as caught:
                await col.insert([2], vectors(1), tenant="alice")
            assert caught.value.limit == "vectors"
            assert (await db.quota("alice")).usage.vectors == 1

    try:
        asyncio.run(run())
    finally:
        server.stop()
