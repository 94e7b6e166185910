"""The indexes Curator is measured against, behind one small interface: build(data), search(q, tenant, k).

- PerTenantHnsw: one hnswlib graph per tenant (a shared vector is copied into each).
- SharedHnswFilter: one hnswlib graph over all vectors, a Python filter callback per tenant.
- BruteForce: exact scan of the tenant's vectors gathered from one shared matrix.
For filtered search (one index, a filter per query set): HnswlibFilter, FaissHnswSelector, ExactScan.
All use cosine distance (1 - cos), like the Curator collections they are compared with.
"""

import hnswlib
import numpy as np

from curator_loadtest.data import MultiTenantData


class PerTenantHnsw:
    name = "per-tenant hnswlib"
    knob = "ef"

    def __init__(self, M: int = 16, ef_construction: int = 200, build_threads: int = 2):
        self.M, self.efc, self.threads = M, ef_construction, build_threads

    def build(self, data: MultiTenantData) -> None:
        self.indexes = []
        for t in range(data.n_tenants):
            members = data.members(t)
            index = hnswlib.Index(space="cosine", dim=data.vectors.shape[1])
            index.init_index(max_elements=members.size, ef_construction=self.efc, M=self.M)
            index.add_items(data.vectors[members], members, num_threads=self.threads)
            index.set_num_threads(1)
            self.indexes.append(index)

    def set_knob(self, ef: int) -> None:
        for index in self.indexes:
            index.set_ef(ef)

    def search(self, q: np.ndarray, t: int, k: int) -> np.ndarray:
        index = self.indexes[t]
        labels, _ = index.knn_query(q, k=min(k, index.get_current_count()), num_threads=1)
        return labels[0]


class SharedHnswFilter:
    name = "shared hnswlib + filter"
    knob = "ef"

    def __init__(self, M: int = 16, ef_construction: int = 200, build_threads: int = 2):
        self.M, self.efc, self.threads = M, ef_construction, build_threads

    def build(self, data: MultiTenantData) -> None:
        self.data = data
        self.index = hnswlib.Index(space="cosine", dim=data.vectors.shape[1])
        self.index.init_index(max_elements=data.vectors.shape[0], ef_construction=self.efc, M=self.M)
        self.index.add_items(data.vectors, np.arange(data.vectors.shape[0]), num_threads=self.threads)
        self.index.set_num_threads(1)
        self._masks: dict[int, np.ndarray] = {}

    def set_knob(self, ef: int) -> None:
        self.index.set_ef(ef)

    def search(self, q: np.ndarray, t: int, k: int) -> np.ndarray:
        mask = self._masks.get(t)
        if mask is None:
            mask = np.zeros(self.data.vectors.shape[0], bool)
            mask[self.data.members(t)] = True
            self._masks[t] = mask
        k = min(k, int(self.data.tenant_sizes()[t]))
        labels, _ = self.index.knn_query(q, k=k, num_threads=1, filter=lambda label: mask[label])
        return labels[0]


class BruteForce:
    name = "brute force per tenant"
    knob = None

    def build(self, data: MultiTenantData) -> None:
        self.data = data
        self.unit = data.vectors / np.linalg.norm(data.vectors, axis=1, keepdims=True)

    def set_knob(self, _):
        pass

    def search(self, q: np.ndarray, t: int, k: int) -> np.ndarray:
        members = self.data.members(t)
        scores = self.unit[members] @ (q / np.linalg.norm(q))
        k = min(k, members.size)
        top = np.argpartition(-scores, k - 1)[:k] if k < members.size else np.arange(members.size)
        return members[top[np.argsort(-scores[top])]]


# ---------------------------------------------------------------------------
# Filtered search over one shared index: build(vectors) once, restrict(rows) once per filter,
# then search(q, k) for each query of that filter. Built graphs can be saved and loaded, so
# that a benchmark re-run does not rebuild them.


def _unit(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30), dtype=np.float32)


class HnswlibFilter:
    """One hnswlib graph over all vectors; a filter is a Python callback on each visited label
    (hnswlib >= 0.8). The callback is a bound builtin (list.__getitem__ over a list of bools),
    the cheapest Python callable, so the cost measured is hnswlib's, not a lambda's."""

    name = "hnswlib + filter callback"
    knob = "ef"

    def __init__(self, M: int = 32, ef_construction: int = 80, build_threads: int = 2):
        self.M, self.efc, self.threads = M, ef_construction, build_threads

    def params(self) -> dict:
        return {"library": "hnswlib", "M": self.M, "ef_construction": self.efc}

    def build(self, vectors: np.ndarray) -> None:
        self.n = vectors.shape[0]
        self.index = hnswlib.Index(space="cosine", dim=vectors.shape[1])
        self.index.init_index(max_elements=self.n, ef_construction=self.efc, M=self.M)
        self.index.add_items(vectors, np.arange(self.n), num_threads=self.threads)
        self.index.set_num_threads(1)

    def save(self, path) -> None:
        self.index.save_index(str(path))

    def load(self, path, vectors: np.ndarray) -> None:
        self.n = vectors.shape[0]
        self.index = hnswlib.Index(space="cosine", dim=vectors.shape[1])
        self.index.load_index(str(path), max_elements=self.n)
        self.index.set_num_threads(1)

    def restrict(self, rows: np.ndarray) -> None:
        mask = np.zeros(self.n, bool)
        mask[rows] = True
        self.allowed = mask.tolist().__getitem__
        self.matches = rows.size

    def set_knob(self, ef: int) -> None:
        self.index.set_ef(ef)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        try:
            labels, _ = self.index.knn_query(q, k=min(k, self.matches), num_threads=1, filter=self.allowed)
        except RuntimeError:  # fewer than k matches reached: hnswlib returns nothing at all
            return np.zeros(0, np.int64)
        return labels[0]


class FaissHnswSelector:
    """faiss IndexHNSWFlat (inner product over unit vectors = cosine) searched with an
    IDSelectorBitmap. The bitmap and selector are built once per filter, not per query.
    Non-matching nodes are still walked, and results are -1-padded when too few are met."""

    name = "faiss HNSW + IDSelectorBitmap"
    knob = "efSearch"

    def __init__(self, M: int = 32, ef_construction: int = 80):
        self.M, self.efc = M, ef_construction

    def params(self) -> dict:
        return {"library": "faiss", "M": self.M, "ef_construction": self.efc}

    def build(self, vectors: np.ndarray) -> None:
        import faiss

        self.index = faiss.IndexHNSWFlat(vectors.shape[1], self.M, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = self.efc
        self.index.add(_unit(vectors))

    def save(self, path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    def load(self, path, vectors: np.ndarray) -> None:
        import faiss

        self.index = faiss.read_index(str(path))

    def restrict(self, rows: np.ndarray) -> None:
        import faiss

        mask = np.zeros(self.index.ntotal, bool)
        mask[rows] = True
        self.bitmap = np.packbits(mask, bitorder="little")  # kept alive: the selector points into it
        self.selector = faiss.IDSelectorBitmap(self.index.ntotal, faiss.swig_ptr(self.bitmap))
        self.set_knob(getattr(self, "ef", 16))

    def set_knob(self, ef: int) -> None:
        import faiss

        self.ef = ef
        if hasattr(self, "selector"):
            self.search_params = faiss.SearchParametersHNSW(sel=self.selector, efSearch=ef)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        _, labels = self.index.search(q.reshape(1, -1), k, params=self.search_params)
        return labels[0]


class ExactScan:
    """Exact cosine scan of the matching vectors: gathered into one matrix once per filter, then
    per query one matrix-vector product and an argpartition."""

    name = "exact scan (numpy)"
    knob = None

    def params(self) -> dict:
        return {}

    def build(self, vectors: np.ndarray) -> None:
        self.unit = _unit(vectors)

    def restrict(self, rows: np.ndarray) -> None:
        self.rows = np.asarray(rows, np.int64)
        self.matrix = np.ascontiguousarray(self.unit[self.rows])

    def set_knob(self, _) -> None:
        pass

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        scores = self.matrix @ q  # ranking by cosine needs no query norm
        k = min(k, scores.size)
        top = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
        return self.rows[top[np.argsort(-scores[top])]]
