"""Offloaded tenants: a tenant whose own vectors left the live store for an archive file answers
exactly as before once restored (by its first call, a call needing one of its vectors, or
explicitly); reopening reads none of its records; its ids stay taken while it is away; a tenant
key can offload its own tenants only and meets the uniform collision answer."""

import numpy as np
import pytest

import curator
from curator.storage import _keys
from curator.tenant_archive import TenantArchive
from tests.conftest import SMALL_TREE, engine, keys_file, one_engine
from tests.test_server import KEYS
from tests.test_tenant_states import (DIM, N_TENANTS, PER, QUERIES, X, answers, assert_routed, id_reads, payload,
                                      populate)

pytestmark = pytest.mark.cluster

T0_OWN = np.arange(20, PER)  # t0 sees 0..59 and 120..129; 0..19 are shared with t1, 120..129 are t2's
T2_OWN = np.arange(2 * PER + 10, 3 * PER)


def test_an_offloaded_tenant_answers_the_same_once_restored(db):
    col = db.create_collection("c", dim=DIM, **SMALL_TREE)
    seen = populate(col)
    before = {t: answers(col, t, seen[t]) for t in ("t0", "t1", "t2")}
    probe = np.array([0, 25, 59, 120, 125, 135, 200], np.int64)
    reads = id_reads(col, probe)
    owned = col.owned(probe, tenant="t0").tolist()
    visible = col.visible_to(probe, tenant="t0").tolist()

    col.offload_tenant("t0")  # active: deactivated first
    col.deactivate_tenant("t2")
    col.offload_tenant("t2")
    assert col.tenant_state("t0") == col.tenant_state("t2") == "offloaded"
    stats = col.stats()
    assert stats["offloaded_tenants"] == 2 and stats["inactive_tenants"] == 0
    if one_engine(db):
        assert stats["offloaded_vectors"] == T0_OWN.size + T2_OWN.size
        assert stats["evicted_vectors"] == 10  # 120..129: seen by t0 and t2 only, both away, not archived
    assert stats["vectors"] == col.count() == N_TENANTS * PER
    # answered without restoring: whether stored, seen and owned (their archive's ids are theirs alone)
    assert col.contains(probe).tolist() == reads[3]
    assert col.owned(probe, tenant="t0").tolist() == owned
    assert col.visible_to(probe, tenant="t0").tolist() == visible
    assert not col.visible_to(T0_OWN, tenant="t1").any() and not col.owned(T0_OWN, tenant="t1").any()
    assert answers(col, "t1", seen["t1"]) == before["t1"]  # shares 0..19 with t0
    assert col.tenant_state("t0") == col.tenant_state("t2") == "offloaded"

    assert answers(col, "t0", seen["t0"]) == before["t0"]  # its first search restored it
    assert col.tenant_state("t0") == "active"
    col.activate_tenant("t2")
    assert col.tenant_state("t2") == "active"
    assert answers(col, "t2", seen["t2"]) == before["t2"]
    assert id_reads(col, probe) == reads
    stats = col.stats()
    assert stats.get("offloaded_vectors", 0) == stats.get("evicted_vectors", 0) == 0
    for t in range(N_TENANTS):
        engine(db, col).index.tenancy.check(t)
    for t in ("t0", "t2"):  # back in the leaves they were archived from
        assert_routed(engine(db, col).index, t)


def test_a_tenant_offloaded_across_a_retrain_is_routed_again(db):
    col = db.create_collection("c", dim=DIM, **SMALL_TREE)
    seen = populate(col)
    before = answers(col, "t0", seen["t0"])
    col.offload_tenant("t0")
    col.train(X[::2] * 1.5)  # another tree: the archived leaves no longer hold
    assert answers(col, "t0", seen["t0"]) == before
    assert_routed(engine(db, col).index, "t0")


def test_reopening_reads_nothing_of_offloaded_tenants_and_restores_them_on_demand(tmp_path, monkeypatch):
    path = str(tmp_path / "data")
    with curator.open(path) as db:
        col = db.create_collection("c", dim=DIM, **SMALL_TREE)
        seen = populate(col)
        before = {t: answers(col, t, seen[t]) for t in ("t0", "t2")}
        col.offload_tenant("t0")
        col.offload_tenant("t2")
    archives = tmp_path / "data-offloaded" / "0"
    files = sorted(p.name for p in archives.iterdir())
    assert files == ["0.npz", "2.npz"]
    assert all((archives / f).stat().st_mode & 0o777 == 0o600 for f in files)
    assert len(TenantArchive.load(archives / "0.npz")) == T0_OWN.size

    loads = []
    original = TenantArchive.load
    monkeypatch.setattr(TenantArchive, "load", classmethod(lambda cls, p: loads.append(p) or original(p)))
    with curator.open(path) as db:
        col = db.collection("c")
        assert loads == []  # opening read no archive
        store = col._directory._db
        assert all(v is None for v in store.get(_keys(b"V", 0, np.concatenate([T0_OWN, T2_OWN]))))
        assert all(v is not None for v in store.get(_keys(b"O", 0, T0_OWN)))
        index = col.index
        assert (index.ids.lookup(np.concatenate([T0_OWN, T2_OWN])) == -1).all()  # nothing per archived id
        assert col.tenant_state("t0") == col.tenant_state("t2") == "offloaded"
        assert col.count() == N_TENANTS * PER
        assert col.stats()["resident_vectors"] == N_TENANTS * PER - T0_OWN.size - T2_OWN.size - 10
        with pytest.raises(curator.AlreadyExistsError):
            col.insert([int(T0_OWN[0])], X[:1], tenant="t3")
        assert loads == []
        assert answers(col, "t0", seen["t0"]) == before["t0"]
        assert len(loads) == 1 and not (archives / "0.npz").exists()
        assert all(v is None for v in store.get(_keys(b"O", 0, T0_OWN)))
        assert all(v is not None for v in store.get(_keys(b"V", 0, T0_OWN)))
    with curator.open(path) as db:  # restored for good: the next opening has it back
        col = db.collection("c")
        assert col.tenant_state("t0") == "active" and col.tenant_state("t2") == "offloaded"
        assert answers(col, "t0", seen["t0"]) == before["t0"]
        assert answers(col, "t2", seen["t2"]) == before["t2"]
        snapshot = tmp_path / "snap"
        col.offload_tenant("t2")
        db.snapshot(str(snapshot))
    curator.restore(str(snapshot), str(tmp_path / "copy"))  # the archives travel with a snapshot
    with curator.open(str(tmp_path / "copy")) as db:
        assert answers(db.collection("c"), "t2", seen["t2"]) == before["t2"]


def test_an_offloaded_tenants_ids_stay_taken(db):
    col = db.create_collection("c", dim=DIM, **SMALL_TREE)
    populate(col)
    col.offload_tenant("t0")
    for ids in ([25], [25, 10_000]):
        with pytest.raises(curator.AlreadyExistsError):
            col.insert(ids, X[: len(ids)], tenant="t1")
    assert col.tenant_state("t0") == "offloaded"  # an insert that collides restores nothing
    assert not col.contains([10_000])[0]
    with pytest.raises(curator.PermissionDeniedError):  # an admin's upsert: restored, then refused
        col.upsert([25], X[:1], tenant="t1")
    np.testing.assert_array_equal(col.get([25]), X[25:26])


def test_admin_reads_and_deletes_of_offloaded_ids(db):
    col = db.create_collection("c", dim=DIM, **SMALL_TREE)
    seen = populate(col)
    col.offload_tenant("t0")
    assert col.tenants_of(30) == ["t0"]  # restored to answer
    np.testing.assert_array_equal(col.get([30, 31, 200]), X[[30, 31, 200]])
    assert col.get_payloads([30]) == [payload(30)]
    col.offload_tenant("t0")
    assert col.tenant_state("t0") == "offloaded"
    col.delete([31, 200])
    assert not col.contains([31, 200]).any()
    seen["t0"].discard(31)
    col.offload_tenant("t0")
    col.set_payloads([32], [payload(32) | {"n": -1}])
    assert col.get_payloads([32]) == [payload(32) | {"n": -1}]
    col.offload_tenant("t0")
    page, _ = col.scroll(limit=10_000)  # every id: the archives come back first
    assert page.size == N_TENANTS * PER - 2
    col.offload_tenant("t0")
    assert col.search(QUERIES[0], k=3).ids.size == 3  # a search over every vector, too
    assert col.tenant_state("t0") == "active"
    answers(col, "t0", seen["t0"])


def test_offloading_a_tenant_that_shares_vectors_with_an_active_one(db):
    col = db.create_collection("c", dim=DIM, **SMALL_TREE)
    seen = populate(col)
    before = answers(col, "t0", seen["t0"])
    col.offload_tenant("t0")
    resident = col.stats()["resident_vectors"]
    if one_engine(db):
        assert resident == N_TENANTS * PER - T0_OWN.size  # 0..19 stay in memory for t1, 120..129 for t2
    col.revoke(np.arange(5), tenant="t1")  # 0..4 are t0's alone now: evicted, not archived
    seen["t1"] -= set(range(5))
    if one_engine(db):
        assert col.stats()["evicted_vectors"] == 5
    answers(col, "t1", seen["t1"])
    assert col.tenant_state("t0") == "offloaded"
    col.drop_tenant("t1")
    assert col.tenant_state("t0") == "offloaded"
    assert answers(col, "t0", seen["t0"]) == before
    col.offload_tenant("t0")  # 0..19 are its alone now: archived this time
    if one_engine(db):
        assert col.stats()["offloaded_vectors"] == PER
    assert answers(col, "t0", seen["t0"]) == before


def test_a_tenant_key_offloads_its_own_tenants_only(tmp_path):
    from curator_server.app import CuratorServer, ServerConfig
    from curator_server.probes import TAKEN

    keys = keys_file(tmp_path / "keys.toml", {"alice": (KEYS["alice"], ["t0"]), "bob": (KEYS["bob"], ["t1"]),
                                              "ops": (KEYS["admin"], None)})
    server = CuratorServer(ServerConfig(data=str(tmp_path / "data"), port=0, keys=keys)).start()
    admin = curator.connect(server.address, api_key=KEYS["admin"])
    alice = curator.connect(server.address, api_key=KEYS["alice"])
    bob = curator.connect(server.address, api_key=KEYS["bob"])
    try:
        seen = populate(admin.create_collection("c", dim=DIM, **SMALL_TREE))
        col = alice.collection("c")
        before = answers(col, "t0", seen["t0"])
        col.offload_tenant("t0")
        assert col.tenant_state("t0") == "offloaded"
        for other in ("t1", "nobody"):  # the same refusal whether the tenant exists or not
            with pytest.raises(curator.PermissionDeniedError):
                col.offload_tenant(other)
        theirs = bob.collection("c")
        with pytest.raises(curator.PermissionDeniedError):
            theirs.offload_tenant("t0")
        for write in (theirs.insert, theirs.upsert):  # one of t0's archived ids: the uniform answer
            with pytest.raises(curator.AlreadyExistsError) as refused:
                write([30], X[:1], tenant="t1")
            assert str(refused.value) == TAKEN
        assert admin.collection("c").tenant_state("t0") == "offloaded"
        assert answers(col, "t0", seen["t0"]) == before
    finally:
        bob.close()
        alice.close()
        admin.close()
        server.stop()


def test_quotas_count_what_an_offloaded_tenant_holds(tmp_path):
    path = str(tmp_path / "data")
    with curator.open(path) as db:
        col = db.create_collection("c", dim=DIM, **SMALL_TREE)
        populate(col)
        db.set_quota("t0", payload_bytes=10**9)
        held = db.quota("t0").usage.payload_bytes
        col.offload_tenant("t0")
        assert db.quota("t0").usage.payload_bytes == held and db.quota("t0").usage.vectors == 70
    with curator.open(path) as db:  # the tally made while it is away: from its X record, not its archive
        assert db.collection("c").tenant_state("t0") == "offloaded"
        assert db.quota("t0").usage.payload_bytes == held
        assert db.quota("t0").usage.vectors == 70
        assert db.collection("c").tenant_state("t0") == "offloaded"


def test_readers_never_see_an_offloaded_id_missing(tmp_path):
    import threading

    with curator.open(str(tmp_path / "data"), durability="none") as db:
        col = db.create_collection("c", dim=DIM, **SMALL_TREE)
        populate(col)
        done, wrong = threading.Event(), []

        def flip():
            try:
                for _ in range(40):
                    col.offload_tenant("t0")
                    col.activate_tenant("t0")
            finally:
                done.set()

        thread = threading.Thread(target=flip)
        thread.start()
        reads = 0
        while not done.is_set() or reads < 10:  # bounded by the 40 flips
            reads += 1
            if not col.contains(T0_OWN).all() or not col.visible_to(T0_OWN, tenant="t0").all():
                wrong.append(reads)
            if col.count() != N_TENANTS * PER or col.tenants_of(int(T0_OWN[reads % T0_OWN.size])) != ["t0"]:
                wrong.append(-reads)
        thread.join()
        assert not wrong


def test_an_archive_that_cannot_be_written_deletes_nothing(tmp_path, monkeypatch):
    path = str(tmp_path / "data")
    with curator.open(path) as db:
        col = db.create_collection("c", dim=DIM, **SMALL_TREE)
        seen = populate(col)
        before = answers(col, "t0", seen["t0"])

        def fail(self, where):
            raise curator.StorageError(f"cannot write the tenant archive {where}: disk full")

        monkeypatch.setattr(TenantArchive, "save", fail)
        with pytest.raises(curator.StorageError):
            col.offload_tenant("t0")
        monkeypatch.undo()
    with curator.open(path) as db:  # the batch never ran: every record is where it was
        col = db.collection("c")
        assert col.tenant_state("t0") == "active" and col.count() == N_TENANTS * PER
        assert answers(col, "t0", seen["t0"]) == before


def test_a_missing_archive_is_a_storage_error_that_changes_nothing(tmp_path):
    path = str(tmp_path / "data")
    with curator.open(path) as db:
        col = db.create_collection("c", dim=DIM, **SMALL_TREE)
        seen = populate(col)
        col.offload_tenant("t0")
    archive = tmp_path / "data-offloaded" / "0" / "0.npz"
    archive.rename(archive.with_suffix(".away"))
    with curator.open(path) as db:
        col = db.collection("c")
        with pytest.raises(curator.StorageError, match="cannot be restored"):
            col.count(tenant="t0")
        assert col.tenant_state("t0") == "offloaded"
        answers(col, "t1", seen["t1"])  # the others are served as before
        archive.with_suffix(".away").rename(archive)
        answers(col, "t0", seen["t0"])


def test_dropping_a_collection_drops_its_archives(tmp_path):
    path = str(tmp_path / "data")
    with curator.open(path) as db:
        col = db.create_collection("c", dim=DIM, **SMALL_TREE)
        populate(col)
        col.offload_tenant("t0")
        assert (tmp_path / "data-offloaded" / "0" / "0.npz").exists()
        db.drop_collection("c")
        assert not (tmp_path / "data-offloaded" / "0").exists()
        col = db.create_collection("c", dim=DIM, **SMALL_TREE)
        col.insert(T0_OWN, X[T0_OWN], tenant="t9")  # the ids are free again
        assert col.count() == T0_OWN.size
