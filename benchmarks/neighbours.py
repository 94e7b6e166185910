"""Whether one tenant can stall another: a victim's searches alone and while a neighbour attacks.

    python -m benchmarks.neighbours [--quick] [--compare PATH] [--seconds S] [--rate R]

A server (`curator serve` with a keys file, a durable data directory, sync writes) holds GloVe x
WordNet in collection "glove" and the attacker tenant's vectors again in collection "other".
Each tenant has its own API key (`curator keygen` of the checkout under test). The victim (a
tenant of typical size, the one with the most queries) makes single searches (blocking SDK, k=10,
default ef) over its own queries at a steady `--rate` (200/s), in a process of its own; its
latency counts from when a search was due, so a stall shows in every search it delays, not only
in the one it hit. A health checker (grpc.health.v1 Check every 50 ms, its own process) runs
throughout. Phases: the victim alone, then each attack of benchmarks/attacks.py (the largest
SearchBatch accepted, retrain-forcing inserts, the heaviest filters accepted, one-vector inserts
from 8 threads, 32 held search streams, 32 keyless half-open calls), by the attacker tenant on the
victim's collection and on the other one, each attack in a process of its own, then the victim
alone again. The issue's rule for each: victim p99 <= max(3 x its p99 alone, 50 ms) and the health
check's worst <= 1 s. With --compare PATH each phase runs against that checkout's server too (its
own clients, benchmarks/checkout.py), in turns. Writes benchmarks/results/neighbours.md and
neighbours.json (neighbours_quick.* with --quick: a smoke run, not a measurement).
"""

import argparse
import contextlib
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

import curator
from curator_loadtest import data as D
from curator_loadtest.server import ManagedServer

from . import workers
from .attacks import ATTACKS, REFUSALS
from .checkout import Checkout, title
from .measure import markdown_table, write_results

RESULTS = Path(__file__).parent / "results"
QUICK_DATA = {"n_queries": 200, "min_size": 100, "max_size": 120}
HEALTH_EVERY = 0.05
HEALTH_TIMEOUT = 5.0
LEAD = 1.0  # seconds an attack runs before the victim's window opens


def choose_tenants(data: D.MultiTenantData) -> tuple[int, int]:
    """(victim, attacker): the victim is the tenant with the most queries among those holding at
    most a tenth of the vectors; the attacker is the largest other tenant (the costliest to search)."""
    sizes = data.tenant_sizes()
    queries = np.bincount(data.query_tenants, minlength=data.n_tenants)
    victim = int(np.argmax(np.where(sizes <= 0.1 * data.vectors.shape[0], queries, -1)))
    attacker = int(np.argmax(np.where(np.arange(data.n_tenants) != victim, sizes, -1)))
    return victim, attacker


def keygen(checkout: Checkout, name: str, tenant: str | None) -> tuple[str, str]:
    """(key, keys-file entry) from the checkout's own `curator keygen` (admin when tenant is None)."""
    args = ["-m", "curator_server", "keygen", "--name", name, *(["--admin"] if tenant is None else ["--tenant", tenant])]
    done = checkout.popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = done.communicate(timeout=300)
    if done.returncode:
        raise RuntimeError(f"curator keygen failed: {err}")
    return err.strip().splitlines()[-1].split()[-1], out


# ---------------------------------------------------------------------------
# Roles (benchmarks/workers.py), each in a process of its own, run from the checkout under test


def loader(address: str, key: str, data: dict, attacker: int):
    """Loads "glove" (every tenant) and "other" (the attacker's vectors), both with an int payload
    field "n" (0..15) on the attacker's vectors for its filters; answers the server's limits."""
    dataset = D.glove_wordnet(**data)

    def group_payloads(col, ids) -> None:
        for g, part in enumerate(np.array_split(ids, 16)):
            col.set_payloads(part, {"n": g})

    def handle(command: dict) -> dict:
        db = curator.connect(address, api_key=key, timeout=300)
        started = time.monotonic()
        members = dataset.members(attacker)
        group_payloads(D.create_loaded(db, dataset), members)
        other = db.create_collection("other", dim=dataset.vectors.shape[1], metric="cosine")
        for part in np.array_split(members, -(-members.size // 10_000)):
            other.insert(part, dataset.vectors[part], tenant=D.tenant_label(attacker))
        group_payloads(other, members)
        other.train()
        info = db.server_info()
        db.close()
        return {"seconds": time.monotonic() - started, "limits": {k: int(info[k]) for k in
                                                                  ("max_message_bytes", "max_batch", "max_k")}}
    return handle


def victim(address: str, key: str, data: dict, tenant: int):
    """Paced single searches of one tenant over its own queries: op "window" {start, end, rate}."""
    dataset = D.glove_wordnet(**data)
    queries = dataset.queries[dataset.query_tenants == tenant]
    col = curator.connect(address, api_key=key).collection("glove")
    label = D.tenant_label(tenant)

    def handle(command: dict) -> dict:
        for q in queries[:5]:  # the SDK's stream may have closed while idle
            col.search(q, k=10, tenant=label)
        start, end, rate = command["start"], command["end"], command["rate"]
        late, service, failures = [], [], {}
        i, due = 0, start
        while due < end:
            workers.sleep_until(due)
            sent = time.monotonic()
            try:
                col.search(queries[i % len(queries)], k=10, tenant=label)
            except curator.CuratorError as error:
                failures[type(error).__name__] = failures.get(type(error).__name__, 0) + 1
            done = time.monotonic()
            late.append(done - due)
            service.append(done - sent)
            i += 1
            due = start + i / rate
        return {"from_due_us": np.rint(np.array(late) * 1e6).astype(int).tolist(),
                "service_us": np.rint(np.array(service) * 1e6).astype(int).tolist(), "failures": failures}
    return handle


def health(address: str):
    """grpc.health.v1 Check every HEALTH_EVERY seconds: op "window" {start, end}."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    check = health_pb2_grpc.HealthStub(grpc.insecure_channel(address)).Check
    request = health_pb2.HealthCheckRequest(service="")

    def handle(command: dict) -> dict:
        workers.sleep_until(command["start"])
        seconds, failures = [], {}
        while time.monotonic() < command["end"]:
            began = time.monotonic()
            try:
                check(request, timeout=HEALTH_TIMEOUT)
            except grpc.RpcError as error:
                failures[error.code().name] = failures.get(error.code().name, 0) + 1
            seconds.append(time.monotonic() - began)
            time.sleep(HEALTH_EVERY)
        return {"checks": len(seconds), "worst_ms": max(seconds, default=0.0) * 1e3,
                "p50_ms": float(np.median(seconds)) * 1e3 if seconds else 0.0, "failures": failures}
    return handle


# ---------------------------------------------------------------------------
# The run


class Side:
    """One checkout's server, keys, victim and health checker."""

    def __init__(self, stack: contextlib.ExitStack, checkout: Checkout, data_params: dict, victim_t: int,
                 attacker_t: int, workdir: str):
        self.checkout = checkout
        keys = {"admin": keygen(checkout, "admin", None),
                "victim": keygen(checkout, "victim", D.tenant_label(victim_t)),
                "attacker": keygen(checkout, "attacker", D.tenant_label(attacker_t))}
        keys_file = Path(workdir) / f"keys-{checkout.label}.toml"
        keys_file.write_text("\n".join(entry for _, entry in keys.values()))
        self.keys = {name: key for name, (key, _) in keys.items()}
        self.server = stack.enter_context(ManagedServer(checkout=checkout, extra_args=("--keys", str(keys_file)),
                                                        api_key=self.keys["admin"]))
        address = self.server.address
        [load] = workers.start(checkout, "benchmarks.neighbours:loader", address=address, key=self.keys["admin"],
                               data=data_params, attacker=attacker_t)
        loaded = load.ask(op="load")
        load.close()
        self.limits, self.load_seconds = loaded["limits"], loaded["seconds"]
        self.victim, self.health = (
            workers.start(checkout, "benchmarks.neighbours:victim", address=address, key=self.keys["victim"],
                          data=data_params, tenant=victim_t)[0],
            workers.start(checkout, "benchmarks.neighbours:health", address=address)[0])
        stack.callback(workers.close_all, [self.victim, self.health])

    def phase(self, attack: str | None, collection: str, args, attacker_t: int, tenant_size: int, id_base: int) -> dict:
        attacker = None
        if attack is not None:
            [attacker] = workers.start(self.checkout, "benchmarks.attacks:attack", kind=attack,
                                       address=self.server.address, key=self.keys["attacker"], collection=collection,
                                       tenant=D.tenant_label(attacker_t), limits=self.limits, tenant_size=tenant_size,
                                       id_base=id_base, quick=args.quick)
        try:
            start = time.monotonic() + args.settle
            end = start + args.seconds
            if attacker is not None:
                attacker.send(op="run", start=start - LEAD, end=end)
            self.health.send(op="window", start=start - LEAD, end=end)
            seen = self.victim.ask(op="window", start=start, end=end, rate=args.rate)
            out = {"health": self.health.receive()}
            if attacker is not None:
                out["attack"] = attacker.receive()
        finally:
            if attacker is not None:
                attacker.close()
        time.sleep(args.settle)  # what the attack left running winds down
        from_due = np.array(seen["from_due_us"]) / 1e3
        out["victim"] = {"searches": int(from_due.size), "errors": sum(seen["failures"].values()),
                         "failures": seen["failures"], "p50_ms": float(np.percentile(from_due, 50)),
                         "p99_ms": float(np.percentile(from_due, 99)), "max_ms": float(from_due.max()),
                         "service_p99_ms": float(np.percentile(np.array(seen["service_us"]) / 1e3, 99))}
        return out


PHASES = [("alone", None, None)] + [(f"{a}, {where}", a, where) for a in ATTACKS for where in ("same", "other")] + [
    ("alone, after", None, None)]


def judge(phases: dict) -> None:
    """The issue's rule, against the victim's p99 in the first phase alone."""
    alone = phases["alone"]["victim"]["p99_ms"]
    limit = max(3 * alone, 50.0)
    for result in phases.values():
        attack = result.get("attack", {"codes": {}})
        codes = attack["codes"]
        result["attack_ok"] = codes.get("OK", 0)
        result["attack_refused"] = sum(n for c, n in codes.items() if c in REFUSALS)
        result["attack_errors"] = sum(n for c, n in codes.items() if c not in REFUSALS | {"OK"} and not c.startswith("probe"))
        result["victim_limit_ms"] = limit
        result["pass"] = result["victim"]["p99_ms"] <= limit and result["health"]["worst_ms"] <= 1000.0


def attack_size(result: dict) -> str:
    info = result.get("attack", {}).get("info", {})
    if "nq" in info:
        return f"{info['nq']} x k={info['k']}, ef {info['ef']}"
    if "in_size" in info:
        return f"in: {info['in_size']:,}, or: {info['or_size']:,}"
    if "most_open" in info:
        return f"most open at once: {info['most_open']}"
    if "still_waiting_at_end" in info:
        return f"still waiting at the end: {info['still_waiting_at_end']}"
    return ""


COLUMNS = [("phase", "phase", ""), ("p50", "victim p50 ms", ".2f"), ("p99", "victim p99 ms", ".2f"),
           ("max", "victim max ms", ".1f"), ("errors", "victim errors", ""), ("health", "health worst ms", ".1f"),
           ("attack_ok", "attack calls", ""), ("attack_refused", "refused", ""), ("attack_errors", "other errors", ""),
           ("size", "attack size", ""), ("pass", "passes", "")]


def report(results: dict, checkouts: list[Checkout], args) -> str:
    lines = ["# Neighbours: one tenant's attacks against another's searches", "",
             f"{results['data']}; victim {results['victim']}, attacker {results['attacker']} (own keys); victim: "
             f"single searches at {args.rate:g}/s, latency from when each was due, {args.seconds:g} s per phase; "
             f"health check every {HEALTH_EVERY * 1e3:.0f} ms. Same: the attacker on the victim's collection; other: "
             f"on another collection. Passes: victim p99 <= max(3 x p99 alone, 50 ms) and health worst <= 1 s. "
             f"{results['machine']['cpus']} cores, load average {results['machine']['loadavg_before']:.2f} before, "
             f"{results['machine']['loadavg_after']:.2f} after."
             + (" **Quick run: smoke figures, not measurements.**" if args.quick else ""), ""]
    for c in checkouts:
        phases = results["sides"][c.label]["phases"]
        rows = [{"phase": name, "p50": r["victim"]["p50_ms"], "p99": r["victim"]["p99_ms"], "max": r["victim"]["max_ms"],
                 "errors": r["victim"]["errors"], "health": r["health"]["worst_ms"], "size": attack_size(r),
                 **{k: r[k] for k in ("attack_ok", "attack_refused", "attack_errors") if "attack" in r},
                 "pass": "yes" if r["pass"] else "**no**"} for name, r in phases.items()]
        limit = phases["alone"]["victim_limit_ms"]
        lines += [f"## {title(results['checkouts'][c.label])}", "",
                  f"Limits: {results['sides'][c.label]['limits']}; the victim's p99 limit: {limit:.1f} ms.",
                  "", markdown_table(rows, COLUMNS), ""]
    if len(checkouts) > 1:
        new, old = (c.label for c in checkouts)
        a, b = results["sides"][new]["phases"], results["sides"][old]["phases"]
        rows = [{"phase": p, "p99_new": a[p]["victim"]["p99_ms"], "p99_old": b[p]["victim"]["p99_ms"],
                 "health_new": a[p]["health"]["worst_ms"], "health_old": b[p]["health"]["worst_ms"],
                 "pass_new": "yes" if a[p]["pass"] else "**no**", "pass_old": "yes" if b[p]["pass"] else "**no**"}
                for p in a]
        lines += [f"## {new} against {old}", "", markdown_table(rows, [
            ("phase", "phase", ""), ("p99_new", f"victim p99 ms, {new}", ".2f"), ("p99_old", f"{old}", ".2f"),
            ("health_new", f"health worst ms, {new}", ".1f"), ("health_old", f"{old}", ".1f"),
            ("pass_new", f"passes, {new}", ""), ("pass_old", f"{old}", "")]), ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.neighbours", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~5k vectors, 2 s phases, small attacks: a smoke run")
    parser.add_argument("--compare", metavar="PATH", help="another checkout, attacked the same way in turns")
    parser.add_argument("--seconds", type=float, default=None, help="the victim's window per phase (default 10; quick 2)")
    parser.add_argument("--rate", type=float, default=200.0, help="the victim's searches per second")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (2.0 if args.quick else 10.0)
    args.settle = 1.0 if args.quick else 2.0
    data_params = QUICK_DATA if args.quick else {}
    data = D.glove_wordnet(**data_params)
    victim_t, attacker_t = choose_tenants(data)
    tenant_size = int(data.tenant_sizes()[attacker_t])
    checkouts = [Checkout.this()] + ([Checkout.other(args.compare)] if args.compare else [])
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_before": os.getloadavg()[0]}
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="curator-neighbours-"))
        sides = [Side(stack, c, data_params, victim_t, attacker_t, workdir) for c in checkouts]
        phases = {c.label: {} for c in checkouts}
        for i, (name, attack, where) in enumerate(PHASES):
            for side in sides:  # in turns
                phases[side.checkout.label][name] = side.phase(
                    attack, "glove" if where == "same" else "other", args, attacker_t, tenant_size, 10**9 + i * 10**7)
            print(f"{name}: " + ", ".join(f"{label} victim p99 {p[name]['victim']['p99_ms']:.2f} ms, health "
                                          f"worst {p[name]['health']['worst_ms']:.1f} ms" for label, p in phases.items()),
                  flush=True)
    for p in phases.values():
        judge(p)
    machine["loadavg_after"] = os.getloadavg()[0]
    sizes = data.tenant_sizes()
    results = {
        "data": f"GloVe x WordNet ({data.vectors.shape[0]:,} vectors, {data.n_tenants} tenants)",
        "victim": f"{data.tenant_names[victim_t]} ({sizes[victim_t]:,} vectors, "
                  f"{int((data.query_tenants == victim_t).sum())} queries)",
        "attacker": f"{data.tenant_names[attacker_t]} ({tenant_size:,} vectors)",
        "machine": machine, "quick": args.quick, "seconds": args.seconds, "rate": args.rate,
        "run_seconds": time.monotonic() - started, "checkouts": {c.label: c.describe() for c in checkouts},
        "sides": {s.checkout.label: {"limits": s.limits, "load_seconds": s.load_seconds,
                                     "phases": phases[s.checkout.label]} for s in sides}}
    write_results(RESULTS, "neighbours_quick" if args.quick else "neighbours", results, report(results, checkouts, args))


if __name__ == "__main__":
    main()
