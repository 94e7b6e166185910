"""Tenant states: a tenant made inactive (its sub-tree dropped, the vectors only inactive tenants
see evicted from memory) answers exactly as before once woken, by its first call or explicitly;
everything around it (shared vectors, revokes, drops, admin deletes, ownership, reopening, the
quota tally) stays right while it sleeps, and an idle tenant is made inactive by itself."""

import threading
import time

import numpy as np
import pytest

import curator
from tests.conftest import SMALL_TREE, brute_force, clustered, database, engine, keys_file, one_engine

pytestmark = pytest.mark.cluster

DIM = 8
PER = 60  # vectors each tenant inserts
N_TENANTS = 5
X = clustered(N_TENANTS * PER + 100, DIM, seed=3)
QUERIES = X[::37][:8] + 0.05
COLORS = ("red", "blue", "green")


def payload(i: int) -> dict:
    return {"color": COLORS[i % 3], "n": i}


def populate(col) -> dict[str, set[int]]:
    """Five tenants of PER vectors with payloads; t0 shares its first 20 with t1, t2 its first 10
    with t0. Returns the model: which ids each tenant sees."""
    seen = {}
    for t in range(N_TENANTS):
        ids = np.arange(t * PER, (t + 1) * PER)
        col.insert(ids, X[ids], tenant=f"t{t}", payloads=[payload(i) for i in ids.tolist()])
        seen[f"t{t}"] = set(ids.tolist())
    col.grant(np.arange(0, 20), tenant="t1")
    col.grant(np.arange(2 * PER, 2 * PER + 10), tenant="t0")
    seen["t1"] |= set(range(20))
    seen["t0"] |= set(range(2 * PER, 2 * PER + 10))
    return seen


def answers(col, tenant: str, seen: set[int]) -> dict:
    """Everything a tenant is answered, checked against brute force over what it sees."""
    visible = np.array(sorted(seen), np.int64)
    out = {"count": col.count(tenant=tenant)}
    assert out["count"] == visible.size
    for i, q in enumerate(QUERIES):
        ids, dists = col.search(q, k=10, tenant=tenant, ef=100_000)
        _, truth = brute_force(X[visible], q, "l2", 10)
        np.testing.assert_allclose(dists, truth, rtol=1e-4, atol=1e-4)
        out[f"search{i}"] = ids.tolist()
        found = col.search(q, k=5, tenant=tenant, filter={"color": "red"}, ef=100_000)
        assert all(int(j) % 3 == 0 for j in found.ids)
        out[f"red{i}"] = found.ids.tolist()
    pages, after = [], -1
    while True:
        page, after = col.scroll(tenant=tenant, after_id=after, limit=16)
        pages.extend(page.tolist())
        if after == -1:
            break
    assert pages == visible.tolist()
    everything = np.arange(N_TENANTS * PER)
    out["owned"] = col.owned(everything, tenant=tenant).tolist()
    out["visible"] = col.visible_to(everything, tenant=tenant).tolist()
    assert np.flatnonzero(out["visible"]).tolist() == visible.tolist()
    return out


def id_reads(col, ids) -> tuple:
    """Reads by id that never wake a tenant."""
    return (col.get(ids).tobytes(), col.get_payloads(ids), [col.tenants_of(int(i)) for i in ids],
            col.contains(ids).tolist())


def assert_routed(index, tenant: str) -> None:
    """The tenant's vectors sit in the leaves the tree routes them to (a woken tenant's come back
    in the leaves its manifest kept, or routed again after a retrain)."""
    slots = index.tenancy.slots_of(index.tenant_numbers[tenant])
    np.testing.assert_array_equal(index.tenancy.leaf_of[slots], index.tree.route(index._prepared(slots))[0])


def test_a_deactivated_tenant_answers_the_same_once_woken(db):
    col = db.create_collection("c", dim=DIM, **SMALL_TREE)
    seen = populate(col)
    before = {t: answers(col, t, seen[t]) for t in ("t0", "t2")}
    probe = np.array([0, 25, 59, 120, 125, 200], np.int64)
    reads = id_reads(col, probe)
    owned, visible = col.owned(probe, tenant="t0").tolist(), col.visible_to(probe, tenant="t0").tolist()

    col.deactivate_tenant("t0")
    col.deactivate_tenant("t2")
    assert col.tenant_state("t0") == col.tenant_state("t2") == "inactive" and col.tenant_state("t1") == "active"
    stats = col.stats()
    assert stats["inactive_tenants"] == 2 and stats["vectors"] == N_TENANTS * PER
    if one_engine(db):
        assert stats["evicted_vectors"] == 40 + 10 + 50  # t0's unshared 20..59, t2's 120..179 (t1 sees 0..19)
        assert stats["resident_vectors"] == N_TENANTS * PER - 100
    assert id_reads(col, probe) == reads  # answered from the shelf
    assert col.owned(probe, tenant="t0").tolist() == owned
    assert col.visible_to(probe, tenant="t0").tolist() == visible
    assert col.tenants() == [f"t{t}" for t in range(N_TENANTS)]
    assert col.tenant_state("t0") == "inactive", "reads by id woke the tenant"

    assert answers(col, "t0", seen["t0"]) == before["t0"]  # the first search woke it
    assert col.tenant_state("t0") == "active"
    col.activate_tenant("t2")
    assert col.tenant_state("t2") == "active"
    assert answers(col, "t2", seen["t2"]) == before["t2"]
    assert "evicted_vectors" not in col.stats() or col.stats()["evicted_vectors"] == 0
    for t in range(N_TENANTS):
        engine(db, col).index.tenancy.check(t)
    for t in ("t0", "t2"):
        assert_routed(engine(db, col).index, t)


def test_states_of_unknown_tenants_are_not_found(db):
    col = db.create_collection("c", dim=DIM, **SMALL_TREE)
    col.insert([1], X[:1], tenant="t0")
    for call in (col.tenant_state, col.deactivate_tenant, col.activate_tenant):
        with pytest.raises(curator.NotFoundError):
            call("nobody")
    col.deactivate_tenant("t0")
    col.deactivate_tenant("t0")  # twice: nothing more happens
    col.activate_tenant("t0")
    col.activate_tenant("t0")
    assert col.tenant_state("t0") == "active"


@pytest.fixture(params=["memory", "durable"])
def embedded(request, tmp_path):
    with database(request.param, tmp_path) as opened:
        yield opened


def test_shared_vectors_stay_and_go_with_their_active_tenants(embedded):
    col = embedded.create_collection("c", dim=DIM, **SMALL_TREE)
    seen = populate(col)
    index = col.index
    col.deactivate_tenant("t0")
    assert index.evicted == 40  # 0..19 (t1 sees) and 120..129 (t2 owns) stay
    col.revoke(np.arange(0, 10), tenant="t1")  # now only t0, inactive, sees them
    assert index.evicted == 50 and col.tenant_state("t0") == "inactive"
    col.revoke(np.arange(120, 125), tenant="t2")  # t2 owned them: ownership passes to t0, asleep
    assert index.evicted == 55
    assert col.owned(np.arange(120, 125), tenant="t0").all()
    col.drop_tenant("t2")  # t2's own vectors go; 125..129 stay, t0 alone sees them
    assert index.evicted == 60 and not col.contains(np.arange(130, 180)).any()
    assert col.tenants_of(127) == ["t0"] and col.tenant_state("t0") == "inactive"
    seen["t1"] -= set(range(10))
    answers(col, "t0", seen["t0"])  # 70 vectors: its own 60 and 120..129
    assert col.owned(np.arange(120, 130), tenant="t0").all()
    answers(col, "t1", seen["t1"])
    for t in (0, 1):
        index.tenancy.check(t)


def test_admin_writes_reach_evicted_vectors(embedded):
    col = embedded.create_collection("c", dim=DIM, **SMALL_TREE)
    seen = populate(col)
    col.deactivate_tenant("t0")
    index = col.index
    col.delete([30, 31])  # evicted: their records go, t0's count follows
    seen["t0"] -= {30, 31}
    assert not col.contains([30, 31]).any() and col.count() == N_TENANTS * PER - 2
    col.set_payloads([40, 41], {"color": "red", "n": -1})
    assert col.get_payloads([40, 41]) == [{"color": "red", "n": -1}] * 2
    assert col.tenant_state("t0") == "inactive" and index.evicted == 38
    assert col.grant([50], tenant="t3") == 1  # now an active tenant sees it: in memory again
    seen["t3"].add(50)
    assert index.evicted == 37 and col.tenants_of(50) == ["t0", "t3"]
    with pytest.raises(curator.AlreadyExistsError):
        col.insert([45], X[:1], tenant="t3")
    with pytest.raises(curator.PermissionDeniedError):
        col.upsert([45], X[:1], tenant="t3")  # t0 owns it
    assert col.tenant_state("t0") == "inactive" and index.evicted == 37
    answers(col, "t3", seen["t3"])
    col.upsert([45], X[-1:], tenant="t0")  # its owner: woken first
    assert col.tenant_state("t0") == "active"
    np.testing.assert_array_equal(col.get([45]), X[-1:])
    X0 = X.copy()
    X0[45] = X[-1]
    visible = np.array(sorted(seen["t0"]))
    ids, _ = col.search(QUERIES[0], k=10, tenant="t0", ef=100_000)
    np.testing.assert_array_equal(ids, visible[brute_force(X0[visible], QUERIES[0], "l2", 10)[0]])
    found = col.search(QUERIES[0], k=100, tenant="t0", filter={"n": -1}, ef=100_000)
    assert sorted(found.ids.tolist()) == [40, 41]


def test_whole_collection_calls_see_evicted_vectors(embedded):
    col = embedded.create_collection("c", dim=DIM, **SMALL_TREE)
    populate(col)
    col.deactivate_tenant("t0")
    col.deactivate_tenant("t4")
    everything = np.arange(N_TENANTS * PER)
    assert col.count() == everything.size
    page, after = col.scroll(after_id=-1, limit=10_000)
    assert page.tolist() == everything.tolist() and after == -1
    ids, dists = col.search(QUERIES[1], k=10, ef=100_000)  # every vector: the inactive come back
    np.testing.assert_array_equal(ids, brute_force(X[everything], QUERIES[1], "l2", 10)[0])
    assert col.tenant_state("t0") == col.tenant_state("t4") == "active"


def test_retraining_with_inactive_tenants(embedded):
    col = embedded.create_collection("c", dim=DIM, **SMALL_TREE)
    seen = populate(col)
    before = answers(col, "t0", seen["t0"])
    col.deactivate_tenant("t0")
    col.train()
    assert col.tenant_state("t0") == "inactive" and col.index.evicted == 40
    assert col.count() == N_TENANTS * PER
    assert answers(col, "t0", seen["t0"]) == before
    assert_routed(col.index, "t0")
    answers(col, "t1", seen["t1"])


def test_reopening_keeps_inactive_tenants_out_of_memory(tmp_path):
    path = str(tmp_path / "data")
    with curator.open(path) as db:
        col = db.create_collection("c", dim=DIM, **SMALL_TREE)
        seen = populate(col)
        col.retraining.wait()
        before = {t: answers(col, t, seen[t]) for t in ("t0", "t2", "t3")}
        probe = np.array([0, 25, 59, 120, 125, 200], np.int64)
        reads = id_reads(col, probe)
        col.deactivate_tenant("t0")
        col.deactivate_tenant("t2")
    with curator.open(path) as db:
        col = db.collection("c")
        index = col.index
        assert col.tenant_state("t0") == col.tenant_state("t2") == "inactive"
        assert index.evicted == 100 and index.n_slots == N_TENANTS * PER - 100  # their rows were never read
        assert index.tenancy.count[index.tenant_numbers["t0"]] == 70
        assert id_reads(col, probe) == reads
        col.delete([31])  # an evicted id, deleted while its tenant sleeps
        seen["t0"].discard(31)
    with curator.open(path) as db:
        col = db.collection("c")
        assert col.tenant_state("t0") == "inactive" and col.index.evicted == 99
        after = answers(col, "t0", seen["t0"])
        assert after["search0"] == [i for i in before["t0"]["search0"] if i != 31][: len(after["search0"])]
        assert answers(col, "t2", seen["t2"]) == before["t2"]
        assert answers(col, "t3", seen["t3"]) == before["t3"]
    with curator.open(path) as db:  # woken, it stays active
        col = db.collection("c")
        assert col.tenant_state("t0") == "active" and col.index.evicted == 0


def test_a_stale_manifest_is_noticed_when_its_tenant_wakes(tmp_path):
    """A version without tenant states may write to the directory and leave a manifest short: the
    tenant's count (from the access lists) tells, and every evicted id is looked at instead."""
    from curator.storage import _inactive_key

    path = str(tmp_path / "data")
    with curator.open(path) as db:
        col = db.create_collection("c", dim=DIM, **SMALL_TREE)
        seen = populate(col)
        before = answers(col, "t0", seen["t0"])
        col.deactivate_tenant("t0")
        short = b"i" + np.arange(5, dtype="<i8").tobytes()
        db.records.write_records([(_inactive_key(col._cid, col.index.tenant_numbers["t0"]), short)])
    with curator.open(path) as db:
        col = db.collection("c")
        assert col.tenant_state("t0") == "inactive"
        assert answers(col, "t0", seen["t0"]) == before


def test_an_idle_tenant_is_deactivated_by_itself(tmp_path):
    with pytest.raises(curator.InvalidArgumentError):
        curator.open(":memory:").create_collection("bad", dim=DIM, idle_deactivate_seconds=0)
    path = str(tmp_path / "data")
    with curator.open(path) as db:
        col = db.create_collection("c", dim=DIM, idle_deactivate_seconds=0.05, **SMALL_TREE)
        seen = populate(col)
        before = answers(col, "t1", seen["t1"])
        deadline = time.monotonic() + 60
        while not all(col.tenant_state(f"t{t}") == "inactive" for t in range(N_TENANTS)):
            assert time.monotonic() < deadline, "idle tenants were not deactivated within 60 s"
            time.sleep(0.02)
        assert col.stats()["resident_vectors"] == 0
        assert answers(col, "t1", seen["t1"]) == before
    with curator.open(path) as db:  # the option outlives a restart
        assert db.collection("c").index.config.idle_deactivate_seconds == 0.05


def test_searches_of_others_go_on_while_a_tenant_sleeps_and_wakes(embedded):
    col = embedded.create_collection("c", dim=DIM, **SMALL_TREE)
    seen = populate(col)
    expected = answers(col, "t3", seen["t3"])
    stop, wrong = threading.Event(), []

    def search():
        while not stop.is_set():
            ids, _ = col.search(QUERIES[0], k=10, tenant="t3", ef=100_000)
            if ids.tolist() != expected["search0"]:
                wrong.append(ids.tolist())

    thread = threading.Thread(target=search)
    thread.start()
    try:
        for _ in range(20):
            col.deactivate_tenant("t0")
            col.deactivate_tenant("t2")
            assert col.count(tenant="t0") == 70  # wakes it
            col.activate_tenant("t2")
    finally:
        stop.set()
        thread.join()
    assert not wrong


def test_the_payload_quota_tally_counts_evicted_payloads(tmp_path):
    path = str(tmp_path / "data")
    with curator.open(path) as db:
        col = db.create_collection("c", dim=DIM, **SMALL_TREE)
        populate(col)
        db.set_quota("t0", payload_bytes=10**9)
        held = db.quota("t0").usage.payload_bytes
        assert held > 0
        col.deactivate_tenant("t0")
        assert db.quota("t0").usage.payload_bytes == held
    with curator.open(path) as db:
        assert db.collection("c").tenant_state("t0") == "inactive"
        assert db.quota("t0").usage.payload_bytes == held
        assert db.quota("t0").usage.vectors == 70


KEYS = {"alice": "key-alice-0123456789", "admin": "key-admin-0123456789"}


def test_a_tenant_key_manages_its_own_tenants_states_only(tmp_path):
    from curator_server.app import CuratorServer, ServerConfig

    keys = keys_file(tmp_path / "keys.toml", {"alice": (KEYS["alice"], ["t0"]), "ops": (KEYS["admin"], None)})
    server = CuratorServer(ServerConfig(data=str(tmp_path / "data"), port=0, keys=keys)).start()
    admin = curator.connect(server.address, api_key=KEYS["admin"])
    alice = curator.connect(server.address, api_key=KEYS["alice"])
    try:
        seen = populate(admin.create_collection("c", dim=DIM, **SMALL_TREE))
        col = alice.collection("c")
        before = answers(col, "t0", seen["t0"])
        col.deactivate_tenant("t0")
        assert col.tenant_state("t0") == "inactive"
        assert admin.collection("c").stats()["inactive_tenants"] == 1
        for call in (col.tenant_state, col.deactivate_tenant, col.activate_tenant):
            for other in ("t1", "nobody"):  # the same refusal whether the tenant exists or not
                with pytest.raises(curator.PermissionDeniedError):
                    call(other)
        assert answers(col, "t0", seen["t0"]) == before
        col.deactivate_tenant("t0")
        col.activate_tenant("t0")
        assert col.tenant_state("t0") == "active"
    finally:
        alice.close()
        admin.close()
        server.stop()


def test_a_batch_of_searches_wakes_the_inactive_tenants_it_names(db):
    col = db.create_collection("c", dim=DIM, **SMALL_TREE)
    populate(col)
    tenants = [f"t{t % N_TENANTS}" for t in range(len(QUERIES))]
    before = col.search_batch(QUERIES, k=10, tenants=tenants, ef=100_000)
    for t in (0, 2, 3):
        col.deactivate_tenant(f"t{t}")
    after = col.search_batch(QUERIES, k=10, tenants=tenants, ef=100_000)
    np.testing.assert_array_equal(after.ids, before.ids)
    assert all(col.tenant_state(t) == "active" for t in set(tenants))


@pytest.mark.parametrize("leave, state", [("deactivate_tenant", "inactive"), ("offload_tenant", "offloaded")])
def test_the_asyncio_sdk_manages_tenant_states(tmp_path, leave, state):
    import asyncio

    from curator_client import aio
    from curator_server.app import CuratorServer, ServerConfig

    server = CuratorServer(ServerConfig(data=str(tmp_path / "data"), port=0)).start()

    async def run():
        async with await aio.connect(server.address, retries=0) as db:
            col = await db.create_collection("c", dim=DIM)
            await col.insert(np.arange(20), X[:20], tenant="t0")
            before = await col.search(QUERIES[0], k=5, tenant="t0")
            await getattr(col, leave)("t0")
            assert await col.tenant_state("t0") == state
            found = await col.search(QUERIES[0], k=5, tenant="t0")  # wakes it
            np.testing.assert_array_equal(found.ids, before.ids)
            assert await col.tenant_state("t0") == "active"
            await getattr(col, leave)("t0")
            await col.activate_tenant("t0")
            assert await col.tenant_state("t0") == "active"

    try:
        asyncio.run(run())
    finally:
        server.stop()


def test_memory_with_10_000_tenants_of_which_90_percent_inactive(tmp_path):
    """The index's own count of its memory (`CuratorIndex.nbytes`; RSS is the benchmark's,
    benchmarks/tenant_states.py) after reopening: with 90% of 10 000 tenants inactive, at most a
    quarter of what all active take, and the woken answer as the all-active copy does."""
    n, per, dim = 10_000, 10, 64
    data = np.random.default_rng(5).standard_normal((n * per, dim)).astype(np.float32)
    with curator.open(str(tmp_path / "inactive"), durability="none") as db:
        col = db.create_collection("c", dim=dim, train_size=10**9)
        for t in range(n):
            col.insert(np.arange(t * per, (t + 1) * per), data[t * per : (t + 1) * per], tenant=f"t{t}")
        col.train(data[::10])
        db.snapshot(str(tmp_path / "active"))
        for t in range(n):
            if t % 10:
                col.deactivate_tenant(f"t{t}")

    def opened(name: str, woken: list[int]) -> tuple[int, int, list]:
        with curator.open(str(tmp_path / name), durability="none") as db:
            col = db.collection("c")
            for t in range(0, n, 10):  # every active tenant served once: its sub-tree built
                col.search(data[t * per], k=3, tenant=f"t{t}")
            index = col.index
            held = sum(index.nbytes.values())
            found = [col.search(data[t * per] + 0.1, k=5, tenant=f"t{t}").ids.tolist() for t in woken]
            return held, index.n_slots, found

    woken = [1, 77, 4_321, 9_999]
    all_held, all_rows, all_found = opened("active", woken)
    held, rows, found = opened("inactive", [])
    assert all_rows == n * per and rows == n * per // 10
    assert held <= 0.25 * all_held, f"{held} bytes with 90% inactive against {all_held} all active"
    assert opened("inactive", woken)[2] == all_found
