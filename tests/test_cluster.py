"""The cluster front (server/cluster/) on a local Ray cluster of three nodes: a node SIGKILLed
in the middle of a write load loses no acknowledged write and shows nothing half-applied, its
tenants answer again at once; a node added under load takes copies over while no call fails;
tenant keys isolate tenants through the front as on one server. (The API suites of the modules
marked `cluster` run through a front as well: tests/conftest.py.)"""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import ray

import curator
from curator import NotFoundError, PermissionDeniedError
from curator_server.app import CuratorServer, ServerConfig
from curator_server.cluster.controller import Cluster, FrontRunning
from tests.conftest import NODE, keys_file
from tests.test_server import KEYS

DIM = 8
TENANTS = [f"tenant-{i}" for i in range(8)]


@pytest.fixture
def fleet(ray_nodes, tmp_path):
    """A cluster of its own (two shards of two copies) and a front before it."""
    cluster = Cluster(ray_nodes.address, str(tmp_path / "front-cluster"), root=str(tmp_path / "shards"),
                      name=f"fleet-{os.getpid()}-{time.monotonic_ns()}")
    front = CuratorServer(ServerConfig(data=str(tmp_path / "front"), port=0, ray="given"), cluster=cluster).start()
    try:
        yield ray_nodes, cluster, front
    finally:
        front.stop()
        cluster.close(destroy=True)


class WriteLoad:
    """Threads inserting batches of new vectors for random tenants, each remembering what was
    acknowledged and what failed."""

    def __init__(self, col, threads: int = 3):
        self.col, self.acked, self.failed, self.errors, self.times = col, [], [], [], []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]

    def _run(self, n: int) -> None:
        rng = np.random.default_rng(n)
        batch = 0
        while not self.stop.is_set():
            ids = np.arange(10, dtype=np.int64) + (n * 1_000_000 + batch * 10)
            vectors = rng.standard_normal((10, DIM)).astype(np.float32)
            tenant = TENANTS[int(rng.integers(len(TENANTS)))]
            try:
                self.col.insert(ids, vectors, tenant=tenant)
                self.acked.append((ids, vectors, tenant))
                self.times.append(time.monotonic())
            except Exception as error:  # noqa: BLE001 - checked below: nothing half-applied
                self.failed.append(ids)
                self.errors.append(error)
            batch += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


def check_model(col, load: WriteLoad) -> None:
    """Every acknowledged write is there, exactly; a failed one is there whole or not at all."""
    for ids, vectors, tenant in load.acked:
        assert col.visible_to(ids, tenant=tenant).all()
        np.testing.assert_array_equal(col.get(ids), vectors)
    for ids in load.failed:
        assert col.contains(ids).sum() in (0, ids.size)
    per_tenant = {t: 0 for t in TENANTS}
    for ids, _, tenant in load.acked:
        per_tenant[tenant] += ids.size
    assert {t: col.count(t) for t in TENANTS if per_tenant[t]} == {t: n for t, n in per_tenant.items() if n}


def busiest_worker(nodes, cluster):
    """The Ray worker node (not the head) holding the most copies, and those copies."""
    held = {}
    for shard in cluster.shards:
        for copy in shard.copies:
            held.setdefault(copy.node, []).append(copy)
    workers = [n for n in nodes.worker_nodes if n.node_id in held]
    node = max(workers, key=lambda n: len(held[n.node_id]))
    return node, held[node.node_id]


def test_a_node_killed_under_writes_loses_no_acknowledged_write(fleet):
    nodes, cluster, front = fleet
    db = curator.connect(front.address)
    col = db.create_collection("docs", DIM)
    with WriteLoad(col) as load:
        time.sleep(1.5)
        node, copies = busiest_worker(nodes, cluster)
        for copy in copies:  # the copies' processes first, then the node's own (raylet, store)
            os.kill(ray.get(copy.actor.pid.remote()), signal.SIGKILL)
        nodes.remove_node(node, allow_graceful=False)
        killed = time.monotonic()
        time.sleep(2.0)
    assert not load.errors, load.errors[:3]
    assert sum(t > killed for t in load.times) > 0  # writes went on
    # every tenant answers again, from the copies left
    rng = np.random.default_rng(9)
    for tenant in TENANTS:  # (how soon: benchmarks/cluster.py measures it; tests do not time)
        col.search(rng.standard_normal(DIM).astype(np.float32), k=3, tenant=tenant)
    check_model(col, load)
    # the lost copies are replaced on the nodes left, seeded with everything acknowledged
    deadline = time.monotonic() + 60
    while any(len(s.copies) < 2 for s in cluster.shards) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(len(s.copies) == 2 for s in cluster.shards)
    assert all(copy.node != node.node_id for s in cluster.shards for copy in s.copies)
    for shard in cluster.shards:  # each new copy alone answers what the model says
        shard.copies = shard.copies[::-1]
    check_model(col, load)
    out = subprocess.run([sys.executable, "-m", "curator_server.cli", "cluster", "status", "--address", front.address],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert all(copy.name in out.stdout for s in cluster.shards for copy in s.copies)
    nodes.add_node(**NODE)  # the session's cluster gets its third node back
    nodes.wait_for_nodes()
    db.close()


def test_a_node_added_under_load_takes_copies_and_no_call_fails(fleet):
    nodes, cluster, front = fleet
    db = curator.connect(front.address)
    col = db.create_collection("docs", DIM)
    before = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    with WriteLoad(col, threads=2) as load:
        searches, failures = [0], []

        def search():
            rng = np.random.default_rng(1)
            while not load.stop.is_set():
                tenant = TENANTS[int(rng.integers(len(TENANTS)))]
                try:
                    col.search(rng.standard_normal(DIM).astype(np.float32), k=3, tenant=tenant)
                    searches[0] += 1
                except NotFoundError:
                    pass  # a tenant with nothing written yet
                except Exception as error:  # noqa: BLE001
                    failures.append(error)

        searcher = threading.Thread(target=search)
        searcher.start()
        time.sleep(1.0)
        added = nodes.add_node(**NODE)
        nodes.wait_for_nodes()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(c.node == added.node_id for s in cluster.shards
                                                      for c in s.copies):
            time.sleep(0.2)
        time.sleep(1.0)
        load.stop.set()
        searcher.join()
    assert added.node_id not in before
    assert any(c.node == added.node_id for s in cluster.shards for c in s.copies), cluster.status()
    assert not load.errors and not failures, (load.errors + failures)[:3]
    assert searches[0] > 0
    check_model(col, load)
    nodes.remove_node(added)  # back to three nodes for the session
    db.close()


def test_tenant_keys_isolate_tenants_through_the_front(fleet, tmp_path):
    _, cluster, _ = fleet
    keys = keys_file(tmp_path / "keys.toml", {"alice-app": (KEYS["alice"], ["alice"]),
                                              "carol-app": (KEYS["bob"], ["carol"]), "ops": (KEYS["admin"], None)})
    front = CuratorServer(ServerConfig(data=str(tmp_path / "secured"), port=0, keys=keys, ray="given"),
                          cluster=cluster).start()
    admin = curator.connect(front.address, api_key=KEYS["admin"])
    alice = curator.connect(front.address, api_key=KEYS["alice"])
    carol = curator.connect(front.address, api_key=KEYS["bob"])
    try:
        admin.create_collection("docs", DIM)
        assert cluster.placement.shard_of("alice") != cluster.placement.shard_of("carol")
        rng = np.random.default_rng(0)
        mine = rng.standard_normal((20, DIM)).astype(np.float32)
        alice.collection("docs").insert(np.arange(20), mine, tenant="alice")
        carol.collection("docs").insert(np.arange(100, 120), mine + 0.01, tenant="carol")
        found = alice.collection("docs").search(mine[0], k=5, tenant="alice")
        assert set(found.ids.tolist()) <= set(range(20))
        with pytest.raises(PermissionDeniedError):
            carol.collection("docs").search(mine[0], k=5, tenant="alice")
        assert admin.collection("docs").count() == 40
        admin.collection("docs").grant([0, 1], tenant="carol")  # across shards: a copy on carol's
        assert {0, 1} <= set(carol.collection("docs").search(mine[0], k=25, tenant="carol").ids.tolist())
        assert admin.collection("docs").count() == 40  # a copy is not a new vector
        assert admin.collection("docs").tenants_of(0) == ["alice", "carol"]
        assert carol.collection("docs").owners([0, 100]) == ["", "carol"]  # another's owner is not named
        with pytest.raises(PermissionDeniedError):  # only the owner overwrites, on any shard
            carol.collection("docs").upsert([0], mine[:1], tenant="carol")
        alice.collection("docs").upsert([0], mine[:1] * 2, tenant="alice")  # the owner's write reaches the copy
        np.testing.assert_array_equal(carol.collection("docs").get([0]), mine[:1] * 2)
    finally:
        for db in (alice, carol, admin):
            db.close()
        front.stop()


def filled_cluster(ray_nodes, tmp_path, name: str, directory: str, share: bool = False):
    """A cluster named `name` whose front keeps its map in `directory`, five vectors written for
    each tenant (and, with `share`, two of tenant-0's granted to tenant-3, on the other shard);
    its front stopped. Returns the cluster and each tenant's ids."""
    cluster = Cluster(ray_nodes.address, directory, root=str(tmp_path / "shards"), name=name)
    front = CuratorServer(ServerConfig(data=str(tmp_path / "front"), port=0, ray="given"), cluster=cluster).start()
    db = curator.connect(front.address)
    col = db.create_collection("docs", DIM)
    rng = np.random.default_rng(3)
    for n, tenant in enumerate(TENANTS):
        col.insert(np.arange(5) + 10 * n, rng.standard_normal((5, DIM)).astype(np.float32), tenant=tenant)
    if share:
        col.grant([0, 1], tenant=TENANTS[3])
    expected = {t: col.scroll(tenant=t)[0].tolist() for t in TENANTS}
    db.close()
    front.stop()
    return cluster, expected


def test_a_front_that_lost_its_directory_takes_its_cluster_back(ray_nodes, tmp_path):
    """The placement map and the cluster's key live in every copy too: a front started on an
    empty directory (its node was lost) finds the copies of its cluster by name and serves
    everything acknowledged before; second copies are seeded again from the first."""
    name = f"restart-{os.getpid()}-{time.monotonic_ns()}"
    first, expected = filled_cluster(ray_nodes, tmp_path, name, str(tmp_path / "lost"), share=True)
    first.close()  # the front goes; its copies keep serving
    again = Cluster(ray_nodes.address, str(tmp_path / "empty"), root=str(tmp_path / "shards"), name=name)
    try:
        assert again.placement.version >= first.placement.version and again.key == first.key
        front = CuratorServer(ServerConfig(data=str(tmp_path / "front-new"), port=0, ray="given"), cluster=again).start()
        db = curator.connect(front.address)
        col = db.collection("docs")
        assert {t: col.scroll(tenant=t)[0].tolist() for t in TENANTS} == expected
        deadline = time.monotonic() + 60
        while any(len(s.copies) < 2 for s in again.shards) and time.monotonic() < deadline:
            time.sleep(0.2)
        for shard in again.shards:  # the re-seeded copies alone
            shard.copies = shard.copies[::-1]
        assert {t: col.scroll(tenant=t)[0].tolist() for t in TENANTS} == expected
        assert col.count() == 5 * len(TENANTS)
        db.close()
        front.stop()
    finally:
        again.close(destroy=True)


def test_copies_whose_processes_all_died_are_served_again_from_their_disks(ray_nodes, tmp_path):
    """Every copy's process gone at once (the Ray cluster restarted, say), their nodes' disks
    kept: a front started again opens each copy where its data is, and serves what was acknowledged."""
    name = f"reopen-{os.getpid()}-{time.monotonic_ns()}"
    first, expected = filled_cluster(ray_nodes, tmp_path, name, str(tmp_path / "front-cluster"))
    first.close()
    for shard in first.shards:
        for copy in shard.copies:
            ray.kill(copy.actor, no_restart=True)  # processes gone, disks kept
    again = Cluster(ray_nodes.address, str(tmp_path / "front-cluster"), root=str(tmp_path / "shards"), name=name)
    try:
        assert all(shard.copies for shard in again.shards)
        front = CuratorServer(ServerConfig(data=str(tmp_path / "front"), port=0, ray="given"), cluster=again).start()
        db = curator.connect(front.address)
        assert {t: db.collection("docs").scroll(tenant=t)[0].tolist() for t in TENANTS} == expected
        db.close()
        front.stop()
    finally:
        again.close(destroy=True)


def test_a_second_front_for_a_cluster_is_refused_while_the_first_serves(ray_nodes, tmp_path):
    """Two fronts would order writes differently on the copies: the second is refused, saying
    who holds the cluster, and starts once the first has gone."""
    name = f"lease-{os.getpid()}-{time.monotonic_ns()}"
    first = Cluster(ray_nodes.address, str(tmp_path / "first"), root=str(tmp_path / "shards"), name=name)
    try:
        with pytest.raises(FrontRunning, match=f"cluster '{name}' already has a front \\(pid {os.getpid()} on "):
            Cluster(ray_nodes.address, str(tmp_path / "second"), root=str(tmp_path / "shards"), name=name)
    finally:
        first.close()
    again = Cluster(ray_nodes.address, str(tmp_path / "first"), root=str(tmp_path / "shards"), name=name)
    again.close(destroy=True)


def test_a_killed_fronts_successor_starts_and_a_second_front_is_turned_away(ray_nodes, tmp_path):
    """`curator serve --ray`, as an operator runs it: a second front for a served cluster exits
    saying why; once the first is SIGKILLed, a front started on a new directory takes the
    cluster back and serves what was acknowledged."""
    from curator_loadtest.server import ManagedServer

    name = f"serve-{os.getpid()}-{time.monotonic_ns()}"
    args = ("--ray", ray_nodes.address, "--cluster-name", name, "--shard-root", str(tmp_path / "shards"))
    first = ManagedServer(durability="sync", extra_args=args).start()
    try:
        col = curator.connect(first.address).create_collection("docs", DIM)
        ids = col.insert(None, np.ones((3, DIM), np.float32), tenant="tenant-0")
        second = subprocess.run([sys.executable, "-m", "curator_server", "serve", "--data", str(tmp_path / "d2"),
                                 "--port", "0", *args], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and f"cluster '{name}' already has a front (pid {first.pid}" in second.stderr
        os.kill(first.pid, signal.SIGKILL)
        first.process.wait()
    finally:
        first.stop()
    successor = ManagedServer(durability="sync", extra_args=args).start()
    try:
        db = curator.connect(successor.address)
        assert sorted(db.collection("docs").scroll(tenant="tenant-0")[0].tolist()) == sorted(ids.tolist())
        db.close()
    finally:
        successor.stop()
    Cluster(ray_nodes.address, str(tmp_path / "cleanup"), root=str(tmp_path / "shards"), name=name).close(destroy=True)
