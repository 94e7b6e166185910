"""One copy of a shard: the single-node server on its node's own disk, hosted by a Ray actor.

The actor only starts, seeds, snapshots and stops the server; calls travel to it over gRPC
from the front, like any client's, on the node's address with the cluster's internal admin
key. A copy that has to be replaced is never restarted by Ray (its disk may be gone with its
node): the front seeds a new one from a surviving copy (`snapshot` -> `start(seed)`)."""

import io
import os
import shutil
import tarfile
import tempfile

import ray


class ShardHost:
    def __init__(self, name: str, root: str, key: str, settings: dict):
        self.name, self.key, self.settings = name, key, settings
        try:  # Ray starts its workers at niceness 15, made for batch tasks; a copy serves calls
            os.setpriority(os.PRIO_PROCESS, 0, 0)
        except OSError:
            pass  # without the privilege to: it serves at the lower priority
        self.root = root or os.path.join(tempfile.gettempdir(), "curator-shards")
        self.data = os.path.join(self.root, name)
        self.server = None

    def start(self, seed: bytes | None = None, reopen: bool = False) -> str | None:
        """Serve this copy's data (a new one, `seed`: a snapshot of another copy, or with `reopen`
        what this node's disk kept of it: None if it kept nothing); its address."""
        from ..app import CuratorServer, ServerConfig
        from ..auth import key_entry

        os.makedirs(self.root, mode=0o700, exist_ok=True)
        if reopen:
            if not os.path.isdir(self.data):
                return None
        else:
            for path in (self.data, self.data + "-offloaded"):
                shutil.rmtree(path, ignore_errors=True)
        if seed is not None:
            with tarfile.open(fileobj=io.BytesIO(seed)) as archive:
                archive.extractall(self.root, filter="data")
            os.rename(os.path.join(self.root, "seed"), self.data)
            if os.path.isdir(os.path.join(self.root, "seed-offloaded")):
                os.rename(os.path.join(self.root, "seed-offloaded"), self.data + "-offloaded")
        keys = self.data + "-keys.toml"
        descriptor = os.open(keys, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as f:
            f.write(key_entry("cluster-front", self.key, [], True))
        host = self.settings.get("host") or ray.util.get_node_ip_address()
        config = ServerConfig(data=self.data, host=host, port=0, keys=keys,
                              durability=self.settings.get("durability", "sync"),
                              workers=self.settings.get("workers", 16))
        self.server = CuratorServer(config).start()
        return self.server.address

    def snapshot(self) -> bytes:
        """A consistent copy of this copy's data, as an uncompressed tar (RocksDB files compress little)."""
        scratch = tempfile.mkdtemp(dir=self.root)
        try:
            target = os.path.join(scratch, "seed")
            self.server.db.snapshot(target)
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as archive:
                archive.add(target, "seed")
                if os.path.isdir(target + "-offloaded"):
                    archive.add(target + "-offloaded", "seed-offloaded")
            return buffer.getvalue()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def address(self) -> str | None:
        return None if self.server is None else self.server.address

    def cluster_key(self) -> str:
        """The cluster's key, for a front that lost its data directory (asked over Ray, inside the cluster)."""
        return self.key

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        return os.getpid()

    def save_placement(self, text: str) -> None:
        from .placement import Placement

        Placement.from_json(text).save(self.data + "-placement.json")

    def placement(self) -> str | None:
        try:
            with open(self.data + "-placement.json") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def stop(self, forget: bool = False) -> None:
        """Stop serving; with `forget`, remove this copy's data too (it was moved or replaced)."""
        if self.server is not None:
            self.server.config.grace_seconds = 1.0
            self.server.stop()
            self.server = None
        if forget:
            for path in (self.data, self.data + "-offloaded", self.data + "-keys.toml", self.data + "-placement.json"):
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                elif os.path.exists(path):
                    os.remove(path)
