"""The compiled search of the HNSW graph, over the arrays faiss built, with a filter bitmap.

faiss builds and grows the graph (`graph.py`); its search is not the one filtered queries need.
faiss keeps non-matching nodes in the same bounded candidate list as matching ones, so under a
filter that allows half the nodes its beam is in effect half as wide, and every call allocates
a visited table the size of the graph. This search reads faiss's arrays in place (no copy) and:

- descends the upper layers greedily, as HNSW does, ignoring the filter (they only route);
- on layer 0 keeps two heaps: candidates to expand (any node) and the best `ef` results (only
  nodes whose bit is set in the bitmap). A node joins the candidates while fewer than ef results
  are held or it is nearer than the worst of them; the search ends when the nearest candidate
  left is farther than the worst of ef results. A filter that allows few nodes near the query
  therefore widens the walk by itself until ef allowed nodes are found, or the graph is exhausted;
- marks visited nodes with a per-search stamp (a byte per node, so the table stays in cache) in
  an array kept between searches, cleared once every 255 searches; the table's last byte holds
  the stamp. An expansion's neighbours are marked without a branch on their marks (half of them
  are already marked, unpredictably);
- asks the CPU for all of an expansion's new neighbours' vectors before scoring the first of them
  (`prefetch_row`), and for the links of the candidate likely to be expanded next (the nearest
  left) before scoring this one's: their loads overlap instead of waiting one after another
  (40k GloVe, 50% filter: 56 -> 43 ns a visit);
- scores the new neighbours four at a time (`_four_distances`: four independent sums, the query
  read once), then lists those that join the candidates and, of those, the allowed ones, without
  a branch per neighbour: both tests go either way at random, and their mispredicted branches
  were most of a visit's time (40k GloVe, 50% filter: 43 -> 28 ns a visit, with the heaps'
  branch-free choice of child);
- counts the distances it computed (`visits`), the figure the planner's graph cost is made of.

The bitmap is faiss's IDSelectorBitmap layout: bit (node & 7) of byte (node >> 3); empty means
every node is allowed.
"""

import numba
import numpy as np

from .distance import COSINE, L2, distance_row
from .heaps import push_max, push_min, sift_down_max, sift_down_min
from .prefetch import prefetch_at, prefetch_row


@numba.njit(cache=True, inline="always")
def _allowed(bitmap, node):
    return bitmap.size == 0 or (bitmap[node >> 3] >> (node & 7)) & 1


@numba.njit(cache=True, inline="always", fastmath=True)
def _four_distances(q, vectors, a, b, c, d, metric):
    """Distances from q to four rows in one pass over q: four independent sums that the CPU runs
    side by side, and q read once for all four."""
    s0 = numba.float32(0.0)
    s1 = numba.float32(0.0)
    s2 = numba.float32(0.0)
    s3 = numba.float32(0.0)
    if metric == L2:
        for j in range(q.shape[0]):
            x = q[j]
            e0 = x - vectors[a, j]
            e1 = x - vectors[b, j]
            e2 = x - vectors[c, j]
            e3 = x - vectors[d, j]
            s0 += e0 * e0
            s1 += e1 * e1
            s2 += e2 * e2
            s3 += e3 * e3
        return s0, s1, s2, s3
    for j in range(q.shape[0]):
        x = q[j]
        s0 += x * vectors[a, j]
        s1 += x * vectors[b, j]
        s2 += x * vectors[c, j]
        s3 += x * vectors[d, j]
    if metric == COSINE:
        one = numba.float32(1.0)
        return one - s0, one - s1, one - s2, one - s3
    return -s0, -s1, -s2, -s3


@numba.njit(cache=True, nogil=True, fastmath=True)
def search(q, k, ef, metric, vectors, neighbors, offsets, cum, entry, max_level, bitmap, visited,
           node_slot, out_slots, out_dist, visits):
    """Fill out_slots/out_dist (length >= k) with the slots (node_slot of the nodes) and distances
    of up to k allowed nodes, nearest first; returns how many, and adds the distances computed to
    visits[0]. q is prepared for the metric (unit length under cosine), as the graph's vectors are.
    visited has a byte per node and one more, its last, the stamp of the last search that used it."""
    if entry < 0:
        return 0
    stamp = visited[visited.size - 1] + 1
    if stamp == 256:  # a byte per node keeps the table in cache; start the stamps over
        visited[:] = 0
        stamp = 1
    visited[visited.size - 1] = stamp
    ef = max(ef, k)
    current = entry
    d_current = distance_row(q, vectors, current, metric)
    computed = 1
    for level in range(max_level, 0, -1):  # upper layers: greedy, unfiltered
        moved = True
        while moved:
            moved = False
            begin = offsets[current] + cum[level]
            end = offsets[current] + cum[level + 1]
            for p in range(begin, end):
                node = neighbors[p]
                if node < 0:
                    break
                d = distance_row(q, vectors, node, metric)
                computed += 1
                if d < d_current:
                    d_current, current, moved = d, node, True

    capacity = max(4 * ef, 256)
    cand_d = np.empty(capacity, np.float32)
    cand_n = np.empty(capacity, np.int32)
    res_d = np.empty(ef, np.float32)
    res_n = np.empty(ef, np.int32)
    n_cand = push_min(cand_d, cand_n, 0, d_current, current)
    n_res = 0
    if _allowed(bitmap, current):
        n_res = push_max(res_d, res_n, 0, d_current, current)
    visited[current] = stamp
    degree = cum[1]
    fresh = np.empty(degree + 3, np.int32)
    fresh_d = np.empty(degree + 3, np.float32)
    keep = np.empty(degree, np.int32)
    while n_cand > 0:
        d_near, near = cand_d[0], cand_n[0]
        if n_res == ef and d_near > res_d[0]:
            break
        n_cand -= 1
        cand_d[0], cand_n[0] = cand_d[n_cand], cand_n[n_cand]
        sift_down_min(cand_d, cand_n, n_cand, 0)
        if n_cand > 0:  # the next to expand, unless this one's neighbours bring a nearer one
            prefetch_at(neighbors, offsets[cand_n[0]])
        begin = offsets[near]
        n_new = 0
        for p in range(begin, begin + degree):  # the unvisited neighbours, marked; no branch on the mark
            node = neighbors[p]
            if node < 0:
                break
            fresh[n_new] = node
            n_new += visited[node] != stamp
            visited[node] = stamp
        for i in range(n_new):
            prefetch_row(vectors, fresh[i])
        computed += n_new
        for i in range(n_new, (n_new + 3) & ~3):  # pad the last four with a real row
            fresh[i] = near
        for i in range(0, n_new, 4):
            fresh_d[i], fresh_d[i + 1], fresh_d[i + 2], fresh_d[i + 3] = _four_distances(
                q, vectors, fresh[i], fresh[i + 1], fresh[i + 2], fresh[i + 3], metric)
        # Which of them join the candidates, then which of those are allowed: each a list made
        # without a branch per neighbour (both tests go either way unpredictably). The bar is the
        # worst result before this expansion: a neighbour it lets in that a better result met
        # meanwhile would have kept out is farther than the worst result whenever it comes up,
        # so the walk ends before expanding it, as it would have.
        bar = res_d[0] if n_res == ef else np.inf
        n_keep = 0
        for i in range(n_new):
            keep[n_keep] = i
            n_keep += fresh_d[i] < bar
        if n_cand + n_keep > capacity:
            capacity = 2 * (n_cand + n_keep)
            grown_d = np.empty(capacity, np.float32)
            grown_n = np.empty(capacity, np.int32)
            grown_d[:n_cand] = cand_d[:n_cand]
            grown_n[:n_cand] = cand_n[:n_cand]
            cand_d, cand_n = grown_d, grown_n
        n_ok = 0
        for j in range(n_keep):
            i = keep[j]
            node = fresh[i]
            n_cand = push_min(cand_d, cand_n, n_cand, fresh_d[i], node)
            keep[n_ok] = i
            n_ok += _allowed(bitmap, node)
        for j in range(n_ok):
            i = keep[j]
            d = fresh_d[i]
            if n_res < ef:
                n_res = push_max(res_d, res_n, n_res, d, fresh[i])
            elif d < res_d[0]:
                res_d[0], res_n[0] = d, fresh[i]
                sift_down_max(res_d, res_n, n_res, 0)

    visits[0] += computed
    found = min(k, n_res)
    while n_res > found:  # the worst beyond k leave the top of the max-heap
        n_res -= 1
        res_d[0], res_n[0] = res_d[n_res], res_n[n_res]
        sift_down_max(res_d, res_n, n_res, 0)
    for i in range(found - 1, -1, -1):  # then the rest, worst first, into place from the back
        out_slots[i] = node_slot[res_n[0]]
        out_dist[i] = res_d[0]
        res_d[0], res_n[0] = res_d[i], res_n[i]
        sift_down_max(res_d, res_n, i, 0)
    return found
