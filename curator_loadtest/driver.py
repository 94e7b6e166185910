"""Worker processes that send the load, and the parent side that steers them and merges what
they measured.

Each worker is its own process (spawned, so the GIL of one never limits another and no gRPC state
is forked) with one connection and a thread per concurrent client. The parent sends it phases:

- closed loop: `clients` callers, each sending its next call when the last one returns;
- open loop: `rate` calls per second on a fixed schedule shared by the worker's threads. Latency
  is counted from the time a call was due, not from when a free thread got to send it, so a
  server that falls behind shows its queue in the latency instead of quietly lowering the rate.

Workers keep their connections and ledgers from phase to phase (a ramp is many phases). Once
per second a worker sends, per operation, a histogram of that second's latencies and its errors
by status code; nothing per request crosses the process boundary.
"""

import math
import multiprocessing
import os
import queue
import threading
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from .gateway_client import GatewayClient
from .histogram import Histogram
from .workload import Context, WorkloadData, WorkloadSpec, ZipfTenants

TICK = 1.0  # seconds per progress line and per point of the latency time series
START_DELAY = 0.3  # phases start this long after they are sent, at the same moment in every worker
MAX_CLIENTS_PER_WORKER = 1000  # bounds the client index, which picks each client's id range


@dataclass(frozen=True)
class Phase:
    label: str
    mode: str  # "closed" or "open"
    seconds: float
    clients: int = 0  # closed loop: concurrent callers over all workers
    rate: float = 0.0  # open loop: calls per second over all workers
    record: bool = True  # False: a warm-up, measured by nobody


@dataclass
class ClientSettings:
    """What every worker needs to connect and generate load (pickled to each worker)."""

    address: str
    collection: str
    data: WorkloadData
    spec: WorkloadSpec
    api_key: str | None = None
    timeout: float = 10.0
    search_stream: bool = True
    open_threads: int = 16  # per worker: the most calls one worker has in flight in the open loop
    gateway_url: str | None = None  # the server's HTTP gateway (http://HOST:PORT/v1), for gateway_chat


@dataclass
class PhaseResult:
    phase: Phase
    started: float = 0.0  # time.monotonic() of the phase's start, the same in every process
    seconds: float = 0.0  # measured from the phase's start to its last reply
    ops: dict[str, Histogram] = field(default_factory=lambda: defaultdict(Histogram))
    errors: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    per_second: dict[int, dict[str, Histogram]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(Histogram)))
    errors_per_second: dict[int, Counter] = field(default_factory=lambda: defaultdict(Counter))
    unsent: int = 0  # open loop: calls still due long after the phase ended, given up
    generator_cpu_seconds: float = 0.0  # CPU time of the worker processes during the phase

    def add_tick(self, second: int, hists: dict, errors: dict) -> None:
        for name, (index, counts) in hists.items():
            h = Histogram.from_sparse(index, counts)
            self.ops[name].add(h)
            self.per_second[second][name].add(h)
        for name, codes in errors.items():
            self.errors[name].update(codes)
            for code, n in codes.items():
                self.errors_per_second[second][code] += n
            self.per_second[second].setdefault(name, Histogram())

    def calls(self) -> dict[str, int]:
        names = set(self.ops) | set(self.errors)
        return {n: self.ops[n].count + sum(self.errors[n].values()) for n in sorted(names)}


# --- inside a worker process ------------------------------------------------------------------


class _Recorder:
    """One worker's latencies of the running phase, by second of completion, sent once per second."""

    def __init__(self, start: float, out: multiprocessing.Queue, worker: int, phase_id: int):
        self.start, self.out, self.worker, self.phase_id = start, out, worker, phase_id
        self.seconds: dict[int, tuple[dict, dict]] = {}
        self.lock = threading.Lock()

    def record(self, name: str, latency: float, done: float, error: str | None) -> None:
        second = int((done - self.start) / TICK)
        with self.lock:
            hists, errors = self.seconds.setdefault(second, ({}, {}))
            if error is None:
                hist = hists.get(name)
                if hist is None:
                    hist = hists[name] = Histogram()
                hist.record(latency)
            else:
                codes = errors.setdefault(name, Counter())
                codes[error] += 1

    def flush(self, before: float = float("inf")) -> None:
        """Send every second that ended before `before` (all of them by default)."""
        limit = (before - self.start) / TICK
        with self.lock:
            ready = [s for s in self.seconds if s + 1 <= limit]
            batches = [(s, self.seconds.pop(s)) for s in ready]
        for second, (hists, errors) in batches:
            self.out.put(("tick", self.phase_id, self.worker, second,
                          {n: h.sparse() for n, h in hists.items()}, {n: dict(c) for n, c in errors.items()}))


class _Schedule:
    """The open loop's due times for one worker: evenly spaced, offset between workers."""

    def __init__(self, start: float, rate: float, offset: float, end: float, give_up: float):
        self.start, self.rate, self.offset, self.end, self.give_up = start, rate, offset, end, give_up
        self.next_index = 0
        self.unsent = 0
        self.lock = threading.Lock()

    def next_due(self) -> float | None:
        with self.lock:
            due = self.start + (self.next_index + self.offset) / self.rate
            if due >= self.end:
                return None
            if time.monotonic() > self.give_up:  # far behind after the end: count what is left, stop
                self.unsent += int((self.end - due) * self.rate) + 1
                self.next_index = int(1e18)
                return None
            self.next_index += 1
            return due


def _closed_loop(ctx: Context, end: float, recorder: _Recorder) -> None:
    clock = time.monotonic
    while clock() < end:
        sent = clock()
        name, error = ctx.step()
        done = clock()
        recorder.record(name, done - sent, done, error)


def _open_loop(ctx: Context, schedule: _Schedule, recorder: _Recorder) -> None:
    clock = time.monotonic
    while (due := schedule.next_due()) is not None:
        wait = due - clock()
        if wait > 0:
            time.sleep(wait)
        name, error = ctx.step()
        done = clock()
        recorder.record(name, done - due, done, error)


def _share(total: int, worker: int, workers: int) -> int:
    return total // workers + (1 if worker < total % workers else 0)


class _Client:
    """One client: a Context and the thread that runs its loops, kept from phase to phase so that
    its connection state (the SDK's per-thread search stream) stays warm, as a real client's would."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.idle = threading.Event()
        self.idle.set()
        threading.Thread(target=self._serve, name=f"client-{ctx.client}", daemon=True).start()

    def submit(self, loop, *args) -> None:
        self.idle.clear()
        self.jobs.put((loop, args))

    def _serve(self) -> None:
        while True:
            loop, args = self.jobs.get()
            try:
                loop(self.ctx, *args)
            except Exception:  # noqa: BLE001 - a bug in the harness: say so, keep the worker alive
                traceback.print_exc()
            finally:
                self.idle.set()


def _run_phase(worker: int, workers: int, phase: Phase, start: float, phase_id: int, clients: list,
               make_client, settings: ClientSettings, out) -> None:
    recorder = _Recorder(start, out, worker, phase_id)
    end = start + phase.seconds
    cpu_before = sum(os.times()[:2])
    schedule = None
    if phase.mode == "closed":
        n = _share(phase.clients, worker, workers)
        loop, args = _closed_loop, (end, recorder)
    else:
        n = settings.open_threads
        schedule = _Schedule(start, phase.rate / workers, worker / workers, end,
                             give_up=end + max(2.0, phase.seconds / 2))
        loop, args = _open_loop, (schedule, recorder)
    while len(clients) < n:
        clients.append(make_client(len(clients)))
    time.sleep(max(0.0, start - time.monotonic()))
    for client in clients[:n]:
        client.submit(loop, *args)
    while not all(client.idle.wait(0.1) for client in clients[:n]):
        recorder.flush(before=time.monotonic())
    recorder.flush()
    out.put(("done", phase_id, worker, {"cpu_seconds": sum(os.times()[:2]) - cpu_before,
                                        "last_reply": time.monotonic() - start,
                                        "unsent": schedule.unsent if schedule else 0}))


def _worker_main(worker: int, workers: int, settings: ClientSettings, commands, out) -> None:
    try:
        import curator

        db = curator.connect(settings.address, api_key=settings.api_key, timeout=settings.timeout, retries=0,
                             search_stream=settings.search_stream)
        collection = db.collection(settings.collection)
        tenants = ZipfTenants(settings.data.tenant_names, settings.spec.zipf, settings.spec.seed)

        def make_client(i: int) -> _Client:
            if i >= MAX_CLIENTS_PER_WORKER:
                raise ValueError(f"at most {MAX_CLIENTS_PER_WORKER} clients per worker process")
            gateway = (GatewayClient(settings.gateway_url, settings.timeout, settings.api_key)
                       if settings.gateway_url else None)
            return _Client(Context(db, collection, settings.data, settings.spec,
                                   worker * MAX_CLIENTS_PER_WORKER + i, tenants, gateway=gateway))

        clients: list[_Client] = []
        out.put(("ready", worker))
        while (command := commands.get()) is not None:
            kind = command[0]
            if kind == "phase":
                _, phase, start, phase_id = command
                _run_phase(worker, workers, phase, start, phase_id, clients, make_client, settings, out)
            elif kind == "ledgers":
                out.put(("ledgers", worker, [c.ctx.ledger.export() for c in clients]))
        db.close()
    except BaseException:  # noqa: BLE001 - the parent must hear why a worker died
        out.put(("failed", worker, traceback.format_exc()))


# --- the parent -------------------------------------------------------------------------------


class WorkerPool:
    """`workers` load processes, kept across phases."""

    def __init__(self, settings: ClientSettings, workers: int, ready_seconds: float = 180.0):
        context = multiprocessing.get_context("spawn")
        self.results = context.Queue()
        self.commands = [context.Queue() for _ in range(workers)]
        self.processes = [context.Process(target=_worker_main, args=(w, workers, settings, self.commands[w],
                                                                     self.results), daemon=True)
                          for w in range(workers)]
        self._phase_id = 0
        for p in self.processes:
            p.start()
        waiting = set(range(workers))
        deadline = time.monotonic() + ready_seconds
        while waiting:
            message = self._receive(deadline)
            if message is not None and message[0] == "ready":
                waiting.discard(message[1])

    def _receive(self, deadline: float):
        while True:
            try:
                message = self.results.get(timeout=0.1)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError("the load workers did not answer in time") from None
                dead = [p.pid for p in self.processes if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"load worker process(es) {dead} died") from None
                return None
            if message[0] == "failed":
                raise RuntimeError(f"load worker {message[1]} failed:\n{message[2]}")
            return message

    def run(self, phase: Phase, progress=None) -> PhaseResult:
        """Run one phase in every worker; `progress(result, second)` is called once per finished second."""
        self._phase_id += 1
        start = time.monotonic() + START_DELAY
        for q in self.commands:
            q.put(("phase", phase, start, self._phase_id))
        result = PhaseResult(phase, started=start)
        done = 0
        shown = -1
        deadline = start + phase.seconds * 2 + 120
        while done < len(self.processes):
            message = self._receive(deadline)
            now = time.monotonic()
            if message is not None and message[1] == self._phase_id:
                if message[0] == "tick":
                    _, _, _, second, hists, errors = message
                    result.add_tick(second, hists, errors)
                elif message[0] == "done":
                    done += 1
                    stats = message[3]
                    result.generator_cpu_seconds += stats["cpu_seconds"]
                    result.seconds = max(result.seconds, stats["last_reply"])
                    result.unsent += stats["unsent"]
            # A second is shown once every worker has had time to send it.
            finished = math.floor((now - start) / TICK - 1.5)
            while progress is not None and shown < finished:
                shown += 1
                progress(result, shown)
        if progress is not None:
            for second in sorted(s for s in result.per_second if s > shown):
                progress(result, second)
        return result

    def ledgers(self) -> list[dict]:
        """Every client's acknowledged writes so far."""
        for q in self.commands:
            q.put(("ledgers",))
        out, waiting = [], set(range(len(self.processes)))
        deadline = time.monotonic() + 120
        while waiting:
            message = self._receive(deadline)
            if message is not None and message[0] == "ledgers":
                out.extend(message[2])
                waiting.discard(message[1])
        return out

    def close(self) -> None:
        for q in self.commands:
            q.put(None)
        for p in self.processes:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join()
