"""The remote client against embedded use: search latency and upsert throughput.

    python -m benchmarks.remote

The server runs as its own process (`curator serve`) on loopback; embedded use runs the same
calls in this process. Search: GloVe x WordNet tenants, the same 1 000 queries one at a time,
k=10, default ef, embedded and remote (the SDK's search stream, and unary calls; the asyncio SDK's
the same two ways) in turns, best of 5 passes each: p50 / p99 latency and the remote overhead.
Each SDK runs in a client process of its own, as its users run it: grpc.aio's polling thread,
once started in a process, takes the network events of the blocking SDK's calls too and hands
them over (measured: the blocking stream's p50 0.46 ms with the asyncio SDK in its process,
0.34 ms without). Embedded searches run back to back,
and also paced as remote ones are (a sleep of PACE before each): a remote search reaches the
engine after a few hundred microseconds of gRPC work, with the CPU's caches cooled meanwhile, and the
paced figure shows what the engine itself costs then. The gRPC TCP stack is the SDK's and
server's default (classic, curator_proto/tcp.py) unless CURATOR_GRPC_TCP=event_engine is set.
The floors under it are timed in the same turns (benchmarks/floor.py): gRPC's (the blocking
SDK's stream against a server that does nothing) and the machine's (a TCP echo answering at
once or after 60 us of work, which shows what waking an idle vCPU costs here).
Upserts: 100 000 GloVe vectors in batches of 1 000 into a data directory (sync durability) both ways: vectors/s and the ratio.
Writes benchmarks/results/remote.md and remote.json (remote_event_engine.* with the EventEngine stack).
"""

import asyncio
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import curator
from curator_client import aio
from curator_loadtest import data as D
from curator_loadtest.data import searcher

from . import floor
from .measure import free_port, latency_summary, timed_loop

RESULTS = Path(__file__).parent / "results"
PACE = 0.0005  # seconds between paced embedded searches, about a remote search's round trip
ROOT = Path(__file__).resolve().parent.parent


def start_floors() -> tuple[list[subprocess.Popen], str, int]:
    """benchmarks.floor's no-op gRPC server and TCP echo: (processes, gRPC address, echo port)."""
    grpc_port, echo_port = free_port(), free_port()
    processes = [floor.start("grpc", grpc_port), floor.start("echo", echo_port)]
    for _ in range(200):
        try:
            floor.echo_round_trips(echo_port, 0, n=1)
            break
        except OSError:
            time.sleep(0.05)
    return processes, f"127.0.0.1:{grpc_port}", echo_port


def start_server(data_dir: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "curator_server", "serve", "--data", data_dir,
                                "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    db = curator.connect(address, timeout=5, retries=10)
    for _ in range(200):
        try:
            db.list_collections()
            db.close()
            return process, address
        except curator.CuratorError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


def _halt_poll(ns: int | None) -> str:
    return "not a haltpoll guest" if ns is None else "off" if ns == 0 else f"{ns / 1e3:.0f} us"


def upsert_rate(col, vectors: np.ndarray, batch: int = 1000) -> float:
    start = time.perf_counter()
    for i in range(0, vectors.shape[0], batch):
        col.upsert(np.arange(i, i + batch), vectors[i : i + batch], tenant="t")
    return vectors.shape[0] / (time.perf_counter() - start)


async def timed_async(search, items) -> np.ndarray:
    """timed_loop for a coroutine function: seconds each awaited search(item) took."""
    out = np.empty(len(items))
    clock = time.perf_counter
    for i, item in enumerate(items):
        start = clock()
        await search(item)
        out[i] = clock() - start
    return out


FLOOR = "gRPC floor (the SDK's stream, a no-op server)"
WORK_US = 60  # microseconds the echo works before answering, about what a search costs the server
ECHO = ("TCP echo, answered at once", f"TCP echo, answered after {WORK_US} us of work")


def client_process(conn, address: str, asyncio_sdk: bool, floor_address: str | None = None) -> None:
    """One SDK's searches in a process of their own: labels of passes in, each pass's seconds out.
    The blocking SDK's process also times its stream against the no-op server of benchmarks.floor."""
    data = D.glove_wordnet()
    queries = range(len(data.queries))
    if asyncio_sdk:
        loop = asyncio.new_event_loop()
        dbs = [loop.run_until_complete(aio.connect(address, search_stream=stream)) for stream in (True, False)]
        cols = {label: loop.run_until_complete(db.collection("glove"))
                for label, db in zip(("remote asyncio", "remote asyncio, unary calls"), dbs)}

        def one_pass(col) -> np.ndarray:
            search = searcher(col, data)
            loop.run_until_complete(search(0))
            return loop.run_until_complete(timed_async(search, queries))
    else:
        dbs = [curator.connect(address, search_stream=stream) for stream in (True, False)]
        dbs.append(curator.connect(floor_address, timeout=5, retries=10))
        cols = {label: db.collection("glove") for label, db in zip(("remote", "remote, unary calls", FLOOR), dbs)}

        def one_pass(col) -> np.ndarray:
            search = searcher(col, data)
            search(0)
            return timed_loop(search, queries)
    conn.send(list(cols))
    while (label := conn.recv()) is not None:
        conn.send(one_pass(cols[label]))
    for db in dbs:
        if asyncio_sdk:
            loop.run_until_complete(db.close())
        else:
            db.close()


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = D.glove_wordnet()
    workdir = tempfile.mkdtemp(prefix="curator-remote-")
    server, address = start_server(workdir + "/server")
    floors, floor_address, echo_port = start_floors()
    try:
        remote = curator.connect(address)
        local = curator.open(":memory:")
        results = {}
        vectors = D.glove(100_000)
        local_disk = curator.open(workdir + "/local")
        rates = {}
        for label, db in (("embedded", local_disk), ("remote", remote)):
            col = db.create_collection("up", dim=50, metric="cosine")
            rates[label] = upsert_rate(col, vectors)
        results["upsert_vectors_per_s"] = rates
        results["upsert_remote_over_embedded"] = rates["remote"] / rates["embedded"]
        local_disk.close()
        for db in (local, remote):
            D.create_loaded(db, data)
        context = multiprocessing.get_context("spawn")
        clients = {}  # label -> the connection to the client process that runs it
        for asyncio_sdk in (False, True):
            ours, theirs = context.Pipe()
            context.Process(target=client_process, args=(theirs, address, asyncio_sdk, floor_address),
                            daemon=True).start()
            clients.update(dict.fromkeys(ours.recv(), ours))
        search = searcher(local.collection("glove"), data)
        passes = {label: [] for label in ("embedded", "embedded, paced", *ECHO, *clients)}
        for _ in range(5):  # in turns, so that the machine's mood is shared
            for label in ("embedded", "embedded, paced"):
                search(0)
                passes[label].append(timed_loop(search, range(len(data.queries)),
                                                gap=PACE if label.endswith("paced") else 0.0))
            for label, work_us in zip(ECHO, (0, WORK_US)):
                passes[label].append(floor.echo_round_trips(echo_port, work_us))
            for label, conn in clients.items():
                conn.send(label)
                passes[label].append(conn.recv())
        for conn in set(clients.values()):
            conn.send(None)
        for label, runs in passes.items():
            results[f"search_{label}"] = latency_summary(min(runs, key=np.sum))
        embedded = results["search_embedded"]["p50_ms"]
        paced = results["search_embedded, paced"]["p50_ms"]
        for label in ("remote", "remote, unary calls", "remote asyncio", "remote asyncio, unary calls"):
            results[f"search_{label}_overhead_p50_ms"] = results[f"search_{label}"]["p50_ms"] - embedded
            results[f"search_{label}_overhead_over_paced_p50_ms"] = results[f"search_{label}"]["p50_ms"] - paced
        results["grpc_tcp"] = "event engine" if os.environ.get("CURATOR_GRPC_TCP") == "event_engine" else "classic"
        results["search_remote_over_embedded_p50"] = results["search_remote"]["p50_ms"] / embedded
        results["search_remote_over_floor_p50_ms"] = results["search_remote"]["p50_ms"] - results[f"search_{FLOOR}"]["p50_ms"]
        results["guest_halt_poll_ns"] = floor.guest_halt_poll_ns()
        results["idle_wake_ms"] = (results[f"search_{ECHO[1]}"]["p50_ms"] - WORK_US / 1e3
                                   - results[f"search_{ECHO[0]}"]["p50_ms"])
        remote.close()
    finally:
        for process in (server, *floors):
            process.terminate()
            process.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
    lines = ["# Remote client against embedded", "",
             "GloVe x WordNet (39k vectors, 420 tenants), 1 000 queries one at a time, k=10, default ef; "
             f"server in its own process on loopback, each SDK in a client process of its own; gRPC TCP stack: {results['grpc_tcp']}; embedded "
             f"paced: a {PACE * 1e3:.1f} ms sleep before each search.", "",
             "| | p50 ms | p99 ms | QPS |", "|---|---|---|---|"]
    for label in ("embedded", "embedded, paced", "remote", "remote, unary calls", "remote asyncio",
                  "remote asyncio, unary calls", FLOOR, *ECHO):
        r = results[f"search_{label}"]
        what = label if label in ECHO else f"search, {label}"
        lines.append(f"| {what} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['qps']:,.0f} |")
    lines += ["", f"Remote overhead at p50: {results['search_remote_overhead_p50_ms']:.3f} ms over the search "
                  f"stream ({results['search_remote_over_embedded_p50']:.2f}x embedded), "
                  f"{results['search_remote, unary calls_overhead_p50_ms']:.3f} ms with unary calls; over embedded "
                  f"paced: {results['search_remote_overhead_over_paced_p50_ms']:.3f} ms (stream), "
                  f"{results['search_remote, unary calls_overhead_over_paced_p50_ms']:.3f} ms (unary). The asyncio "
                  f"SDK: {results['search_remote asyncio_overhead_p50_ms']:.3f} ms over its stream, "
                  f"{results['search_remote asyncio, unary calls_overhead_p50_ms']:.3f} ms with unary calls.", "",
              f"The gRPC floor: the blocking SDK's stream against a server that answers at once "
              f"(benchmarks/floor.py) took {results[f'search_{FLOOR}']['p50_ms']:.3f} ms; Curator's server and "
              f"engine added {results['search_remote_over_floor_p50_ms']:.3f} ms to it.", "",
              f"The machine: a TCP round trip between two processes (benchmarks/floor.py) took "
              f"{results[f'search_{ECHO[0]}']['p50_ms']:.3f} ms answered at once and "
              f"{results[f'search_{ECHO[1]}']['p50_ms']:.3f} ms answered after {WORK_US} us of work: waiting "
              f"that long cost {results['idle_wake_ms']:.3f} ms more (an idle vCPU woken through the host; "
              f"guest halt polling: {_halt_poll(results['guest_halt_poll_ns'])}).", "",
              "Upserts, batches of 1 000 GloVe vectors into a data directory (sync): "
              f"embedded {rates['embedded']:,.0f} vectors/s, remote {rates['remote']:,.0f} vectors/s "
              f"({results['upsert_remote_over_embedded']:.2f}x)."]
    name = "remote" if results["grpc_tcp"] == "classic" else "remote_event_engine"
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
