"""The indexes Curator is measured against, behind one small interface: build(data), search(q, tenant, k).

- PerTenantHnsw: one hnswlib graph per tenant (a shared vector is copied into each).
- SharedHnswFilter: one hnswlib graph over all vectors, a Python filter callback per tenant.
- BruteForce: exact scan of the tenant's vectors gathered from one shared matrix.
All use cosine distance (1 - cos), like the Curator collections they are compared with.
"""

import hnswlib
import numpy as np

from .data import MultiTenantData


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
