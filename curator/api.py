"""The public API, declared once: what a Database and a Collection can do.

`curator.open(":memory:")` (embedded, in this process) and, in later issues, `curator.open(path)`
(durable) and `curator.connect(address)` (remote) return implementations of these classes, and
one shared test suite runs against each. Arrays go in and come out as numpy arrays; errors are
the classes of `curator.errors`.

Conventions:
- ids are 64-bit integers >= 0 chosen by the user; -1 pads results.
- distances are smaller-is-better for every metric (see `curator.metric`).
- a tenant comes into being when it is first granted a vector (insert or grant) and leaves when
  dropped; naming an unknown tenant elsewhere is NotFoundError.
- a vector lives while at least one tenant may see it: revoking its last tenant, or dropping
  that tenant, deletes it.
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from .quotas import Quota, TenantQuota


class SearchResult(tuple):
    """(ids, distances), which unpacks like a pair, and the plan that found them."""

    def __new__(cls, ids: np.ndarray, distances: np.ndarray, plan: str):
        result = super().__new__(cls, (ids, distances))
        result.plan = plan
        return result

    @property
    def ids(self) -> np.ndarray:
        return self[0]

    @property
    def distances(self) -> np.ndarray:
        return self[1]


class Collection(ABC):
    """Vectors of one dimension and metric, shared between tenants."""

    name: str
    dim: int
    metric: str

    @abstractmethod
    def insert(self, ids, vectors, *, tenant: str, payloads: list[dict] | None = None) -> np.ndarray:
        """Store new vectors (ids must be new) and grant them to `tenant`, their owner. All or nothing.
        Returns the ids; with `ids=None` the database draws them at random from [2^32, 2^63), where
        they meet no one's and tell nothing of others' (see "Isolation between tenants").

        `payloads`: one dict of metadata per vector (see `curator.payloads` for the types)."""

    @abstractmethod
    def upsert(self, ids, vectors, *, tenant: str, payloads: list[dict] | None = None) -> None:
        """Insert new ids for `tenant`; existing ids, which `tenant` must own, get the new vector and
        keep their tenants. All or nothing. `payloads` replace the existing ones; None keeps them."""

    @abstractmethod
    def set_payloads(self, ids, payloads: list[dict] | dict, *, tenant: str | None = None) -> None:
        """Replace the payloads of these vectors (a list, one per id, or one dict for all); with
        `tenant`, only vectors it owns (a tenant key must name one, or be bound to one)."""

    @abstractmethod
    def owned(self, ids, *, tenant: str) -> np.ndarray:
        """For each id, whether `tenant` owns it.

        Ownership: a vector's owner is the tenant that inserted it, and only the owner may
        overwrite it (upsert) or its payload; the tenants it is granted to read it. When the owner
        gives it up (revoke, drop) while others still see it, the longest-standing of them (the
        first created) owns it from then on."""

    @abstractmethod
    def get_payloads(self, ids) -> list[dict]:
        """The payloads of these vectors ({} for none)."""

    @abstractmethod
    def payload_schema(self) -> dict[str, str]:
        """Field -> the types its values have on the collection's vectors: keyword, keywords, integer,
        float or bool, or several joined by "|" in sorted order ("integer|keyword") where vectors
        hold the field with different types (types are per vector, not fixed by a first value).
        Names every tenant's fields: over gRPC, an admin key's call only."""

    @abstractmethod
    def grant(self, ids, *, tenant: str) -> int:
        """Let `tenant` see these vectors; returns how many it could not see before."""

    @abstractmethod
    def revoke(self, ids, *, tenant: str) -> None:
        """Take these vectors from `tenant` (those it could not see are left alone)."""

    @abstractmethod
    def delete(self, ids) -> None:
        """Delete vectors for every tenant."""

    @abstractmethod
    def get(self, ids) -> np.ndarray:
        """The stored vectors, (n, dim) float32, bit-exact as inserted."""

    @abstractmethod
    def owners(self, ids) -> list[str]:
        """The owner of each vector (see `owned`); unknown ids are NotFoundError. A tenant key
        gets "" for a vector its tenants do not own."""

    @abstractmethod
    def transfer(self, ids, *, to: str, tenant: str | None = None) -> None:
        """Make `to` the owner of these vectors; each must be granted to it already. With
        `tenant`, only vectors `tenant` owns may change hands (over gRPC: an admin key's call)."""

    @abstractmethod
    def tenants_of(self, id_: int) -> list[str]:
        """The tenants that may see one vector."""

    @abstractmethod
    def contains(self, ids, *, archived: bool = True) -> np.ndarray:
        """For each id, whether it is stored; `archived=False`: in memory or evicted, not only in
        an offloaded tenant's archive (which a read of the id restores)."""

    @abstractmethod
    def visible_to(self, ids, *, tenant: str) -> np.ndarray:
        """For each id, whether `tenant` may see it (unknown ids: False)."""

    @abstractmethod
    def count(self, tenant: str | None = None) -> int:
        """Vectors `tenant` may see, or all vectors in the collection."""

    @abstractmethod
    def scroll(self, *, tenant: str | None = None, after_id: int = -1, limit: int = 1000) -> tuple[np.ndarray, int]:
        """Ids in ascending order above `after_id` (all, or those `tenant` may see), at most `limit`,
        and the `after_id` of the next page (-1 when there is none)."""

    @abstractmethod
    def tenants(self) -> list[str]:
        """Names of the tenants of this collection."""

    @abstractmethod
    def create_tenant(self, tenant: str) -> None:
        """Create a tenant with no vectors yet (tenants also come into being on their first grant)."""

    @abstractmethod
    def drop_tenant(self, tenant: str) -> None:
        """Remove a tenant, its grants, and the vectors only it could see."""

    @abstractmethod
    def tenant_since(self, tenant: str) -> int:
        """When `tenant` came into being in this collection (first named by an insert, a grant or
        `create_tenant`), in nanoseconds since the Unix epoch; ownership passes to the tenant
        with the least (see `owned`). 0 for tenants of data directories written before it was
        kept. Asking does not wake the tenant."""

    @abstractmethod
    def tenant_state(self, tenant: str) -> str:
        """"active", "inactive" or "offloaded" (README, "Tenant states"); asking does not wake the tenant."""

    @abstractmethod
    def deactivate_tenant(self, tenant: str) -> None:
        """Make `tenant` inactive: its sub-tree is dropped from memory and the vectors only inactive
        tenants see are evicted (kept on disk); it answers as before, woken by the first call that
        names it (search, count, scroll, insert, upsert, grant, revoke, drop) or `activate_tenant`."""

    @abstractmethod
    def activate_tenant(self, tenant: str) -> None:
        """Make `tenant` active again now (its evicted vectors read back, its sub-tree rebuilt)."""

    @abstractmethod
    def offload_tenant(self, tenant: str) -> None:
        """Make `tenant` offloaded: inactive, and the vectors only it sees moved out of the live
        store into an archive of its own (README, "Tenant states"); restored by the first call
        that names it or needs one of those vectors (or `activate_tenant`)."""

    @abstractmethod
    def search(self, query, k: int = 10, *, tenant: str | None = None, filter: dict | None = None,
               ef: int | None = None) -> "SearchResult":
        """The k nearest vectors `tenant` may see (every vector when None) whose payloads match
        `filter` (`curator.filters`): (ids, distances), best first, min(k, matches) long; the
        result's `plan` says how it was found (exact, tree or graph).

        `ef` is the recall knob (about the number of candidates examined): larger is more exact
        and slower; ef >= 16 * count(tenant) is an exact search.
        """

    @abstractmethod
    def search_batch(self, queries, k: int = 10, *, tenants: str | Sequence[str] | None = None,
                     filter: dict | None = None, ef: int | None = None) -> "SearchResult":
        """Many queries, each for its own tenant, one filter for all: (ids, distances) of shape
        (nq, k), padded with -1 / inf."""

    @abstractmethod
    def train(self, sample=None) -> None:
        """Train the shared clustering tree now, on `sample` or on the stored vectors."""

    @abstractmethod
    def stats(self) -> dict:
        """Counts and memory of the collection."""


class Database(ABC):
    """A set of named collections."""

    @abstractmethod
    def create_collection(self, name: str, dim: int, metric: str = "l2", **options) -> Collection: ...

    @abstractmethod
    def collection(self, name: str) -> Collection: ...

    @abstractmethod
    def list_collections(self) -> list[str]: ...

    @abstractmethod
    def drop_collection(self, name: str) -> None: ...

    @property
    @abstractmethod
    def cache(self):
        """The semantic cache (`curator.cache.Cache`) served beside the collections."""

    @abstractmethod
    def set_quota(self, tenant: str | None, **limits) -> "Quota":
        """Set a tenant's quota (`curator.quotas`; tenant None: the default of every tenant):
        vectors, vector_bytes, payload_bytes, cache_entries, each an int >= 0 or None (unlimited);
        limits not given stay as they are. Persisted; over gRPC, an admin key's call only.
        Returns the tenant's effective quota."""

    @abstractmethod
    def quota(self, tenant: str | None) -> "TenantQuota":
        """A tenant's effective quota and what it holds now, summed over every collection and the
        cache (tenant None: the default quota)."""

    @abstractmethod
    def export_tenant(self, tenant: str, path=None, *, collection: str | None, cache: bool = True):
        """One tenant's archive (`curator.tenant_archive.TenantArchive`): every vector it may see in
        `collection` (None: none) with its payload and whether the tenant owns it, read at one
        moment while writes go on, and (`cache`) its semantic-cache entries. Written to `path`
        (atomically, mode 0600) when given; returned either way. Never names another tenant."""

    @abstractmethod
    def import_tenant(self, source, *, tenant: str | None = None, collection: str | None = None,
                      cache: bool = True, skip_taken: bool = False):
        """Load an archive (a path or a `TenantArchive`) into `collection` (default: the archive's;
        same dimension and metric) for `tenant` (default: the archive's), in batches each all or
        nothing; returns an `ImportReport`. Absent ids are inserted owned by `tenant`, ids it owns
        are restored, ids it sees but another owns are left; ids taken by tenants it cannot see
        refuse the batch (AlreadyExistsError), or with `skip_taken` are skipped. Idempotent: run
        it again to resume one that stopped. See README, "Per-tenant backup"."""

    def copy_tenant(self, tenant: str, to_tenant: str | None = None, *, collection: str | None,
                    to_collection: str | None = None, to: "Database | None" = None, cache: bool = True,
                    skip_taken: bool = False):
        """export_tenant then import_tenant, without a file: into `to_collection` (default: the
        same) of `to` (default: this database) as `to_tenant` (default: the same name). Within one
        collection the vectors are shared with `to_tenant` (granted) rather than stored twice."""
        from .tenant_archive import copy

        return copy(self, tenant, to_tenant, collection=collection, to_collection=to_collection, to=to, cache=cache,
                    skip_taken=skip_taken)

    @abstractmethod
    def snapshot(self, path) -> None:
        """A consistent point-in-time copy of the data directory at `path` (on the server, when remote)."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
