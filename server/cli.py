"""The `curator` command: `curator serve` runs the server, `curator keygen` makes an API key, `curator
import` / `curator export` move vectors between a collection and a file (curator/bulk.py)."""

import argparse
import logging
import os
import sys

from curator import bulk
from curator.cache import config as cache_config
from curator.errors import InvalidArgumentError
from curator.quotas import read_config as read_quotas

from .app import VERSION, CuratorServer, InsecureConfigError, ServerConfig
from .gateway import GatewayConfig
from .auth import KeysFileError, append_entry, key_entry, new_key
from .service import Limits


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="curator", description="Curator multi-tenant vector database")
    parser.add_argument("--version", action="version", version=f"curator {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--data", default="./curator-data", help='data directory, or ":memory:"')
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=50051)
    serve.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics over HTTP")
    serve.add_argument("--durability", choices=["sync", "batch", "none"], default="sync")
    serve.add_argument("--keys", default=None, help="TOML file of API keys (none: open mode)")
    serve.add_argument("--insecure-open", action="store_true",
                       help="allow open mode (no --keys: every caller is admin) on a non-loopback --host")
    serve.add_argument("--snapshots", default=None,
                       help="directory an admin's Snapshot paths are confined to (default: DATA-snapshots)")
    serve.add_argument("--tls-cert"), serve.add_argument("--tls-key")
    serve.add_argument("--workers", type=int, default=16, help="threads serving calls")
    serve.add_argument("--max-streams", type=int, default=None,
                       help="open search streams, each holding a worker (default: half the workers)")
    serve.add_argument("--max-calls", type=int, default=None,
                       help="calls in flight, refused past it (RESOURCE_EXHAUSTED) without a worker "
                            "(default: 4x the workers)")
    serve.add_argument("--max-calls-per-key", type=int, default=None,
                       help="one API key's calls in flight, streams included (default: half the workers; 0: no limit)")
    serve.add_argument("--max-streams-per-key", type=int, default=None,
                       help="one API key's open search streams (default: half of --max-streams; 0: no limit)")
    serve.add_argument("--max-message-bytes", type=int, default=64 << 20)
    serve.add_argument("--max-batch", type=int, default=100_000)
    serve.add_argument("--max-k", type=int, default=1_000)
    serve.add_argument("--cache-config", default=None,
                       help="TOML file with the semantic cache's [cache] table (embedding, upstream, load, policies)")
    serve.add_argument("--http-port", type=int, default=None,
                       help="serve an OpenAI-compatible HTTP API at http://HOST:PORT/v1, the cache in front of "
                            "--cache-config's upstream (server/gateway.py)")
    serve.add_argument("--http-max-body-bytes", type=int, default=GatewayConfig.max_body_bytes,
                       help="largest request body the HTTP gateway reads (past it 413)")
    serve.add_argument("--http-max-answer-bytes", type=int, default=GatewayConfig.max_answer_bytes,
                       help="largest answer the HTTP gateway stores (larger ones are relayed, not stored)")
    serve.add_argument("--http-max-calls-per-key", type=int, default=GatewayConfig.max_calls_per_key,
                       help="one key's HTTP requests in flight, past it 429 (0: no limit)")
    serve.add_argument("--id-collisions-per-hour", type=float, default=60.0,
                       help="collisions of a tenant key's writes with ids it cannot see before its writes naming "
                            "ids pause (server/probes.py; 0: no limit)")
    serve.add_argument("--quotas", default=None,
                       help="TOML file of tenant quotas: [default] and [tenants.NAME] tables of vectors, "
                            "vector_bytes, payload_bytes, cache_entries (those set through the API override it)")
    serve.add_argument("--tenant-metrics-top", type=int, default=0,
                       help="label request metrics with the N busiest tenants (0: off)")
    serve.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="where batched searches, tree training and graph builds run: a CUDA GPU (cupy; "
                            "auto: when one is present) or the CPU")
    serve.add_argument("--readers", type=int, default=0,
                       help="read replicas: N more serving processes on copies of the data that answer searches, "
                            "kept equal to this one (server/replicas.py; needs --data)")
    serve.add_argument("--replica-of", default=None, help=argparse.SUPPRESS)  # set by a primary for its readers
    serve.add_argument("--ray", default=None, metavar="ADDRESS",
                       help="be the front of a cluster: shards on the Ray cluster at ADDRESS (\"auto\": the one this "
                            "node belongs to; \"local\": start one here), each shard two copies on different nodes "
                            "(server/cluster/; the cluster extra; --data keeps the placement map)")
    serve.add_argument("--cluster-name", default="curator",
                       help="the cluster's name on Ray (its copies' actors are named after it; a front started "
                            "without its placement map takes back the copies of the cluster of this name)")
    serve.add_argument("--shards", type=int, default=2, help="a new cluster's shards (fixed once created)")
    serve.add_argument("--copies", type=int, default=2, help="copies of each shard, on different nodes")
    serve.add_argument("--shard-root", default=None,
                       help="where copies keep their data on each node (default: the node's temp directory)")
    cluster = commands.add_parser("cluster", help="a cluster front's nodes, shards and copies")
    cluster.add_argument("action", choices=["status"])
    cluster.add_argument("--address", default="localhost:50051", help="the front's host:port")
    cluster.add_argument("--api-key", default=os.environ.get("CURATOR_API_KEY"),
                         help="an admin key (default: $CURATOR_API_KEY)")
    keygen = commands.add_parser("keygen", help="print a new API key and its entry for the keys file")
    keygen.add_argument("--name", required=True)
    keygen.add_argument("--tenant", action="append", default=[])
    keygen.add_argument("--admin", action="store_true")
    keygen.add_argument("--collection", action="append", default=[],
                        help="a collection the key may reach (repeatable; default: every collection)")
    keygen.add_argument("--keys", default=None,
                        help="append the entry to this keys file (created readable by its owner only) "
                             "instead of printing it")
    bulk.add_arguments(commands)
    commands.add_parser("loadtest", add_help=False,
                        help="drive a server like production traffic: run, ramp, soak (curator loadtest -h)")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["loadtest"]:
        return _loadtest(argv[1:])
    args = parser.parse_args(argv)
    if args.command in ("import", "export"):
        return bulk.command(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "cluster":
        return _cluster_status(args.address, args.api_key)
    if args.command == "keygen":
        if not args.admin and not args.tenant:
            parser.error("keygen needs --admin or at least one --tenant")
        if args.admin and args.tenant:
            parser.error("a key is either --admin or bound to --tenant(s), not both")
        key = new_key()
        print(f"# the key (give it to the client; it is not stored): {key}", file=sys.stderr)
        entry = key_entry(args.name, key, args.tenant, args.admin, args.collection)
        if args.keys:
            append_entry(args.keys, entry)
            print(f"# its entry was added to {args.keys}", file=sys.stderr)
        else:
            print(entry, end="")
        return 0
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    try:
        quotas = read_quotas(args.quotas) if args.quotas else None
    except InvalidArgumentError as error:
        print(f"curator serve: {error}", file=sys.stderr)
        return 2
    config = ServerConfig(
        data=args.data, host=args.host, port=args.port, metrics_port=args.metrics_port, durability=args.durability,
        keys=args.keys, insecure_open=args.insecure_open, snapshots=args.snapshots, tls_cert=args.tls_cert, tls_key=args.tls_key, workers=args.workers,
        max_streams=args.max_streams, max_calls=args.max_calls, max_calls_per_key=args.max_calls_per_key,
        max_streams_per_key=args.max_streams_per_key,
        limits=Limits(args.max_message_bytes, args.max_batch, args.max_k), tenant_metrics_top=args.tenant_metrics_top,
        id_collisions_per_hour=args.id_collisions_per_hour,
        cache=cache_config.read(args.cache_config) if args.cache_config else None, quotas=quotas, device=args.device,
        readers=args.readers, replica_of=args.replica_of, quotas_file=args.quotas, ray=args.ray, cluster_name=args.cluster_name, shards=args.shards,
        copies=args.copies, shard_root=args.shard_root,
        gateway=None if args.http_port is None else GatewayConfig(
            args.http_port, args.http_max_body_bytes, args.http_max_answer_bytes,
            max_calls_per_key=args.http_max_calls_per_key))
    try:
        server = CuratorServer(config)
    except (KeysFileError, InsecureConfigError, ValueError) as error:  # InvalidArgumentError is one
        print(f"curator serve: {error}", file=sys.stderr)
        return 2
    server.serve_forever()
    return 0


def _cluster_status(address: str, api_key: str | None) -> int:
    """`curator cluster status`: the front's Admin.ClusterStatus as tables."""
    import grpc

    from curator_proto.v1 import curator_pb2 as pb
    from curator_proto.v1 import curator_pb2_grpc as rpc

    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    try:
        with grpc.insecure_channel(address) as channel:
            status = rpc.AdminStub(channel).ClusterStatus(pb.Empty(), timeout=30, metadata=metadata)
    except grpc.RpcError as error:
        print(f"curator cluster status: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    print(f"placement map version {status.version}\n\nnode                  address          alive  copies")
    for node in status.nodes:
        print(f"{node.id[:20]:<21} {node.address:<16} {'yes' if node.alive else 'NO':<6} {node.copies}")
    print("\nshard  tenants  copies (wanted)  copy: node, address, lag")
    for shard in status.shards:
        copies = "; ".join(f"{c.name}: {c.node[:8]}, {c.address}, {c.lag}" for c in shard.copies) or "NONE LEFT"
        print(f"{shard.number:<6} {shard.tenants:<8} {len(shard.copies)} ({shard.wanted}){'':<10} {copies}")
    return 0


def _loadtest(argv: list[str]) -> int:
    """The load-test harness ships with the package (curator_loadtest); imported only when asked for."""
    from curator_loadtest.cli import main as loadtest

    return loadtest(argv)


if __name__ == "__main__":
    sys.exit(main())
