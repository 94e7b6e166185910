"""Does caching a category pay? Break-even per category, from measured costs.

A lookup costs c_miss on every request (embedding + search); a hit saves the upstream call c_llm
but costs the body fetch c_hit. Caching pays when hit_rate * (c_llm - c_hit) > c_miss, so the
break-even hit rate is c_miss / (c_llm - c_hit). Each category keeps running means of the three
costs and its observed hit rate. With `auto_bypass` a category whose observed hit rate stays below
break-even (after `min_lookups`) is bypassed: lookups skip the search, except one in
`probe_every`, which keeps measuring so the category comes back when it pays again.

The cache asks with one tenant's own counts of the category (`should_bypass(category, counts)`):
whether a tenant's lookups are bypassed follows its own hit rate, never another tenant's traffic;
the costs (the machinery's and the model's, shared by all) are pooled per category.
"""

import threading


class CategoryCosts:
    __slots__ = ("lookups", "hits", "miss_seconds", "misses_timed", "hit_seconds", "hits_timed",
                 "upstream_seconds", "upstream_calls", "skipped")

    def __init__(self):
        self.lookups = self.hits = self.misses_timed = self.hits_timed = self.upstream_calls = self.skipped = 0
        self.miss_seconds = self.hit_seconds = self.upstream_seconds = 0.0


class Economics:
    def __init__(self, min_lookups: int = 200, probe_every: int = 20):
        self.min_lookups, self.probe_every = min_lookups, probe_every
        self._lock = threading.Lock()
        self._costs: dict[str, CategoryCosts] = {}

    def _of(self, category: str) -> CategoryCosts:
        costs = self._costs.get(category)
        if costs is None:
            costs = self._costs[category] = CategoryCosts()
        return costs

    def lookup(self, category: str, hit: bool, search_seconds: float, fetch_seconds: float = 0.0) -> None:
        with self._lock:
            costs = self._of(category)
            costs.lookups += 1
            if hit:
                costs.hits += 1
                costs.hits_timed += 1
                costs.hit_seconds += fetch_seconds
            else:
                costs.misses_timed += 1
                costs.miss_seconds += search_seconds

    def upstream(self, category: str, seconds: float) -> None:
        with self._lock:
            costs = self._of(category)
            costs.upstream_calls += 1
            costs.upstream_seconds += seconds

    def should_bypass(self, category: str, counts: tuple[int, int, int] | None = None) -> bool:
        """True when this lookup should skip the search (the category does not pay; not a probe).
        `counts`: (lookups searched, hits, lookups in all) of the one asking (a tenant's own),
        which decide the hit rate and which lookup probes; None: the category's pooled counts."""
        with self._lock:
            costs = self._of(category)
            report = self._report(costs)
            searched, hits, seen = counts if counts is not None else (costs.lookups, costs.hits, None)
            if report["break_even_hit_rate"] is None or searched < self.min_lookups:
                return False
            if hits / searched >= report["break_even_hit_rate"]:
                return False
            if seen is None:
                costs.skipped += 1
                return costs.skipped % self.probe_every != 0
            bypass = (seen + 1) % self.probe_every != 0
            costs.skipped += bypass
            return bypass

    def report(self) -> dict[str, dict]:
        with self._lock:
            return {category: self._report(costs) for category, costs in sorted(self._costs.items())}

    @staticmethod
    def _report(costs: CategoryCosts) -> dict:
        miss = costs.miss_seconds / costs.misses_timed if costs.misses_timed else None
        hit = costs.hit_seconds / costs.hits_timed if costs.hits_timed else 0.0
        llm = costs.upstream_seconds / costs.upstream_calls if costs.upstream_calls else None
        break_even = None
        if miss is not None and llm is not None:
            break_even = miss / (llm - hit) if llm > hit else 1.0
        return {"lookups": costs.lookups, "hit_rate": costs.hits / costs.lookups if costs.lookups else 0.0,
                "lookup_cost_s": miss, "hit_fetch_cost_s": hit, "upstream_cost_s": llm,
                "break_even_hit_rate": break_even, "bypassed_lookups": costs.skipped}
