"""The `curator` command: `curator serve` runs the server, `curator keygen` makes an API key."""

import argparse
import logging
import sys

from curator.cache import config as cache_config

from .app import CuratorServer, ServerConfig
from .auth import digest_of, new_key
from .service import Limits


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="curator", description="Curator multi-tenant vector database")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--data", default="./curator-data", help='data directory, or ":memory:"')
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=50051)
    serve.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics over HTTP")
    serve.add_argument("--durability", choices=["sync", "batch", "none"], default="sync")
    serve.add_argument("--keys", default=None, help="TOML file of API keys (none: open mode)")
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
    serve.add_argument("--tenant-metrics-top", type=int, default=0,
                       help="label request metrics with the N busiest tenants (0: off)")
    keygen = commands.add_parser("keygen", help="print a new API key and its entry for the keys file")
    keygen.add_argument("--name", required=True)
    keygen.add_argument("--tenant", action="append", default=[])
    keygen.add_argument("--admin", action="store_true")
    commands.add_parser("loadtest", add_help=False,
                        help="drive a server like production traffic: run, ramp, soak (curator loadtest -h)")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["loadtest"]:
        return _loadtest(argv[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "keygen":
        if not args.admin and not args.tenant:
            parser.error("keygen needs --admin or at least one --tenant")
        key = new_key()
        print(f"# the key (give it to the client; it is not stored): {key}", file=sys.stderr)
        print(f'[[keys]]\nname = "{args.name}"\nsha256 = "{digest_of(key)}"')
        print("admin = true" if args.admin else f"tenants = {args.tenant!r}".replace("'", '"'))
        return 0
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    config = ServerConfig(
        data=args.data, host=args.host, port=args.port, metrics_port=args.metrics_port, durability=args.durability,
        keys=args.keys, tls_cert=args.tls_cert, tls_key=args.tls_key, workers=args.workers,
        max_streams=args.max_streams, max_calls=args.max_calls, max_calls_per_key=args.max_calls_per_key,
        max_streams_per_key=args.max_streams_per_key,
        limits=Limits(args.max_message_bytes, args.max_batch, args.max_k), tenant_metrics_top=args.tenant_metrics_top,
        cache=cache_config.read(args.cache_config) if args.cache_config else None)
    CuratorServer(config).serve_forever()
    return 0


def _loadtest(argv: list[str]) -> int:
    """The load-test harness lives in the source checkout's benchmarks/load, beside this package."""
    try:
        from benchmarks.load.cli import main as loadtest
    except ModuleNotFoundError:
        from pathlib import Path

        checkout = Path(__file__).resolve().parent.parent
        if not (checkout / "benchmarks" / "load").is_dir():
            print("curator loadtest needs a source checkout of Curator (benchmarks/load)", file=sys.stderr)
            return 2
        sys.path.insert(0, str(checkout))
        from benchmarks.load.cli import main as loadtest
    return loadtest(argv)


if __name__ == "__main__":
    sys.exit(main())
