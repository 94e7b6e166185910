"""Tenant states: which tenants a collection keeps in memory, and where the others' vectors wait.

A tenant is *active* (its sub-tree built, its vectors in memory) or *inactive*: its sub-tree is
dropped and the vectors that only inactive tenants see are *evicted*, out of the in-memory index
and kept only on the collection's *shelf* (the data directory's records, or `MemoryShelf` without
one). The in-memory index holds the *resident* vectors: those at least one active tenant sees. A
vector shared by an active and an inactive tenant stays resident with both in its access list,
so revokes, drops and ownership stay exact; only the inactive tenant's sub-tree is gone.

- Deactivating t (`CuratorIndex.deactivate`) writes its *manifest*, the ids of every vector t saw
  then and the leaf of the shared tree each was in (on disk: the `I` record, STORAGE.md), drops
  its sub-tree and evicts what no active tenant sees. Evicted ids stay in the IdMap with the
  slot `EVICTED`: inserts collide with them, `get`, `get_payloads`, `tenants_of`, `visible_to`
  and `owned` answer from the shelf.
- A call that names an inactive tenant (search, count, scroll, insert, upsert, grant, revoke,
  drop; see README) wakes it first (`CuratorIndex.activate`): the manifest's ids still evicted
  and still seen by t are read back in one multi-get and placed in their leaves (the manifest's,
  when the tree is still the one they were taken from; else routed through it), the resident
  ones it still sees are found by lookup, and its sub-tree is rebuilt from both.
  While t is inactive nothing can grant it a vector (a grant names t, which wakes it), so the
  manifest always covers what t sees.
- A write that names evicted ids (an admin delete, set_payloads, a grant to an active tenant)
  brings them into memory for its duration (`load_evicted`) and the index evicts again what no
  active tenant sees afterwards (`settle`), so every write runs through the usual code.

The third state, *offloaded* (`CuratorIndex.offload`): the tenant is made inactive, then the
evicted vectors only it sees (access list exactly [t], so owned by t) leave the live store for an
archive of its own (with a data directory: a per-tenant archive file, `tenant_archive.py`'s
format, beside the directory; `MemoryShelf` keeps it in the process). Vectors it shares with
any other tenant stay where they are (resident or evicted, t still in their access lists), and
its manifest keeps only those. Its archived ids leave the IdMap: they stay known on the shelf
alone (`holders`, one key per id on disk, read with one multi-get), so an insert of one
collides, `contains`, `visible_to` and `owned` answer without restoring, and a call that needs
an archived vector (get, payloads, tenants_of, a write naming it) or names the tenant restores
it first: `activate` writes the archive's vectors back (one batch) and wakes the tenant.

Must never: keep an evicted vector's row in memory (`MemoryShelf` aside, which exists so that
states behave the same without a data directory), or wake a tenant from a read that holds the
index shared (`TenantAsleep` sends the call back to its collection, which wakes it as a write).
"""

import hashlib
from dataclasses import dataclass

import numpy as np

ACTIVE, INACTIVE, OFFLOADED = "active", "inactive", "offloaded"
STATES = (ACTIVE, INACTIVE, OFFLOADED)


@dataclass
class Manifest:
    """What an inactive tenant saw when it was deactivated: ids (ascending), the leaf of each in the
    shared tree of then, and that tree's fingerprint (`tree_key`): the leaves hold while it is
    the same tree."""

    ids: np.ndarray
    leaves: np.ndarray
    tree_key: bytes

    def encode(self) -> bytes:
        return b"i" + self.tree_key + self.ids.astype("<i8").tobytes() + self.leaves.astype("<i4").tobytes()

    @classmethod
    def decode(cls, raw: bytes) -> "Manifest":
        n = (len(raw) - 9) // 12
        return cls(np.frombuffer(raw, "<i8", n, 9).astype(np.int64),
                   np.frombuffer(raw, "<i4", n, 9 + 8 * n).astype(np.int32), raw[1:9])

    @classmethod
    def empty(cls) -> "Manifest":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int32), bytes(8))


def tree_key(tree) -> bytes:
    """A fingerprint of a shared tree (its centroids and parents): 8 bytes."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(np.ascontiguousarray(tree.centroids).tobytes())
    digest.update(np.ascontiguousarray(tree.parent).tobytes())
    return digest.digest()


@dataclass
class Shelved:
    """Evicted vectors read back from a shelf, in the order of `ids`: their rows, their access
    lists (`tenants`, `counts` long each, concatenated), owners, and the payloads of those that
    have one (`payload_rows` index into `ids`)."""

    ids: np.ndarray
    vectors: np.ndarray
    tenants: np.ndarray
    counts: np.ndarray
    owners: np.ndarray
    payload_rows: np.ndarray
    payloads: list

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64) if self.counts.size else self.counts

    def seen_by(self, t: int) -> np.ndarray:
        """For each vector, whether tenant t is in its access list."""
        seen = np.zeros(self.ids.size, bool)
        seen[np.repeat(np.arange(self.ids.size), self.counts)[self.tenants == t]] = True
        return seen

    def subset(self, rows: np.ndarray) -> "Shelved":
        """These rows (a boolean mask), in order."""
        pair_rows = np.repeat(rows, self.counts)
        keep = np.flatnonzero(rows)
        renumber = np.cumsum(rows) - 1
        kept_payloads = rows[self.payload_rows]
        return Shelved(self.ids[keep], self.vectors[keep], self.tenants[pair_rows], self.counts[keep],
                       self.owners[keep], renumber[self.payload_rows[kept_payloads]],
                       [p for p, k in zip(self.payloads, kept_payloads.tolist()) if k])

    @classmethod
    def empty(cls, dim: int) -> "Shelved":
        none = np.zeros(0, np.int64)
        return cls(none, np.zeros((0, dim), np.float32), np.zeros(0, np.int32), none, np.zeros(0, np.int32), none, [])


class MemoryShelf:
    """The shelf of a collection without a data directory: what is evicted is kept here, in this
    process. It saves no memory for vectors (inactive tenants' sub-trees are dropped all the
    same); it exists so that states, and the answers around them, are the same in memory."""

    keeps_records = True  # the index hands over what it evicts (a data directory has it already)

    def __init__(self, dim: int):
        self.dim = dim
        self._rows: dict[int, tuple] = {}  # id -> (vector, access list, owner, payload)
        self._manifests: dict[int, Manifest] = {}
        self._archives: dict[int, tuple] = {}  # offloaded tenant -> its archived vectors and their leaves
        self._holders: dict[int, int] = {}  # archived id -> its offloaded tenant

    def archive(self, t: int, shelved: Shelved, leaves: Manifest) -> None:
        self._archives[t] = (shelved, leaves)
        self._holders.update(dict.fromkeys(shelved.ids.tolist(), t))

    def archived(self, t: int) -> tuple[Shelved, Manifest]:
        return self._archives.get(t) or (Shelved.empty(self.dim), Manifest.empty())

    def unarchive(self, t: int) -> None:
        for id_ in self.archived(t)[0].ids.tolist():
            self._holders.pop(id_, None)
        self._archives.pop(t, None)

    def holders(self, ids: np.ndarray) -> np.ndarray:
        """For each id, the offloaded tenant whose archive holds it (-1: none)."""
        return np.fromiter((self._holders.get(i, -1) for i in ids.tolist()), np.int64, ids.size)

    def keep(self, shelved: Shelved) -> None:
        payloads = dict(zip(shelved.payload_rows.tolist(), shelved.payloads))
        bounds = np.concatenate([[0], np.cumsum(shelved.counts)]).tolist()
        for i, id_ in enumerate(shelved.ids.tolist()):  # the in-memory stand-in: a loop is fine here
            self._rows[id_] = (shelved.vectors[i].copy(), shelved.tenants[bounds[i] : bounds[i + 1]].copy(),
                               int(shelved.owners[i]), payloads.get(i))

    def forget(self, ids: np.ndarray) -> None:
        for id_ in ids.tolist():
            self._rows.pop(id_, None)

    def fetch(self, ids: np.ndarray) -> Shelved:
        rows = [self._rows[id_] for id_ in ids.tolist()]
        if not rows:
            return Shelved.empty(self.dim)
        with_payload = [i for i, row in enumerate(rows) if row[3]]
        return Shelved(np.asarray(ids, np.int64), np.stack([row[0] for row in rows]),
                       np.concatenate([row[1] for row in rows]).astype(np.int32),
                       np.array([row[1].size for row in rows], np.int64), np.array([row[2] for row in rows], np.int32),
                       np.array(with_payload, np.int64), [dict(rows[i][3]) for i in with_payload])

    def manifest(self, t: int) -> Manifest:
        return self._manifests.get(t) or Manifest.empty()

    def put_manifest(self, t: int, manifest: Manifest) -> None:
        self._manifests[t] = manifest

    def drop_manifest(self, t: int) -> None:
        self._manifests.pop(t, None)

    def payload_bytes(self, n_tenants: int, ids: np.ndarray) -> np.ndarray:
        """Per tenant, the payload bytes of these evicted vectors it sees (for the quota tally)."""
        from .quotas import payload_bytes

        tally = np.zeros(n_tenants, np.int64)
        for id_ in ids.tolist():
            _, tenants, _, payload = self._rows[id_]
            if payload:
                tally[tenants] += payload_bytes(payload)
        return tally
