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

Once the tree is trained the scan reads each candidate's scalar code (`codes.py`, one byte a
dimension) instead of its float32 row, keeps the best RERANK * k by approximate distance (its
stopping rule then counts improvements of those), and returns the best k of them by exact
distance. On the 200k Zipf set this made the scan ~1.8x faster at equal recall: a row's loads,
not its arithmetic, were its cost. A search whose budget covers the whole tenant (ef >= 4|t|),
and a filtered one, scan exactly as before.

One query is one compiled call; a batch is one compiled call that runs its queries in parallel.
`exact_one` is the exact plan's single query (`planner.py`): a scan of a filter's few allowed
vectors, also one compiled call."""

import numba
import numpy as np

from .distance import COSINE, L2, distance_row, dot_row, l2_row
from .heaps import sift_down_max, sift_down_min
from .metric import MAX_SQUARED_NORM, MIN_COSINE_NORM
from .codes import RERANK
from .prefetch import prefetch_row

AHEAD = 32  # candidates whose vectors are requested before they are scored


@numba.njit(cache=True, nogil=True, fastmath=True)
def search_tenant(q, k, ef, metric, tenant, dir_data, dir_start, dir_size, shortlist_node, centroids,
                  mem_data, mem_start, mem_size, vectors, inv_norm, codes, code_lo, code_step, tenant_count,
                  allowed, out_slots, out_dist):
    """Fill out_slots/out_dist (length >= k) best first; returns how many results were found.

    `allowed`: empty, or a 0/1 byte per slot; then only allowed slots are candidates, and the
    budget counts allowed candidates only, so a filter costs skipped members, never recall.
    `codes` (codes.py): empty, or the collection's scalar codes; with them, and no filter, and a
    budget that would not scan the whole tenant anyway, candidates are ranked by their codes and
    the best RERANK * k of them by exact distance."""
    m = dir_size[tenant]
    if m == 0:
        return 0
    order_key, order_list = _ranked_shortlists(q, metric, dir_data[dir_start[tenant]:dir_start[tenant] + m],
                                               shortlist_node, centroids)
    coded = codes.shape[0] > 0 and allowed.size == 0 and max(ef // 4, 1) < tenant_count[tenant]
    width = RERANK * k if coded else k
    best_d = np.full(width, np.inf, np.float32)  # max-heap of the best so far
    best_s = np.full(width, -1, np.int64)
    found = _scan(q, width, ef, metric, order_key, order_list, mem_data, mem_start, mem_size, vectors, inv_norm,
                  codes, code_lo, code_step, coded, allowed, best_d, best_s)
    if coded:  # the approximate best, measured exactly
        for i in range(found):
            best_d[i] = _distance(q, vectors, inv_norm, best_s[i], metric)
    order = np.argsort(best_d[:found])
    found = min(found, k)
    for i in range(found):
        out_slots[i] = best_s[order[i]]
        out_dist[i] = best_d[order[i]]
    return found


@numba.njit(cache=True, nogil=True, fastmath=True, inline="always")
def _distance(q, vectors, inv_norm, slot, metric):
    if metric == L2:
        return l2_row(q, vectors, slot)
    if metric == COSINE:
        return numba.float32(1.0) - dot_row(q, vectors, slot) * inv_norm[slot]
    return -dot_row(q, vectors, slot)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _ranked_shortlists(q, metric, lists, shortlist_node, centroids):
    """A tenant's shortlists as a min-heap keyed by the distance from q to each one's node centroid."""
    m = lists.shape[0]
    order_key = np.empty(m, np.float32)
    order_list = np.empty(m, np.int64)
    for i in range(m):
        if i + AHEAD < m:
            prefetch_row(centroids, shortlist_node[lists[i + AHEAD]])
        l = lists[i]
        order_list[i] = l
        order_key[i] = distance_row(q, centroids, shortlist_node[l], metric)
    for i in range(m // 2 - 1, -1, -1):
        sift_down_min(order_key, order_list, m, i)
    return order_key, order_list


@numba.njit(cache=True, nogil=True, fastmath=True)
def _scan(q, width, ef, metric, order_key, order_list, mem_data, mem_start, mem_size, vectors, inv_norm,
          codes, code_lo, code_step, coded, allowed, best_d, best_s):
    """Scan shortlists nearest first into the max-heap best_d/best_s of `width` entries, until
    the stopping rule above; returns how many it holds. Coded: approximate distances from codes."""
    filtered = allowed.size > 0
    dim = q.shape[0]
    qa = np.empty(dim if coded else 0, np.float32)  # the query on the codes' scale
    base = numba.float32(0.0)
    if coded:
        for j in range(dim):
            if metric == L2:
                qa[j] = q[j] - code_lo[j]
            else:
                qa[j] = q[j] * code_step[j]
                base += q[j] * code_lo[j]
    found = 0
    scanned = 0
    remaining = order_list.shape[0]
    budget, window = 4 * ef, max(ef // 4, 1)
    improved_at = 0  # candidates scanned when the best list last improved
    while remaining > 0 and (found < width or (scanned < budget and scanned - improved_at < window)):
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
                if coded:
                    prefetch_row(codes, mem_data[mem_start[nxt] + j])
                else:
                    prefetch_row(vectors, mem_data[mem_start[nxt] + j])
        improved = found < width
        for j in range(size):
            if j + AHEAD < size:
                if coded:
                    prefetch_row(codes, mem_data[start + j + AHEAD])
                else:
                    prefetch_row(vectors, mem_data[start + j + AHEAD])
            slot = mem_data[start + j]
            if filtered:
                if allowed[slot] == 0:
                    continue
                scanned += 1
            if not coded:
                d = _distance(q, vectors, inv_norm, slot, metric)
            elif metric == L2:
                d = numba.float32(0.0)
                for c in range(dim):
                    diff = qa[c] - code_step[c] * numba.float32(codes[slot, c])
                    d += diff * diff
            else:
                acc = base
                for c in range(dim):
                    acc += qa[c] * numba.float32(codes[slot, c])
                d = numba.float32(1.0) - acc if metric == COSINE else -acc
            if found < width:
                best_d[found] = d
                best_s[found] = slot
                found += 1
                if found == width:
                    for i in range(width // 2 - 1, -1, -1):
                        sift_down_max(best_d, best_s, width, i)
            elif d < best_d[0]:
                best_d[0] = d
                best_s[0] = slot
                sift_down_max(best_d, best_s, width, 0)
                improved = True
        if not filtered:
            scanned += size
        if improved:
            improved_at = scanned
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
               centroids, mem_data, mem_start, mem_size, vectors, inv_norm, codes, code_lo, code_step, tenant_count,
               allowed, slot_ids):
    """One query, end to end: (ids, distances) best first, or empty arrays and False if q is unusable."""
    prepared, usable = prepare_query(q, metric)
    if not usable:
        return np.empty(0, np.int64), np.empty(0, np.float32), False
    slots = np.empty(k, np.int64)
    dists = np.empty(k, np.float32)
    found = search_tenant(prepared, k, ef, metric, tenant, dir_data, dir_start, dir_size, shortlist_node,
                          centroids, mem_data, mem_start, mem_size, vectors, inv_norm, codes, code_lo, code_step,
                          tenant_count, allowed, slots, dists)
    ids = np.empty(found, np.int64)
    for i in range(found):
        ids[i] = slot_ids[slots[i]]
    return ids, dists[:found].copy(), True


@numba.njit(cache=True, nogil=True)
def search_batch_serial(queries, tenants, k, ef, metric, dir_data, dir_start, dir_size, shortlist_node,
                        centroids, mem_data, mem_start, mem_size, vectors, inv_norm, codes, code_lo, code_step,
                        tenant_count, allowed, out_slots, out_dist):
    for i in range(queries.shape[0]):
        search_tenant(queries[i], k, ef, metric, tenants[i], dir_data, dir_start, dir_size, shortlist_node,
                      centroids, mem_data, mem_start, mem_size, vectors, inv_norm, codes, code_lo, code_step,
                      tenant_count, allowed, out_slots[i], out_dist[i])


@numba.njit(cache=True, nogil=True, parallel=True)
def search_batch_parallel(queries, tenants, k, ef, metric, dir_data, dir_start, dir_size, shortlist_node,
                          centroids, mem_data, mem_start, mem_size, vectors, inv_norm, codes, code_lo, code_step,
                          tenant_count, allowed, out_slots, out_dist):
    for i in numba.prange(queries.shape[0]):
        search_tenant(queries[i], k, ef, metric, tenants[i], dir_data, dir_start, dir_size, shortlist_node,
                      centroids, mem_data, mem_start, mem_size, vectors, inv_norm, codes, code_lo, code_step,
                      tenant_count, allowed, out_slots[i], out_dist[i])


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
