"""Each API method as a `Call`: the request to send and how to read the reply, with no I/O.

The blocking SDK (`remote.py`) and the asyncio SDK (`aio.py`) both run these, so the two can
never disagree about the wire; they differ only in how they wait.
"""

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from curator import errors, validate
from curator.api import SearchResult
from curator_proto import filters_wire, wire
from curator_proto.v1 import curator_pb2 as pb


@dataclass(frozen=True)
class Call:
    service: str  # which stub: collections, tenants, vectors, search, admin
    method: str
    request: object
    idempotent: bool  # safe to retry when the server is UNAVAILABLE
    parse: Callable = lambda reply: None


def _flags(reply) -> np.ndarray:
    return np.frombuffer(reply.flags, np.uint8).astype(bool)


def _tenant(tenant: str | None) -> str:
    """A tenant as the wire names it: "" for none (every vector of the collection)."""
    if tenant is None:
        return ""
    return validate.name(tenant, "tenant")


def _batch_result(reply: pb.SearchBatchResponse, shape: tuple[int, int]) -> SearchResult:
    """A batch's (nq, k) ids and distances, packed (as asked) or, from an older server, listed."""
    if reply.packed_ids or not reply.ids:
        ids = np.frombuffer(reply.packed_ids, "<i8").astype(np.int64).reshape(shape)
        distances = np.frombuffer(reply.packed_distances, "<f4").astype(np.float32).reshape(shape)
    else:
        ids = np.array(reply.ids, np.int64).reshape(shape)
        distances = np.array(reply.distances, np.float32).reshape(shape)
    return SearchResult(ids, distances, list(reply.plans))


def _search_result(reply: pb.SearchResponse) -> SearchResult:
    n = len(reply.ids)
    return SearchResult(np.fromiter(reply.ids, np.int64, n), np.fromiter(reply.distances, np.float32, n), reply.plan)


def _filter(spec: dict | None) -> pb.Filter | None:
    return None if spec is None else filters_wire.pack_filter(spec)


class CollectionCalls:
    def __init__(self, info: pb.CollectionInfo):
        self.name, self.dim, self.metric = info.name, info.dim, info.metric

    def _ids(self, ids) -> list:
        return validate.ids(ids)

    def _pack(self, vectors) -> pb.Vectors:
        return wire.pack(validate.vectors(vectors, self.dim))

    def insert(self, ids, vectors, tenant, payloads=None, upsert=False) -> Call:
        packed = self._pack(vectors)
        if ids is None and not upsert:  # the server draws them, and answers with them
            n = len(packed.data) // (4 * packed.dim)
            request = pb.InsertRequest(collection=self.name, vectors=packed, tenant=tenant,
                                       payloads=filters_wire.pack_payloads(payloads, n))
            return Call("vectors", "Insert", request, False, lambda reply: np.asarray(reply.ids, np.int64))
        ids = self._ids(ids)
        request = pb.InsertRequest(collection=self.name, ids=ids, vectors=packed, tenant=tenant,
                                   upsert=upsert, payloads=filters_wire.pack_payloads(payloads, len(ids)))
        given = np.asarray(ids, np.int64)
        return Call("vectors", "Insert", request, idempotent=upsert, parse=lambda reply: given)

    def set_payloads(self, ids, payloads, tenant=None) -> Call:
        ids = self._ids(ids)
        if isinstance(payloads, dict):  # one for all
            packed = [filters_wire.pack_payload(payloads)]
        else:
            packed = filters_wire.pack_payloads(payloads, len(ids))
        request = pb.SetPayloadsRequest(collection=self.name, ids=ids, payloads=packed,
                                        tenant=validate.name(tenant, "tenant") if tenant is not None else "")
        return Call("vectors", "SetPayloads", request, True)

    def get_payloads(self, ids) -> Call:
        return Call("vectors", "GetPayloads", pb.IdsRequest(collection=self.name, ids=self._ids(ids)), True,
                    lambda r: filters_wire.unpack_payloads(r.payloads))

    def payload_schema(self) -> Call:
        return Call("vectors", "PayloadSchema", pb.CollectionRef(name=self.name), True,
                    lambda r: dict(sorted(r.fields.items())))

    def grant(self, ids, tenant) -> Call:
        request = pb.GrantRequest(collection=self.name, ids=self._ids(ids), tenant=tenant)
        return Call("vectors", "Grant", request, True, lambda r: int(r.changed))

    def revoke(self, ids, tenant) -> Call:
        return Call("vectors", "Revoke", pb.GrantRequest(collection=self.name, ids=self._ids(ids), tenant=tenant), True)

    def delete(self, ids) -> Call:
        return Call("vectors", "Delete", pb.IdsRequest(collection=self.name, ids=self._ids(ids)), False)

    def get(self, ids) -> Call:
        return Call("vectors", "Get", pb.IdsRequest(collection=self.name, ids=self._ids(ids)), True,
                    lambda r: wire.unpack(r.vectors))

    def tenants_of(self, id_) -> Call:
        (id_,) = self._ids([id_])
        return Call("vectors", "TenantsOf", pb.TenantsOfRequest(collection=self.name, id=int(id_)), True,
                    lambda r: sorted(r.tenants))

    def contains(self, ids, archived: bool = True) -> Call:
        request = pb.IdsRequest(collection=self.name, ids=self._ids(ids), skip_archived=not archived)
        return Call("vectors", "Contains", request, True, _flags)

    def owned(self, ids, tenant) -> Call:
        request = pb.GrantRequest(collection=self.name, ids=self._ids(ids), tenant=tenant)
        return Call("vectors", "Owned", request, True, _flags)

    def owners(self, ids) -> Call:
        request = pb.IdsRequest(collection=self.name, ids=self._ids(ids))
        return Call("vectors", "Owners", request, True, lambda r: list(r.tenants))

    def transfer(self, ids, to, tenant) -> Call:
        request = pb.TransferRequest(collection=self.name, ids=self._ids(ids), to=validate.name(to, "to"),
                                     tenant=tenant or "")
        return Call("vectors", "Transfer", request, False)

    def visible_to(self, ids, tenant) -> Call:
        request = pb.GrantRequest(collection=self.name, ids=self._ids(ids), tenant=tenant)
        return Call("vectors", "VisibleTo", request, True, _flags)

    def count(self, tenant) -> Call:
        return Call("vectors", "Count", pb.CountRequest(collection=self.name, tenant=tenant or ""), True,
                    lambda r: int(r.count))

    def scroll(self, tenant, after_id, limit) -> Call:
        request = pb.ScrollRequest(collection=self.name, tenant=tenant or "", after_id=after_id, limit=limit)
        return Call("vectors", "Scroll", request, True, lambda r: (np.array(r.ids, np.int64), int(r.next_after_id)))

    def tenants(self) -> Call:
        return Call("tenants", "List", pb.CollectionRef(name=self.name), True, lambda r: sorted(r.tenants))

    def create_tenant(self, tenant) -> Call:
        return Call("tenants", "Create", pb.TenantRef(collection=self.name, tenant=tenant), False)

    def drop_tenant(self, tenant) -> Call:
        return Call("tenants", "Drop", pb.TenantRef(collection=self.name, tenant=tenant), False)

    def tenant_state(self, tenant, change: str = "State") -> Call:
        """State (a read), or Deactivate / Activate / Offload (writes that return the state after them)."""
        request = pb.TenantRef(collection=self.name, tenant=validate.name(tenant, "tenant"))
        return Call("tenants", change, request, True, lambda r: r.state)

    def tenant_since(self, tenant) -> Call:
        request = pb.TenantRef(collection=self.name, tenant=validate.name(tenant, "tenant"))
        return Call("tenants", "State", request, True, lambda r: int(r.since_ns))

    def _query(self, query) -> bytes:
        """One query as float32 bytes. A float32 vector of the right shape goes as it is: the
        server refuses NaN and infinity in it with the same InvalidArgumentError."""
        if type(query) is np.ndarray and query.dtype == np.float32 and query.shape == (self.dim,):
            return query.tobytes()
        query = validate.vectors(query, self.dim)
        if query.shape[0] != 1:
            raise errors.InvalidArgumentError(f"search takes one query, got {query.shape[0]}; use search_batch")
        return query.tobytes()

    def search(self, query, k, tenant: str | None, ef, filter: dict | None = None) -> Call:
        request = pb.SearchRequest(collection=self.name, k=validate.k(k), tenant=_tenant(tenant),
                                   ef=validate.ef(ef, 0), filter=_filter(filter))
        request.query.dim, request.query.data = self.dim, self._query(query)
        return Call("search", "Search", request, True, _search_result)

    def search_batch(self, queries, k, tenants: str | Sequence[str] | None, ef, filter: dict | None = None) -> Call:
        queries = validate.vectors(queries, self.dim)
        k = validate.k(k)
        if tenants is None or isinstance(tenants, str):
            tenants = [_tenant(tenants)]  # one for every query ("": every vector)
        else:
            tenants = [_tenant(t) for t in tenants]
            if len(tenants) != queries.shape[0]:
                raise errors.InvalidArgumentError(f"{queries.shape[0]} queries but {len(tenants)} tenants; "
                                                  "give one per query")
        request = pb.SearchBatchRequest(collection=self.name, queries=wire.pack(queries), k=k, tenants=tenants,
                                        ef=validate.ef(ef, 0), filter=_filter(filter), packed=True)
        shape = (queries.shape[0], k)
        return Call("search", "SearchBatch", request, True, lambda r: _batch_result(r, shape))

    def train(self, sample) -> Call:
        request = pb.TrainRequest(collection=self.name)
        if sample is not None:
            request.sample.CopyFrom(self._pack(sample))
        return Call("vectors", "Train", request, True)

    def stats(self) -> Call:
        return Call("collections", "Describe", pb.CollectionRef(name=self.name), True, _stats)


def _stats(reply: pb.CollectionInfo) -> dict:
    """The counts of Describe, and for an admin key while some tenant is inactive or offloaded,
    its states'."""
    stats = {"vectors": int(reply.vectors), "tenants": int(reply.tenants)}
    if reply.inactive_tenants or reply.offloaded_tenants:
        stats.update(resident_vectors=int(reply.resident_vectors),
                     evicted_vectors=int(reply.vectors - reply.resident_vectors - reply.offloaded_vectors),
                     inactive_tenants=int(reply.inactive_tenants), offloaded_tenants=int(reply.offloaded_tenants),
                     offloaded_vectors=int(reply.offloaded_vectors))
    return stats


def create_collection(name, dim, metric, options) -> Call:
    validate.name(name, "collection name")
    request = pb.CreateCollectionRequest(name=name, dim=validate.dim(dim), metric=str(metric),
                                         options_json=json.dumps(options))
    return Call("collections", "Create", request, False, lambda r: r)


def describe_collection(name) -> Call:
    return Call("collections", "Describe", pb.CollectionRef(name=name), True, lambda r: r)


def list_collections() -> Call:
    return Call("collections", "List", pb.ListCollectionsRequest(), True, lambda r: sorted(r.names))


def drop_collection(name) -> Call:
    return Call("collections", "Drop", pb.CollectionRef(name=name), False)


def snapshot(path) -> Call:
    return Call("admin", "Snapshot", pb.SnapshotRequest(path=str(path)), False)


def server_info() -> Call:
    return Call("admin", "ServerInfo", pb.Empty(), True,
                lambda r: {f.name: getattr(r, f.name) for f in r.DESCRIPTOR.fields})
