"""The primary's Database as its servicers see it when it has readers (server/replicas.py): every
write is run here, then sent to each reader as the same call through the SDK; reads and
everything else pass through to the engine unchanged.

Only what changes what a search can find is replicated: vectors, grants, payloads, tenants and
their states, collections, training, quotas. The semantic cache, key rates and snapshots live
on the primary alone (readers refuse those calls)."""


class ReplicatedDatabase:
    def __init__(self, db, replicas):
        self._db, self._replicas = db, replicas

    def __getattr__(self, name):
        return getattr(self._db, name)

    def collection(self, name: str):
        return ReplicatedCollection(self._db.collection(name), self._replicas)

    def create_collection(self, name: str, dim: int, metric: str = "l2", **options):
        col = self._replicas.write(name, lambda: self._db.create_collection(name, dim, metric, **options),
                                   lambda _, reader: reader.create_collection(name, dim, metric, **options))
        return ReplicatedCollection(col, self._replicas)

    def drop_collection(self, name: str) -> None:
        def remote(_, reader):
            reader.forget(name)
            reader.drop_collection(name)

        self._replicas.write(name, lambda: self._db.drop_collection(name), remote)

    def set_quota(self, tenant, **limits):
        return self._replicas.write("", lambda: self._db.set_quota(tenant, **limits),
                                    lambda _, reader: reader.set_quota(tenant, **limits))


class ReplicatedCollection:
    def __init__(self, col, replicas):
        self._col, self._replicas = col, replicas

    def __getattr__(self, name):
        return getattr(self._col, name)

    def _write(self, method: str, *args, **kwargs):
        """`method(*args, **kwargs)` here, then on every reader."""
        name = self._col.name
        return self._replicas.write(name, lambda: getattr(self._col, method)(*args, **kwargs),
                                    lambda _, reader: getattr(reader.collection(name), method)(*args, **kwargs))

    def insert(self, ids, vectors, *, tenant: str, payloads=None):
        name = self._col.name  # ids drawn here (ids=None) are sent as they were drawn
        return self._replicas.write(
            name, lambda: self._col.insert(ids, vectors, tenant=tenant, payloads=payloads),
            lambda drawn, reader: reader.collection(name).insert(drawn, vectors, tenant=tenant, payloads=payloads))

    def upsert(self, ids, vectors, *, tenant: str, payloads=None):
        return self._write("upsert", ids, vectors, tenant=tenant, payloads=payloads)

    def set_payloads(self, ids, payloads, *, tenant=None):
        return self._write("set_payloads", ids, payloads, tenant=tenant)

    def grant(self, ids, *, tenant: str):
        return self._write("grant", ids, tenant=tenant)

    def revoke(self, ids, *, tenant: str):
        return self._write("revoke", ids, tenant=tenant)

    def delete(self, ids):
        return self._write("delete", ids)

    def create_tenant(self, tenant: str):
        return self._write("create_tenant", tenant)

    def drop_tenant(self, tenant: str):
        return self._write("drop_tenant", tenant)

    def deactivate_tenant(self, tenant: str):
        return self._write("deactivate_tenant", tenant)

    def activate_tenant(self, tenant: str):
        return self._write("activate_tenant", tenant)

    def offload_tenant(self, tenant: str):
        return self._write("offload_tenant", tenant)

    def train(self, sample=None):
        return self._write("train", sample)
