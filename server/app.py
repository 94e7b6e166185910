"""Building and running the server: gRPC services, health, reflection, metrics, graceful shutdown."""

import gc
import ipaddress
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass, field

import faiss
import grpc
import numba
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

import curator
from curator_proto.v1 import archive_pb2, archive_pb2_grpc
from curator_proto.v1 import curator_pb2 as pb
from curator_proto.v1 import curator_pb2_grpc as rpc

from . import service
from .admission import Admission
from .archive_service import ArchiveService
from .cache_service import CacheService
from .decoding import Decoding
from .gateway import Gateway, GatewayConfig
from .probes import ProbeBudget
from .auth import KeyRing, readable_by_others
from .limits_service import LimitsService
from .operator_page import OperatorPage
from .metrics import CacheMetrics, GatewayMetrics, Metrics, MetricsInterceptor, QuotaMetrics
from .rates import Rates
from .replicas import SECRET_ENV, ReplicaGuard, Replicas, watch_primary
from .replicated import ReplicatedDatabase
from .streams import OpenStreams
from .turns import Turns

log = logging.getLogger("curator.server")
VERSION = curator.__version__  # the one place is curator/__init__.py; pyproject.toml reads it too
SWITCH_INTERVAL = 0.0005  # seconds; see CuratorServer.__init__
LOOPBACK_NAMES = ("localhost", "ip6-localhost")


class InsecureConfigError(ValueError):
    """A configuration that would expose the server, refused unless asked for explicitly."""


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere, or "" / "0.0.0.0" / "::": every interface


def snapshots_root(config) -> str | None:
    if config.snapshots is not None:
        return config.snapshots
    return None if config.data == ":memory:" else config.data.rstrip("/\\") + "-snapshots"


SERVICES = ("Collections", "Tenants", "VectorsService", "Search", "Admin", "Cache", "Limits")
ARCHIVE_SERVICE = archive_pb2.DESCRIPTOR.services_by_name["TenantArchive"].full_name  # in archive.proto


@dataclass
class ServerConfig:
    data: str = ":memory:"
    host: str = "127.0.0.1"
    port: int = 50051  # 0: pick a free port
    metrics_port: int | None = None  # None: no metrics endpoint; 0: pick a free port
    durability: str = "sync"
    keys: str | None = None  # TOML file of API keys; None: open mode
    insecure_open: bool = False  # allow open mode on a non-loopback host
    snapshots: str | None = None  # where Snapshot paths are confined; None: "<data>-snapshots"
    tls_cert: str | None = None
    tls_key: str | None = None
    workers: int = 16
    max_streams: int | None = None  # open search streams; None: half the workers
    # Admission (server/admission.py); in open mode only max_calls applies: every caller is one.
    max_calls: int | None = None  # calls in flight, refused past it without a worker; None: 4x the workers
    max_calls_per_key: int | None = None  # None: half the workers (at least 2); 0: no limit
    max_streams_per_key: int | None = None  # None: half of max_streams (below max_calls_per_key); 0: no limit
    stream_idle_seconds: float = 30.0
    limits: service.Limits = field(default_factory=service.Limits)
    tenant_metrics_top: int = 0  # per-tenant request counts for the busiest N tenants (0: off)
    id_collisions_per_hour: float = 60.0  # a tenant key's collisions with ids it cannot see (server/probes.py)
    grace_seconds: float = 10.0
    cache: dict | None = None  # the semantic cache's configuration ([cache] of --cache-config)
    quotas: dict | None = None  # configured tenant quotas (--quotas; curator/quotas.py), under those set by the API
    device: str = "auto"  # where bulk array work runs: "auto", "cpu" or "cuda" (curator/device.py)
    gateway: GatewayConfig | None = None  # the OpenAI-compatible HTTP gateway (--http-port); None: none
    readers: int = 0  # read replicas, each a process of its own (server/replicas.py); needs a data directory
    replica_of: str | None = None  # set in a reader's own process: its primary's address
    quotas_file: str | None = None  # --quotas, handed on to readers
    ray: str | None = None  # a cluster front (server/cluster/): the Ray cluster's address, "auto" or "local"
    cluster_name: str = "curator"  # its copies' actors on Ray are named after it
    shards: int = 2  # a new cluster's shards (fixed once created)
    copies: int = 2  # each shard's copies, on different nodes
    shard_root: str | None = None  # where copies keep their data on each node (default: its temp directory)


GC_YOUNG = 20_000  # net new container objects before a young collection (Python's default: 700)


def _collect_rarely() -> None:
    """Keep the garbage collector's pauses off other tenants' searches (the serving process only:
    these settings are the whole process's). A tenant's large filter makes thousands of dicts a
    call; with Python's default a young collection ran every 700 of them, those still alive
    mid-call were promoted, and the full collections that brought on held the GIL for 16-35 ms
    each (measured with this server's 140 000 objects), every other search waiting. Young
    collections now wait until a call's garbage is gone (freed by reference counting, it never
    counts), and what the server made while starting (modules, the opened data) is frozen out of
    full collections."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])


def _worker_threads() -> None:
    """An RPC worker's faiss calls run on the worker alone. OpenMP gives every thread that starts
    a parallel region its own team of threads, which spin a while after each region: calls
    landing on different workers kept several teams spinning on the same cores, and upserts over
    gRPC ran at half the speed of the same upserts made from one thread (measured: a server's
    1 000-vector upsert 40-49 ms against 22-26 ms embedded; with this, remote upserts went from
    0.5x to 0.94x embedded throughput). The workers' own concurrency uses the cores instead.
    Likewise a worker's batch search (numba's parallel loop; the setting is per thread) takes at
    most half the cores, so one tenant's large batch leaves the others cores to search on."""
    faiss.omp_set_num_threads(1)
    numba.set_num_threads(max(1, numba.config.NUMBA_NUM_THREADS // 2))


def _per_key(config: ServerConfig, max_streams: int) -> tuple[int, int | None]:
    """One key's calls in flight (0: no limit) and open streams (None: no limit). By default a key
    gets half the workers, so one tenant's slow or half-open calls leave the other half to the
    rest, and half the streams, less one call so that a key holding its streams can still make
    unary calls (each stream is a call in flight too)."""
    calls = max(2, config.workers // 2) if config.max_calls_per_key is None else config.max_calls_per_key
    if config.max_streams_per_key is not None:
        return calls, config.max_streams_per_key or None
    streams = max(1, max_streams // 2)
    return calls, min(streams, calls - 1) if calls else streams


class CuratorServer:
    def __init__(self, config: ServerConfig, cluster=None):
        """`cluster`: for a front (config.ray), a running server/cluster/controller.Cluster to serve
        instead of connecting to Ray (a program or test holding one); the server leaves it running."""
        self.config = config
        self._given_cluster = cluster
        # A thread running Python code keeps the GIL until another has waited this long for it.
        # A search needs the GIL a few times on its way (network thread, handler, engine), so
        # with Python's default of 5 ms one tenant's CPU-heavy call (a large filter, a big
        # batch's reply) added up to 5 ms to each of those steps of every other tenant's search.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.keys = KeyRing.load(config.keys)
        self._check_exposure()
        if config.readers and config.data == ":memory:":
            raise ValueError("read replicas (--readers) start from snapshots of a data directory; give --data")
        self.db = curator.open(config.data, cache=config.cache, quotas=config.quotas, device=config.device) \
            if config.data == ":memory:" else curator.open(config.data, durability=config.durability, cache=config.cache,
                                                           quotas=config.quotas, device=config.device)
        self.cluster = None
        if config.ray is not None:
            self._front()
        self.metrics = Metrics(self.db, None if config.data == ":memory:" else config.data, config.tenant_metrics_top)
        self.db.cache.observer = CacheMetrics(self.metrics.registry, self.db.cache)
        quota_metrics = QuotaMetrics(self.metrics.registry, self.db)
        self.db.quotas.observer = quota_metrics
        self.rates = Rates(self.keys, self.db.records, observer=quota_metrics)
        size = config.limits.max_message_bytes
        max_streams = config.max_streams or max(1, config.workers // 2)
        calls_per_key, streams_per_key = _per_key(config, max_streams)
        self.admission = Admission(self.keys, 0 if self.keys.open else calls_per_key,
                                   (health.SERVICE_NAME, reflection.SERVICE_NAME), self.metrics.registry,
                                   None if self.keys.open else self.rates)
        interceptors = [self.admission, MetricsInterceptor(self.metrics), Decoding()]
        if config.replica_of is not None:  # a reader: searches only, and its primary's writes
            self.guard = ReplicaGuard(os.environ.get(SECRET_ENV, ""), config.replica_of,
                                      (health.SERVICE_NAME, reflection.SERVICE_NAME))
            interceptors.insert(0, self.guard)
        self.replicas = None
        if config.readers:
            self.replicas = Replicas(self.db, config.readers, self._reader_arguments, config.data,
                                     config.host if is_loopback(config.host) or config.host not in ("", "0.0.0.0", "::")
                                     else "127.0.0.1", config.keys, self._root_certificates(),
                                     metrics=config.metrics_port is not None)
            self.db = ReplicatedDatabase(self.db, self.replicas)
            self.metrics.readers(self.replicas.status)
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="curator-rpc",
                                       initializer=_worker_threads),
            # admission first: refuse before work; decoding last, so the metrics count what it refuses
            interceptors=interceptors,
            options=[("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)],
            maximum_concurrent_rpcs=config.max_calls or 4 * config.workers,
        )
        args = (self.db, self.keys, config.limits)
        collections = service.CollectionsService(*args)
        if self.replicas is not None:
            collections.reader_ports = self.replicas.ready_ports
        rpc.add_CollectionsServicer_to_server(collections, self.grpc)
        rpc.add_TenantsServicer_to_server(service.TenantsService(*args), self.grpc)
        vectors = service.VectorsService(*args, ProbeBudget(config.id_collisions_per_hour))
        rpc.add_VectorsServiceServicer_to_server(vectors, self.grpc)
        archive_pb2_grpc.add_TenantArchiveServicer_to_server(ArchiveService(*args, vectors.probes), self.grpc)
        self.streams = OpenStreams(max_streams, config.stream_idle_seconds, None if self.keys.open else streams_per_key)
        search = service.SearchService(*args, self.streams, self.metrics.observe)
        search.rates = self.rates
        if not self.keys.open:
            search.turns = Turns()
        rpc.add_SearchServicer_to_server(search, self.grpc)
        info = {"version": VERSION, "data": config.data, "durability": config.durability}
        rpc.add_AdminServicer_to_server(service.AdminService(*args, info, snapshots_root(config)), self.grpc)
        rpc.add_CacheServicer_to_server(CacheService(*args), self.grpc)
        rpc.add_LimitsServicer_to_server(LimitsService(*args, self.rates), self.grpc)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        names = [pb.DESCRIPTOR.services_by_name[s].full_name for s in SERVICES] + [ARCHIVE_SERVICE]
        reflection.enable_server_reflection(names + [health.SERVICE_NAME, reflection.SERVICE_NAME], self.grpc)
        address = f"{config.host}:{config.port}"
        if config.tls_cert:
            with open(config.tls_cert, "rb") as c, open(config.tls_key, "rb") as k:
                credentials = grpc.ssl_server_credentials([(k.read(), c.read())])
            self.port = self.grpc.add_secure_port(address, credentials)
        else:
            self.port = self.grpc.add_insecure_port(address)
        self.gateway = None if config.gateway is None else Gateway(
            self.db.cache, self.keys, self.rates, GatewayMetrics(self.metrics.registry),
            (config.cache or {}).get("upstream"), config.gateway, config.host,
            (config.tls_cert, config.tls_key) if config.tls_cert else None)
        self.operator = None if self.gateway is None else OperatorPage(
            self.db, self.keys, self.metrics, self.gateway.metrics, secure=bool(config.tls_cert))
        if self.operator is not None:
            self.gateway.pages.append(self.operator)
        self.metrics_port = None
        self._metrics_server = None
        self._stopped = threading.Event()

    def _front(self) -> None:
        """Serve a Ray cluster's shards instead of a local engine: the front's own data directory
        keeps the placement map, the cluster's key, the semantic cache and key rates."""
        from .cluster.controller import Cluster
        from .cluster.front import ClusterDatabase

        config = self.config
        if config.data == ":memory:" or config.readers:
            raise ValueError("a cluster front (--ray) needs --data for its placement map, and takes no --readers")
        self.cluster = self._given_cluster or Cluster(
            config.ray, config.data.rstrip("/\\") + "-cluster", name=config.cluster_name, shards=config.shards,
            copies=config.copies,
            root=config.shard_root, settings={"durability": config.durability, "workers": config.workers})
        self.db = ClusterDatabase(self.cluster, self.db)

    def _check_exposure(self) -> None:
        """Refuse open mode beyond loopback unless asked for; warn where keys travel in clear text
        or the keys file can be read by others."""
        config, local = self.config, is_loopback(self.config.host)
        if self.keys.open:
            if not local and not config.insecure_open:
                raise InsecureConfigError(
                    f"open mode (no --keys: every caller is admin) on {config.host!r}, which is not a loopback "
                    "address; give --keys, or --insecure-open if this is really wanted")
            log.warning("OPEN MODE: no API key file given; every caller is admin. Use --keys for anything "
                        "but local development.")
            return
        if not local and not config.tls_cert:
            log.warning("API keys without TLS on %s: keys travel in clear text; give --tls-cert and --tls-key",
                        config.host)
        if readable_by_others(config.keys):
            log.warning("the keys file %s can be read by other users; chmod 600 it", config.keys)

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    def _root_certificates(self) -> bytes | None:
        if not self.config.tls_cert:
            return None
        with open(self.config.tls_cert, "rb") as f:
            return f.read()

    def _reader_arguments(self, port: int, data: str, keys: str | None, metrics_port: int | None = None) -> list[str]:
        """`curator serve` arguments of a reader: this server's settings on its own port and data
        (and metrics port, where this server has metrics), without gateway or readers of its own."""
        c = self.config
        args = ["serve", "--data", data, "--host", c.host, "--port", str(port), "--durability", "none",
                "--replica-of", self.address, "--workers", str(c.workers), "--device", c.device,
                "--max-message-bytes", str(c.limits.max_message_bytes), "--max-batch", str(c.limits.max_batch),
                "--max-k", str(c.limits.max_k), "--snapshots", data + "-snapshots"]
        for flag, value in (("--keys", keys), ("--metrics-port", metrics_port), ("--tls-cert", c.tls_cert),
                            ("--tls-key", c.tls_key),
                            ("--max-streams", c.max_streams), ("--max-calls", c.max_calls),
                            ("--max-calls-per-key", c.max_calls_per_key),
                            ("--max-streams-per-key", c.max_streams_per_key), ("--quotas", c.quotas_file)):
            if value is not None:
                args += [flag, str(value)]
        if c.insecure_open:
            args.append("--insecure-open")
        return args

    def start(self) -> "CuratorServer":
        if self.config.metrics_port is not None:
            self._metrics_server, _ = start_http_server(self.config.metrics_port, addr=self.config.host,
                                                        registry=self.metrics.registry)
            self.metrics_port = self._metrics_server.server_port
        self.grpc.start()
        if self.gateway is not None:
            self.gateway.start(self.config.grace_seconds)
        for name in ("", ARCHIVE_SERVICE) + tuple(pb.DESCRIPTOR.services_by_name[s].full_name for s in SERVICES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving on %s (data %s, metrics port %s)", self.address, self.config.data, self.metrics_port)
        if self.replicas is not None:
            self.replicas.start()
        return self

    def stop(self) -> None:
        """Drain: refuse new calls, let running ones finish (up to the grace period), flush, close."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        stopped = self.grpc.stop(self.config.grace_seconds)  # refuses new calls from here on
        if self.replicas is not None:
            self.replicas.stop()
        self.streams.cancel_all()  # clients finish their searches with unary calls, or elsewhere
        if self.gateway is not None:
            self.gateway.stop()  # drains its requests meanwhile, within the same grace period
        stopped.wait()
        if self.cluster is not None and self._given_cluster is None:
            self.cluster.close()
        self.db.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("stopped")

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        if self.config.replica_of is not None:
            watch_primary(done)
        _collect_rarely()
        done.wait()
        self.stop()
