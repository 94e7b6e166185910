"""The planner of filtered searches: what a query may return, and the cheapest way to search it.

For a (tenant, filter) pair, `Allowed` holds the vectors a query may return (a mask over slots),
how many, and what the plans need from it, each made once and reused by every query with the
same pair until the next write: the allowed rows gathered for exact scans, the graph's node
bitmap. `choose` compares the plans' costs, counted in vectors read:

- exact: every allowed vector, read in order (a matrix product);
- tree: the tenant's sub-tree, whose scan reads about ef / 2 members to meet its budget of
  allowed candidates, and 1 / (allowed fraction of the tenant) times that with a filter; not for
  tenants over `tree_max_tenant` vectors, whose filtered recall falls short (measured: 0.93 at
  50% selectivity in a 400k tenant) where the graph's does not;
- graph: an HNSW search visits about M neighbours per step of its beam, in random memory order
  (`hnsw_visit_cost` times the cost of an in-order read, 20 as measured here), and its beam must widen as
  the filter narrows (`graph_beam`), or the search meets too few allowed nodes. The fraction
  that counts is the one near the query: a filter correlated with the vectors may allow half of
  the collection but nothing around the query, and the beam must then be wider still
  (`local_fraction`, from the query's leaf of the shared tree).

The constants were measured on GloVe (50-d, 400k) on this project's 2-core machine
(benchmarks/filtered.py): an exact scan of 40k allowed vectors took 0.23 ms (5.8 ns a vector),
a graph search with a beam of 214 took 0.9 ms (about 130 ns per neighbour visit, M = 32).
The plan is reported with every answer.
"""

from dataclasses import dataclass, field

import numpy as np

TREE_READ = 0.5  # members a tree scan reads per unit of ef


@dataclass
class Allowed:
    mask: np.ndarray  # bool over slots
    count: int
    tenant_size: int  # the tenant's vectors, or the collection's when no tenant
    candidates: tuple | None = None  # (slots, rows prepared for the metric), for exact scans
    bitmap: tuple | None = None  # (graph, packed node bitmap), for graph searches
    plans: dict = field(default_factory=dict)  # (k, ef) -> the plan chosen
    leaf_fraction: np.ndarray | None = None  # per tree node: the fraction of its vectors allowed


def graph_beam(ef: int, default_ef: int, hnsw_ef: int, fraction: float, k: int) -> int:
    """The graph's beam for the recall knob `ef` when `fraction` of its nodes are allowed: the
    collection's hnsw_ef at the default ef, widened as fraction**-0.75 below one half (the beam
    that kept recall@10 >= 0.95 at 50%, 10% and 1% selectivity on GloVe)."""
    beam = hnsw_ef * ef / default_ef * max(1.0, (0.5 / max(fraction, 1e-9)) ** 0.75)
    return int(min(max(beam, k), 16_384))


def choose(allowed: Allowed, tenant: str | None, k: int, ef: int, config, n_live: int) -> str:
    plan = allowed.plans.get((k, ef))
    if plan is None:
        plan = allowed.plans[(k, ef)] = _cheapest(allowed, tenant, k, ef, config, n_live)
    return plan


def _cheapest(allowed: Allowed, tenant: str | None, k: int, ef: int, config, n_live: int) -> str:
    if allowed.count <= max(k, config.exact_limit):
        return "exact"
    costs = {"exact": float(allowed.count)}
    if tenant is not None and allowed.tenant_size <= config.tree_max_tenant:
        costs["tree"] = TREE_READ * ef * allowed.tenant_size / allowed.count
    if config.hnsw is not False:
        beam = graph_beam(ef, config.ef, config.hnsw_ef, allowed.count / max(n_live, 1), k)
        costs["graph"] = config.hnsw_visit_cost * config.hnsw_m * beam
    return min(costs, key=costs.get)


def local_fraction(allowed: Allowed, leaf: int, fraction: float) -> float:
    """The allowed fraction that sets the graph's beam for a query in `leaf`: the collection's,
    or less where the query's own leaf holds fewer allowed vectors (down to 1/32 of it)."""
    near = float(allowed.leaf_fraction[leaf])
    return fraction if near >= fraction else max(near, fraction / 32)
