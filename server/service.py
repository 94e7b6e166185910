"""The gRPC servicers: each RPC is a few lines that check the caller, unpack, call the Database API
and pack the answer. Engine errors become status codes here, and only here."""

import functools
import json
import logging
import time

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from curator.errors import (
    AlreadyExistsError,
    CuratorError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from curator.index import IndexConfig
from curator_proto import filters_wire, wire
from curator_proto.v1 import curator_pb2 as pb
from curator_proto.v1 import curator_pb2_grpc as rpc

from .auth import KeyRing, Principal
from .exchange import Exchange
from .streams import OpenStreams

log = logging.getLogger("curator.server")

QUICK_EF = IndexConfig.ef  # stream searches up to this effort are answered on the polling thread


class Limits:
    def __init__(self, max_message_bytes: int = 64 << 20, max_batch: int = 100_000, max_k: int = 1_000):
        self.max_message_bytes, self.max_batch, self.max_k = max_message_bytes, max_batch, max_k

    def batch(self, n: int, what: str = "ids") -> None:
        if n > self.max_batch:
            raise ResourceExhaustedError(f"a batch of {n} {what} exceeds the server's limit of {self.max_batch} "
                                         "(max_batch); split it")

    def k(self, k: int) -> None:
        if k > self.max_k:
            raise ResourceExhaustedError(f"k={k} exceeds the server's limit of {self.max_k} (max_k)")


def abort(context, error: CuratorError) -> None:
    """End a call with the engine error's status code, its class named in the trailing metadata."""
    context.set_trailing_metadata(((wire.ERROR_KEY, type(error).__name__),))
    context.abort(grpc.StatusCode[error.code], str(error))


def handler(method):
    """Authenticate, run, and turn every engine error into its status code; nothing escapes."""

    @functools.wraps(method)
    def wrapped(self, request, context):
        try:
            return method(self, request, self.keys.principal(context))
        except CuratorError as error:
            abort(context, error)
        except Exception:  # a bug: log it, answer INTERNAL, keep serving
            log.exception("internal error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; see the server log")

    return wrapped


class _Base:
    def __init__(self, db, keys: KeyRing, limits: Limits):
        self.db, self.keys, self.limits = db, keys, limits

    def _ids(self, values, principal: Principal | None = None, collection=None) -> np.ndarray:
        ids = np.asarray(values, np.int64)
        self.limits.batch(ids.size)
        if principal is not None and not principal.admin:
            # a tenant key sees only its tenants' vectors; others do not exist for it
            seen = self._seen(collection, ids, principal)
            if not seen.all():
                raise NotFoundError(f"{int((~seen).sum())} unknown id(s), e.g. {ids[~seen][:5].tolist()}")
        return ids

    @staticmethod
    def _seen(collection, ids: np.ndarray, principal: Principal) -> np.ndarray:
        seen = np.zeros(ids.size, bool)
        for tenant in principal.tenants:
            seen |= collection.visible_to(ids, tenant=tenant)
        return seen

    @staticmethod
    def _tenant(tenant: str, principal: Principal) -> str | None:
        """A tenant the key may act for, or None ("": every vector) for an admin key."""
        if tenant:
            principal.require_tenant(tenant)
            return tenant
        principal.require_admin("searching every tenant's vectors (name a tenant)")
        return None


class CollectionsService(_Base, rpc.CollectionsServicer):
    def _info(self, col) -> pb.CollectionInfo:
        stats = col.stats()
        return pb.CollectionInfo(name=col.name, dim=col.dim, metric=col.metric, vectors=stats["vectors"],
                                 tenants=stats["tenants"])

    @handler
    def Create(self, request, principal):
        principal.require_admin("creating a collection")
        try:
            options = json.loads(request.options_json) if request.options_json else {}
        except json.JSONDecodeError as error:
            raise InvalidArgumentError(f"options_json is not JSON: {error}") from None
        if not isinstance(options, dict):
            raise InvalidArgumentError("options_json must be a JSON object")
        col = self.db.create_collection(request.name, int(request.dim), request.metric or "l2", **options)
        return self._info(col)

    @handler
    def Describe(self, request, principal):
        return self._info(self.db.collection(request.name))

    @handler
    def List(self, request, principal):
        return pb.ListCollectionsResponse(names=self.db.list_collections())

    @handler
    def Drop(self, request, principal):
        principal.require_admin("dropping a collection")
        self.db.drop_collection(request.name)
        return pb.Empty()


class TenantsService(_Base, rpc.TenantsServicer):
    @handler
    def Create(self, request, principal):
        principal.require_tenant(request.tenant)
        self.db.collection(request.collection).create_tenant(request.tenant)
        return pb.Empty()

    @handler
    def List(self, request, principal):
        tenants = self.db.collection(request.name).tenants()
        return pb.ListTenantsResponse(tenants=[t for t in tenants if principal.may_act_for(t)])

    @handler
    def Drop(self, request, principal):
        principal.require_tenant(request.tenant)
        self.db.collection(request.collection).drop_tenant(request.tenant)
        return pb.Empty()

    @handler
    def Stats(self, request, principal):
        principal.require_tenant(request.tenant)
        count = self.db.collection(request.collection).count(tenant=request.tenant)
        return pb.TenantStats(tenant=request.tenant, vectors=count)


class VectorsService(_Base, rpc.VectorsServiceServicer):
    @handler
    def Insert(self, request, principal):
        principal.require_tenant(request.tenant)
        col = self.db.collection(request.collection)
        ids = self._ids(request.ids)
        vectors = wire.unpack(request.vectors)
        payloads = filters_wire.unpack_payloads(request.payloads) or None  # none given: keep (upsert)
        if request.upsert:
            if not principal.admin:  # a tenant key may overwrite only vectors its tenants can see
                taken = col.contains(ids) & ~self._seen(col, ids, principal)
                if taken.any():
                    raise AlreadyExistsError(f"{int(taken.sum())} id(s) already exist and are not yours to "
                                             f"overwrite, e.g. {ids[taken][:5].tolist()}")
            col.upsert(ids, vectors, tenant=request.tenant, payloads=payloads)
        else:
            col.insert(ids, vectors, tenant=request.tenant, payloads=payloads)
        return pb.WriteResponse(changed=ids.size)

    @handler
    def SetPayloads(self, request, principal):
        col = self.db.collection(request.collection)
        ids = self._ids(request.ids, principal, col)
        payloads = filters_wire.unpack_payloads(request.payloads)
        if len(payloads) not in (1, ids.size):
            raise InvalidArgumentError(f"{len(payloads)} payloads for {ids.size} ids; give one per id or one for all")
        col.set_payloads(ids, payloads[0] if len(payloads) == 1 else payloads)
        return pb.WriteResponse(changed=ids.size)

    @handler
    def GetPayloads(self, request, principal):
        col = self.db.collection(request.collection)
        payloads = col.get_payloads(self._ids(request.ids, principal, col))
        return pb.PayloadsResponse(payloads=[filters_wire.pack_payload(p) for p in payloads])

    @handler
    def PayloadSchema(self, request, principal):
        principal.require_admin("reading the payload schema (it names every tenant's fields)")
        return pb.SchemaResponse(fields=self.db.collection(request.name).payload_schema())

    @handler
    def Get(self, request, principal):
        col = self.db.collection(request.collection)
        return pb.GetResponse(vectors=wire.pack(col.get(self._ids(request.ids, principal, col))))

    @handler
    def Delete(self, request, principal):
        principal.require_admin("deleting vectors for every tenant (revoke your tenant's access instead)")
        col = self.db.collection(request.collection)
        col.delete(self._ids(request.ids))
        return pb.WriteResponse(changed=len(request.ids))

    @handler
    def Grant(self, request, principal):
        principal.require_tenant(request.tenant)
        col = self.db.collection(request.collection)
        return pb.WriteResponse(changed=col.grant(self._ids(request.ids, principal, col), tenant=request.tenant))

    @handler
    def Revoke(self, request, principal):
        principal.require_tenant(request.tenant)
        col = self.db.collection(request.collection)
        col.revoke(self._ids(request.ids, principal, col), tenant=request.tenant)
        return pb.WriteResponse(changed=len(request.ids))

    @handler
    def Count(self, request, principal):
        col = self.db.collection(request.collection)
        if request.tenant:
            principal.require_tenant(request.tenant)
            return pb.CountResponse(count=col.count(tenant=request.tenant))
        principal.require_admin("counting every tenant's vectors")
        return pb.CountResponse(count=col.count())

    @handler
    def TenantsOf(self, request, principal):
        col = self.db.collection(request.collection)
        self._ids([request.id], principal, col)
        return pb.ListTenantsResponse(tenants=[t for t in col.tenants_of(request.id) if principal.may_act_for(t)])

    @handler
    def Contains(self, request, principal):
        col = self.db.collection(request.collection)
        ids = self._ids(request.ids)
        found = col.contains(ids) if principal.admin else self._seen(col, ids, principal)
        return pb.Flags(flags=found.astype(np.uint8).tobytes())

    @handler
    def VisibleTo(self, request, principal):
        principal.require_tenant(request.tenant)
        col = self.db.collection(request.collection)
        return pb.Flags(flags=col.visible_to(self._ids(request.ids), tenant=request.tenant).astype(np.uint8).tobytes())

    @handler
    def Scroll(self, request, principal):
        col = self.db.collection(request.collection)
        if request.tenant:
            principal.require_tenant(request.tenant)
        else:
            principal.require_admin("scrolling every tenant's vectors")
        limit = request.limit or 1000
        self.limits.batch(limit, "ids per page")
        ids, after = col.scroll(tenant=request.tenant or None, after_id=request.after_id, limit=limit)
        return pb.ScrollResponse(ids=ids.tolist(), next_after_id=after)

    @handler
    def Train(self, request, principal):
        principal.require_admin("training the shared tree")
        col = self.db.collection(request.collection)
        col.train(wire.unpack(request.sample, "sample") if request.sample.data else None)
        return pb.Empty()


class SearchService(_Base, rpc.SearchServicer):
    def __init__(self, db, keys: KeyRing, limits: Limits, streams: OpenStreams, observe):
        super().__init__(db, keys, limits)
        self.streams, self.observe = streams, observe  # observe(method, code, seconds, tenant): metrics

    @staticmethod
    def _filter(request) -> dict | None:
        return filters_wire.unpack_filter(request.filter) if request.HasField("filter") else None

    def _search(self, request, principal) -> pb.SearchResponse:
        tenant = self._tenant(request.tenant, principal)
        self.limits.k(request.k)
        col = self.db.collection(request.collection)
        found = col.search(wire.unpack_one(request.query), k=int(request.k), tenant=tenant,
                           filter=self._filter(request), ef=request.ef or None)
        return pb.SearchResponse(ids=found.ids.tolist(), distances=found.distances.tolist(), plan=found.plan)

    @handler
    def Search(self, request, principal):
        return self._search(request, principal)

    def SearchStream(self, requests, context):
        """One reply per request, errors in the reply; the key is checked once, when the stream opens.
        When grpcio lets `Exchange` drive the call, a reply and the next request travel in one
        batch, and a quick search is answered on the polling thread (`_quick`)."""
        try:
            principal = self.keys.principal(context)
            self.streams.open(context)
        except CuratorError as error:
            abort(context, error)
        try:
            exchange = Exchange.of(requests, functools.partial(self._quick, principal, context))
            if exchange is None:
                for request in requests:
                    yield self._answer(request, principal, context)
                return
            request = next(requests, None)
            while request is not None:
                message = exchange.send(self._answer(request, principal, context).SerializeToString())
                try:
                    request = None if message is None else pb.SearchRequest.FromString(message)
                except DecodeError:
                    abort(context, InvalidArgumentError("a SearchStream message was not a SearchRequest"))
        finally:
            self.streams.close(context)

    def _quick(self, principal, context, message: bytes) -> bytes | None:
        """The reply to a stream request that cannot take long, or None to leave it to the
        handler's thread: a tenant's search without a filter, at no more than the default effort
        (bounded work; a filter may build a mask, and a search of every vector may build the graph)."""
        try:
            request = pb.SearchRequest.FromString(message)
        except DecodeError:
            return None  # the handler says what is wrong with it
        if not request.tenant or request.HasField("filter") or request.ef > QUICK_EF:
            return None
        return self._answer(request, principal, context).SerializeToString()

    def _answer(self, request, principal, context) -> pb.SearchStreamReply:
        """One search of a stream: its result, or its error as a Failure (the stream goes on)."""
        self.streams.busy(context)
        start = time.perf_counter()
        try:
            reply, code = pb.SearchStreamReply(result=self._search(request, principal)), "OK"
        except CuratorError as error:
            reply, code = pb.SearchStreamReply(error=wire.failure(error)), error.code
        except Exception:  # a bug: log it, answer INTERNAL for this query, keep the stream
            log.exception("internal error in SearchStream")
            reply, code = pb.SearchStreamReply(error=pb.Failure(
                code="INTERNAL", message="internal error in SearchStream; see the server log")), "INTERNAL"
        self.observe("SearchStream", grpc.StatusCode[code], time.perf_counter() - start, request.tenant)
        self.streams.idle(context)
        return reply

    @handler
    def SearchBatch(self, request, principal):
        names = list(request.tenants)  # one per query, one for all, or none ("" or none: every vector)
        for name in set(names) or {""}:
            self._tenant(name, principal)
        tenants = (names[0] or None) if len(names) == 1 else ([name or None for name in names] or None)
        self.limits.k(request.k)
        col = self.db.collection(request.collection)
        queries = wire.unpack(request.queries, "queries")
        self.limits.batch(queries.shape[0], "queries")
        found = col.search_batch(queries, k=int(request.k), tenants=tenants, filter=self._filter(request),
                                 ef=request.ef or None)
        return pb.SearchBatchResponse(ids=found.ids.ravel().tolist(), distances=found.distances.ravel().tolist(),
                                      plans=found.plan)


class AdminService(_Base, rpc.AdminServicer):
    def __init__(self, db, keys, limits, info: dict):
        super().__init__(db, keys, limits)
        self.info = info

    @handler
    def Snapshot(self, request, principal):
        principal.require_admin("taking a snapshot")
        self.db.snapshot(request.path)
        return pb.Empty()

    @handler
    def ServerInfo(self, request, principal):
        return pb.ServerInfoResponse(auth=not self.keys.open, max_message_bytes=self.limits.max_message_bytes,
                                     max_batch=self.limits.max_batch, max_k=self.limits.max_k, **self.info)

