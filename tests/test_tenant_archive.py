"""Per-tenant export, import and copy (curator/tenant_archive.py, server/archive_service.py): an
archive round-trips bit-exact (ids, vectors, payloads, owned flags, cache entries) embedded and
remote, is read at one moment while another thread writes, goes into another collection and
another server, never names another tenant, and refuses what it must (wrong dimension, a changed
file, an unknown version, another tenant's key, ids other tenants hold)."""

import json
import os
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import curator
from curator.tenant_archive import TenantArchive
from curator_proto import archive_wire
from curator_server.app import CuratorServer, ServerConfig
from curator_server.auth import digest_of
from curator_server.probes import TAKEN
from tests.conftest import KINDS, database, opened

pytestmark = pytest.mark.cluster

DIM = 8
MODEL = "unit-test-16d"  # the tests bring their own embeddings
ALICE_IDS = np.array([3, 17, 2**40, 2**62 + 5] + list(range(100, 160)), np.int64)
BOB_IDS = np.arange(1000, 1040, dtype=np.int64)
SHARED = BOB_IDS[:7]  # bob's, granted to alice
TRICKY = [{}, {"n": 1}, {"f": 0.1, "neg": -0.0, "big": 1e300, "tiny": 5e-324},
          {"i": 2**63 - 1, "j": -(2**63), "b": True, "c": False},
          {"s": "line\nbreak \"quoted\" \u00e9\u4e2d\U0001f600", "tags": ["a", "b", ""], "empty": []},
          {"year": "2024", "other": 2024}]


def rows(n, seed):
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def unit(seed, dim=16):
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def fill(db):
    """alice owns ALICE_IDS and sees SHARED (bob's); both have cache entries."""
    col = db.create_collection("docs", dim=DIM, metric="cosine")
    payloads = [TRICKY[i % len(TRICKY)] | {"row": i} for i in range(ALICE_IDS.size)]
    col.insert(ALICE_IDS, rows(ALICE_IDS.size, 1), tenant="alice", payloads=payloads)
    col.insert(BOB_IDS, rows(BOB_IDS.size, 2), tenant="bob", payloads=[{"src": int(i)} for i in BOB_IDS])
    col.grant(SHARED, tenant="alice")
    cache = db.cache
    for i in range(5):
        cache.store("alice", f"question {i} about wire fees", f"answer {i}", embedding=unit(i),
                    embedding_model=MODEL, category="finance" if i % 2 else "support",
                    model_settings={"temperature": i / 10} if i < 3 else None)
    cache.store("bob", "bob's own question", "bob's answer", embedding=unit(99), embedding_model=MODEL,
                category="finance")
    return col


def expected_rows(col, tenant="alice"):
    ids = np.sort(np.concatenate([ALICE_IDS, SHARED])) if tenant == "alice" else None
    return ids, col.get(ids), col.owned(ids, tenant=tenant), col.get_payloads(ids)


def assert_same(a: TenantArchive, b: TenantArchive, owned=True):
    assert a.ids.dtype == b.ids.dtype == np.int64 and a.ids.tobytes() == b.ids.tobytes()
    assert a.vectors.dtype == b.vectors.dtype == np.float32 and a.vectors.tobytes() == b.vectors.tobytes()
    assert json.dumps(a.payloads) == json.dumps(b.payloads)  # types too: 1 and 1.0 print apart
    if owned:
        assert a.owned.tolist() == b.owned.tolist()
    assert (a.dim, a.metric) == (b.dim, b.metric)
    assert [e.meta() for e in a.cache] == [e.meta() for e in b.cache]
    assert [e.embedding.tobytes() for e in a.cache] == [e.embedding.tobytes() for e in b.cache]


@pytest.fixture(params=KINDS)
def db(request, tmp_path):
    with opened(request, request.param, tmp_path) as db:
        yield db


def test_round_trip_is_bit_exact_and_restores_the_tenant(db, tmp_path):
    col = fill(db)
    path = tmp_path / "alice.npz"
    archive = db.export_tenant("alice", path, collection="docs")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))  # no temporary left behind
    ids, vectors, owned, payloads = expected_rows(col)
    assert archive.ids.tolist() == ids.tolist() and archive.vectors.tobytes() == vectors.tobytes()
    assert archive.owned.tolist() == owned.tolist() == [i not in set(SHARED.tolist()) for i in ids.tolist()]
    assert json.dumps(archive.payloads) == json.dumps(payloads)
    assert (archive.tenant, archive.collection, archive.dim, archive.metric) == ("alice", "docs", DIM, "cosine")
    assert sorted(e.prompt for e in archive.cache) == [f"question {i} about wire fees" for i in range(5)]
    data = path.read_bytes()
    assert b"bob" not in data  # shared vectors come without saying with whom (and bob's entries stay out)
    assert json.loads(np.load(path)["header"].tobytes())["version"] == 1  # no entry with extra or expires
    assert_same(TenantArchive.load(path), archive)

    # alice loses and changes things; the import puts them back as they were
    col.upsert(ALICE_IDS[:10], rows(10, 5), tenant="alice", payloads=[{"changed": True}] * 10)
    col.revoke(ALICE_IDS[10:20], tenant="alice")  # only she saw them: deleted
    db.cache.invalidate("alice", "finance")
    report = db.import_tenant(path)
    assert (report.inserted, report.restored, report.shared, report.skipped) == (10, ALICE_IDS.size - 10, 7, 0)
    assert (report.cache_entries, report.cache_skipped) == (2, 3)
    assert_same(db.export_tenant("alice", collection="docs"), archive)
    again = db.import_tenant(path)  # idempotent: a second run changes nothing
    assert (again.inserted, again.cache_entries) == (0, 0)
    assert col.get_payloads(BOB_IDS[:2]) == [{"src": int(i)} for i in BOB_IDS[:2]]  # bob's stay bob's
    assert not col.owned(SHARED, tenant="alice").any()


def test_import_into_another_collection_and_another_server(db, tmp_path):
    fill(db)
    path = tmp_path / "alice.npz"
    archive = db.export_tenant("alice", path, collection="docs")
    db.create_collection("docs2", dim=DIM, metric="cosine")
    report = db.import_tenant(path, collection="docs2", tenant="alicia")
    assert (report.inserted, report.restored, report.shared) == (len(archive), 0, 0)
    copy = db.export_tenant("alicia", collection="docs2")
    # everything alice saw is alicia's own there: the vectors bob shared became her copies
    assert copy.owned.all()
    assert_same(copy, TenantArchive(**{**archive.__dict__, "tenant": "alicia", "collection": "docs2"}), owned=False)

    server = CuratorServer(ServerConfig(data=str(tmp_path / "other"), port=0)).start()
    try:
        with curator.connect(server.address) as other:
            other.create_collection("docs", dim=DIM, metric="cosine")
            report = other.import_tenant(path)
            assert (report.inserted, report.cache_entries) == (len(archive), 5)
            back = other.export_tenant("alice", collection="docs")
            assert_same(back, archive, owned=False)
            hit = other.cache.lookup("alice", "question 1 about wire fees", embedding=unit(1), embedding_model=MODEL,
                                     category="finance", model_settings={"temperature": 0.1})
            assert hit.hit and hit.answer == "answer 1"
            found = other.collection("docs").search(archive.vectors[0], k=1, tenant="alice")
            assert found.ids.tolist() == [archive.ids[0]]
            # and a copy straight from one database to the other, under a new name
            other.create_collection("copies", dim=DIM, metric="cosine")
            report = db.copy_tenant("alice", "alice2", collection="docs", to=other, to_collection="copies")
            assert report.inserted == len(archive) and report.cache_entries == 5
            assert_same(other.export_tenant("alice2", collection="copies"),
                        TenantArchive(**{**archive.__dict__, "tenant": "alice2"}), owned=False)
    finally:
        server.stop()


def test_a_gateway_entry_keeps_its_extra_and_its_own_ttl_through_export_and_import(db, tmp_path):
    """An entry the HTTP gateway stored (store_chat: the upstream's model, finish reason and usage
    beside the answer, and a ttl of its own) comes back from an archive with both, through a file
    and the wire; an entry whose own ttl ran out is not restored."""
    cache, engine = db.cache, db.engine.cache  # the gateway's path is the engine's (the server's)
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    extra = {"model": "stand-in", "finish_reason": "length", "usage": usage}

    def chat(text, seed, **options):
        prompt = engine.chat_prompt("alice", [{"role": "user", "content": text}], params={"model": "m"},
                                    category="support", embedding=unit(seed), embedding_model=MODEL)
        assert engine.store_chat(prompt, f"answer to {text}", **options) >= 0

    chat("how do refunds work", 40, ttl=3600, extra=extra)
    chat("a short-lived answer", 41, ttl=0.05)
    chat("no extra here", 42)
    path = tmp_path / "alice.npz"
    archive = db.export_tenant("alice", path, collection=None)
    kept = next(e for e in archive.cache if "how do refunds work" in e.prompt)
    assert kept.extra == extra and kept.created < kept.expires <= kept.created + 3600 + 1
    plain = next(e for e in archive.cache if "no extra here" in e.prompt)
    assert plain.extra is None and plain.expires is None
    assert json.loads(np.load(path)["header"].tobytes())["version"] == 2  # entries with the new fields
    assert_same(TenantArchive.load(path), archive)

    def lookup(db_, text, seed, tenant="alice"):
        return db_.cache.lookup(tenant, text, embedding=unit(seed), embedding_model=MODEL, category="support",
                                model_settings={"model": "m"})

    time.sleep(0.1)  # the short-lived entry's own ttl runs out
    cache.invalidate("alice")
    report = db.import_tenant(path)
    assert (report.cache_entries, report.cache_skipped) == (2, 1)  # the expired one stays out
    hit = lookup(db, "how do refunds work", 40)
    assert hit.hit and hit.extra == extra
    back = {e.prompt: e for e in db.export_tenant("alice", collection=None).cache}
    assert back[kept.prompt].expires == kept.expires and back[kept.prompt].extra == extra
    assert back[plain.prompt].expires is None and back[plain.prompt].extra is None
    assert set(back) == {kept.prompt, plain.prompt}

    # into another server over the wire, and straight from one database to the other
    server = CuratorServer(ServerConfig(data=str(tmp_path / "other"), port=0)).start()
    try:
        with curator.connect(server.address) as other:
            assert other.import_tenant(archive).cache_entries == 2
            assert lookup(other, "how do refunds work", 40).extra == extra
            again = {e.prompt: e for e in other.export_tenant("alice", collection=None).cache}
            assert (again[kept.prompt].expires, again[kept.prompt].extra) == (kept.expires, extra)
            assert db.copy_tenant("alice", "alice2", collection=None, to=other).cache_entries == 2
            assert lookup(other, "how do refunds work", 40, tenant="alice2").extra == extra
    finally:
        server.stop()


def test_copy_to_a_new_tenant(db):
    col = fill(db)
    report = db.copy_tenant("alice", "carol", collection="docs")
    # one collection: carol shares alice's vectors (stored once; owners unchanged)
    assert report.shared == ALICE_IDS.size + SHARED.size and report.cache_entries == 5
    assert col.count(tenant="carol") == col.count(tenant="alice")
    assert not col.owned(ALICE_IDS, tenant="carol").any() and col.owned(ALICE_IDS, tenant="alice").all()
    assert sorted(col.tenants_of(int(ALICE_IDS[0]))) == ["alice", "carol"]
    # another collection: carol's own copies
    db.create_collection("docs2", dim=DIM, metric="cosine")
    report = db.copy_tenant("alice", "carol", collection="docs", to_collection="docs2")
    assert report.inserted == ALICE_IDS.size + SHARED.size and report.cache_skipped == 5  # held already
    assert db.collection("docs2").owned(ALICE_IDS, tenant="carol").all()
    with pytest.raises(curator.InvalidArgumentError, match="onto itself"):
        db.copy_tenant("alice", collection="docs")


def test_refusals(db, tmp_path):
    col = fill(db)
    path = tmp_path / "alice.npz"
    db.export_tenant("alice", path, collection="docs")
    db.create_collection("wide", dim=DIM + 1, metric="cosine")
    with pytest.raises(curator.InvalidArgumentError, match="dimension 8 and metric 'cosine'.*dimension 9"):
        db.import_tenant(path, collection="wide")
    db.create_collection("l2", dim=DIM)
    with pytest.raises(curator.InvalidArgumentError, match="same dimension and metric"):
        db.import_tenant(path, collection="l2")
    with pytest.raises(curator.NotFoundError):
        db.export_tenant("nobody", collection="docs")
    with pytest.raises(curator.NotFoundError):
        db.import_tenant(path, collection="missing")

    # ids bob holds: refused whole (nothing of the batch written), or skipped when asked
    with pytest.raises(curator.AlreadyExistsError, match="taken by other tenants"):
        db.import_tenant(path, tenant="dave")
    assert "dave" not in col.tenants()
    report = db.import_tenant(path, tenant="dave", skip_taken=True)
    assert (report.inserted, report.skipped) == (0, ALICE_IDS.size + SHARED.size)

    # a changed file, another version, not an archive at all
    archive = TenantArchive.load(path)
    with np.load(path) as stored:
        content = {name: stored[name].copy() for name in stored.files}
    content["vectors"][0, 0] += 1
    bad = tmp_path / "changed.npz"
    np.savez(bad, **content)
    with pytest.raises(curator.InvalidArgumentError, match="damaged or was changed"):
        db.import_tenant(bad)
    header = json.loads(content["header"].tobytes()) | {"version": 3}
    content["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(bad, **content)
    with pytest.raises(curator.InvalidArgumentError, match="version 3; this Curator reads versions 1, 2"):
        TenantArchive.load(bad)
    bad.write_bytes(b"not an archive at all")
    with pytest.raises(curator.InvalidArgumentError, match="not a Curator tenant archive"):
        db.import_tenant(bad)
    assert len(archive) == ALICE_IDS.size + SHARED.size


WRITES = 30


def test_export_reads_one_moment_while_another_thread_writes(db):
    """Each write upserts every id alice has plus 40 new ones, all with value k and payload {"k": k}
    (one call, all or nothing): a consistent archive holds one k throughout and exactly the ids of
    writes 0..k."""
    col = db.create_collection("moving", dim=DIM)
    first = np.arange(500, dtype=np.int64)
    col.insert(first, np.zeros((first.size, DIM), np.float32), tenant="alice", payloads=[{"k": -1}] * first.size)
    writes, failures = [0], []

    def writer():
        try:
            for k in range(WRITES):
                ids = np.arange(500 + 40 * (k + 1), dtype=np.int64)
                col.upsert(ids, np.full((ids.size, DIM), k, np.float32), tenant="alice",
                           payloads=[{"k": k}] * ids.size)
                writes[0] = k + 1
        except Exception as error:  # noqa: BLE001 - reported by the test
            failures.append(error)

    thread = threading.Thread(target=writer)
    thread.start()
    seen = set()
    try:
        while thread.is_alive() or not seen:
            archive = db.export_tenant("alice", collection="moving", cache=False)
            k = archive.payloads[0]["k"]  # -1: before the first write
            assert (archive.vectors == max(k, 0)).all()
            assert archive.payloads == [{"k": k}] * len(archive)
            assert archive.ids.tolist() == list(range(500 + 40 * (k + 1)))
            assert archive.owned.all()
            seen.add(k)
    finally:
        thread.join()
    assert not failures and writes[0] == WRITES
    assert len(seen) > 1  # the exports did meet the writes


# -- a server with keys ---------------------------------------------------------------------------

KEYS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789", "admin": "key-admin-0123456789",
        "scoped": "key-scoped-0123456789"}


@pytest.fixture
def served(tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text("".join(
        f'[[keys]]\nname = "{name}"\nsha256 = "{digest_of(key)}"\n'
        + ("admin = true\n" if name == "admin" else 'tenants = ["alice"]\ncollections = ["other"]\n'
           if name == "scoped" else f'tenants = ["{name}"]\n')
        for name, key in KEYS.items()))
    server = CuratorServer(ServerConfig(port=0, keys=str(keys), id_collisions_per_hour=5)).start()
    clients = {name: curator.connect(server.address, api_key=key) for name, key in KEYS.items()}
    fill(clients["admin"])
    yield clients
    for client in clients.values():
        client.close()
    server.stop()


def test_a_tenant_key_exports_and_imports_only_its_tenants(served, tmp_path):
    alice, bob, admin = served["alice"], served["bob"], served["admin"]
    path = tmp_path / "alice.npz"
    archive = alice.export_tenant("alice", path, collection="docs")
    assert_same(archive, admin.export_tenant("alice", collection="docs"))
    with pytest.raises(curator.PermissionDeniedError):
        alice.export_tenant("bob", collection="docs")
    with pytest.raises(curator.PermissionDeniedError):
        bob.import_tenant(path)  # as alice, the archive's tenant
    with pytest.raises(curator.NotFoundError):
        served["scoped"].export_tenant("alice", collection="docs")  # out of its collections: as if absent
    with pytest.raises(curator.PermissionDeniedError, match="admin"):
        alice.import_tenant(path, skip_taken=True)
    # alice's own archive goes back in (bob's shared vectors: left as they are)
    report = alice.import_tenant(path)
    assert (report.restored, report.shared) == (ALICE_IDS.size, SHARED.size)
    # bob importing alice's archive as bob meets ids he cannot see: one message, no id, no count
    with pytest.raises(curator.AlreadyExistsError) as refused:
        bob.import_tenant(path, tenant="bob")
    assert str(refused.value) == TAKEN


# -- the wire format ------------------------------------------------------------------------------

payload_values = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
    st.text(max_size=20), st.lists(st.text(max_size=5), max_size=4))
payloads = st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda f: f not in ("and", "or", "not")),
                           payload_values, max_size=5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(payloads, min_size=1, max_size=30), st.integers(200, 5000), st.integers(0, 4))
def test_random_payloads_round_trip_through_file_and_wire(tmp_path, drawn, max_bytes, n_cache):
    n = len(drawn)
    archive = TenantArchive("t", "c", 3, "l2", np.arange(n, dtype=np.int64) * 7, rows(n, n)[:, :3].copy(),
                            np.arange(n) % 2 == 0, drawn, created=1.5)
    archive.cache = [curator.tenant_archive.CacheEntry("cat", "m", "", float(i), f"p{i}\n", "a", unit(i, 4))
                     for i in range(n_cache)]
    path = tmp_path / "p.npz"
    archive.save(path)
    assert_same(TenantArchive.load(path), archive)
    assembler = archive_wire.Assembler()
    for chunk in archive_wire.chunks(archive, max_bytes):
        rows_in = len(chunk.rows.ids) // 8
        assert chunk.ByteSize() <= max_bytes + 64 or rows_in <= 1 or chunk.HasField("header")
        assembler.add(archive_wire.pb.ArchiveChunk.FromString(chunk.SerializeToString()))
    assert_same(assembler.archive(), archive)


def test_an_inactive_tenant_is_exported_and_imported_the_same(db):
    col = fill(db)
    before = db.export_tenant("alice", collection="docs")
    col.deactivate_tenant("alice")
    assert_same(db.export_tenant("alice", collection="docs"), before)  # woken to be read
    col.deactivate_tenant("alice")
    report = db.import_tenant(before)
    assert (report.restored, report.shared) == (ALICE_IDS.size, SHARED.size)
    assert_same(db.export_tenant("alice", collection="docs"), before)


def test_the_asyncio_sdk(tmp_path):
    import asyncio

    from curator_client import aio

    server = CuratorServer(ServerConfig(port=0)).start()

    async def run():
        async with await aio.connect(server.address) as db:
            col = await db.create_collection("docs", dim=DIM, metric="cosine")
            await col.insert(ALICE_IDS, rows(ALICE_IDS.size, 1), tenant="alice",
                             payloads=[TRICKY[i % len(TRICKY)] for i in range(ALICE_IDS.size)])
            await db.cache.store("alice", "a question", "an answer", embedding=unit(1), embedding_model=MODEL)
            path = tmp_path / "alice.npz"
            archive = await db.export_tenant("alice", path, collection="docs")
            assert len(archive) == ALICE_IDS.size and len(archive.cache) == 1
            await db.create_collection("docs2", dim=DIM, metric="cosine")
            report = await db.import_tenant(path, collection="docs2", tenant="bob")
            assert (report.inserted, report.cache_entries) == (ALICE_IDS.size, 1)
            assert_same(await db.export_tenant("bob", collection="docs2"),
                        TenantArchive(**{**archive.__dict__, "tenant": "bob", "collection": "docs2"}))
            report = await db.copy_tenant("alice", "carol", collection="docs")
            assert report.shared == ALICE_IDS.size and await col.count(tenant="carol") == ALICE_IDS.size
            with pytest.raises(curator.InvalidArgumentError, match="dimension"):
                await db.create_collection("wide", dim=DIM + 1, metric="cosine")
                await db.import_tenant(path, collection="wide")

    try:
        asyncio.run(run())
    finally:
        server.stop()


def test_files_that_are_not_archives_or_cannot_be_written(tmp_path):
    with pytest.raises(curator.NotFoundError, match="no tenant archive"):
        TenantArchive.load(tmp_path / "missing.npz")
    np.save(tmp_path / "one.npy", np.arange(3))
    with pytest.raises(curator.InvalidArgumentError, match="not a Curator tenant archive"):
        TenantArchive.load(tmp_path / "one.npy")
    np.savez(tmp_path / "other.npz", a=np.arange(3))
    with pytest.raises(curator.InvalidArgumentError, match="it holds"):
        TenantArchive.load(tmp_path / "other.npz")
    archive = TenantArchive("t", None, None, None, np.zeros(0, np.int64), np.zeros((0, 0), np.float32),
                            np.zeros(0, bool), [])
    with pytest.raises(curator.StorageError, match="cannot write"):
        archive.save(tmp_path / "no such directory" / "t.npz")
    archive.save(tmp_path / "t.npz")
    assert_same(TenantArchive.load(tmp_path / "t.npz"), archive)
