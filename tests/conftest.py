import contextlib
import os
import threading

import numpy as np
import pytest

import curator

# Small trees so that a few hundred vectors already exercise training, splits and merges.
SMALL_TREE = dict(branching=4, leaf_size=16, split_limit=8, train_size=64, kmeans_iterations=5, retrain_interval=0)


@contextlib.contextmanager
def database(kind: str, tmp_path, cache: dict | None = None, **connect_options):
    """A database of one kind: "memory", "durable" (a data directory) or "remote" (a real gRPC
    server on loopback, on a data directory, through the Python SDK). `database.engine` is the
    embedded database behind it, for checks of internal invariants (the "cluster" kind is the
    `db` fixture's: a front before the session's cluster, see `opened`)."""
    if kind == "cluster":
        raise ValueError("the cluster kind is the `db` fixture's (one front for the session)")
    if kind == "remote":
        from curator_server.app import CuratorServer, ServerConfig

        server = CuratorServer(ServerConfig(data=str(tmp_path / "data"), port=0, cache=cache)).start()
        remote = curator.connect(server.address, **connect_options)
        remote.engine = server.db
        try:
            yield remote
        finally:
            remote.close()
            server.stop()
        return
    with curator.open(":memory:" if kind == "memory" else str(tmp_path / "data"), cache=cache) as embedded:
        embedded.engine = embedded
        yield embedded


KINDS = ["memory", "durable", "remote", "cluster"]


def pytest_collection_modifyitems(config, items):
    """The `db` tests run on an in-memory database, on a data directory, remote, and (in modules
    marked `cluster`) through a cluster front: the cluster kind of other modules is deselected."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        cluster = callspec is not None and callspec.params.get("db") == "cluster"
        (dropped if cluster and not item.get_closest_marker("cluster") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@contextlib.contextmanager
def opened(request, kind: str, tmp_path, **options):
    """`database(kind, ...)`, or for "cluster" a connection to the session's cluster front that
    leaves the cluster as it found it (collections dropped, quotas it set lifted)."""
    if kind != "cluster":
        with database(kind, tmp_path, **options) as db:
            yield db
        return
    from curator_server.app import CuratorServer, ServerConfig

    cluster = request.getfixturevalue("curator_cluster")
    front = CuratorServer(ServerConfig(data=str(tmp_path / "front"), port=0, ray="session", cache=options.get("cache")),
                          cluster=cluster).start()
    remote = curator.connect(front.address, **{k: v for k, v in options.items() if k != "cache"})
    remote.engine = FrontEngine(front.db.local)
    named, set_quota = set(), remote.set_quota

    def recording(tenant, **limits):
        named.add(tenant)
        return set_quota(tenant, **limits)

    remote.set_quota = recording
    try:
        yield remote
    finally:
        for name in remote.list_collections():
            remote.drop_collection(name)
        for tenant in named:
            set_quota(tenant, vectors=None, vector_bytes=None, payload_bytes=None, cache_entries=None)
        remote.close()
        front.stop()


class FrontEngine:
    """What a test may look at behind a cluster front: the front's own embedded database (its
    semantic cache); the shards' engines are out of reach."""
    cluster = True

    def __init__(self, local):
        self.cache = local.cache


@pytest.fixture(params=KINDS)
def db(request, tmp_path):
    with opened(request, request.param, tmp_path) as db:
        yield db


NODE = {"num_cpus": 1, "object_store_memory": 80 << 20}  # a local Ray node: copies move little through the store


@pytest.fixture(scope="session")
def ray_nodes():
    """A local Ray cluster of three nodes (each its own raylet and workers on this machine)."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # CI has no network to report usage to
    nodes = Cluster(initialize_head=True, head_node_args=NODE)
    for _ in range(2):
        nodes.add_node(**NODE)
    ray.init(address=nodes.address, namespace="curator", log_to_driver=False)
    nodes.wait_for_nodes()
    try:
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="session")
def curator_cluster(ray_nodes, tmp_path_factory):
    """A cluster (server/cluster/controller.py) of two shards of two copies on `ray_nodes`, for
    the session; each `db` test of the cluster kind puts a front of its own before it."""
    from curator_server.cluster.controller import Cluster

    root = tmp_path_factory.mktemp("cluster")
    cluster = Cluster(ray_nodes.address, str(root / "front-cluster"), root=str(root / "shards"))
    try:
        yield cluster
    finally:
        cluster.close(destroy=True)


def one_engine(db) -> bool:
    """Whether `db` is one engine, whose memory figures (resident, evicted, offloaded vectors)
    the tests can predict; a cluster's are sums over shard copies, where shared vectors have copies."""
    return not getattr(db.engine, "cluster", False)


def engine(db, col):
    """The embedded collection behind `col` (itself, or the server's for a remote one), once the
    retraining its writes started in the background has finished."""
    if not one_engine(db):
        pytest.skip("checks one engine's internals; a cluster has one per shard copy")
    embedded = db.engine.collection(col.name)
    embedded.retraining.wait()
    return embedded


def clustered(n: int, dim: int, seed: int = 0, centers: int = 8) -> np.ndarray:
    """Gaussian blobs: vectors with clusters, so the tree has structure to find."""
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centers, dim)).astype(np.float32) * 4
    return (middle[rng.integers(0, centers, n)] + rng.standard_normal((n, dim))).astype(np.float32)


def brute_force(vectors: np.ndarray, query: np.ndarray, metric: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact best-first row indices and distances under the metric's convention."""
    if metric == "l2":
        d = ((vectors - query) ** 2).sum(axis=1)
    elif metric == "cosine":
        d = 1 - (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)) @ (query / np.linalg.norm(query))
    else:
        d = -(vectors @ query)
    order = np.argsort(d, kind="stable")[:k]
    return order, d[order]


def cosine_top(vectors: np.ndarray, query: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """Exact best-first row indices by cosine among the rows `mask` allows (fewer than k if
    fewer are allowed): the truth of a filtered search."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    d = 1 - unit @ (query / np.linalg.norm(query))
    d[~mask] = np.inf
    top = np.argsort(d, kind="stable")[:k]
    return top[np.isfinite(d[top])]


def concurrently(call, args: list[tuple]) -> tuple[list, list]:
    """call(*a) for every a in args, each in its own thread, all at once: (results, errors)."""
    results, errors = [], []

    def run(*a):
        try:
            results.append(call(*a))
        except Exception as error:  # noqa: BLE001 - returned to the test
            errors.append(error)

    threads = [threading.Thread(target=run, args=a) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def keys_file(path, keys: dict[str, tuple[str, list[str] | None]]) -> str:
    """A keys file at `path` (0600) with one entry per name -> (key, tenants), None for an admin
    key, written as `curator keygen` writes entries; returns the path."""
    from curator_server.auth import key_entry

    path.write_text("".join(key_entry(name, key, tenants or [], tenants is None) for name, (key, tenants) in keys.items()))
    path.chmod(0o600)
    return str(path)
