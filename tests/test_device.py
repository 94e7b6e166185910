"""The device code paths (device.py, device_search.py, knn_graph.py, tree.py's k-means on a device),
run by numpy on the CPU: the same array code cupy runs on a GPU (benchmarks/gpu.py --check
compares the two there). Results are checked against brute force and against the CPU paths at
the same settings."""

import logging

import numpy as np
import pytest

import curator
from curator import device, device_search, knn_graph
from curator.graph import Graph
from curator.index import CuratorIndex, IndexConfig
from curator.metric import Metric
from curator.search import EXACT_EF
from curator.tree import MAX_DEPTH, ClusteringTree, TreeShape

from conftest import clustered

METRICS = [Metric.L2, Metric.COSINE, Metric.IP]


def emulated(**changes) -> device.Device:
    dev = device.select("numpy")
    for name, value in changes.items():
        setattr(dev, name, value)
    return dev


def prepared(metric: Metric, x: np.ndarray) -> np.ndarray:
    return metric.prepare(x) if metric is Metric.COSINE else x


def recall(found: np.ndarray, truth: list[set]) -> float:
    return float(np.mean([len(set(row.tolist()) & t) / max(1, min(len(t), found.shape[1]))
                          for row, t in zip(found, truth)]))


# -- choosing the device ---------------------------------------------------------------------------


def test_cuda_without_a_device_is_a_clear_error_and_auto_is_the_cpu():
    with pytest.raises(curator.InvalidArgumentError, match="no CUDA device: cupy"):
        device.select("cuda")
    with pytest.raises(curator.InvalidArgumentError, match="no CUDA device"):
        curator.open(":memory:", device="cuda")
    with pytest.raises(curator.InvalidArgumentError, match="device must be one of"):
        device.select("tpu")
    assert device.select("auto") is device.CPU and device.select("cpu") is device.CPU
    with curator.open(":memory:") as db:
        col = db.create_collection("c", dim=4)
        col.insert([1, 2], np.ones((2, 4), np.float32), tenant="t")
        assert col.stats()["device"]["device"] == "cpu"
        assert db.collection("c").index.accelerator is None


def test_serve_refuses_cuda_without_a_device(capsys):
    from curator_server.cli import main

    assert main(["serve", "--data", ":memory:", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


# -- the shared tree's k-means -------------------------------------------------------------------


def _check_tree(tree: ClusteringTree, shape: TreeShape, n: int):
    assert tree.trained and tree.depth.max() <= MAX_DEPTH
    children = np.diff(tree.child_start)
    inner = children[~tree.is_leaf]
    assert (inner >= 2).all() and (inner <= shape.branching).all()
    assert (tree.parent[1:] < np.arange(1, tree.n_nodes)).all()  # parents precede children
    leaves, _ = tree.route(np.zeros((1, tree.centroids.shape[1]), np.float32))
    assert tree.is_leaf[leaves].all()


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", [TreeShape(), TreeShape(branching=4, leaf_size=16, kmeans_iterations=5)])
def test_tree_trained_on_the_device_has_the_cpu_trees_shape_and_distortion(metric, shape):
    x = prepared(metric, clustered(12_000, 24, seed=4, centers=30))
    cpu = ClusteringTree.train(x, metric, shape)
    dev = ClusteringTree.train(x, metric, shape, device=emulated())
    assert cpu.trained_on == "cpu" and dev.trained_on == "numpy"
    _check_tree(cpu, shape, x.shape[0])
    _check_tree(dev, shape, x.shape[0])
    assert 0.8 < dev.n_nodes / cpu.n_nodes < 1.25
    assert abs(int(dev.depth.max()) - int(cpu.depth.max())) <= 1
    assert dev.distortion <= cpu.distortion * 1.05
    # every member is routed to the nearest leaf the same way (device routing against faiss's)
    leaves_dev, d_dev = dev.route(x)
    dev.device = None
    leaves_cpu, d_cpu = dev.route(x)
    assert (leaves_dev == leaves_cpu).mean() > 0.999
    np.testing.assert_allclose(d_dev, d_cpu, rtol=1e-4)
    again = ClusteringTree.train(x, metric, shape, device=emulated())
    np.testing.assert_array_equal(again.centroids, dev.centroids)  # seeded: the same tree every time


def test_tree_on_the_device_keeps_duplicates_in_a_leaf():
    x = np.repeat(clustered(3, 8, seed=1), 400, axis=0)
    tree = ClusteringTree.train(x, Metric.L2, TreeShape(branching=4, leaf_size=16), device=emulated())
    assert tree.trained and tree.is_leaf.sum() == 3


# -- batched tenant searches -------------------------------------------------------------------------


def _tenant_index(metric: Metric, n=6000, dim=16, tenants=24, seed=0):
    rng = np.random.default_rng(seed)
    x = clustered(n, dim, seed=seed, centers=12)
    cfg = IndexConfig(tree=TreeShape(branching=8, leaf_size=32, kmeans_iterations=8), split_limit=32,
                      train_size=1000, ef=64)
    index = CuratorIndex(dim, metric, cfg)
    owner = rng.integers(0, tenants, n)
    owner[:3] = tenants  # a tenant of three vectors: fewer than k
    for t in range(tenants + 1):
        mine = np.flatnonzero(owner == t)
        index.insert(mine.astype(np.int64), x[mine], f"t{t}")
    shared = np.arange(3, 900, dtype=np.int64)
    index.grant(shared, "t1")
    members = {f"t{t}": set(np.flatnonzero(owner == t).tolist()) for t in range(tenants + 1)}
    members["t1"] |= set(shared.tolist())
    return index, x, members


def _truth(x, metric, queries, tenants, members, k):
    out = []
    for q, t in zip(queries, tenants):
        mine = np.array(sorted(members[t]))
        top, _ = device.exact_topk(prepared(metric, q[None]), prepared(metric, x[mine]), k, metric, xp=np)
        out.append(set(mine[top[0]].tolist()))
    return out


@pytest.mark.parametrize("metric", METRICS)
def test_batched_search_on_the_device_is_at_least_the_cpus_recall(metric):
    index, x, members = _tenant_index(metric)
    rng = np.random.default_rng(1)
    nq, k = 240, 10
    queries = x[rng.integers(0, x.shape[0], nq)] + rng.normal(0, 0.3, (nq, x.shape[1])).astype(np.float32)
    tenants = [f"t{i % 25}" for i in range(nq)]
    truth = _truth(x, metric, queries, tenants, members, k)
    stored = index.vectors.copy()
    for ef in (1, 8, 32):  # ef 1: the CPU's scan of codes still holds 2k candidates before it stops
        cpu_ids, cpu_d = index.search(queries, k, tenants, ef, parallel=False)
        device_search.attach(index, emulated())
        index.accelerator.min_batch = 1
        dev_ids, dev_d = index.search(queries, k, tenants, ef, parallel=False)
        device_search.detach(index)
        index.accelerator = None
        # the device scores a superset of the CPU's candidates: each rank's distance is as small
        # (up to float rounding, which may also swap a tie at the k-th place)
        finite = np.isfinite(cpu_d)
        assert (dev_d[finite] <= cpu_d[finite] + 1e-4).all()
        assert recall(dev_ids, truth) >= recall(cpu_ids, truth) - 0.005
        assert recall(dev_ids, truth) > 0.5
        for row, t in zip(dev_ids, tenants):  # isolation: only the tenant's own vectors, no repeats
            got = row[row >= 0]
            assert set(got.tolist()) <= members[t] and len(set(got.tolist())) == got.size
            assert got.size == min(k, len(members[t]))  # always k when the tenant has k
        ranked = np.where(np.isfinite(dev_d), dev_d, np.finfo(np.float32).max)
        assert (np.diff(ranked, axis=1) >= -1e-5).all()  # best first
        # the device's copy of the rows is its own: the index's vectors are as stored (numpy, the
        # emulated device, once scaled them in place for cosine, and later searches lost recall)
        np.testing.assert_array_equal(index.vectors, stored)
    # at ef >= EXACT_EF * |tenant| both are exact: the same ids, distances equal to float rounding
    small = [f"t{i}" for i in (2, 3, 24)] * 10
    q = queries[: len(small)]
    exact = EXACT_EF * max(len(members[t]) for t in small)
    cpu_ids, cpu_d = index.search(q, k, small, exact, parallel=False)
    device_search.attach(index, emulated())
    index.accelerator.min_batch = 1
    dev_ids, dev_d = index.search(q, k, small, exact, parallel=False)
    np.testing.assert_allclose(dev_d, cpu_d, rtol=1e-4, atol=1e-4)
    assert (dev_ids == cpu_ids).mean() > 0.99  # up to distance ties
    assert index.accelerator.stats()["queries"]["tree_search"]["device"] == len(small)


def test_small_batches_stay_on_the_cpu_and_the_collection_chunks_for_the_device():
    db = curator.open(":memory:", device=emulated())
    col = db.create_collection("c", dim=8, branching=4, leaf_size=16, split_limit=8, train_size=300)
    x = clustered(2000, 8, seed=3)
    col.insert(np.arange(2000), x, tenant="a")
    engine = db.collection("c")
    engine.retraining.wait()
    col.search_batch(x[:5], 5, tenants="a")  # under min_batch: the CPU's compiled search
    assert engine.stats()["device"]["queries"]["tree_search"] == {"device": 0, "cpu": 5}
    engine.index.accelerator.chunk = 100
    found = col.search_batch(x[:250], 5, tenants="a")
    assert found.ids[:, 0].tolist() == list(range(250))  # each vector finds itself
    assert engine.stats()["device"]["queries"]["tree_search"]["device"] == 250
    assert engine.stats()["device"]["trained_on"] == "numpy"
    db.close()


# -- filtered searches ---------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_filtered_batches_on_the_device_scan_exactly_and_always_give_k(metric):
    db = curator.open(":memory:", device=emulated())
    col = db.create_collection("c", dim=12, metric=metric.label, branching=4, leaf_size=16, split_limit=8,
                               train_size=300, exact_limit=64)
    x = clustered(3000, 12, seed=5)
    col.insert(np.arange(3000), x, tenant="a", payloads=[{"n": i % 100} for i in range(3000)])
    col.grant(np.arange(0, 3000, 2), tenant="b")
    engine = db.collection("c")
    engine.retraining.wait()
    engine.index.accelerator.min_batch = 1
    queries = x[:60] + 0.05
    k = 10
    for where, tenants, matches in [({"n": {"lt": 1}}, ["a"] * 60, lambda i: i % 100 < 1),
                                    ({"n": {"in": [3, 4]}}, ["b"] * 30 + [None] * 30,
                                     lambda i: i % 100 in (3, 4)),
                                    ({"n": {"lt": 90}}, ["b"] * 60, lambda i: i % 100 < 90)]:
        found = col.search_batch(queries, k, tenants=tenants, filter=where)
        for row, q, t in zip(found.ids, queries, tenants):
            allowed = np.array([i for i in range(3000) if matches(i) and (t != "b" or i % 2 == 0)])
            top, _ = device.exact_topk(prepared(metric, q[None]), prepared(metric, x[allowed]), k, metric, xp=np)
            got = row[row >= 0]
            assert got.size == min(k, allowed.size)
            assert set(got.tolist()) <= set(allowed.tolist())
            assert len(set(got.tolist()) & set(allowed[top[0]].tolist())) >= k - 1
    queries_run = engine.stats()["device"]["queries"]["filtered_search"]
    assert queries_run["device"] == 180 and queries_run["cpu"] == 0
    db.close()


def test_a_filter_the_planner_sends_to_the_graph_keeps_the_cpus_graph_plan():
    index, x, members = _tenant_index(Metric.L2, n=4000, tenants=2)
    device_search.attach(index, emulated())
    index.accelerator.min_batch = 1
    allowed = index._allowed(None, None)
    found = index.accelerator.search_group(index, x[:20], None, allowed, "graph", 10, 64)
    assert found is None and index.accelerator.stats()["queries"]["filtered_search"]["cpu"] == 20
    index.accelerator.exact_rows = 10_000  # a benchmark can send broad filters to the device's scan
    ids, dists, plan = index.accelerator.search_group(index, x[:20], None, allowed, "graph", 10, 64)
    assert plan == "exact" and (ids[:, 0] == np.arange(20)).all()


# -- the HNSW graph from a kNN graph --------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_knn_graph_is_exact(metric):
    x = prepared(metric, clustered(700, 10, seed=2))
    ids, dists = knn_graph.knn(x, 8, metric, emulated(scratch_bytes=40_000))  # many small tiles
    truth, truth_d = device.exact_topk(x, x, 9, metric, xp=np)
    for i in range(x.shape[0]):
        expect = [j for j in truth[i] if j != i][:8]
        expect_d = np.sort(truth_d[i][truth[i] != i][:8])
        assert set(ids[i].tolist()) == set(expect) or np.allclose(np.sort(dists[i]), expect_d, atol=1e-4)  # ties


@pytest.mark.parametrize("metric", METRICS)
def test_graph_from_a_knn_graph_matches_the_cpu_built_graphs_recall(metric):
    n, dim, m = 5000, 16, 16
    data = clustered(n + 200, dim, seed=7, centers=20)
    x, q = prepared(metric, data[:n]), prepared(metric, data[n:])
    truth = [set(row.tolist()) for row in device.exact_topk(q, x, 10, metric, xp=np)[0]]
    cpu = Graph(dim, metric, m, 80)
    cpu.add(np.arange(n), x)
    built = Graph.adopting(knn_graph.build_hnsw(x, metric, m, 80, emulated()), np.arange(n), metric, m, 80)
    for beam in (10, 20, 40):
        found_cpu = np.array([cpu.search(v, 10, beam, None)[0] for v in q])
        found_knn = np.array([built.search(v, 10, beam, None)[0] for v in q])
        assert recall(found_knn, truth) >= recall(found_cpu, truth) - 0.02, beam
    assert recall(found_knn, truth) > 0.95
    # it is an ordinary faiss HNSW from then on: faiss adds vectors to it, searches find them
    extra = prepared(metric, clustered(300, dim, seed=8, centers=20))
    built.add(np.arange(n, n + 300), extra)
    everything = np.concatenate([x, extra])
    truth = [set(row.tolist()) for row in device.exact_topk(extra, everything, 10, metric, xp=np)[0]]
    assert recall(np.array([built.search(v, 10, 40, None)[0] for v in extra]), truth) > 0.9


def test_the_collections_graph_is_built_on_the_device_and_searched_by_the_graph_plan():
    db = curator.open(":memory:", device=emulated())
    col = db.create_collection("c", dim=8, branching=4, leaf_size=16, split_limit=8, train_size=300,
                               exact_limit=16, tree_max_tenant=10, hnsw_visit_cost=0.01)
    x = clustered(3000, 8, seed=9)
    col.insert(np.arange(3000), x, tenant="a", payloads=[{"n": i % 2} for i in range(3000)])
    engine = db.collection("c")
    engine.retraining.wait()
    engine.index.accelerator.graph_min_vectors = 1000
    found = col.search(x[7] + 0.01, 5, tenant="a", filter={"n": 1})
    assert found.plan == "graph" and found.ids[0] == 7 and all(i % 2 == 1 for i in found.ids)
    assert engine.stats()["device"]["graph_built_on"] == "numpy"
    db.close()


# -- budgets and failures ---------------------------------------------------------------------------------


def test_a_collection_beyond_the_memory_budget_stays_on_the_cpu(caplog):
    db = curator.open(":memory:", device=emulated(memory_budget=10_000))
    col = db.create_collection("c", dim=8, branching=4, leaf_size=16, split_limit=8, train_size=300)
    x = clustered(2000, 8, seed=3)
    col.insert(np.arange(2000), x, tenant="a")
    engine = db.collection("c")
    engine.retraining.wait()
    engine.index.accelerator.min_batch = 1
    with caplog.at_level(logging.INFO, logger="curator"):
        found = col.search_batch(x[:40], 5, tenants="a")
    assert found.ids[:, 0].tolist() == list(range(40))
    stats = engine.stats()["device"]
    assert stats["queries"]["tree_search"] == {"device": 0, "cpu": 40} and not stats["fits"]
    assert "does not fit the memory budget" in caplog.text
    db.close()


class _Broken:
    """An array module whose every array fails: a device that errors."""

    def __getattr__(self, name):
        if name in ("float32", "int64", "int32", "float64"):
            return getattr(np, name)

        def fail(*args, **kwargs):
            raise RuntimeError("the device fell over")
        return fail


def test_a_device_error_falls_back_to_the_cpu_and_loses_no_write(caplog):
    broken = device.Device("broken", _Broken(), memory_budget=1 << 30, label="a broken device")
    db = curator.open(":memory:", device=broken)
    col = db.create_collection("c", dim=8, branching=4, leaf_size=16, split_limit=8, train_size=300,
                               retrain_interval=0)
    x = clustered(2000, 8, seed=3)
    with caplog.at_level(logging.WARNING, logger="curator"):
        col.insert(np.arange(1000), x[:1000], tenant="a")  # training on the device fails: the CPU trains
        engine = db.collection("c")
        engine.retraining.wait()
        engine.index.accelerator.min_batch = 1
        found = col.search_batch(x[:40], 5, tenants="a")
        col.insert(np.arange(1000, 2000), x[1000:], tenant="a")
        engine.retraining.wait()
        again = col.search_batch(x[1000:1040], 5, tenants="a")
    assert found.ids[:, 0].tolist() == list(range(40))
    assert again.ids[:, 0].tolist() == list(range(1000, 1040))
    assert col.count() == 2000
    stats = engine.stats()["device"]
    assert stats["trained_on"] == "cpu" and stats["fallbacks"] >= 1 and "fell over" in stats["last_error"]
    assert stats["queries"]["tree_search"]["cpu"] == 80
    assert "failed on a broken device" in caplog.text and "training on the CPU instead" in caplog.text
    db.close()


def test_the_metrics_say_which_device_answered():
    from prometheus_client import generate_latest

    from curator_server.metrics import Metrics

    db = curator.open(":memory:", device=emulated())
    col = db.create_collection("c", dim=8, branching=4, leaf_size=16, split_limit=8, train_size=300)
    x = clustered(1000, 8, seed=3)
    col.insert(np.arange(1000), x, tenant="a")
    db.collection("c").retraining.wait()
    db.collection("c").index.accelerator.min_batch = 10
    col.search_batch(x[:40], 5, tenants="a")
    col.search_batch(x[:4], 5, tenants="a")
    text = generate_latest(Metrics(db, None).registry).decode()
    assert 'curator_device_queries_total{collection="c",device="numpy",part="tree_search"} 40.0' in text
    assert 'curator_device_queries_total{collection="c",device="cpu",part="tree_search"} 4.0' in text
    assert 'curator_device_memory_bytes{collection="c",device="numpy"}' in text
    db.close()
