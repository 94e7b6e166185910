"""The embedded implementation of the API: collections served from this process.

Each call validates its arguments at the edge (`validate`), then runs on the collection's
`CuratorIndex` under the collection's lock, so one collection may be used from many threads.
With a data directory, every write is also recorded there (one atomic batch) before it returns;
without one (":memory:") nothing outlives the process.
"""

import threading
from collections.abc import Sequence
from dataclasses import fields

import numpy as np

from . import validate
from .api import Collection, Database, SearchResult
from .errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, StorageError
from .index import Change, CuratorIndex, IndexConfig
from .metric import Metric
from .storage import DataDirectory
from .tree import TreeShape

_TREE_OPTIONS = {f.name for f in fields(TreeShape)}
_INDEX_OPTIONS = {f.name for f in fields(IndexConfig)} - {"tree"}


def index_config(options: dict) -> IndexConfig:
    """An IndexConfig from flat keyword options (branching=, leaf_size=, ef=, ...)."""
    unknown = set(options) - _TREE_OPTIONS - _INDEX_OPTIONS
    if unknown:
        raise InvalidArgumentError(
            f"unknown collection option(s) {sorted(unknown)}; allowed: {sorted(_TREE_OPTIONS | _INDEX_OPTIONS)}"
        )
    tree = TreeShape(**{k: v for k, v in options.items() if k in _TREE_OPTIONS})
    return IndexConfig(tree=tree, **{k: v for k, v in options.items() if k in _INDEX_OPTIONS})


class EmbeddedCollection(Collection):
    def __init__(self, name: str, dim: int, metric: Metric, index: CuratorIndex,
                 directory: DataDirectory | None = None, cid: int = 0):
        self.name = name
        self.dim = dim
        self.metric = metric.label
        self.index = index
        self._directory = directory
        self._cid = cid
        self._failed: StorageError | None = None
        self._lock = threading.RLock()

    def _write(self, apply) -> Change:
        """Apply one write to the index and record it; returns once it is as durable as promised."""
        with self._lock:
            if self._failed is not None:
                raise StorageError(f"collection {self.name!r} stopped taking writes after a storage failure "
                                   f"({self._failed}); reopen the database to recover from its data directory")
            change = apply()
            ticket = None
            if self._directory is not None:
                try:
                    ticket = self._directory.record(self._cid, change, self.index)
                except StorageError as error:
                    self._failed = error  # memory is ahead of the disk now: refuse until reopened
                    raise
        if ticket is not None:
            ticket.wait()
        return change

    def insert(self, ids, vectors, *, tenant: str, payloads=None) -> None:
        ids, vectors, tenant = self._new_vectors(ids, vectors, tenant)
        payloads = validate.payloads(payloads, ids.size)
        self._write(lambda: self.index.insert(ids, vectors, tenant, payloads))

    def upsert(self, ids, vectors, *, tenant: str, payloads=None) -> None:
        ids, vectors, tenant = self._new_vectors(ids, vectors, tenant)
        payloads = validate.payloads(payloads, ids.size)
        self._write(lambda: self.index.upsert(ids, vectors, tenant, payloads))

    def _new_vectors(self, ids, vectors, tenant):
        ids = validate.ids(ids)
        vectors = validate.vectors(vectors, self.dim)
        if vectors.shape[0] != ids.shape[0]:
            raise InvalidArgumentError(f"{ids.shape[0]} ids but {vectors.shape[0]} vectors; they must pair up")
        return ids, vectors, validate.name(tenant, "tenant")

    def set_payloads(self, ids, payloads) -> None:
        ids = validate.ids(ids)
        if isinstance(payloads, dict):
            payloads = [payloads] * ids.size
        payloads = validate.payloads(payloads, ids.size)
        self._write(lambda: self.index.set_payloads(ids, payloads))

    def get_payloads(self, ids) -> list[dict]:
        ids = validate.ids(ids)
        with self._lock:
            return self.index.get_payloads(ids)

    def payload_schema(self) -> dict[str, str]:
        with self._lock:
            return self.index.payloads.schema()

    def grant(self, ids, *, tenant: str) -> int:
        ids, tenant = validate.ids(ids), validate.name(tenant, "tenant")
        return self._write(lambda: self.index.grant(ids, tenant)).regranted.size

    def revoke(self, ids, *, tenant: str) -> None:
        ids, tenant = validate.ids(ids), validate.name(tenant, "tenant")
        self._write(lambda: self.index.revoke(ids, tenant))

    def delete(self, ids) -> None:
        ids = validate.ids(ids)
        self._write(lambda: self.index.delete(ids))

    def get(self, ids) -> np.ndarray:
        ids = validate.ids(ids)
        with self._lock:
            return self.index.get(ids)

    def tenants_of(self, id_: int) -> list[str]:
        (id_,) = validate.ids([id_])
        with self._lock:
            return self.index.tenants_of(id_)

    def contains(self, ids) -> np.ndarray:
        ids = validate.ids(ids)
        with self._lock:
            return self.index.ids.lookup(ids) >= 0

    def visible_to(self, ids, *, tenant: str) -> np.ndarray:
        ids, tenant = validate.ids(ids), validate.name(tenant, "tenant")
        with self._lock:
            return self.index.visible_to(ids, tenant)

    def count(self, tenant: str | None = None) -> int:
        if tenant is not None:
            tenant = validate.name(tenant, "tenant")
        with self._lock:
            return self.index.count(tenant)

    def scroll(self, *, tenant: str | None = None, after_id: int = -1, limit: int = 1000):
        if tenant is not None:
            tenant = validate.name(tenant, "tenant")
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or not 1 <= limit <= validate.MAX_SCROLL:
            raise InvalidArgumentError(f"limit must be between 1 and {validate.MAX_SCROLL}, got {limit!r}")
        with self._lock:
            return self.index.scroll(tenant, int(after_id), int(limit))

    def tenants(self) -> list[str]:
        with self._lock:
            return self.index.tenants()

    def create_tenant(self, tenant: str) -> None:
        tenant = validate.name(tenant, "tenant")
        self._write(lambda: self.index.create_tenant(tenant))

    def drop_tenant(self, tenant: str) -> None:
        tenant = validate.name(tenant, "tenant")
        self._write(lambda: self.index.drop_tenant(tenant))

    def search(self, query, k: int = 10, *, tenant: str | None = None, filter: dict | None = None,
               ef: int | None = None) -> SearchResult:
        # The common case (one contiguous float32 vector) skips the copying checks; the compiled
        # search checks it for NaN and infinity itself.
        if not (isinstance(query, np.ndarray) and query.dtype == np.float32 and query.shape == (self.dim,)
                and query.flags.c_contiguous):
            query = validate.vectors(query, self.dim)
            if query.shape[0] != 1:
                raise InvalidArgumentError(f"search takes one query, got {query.shape[0]}; use search_batch")
            query = query[0]
        k = validate.k(k)
        if tenant is not None and type(tenant) is not str:
            validate.name(tenant, "tenant")
        ef = validate.ef(ef, self.index.config.ef)
        with self._lock:
            return SearchResult(*self.index.search_planned(query, k, tenant, filter, ef))

    def search_batch(self, queries, k: int = 10, *, tenants: str | Sequence[str] | None = None,
                     filter: dict | None = None, ef: int | None = None) -> SearchResult:
        queries = validate.vectors(queries, self.dim)
        nq = queries.shape[0]
        k = validate.k(k)
        if tenants is None or isinstance(tenants, str):
            tenants = [tenants] * nq
        tenants = [None if t is None else validate.name(t, "tenant") for t in tenants]
        if len(tenants) != nq:
            raise InvalidArgumentError(f"{nq} queries but {len(tenants)} tenants; give one per query")
        ef = validate.ef(ef, self.index.config.ef)
        with self._lock:
            if filter is None and None not in tenants:  # every query a tenant's: one compiled call
                return SearchResult(*self.index.search(queries, k, tenants, ef, parallel=True), ["tree"] * nq)
            return SearchResult(*self.index.search_planned_batch(queries, k, tenants, filter, ef))

    def train(self, sample=None) -> None:
        if sample is not None:
            sample = validate.vectors(sample, self.dim)
        self._write(lambda: self.index.train(sample))

    def stats(self) -> dict:
        with self._lock:
            index = self.index
            return {
                "vectors": index.count(),
                "tenants": len(index.tenant_numbers),
                "pairs": int(index.tenancy.count.sum()),
                "tree_nodes": index.tree.n_nodes,
                "shortlists": index.tenancy.n_live_shortlists,
                "memory_bytes": index.nbytes,
            }


class EmbeddedDatabase(Database):
    """Collections in this process: in memory only, or recorded in a data directory."""

    def __init__(self, directory: DataDirectory | None = None, cache: dict | None = None):
        self._directory = directory
        self._cache_config = cache
        self._cache = None
        self._collections: dict[str, EmbeddedCollection] = {}
        self._cids: dict[str, int] = {}
        self._lock = threading.Lock()
        if directory is not None:
            for name, settings in directory.collections().items():
                metric = Metric.parse(settings["metric"])
                config = index_config(settings["options"])
                index = CuratorIndex.restore(settings["dim"], metric, config, directory.load(settings["cid"], settings["dim"]))
                self._collections[name] = EmbeddedCollection(name, settings["dim"], metric, index, directory, settings["cid"])
                self._cids[name] = settings["cid"]

    def create_collection(self, name: str, dim: int, metric: str = "l2", **options) -> Collection:
        name = validate.name(name, "collection name")
        dim = validate.dim(dim)
        metric = Metric.parse(metric)
        config = index_config(options)
        with self._lock:
            if name in self._collections:
                raise AlreadyExistsError(f"collection {name!r} already exists")
            cid = max(self._cids.values(), default=-1) + 1
            if self._directory is not None:
                self._directory.put_collection(name, {"cid": cid, "dim": int(dim), "metric": metric.label,
                                                      "options": options})
            collection = EmbeddedCollection(name, int(dim), metric, CuratorIndex(int(dim), metric, config),
                                            self._directory, cid)
            self._collections[name] = collection
            self._cids[name] = cid
        return collection

    def collection(self, name: str) -> Collection:
        with self._lock:
            try:
                return self._collections[name]
            except KeyError:
                raise NotFoundError(f"unknown collection {name!r}; existing: {sorted(self._collections)}") from None

    def list_collections(self) -> list[str]:
        with self._lock:
            return sorted(self._collections)

    def drop_collection(self, name: str) -> None:
        with self._lock:
            if name not in self._collections:
                raise NotFoundError(f"unknown collection {name!r}")
            if self._directory is not None:
                self._directory.drop_collection(name, self._cids[name])
            del self._collections[name]
            del self._cids[name]

    @property
    def cache(self):
        """The semantic cache of this database (`curator.cache.Cache`), its entries in the same
        data directory; built on first use from the `cache` configuration given to `open`."""
        with self._lock:
            if self._cache is None:
                from .cache.config import build
                from .cache.records import MemoryRecords

                records = self._directory if self._directory is not None else MemoryRecords()
                self._cache = build(self._cache_config, records)
            return self._cache

    def snapshot(self, path) -> None:
        """A consistent copy of the data directory at `path`, taken while writes go on."""
        if self._directory is None:
            raise InvalidArgumentError("an in-memory database has no data directory to snapshot")
        self._directory.snapshot(path)

    def close(self) -> None:
        with self._lock:
            self._collections.clear()
            if self._directory is not None:
                self._directory.close()
                self._directory = None
