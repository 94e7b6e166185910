"""Batched searches on a device: one collection's queries scored in a few large kernels.

An `Accelerator` is one collection's use of a `device.Device` (a GPU through cupy, or numpy
emulating one in the tests). It reads the index's arrays and never changes them:

- tenant searches of a batch (`search`): the tree's traversal stays on the CPU, one compiled
  call for the whole batch (`_choose`, `_expand`): each query ranks its tenant's shortlists by
  centroid distance, as the CPU search does, and takes them nearest first until they hold
  `candidates_per_ef * ef` candidates and at least RERANK * k (the CPU search's most: 4 * ef, or
  the 2k its scan of codes holds first; so the device scores a superset of what the CPU search
  would have, and its recall is at least the CPU's). The device
  then scores every query's candidates at once (a gather of their rows, a batched product with
  the queries, a top-k), queries of similar candidate counts together so that padding stays
  small. A small tenant's candidates are all its vectors: an exact scan of it.
- filtered searches (`search_group`): the planner's allowed set travels as a bitmap (a bit per
  slot) and lives on the device with the allowed set; a group's queries are scanned exactly over
  the allowed rows (matrix products over row tiles, the best k merged): for narrow filters, the
  plan the planner picked ("exact"). A tenant's broad filter within a small tenant ("tree") runs
  as above with the filter applied while candidates are gathered. Broad filters the planner
  sends to the graph keep the CPU's graph plan: on a GPU, graph search under a filter that
  excludes most rows loses recall, and an exact masked scan is the safe plan
  (`exact_rows` lets a benchmark move that line).
- the HNSW graph (`build_graph`): from an exact kNN graph computed on the device (`knn_graph`).

The vectors live on the device in a mirror of the index's rows (prepared for the metric), made
again when the index has changed since (its version), at most `refresh_share` of the time: a
batch that finds the mirror stale between refreshes runs on the CPU. A collection whose mirror
does not fit the device's memory budget stays on the CPU path (a log line says so). Any error
on the device falls back to the CPU path for that call; writes never touch the device, so none
is lost. `stats` says which device ran each part.
"""

import logging
import threading
import time

import numba
import numpy as np

from .codes import RERANK
from .device import Device, distances, topk
from .distance import distance_row
from .heaps import sift_down_min
from .index import _PARALLEL  # numba's default thread pool takes one parallel call at a time: index.py's lock
from .metric import Metric

log = logging.getLogger("curator")


class Accelerator:
    def __init__(self, device: Device, collection: str = ""):
        self.device = device
        self.collection = collection
        self.min_batch = 32  # fewer queries: the CPU's compiled search costs less than the transfers
        self.candidates_per_ef = 4.0
        self.exact_rows: int | None = None  # also scan filters with at most this many rows exactly
        self.graph_min_vectors = 20_000  # below: faiss's own build is quick enough
        self.graph_max_vectors = 4_000_000  # above: an exact kNN graph costs more than it saves
        self.refresh_share = 0.1
        self.chunk = 1024  # queries of a search_batch held under the collection's lock at a time
        self._mirror = None
        self._lock = threading.Lock()
        self._fits = True
        self.queries = {"tree_search": {"device": 0, "cpu": 0}, "filtered_search": {"device": 0, "cpu": 0}}
        self.graph_built_on = None
        self.fallbacks = 0
        self.refreshes = 0
        self.last_error: str | None = None

    # -- the vectors on the device ----------------------------------------------------------------

    def _mirror_for(self, index):
        """The index's rows on the device as of now, or None (this call runs on the CPU): they do
        not fit, or they changed since a refresh too recent to repeat."""
        key = (id(index.vectors), index.version)
        mirror = self._mirror
        if mirror is not None and mirror.key == key:
            return mirror
        with self._lock:
            mirror = self._mirror
            if mirror is not None and mirror.key == key:
                return mirror
            now = time.monotonic()
            if mirror is not None and now - mirror.made_at < mirror.took / self.refresh_share:
                return None
            self._drop_mirror()
            n, dim = index.n_slots, index.dim
            need = n * (dim + 1) * 4
            if not self.device.reserve(need):
                if self._fits:
                    log.info("collection %r (%d vectors, %.0f MiB) does not fit the memory budget of %s "
                             "(%.0f of %.0f MiB taken): it stays on the CPU path", self.collection, n,
                             need / 2**20, self.device.label, self.device.reserved / 2**20,
                             self.device.memory_budget / 2**20)
                self._fits = False
                return None
            if not self._fits:
                log.info("collection %r fits the memory budget of %s again", self.collection, self.device.label)
            self._fits = True
            xp = self.device.xp
            try:
                rows = xp.asarray(index.vectors[:n])
                if index.metric is Metric.COSINE:  # not in place: on numpy, rows are the index's own
                    rows = rows * xp.asarray(index.inv_norm[:n])[:, None]
                norms = (rows * rows).sum(axis=1)
                self.device.synchronize()
            except Exception:
                self.device.release(need)
                raise
            self._mirror = _Mirror(key, rows, norms, need, now, time.monotonic() - now)
            self.refreshes += 1
            return self._mirror

    def _drop_mirror(self) -> None:
        if self._mirror is not None:
            self.device.release(self._mirror.nbytes)
            self._mirror = None

    def close(self) -> None:
        with self._lock:
            self._drop_mirror()

    def _failed(self, error: Exception, what: str) -> None:
        """A device error: this call goes to the CPU; the mirror is dropped (remade on next use)."""
        self.fallbacks += 1
        self.last_error = f"{what}: {type(error).__name__}: {error}"
        if self.device.name == "numpy":
            raise error  # no device to blame: a bug, to be seen in the tests
        log.warning("collection %r: %s failed on %s (%s: %s); the CPU path answers", self.collection, what,
                    self.device.label, type(error).__name__, error)
        with self._lock:
            self._drop_mirror()
        self.device.free_cached()

    # -- tenant searches ---------------------------------------------------------------------------

    def search(self, index, queries: np.ndarray, tenants: np.ndarray, k: int, ef: int,
               allowed: np.ndarray | None = None, part: str = "tree_search"):
        """Tenant searches of a batch (queries prepared for the metric; tenant numbers, their
        sub-trees built): (ids, distances) of shape (nq, k), padded with -1 / inf, or None where
        the CPU path must answer. `allowed`: a 0/1 byte per slot, or None."""
        nq = queries.shape[0]
        if nq < self.min_batch:
            self.queries[part]["cpu"] += nq
            return None
        try:
            mirror = self._mirror_for(index)
            if mirror is None:
                self.queries[part]["cpu"] += nq
                return None
            tenancy, members, directory = index.tenancy, index.tenancy.members, index.tenancy.directory
            budget = max(RERANK * k, int(self.candidates_per_ef * ef))  # the CPU scan's most (search.py)
            mask = np.zeros(0, np.uint8) if allowed is None else allowed
            queries = np.ascontiguousarray(queries, np.float32)
            tenants = np.ascontiguousarray(tenants, np.int64)
            list_start = np.zeros(nq + 1, np.int64)
            np.cumsum(directory.size[tenants], out=list_start[1:])
            chosen = np.empty(int(list_start[-1]), np.int64)
            n_chosen = np.empty(nq, np.int64)
            counts = np.empty(nq, np.int64)
            with _PARALLEL:
                _choose(queries, tenants, budget, int(index.metric), directory.data, directory.start, directory.size,
                        tenancy.shortlist_node, index.tree.centroids, members.data, members.start, members.size,
                        mask, list_start, chosen, n_chosen, counts)
                cand_start = np.zeros(nq + 1, np.int64)
                np.cumsum(counts, out=cand_start[1:])
                candidates = np.empty(int(cand_start[-1]), np.int32)
                _expand(list_start, chosen, n_chosen, cand_start, members.data, members.start, members.size,
                        mask, candidates)
            slots, dists = self._score(mirror, queries, cand_start, counts, candidates, k, index.metric)
        except Exception as error:  # noqa: BLE001 - the CPU path answers instead
            self._failed(error, "a batched search")
            self.queries[part]["cpu"] += nq
            return None
        self.queries[part]["device"] += nq
        return np.where(slots >= 0, index.slot_ids[np.maximum(slots, 0)], -1), dists

    def _score(self, mirror, queries, cand_start, counts, candidates, k: int, metric: Metric):
        """Best k of each query's candidates (candidates[cand_start[i]:cand_start[i+1]]), on the
        device: (slots, distances) on the host, padded with -1 / inf."""
        device, xp = self.device, self.device.xp
        nq, dim = queries.shape
        out_slots = np.full((nq, k), -1, np.int64)
        out_dists = np.full((nq, k), np.inf, np.float32)
        if candidates.size == 0:
            return out_slots, out_dists
        order = np.argsort(-counts, kind="stable")  # widest first: each chunk pads to its first row
        with device.lock:
            q_all = xp.asarray(queries)
            cand = xp.asarray(candidates)
            start_all = xp.asarray(cand_start[:-1])
            count_all = xp.asarray(counts)
            i = 0
            while i < nq:
                width = int(max(counts[order[i]], 1))
                rows = int(max(1, min(nq - i, device.scratch_bytes // (width * (dim * 4 + 24)))))
                picked = order[i : i + rows]
                sel = xp.asarray(picked)
                col = xp.arange(width)
                valid = col[None, :] < count_all[sel][:, None]
                idx = cand[xp.where(valid, start_all[sel][:, None] + col[None, :], 0)]
                q = q_all[sel]
                dots = xp.matmul(mirror.rows[idx], q[:, :, None])[:, :, 0]
                if metric is Metric.L2:
                    d = mirror.norms[idx] - 2 * dots + (q * q).sum(axis=1)[:, None]
                elif metric is Metric.COSINE:
                    d = 1 - dots
                else:
                    d = -dots
                d = xp.where(valid, d, xp.float32(np.inf))
                top, values = topk(d, k, xp)
                slots = xp.where(xp.isinf(values), -1, xp.take_along_axis(idx, top, axis=1).astype(xp.int64))
                got = top.shape[1]
                out_slots[picked, :got] = device.to_host(slots)
                out_dists[picked, :got] = device.to_host(values)
                i += rows
        return out_slots, out_dists

    # -- filtered searches -------------------------------------------------------------------------

    def search_group(self, index, queries: np.ndarray, tenant: str | None, allowed, plan: str, k: int, ef: int):
        """One tenant's (or no tenant's) queries of a filtered batch, under the planner's plan:
        (ids, distances, plan) or None where the CPU path answers (the graph plan among them)."""
        nq = queries.shape[0]
        exact = plan == "exact" or (self.exact_rows is not None and allowed.count <= self.exact_rows)
        if nq < self.min_batch or not (exact or plan == "tree"):
            self.queries["filtered_search"]["cpu"] += nq
            return None
        prepared = index.metric.prepare(queries) if index.metric is Metric.COSINE else queries
        if not exact:  # a broad filter within a tenant small enough for its sub-tree
            found = self.search(index, prepared, np.full(nq, index.tenant_numbers[tenant], np.int64), k, ef,
                                allowed.mask.view(np.uint8), "filtered_search")
            return None if found is None else (*found, "tree")
        try:
            mirror = self._mirror_for(index)
            if mirror is None:
                self.queries["filtered_search"]["cpu"] += nq
                return None
            slots, dists = self._masked_scan(mirror, prepared, allowed, k, index.metric)
        except Exception as error:  # noqa: BLE001 - the CPU path answers instead
            self._failed(error, "a masked exact scan")
            self.queries["filtered_search"]["cpu"] += nq
            return None
        self.queries["filtered_search"]["device"] += nq
        return np.where(slots >= 0, index.slot_ids[np.maximum(slots, 0)], -1), dists, "exact"

    def _allowed_rows(self, mirror, allowed):
        """The allowed slots on the device, from the allowed set's bitmap (a bit per slot, sent
        once and unpacked there), kept with the allowed set while the mirror stands."""
        held = allowed.on_device
        if held is not None and held[0] is mirror:
            return held[1]
        xp = self.device.xp
        n = allowed.mask.shape[0]
        bits = xp.asarray(np.packbits(allowed.mask, bitorder="little"))
        rows = xp.flatnonzero(xp.unpackbits(bits, bitorder="little")[:n]).astype(xp.int64)
        allowed.on_device = (mirror, rows)
        return rows

    def _masked_scan(self, mirror, queries, allowed, k: int, metric: Metric):
        device, xp = self.device, self.device.xp
        nq = queries.shape[0]
        out_slots = np.full((nq, k), -1, np.int64)
        out_dists = np.full((nq, k), np.inf, np.float32)
        with device.lock:
            rows = self._allowed_rows(mirror, allowed)
            n = int(rows.shape[0])
            if n == 0:
                return out_slots, out_dists
            q = xp.asarray(queries)
            tile = int(max(k, min(n, device.scratch_bytes // (nq * 4 * 3 + queries.shape[1] * 4))))
            best_d = best_i = None
            for start in range(0, n, tile):
                part = rows[start : start + tile]
                d = distances(q, mirror.rows[part], metric, xp, mirror.norms[part])
                top, values = topk(d, k, xp)
                found = part[top]
                if best_d is None:
                    best_d, best_i = values, found
                    continue
                merged_d = xp.concatenate([best_d, values], axis=1)
                merged_i = xp.concatenate([best_i, found], axis=1)
                pick, best_d = topk(merged_d, k, xp)
                best_i = xp.take_along_axis(merged_i, pick, axis=1)
            got = best_i.shape[1]
            out_slots[:, :got] = device.to_host(best_i)
            out_dists[:, :got] = device.to_host(best_d)
        return out_slots, out_dists

    # -- the HNSW graph ------------------------------------------------------------------------------

    def build_graph(self, index, slots: np.ndarray):
        """The collection's HNSW graph over `slots` built from a kNN graph on the device, or None
        (the CPU builds it: too few or too many vectors, or a device error)."""
        from . import knn_graph
        from .graph import Graph

        if not self.graph_min_vectors <= slots.size <= self.graph_max_vectors:
            self.graph_built_on = "cpu"
            return None
        cfg = index.config
        try:
            built = knn_graph.build_hnsw(index._prepared(slots), index.metric, cfg.hnsw_m, cfg.hnsw_ef_construction,
                                         self.device)
        except Exception as error:  # noqa: BLE001 - faiss builds it on the CPU instead
            self._failed(error, "building the HNSW graph")
            self.graph_built_on = "cpu"
            return None
        self.graph_built_on = self.device.name
        return Graph.adopting(built, slots, index.metric, cfg.hnsw_m, cfg.hnsw_ef_construction)

    # -- what ran where ------------------------------------------------------------------------------

    def stats(self) -> dict:
        mirror = self._mirror
        return {"device": self.device.name, "label": self.device.label,
                "queries": {part: dict(counts) for part, counts in self.queries.items()},
                "graph_built_on": self.graph_built_on, "memory_bytes": 0 if mirror is None else mirror.nbytes,
                "fits": self._fits, "refreshes": self.refreshes, "fallbacks": self.fallbacks,
                "last_error": self.last_error}


class _Mirror:
    __slots__ = ("key", "rows", "norms", "nbytes", "made_at", "took")

    def __init__(self, key, rows, norms, nbytes, made_at, took):
        self.key, self.rows, self.norms, self.nbytes, self.made_at, self.took = key, rows, norms, nbytes, made_at, took


def attach(index, device: Device, collection: str = "") -> None:
    """Give `index` an Accelerator on `device` (none for the CPU)."""
    index.accelerator = Accelerator(device, collection) if device.accelerated else None


def detach(index) -> None:
    accelerator = getattr(index, "accelerator", None)
    if accelerator is not None:
        accelerator.close()


def device_of(index) -> Device | None:
    """The device the index's bulk work (training) runs on; None: the CPU."""
    accelerator = getattr(index, "accelerator", None)
    return None if accelerator is None else accelerator.device


def stats_of(index) -> dict:
    """Which device ran each part of the index's work."""
    accelerator = getattr(index, "accelerator", None)
    out = {"device": "cpu"} if accelerator is None else accelerator.stats()
    out["trained_on"] = index.tree.trained_on if index.tree.trained else None
    if accelerator is None:
        out["graph_built_on"] = "cpu" if index.graph is not None else None
    return out


# -- the CPU's part of a batched search: each query's shortlists, then their members ---------------


@numba.njit(cache=True, nogil=True, parallel=True)
def _choose(queries, tenants, budget, metric, dir_data, dir_start, dir_size, shortlist_node, centroids,
            mem_data, mem_start, mem_size, allowed, list_start, chosen, n_chosen, n_candidates):
    """For each query, its tenant's shortlists nearest first (by centroid distance, as the CPU
    search orders them) until they hold `budget` candidates (allowed ones, under a filter), or
    the tenant's last: written to chosen[list_start[i]:], their number to n_chosen[i], their
    candidates to n_candidates[i]."""
    filtered = allowed.size > 0
    for i in numba.prange(queries.shape[0]):
        t = tenants[i]
        m = dir_size[t]
        s0 = dir_start[t]
        keys = np.empty(m, np.float32)
        lists = np.empty(m, np.int64)
        for j in range(m):
            lst = dir_data[s0 + j]
            lists[j] = lst
            keys[j] = distance_row(queries[i], centroids, shortlist_node[lst], metric)
        for j in range(m // 2 - 1, -1, -1):
            sift_down_min(keys, lists, m, j)
        count = 0
        taken = 0
        remaining = m
        base = list_start[i]
        while remaining > 0 and count < budget:
            lst = lists[0]
            remaining -= 1
            keys[0] = keys[remaining]
            lists[0] = lists[remaining]
            sift_down_min(keys, lists, remaining, 0)
            chosen[base + taken] = lst
            taken += 1
            if filtered:
                start = mem_start[lst]
                for j in range(mem_size[lst]):
                    if allowed[mem_data[start + j]] != 0:
                        count += 1
            else:
                count += mem_size[lst]
        n_chosen[i] = taken
        n_candidates[i] = count


@numba.njit(cache=True, nogil=True, parallel=True)
def _expand(list_start, chosen, n_chosen, cand_start, mem_data, mem_start, mem_size, allowed, out):
    """The members of each query's chosen shortlists (allowed ones, under a filter), in order."""
    filtered = allowed.size > 0
    for i in numba.prange(n_chosen.shape[0]):
        w = cand_start[i]
        for s in range(n_chosen[i]):
            lst = chosen[list_start[i] + s]
            start = mem_start[lst]
            for j in range(mem_size[lst]):
                slot = mem_data[start + j]
                if not filtered or allowed[slot] != 0:
                    out[w] = slot
                    w += 1
