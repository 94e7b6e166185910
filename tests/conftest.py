import contextlib
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
    embedded database behind it, for checks of internal invariants."""
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


@pytest.fixture(params=["memory", "durable", "remote"])
def db(request, tmp_path):
    """The same API tests run on an in-memory database, on a data directory, and remote."""
    with database(request.param, tmp_path) as opened:
        yield opened


def engine(db, col):
    """The embedded collection behind `col` (itself, or the server's for a remote one), once the
    retraining its writes started in the background has finished."""
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
