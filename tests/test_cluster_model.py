"""Through a cluster front, random writes by tenants spread over both shards (inserts, grants
across shards, revokes by owners and by others, upserts by owners and by others, deletes,
payloads, hand-overs, dropped tenants) give the same answers and the same errors as one
embedded database given the same calls: counts, scrolls, searches, tenants and owners of ids,
vectors, payloads."""

import numpy as np
import pytest

import curator
from curator_server.cluster.placement import Placement
from tests.conftest import opened

DIM = 8
TENANTS = ["tenant-0", "tenant-1", "tenant-3", "tenant-4", "carol", "dave"]  # both shards (placement.py)


def outcome(call):
    try:
        return "ok", call()
    except curator.CuratorError as error:
        return type(error).__name__, None


def same(a, b) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind == "f":  # distances: one shard's kernel may round the last bit another way
            return a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=1e-6)
        return np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_writes_answer_as_one_database(request, tmp_path, seed):
    assert {Placement(2).shard_of(t) for t in TENANTS} == {0, 1}
    rng = np.random.default_rng(seed)
    with opened(request, "cluster", tmp_path / "front") as front, curator.open(":memory:") as model:
        cols = [db.create_collection("docs", DIM, exact_limit=10_000) for db in (front, model)]
        next_id, ids_seen = 0, []

        def both(method, *args, **kwargs):
            answers = [outcome(lambda c=c: getattr(c, method)(*args, **kwargs)) for c in cols]
            assert answers[0][0] == answers[1][0], (method, args, kwargs, answers)
            if answers[0][0] == "ok":
                assert same(answers[0][1], answers[1][1]), (method, args, kwargs, answers)
            return answers[1]

        for step in range(120):
            op = rng.choice(["insert", "grant", "revoke", "upsert", "upsert_other", "delete", "payloads", "transfer",
                             "drop_tenant"], p=[0.28, 0.2, 0.12, 0.12, 0.04, 0.08, 0.08, 0.05, 0.03])
            tenant = str(rng.choice(TENANTS))
            if op == "insert" or not ids_seen:
                n = int(rng.integers(1, 6))
                ids = np.arange(next_id, next_id + n, dtype=np.int64)
                if rng.random() < 0.1 and ids_seen:  # an id taken, maybe on the other shard
                    ids[0] = int(rng.choice(ids_seen))
                else:
                    next_id += n
                vectors = rng.standard_normal((n, DIM)).astype(np.float32)
                payloads = [{"n": int(i)} for i in ids]
                if both("insert", ids, vectors, tenant=tenant, payloads=payloads)[0] == "ok":
                    ids_seen.extend(ids.tolist())
                continue
            pick = np.array(sorted(set(rng.choice(ids_seen, size=min(3, len(ids_seen))).tolist())), np.int64)
            if op == "grant":
                both("grant", pick, tenant=tenant)
            elif op == "revoke":  # owners too: every copy passes to the tenant one server picks
                both("revoke", pick, tenant=tenant)
            elif op == "transfer":  # to a tenant that sees them or not; by their owner, another, or an admin
                owner = [None, tenant, *cols[1].owners(pick[cols[1].contains(pick)])][int(rng.integers(0, 3))]
                both("transfer", pick, to=str(rng.choice(TENANTS)), tenant=owner)
            elif op == "drop_tenant":
                both("drop_tenant", tenant)
            elif op in ("upsert", "upsert_other"):
                live = [i for i in pick.tolist() if cols[1].contains([i])[0]]
                if not live:
                    continue
                owners = [t for t in cols[1].tenants_of(live[0]) if cols[1].owned([live[0]], tenant=t)[0]]
                who = owners[0] if op == "upsert" else next(t for t in TENANTS if t not in owners)
                both("upsert", np.array(live[:1], np.int64), rng.standard_normal((1, DIM)).astype(np.float32),
                     tenant=who)
            elif op == "delete":
                both("delete", pick)
            else:
                live = [i for i in pick.tolist() if cols[1].contains([i])[0]]
                if live:
                    both("set_payloads", np.array(live, np.int64), {"step": step})
            if step % 10 == 9:
                both("count")
                both("tenants")
                both("scroll", limit=7)
                for t in cols[1].tenants():
                    both("count", t)
                    both("scroll", tenant=t, limit=10_000)
                    query = rng.standard_normal(DIM).astype(np.float32)
                    both("search", query, 5, tenant=t)
                both("search", rng.standard_normal(DIM).astype(np.float32), 5)
                queries = rng.standard_normal((3, DIM)).astype(np.float32)
                tenants = [str(rng.choice(TENANTS)), None, str(rng.choice(TENANTS))]
                for where in ({"n": {"gte": 10}}, {"step": {"lt": step / 2}}, {"ghost": 1}):
                    both("search", queries[0], 5, filter=where)
                    both("search_batch", queries, 4, filter=where)
                    both("search_batch", queries, 4, tenants=tenants, filter=where)
                probe = np.array(sorted(set(ids_seen))[:20], np.int64)
                both("contains", probe)
                for i in probe.tolist():
                    both("tenants_of", i)
                live = probe[cols[1].contains(probe)]
                both("get", live)
                both("get_payloads", live)
                both("owners", live)
                unknown = np.append(live[:2], 10**9)  # one id no one has: NotFoundError for the whole call
                for method in ("get", "get_payloads", "owners", "delete"):
                    both(method, unknown)


@pytest.mark.parametrize("older", ["dave", "frank"])
@pytest.mark.parametrize("give_up", ["revoke", "drop_tenant", "transfer"])
def test_a_vector_shared_over_shards_passes_whole_to_the_tenant_one_server_picks(request, tmp_path, older, give_up):
    """carol (shard 0) owns vectors granted to dave (shard 1) and frank (shard 0): whichever of
    those came into being first owns every copy once carol gives them up (or hands them to it),
    so its upserts reach every copy and both readers see them."""
    younger = "frank" if older == "dave" else "dave"
    assert Placement(2).shard_of("carol") == Placement(2).shard_of("frank") != Placement(2).shard_of("dave")
    rng = np.random.default_rng(0)
    with opened(request, "cluster", tmp_path / "front") as front, curator.open(":memory:") as model:
        for db in (front, model):
            col = db.create_collection("docs", DIM)
            ids = col.insert(np.arange(4), rng.standard_normal((4, DIM)).astype(np.float32), tenant="carol")
            col.create_tenant(older)
            col.create_tenant(younger)
            col.grant(ids, tenant=younger)
            col.grant(ids[:3], tenant=older)
            if give_up == "revoke":
                col.revoke(ids[1:], tenant="carol")
            elif give_up == "drop_tenant":
                col.drop_tenant("carol")
            else:
                col.transfer(ids[1:3], to=older, tenant="carol")
        cols = [db.collection("docs") for db in (front, model)]
        assert cols[0].owners(ids) == cols[1].owners(ids)
        assert cols[0].owners(ids[1:3]) == [older, older]
        assert cols[0].tenant_since(older) < cols[0].tenant_since(younger)
        moved = rng.standard_normal((2, DIM)).astype(np.float32)
        for col in cols:
            col.upsert(ids[1:3], moved, tenant=older)
            with pytest.raises(curator.PermissionDeniedError):
                col.upsert(ids[1:3], moved, tenant=younger)
        for col in cols:
            for tenant in (older, younger):
                found = col.search(moved[0], k=1, tenant=tenant)
                assert found.ids.tolist() == [ids[1]] and found.distances[0] == pytest.approx(0, abs=1e-5)
        assert [c.count() for c in cols] == [cols[1].count()] * 2
        assert [sorted(c.tenants()) for c in cols] == [sorted(cols[1].tenants())] * 2
        for tenant in cols[1].tenants():
            assert cols[0].count(tenant) == cols[1].count(tenant)


def test_a_quota_above_the_default_covers_the_owners_copies_on_other_shards(request, tmp_path):
    """carol (shard 0) may hold 10 vectors where the default is 3: granting her six to dave
    (shard 1, also 10) stores copies owned by her there, which her quota covers as at home."""
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((6, DIM)).astype(np.float32)
    with opened(request, "cluster", tmp_path / "front") as front, curator.open(":memory:") as model:
        for db in (front, model):
            db.set_quota(None, vectors=3)
            for tenant in ("carol", "dave"):
                db.set_quota(tenant, vectors=10)
            col = db.create_collection("docs", DIM)
            col.insert(np.arange(6), vectors, tenant="carol")
            assert col.grant(np.arange(6), tenant="dave") == 6
            with pytest.raises(curator.ResourceExhaustedError):  # erin has the default
                col.grant(np.arange(6), tenant="erin")
            assert db.quota("carol").usage.vectors == 6 and db.quota("dave").usage.vectors == 6
        assert front.collection("docs").owners(np.arange(6)) == ["carol"] * 6


def test_copies_that_disagree_on_their_owner_are_set_right_by_the_owners_next_write(request, tmp_path):
    """Shards left disagreeing (a front stopped halfway through a hand-over): the owner's home
    is believed, the other shard's copy handed back, and the upsert lands on both copies."""
    cluster = request.getfixturevalue("curator_cluster")
    rng = np.random.default_rng(2)
    with opened(request, "cluster", tmp_path / "front") as front:
        col = front.create_collection("docs", DIM)
        col.insert([7, 8], rng.standard_normal((2, DIM)).astype(np.float32), tenant="carol")
        col.grant([7, 8], tenant="dave")  # a copy on dave's shard, owned there by carol
        cluster.shard_of("dave").write(lambda copy: copy.collection("docs").transfer([7], to="dave"))
        assert cluster.shard_of("dave").read(lambda copy: copy.collection("docs").owners([7, 8])) == ["dave", "carol"]
        moved = rng.standard_normal((2, DIM)).astype(np.float32)
        col.upsert([7, 8], moved, tenant="carol")
        for tenant in ("carol", "dave"):
            shard = cluster.shard_of(tenant)
            assert shard.read(lambda copy: copy.collection("docs").owners([7, 8])) == ["carol", "carol"]
            np.testing.assert_array_equal(shard.read(lambda copy: copy.collection("docs").get([7, 8])), moved)
        with pytest.raises(curator.PermissionDeniedError):
            col.upsert([7], moved[:1], tenant="dave")


def test_a_drop_a_front_left_half_done_is_finished_by_the_next_drop(request, tmp_path):
    """carol dropped on her home shard only (the front died before her copy on dave's shard):
    she still shows among the tenants; dropping her again answers NotFound, as for any unknown
    tenant, and finishes the drop: her copy passes to dave."""
    cluster = request.getfixturevalue("curator_cluster")
    with opened(request, "cluster", tmp_path / "front") as front:
        col = front.create_collection("docs", DIM)
        col.insert([5], np.ones((1, DIM), np.float32), tenant="carol")
        col.grant([5], tenant="dave")
        cluster.shard_of("carol").write(lambda copy: copy.collection("docs").drop_tenant("carol"))
        assert "carol" in col.tenants()
        with pytest.raises(curator.NotFoundError):
            col.drop_tenant("carol")
        assert col.tenants() == ["dave"] and col.owners([5]) == ["dave"] and col.tenants_of(5) == ["dave"]
        with pytest.raises(curator.NotFoundError):
            col.drop_tenant("carol")


def test_a_revoke_a_front_left_half_done_is_finished_by_the_next_revoke(request, tmp_path):
    """carol's revoke applied on her home shard only (the front died before her copy on dave's
    shard): the same revoke again finishes it, her copy passes to dave."""
    cluster = request.getfixturevalue("curator_cluster")
    with opened(request, "cluster", tmp_path / "front") as front:
        col = front.create_collection("docs", DIM)
        col.insert([5, 6], np.ones((2, DIM), np.float32), tenant="carol")
        col.grant([5, 6], tenant="dave")
        cluster.shard_of("carol").write(lambda copy: copy.collection("docs").revoke([5], tenant="carol"))
        assert col.tenants_of(5) == ["carol", "dave"]
        col.revoke([5, 6], tenant="carol")
        assert col.tenants_of(5) == col.tenants_of(6) == ["dave"] and col.owners([5, 6]) == ["dave", "dave"]
        col.upsert([5, 6], np.zeros((2, DIM), np.float32), tenant="dave")
