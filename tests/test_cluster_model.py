"""Through a cluster front, random writes by tenants spread over both shards (inserts, grants
across shards, revokes, upserts by owners and by others, deletes) give the same answers and the
same errors as one embedded database given the same calls: counts, scrolls, searches, tenants
of ids, vectors, payloads. (Owners giving up a vector shared over shards are left out: there
each shard names its own next owner, as the README says.)"""

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
        return np.array_equal(np.asarray(a), np.asarray(b))
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
            op = rng.choice(["insert", "grant", "revoke", "upsert", "upsert_other", "delete", "payloads"],
                            p=[0.3, 0.2, 0.1, 0.15, 0.05, 0.1, 0.1])
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
            elif op == "revoke":
                others = [i for i in pick.tolist() if model.collection("docs").contains([i])[0]
                          and not cols[1].owned([i], tenant=tenant)[0]] if tenant in cols[1].tenants() else []
                if others:
                    both("revoke", np.array(others, np.int64), tenant=tenant)
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
