"""The shared clustering tree: hierarchical k-means over all of a collection's vectors.

Every tenant's own tree is a sub-tree of this one (see `tenancy`). The tree is flat arrays:
node centroids in one matrix, children as CSR, and each node's path from the root, so that
routing a vector to its leaf and mapping a leaf to an ancestor at any depth are array lookups.

Nodes split by k-means while they hold more than `leaf_size` training vectors, into at most
`branching` children. A tree with only a root is the untrained state: one leaf holding
everything, which makes each tenant's sub-tree a single shortlist searched exhaustively.

k-means runs in one of two ways with the same rules (a node's k, its training subsample of at
most 256 vectors a centroid, the iterations, children for the clusters that received vectors,
every member assigned to its nearest centroid): faiss, node by node, on the CPU (or on faiss's
GPUs where faiss-gpu is installed and a CUDA device is selected); or on a `device.Device`
(`_train_on_device`), all the nodes of one level at once as batched matrix products over an
array module `xp` (cupy on a GPU, numpy in the tests). A tree trained on a device routes large
batches there too (`route`). A device error falls back to the CPU path.

Training must never hand faiss a vector whose squared norm overflows float32: its k-means then
finds no nearest centroid for it and throws inside an OpenMP loop, which aborts the process (no
exception reaches Python). `validate` refuses such vectors, but a data directory written before
it did may hold some, so `train` leaves them out and `route` places them anywhere.
"""

import contextlib
import logging
from dataclasses import dataclass

import faiss
import numpy as np

from . import device as devices
from .distance import flat_rows
from .errors import CuratorError
from .metric import Metric, within_norm_bound

log = logging.getLogger("curator")

MAX_DEPTH = 8
MAX_POINTS_PER_CENTROID = 256  # k-means trains a node on at most this many of its vectors per centroid
ROUTE_ON_DEVICE = 4096  # a trained-on-device tree routes batches of at least this many vectors there


@dataclass(frozen=True)
class TreeShape:
    branching: int = 32
    leaf_size: int = 64
    kmeans_iterations: int = 20
    seed: int = 1234


class ClusteringTree:
    def __init__(self, centroids: np.ndarray, parent: np.ndarray, metric: Metric, distortion: float = 0.0):
        # flat: the centroids end to end and distance.SPAN spare zeros, which tenant scans read (search.py)
        self.flat, self.centroids = flat_rows(*np.shape(centroids), np.float32)
        self.centroids[:] = centroids
        self.parent = np.ascontiguousarray(parent, np.int32)
        self.metric = metric
        self.distortion = distortion  # mean routing distance of the training vectors
        self.device = None  # the devices.Device it was trained on (not the CPU): routes large batches there
        self.trained_on = "cpu"
        n = self.parent.shape[0]
        self.depth = np.zeros(n, np.int32)
        for node in range(1, n):  # parents precede children: one pass over nodes, not vectors
            self.depth[node] = self.depth[self.parent[node]] + 1
        order = np.argsort(self.parent[1:], kind="stable") + 1
        counts = np.bincount(self.parent[1:], minlength=n)
        self.child_start = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=self.child_start[1:])
        self.child_ids = order.astype(np.int32)
        self.is_leaf = counts == 0
        self.leaves = np.flatnonzero(self.is_leaf).astype(np.int32)
        self._leaf_index = _flat_index(self.centroids[self.leaves], metric)
        self.paths = np.full((n, int(self.depth.max()) + 1), -1, np.int32)
        for node in range(n):
            parent_path = self.paths[self.parent[node]] if node else self.paths[0]
            d = self.depth[node]
            self.paths[node, :d] = parent_path[:d]
            self.paths[node, d] = node

    @property
    def n_nodes(self) -> int:
        return self.parent.shape[0]

    @property
    def trained(self) -> bool:
        return self.n_nodes > 1

    def children(self, node: int) -> np.ndarray:
        return self.child_ids[self.child_start[node] : self.child_start[node + 1]]

    @classmethod
    def untrained(cls, dim: int, metric: Metric) -> "ClusteringTree":
        return cls(np.zeros((1, dim), np.float32), np.zeros(1, np.int32), metric)

    @classmethod
    def train(cls, sample: np.ndarray, metric: Metric, shape: TreeShape = TreeShape(),
              device: "devices.Device | None" = None) -> "ClusteringTree":
        """Hierarchical k-means over `sample` (already prepared for the metric), less its rows
        beyond `metric.MAX_SQUARED_NORM` (stored before that bound was enforced). On `device`
        when it is accelerated (and faiss has no GPU of its own to use), else with faiss."""
        sample = np.ascontiguousarray(sample, np.float32)
        dim = sample.shape[1]
        usable = within_norm_bound(sample)
        if not usable.all():
            sample = sample[usable]
        if sample.shape[0] == 0:
            return cls.untrained(dim, metric)
        faiss_gpu = device is not None and device.name == "cuda" and devices.faiss_gpus() > 0
        if device is not None and device.accelerated and not faiss_gpu:
            try:
                return _train_on_device(cls, sample, metric, shape, device)
            except Exception as error:  # noqa: BLE001 - the CPU path trains the same tree
                if device.name == "numpy":
                    raise  # no device to blame: a bug
                log.warning("training the shared tree on %s failed (%s: %s); training on the CPU instead",
                            device.label, type(error).__name__, error)
                device.free_cached()
        centroids = [sample.mean(axis=0)]
        parents = [0]
        pending = [(0, np.arange(sample.shape[0]), 0)]
        while pending:
            node, members, depth = pending.pop()
            if members.size <= shape.leaf_size or depth >= MAX_DEPTH:
                continue
            k = int(min(shape.branching, -(-members.size // shape.leaf_size)))
            k = max(k, 2)
            x = sample[members]
            kmeans = faiss.Kmeans(
                dim, k, niter=shape.kmeans_iterations, seed=shape.seed + node,
                spherical=metric is not Metric.L2, verbose=False,
                min_points_per_centroid=1, max_points_per_centroid=MAX_POINTS_PER_CENTROID, gpu=faiss_gpu,
            )
            with _native("k-means of the shared tree"):
                kmeans.train(x)
            assign = _nearest(x, _flat_index(kmeans.centroids, metric))
            used = np.unique(assign)
            if used.size < 2:  # k-means could not separate these vectors (duplicates): keep a leaf
                continue
            for c in used:
                child = len(centroids)
                centroids.append(kmeans.centroids[c])
                parents.append(node)
                pending.append((child, members[assign == c], depth + 1))
        tree = cls(np.stack(centroids), np.array(parents, np.int32), metric)
        if faiss_gpu:
            tree.trained_on = "cuda"
        _, dists = tree.route(sample)
        tree.distortion = float(dists.mean()) if dists.size else 0.0
        return tree

    def route(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Leaf of each vector (the nearest leaf centroid) and its squared L2 distance to it, in
        float64 (the sum over many vectors must not overflow).

        Nearest over all leaves, not greedy descent: a vector misplaced by an early wrong turn
        would be missed by every search that ranks leaves by centroid distance. A vector stored
        before the norm bound, whose distance to every centroid overflows, goes to the first leaf
        (any one keeps it findable: it is in exactly one) at distance inf.
        """
        vectors = np.ascontiguousarray(vectors, np.float32)
        if not self.trained:
            leaf, centers = np.zeros(vectors.shape[0], np.int32), self.centroids[0]
        else:
            nearest = None
            if self.device is not None and vectors.shape[0] >= ROUTE_ON_DEVICE:
                try:
                    nearest = _nearest_on(self.device, vectors, self.centroids[self.leaves], self.metric)
                except Exception as error:  # noqa: BLE001 - faiss routes the same way
                    log.warning("routing on %s failed (%s: %s); routing on the CPU", self.device.label,
                                type(error).__name__, error)
                    self.device.free_cached()
            if nearest is None:
                nearest = _nearest(vectors, self._leaf_index)  # -1 where no centroid was nearer than inf
            leaf = self.leaves[np.maximum(nearest, 0)]
            centers = self.centroids[leaf]
        with np.errstate(over="ignore", invalid="ignore"):  # only rows stored before the bound overflow
            sqdist = np.square(vectors - centers).sum(axis=1, dtype=np.float64)
        return leaf.astype(np.int32), sqdist

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.flat, self.parent, self.depth, self.child_start, self.child_ids, self.paths))


def _flat_index(centroids: np.ndarray, metric: Metric) -> faiss.Index:
    index = faiss.IndexFlatL2(centroids.shape[1]) if metric is Metric.L2 else faiss.IndexFlatIP(centroids.shape[1])
    with _native("indexing the shared tree's centroids"):
        index.add(np.ascontiguousarray(centroids, np.float32))
    return index


def _nearest(x: np.ndarray, index: faiss.Index) -> np.ndarray:
    with _native("routing vectors through the shared tree"):
        _, assign = index.search(x, 1)
    return assign[:, 0]


@contextlib.contextmanager
def _native(step: str):
    """faiss's C++ exceptions arrive as RuntimeError; make them the engine's own error. (One thrown
    inside faiss's OpenMP loops cannot arrive at all, it aborts: hence the clean sample in `train`.)"""
    try:
        yield
    except RuntimeError as error:
        raise CuratorError(f"{step} failed in faiss ({error}); the shared tree was left as it was") from error


# -- k-means on a device: every node of a level at once --------------------------------------------


def _train_on_device(cls, sample: np.ndarray, metric: Metric, shape: TreeShape, device) -> ClusteringTree:
    """The tree `train` makes with faiss, made level by level on `device`: the nodes of a level
    that split run their k-means together, padded into batches of similar size (`_kmeans_batch`).
    Nodes are numbered level by level (parents still precede children)."""
    xp = device.xp
    x = xp.asarray(sample)
    centroids = [sample.mean(axis=0)]
    parents = [0]
    level = [(0, np.arange(sample.shape[0]))]
    depth = 0
    while level and depth < MAX_DEPTH:
        splitting = [(node, members) for node, members in level if members.size > shape.leaf_size]
        level = []
        for node, members, centers, assign in _kmeans_level(x, splitting, metric, shape, device):
            used, inverse = np.unique(assign, return_inverse=True)
            if used.size < 2:  # k-means could not separate these vectors (duplicates): keep a leaf
                continue
            order = np.argsort(inverse, kind="stable")
            groups = np.split(members[order], np.cumsum(np.bincount(inverse))[:-1])
            for c, group in zip(used.tolist(), groups):
                level.append((len(centroids), group))
                centroids.append(centers[c])
                parents.append(node)
        depth += 1
    tree = cls(np.stack(centroids), np.array(parents, np.int32), metric)
    tree.device, tree.trained_on = device, device.name
    _, dists = tree.route(sample)
    tree.distortion = float(dists.mean()) if dists.size else 0.0
    return tree


def _kmeans_level(x, splitting: list, metric: Metric, shape: TreeShape, device):
    """(node, members, centroids (k, dim) numpy, assignment of every member) for each node of a
    level that splits. Nodes are batched by the size of their training sets (powers of two), each
    batch cut to fit the device's scratch memory."""
    if not splitting:
        return []
    dim = x.shape[1]
    plans = []
    for node, members in splitting:
        k = max(2, int(min(shape.branching, -(-members.size // shape.leaf_size))))
        rng = np.random.default_rng(shape.seed + node)
        train = members
        if members.size > k * MAX_POINTS_PER_CENTROID:  # as faiss: a subsample of 256 vectors a centroid
            train = members[np.sort(rng.choice(members.size, k * MAX_POINTS_PER_CENTROID, replace=False))]
        init = train[rng.choice(train.size, k, replace=False)]
        plans.append((node, members, k, train, init))
    out = {}
    plans.sort(key=lambda plan: plan[3].size)
    for batch in _batches(plans, lambda plan: plan[3].size, dim, shape.branching, device):
        trained = _kmeans_batch(x, [p[3] for p in batch], [p[4] for p in batch], metric, shape.kmeans_iterations,
                                device.xp)
        for plan, centers in zip(batch, trained):
            out[plan[0]] = (plan, centers)
    results = []
    finals = sorted(out.values(), key=lambda item: item[0][1].size)
    for batch in _batches(finals, lambda item: item[0][1].size, dim, shape.branching, device):
        assigned = _assign_batch(x, [item[0][1] for item in batch], [item[1] for item in batch], metric, device.xp)
        for (plan, centers), assign in zip(batch, assigned):
            results.append((plan[0], plan[1], centers, assign))
    results.sort(key=lambda r: r[0])  # node order: children numbered as the level's nodes are
    return results


def _batches(items: list, size, dim: int, max_k: int, device):
    """Consecutive runs of `items` (sorted by size) of one power-of-two padded size, each within
    the device's scratch memory (the padded vectors and the per-vector, per-centroid arrays)."""
    batch, padded = [], 0
    for item in items:
        pad = 1 << max(int(size(item)) - 1, 0).bit_length()
        fits = (len(batch) + 1) * pad * (dim + 3 * max_k) * 4 <= device.scratch_bytes
        if batch and (pad != padded or not fits):
            yield batch
            batch = []
        batch.append(item)
        padded = pad
    if batch:
        yield batch


def _padded(xp, index_lists: list):
    """Index lists as one (B, M) matrix padded with 0, and its mask of real entries, on xp."""
    width = max(ids.size for ids in index_lists)
    idx = np.zeros((len(index_lists), width), np.int64)
    valid = np.zeros((len(index_lists), width), bool)
    for b, ids in enumerate(index_lists):  # a loop per node of the batch, not per vector
        idx[b, : ids.size] = ids
        valid[b, : ids.size] = True
    return xp.asarray(idx), xp.asarray(valid)


def _scores(xp, points, centers, center_ok, metric: Metric):
    """(B, M, K) of what each point's nearest centroid minimises: |c|^2 - 2<x, c> under L2,
    -<x, c> for spherical centroids; +inf for padded centroids."""
    dots = xp.matmul(points, centers.transpose(0, 2, 1))
    if metric is Metric.L2:
        scores = (centers * centers).sum(axis=2)[:, None, :] - 2 * dots
    else:
        scores = -dots
    return xp.where(center_ok[:, None, :], scores, xp.float32(np.inf))


def _kmeans_batch(x, trains: list, inits: list, metric: Metric, iterations: int, xp) -> list:
    """Lloyd's k-means of several nodes at once: node b's vectors x[trains[b]] from the centroids
    x[inits[b]]. An emptied cluster takes the vector farthest from its centroid (the e-th
    farthest for the e-th emptied one of the node). Spherical (unit centroids) except under L2.
    Returns each node's centroids as numpy arrays."""
    idx, valid = _padded(xp, trains)
    init_idx, center_ok = _padded(xp, inits)
    points = x[idx]  # (B, M, dim)
    centers = x[init_idx]  # (B, K, dim)
    spherical = metric is not Metric.L2
    if spherical:
        centers = _unit(xp, centers)
    n_centers = center_ok.shape[1]
    arange_k = xp.arange(n_centers)
    weights = valid.astype(xp.float32)
    for _ in range(iterations):
        scores = _scores(xp, points, centers, center_ok, metric)
        assign = scores.argmin(axis=2)
        onehot = (assign[:, :, None] == arange_k[None, None, :]).astype(xp.float32) * weights[:, :, None]
        sums = xp.matmul(onehot.transpose(0, 2, 1), points)
        counts = onehot.sum(axis=1)
        updated = sums / xp.maximum(counts, 1)[:, :, None]
        empty = (counts == 0) & center_ok
        if bool(empty.any()):
            own = xp.take_along_axis(scores, assign[:, :, None], axis=2)[:, :, 0]
            if metric is Metric.L2:
                own = own + (points * points).sum(axis=2)
            own = xp.where(valid, own, -xp.float32(np.inf))
            farthest = xp.argsort(-own, axis=1)  # (B, M): farthest first
            rank = xp.clip(xp.cumsum(empty, axis=1) - 1, 0, farthest.shape[1] - 1)
            pick = xp.take_along_axis(farthest, rank, axis=1)  # (B, K)
            replacement = xp.take_along_axis(points, pick[:, :, None], axis=1)
            updated = xp.where(empty[:, :, None], replacement, updated)
        centers = _unit(xp, updated) if spherical else updated
    host = centers.get() if hasattr(centers, "get") else centers
    return [host[b, : init.size].astype(np.float32) for b, init in enumerate(inits)]


def _assign_batch(x, member_lists: list, centers: list, metric: Metric, xp) -> list:
    """Each member's nearest centroid of its own node, for several nodes at once (numpy arrays)."""
    idx, _ = _padded(xp, member_lists)
    width = max(c.shape[0] for c in centers)
    padded = np.zeros((len(centers), width, x.shape[1]), np.float32)
    ok = np.zeros((len(centers), width), bool)
    for b, c in enumerate(centers):
        padded[b, : c.shape[0]] = c
        ok[b, : c.shape[0]] = True
    assign = _scores(xp, x[idx], xp.asarray(padded), xp.asarray(ok), metric).argmin(axis=2)
    host = assign.get() if hasattr(assign, "get") else assign
    return [host[b, : members.size] for b, members in enumerate(member_lists)]


def _unit(xp, centers):
    norms = xp.sqrt((centers * centers).sum(axis=-1, keepdims=True))
    return centers / xp.where(norms > 0, norms, 1)


def _nearest_on(device, vectors: np.ndarray, centers: np.ndarray, metric: Metric) -> np.ndarray:
    """The nearest of `centers` to each vector (as `_nearest`, by L2, or by inner product for
    spherical centroids), on `device`, in chunks that fit its scratch memory."""
    xp = device.xp
    c = xp.asarray(centers)
    c_norms = (c * c).sum(axis=1)
    rows = max(1, device.scratch_bytes // (4 * (centers.shape[0] + vectors.shape[1]) * 2))
    out = np.empty(vectors.shape[0], np.int64)
    for start in range(0, vectors.shape[0], rows):
        v = xp.asarray(vectors[start : start + rows])
        dots = v @ c.T
        best = (c_norms[None, :] - 2 * dots).argmin(axis=1) if metric is Metric.L2 else dots.argmax(axis=1)
        out[start : start + rows] = device.to_host(best)
    return out
