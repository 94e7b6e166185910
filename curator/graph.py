"""An HNSW graph over a whole collection (faiss IndexHNSWFlat), for unfiltered and broad filtered search.

faiss builds and grows the graph; searches run in `graph_search.py`, compiled, on faiss's arrays
read in place. The graph's nodes are numbered in the order vectors were added; `node_slot` maps
a node to the vector store's slot (-1: the vector was deleted or changed, the node is dead).
faiss HNSW cannot remove nodes, so a deleted vector's node stays in the graph as a waypoint that
a search never returns: every search passes a bitmap of the nodes it may return (live, the
tenant's, matching the filter), built with numpy and tested inside the compiled search, never in
Python per node. When dead nodes outnumber live ones the graph is rebuilt.

The graph is built on first need (or when the collection is created with hnsw=True and vectors
arrive), then kept in step with every write by the index.
"""

import copy
import threading

import faiss
import numpy as np

from . import graph_search
from .metric import Metric

_EVERY_NODE = np.zeros(0, np.uint8)
_UNCOUNTED = np.zeros(1, np.int64)  # visits of searches nobody counts (threads may race on it: unread)


class Graph:
    def __init__(self, dim: int, metric: Metric, m: int = 32, ef_construction: int = 80):
        self.dim, self.metric, self.m, self.ef_construction = dim, metric, m, ef_construction
        faiss_metric = faiss.METRIC_L2 if metric is Metric.L2 else faiss.METRIC_INNER_PRODUCT
        self.index = faiss.IndexHNSWFlat(dim, m, faiss_metric)
        self.index.hnsw.efConstruction = ef_construction
        self.node_slot = np.zeros(0, np.int64)
        self.slot_node = np.zeros(0, np.int64)
        self.dead = 0
        self._counted()
        self._arrays = None  # faiss's arrays as numpy views; remade after every add (they move)
        # Per searching thread (searches run side by side): a byte per node, the stamp of the last
        # search that met it, and that stamp (`_visited`).
        self._marks = threading.local()
        self._metric = int(metric)

    @classmethod
    def adopting(cls, index: faiss.IndexHNSWFlat, slots: np.ndarray, metric: Metric, m: int,
                 ef_construction: int) -> "Graph":
        """A Graph over a faiss index built elsewhere (`knn_graph.build_hnsw`), its node i the
        vector of slots[i]; it grows by faiss's own adds from then on."""
        graph = cls(index.d, metric, m, ef_construction)
        index.hnsw.efConstruction = ef_construction
        graph.index = index
        graph.node_slot = np.array(slots, np.int64)
        graph.slot_node = np.full(max(int(slots.max(initial=-1)) + 1, 1), -1, np.int64)
        graph.slot_node[graph.node_slot] = np.arange(slots.size)
        graph._counted()
        return graph

    def _counted(self) -> None:
        """n_live and needs_rebuild after the nodes or the dead changed: plain attributes, since
        every graph search reads them (a property costs a Python call each time)."""
        self.n_live = self.node_slot.size - self.dead
        self.needs_rebuild = self.dead > max(self.n_live, 1000)

    def add(self, slots: np.ndarray, prepared: np.ndarray) -> None:
        """Add vectors (prepared for the metric: unit length under cosine) for these slots."""
        if slots.size == 0:
            return
        self.forget(slots)  # a changed vector: its old node dies
        first = self.node_slot.size
        self.index.add(np.ascontiguousarray(prepared, np.float32))
        self._arrays = None
        self.node_slot = np.concatenate([self.node_slot, slots])
        if slots.max() >= self.slot_node.size:
            grown = np.full(max(int(slots.max()) + 1, self.slot_node.size * 3 // 2), -1, np.int64)
            grown[: self.slot_node.size] = self.slot_node
            self.slot_node = grown
        self.slot_node[slots] = np.arange(first, first + slots.size)
        self._counted()

    def forget(self, slots: np.ndarray) -> None:
        """The vectors of these slots are gone (or changing): their nodes die."""
        slots = slots[slots < self.slot_node.size]
        nodes = self.slot_node[slots]
        nodes = nodes[nodes >= 0]
        self.node_slot[nodes] = -1
        self.slot_node[slots[self.slot_node[slots] >= 0]] = -1
        self.dead += nodes.size
        self._counted()

    def renumber(self, old_slots: np.ndarray, n_slots: int) -> None:
        """The store moved slot old_slots[i] to slot i (after training): follow it."""
        new_of_old = np.full(max(self.slot_node.size, int(old_slots.max(initial=-1)) + 1), -1, np.int64)
        new_of_old[old_slots] = np.arange(old_slots.size)
        live = self.node_slot >= 0
        self.node_slot[live] = new_of_old[self.node_slot[live]]
        self.slot_node = np.full(max(n_slots, 1), -1, np.int64)
        alive = np.flatnonzero(self.node_slot >= 0)
        self.slot_node[self.node_slot[alive]] = alive

    def renumbered(self, old_slots: np.ndarray, n_slots: int) -> "Graph":
        """`renumber` as a new Graph sharing faiss's index, this one left as it was (it may be
        searched meanwhile)."""
        new = copy.copy(self)
        new.node_slot = self.node_slot.copy()
        new.renumber(old_slots, n_slots)
        return new

    def bitmap(self, allowed: np.ndarray) -> np.ndarray:
        """The selector bitmap of the live nodes whose slots are allowed (a bool mask over slots)."""
        ok = self.node_slot >= 0
        ok[ok] = allowed[self.node_slot[ok]]
        return np.packbits(ok, bitorder="little")

    def search(self, query: np.ndarray, k: int, ef: int, bitmap: np.ndarray | None, visits: np.ndarray | None = None):
        """Up to k (slots, distances) among the nodes of `bitmap` (from `bitmap()`; None: every
        node, when none is dead), best first; distances are smaller-is-better as everywhere
        (`curator.metric`). `query` is prepared for the metric, as the graph's vectors are.
        `visits` (an int64 array of one), when given, counts the distances computed."""
        arrays = self._arrays or self._views()
        slots = np.empty(k, np.int64)
        dists = np.empty(k, np.float32)
        found = graph_search.search(
            query, k, ef, self._metric, *arrays, _EVERY_NODE if bitmap is None else bitmap,
            self._visited(arrays[0].shape[0]), self.node_slot, slots, dists, _UNCOUNTED if visits is None else visits)
        return (slots, dists) if found == k else (slots[:found], dists[:found])

    def _views(self):
        """faiss's vectors and links as numpy arrays over its own memory (valid until the next add)."""
        if self._arrays is None:
            hnsw, n = self.index.hnsw, self.index.ntotal
            storage = faiss.downcast_index(self.index.storage)
            vectors = faiss.rev_swig_ptr(storage.codes.data(), storage.codes.size()).view(np.float32)
            self._arrays = (vectors.reshape(n, self.dim) if n else np.zeros((0, self.dim), np.float32),
                            faiss.rev_swig_ptr(hnsw.neighbors.data(), hnsw.neighbors.size()),
                            faiss.rev_swig_ptr(hnsw.offsets.data(), hnsw.offsets.size()).view(np.int64),
                            faiss.vector_to_array(hnsw.cum_nneighbor_per_level).astype(np.int64),
                            int(hnsw.entry_point), int(hnsw.max_level))
        return self._arrays

    def _visited(self, n: int) -> np.ndarray:
        """This thread's visit marks for n nodes: a byte per node, the stamp of the last search
        that met it, and one byte more, that last search's stamp (the search advances it)."""
        visited = getattr(self._marks, "visited", None)
        if visited is None or visited.size <= n:
            visited = self._marks.visited = np.zeros(max(n + 1, 1024, 0 if visited is None else visited.size * 3 // 2),
                                                     np.uint8)
        return visited

    @property
    def nbytes(self) -> int:
        links = self.index.hnsw.neighbors.size() * 4
        return links + self.index.ntotal * self.dim * 4 + self.node_slot.nbytes + self.slot_node.nbytes
