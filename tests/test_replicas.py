"""Read replicas (server/replicas.py): readers answer exactly as their primary after every
acknowledged write, refuse what is not theirs to answer, are replaced when they die, and the SDK
spreads searches over them without a caller noticing a death. Real processes on loopback."""

import os
import random
import signal
import threading
import time
import urllib.request

import numpy as np
import pytest

import curator
from curator_loadtest.server_metrics import scrape_requests
from curator.errors import CuratorError, NotFoundError, PermissionDeniedError
from curator_server.app import CuratorServer, ServerConfig
from curator_server.replicas import READY, REPLICATION, SECRET_ENV, Replicas

from conftest import keys_file

DIM = 8
READY_SECONDS = 90.0  # a liveness bound for processes to start, not a measurement


def ready_ports(server: CuratorServer, n: int, incarnation: int = 1) -> list[int]:
    """The ports of n ready readers (of at least this incarnation: replaced that many times, less one)."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        ports = [r["port"] for r in server.replicas.status() if r["state"] == "ready" and r["incarnation"] >= incarnation]
        if len(ports) >= n:
            return ports
        time.sleep(0.05)
    raise AssertionError(f"{n} readers not ready within {READY_SECONDS} s: {server.replicas.status()}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server = CuratorServer(ServerConfig(data=str(tmp_path_factory.mktemp("primary") / "d"), port=0, readers=2)).start()
    try:
        ready_ports(server, 2)
        yield server
    finally:
        server.stop()


def answers(db, name: str, tenants: list[str], ids: np.ndarray, queries: np.ndarray) -> dict:
    """Everything a client can read of a collection (or the error it gets), to compare two processes."""
    col = db.collection(name)

    def read(call):
        try:
            value = call()
        except CuratorError as error:
            return type(error).__name__, str(error)
        return value.tolist() if isinstance(value, np.ndarray) else value

    out = {"count": col.count(), "scroll": col.scroll(limit=100_000)[0].tolist(),
           "contains": col.contains(ids).tolist(), "tenants": sorted(col.tenants())}
    for t in tenants:
        out[t] = [read(lambda: col.count(tenant=t)), read(lambda: col.visible_to(ids, tenant=t)),
                  read(lambda: col.owned(ids, tenant=t)),
                  read(lambda: col.search(queries[0], 5, tenant=t, filter={"colour": "red"}, ef=100_000).ids)]
        out[t] += [read(lambda q=q: col.search(q, 5, tenant=t, ef=100_000).ids) for q in queries]
    present = ids[col.contains(ids)]
    out["payloads"] = read(lambda: col.get_payloads(present))
    out["vectors"] = read(lambda: col.get(present))
    out["tenants_of"] = [sorted(col.tenants_of(int(i))) for i in present[:10]]
    return out


def test_readers_answer_as_their_primary_after_every_acknowledged_write(served):
    rng = np.random.default_rng(7)
    primary = curator.connect(served.address, readers=False)
    readers = [curator.connect(f"127.0.0.1:{port}", readers=False) for port in ready_ports(served, 2)]
    col = primary.create_collection("model", DIM)
    tenants, ids = ["a", "b", "c", "d"], []
    queries = rng.random((3, DIM), np.float32)
    for step in range(60):
        op = rng.choice(["insert", "drawn", "upsert", "grant", "revoke", "delete", "payloads", "drop", "create"])
        tenant = str(rng.choice(tenants))
        known = np.array(ids, np.int64)
        pick = known[rng.random(known.size) < 0.3] if known.size else known
        try:
            if op == "insert":
                new = np.arange(step * 100, step * 100 + 20, dtype=np.int64)
                col.insert(new, rng.random((20, DIM), np.float32), tenant=tenant,
                           payloads=[{"colour": str(rng.choice(["red", "blue"]))} for _ in range(20)])
                ids += new.tolist()
            elif op == "drawn":
                ids += col.insert(None, rng.random((10, DIM), np.float32), tenant=tenant).tolist()
            elif op == "upsert" and pick.size:
                col.upsert(pick, rng.random((pick.size, DIM), np.float32), tenant=tenant)
            elif op == "grant" and pick.size:
                col.grant(pick, tenant=tenant)
            elif op == "revoke" and pick.size:
                col.revoke(pick, tenant=tenant)
            elif op == "delete" and pick.size:
                col.delete(pick[:5])
            elif op == "payloads" and pick.size:
                col.set_payloads(pick, {"colour": "red"})
            elif op == "drop":
                col.drop_tenant(tenant)
            elif op == "create":
                col.create_tenant(tenant)
        except CuratorError:
            pass  # refused on the primary (not the owner, unknown tenant...): must change nothing anywhere
        if step % 6 == 5:
            probe = np.array(ids + [10**12], np.int64)
            expected = answers(primary, "model", tenants, probe, queries)
            for reader in readers:
                assert answers(reader, "model", tenants, probe, queries) == expected, f"after step {step} ({op})"
    col.train()
    expected = answers(primary, "model", tenants, np.array(ids, np.int64), queries)
    for reader in readers:
        assert answers(reader, "model", tenants, np.array(ids, np.int64), queries) == expected
    primary.drop_collection("model")
    for reader in readers:
        assert "model" not in reader.list_collections()
        reader.close()
    primary.close()


def test_concurrent_writers_leave_every_reader_equal_to_the_primary(served):
    primary = curator.connect(served.address, readers=False)
    col = primary.create_collection("concurrent", DIM)
    base = col.insert(np.arange(400), np.random.default_rng(2).random((400, DIM), np.float32), tenant="owner")

    def writer(seed: int):
        rng = np.random.default_rng(seed)
        tenant = f"t{seed}"
        for step in range(25):
            pick = rng.choice(base, 40, replace=False)
            try:
                if step % 3 == 0:
                    col.grant(pick, tenant=tenant)
                elif step % 3 == 1:
                    col.revoke(pick, tenant=tenant)
                else:
                    col.insert(None, rng.random((5, DIM), np.float32), tenant=tenant)
                # the same vectors and payloads rewritten by every thread: the last write wins, so
                # a reader that applied them in another order than the primary ends up different
                col.upsert(base[:8], np.full((8, DIM), seed * 100 + step, np.float32), tenant="owner")
                col.set_payloads(base[:8], {"colour": f"{seed}-{step}"}, tenant="owner")
            except NotFoundError:
                pass

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tenants = ["owner", "t0", "t1", "t2", "t3"]
    probe, queries = np.arange(400), np.random.default_rng(3).random((3, DIM), np.float32)
    expected = answers(primary, "concurrent", tenants, probe, queries)
    for port in ready_ports(served, 2):
        reader = curator.connect(f"127.0.0.1:{port}", readers=False)
        assert answers(reader, "concurrent", tenants, probe, queries) == expected
        reader.close()
    primary.drop_collection("concurrent")
    primary.close()


def test_a_write_is_on_every_reader_when_it_returns(served):
    primary = curator.connect(served.address, readers=False)
    col = primary.create_collection("ryw", DIM)
    readers = [curator.connect(f"127.0.0.1:{port}", readers=False).collection("ryw") for port in ready_ports(served, 2)]
    rng = np.random.default_rng(4)
    for _ in range(30):
        ids = col.insert(None, rng.random((5, DIM), np.float32), tenant="a")
        assert all(reader.contains(ids).all() for reader in readers)
        col.grant(ids, tenant="b")
        assert all(reader.visible_to(ids, tenant="b").all() for reader in readers)
        col.revoke(ids, tenant="b")
        assert not any(reader.visible_to(ids, tenant="b").any() for reader in readers)
    primary.drop_collection("ryw")
    primary.close()


def test_writes_reach_readers_in_the_order_the_primary_applied_them(tmp_path):
    """A write returns from the engine some time after it was applied (its fsync): writes to one
    collection must still be queued for the readers in the order they were applied."""
    replicas = Replicas(None, 0, None, str(tmp_path / "d"), "127.0.0.1", None)

    class Recorder:  # stands for a reader: keeps what it is sent
        sent = []

        def send(self, write):
            self.sent.append(write)

    replicas._readers.append(Recorder())
    applied, engine = [], threading.Lock()

    def local(i: int) -> int:
        with engine:
            applied.append(i)
        time.sleep(random.random() / 1000)  # its fsync, after the engine let the next write in
        return i

    threads = [threading.Thread(target=lambda i=i: replicas.write("c", lambda: local(i), lambda r, _: r))
               for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [write(None) for write in Recorder.sent] == applied


def test_a_reader_refuses_writes_and_names_its_primary(served):
    port = ready_ports(served, 2)[0]
    admin = curator.connect(served.address, readers=False)
    admin.create_collection("refusals", DIM)
    reader = curator.connect(f"127.0.0.1:{port}", readers=False)
    col = reader.collection("refusals")
    with pytest.raises(CuratorError, match=f"read replica.*primary at {served.address}"):
        col.insert(None, np.zeros((1, DIM), np.float32), tenant="a")
    with pytest.raises(CuratorError, match="read replica"):
        reader.cache.lookup("a", "hello")
    assert col.count() == 0 and admin.collection("refusals").count() == 0
    admin.drop_collection("refusals")
    admin.close(), reader.close()


def test_a_reader_answers_nothing_until_its_primary_says_it_is_ready(tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    seed = curator.open(str(tmp_path / "d"))
    seed.create_collection("c", DIM).insert(None, np.ones((3, DIM), np.float32), tenant="a")
    seed.close()
    server = CuratorServer(ServerConfig(data=str(tmp_path / "d"), port=0, replica_of="127.0.0.1:1")).start()
    try:
        outsider = curator.connect(server.address, readers=False, retries=0)
        with pytest.raises(CuratorError, match="UNAVAILABLE.*catching up"):
            outsider.collection("c")
        wrong = curator.connect(server.address, readers=False, retries=0, metadata=((REPLICATION, "guess"), (READY, "1")))
        with pytest.raises(CuratorError, match="UNAVAILABLE"):
            wrong.server_info()
        assert not server.guard.ready
        curator.connect(server.address, readers=False, metadata=((REPLICATION, "s3cret"), (READY, "1"))).server_info()
        assert outsider.collection("c").count(tenant="a") == 3
    finally:
        server.stop()


def test_searches_go_on_while_a_reader_dies_and_its_successor_has_every_acknowledged_write(tmp_path):
    server = CuratorServer(ServerConfig(data=str(tmp_path / "d"), port=0, readers=1, metrics_port=0)).start()
    try:
        ready_ports(server, 1)
        db = curator.connect(server.address)
        col = db.create_collection("c", DIM)
        rng = np.random.default_rng(1)
        acked = col.insert(None, rng.random((200, DIM), np.float32), tenant="t").tolist()
        col = db.collection("c")  # its description names the reader now
        assert db.reader_ports() == server.replicas.ready_ports()
        stop, failures, searched = threading.Event(), [], [0]

        def search():
            local = np.random.default_rng()
            while not stop.is_set():
                try:
                    assert col.search(local.random(DIM, np.float32), 3, tenant="t").ids.size == 3
                    searched[0] += 1
                except Exception as error:  # noqa: BLE001 - every failure is the test's failure
                    failures.append(error)

        def write():
            while not stop.is_set():
                acked.extend(col.insert(None, rng.random((5, DIM), np.float32), tenant="t").tolist())

        threads = [threading.Thread(target=search) for _ in range(4)] + [threading.Thread(target=write)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        (reader,) = server.replicas._readers
        os.kill(reader.process.pid, signal.SIGKILL)
        (second,) = ready_ports(server, 1, incarnation=2)
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
        assert not failures, failures[:3]
        assert searched[0] > 0
        follower = curator.connect(f"127.0.0.1:{second}", readers=False).collection("c")
        assert follower.contains(np.array(acked)).all()
        assert follower.count() == db.collection("c").count() == len(acked)
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read().decode()
        assert 'curator_readers{state="ready"} 1.0' in scraped
        assert 'curator_reader_incarnations{reader="0"} 2.0' in scraped
        assert 'curator_reader_metrics_port{reader="0"}' in scraped  # each reader has an endpoint of its own
        # what the primary and its reader count together is every search the clients made
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        before = scrape_requests(url)
        local = np.random.default_rng(2)
        for _ in range(60):
            col.search(local.random(DIM, np.float32), 3, tenant="t")
        after = scrape_requests(url)
        counted = sum(v - before.get(key, 0) for key, v in after.items() if key[0] in ("SearchStream", "SearchGroups",
                                                                                      "Search"))
        assert counted == 60
        assert scrape_requests(url, readers=False) != after  # the reader answered some of them
        db.close()
    finally:
        server.stop()


def test_keys_and_isolation_hold_on_readers(tmp_path):
    keys = keys_file(tmp_path / "keys.toml", {"admin": ("k-admin", None), "alice": ("k-alice", ["alice"]),
                                              "bob": ("k-bob", ["bob"])})
    server = CuratorServer(ServerConfig(data=str(tmp_path / "d"), port=0, readers=1, keys=keys)).start()
    try:
        (port,) = ready_ports(server, 1)
        admin = curator.connect(server.address, api_key="k-admin")
        admin.create_collection("c", DIM)
        for name in ("alice", "bob"):
            own = curator.connect(server.address, api_key=f"k-{name}").collection("c")
            own.insert(None, np.random.default_rng(0).random((20, DIM), np.float32), tenant=name)
        on_reader = curator.connect(f"127.0.0.1:{port}", api_key="k-alice", readers=False).collection("c")
        assert on_reader.count(tenant="alice") == 20
        with pytest.raises(PermissionDeniedError):
            on_reader.search(np.zeros(DIM, np.float32), 3, tenant="bob")
        keyless = curator.connect(f"127.0.0.1:{port}", readers=False, retries=0)
        with pytest.raises(CuratorError, match="UNAUTHENTICATED|key"):
            keyless.collection("c")
    finally:
        server.stop()


def test_readers_stop_when_their_primary_is_killed(tmp_path):
    import subprocess
    import sys

    import psutil

    from curator_loadtest.server import free_port

    port = free_port()
    primary = subprocess.Popen([sys.executable, "-m", "curator_server", "serve", "--data", str(tmp_path / "d"),
                                "--port", str(port), "--readers", "1"], stderr=subprocess.DEVNULL)
    try:
        deadline, readers = time.monotonic() + READY_SECONDS, []
        while not readers:
            assert time.monotonic() < deadline, "no reader started"
            readers = [c for c in psutil.Process(primary.pid).children() if "--replica-of" in c.cmdline()]
            time.sleep(0.05)
        primary.kill()
        primary.wait()
        gone, alive = psutil.wait_procs(readers, timeout=30)
        assert not alive, "a reader outlived its primary"
        # started again on the same data, over what the killed one left in <data>-readers
        server = CuratorServer(ServerConfig(data=str(tmp_path / "d"), port=0, readers=1)).start()
        try:
            ready_ports(server, 1)
        finally:
            server.stop()
    finally:
        primary.kill()
        for child in psutil.Process().children(recursive=True):
            if "--replica-of" in " ".join(child.cmdline()):
                child.kill()


def test_the_asyncio_sdk_spreads_searches_and_outlives_a_reader(tmp_path):
    import asyncio

    from curator_client import aio

    server = CuratorServer(ServerConfig(data=str(tmp_path / "d"), port=0, readers=1)).start()
    try:
        ready_ports(server, 1)

        async def run():
            db = await aio.connect(server.address)
            col = await db.create_collection("c", DIM)
            await col.insert(np.arange(100), np.random.default_rng(5).random((100, DIM), np.float32), tenant="a")
            col = await db.collection("c")
            assert db.reader_ports() == server.replicas.ready_ports()
            query = np.full(DIM, 0.5, np.float32)
            expected = (await col.search(query, 5, tenant="a", ef=100_000)).ids.tolist()
            answers = await asyncio.gather(*[col.search(query, 5, tenant="a", ef=100_000) for _ in range(20)])
            assert all(r.ids.tolist() == expected for r in answers)
            (reader,) = server.replicas._readers
            os.kill(reader.process.pid, signal.SIGKILL)
            reader.process.wait()
            answers = await asyncio.gather(*[col.search(query, 5, tenant="a", ef=100_000) for _ in range(20)])
            assert all(r.ids.tolist() == expected for r in answers)  # the server answered for the dead reader
            await db.close()

        asyncio.run(run())
    finally:
        server.stop()


def test_tenant_states_quotas_and_archive_imports_reach_the_readers(served, tmp_path):
    primary = curator.connect(served.address, readers=False)
    col = primary.create_collection("states", DIM)
    rng = np.random.default_rng(6)
    for tenant in ("a", "b"):
        col.insert(None, rng.random((30, DIM), np.float32), tenant=tenant)
    col.offload_tenant("a")
    col.deactivate_tenant("b")
    primary.set_quota("q", vectors=5)
    with pytest.raises(CuratorError):
        col.insert(None, rng.random((6, DIM), np.float32), tenant="q")  # refused on the primary: sent nowhere
    col.insert(None, rng.random((5, DIM), np.float32), tenant="q")
    primary.create_collection("states-copy", DIM)
    primary.import_tenant(primary.export_tenant("b", collection="states"), tenant="copy", collection="states-copy")
    readers = [curator.connect(f"127.0.0.1:{port}", readers=False) for port in ready_ports(served, 2)]
    query = rng.random(DIM, np.float32)
    for reader in readers:
        for name, tenants in (("states", ("a", "b", "q")), ("states-copy", ("copy",))):
            here, there = primary.collection(name), reader.collection(name)
            for tenant in tenants:
                assert there.count(tenant=tenant) == here.count(tenant=tenant) > 0
                assert there.search(query, 5, tenant=tenant, ef=100_000).ids.tolist() == \
                    here.search(query, 5, tenant=tenant, ef=100_000).ids.tolist()
            assert there.count() == here.count()
        reader.close()
    primary.drop_collection("states")
    primary.drop_collection("states-copy")
    primary.close()
