"""The planner of filtered searches: what a query may return, and the cheapest way to search it.

For a (tenant, filter) pair, `Allowed` holds the vectors a query may return (a mask over slots),
how many, and what the plans need from it, each made once and reused by every query with the
same pair until the next write: the allowed rows gathered for exact scans, the graph's node
bitmap. `choose` compares the plans' costs, counted in vectors read in order (an exact scan's
unit):

- exact: every allowed vector, read in order, from rows gathered once per filter and kept while
  they take at most `KEPT_ROWS_BYTES`; past that they are gathered from the store for each query,
  which costs `GATHERED_READ` in-order reads a vector;
- tree: the tenant's sub-tree: a part that grows with the tenant (`TREE_TENANT_READ` a tenant
  vector: descending its sub-tree, its shortlists) and a scan that reads `TREE_READ` per unit of
  ef to meet its budget of allowed candidates, 1 / (allowed fraction of the tenant) times that
  with a filter, counted at `TREE_RECALL_EF` times the ef, where its filtered recall meets the
  graph's; not for tenants over `tree_max_tenant` vectors, whose filtered recall falls short
  (measured: 0.93 at 50% selectivity in a 400k tenant) where the graph's does not;
- graph: an HNSW search (`graph_search.py`) whose beam holds allowed nodes only, so under a filter
  it walks on until it has met a beam of them. `graph_visits` is how many distances such a walk
  computes: WALK * (beam / fraction) ** WALK_EXPONENT on a graph of GRAPH_SIZE nodes, and as
  n ** SIZE_EXPONENT on n nodes (a walk grows less than 1 / fraction: the beam's nodes are near
  the query, and rejected neighbours of its nodes are only scored, not expanded, once the beam is
  full). Each visit is a random read of a vector and its links: `hnsw_visit_cost` in-order reads
  on GRAPH_SIZE nodes, less on smaller graphs, whose vectors and links stay in the CPU's caches
  (as n ** VISIT_SIZE_EXPONENT).

The beam itself (`graph_beam`) is `hnsw_ef` at the default ef on GRAPH_SIZE nodes, and as
sqrt(n / GRAPH_SIZE) of that on n nodes (at least a third of it, and 16): a smaller graph reaches the same
recall with a narrower beam (recall@10 0.95 at 50% selectivity: a beam of 12 on 40k GloVe
vectors, 60 on 400k).

The constants were derived from the figures `benchmarks/filtered.py` prints in its "planner"
section (GloVe 50-d, this project's 2-core machine, one query at a time), in-order reads of
4.7-5.2 ns a vector:

| nodes | ns per visit | visit cost (reads) | visits at beam 16, 50% | at beam 64, 10% | gathered read | tree, 50%: ef 512 / 2048 |
|---|---|---|---|---|---|---|
| 40 000 | 49-70 | 10-15 | 623 | 5 399 | - | 40 / 65 us |
| 100 000 | 74-102 | 15-20 | 775 | 7 907 | 12-15 (50k rows) | 65 / 101 us |
| 400 000 | 104-116 | 22-24 | 1 193 | 12 635 | 20 (200k rows) | - |

The walk has since become cheaper for the same visits (branch-free lists of an expansion's
neighbours, the next candidate's links asked for early: `graph_search.py`): 38-52 ns a visit on
40k nodes, 49-62 on 100k, 56-69 on 400k, i.e. 8.7 / 11.6 / 13.1 reads, which the benchmark fits as
hnsw_visit_cost 13.5 (`index.IndexConfig`) with VISIT_SIZE_EXPONENT 0.17, the values set (the old
walk's were 22 and 0.32): `python -m benchmarks.filtered --sizes 40k,100k,400k` (1000 queries a
filter, at 656faeb, 17.2 min), the "derived from this run" column of its Planner section in
benchmarks/results/filtered.md.
The two are set together. With either pair the model picks the same plan for every filter and ef
of the benchmark.

The plan is reported with every answer.
"""

from dataclasses import dataclass, field

import numpy as np

from . import filters

TREE_READ = 1.5  # a tree scan's reads per unit of ef / fraction (measured 1.5-2.2 at 50%, 0.5-0.7 at 10%)
TREE_TENANT_READ = 0.12  # ... and per tenant vector, whatever the ef (measured 0.15 at 40k, 0.10 at 100k)
# Under a filter the tree reaches the graph's recall at about 3x the ef (recall@10 at 50%, 40k GloVe:
# graph 0.953 / 0.990 at ef 768 / 2048, tree 0.954 / 0.978 at 2048 / 4096): its cost is compared at that ef.
TREE_RECALL_EF = 3.0
KEPT_ROWS_BYTES = 8 << 20  # an exact scan's gathered rows are kept with the filter up to this size
GATHERED_READ = 16.0  # an exact scan's vector gathered anew, in in-order reads
GRAPH_SIZE = 400_000  # the graph size hnsw_ef, hnsw_visit_cost and WALK were measured at
WALK = 88.0  # distances a filtered walk computes per (beam / fraction) ** WALK_EXPONENT there
WALK_EXPONENT = 0.75
SIZE_EXPONENT = 0.28  # a walk's length grows as n ** SIZE_EXPONENT...
# ...and a visit's cost as n ** VISIT_SIZE_EXPONENT (the caches): fitted with hnsw_visit_cost 13.5 by
# `python -m benchmarks.filtered --sizes 40k,100k,400k` (8.7 / 11.6 / 13.1 reads a visit on 40k / 100k / 400k;
# was 0.32 with 22)
VISIT_SIZE_EXPONENT = 0.17
MIN_BEAM_SCALE = 1 / 3  # a small graph's beam is at least this share of hnsw_ef (at the default ef)...
MIN_BEAM = 16  # ...and at least this (or hnsw_ef if less): recall@10 0.93 at a beam of 10, 0.97 at 16 (40k, 50%)
MAX_BEAM = 16_384


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


def graph_beam(ef: int, config, k: int, n_live: int) -> int:
    """The graph's beam for the recall knob `ef` on a graph of n_live nodes: at the default ef,
    hnsw_ef on GRAPH_SIZE nodes and sqrt(n_live / GRAPH_SIZE) of that on fewer, but at least
    MIN_BEAM_SCALE of it and at least min(hnsw_ef, MIN_BEAM); in proportion to ef otherwise.
    Remembered: every graph search asks, and working it out costs ~1 us of Python."""
    key = (ef, k, n_live, config.hnsw_ef, config.ef)
    beam = _beams.get(key)
    if beam is None:
        scale = max((max(n_live, 1) / GRAPH_SIZE) ** 0.5, MIN_BEAM_SCALE)
        at_default = max(config.hnsw_ef * scale, min(config.hnsw_ef, MIN_BEAM))
        beam = int(min(max(at_default * ef / config.ef, k), MAX_BEAM))
        if len(_beams) >= 4096:
            _beams.clear()  # searches on other threads may race here: at worst a beam is worked out again
        _beams[key] = beam
    return beam


_beams: dict = {}


def graph_visits(beam: int, fraction: float, n_live: int) -> float:
    """Distances a filtered graph walk computes, as measured (see the module's table)."""
    size = max(n_live, 1) / GRAPH_SIZE
    return WALK * size**SIZE_EXPONENT * (beam / max(fraction, 1e-9)) ** WALK_EXPONENT


def costs(allowed: Allowed, tenant: str | None, k: int, ef: int, config, n_live: int) -> dict:
    """Each plan's estimated cost, in vectors read in order."""
    kept = allowed.count * allowed.row_bytes <= KEPT_ROWS_BYTES
    out = {"exact": allowed.count * (1.0 if kept else GATHERED_READ)}
    if tenant is not None and allowed.tenant_size <= config.tree_max_tenant:
        scan = TREE_READ * TREE_RECALL_EF * ef * allowed.tenant_size / allowed.count
        out["tree"] = TREE_TENANT_READ * allowed.tenant_size + scan
    if config.hnsw is not False:
        fraction = allowed.count / max(n_live, 1)
        visit = config.hnsw_visit_cost * (max(n_live, 1) / GRAPH_SIZE) ** VISIT_SIZE_EXPONENT
        out["graph"] = visit * graph_visits(graph_beam(ef, config, k, n_live), fraction, n_live)
    return out


def choose(allowed: Allowed, tenant: str | None, k: int, ef: int, config, n_live: int) -> str:
    plan = allowed.plans.get((k, ef))
    if plan is None:
        plan = allowed.plans[(k, ef)] = _cheapest(allowed, tenant, k, ef, config, n_live)
    return plan


def _cheapest(allowed: Allowed, tenant: str | None, k: int, ef: int, config, n_live: int) -> str:
    if allowed.count <= max(k, config.exact_limit):
        return "exact"
    estimated = costs(allowed, tenant, k, ef, config, n_live)
    return min(estimated, key=estimated.get)


# ---------------------------------------------------------------------------
# The cache key of a filter, remembered by the filter object


class FilterKey:
    """A filter's cache key (`filters.key`) with its hash computed once: the allowed sets are
    looked up by it for every query, and hashing a long "in" list again costs microseconds."""

    __slots__ = ("value", "hash")

    def __init__(self, value):
        self.value, self.hash = value, hash(value)

    def __hash__(self):
        return self.hash

    def __eq__(self, other):
        return isinstance(other, FilterKey) and self.hash == other.hash and self.value == other.value


_KEYS_KEPT = 8
_recent: dict = {}  # id(filter) -> (the filter, a copy of its data, its FilterKey)


def filter_key(spec) -> FilterKey:
    """`filters.key(spec)`, remembered for the last few filter objects: a caller that asks many
    queries with one filter dict skips keying it, which costs as much as a graph search for a
    long list (an "in" of 500 keywords: ~20 us). A remembered filter must still hold the data it
    was keyed from: it is compared with a copy taken then, in one C-level == whose every dict,
    list and scalar is wrapped to be equal only to the same type (`_Exactly`: 1 == 1.0 == True
    otherwise); a list of strings is compared item by item, each by identity first (0.4 us for
    500, against 1.3 us walking the filter in Python). Filters whose lists hold anything but
    strings and filters (== could not tell a change of a number's type without a wrapper per
    item), and dict subclasses, are keyed every time."""
    hit = _recent.get(id(spec))
    if hit is not None and hit[0] is spec and hit[1] == spec:
        return hit[2]
    key = FilterKey(filters.key(spec))
    copy = _copy(spec)
    if copy is not None:
        if len(_recent) >= _KEYS_KEPT:
            _recent.clear()  # searches on other threads may race here: at worst a filter is keyed again
        _recent[id(spec)] = (spec, copy, key)  # the filter is kept alive, so its id stays its own
    return key


_SCALAR = (str, int, float, bool, type(None))


class _Exactly:
    """A part of a filter's remembered copy: equal to a value of exactly its type (not a subclass)
    that == its own value, whose parts are themselves wrapped or strings."""

    __slots__ = ("kind", "value")
    __hash__ = None

    def __init__(self, kind, value):
        self.kind, self.value = kind, value

    def __eq__(self, other):
        return type(other) is self.kind and other == self.value


def _copy(spec):
    """A copy of a filter's data to compare it with later (an `_Exactly`), or None where == could
    not tell a change (a list of numbers) or the filter is not plain data."""
    kind = type(spec)
    if kind is dict:
        out = {}
        for name, value in spec.items():
            if type(name) is not str or (copied := _copy(value)) is None:
                return None
            out[name] = copied
        return _Exactly(dict, out)
    if kind is list or kind is tuple:
        if spec and all(type(item) is dict for item in spec):  # and / or
            parts = [_copy(item) for item in spec]
            return None if any(p is None for p in parts) else _Exactly(kind, kind(parts))
        try:
            "".join(spec)  # every item a str: == then sees any change (a str equals only a str)
        except TypeError:
            return None
        return _Exactly(kind, kind(spec))
    if kind in _SCALAR:
        return _Exactly(kind, spec)
    return None
