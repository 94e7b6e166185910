"""The semantic cache's resources and isolation (issue 19, item 4): each tenant's budget over all its
categories (entries, bytes, categories), the answer size limit, one dimension per embedding model,
random entry ids, stats of a tenant's own activity, and metric labels only admins name.

Each limit is tried exactly at it and just over it, embedded and over gRPC where the refusal must
travel (ResourceExhaustedError with `.limit`)."""

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

import curator
from curator import InvalidArgumentError, ResourceExhaustedError
from curator.cache.engine import SemanticCache
from curator.cache.limits import Limits
from curator.cache.records import MemoryRecords, encode_entry, entry_key
from curator_loadtest.stand_in_llm import StandInLLM
from tests.conftest import database

DIM = 8
T0 = 1_700_000_000.0


class Fixed:
    """An embedder that is never called (every call brings its embedding)."""

    name, dim = "fixed-test", DIM

    def embed(self, texts):
        raise AssertionError("the tests bring their embeddings")


def unit(i: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(i).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def store(cache, tenant, i, category="code", answer=None, model="m", dim=DIM):
    return cache.store(tenant, f"prompt {i:04d}", answer if answer is not None else f"answer {i:04d}",
                       embedding=unit(i, dim), category=category, embedding_model=model)


def refused(call, limit: str) -> ResourceExhaustedError:
    with pytest.raises(ResourceExhaustedError) as caught:
        call()
    assert caught.value.limit == limit and f"({limit})" in str(caught.value)
    return caught.value


def cache_of(**limits) -> SemanticCache:
    """An embedded cache with a clock that stands still: every entry of one prompt and answer
    length has the same size in bytes."""
    return SemanticCache(embedder=Fixed(), clock=lambda: T0, limits=Limits(**limits))


@pytest.fixture(params=["memory", "remote"])
def kind(request):
    return request.param


# -- each tenant's budget over all its categories ----------------------------------------------------

def test_tenant_entries_exactly_at_and_just_over(kind, tmp_path):
    with database(kind, tmp_path, cache={"limits": {"tenant_entries": 3}}) as db:
        cache = db.cache
        for i, category in enumerate(("code", "code", "chat")):  # every category counts
            assert store(cache, "acme", i, category) >= 0
        error = refused(lambda: store(cache, "acme", 3, "legal"), "cache_entries")
        assert "tenant 'acme' would hold 4 cache entries (3 now); its quota is 3 (cache_entries)" in str(error)
        assert [store(cache, "other", i) >= 0 for i in range(3)] == [True] * 3  # its own budget
        cache.set_policy("code", max_entries=2)  # a store that evicts as much as it adds grows nothing
        assert store(cache, "acme", 4, "code") >= 0
        assert cache.stats("acme")["entries"] == 3
        cache.invalidate("acme", "chat")
        assert store(cache, "acme", 5, "chat") >= 0


def test_a_cache_entries_quota_replaces_the_default_budget(kind, tmp_path):
    with database(kind, tmp_path, cache={"limits": {"tenant_entries": 2}}) as db:
        db.set_quota("acme", cache_entries=4)  # above the cache's default
        for i in range(4):
            store(db.cache, "acme", i)
        refused(lambda: store(db.cache, "acme", 9), "cache_entries")
        assert db.cache.stats("acme")["limits"]["entries"] == 4
        assert db.cache.stats("other")["limits"]["entries"] == 2
        db.set_quota(None, cache_entries=1)  # the default quota covers every other tenant
        store(db.cache, "other", 0)
        refused(lambda: store(db.cache, "other", 1), "cache_entries")


def test_tenant_bytes_exactly_at_and_just_over():
    probe = cache_of()  # the size of one entry, as stored
    store(probe, "acme", 0)
    one = probe.stats("acme")["bytes"]
    assert one == len(encode_entry({"tenant": "acme", "category": "code", "model": "m", "settings": "",
                                    "created": T0, "prompt": "prompt 0000", "answer": "answer 0000"}, unit(0)))
    cache = cache_of(tenant_bytes=2 * one)
    store(cache, "acme", 0, "code")
    store(cache, "acme", 1, "chat")  # exactly at the budget
    error = refused(lambda: store(cache, "acme", 2, "code"), "cache_bytes")
    assert f"would hold {3 * one} bytes of cache entries ({2 * one} now)" in str(error)
    store(cache, "bob", 2, "code")
    cache.set_policy("code", max_entries=1)  # evicts one of the same size: grows no bytes
    store(cache, "acme", 3, "code")
    assert cache.stats("acme")["bytes"] == 2 * one


def test_categories_per_tenant_exactly_at_and_just_over(kind, tmp_path):
    with database(kind, tmp_path, cache={"limits": {"tenant_categories": 2}}) as db:
        cache = db.cache
        store(cache, "acme", 0, "code")
        store(cache, "acme", 1, "chat")  # exactly at the cap
        error = refused(lambda: store(cache, "acme", 2, "legal"), "cache_categories")
        assert "tenant 'acme' holds entries in 2 categories; its quota is 2" in str(error)
        store(cache, "acme", 3, "code")  # more in a category it holds
        store(cache, "bob", 4, "legal")  # another tenant's categories are its own
        assert cache.lookup("acme", embedding=unit(2), category="legal", embedding_model="m").reason == "empty"
        cache.invalidate("acme", "chat")
        store(cache, "acme", 2, "legal")
        assert sorted(cache.stats("acme")["categories"]) == ["chat", "code", "legal"]  # chat: its counts stay


# -- the answer size limit --------------------------------------------------------------------------

def test_answer_size_exactly_at_and_just_over(kind, tmp_path):
    with database(kind, tmp_path, cache={"limits": {"answer_bytes": 10}}) as db:
        assert store(db.cache, "acme", 0, answer="é" * 5) >= 0  # 10 bytes in UTF-8
        error = refused(lambda: store(db.cache, "acme", 1, answer="é" * 5 + "x"), "answer_bytes")
        assert "answer of 11 bytes (UTF-8); at most 10 are cached" in str(error)
        assert db.cache.stats("acme")["entries"] == 1


def test_complete_answers_an_oversized_answer_uncached():
    llm = StandInLLM()
    try:
        config = {"upstream": {"url": llm.url, "timeout": 5.0}, "limits": {"answer_bytes": 10}}
        with curator.open(":memory:", cache=config) as db:
            messages = [{"role": "user", "content": "a question with a long answer"}]
            first = db.cache.complete("acme", messages, category="code", embedding=unit(1), embedding_model="m")
            assert first.answer.startswith("answer 1 to:") and not first.cached and first.entry_id == -1
            again = db.cache.complete("acme", messages, category="code", embedding=unit(1), embedding_model="m")
            assert not again.cached and llm.calls == 2 and db.cache.stats("acme")["entries"] == 0
    finally:
        llm.close()


def test_limits_are_validated():
    with pytest.raises(InvalidArgumentError, match="unknown cache limit"):
        Limits.from_dict({"entries": 1})
    for bad in (0, -1, True, 1.5, "10"):
        with pytest.raises(InvalidArgumentError, match="tenant_entries"):
            Limits.from_dict({"tenant_entries": bad})
    with pytest.raises(InvalidArgumentError, match=r"\[cache.limits\]"):
        curator.open(":memory:", cache={"limits": 5}).cache  # noqa: B018


# -- one dimension per embedding model ---------------------------------------------------------------

def test_one_dimension_per_embedding_model(tmp_path):
    with curator.open(str(tmp_path / "d"), cache={}) as db:
        store(db.cache, "alice", 0, model="m", dim=8)
        for call in (lambda: store(db.cache, "bob", 1, model="m", dim=4),
                     lambda: db.cache.lookup("bob", embedding=unit(1, 4), category="code", embedding_model="m")):
            with pytest.raises(InvalidArgumentError, match=r"dimension 4 for model 'm'.*dimension 8"):
                call()
        store(db.cache, "bob", 1, model="other", dim=4)  # another model has its own
        assert db.cache.stats()["entries"] == 2
    with curator.open(str(tmp_path / "d"), cache={}) as db:  # the rule outlives a restart
        with pytest.raises(InvalidArgumentError, match="dimension 8"):
            store(db.cache, "carol", 2, model="m", dim=16)
        assert store(db.cache, "carol", 2, model="m", dim=8) >= 0


# -- entry ids ---------------------------------------------------------------------------------------

def test_entry_ids_are_random_63_bit_and_say_nothing_of_other_stores():
    cache = cache_of()
    ids = [store(cache, "bob" if i % 2 else "alice", i) for i in range(64)]
    bob = ids[1::2]
    assert len(set(ids)) == 64 and all(0 <= i < 1 << 63 for i in ids)
    # sequential ids would differ by 2 here (alice stored one in between): random ones are spread
    assert max(bob) - min(bob) > 1 << 50 and all(abs(a - b) > 1 << 20 for a, b in zip(bob, bob[1:]))


def test_a_draw_that_meets_a_stored_entry_is_drawn_again(monkeypatch):
    cache = cache_of()
    taken = store(cache, "acme", 0)
    draws = iter([taken, taken, 12345])
    monkeypatch.setattr("curator.cache.engine.secrets.randbits", lambda bits: next(draws))
    assert store(cache, "acme", 1) == 12345


def test_old_sequential_ids_stay_readable_and_order_by_creation_time():
    """A directory written with the old global sequence (ids 0, 1, 2) reopens as before; its
    entries order by creation time (not id) in archives and eviction."""
    records = MemoryRecords()
    for entry_id, created in ((0, T0 + 2), (1, T0 + 1), (2, T0 + 3)):
        meta = {"tenant": "acme", "category": "code", "model": "m", "settings": "", "created": created,
                "prompt": f"prompt {entry_id}", "answer": f"answer {entry_id}"}
        records.write_records([(entry_key(entry_id), encode_entry(meta, unit(entry_id)))])
    ticks = iter(range(10, 1000))
    cache = SemanticCache(records, embedder=Fixed(), clock=lambda: T0 + next(ticks))
    assert [meta["prompt"] for meta, _ in cache.tenant_entries("acme")] == ["prompt 1", "prompt 0", "prompt 2"]
    hit = cache.lookup("acme", embedding=unit(2), category="code", embedding_model="m")
    assert hit.hit and hit.entry_id == 2 and hit.answer == "answer 2"
    new = store(cache, "acme", 7)
    assert new not in (0, 1, 2) and cache.stats("acme")["entries"] == 4
    cache.set_policy("code", max_entries=4)
    store(cache, "acme", 8)  # evicts the least recently used: entry 1, the oldest (not entry 0)
    assert not cache.lookup("acme", embedding=unit(1), category="code", embedding_model="m").hit
    assert cache.lookup("acme", embedding=unit(0), category="code", embedding_model="m").entry_id == 0
    archived = cache.tenant_entries("acme")
    restored = cache_of()
    assert restored.restore_entries("acme", archived) == (4, 0)
    assert [m["prompt"] for m, _ in restored.tenant_entries("acme")] == [m["prompt"] for m, _ in archived]


# -- stats of a tenant's own activity ----------------------------------------------------------------

def test_a_tenants_stats_are_its_own_activity_only():
    quiet, busy = cache_of(), cache_of()
    for cache in (quiet, busy):
        cache.set_policy("code", min_similarity=0.9)
    for i in range(20):  # alice stores, hits and misses in bob's category, only in the busy world
        store(busy, "alice", i)
        busy.lookup("alice", embedding=unit(i), category="code", embedding_model="m")
        busy.lookup("alice", embedding=unit(100 + i), category="code", embedding_model="m")
    for cache in (quiet, busy):
        store(cache, "bob", 50)
        cache.lookup("bob", embedding=unit(50), category="code", embedding_model="m")
        cache.lookup("bob", embedding=unit(51), category="code", embedding_model="m")
    mine = quiet.stats("bob")
    assert busy.stats("bob") == mine
    assert "load" not in mine and set(mine) == {"categories", "entries", "bytes", "limits"}
    row = mine["categories"]["code"]
    assert row["lookups"] == 2 and row["hits"] == 1 and row["hit_rate"] == 0.5 and row["stores"] == 1
    assert not any(name.endswith("_s") or name.startswith("break_even") for name in row)
    everyone = busy.stats()  # an admin's view keeps the measured costs and the load
    assert "load" in everyone and everyone["categories"]["code"]["lookups"] == 42
    assert "break_even_hit_rate" in everyone["categories"]["code"]


# -- metric labels -----------------------------------------------------------------------------------

def test_metric_labels_are_the_categories_admins_named():
    from curator_server.metrics import CacheMetrics

    cache, registry = cache_of(), CollectorRegistry()
    metrics = cache.observer = CacheMetrics(registry, cache)
    cache.set_policy("finance", min_similarity=0.9)
    for i in range(100):  # a tenant trying to squat labels with categories of its own
        cache.lookup("mallory", embedding=unit(i), category=f"squat{i}", embedding_model="m")
    cache.lookup("acme", embedding=unit(1), category="finance", embedding_model="m")
    cache.lookup("acme", embedding=unit(1), embedding_model="m")  # the default category
    text = generate_latest(registry).decode()
    assert 'curator_cache_lookups_total{category="_other",outcome="miss"} 100.0' in text
    assert 'category="finance"' in text and 'category="default"' in text and "squat" not in text
    assert metrics.label("later") == "_other"
    cache.set_policy("later", tenant="acme", ttl=60)  # a tenant override is an admin's naming too
    assert metrics.label("later") == "later"
    cache._classifier = type("Trained", (), {"categories": ["travel"]})()  # as train_classifier leaves it
    assert metrics.label("travel") == "travel" and metrics.label("squat1") == "_other"


def test_a_tenants_counters_of_categories_are_bounded():
    """Lookups may name any category; past 4 x its category budget a tenant's further categories
    (none an admin named) count in one "_other" row, so lookups cannot grow its stats without end."""
    cache = cache_of(tenant_categories=2)
    cache.set_policy("finance", min_similarity=0.9)
    for i in range(20):
        cache.lookup("mallory", embedding=unit(i), category=f"c{i}", embedding_model="m")
    cache.lookup("mallory", embedding=unit(1), category="finance", embedding_model="m")
    rows = cache.stats("mallory")["categories"]
    assert sorted(rows) == sorted([f"c{i}" for i in range(8)] + ["_other", "finance"])
    assert rows["_other"]["lookups"] == 12 and rows["finance"]["lookups"] == 1
    assert sorted(cache.stats("acme")["categories"]) == []


def test_another_tenants_traffic_never_bypasses_a_tenants_lookups():
    """auto_bypass follows each tenant's own hit rate in the category (costs are pooled)."""
    from curator.cache.economics import Economics

    cache = cache_of()
    cache.economics = Economics(min_lookups=20, probe_every=5)
    cache.set_policy("chat", auto_bypass=True, min_similarity=0.99)
    cache.economics.upstream("chat", 1.0)  # the model's cost, shared by all

    def reasons(tenant, first, n):
        return [cache.lookup(tenant, embedding=unit(first + i), category="chat", embedding_model="m").reason
                for i in range(n)]

    assert "bypassed" not in reasons("alice", 200, 20)  # every prompt new: a 0% hit rate
    assert reasons("alice", 300, 10).count("bypassed") == 8  # one in 5 still probes
    assert "bypassed" not in reasons("bob", 400, 10)  # bob's lookups are his own
    assert cache.stats("bob")["categories"]["chat"]["bypassed"] == 0
    assert cache.stats()["categories"]["chat"]["bypassed_lookups"] == 8
