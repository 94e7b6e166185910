"""The data a load test runs on: GloVe vectors with tenants (`data`), loaded once.

`wordnet` is GloVe x WordNet (~39k vectors, ~420 real, overlapping tenants); `zipf` is the first
`vectors` GloVe rows with `tenants` synthetic tenants of Zipf sizes. Every vector also gets a
payload (`workload.payloads_of`) so that filtered searches have something to filter.
"""

import time

import numpy as np

from . import data as D
from .workload import WorkloadData, payloads_of

DATASETS = ("wordnet", "zipf")


def build(name: str, vectors: int | None = None, tenants: int | None = None) -> D.MultiTenantData:
    if name == "wordnet":
        if vectors is not None or tenants is not None:
            raise ValueError("--vectors and --tenants choose the size of the zipf data set; wordnet's is fixed")
        try:
            return D.glove_wordnet(n_queries=100)
        except FileNotFoundError as error:
            raise SystemExit(f"the wordnet data set needs WordNet's noun file ({error.filename}): install "
                             "Debian's wordnet-base, or use --dataset zipf") from None
    if name == "zipf":
        n = vectors or 50_000
        return D.zipf_tenants(n_vectors=n, n_tenants=tenants or max(10, min(1000, n // 100)),
                              tenants_per_vector=4.0, n_queries=100)
    raise ValueError(f"unknown data set {name!r}; known: {DATASETS}")


def for_workers(data: D.MultiTenantData) -> WorkloadData:
    return WorkloadData(data.name, data.vectors, [D.tenant_label(t) for t in range(data.n_tenants)],
                        data.tenant_offsets, data.tenant_members)


def load(db, collection: str, data: D.MultiTenantData, batch: int = 10_000) -> dict:
    """Create `collection` (cosine) and load the data set with payloads, then train the tree."""
    start = time.perf_counter()
    col = db.create_collection(collection, dim=data.vectors.shape[1], metric="cosine")
    stats = D.load_into(col, data)
    ids = np.unique(data.tenant_members)
    for part in np.array_split(ids, -(-ids.size // batch)):
        col.set_payloads(part, payloads_of(part))
    col.train()
    stats["seconds"] = time.perf_counter() - start
    return stats
