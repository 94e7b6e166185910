"""Admission and fairness (server/admission.py, server/streams.py), against a real server on
loopback: keyless calls are refused without holding a worker, one key's slow or half-open calls
and streams leave the others theirs, the limits are refused early and named, and every admitted
call gives its place back however it ends.

A half-open call here is a unary method called as a client stream whose request iterator waits
on an Event: its headers go out, its body does not until the test says so."""

import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import curator
from curator_proto import wire
from curator_proto.v1 import curator_pb2 as pb
from curator_proto.v1 import curator_pb2_grpc as rpc
from curator_server.app import CuratorServer, ServerConfig
from tests.conftest import keys_file

KEYS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789", "admin": "key-admin-0123456789"}
WORKERS = 8  # so a key may have 4 calls in flight, and the server 4 streams, 2 per key
COUNT = "/curator.v1.VectorsService/Count"


def auth(who: str | None) -> tuple:
    return () if who is None else (("authorization", f"Bearer {KEYS.get(who, who)}"),)


def serve(tmp_path, **config) -> CuratorServer:
    keys = keys_file(tmp_path / "keys.toml", {"alice-app": (KEYS["alice"], ["alice"]), "bob-app": (KEYS["bob"], ["bob"]),
                                          "ops": (KEYS["admin"], None)})
    server = CuratorServer(ServerConfig(data=":memory:", port=0, keys=keys, workers=WORKERS, **config)).start()
    with curator.connect(server.address, api_key=KEYS["admin"]) as admin:
        col = admin.create_collection("docs", dim=4)
        rng = np.random.default_rng(0)
        col.insert(np.arange(50), rng.random((50, 4)), tenant="alice")
        col.insert(np.arange(50, 100), rng.random((50, 4)), tenant="bob")
    return server


@pytest.fixture
def server(tmp_path):
    server = serve(tmp_path)
    yield server
    server.stop()


class HalfOpen:
    """Calls that send their headers and withhold their body until `release()`; then each sends
    `body` (None: none, which a unary method answers with an error) or, with `cancel`, is cancelled."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address)
        self.gate = threading.Event()
        self.calls: list[grpc.Future] = []

    def start(self, who: str | None, n: int, path: str = COUNT, body: bytes | None = None) -> list[grpc.Future]:
        def withheld():
            self.gate.wait()
            if body is not None:
                yield body

        calls = [self.channel.stream_unary(path).future(withheld(), metadata=auth(who), timeout=60) for _ in range(n)]
        self.calls += calls
        return calls

    def release(self) -> None:
        self.gate.set()
        for call in self.calls:
            if not call.cancelled():
                call.exception(timeout=30)  # each has ended, one way or another
        self.channel.close()


def code_of(call: grpc.Future) -> grpc.StatusCode:
    error = call.exception(timeout=5)
    return grpc.StatusCode.OK if error is None else error.code()


def count(address: str, who: str, tenant: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return rpc.VectorsServiceStub(channel).Count(pb.CountRequest(collection="docs", tenant=tenant),
                                                     metadata=auth(who), timeout=5).count


def healthy(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def in_flight(server: CuratorServer, who: str) -> int:
    return server.admission.in_flight(server.keys.principal_of(auth(who)))


def refused(server: CuratorServer, reason: str) -> float:
    return server.metrics.registry.get_sample_value("curator_refused_total", {"reason": reason}) or 0.0


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_keyless_half_open_calls_are_refused_without_holding_a_worker(server):
    calls = HalfOpen(server.address)
    try:
        keyless = calls.start(None, 2 * WORKERS) + calls.start("not-a-key", WORKERS)
        keyless += calls.start(None, WORKERS, "/curator.v1.Search/SearchStream")
        # answered while every body is still withheld: no worker waited for one
        assert [code_of(c) for c in keyless] == [grpc.StatusCode.UNAUTHENTICATED] * len(keyless)
        assert "no API key" in keyless[0].exception().details()
        assert dict(keyless[0].exception().trailing_metadata())[wire.ERROR_KEY] == "UnauthenticatedError"
        more = calls.start(None, 2 * WORKERS)  # and these still in flight, as far as their client knows
        assert count(server.address, "alice", "alice") == 50
        assert healthy(server.address)
        assert all(code_of(c) == grpc.StatusCode.UNAUTHENTICATED for c in more)
        assert refused(server, "unauthenticated") == 6 * WORKERS
        with curator.connect(server.address, api_key="not-a-key") as stranger, \
                pytest.raises(curator.UnauthenticatedError, match="unknown API key"):  # the SDK's view of it
            stranger.list_collections()
    finally:
        calls.release()


def test_one_keys_half_open_calls_cannot_starve_another_key(server):
    calls = HalfOpen(server.address)
    try:
        held = calls.start("alice", WORKERS // 2)
        assert wait_for(lambda: in_flight(server, "alice") == WORKERS // 2)
        refused = calls.start("alice", WORKERS)
        assert all(code_of(c) == grpc.StatusCode.RESOURCE_EXHAUSTED for c in refused)
        assert not any(c.done() for c in held)  # refused early: alice's own calls are still waiting
        assert count(server.address, "bob", "bob") == 50
        assert count(server.address, "admin", "bob") == 50
        assert healthy(server.address)
        with curator.connect(server.address, api_key=KEYS["bob"]) as db:
            bob = db.collection("docs")
            assert bob.search(np.ones(4), k=5, tenant="bob")[0].size == 5  # a stream and its search
            assert bob.search_batch(np.ones((2, 4)), k=5, tenants="bob")[0].shape == (2, 5)  # a unary call beside it
    finally:
        calls.release()


def test_past_a_keys_limit_calls_are_refused_early_naming_the_limit(server):
    calls = HalfOpen(server.address)
    try:
        calls.start("alice", WORKERS // 2)
        assert wait_for(lambda: in_flight(server, "alice") == WORKERS // 2)
        with pytest.raises(grpc.RpcError) as raised:
            count(server.address, "alice", "alice")
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"max_calls_per_key={WORKERS // 2}" in raised.value.details() and "alice-app" in raised.value.details()
        with curator.connect(server.address, api_key=KEYS["alice"], search_stream=False) as db, \
                pytest.raises(curator.ResourceExhaustedError, match="max_calls_per_key"):
            db.collection("docs").count(tenant="alice")
        assert in_flight(server, "alice") == WORKERS // 2  # a refusal takes no place
        assert refused(server, "key_limit") == 2
    finally:
        calls.release()
    assert wait_for(lambda: in_flight(server, "alice") == 0)
    assert count(server.address, "alice", "alice") == 50  # the limit is of calls in flight, not a ban


@pytest.fixture
def capped(tmp_path):
    server = serve(tmp_path, max_calls=WORKERS // 2 + 1)  # grpcio's own cap, past which it refuses
    yield server
    server.stop()


def test_every_admitted_call_gives_its_place_back_however_it_ends(capped):
    server = capped
    calls = HalfOpen(server.address)
    try:
        body = pb.CountRequest(collection="docs", tenant="alice").SerializeToString()
        answered = calls.start("alice", 2, body=body)  # their handlers run once the body comes
        unsent = calls.start("alice", 2)  # these end with no body at all: their handlers never run
        assert wait_for(lambda: in_flight(server, "alice") == 4)
        last = calls.start("bob", 1)[0]  # the last place under max_calls
        assert wait_for(lambda: in_flight(server, "bob") == 1)
        over = calls.start("bob", 2)  # admitted by the key's limit, then refused by grpcio's cap
        assert [code_of(c) for c in over] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
        assert wait_for(lambda: in_flight(server, "bob") == 1)  # what grpcio refused was given back
        last.cancel()  # cancelled before its body: its handler never runs either
        assert wait_for(lambda: in_flight(server, "bob") == 0)
    finally:
        calls.release()
    assert all(pb.CountResponse.FromString(a.result()).count == 50 for a in answered)
    assert all(code_of(c) != grpc.StatusCode.OK for c in unsent)
    assert wait_for(lambda: in_flight(server, "alice") == 0)
    assert count(server.address, "alice", "alice") == 50


class Stream:
    """A raw SearchStream with one key, fed a request at a time."""

    def __init__(self, address: str, who: str):
        self.channel = grpc.insecure_channel(address)
        self.requests: list = []
        self.ready = threading.Condition()
        self.replies = rpc.SearchStub(self.channel).SearchStream(self._feed(), metadata=auth(who), timeout=60)

    def _feed(self):
        while True:
            with self.ready:
                self.ready.wait_for(lambda: self.requests)
                request = self.requests.pop(0)
            if request is None:
                return
            yield request

    def search(self, tenant: str) -> pb.SearchStreamReply:
        with self.ready:
            self.requests.append(pb.SearchRequest(collection="docs", tenant=tenant, k=3,
                                                  query=wire.pack(np.ones(4, np.float32))))
            self.ready.notify()
        return next(self.replies)

    def close(self) -> None:
        with self.ready:
            self.requests.append(None)
            self.ready.notify()
        self.replies.cancel()
        self.channel.close()


def test_one_key_cannot_hold_every_stream_slot(server):
    share = server.streams.per_key
    assert share == 2 and server.streams.limit == 4
    streams = []
    try:
        for _ in range(share):
            streams.append(Stream(server.address, "alice"))
            assert streams[-1].search("alice").result.ids
        streams.append(Stream(server.address, "alice"))
        with pytest.raises(grpc.RpcError) as raised:
            streams[-1].search("alice")
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"max_streams_per_key={share}" in raised.value.details()
        streams.append(Stream(server.address, "bob"))
        assert streams[-1].search("bob").result.ids  # bob still gets a stream of his own
        assert len(server.streams) == share + 1
        with curator.connect(server.address, api_key=KEYS["alice"]) as db:  # refused a stream: a unary call
            assert db.collection("docs").search(np.ones(4), k=3, tenant="alice")[0].size == 3
    finally:
        for stream in streams:
            stream.close()
    assert wait_for(lambda: len(server.streams) == 0)
    assert wait_for(lambda: in_flight(server, "alice") == 0 and in_flight(server, "bob") == 0)
