"""Bulk import and export (curator/bulk.py, `curator import` / `curator export`): round trips per
format, embedded and against a server on loopback, an interrupted import resumed, bad files."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import curator
from curator import bulk
from curator.errors import AlreadyExistsError, InvalidArgumentError
from curator_server.app import CuratorServer, ServerConfig
from tests.conftest import opened

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ["parquet", "npy", "npz", "jsonl"]
DIM = 8


pytestmark = pytest.mark.cluster


@pytest.fixture(params=["embedded", "remote", "cluster"])
def db(request, tmp_path):
    if request.param == "cluster":  # alice and bob on one shard, carol on the other
        with opened(request, "cluster", tmp_path) as front:
            yield front
    elif request.param == "embedded":
        database = curator.open(str(tmp_path / "data"), durability="none")
        yield database
        database.close()
    else:
        server = CuratorServer(ServerConfig(data=":memory:", port=0)).start()
        database = curator.connect(server.address)
        yield database
        database.close()
        server.stop()


def seed(col, n=300, seed_=0):
    """Vectors owned by three tenants, some shared, most with a payload of mixed types."""
    rng = np.random.default_rng(seed_)
    ids = np.arange(n, dtype=np.int64) * 3 + 5
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors[0, 0] = np.float32(1e-38)  # a subnormal-ish value must come back bit-exact
    for owner, part in (("alice", slice(0, n // 2)), ("bob", slice(n // 2, n - 20)), ("carol", slice(n - 20, n))):
        payloads = [({"lang": ["en", "de"][i % 2], "year": 2000 + i, "score": i / 7, "ok": bool(i % 3),
                      "tags": [f"t{i % 4}", "ü"]} if i % 5 else {}) for i in range(part.start, part.stop)]
        col.insert(ids[part], vectors[part], tenant=owner, payloads=payloads)
    col.grant(ids[:40], tenant="bob")
    col.grant(ids[30:50], tenant="carol")
    col.grant(ids[-5:], tenant="alice")
    return ids


def snapshot(col):
    """Every vector of a collection: id -> (vector bytes, payload, owner, sorted grants)."""
    ids, _ = col.scroll(limit=100_000)
    out = {}
    vectors = col.get(ids)
    payloads = col.get_payloads(ids)
    for i, id_ in enumerate(ids.tolist()):
        tenants = col.tenants_of(id_)
        (owner,) = [t for t in tenants if col.owned([id_], tenant=t)[0]]
        out[id_] = (vectors[i].tobytes(), payloads[i], owner, sorted(set(tenants) - {owner}))
    return out


@pytest.mark.parametrize("kind", FORMATS)
def test_round_trip_is_bit_exact(db, tmp_path, kind):
    source = db.create_collection("src", dim=DIM)
    seed(source)
    path = tmp_path / f"export.{kind}"
    report = bulk.export_collection(source, path, batch=64)
    assert report.rows == source.count() and path.exists()
    target = db.create_collection("dst", dim=DIM)
    imported = bulk.import_file(target, path, batch=50)
    assert imported.rows == source.count() and imported.done
    assert snapshot(target) == snapshot(source)
    # exporting the copy writes the same rows again
    again = tmp_path / f"again.{kind}"
    bulk.export_collection(target, again)
    first = list(bulk.read_rows(path, batch=10_000))[0]
    second = list(bulk.read_rows(again, batch=10_000))[0]
    assert first.ids.tolist() == second.ids.tolist() and first.vectors.tobytes() == second.vectors.tobytes()
    assert first.payloads == second.payloads and first.grants == second.grants


def parquet_file(path, n=1000, dim=DIM, seed_=1, row_group=128):
    rng = np.random.default_rng(seed_)
    ids = np.arange(n, dtype=np.int64) * 2
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    tenants = [("alice", "bob", "carol")[i % 3] for i in range(n)]
    grants = [["dave"] if i % 7 == 0 else None for i in range(n)]
    payloads = [json.dumps({"n": i, "word": f"w{i}"}) for i in range(n)]
    table = pa.table({"id": ids, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
                      "tenant": tenants, "grants": pa.array(grants, pa.list_(pa.string())), "payload": payloads})
    pq.write_table(table, path, row_group_size=row_group)
    return ids, vectors, tenants, grants, [json.loads(p) for p in payloads]


def assert_equal_to_file(col, ids, vectors, tenants, grants, payloads):
    stored, _ = col.scroll(limit=100_000)
    assert stored.tolist() == sorted(ids.tolist())  # no duplicate, no gap
    assert col.get(ids).tobytes() == vectors.tobytes()
    assert col.get_payloads(ids) == payloads
    for owner in set(tenants):
        mask = np.array([t == owner for t in tenants])
        assert col.owned(ids[mask], tenant=owner).all()
    dave = np.array([bool(g) for g in grants])
    assert col.visible_to(ids, tenant="dave").tolist() == dave.tolist()


def test_an_interrupted_import_resumes_without_duplicate_or_gap(db, tmp_path):
    path = tmp_path / "rows.parquet"
    expected = parquet_file(path)
    col = db.create_collection("docs", dim=DIM)
    first = bulk.import_file(col, path, batch=100, limit_batches=3)
    assert not first.done and first.rows == 300 and col.count() == 300
    record = json.loads(bulk.progress_path(path).read_text())
    assert record["rows"] == 300 and not record["done"]
    # the batch in flight when it stopped reached the collection in part (alice's rows) before the
    # progress file could say so: the resumed run writes it again
    rows = next(bulk.read_rows(path, start=300, batch=100))
    alice = np.array([t == "alice" for t in rows.tenants])
    col.insert(rows.ids[alice], rows.vectors[alice], tenant="alice",
               payloads=[p for p, a in zip(rows.payloads, alice) if a])
    second = bulk.import_file(col, path, batch=100)
    assert second.resumed_at == 300 and second.rows == 700 and second.done
    assert_equal_to_file(col, *expected)
    # once done, a rerun writes nothing
    assert bulk.import_file(col, path, batch=100).rows == 0
    # and without the progress file, every id is taken
    with pytest.raises(AlreadyExistsError):
        bulk.import_file(col, path, batch=100, resume=False)


@pytest.mark.parametrize("kind", ["jsonl", "npz", "npy"])
def test_resume_in_every_format(tmp_path, kind):
    db = curator.open(":memory:")
    source = db.create_collection("src", dim=DIM)
    seed(source)
    path = tmp_path / f"rows.{kind}"
    bulk.export_collection(source, path)
    col = db.create_collection("dst", dim=DIM)
    assert not bulk.import_file(col, path, batch=70, limit_batches=2).done
    assert bulk.import_file(col, path, batch=70).resumed_at == 140
    assert snapshot(col) == snapshot(source)


def test_a_changed_file_is_not_resumed(tmp_path):
    db = curator.open(":memory:")
    col = db.create_collection("docs", dim=DIM)
    path = tmp_path / "rows.parquet"
    parquet_file(path)
    bulk.import_file(col, path, batch=100, limit_batches=1)
    parquet_file(path, seed_=2)
    with pytest.raises(InvalidArgumentError, match="changed"):
        bulk.import_file(col, path, batch=100)


def test_bad_files_say_what_is_wrong(tmp_path):
    db = curator.open(":memory:")
    col = db.create_collection("docs", dim=DIM)
    wrong_dim = tmp_path / "wide.parquet"
    parquet_file(wrong_dim, dim=DIM + 1)
    with pytest.raises(InvalidArgumentError, match=f"dimension {DIM + 1}.*holds dimension {DIM}"):
        bulk.import_file(col, wrong_dim)
    no_vector = tmp_path / "novector.parquet"
    pq.write_table(pa.table({"id": [1, 2], "tenant": ["a", "b"]}), no_vector)
    with pytest.raises(InvalidArgumentError, match="no 'vector' column"):
        bulk.import_file(col, no_vector)
    npz = tmp_path / "noarrays.npz"
    np.savez(npz, ids=np.arange(3))
    with pytest.raises(InvalidArgumentError, match="no 'vectors' array"):
        bulk.import_file(col, npz)
    ragged = tmp_path / "ragged.jsonl"
    ragged.write_text('{"id": 1, "tenant": "a", "vector": [1, 2, 3, 4, 5, 6, 7, 8]}\n'
                      '{"id": 2, "tenant": "a", "vector": [1, 2]}\n')
    with pytest.raises(InvalidArgumentError, match="row 1: a vector of 2 values"):
        bulk.import_file(col, ragged)
    grants = tmp_path / "grants.jsonl"
    grants.write_text('{"id": 1, "tenant": "a", "grants": "bob", "vector": [1, 2, 3, 4, 5, 6, 7, 8]}\n')
    with pytest.raises(InvalidArgumentError, match="grants must be a list of tenant names"):
        bulk.import_file(col, grants)
    no_owner = tmp_path / "plain.npy"
    np.save(no_owner, np.ones((4, DIM), np.float32))
    with pytest.raises(InvalidArgumentError, match="give a tenant"):
        bulk.import_file(col, no_owner)
    with pytest.raises(InvalidArgumentError, match="unknown format"):
        bulk.import_file(col, tmp_path / "rows.csv")
    assert col.count() == 0


def test_a_plain_npy_takes_ids_from_positions(tmp_path):
    db = curator.open(":memory:")
    col = db.create_collection("docs", dim=DIM)
    vectors = np.random.default_rng(3).standard_normal((10, DIM)).astype(np.float32)
    np.save(tmp_path / "plain.npy", vectors)
    bulk.import_file(col, tmp_path / "plain.npy", tenant="alice", first_id=100)
    assert col.scroll(tenant="alice")[0].tolist() == list(range(100, 110))
    assert col.get(np.arange(100, 110)).tobytes() == vectors.tobytes()


def cli(*args):
    return subprocess.run([sys.executable, "-m", "curator_server", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_the_command_imports_and_exports(tmp_path):
    path = tmp_path / "rows.parquet"
    expected = parquet_file(path, n=300)
    data = tmp_path / "data"
    done = cli("import", path, "--collection", "docs", "--data", data, "--metric", "cosine", "--batch", "100")
    assert done.returncode == 0, done.stderr
    assert "imported 300 vectors" in done.stderr and "vectors/s" in done.stderr
    assert "%|" not in done.stderr  # no progress bar when stderr is not a terminal
    again = cli("import", path, "--collection", "docs", "--data", data)
    assert again.returncode == 0 and "nothing to import" in again.stderr
    out = tmp_path / "out.jsonl"
    exported = cli("export", out, "--collection", "docs", "--data", data)
    assert exported.returncode == 0, exported.stderr
    assert "exported 300 vectors" in exported.stderr
    with curator.open(str(data)) as db:
        assert_equal_to_file(db.collection("docs"), *expected)
    missing = cli("import", path, "--collection", "other", "--data", data)
    assert missing.returncode == 1 and "--metric" in missing.stderr


def test_a_killed_import_resumes(tmp_path):
    """`curator import` killed (SIGKILL) halfway, then run again: the collection equals the file."""
    import time

    path = tmp_path / "rows.parquet"
    expected = parquet_file(path, n=4000)
    data = tmp_path / "data"
    progress = bulk.progress_path(path)
    command = [sys.executable, "-m", "curator_server", "import", str(path), "--collection", "docs", "--data",
               str(data), "--metric", "l2", "--batch", "20"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if progress.exists() and json.loads(progress.read_text())["rows"] >= 400:
            break
        time.sleep(0.005)
    process.kill()
    process.wait()
    record = json.loads(progress.read_text())
    if record["done"]:
        pytest.skip("the import finished before it could be killed")
    resumed = cli("import", path, "--collection", "docs", "--data", data, "--batch", "20")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at row {record['rows']}" in resumed.stderr
    with curator.open(str(data)) as db:
        assert_equal_to_file(db.collection("docs"), *expected)


def test_npz_members_are_memory_mapped_unless_compressed(tmp_path):
    vectors = np.random.default_rng(4).standard_normal((50, DIM)).astype(np.float32)
    ids = np.arange(50, dtype=np.int64) + 7
    np.savez(tmp_path / "plain.npz", ids=ids, vectors=vectors, tenants=np.array(["alice"] * 50))
    np.savez_compressed(tmp_path / "packed.npz", ids=ids, vectors=vectors, tenants=np.array(["alice"] * 50))
    assert isinstance(bulk._npz_arrays(tmp_path / "plain.npz")["vectors"], np.memmap)
    for name in ("plain.npz", "packed.npz"):
        (rows,) = bulk.read_rows(tmp_path / name, batch=100)
        assert rows.ids.tolist() == ids.tolist() and rows.vectors.tobytes() == vectors.tobytes()
        assert rows.tenants.tolist() == ["alice"] * 50


def test_an_import_stopped_by_a_signal_ends_its_batch_and_resumes(tmp_path):
    """SIGINT: the import writes the batch it is on, records it, exits 130; a rerun finishes."""
    import signal
    import time

    path = tmp_path / "rows.jsonl"
    lines = [json.dumps({"id": i, "tenant": "alice", "payload": {"n": i}, "vector": [float(i)] * DIM})
             for i in range(4000)]
    path.write_text("\n".join(lines) + "\n")
    data = tmp_path / "data"
    progress = bulk.progress_path(path)
    command = [sys.executable, "-m", "curator_server", "import", str(path), "--collection", "docs", "--data",
               str(data), "--metric", "l2", "--batch", "20"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if progress.exists() and json.loads(progress.read_text())["rows"] >= 200:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=60)[1]
    record = json.loads(progress.read_text())
    if record["done"]:
        pytest.skip("the import finished before the signal")
    assert process.returncode == 130, stderr
    assert "stopping after this batch" in stderr and "run it again to resume" in stderr
    with curator.open(str(data)) as db:  # exactly the recorded rows are in
        assert db.collection("docs").count() == record["rows"]
    resumed = cli("import", path, "--collection", "docs", "--data", data, "--batch", "20")
    assert resumed.returncode == 0, resumed.stderr
    with curator.open(str(data)) as db:
        col = db.collection("docs")
        assert col.scroll(limit=10_000)[0].tolist() == list(range(4000))
        assert col.get_payloads([0, 3999]) == [{"n": 0}, {"n": 3999}]


def test_the_command_against_a_server(tmp_path):
    path = tmp_path / "rows.parquet"
    expected = parquet_file(path, n=300)
    server = CuratorServer(ServerConfig(data=":memory:", port=0)).start()
    try:
        done = cli("import", path, "--collection", "docs", "--server", server.address, "--metric", "l2")
        assert done.returncode == 0 and "imported 300 vectors" in done.stderr, done.stderr
        out = tmp_path / "out.npz"
        exported = cli("export", out, "--collection", "docs", "--server", server.address)
        assert exported.returncode == 0 and "exported 300 vectors" in exported.stderr, exported.stderr
        with curator.connect(server.address) as db:
            assert_equal_to_file(db.collection("docs"), *expected)
            copy = db.create_collection("copy", dim=DIM)
            bulk.import_file(copy, out)
            assert snapshot(copy) == snapshot(db.collection("docs"))
        both = cli("import", path, "--collection", "docs", "--server", server.address, "--data", tmp_path / "d")
        assert both.returncode == 2 and "--data DIR (embedded) or --server" in both.stderr
    finally:
        server.stop()
