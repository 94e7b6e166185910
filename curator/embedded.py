"""The embedded implementation of the API: collections served from this process.

Each call validates its arguments at the edge (`validate`), then runs on the collection's
`CuratorIndex`. One collection is used from many threads at once (see README, "Concurrency"):
- reads (searches, gets, counts) share the index (`ReadWriteLock`) and run side by side, their
  compiled kernels without the GIL; a read that must change the index (a tenant's sub-tree still
  to build after opening, the HNSW graph) runs again alone;
- writes take turns (`_writing`) and hold the index alone only while they change it; recording
  the change (one atomic batch) and waiting for its fsync happen after readers are let back in;
- the shared tree is retrained in the background (`Retraining`) when it is due, at most once per
  `retrain_interval` seconds: k-means and the new layout are made beside the index in use, which
  serves until the new one replaces it in one step. An explicit `train()` works the same way,
  in the caller's thread.
With a data directory, every write is also recorded there before it returns; without one
(":memory:") nothing outlives the process. Tenant quotas (`quotas`) are checked inside a write's
turn, before it changes the index: a refused write changes nothing.

Tenant states (`states.py`, README "Tenant states"): a call that names an inactive tenant wakes
it first, as a write of its own in the collection's write turn (`_wake_held`), then runs; a read
that finds one (`TenantAsleep`) wakes it and runs again. A write that names evicted ids loads
them for its turn and evicts again afterwards what no active tenant sees (`_write`). With
`idle_deactivate_seconds`, `IdleTenants` deactivates tenants no call has named for that long,
one write turn each, so searches never wait for more than one tenant's eviction. An offloaded
tenant is restored by the same wake (`CuratorIndex.activate`); a write naming ids in an offloaded
tenant's archive (other than an insert, which collides) restores that tenant first (`_write`).
"""

import contextlib
import heapq
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import fields

import faiss
import numpy as np

from . import device_search, tenant_archive, validate
from .api import Collection, Database, SearchResult
from .device import CPU, Device
from .errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, StorageError
from .index import Change, CuratorIndex, ExclusiveNeeded, IndexConfig, TenantAsleep
from .metric import Metric
from .quotas import LIMITS, CollectionUsage, Quota, Quotas, TenantQuota, Touch, Usage
from .rwlock import ReadWriteLock
from .storage import DataDirectory
from .tree import ClusteringTree, TreeShape

log = logging.getLogger("curator")
_NO_IDS = np.zeros(0, np.int64)

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
                 directory: DataDirectory | None, cid: int, quotas: Quotas, usage):
        self.name = name
        self.dim = dim
        self.metric = metric.label
        self.index = index
        self._directory = directory
        self._cid = cid
        self._failed: StorageError | None = None
        self._lock = ReadWriteLock()  # reads shared; a change to the index alone
        self._writing = threading.Lock()  # one write (or retrain's layout) at a time; taken before _lock
        index.exclusive = self._lock.held_exclusively
        index.train_inline = False
        if directory is not None:
            index.shelf = directory.shelf(cid, dim)
        self.retraining = Retraining(self)
        self.idle = IdleTenants(self, index.config.idle_deactivate_seconds)
        self.usage = CollectionUsage(self, quotas, usage)  # this collection's part; `usage`: the database's

    def close(self) -> None:
        """Stop the background threads (retraining, idle tenants); the database closes the rest."""
        self.idle.close()
        self.retraining.close()
        device_search.detach(self.index)

    def _read(self, read):
        """Run a read beside other reads; one that must change the index runs again alone."""
        with self._lock.shared():
            try:
                return read()
            except ExclusiveNeeded:
                pass
        return self._alone(read)

    def _alone(self, read):
        """A read that must change the index first: it runs holding the index alone, after waking
        the inactive tenants it names (each a write of its own)."""
        with self._writing:
            while True:
                try:
                    with self._lock.exclusive():
                        return read()
                except TenantAsleep as asleep:
                    self._check_failed()
                    if not self._wake_held([asleep.tenant]):
                        raise RuntimeError(f"tenant {asleep.tenant!r} could not be woken") from None

    def _wake_held(self, tenants) -> bool:
        """Wake the inactive ones of `tenants` (None: every inactive tenant), each as a write of
        its own; the caller holds `_writing`. Returns whether any was woken. Its record's fsync
        is not waited for: a wake lost in a crash leaves the tenant inactive, nothing else."""
        index = self.index
        woken = False
        for tenant in tenants:
            if tenant is not None:
                t = index.tenant_numbers.get(tenant)
                if t is None or not index.tenancy.asleep[t]:
                    continue
            with self._lock.exclusive():
                change = index.activate(tenant)
            self._record(change)
            woken |= bool(change.woken)
        return woken

    def _write(self, apply, touch: Touch | None = None, tenants: tuple = (), record_alone: bool = False) -> Change:
        """Apply one write to the index and record it; returns once it is as durable as promised.
        `touch` says what it names, for the tenant quotas checked before it (`quotas`); `tenants`
        are those it names, woken first if inactive. Evicted ids it names are in memory for its
        turn (`CuratorIndex.load_evicted`), and what no active tenant sees afterwards is evicted.
        `record_alone`: recorded before readers are let back in (an offload: its ids leave memory
        and the records they are read from in one step, as readers see it)."""
        with self._writing:
            self._check_failed()
            self._wake_held(tenants)
            if touch is not None and touch.ids is not None and touch.kind != "insert" and self.index.offloaded:
                self._wake_held(self.index.offloaded_holders(touch.ids))  # their archives hold some of the ids
            loaded = _NO_IDS
            if touch is not None and touch.ids is not None and self.index.evicted:
                with self._lock.exclusive():
                    loaded = self.index.load_evicted(touch.ids)
            change = None
            try:
                with self.usage.writing(touch):
                    with self._lock.exclusive():
                        change = apply()
                        if record_alone:
                            ticket = self._record(change)
                if not record_alone:
                    ticket = self._record(change)
            finally:
                self._settle(loaded, change)
        if ticket is not None:
            ticket.wait()  # the fsync: outside every lock, shared with other writes waiting for one
        if self.retraining.due():
            self.retraining.start()
        return change

    def _settle(self, loaded: np.ndarray, change: Change | None) -> None:
        """After a write: evict what it loaded, or let go of (a revoke, a drop), that no active
        tenant sees any more."""
        ids = loaded if change is None else np.concatenate([loaded, change.regranted])
        if ids.size and self._failed is None and self.index.tenancy.asleep.any():
            with self._lock.exclusive():
                self.index.settle(ids)

    def _record(self, change: Change):
        """Record a change (the index is stable: the caller holds `_writing`)."""
        if self._directory is None:
            return None
        try:
            return self._directory.record(self._cid, change, self.index)
        except StorageError as error:
            self._failed = error  # memory is ahead of the disk now: refuse until reopened
            raise

    def _check_failed(self) -> None:
        if self._failed is not None:
            raise StorageError(f"collection {self.name!r} stopped taking writes after a storage failure "
                               f"({self._failed}); reopen the database to recover from its data directory")

    def _retrain(self, sample: np.ndarray | None) -> Change:
        """Train the tree on `sample` (None: the stored vectors) and serve from it. Searches go on
        throughout; writes wait only while the new layout is made."""
        index = self.index
        if sample is None:
            with self._lock.shared():
                sample = index.training_sample()
        else:
            sample = index.metric.prepare(sample)
        tree = ClusteringTree.train(sample, index.metric, index.config.tree, device_search.device_of(index))  # no lock held
        with self._writing:
            self._check_failed()
            with self._lock.exclusive():
                index.build_all()  # sub-trees pending from opening: the layout reads them all
            layout = index.retrained(tree, sample.shape[0])
            with self._lock.exclusive():
                change = index.adopt(layout)
            ticket = self._record(change)
        if ticket is not None:
            ticket.wait()
        return change

    def insert(self, ids, vectors, *, tenant: str, payloads=None) -> np.ndarray:
        if ids is None:  # drawn at random (`validate.drawn_ids`), again if one was taken meanwhile
            vectors, tenant = validate.vectors(vectors, self.dim), validate.name(tenant, "tenant")
            payloads = validate.payloads(payloads, vectors.shape[0])
            for attempt in range(3):
                try:
                    return self._insert(validate.drawn_ids(vectors.shape[0]), vectors, tenant, payloads)
                except AlreadyExistsError:
                    if attempt == 2:
                        raise
        ids, vectors, tenant = self._new_vectors(ids, vectors, tenant)
        return self._insert(ids, vectors, tenant, validate.payloads(payloads, ids.size))

    def _insert(self, ids, vectors, tenant, payloads) -> np.ndarray:
        self._write(lambda: self.index.insert(ids, vectors, tenant, payloads), Touch("insert", ids, tenant, payloads),
                    (tenant,))
        return ids

    def upsert(self, ids, vectors, *, tenant: str, payloads=None) -> None:
        ids, vectors, tenant = self._new_vectors(ids, vectors, tenant)
        payloads = validate.payloads(payloads, ids.size)
        self._write(lambda: self.index.upsert(ids, vectors, tenant, payloads), Touch("upsert", ids, tenant, payloads),
                    (tenant,))

    def _new_vectors(self, ids, vectors, tenant):
        ids = validate.ids(ids)
        vectors = validate.vectors(vectors, self.dim)
        if vectors.shape[0] != ids.shape[0]:
            raise InvalidArgumentError(f"{ids.shape[0]} ids but {vectors.shape[0]} vectors; they must pair up")
        return ids, vectors, validate.name(tenant, "tenant")

    def set_payloads(self, ids, payloads, *, tenant: str | None = None) -> None:
        ids = validate.ids(ids)
        if tenant is not None:
            tenant = validate.name(tenant, "tenant")
        if isinstance(payloads, dict):
            payloads = [payloads] * ids.size
        payloads = validate.payloads(payloads, ids.size)
        self._write(lambda: self.index.set_payloads(ids, payloads, tenant), Touch("payloads", ids, tenant, payloads))

    def owned(self, ids, *, tenant: str) -> np.ndarray:
        ids, tenant = validate.ids(ids), validate.name(tenant, "tenant")
        return self._read(lambda: self.index.owned(ids, tenant))

    def owners(self, ids) -> list[str]:
        ids = validate.ids(ids)
        return self._read(lambda: self.index.owners(ids))

    def transfer(self, ids, *, to: str, tenant: str | None = None) -> None:
        ids, to = validate.ids(ids), validate.name(to, "to")
        tenant = None if tenant is None else validate.name(tenant, "tenant")
        named = (to,) if tenant is None else (to, tenant)
        self._write(lambda: self.index.transfer(ids, to, tenant), Touch("shrink", ids), named)

    def get_payloads(self, ids) -> list[dict]:
        ids = validate.ids(ids)
        return self._read(lambda: self.index.get_payloads(ids))

    def tenant_rows(self, tenant: str):
        """Everything `tenant` may see here at one moment: ids, vectors, owned flags, payloads
        (`curator.tenant_archive`; writes wait while they are copied)."""
        tenant = validate.name(tenant, "tenant")
        return self._read(lambda: tenant_archive.read_rows(self.index, tenant))

    def payload_schema(self) -> dict[str, str]:
        return self._read(lambda: self.index.payloads.schema())

    def grant(self, ids, *, tenant: str) -> int:
        ids, tenant = validate.ids(ids), validate.name(tenant, "tenant")
        return self._write(lambda: self.index.grant(ids, tenant), Touch("grant", ids, tenant), (tenant,)).regranted.size

    def revoke(self, ids, *, tenant: str) -> None:
        ids, tenant = validate.ids(ids), validate.name(tenant, "tenant")
        self._write(lambda: self.index.revoke(ids, tenant), Touch("shrink", ids), (tenant,))

    def delete(self, ids) -> None:
        ids = validate.ids(ids)
        self._write(lambda: self.index.delete(ids), Touch("shrink", ids))

    def get(self, ids) -> np.ndarray:
        ids = validate.ids(ids)
        return self._read(lambda: self.index.get(ids))

    def tenants_of(self, id_: int) -> list[str]:
        (id_,) = validate.ids([id_])
        return self._read(lambda: self.index.tenants_of(id_))

    def contains(self, ids, *, archived: bool = True) -> np.ndarray:
        ids = validate.ids(ids)
        return self._read(lambda: self.index.contains(ids, archived))  # evicted and archived ids are stored too

    def visible_to(self, ids, *, tenant: str) -> np.ndarray:
        ids, tenant = validate.ids(ids), validate.name(tenant, "tenant")
        return self._read(lambda: self.index.visible_to(ids, tenant))

    def count(self, tenant: str | None = None) -> int:
        if tenant is not None:
            tenant = validate.name(tenant, "tenant")
        return self._read(lambda: self.index.count(tenant))

    def scroll(self, *, tenant: str | None = None, after_id: int = -1, limit: int = 1000):
        if tenant is not None:
            tenant = validate.name(tenant, "tenant")
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or not 1 <= limit <= validate.MAX_SCROLL:
            raise InvalidArgumentError(f"limit must be between 1 and {validate.MAX_SCROLL}, got {limit!r}")
        return self._read(lambda: self.index.scroll(tenant, int(after_id), int(limit)))

    def tenants(self) -> list[str]:
        return self._read(self.index.tenants)

    def create_tenant(self, tenant: str) -> None:
        tenant = validate.name(tenant, "tenant")
        self._write(lambda: self.index.create_tenant(tenant))

    def tenant_since(self, tenant: str) -> int:
        tenant = validate.name(tenant, "tenant")
        with self._lock.shared():
            return self.index.since(tenant)

    def tenant_state(self, tenant: str) -> str:
        tenant = validate.name(tenant, "tenant")
        with self._lock.shared():
            return self.index.state(tenant)

    def tenant_summary(self, top: int = 100) -> tuple[int, list[tuple[str, int, str]]]:
        """(how many tenants, the `top` largest as (tenant, vectors it sees, state)), for an
        operator's view (server/operator_page.py). Unlike `count(tenant)` it wakes no one and
        marks no one used, so looking never changes what is in memory."""
        with self._lock.shared():
            index = self.index
            counts = index.tenancy.count
            rows = heapq.nsmallest(max(0, top), ((name, int(counts[t])) for name, t in index.tenant_numbers.items()),
                                   key=lambda row: (-row[1], row[0]))
            return len(index.tenant_numbers), [(name, vectors, index.state(name)) for name, vectors in rows]

    def deactivate_tenant(self, tenant: str) -> None:
        tenant = validate.name(tenant, "tenant")
        self._write(lambda: self.index.deactivate(tenant))

    def activate_tenant(self, tenant: str) -> None:
        tenant = validate.name(tenant, "tenant")
        self._write(lambda: self.index.activate(tenant))

    def offload_tenant(self, tenant: str) -> None:
        tenant = validate.name(tenant, "tenant")
        self._write(lambda: self.index.offload(tenant), record_alone=True)

    def _deactivate_idle(self, tenant: str, seconds: float) -> None:
        """Deactivate `tenant` if no call has named it for `seconds` (checked again in the write turn)."""
        def apply():
            index = self.index
            t = index.tenant_numbers.get(tenant)
            if t is None or index.last_used[t] > time.monotonic() - seconds:
                return Change()
            return index.deactivate(tenant)
        self._write(apply)

    def drop_tenant(self, tenant: str) -> None:
        tenant = validate.name(tenant, "tenant")
        self._write(lambda: self.index.drop_tenant(tenant), Touch("drop", tenant=tenant), (tenant,))

    def search(self, query, k: int = 10, *, tenant: str | None = None, filter: dict | None = None,
               ef: int | None = None) -> SearchResult:
        query, k, ef = self._search_arguments(query, k, tenant, ef)
        if filter is None and tenant is not None:  # a tenant's search: the short path, one compiled call
            lock = self._lock
            lock.acquire_shared()
            try:
                return SearchResult(*self.index.search_one(query, k, tenant, ef), "tree")
            except ExclusiveNeeded:
                pass
            finally:
                lock.release_shared()
            return self._alone(lambda: SearchResult(*self.index.search_planned(query, k, tenant, filter, ef)))
        found = self._search_shared(query, k, tenant, filter, ef, True)
        if found is None:  # it must build something (or wake its tenant) first: alone
            found = self._alone(lambda: SearchResult(*self.index.search_planned(query, k, tenant, filter, ef)))
        return found

    def search_now(self, query, k: int = 10, *, tenant: str | None = None, filter: dict | None = None,
                   ef: int | None = None) -> SearchResult | None:
        """`search`, or None at once where it would have to wait (a write holds the collection, or
        the search must build something first): for a caller that must never block."""
        query, k, ef = self._search_arguments(query, k, tenant, ef)
        return self._search_shared(query, k, tenant, filter, ef, False)

    def _search_shared(self, query, k, tenant, filter, ef, blocking: bool) -> SearchResult | None:
        """The search beside other reads, or None if it must build something first (or, not
        blocking, if the lock is not free at once). Not `_read`: the GIL-held part of a search is
        what limits threads, so it is kept to one lock call each way."""
        lock = self._lock
        if not lock.acquire_shared(blocking):
            return None
        try:
            return SearchResult(*self.index.search_planned(query, k, tenant, filter, ef))
        except ExclusiveNeeded:
            return None
        finally:
            lock.release_shared()

    def _search_arguments(self, query, k, tenant, ef):
        # The common case (one contiguous float32 vector) skips the copying checks; the compiled
        # search checks it for NaN and infinity itself.
        if not (isinstance(query, np.ndarray) and query.dtype == np.float32 and query.shape == (self.dim,)
                and query.flags.c_contiguous):
            query = validate.vectors(query, self.dim)
            if query.shape[0] != 1:
                raise InvalidArgumentError(f"search takes one query, got {query.shape[0]}; use search_batch")
            query = query[0]
        if tenant is not None and type(tenant) is not str:
            validate.name(tenant, "tenant")
        if not (type(k) is int and 1 <= k <= validate.MAX_K):  # the common case without a call
            k = validate.k(k)
        return query, k, self.index.config.ef if ef is None else validate.ef(ef, self.index.config.ef)

    # A batch is searched in chunks, each under the lock on its own, so that a large batch does not
    # hold writers (and the readers queued behind a waiting writer) for its whole length.
    CHUNK = 64

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
        index = self.index
        if filter is None and None not in tenants:  # every query a tenant's: compiled calls
            def chunk(rows):
                return (*index.search(queries[rows], k, tenants[rows], ef, parallel=True), ["tree"] * len(tenants[rows]))
        else:
            def chunk(rows):
                return index.search_planned_batch(queries[rows], k, tenants[rows], filter, ef)
        size = self.CHUNK if index.accelerator is None else index.accelerator.chunk  # a device's batches are larger
        if nq <= size:
            return SearchResult(*self._read(lambda: chunk(slice(0, nq))))
        ids = np.empty((nq, k), np.int64)
        dists = np.empty((nq, k), np.float32)
        plans = []
        for start in range(0, nq, size):  # a loop per chunk of queries
            rows = slice(start, start + size)
            ids[rows], dists[rows], chunk_plans = self._read(lambda: chunk(rows))
            plans.extend(chunk_plans)
        return SearchResult(ids, dists, plans)

    def train(self, sample=None) -> None:
        if sample is not None:
            sample = validate.vectors(sample, self.dim)
        self._retrain(sample)

    def stats(self) -> dict:
        def read():
            index = self.index
            return {
                "vectors": index.count(),
                "tenants": len(index.tenant_numbers),
                "pairs": int(index.tenancy.count.sum()),
                "tree_nodes": index.tree.n_nodes,
                "shortlists": index.tenancy.n_live_shortlists,
                "resident_vectors": index.resident_count(),
                "evicted_vectors": index.evicted,
                "inactive_tenants": int(index.tenancy.asleep[: index.tenancy.n_tenants].sum()) - len(index.offloaded),
                "offloaded_tenants": len(index.offloaded),
                "offloaded_vectors": sum(index.offloaded.values()),
                "memory_bytes": index.nbytes,
                "device": device_search.stats_of(index),  # which device ran each part
            }
        return self._read(read)


class IdleTenants:
    """Deactivates the tenants of one collection that no call has named for `seconds`
    (`idle_deactivate_seconds`), from a background thread that looks every `seconds / 4` (at
    most every minute). Each tenant is one write turn of its own; searches wait at most for one."""

    def __init__(self, collection: EmbeddedCollection, seconds: float | None):
        self._collection, self.seconds = collection, seconds
        self._closing = threading.Event()
        self._thread = None
        if seconds is not None:
            self._thread = threading.Thread(target=self._run, daemon=True, name=f"curator-idle-{collection.name}")
            self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        collection, seconds = self._collection, self.seconds
        while not self._closing.wait(min(max(seconds / 4, 0.01), 60.0)):
            try:
                with collection._lock.shared():
                    idle = collection.index.idle_tenants(seconds)
                for tenant in idle:
                    if self._closing.is_set():
                        return
                    collection._deactivate_idle(tenant, seconds)
            except Exception:  # noqa: BLE001 - a failed pass leaves tenants active; say why, try again later
                log.exception("deactivating idle tenants of collection %r failed", collection.name)


class Retraining:
    """Retrains one collection's tree in the background when it is due (after a write), one
    retrain at a time and at most once per `retrain_interval` seconds: a tenant cannot force
    retrains back to back, and a retrain that is due but too soon runs when the interval ends.
    Searches never wait for it (see `EmbeddedCollection._retrain`)."""

    def __init__(self, collection: EmbeddedCollection):
        self._collection = collection
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._not_before = 0.0  # monotonic seconds: the first training is not held back
        self._closing = threading.Event()

    def due(self) -> bool:
        return not self._closing.is_set() and self._collection.index.training_due()

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closing.is_set():
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"curator-retrain-{self._collection.name}")
                self._thread.start()

    def wait(self) -> None:
        """Until no retrain runs or waits to run (tests, closing)."""
        while (thread := self._thread) is not None:
            thread.join()

    def close(self) -> None:
        self._closing.set()
        self.wait()

    def _run(self) -> None:
        interval = self._collection.index.config.retrain_interval
        # k-means (faiss, OpenMP) on at most half the cores: searches keep the others
        faiss.omp_set_num_threads(max(1, (os.cpu_count() or 2) // 2))
        try:
            self._closing.wait(max(0.0, self._not_before - time.monotonic()))
            if self.due():
                started = time.monotonic()
                self._collection._retrain(None)
                self._not_before = time.monotonic() + max(interval, 4 * (time.monotonic() - started))
        except Exception:  # noqa: BLE001 - a failed retrain leaves the old tree serving; say why
            log.exception("retraining collection %r failed; the current tree goes on serving", self._collection.name)
            self._not_before = time.monotonic() + max(interval, 1.0)
        finally:
            with self._lock:
                self._thread = None
        if self.due():  # writes arrived meanwhile and made it due again
            self.start()


class EmbeddedDatabase(Database):
    """Collections in this process: in memory only, or recorded in a data directory."""

    def __init__(self, directory: DataDirectory | None = None, cache: dict | None = None, quotas: dict | None = None,
                 device: Device = CPU):
        from .cache.records import MemoryRecords

        self.device = device  # where the collections' bulk array work runs (device.py)
        self._directory = directory
        # where parts beside the collections keep their records: the cache, quotas, the server's key rates
        self.records = directory if directory is not None else MemoryRecords()
        self._cache_config = cache
        self._cache = None
        self.quotas = Quotas(self.records, quotas)
        self._collections: dict[str, EmbeddedCollection] = {}
        self._cids: dict[str, int] = {}
        self._lock = threading.Lock()
        if directory is not None:
            for name, settings in directory.collections().items():
                metric = Metric.parse(settings["metric"])
                config = index_config(settings["options"])
                index = CuratorIndex.restore(settings["dim"], metric, config, directory.load(settings["cid"], settings["dim"]))
                device_search.attach(index, device, name)
                self._collections[name] = EmbeddedCollection(name, settings["dim"], metric, index, directory,
                                                             settings["cid"], self.quotas, self.usage)
                self._cids[name] = settings["cid"]
        if self.quotas.tracks_payloads:
            for collection in self._collections.values():
                collection.usage.rebuild()

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
                                            self._directory, cid, self.quotas, self.usage)
            device_search.attach(collection.index, self.device, name)
            if self.quotas.tracks_payloads:
                collection.usage.rebuild()
            self._collections[name] = collection
            self._cids[name] = cid
        return collection

    def collection(self, name: str) -> Collection:
        # No lock: one dict read is atomic, and a caller that must never wait (the server's network
        # thread) looks collections up here.
        collection = self._collections.get(name)
        if collection is None:
            raise NotFoundError(f"unknown collection {name!r}; existing: {sorted(self._collections)}")
        return collection

    def list_collections(self) -> list[str]:
        with self._lock:
            return sorted(self._collections)

    def drop_collection(self, name: str) -> None:
        with self._lock:
            if name not in self._collections:
                raise NotFoundError(f"unknown collection {name!r}")
            self._collections[name].close()
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

                self._cache = build(self._cache_config, self.records)
                self._cache.quotas = self.quotas
            return self._cache

    # -- quotas (curator/quotas.py) ---------------------------------------------------------------

    def set_quota(self, tenant: str | None, **limits) -> Quota:
        """Set limits of a tenant (None: the default of every tenant): vectors, vector_bytes,
        payload_bytes, cache_entries, each an int >= 0 or None (unlimited); limits not given stay
        as they are. Persisted in the data directory; returns the tenant's effective quota."""
        if tenant is not None:
            tenant = validate.name(tenant, "tenant")
        with self._lock, contextlib.ExitStack() as held:
            collections = [self._collections[name] for name in sorted(self._collections)]
            for collection in collections:  # no write in flight while the payload tally may start
                held.enter_context(collection._writing)
            tracked = self.quotas.tracks_payloads
            quota = self.quotas.set(tenant, limits)
            if self.quotas.tracks_payloads and not tracked:
                for collection in collections:
                    collection.usage.rebuild()
        return quota

    def quota(self, tenant: str | None) -> TenantQuota:
        """A tenant's effective quota and what it holds now (None: the default quota)."""
        if tenant is None:
            return TenantQuota(None, self.quotas.of(None), Usage())
        tenant = validate.name(tenant, "tenant")
        return TenantQuota(tenant, self.quotas.of(tenant), Usage(**self.usage(tenant)))

    def usage(self, tenant: str, limits: tuple = LIMITS) -> dict:
        """What `tenant` holds now, for these limits, summed over the collections and the cache.
        Takes no collection lock: a write checking its quota calls it holding its own."""
        collections = list(self._collections.values())
        usage = {}
        if "vectors" in limits or "vector_bytes" in limits:
            held = [(c.usage.vectors_of(tenant), c.dim) for c in collections]
            usage["vectors"] = sum(n for n, _ in held)
            usage["vector_bytes"] = sum(n * dim * 4 for n, dim in held)
        if "payload_bytes" in limits:
            usage["payload_bytes"] = sum(c.usage.payload_bytes_of(tenant) for c in collections)
        if "cache_entries" in limits:
            usage["cache_entries"] = self.cache.entries_of(tenant)
        return {limit: usage[limit] for limit in limits}

    # -- per-tenant archives (curator/tenant_archive.py) ------------------------------------------

    def export_tenant(self, tenant: str, path=None, *, collection: str | None, cache: bool = True):
        return tenant_archive.export(self, tenant, path, collection=collection, cache=cache)

    def import_tenant(self, source, *, tenant: str | None = None, collection: str | None = None,
                      cache: bool = True, skip_taken: bool = False):
        return tenant_archive.import_archive(self, source, tenant=tenant, collection=collection, cache=cache,
                                             skip_taken=skip_taken)

    def snapshot(self, path) -> None:
        """A consistent copy of the data directory at `path`, taken while writes go on."""
        if self._directory is None:
            raise InvalidArgumentError("an in-memory database has no data directory to snapshot")
        self._directory.snapshot(path)

    def close(self) -> None:
        with self._lock:
            for collection in self._collections.values():
                collection.close()
            self._collections.clear()
            if self._directory is not None:
                self._directory.close()
                self._directory = None
