"""The shared clustering tree: hierarchical k-means over all of a collection's vectors.

Every tenant's own tree is a sub-tree of this one (see `tenancy`). The tree is flat arrays:
node centroids in one matrix, children as CSR, and each node's path from the root, so that
routing a vector to its leaf and mapping a leaf to an ancestor at any depth are array lookups.

Nodes split by k-means (faiss) while they hold more than `leaf_size` training vectors, into at
most `branching` children. A tree with only a root is the untrained state: one leaf holding
everything, which makes each tenant's sub-tree a single shortlist searched exhaustively.

Training must never hand faiss a vector whose squared norm overflows float32: its k-means then
finds no nearest centroid for it and throws inside an OpenMP loop, which aborts the process (no
exception reaches Python). `validate` refuses such vectors, but a data directory written before
it did may hold some, so `train` leaves them out and `route` places them anywhere.
"""

import contextlib
from dataclasses import dataclass

import faiss
import numpy as np

from . import device
from .errors import CuratorError
from .metric import Metric, within_norm_bound

MAX_DEPTH = 8


@dataclass(frozen=True)
class TreeShape:
    branching: int = 32
    leaf_size: int = 64
    kmeans_iterations: int = 20
    seed: int = 1234


class ClusteringTree:
    def __init__(self, centroids: np.ndarray, parent: np.ndarray, metric: Metric, distortion: float = 0.0):
        self.centroids = np.ascontiguousarray(centroids, np.float32)
        self.parent = np.ascontiguousarray(parent, np.int32)
        self.metric = metric
        self.distortion = distortion  # mean routing distance of the training vectors
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
    def train(cls, sample: np.ndarray, metric: Metric, shape: TreeShape = TreeShape()) -> "ClusteringTree":
        """Hierarchical k-means over `sample` (already prepared for the metric), less its rows
        beyond `metric.MAX_SQUARED_NORM` (stored before that bound was enforced)."""
        sample = np.ascontiguousarray(sample, np.float32)
        dim = sample.shape[1]
        usable = within_norm_bound(sample)
        if not usable.all():
            sample = sample[usable]
        if sample.shape[0] == 0:
            return cls.untrained(dim, metric)
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
                min_points_per_centroid=1, max_points_per_centroid=256, gpu=device.faiss_gpus() > 0,
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
            nearest = _nearest(vectors, self._leaf_index)  # -1 where no centroid was nearer than inf
            leaf = self.leaves[np.maximum(nearest, 0)]
            centers = self.centroids[leaf]
        with np.errstate(over="ignore", invalid="ignore"):  # only rows stored before the bound overflow
            sqdist = np.square(vectors - centers).sum(axis=1, dtype=np.float64)
        return leaf.astype(np.int32), sqdist

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.centroids, self.parent, self.depth, self.child_start, self.child_ids, self.paths))


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
