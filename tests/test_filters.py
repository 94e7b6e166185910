"""Payloads and filtered search: recall against brute force at every selectivity with and without a
tenant, each plan exercised, results always within the filter and the tenant's access and
min(k, matches) long (a hypothesis property against a reference evaluator), payloads durable and
updatable, the graph kept in step with writes, and every malformed filter or payload refused."""

import numpy as np
import pytest
from conftest import cosine_top
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import curator
from curator import filters
from curator_loadtest import data as D

LANGS = ["en", "de", "fr", "es"]


def payload(i: int) -> dict:
    p = {"u": i % 1000, "lang": LANGS[i % 4], "score": (i * 7919 % 1000) / 10.0, "draft": i % 3 == 0,
         "tags": [t for t, m in (("a", 2), ("b", 3), ("c", 5)) if i % m == 0]}
    if i % 7 == 0:
        del p["lang"]  # some vectors lack a field
    return p


@pytest.fixture(scope="module")
def glove():
    return D.glove(24_000)


@pytest.fixture(scope="module")
def loaded(glove):
    """24k GloVe vectors (cosine) with payloads; tenant "all" owns all, "some" sees a third.
    A small exact_limit, so that every plan gets its turn (`test_every_plan_runs`)."""
    db = curator.open(":memory:")
    col = db.create_collection("g", dim=50, metric="cosine", exact_limit=150, hnsw=True)
    n = 20_000
    col.insert(np.arange(n), glove[:n], tenant="all", payloads=[payload(i) for i in range(n)])
    col.grant(np.arange(0, n, 3), tenant="some")
    return col, glove[:n], glove[n:]




@pytest.mark.parametrize("selectivity", [0.001, 0.01, 0.1, 0.5])
@pytest.mark.parametrize("tenant", [None, "all", "some"])
def test_recall_at_every_selectivity(loaded, selectivity, tenant):
    col, vectors, queries = loaded
    n = vectors.shape[0]
    where = {"u": {"lt": int(selectivity * 1000)}}
    mask = np.arange(n) % 1000 < selectivity * 1000
    if tenant == "some":
        mask &= np.arange(n) % 3 == 0
    recalls, plans = [], set()
    for query in queries[:100]:
        result = col.search(query, k=10, tenant=tenant, filter=where)
        truth = cosine_top(vectors, query, mask, 10)
        assert result.ids.size == min(10, int(mask.sum()))
        assert mask[result.ids].all()
        assert np.all(np.diff(result.distances) >= -1e-6)
        recalls.append(len(set(result.ids.tolist()) & set(truth.tolist())) / max(1, min(10, truth.size)))
        plans.add(result.plan)
    assert np.mean(recalls) >= 0.95, (np.mean(recalls), plans)


def test_every_plan_runs(loaded):
    """Narrow filters scan exactly; broad ones take the graph, or a tenant's sub-tree at a low ef
    (its cost grows with ef, the graph's beam is at least k)."""
    col, _, queries = loaded
    plans = {col.search(queries[0], k=10, tenant=t, filter={"u": {"lt": s}}, ef=ef).plan
             for t in (None, "all", "some") for s in (1, 10, 100, 500) for ef in (32, None)}
    assert plans == {"exact", "tree", "graph"}


def test_batch_search_matches_single_searches(loaded):
    col, _, queries = loaded
    where = {"lang": {"in": ["en", "de"]}, "draft": True}
    batch = col.search_batch(queries[:20], k=5, tenants=["some"] * 10 + [None] * 10, filter=where)
    for i in range(20):
        single = col.search(queries[i], k=5, tenant="some" if i < 10 else None, filter=where)
        assert single.ids.size == 5
        np.testing.assert_array_equal(batch.ids[i], single.ids)
        assert batch.plan[i] == single.plan
    nothing = col.search_batch(queries[:2], k=5, tenants="some", filter={"draft": False})  # none match
    assert (nothing.ids == -1).all() and np.isinf(nothing.distances).all()


# -- the filter language, checked against a reference evaluator over the payload dicts ------------

def holds(p: dict, where: dict) -> bool:
    """What a filter means, written plainly over one payload dict."""
    for key, spec in where.items():
        if key == "and":
            ok = all(holds(p, w) for w in spec)
        elif key == "or":
            ok = any(holds(p, w) for w in spec)
        elif key == "not":
            ok = not holds(p, spec)
        else:
            ops = spec if isinstance(spec, dict) else {"eq": spec}
            value = p.get(key)
            items = value if isinstance(value, list) else [value] if value is not None else []
            ok = True
            for op, arg in ops.items():
                if op == "exists":
                    ok &= (value is not None and items != []) == arg
                elif op == "eq":
                    ok &= arg in items
                elif op == "ne":
                    ok &= arg not in items
                elif op == "in":
                    ok &= any(a in items for a in arg)
                elif op == "not_in":
                    ok &= not any(a in items for a in arg)
                else:
                    ok &= value is not None and {"gt": value > arg, "gte": value >= arg, "lt": value < arg,
                                                 "lte": value <= arg}[op]
        if not ok:
            return False
    return True


CONDITIONS = st.one_of(
    st.builds(lambda v: {"u": {"lt": v}}, st.integers(0, 1000)),
    st.builds(lambda a, b: {"u": {"gte": a, "lte": b}}, st.integers(0, 999), st.integers(0, 999)),
    st.builds(lambda v: {"u": {"in": v}}, st.lists(st.integers(0, 999), max_size=5)),
    st.builds(lambda v: {"lang": v}, st.sampled_from(LANGS + ["xx"])),
    st.builds(lambda v: {"lang": {"not_in": v}}, st.lists(st.sampled_from(LANGS), max_size=3)),
    st.builds(lambda v: {"lang": {"ne": v}}, st.sampled_from(LANGS)),
    st.builds(lambda v: {"lang": {"exists": v}}, st.booleans()),
    st.builds(lambda v: {"draft": v}, st.booleans()),
    st.builds(lambda v: {"tags": {"in": v}}, st.lists(st.sampled_from("abcd"), max_size=3)),
    st.builds(lambda v: {"tags": v}, st.sampled_from("abcd")),
    st.builds(lambda v: {"score": {"gt": v}}, st.floats(0, 100)),
)
FILTERS = st.recursive(CONDITIONS, lambda inner: st.one_of(
    st.builds(lambda fs: {"and": fs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda fs: {"or": fs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda f: {"not": f}, inner)), max_leaves=6)


@pytest.fixture(scope="module")
def small():
    """A collection small enough that hypothesis can search it hundreds of times."""
    db = curator.open(":memory:")
    rng = np.random.default_rng(3)
    n = 3000
    col = db.create_collection("s", dim=8, exact_limit=100, train_size=500, hnsw=True, hnsw_visit_cost=1,
                               branching=4, leaf_size=32)
    vectors = rng.standard_normal((n, 8)).astype(np.float32)
    payloads = [payload(i) for i in range(n)]
    col.insert(np.arange(n), vectors, tenant="a", payloads=payloads)
    col.grant(np.arange(0, n, 2), tenant="b")
    col.delete(np.arange(5, n, 50))  # some vectors gone: never returned
    live = np.ones(n, bool)
    live[5::50] = False
    return col, vectors, payloads, live


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=FILTERS, tenant=st.sampled_from([None, "a", "b"]), k=st.integers(1, 40), seed=st.integers(0, 2**31))
def test_results_satisfy_filter_and_access_and_count_min_k_matches(small, where, tenant, k, seed):
    col, vectors, payloads, live = small
    n = vectors.shape[0]
    mask = live & np.fromiter((holds(p, where) for p in payloads), bool, n)
    if tenant == "b":
        mask &= np.arange(n) % 2 == 0
    query = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
    result = col.search(query, k=k, tenant=tenant, filter=where)
    assert result.ids.size == min(k, int(mask.sum())), (where, result.plan)
    assert mask[result.ids].all(), (where, result.plan)
    assert len(set(result.ids.tolist())) == result.ids.size


# -- payloads: writes, updates, durability, and the graph in step ---------------------------------

def test_payloads_are_durable_and_updatable(tmp_path):
    path = str(tmp_path / "d")
    with curator.open(path) as db:
        col = db.create_collection("c", dim=3)
        col.insert([1, 2, 3], np.eye(3), tenant="t", payloads=[{"year": 2020, "lang": "en"}, None, {"tags": ["x"]}])
        col.set_payloads([2], [{"year": 2024}])
        col.upsert([3], np.ones((1, 3)), tenant="t")  # no payloads given: kept
        col.upsert([1], np.ones((1, 3)), tenant="t", payloads=[{"lang": "de"}])  # replaced
        col.insert([4], np.ones((1, 3)), tenant="t", payloads=[{"year": 1999}])
        col.delete([4])
    with curator.open(path) as db:
        col = db.collection("c")
        assert col.get_payloads([1, 2, 3]) == [{"lang": "de"}, {"year": 2024}, {"tags": ["x"]}]
        assert col.payload_schema() == {"lang": "keyword", "tags": "keywords", "year": "integer"}
        assert col.search(np.ones(3), k=5, filter={"year": {"gte": 2000}}).ids.tolist() == [2]
        col.insert([4], np.ones((1, 3)), tenant="t")  # the deleted id's payload did not come back
        assert col.get_payloads([4]) == [{}]


def test_the_graph_follows_inserts_deletes_upserts_and_retraining():
    db = curator.open(":memory:")
    # a small, cheap graph, so that the planner picks it for a few hundred vectors
    col = db.create_collection("c", dim=4, hnsw=True, hnsw_m=8, hnsw_ef=16, hnsw_visit_cost=1, exact_limit=10, train_size=200,
                               branching=4, leaf_size=16)
    rng = np.random.default_rng(0)
    col.insert(np.arange(600), rng.random((600, 4)), tenant="t", payloads=[{"v": 1}] * 600)
    target = np.array([9.0, 9.0, 9.0, 9.0], np.float32)
    col.insert([1000], target.reshape(1, 4), tenant="t", payloads=[{"v": 1}])
    assert col.search(target, k=1).ids.tolist() == [1000]
    assert col.search(target, k=1).plan == "graph"
    col.delete([1000])
    assert 1000 not in col.search(target, k=20).ids
    col.upsert([7], target.reshape(1, 4), tenant="t")  # vector 7 moves to the target
    assert col.search(target, k=1).ids.tolist() == [7]
    col.insert(np.arange(2000, 2700), rng.random((700, 4)), tenant="t")  # retrains: slots renumbered
    assert col.stats()["vectors"] == 1300
    for where in (None, {"v": 1}):
        result = col.search(target, k=1, filter=where)
        assert result.ids.tolist() == [7] and result.plan == "graph"
    found = col.search(rng.random(4), k=1300).ids
    assert set(found.tolist()) == set(range(600)) | set(range(2000, 2700))


# -- bad input: a clear error, nothing changed ------------------------------------------------------

@pytest.mark.parametrize("where, words", [
    ({"nope": 1}, "unknown field 'nope'"),
    ({"lang": {"gt": "en"}}, "operator 'gt' does not apply to keyword field 'lang'"),
    ({"u": {"lt": "ten"}}, "expected a number"),
    ({"u": {"in": 5}}, "a list"),
    ({"draft": {"eq": 1}}, "true or false"),
    ({"lang": {"exists": "yes"}}, "true or false"),
    ({"u": {"eq": 1.5}}, "an integer"),
    ({"score": {"lt": float("nan")}}, "finite"),
    ({}, "non-empty dict"),
    ({"and": []}, "non-empty list"),
    ({"or": {"u": 1}}, "non-empty list"),
    ({"not": "u"}, "non-empty dict"),
    ("u = 1", "non-empty dict"),
    ({"u": {}}, "no operator"),
    ({"u": {"near": 3}}, "operator 'near'"),
])
def test_malformed_filters_are_refused_with_what_was_wrong(small, where, words):
    col, *_ = small
    with pytest.raises(curator.InvalidArgumentError, match=words.replace("(", r"\(")):
        col.search(np.ones(8), k=3, filter=where)
    with pytest.raises(curator.InvalidArgumentError):
        col.search_batch(np.ones((2, 8)), k=3, filter=where)


@pytest.mark.parametrize("valid, wrong", [
    ({"draft": {"eq": True}}, {"draft": {"eq": 1}}),  # equal in Python (True == 1), not in type
    ({"u": {"in": [1, 2]}}, {"u": {"in": [True, 2]}}),
    ({"or": [{"draft": False}, {"u": 3}]}, {"or": [{"draft": 0}, {"u": 3}]}),
])
def test_a_wrongly_typed_filter_is_refused_after_its_valid_twin_ran(small, valid, wrong):
    """Matches are kept per filter; a filter equal to a kept one as Python values, but of a wrong
    type, must still be refused, not answered from the kept matches."""
    col, *_ = small
    col.search(np.ones(8), k=3, filter=valid)
    with pytest.raises(curator.InvalidArgumentError):
        col.search(np.ones(8), k=3, filter=wrong)


def test_filter_keys_tell_filters_apart_as_data():
    same = [{"u": {"in": ["a", "b"]}}, {"u": {"in": ("a", "b")}}]
    assert filters.key(same[0]) == filters.key(same[1])
    different = [{"u": 1}, {"u": 1.0}, {"u": True}, {"u": [1]}, {"u": {"in": [1, 2]}}, {"u": {"in": [1, 2.0]}},
                 {"or": [{"u": 1}]}, {"or": [{"u": True}]}, {"u": {1, 2}}, {"u": {"in": [{"a": 1}]}}]
    keys = [filters.key(w) for w in different]
    assert len(set(keys)) == len(different)  # hashable, and none equal to another


def test_a_filter_nested_too_deep_is_refused(small):
    col, *_ = small
    where = {"u": 1}
    for _ in range(40):
        where = {"not": where}
    with pytest.raises(curator.InvalidArgumentError, match="deeper"):
        col.search(np.ones(8), k=3, filter=where)


@pytest.mark.parametrize("payloads, words", [
    ([{"nested": {"a": 1}}], "not a payload value"),
    ([{"tags": ["a", 3]}], "not a payload value"),
    ([{"tags": ["a"] * 65}], "at most 64"),
    ([{f"f{i}": i for i in range(257)}], "at most 256"),
    ([{"u": 2**63}], "64 bits"),
    ([{"and": 1}], "field names"),
    ([7], "must be a dict"),
    ([{"score": float("inf")}], "not finite"),
    ([{}, {}], "give one per vector"),
])
def test_bad_payloads_are_refused_and_change_nothing(payloads, words):
    col = curator.open(":memory:").create_collection("c", dim=2)
    col.insert([1], np.ones((1, 2)), tenant="t", payloads=[{"u": 1, "tags": ["a"], "score": 0.5}])
    with pytest.raises(curator.InvalidArgumentError, match=words):
        col.insert([2], np.ones((1, 2)), tenant="t", payloads=payloads)
    with pytest.raises(curator.InvalidArgumentError, match=words):
        col.set_payloads([1], payloads)
    assert col.count() == 1 and col.get_payloads([1]) == [{"score": 0.5, "tags": ["a"], "u": 1}]


def test_one_batch_may_give_a_field_several_types():
    """Types are per vector, not fixed collection-wide (test_payloads.py has the tenants' side)."""
    col = curator.open(":memory:").create_collection("c", dim=2)
    col.insert([1, 2], np.ones((2, 2)), tenant="t", payloads=[{"f": "a"}, {"f": 1}])
    assert col.payload_schema() == {"f": "integer|keyword"}
    col.set_payloads([1, 2], [{"f": 1}, {"f": 2.5}])  # the keyword gone: its column too
    assert col.payload_schema() == {"f": "float|integer"}
    assert col.get_payloads([1, 2]) == [{"f": 1}, {"f": 2.5}]


def test_batched_exact_scans_match_single_searches(loaded):
    col, _, queries = loaded
    where = {"u": {"in": [3, 4]}}  # 40 vectors: an exact scan, all queries of a tenant at once
    batch = col.search_batch(queries[:30], k=10, tenants=[None, "all", "some"] * 10, filter=where)
    assert set(batch.plan) == {"exact"}
    for i in range(30):
        single = col.search(queries[i], k=10, tenant=[None, "all", "some"][i % 3], filter=where)
        np.testing.assert_array_equal(batch.ids[i, : single.ids.size], single.ids)
        np.testing.assert_allclose(batch.distances[i, : single.ids.size], single.distances, atol=1e-5)
        assert (batch.ids[i, single.ids.size :] == -1).all()


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_device_exact_topk_is_brute_force_on_the_cpu(metric):
    from curator import device
    from curator.metric import Metric

    assert device.array_module() is np  # no GPU here: the same array code runs on numpy
    rng = np.random.default_rng(1)
    rows, queries = rng.standard_normal((300, 6)).astype(np.float32), rng.standard_normal((7, 6)).astype(np.float32)
    m = Metric.parse(metric)
    if m is Metric.COSINE:
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    top, dists = device.exact_topk(queries, rows, 12, m, xp=np)
    for q, t, d in zip(queries, top, dists):
        expected = {"l2": ((rows - q) ** 2).sum(1), "cosine": 1 - rows @ q, "ip": -(rows @ q)}[metric]
        np.testing.assert_array_equal(t, np.argsort(expected, kind="stable")[:12])
        np.testing.assert_allclose(d, np.sort(expected)[:12], rtol=1e-4, atol=1e-4)
    assert device.exact_topk(queries, rows[:5], 12, m, xp=np)[0].shape == (7, 5)


@pytest.mark.parametrize("dim", [6, 50, 100])
@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_the_exact_plan_scans_its_flat_rows_as_brute_force(metric, dim):
    """The exact plan's compiled scan over an allowed set's rows kept flat (distance.flat_rows: for
    33-64 dimensions it reads 64 values from a row's start, the next row's weighed by zero):
    the ids and distances of numpy's brute force, at every metric."""
    from curator import search
    from curator.distance import flat_rows
    from curator.metric import Metric

    rng = np.random.default_rng(dim)
    m = Metric.parse(metric)
    x = rng.standard_normal((300, dim)).astype(np.float32) * 3
    rows = x / np.linalg.norm(x, axis=1, keepdims=True) if m is Metric.COSINE else x
    flat, view = flat_rows(300, dim, np.float32)
    view[:] = rows
    slots, slot_ids = np.arange(300) * 2, np.arange(600) + 1000
    for q in rng.standard_normal((5, dim)).astype(np.float32):
        ids, dists, usable = search.exact_one(q, 12, int(m), flat, slots, slot_ids)
        p = q / np.linalg.norm(q) if m is Metric.COSINE else q
        expected = {"l2": ((rows - p) ** 2).sum(1), "cosine": 1 - rows @ p, "ip": -(rows @ p)}[metric]
        assert usable
        np.testing.assert_array_equal(ids, slot_ids[slots[np.argsort(expected, kind="stable")[:12]]])
        np.testing.assert_allclose(dists, np.sort(expected)[:12], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("row_bytes, plan", [(4, "exact"), (200, "graph")])
def test_the_planner_counts_rows_gathered_anew_for_each_query(row_bytes, plan):
    """100k allowed of 400k (25%), a wide beam (384 at ef 8192): kept rows (400 KB) scan cheaper
    than the walk; rows too large to keep (20 MB, gathered from the store for every query) do not.
    The case sits well inside the band where only the gathering decides: with the default
    constants the walk costs ~291k reads against 100k for the kept rows and 1.6M gathered (~475k
    with the old walk's 22 / 0.32), so either half fails if the planner stops charging gathered
    rows (both exact) or charges every row as gathered (both graph)."""
    from curator import planner
    from curator.index import IndexConfig

    config = IndexConfig()
    allowed = planner.Allowed(np.ones(400_000, bool), 100_000, 400_000, row_bytes=row_bytes)
    assert planner.choose(allowed, None, 10, 8192, config, 400_000) == plan, \
        planner.costs(allowed, None, 10, 8192, config, 400_000)
