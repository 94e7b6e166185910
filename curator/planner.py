"""The planner of filtered searches: what a query may return, and the cheapest way to search it.

For a (tenant, filter) pair, `Allowed` holds the vectors a query may return (a mask over slots),
how many, and what the plans need from it, each made once and reused by every query with the
same pair until the next write: the allowed rows gathered for exact scans, the graph's node
bitmap. `choose` compares the plans' costs, counted in vectors read:

- exact: every allowed vector, read in order, from rows gathered once per filter and kept while
  they take at most `KEPT_ROWS_BYTES`; past that they are gathered from the store for each query,
  which costs `GATHERED_READ` in-order reads a vector (measured: 200k GloVe rows, 19 ms a query
  against 1.2 ms for rows kept in order);
- tree: the tenant's sub-tree, whose scan reads about ef / 2 members to meet its budget of
  allowed candidates, and 1 / (allowed fraction of the tenant) times that with a filter; not for
  tenants over `tree_max_tenant` vectors, whose filtered recall falls short (measured: 0.93 at
  50% selectivity in a 400k tenant) where the graph's does not;
- graph: an HNSW search (`graph_search.py`) visits about M neighbours per step of its beam, in
  random memory order (`hnsw_visit_cost` times the cost of an in-order read, 20 as measured
  here). Its beam holds allowed nodes only, so under a filter it walks on until it has met a beam
  of them: the walk grows as 1 / (allowed fraction), and the beam itself need not widen (recall
  at a given beam rises as the filter narrows).

The constants were measured on GloVe (50-d, 400k) on this project's 2-core machine
(benchmarks/filtered.py): an exact scan of 40k allowed vectors took 0.23 ms (5.8 ns a vector);
a graph search with a beam of 60 over half the nodes took 0.34 ms (2 938 QPS).
The plan is reported with every answer.
"""

from dataclasses import dataclass, field

import numpy as np

TREE_READ = 0.5  # members a tree scan reads per unit of ef
KEPT_ROWS_BYTES = 8 << 20  # an exact scan's gathered rows are kept with the filter up to this size
GATHERED_READ = 16.0  # an exact scan's vector gathered anew, in in-order reads


@dataclass
class Allowed:
    mask: np.ndarray  # bool over slots
    count: int
    tenant_size: int  # the tenant's vectors, or the collection's when no tenant
    row_bytes: int  # bytes of one prepared row (an exact scan reads count of them)
    candidates: tuple | None = None  # (slots, rows prepared for the metric), for exact scans
    bitmap: tuple | None = None  # (graph, packed node bitmap), for graph searches
    on_device: tuple | None = None  # (device mirror, allowed slots there), for device scans (device_search.py)
    plans: dict = field(default_factory=dict)  # (k, ef) -> the plan chosen


def graph_beam(ef: int, default_ef: int, hnsw_ef: int, k: int) -> int:
    """The graph's beam for the recall knob `ef`: the collection's hnsw_ef at the default ef."""
    return int(min(max(hnsw_ef * ef / default_ef, k), 16_384))


def choose(allowed: Allowed, tenant: str | None, k: int, ef: int, config, n_live: int) -> str:
    plan = allowed.plans.get((k, ef))
    if plan is None:
        plan = allowed.plans[(k, ef)] = _cheapest(allowed, tenant, k, ef, config, n_live)
    return plan


def _cheapest(allowed: Allowed, tenant: str | None, k: int, ef: int, config, n_live: int) -> str:
    if allowed.count <= max(k, config.exact_limit):
        return "exact"
    kept = allowed.count * allowed.row_bytes <= KEPT_ROWS_BYTES
    costs = {"exact": allowed.count * (1.0 if kept else GATHERED_READ)}
    if tenant is not None and allowed.tenant_size <= config.tree_max_tenant:
        costs["tree"] = TREE_READ * ef * allowed.tenant_size / allowed.count
    if config.hnsw is not False:
        beam = graph_beam(ef, config.ef, config.hnsw_ef, k)
        fraction = allowed.count / max(n_live, 1)
        costs["graph"] = config.hnsw_visit_cost * config.hnsw_m * beam * 0.5 / fraction
    return min(costs, key=costs.get)
