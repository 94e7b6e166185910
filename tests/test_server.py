"""The gRPC service as its users meet it: API keys and tenancy, health, reflection, limits,
metrics, fuzzed requests, `curator serve` as a process with graceful SIGTERM, and the contract's
generated code being current."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import curator
from curator_proto import filters_wire
from curator_proto.v1 import curator_pb2 as pb
from curator_proto.v1 import curator_pb2_grpc as rpc
from benchmarks.measure import free_port
from curator_server.app import CuratorServer, ServerConfig
from curator_server.service import Limits
from tests.conftest import concurrently, keys_file

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789", "admin": "key-admin-0123456789"}


@pytest.fixture(params=["server", "cluster"])
def secured(request, tmp_path):
    """A server with keys (or a cluster front with the same keys: tenant keys work the same
    through it), alice's and bob's vectors in collection "docs", one of bob's shared with alice."""
    keys = keys_file(tmp_path / "keys.toml", {"alice-app": (KEYS["alice"], ["alice"]), "bob-app": (KEYS["bob"], ["bob"]),
                                          "ops": (KEYS["admin"], None)})
    config = ServerConfig(data=str(tmp_path / "d"), port=0, keys=keys,
                          limits=Limits(max_message_bytes=1 << 20, max_batch=500, max_k=50))
    if request.param == "cluster":
        config.ray = "given"
        server = CuratorServer(config, cluster=request.getfixturevalue("curator_cluster")).start()
    else:
        server = CuratorServer(config).start()
    admin = curator.connect(server.address, api_key=KEYS["admin"])
    col = admin.create_collection("docs", dim=4)
    rng = np.random.default_rng(0)
    col.insert(np.arange(100), rng.random((100, 4)), tenant="alice",
               payloads=[{"lang": ("en", "de")[i % 2], "year": 2000 + i, "tags": [f"t{i % 3}"]} for i in range(100)])
    col.insert(np.arange(100, 200), rng.random((100, 4)), tenant="bob")
    col.grant([150], tenant="alice")  # bob shares one vector with alice
    yield server
    if request.param == "cluster":  # the session's cluster, left as found
        for name in admin.list_collections():
            admin.drop_collection(name)
    admin.close()
    server.stop()


def test_a_key_never_reaches_another_tenants_data(secured):
    alice = curator.connect(secured.address, api_key=KEYS["alice"]).collection("docs")
    ids, _ = alice.search(np.ones(4), k=50, tenant="alice")
    assert set(ids.tolist()) <= set(range(100)) | {150} and ids.size == 50
    assert alice.scroll(tenant="alice", limit=500)[0].tolist() == list(range(100)) + [150]
    for call in (lambda: alice.search(np.ones(4), k=5, tenant="bob"),
                 lambda: alice.search_batch(np.ones((2, 4)), k=5, tenants=["alice", "bob"]),
                 lambda: alice.count(tenant="bob"),
                 lambda: alice.grant([1], tenant="bob"),
                 lambda: alice.revoke([150], tenant="bob"),
                 lambda: alice.insert([999], np.ones((1, 4)), tenant="bob"),
                 lambda: alice.drop_tenant("bob"),
                 lambda: alice.delete([1]),
                 lambda: alice.count()):
        with pytest.raises(curator.PermissionDeniedError):
            call()
    with pytest.raises(curator.NotFoundError):  # bob's vectors do not exist for alice
        alice.get([120])
    with pytest.raises(curator.NotFoundError):
        alice.grant([120], tenant="alice")  # she cannot take what she cannot see
    with pytest.raises(curator.NotFoundError):  # revoking bob's id is indistinguishable from a missing one
        alice.revoke([120], tenant="alice")
    with pytest.raises(curator.NotFoundError):
        alice.revoke([99_999], tenant="alice")
    with pytest.raises(curator.AlreadyExistsError):
        alice.upsert([120], np.ones((1, 4)), tenant="alice")  # nor overwrite it
    np.testing.assert_array_equal(alice.get([150]).shape, (1, 4))  # shared with her: visible
    assert alice.tenants_of(150) == ["alice"]  # she does not learn who else sees it
    assert alice.tenants() == ["alice"]
    assert alice.contains([1, 120, 150]).tolist() == [True, False, True]


def test_missing_or_wrong_keys_are_rejected(secured):
    for key in (None, "not-a-key"):
        db = curator.connect(secured.address, api_key=key)
        with pytest.raises(curator.UnauthenticatedError):
            db.list_collections()
    with pytest.raises(curator.PermissionDeniedError, match="admin"):
        curator.connect(secured.address, api_key=KEYS["bob"]).create_collection("x", dim=3)


def test_limits_are_named_in_the_error(secured):
    admin = curator.connect(secured.address, api_key=KEYS["admin"]).collection("docs")
    with pytest.raises(curator.ResourceExhaustedError, match="max_batch"):
        admin.get(np.arange(501))
    with pytest.raises(curator.ResourceExhaustedError, match="max_k"):
        admin.search(np.ones(4), k=51, tenant="alice")
    channel = grpc.insecure_channel(secured.address)  # a raw request over the server's 1 MiB message limit
    request = pb.InsertRequest(collection="docs", ids=[5000], tenant="alice",
                               vectors=pb.Vectors(dim=4, data=b"\0" * (2 << 20)))
    with pytest.raises(grpc.RpcError) as raised:
        rpc.VectorsServiceStub(channel).Insert(request, metadata=(("authorization", f"Bearer {KEYS['admin']}"),),
                                               timeout=10)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert admin.count(tenant="alice") == 101  # and the server goes on


def test_health_and_reflection(secured):
    channel = grpc.insecure_channel(secured.address)
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="curator.v1.Search"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert {"curator.v1.Search", "curator.v1.VectorsService", "grpc.health.v1.Health"} <= names


GARBAGE = st.builds(
    lambda dim, data, ids, k, tenant, ef: (dim, data, ids, k, tenant, ef),
    st.integers(0, 2**32 - 1) | st.sampled_from([0, 3, 4, 5]),
    st.binary(max_size=200) | st.just(np.array([np.nan, 1, 2, 3], "<f4").tobytes())
    | st.just(np.ones(4, "<f4").tobytes()),
    st.lists(st.integers(-2**63, 2**63 - 1), max_size=20),
    st.integers(0, 2**32 - 1) | st.integers(0, 60),
    st.sampled_from(["alice", "bob", "", "ghost", "x" * 300]),
    st.integers(0, 2**32 - 1),
)
VALUES = st.one_of(
    st.builds(lambda s: pb.Value(keyword=s), st.sampled_from(["en", "de", ""])),
    st.builds(lambda i: pb.Value(integer=i), st.integers(-2**63, 2**63 - 1)),
    st.builds(lambda x: pb.Value(number=x), st.floats()),
    st.builds(lambda b: pb.Value(flag=b), st.booleans()),
    st.builds(lambda w: pb.Value(keywords=pb.StringList(values=w)),
              st.lists(st.sampled_from(["t0", "t1"]), max_size=2)),
    st.just(pb.Value()),
)
CONDITIONS = st.builds(
    lambda field, op, values: pb.Filter(condition=pb.Condition(field=field, op=op, values=values)),
    st.sampled_from(["lang", "year", "tags", "ghost", ""]),
    st.sampled_from(filters_wire.OPERATORS + ("like", "")),
    st.lists(VALUES, max_size=3),
)
FILTERS = st.none() | st.just(pb.Filter()) | st.recursive(CONDITIONS, lambda inner: st.one_of(
    st.builds(lambda fs: pb.Filter(all=pb.FilterList(filters=fs)), st.lists(inner, max_size=3)),
    st.builds(lambda fs: pb.Filter(any=pb.FilterList(filters=fs)), st.lists(inner, max_size=3)),
    st.builds(lambda f: pb.Filter(negate=f), inner),
), max_leaves=8)
DEFINED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
           grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED,
           grpc.StatusCode.FAILED_PRECONDITION}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=GARBAGE, where=FILTERS,
       method=st.sampled_from(["Search", "SearchBatch", "Insert", "Grant", "Get", "Scroll", "GetPayloads"]))
def test_fuzzed_requests_get_defined_codes_and_the_server_keeps_serving(secured, case, where, method):
    dim, data, ids, k, tenant, ef = case
    channel = grpc.insecure_channel(secured.address)
    meta = (("authorization", f"Bearer {KEYS['admin']}"),)
    vectors = pb.Vectors(dim=dim, data=data)
    requests = {
        "Search": (rpc.SearchStub(channel).Search,
                   pb.SearchRequest(collection="docs", query=vectors, k=k, tenant=tenant, ef=ef, filter=where)),
        "SearchBatch": (rpc.SearchStub(channel).SearchBatch,
                        pb.SearchBatchRequest(collection="docs", queries=vectors, k=k, tenants=[tenant], ef=ef,
                                              filter=where)),
        "Insert": (rpc.VectorsServiceStub(channel).Insert,
                   pb.InsertRequest(collection="docs", ids=ids, vectors=vectors, tenant=tenant, upsert=bool(k % 2))),
        "Grant": (rpc.VectorsServiceStub(channel).Grant, pb.GrantRequest(collection="docs", ids=ids, tenant=tenant)),
        "Get": (rpc.VectorsServiceStub(channel).Get, pb.IdsRequest(collection="docs", ids=ids)),
        "GetPayloads": (rpc.VectorsServiceStub(channel).GetPayloads, pb.IdsRequest(collection="docs", ids=ids)),
        "Scroll": (rpc.VectorsServiceStub(channel).Scroll,
                   pb.ScrollRequest(collection="docs", tenant=tenant, after_id=ids[0] if ids else -1, limit=k)),
    }
    call, request = requests[method]
    try:
        call(request, metadata=meta, timeout=10)
    except grpc.RpcError as error:
        assert error.code() in DEFINED, f"{method} answered {error.code()}: {error.details()}"
    ok = rpc.SearchStub(channel).Search(pb.SearchRequest(collection="docs", query=pb.Vectors(
        dim=4, data=np.ones(4, "<f4").tobytes()), k=3, tenant="alice"), metadata=meta, timeout=10)
    assert len(ok.ids) == 3
    channel.close()


def test_curator_serve_process_drains_on_sigterm_and_keeps_data(tmp_path):
    port, metrics = free_port(), free_port()
    command = [sys.executable, "-m", "curator_server", "serve", "--data", str(tmp_path / "d"), "--port", str(port),
               "--metrics-port", str(metrics)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        db = curator.connect(f"127.0.0.1:{port}", timeout=5, retries=8)
        col = None
        for _ in range(100):
            try:
                col = db.create_collection("c", dim=3)
                break
            except curator.CuratorError:
                time.sleep(0.2)
        col.insert([1, 2], np.ones((2, 3)), tenant="t")
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        assert 'curator_requests_total{code="OK",method="Insert"} 1.0' in text
        assert 'curator_vectors{collection="c"} 2.0' in text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    log = process.stdout.read()
    assert "OPEN MODE" in log and "stopped" in log
    with curator.open(str(tmp_path / "d")) as reopened:
        assert reopened.collection("c").count(tenant="t") == 2


def test_generated_code_is_current():
    result = subprocess.run([sys.executable, "proto/generate.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_asyncio_client_matches_the_blocking_one(secured):
    import asyncio

    from curator_client import aio

    async def run():
        async with await aio.connect(secured.address, api_key=KEYS["alice"]) as db:
            col = await db.collection("docs")
            ids, dists = await col.search(np.ones(4), k=5, tenant="alice")
            many = await asyncio.gather(*(col.search(np.ones(4), k=5, tenant="alice") for _ in range(20)))
            assert all(np.array_equal(m[0], ids) for m in many)
            await col.grant([1, 2], tenant="alice")
            assert await col.count(tenant="alice") == 101
            with pytest.raises(curator.PermissionDeniedError):
                await col.search(np.ones(4), k=5, tenant="bob")
            return ids, dists

    ids, dists = asyncio.run(run())
    blocking = curator.connect(secured.address, api_key=KEYS["alice"]).collection("docs")
    same_ids, same_dists = blocking.search(np.ones(4), k=5, tenant="alice")
    np.testing.assert_array_equal(ids, same_ids)
    np.testing.assert_allclose(dists, same_dists)


def test_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                           "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                           "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], capture_output=True)
    assert made.returncode == 0, made.stderr
    server = CuratorServer(ServerConfig(data=":memory:", port=0, tls_cert=str(cert), tls_key=str(key))).start()
    try:
        secure = curator.connect(server.address, root_certificates=cert.read_bytes())
        secure.create_collection("c", dim=3).insert([1], np.ones((1, 3)), tenant="t")
        assert secure.collection("c").count() == 1
        plain = curator.connect(server.address, timeout=3, retries=0)
        with pytest.raises(curator.CuratorError):
            plain.list_collections()
    finally:
        server.stop()


def test_idempotent_calls_retry_until_the_server_is_up(tmp_path):
    port = free_port()
    db = curator.connect(f"127.0.0.1:{port}", timeout=5, retries=8)
    servers = []

    def start_late():
        time.sleep(0.5)
        servers.append(CuratorServer(ServerConfig(data=":memory:", port=port)).start())

    import threading

    starter = threading.Thread(target=start_late)
    starter.start()
    try:
        assert db.list_collections() == []  # UNAVAILABLE at first, then retried with backoff
    finally:
        starter.join()
        for server in servers:
            server.stop()


def test_concurrent_clients(tmp_path):
    """Many callers at once, reads and writes mixed: every call succeeds and nothing is lost."""
    server = CuratorServer(ServerConfig(data=str(tmp_path / "d"), port=0, workers=8)).start()
    try:
        db = curator.connect(server.address)
        db.create_collection("c", dim=8, train_size=500)

        def worker(w):
            col = curator.connect(server.address).collection("c")
            rng = np.random.default_rng(w)
            for i in range(30):
                ids = np.arange(w * 10_000 + i * 10, w * 10_000 + i * 10 + 10)
                col.insert(ids, rng.random((10, 8)), tenant=f"t{w}")
                col.grant(ids[:3], tenant="shared")
                found, _ = col.search(rng.random(8), k=5, tenant=f"t{w}")
                assert set(found.tolist()) <= set(range(w * 10_000, w * 10_000 + 300))

        _, failures = concurrently(worker, [(w,) for w in range(6)])
        assert not failures, failures[:3]
        col = db.collection("c")
        assert col.count() == 6 * 300 and col.count(tenant="shared") == 6 * 90
        assert all(col.count(tenant=f"t{w}") == 300 for w in range(6))
    finally:
        server.stop()


def test_a_key_never_reaches_another_tenants_cache(secured):
    alice = curator.connect(secured.address, api_key=KEYS["alice"]).cache
    bob = curator.connect(secured.address, api_key=KEYS["bob"]).cache
    admin = curator.connect(secured.address, api_key=KEYS["admin"]).cache
    vector = np.ones(8, np.float32)
    entry = alice.store("alice", "alice's question", "alice's answer", embedding=vector, category="c",
                        embedding_model="test-8d")
    assert alice.lookup("alice", embedding=vector, category="c", embedding_model="test-8d").hit
    for call in (lambda: bob.lookup("alice", embedding=vector, category="c", embedding_model="test-8d"),
                 lambda: bob.store("alice", "q", "planted", embedding=vector, category="c", embedding_model="test-8d"),
                 lambda: bob.invalidate("alice"),
                 lambda: bob.feedback("alice", entry, correct=False),
                 lambda: bob.stats("alice"),
                 lambda: bob.stats(),
                 lambda: bob.set_policy("c", min_similarity=0.0),
                 lambda: bob.train_classifier({"c": ["x"]})):
        with pytest.raises(curator.PermissionDeniedError):
            call()
    with pytest.raises(curator.NotFoundError):  # bob's own tenant knows no such entry
        bob.feedback("bob", entry, correct=False)
    assert bob.lookup("bob", embedding=vector, category="c", embedding_model="test-8d").reason == "empty"
    admin.set_policy("c", min_similarity=0.5)
    assert alice.policy("c")["configured"]["min_similarity"] == 0.5
    assert alice.lookup("alice", embedding=vector, category="c", embedding_model="test-8d").answer == "alice's answer"
    assert admin.stats()["entries"] == 1


POLICY_NUMBERS = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1.0, -1.0, 2.0])
POLICIES = st.builds(
    lambda sim, ttl, entries, eviction, floor: pb.CachePolicy(
        **{k: v for k, v in dict(min_similarity=sim, ttl=ttl, max_entries=entries, eviction=eviction,
                                 min_similarity_floor=floor, relaxable=floor is not None).items() if v is not None}),
    POLICY_NUMBERS, POLICY_NUMBERS, st.none() | st.integers(-2**63, 2**63 - 1),
    st.none() | st.sampled_from(["lru", "lfu", "fifo", ""]), POLICY_NUMBERS)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=GARBAGE, policy=POLICIES, text=st.sampled_from(["", "what is 5 + 5", "\x00" * 5, "é" * 40]),
       category=st.sampled_from(["", "c", "x" * 300]), settings_json=st.sampled_from(["", "{}", "[1]", "{", '{"m": 1}']),
       method=st.sampled_from(["Lookup", "Store", "SetPolicy", "Invalidate", "Feedback"]))
def test_fuzzed_cache_requests_get_defined_codes_and_the_server_keeps_serving(
        secured, case, policy, text, category, settings_json, method):
    dim, data, ids, _, tenant, _ = case
    channel = grpc.insecure_channel(secured.address)
    stub = rpc.CacheStub(channel)
    meta = (("authorization", f"Bearer {KEYS['admin']}"),)
    prompt = pb.Prompt(text=text, embedding=pb.Vectors(dim=dim, data=data), embedding_model="fuzz")
    requests = {
        "Lookup": (stub.Lookup, pb.CacheLookupRequest(tenant=tenant, prompt=prompt, category=category,
                                                      model_settings_json=settings_json)),
        "Store": (stub.Store, pb.CacheStoreRequest(tenant=tenant, prompt=prompt, answer=text, category=category,
                                                   model_settings_json=settings_json)),
        "SetPolicy": (stub.SetPolicy, pb.SetCachePolicyRequest(category=category, tenant=tenant, changes=policy)),
        "Invalidate": (stub.Invalidate, pb.CacheInvalidateRequest(tenant=tenant, category=category)),
        "Feedback": (stub.Feedback, pb.CacheFeedbackRequest(tenant=tenant, entry_id=ids[0] if ids else -1)),
    }
    call, request = requests[method]
    try:
        call(request, metadata=meta, timeout=10)
    except grpc.RpcError as error:
        assert error.code() in DEFINED, f"{method} answered {error.code()}: {error.details()}"
    ok = pb.Prompt(text="ok", embedding=pb.Vectors(dim=4, data=np.ones(4, "<f4").tobytes()), embedding_model="fuzz-ok")
    whole = pb.CachePolicy(min_similarity=0.5, no_ttl=True, max_entries=-1, max_bytes=-1, cacheable=True)
    stub.SetPolicy(pb.SetCachePolicyRequest(category="ok", changes=whole), metadata=meta, timeout=10)
    stub.Store(pb.CacheStoreRequest(tenant="alice", prompt=ok, answer="fine", category="ok"), metadata=meta, timeout=10)
    assert stub.Lookup(pb.CacheLookupRequest(tenant="alice", prompt=ok, category="ok"), metadata=meta, timeout=10).hit
    channel.close()


@pytest.mark.parametrize("env, expected", [
    ({}, "-event_engine_client,-event_engine_listener"),  # the classic TCP stack (curator_proto/tcp.py)
    ({"CURATOR_GRPC_TCP": "event_engine"}, None),  # opted out
    ({"GRPC_EXPERIMENTS": "mine"}, "mine"),  # the process chose: left alone
])
@pytest.mark.parametrize("package", ["curator_client", "curator_server"])
def test_server_and_sdk_ask_for_the_classic_tcp_stack_unless_told_otherwise(package, env, expected):
    clean = {k: v for k, v in os.environ.items() if k not in ("GRPC_EXPERIMENTS", "CURATOR_GRPC_TCP")}
    shown = subprocess.run([sys.executable, "-c", f"import os, {package}; print(os.environ.get('GRPC_EXPERIMENTS'))"],
                           env={**clean, **env}, capture_output=True, text=True, check=True).stdout.strip()
    assert shown == str(expected)
    late = subprocess.run([sys.executable, "-c", f"import grpc, os, {package}; print(os.environ.get('GRPC_EXPERIMENTS'))"],
                          env={**clean, **env}, capture_output=True, text=True, check=True).stdout.strip()
    assert late == str(env.get("GRPC_EXPERIMENTS"))  # grpc already imported: too late, nothing set
