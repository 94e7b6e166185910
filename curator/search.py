"""The compiled search of one tenant's sub-tree: rank its shortlists, scan them, keep the top k.

For a query q and tenant t: the distance from q to the centroid of each of t's shortlist nodes
orders the shortlists (counted into buckets by key, and only the buckets actually reached are
sorted); shortlists are scanned nearest first, and a bounded max-heap keeps the best k.

When to stop is the recall knob `ef`: the scan ends once ef/4 candidates in a row have failed to
improve the top k (after Curator v2's "stop when a shortlist no longer improves the running top
list", counted in candidates so that many small lists and few large ones weigh the same), or
after 4*ef candidates. It never ends before k results are found: every vector t may see is in
exactly one of its shortlists, so a search returns min(k, |t|) results, and never a vector t
may not see. With ef >= 4|t| every vector of t is examined; with ef >= 16|t| (`EXACT_EF`) the
search is exact.

Once the tree is trained the scan reads each candidate's scalar code (`codes.py`, one byte a
dimension) instead of its float32 row, keeps the best RERANK * k by approximate distance (its
stopping rule then counts improvements of those), and returns the best k of them by exact
distance. On the 200k Zipf set this made the scan 1.75x faster at equal recall (the float32
sweep of benchmarks/multitenant.py, same run): a row's loads, not its arithmetic, were its cost.
A search with ef >= 16|t|, and a filtered one, scan the float32 rows exactly. (The bound was
4|t|, a budget covering the whole tenant: tenants of up to ef/4 vectors then read four cache
lines a candidate instead of one, and a search at recall 0.95 on the Zipf set took 1.2x as long.)

One query is one compiled call; a batch is one compiled call that runs its queries in parallel.
`exact_one` is the exact plan's single query (`planner.py`): a scan of a filter's few allowed
vectors, also one compiled call."""

import numba
import numpy as np

from . import handoff
from .distance import COSINE, L2, SPAN, dot_row, l2_row
from .heaps import sift_down_max
from .metric import MAX_SQUARED_NORM, MIN_COSINE_NORM
from .codes import RERANK
from .prefetch import prefetch_at, prefetch_row, prefetch_span

AHEAD = 32  # candidates whose vectors are requested before they are scored
ROWS, CODES_DOT, CODES_L2 = 0, 1, 2  # how `_scan` scores candidates (a compile-time constant: one loop each)
EXACT_EF = 16  # ef >= EXACT_EF * |t|: an exact search of tenant t (float32 rows, no codes)


@numba.njit(cache=True, nogil=True, fastmath=True)
def search_tenant(q, k, ef, metric, tenant, dir_data, dir_start, dir_size, shortlist_node, centroids,
                  mem_data, mem_start, mem_size, vectors, inv_norm, codes, code_lo, code_step, tenant_count,
                  allowed, out_slots, out_dist):
    """Fill out_slots/out_dist (length >= k) best first; returns how many results were found and
    how many candidates were examined (the figure that explains a search's time).

    `allowed`: empty, or a 0/1 byte per slot; then only allowed slots are candidates, and the
    budget counts allowed candidates only, so a filter costs skipped members, never recall.
    `codes` (codes.py): empty, or the collection's scalar codes; with them, no filter, and ef
    below EXACT_EF times the tenant's vectors, candidates are ranked by their codes and the best
    RERANK * k of them by exact distance."""
    m = dir_size[tenant]
    if m == 0:
        return 0, 0
    order_key, order_list, bucket_start = _ranked_shortlists(
        q, metric, dir_data[dir_start[tenant]:dir_start[tenant] + m], shortlist_node, centroids)
    coded = codes.shape[0] > 0 and allowed.size == 0 and ef < EXACT_EF * tenant_count[tenant]
    width = RERANK * k if coded else k
    best_d = np.full(width, np.inf, np.float32)  # max-heap of the best so far
    best_s = np.full(width, -1, np.int64)
    ranked, members = (order_key, order_list, bucket_start), (mem_data, mem_start, mem_size)
    rows, scale = (vectors, inv_norm), (codes, code_lo, code_step)
    if not coded:
        found, scanned = _scan(ROWS, q, width, ef, metric, ranked, members, rows, scale, allowed, best_d, best_s)
    elif metric == L2:
        found, scanned = _scan(CODES_L2, q, width, ef, metric, ranked, members, rows, scale, allowed, best_d, best_s)
    else:
        found, scanned = _scan(CODES_DOT, q, width, ef, metric, ranked, members, rows, scale, allowed, best_d, best_s)
    if coded:  # the approximate best, measured exactly
        for i in range(found):
            best_d[i] = _distance(q, vectors, inv_norm, best_s[i], metric)
    order = np.argsort(best_d[:found])
    found = min(found, k)
    for i in range(found):
        out_slots[i] = best_s[order[i]]
        out_dist[i] = best_d[order[i]]
    return found, scanned


@numba.njit(cache=True, nogil=True, fastmath=True, inline="always")
def _distance(q, vectors, inv_norm, slot, metric):
    if metric == L2:
        return l2_row(q, vectors, slot)
    if metric == COSINE:
        return numba.float32(1.0) - dot_row(q, vectors, slot) * inv_norm[slot]
    return -dot_row(q, vectors, slot)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _ranked_shortlists(q, metric, lists, shortlist_node, centroids):
    """A tenant's shortlists keyed by the distance from q to each one's node centroid, in buckets
    of equal key width, nearest bucket first: (keys, lists, bucket_start), bucket b holding
    [bucket_start[b], bucket_start[b + 1]) in no order (`_next_bucket` sorts it when it is reached).

    A counting sort into m / 4 buckets rather than a heap: a search reads a few dozen of its
    tenant's hundreds of lists, and heapifying them all cost more than their centroid distances
    (2.5 of 4.5 us a query on GloVe x WordNet, in mispredicted branches). `centroids`: the tree's,
    flat (`ClusteringTree.flat`; distance.py says how flat rows are read)."""
    m = lists.shape[0]
    key = np.empty(m, np.float32)
    low, high = np.float32(np.inf), np.float32(-np.inf)
    dim = q.shape[0]
    fixed = SPAN // 2 < dim <= SPAN  # a loop of SPAN values from each row's start (distance.py)
    span, n_dims = numba.uint64(SPAN), numba.uint64(dim)  # unsigned indexes (distance.py)
    padded = np.zeros(SPAN, np.float32)  # q, then zeros: the next row's values weigh nothing
    inside = np.zeros(SPAN, np.float32)  # (L2) 1 for q's dimensions, 0 past them
    if fixed:
        padded[:dim] = q
        inside[:dim] = 1.0
    for i in range(m):
        if i + AHEAD < m:
            prefetch_span(centroids, shortlist_node[lists[i + AHEAD]] * dim, dim)
        row = numba.uint64(shortlist_node[lists[i]]) * n_dims
        d = numba.float32(0.0)
        if fixed:
            if metric == L2:
                for c in range(span):
                    diff = (padded[c] - centroids[row + c]) * inside[c]
                    d += diff * diff
            else:
                for c in range(span):
                    d += padded[c] * centroids[row + c]
        elif metric == L2:
            for c in range(n_dims):
                diff = q[c] - centroids[row + c]
                d += diff * diff
        else:
            for c in range(n_dims):
                d += q[c] * centroids[row + c]
        if metric != L2:
            d = numba.float32(1.0) - d if metric == COSINE else -d
        key[i] = d
        low = min(low, d)
        high = max(high, d)
    n_buckets = max(m // 4, 1)
    spread = high - low
    scale = np.float32((n_buckets - 0.01) / spread) if spread > 0 else np.float32(0.0)
    bucket = np.empty(m, np.int64)
    bucket_start = np.zeros(n_buckets + 1, np.int64)
    for i in range(m):
        b = min(max(int((key[i] - low) * scale), 0), n_buckets - 1)
        bucket[i] = b
        bucket_start[b + 1] += 1
    for b in range(n_buckets):
        bucket_start[b + 1] += bucket_start[b]
    fill = bucket_start[:n_buckets].copy()
    order_key = np.empty(m, np.float32)
    order_list = np.empty(m, np.int64)
    for i in range(m):
        at = fill[bucket[i]]
        fill[bucket[i]] = at + 1
        order_key[at] = key[i]
        order_list[at] = lists[i]
    return order_key, order_list, bucket_start


@numba.njit(cache=True, nogil=True, fastmath=True)
def _next_bucket(order_key, order_list, bucket_start, b):
    """Sort bucket b by key, in place: insertion for the few it usually holds, a sort for many
    (keys bunched by one far outlier widening the buckets)."""
    lo, hi = bucket_start[b], bucket_start[b + 1]
    if hi - lo > 16:
        order = np.argsort(order_key[lo:hi]) + lo
        order_key[lo:hi] = order_key[order]
        order_list[lo:hi] = order_list[order]
        return
    for i in range(lo + 1, hi):
        key, val = order_key[i], order_list[i]
        j = i - 1
        while j >= lo and order_key[j] > key:
            order_key[j + 1] = order_key[j]
            order_list[j + 1] = order_list[j]
            j -= 1
        order_key[j + 1] = key
        order_list[j + 1] = val


@numba.njit(cache=True, nogil=True, fastmath=True)
def _scan(kind, q, width, ef, metric, ranked, members, rows, scale, allowed, best_d, best_s):
    """Scan shortlists nearest first into the max-heap best_d/best_s of `width` entries, until
    the stopping rule above; returns how many it holds and how many candidates it examined.
    `kind` (a compile-time constant, so that each kind's loop over members holds no branch of
    the others): ROWS, exact distances of float32 rows, those `allowed` only if it is not empty;
    CODES_DOT or CODES_L2, approximate distances from codes (no filter).

    (Scoring members in a function of its own, or the heap's update in one, cost 1.5x: numba
    then keeps them out of this loop.)"""
    numba.literally(kind)
    order_key, order_list, bucket_start = ranked
    mem_data, mem_start, mem_size = members
    vectors, inv_norm = rows
    codes, code_lo, code_step = scale
    coded = kind != ROWS
    filtered = allowed.size > 0
    dim = q.shape[0]
    # The query on the codes' scale, and (L2) the scale, zeros past the dimensions: the codes are
    # flat rows, read as distance.py says (loops of fixed length, unsigned indexes).
    fixed = SPAN // 2 < dim <= SPAN
    span, n_dims = numba.uint64(SPAN), numba.uint64(dim)
    qa = np.zeros(max(dim, SPAN) if coded else 0, np.float32)
    sa = np.zeros(max(dim, SPAN) if kind == CODES_L2 else 0, np.float32)
    base = numba.float32(0.0)
    if coded:
        for j in range(dim):
            if metric == L2:
                qa[j] = q[j] - code_lo[j]
                sa[j] = code_step[j]
            else:
                qa[j] = q[j] * code_step[j]
                base += q[j] * code_lo[j]
    found = 0
    scanned = 0
    m = order_list.shape[0]
    at = 0  # the next shortlist to scan
    sorted_to = 0  # order_list[:sorted_to] is in key order
    bucket = 0
    budget, window = 4 * ef, max(ef // 4, 1)
    improved_at = 0  # candidates scanned when the best list last improved
    while at < m and (found < width or (scanned < budget and scanned - improved_at < window)):
        while at >= sorted_to:
            _next_bucket(order_key, order_list, bucket_start, bucket)
            bucket += 1
            sorted_to = bucket_start[bucket]
        l = order_list[at]
        at += 1
        start = mem_start[l]
        end = start + mem_size[l]
        # Loads ahead: the member slots of the list after the next (a list's first read of its
        # slots missed the cache, ~5% of a scan), and the rows of the next list's members.
        if at + 1 < sorted_to:
            prefetch_at(mem_data, mem_start[order_list[at + 1]])
        if at < sorted_to:
            nxt = mem_start[order_list[at]]
            for p in range(nxt, nxt + min(AHEAD, mem_size[order_list[at]])):
                if coded:
                    prefetch_span(codes, mem_data[p] * dim, dim)
                else:
                    prefetch_row(vectors, mem_data[p])
        improved = found < width
        for p in range(start, end):
            if p + AHEAD < end:
                if coded:
                    prefetch_span(codes, mem_data[p + AHEAD] * dim, dim)
                else:
                    prefetch_row(vectors, mem_data[p + AHEAD])
            slot = mem_data[p]
            if kind == ROWS:
                if filtered:
                    if allowed[slot] == 0:
                        continue
                    scanned += 1
                d = _distance(q, vectors, inv_norm, slot, metric)
            elif kind == CODES_L2:
                # A loop of fixed length (distance.py: 6.5 against 3.9 ns a GloVe code), written
                # out here: in a function of its own, or with a branch on the metric inside it, it
                # was not vectorised at all (2-3x slower).
                row = numba.uint64(slot) * n_dims
                d = numba.float32(0.0)
                if fixed:
                    for c in range(span):
                        diff = qa[c] - sa[c] * numba.float32(codes[row + c])
                        d += diff * diff
                else:
                    for c in range(n_dims):
                        diff = qa[c] - sa[c] * numba.float32(codes[row + c])
                        d += diff * diff
            else:
                row = numba.uint64(slot) * n_dims
                acc = base
                if fixed:
                    for c in range(span):
                        acc += qa[c] * numba.float32(codes[row + c])
                else:
                    for c in range(n_dims):
                        acc += qa[c] * numba.float32(codes[row + c])
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
            scanned += end - start
        if improved:
            improved_at = scanned
    return found, scanned


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
               allowed, slot_ids, turns, me):
    """One query, end to end: (ids, distances) best first, or empty arrays and False if q is unusable.
    `turns`, `me`: the threads' table and the caller's slot in it (handoff.py): before it returns
    it may wait, briefly, for another searching thread to let go of the GIL."""
    handoff.enter(turns, me)
    prepared, usable = prepare_query(q, metric)
    if not usable:
        handoff.leave(turns, me)
        return np.empty(0, np.int64), np.empty(0, np.float32), False
    slots = np.empty(k, np.int64)
    dists = np.empty(k, np.float32)
    found, _ = search_tenant(prepared, k, ef, metric, tenant, dir_data, dir_start, dir_size, shortlist_node,
                          centroids, mem_data, mem_start, mem_size, vectors, inv_norm, codes, code_lo, code_step,
                          tenant_count, allowed, slots, dists)
    ids = np.empty(found, np.int64)
    for i in range(found):
        ids[i] = slot_ids[slots[i]]
    out = dists[:found].copy()
    handoff.leave(turns, me)
    return ids, out, True


@numba.njit(cache=True, nogil=True)
def search_batch_serial(queries, tenants, k, ef, metric, dir_data, dir_start, dir_size, shortlist_node,
                        centroids, mem_data, mem_start, mem_size, vectors, inv_norm, codes, code_lo, code_step,
                        tenant_count, allowed, out_slots, out_dist):
    """The batch one query after another; returns the candidates examined in all."""
    examined = 0
    for i in range(queries.shape[0]):
        examined += search_tenant(queries[i], k, ef, metric, tenants[i], dir_data, dir_start, dir_size,
                                  shortlist_node, centroids, mem_data, mem_start, mem_size, vectors, inv_norm, codes,
                                  code_lo, code_step, tenant_count, allowed, out_slots[i], out_dist[i])[1]
    return examined


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
    """One query scanned exactly over `rows` (prepared for the metric, flat: see `_exact_scan`;
    row i is slot slots[i]) in one call: (ids, distances) best first, or empty arrays and False
    if q is unusable. For the few allowed vectors of a narrow filter, where a query's fixed costs
    are most of its time.

    Not fastmath itself: the query's NaN check must not be folded away (a fastmath caller would
    impose its flags on an inlined `prepare_query`); only the scan below is."""
    prepared, usable = prepare_query(q, metric)
    if not usable:
        return np.empty(0, np.int64), np.empty(0, np.float32), False
    ids, dists = _exact_scan(prepared, k, metric, rows, slots, slot_ids)
    return ids, dists, True


@numba.njit(cache=True, nogil=True, fastmath=True)
def _exact_scan(prepared, k, metric, rows, slots, slot_ids):
    """`rows` flat (distance.py): row i, of slot slots[i], at i * dim (`CuratorIndex._candidates`):
    3.6 against 5.3 ns a GloVe row read as a matrix."""
    n, dim = slots.shape[0], prepared.shape[0]
    k = min(k, n)
    fixed = SPAN // 2 < dim <= SPAN
    span, n_dims = numba.uint64(SPAN), numba.uint64(dim)
    padded = np.zeros(max(dim, SPAN), np.float32)  # the query, then zeros
    inside = np.zeros(max(dim, SPAN), np.float32)  # (L2) 1 for its dimensions, 0 past them
    padded[:dim] = prepared
    inside[:dim] = 1.0
    keys = np.full(k, np.inf, np.float32)
    vals = np.zeros(k, np.int64)
    for i in range(n):
        row = numba.uint64(i) * n_dims
        d = numba.float32(0.0)
        if metric == L2:
            if fixed:
                for c in range(span):
                    diff = (padded[c] - rows[row + c]) * inside[c]
                    d += diff * diff
            else:
                for c in range(n_dims):
                    diff = padded[c] - rows[row + c]
                    d += diff * diff
        else:
            if fixed:
                for c in range(span):
                    d += padded[c] * rows[row + c]
            else:
                for c in range(n_dims):
                    d += padded[c] * rows[row + c]
            d = numba.float32(1.0) - d if metric == COSINE else -d
        if i < k:
            keys[i] = d
            vals[i] = i
            if i == k - 1:
                for j in range(k // 2 - 1, -1, -1):
                    sift_down_max(keys, vals, k, j)
        elif d < keys[0]:
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
