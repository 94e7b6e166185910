"""Prometheus metrics: requests by method and status, latency, and the database's size.

Per-tenant request counts are off unless switched on, and then capped: the `top` busiest tenants
get their own label, every other tenant is summed under "_other", so a million tenants cannot
make a million series. Busiest is tracked with a bounded space-saving counter.
"""

import threading
import time
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

OTHER = "_other"


class TopTenants:
    """Approximate counts of the busiest tenants in bounded memory (the space-saving algorithm)."""

    def __init__(self, top: int):
        self.top, self.capacity = top, top * 4
        self.counts: dict[str, int] = {}
        self.total = 0
        self._lock = threading.Lock()

    def add(self, tenant: str) -> None:
        with self._lock:
            self.total += 1
            if tenant in self.counts or len(self.counts) < self.capacity:
                self.counts[tenant] = self.counts.get(tenant, 0) + 1
                return
            victim = min(self.counts, key=self.counts.get)
            self.counts[tenant] = self.counts.pop(victim) + 1

    def snapshot(self) -> list[tuple[str, int]]:
        with self._lock:
            best = sorted(self.counts.items(), key=lambda kv: -kv[1])[: self.top]
            other = self.total - sum(c for _, c in best)
        return best + [(OTHER, other)]


# A tenant named by a call refused for these was not shown to be the caller's: it never becomes
# a label (a label set by strangers would be a channel between tenants, and unbounded)
UNPROVEN = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


class Metrics:
    def __init__(self, db, data_path: str | None, tenant_top: int = 0):
        self.registry = CollectorRegistry()
        self.requests = Counter("curator_requests", "gRPC requests by method and status code",
                                ["method", "code"], registry=self.registry)
        self.latency = Histogram("curator_request_seconds", "gRPC request latency by method", ["method"],
                                 buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                          0.1, 0.25, 0.5, 1, 2.5, 10), registry=self.registry)
        self.tenants = TopTenants(tenant_top) if tenant_top else None
        self.registry.register(_DatabaseCollector(db, data_path, self.tenants))
        # (method, code) -> its counter and histogram series: labels() takes a lock and builds
        # keys on every call, a few microseconds on a search's path
        self._series: dict[tuple[str, grpc.StatusCode], tuple] = {}

    def observe(self, method: str, code: grpc.StatusCode, seconds: float, tenant: str | None = None) -> None:
        series = self._series.get((method, code))
        if series is None:
            series = self._series[(method, code)] = (self.requests.labels(method, code.name),
                                                      self.latency.labels(method))
        series[0].inc()
        series[1].observe(seconds)
        if self.tenants is not None and tenant and code not in UNPROVEN:
            self.tenants.add(tenant)

    def readers(self, status) -> None:
        """`curator_readers{state}` and `curator_reader_incarnations` from `status()` (server/replicas.py)
        at scrape time."""
        self.registry.register(_ReadersCollector(status))


class _ReadersCollector:
    def __init__(self, status):
        self.status = status

    def collect(self):
        readers = self.status()
        states = GaugeMetricFamily("curator_readers", "read replicas by state (starting, catching_up, ready)",
                                   labels=["state"])
        for state in ("starting", "catching_up", "ready"):
            states.add_metric([state], sum(r["state"] == state for r in readers))
        yield states
        # a reader's incarnation grows each time it is replaced; its queue is the writes it has still to apply
        incarnations = GaugeMetricFamily("curator_reader_incarnations", "times each reader was started",
                                         labels=["reader"])
        queued = GaugeMetricFamily("curator_reader_queued_writes", "writes queued for each reader", labels=["reader"])
        ports = GaugeMetricFamily("curator_reader_metrics_port",
                                  "each reader's own Prometheus endpoint (same host): scrape it too", labels=["reader"])
        for r in readers:
            incarnations.add_metric([str(r["number"])], r["incarnation"])
            queued.add_metric([str(r["number"])], r["queued"])
            if r.get("metrics_port"):
                ports.add_metric([str(r["number"])], r["metrics_port"])
        yield incarnations
        yield queued
        yield ports


class _DatabaseCollector:
    """Sizes read from the database at scrape time."""

    def __init__(self, db, data_path, tenants: TopTenants | None):
        self.db, self.data_path, self.tenants = db, data_path, tenants

    def collect(self):
        vectors = GaugeMetricFamily("curator_vectors", "vectors stored", labels=["collection"])
        tenants = GaugeMetricFamily("curator_tenants", "tenants", labels=["collection"])
        memory = GaugeMetricFamily("curator_index_bytes", "index memory by part", labels=["collection", "part"])
        # which device answered each part (curator/device_search.py): only where a device is selected
        device_queries = CounterMetricFamily("curator_device_queries", "queries of batched searches by the device "
                                             "that answered them", labels=["collection", "part", "device"])
        device_memory = GaugeMetricFamily("curator_device_memory_bytes", "device memory a collection's vectors take",
                                          labels=["collection", "device"])
        device_fallbacks = CounterMetricFamily("curator_device_fallbacks", "device errors answered by the CPU instead",
                                               labels=["collection", "device"])
        for name in self.db.list_collections():
            try:
                stats = self.db.collection(name).stats()
            except Exception:  # noqa: BLE001 - dropped between list and read
                continue
            vectors.add_metric([name], stats["vectors"])
            tenants.add_metric([name], stats["tenants"])
            for part, size in stats["memory_bytes"].items():
                memory.add_metric([name, part], size)
            on = stats.get("device") or {}
            if "queries" in on:
                for part, counts in on["queries"].items():
                    device_queries.add_metric([name, part, on["device"]], counts["device"])
                    device_queries.add_metric([name, part, "cpu"], counts["cpu"])
                device_memory.add_metric([name, on["device"]], on["memory_bytes"])
                device_fallbacks.add_metric([name, on["device"]], on["fallbacks"])
        yield from (vectors, tenants, memory, device_queries, device_memory, device_fallbacks)
        if self.data_path:
            size = sum(f.stat().st_size for f in Path(self.data_path).rglob("*") if f.is_file())
            yield GaugeMetricFamily("curator_storage_bytes", "bytes in the data directory", value=size)
        if self.tenants is not None:
            family = CounterMetricFamily("curator_tenant_requests", "requests by tenant (top N, rest in _other)",
                                         labels=["tenant"])
            for tenant, count in self.tenants.snapshot():
                family.add_metric([tenant], count)
            yield family


class MetricsInterceptor(grpc.ServerInterceptor):
    """Times every unary call and counts it by its final status code."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary
        metrics = self.metrics

        def timed(request, context):
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return inner(request, context)
            except Exception:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                tenant = getattr(request, "tenant", None)
                metrics.observe(method, code if code is not None else grpc.StatusCode.OK,
                                time.perf_counter() - start, tenant if isinstance(tenant, str) else None)

        return grpc.unary_unary_rpc_method_handler(
            timed, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


class CacheMetrics:
    """The semantic cache's events as Prometheus series, per category (an `Observer` of the engine).

    Categories come from callers, so only those an admin named get a label of their own: the
    categories of configured policies (and tenant overrides), the classifier's, and the default;
    every other is summed under "_other". No caller can take a label, keep one from another
    category, or make series without bound (a first-come cap could be filled by one tenant)."""

    def __init__(self, registry: CollectorRegistry, cache):
        self.cache = cache
        self.lookups = Counter("curator_cache_lookups", "cache lookups by category and outcome "
                               "(hit, relaxed_hit, miss, near_miss, ambiguous, bypassed)",
                               ["category", "outcome"], registry=registry)
        self.removals = Counter("curator_cache_removed_entries", "cache entries removed by category and why "
                               "(evicted, expired)", ["category", "why"], registry=registry)
        self.latency = Histogram("curator_cache_lookup_seconds", "cache lookup latency (with embedding) by category",
                                 ["category"], registry=registry,
                                 buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5))
        self.similarity = Histogram("curator_cache_top1_similarity", "cosine similarity of the best entry per lookup",
                                    ["category"], registry=registry,
                                    buckets=(0.0, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 1.0))
        registry.register(_CacheCollector(cache, self.label))

    def label(self, category: str) -> str:
        return category if category in self.cache.labelled_categories() else OTHER

    def lookup(self, category, lookup, seconds) -> None:
        category = self.label(category)
        if lookup.hit:
            outcome = "relaxed_hit" if lookup.relaxed else "hit"
        elif lookup.reason.startswith("near_miss"):
            outcome = "near_miss"
        elif lookup.reason in ("ambiguous", "bypassed"):
            outcome = lookup.reason
        else:
            outcome = "miss"
        self.lookups.labels(category, outcome).inc()
        self.latency.labels(category).observe(seconds)
        if lookup.similarity is not None:
            self.similarity.labels(category).observe(lookup.similarity)

    def removed(self, category, why, count) -> None:
        self.removals.labels(self.label(category), why).inc(count)


class _CacheCollector:
    """The cache's sizes and economics, read at scrape time."""

    def __init__(self, cache, label):
        self.cache, self.label = cache, label

    def collect(self):
        stats = self.cache.stats()
        families = {
            "entries": GaugeMetricFamily("curator_cache_entries", "cache entries by category", labels=["category"]),
            "bytes": GaugeMetricFamily("curator_cache_bytes", "prompt, answer and embedding bytes by category",
                                       labels=["category"]),
            "hit_rate": GaugeMetricFamily("curator_cache_hit_rate", "observed hit rate by category", labels=["category"]),
            "break_even_hit_rate": GaugeMetricFamily("curator_cache_break_even_hit_rate",
                                                     "hit rate at which the cache pays for its lookups",
                                                     labels=["category"]),
        }
        totals: dict[tuple[str, str], float] = {}
        for category, row in stats["categories"].items():
            label = self.label(category)
            for name in families:
                if row.get(name) is not None:
                    totals[(name, label)] = totals.get((name, label), 0.0) + row[name]
        for (name, label), value in sorted(totals.items()):
            families[name].add_metric([label], value)
        yield from families.values()
        yield GaugeMetricFamily("curator_cache_pressure", "upstream load pressure (0 none, 1 fully relaxed)",
                                value=stats["load"]["pressure"])


class QuotaMetrics:
    """Refusals by limit (tenant quotas and key rates: an `Observer` of both), and each tenant's
    usage beside its quota, read at scrape time. Only tenants with a quota of their own get
    series (set by an admin, so bounded), and only for the limits set: a default quota that
    covers every tenant makes no series per tenant."""

    def __init__(self, registry: CollectorRegistry, db):
        self.refusals = Counter("curator_quota_refused", "calls refused by a tenant quota or a key rate, by limit "
                                "(vectors, vector_bytes, payload_bytes, cache_entries, cache_bytes, cache_categories, "
                                "answer_bytes, reads_per_second, writes_per_second)", ["limit"], registry=registry)
        registry.register(_QuotaCollector(db))

    def refused(self, limit: str) -> None:
        self.refusals.labels(limit).inc()


class _QuotaCollector:
    def __init__(self, db):
        self.db = db

    def collect(self):
        usage = GaugeMetricFamily("curator_quota_usage", "what a tenant with a quota holds, by limit",
                                  labels=["tenant", "limit"])
        quota = GaugeMetricFamily("curator_quota_limit", "a tenant's quota, by limit (only limits set)",
                                  labels=["tenant", "limit"])
        for tenant in self.db.quotas.tenants():
            limits = self.db.quotas.of(tenant).as_dict()
            limited = tuple(limit for limit, value in limits.items() if value is not None)
            if not limited:
                continue
            for limit, value in self.db.usage(tenant, limited).items():
                usage.add_metric([tenant, limit], value)
                quota.add_metric([tenant, limit], limits[limit])
        yield from (usage, quota)


class GatewayMetrics:
    """The HTTP gateway's requests (server/gateway.py) by route, status and X-Cache outcome, and
    their latency (a streamed answer's to its end). Routes are the gateway's two and "other"."""

    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter("curator_http_requests", "HTTP gateway requests by route, status and X-Cache outcome "
                                "(HIT, SEMANTIC_HIT, MISS, BYPASS; none for refusals)",
                                ["route", "status", "cache"], registry=registry)
        self.latency = Histogram("curator_http_request_seconds", "HTTP gateway request latency by route and X-Cache "
                                 "outcome (streams: to their end)", ["route", "cache"], registry=registry,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                          5, 10, 30, 60))
        self._series: dict[tuple[str, int, str], tuple] = {}

    def observe(self, route: str, status: int, cache: str, seconds: float) -> None:
        series = self._series.get((route, status, cache))
        if series is None:
            label = cache or "none"
            series = self._series[(route, status, cache)] = (self.requests.labels(route, str(status), label),
                                                             self.latency.labels(route, label))
        series[0].inc()
        series[1].observe(seconds)
