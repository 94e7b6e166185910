"""Which shard a tenant belongs to, and where each shard's copies live: the placement map.

A tenant's shard is chosen by rendezvous hashing: every shard gets a score for the tenant (a
hash of both names) and the highest score wins. The same tenant lands on the same shard on
every front, with nothing stored per tenant; the override table names the shard of a tenant
that was moved off its hashed one. The number of shards is fixed when the cluster is created:
capacity grows by spreading the shards' copies over more nodes, not by rehashing tenants.

The map is small (a few lines of JSON) and versioned. The front keeps it in its data
directory and pushes every version to each shard copy, so that a front that lost its node
recovers it from any surviving copy (the highest version wins)."""

import hashlib
import json
import os
from dataclasses import dataclass, field


def score(tenant: str, shard: int) -> int:
    digest = hashlib.blake2b(f"{shard}\0{tenant}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass
class Placement:
    shards: int
    replicas: dict[int, list[str]] = field(default_factory=dict)  # shard -> its copies' names, primary first
    overrides: dict[str, int] = field(default_factory=dict)  # tenant -> shard, for moved tenants
    version: int = 0

    def shard_of(self, tenant: str) -> int:
        moved = self.overrides.get(tenant)
        if moved is not None:
            return moved
        return max(range(self.shards), key=lambda shard: score(tenant, shard))

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "shards": self.shards, "overrides": self.overrides,
                           "replicas": {str(s): names for s, names in self.replicas.items()}}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Placement":
        raw = json.loads(text)
        return cls(raw["shards"], {int(s): list(names) for s, names in raw["replicas"].items()},
                   dict(raw.get("overrides", {})), raw["version"])

    def save(self, path: str) -> None:
        """Write atomically (a crash leaves the old version or the new one)."""
        partial = path + ".partial"
        with open(partial, "w") as f:
            f.write(self.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)

    @classmethod
    def load(cls, path: str) -> "Placement | None":
        try:
            with open(path) as f:
                return cls.from_json(f.read())
        except FileNotFoundError:
            return None
