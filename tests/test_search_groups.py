"""Searches coalesced into groups (client/coalesce.py, SearchGroups in server/service.py): many
threads get exactly the answers and errors they would get alone, searches asked together travel
together, a lone search goes at once, and a server without groups is still searched."""

import asyncio
import signal
import threading
import time

import grpc
import numpy as np
import pytest

import curator
from curator_proto import filters_wire
from curator_proto.v1 import curator_pb2 as pb
from curator_proto.v1 import curator_pb2_grpc as rpc
from curator_server import service
from curator_server.app import CuratorServer, ServerConfig
from tests.conftest import concurrently
from tests.test_search_stream import pause, requests_by_method, stoppable  # noqa: F401 - a fixture

DIM = 8


def served(several_threads: bool = True):
    """A server and a client; with `several_threads`, the client acts as one whose threads have
    already searched, so that every search goes through its coalescer (a client with one
    searching thread sends its searches over that thread's stream: client/readers.py)."""
    server = CuratorServer(ServerConfig(data=":memory:", port=0)).start()
    db = curator.connect(server.address)
    if several_threads:
        db._readers._searchers = 2
    rng = np.random.default_rng(0)
    col = db.create_collection("c", dim=DIM)
    for t in range(4):
        col.insert(np.arange(t * 300, (t + 1) * 300), rng.random((300, DIM)), tenant=f"t{t}",
                   payloads=[{"n": i % 10} for i in range(300)])
    db.create_collection("d", dim=DIM + 1).insert(np.arange(50), rng.random((50, DIM + 1)), tenant="t0")
    return server, db


def group_sizes(monkeypatch) -> list[int]:
    """The sizes of the groups the server answers (recorded by wrapping its handler)."""
    sizes = []
    real = service.SearchService._answer_group

    def recording(self, group, principal, context, now=False):
        reply = real(self, group, principal, context, now)
        if reply is not None:
            sizes.append(len(group.searches))
        return reply

    monkeypatch.setattr(service.SearchService, "_answer_group", recording)
    return sizes


def test_threads_get_their_own_answers_and_errors_and_searches_travel_together(monkeypatch):
    sizes = group_sizes(monkeypatch)
    server, db = served()
    try:
        col, other = db.collection("c"), db.collection("d")
        engine = server.db.collection("c")
        rng = np.random.default_rng(1)
        queries = rng.random((16, 40, DIM)).astype(np.float32)
        start = threading.Barrier(16)

        def searcher(worker: int):
            """Each thread a different mix: its tenant, k and ef, a filter now and then, bad
            requests among good ones (each must get its own error, not a neighbour's)."""
            start.wait()
            tenant, k = f"t{worker % 4}", 1 + worker % 12
            for i, query in enumerate(queries[worker]):
                if i % 13 == 5:
                    with pytest.raises(curator.NotFoundError):
                        col.search(query, k=k, tenant="nobody")
                elif i % 13 == 7:
                    with pytest.raises(curator.InvalidArgumentError):
                        col.search(np.full(DIM, np.nan, np.float32), k=k, tenant=tenant)
                elif i % 13 == 9:
                    found = other.search(np.ones(DIM + 1, np.float32), k=3, tenant="t0")
                    assert found.ids.size == 3
                else:
                    where = {"n": {"in": [1, 2, 3]}} if i % 5 == 0 else None
                    ef = 64 if worker % 3 == 0 else None
                    found = col.search(query, k=k, tenant=tenant, filter=where, ef=ef)
                    alone = engine.search(query, k=k, tenant=tenant, filter=where, ef=ef)
                    np.testing.assert_array_equal(found.ids, alone.ids)
                    np.testing.assert_allclose(found.distances, alone.distances, rtol=1e-5, atol=1e-6)
            return worker

        results, errors = concurrently(searcher, [(w,) for w in range(16)])
        assert not errors, errors[:3]
        assert sorted(results) == list(range(16))
        counted = requests_by_method(server)
        assert sum(sizes) == counted["SearchGroups"]
        # each answered once (alone over a stream, or as a unary call past the server's stream limit)
        assert counted["SearchGroups"] + counted["SearchStream"] + counted.get("Search", 0) == 16 * 40
        assert max(sizes) > 1  # 16 threads at once: searches gathered while groups travelled
    finally:
        db.close()
        server.stop()


def test_a_client_with_one_searching_thread_searches_over_its_stream_and_gathers_from_the_second(monkeypatch):
    sizes = group_sizes(monkeypatch)
    server, db = served(several_threads=False)
    try:
        col = db.collection("c")
        query = np.ones(DIM, np.float32)
        expected = server.db.collection("c").search(query, k=5, tenant="t1").ids
        for _ in range(20):
            np.testing.assert_array_equal(col.search(query, k=5, tenant="t1").ids, expected)
        groups = db._channel.groups
        # over a SearchStream (the thread's own): the coalescer opened none
        assert groups._open == 0 and requests_by_method(server)["SearchStream"] == 20
        results, errors = concurrently(lambda: [col.search(query, k=5, tenant="t1").ids for _ in range(50)],
                                       [()] * 8)
        assert not errors and all(np.array_equal(ids, expected) for r in results for ids in r)
        assert groups._open > 0  # from the second thread on, searches go through the coalescer
        assert requests_by_method(server).get("SearchGroups", 0) == sum(sizes)
    finally:
        db.close()
        server.stop()


class LoneGate:
    """Where lone searches (alone over a stream) wait at the server: each waits until the gate it
    found is set; `swap` puts a new, closed gate before the later ones."""

    def __init__(self):
        self.gate = threading.Event()
        self.arrived: list = []  # a gate for each search that came to one (appends are atomic)

    def set(self) -> None:
        self.gate.set()

    def swap(self) -> threading.Event:
        """The gate the searches so far wait at; later ones wait at a new one."""
        old, self.gate = self.gate, threading.Event()
        return old


def hold_lone_searches(monkeypatch) -> LoneGate:
    """Searches that come alone over a thread's stream wait at the server until their gate is set."""
    lone = LoneGate()
    real = service.SearchService._answer

    def held(self, request, principal, context, now=False, method="SearchStream"):
        if method == "SearchStream":
            if now:
                return None  # not on the polling thread: the handler's thread waits below
            gate = lone.gate
            lone.arrived.append(gate)
            gate.wait(10)
        return real(self, request, principal, context, now, method)

    monkeypatch.setattr(service.SearchService, "_answer", held)
    return lone


def gathered(db, n: int, senders: int | None = None) -> None:
    """Until `senders` sending turns (all of them by default) are taken and n searches wait behind them."""
    groups = db._channel.groups
    give_up = time.monotonic() + 10
    while groups._senders < (senders or groups.in_flight) or len(groups._gathered) < n:
        assert time.monotonic() < give_up, f"{groups._senders} sending, {len(groups._gathered)} gathered"
        threading.Event().wait(0.01)


def start_lone_then(db, lone: list[threading.Thread], rest: list[threading.Thread]) -> None:
    """Start the `lone` threads, each of whose searches goes alone (as many as the sending
    turns), then, once all are on their way, the `rest`, which gather behind them."""
    for thread in lone:
        thread.start()
    gathered(db, 0)
    for thread in rest:
        thread.start()


def test_searches_gather_while_a_group_travels(monkeypatch):
    """Held at the server, the first four searches (each alone on a stream) keep the
    next ones waiting at the client, which then go together: a deterministic view of what the
    benchmark's threads do by chance."""
    sizes = group_sizes(monkeypatch)
    release = hold_lone_searches(monkeypatch)
    server, db = served()
    try:
        col = db.collection("c")
        query = np.ones(DIM, np.float32)
        expected = server.db.collection("c").search(query, k=5, tenant="t1").ids
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(col.search(query, k=5, tenant="t1").ids))
                   for _ in range(4 + 8)]
        start_lone_then(db, threads[:4], threads[4:])
        gathered(db, 8)
        release.set()
        for thread in threads:
            thread.join()
        assert len(results) == 12 and all(np.array_equal(r, expected) for r in results)
        assert sizes == [8]
    finally:
        release.set()
        db.close()
        server.stop()


def test_a_crowd_of_searches_keeps_fewer_groups_on_their_way(monkeypatch):
    """While more searches are asked than `in_flight`, only `crowded` groups travel at once, so
    that the rest gather into larger groups (fewer messages per search) rather than each taking
    a free turn alone."""
    lone = hold_lone_searches(monkeypatch)
    group_gate = threading.Event()
    real_group = service.SearchService._answer_group

    def held_group(self, group, principal, context, now=False):
        if now:
            return None  # to the handler's thread, which waits below
        group_gate.wait(10)
        return real_group(self, group, principal, context, now)

    monkeypatch.setattr(service.SearchService, "_answer_group", held_group)
    server, db = served()
    groups = db._channel.groups
    try:
        col = db.collection("c")
        query = np.ones(DIM, np.float32)
        expected = server.db.collection("c").search(query, k=5, tenant="t1").ids
        results: list = []

        def searcher():
            return threading.Thread(target=lambda: results.append(col.search(query, k=5, tenant="t1").ids))

        threads = [searcher() for _ in range(4 + 8 + 3)]
        start_lone_then(db, threads[:4], threads[4:12])
        gathered(db, 8)
        while len(lone.arrived) < 4:  # the first four wait at the server
            threading.Event().wait(0.01)
        lone.swap().set()  # the four come back (later lone ones wait); the eight leave as one group, held
        while not (groups._senders == 1 and groups._asked == 8):
            threading.Event().wait(0.01)
        for thread in threads[12:]:  # 11 asked, more than in_flight: at most `crowded` on their way
            thread.start()
        gathered(db, 2, senders=groups.crowded)
        threading.Event().wait(0.2)
        assert groups._senders == groups.crowded == 2 and len(groups._gathered) == 2
        lone.set()
        group_gate.set()
        for thread in threads:
            thread.join()
        assert len(results) == 15 and all(np.array_equal(r, expected) for r in results)
        assert groups._asked == 0 and groups._senders == 0
    finally:
        lone.set()
        group_gate.set()
        db.close()
        server.stop()


def test_the_thread_that_waited_for_a_reply_sends_what_gathered_and_another_waits_for_that(monkeypatch):
    """When a group comes back, the searches that gathered meanwhile leave at once, sent by the
    thread that waited for the reply (before it returns to its caller), and the wait for their
    reply is left to one of their own threads: no thread is woken before the next group leaves."""
    from curator_client.stream import SearchStream

    events = []  # (what, thread, group size)
    real_send, real_receive = SearchStream.send, SearchStream.receive

    def send(self, request):
        size = len(request.searches) if isinstance(request, pb.SearchGroup) else 1
        events.append(("send", threading.get_ident(), size))
        self.size = size
        return real_send(self, request)

    def receive(self):
        events.append(("receive", threading.get_ident(), self.size))
        return real_receive(self)

    monkeypatch.setattr(SearchStream, "send", send)
    monkeypatch.setattr(SearchStream, "receive", receive)
    release = hold_lone_searches(monkeypatch)
    server, db = served()
    try:
        col = db.collection("c")
        query = np.ones(DIM, np.float32)
        expected = server.db.collection("c").search(query, k=5, tenant="t1").ids
        results, lone_threads = [], set()

        def lone():
            lone_threads.add(threading.get_ident())
            results.append(col.search(query, k=5, tenant="t1").ids)

        threads = [threading.Thread(target=lone) for _ in range(4)]
        for thread in threads:
            thread.start()
        while db._channel.groups._senders < 4:
            threading.Event().wait(0.01)
        threads += [threading.Thread(target=lambda: results.append(col.search(query, k=5, tenant="t1").ids))
                    for _ in range(8)]
        for thread in threads[4:]:
            thread.start()
        gathered(db, 8)
        release.set()
        for thread in threads:
            thread.join()
        assert len(results) == 12 and all(np.array_equal(r, expected) for r in results)
        [sent] = [who for what, who, size in events if what == "send" and size == 8]
        [received] = [who for what, who, size in events if what == "receive" and size == 8]
        assert sent in lone_threads  # a returning lone search sent the group before it returned
        assert received not in lone_threads  # one of the group's own threads waited for its reply
    finally:
        release.set()
        db.close()
        server.stop()


def test_small_groups_are_answered_on_the_polling_thread_and_others_by_the_handler(monkeypatch):
    """A group of at most QUICK_GROUP tenants' searches without filters, at no more than the
    default ef, is answered where it arrives, with search_now; a larger group, one with a filter
    or a larger ef, and one that would wait for the collection go to the stream's handler thread.
    Every way gives the unary answers, and each search is counted once."""
    from curator_server.service import QUICK_EF, QUICK_GROUP

    answered = []  # (searches, answered with `now`) for each group answered
    real = service.SearchService._answer_group

    def recording(self, group, principal, context, now=False):
        reply = real(self, group, principal, context, now)
        if reply is not None:
            answered.append((len(group.searches), now))
        return reply

    monkeypatch.setattr(service.SearchService, "_answer_group", recording)
    server, db = served()
    try:
        stub = rpc.SearchStub(grpc.insecure_channel(server.address))
        rng = np.random.default_rng(3)

        def search(i, **extra):
            query = pb.Vectors(dim=DIM, data=rng.random(DIM, dtype=np.float32).tobytes())
            return pb.SearchRequest(collection="c", query=query, k=4, tenant=f"t{i % 4}", **extra)

        where = filters_wire.pack_filter({"n": {"in": [1, 2]}})
        groups = [[search(i) for i in range(2)],  # the first message always reaches the handler
                  [search(i) for i in range(3)],
                  [search(i) for i in range(QUICK_GROUP)],
                  [search(i) for i in range(QUICK_GROUP + 1)],
                  [search(0), search(1, filter=where)],
                  [search(0), search(1, ef=QUICK_EF + 1)]]
        expected = [[stub.Search(r) for r in g] for g in groups]
        replies = list(stub.SearchGroups(iter(pb.SearchGroup(searches=g) for g in groups), timeout=30))
        assert [[r.result for r in reply.replies] for reply in replies] == expected
        assert answered == [(2, False), (3, True), (QUICK_GROUP, True), (QUICK_GROUP + 1, False), (2, False),
                            (2, False)]

        # a search that would wait (a write holds the collection) sends its whole group to the handler
        engine = type(server.db.collection("c"))
        calls = iter(range(1 << 30))
        real_now = engine.search_now
        monkeypatch.setattr(engine, "search_now",
                            lambda self, *a, **k: None if next(calls) == 1 else real_now(self, *a, **k))
        before = requests_by_method(server)["SearchGroups"]
        answered.clear()
        replies = list(stub.SearchGroups(iter(pb.SearchGroup(searches=g) for g in groups[:2]), timeout=30))
        assert [[r.result for r in reply.replies] for reply in replies] == expected[:2]
        assert answered == [(2, False), (3, False)]
        assert requests_by_method(server)["SearchGroups"] - before == 5  # each search counted once
    finally:
        db.close()
        server.stop()


def test_a_lone_search_goes_at_once_over_its_threads_stream(monkeypatch):
    sizes = group_sizes(monkeypatch)
    server, db = served()
    try:
        col = db.collection("c")
        for _ in range(5):
            assert col.search(np.ones(DIM), k=4, tenant="t2").ids.size == 4
        assert sizes == [] and requests_by_method(server)["SearchStream"] == 5
    finally:
        db.close()
        server.stop()


def test_a_server_without_groups_is_searched_one_by_one(monkeypatch):
    def unimplemented(self, requests, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

    monkeypatch.setattr(service.SearchService, "SearchGroups", unimplemented)
    release = hold_lone_searches(monkeypatch)
    server, db = served()
    try:
        col = db.collection("c")
        expected = server.db.collection("c").search(np.ones(DIM, np.float32), k=4, tenant="t2").ids
        results = []
        threads = [threading.Thread(target=lambda: results.append(col.search(np.ones(DIM), k=4, tenant="t2").ids))
                   for _ in range(4 + 6)]
        start_lone_then(db, threads[:4], threads[4:])
        gathered(db, 6)
        release.set()  # the 6 go as a group, are refused, and each searches alone
        for thread in threads:
            thread.join()
        assert len(results) == 10 and all(np.array_equal(r, expected) for r in results)
        assert not db._channel.groups.available  # tried again only later
    finally:
        release.set()
        db.close()
        server.stop()


def test_a_group_keeps_the_deadline_when_the_server_stops_answering(stoppable):  # noqa: F811
    address, process = stoppable
    col = curator.connect(address, timeout=1.0).collection("c")
    col.search(np.ones(4), k=3, tenant="t")  # the group stream is open
    pause(process)
    try:
        results, errors = concurrently(lambda: col.search(np.ones(4), k=3, tenant="t"), [()] * 4)
        assert len(errors) == 4 and all("DEADLINE_EXCEEDED" in str(e) for e in errors)
    finally:
        process.send_signal(signal.SIGCONT)
    assert col.search(np.ones(4), k=3, tenant="t")[0].size == 3  # served again


def test_coroutines_get_their_own_answers_and_search_in_groups(monkeypatch):
    from curator_client import aio

    sizes = group_sizes(monkeypatch)
    server, _ = served()
    engine = server.db.collection("c")
    queries = np.random.default_rng(2).random((64, DIM)).astype(np.float32)

    async def session():
        async with await aio.connect(server.address) as db:
            col = await db.collection("c")

            async def one(i):
                if i % 9 == 4:
                    with pytest.raises(curator.NotFoundError):
                        await col.search(queries[i], k=5, tenant="nobody")
                    return None
                return (await col.search(queries[i], k=1 + i % 7, tenant=f"t{i % 4}")).ids

            for i, found in enumerate(await asyncio.gather(*(one(i) for i in range(64)))):
                if found is not None:
                    np.testing.assert_array_equal(found, engine.search(queries[i], k=1 + i % 7, tenant=f"t{i % 4}").ids)
            lone = await col.search(queries[0], k=3, tenant="t0")  # alone: over the stream
            assert lone.ids.size == 3

    try:
        asyncio.run(session())
        counted = requests_by_method(server)
        assert sum(sizes) == counted["SearchGroups"] and max(sizes) > 1
        assert counted["SearchGroups"] + counted["SearchStream"] + counted.get("Search", 0) == 65
    finally:
        server.stop()


def test_an_async_group_keeps_the_deadline_when_the_server_stops_answering(stoppable):  # noqa: F811
    from curator_client import aio

    address, process = stoppable

    async def session():
        async with await aio.connect(address, timeout=1.0) as db:
            col = await db.collection("c")
            await col.search(np.ones(4), k=3, tenant="t")
            pause(process)
            try:
                outcomes = await asyncio.gather(*(col.search(np.ones(4), k=3, tenant="t") for _ in range(4)),
                                                return_exceptions=True)
                assert all("DEADLINE_EXCEEDED" in str(o) for o in outcomes), outcomes
            finally:
                process.send_signal(signal.SIGCONT)
            assert (await col.search(np.ones(4), k=3, tenant="t")).ids.size == 3

    asyncio.run(session())
