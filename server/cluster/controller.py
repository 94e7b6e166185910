"""The cluster's control loop, run by the front: shards' copies placed on Ray nodes, lost copies
replaced, copies moved onto new nodes, and the placement map kept durable.

Ray gives membership (`ray.nodes()`), placement (each copy is an actor pinned to the node this
loop chose) and process supervision; what is Curator's own is the choice of nodes and how a
copy is seeded: a snapshot of a ready copy of the same shard (RocksDB checkpoint, sent through
Ray's object store to the new node) taken while the shard's writes wait, so that the new copy
starts equal to the others and every write after it reaches it."""

import logging
import os
import secrets
import socket
import threading
import time
from collections import Counter

import grpc
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .host import ShardHost
from .placement import Placement
from .shard import Copy, Shard

log = logging.getLogger("curator.cluster")
NAMESPACE = "curator"
PING_SECONDS = 0.5  # between health checks of every copy
PING_TIMEOUT = 1.0
MISSED_PINGS = 3  # a copy that answers none of this many pings in a row is lost
START_SECONDS = 60.0  # a new copy's process start, and its seeding
SUSPECT_SECONDS = 60.0  # a node that lost a copy takes no new one for this long
LEASE_WAIT_SECONDS = 30.0  # for the lease of a front that ended to be freed


class FrontRunning(ValueError):
    """Another front serves this cluster: two would order writes differently on the copies."""


@ray.remote(num_cpus=0)
class FrontLease:
    """The one front of a cluster holds it: a named actor that lives as long as the front's
    process (Ray ends an actor when the process that made it ends), so a second front started
    for the same cluster is refused while the first lives, and a restarted one is not."""

    def __init__(self, holder: str):
        self._holder = holder

    def holder(self) -> str:
        return self._holder


class Cluster:
    def __init__(self, address: str, data: str, *, shards: int = 2, copies: int = 2, root: str | None = None,
                 settings: dict | None = None, name: str = "curator", cpus: float = 0.0):
        self.name, self.copies_wanted, self.root, self.cpus = name, copies, root, cpus
        self.settings = settings or {}
        if not ray.is_initialized():
            ray.init(address=None if address == "local" else address, namespace=NAMESPACE, log_to_driver=False,
                     logging_level=logging.WARNING)
        self._lease = self._take_lease()
        try:
            self._start(data, shards)
        except BaseException:
            ray.kill(self._lease, no_restart=True)
            raise

    def _take_lease(self):
        name, holder = f"front-lease:{self.name}", f"pid {os.getpid()} on {socket.gethostname()}"
        deadline = time.monotonic() + LEASE_WAIT_SECONDS
        while True:
            try:
                lease = FrontLease.options(name=name, namespace=NAMESPACE).remote(holder)
                ray.get(lease.holder.remote(), timeout=START_SECONDS)
                return lease
            except ValueError:  # the name is taken: by a live front, or one whose end Ray has not seen yet
                try:
                    other = ray.get(ray.get_actor(name, NAMESPACE).holder.remote(), timeout=10)
                except Exception:  # noqa: BLE001 - it ended: its name is free shortly
                    other = None
                if other is not None or time.monotonic() > deadline:
                    raise FrontRunning(f"cluster {self.name!r} already has a front ({other or 'stopping'}); a "
                                       "cluster takes one front: stop that one first, or name another cluster "
                                       "(--cluster-name)") from None
                time.sleep(0.2)

    def _start(self, data: str, shards: int) -> None:
        os.makedirs(data, mode=0o700, exist_ok=True)
        self._placement_path = os.path.join(data, "placement.json")
        self._key_path = os.path.join(data, "cluster.key")
        self.placement = Placement.load(self._placement_path)
        recovered_key = None
        if self.placement is None:
            self.placement, recovered_key = self._recovered()
        self.key = self._key(recovered_key)
        self.placement = self.placement or Placement(shards)
        self.shards = [Shard(i, self._lost) for i in range(self.placement.shards)]
        self._lock = threading.RLock()  # placement changes, repairs
        self._serial = int(time.time() * 1000)
        self._missed: Counter = Counter()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._retiring: list[tuple[Shard, Copy]] = []  # copies that failed a call, for the loop to retire
        self._suspect: dict[str, float] = {}  # node -> when it last lost a copy
        self._health: dict[str, tuple] = {}  # copy name -> (channel, health stub) for its pings
        self._reattach()
        for shard in self.shards:
            while len(shard.copies) < self.copies_wanted and self._add_copy(shard):
                pass
        self._save()
        self._thread = threading.Thread(target=self._loop, name="curator-cluster", daemon=True)
        self._thread.start()

    # -- routing ----------------------------------------------------------------------------------

    def shard_of(self, tenant: str) -> Shard:
        return self.shards[self.placement.shard_of(tenant)]

    # -- the placement map ------------------------------------------------------------------------

    def _key(self, recovered: str | None) -> str:
        """The cluster's internal admin key: the front's calls to its copies carry it. Kept in
        the front's data directory; a front that lost it takes it back from a copy."""
        try:
            with open(self._key_path) as f:
                return f.read().strip()
        except FileNotFoundError:
            key = recovered or "cluster-" + secrets.token_urlsafe(32)
            descriptor = os.open(self._key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as f:
                f.write(key)
            return key

    def _actor_name(self, copy_name: str) -> str:
        return f"{self.name}/{copy_name}"

    def _recovered(self) -> tuple[Placement | None, str | None]:
        """The newest placement map any live copy of this cluster holds, and the cluster's key
        (the front lost its data directory)."""
        best, key = None, None
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry.get("namespace") != NAMESPACE or not entry["name"].startswith(self.name + "/"):
                continue
            try:
                actor = ray.get_actor(entry["name"], NAMESPACE)
                text, found_key = ray.get([actor.placement.remote(), actor.cluster_key.remote()], timeout=10)
            except Exception:
                continue
            if text:
                found = Placement.from_json(text)
                if best is None or found.version > best.version:
                    best, key = found, found_key
        return best, key

    def _reattach(self) -> None:
        """Take back the copies the placement map names: those that still serve (a restarted
        front), else those a node's disk kept (the Ray cluster itself was restarted)."""
        for shard in self.shards:
            for copy_name in self.placement.replicas.get(shard.number, []):
                try:
                    actor = ray.get_actor(self._actor_name(copy_name), NAMESPACE)
                    address = ray.get(actor.address.remote(), timeout=10)
                    node = ray.get(actor.node.remote(), timeout=10)
                except Exception:
                    copy = self._reopen(shard, copy_name)
                    if copy is None:
                        log.warning("copy %s of shard %d is gone", copy_name, shard.number)
                    continue
                if address:
                    shard.add(Copy(copy_name, actor, node, address, self.key).connect())
        # copies of one shard may differ by a write the old front did not acknowledge: the first
        # copy is kept, the others are seeded again from it
        for shard in self.shards:
            for copy in shard.copies[1:]:
                self._retire(shard, copy)

    def _save(self) -> None:
        with self._lock:
            # a shard with no copy left keeps the names of its last ones: never replaced by an empty copy
            self.placement.replicas = {s.number: [c.name for c in s.copies] or self.placement.replicas.get(s.number, [])
                                       for s in self.shards}
            self.placement.version += 1
            self.placement.save(self._placement_path)
            text = self.placement.to_json()
            refs = [copy.actor.save_placement.remote(text) for s in self.shards for copy in s.copies]
        try:
            ray.get(refs, timeout=10)
        except Exception:
            log.warning("a copy did not take the placement map (it is being replaced)")

    # -- copies -----------------------------------------------------------------------------------

    def nodes(self) -> list[dict]:
        """Live nodes that may take a copy: Ray says alive (it notices a dead node only after its
        heartbeats time out), and none of their copies was lost in the last SUSPECT_SECONDS."""
        now = time.monotonic()
        return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= self.cpus
                and now - self._suspect.get(n["NodeID"], -SUSPECT_SECONDS) >= SUSPECT_SECONDS]

    def _choose_node(self, shard: Shard, avoid=()) -> str | None:
        """The live node with the fewest copies that holds none of this shard's."""
        load = Counter(copy.node for s in self.shards for copy in s.copies)
        taken = {copy.node for copy in shard.copies} | set(avoid)
        free = [n["NodeID"] for n in self.nodes() if n["NodeID"] not in taken]
        return min(free, key=lambda node: (load[node], node)) if free else None

    def _add_copy(self, shard: Shard, node: str | None = None) -> Copy | None:
        """A new copy of `shard` on `node` (or the best node), seeded from a ready copy; None when
        no node can take it or no copy can seed it."""
        node = node or self._choose_node(shard)
        if node is None:
            return None
        self._serial += 1
        copy_name = f"shard{shard.number}-{self._serial}"
        actor = self._host(copy_name, node)
        try:
            ray.get(actor.pid.remote(), timeout=START_SECONDS)  # the process is up (outside the shard's lock)
            with shard.lock:  # no write meanwhile: the snapshot and every later write reach the copy
                seed = shard.copies[0].actor.snapshot.remote() if shard.copies else None
                if seed is None and self.placement.version > 0 and self._ever_had_data(shard):
                    raise RuntimeError(f"shard {shard.number} has no copy left to seed from")
                address = ray.get(actor.start.remote(seed), timeout=START_SECONDS)
                copy = Copy(copy_name, actor, node, address, self.key).connect()
                shard.add(copy)
        except Exception:
            log.exception("could not start a copy of shard %d on node %s", shard.number, node)
            ray.kill(actor, no_restart=True)
            return None
        log.info("shard %d: copy %s on node %s at %s", shard.number, copy_name, node[:8], address)
        return copy

    def _reopen(self, shard: Shard, copy_name: str) -> Copy | None:
        """The copy `copy_name` served again from the first live node whose disk kept its data."""
        for node in [n["NodeID"] for n in self.nodes()]:
            actor = self._host(copy_name, node)
            try:
                address = ray.get(actor.start.remote(None, True), timeout=START_SECONDS)
            except Exception:
                address = None
            if address is None:
                ray.kill(actor, no_restart=True)
                continue
            copy = Copy(copy_name, actor, node, address, self.key).connect()
            shard.add(copy)
            log.info("shard %d: copy %s served again from node %s's disk", shard.number, copy_name, node[:8])
            return copy
        return None

    def _host(self, copy_name: str, node: str):
        """A new actor to host copy `copy_name`, on `node`."""
        return ray.remote(ShardHost).options(
            name=self._actor_name(copy_name), namespace=NAMESPACE, lifetime="detached", max_restarts=0,
            num_cpus=self.cpus, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        ).remote(copy_name, self.root or "", self.key, self.settings)

    def _ever_had_data(self, shard: Shard) -> bool:
        return bool(self.placement.replicas.get(shard.number))

    def _retire(self, shard: Shard, copy: Copy) -> None:
        """Take a copy out of service and remove its data (moved, diverged or unreachable)."""
        shard.remove(copy)
        copy.close()
        channel, _ = self._health.pop(copy.name, (None, None))
        if channel is not None:
            channel.close()
        try:
            ray.get(copy.actor.stop.remote(True), timeout=10)
        except Exception:
            pass
        try:
            ray.kill(copy.actor, no_restart=True)
        except Exception:
            pass

    def _lost(self, shard: Shard, copy: Copy) -> None:
        """A copy failed a call: the loop replaces it (never on the caller's thread)."""
        log.warning("shard %d lost copy %s (node %s)", shard.number, copy.name, copy.node[:8])
        self._suspect[copy.node] = time.monotonic()
        self._retiring.append((shard, copy))
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(PING_SECONDS)
            self._wake.clear()
            try:
                self._tick()
            except Exception:
                log.exception("cluster loop")

    def _tick(self) -> None:
        while self._retiring:
            shard, copy = self._retiring.pop()
            threading.Thread(target=self._retire, args=(shard, copy), daemon=True).start()
        for shard in self.shards:
            for copy in shard.copies:
                if self._ping(copy):
                    self._missed.pop(copy.name, None)
                else:
                    self._missed[copy.name] += 1
                    if self._missed[copy.name] >= MISSED_PINGS:
                        shard.lost(copy)
        changed = False
        for shard in self.shards:
            if len(shard.copies) < self.copies_wanted and shard.copies and self._add_copy(shard):
                changed = True
        changed |= self._rebalance()
        if changed:
            self._save()

    def _ping(self, copy: Copy) -> bool:
        """A health check of the copy, on a channel kept open for its pings."""
        if copy.name not in self._health:
            channel = grpc.insecure_channel(copy.address)
            self._health[copy.name] = channel, health_pb2_grpc.HealthStub(channel)
        _, stub = self._health[copy.name]
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=PING_TIMEOUT)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def _rebalance(self) -> bool:
        """Move one copy from the busiest node to an emptier one (a node that joined), if that
        evens the load by at least two; one move a tick, writes continue meanwhile."""
        load = Counter({n["NodeID"]: 0 for n in self.nodes()})
        for s in self.shards:
            for copy in s.copies:
                if copy.node in load:
                    load[copy.node] += 1
        if len(load) < 2:
            return False
        busiest, idle = max(load, key=load.get), min(load, key=load.get)
        if load[busiest] - load[idle] < 2:
            return False
        for shard in self.shards:
            moving = next((c for c in shard.copies if c.node == busiest), None)
            if moving is not None and all(c.node != idle for c in shard.copies):
                if self._add_copy(shard, idle) is not None:
                    self._retire(shard, moving)
                    return True
        return False

    # -- status -----------------------------------------------------------------------------------

    def status(self) -> dict:
        nodes = {n["NodeID"]: n for n in ray.nodes()}
        return {
            "version": self.placement.version,
            "nodes": [{"id": node_id, "address": n.get("NodeManagerAddress", ""), "alive": bool(n.get("Alive")),
                       "copies": sum(c.node == node_id for s in self.shards for c in s.copies)}
                      for node_id, n in nodes.items()],
            "shards": [{"number": s.number, "copies": [{"name": c.name, "node": c.node, "address": c.address, "lag": 0}
                                                        for c in s.copies],
                        "wanted": self.copies_wanted, "tenants": self._tenants_on(s)} for s in self.shards],
        }

    def _tenants_on(self, shard: Shard) -> int:
        """Tenants placed on `shard` that hold vectors there (copies' owners from elsewhere not counted)."""
        def tenants(copy):
            names = set()
            for collection in copy.db.list_collections():
                names.update(copy.collection(collection).tenants())
            return names

        try:
            return sum(self.shard_of(t) is shard for t in shard.read(tenants))
        except Exception:
            return 0

    def close(self, *, destroy: bool = False) -> None:
        """Stop the loop and the front's connections; with `destroy`, stop every copy and remove its data."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        for shard in self.shards:
            for copy in list(shard.copies):
                if destroy:
                    self._retire(shard, copy)
                else:
                    copy.close()
        ray.kill(self._lease, no_restart=True)  # another front may serve the cluster now
