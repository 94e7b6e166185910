"""What a hostile tenant does to its neighbours (benchmarks/neighbours.py): one attack per process
(a role of benchmarks/workers.py), run from the checkout under test, as a tenant with its own
key against one collection.

- batch: the largest SearchBatch the server accepts: k = its max_k, as many queries as fit a
  reply within its message limit (halved until accepted), ef large enough for an exact search.
- retrain: inserts of 1 000 vectors far from the data (GloVe rows + 50 along one axis, a new
  axis and sign each time, so each batch drifts the tree again: under cosine a shift along the
  same axis would land where the last batch did), each of which may retrain the tree.
- filter: single searches with the heaviest filters the server accepts: an `in` of many values
  and an `or` of many conditions over a payload field (halved until accepted).
- inserts: one-vector inserts from 8 threads (each one a sync write on a durable server).
- streams: 32 SearchStreams held open, half of them searching once a second, half idle.
- halfopen: 32 keyless unary calls whose body never comes (headers only), kept at 32.

The heavy requests are built and serialized once, with the checkout's own proto code, and sent
as bytes, so that the attacker's CPU goes to attacking and not to packing. Refusals
(RESOURCE_EXHAUSTED, INVALID_ARGUMENT, UNAUTHENTICATED) are counted and the attack goes on.
"""

import queue
import threading
import time
from collections import Counter

import numpy as np

import curator  # first: the SDK picks grpc's TCP stack before grpc is imported
import grpc
from curator_loadtest import data as D
from curator_proto import filters_wire
from curator_proto.v1 import curator_pb2 as pb

REFUSALS = {"RESOURCE_EXHAUSTED", "INVALID_ARGUMENT", "UNAUTHENTICATED"}
EXCEPTION_CODES = {"ResourceExhaustedError": "RESOURCE_EXHAUSTED", "InvalidArgumentError": "INVALID_ARGUMENT",
                   "UnauthenticatedError": "UNAUTHENTICATED", "PermissionDeniedError": "PERMISSION_DENIED",
                   "NotFoundError": "NOT_FOUND", "AlreadyExistsError": "ALREADY_EXISTS"}
CALL_TIMEOUT = 120.0


def code_of(error: Exception) -> str:
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return error.code().name
    return EXCEPTION_CODES.get(type(error).__name__, type(error).__name__)


class Tally:
    """Outcomes of an attack's calls by code ("OK" for the accepted ones), from many threads."""

    def __init__(self):
        self.codes, self.lock = Counter(), threading.Lock()

    def add(self, code: str, n: int = 1) -> None:
        with self.lock:
            self.codes[code] += n

    def call(self, fn, *args, **kwargs) -> bool:
        try:
            fn(*args, **kwargs)
        except (grpc.RpcError, curator.CuratorError) as error:
            self.add(code_of(error))
            return False
        self.add("OK")
        return True


class Target:
    """Where the attack goes: a server, a key, a collection, the attacker's tenant."""

    def __init__(self, address: str, key: str | None, collection: str, tenant: str, limits: dict):
        self.address, self.key, self.collection, self.tenant, self.limits = address, key, collection, tenant, limits
        size = limits["max_message_bytes"] + (1 << 20)
        self.channel = grpc.insecure_channel(address, [("grpc.max_receive_message_length", size),
                                                       ("grpc.max_send_message_length", size)])
        self.metadata = (("authorization", f"Bearer {key}"),) if key else ()

    def unary(self, service: str, method: str):
        """A unary call sending and receiving bytes (no (de)serializing on this side)."""
        return self.channel.unary_unary(f"/curator.v1.{service}/{method}")

    def send(self, method, request: bytes) -> None:
        method(request, timeout=CALL_TIMEOUT, metadata=self.metadata)

    def sdk(self):
        return curator.connect(self.address, api_key=self.key, timeout=CALL_TIMEOUT).collection(self.collection)


def vectors(rows: np.ndarray) -> pb.Vectors:
    return pb.Vectors(dim=rows.shape[1], data=np.ascontiguousarray(rows, dtype="<f4").tobytes())


def largest_accepted(target: Target, method, build, size: int, tally: Tally) -> tuple[bytes | None, int]:
    """The request build(size) at the largest size the server accepts, halving from `size` on a
    refusal (one call at a time); (None, 0) when even size 1 is refused."""
    while size >= 1:
        try:
            request = build(size)
            target.send(method, request)
            return request, size
        except (grpc.RpcError, curator.CuratorError) as error:  # the SDK's own checks raise its errors
            code = code_of(error)
            tally.add(f"probe {code}")
            if code not in REFUSALS:
                raise
            size //= 2
    return None, 0


def idle(end: float) -> None:
    """An attack the server refused at every size: nothing left to send."""
    time.sleep(max(0.0, end - time.monotonic()))


def repeat(tally: Tally, end: float, once, threads: int, pause: float = 0.0) -> None:
    """once() from `threads` threads until `end`, each counted in tally."""
    def run():
        while time.monotonic() < end:
            tally.call(once)
            if pause:
                time.sleep(pause)
    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def batch_attack(target: Target, tally: Tally, info: dict, quick: bool):
    k = target.limits["max_k"]
    fits = int(0.9 * target.limits["max_message_bytes"] / (12 * k + 16))  # ids, distances, a plan
    nq = min(target.limits["max_batch"], fits, 200 if quick else fits)
    queries = D.glove(nq)
    ef = min(curator.MAX_EF, 4 * info["tenant_size"])  # a search of every vector of the tenant
    search = target.unary("Search", "SearchBatch")

    def build(n):
        return pb.SearchBatchRequest(collection=target.collection, queries=vectors(queries[:n]), k=k,
                                     tenants=[target.tenant], ef=ef).SerializeToString()
    request, nq = largest_accepted(target, search, build, nq, tally)
    info.update(nq=nq, k=k, ef=ef)
    if request is None:
        return idle
    return lambda end: repeat(tally, end, lambda: target.send(search, request), threads=2)


def filter_attack(target: Target, tally: Tally, info: dict, quick: bool):
    query = vectors(D.glove(1))
    search = target.unary("Search", "Search")
    shapes = {"in": lambda n: {"n": {"in": list(range(n))}},
              "or": lambda n: {"or": [{"n": i} for i in range(n)]}}
    start = {"in": 20_000 if quick else 1_000_000, "or": 2_000 if quick else 200_000}
    requests = []
    for shape, make in shapes.items():
        def build(n, make=make):
            return pb.SearchRequest(collection=target.collection, query=query, k=10, tenant=target.tenant,
                                    filter=filters_wire.pack_filter(make(n))).SerializeToString()
        request, size = largest_accepted(target, search, build, start[shape], tally)
        info[f"{shape}_size"] = size
        if request is not None:
            requests.append(request)
    if not requests:
        return idle
    turn = iter(range(1 << 62))  # the two shapes in turns
    return lambda end: repeat(tally, end, lambda: target.send(search, requests[next(turn) % len(requests)]), threads=2)


def far_batches(n: int, rows: int = 1000) -> np.ndarray:
    """n batches of `rows` GloVe vectors (rows not among the first 100 000), each + 50 along its own
    axis and sign: (n, rows, 50)."""
    base = D.glove(100_000 + n * rows)[100_000:].reshape(n, rows, -1)
    shift = np.zeros((n, 1, base.shape[2]), np.float32)
    shift[np.arange(n), 0, np.arange(n) % base.shape[2]] = 50.0 * np.where(np.arange(n) // base.shape[2] % 2, -1, 1)
    return base + shift


def retrain_attack(target: Target, tally: Tally, info: dict, quick: bool):
    col, batches = target.sdk(), far_batches(20 if quick else 100)
    count = iter(range(len(batches)))

    def once():
        i = next(count, None)
        if i is None:
            time.sleep(1)  # out of fresh directions (a run far longer than planned)
            return
        ids = info["id_base"] + i * batches.shape[1] + np.arange(batches.shape[1])
        col.insert(ids, batches[i], tenant=target.tenant)
    return lambda end: repeat(tally, end, once, threads=1)


def inserts_attack(target: Target, tally: Tally, info: dict, quick: bool):
    col, rows = target.sdk(), D.glove(320_000)[300_000:]
    ids = iter(range(info["id_base"], info["id_base"] + 10**9))
    lock = threading.Lock()

    def once():
        with lock:
            i = next(ids)
        col.insert([i], rows[i % len(rows)][None], tenant=target.tenant)
    return lambda end: repeat(tally, end, once, threads=8)


def streams_attack(target: Target, tally: Tally, info: dict, quick: bool, n: int = 32):
    stub_call = target.channel.stream_stream("/curator.v1.Search/SearchStream")
    request = pb.SearchRequest(collection=target.collection, query=vectors(D.glove(1)), k=10,
                               tenant=target.tenant).SerializeToString()
    open_now, live, lock = [0], set(), threading.Lock()
    info["most_open"] = 0

    def hold(j: int, end: float, over: threading.Event) -> None:
        gap = 1.0 if j % 2 == 0 else 20.0  # busy ones search once a second; idle ones stay under 30 s
        while not over.is_set():
            requests, counted = queue.Queue(), False
            replies = stub_call(iter(requests.get, None), metadata=target.metadata, timeout=end - time.monotonic() + 60)
            live.add(replies)
            try:
                while not over.is_set():
                    requests.put(request)
                    next(replies)
                    tally.add("OK")
                    if not counted:
                        counted = True
                        with lock:
                            open_now[0] += 1
                            info["most_open"] = max(info["most_open"], open_now[0])
                    over.wait(gap)
            except grpc.RpcError as error:
                if not over.is_set():  # not our own cancelling at the end
                    tally.add(code_of(error))
                over.wait(0.5)
            finally:
                requests.put(None)
                replies.cancel()
                live.discard(replies)
                if counted:
                    with lock:
                        open_now[0] -= 1

    def run(end: float) -> None:
        over = threading.Event()
        pool = [threading.Thread(target=hold, args=(j, end, over)) for j in range(n)]
        for t in pool:
            t.start()
        time.sleep(max(0.0, end - time.monotonic()))
        over.set()
        for replies in list(live):  # a stream waiting for a reply stops waiting
            replies.cancel()
        for t in pool:
            t.join()
    return run


def halfopen_attack(target: Target, tally: Tally, info: dict, quick: bool, n: int = 32):
    """Keyless calls that send headers and never a body: a unary method called as stream-unary
    with a request iterator that blocks until the attack ends."""
    count = target.channel.stream_unary("/curator.v1.VectorsService/Count")

    def run(end: float) -> None:
        release = threading.Event()

        def body():
            release.wait()
            return
            yield  # a generator that sends nothing

        calls = [count.future(body(), timeout=end - time.monotonic() + 60) for _ in range(n)]
        while time.monotonic() < end:
            for i, call in enumerate(calls):
                if call.done():  # answered (refused, we hope): open another
                    tally.add(code_of(call.exception()) if call.exception() else "OK")
                    calls[i] = count.future(body(), timeout=end - time.monotonic() + 60)
            time.sleep(0.25)
        info["still_waiting_at_end"] = sum(not c.done() for c in calls)
        release.set()
        for call in calls:
            call.cancel()
    return run


ATTACKS = {"batch": batch_attack, "retrain": retrain_attack, "filter": filter_attack,
           "inserts": inserts_attack, "streams": streams_attack, "halfopen": halfopen_attack}


def attack(kind: str, address: str, key: str | None, collection: str, tenant: str, limits: dict,
           tenant_size: int, id_base: int, quick: bool = False):
    """Role: prepares one attack (probing sizes), then op "run" attacks from start until end."""
    target = Target(address, None if kind == "halfopen" else key, collection, tenant, limits)
    tally, info = Tally(), {"tenant_size": tenant_size, "id_base": id_base}
    run = ATTACKS[kind](target, tally, info, quick)

    def handle(command: dict) -> dict:
        time.sleep(max(0.0, command["start"] - time.monotonic()))
        tally.codes = Counter({c: n for c, n in tally.codes.items() if c.startswith("probe")})
        run(command["end"])
        return {"codes": dict(tally.codes), "info": info}
    return handle
