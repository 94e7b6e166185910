"""No accepted input crashes the engine (issue 16, item 5).

A vector of extreme but finite values (+-3e38, 1e20, denormals, magnitudes mixed within one
vector) is either refused with InvalidArgumentError, saying what is allowed, or stored and answered
correctly (against numpy in float64), under every metric, embedded and served. The rule is
`curator.metric`'s: squared norm at most MAX_SQUARED_NORM, and under cosine a length of at least
MIN_COSINE_NORM. A data directory written before that rule, holding vectors whose squared norms
overflow float32, opens, trains and serves.

faiss's k-means used to abort the whole process on such vectors (a C++ exception thrown inside an
OpenMP loop cannot be caught), so every case that trains or searches runs in a fresh interpreter:
an abort then fails its test instead of ending pytest. The scenarios are the `_scenario_*`
functions below, which `isolated` runs there.
"""

import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

import curator
from curator import InvalidArgumentError, validate
from curator.metric import MAX_NORM, MAX_SQUARED_NORM, MIN_COSINE_NORM, Metric
from tests.conftest import SMALL_TREE, clustered, database

ROOT = Path(__file__).resolve().parent.parent
DIM = 8
METRICS = ("l2", "ip", "cosine")
EXACT_EF = 100_000  # ef >= 16 |tenant| (search.EXACT_EF): a tree search is exact, so answers compare with brute force


def _alternating(length: float) -> np.ndarray:
    """A vector of this length, its values alike in size and alternating in sign."""
    return length / np.sqrt(DIM) * np.array([1.0, -1.0] * (DIM // 2))


EXTREMES = {
    "+-3e38": np.array([3e38, -3e38] * (DIM // 2)),
    "1e20": np.full(DIM, 1e20),
    "1e19": np.full(DIM, 1e19),
    "just above the bound": _alternating(MAX_NORM * 1.001),
    "just below the bound": _alternating(MAX_NORM * 0.999),
    "1e18": np.full(DIM, 1e18),
    "mixed magnitudes": np.array([3e18, -1e-45, 1.0, 1e-20, -2e18, 0.0, 1e10, -1e-38]),
    "denormals": np.full(DIM, 1e-45),
    "denormals and tiny": np.array([1e-45, -1e-40, 1e-38, 0.0, 0.0, 0.0, 0.0, 1e-44]),
    "1e-30": np.full(DIM, 1e-30),
    "beyond float32": np.array([1e39] + [0.0] * (DIM - 1)),
    "zero": np.zeros(DIM),
}


def accepted(vectors, metric: str) -> bool:
    """The documented rule, evaluated in float64 on the float32 values the engine would store."""
    with np.errstate(over="ignore"):
        x = np.asarray(vectors, np.float64).astype(np.float32).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        squared = (x * x).sum(axis=-1)
    ok = squared <= MAX_SQUARED_NORM  # False for NaN and inf
    if metric == "cosine":
        ok &= np.sqrt(squared) >= MIN_COSINE_NORM
    return bool(np.all(ok))


def refusal_words(vector, metric: str) -> tuple[str, ...]:
    """What a refusal's message must mention (any one): the broken rule and what it allows."""
    with np.errstate(over="ignore"):
        x = np.asarray(vector, np.float32).astype(np.float64)
    if not np.isfinite(x).all():
        return ("NaN or infinity",)
    if (x * x).sum() > MAX_SQUARED_NORM:
        return ("6.5e+18", "6.5e18")  # the largest length allowed
    return ("length zero", "zero under cosine", "1e-30")


def _tolerances(vectors: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    """How far a float32 distance may stray from the float64 one: rounding relative to the sizes
    of the terms summed (the expanded l2 form |q|^2 + |x|^2 - 2<q, x> included), plus underflow."""
    if metric == "l2":
        return 1e-4 * ((query**2).sum() + (vectors**2).sum(axis=1)) + 1e-40
    if metric == "ip":
        return 1e-4 * np.abs(vectors * query).sum(axis=1) + 1e-40
    return np.full(vectors.shape[0], 1e-4)


def _exact(vectors: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    if metric == "l2":
        return ((vectors - query) ** 2).sum(axis=1)
    if metric == "ip":
        return -(vectors @ query)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return 1 - unit @ (query / np.linalg.norm(query))


def assert_best(ids, dists, candidates: dict | None, query, metric: str, k: int, visible: int) -> None:
    """`ids`/`dists` (padding dropped) answer `query` correctly: min(k, visible) results, sorted,
    and those among `candidates` (id -> vector) are the best of them, with their distances, up to
    float32 rounding. Results outside `candidates` (vectors stored before the norm bound) may
    take places but must not push out a better candidate. candidates=None: the count alone."""
    ids, dists = np.asarray(ids), np.asarray(dists, np.float64)
    dists = dists[ids >= 0]
    ids = ids[ids >= 0]
    assert ids.size == min(k, visible), (ids, visible)
    assert np.unique(ids).size == ids.size
    if candidates is None:
        return
    assert np.all(np.diff(dists[np.isfinite(dists)]) >= 0), dists
    order = np.array(sorted(candidates))
    vectors = np.stack([candidates[i] for i in order]).astype(np.float64)
    q = np.asarray(query, np.float32).astype(np.float64)
    exact, tol = _exact(vectors, q, metric), _tolerances(vectors, q, metric)
    mine = np.isin(ids, order)
    rows = np.searchsorted(order, ids[mine])
    np.testing.assert_array_less(np.abs(dists[mine] - exact[rows]), tol[rows] + 1e-300)
    n = int(mine.sum())
    if n:
        nth = np.argsort(exact, kind="stable")[n - 1]  # the n-th best candidate
        assert np.all(exact[rows] - tol[rows] <= exact[nth] + tol[nth]), (ids, exact[rows], exact[nth])


def isolated(scenario, *args) -> str:
    """scenario(*args) in a fresh interpreter; a crash (exit 134 on an abort) fails the test."""
    code = f"from tests.test_extreme_values import {scenario.__name__} as run; run(*{args!r})"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    return done.stdout


# -- in this process: the edge alone, no native code -----------------------------------------------


@pytest.mark.parametrize("name", EXTREMES)
def test_the_edge_refuses_exactly_what_the_rule_refuses(name):
    vector = EXTREMES[name]
    batch = np.stack([np.ones(DIM), vector])  # the bad row is named by its place in the batch
    if accepted(vector, "l2"):
        np.testing.assert_array_equal(validate.vectors(batch, DIM)[1], vector.astype(np.float32))
        return
    with pytest.raises(InvalidArgumentError) as raised:
        validate.vectors(batch, DIM)
    assert "vector 1" in str(raised.value)
    assert any(word in str(raised.value) for word in refusal_words(vector, "l2")), str(raised.value)


def test_the_bound_keeps_every_distance_between_accepted_vectors_finite_in_float32():
    a = _alternating(MAX_NORM * 0.9999).astype(np.float32)  # as long as allowed, and -a as far away
    assert accepted(np.stack([a, -a]), "l2")
    with np.errstate(over="raise"):  # in float32 throughout, as the compiled scans and faiss compute
        assert np.isfinite(((a - (-a)) ** 2).sum(dtype=np.float32))
        assert np.isfinite((a @ a) + (a @ a) - np.float32(2) * (a @ -a))  # l2 expanded: |a|^2 + |b|^2 - 2<a, b>
        assert np.isfinite(-(a @ -a))


# -- in a fresh interpreter: storing, training, searching --------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "remote"])
def test_extreme_values_are_refused_or_answered_correctly(kind, tmp_path):
    isolated(_scenario_extremes, kind, str(tmp_path))


def test_the_server_itself_refuses_what_its_clients_did_not_check(tmp_path):
    isolated(_scenario_raw_requests, str(tmp_path))


def test_the_tree_trains_and_routes_around_rows_beyond_float32():
    isolated(_scenario_tree)


@pytest.mark.parametrize("served", [False, True], ids=["embedded", "served"])
def test_a_directory_holding_overflowing_vectors_opens_trains_and_serves(served, tmp_path):
    isolated(_scenario_poisoned_directory, str(tmp_path), served)


def test_random_extreme_vectors_never_kill_the_engine():
    isolated(_scenario_hypothesis, 20)


# -- the scenarios -------------------------------------------------------------------------------------


def _search_checks(col, stored: dict, query, metric: str, k: int = 10, visible: int | None = None,
                   correct: bool = True) -> None:
    """Every search path answers `query` correctly (or, correct=False, with as many results as it
    should): the compiled single query (float32 fast path and the validated path), the planner
    without a tenant, and both batch paths."""
    visible = len(stored) if visible is None else visible
    stored = stored if correct else None
    q32 = np.ascontiguousarray(query, np.float32)
    for result in (col.search(q32, k=k, tenant="a", ef=EXACT_EF),
                   col.search(np.asarray(query, np.float64), k=k, tenant="a", ef=EXACT_EF),
                   col.search(q32, k=k, ef=EXACT_EF)):
        assert_best(result.ids, result.distances, stored, q32, metric, k, visible)
    for tenants in ("a", None):
        batch = col.search_batch(np.stack([q32, q32[::-1]]), k=k, tenants=tenants, ef=EXACT_EF)
        for row, q in enumerate((q32, q32[::-1])):
            assert_best(batch.ids[row], batch.distances[row], stored, q, metric, k, visible)


def _expect_refusal(call, vector, metric: str) -> None:
    try:
        call()
    except InvalidArgumentError as error:
        assert any(word in str(error) for word in refusal_words(vector, metric)), str(error)
    else:
        raise AssertionError(f"{vector} was accepted under {metric}")


def _scenario_extremes(kind: str, tmp: str) -> None:
    for metric in METRICS:
        with database(kind, Path(tmp) / metric) as db:
            col = db.create_collection("x", dim=DIM, metric=metric, **SMALL_TREE)
            base = clustered(100, DIM)
            col.insert(np.arange(100), base, tenant="a")  # 100 >= train_size: the tree is trained
            stored = dict(enumerate(base))
            for case, (name, vector) in enumerate(EXTREMES.items()):
                ok = accepted(vector, metric)
                ordinary = clustered(1, DIM, seed=case)[0]
                new_ids = [1000 + 2 * case, 1001 + 2 * case]
                pair = np.stack([ordinary, vector])
                replaced = case  # a stored vector that upsert gives the extreme value
                if ok:
                    col.insert(new_ids, pair, tenant="a")
                    stored.update(zip(new_ids, pair.astype(np.float32)))
                    col.upsert([replaced], vector[None], tenant="a")
                    stored[replaced] = vector.astype(np.float32)
                    col.train(np.concatenate([base, vector[None]]))
                    col.train()  # k-means over everything stored, this vector included
                    _search_checks(col, stored, vector, metric)
                    _search_checks(col, stored, ordinary, metric)
                else:
                    before = col.count()
                    _expect_refusal(lambda: col.insert(new_ids, pair, tenant="a"), vector, metric)
                    _expect_refusal(lambda: col.upsert([replaced], vector[None], tenant="a"), vector, metric)
                    _expect_refusal(lambda: col.train(np.concatenate([base, vector[None]])), vector, metric)
                    with np.errstate(over="ignore"):  # "beyond float32" becomes inf, as a client would send it
                        q32 = vector.astype(np.float32)
                    for search in (lambda: col.search(q32, k=5, tenant="a"),  # the compiled check
                                   lambda: col.search(vector, k=5, tenant="a"),  # validate's
                                   lambda: col.search(q32, k=5),  # the planner's exact scan
                                   lambda: col.search_batch(np.stack([ordinary, vector]), k=5, tenants="a")):
                        _expect_refusal(search, vector, metric)
                    assert col.count() == before
                    np.testing.assert_array_equal(col.get([replaced])[0], stored[replaced])
            _search_checks(col, stored, base[7], metric)
        print(metric, "ok", len(stored), "stored")


def _scenario_raw_requests(tmp: str) -> None:
    """Requests built by hand, as a client that skips the checks would send them."""
    from curator_proto import wire
    from curator_proto.v1 import curator_pb2 as pb
    from curator_proto.v1 import curator_pb2_grpc as rpc
    from curator_server.app import CuratorServer, ServerConfig

    server = CuratorServer(ServerConfig(data=str(Path(tmp) / "data"), port=0)).start()
    try:
        db = curator.connect(server.address)
        channel = grpc.insecure_channel(server.address)
        vectors, search = rpc.VectorsServiceStub(channel), rpc.SearchStub(channel)
        for metric in METRICS:
            col = db.create_collection(metric, dim=DIM, metric=metric, **SMALL_TREE)
            base = clustered(100, DIM)
            col.insert(np.arange(100), base, tenant="a")
            for case, vector in enumerate(v for v in EXTREMES.values() if not accepted(v, metric)):
                with np.errstate(over="ignore"):  # "beyond float32" becomes inf on the wire
                    one = wire.pack(vector.astype(np.float32)[None])
                    pair = wire.pack(np.stack([base[0], vector]).astype(np.float32))
                calls = [
                    (vectors.Insert, pb.InsertRequest(collection=metric, ids=[500 + case, 600 + case], vectors=pair,
                                                      tenant="a")),
                    (vectors.Insert, pb.InsertRequest(collection=metric, ids=[1], vectors=one, tenant="a",
                                                      upsert=True)),
                    (vectors.Train, pb.TrainRequest(collection=metric, sample=pair)),
                    (search.Search, pb.SearchRequest(collection=metric, query=one, k=5, tenant="a")),
                    (search.Search, pb.SearchRequest(collection=metric, query=one, k=5)),
                    (search.SearchBatch, pb.SearchBatchRequest(collection=metric, queries=pair, k=5,
                                                               tenants=["a"] * 2)),
                ]
                for call, request in calls:
                    try:
                        call(request)
                    except grpc.RpcError as error:
                        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
                        assert ("curator-error", "InvalidArgumentError") in tuple(error.trailing_metadata() or ())
                        assert any(word in error.details() for word in refusal_words(vector, metric)), error.details()
                    else:
                        raise AssertionError(f"the server accepted {vector} under {metric} in {request}")
            assert col.count() == 100
            np.testing.assert_array_equal(col.get([1])[0], base[1])
            _search_checks(col, dict(enumerate(base)), base[3], metric)
        db.close()
    finally:
        server.stop()


def _scenario_tree() -> None:
    import faiss

    from curator.tree import ClusteringTree, TreeShape, _native

    try:  # a C++ exception faiss can hand over (outside its parallel loops) arrives typed
        with _native("k-means"):
            faiss.Kmeans(DIM, 8, verbose=False).train(np.zeros((2, DIM), np.float32))  # fewer points than k
    except curator.CuratorError as error:
        assert "k-means failed in faiss" in str(error) and isinstance(error.__cause__, RuntimeError)
    else:
        raise AssertionError("faiss trained 8 centroids on 2 points")
    shape = TreeShape(branching=4, leaf_size=16, kmeans_iterations=5)
    for metric in Metric:
        sample = clustered(300, DIM)
        poisoned = np.array([[1e20] * DIM, [3e38, -3e38] * (DIM // 2), [1e19] * DIM, [-9e18] + [0.0] * (DIM - 1)],
                            np.float32)
        sample[[5, 50, 150, 299]] = poisoned  # faiss's k-means aborted on each of these
        tree = ClusteringTree.train(sample, metric, shape)
        assert tree.trained and np.isfinite(tree.centroids).all() and np.isfinite(tree.distortion)
        leaves, dists = tree.route(sample)
        assert np.isin(leaves, tree.leaves).all()  # every row, poisoned too, lies in one leaf
        assert np.isfinite(np.delete(dists, [5, 50, 150, 299])).all() and not np.isnan(dists).any()
        assert not ClusteringTree.train(poisoned, metric, shape).trained  # nothing left to train on
        edge = _alternating(MAX_NORM * 0.999).astype(np.float32)  # accepted, as are their distances
        sample[[5, 50, 150, 299]] = [edge, -edge, edge * 0.5, -edge * 0.5]
        tree = ClusteringTree.train(sample, metric, shape)
        assert tree.trained and np.isfinite(tree.centroids).all() and np.isfinite(tree.route(sample)[1]).all()
        print(metric.label, "ok", tree.n_nodes, "nodes")


# Vectors the edge accepted before the norm bound: their squared norms overflow float32.
OVERFLOWING = np.array([[1e20] * DIM, [1e19] * DIM, [2e19, -5e18] * (DIM // 2)], np.float32)
# Beyond that, values whose products with a query overflow too: under ip and cosine their inner
# products come out as inf - inf = NaN in the compiled scans, whose heaps then misplace other
# vectors; so for those metrics only a whole answer is required (no crash, as many results).
HUGE = np.array([[3e38, -3e38] * (DIM // 2)], np.float32)
POISONED = [("l2", np.concatenate([OVERFLOWING, HUGE]), True), ("ip", OVERFLOWING, True),
            ("cosine", OVERFLOWING, True), ("ip", np.concatenate([OVERFLOWING, HUGE]), False),
            ("cosine", np.concatenate([OVERFLOWING, HUGE]), False)]


def _scenario_poisoned_directory(tmp: str, served: bool) -> None:
    from curator_server.app import CuratorServer, ServerConfig

    clean = clustered(200, DIM, seed=3)
    for case, (metric, poison, correct) in enumerate(POISONED):
        path = str(Path(tmp) / str(case))
        poison_ids = np.arange(1000, 1000 + poison.shape[0])
        with curator.open(path) as db:
            col = db.create_collection("p", dim=DIM, metric=metric, **{**SMALL_TREE, "train_size": 120})
            col.insert(np.arange(60), clean[:60], tenant="a")
            checked = validate.vectors
            validate.vectors = lambda values, dim: np.ascontiguousarray(values, np.float32).reshape(-1, dim)
            try:  # the edge before the norm bound: only NaN and infinity were refused
                col.insert(poison_ids, poison, tenant="a")
            finally:
                validate.vectors = checked
        clean_stored = dict(enumerate(clean[:60]))
        for opening in range(2):  # the second time with the tree trained on the first, and stored
            server = CuratorServer(ServerConfig(data=path, port=0)).start() if served else None
            db = curator.connect(server.address) if served else curator.open(path)
            engine = (server.db if served else db).collection("p")
            try:
                col = db.collection("p")
                visible = len(clean_stored) + poison.shape[0]
                assert col.count() == visible
                _search_checks(col, clean_stored, clean[1], metric, visible=visible, correct=correct)
                if opening == 0:
                    col.insert(np.arange(60, 200), clean[60:], tenant="a")  # past train_size: training is due
                    clean_stored.update(enumerate(clean[60:], start=60))
                    col.train()  # and now, whether the insert trained or left it to the background
                    assert engine.stats()["tree_nodes"] > 1
                visible = len(clean_stored) + poison.shape[0]
                for q in (clean[1], clean[150], -clean[2]):
                    _search_checks(col, clean_stored, q, metric, visible=visible, correct=correct)
                np.testing.assert_array_equal(col.get(poison_ids), poison)  # stored as written, bit for bit
            finally:
                db.close()
                if server is not None:
                    server.stop()
        print(metric, len(poison), "poisoned, ok")


def _scenario_hypothesis(examples: int) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    sizes = st.sampled_from([0.0, 1e-45, 1e-40, 1e-38, 1e-30, 1e-20, 1e-3, 1.0, 3.0, 1e10, 1e18, 2e18, 3e18,
                             1e19, 1e20, 3e38])
    value = st.one_of(st.builds(lambda size, sign: size * sign, sizes, st.sampled_from([1.0, -1.0])),
                      st.floats(-2**60, 2**60, width=32),  # always within the bound at dim 8: more answers to check
                      st.floats(width=32, allow_nan=False, allow_infinity=False))
    vector = st.lists(value, min_size=DIM, max_size=DIM)
    base = clustered(80, DIM)

    for metric in METRICS:
        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(batch=st.lists(vector, min_size=1, max_size=4), query=vector)
        def case(batch, query):
            batch, query = np.array(batch, np.float64), np.array(query, np.float64)
            with curator.open(":memory:") as db:
                col = db.create_collection("h", dim=DIM, metric=metric, **SMALL_TREE)
                col.insert(np.arange(80), base, tenant="a")
                stored = dict(enumerate(base))
                ids = np.arange(100, 100 + batch.shape[0])
                if accepted(batch, metric):
                    col.insert(ids, batch, tenant="a")
                    col.upsert([0], batch[-1:], tenant="a")
                    stored.update(zip(ids.tolist(), batch.astype(np.float32)))
                    stored[0] = batch[-1].astype(np.float32)
                else:
                    with pytest.raises(InvalidArgumentError):
                        col.insert(ids, batch, tenant="a")
                    with pytest.raises(InvalidArgumentError):
                        col.upsert(np.arange(batch.shape[0]), batch, tenant="a")
                    assert col.count() == 80
                    np.testing.assert_array_equal(col.get(np.arange(80)), base)
                col.train()
                if accepted(query, metric):
                    _search_checks(col, stored, query, metric)
                else:
                    with pytest.raises(InvalidArgumentError):
                        col.search(query.astype(np.float32), k=5, tenant="a")
                    with pytest.raises(InvalidArgumentError):
                        col.search_batch(query[None], k=5, tenants="a")

        case()
        print(metric, "ok")
