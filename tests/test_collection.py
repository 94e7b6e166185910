"""The embedded API does what api.py promises, checked against brute force."""

import numpy as np
import pytest

import curator
from tests.conftest import SMALL_TREE, brute_force, clustered, engine

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
@pytest.mark.parametrize("trained", [False, True])
def test_exhaustive_budget_equals_brute_force(db, metric, trained):
    x = clustered(600, 12, seed=1)
    options = SMALL_TREE | ({} if trained else {"train_size": 10_000})
    col = db.create_collection("c", dim=12, metric=metric, **options)
    col.insert(np.arange(600), x, tenant="a")
    mine = np.arange(0, 600, 3)
    col.grant(mine, tenant="b")
    assert engine(db, col).index.tree.trained == trained
    for q in clustered(5, 12, seed=2):
        ids, dists = col.search(q, k=7, tenant="b", ef=10_000)
        rows, truth = brute_force(x[mine], q, metric, 7)
        np.testing.assert_array_equal(ids, mine[rows])
        np.testing.assert_allclose(dists, truth, rtol=1e-4, atol=1e-4)


def test_returns_min_k_and_count(db):
    col = db.create_collection("c", dim=4, **SMALL_TREE)
    x = clustered(200, 4)
    col.insert(np.arange(200), x, tenant="big")
    col.grant([5, 6, 7], tenant="small")
    ids, dists = col.search(x[0], k=10, tenant="small", ef=1)
    assert sorted(ids.tolist()) == [5, 6, 7] and dists.shape == (3,)
    ids, _ = col.search(x[0], k=50, tenant="big", ef=1)  # budget below k still returns k
    assert ids.size == 50 and np.unique(ids).size == 50
    batch_ids, batch_d = col.search_batch(x[:2], k=5, tenants=["small", "big"])
    assert batch_ids.shape == (2, 5)
    assert batch_ids[0, 3:].tolist() == [-1, -1] and np.isinf(batch_d[0, 3:]).all()
    assert (batch_ids[1] >= 0).all()
    assert col.count(tenant="small") == 3 and col.count(tenant="big") == 200 and col.count() == 200


def test_get_is_bit_exact_and_batch_matches_single(db):
    col = db.create_collection("c", dim=8, metric="cosine", **SMALL_TREE)
    x = clustered(300, 8, seed=3) * 7.3
    ids = np.arange(1000, 1300, dtype=np.int64) * 1_000_003  # large, sparse user ids
    col.insert(ids, x, tenant="t")
    np.testing.assert_array_equal(col.get(ids[::7]), x[::7])
    queries = clustered(6, 8, seed=4)
    batch_ids, batch_d = col.search_batch(queries, k=5, tenants="t")
    for i, q in enumerate(queries):
        one_ids, one_d = col.search(q, k=5, tenant="t")
        np.testing.assert_array_equal(one_ids, batch_ids[i])
        np.testing.assert_allclose(one_d, batch_d[i], rtol=1e-6)


def test_grant_revoke_delete_and_vector_lifetime(db):
    col = db.create_collection("c", dim=4, **SMALL_TREE)
    x = clustered(100, 4)
    col.insert(np.arange(100), x, tenant="alice")
    assert col.grant(np.arange(10), tenant="bob") == 10
    assert col.grant(np.arange(5, 15), tenant="bob") == 5  # already-granted ids are not counted twice
    assert col.tenants_of(3) == ["alice", "bob"]
    col.revoke(np.arange(12), tenant="bob")
    assert col.count(tenant="bob") == 3
    ids, _ = col.search(x[0], k=10, tenant="bob")
    assert sorted(ids.tolist()) == [12, 13, 14]
    col.delete([12])
    assert col.count(tenant="bob") == 2 and col.count() == 99
    with pytest.raises(curator.NotFoundError):
        col.get([12])
    col.revoke([13], tenant="alice")  # bob still sees 13: it lives on
    assert col.tenants_of(13) == ["bob"]
    col.revoke([13], tenant="bob")  # nobody sees 13 now: it is gone
    with pytest.raises(curator.NotFoundError):
        col.get([13])
    col.insert([13], x[13:14], tenant="carol")  # and its id is free again
    col.drop_tenant("alice")  # vectors only alice could see go with her; bob's 14 stays
    assert col.count() == 2 and sorted(col.tenants()) == ["bob", "carol"]
    with pytest.raises(curator.NotFoundError):
        col.search(x[0], k=1, tenant="alice")


def test_growth_retrains_and_keeps_results_exact(db):
    col = db.create_collection("c", dim=6, **SMALL_TREE)
    x = clustered(2000, 6, seed=5)
    for start in range(0, 2000, 250):  # training at 64, then retraining as the collection doubles
        col.insert(np.arange(start, start + 250), x[start : start + 250], tenant=f"t{start % 500}")
        col.grant(np.arange(start, start + 250, 2), tenant="shared")
    tenancy = engine(db, col).index.tenancy
    assert engine(db, col).index.tree.trained and engine(db, col).index._trained_count >= 1024
    for t in range(tenancy.n_tenants):
        tenancy.check(t)
    shared = np.arange(0, 2000, 2)
    for q in clustered(5, 6, seed=6):
        ids, _ = col.search(q, k=10, tenant="shared", ef=100_000)
        np.testing.assert_array_equal(ids, shared[brute_force(x[shared], q, "l2", 10)[0]])


def test_explicit_training_sample(db):
    col = db.create_collection("c", dim=6, **SMALL_TREE)
    col.train(clustered(500, 6, seed=7))
    assert engine(db, col).index.tree.trained
    x = clustered(100, 6, seed=8)
    col.insert(np.arange(100), x, tenant="a")
    assert engine(db, col).index.tree.n_nodes > 1 and col.count(tenant="a") == 100


def test_collections(db):
    db.create_collection("a", dim=3)
    db.create_collection("b", dim=5, metric="ip")
    assert db.list_collections() == ["a", "b"]
    assert db.collection("b").dim == 5 and db.collection("b").metric == "ip"
    db.drop_collection("a")
    assert db.list_collections() == ["b"]


def test_upsert_replaces_vectors_and_keeps_grants(db):
    col = db.create_collection("c", dim=4, **SMALL_TREE)
    x = clustered(200, 4)
    col.insert(np.arange(200), x, tenant="a")
    col.grant(np.arange(0, 200, 2), tenant="b")
    y = clustered(10, 4, seed=42) * 5
    with pytest.raises(curator.PermissionDeniedError):  # only the owner overwrites
        col.upsert(np.arange(195, 205), y, tenant="c")
    col.upsert(np.arange(195, 205), y, tenant="a")  # 5 existing, 5 new
    np.testing.assert_array_equal(col.get(np.arange(195, 205)), y)
    assert col.tenants_of(196) == ["a", "b"] and col.tenants_of(203) == ["a"]
    assert col.count() == 205 and col.count(tenant="a") == 205 and "c" not in col.tenants()
    ids, _ = col.search(y[1], k=1, tenant="b", ef=10**6)
    assert ids.tolist() == [196]  # found where its new vector is
    for t in col.tenants():
        engine(db, col).index.tenancy.check(engine(db, col).index.tenant_numbers[t])


def test_scroll_pages_through_ids(db):
    col = db.create_collection("c", dim=3)
    col.insert(np.arange(100) * 7, np.ones((100, 3)), tenant="a")
    col.grant(np.arange(0, 700, 14), tenant="b")
    seen, after = [], -1
    while True:
        page, after = col.scroll(tenant="b", after_id=after, limit=12)
        seen += page.tolist()
        if after == -1:
            break
    assert seen == list(range(0, 700, 14))
    page, after = col.scroll(limit=1000)
    assert page.tolist() == list(range(0, 700, 7)) and after == -1


def test_tenants_can_be_created_empty(db):
    col = db.create_collection("c", dim=3)
    col.create_tenant("empty")
    assert col.tenants() == ["empty"] and col.count(tenant="empty") == 0
    ids, dists = col.search(np.ones(3), k=5, tenant="empty")
    assert ids.size == 0 and dists.size == 0
    with pytest.raises(curator.AlreadyExistsError, match="already exists"):
        col.create_tenant("empty")
