"""One partition of the semantic cache: the entries of one (tenant, category, embedding model,
model settings), as an in-memory HNSW graph over their prompt embeddings plus flat arrays.

Isolation is by construction: a lookup searches exactly one partition, so it cannot meet another
tenant's entry. The partition holds no bodies (prompts and answers live in the record store); per
entry it keeps only what a lookup, an expiry sweep or an eviction needs to decide without them:
the entry id, creation and last-use times, use count, size in bytes and a key of the answer.

A partition of up to GRAPH_FROM slots is scanned exactly from a flat matrix of its embeddings: a
hnswlib index costs ~2.5 MB however small it is (65 536 label locks), which a cache of many
tenants and categories, most of them small, cannot pay (measured: 1 260 small partitions of a
load test grew the server by 3 GB). Past GRAPH_FROM slots the matrix becomes an HNSW graph.

Labels in the graph are slots of the arrays; a removed entry's slot is marked deleted in the
graph and reused by the next add (hnswlib's replace_deleted), so a partition does not grow with
churn. Not thread-safe by itself: the cache holds its group's lock around every call.
"""

import hnswlib
import numpy as np

GRAPH_M = 16
GRAPH_EF_CONSTRUCTION = 100
GRAPH_EF_SEARCH = 64
GRAPH_FROM = 1024  # slots past which a partition is a graph rather than a matrix scanned exactly


class Partition:
    def __init__(self, dim: int, capacity: int = 64):
        self.dim = dim
        self._graph: hnswlib.Index | None = None  # from GRAPH_FROM slots on
        self._vectors: np.ndarray | None = np.zeros((capacity, dim), np.float32)  # until then
        self.entry_ids = np.full(capacity, -1, np.int64)   # slot -> entry id; -1: free
        self.created = np.zeros(capacity)
        self.expires = np.full(capacity, np.inf)  # the end of an entry's own ttl (store_chat); inf: none
        self.last_used = np.zeros(capacity)
        self.uses = np.zeros(capacity, np.int64)
        self.nbytes = np.zeros(capacity, np.int64)
        self.answer_keys = np.zeros(capacity, np.uint64)
        self._slots_used = 0          # slots ever handed out (graph elements, live or deleted)
        self._free: list[int] = []    # deleted slots, reused first
        self.live = 0
        self.bytes = 0

    # -- writing -------------------------------------------------------------------------------

    def add(self, entry_ids: np.ndarray, embeddings: np.ndarray, created: np.ndarray,
            nbytes: np.ndarray, answer_keys: np.ndarray, expires: np.ndarray | None = None) -> np.ndarray:
        """Add entries; returns their slots. `expires`: when each entry's own ttl ends (inf: none)."""
        n = len(entry_ids)
        reused = [self._free.pop() for _ in range(min(n, len(self._free)))]
        fresh = np.arange(self._slots_used, self._slots_used + n - len(reused))
        self._reserve(self._slots_used + fresh.size)
        self._slots_used += fresh.size
        slots = np.concatenate([np.asarray(reused, np.int64), fresh]).astype(np.int64)
        if self._graph is None:
            self._vectors[slots] = embeddings
            if self._slots_used > GRAPH_FROM:
                self._grow_graph()
        else:
            if reused:
                self._graph.add_items(embeddings[: len(reused)], slots[: len(reused)], replace_deleted=True)
            if fresh.size:
                self._graph.add_items(embeddings[len(reused):], fresh)
        self.entry_ids[slots] = entry_ids
        self.created[slots] = created
        self.expires[slots] = np.inf if expires is None else expires
        self.last_used[slots] = created
        self.uses[slots] = 0
        self.nbytes[slots] = nbytes
        self.answer_keys[slots] = answer_keys
        self.live += n
        self.bytes += int(np.sum(nbytes))
        return slots

    def remove(self, slots: np.ndarray) -> np.ndarray:
        """Remove entries by slot (each once); returns their entry ids."""
        slots = np.unique(np.asarray(slots, np.int64))
        slots = slots[self.entry_ids[slots] >= 0]
        if self._graph is not None:
            for slot in slots.tolist():
                self._graph.mark_deleted(slot)
        self._free.extend(slots.tolist())
        removed = self.entry_ids[slots].copy()
        self.entry_ids[slots] = -1
        self.live -= slots.size
        self.bytes -= int(self.nbytes[slots].sum())
        return removed

    def touch(self, slot: int, now: float) -> None:
        self.last_used[slot] = now
        self.uses[slot] += 1

    # -- reading -------------------------------------------------------------------------------

    def nearest(self, embedding: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Slots of up to m nearest live entries and their cosine similarities, best first."""
        m = min(m, self.live)
        if self._graph is None:
            return self._scan(embedding, m)
        while m > 0:
            try:
                labels, distances = self._graph.knn_query(embedding, k=m, num_threads=1)
                return labels[0].astype(np.int64), 1.0 - distances[0]  # ip space: distance = 1 - dot
            except RuntimeError:  # fewer than m reachable past deleted nodes: ask for fewer
                m //= 2
        return np.empty(0, np.int64), np.empty(0, np.float32)

    def _scan(self, embedding: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        if m <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        used = self._slots_used
        similarity = self._vectors[:used] @ np.asarray(embedding, np.float32).reshape(-1)
        similarity[self.entry_ids[:used] < 0] = -np.inf
        best = np.argpartition(-similarity, m - 1)[:m] if m < used else np.arange(used)
        best = best[np.argsort(-similarity[best], kind="stable")][:m]
        return best.astype(np.int64), similarity[best]

    def expired(self, now: float, ttl: float | None) -> np.ndarray:
        """Slots of live entries older than ttl, or past the end of their own ttl."""
        if self.live == 0:
            return np.empty(0, np.int64)
        used = slice(0, self._slots_used)
        past = self.expires[used] < now
        if ttl is not None:
            past |= now - self.created[used] > ttl
        return np.flatnonzero((self.entry_ids[used] >= 0) & past)

    def victims(self, n: int, eviction: str) -> np.ndarray:
        """The n live slots to evict first: least recently used, or least used (then oldest use)."""
        live = np.flatnonzero(self.entry_ids[: self._slots_used] >= 0)
        n = min(n, live.size)
        if n == 0:
            return live[:0]
        if eviction == "lfu":
            order = np.lexsort((self.last_used[live], self.uses[live]))
        else:
            order = np.argsort(self.last_used[live], kind="stable")
        return live[order[:n]]

    def live_slots(self) -> np.ndarray:
        return np.flatnonzero(self.entry_ids[: self._slots_used] >= 0)

    @property
    def memory_bytes(self) -> int:
        """The matrix, or the graph's vectors and links (an estimate from hnswlib's layout), and the
        per-entry arrays."""
        arrays = self.entry_ids.nbytes * 7
        if self._graph is None:
            return self._vectors.nbytes + arrays
        per_element = 4 * self.dim + 8 + 4 * (2 * GRAPH_M + 1) + 8
        return len(self.entry_ids) * per_element + arrays

    # -- growing -------------------------------------------------------------------------------

    def _reserve(self, needed: int) -> None:
        capacity = len(self.entry_ids)
        if needed <= capacity:
            return
        grown = max(needed, 2 * capacity)
        if self._graph is not None:
            self._graph.resize_index(grown)
        else:
            vectors = np.zeros((grown, self.dim), np.float32)
            vectors[:capacity] = self._vectors
            self._vectors = vectors
        for name in ("entry_ids", "created", "expires", "last_used", "uses", "nbytes", "answer_keys"):
            old = getattr(self, name)
            new = np.full(grown, {"entry_ids": -1, "expires": np.inf}.get(name, 0), old.dtype)
            new[:capacity] = old
            setattr(self, name, new)

    def _grow_graph(self) -> None:
        """The matrix becomes an HNSW graph over the same slots (free ones marked deleted, for reuse)."""
        used = self._slots_used
        self._graph = hnswlib.Index(space="ip", dim=self.dim)
        self._graph.init_index(max_elements=len(self.entry_ids), ef_construction=GRAPH_EF_CONSTRUCTION,
                               M=GRAPH_M, allow_replace_deleted=True)
        self._graph.set_ef(GRAPH_EF_SEARCH)
        self._graph.add_items(self._vectors[:used], np.arange(used), num_threads=1)
        for slot in self._free:
            self._graph.mark_deleted(slot)
        self._vectors = None
