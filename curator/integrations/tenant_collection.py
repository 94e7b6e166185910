"""One tenant's documents in a collection: what the LangChain and LlamaIndex stores share.

A framework names documents with strings and sees a store of its own; Curator names vectors with
int64 ids and shares a collection between tenants. A `TenantCollection` is a collection as one
tenant sees it:

- A document's key (the framework's string id) is stored as the id `key_id(tenant, key)`: the
  first 63 bits of a BLAKE2b hash of the tenant and the key. The same key always gives the same id,
  and two tenants' equal keys ("1", "2", ...) give different ids, so their stores never collide in
  a shared collection. The key itself is kept in the payload (`KEY_FIELD`) and read back from
  there, never recomputed. Two keys of one tenant meeting on one id is a 1 in 2^63 chance per
  pair (about 1 in 10^7 for a million documents); the second would overwrite the first.
- Writes are upserts by the tenant, which owns what it writes. Deletes are revokes: a tenant key
  may not delete for every tenant, and revoking a vector's last tenant deletes it.
- Every read and search names the tenant: nothing here reaches a vector the tenant cannot see.
"""

import hashlib
from collections import Counter

import numpy as np

from ..errors import AlreadyExistsError, InvalidArgumentError
from ..filters import check as check_filter

KEY_FIELD = "_key"  # the document's key (the framework's string id), in its payload


def key_id(tenant: str, key: str) -> int:
    """The id (0 <= id < 2^63) that `tenant`'s document `key` is stored under."""
    h = hashlib.blake2b(digest_size=8)
    tenant_bytes = tenant.encode()
    h.update(len(tenant_bytes).to_bytes(4, "big"))  # length first: ("ab", "c") and ("a", "bc") differ
    h.update(tenant_bytes)
    h.update(key.encode())
    return int.from_bytes(h.digest(), "big") >> 1


class TenantCollection:
    """`collection` (embedded or remote) as `tenant` sees it. The tenant is created if it is new,
    so that an empty store answers searches with nothing rather than NotFoundError."""

    PAGE = 1_000  # ids a search or scroll returns per call while revoking (a server's --max-k is 1 000)

    def __init__(self, collection, tenant: str):
        if not isinstance(tenant, str) or not tenant:
            raise InvalidArgumentError(f"a store needs its tenant, a non-empty string; got {tenant!r}")
        self.collection, self.tenant = collection, tenant
        try:
            collection.create_tenant(tenant)
        except AlreadyExistsError:
            pass

    @property
    def dim(self) -> int:
        return self.collection.dim

    @property
    def metric(self) -> str:
        return self.collection.metric

    def ids(self, keys) -> np.ndarray:
        for key in keys:
            if not isinstance(key, str) or not key:
                raise InvalidArgumentError(f"document ids are non-empty strings; got {key!r}")
        return np.fromiter((key_id(self.tenant, key) for key in keys), dtype=np.int64, count=len(keys))

    def upsert(self, keys: list[str], vectors, payloads: list[dict]) -> None:
        """Store documents under their keys (new ones inserted, the tenant's own ones replaced)."""
        ids = self.ids(keys)
        if len(set(keys)) != len(keys):
            repeated = sorted(key for key, n in Counter(keys).items() if n > 1)[:3]
            raise InvalidArgumentError(f"document ids repeated in one call: {repeated}")
        for key, payload in zip(keys, payloads, strict=True):
            payload[KEY_FIELD] = key
        self.collection.upsert(ids, vectors, tenant=self.tenant, payloads=payloads)

    def search(self, vector, k: int, filter: dict | None = None, ef: int | None = None):
        """(ids, distances) of the tenant's k nearest documents matching `filter` (ours)."""
        return self.collection.search(np.asarray(vector, dtype=np.float32), k=k, tenant=self.tenant, filter=filter,
                                      ef=ef)

    def payloads(self, ids) -> list[dict]:
        return self.collection.get_payloads(ids) if len(ids) else []

    def vectors(self, ids) -> np.ndarray:
        return self.collection.get(ids) if len(ids) else np.empty((0, self.dim), np.float32)

    def visible(self, ids) -> np.ndarray:
        """Those of `ids` the tenant sees."""
        ids = np.asarray(ids, dtype=np.int64)
        return ids[self.collection.visible_to(ids, tenant=self.tenant)] if ids.size else ids

    def revoke(self, ids) -> int:
        """Take these documents from the tenant (deleted when no other tenant sees them); ids it
        does not see are skipped. Returns how many it saw."""
        seen = self.visible(ids)
        if seen.size:
            self.collection.revoke(seen, tenant=self.tenant)
        return int(seen.size)

    def revoke_matching(self, spec: dict) -> int:
        """Revoke every document of the tenant whose payload matches `spec`, a well-formed filter
        this package built. A page at a time: a search for PAGE matches (any direction will do:
        every match is taken), revoked, then the next. A search matching nothing of the tenant's
        may be refused as naming a field or type none of its vectors holds: for a well-formed
        filter that too means there is nothing (left) to revoke."""
        check_filter(spec)  # the limits, before anything runs
        probe = np.ones(self.dim, dtype=np.float32)
        revoked = 0
        while True:
            try:
                ids, _ = self.search(probe, self.PAGE, spec, ef=4 * self.PAGE)
            except InvalidArgumentError:
                return revoked
            if ids.size == 0:
                return revoked
            self.collection.revoke(ids, tenant=self.tenant)
            revoked += int(ids.size)

    def revoke_all(self) -> int:
        """Revoke every document of the tenant."""
        revoked, after = 0, -1
        while True:
            ids, after = self.collection.scroll(tenant=self.tenant, after_id=after, limit=self.PAGE)
            if ids.size:
                self.collection.revoke(ids, tenant=self.tenant)
                revoked += int(ids.size)
            if after < 0:
                return revoked
