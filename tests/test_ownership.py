"""Owner rights and id privacy: only a vector's owner may overwrite it or its payload, ownership
passes on when the owner lets go and survives reopening, and a tenant key learns nothing of the
ids other tenants use, by message, count or probing."""

import numpy as np
import pytest

import curator
from curator_server.app import CuratorServer, ServerConfig
from curator_server.probes import TAKEN, ProbeBudget
from tests.conftest import keys_file

DIM = 4
KEYS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789", "both": "key-both-0123456789",
        "admin": "key-admin-0123456789"}


def vectors(n, seed=0):
    return np.random.default_rng(seed).random((n, DIM), dtype=np.float32)


@pytest.fixture(params=["memory", "disk"])
def col(request, tmp_path):
    db = curator.open(":memory:" if request.param == "memory" else str(tmp_path / "d"))
    col = db.create_collection("c", dim=DIM)
    col.insert(np.arange(10), vectors(10), tenant="a", payloads=[{"n": i} for i in range(10)])
    col.grant(np.arange(5), tenant="b")
    yield col
    db.close()


def test_only_the_owner_overwrites_a_vector_or_its_payload(col):
    assert col.owned(np.arange(10), tenant="a").all() and not col.owned(np.arange(10), tenant="b").any()
    with pytest.raises(curator.PermissionDeniedError, match="owned by another tenant"):
        col.upsert([3], np.ones((1, DIM)), tenant="b")
    with pytest.raises(curator.PermissionDeniedError, match="owned by another tenant"):
        col.set_payloads([3], {"n": -1}, tenant="b")
    with pytest.raises(curator.PermissionDeniedError):  # all or nothing: 12 would be new
        col.upsert([3, 12], np.ones((2, DIM)), tenant="b")
    assert col.get_payloads([3]) == [{"n": 3}] and not col.contains([12]).any()
    np.testing.assert_array_equal(col.get([3]), vectors(10)[3:4])
    col.upsert([3], np.ones((1, DIM)), tenant="a")  # the owner may
    col.set_payloads([3], {"n": 33}, tenant="a")
    assert col.get_payloads([3]) == [{"n": 33}] and col.tenants_of(3) == ["a", "b"]
    col.set_payloads([4], {"n": 44})  # no tenant named: not checked (embedded, or an admin key)
    assert col.get_payloads([4]) == [{"n": 44}]


def test_ownership_passes_to_the_longest_standing_tenant_left_and_survives_reopening(tmp_path):
    path = str(tmp_path / "d")
    with curator.open(path) as db:
        col = db.create_collection("c", dim=DIM)
        col.create_tenant("z-first")  # created first: the longest-standing, whatever its name
        col.insert(np.arange(6), vectors(6), tenant="a")
        col.grant(np.arange(6), tenant="b")
        col.grant(np.arange(3), tenant="z-first")
        col.revoke(np.arange(6), tenant="a")  # the owner lets go
        assert col.owned(np.arange(3), tenant="z-first").all() and col.owned(np.arange(3, 6), tenant="b").all()
        col.insert([10], vectors(1), tenant="c")
        col.grant([10], tenant="d")
        col.drop_tenant("c")
        assert col.owned([10], tenant="d").all()
        col.upsert([0], np.ones((1, DIM)), tenant="z-first")
    with curator.open(path) as db:
        col = db.collection("c")
        assert col.owned(np.arange(3), tenant="z-first").all() and col.owned(np.arange(3, 6), tenant="b").all()
        assert col.owned([10], tenant="d").all() and not col.owned([10], tenant="b").any()
        assert col.owners([0, 1, 2, 3, 4, 5, 10]) == ["z-first"] * 3 + ["b"] * 3 + ["d"]
        with pytest.raises(curator.NotFoundError):
            col.owners([10, 99])
        with pytest.raises(curator.PermissionDeniedError):
            col.upsert([1], np.ones((1, DIM)), tenant="b")
        col.train()  # a retrain renumbers slots: owners follow their vectors
        assert col.owned(np.arange(3), tenant="z-first").all() and col.owned([10], tenant="d").all()


def test_an_owner_hands_vectors_to_a_tenant_that_sees_them(col):
    col.create_tenant("c")
    with pytest.raises(curator.InvalidArgumentError, match="not granted to 'b'"):  # b sees 0..4 only
        col.transfer([4, 5], to="b", tenant="a")
    with pytest.raises(curator.PermissionDeniedError, match="owned by another tenant"):
        col.transfer([0], to="b", tenant="c")
    with pytest.raises(curator.NotFoundError):
        col.transfer([0], to="nobody")
    assert col.owners(np.arange(6)) == ["a"] * 6  # nothing changed hands
    col.transfer([0, 1], to="b", tenant="a")
    col.transfer([2], to="b")  # no tenant named: whoever owns it (embedded, or an admin key)
    assert col.owners(np.arange(4)) == ["b", "b", "b", "a"] and col.tenants_of(0) == ["a", "b"]
    col.upsert([0], np.ones((1, DIM)), tenant="b")
    with pytest.raises(curator.PermissionDeniedError):
        col.upsert([0], np.ones((1, DIM)), tenant="a")


def test_a_tenant_since_orders_tenants_as_they_came_and_survives_reopening(tmp_path):
    path = str(tmp_path / "d")
    with curator.open(path) as db:
        col = db.create_collection("c", dim=DIM)
        col.create_tenant("z")
        col.insert([1], vectors(1), tenant="a")
        col.grant([1], tenant="b")
        since = [col.tenant_since(t) for t in ("z", "a", "b")]
        assert since == sorted(set(since)) and since[0] > 1_600_000_000 * 10**9  # ns since the epoch
        col.deactivate_tenant("b")
        assert col.tenant_since("b") == since[2] and col.tenant_state("b") == "inactive"  # asking wakes no one
        with pytest.raises(curator.NotFoundError):
            col.tenant_since("nobody")
    with curator.open(path) as db:
        col = db.collection("c")
        assert [col.tenant_since(t) for t in ("z", "a", "b")] == since
        col.drop_tenant("z")
        col.create_tenant("z")  # a dropped tenant's name comes back as a new tenant
        assert col.tenant_since("z") > since[2]


@pytest.fixture
def served(tmp_path):
    keys = keys_file(tmp_path / "keys.toml", {name: (key, None if name == "admin" else ["alice", "bob"]
                                                     if name == "both" else [name]) for name, key in KEYS.items()})
    server = CuratorServer(ServerConfig(port=0, keys=keys, id_collisions_per_hour=5)).start()
    admin = curator.connect(server.address, api_key=KEYS["admin"])
    col = admin.create_collection("c", dim=DIM)
    secret = np.random.default_rng(7).choice(1_000_000, 100, replace=False)
    col.insert(secret, vectors(100), tenant="bob")
    col.insert(np.arange(1_000_000, 1_000_010), vectors(10, 1), tenant="alice")
    col.grant([int(secret[0])], tenant="alice")  # bob shares one of his with alice
    clients = {name: curator.connect(server.address, api_key=key) for name, key in KEYS.items()}
    yield server, clients, secret
    for client in clients.values():
        client.close()
    admin.close()
    server.stop()


def test_a_tenant_key_overwrites_only_what_its_tenant_owns(served):
    _, clients, secret = served
    alice = clients["alice"].collection("c")
    shared = int(secret[0])
    with pytest.raises(curator.PermissionDeniedError, match="owned by another tenant"):
        alice.upsert([shared], np.ones((1, DIM)), tenant="alice")
    with pytest.raises(curator.PermissionDeniedError, match="owned by another tenant"):
        alice.set_payloads([shared], {"mine": True})  # her key's only tenant is the one checked
    assert alice.owned([shared, 1_000_000], tenant="alice").tolist() == [False, True]
    alice.set_payloads([1_000_000], {"mine": True})
    alice.upsert([1_000_001], np.ones((1, DIM)), tenant="alice")
    both = clients["both"].collection("c")
    with pytest.raises(curator.InvalidArgumentError, match="name the one that owns"):
        both.set_payloads([1_000_000], {"x": 1})
    both.set_payloads([1_000_000], {"x": 1}, tenant="alice")
    assert alice.get_payloads([1_000_000]) == [{"x": 1}]


def test_only_an_admin_key_hands_vectors_over_and_a_key_reads_its_tenants_since(served):
    _, clients, secret = served
    shared = int(secret[0])
    with pytest.raises(curator.PermissionDeniedError, match="admin"):
        clients["bob"].collection("c").transfer([shared], to="alice", tenant="bob")
    assert clients["alice"].collection("c").tenant_since("alice") > clients["bob"].collection("c").tenant_since("bob")
    with pytest.raises(curator.PermissionDeniedError):
        clients["alice"].collection("c").tenant_since("bob")
    admin = clients["admin"].collection("c")
    admin.transfer([shared], to="alice", tenant="bob")
    assert admin.owners([shared]) == ["alice"]
    clients["alice"].collection("c").upsert([shared], np.ones((1, DIM)), tenant="alice")


def test_every_collision_reads_the_same_and_names_no_id(served):
    _, clients, secret = served
    alice = clients["alice"].collection("c")
    messages = set()
    for ids in ([1_000_000], [int(secret[1]), 5_000_000], [1_000_001, int(secret[3])]):  # 4 of the 5 allowed
        for write in ("insert", "upsert"):
            if write == "upsert" and ids == [1_000_000]:
                continue  # her own vector: an upsert overwrites it
            with pytest.raises(curator.AlreadyExistsError) as raised:
                getattr(alice, write)(ids, np.ones((len(ids), DIM)), tenant="alice")
            messages.add(str(raised.value))
    assert messages == {TAKEN}


def test_probing_for_another_tenants_ids_finds_nothing_past_the_budget(served):
    """The attack that enumerated another tenant's ids by halving batches needs one answer per
    bit: past the key's budget (5 collisions here) every write naming ids is refused, whether it
    would collide or not, so the answers carry nothing."""
    _, clients, secret = served
    alice = clients["alice"].collection("c")
    answers = []
    for i, target in enumerate(np.sort(secret)[:10].tolist()):
        for probe in ([target], [2_000_000 + i]):  # one that collides, one that would not
            try:
                alice.insert(probe, np.ones((1, DIM)), tenant="alice")
                answers.append("ok")
            except curator.AlreadyExistsError:
                answers.append("taken")
            except curator.ResourceExhaustedError as error:
                assert "resume in" in str(error)
                answers.append("refused")
    assert answers[:9] == ["taken", "ok"] * 4 + ["taken"] and set(answers[9:]) == {"refused"}
    assert alice.count(tenant="alice") == 10 + 1 + 4  # hers, the shared one, the probes that went in
    clients["bob"].collection("c").insert([6_000_000], np.ones((1, DIM)), tenant="bob")  # bob's budget is his


def test_the_budget_refills_evenly():
    now = [0.0]
    budget = ProbeBudget(per_hour=2, clock=lambda: now[0])
    budget.check("k")
    budget.taken("k"), budget.taken("k")
    with pytest.raises(curator.ResourceExhaustedError, match="resume in 1800 s") as raised:
        budget.check("k")
    assert raised.value.limit == "id_collisions_per_hour" and raised.value.retry_after == 1800
    budget.check("other")
    now[0] = 1799.0
    with pytest.raises(curator.ResourceExhaustedError):
        budget.check("k")
    now[0] = 1800.0
    budget.check("k")  # one collision's worth back after half an hour
    now[0] = 10 * 3600.0
    budget.taken("k"), budget.check("k")  # never more than the hour's budget stored up
    budget.taken("k")
    with pytest.raises(curator.ResourceExhaustedError):
        budget.check("k")


@pytest.mark.parametrize("where", ["embedded", "remote"])
def test_an_insert_without_ids_gets_ids_drawn_at_random_above_two_to_the_32(served, where):
    server, clients, _ = served
    db = curator.open(":memory:") if where == "embedded" else clients["alice"]
    col = db.create_collection("c", dim=DIM) if where == "embedded" else db.collection("c")
    tenant = "alice"
    first = col.insert(None, vectors(50, 3), tenant=tenant, payloads=[{"n": i} for i in range(50)])
    second = col.insert(None, vectors(50, 4), tenant=tenant)
    drawn = np.concatenate([first, second])
    assert drawn.dtype == np.int64 and np.unique(drawn).size == 100 and (drawn >= 1 << 32).all()
    assert not (np.diff(first) == 1).all()  # not a sequence: nothing in them counts what others drew
    np.testing.assert_array_equal(col.get(first[:3]), vectors(50, 3)[:3])
    assert col.get_payloads(first[:2]) == [{"n": 0}, {"n": 1}] and col.owned(drawn, tenant=tenant).all()
    np.testing.assert_array_equal(col.insert([7, 8], vectors(2, 5), tenant=tenant), [7, 8])  # given ids come back


def test_drawn_ids_need_no_collision_budget(served):
    _, clients, secret = served
    alice = clients["alice"].collection("c")
    for target in np.sort(secret)[:6].tolist():  # spend her budget of 5
        with pytest.raises((curator.AlreadyExistsError, curator.ResourceExhaustedError)):
            alice.insert([target], np.ones((1, DIM)), tenant="alice")
    with pytest.raises(curator.ResourceExhaustedError):
        alice.insert([7_000_000], np.ones((1, DIM)), tenant="alice")
    assert alice.insert(None, np.ones((3, DIM)), tenant="alice").size == 3  # no ids named: nothing to probe
