"""The semantic cache, embedded (in memory and on a data directory) and remote (a real server on
loopback), against a real OpenAI-compatible upstream on loopback (curator_loadtest/stand_in_llm.py).

Most tests bring their own embeddings (a 16-d test model) so that similarities are exact and the
tests fast; tests/test_cache_model.py runs the real MiniLM model."""

import dataclasses
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import curator
from curator_loadtest.stand_in_llm import StandInLLM
from curator import InvalidArgumentError, NotFoundError, UpstreamError, UpstreamTimeoutError
from tests.conftest import KINDS, concurrently, database, opened

pytestmark = pytest.mark.cluster

MODEL = "unit-test-16d"
DIM = 16


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def at_similarity(v: np.ndarray, similarity: float, seed: int = 99) -> np.ndarray:
    """A unit vector whose cosine similarity with unit vector v is exactly `similarity`."""
    w = np.random.default_rng(seed).standard_normal(DIM)
    w -= (w @ v) * v
    w /= np.linalg.norm(w)
    return (similarity * v + np.sqrt(max(0.0, 1 - similarity**2)) * w).astype(np.float32)


@pytest.fixture(scope="module")
def upstream():
    server = StandInLLM()
    yield server
    server.close()


@pytest.fixture
def llm(upstream):
    upstream.delay, upstream.status, upstream.break_stream, upstream.finish_reason = 0.0, 200, False, "stop"
    upstream.calls = 0
    return upstream


def cache_config(upstream, **upstream_options) -> dict:
    return {"upstream": {"url": upstream.url, "timeout": 2.0, **upstream_options},
            "load": {"latency_target": 0.1, "inflight_target": 64}}


@pytest.fixture(params=KINDS)
def db(request, tmp_path, upstream):
    """Each kind of conftest's `db`: the cluster's semantic cache is its front's own."""
    with opened(request, request.param, tmp_path, cache=cache_config(upstream), retries=0) as db:
        yield db


def store(cache, tenant, seed_or_vector, answer, category="code", prompt=None, **kw):
    vector = unit(seed_or_vector) if isinstance(seed_or_vector, int) else seed_or_vector
    return cache.store(tenant, prompt or f"prompt for {answer}", answer, embedding=vector, category=category,
                       embedding_model=MODEL, **kw)


def lookup(cache, tenant, vector, category="code", prompt=None, **kw):
    return cache.lookup(tenant, prompt, embedding=vector, category=category, embedding_model=MODEL, **kw)


# -- lookups ------------------------------------------------------------------------------------


def test_hit_reports_similarity_threshold_category_and_age(db):
    cache = db.cache
    cache.set_policy("code", min_similarity=0.8)
    entry = store(cache, "acme", 1, "use a list comprehension")
    hit = lookup(cache, "acme", at_similarity(unit(1), 0.85))
    assert hit.hit and hit.reason == "hit" and hit.answer == "use a list comprehension"
    assert hit.similarity == pytest.approx(0.85, abs=1e-4) and hit.threshold == pytest.approx(0.8)
    assert hit.category == "code" and hit.category_source == "caller"
    assert hit.entry_id == entry and hit.cached_prompt == "prompt for use a list comprehension"
    assert 0 <= hit.age < 60
    miss = lookup(cache, "acme", at_similarity(unit(1), 0.75))
    assert not miss.hit and miss.reason == "below_threshold" and miss.similarity == pytest.approx(0.75, abs=1e-4)
    assert miss.answer is None and miss.entry_id == -1
    assert lookup(cache, "acme", unit(1), category="travel").reason == "empty"


def test_thresholds_zero_and_one_are_real_values(db):
    cache = db.cache
    store(cache, "acme", 2, "exact")
    cache.set_policy("code", min_similarity=1.0)
    assert lookup(cache, "acme", unit(2)).hit
    assert not lookup(cache, "acme", at_similarity(unit(2), 0.999)).hit
    cache.set_policy("code", min_similarity=0.0)
    assert lookup(cache, "acme", at_similarity(unit(2), 0.01)).hit
    assert not lookup(cache, "acme", at_similarity(unit(2), -0.2)).hit


def test_entries_are_keyed_by_model_settings_and_embedding_model(db):
    cache = db.cache
    cache.set_policy("code", min_similarity=0.9)
    store(cache, "acme", 3, "gpt answer", model_settings={"model": "gpt", "temperature": 0})
    assert lookup(cache, "acme", unit(3), model_settings={"model": "gpt", "temperature": 0}).hit
    assert lookup(cache, "acme", unit(3), model_settings={"model": "other", "temperature": 0}).reason == "empty"
    assert lookup(cache, "acme", unit(3)).reason == "empty"
    other_model = cache.lookup("acme", embedding=unit(3), category="code", embedding_model="another-model",
                               model_settings={"model": "gpt", "temperature": 0})
    assert other_model.reason == "empty"


def test_ambiguity_margin_refuses_a_best_entry_with_a_close_rival(db):
    cache = db.cache
    cache.set_policy("code", min_similarity=0.5, ambiguity_margin=0.05, guard=False)
    v = unit(4)
    store(cache, "acme", at_similarity(v, 0.95, seed=1), "answer A")
    store(cache, "acme", at_similarity(v, 0.93, seed=2), "answer B")
    result = lookup(cache, "acme", v)
    assert not result.hit and result.reason == "ambiguous"
    assert cache.stats("acme")["categories"]["code"]["ambiguous"] == 1
    cache.set_policy("code", ambiguity_margin=0.0)
    assert lookup(cache, "acme", v).answer == "answer A"


def test_near_miss_guard_refuses_a_different_number(db):
    cache = db.cache
    cache.set_policy("banking", min_similarity=0.5)
    v = unit(5)
    store(cache, "acme", v, "done", category="banking", prompt="transfer 50 dollars to my savings account")
    result = lookup(cache, "acme", v, category="banking", prompt="transfer 500 dollars to my savings account")
    assert not result.hit and result.reason == "near_miss:number"
    assert cache.stats("acme")["categories"]["banking"]["near_misses"] == 1
    assert lookup(cache, "acme", v, category="banking", prompt="move 50 dollars into my savings account").hit
    cache.set_policy("banking", guard=False)
    assert lookup(cache, "acme", v, category="banking", prompt="transfer 500 dollars to my savings account").hit


# -- isolation ----------------------------------------------------------------------------------


def test_a_tenant_never_gets_another_tenants_entry(db):
    cache = db.cache
    cache.set_policy(None, min_similarity=0.0)
    store(cache, "alice", 6, "alice's secret")
    assert lookup(cache, "bob", unit(6)).reason == "empty"
    store(cache, "bob", 7, "bob's answer")
    assert lookup(cache, "bob", unit(6)).answer == "bob's answer"
    assert lookup(cache, "alice", unit(7)).answer == "alice's secret"
    with pytest.raises(NotFoundError):
        cache.feedback("bob", lookup(cache, "alice", unit(6)).entry_id, correct=False)
    assert cache.invalidate("bob") == 1
    assert lookup(cache, "alice", unit(6)).hit


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["t0", "t1", "t2"]), st.sampled_from(["c0", "c1"]),
                          st.integers(0, 30)), min_size=1, max_size=25),
       st.lists(st.tuples(st.sampled_from(["t0", "t1", "t2", "t3"]), st.sampled_from(["c0", "c1"]),
                          st.integers(0, 30)), min_size=1, max_size=15))
def test_isolation_property(stores, lookups):
    """Whatever is stored, a lookup answers only with an entry of its own tenant and category (and
    the nearest of them, with the threshold at 0: every lookup of a non-empty partition hits)."""
    cache = curator.open(":memory:").cache
    cache.set_policy(None, min_similarity=-1.0, guard=False)
    stored: dict[tuple[str, str], list[int]] = {}
    for tenant, category, seed in stores:
        store(cache, tenant, seed, f"{tenant}/{category}/{seed}", category=category)
        stored.setdefault((tenant, category), []).append(seed)
    for tenant, category, seed in lookups:
        result = lookup(cache, tenant, unit(seed), category=category)
        mine = stored.get((tenant, category), [])
        if not mine:
            assert not result.hit and result.reason == "empty"
            continue
        assert result.hit and result.answer.startswith(f"{tenant}/{category}/")
        best = max(float(unit(s) @ unit(seed)) for s in mine)
        assert result.similarity == pytest.approx(best, abs=1e-4)


# -- TTL, quotas, eviction ----------------------------------------------------------------------


def test_ttl_expiry_frees_the_entry(db):
    cache = db.cache
    cache.set_policy("news", ttl=0.3, min_similarity=0.9)
    store(cache, "acme", 8, "yesterday's headline", category="news")
    assert lookup(cache, "acme", unit(8), category="news").hit
    time.sleep(0.45)
    assert lookup(cache, "acme", unit(8), category="news").reason == "empty"
    stats = cache.stats("acme")["categories"]["news"]
    assert stats["expirations"] == 1 and stats["entries"] == 0 and stats["bytes"] == 0


def test_expiry_sweep(db):
    cache = db.engine.cache
    cache.set_policy("news", ttl=0.2)
    for seed in range(5):
        store(cache, "acme", seed, f"n{seed}", category="news")
    time.sleep(0.3)
    assert cache.expire() == 5 and cache.stats()["entries"] == 0


def test_entry_quota_evicts_least_recently_used(db):
    cache = db.cache
    cache.set_policy("code", max_entries=3, eviction="lru", min_similarity=0.99)
    for seed in (10, 11, 12):
        store(cache, "acme", seed, f"a{seed}")
    assert lookup(cache, "acme", unit(10)).hit  # 10 is now the most recently used
    store(cache, "acme", 13, "a13")
    assert not lookup(cache, "acme", unit(11)).hit  # 11 was the least recently used
    assert all(lookup(cache, "acme", unit(s)).hit for s in (10, 12, 13))
    stats = cache.stats("acme")["categories"]["code"]
    assert stats["entries"] == 3 and stats["evictions"] == 1
    store(cache, "other", 11, "others have their own quota")
    assert cache.stats("acme")["categories"]["code"]["entries"] == 3


def test_entry_quota_evicts_least_frequently_used(db):
    cache = db.cache
    cache.set_policy("code", max_entries=2, eviction="lfu", min_similarity=0.99)
    store(cache, "acme", 20, "a20")
    store(cache, "acme", 21, "a21")
    for _ in range(3):
        assert lookup(cache, "acme", unit(20)).hit
    assert lookup(cache, "acme", unit(21)).hit
    store(cache, "acme", 22, "a22")
    assert lookup(cache, "acme", unit(20)).hit and not lookup(cache, "acme", unit(21)).hit


def test_byte_quota(db):
    cache = db.cache
    big = "x" * 2000
    cache.set_policy("code", max_bytes=5000, min_similarity=0.99)
    for seed in range(4):
        store(cache, "acme", 30 + seed, big + str(seed), prompt=f"p{seed}")
    stats = cache.stats("acme")["categories"]["code"]
    assert stats["bytes"] <= 5000 and stats["entries"] == 2 and stats["evictions"] == 2
    with pytest.raises(curator.ResourceExhaustedError, match="quota of 5000 bytes"):
        store(cache, "acme", 40, "y" * 6000)


def test_not_cacheable_category(db):
    cache = db.cache
    cache.set_policy("chat", cacheable=False)
    assert store(cache, "acme", 9, "hello", category="chat") == -1
    assert lookup(cache, "acme", unit(9), category="chat").reason == "not_cacheable"


# -- policies -----------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"min_similarity": 1.5}, "min_similarity"),
    ({"min_similarity": float("nan")}, "min_similarity"),
    ({"ttl": -1.0}, "ttl"),
    ({"max_entries": -5}, "max_entries"),
    ({"eviction": "random"}, "eviction"),
    ({"relaxable": True}, "relaxable"),
    ({"relaxable": True, "min_similarity": 0.8, "min_similarity_floor": 0.9}, "min_similarity_floor"),
    ({"ttl": 100.0, "ttl_ceiling": 50.0}, "ttl_ceiling"),
    ({"ambiguity_margin": -0.1}, "ambiguity_margin"),
])
def test_invalid_policies_are_refused_and_change_nothing(db, changes, message):
    cache = db.cache
    before = cache.policy("code")["configured"]
    with pytest.raises(InvalidArgumentError, match=message):
        cache.set_policy("code", **changes)
    assert cache.policy("code")["configured"] == before


def test_unknown_policy_field(db):
    with pytest.raises(InvalidArgumentError, match="unknown policy field"):
        db.engine.cache.set_policy("code", min_simlarity=0.5)


def test_tenant_override_and_runtime_change(db):
    cache = db.cache
    cache.set_policy("code", min_similarity=0.95, ttl=None)
    cache.set_policy("code", tenant="strict", min_similarity=0.99)
    assert cache.policy("code")["configured"]["min_similarity"] == pytest.approx(0.95)
    assert cache.policy("code")["configured"]["ttl"] is None
    assert cache.policy("code", tenant="strict")["configured"]["min_similarity"] == pytest.approx(0.99)
    for tenant in ("strict", "relaxed"):
        store(cache, tenant, 50, "a")
    query = at_similarity(unit(50), 0.97)
    assert lookup(cache, "relaxed", query).hit and not lookup(cache, "strict", query).hit


def test_policies_load_from_a_toml_file(tmp_path):
    from curator.cache.policy import Policies

    path = tmp_path / "cache.toml"
    path.write_text("""
[cache.default]
min_similarity = 0.88
ttl = 3600
[cache.categories.finance]
ttl = 60
relaxable = true
min_similarity_floor = 0.8
ttl_ceiling = 300
[cache.tenants.acme.finance]
max_entries = 10
""")
    policies = Policies.load(path)
    assert policies.resolve("acme", "finance").max_entries == 10
    assert policies.resolve("other", "finance").ttl == 60 and policies.resolve("other", "code").min_similarity == 0.88
    path.write_text("[cache.categories.finance]\nmin_similarity = 2\n")
    with pytest.raises(InvalidArgumentError, match="min_similarity"):
        Policies.load(path)


def test_durable_cache_reopens_with_its_entries_and_policies(tmp_path, upstream):
    config = cache_config(upstream)
    with curator.open(str(tmp_path / "d"), cache=config) as database:
        database.cache.set_policy("code", min_similarity=0.7, max_entries=100)
        entry = store(database.cache, "acme", 60, "kept")
        store(database.cache, "acme", 61, "dropped")
        database.cache.invalidate("acme", "travel")
        database.cache.feedback("acme", lookup(database.cache, "acme", unit(61)).entry_id, correct=False)
    with curator.open(str(tmp_path / "d"), cache=config) as database:
        result = lookup(database.cache, "acme", unit(60))
        assert result.hit and result.entry_id == entry and result.answer == "kept"
        assert database.cache.policy("code")["configured"]["max_entries"] == 100
        assert lookup(database.cache, "acme", unit(61)).answer != "dropped"  # the wrong one is gone
        assert database.cache.stats()["entries"] == 1
        assert store(database.cache, "acme", 62, "new") != entry  # entry ids are never reused


def test_feedback_counts_false_hits_and_drops_the_entry(db):
    cache = db.cache
    cache.set_policy("code", min_similarity=0.5)
    entry = store(cache, "acme", 70, "wrong")
    cache.feedback("acme", entry, correct=True)
    assert lookup(cache, "acme", unit(70)).hit
    cache.feedback("acme", entry, correct=False)
    assert lookup(cache, "acme", unit(70)).reason == "empty"
    assert cache.stats("acme")["categories"]["code"]["false_hits"] == 1


@pytest.mark.parametrize("call, message", [
    (lambda c: c.lookup("acme", embedding=np.full(DIM, np.nan, np.float32), embedding_model=MODEL), "NaN"),
    (lambda c: c.lookup("acme", embedding=np.zeros(DIM, np.float32), embedding_model=MODEL), "zeros"),
    (lambda c: c.lookup("acme", embedding=np.ones(5, np.float32)), "dimension"),
    (lambda c: c.lookup("acme"), "prompt text, its embedding"),
    (lambda c: c.lookup("", "hello"), "tenant"),
    (lambda c: c.lookup("acme", "hi", embedding=unit(1), embedding_model=MODEL, category="c" * 200), "category"),
    (lambda c: c.store("acme", None, "a", embedding=unit(1), embedding_model=MODEL), "prompt"),
    (lambda c: c.complete("acme", []), "messages"),
    (lambda c: c.complete("acme", [{"role": "robot", "content": "x"}]), "role"),
    (lambda c: c.complete("acme", [{"role": "system", "content": "x"}], embedding=unit(1), embedding_model=MODEL),
     "no user message"),
])
def test_bad_input_is_a_clear_error(db, call, message):
    with pytest.raises(InvalidArgumentError, match=message):
        call(db.cache)
    store(db.cache, "acme", 1, "still serving")
    assert lookup(db.cache, "acme", unit(1)).hit


def test_store_with_a_different_dimension_for_the_same_model(db):
    store(db.cache, "acme", 1, "16-d")
    with pytest.raises(InvalidArgumentError, match="dimension 8"):
        db.cache.store("acme", "p", "a", embedding=np.ones(8, np.float32), category="code", embedding_model=MODEL)


# -- complete(): fronting the model -------------------------------------------------------------

def chat(text: str) -> list[dict]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def complete(cache, text, vector, **kw):
    return cache.complete("acme", chat(text), category="code", embedding=vector, embedding_model=MODEL,
                          params={"model": "m"}, **kw)


def test_complete_calls_upstream_on_a_miss_then_serves_from_the_cache(db, llm):
    cache = db.cache
    cache.set_policy("code", min_similarity=0.9)
    first = complete(cache, "how to sort a list", unit(80))
    assert not first.cached and first.answer == "answer 1 to: how to sort a list" and first.entry_id >= 0
    assert first.upstream_seconds > 0 and llm.calls == 1
    second = complete(cache, "how do i sort a list", at_similarity(unit(80), 0.95))
    assert second.cached and second.answer == first.answer and second.entry_id == first.entry_id
    assert llm.calls == 1
    other_system = cache.complete("acme", [{"role": "system", "content": "be verbose"},
                                           {"role": "user", "content": "how to sort a list"}],
                                  category="code", embedding=unit(80), embedding_model=MODEL, params={"model": "m"})
    assert not other_system.cached and llm.calls == 2  # the system prompt keys the entry


def test_concurrent_identical_misses_make_one_upstream_call(db, llm):
    llm.delay = 0.5
    results, errors = concurrently(lambda: complete(db.cache, "what is a monad", unit(81)), [()] * 6)
    assert not errors and llm.calls == 1
    assert {r.answer for r in results} == {"answer 1 to: what is a monad"}
    assert sum(not r.shared for r in results) == 1


def test_upstream_error_is_not_cached(db, llm):
    llm.status = 503
    with pytest.raises(UpstreamError, match="HTTP 503"):
        complete(db.cache, "q", unit(82))
    llm.status = 200
    assert not complete(db.cache, "q", unit(82)).cached and llm.calls == 2


def test_upstream_timeout_is_a_clear_error_and_not_cached(db, llm):
    llm.delay = 3.0
    with pytest.raises(UpstreamTimeoutError, match="within 2 s"):
        complete(db.cache, "slow", unit(83))
    llm.delay = 0.0
    assert lookup(db.cache, "acme", unit(83), model_settings={"model": "m", "system": "be brief"}).reason == "empty"


def test_streamed_answers_are_cached_only_when_complete(tmp_path, llm):
    with curator.open(":memory:", cache=cache_config(llm, stream=True)) as database:
        cache = database.cache
        llm.break_stream = True
        with pytest.raises(UpstreamError, match="broke off|broken"):
            complete(cache, "tell me a story", unit(84))
        assert cache.stats()["entries"] == 0
        llm.break_stream = False
        whole = complete(cache, "tell me a story", unit(84))
        assert whole.answer == "answer 2 to: tell me a story" and whole.entry_id >= 0
        assert complete(cache, "tell me a story", unit(84)).cached


def test_complete_without_an_upstream(tmp_path):
    with curator.open(":memory:", cache={}) as database:
        with pytest.raises(InvalidArgumentError, match="upstream"):
            complete(database.cache, "q", unit(1))


# -- load-adaptive policy and break-even --------------------------------------------------------


def test_relaxable_policy_follows_upstream_load(db, llm):
    cache = db.cache
    cache.set_policy("code", min_similarity=0.95, ttl=10.0, relaxable=True, min_similarity_floor=0.8, ttl_ceiling=100.0)
    cache.set_policy("legal", min_similarity=0.95)
    assert cache.policy("code")["effective"]["min_similarity"] == pytest.approx(0.95)
    store(cache, "acme", 90, "relaxed answer")
    store(cache, "acme", 90, "strict answer", category="legal")
    query = at_similarity(unit(90), 0.85)
    assert not lookup(cache, "acme", query).hit
    llm.delay = 0.25  # 2.5x the 0.1 s latency target: full pressure
    for i in range(3):
        complete(cache, f"slow question {i}", unit(100 + i))
    policy = cache.policy("code")
    assert policy["pressure"] == pytest.approx(1.0)
    assert policy["effective"]["min_similarity"] == pytest.approx(0.8)
    assert policy["effective"]["ttl"] == pytest.approx(100.0)
    assert policy["configured"]["min_similarity"] == pytest.approx(0.95)
    result = lookup(cache, "acme", query)
    assert result.hit and result.relaxed and result.threshold == pytest.approx(0.8)
    assert not lookup(cache, "acme", query, category="legal").hit  # not relaxable
    assert cache.stats("acme")["categories"]["code"]["relaxed_hits"] == 1


def test_break_even_is_reported_and_a_category_that_does_not_pay_is_bypassed(tmp_path, llm):
    from curator.cache.economics import Economics

    database = curator.open(":memory:", cache=cache_config(llm))
    cache = database.cache
    cache.economics = Economics(min_lookups=20, probe_every=5)
    cache.set_policy("chat", auto_bypass=True, min_similarity=0.99)
    for i in range(25):  # every prompt is new: a 0% hit rate
        cache.complete("acme", chat(f"unique {i}"), category="chat", embedding=unit(200 + i), embedding_model=MODEL)
    row = cache.stats()["categories"]["chat"]
    assert row["hit_rate"] == 0.0 and 0 < row["break_even_hit_rate"] < 1
    assert row["lookup_cost_s"] > 0 and row["upstream_cost_s"] > row["lookup_cost_s"]
    reasons = [lookup(cache, "acme", unit(300 + i), category="chat").reason for i in range(10)]
    assert reasons.count("bypassed") == 8 and reasons.count("bypassed") < len(reasons)  # probes still look


def test_a_default_change_that_breaks_an_override_is_refused_whole(db):
    cache = db.cache
    cache.set_policy(None, ttl=100.0)
    cache.set_policy("code", ttl_ceiling=200.0, relaxable=True)  # inherits ttl 100 from the default
    with pytest.raises(InvalidArgumentError, match="ttl_ceiling"):
        cache.set_policy(None, ttl=500.0)  # would put code's ceiling below its ttl
    assert cache.policy("other")["configured"]["ttl"] == 100.0


def test_a_partition_scans_exactly_while_small_and_becomes_a_graph_past_graph_from():
    """Small partitions cost a matrix, not a 2.5 MB hnswlib index; past GRAPH_FROM slots the same
    entries move into a graph. Either way removed entries are never returned and their slots are
    reused."""
    from curator.cache.partition import GRAPH_FROM, Partition

    rng = np.random.default_rng(3)
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    vectors = unit(rng.normal(size=(GRAPH_FROM + 500, 16)))
    part = Partition(16)

    def add(rows):
        return part.add(rows.astype(np.int64), vectors[rows], np.zeros(rows.size), np.ones(rows.size, np.int64),
                        np.zeros(rows.size, np.uint64))

    slots = add(np.arange(600))
    removed = part.remove(slots[::3])  # entry ids 0, 3, 6, ...
    live = np.setdiff1d(np.arange(600), removed)
    queries = unit(rng.normal(size=(50, 16)))
    for q in queries:  # a matrix: exact
        found, sims = part.nearest(q, 10)
        expected = live[np.argsort(-(vectors[live] @ q))[:10]]
        assert part.entry_ids[found].tolist() == expected.tolist()
        np.testing.assert_allclose(sims, np.sort(vectors[expected] @ q)[::-1], rtol=1e-5)
    assert part._graph is None
    reused = add(np.arange(600, 600 + removed.size))
    assert set(reused.tolist()) == set(slots[::3].tolist())  # freed slots first
    add(np.arange(600 + removed.size, GRAPH_FROM + 500))
    assert part._graph is not None and part._vectors is None
    part.remove(part.live_slots()[:100])
    live_ids = set(part.entry_ids[part.live_slots()].tolist())
    hits = 0
    for q in queries:  # a graph: approximate, but never a removed entry
        found, _ = part.nearest(q, 10)
        assert set(part.entry_ids[found].tolist()) <= live_ids
        ids = np.array(sorted(live_ids))
        hits += len(set(part.entry_ids[found].tolist()) & set(ids[np.argsort(-(vectors[ids] @ q))[:10]].tolist()))
    assert hits / (10 * len(queries)) >= 0.9


def test_remote_lookups_carry_the_guards_reasons_margins_and_stored_extra(tmp_path, upstream):
    """A near miss's `why`, `cached_prompt` and `other_similarity`, and a hit's `extra` (stored by
    the gateway's `store_chat`), reach the remote SDK as the embedded cache gives them."""

    def lookups(db) -> list[dict]:
        cache = db.cache
        cache.set_policy("banking", min_similarity=0.5, ambiguity_margin=0.0)
        v = unit(31)
        store(cache, "acme", v, "done", category="banking", prompt="transfer 50 dollars to my savings account")
        store(cache, "acme", at_similarity(v, 0.8, seed=3), "other", category="banking", prompt="close my account")
        engine = db.engine.cache  # the gateway's path: keyed as complete() keys it, with extra and a ttl
        chat = engine.chat_prompt("acme", [{"role": "user", "content": "how do I open an account"}],
                                  params={"model": "m"}, category="banking", embedding=unit(32), embedding_model=MODEL)
        engine.store_chat(chat, "like this", ttl=3600, extra={"model": "m", "finish_reason": "stop",
                                                              "usage": {"prompt_tokens": 6, "completion_tokens": 2}})
        found = [lookup(cache, "acme", v, category="banking", prompt="transfer 500 dollars to my savings account"),
                 lookup(cache, "acme", v, category="banking", prompt="move 50 dollars into my savings account"),
                 lookup(cache, "acme", at_similarity(v, 0.3, seed=5), category="banking"),
                 cache.lookup("acme", "how do I open an account", embedding=unit(32), category="banking",
                              embedding_model=MODEL, model_settings={"model": "m"})]
        return [{k: v for k, v in dataclasses.asdict(f).items() if k not in ("age", "entry_id")} for f in found]

    results = {}
    for kind in ("memory", "remote"):
        with database(kind, tmp_path / kind, cache=cache_config(upstream), retries=0) as db:
            results[kind] = lookups(db)
    near, hit, below, chat = results["memory"]
    assert near["reason"] == "near_miss:number" and near["why"] and near["cached_prompt"].startswith("transfer 50 ")
    assert near["other_similarity"] == pytest.approx(0.8, abs=1e-4)
    assert hit["hit"] and hit["why"] is None and hit["other_similarity"] == pytest.approx(0.8, abs=1e-4)
    assert below["reason"] == "below_threshold" and below["cached_prompt"] is None and below["why"] is None
    assert chat["hit"] and chat["extra"]["usage"] == {"prompt_tokens": 6, "completion_tokens": 2}
    for embedded, remote in zip(results["memory"], results["remote"]):
        assert remote.keys() == embedded.keys()
        for key, value in embedded.items():
            assert remote[key] == (pytest.approx(value, abs=1e-5) if isinstance(value, float) else value), key
