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
  an array kept between searches, cleared once every 255 searches;
- asks the CPU for all of an expansion's new neighbours' vectors before scoring the first of them
  (`prefetch_row`): their loads overlap instead of waiting one after another;
- counts the distances it computed (`visits`), the figure the planner's graph cost is made of.

The bitmap is faiss's IDSelectorBitmap layout: bit (node & 7) of byte (node >> 3); empty means
every node is allowed.
"""

import numba
import numpy as np

from .distance import distance_row
from .heaps import push_max, push_min, sift_down_max, sift_down_min
from .prefetch import prefetch_row


@numba.njit(cache=True, inline="always")
def _allowed(bitmap, node):
    return bitmap.size == 0 or (bitmap[node >> 3] >> (node & 7)) & 1


@numba.njit(cache=True, nogil=True, fastmath=True)
def search(q, k, ef, metric, vectors, neighbors, offsets, cum, entry, max_level, bitmap, visited, stamp,
           out_nodes, out_dist, visits):
    """Fill out_nodes/out_dist (length >= k) with up to k allowed nodes, nearest first; returns how
    many, and adds the distances computed to visits[0]. q is prepared for the metric (unit length
    under cosine), as the graph's vectors are."""
    if entry < 0:
        return 0
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
    fresh = np.empty(degree, np.int32)
    while n_cand > 0:
        d_near, near = cand_d[0], cand_n[0]
        if n_res == ef and d_near > res_d[0]:
            break
        n_cand -= 1
        cand_d[0], cand_n[0] = cand_d[n_cand], cand_n[n_cand]
        sift_down_min(cand_d, cand_n, n_cand, 0)
        begin = offsets[near]
        n_new = 0
        for p in range(begin, begin + degree):  # the unvisited neighbours, marked
            node = neighbors[p]
            if node < 0:
                break
            if visited[node] != stamp:
                visited[node] = stamp
                fresh[n_new] = node
                n_new += 1
        for i in range(n_new):
            prefetch_row(vectors, fresh[i])
        computed += n_new
        for i in range(n_new):
            node = fresh[i]
            d = distance_row(q, vectors, node, metric)
            if n_res < ef or d < res_d[0]:
                if n_cand == capacity:
                    capacity *= 2
                    grown_d = np.empty(capacity, np.float32)
                    grown_n = np.empty(capacity, np.int32)
                    grown_d[:n_cand] = cand_d[:n_cand]
                    grown_n[:n_cand] = cand_n[:n_cand]
                    cand_d, cand_n = grown_d, grown_n
                n_cand = push_min(cand_d, cand_n, n_cand, d, node)
                if _allowed(bitmap, node):
                    if n_res < ef:
                        n_res = push_max(res_d, res_n, n_res, d, node)
                    else:
                        res_d[0], res_n[0] = d, node
                        sift_down_max(res_d, res_n, n_res, 0)

    visits[0] += computed
    order = np.argsort(res_d[:n_res])
    found = min(k, n_res)
    for i in range(found):
        out_nodes[i] = res_n[order[i]]
        out_dist[i] = res_d[order[i]]
    return found
