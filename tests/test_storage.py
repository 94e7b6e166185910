"""Data directories: reopen round trips, durability modes, one opener, refusal of damaged or newer
directories without touching them, and snapshots taken while writes go on."""

import hashlib
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from rocksdict import Options, Rdict

import curator
from tests.conftest import SMALL_TREE, brute_force, clustered

ROOT = Path(__file__).resolve().parent.parent


def _fill(col, n=600, dim=8, seed=0):
    x = clustered(n, dim, seed=seed) * 3
    col.insert(np.arange(n), x, tenant="a")
    col.grant(np.arange(0, n, 2), tenant="b")
    col.grant(np.arange(0, n, 5), tenant="c")
    col.revoke(np.arange(0, 60, 2), tenant="b")
    col.delete(np.arange(100, 110))
    col.drop_tenant("c")
    return x


def _answers(col, queries):
    return [col.search(q, k=7, tenant=t, ef=ef) for q in queries for t in ("a", "b") for ef in (16, None, 10**6)]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_reopen_gives_identical_answers_without_retraining(tmp_path):
    with curator.open(str(tmp_path / "d")) as db:
        col = db.create_collection("c", dim=8, metric="cosine", **SMALL_TREE)
        x = _fill(col)
        col.retraining.wait()  # the retrains the fill started in the background
        queries = clustered(4, 8, seed=9)
        before = _answers(col, queries)
        centroids = col.index.tree.centroids.copy()
        counts = {t: col.count(tenant=t) for t in col.tenants()}
    with curator.open(str(tmp_path / "d")) as db:
        col = db.collection("c")
        assert col.metric == "cosine" and col.dim == 8
        np.testing.assert_array_equal(col.index.tree.centroids, centroids)  # the tree was stored, not retrained
        assert {t: col.count(tenant=t) for t in col.tenants()} == counts
        for (ids0, d0), (ids1, d1) in zip(before, _answers(col, queries)):
            np.testing.assert_array_equal(ids0, ids1)
            np.testing.assert_allclose(d0, d1, rtol=1e-6)
        live = np.setdiff1d(np.arange(600), np.arange(100, 110))
        np.testing.assert_array_equal(col.get(live), x[live])
        assert col.tenants_of(62) == ["a", "b"] and col.tenants_of(4) == col.tenants_of(5) == ["a"]  # c was dropped
        col.insert([5000], x[:1], tenant="new")  # and it takes writes again
    with curator.open(str(tmp_path / "d")) as db:
        assert db.collection("c").tenants_of(5000) == ["new"]


@pytest.mark.parametrize("durability", ["sync", "batch", "none"])
def test_durability_modes_keep_writes_across_reopen(tmp_path, durability):
    path = str(tmp_path / "d")
    with curator.open(path, durability=durability) as db:
        col = db.create_collection("c", dim=4)
        x = clustered(400, 4)

        def writer(part):
            for i in range(part * 100, part * 100 + 100, 10):
                col.insert(np.arange(i, i + 10), x[i : i + 10], tenant=f"t{part}")

        threads = [threading.Thread(target=writer, args=(p,)) for p in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    with curator.open(path) as db:
        col = db.collection("c")
        assert col.count() == 400 and sorted(col.tenants()) == ["t0", "t1", "t2", "t3"]
        np.testing.assert_array_equal(col.get(np.arange(400)), x)


def test_collections_and_their_drop_persist(tmp_path):
    path = str(tmp_path / "d")
    with curator.open(path) as db:
        db.create_collection("keep", dim=3).insert([1], [[1, 2, 3]], tenant="t")
        db.create_collection("gone", dim=3).insert([1], [[1, 2, 3]], tenant="t")
        db.drop_collection("gone")
        db.create_collection("later", dim=3)
    with curator.open(path) as db:
        assert db.list_collections() == ["keep", "later"]
        assert db.collection("keep").count() == 1 and db.collection("later").count() == 0


def test_a_second_opener_is_refused(tmp_path):
    path = str(tmp_path / "d")
    with curator.open(path) as db:
        db.create_collection("c", dim=3)
        code = ("import curator\ntry:\n    curator.open(%r)\nexcept curator.StorageError as e:\n    print('refused:', e)\n" % path)
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert "refused:" in out.stdout and "already open" in out.stdout, out.stdout + out.stderr
        db.collection("c").insert([1], [[1, 2, 3]], tenant="t")  # the first opener is unharmed


def test_newer_format_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "d"
    curator.open(str(path)).close()
    raw = Rdict(str(path), Options(raw_mode=True))
    raw[b"F"] = b'{"format": 99, "engine": "curator"}'
    raw.close()
    before = _digest(path)
    with pytest.raises(curator.StorageError, match="format 99, newer than this Curator"):
        curator.open(str(path))
    assert _digest(path) == before


def test_damaged_directory_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "d"
    with curator.open(str(path)) as db:
        db.create_collection("c", dim=3).insert([1], [[1, 2, 3]], tenant="t")
    manifest = next(path.glob("MANIFEST-*"))
    manifest.write_bytes(b"\x00garbage" * 50)
    before = _digest(path)
    with pytest.raises(curator.StorageError, match="damaged"):
        curator.open(str(path))
    assert _digest(path) == before


def test_a_directory_that_is_not_curators_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(curator.StorageError, match="not a Curator data directory"):
        curator.open(str(tmp_path / "d"))
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"
    (tmp_path / "f").write_text("x")
    with pytest.raises(curator.StorageError, match="is a file"):
        curator.open(str(tmp_path / "f"))


def test_snapshot_while_writing_restores_a_consistent_state(tmp_path):
    db = curator.open(str(tmp_path / "live"))
    col = db.create_collection("c", dim=6, **SMALL_TREE)
    x = clustered(3000, 6, seed=3)
    acked, stop = [], threading.Event()

    def writer():
        for batch in range(0, 3000, 30):
            if stop.is_set():
                return
            col.insert(np.arange(batch, batch + 30), x[batch : batch + 30], tenant="t")
            col.grant(np.arange(batch, batch + 30, 3), tenant="u")
            acked.append(batch)

    thread = threading.Thread(target=writer)
    thread.start()
    while len(acked) < 20:
        threading.Event().wait(0.01)
    done_before = list(acked)
    db.snapshot(str(tmp_path / "snap"))
    stop.set()
    thread.join()
    db.close()
    with pytest.raises(curator.InvalidArgumentError, match="not empty"):
        curator.restore(str(tmp_path / "snap"), str(tmp_path / "live"))
    curator.restore(str(tmp_path / "snap"), str(tmp_path / "restored"))
    with curator.open(str(tmp_path / "restored")) as restored:
        col = restored.collection("c")
        index = col.index
        ids = np.sort(index.slot_ids[: index.n_slots][index.slot_ids[: index.n_slots] >= 0])
        batches = np.unique(ids // 30 * 30)
        assert set(done_before) <= set(batches.tolist()), "a write acknowledged before the snapshot is missing"
        assert ids.size == batches.size * 30, "an insert batch was cut in two"
        np.testing.assert_array_equal(col.get(ids), x[ids])
        granted_u = np.array([i for i in ids if "u" in col.tenants_of(int(i))])
        assert col.count(tenant="t") == ids.size and col.count(tenant="u") == granted_u.size
        for tenant in col.tenants():
            index.tenancy.check(index.tenant_numbers[tenant])
        mine = ids if not granted_u.size else granted_u
        q = x[0] + 0.1
        got, dists = col.search(q, k=5, tenant="u" if granted_u.size else "t", ef=10**6)
        np.testing.assert_allclose(dists, brute_force(x[mine], q, "l2", 5)[1], rtol=1e-4, atol=1e-4)
