"""CuratorIndex: one collection's vectors, stored once, with the shared tree and the tenants' sub-trees.

This is the engine below the public API: it speaks user ids and tenant names, keeps the vector
store (one float32 row per vector, slots reused after deletes), trains the shared tree when
enough data has arrived and keeps it fresh, and runs searches. It does no argument checking of
its own beyond what needs its state (unknown ids, duplicates): `validate` has done the rest.

Training rule (see README, "The clustering tree"): until `train_size` vectors are stored the tree
is a single leaf and every search is exact. At `train_size` the tree is trained on the stored
vectors (at most `train_sample` of them); it is trained again when the collection has grown
`retrain_growth` times past the last training, or when vectors inserted since lie on average
`drift_limit` times farther from their leaf centroids than the training vectors did.

Tenant states (see `states.py` and README, "Tenant states"): the index holds the vectors some
active tenant sees; an inactive tenant has no sub-tree, and the vectors only inactive tenants see
are evicted to the collection's shelf (`deactivate`, `activate`, `load_evicted`, `settle`); an
offloaded tenant's own vectors are in its archive, out of the IdMap (`offload`, `activate`).
"""

import contextlib
import copy
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numba
import numpy as np

from . import codes as scalar, device, filters, handoff, planner
from . import search as kernels
from .codes import ScalarCodes
from .distance import flat_rows
from .errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, PermissionDeniedError
from .graph import Graph
from .idmap import EVICTED, IdMap
from .metric import MAX_NORM, MIN_COSINE_NORM, Metric
from .payloads import Payloads
from .states import ACTIVE, INACTIVE, OFFLOADED, Manifest, MemoryShelf, Shelved, tree_key
from .tenancy import TenantSubtrees
from .tree import ClusteringTree, TreeShape


_PARALLEL = threading.Lock()


class ExclusiveNeeded(Exception):
    """A read found work that changes the index (a tenant's sub-tree still to build after opening,
    the HNSW graph to build): its caller runs it again holding the index exclusively."""


class TenantAsleep(ExclusiveNeeded):
    """A call named an inactive tenant (`tenant`; None: a call over every vector while some are
    evicted). Nothing was changed: the caller wakes it (`activate`, a write) and calls again."""

    def __init__(self, tenant: str | None):
        super().__init__(tenant)
        self.tenant = tenant


def _always() -> bool:
    return True


@dataclass
class Retrained:
    """The index laid out over a newly trained tree, made beside the index in use (`retrained`)
    and put in its place in one step (`adopt`)."""

    tree: ClusteringTree
    vectors: np.ndarray
    inv_norm: np.ndarray
    slot_ids: np.ndarray
    owner: np.ndarray
    n_slots: int
    ids: IdMap
    payloads: Payloads
    tenancy: TenantSubtrees
    graph: Graph | None
    codes: ScalarCodes | None
    trained_count: int
    version: int  # the index's version it was made from: adopting it over a later one is a bug


@dataclass
class Change:
    """What one write did, in the user's ids, for a journal to persist.

    `written`: new vectors; `regranted`: vectors whose set of tenants changed and which live on;
    `deleted`: vectors gone; `payloads`: vectors whose payload was written; `tenants_added` /
    `tenants_dropped`: tenant numbers; `retrained`: the shared tree was (re)trained; `slept`:
    tenants made inactive, each with its manifest (the ids it sees); `woken`: tenants made active;
    `offloaded`: tenants offloaded, each with its archived vectors (out of the live store now)
    and their leaves (a manifest of the archived ids);
    `restored`: offloaded tenants brought back, each with the ids its archive held.
    """

    written: np.ndarray = field(default_factory=lambda: _NO_IDS)
    regranted: np.ndarray = field(default_factory=lambda: _NO_IDS)
    deleted: np.ndarray = field(default_factory=lambda: _NO_IDS)
    payloads: np.ndarray = field(default_factory=lambda: _NO_IDS)
    tenants_added: list[int] = field(default_factory=list)
    tenants_dropped: list[int] = field(default_factory=list)
    retrained: bool = False
    slept: dict[int, Manifest] = field(default_factory=dict)
    woken: list[int] = field(default_factory=list)
    offloaded: dict[int, tuple[Shelved, Manifest]] = field(default_factory=dict)
    restored: dict[int, np.ndarray] = field(default_factory=dict)


_NO_IDS = np.zeros(0, np.int64)
_ALL = np.zeros(0, np.uint8)  # no filter: every slot of the tenant is a candidate
_UNUSABLE = (f"the query holds NaN or infinity, is longer than {MAX_NORM:.2g} (its squared norm would overflow "
             f"float32) or is zero under cosine (shorter than {MIN_COSINE_NORM:g}); only finite vectors within "
             "those bounds are allowed")


@dataclass(frozen=True)
class IndexConfig:
    tree: TreeShape = field(default_factory=TreeShape)
    split_limit: int = 128
    ef: int = 2048
    train_size: int = 10_000
    train_sample: int = 100_000
    retrain_growth: float = 2.0
    drift_limit: float = 2.0
    # Seconds at least between two retrains a collection starts by itself (the first training is
    # never held back): inserts far from the data cannot force retrains back to back.
    retrain_interval: float = 30.0
    # The HNSW graph over the whole collection: "auto" builds it the first time a search plans
    # it and keeps it from then on; True keeps it from the start; False never builds one.
    hnsw: bool | str = "auto"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef: int = 96  # the graph's beam at the default ef on 400k vectors (less on fewer: planner.graph_beam)
    hnsw_visit_cost: float = 13.5  # a graph neighbour visit on 400k vectors, in in-order vector reads (planner.py: fitted by benchmarks/filtered.py)
    # The planner (`planner.py`) scans exactly when at most `exact_limit` vectors are allowed,
    # and otherwise picks the plan of least estimated cost.
    exact_limit: int = 256
    tree_max_tenant: int = 100_000
    # Tenant scans read one byte a dimension per candidate and measure the best exactly (codes.py);
    # False: they read the float32 rows (dim bytes a vector less memory, slower scans).
    codes: bool = True
    # Seconds a tenant may go unnamed by any call before it is made inactive (README, "Tenant
    # states"); None: never by itself.
    idle_deactivate_seconds: float | None = None

    def __post_init__(self):
        if self.split_limit < 2 or self.ef < 1 or self.train_size < 1 or not self.retrain_interval >= 0:
            raise InvalidArgumentError("split_limit must be >= 2, ef and train_size >= 1, retrain_interval >= 0")
        if self.hnsw not in (True, False, "auto"):
            raise InvalidArgumentError(f"hnsw must be true, false or \"auto\", got {self.hnsw!r}")
        if self.hnsw_m < 2 or self.hnsw_ef_construction < 1 or self.hnsw_ef < 1 or self.exact_limit < 0:
            raise InvalidArgumentError("hnsw_m must be >= 2, hnsw_ef_construction and hnsw_ef >= 1, exact_limit >= 0")
        if self.tree.branching < 2 or self.tree.leaf_size < 1:
            raise InvalidArgumentError("branching must be >= 2 and leaf_size >= 1")
        idle = self.idle_deactivate_seconds
        if idle is not None and (isinstance(idle, bool) or not isinstance(idle, (int, float)) or not 0 < idle < 1e9):
            raise InvalidArgumentError(f"idle_deactivate_seconds must be a number of seconds > 0, or None (never); "
                                       f"got {idle!r}")


class CuratorIndex:
    def __init__(self, dim: int, metric: Metric, config: IndexConfig = IndexConfig()):
        self.dim = dim
        self.metric = metric
        self.config = config
        self.vectors = np.zeros((1024, dim), np.float32)
        self.inv_norm = np.ones(1024, np.float32)
        self.slot_ids = np.full(1024, -1, np.int64)
        # slot -> the tenant number that owns the vector: the one that inserted it, the only one
        # that may overwrite it or its payload (`owned`); when the owner gives it up (revoke, drop)
        # while others still see it, the first of them in its access list owns it from then on
        self.owner = np.full(1024, -1, np.int32)
        self.codes: ScalarCodes | None = None  # once the tree is trained: what tenant scans read (codes.py)
        self.n_slots = 0  # high-water mark of used slots
        self._free_slots = np.zeros(0, np.int64)
        self.ids = IdMap()
        self.tree = ClusteringTree.untrained(dim, metric)
        self.tenancy = TenantSubtrees(self.tree, config.split_limit)
        self.tenant_numbers: dict[str, int] = {}
        self.tenant_names: list[str | None] = []
        # tenant -> when it came into being here (ns since the epoch, strictly increasing): the
        # order ownership passes in, comparable between collections (a cluster's shards)
        self.births: list[int] = []
        self._trained_count = 0
        self._drift_sum = 0.0
        self._drift_n = 0
        self.payloads = Payloads(self.vectors.shape[0])
        self.graph: Graph | None = None
        self.accelerator = None  # device_search.Accelerator: batches on a device, set by the collection; None: CPU
        self.version = 0  # counts writes: cached masks of an older version are stale
        self._allowed_sets: OrderedDict = OrderedDict()  # (version, tenant, filter) -> planner.Allowed
        self._allowed_lock = threading.Lock()
        # Whether the calling thread may change the index from a read (see ExclusiveNeeded); a
        # collection serving many threads answers for its lock. Used alone, the index always may.
        self.exclusive = _always
        # Whether an insert trains the tree itself when it is due; a collection serving many
        # threads trains in the background instead (`training_due`, `retrained`, `adopt`).
        self.train_inline = True
        # Where evicted vectors wait (states.py): the data directory's records, set by the
        # collection, or this process.
        self.shelf = MemoryShelf(dim)
        self.evicted = 0  # ids known but not in memory (IdMap slot EVICTED)
        self.offloaded: dict[int, int] = {}  # offloaded tenant -> vectors in its archive (not in the IdMap)
        self.archived_payload_bytes: dict[int, int] = {}  # offloaded tenant -> its archive's payload bytes (quotas)
        self._tree_keys: tuple | None = None  # (tree, its fingerprint)
        self.last_used: list[float] = []  # tenant -> monotonic time it was last named by a call

    # -- writes ----------------------------------------------------------------------------------

    def insert(self, ids: np.ndarray, vectors: np.ndarray, tenant: str, payloads: list | None = None) -> Change:
        self._check_awake(tenant)
        if payloads is not None:
            self.payloads.check(payloads)
        known = self.ids.lookup(ids)
        if (known != -1).any() or self.offloaded and (self.shelf.holders(ids) >= 0).any():
            # evicted ids are known too, and archived ones are known to the shelf
            dup = ids[(known != -1) | (self.shelf.holders(ids) >= 0 if self.offloaded else False)]
            raise AlreadyExistsError(
                f"{dup.size} id(s) already exist, e.g. {dup[:5].tolist()}; delete them first or use new ids"
            )
        inv_norm = self.metric.inverse_norms(vectors)
        slots = self._allocate(ids.shape[0])
        self.vectors[slots] = vectors
        self.inv_norm[slots] = inv_norm
        self.slot_ids[slots] = ids
        self.ids.assign(ids, slots)
        prepared = self._prepared(slots)
        self._encode(slots, prepared)
        leaves, sqdist = self.tree.route(prepared)
        self.tenancy.place(slots, leaves)
        change = Change(written=ids)
        owner = self._tenant(tenant, create=True, change=change)
        self.owner[slots] = owner
        self.version += 1
        if payloads is not None:
            self.payloads.write(slots, payloads)
            change.payloads = ids
        if self.graph is not None:
            self.graph.add(slots, prepared)
        self.tenancy.grant(slots, owner)
        if self.tree.trained:
            self._drift_sum += float(sqdist.sum())
            self._drift_n += slots.size
        change.retrained = self._maybe_train()
        if self.graph is None and self.config.hnsw is True:
            self._build_graph()
        return change

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, tenant: str, payloads: list | None = None) -> Change:
        """Insert new ids; give existing ones the new vector, keeping their tenants (and adding `tenant`).
        Given payloads replace the existing ones; None keeps them."""
        self._check_awake(tenant)
        inv_norm = self.metric.inverse_norms(vectors)  # checks every vector before anything changes
        if payloads is not None:
            self.payloads.check(payloads)
        known = self.ids.lookup(ids)
        if (known == EVICTED).any():  # a collection loads them first (`load_evicted`): used alone, refuse
            raise PermissionDeniedError(f"{int((known == EVICTED).sum())} of these vectors are owned by an inactive "
                                        f"tenant: only a vector's owner may overwrite it; {tenant!r} may only read them")
        old = known >= 0
        if old.any():
            self._require_owner(known[old], tenant)
        change = Change()
        self.version += 1
        if old.any():
            slots = known[old]
            tenants, origin = self.tenancy.access.gather(slots)
            self.tenancy.remove(slots)  # out of every sub-tree: the vector may land in another leaf
            self.vectors[slots] = vectors[old]
            self.inv_norm[slots] = inv_norm[old]
            prepared = self._prepared(slots)
            self._encode(slots, prepared)
            self.tenancy.place(slots, self.tree.route(prepared)[0])
            if self.graph is not None:
                self.graph.add(slots, prepared)
            if payloads is not None:
                self.payloads.write(slots, [p for p, o in zip(payloads, old.tolist()) if o])
                change.payloads = ids[old]
            order = np.argsort(tenants, kind="stable")
            for group in np.split(order, np.flatnonzero(np.diff(tenants[order])) + 1):
                if group.size:
                    self.tenancy.grant(slots[origin[group]], int(tenants[group[0]]))
            self.tenancy.grant(slots, self._tenant(tenant, create=True, change=change))
            change.written = ids[old]
        if not old.all():
            new_payloads = None if payloads is None else [p for p, o in zip(payloads, old.tolist()) if not o]
            fresh = self.insert(ids[~old], vectors[~old], tenant, new_payloads)
            change.written = np.concatenate([change.written, fresh.written])
            change.payloads = np.concatenate([change.payloads, fresh.payloads])
            change.tenants_added = sorted(set(change.tenants_added) | set(fresh.tenants_added))
            change.retrained = fresh.retrained
        return change

    def create_tenant(self, tenant: str) -> Change:
        if tenant in self.tenant_numbers:
            raise AlreadyExistsError(f"tenant {tenant!r} already exists")
        change = Change()
        self._tenant(tenant, create=True, change=change)
        return change

    def set_payloads(self, ids: np.ndarray, payloads: list, tenant: str | None = None) -> Change:
        """Replace payloads; with `tenant`, only of vectors it owns."""
        self.payloads.check(payloads)
        slots = self._slots(ids)
        if tenant is not None:
            self._require_owner(slots, tenant)
        self.version += 1
        self.payloads.write(slots, payloads)
        return Change(payloads=ids)

    def get_payloads(self, ids: np.ndarray) -> list[dict]:
        slots = self._known(ids)
        if not (slots == EVICTED).any():
            return self.payloads.read(slots)
        out = [{}] * ids.size
        resident = np.flatnonzero(slots >= 0)
        for i, payload in zip(resident.tolist(), self.payloads.read(slots[resident])):
            out[i] = payload
        evicted = np.flatnonzero(slots == EVICTED)
        shelved = self.shelf.fetch(ids[evicted])
        for row, payload in zip(shelved.payload_rows.tolist(), shelved.payloads):
            out[evicted[row]] = payload
        return out

    def grant(self, ids: np.ndarray, tenant: str) -> Change:
        self.version += 1
        change = Change()
        granted = self.tenancy.grant(self._slots(ids), self._tenant(tenant, create=True, change=change))
        change.regranted = self.slot_ids[granted]
        return change

    def revoke(self, ids: np.ndarray, tenant: str) -> Change:
        slots = self._slots(ids)
        self.version += 1
        t = self._tenant(tenant)
        revoked, orphans = self.tenancy.revoke(slots, t)
        kept = np.setdiff1d(revoked, orphans)
        self._pass_ownership(kept, t)
        change = Change(regranted=self.slot_ids[kept], deleted=self.slot_ids[orphans])
        self._release(orphans)
        return change

    def delete(self, ids: np.ndarray) -> Change:
        slots = self._slots(ids)
        self.version += 1
        self.tenancy.remove(slots)
        self._release(slots)
        return Change(deleted=ids)

    def transfer(self, ids: np.ndarray, to: str, tenant: str | None = None) -> Change:
        """Make `to` the owner of these vectors (it must see every one); with `tenant`, only
        vectors `tenant` owns may change hands."""
        slots = self._slots(ids)
        new = self._tenant(to)
        if tenant is not None:
            self._require_owner(slots, tenant)
        unseen = ~self.tenancy.access.contains(slots, np.full(slots.size, new))
        if unseen.any():
            raise InvalidArgumentError(f"{int(unseen.sum())} of these vectors are not granted to {to!r}, e.g. "
                                       f"{ids[unseen][:5].tolist()}: a vector passes only to a tenant that sees it")
        self.version += 1
        self.owner[slots] = new
        return Change(regranted=ids)

    def since(self, tenant: str) -> int:
        """When `tenant` came into being in this collection, in ns since the epoch (0: in a
        directory written before this was kept). Does not wake it."""
        return self.births[self._number(tenant)]

    def drop_tenant(self, tenant: str) -> Change:
        t = self._tenant(tenant)
        self.version += 1
        affected, orphans = self.tenancy.drop(t)
        kept = np.setdiff1d(affected, orphans)
        self._pass_ownership(kept, t)
        change = Change(regranted=self.slot_ids[kept], deleted=self.slot_ids[orphans], tenants_dropped=[t])
        self._release(orphans)
        del self.tenant_numbers[tenant]
        self.tenant_names[t] = None
        return change

    # -- tenant states (states.py) ---------------------------------------------------------------

    def state(self, tenant: str) -> str:
        t = self._number(tenant)
        return OFFLOADED if t in self.offloaded else INACTIVE if self.tenancy.asleep[t] else ACTIVE

    def offload(self, tenant: str) -> Change:
        """Make `tenant` offloaded: inactive first, then the evicted vectors only it sees leave the
        IdMap and the shelf for its archive (`Change.offloaded`); its manifest keeps the rest."""
        t = self._number(tenant)
        if t in self.offloaded:
            return Change()
        change = self.deactivate(tenant)
        manifest = change.slept.get(t) or self.shelf.manifest(t)
        evicted = np.flatnonzero(self.ids.lookup(manifest.ids) == EVICTED)
        shelved = self.shelf.fetch(manifest.ids[evicted])
        alone = (shelved.counts == 1) & shelved.seen_by(t)
        archived = shelved.subset(alone)
        keep = np.ones(manifest.ids.size, bool)
        keep[evicted[alone]] = False
        rest = Manifest(manifest.ids[keep], manifest.leaves[keep], manifest.tree_key)
        leaves = Manifest(archived.ids, manifest.leaves[evicted[alone]], manifest.tree_key)
        self.version += 1
        self.shelf.put_manifest(t, rest)
        self.shelf.forget(archived.ids)
        self.shelf.archive(t, archived, leaves)
        self.ids.discard(archived.ids)
        self.evicted -= archived.ids.size
        self.offloaded[t] = int(archived.ids.size)
        from .quotas import payload_bytes  # quotas sits above the index

        self.archived_payload_bytes[t] = sum(payload_bytes(p) for p in archived.payloads)
        change.slept[t] = rest
        change.offloaded[t] = (archived, leaves)
        return change

    def offloaded_holders(self, ids: np.ndarray) -> list[str]:
        """The offloaded tenants whose archives hold some of `ids` (a write naming them restores them)."""
        if not self.offloaded:
            return []
        holders = self.shelf.holders(np.unique(ids))
        return [self.tenant_names[t] for t in np.unique(holders[holders >= 0]).tolist()]

    def contains(self, ids: np.ndarray, archived: bool = True) -> np.ndarray:
        """Whether each id is stored: in memory, evicted, or (`archived`) in an offloaded tenant's archive."""
        out = self.ids.lookup(ids) != -1
        if archived and self.offloaded and not out.all():
            out[~out] = self.shelf.holders(ids[~out]) >= 0
        return out

    def deactivate(self, tenant: str) -> Change:
        """Make `tenant` inactive: its manifest (every id it sees) goes to the shelf, its sub-tree
        is dropped, and the vectors no active tenant sees any more are evicted."""
        t = self._number(tenant)
        if self.tenancy.asleep[t]:
            return Change()
        self.version += 1
        slots = self.tenancy.sleep(t)
        slots = slots[np.argsort(self.slot_ids[slots])]
        manifest = Manifest(self.slot_ids[slots], self.tenancy.leaf_of[slots], self._tree_key())
        self.shelf.put_manifest(t, manifest)
        self._evict(self._unseen(slots))
        return Change(slept={t: manifest})

    def activate(self, tenant: str | None) -> Change:
        """Make `tenant` active again (None: every inactive tenant): the vectors of its manifest it
        still sees come back into memory (one read from the shelf), and its sub-tree is built."""
        if tenant is None:
            change = Change()
            for t in np.flatnonzero(self.tenancy.asleep[: self.tenancy.n_tenants]).tolist():
                woken = self.activate(self.tenant_names[t])
                change.woken += woken.woken
                change.restored |= woken.restored  # their archives' records go back too
                change.written = np.concatenate([change.written, woken.written])
                change.payloads = np.concatenate([change.payloads, woken.payloads])
            return change
        t = self._number(tenant)
        if not self.tenancy.asleep[t]:
            return Change()
        self.version += 1
        change = Change(woken=[t])
        restored = _NO_IDS
        if t in self.offloaded:  # its archive back first: the ids are its alone, so free
            archived, leaves = self.shelf.archived(t)
            self.evicted += archived.ids.size  # counted as evicted until admitted
            same_tree = leaves.tree_key == self._tree_key() and np.array_equal(leaves.ids, archived.ids)
            restored = self._admit(archived, leaves.leaves if same_tree else None)  # no routing when it can
            self.shelf.unarchive(t)
            del self.offloaded[t]
            self.archived_payload_bytes.pop(t, None)
            change.restored[t] = archived.ids
            change.written = archived.ids
            change.payloads = archived.ids[archived.payload_rows]
        manifest = self.shelf.manifest(t)
        slots = self.ids.lookup(manifest.ids)
        resident = slots[slots >= 0]
        resident = resident[self.tenancy.access.contains(resident, np.full(resident.size, t))]
        evicted = slots == EVICTED
        shelved = self.shelf.fetch(manifest.ids[evicted])
        mine = shelved.seen_by(t)  # not: an id deleted and used again since
        same_tree = manifest.tree_key == self._tree_key()
        admitted = self._admit(shelved.subset(mine), manifest.leaves[evicted][mine] if same_tree else None)
        admitted = np.concatenate([restored, admitted])
        if resident.size + admitted.size != self.tenancy.count[t]:
            # The manifest misses some (a version without tenant states wrote since): look at every vector.
            shelved = self.shelf.fetch(self.ids.ids(EVICTED))
            admitted = np.concatenate([admitted, self._admit(shelved.subset(shelved.seen_by(t)))])
            live = self._live_slots()
            resident = live[self.tenancy.access.contains(live, np.full(live.size, t))]
            resident = np.setdiff1d(resident, admitted)
        self.tenancy.wake(t, np.concatenate([resident, admitted]))
        self.shelf.drop_manifest(t)
        self.last_used[t] = time.monotonic()
        return change

    def load_evicted(self, ids: np.ndarray) -> np.ndarray:
        """Bring the evicted ones of `ids` into memory, for a write that names them; returns
        their ids, for `settle` once the write is done."""
        if not self.evicted:
            return _NO_IDS
        ids = np.unique(ids)
        out = ids[self.ids.lookup(ids) == EVICTED]
        if out.size:
            self.version += 1
            self._admit(self.shelf.fetch(out))
        return out

    def settle(self, ids: np.ndarray) -> None:
        """Evict those of `ids` that are in memory but seen by no active tenant any more (after a
        write that loaded them, a revoke, a tenant dropped)."""
        if ids.size == 0 or not self.tenancy.asleep.any():
            return
        slots = self.ids.lookup(ids)
        unseen = self._unseen(slots[slots >= 0])
        if unseen.size:
            self.version += 1
            self._evict(unseen)

    def idle_tenants(self, seconds: float) -> list[str]:
        """Active tenants no call has named for `seconds`."""
        n = self.tenancy.n_tenants
        idle = np.asarray(self.last_used[:n]) < time.monotonic() - seconds
        idle &= ~self.tenancy.asleep[:n]
        return [self.tenant_names[t] for t in np.flatnonzero(idle).tolist() if self.tenant_names[t] is not None]

    def evicted_payload_bytes(self, n_tenants: int) -> np.ndarray:
        """Per tenant, the payload bytes of the evicted vectors it sees (the quota tally's part
        that is not in memory)."""
        tally = np.zeros(n_tenants, np.int64)
        for t, size in self.archived_payload_bytes.items():  # offloaded tenants' archives: kept, not read
            tally[t] += size
        if not self.evicted:
            return tally
        return tally + self.shelf.payload_bytes(n_tenants, self.ids.ids(EVICTED))

    def _unseen(self, slots: np.ndarray) -> np.ndarray:
        """Those of these slots that no active tenant sees."""
        tenants, origin = self.tenancy.access.gather(slots)
        seen = np.zeros(slots.size, bool)
        seen[origin[~self.tenancy.asleep[tenants]]] = True
        return slots[~seen]

    def _evict(self, slots: np.ndarray) -> None:
        """Out of memory, onto the shelf: the slots are freed, the ids stay known as EVICTED."""
        if slots.size == 0:
            return
        ids = self.slot_ids[slots]
        if self.shelf.keeps_records:
            self.shelf.keep(self._shelved(slots))
        self.tenancy.access.clear(slots)  # every tenant's count stays: they still see them
        self._release(slots)
        self.ids.assign(ids, np.full(ids.size, EVICTED))
        self.evicted += ids.size

    def _shelved(self, slots: np.ndarray) -> Shelved:
        tenants, origin = self.tenancy.access.gather(slots)
        payloads = self.payloads.read(slots)
        rows = np.array([i for i, p in enumerate(payloads) if p], np.int64)
        return Shelved(self.slot_ids[slots].copy(), self.vectors[slots].copy(), tenants,
                       np.bincount(origin, minlength=slots.size), self.owner[slots].copy(), rows,
                       [payloads[i] for i in rows.tolist()])

    def _tree_key(self) -> bytes:
        """The fingerprint of the shared tree in use (states.tree_key), made once per tree."""
        cached = self._tree_keys
        if cached is None or cached[0] is not self.tree:
            cached = self._tree_keys = (self.tree, tree_key(self.tree))
        return cached[1]

    def _admit(self, shelved: Shelved, leaves: np.ndarray | None = None) -> np.ndarray:
        """Evicted vectors back into memory with their access lists, owners and payloads (no
        sub-tree: the caller builds the one of the tenant it wakes), in `leaves` (None: routed
        through the tree); returns their slots."""
        n = shelved.ids.size
        if n == 0:
            return _NO_IDS
        slots = self._allocate(n)
        self.vectors[slots] = shelved.vectors
        self.inv_norm[slots] = self.metric.inverse_norms(shelved.vectors)
        self.slot_ids[slots] = shelved.ids
        self.owner[slots] = shelved.owners
        self.ids.assign(shelved.ids, slots)
        prepared = self._prepared(slots)
        self._encode(slots, prepared)
        self.tenancy.place(slots, self.tree.route(prepared)[0] if leaves is None else leaves)
        self.tenancy.access.append(np.repeat(slots, shelved.counts), shelved.tenants)
        if shelved.payloads:
            self.payloads.write(slots[shelved.payload_rows], shelved.payloads)
        if self.graph is not None:
            self.graph.add(slots, prepared)
        self.evicted -= n
        self.shelf.forget(shelved.ids)
        return slots

    def train(self, sample: np.ndarray | None = None) -> Change:
        """(Re)train the shared tree on `sample`, or on the stored vectors, and re-route everything."""
        sample = self.training_sample() if sample is None else self.metric.prepare(sample)
        self.build_all()
        tree = ClusteringTree.train(sample, self.metric, self.config.tree, self.accelerator and self.accelerator.device)
        return self.adopt(self.retrained(tree, sample.shape[0]))

    def training_sample(self) -> np.ndarray:
        """A copy of the stored vectors to train on (at most `train_sample`), prepared for the metric."""
        slots = self._live_slots()
        if slots.size == 0:
            raise InvalidArgumentError("nothing to train on: the collection is empty and no sample was given")
        rng = np.random.default_rng(self.config.tree.seed)
        picked = slots if slots.size <= self.config.train_sample else rng.choice(
            slots, self.config.train_sample, replace=False)
        return self._prepared(np.sort(picked))

    def training_due(self) -> bool:
        """Whether the tree should be (re)trained now (see the training rule above)."""
        n = len(self.ids)  # every vector, evicted ones too: the tree is the collection's
        cfg = self.config
        if n == self.evicted:
            return False  # nothing in memory to train on
        if not self.tree.trained:
            return n >= cfg.train_size
        grown = n >= cfg.retrain_growth * self._trained_count
        drifted = (
            self._drift_n >= 1000
            and self.tree.distortion > 0
            and self._drift_sum / self._drift_n > cfg.drift_limit * self.tree.distortion
        )
        return grown or drifted

    def retrained(self, tree: ClusteringTree, sample_size: int) -> Retrained:
        """Every stored vector routed through `tree`, in a new layout beside this one: the index is
        only read, so searches go on meanwhile (writes must wait: `adopt` checks). Every tenant's
        sub-tree must be built first (`build_all`)."""
        slots = self._live_slots()
        prepared = self._prepared(slots)
        leaves = tree.route(prepared)[0] if slots.size else np.zeros(0, np.int32)
        # Renumber slots in leaf order: a shortlist's vectors then sit close together in memory,
        # which is what a scan of shortlists reads.
        order = np.argsort(leaves, kind="stable")
        old = slots[order]
        n = old.size
        codes = None
        if tree.trained and self.config.codes:
            codes = ScalarCodes.fit(prepared, self.vectors.shape[0])
            codes.write(np.argsort(order), prepared)  # row order[i] of prepared is now slot i
        del prepared  # a copy of every vector: gone before the new layout's arrays are made
        vectors = np.zeros(self.vectors.shape, np.float32)  # untouched rows stay unallocated
        vectors[:n] = self.vectors[old]
        inv_norm = np.ones(self.inv_norm.shape, np.float32)
        inv_norm[:n] = self.inv_norm[old]
        slot_ids = np.full(self.slot_ids.shape, -1, np.int64)
        slot_ids[:n] = self.slot_ids[old]
        owner = np.full(self.owner.shape, -1, np.int32)
        owner[:n] = self.owner[old]
        payloads = copy.deepcopy(self.payloads)
        payloads.permute(old, n)
        graph = None if self.graph is None else self.graph.renumbered(old, self.vectors.shape[0])
        evicted = self.ids.ids(EVICTED)
        ids = IdMap.of(np.concatenate([slot_ids[:n], evicted]),
                       np.concatenate([np.arange(n), np.full(evicted.size, EVICTED)]))
        return Retrained(tree, vectors, inv_norm, slot_ids, owner, n, ids, payloads,
                         self.tenancy.rebuilt(tree, old, leaves[order]), graph, codes, max(slots.size, sample_size, 1),
                         self.version)

    def adopt(self, layout: Retrained) -> Change:
        """Serve from a layout made by `retrained` (a few assignments: readers wait microseconds)."""
        if layout.version != self.version:
            raise RuntimeError("a retrained layout is stale: the index changed after it was made")
        self.tree, self.tenancy, self.graph = layout.tree, layout.tenancy, layout.graph
        self.vectors, self.inv_norm, self.slot_ids = layout.vectors, layout.inv_norm, layout.slot_ids
        self.owner, self.codes = layout.owner, layout.codes
        self.n_slots, self.ids, self.payloads = layout.n_slots, layout.ids, layout.payloads
        self._free_slots = np.zeros(0, np.int64)
        self._trained_count = layout.trained_count
        self._drift_sum, self._drift_n = 0.0, 0
        self.version += 1
        return Change(retrained=True)

    def build_all(self) -> None:
        """Build every tenant's sub-tree still pending from opening (writes; see ExclusiveNeeded)."""
        if self.tenancy.any_pending():
            self._changing_read()
            self.tenancy.ensure_all(np.arange(self.tenancy.n_tenants))

    @classmethod
    def restore(cls, dim: int, metric: Metric, config: IndexConfig, stored: dict) -> "CuratorIndex":
        """An index over stored records (see `storage.DataDirectory.load`), without re-training:
        vectors are routed through the stored tree and laid out in leaf order; each tenant's
        sub-tree is built on its first use."""
        index = cls(dim, metric, config)
        ids, vectors = stored["ids"], stored["vectors"]
        if stored["tree"] is not None:
            tree = stored["tree"]
            index.tree = ClusteringTree(tree["centroids"], tree["parent"], metric, float(tree["distortion"]))
            index.tenancy.tree = index.tree
            index._trained_count = int(tree["trained_count"])
        n = ids.size
        if n:
            inv_norm = metric.inverse_norms(vectors)
            prepared = vectors * inv_norm[:, None] if metric is Metric.COSINE else vectors
            leaves = index.tree.route(prepared)[0]
            order = np.argsort(leaves, kind="stable")
            slots = index._allocate(n)
            index.vectors[slots] = vectors[order]
            index.inv_norm[slots] = inv_norm[order]
            index.slot_ids[slots] = ids[order]
            index.owner[slots] = stored["owners"][order]
            if index.tree.trained and config.codes:
                index.codes = ScalarCodes.fit(prepared, index.vectors.shape[0])
                index.codes.write(slots[np.argsort(order)], prepared)
            index.tenancy.place(slots, leaves[order])
        else:
            ids, order, slots = _NO_IDS, _NO_IDS, _NO_IDS
        evicted = stored.get("evicted_ids", _NO_IDS)  # seen only by inactive tenants: not loaded
        index.ids = IdMap.of(np.concatenate([ids[order], evicted]),
                             np.concatenate([slots, np.full(evicted.size, EVICTED)]))
        index.evicted = evicted.size
        index.offloaded = {t: n for t, (n, _) in stored.get("offloaded", {}).items()}
        index.archived_payload_bytes = {t: b for t, (_, b) in stored.get("offloaded", {}).items()}
        names = stored["tenant_names"]
        index.tenant_names = list(names)
        index.tenant_numbers = {name: t for t, name in enumerate(names) if name is not None}
        index.births = list(stored.get("tenant_births", [0] * len(names)))
        index.last_used = [time.monotonic()] * len(names)
        pair_slots = index.ids.lookup(stored["pair_ids"])
        index.tenancy.load(len(names), pair_slots, stored["pair_tenants"], stored.get("asleep"),
                           stored.get("tenant_counts"))
        if len(stored["payloads"]):
            index.payloads.write(index.ids.lookup(stored["payload_ids"]), stored["payloads"])
        if config.hnsw is True and n:
            index._build_graph()
        return index

    @property
    def trained_count(self) -> int:
        return self._trained_count

    # -- reads -----------------------------------------------------------------------------------

    def get(self, ids: np.ndarray) -> np.ndarray:
        slots = self._known(ids)
        evicted = slots == EVICTED
        if not evicted.any():
            return self.vectors[slots]
        out = np.empty((ids.size, self.dim), np.float32)
        out[~evicted] = self.vectors[slots[~evicted]]
        out[evicted] = self.shelf.fetch(ids[evicted]).vectors
        return out

    def tenants_of(self, id_: int) -> list[str]:
        slot = self._known(np.array([id_], np.int64))[0]
        if slot == EVICTED:
            tenants = self.shelf.fetch(np.array([id_], np.int64)).tenants
        else:
            tenants = self.tenancy.tenants_of(slot)
        return sorted(self.tenant_names[t] for t in tenants.tolist())

    def scroll(self, tenant: str | None, after_id: int, limit: int) -> tuple[np.ndarray, int]:
        """Up to `limit` ids above `after_id`, ascending (all, or those `tenant` may see), and the
        id to continue after (-1 when done)."""
        if tenant is None:
            if self.offloaded:
                raise TenantAsleep(None)  # every vector: the archived ones must come back first
            live = self.ids.ids() if self.evicted else self.slot_ids[: self.n_slots]
            ids = live[live > after_id]
        else:
            t = self._tenant(tenant)
            self._ensure(t)
            ids = self.slot_ids[self.tenancy.slots_of(t)]
            ids = ids[ids > after_id]
        page = np.sort(ids)[:limit] if ids.size > limit else np.sort(ids)
        return page, int(page[-1]) if ids.size > limit else -1

    def visible_to(self, ids: np.ndarray, tenant: str) -> np.ndarray:
        """Does not wake `tenant`: an inactive one's evicted vectors are looked up on the shelf."""
        t = self.tenant_numbers.get(tenant)
        slots = self.ids.lookup(ids)
        known = slots >= 0
        out = np.zeros(ids.size, bool)
        if t is not None and known.any():
            out[known] = self.tenancy.access.contains(slots[known], np.full(int(known.sum()), t))
        evicted = slots == EVICTED
        if t is not None and self.tenancy.asleep[t] and evicted.any():  # an active tenant sees none of them
            out[evicted] = self.shelf.fetch(ids[evicted]).seen_by(t)
        if t in self.offloaded and (slots == -1).any():  # its archive: vectors it alone sees
            out[slots == -1] = self.shelf.holders(ids[slots == -1]) == t
        return out

    def count(self, tenant: str | None = None) -> int:
        if tenant is None:
            return len(self.ids) + sum(self.offloaded.values())
        return int(self.tenancy.count[self._tenant(tenant)])

    def resident_count(self) -> int:
        """Vectors in memory (some active tenant sees them)."""
        return len(self.ids) - self.evicted

    def tenants(self) -> list[str]:
        return sorted(self.tenant_numbers)

    def search_one(self, query: np.ndarray, k: int, tenant: str, ef: int) -> tuple[np.ndarray, np.ndarray]:
        """One query (a contiguous float32 vector of the right dimension) of one tenant, no filter:
        the short path, one compiled call."""
        t = self._tenant(tenant)
        self._ensure(t)
        me = handoff.slot()
        ids, dists, usable = kernels.search_one(query, k, ef, int(self.metric), t, *self._scan_arguments(), _ALL,
                                                self.slot_ids, handoff.TABLE, me)
        handoff.back(handoff.TABLE, me)  # back, holding the GIL (handoff.py)
        if not usable:
            raise InvalidArgumentError(_UNUSABLE)
        return ids, dists

    def search_planned(self, query: np.ndarray, k: int, tenant: str | None, where, ef: int):
        """One query under the planner: (ids, distances, plan). `where` is a filter spec or None.

        Plans: "exact" scans every allowed vector (few are allowed); "tree" scans the tenant's
        sub-tree, skipping vectors the filter rejects (a broad filter within the tenant); "graph"
        searches the HNSW graph accepting only allowed vectors (broad, or no tenant). Whatever
        the plan, the answer holds min(k, allowed) vectors: a graph search that comes back short
        is completed by an exact scan."""
        if tenant is not None and where is None:
            return (*self.search_one(query, k, tenant, ef), "tree")
        allowed = self._allowed(tenant, where)
        plan = planner.choose(allowed, tenant, k, ef, self.config, self.resident_count())
        if plan == "exact":
            return (*self._exact(query, k, allowed), plan)
        prepared = self._prepared_query(query)
        if plan == "tree":
            t = self._tenant(tenant)
            self._ensure(t)
            slots = np.empty(k, np.int64)
            dists = np.empty(k, np.float32)
            found, _ = kernels.search_tenant(prepared, k, ef, int(self.metric), t, *self._scan_arguments(),
                                             allowed.mask.view(np.uint8), slots, dists)
            return self.slot_ids[slots[:found]], dists[:found], plan
        slots, dists = self._graph_search(prepared, k, allowed, ef)
        if slots.size >= min(k, allowed.count):
            return self.slot_ids[slots], dists, plan
        return (*self._exact(query, k, allowed), "exact")  # the graph came back short: finish exactly

    def search_planned_batch(self, queries: np.ndarray, k: int, tenants: list, where, ef: int):
        """Many queries under the planner: (ids, distances) of shape (nq, k) padded with -1 / inf,
        and the plan of each. Queries of one tenant share their allowed set: when it is small
        enough for an exact scan they are scanned together, as one matrix product (on the GPU
        when there is one)."""
        nq = queries.shape[0]
        ids = np.full((nq, k), -1, np.int64)
        dists = np.full((nq, k), np.inf, np.float32)
        plans = [""] * nq
        by_tenant: dict = {}
        for i, tenant in enumerate(tenants):
            by_tenant.setdefault(tenant, []).append(i)
        for tenant, rows in by_tenant.items():  # a loop per tenant of the batch, not per query
            rows = np.array(rows)
            if where is not None or tenant is None:
                allowed = self._allowed(tenant, where)
                plan = planner.choose(allowed, tenant, k, ef, self.config, self.resident_count())
                found = self.accelerator and self.accelerator.search_group(self, queries[rows], tenant, allowed, plan, k, ef)
                if found:  # on the device (device_search.py)
                    ids[rows], dists[rows] = found[0], found[1]
                    for i in rows.tolist():
                        plans[i] = found[2]
                    continue
                if plan == "exact":
                    prepared = self.metric.prepare(queries[rows])  # finite: checked by the caller
                    slots, candidates, _ = self._candidates(allowed)
                    if slots.size:
                        top, d = device.exact_topk(prepared, candidates, k, self.metric, xp=np)  # device: above
                        ids[rows, : top.shape[1]], dists[rows, : top.shape[1]] = self.slot_ids[slots[top]], d
                    for i in rows.tolist():
                        plans[i] = "exact"
                    continue
            for i in rows.tolist():
                found, distances, plans[i] = self.search_planned(queries[i], k, tenant, where, ef)
                ids[i, : found.size], dists[i, : found.size] = found, distances
        return ids, dists, plans

    def _prepared_query(self, query: np.ndarray) -> np.ndarray:
        prepared, usable = kernels.prepare_query(np.ascontiguousarray(query, np.float32), int(self.metric))
        if not usable:
            raise InvalidArgumentError(_UNUSABLE)
        return prepared

    def _allowed(self, tenant: str | None, where) -> planner.Allowed:
        """What a query of `tenant` (None: any) with filter `where` may return, made once per
        (tenant, filter) and kept until the next write."""
        key = (self.version, tenant, None if where is None else planner.filter_key(where))
        cached = self._allowed_sets.get(key)
        if cached is not None:
            return cached
        n = self.n_slots
        if tenant is None:
            if self.evicted or self.offloaded:
                raise TenantAsleep(None)  # every vector: the evicted ones must come back first
            mask = self.slot_ids[:n] >= 0
            tenant_size = len(self.ids)
        else:
            t = self._tenant(tenant)
            self._ensure(t)
            mask = np.zeros(n, bool)
            mask[self.tenancy.slots_of(t)] = True
            tenant_size = int(self.tenancy.count[t])
        if where is not None:
            matched = filters.matches(filters.parse(where, self.payloads, strict=tenant is None), self.payloads, n)
            if tenant is not None and not (matched & mask).any():
                filters.explain(where, self.payloads, mask)  # nothing matched: a misspelt field?
            mask &= matched
        allowed = planner.Allowed(mask, int(np.count_nonzero(mask)), tenant_size, row_bytes=4 * self.dim)
        with self._allowed_lock:  # searches share the index: two may make the same set at once
            self._allowed_sets[key] = allowed
            while len(self._allowed_sets) > 16:
                self._allowed_sets.popitem(last=False)
        return allowed

    def _candidates(self, allowed: planner.Allowed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The allowed slots and their rows ready for a scan (unit length under cosine): the
        slots, the rows, and the rows flat (distance.flat_rows) (what the compiled exact
        scan reads). Kept while small: repeated filters then scan without gathering."""
        if allowed.candidates is not None:
            return allowed.candidates
        slots = np.flatnonzero(allowed.mask)
        flat, rows = flat_rows(slots.size, self.dim, np.float32)
        np.take(self.vectors, slots, axis=0, out=rows)
        if self.metric is Metric.COSINE:
            rows *= self.inv_norm[slots, None]
        if rows.nbytes <= planner.KEPT_ROWS_BYTES:
            allowed.candidates = (slots, rows, flat)
        return slots, rows, flat

    def _exact(self, query: np.ndarray, k: int, allowed: planner.Allowed) -> tuple[np.ndarray, np.ndarray]:
        """Best k allowed vectors by exact distance, smaller first."""
        slots, _, flat = self._candidates(allowed)
        ids, dists, usable = kernels.exact_one(query, k, int(self.metric), flat, slots, self.slot_ids)
        if not usable:
            raise InvalidArgumentError(_UNUSABLE)
        return ids, dists

    def _graph_search(self, prepared, k, allowed: planner.Allowed, ef):
        if self.graph is None or self.graph.needs_rebuild:
            self._changing_read()
            self._build_graph()
        graph = self.graph
        beam = planner.graph_beam(ef, self.config, k, graph.n_live)
        if allowed.count == graph.n_live and graph.dead == 0:
            bitmap = None  # every node is allowed
        elif allowed.bitmap is not None and allowed.bitmap[0] is graph:
            bitmap = allowed.bitmap[1]
        else:
            bitmap = graph.bitmap(allowed.mask)
            allowed.bitmap = (graph, bitmap)
        return graph.search(prepared, k, beam, bitmap)

    def _build_graph(self) -> None:
        cfg = self.config
        slots = self._live_slots()
        if self.accelerator is not None and (built := self.accelerator.build_graph(self, slots)) is not None:
            self.graph = built  # from a kNN graph computed on the device
            return
        self.graph = Graph(self.dim, self.metric, cfg.hnsw_m, cfg.hnsw_ef_construction)
        for start in range(0, slots.size, 100_000):  # bounded temporary copies
            part = slots[start : start + 100_000]
            self.graph.add(part, self._prepared(part))

    def search(self, queries: np.ndarray, k: int, tenants: list[str], ef: int, parallel: bool):
        """Tenant searches without filter: (ids, distances) of shape (nq, k), best first, padded
        with -1 / inf."""
        numbers = self._numbers(tenants)
        if self.metric is Metric.COSINE:
            queries = Metric.COSINE.prepare(queries)
        if self.accelerator is not None and (found := self.accelerator.search(self, queries, numbers, k, ef)) is not None:
            return found  # on the device (device_search.py)
        nq = queries.shape[0]
        slots = np.full((nq, k), -1, np.int64)
        dists = np.full((nq, k), np.inf, np.float32)
        kernel = kernels.search_batch_parallel if parallel and nq > 1 else kernels.search_batch_serial
        # Queries differ in cost (tenants differ in size): hand them to threads in small chunks.
        # numba's default thread pool takes one parallel call at a time, whichever collection.
        with _PARALLEL if kernel is kernels.search_batch_parallel else contextlib.nullcontext():
            previous = numba.set_parallel_chunksize(4)
            try:
                kernel(queries, numbers, k, ef, int(self.metric), *self._scan_arguments(), _ALL, slots, dists)
            finally:
                numba.set_parallel_chunksize(previous)
        ids = np.where(slots >= 0, self.slot_ids[slots], -1)
        return ids, dists

    def candidates_examined(self, queries: np.ndarray, k: int, tenants: list[str], ef: int) -> float:
        """The mean number of candidates a tenant search examines (the figure that explains its
        time, benchmarks/multitenant.py): the batch searched serially, as single queries are."""
        numbers = self._numbers(tenants)
        if self.metric is Metric.COSINE:
            queries = Metric.COSINE.prepare(queries)
        slots = np.full((len(tenants), k), -1, np.int64)
        dists = np.full((len(tenants), k), np.inf, np.float32)
        examined = kernels.search_batch_serial(queries, numbers, k, ef, int(self.metric), *self._scan_arguments(),
                                               _ALL, slots, dists)
        return examined / max(len(tenants), 1)

    @property
    def nbytes(self) -> dict[str, int]:
        """Memory by part: the vectors (one copy) and everything else the index keeps."""
        live = self.n_slots
        return {
            "vectors": self.vectors[:live].nbytes,
            "tenancy": self.tenancy.nbytes,
            "tree": self.tree.nbytes,
            "ids": self.ids.nbytes + self.slot_ids.nbytes + self.inv_norm.nbytes,
            "payloads": self.payloads.nbytes,
            "graph": self.graph.nbytes if self.graph is not None else 0,
            "codes": self.codes.nbytes if self.codes is not None else 0,
        }

    # -- internals ---------------------------------------------------------------------------------

    def _tenant(self, name: str, create: bool = False, change: Change | None = None) -> int:
        """The number of a tenant a call names: it must be active (else TenantAsleep), and it has
        been used now (for `idle_tenants`)."""
        t = self.tenant_numbers.get(name)
        if t is not None:
            if self.tenancy.asleep[t]:
                raise TenantAsleep(name)
            self.last_used[t] = time.monotonic()
            return t
        if not create:
            raise NotFoundError(f"unknown tenant {name!r}: it has never been granted a vector, or was dropped")
        t = self.tenancy.add_tenant()
        self.tenant_numbers[name] = t
        self.tenant_names.append(name)
        self.births.append(max(time.time_ns(), self.births[-1] + 1 if self.births else 0))  # the last is the greatest
        self.last_used.append(time.monotonic())
        change.tenants_added.append(t)
        return t

    def _number(self, name: str) -> int:
        """A tenant's number whatever its state."""
        t = self.tenant_numbers.get(name)
        if t is None:
            raise NotFoundError(f"unknown tenant {name!r}: it has never been granted a vector, or was dropped")
        return t

    def _check_awake(self, name: str) -> None:
        """Before a write changes anything: the tenant it names is not inactive."""
        t = self.tenant_numbers.get(name)
        if t is not None and self.tenancy.asleep[t]:
            raise TenantAsleep(name)

    def _slots(self, ids: np.ndarray) -> np.ndarray:
        slots = self.ids.lookup(ids)
        if (slots < 0).any():
            if (slots == EVICTED).any():
                raise RuntimeError("a write named evicted ids without loading them (load_evicted)")
            missing = ids[slots < 0]
            raise NotFoundError(f"{missing.size} unknown id(s), e.g. {missing[:5].tolist()}")
        return slots

    def _known(self, ids: np.ndarray) -> np.ndarray:
        """Slots of ids for a read: EVICTED for those on the shelf; NotFoundError for unknown ones."""
        slots = self.ids.lookup(ids)
        if (slots == -1).any():
            missing = ids[slots == -1]
            holders = self.offloaded_holders(missing)
            if holders:  # in an offloaded tenant's archive: restored first (a write), then read
                raise TenantAsleep(holders[0])
            raise NotFoundError(f"{missing.size} unknown id(s), e.g. {missing[:5].tolist()}")
        return slots

    def _allocate(self, n: int) -> np.ndarray:
        reused = self._free_slots[:n]
        self._free_slots = self._free_slots[n:]
        fresh = np.arange(self.n_slots, self.n_slots + n - reused.size, dtype=np.int64)
        self.n_slots += fresh.size
        if self.n_slots > self.vectors.shape[0]:
            grown = max(self.n_slots, self.vectors.shape[0] * 3 // 2)
            self.vectors = _grow(self.vectors, grown, 0)
            self.inv_norm = _grow(self.inv_norm, grown, 1)
            self.slot_ids = _grow(self.slot_ids, grown, -1)
            self.owner = _grow(self.owner, grown, -1)
            self.payloads.resize(grown)
            if self.codes is not None:
                self.codes.grow(grown)
        return np.concatenate([reused, fresh])

    def _release(self, slots: np.ndarray) -> None:
        if slots.size == 0:
            return
        self.ids.discard(self.slot_ids[slots])
        self.slot_ids[slots] = -1
        self.owner[slots] = -1
        self.payloads.clear(slots)
        if self.graph is not None:
            self.graph.forget(slots)
        self._free_slots = np.concatenate([self._free_slots, slots])

    def owned(self, ids: np.ndarray, tenant: str) -> np.ndarray:
        """For each id, whether `tenant` owns it (unknown ids: False). Does not wake `tenant`."""
        t = self.tenant_numbers.get(tenant, -2)
        slots = self.ids.lookup(ids)
        out = (slots >= 0) & (self.owner[np.maximum(slots, 0)] == t)
        evicted = slots == EVICTED
        if t >= 0 and self.tenancy.asleep[t] and evicted.any():
            out[evicted] = self.shelf.fetch(ids[evicted]).owners == t
        if t in self.offloaded and (slots == -1).any():  # its archive: vectors it alone sees, and owns
            out[slots == -1] = self.shelf.holders(ids[slots == -1]) == t
        return out

    def owners(self, ids: np.ndarray) -> list[str]:
        """The owner of each id (NotFoundError for unknown ones; offloaded ones are restored first)."""
        slots = self._known(ids)
        numbers = self.owner[np.maximum(slots, 0)]
        evicted = slots == EVICTED
        if evicted.any():
            numbers = numbers.copy()
            numbers[evicted] = self.shelf.fetch(ids[evicted]).owners
        return [self.tenant_names[t] for t in numbers.tolist()]

    def _require_owner(self, slots: np.ndarray, tenant: str) -> None:
        t = self.tenant_numbers.get(tenant, -2)
        others = int(np.count_nonzero(self.owner[slots] != t))
        if others:
            raise PermissionDeniedError(
                f"{others} of these vectors are owned by another tenant: only a vector's owner (the tenant that "
                f"inserted it) may overwrite it or its payload; {tenant!r} may only read them")

    def _pass_ownership(self, slots: np.ndarray, t: int) -> None:
        """Tenant t no longer sees these slots (others still do): those it owned pass to the
        longest-standing tenant left (the lowest tenant number) in each one's access list."""
        slots = slots[self.owner[slots] == t]
        if slots.size:
            tenants, origin = self.tenancy.access.gather(slots)
            first = np.searchsorted(origin, np.arange(slots.size))
            self.owner[slots] = np.minimum.reduceat(tenants, first)

    def _live_slots(self) -> np.ndarray:
        return np.flatnonzero(self.slot_ids[: self.n_slots] >= 0)

    def _prepared(self, slots: np.ndarray) -> np.ndarray:
        x = self.vectors[slots]
        if self.metric is Metric.COSINE:
            x *= self.inv_norm[slots, None]
        return x

    def _encode(self, slots: np.ndarray, prepared: np.ndarray) -> None:
        if self.codes is not None:
            self.codes.write(slots, prepared)

    def _scan_arguments(self) -> tuple:
        """The tenant-scan kernels' arguments (search.py), from the tenants' directory to their counts."""
        tenancy, members, directory, codes = self.tenancy, self.tenancy.members, self.tenancy.directory, self.codes
        coded = (scalar.NONE, scalar.NO_SCALE, scalar.NO_SCALE) if codes is None else (codes.flat, codes.lo, codes.step)
        return (directory.data, directory.start, directory.size, tenancy.shortlist_node, self.tree.flat,
                members.data, members.start, members.size, self.vectors, self.inv_norm, *coded, tenancy.count)

    def _numbers(self, tenants: list[str]) -> np.ndarray:
        """The numbers of a batch's tenants, their sub-trees built."""
        numbers = np.fromiter((self._tenant(t) for t in tenants), np.int64, len(tenants))
        if self.tenancy.any_pending(numbers):
            self._changing_read()
            self.tenancy.ensure_all(numbers)
        return numbers

    def _maybe_train(self) -> bool:
        if self.train_inline and self.training_due():
            self.train()
            return True
        return False

    def _ensure(self, t: int) -> None:
        """Tenant t's sub-tree, built now if it is still pending from opening."""
        if self.tenancy.pending(t):
            self._changing_read()
            self.tenancy.ensure(t)

    def _changing_read(self) -> None:
        if not self.exclusive():
            raise ExclusiveNeeded


def _grow(array: np.ndarray, rows: int, fill) -> np.ndarray:
    # np.zeros leaves the spare rows untouched (not resident) until they are used
    grown = np.zeros((rows,) + array.shape[1:], array.dtype) if fill == 0 else np.full((rows,) + array.shape[1:], fill, array.dtype)
    grown[: array.shape[0]] = array
    return grown
