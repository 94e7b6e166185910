"""The compiled search of one tenant's sub-tree: rank its shortlists, scan them, keep the top k.

For a query q and tenant t: the distance from q to the centroid of each of t's shortlist nodes
orders the shortlists (a heap, so only the lists actually scanned are ever sorted); shortlists
are scanned nearest first with exact distances, and a bounded max-heap keeps the best k.

When to stop is the recall knob `ef`: the scan ends once ef/4 candidates in a row have failed to
improve the top k (after Curator v2's "stop when a shortlist no longer improves the running top
list", counted in candidates so that many small lists and few large ones weigh the same), or
after 4*ef candidates. It never ends before k results are found: every vector t may see is in
exactly one of its shortlists, so a search returns min(k, |t|) results, and never a vector t
may not see. With ef >= 4|t| the search is exact.

One query is one compiled call; a batch is one compiled call that runs its queries in parallel.
`exact_one` is the exact plan's single query (`planner.py`): a scan of a filter's few allowed
vectors, also one compiled call."""

import numba
import numpy as np

from .distance import COSINE, L2, distance_row, dot_row, l2_row
from .heaps import sift_down_max, sift_down_min
from .metric import MAX_SQUARED_NORM, MIN_COSINE_NORM
from .prefetch import prefetch_row

AHEAD = 32  # candidates whose vectors are requested before they are scored


@numba.njit(cache=True, nogil=True, fastmath=True)
def search_tenant(q, k, ef, metric, tenant, dir_data, dir_start, dir_size, shortlist_node,
                  centroids, mem_data, mem_start, mem_size, vectors, inv_norm, allowed, out_slots, out_dist):
    """Fill out_slots/out_dist (length >= k) best first; returns how many results were found.

    `allowed`: empty, or a 0/1 byte per slot; then only allowed slots are candidates, and the
    budget counts allowed candidates only, so a filter costs skipped members, never recall."""
    filtered = allowed.size > 0
    m = dir_size[tenant]
    if m == 0:
        return 0
    s0 = dir_start[tenant]
    order_key = np.empty(m, np.float32)
    order_list = np.empty(m, np.int64)
    for i in range(m):
        if i + AHEAD < m:
            prefetch_row(centroids, shortlist_node[dir_data[s0 + i + AHEAD]])
        l = dir_data[s0 + i]
        order_list[i] = l
        order_key[i] = distance_row(q, centroids, shortlist_node[l], metric)
    for i in range(m // 2 - 1, -1, -1):
        sift_down_min(order_key, order_list, m, i)

    best_d = np.full(k, np.inf, np.float32)  # max-heap of the best k so far
    best_s = np.full(k, -1, np.int64)
    found = 0
    scanned = 0
    remaining = m
    budget, window = 4 * ef, max(ef // 4, 1)
    improved_at = 0  # candidates scanned when the top k last improved
    while remaining > 0 and (found < k or (scanned < budget and scanned - improved_at < window)):
        l = order_list[0]
        remaining -= 1
        order_key[0] = order_key[remaining]
        order_list[0] = order_list[remaining]
        sift_down_min(order_key, order_list, remaining, 0)
        start = mem_start[l]
        size = mem_size[l]
        if remaining > 0:  # the next shortlist is now on top of the heap: start loading it
            nxt = order_list[0]
            for j in range(min(AHEAD, mem_size[nxt])):
                prefetch_row(vectors, mem_data[mem_start[nxt] + j])
        improved = found < k
        for j in range(size):
            if j + AHEAD < size:
                prefetch_row(vectors, mem_data[start + j + AHEAD])
            slot = mem_data[start + j]
            if filtered:
                if allowed[slot] == 0:
                    continue
                scanned += 1
            if metric == L2:
                d = l2_row(q, vectors, slot)
            elif metric == COSINE:
                d = numba.float32(1.0) - dot_row(q, vectors, slot) * inv_norm[slot]
            else:
                d = -dot_row(q, vectors, slot)
            if found < k:
                best_d[found] = d
                best_s[found] = slot
                found += 1
                if found == k:
                    for i in range(k // 2 - 1, -1, -1):
                        sift_down_max(best_d, best_s, k, i)
            elif d < best_d[0]:
                best_d[0] = d
                best_s[0] = slot
                sift_down_max(best_d, best_s, k, 0)
                improved = True
        if not filtered:
            scanned += size
        if improved:
            improved_at = scanned

    order = np.argsort(best_d[:found])
    for i in range(found):
        out_slots[i] = best_s[order[i]]
        out_dist[i] = best_d[order[i]]
    return found


@numba.njit(cache=True, nogil=True)
def prepare_query(q, metric):
    """A copy of q ready for the metric (unit length for cosine), and whether q is usable at all:
    finite, with a squared norm of at most `metric.MAX_SQUARED_NORM` (as `validate.vectors`
    requires of every vector), and under cosine not shorter than `metric.MIN_COSINE_NORM`.

    The squared norm in float64: float32 squares overflow (1e20) or underflow (1e-30) where the
    vector itself is fine. The scale in float32, as `Metric.prepare` scales a batch's queries."""
    total = 0.0
    for j in range(q.shape[0]):
        x = np.float64(q[j])
        total += x * x
    usable = total <= MAX_SQUARED_NORM and not (metric == COSINE and total < MIN_COSINE_NORM * MIN_COSINE_NORM)
    scale = np.float32(1.0 / np.sqrt(total)) if usable and metric == COSINE else np.float32(1.0)
    out = np.empty(q.shape[0], np.float32)
    for j in range(q.shape[0]):
        out[j] = q[j] * scale
    return out, usable


@numba.njit(cache=True, nogil=True)
def search_one(q, k, ef, metric, tenant, dir_data, dir_start, dir_size, shortlist_node,
               centroids, mem_data, mem_start, mem_size, vectors, inv_norm, allowed, slot_ids):
    """One query, end to end: (ids, distances) best first, or empty arrays and False if q is unusable."""
    prepared, usable = prepare_query(q, metric)
    if not usable:
        return np.empty(0, np.int64), np.empty(0, np.float32), False
    slots = np.empty(k, np.int64)
    dists = np.empty(k, np.float32)
    found = search_tenant(prepared, k, ef, metric, tenant, dir_data, dir_start, dir_size, shortlist_node,
                          centroids, mem_data, mem_start, mem_size, vectors, inv_norm, allowed, slots, dists)
    ids = np.empty(found, np.int64)
    for i in range(found):
        ids[i] = slot_ids[slots[i]]
    return ids, dists[:found].copy(), True


@numba.njit(cache=True, nogil=True)
def search_batch_serial(queries, tenants, k, ef, metric, dir_data, dir_start, dir_size, shortlist_node,
                        centroids, mem_data, mem_start, mem_size, vectors, inv_norm, allowed, out_slots, out_dist):
    for i in range(queries.shape[0]):
        search_tenant(queries[i], k, ef, metric, tenants[i], dir_data, dir_start, dir_size, shortlist_node,
                      centroids, mem_data, mem_start, mem_size, vectors, inv_norm, allowed, out_slots[i], out_dist[i])


@numba.njit(cache=True, nogil=True, parallel=True)
def search_batch_parallel(queries, tenants, k, ef, metric, dir_data, dir_start, dir_size, shortlist_node,
                          centroids, mem_data, mem_start, mem_size, vectors, inv_norm, allowed, out_slots, out_dist):
    for i in numba.prange(queries.shape[0]):
        search_tenant(queries[i], k, ef, metric, tenants[i], dir_data, dir_start, dir_size, shortlist_node,
                      centroids, mem_data, mem_start, mem_size, vectors, inv_norm, allowed, out_slots[i], out_dist[i])


@numba.njit(cache=True, nogil=True)
def exact_one(q, k, metric, rows, slots, slot_ids):
    """One query scanned exactly over `rows` (prepared for the metric; row i is slot slots[i]) in
    one call: (ids, distances) best first, or empty arrays and False if q is unusable. For the few
    allowed vectors of a narrow filter, where a query's fixed costs are most of its time.

    Not fastmath itself: the query's NaN check must not be folded away (a fastmath caller would
    impose its flags on an inlined `prepare_query`); only the scan below is."""
    prepared, usable = prepare_query(q, metric)
    if not usable:
        return np.empty(0, np.int64), np.empty(0, np.float32), False
    ids, dists = _exact_scan(prepared, k, metric, rows, slots, slot_ids)
    return ids, dists, True


@numba.njit(cache=True, nogil=True, fastmath=True)
def _exact_scan(prepared, k, metric, rows, slots, slot_ids):
    n = rows.shape[0]
    k = min(k, n)
    keys = np.empty(k, np.float32)
    vals = np.empty(k, np.int64)
    for i in range(k):
        keys[i] = distance_row(prepared, rows, i, metric)
        vals[i] = i
    for i in range(k // 2 - 1, -1, -1):
        sift_down_max(keys, vals, k, i)
    for i in range(k, n):
        d = distance_row(prepared, rows, i, metric)
        if d < keys[0]:
            keys[0] = d
            vals[0] = i
            sift_down_max(keys, vals, k, 0)
    order = np.argsort(keys, kind="mergesort")
    ids = np.empty(k, np.int64)
    dists = np.empty(k, np.float32)
    for i in range(k):
        ids[i] = slot_ids[slots[vals[order[i]]]]
        dists[i] = keys[order[i]]
    return ids, dists
