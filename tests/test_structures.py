"""The engine's flat data structures against plain Python models."""

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from curator.graph import Graph
from curator.idmap import IdMap
from curator.metric import Metric
from curator.nodemap import ABSENT, NodeMap
from curator.slabs import Slabs

ID = st.integers(0, 2**63 - 1) | st.integers(0, 300)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["assign", "discard"]), st.lists(ID, max_size=40, unique=True))))
def test_idmap_matches_a_dict(steps):
    ids, model = IdMap(capacity=4), {}
    for step, (op, batch) in enumerate(steps):
        arr = np.array(batch, np.int64)
        if op == "assign":
            ids.assign(arr, np.full(arr.size, step))
            model.update({i: step for i in batch})
        else:
            ids.discard(arr)
            for i in batch:
                model.pop(i, None)
        assert len(ids) == len(model)
    probe = np.array(sorted(set(model) | {0, 1, 2**62}), np.int64)
    assert ids.lookup(probe).tolist() == [model.get(i, -1) for i in probe.tolist()]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 7), st.integers(0, 50)), max_size=300))
def test_slabs_match_lists(steps):
    slabs, model = Slabs(capacity=4), [[] for _ in range(8)]
    slabs.reserve(8)
    for add, l, v in steps:
        if add:
            slabs.append(np.array([l]), np.array([v]))
            model[l].append(v)
        else:
            found = slabs.remove(np.array([l]), np.array([v]))[0]
            assert found == (v in model[l])
            if found:
                model[l].remove(v)
    batch_lists = np.repeat(np.arange(8), 3)
    slabs.append(batch_lists, np.arange(24))  # a batch that grows several lists at once
    for l in range(8):
        model[l] += [3 * l, 3 * l + 1, 3 * l + 2]
    slabs.compact()
    for l in range(8):
        assert sorted(slabs.get(l).tolist()) == sorted(model[l])
    assert slabs.contains(np.array([0, 7]), np.array([0, 999])).tolist() == [True, False]


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(-1, 9), st.booleans()), max_size=100))
def test_nodemap_matches_a_dict(steps):
    nodes, model = NodeMap(), {}
    for node, state, delete in steps:
        if delete and node in model:
            nodes.delete(node)
            del model[node]
        elif not delete:
            nodes.set(node, state)
            model[node] = state
    probe = np.arange(32)
    assert nodes.lookup(probe).tolist() == [model.get(n, ABSENT) for n in range(32)]
    assert [nodes.get(n) for n in range(32)] == [model.get(n, ABSENT) for n in range(32)]
    assert sorted(nodes.with_state(-1).tolist()) == sorted(n for n, s in model.items() if s == -1)


# -- the compiled HNSW search (graph_search.py) over faiss's graph ---------------------------------

def _strongly_connected(graph: Graph) -> bool:
    """Whether every node reaches every other over layer-0 links (HNSW does not promise it, and
    a walk cannot return what it cannot reach)."""
    _, neighbors, offsets, cum, _, _ = graph._views()
    n = graph.index.ntotal
    links = [[int(v) for v in neighbors[offsets[u]: offsets[u] + cum[1]] if v >= 0] for u in range(n)]
    backward = [[] for _ in range(n)]
    for u, out in enumerate(links):
        for v in out:
            backward[v].append(u)

    def reaches_all(edges):
        seen, todo = {0}, [0]
        while todo:
            for v in edges[todo.pop()]:
                if v not in seen:
                    seen.add(v)
                    todo.append(v)
        return len(seen) == n

    return reaches_all(links) and reaches_all(backward)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300), fraction=st.floats(0.0, 1.0),
       k=st.integers(1, 20), metric=st.sampled_from(list(Metric)), dead=st.integers(0, 50))
def test_graph_search_with_a_full_beam_is_the_exact_answer_among_allowed_nodes(seed, n, fraction, k, metric, dead):
    """With a beam as large as the graph the walk meets every node it can reach: on a connected
    graph the answer is the exact top k of the allowed nodes, never a node outside the bitmap
    (dead nodes are never in it), best first."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    if metric is Metric.COSINE:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    graph = Graph(8, metric, m=4, ef_construction=16)
    graph.add(np.arange(n), vectors)
    assume(_strongly_connected(graph))
    graph.forget(rng.choice(n, size=min(dead, n), replace=False))
    allowed = rng.random(n) < fraction
    query = rng.normal(size=8).astype(np.float32)
    if metric is Metric.COSINE:
        query /= np.linalg.norm(query)
    unfiltered = fraction == 1.0 and dead == 0
    slots, distances = graph.search(query, k, ef=n, bitmap=None if unfiltered else graph.bitmap(allowed))

    candidates = np.flatnonzero(allowed & (graph.node_slot >= 0))
    exact = {Metric.L2: lambda x: ((x - query) ** 2).sum(axis=1), Metric.COSINE: lambda x: 1.0 - x @ query,
             Metric.IP: lambda x: -(x @ query)}[metric](vectors[candidates])
    assert slots.size == min(k, candidates.size)
    assert set(slots.tolist()) <= set(candidates.tolist())
    np.testing.assert_allclose(distances, np.sort(exact)[: slots.size], rtol=1e-4, atol=1e-4)


def test_graph_search_stamps_survive_their_wrap():
    """The visited table holds a byte per node: after 255 searches it is cleared, not trusted."""
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    graph = Graph(8, Metric.L2, m=4, ef_construction=16)
    graph.add(np.arange(300), vectors)
    query = vectors[17]
    answers = {tuple(graph.search(query, 5, ef=300, bitmap=None)[0].tolist()) for _ in range(600)}
    assert answers == {tuple(np.argsort(((vectors - query) ** 2).sum(axis=1))[:5].tolist())}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(-1e3, 1e3, width=32), st.sampled_from([0.0, 1e30, -1e30])), min_size=1, max_size=300))
def test_shortlists_are_taken_nearest_first(values):
    """The scan's order of a tenant's shortlists (bucketed by key, each bucket sorted when it is
    reached) is the order of their keys, with bunched keys, ties and far outliers."""
    from curator import search

    from curator.distance import flat_rows

    flat, centroids = flat_rows(len(values), 1, np.float32)  # the kernels read centroids flat
    centroids[:, 0] = values  # under inner product the key is -value
    lists = np.arange(len(values), dtype=np.int64)
    keys, order, bucket_start = search._ranked_shortlists(np.ones(1, np.float32), 2, lists, lists.astype(np.int32),
                                                          flat)
    for b in range(bucket_start.size - 1):
        search._next_bucket(keys, order, bucket_start, b)
    assert sorted(order.tolist()) == lists.tolist()  # each list once
    np.testing.assert_array_equal(keys, -centroids[order, 0])
    assert (np.diff(keys) >= 0).all()
