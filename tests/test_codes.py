"""Scalar codes (curator/codes.py): what tenant scans read once the tree is trained.

The codes may only cost recall: every answer is a vector its tenant sees, with its exact
distance, min(k, |t|) of them; ef >= 16|t| (search.EXACT_EF) stays exact; and the codes follow every write."""

import numpy as np
import pytest
from conftest import brute_force, clustered
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import curator
from curator.codes import LEVELS, ScalarCodes
from curator.distance import SPAN
from curator import search
from curator.search import EXACT_EF

METRICS = ["l2", "cosine", "ip"]
K = 10


def _prepared(x: np.ndarray, metric: str) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x


def _loaded(metric: str, path=":memory:", n=4000, dim=12, tenants=6):
    x = clustered(n, dim, seed=3, centers=10)
    owner = np.random.default_rng(3).integers(0, tenants, n)
    db = curator.open(path)
    col = db.create_collection("c", dim=dim, metric=metric, train_size=1000, branching=8, leaf_size=32)
    for t in range(tenants):
        mine = np.flatnonzero(owner == t)
        col.insert(mine, x[mine], tenant=f"t{t}")
    col.grant(np.arange(0, n, 3), tenant="t0")
    col.train()
    members = {f"t{t}": np.flatnonzero(owner == t) for t in range(tenants)}
    members["t0"] = np.union1d(members["t0"], np.arange(0, n, 3))
    return db, col, x, members


def _codes_match_the_vectors(col) -> None:
    index = col.index
    codes = index.codes
    assert codes is not None, "a trained collection scans codes"
    live = np.flatnonzero(index.slot_ids[: index.n_slots] >= 0)
    np.testing.assert_array_equal(codes.matrix[live], codes.encode(index._prepared(live)))
    assert np.shares_memory(codes.flat, codes.matrix) and codes.flat.size == codes.matrix.size + SPAN
    assert not codes.flat[codes.matrix.size :].any(), "the spare bytes after the last row stay zero"


def test_codes_lie_end_to_end_with_spare_zeros_after_the_last_row():
    codes = ScalarCodes(np.zeros(50, np.float32), np.ones(50, np.float32), 3)
    codes.write(np.arange(3), np.full((3, 50), 7.0, np.float32))
    codes.grow(1000)
    assert codes.matrix.shape == (1000, 50) and codes.flat.size == 1000 * 50 + SPAN
    assert (codes.flat[: 3 * 50] == 7).all() and not codes.flat[3 * 50 :].any()
    assert np.shares_memory(codes.flat, codes.matrix)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, (64, 5), elements=st.floats(-1e6, 1e6, width=32)))
def test_a_code_stands_for_its_value_within_half_a_step(x):
    codes = ScalarCodes.fit(x, 64)
    codes.write(np.arange(64), x)
    inside = (x >= codes.lo) & (x <= codes.lo + codes.step * LEVELS)  # the rest is clipped
    decoded = codes.lo + codes.step * codes.matrix.astype(np.float32)
    error = np.abs(decoded - x)
    assert (error[inside] <= (codes.step * 0.5001 + 1e-3 * np.abs(x).max())[np.nonzero(inside)[1]]).all()


# 12 and 100 dimensions: the scan's loops over a row's dimensions; 50: its loops of SPAN values
# from a row's start (search.py).
@pytest.mark.parametrize("dim", [12, 50, 100])
@pytest.mark.parametrize("metric", METRICS)
def test_answers_are_the_tenants_vectors_with_exact_distances(metric, dim):
    _, col, x, members = _loaded(metric, dim=dim)
    queries = clustered(60, x.shape[1], seed=9, centers=10)
    for i, q in enumerate(queries):
        tenant = f"t{i % 6}"
        for ef in (8, 64):
            ids, dists = col.search(q, K, tenant=tenant, ef=ef)
            assert ids.size == min(K, members[tenant].size)
            assert np.isin(ids, members[tenant]).all() and np.unique(ids).size == ids.size
            _, exact = brute_force(_prepared(x[ids], metric), _prepared(q[None], metric)[0], metric, ids.size)
            np.testing.assert_allclose(np.sort(dists), exact, rtol=1e-4, atol=1e-4)
            assert (np.diff(dists) >= 0).all()


@pytest.mark.parametrize("dim", [12, 50, 100])
@pytest.mark.parametrize("metric", METRICS)
def test_recall_with_codes_against_brute_force(metric, dim):
    _, col, x, members = _loaded(metric, dim=dim)
    queries = clustered(200, x.shape[1], seed=11, centers=10)
    hits = total = 0
    for i, q in enumerate(queries):
        tenant = f"t{i % 6}"
        ids, _ = col.search(q, K, tenant=tenant)
        mine = members[tenant]
        truth, _ = brute_force(_prepared(x[mine], metric), _prepared(q[None], metric)[0], metric, K)
        hits += np.isin(ids, mine[truth]).sum()
        total += K
    assert hits / total >= 0.95


@pytest.mark.parametrize("dim", [12, 50, 100])
@pytest.mark.parametrize("metric", METRICS)
def test_the_scan_ranks_by_centroids_and_scores_codes_as_decoded(metric, dim):
    """The compiled scan's own figures, below the exact rerank that would hide a small error in
    them: the shortlists' keys are their centroids' distances, and the best approximate distances
    it keeps are those of the decoded codes (numpy over every vector of the tenant)."""
    _, col, x, members = _loaded(metric, dim=dim)
    index = col.index
    (dir_data, dir_start, dir_size, shortlist_node, centroids, mem_data, mem_start, mem_size, vectors, inv_norm,
     codes, lo, step, _) = index._scan_arguments()
    metric_code = int(index.metric)
    t = index._tenant("t0")
    lists = dir_data[dir_start[t] : dir_start[t] + dir_size[t]]
    slots = np.concatenate([mem_data[mem_start[i] : mem_start[i] + mem_size[i]] for i in lists])
    decoded = lo + step * index.codes.matrix[slots].astype(np.float32)
    width = 2 * K
    for q in clustered(20, dim, seed=13, centers=10):
        prepared, usable = search.prepare_query(q, metric_code)
        assert usable
        ranked = search._ranked_shortlists(prepared, metric_code, lists, shortlist_node, centroids)
        nodes = index.tree.centroids[shortlist_node[ranked[1]]]
        expected = (((nodes - prepared) ** 2).sum(axis=1) if metric == "l2"
                    else 1.0 - nodes @ prepared if metric == "cosine" else -(nodes @ prepared))
        np.testing.assert_allclose(ranked[0], expected, rtol=1e-4, atol=1e-4)
        best_d, best_s = np.full(width, np.inf, np.float32), np.full(width, -1, np.int64)
        kind = search.CODES_L2 if metric == "l2" else search.CODES_DOT
        found, scanned = search._scan(kind, prepared, width, 10**9, metric_code, ranked, (mem_data, mem_start, mem_size),
                                      (vectors, inv_norm), (codes, lo, step), np.zeros(0, np.uint8), best_d, best_s)
        assert scanned == slots.size and found == width
        approximate = (((decoded - prepared) ** 2).sum(axis=1) if metric == "l2"
                       else 1.0 - decoded @ prepared if metric == "cosine" else -(decoded @ prepared))
        np.testing.assert_allclose(np.sort(best_d), np.sort(approximate)[:width], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("metric", METRICS)
def test_a_budget_over_the_whole_tenant_is_exact(metric):
    _, col, x, members = _loaded(metric)
    small = "t3"
    mine = members[small]
    for q in clustered(30, x.shape[1], seed=5, centers=10):
        ids, dists = col.search(q, K, tenant=small, ef=EXACT_EF * mine.size)
        truth, exact = brute_force(_prepared(x[mine], metric), _prepared(q[None], metric)[0], metric, K)
        np.testing.assert_allclose(dists, exact, rtol=1e-5, atol=1e-5)


def test_batches_match_single_queries():
    _, col, x, _ = _loaded("cosine")
    queries = clustered(100, x.shape[1], seed=8, centers=10)
    tenants = [f"t{i % 6}" for i in range(100)]
    batch, batch_d = col.search_batch(queries, K, tenants=tenants, ef=32)
    for i, q in enumerate(queries):
        ids, dists = col.search(q, K, tenant=tenants[i], ef=32)
        np.testing.assert_array_equal(ids, batch[i, : ids.size])


@pytest.mark.parametrize("metric", METRICS)
def test_codes_follow_every_write_and_a_reopen(metric, tmp_path):
    db, col, x, members = _loaded(metric, path=str(tmp_path / "db"))
    _codes_match_the_vectors(col)
    rng = np.random.default_rng(4)
    fresh = clustered(500, x.shape[1], seed=21, centers=10) * 1.5
    col.insert(np.arange(10_000, 10_500), fresh, tenant="t1")  # encoded on the scale it has
    owned = np.flatnonzero(col.owned(np.arange(1000), tenant="t0"))[:100]
    col.upsert(owned, rng.standard_normal((owned.size, x.shape[1])).astype(np.float32) * 3, tenant="t0")
    col.delete(np.arange(300, 400))
    _codes_match_the_vectors(col)
    col.train()  # a new scale, every vector encoded again, in the new slot order
    _codes_match_the_vectors(col)
    db.close()
    again = curator.open(str(tmp_path / "db")).collection("c")
    _codes_match_the_vectors(again)
    hits = 0
    for q in fresh[:20]:  # against the exact search (a budget over the whole tenant)
        ids, _ = again.search(q, K, tenant="t1")
        exact, _ = again.search(q, K, tenant="t1", ef=100_000)
        hits += np.isin(ids, exact).sum()
    assert hits / (20 * K) >= 0.9


def test_an_untrained_collection_scans_exactly():
    col = curator.open(":memory:").create_collection("u", dim=4, train_size=10_000)
    x = clustered(300, 4, seed=2)
    col.insert(np.arange(300), x, tenant="a")
    assert col.index.codes is None
    ids, dists = col.search(x[7], 5, tenant="a", ef=1)
    truth, exact = brute_force(x, x[7], "l2", 5)
    np.testing.assert_allclose(dists, exact, rtol=1e-5, atol=1e-5)


def test_outliers_beyond_the_scale_keep_exact_distances():
    """Vectors far outside the trained range are clipped in their codes, never in their answers."""
    _, col, x, _ = _loaded("l2")
    far = np.full((5, x.shape[1]), 1e6, np.float32) * np.arange(1, 6, dtype=np.float32)[:, None]
    col.insert(np.arange(20_000, 20_005), far, tenant="t2")
    ids, dists = col.search(far[2], 3, tenant="t2", ef=64)
    assert ids[0] == 20_002 and dists[0] == 0.0


def test_codes_can_be_switched_off():
    col = curator.open(":memory:").create_collection("plain", dim=12, train_size=1000, codes=False)
    x = clustered(3000, 12, seed=4)
    col.insert(np.arange(3000), x, tenant="a")
    col.train()
    assert col.index.codes is None and col.stats()["memory_bytes"]["codes"] == 0
    ids, dists = col.search(x[5], K, tenant="a")
    assert ids[0] == 5 and dists[0] == 0.0
