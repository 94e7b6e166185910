"""Recall@10 against brute-force ground truth on real data (GloVe x WordNet tenants), at the default knob."""

import numpy as np
import pytest

import curator
from curator_loadtest import data as D

K = 10


@pytest.fixture(scope="module")
def wordnet():
    data = D.glove_wordnet(n_queries=500)
    col = curator.open(":memory:").create_collection("glove", dim=50, metric="cosine")
    D.load_into(col, data)
    col.train()
    return data, col


def test_recall_at_default_ef(wordnet):
    data, col = wordnet
    names = [D.tenant_label(int(t)) for t in data.query_tenants]
    ids, _ = col.search_batch(data.queries, k=K, tenants=names)
    recall = D.recall_at_k(ids, D.ground_truth(data, K, "cosine"), K)
    assert recall >= 0.95, f"recall@10 {recall:.4f} at the default ef"


def test_single_queries_match_the_batch_and_see_only_their_tenant(wordnet):
    data, col = wordnet
    names = [D.tenant_label(int(t)) for t in data.query_tenants[:100]]
    batch, _ = col.search_batch(data.queries[:100], k=K, tenants=names)
    for i, name in enumerate(names):
        ids, dists = col.search(data.queries[i], k=K, tenant=name)
        np.testing.assert_array_equal(ids, batch[i, : ids.size])
        assert np.isin(ids, data.members(int(data.query_tenants[i]))).all()
        assert ids.size == min(K, data.tenant_sizes()[data.query_tenants[i]])


def test_recall_while_the_tree_grows_with_the_data():
    """Without a final explicit train (the tree grew by the retraining rule), recall stays usable at a larger ef."""
    data = D.glove_wordnet(n_queries=300)
    col = curator.open(":memory:").create_collection("glove", dim=50, metric="cosine")
    D.load_into(col, data, batch=2_000)
    names = [D.tenant_label(int(t)) for t in data.query_tenants]
    ids, _ = col.search_batch(data.queries, k=K, tenants=names, ef=4096)
    assert D.recall_at_k(ids, D.ground_truth(data, K, "cosine"), K) >= 0.95
