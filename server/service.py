"""The gRPC servicers: each RPC is a few lines that check the caller, unpack, call the Database API
and pack the answer. Engine errors become status codes here, and only here."""

import contextlib
import functools
import json
import logging
import time
from pathlib import Path, PurePath

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from curator.errors import (
    AlreadyExistsError,
    CuratorError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from curator.index import IndexConfig
from curator_proto import filters_wire, wire
from curator_proto.v1 import curator_pb2 as pb
from curator_proto.v1 import curator_pb2_grpc as rpc

from .auth import KeyRing, Principal
from .decoding import checked
from .probes import TAKEN, ProbeBudget
from .exchange import Exchange
from .rates import READS, UNLIMITED
from .streams import OpenStreams
from .turns import HEAVY_FILTER_BYTES, NO_TURNS

log = logging.getLogger("curator.server")

LISTED_CHUNK = 1 << 13  # results a listed (not packed) batch reply converts in one C call, holding the GIL (~0.5 ms)
QUICK_EF = IndexConfig.ef  # stream searches up to this effort are answered on the polling thread
QUICK_GROUP = 16  # and groups of up to this many such searches (engine calls of ~30-50 us each: under a ms)


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

    @staticmethod
    def batch_reply_bytes(nq: int, k: int) -> int:
        """The most bytes a SearchBatchResponse of nq x k results can take: each id a varint of up
        to 10 bytes (-1 pads take all 10), each distance a packed float of 4, each plan ("exact",
        "tree", "graph"; room for 16 characters) a string with its tag and length, and the two
        packed fields' own tags and lengths."""
        return nq * k * (10 + 4) + nq * (1 + 1 + 16) + 2 * (1 + 10)

    def batch_reply(self, nq: int, k: int) -> None:
        """Refuse, before searching, a batch whose reply could pass max_message_bytes: otherwise
        the server searches, holds nq x k results as Python objects, and then cannot send them
        (measured: 20 000 x 1 000 held 2.3 GB for 7 s before failing)."""
        projected = self.batch_reply_bytes(nq, k)
        if projected > self.max_message_bytes:
            fixed = self.batch_reply_bytes(0, k)
            fits = (self.max_message_bytes - fixed) // (self.batch_reply_bytes(1, k) - fixed)
            raise ResourceExhaustedError(
                f"a reply to {nq} queries x k={k} may take {projected} bytes, over the server's limit of "
                f"{self.max_message_bytes} (max_message_bytes); split the batch (at most {fits} queries at this k)")

    # A listed reply is serialized by protobuf in one C call that holds the GIL (~20 ms a million
    # results here): past this many results a batch must ask for the packed form.
    MAX_LISTED = 1 << 18

    def listed_reply(self, nq: int, k: int) -> None:
        if nq * k > self.MAX_LISTED:
            raise ResourceExhaustedError(
                f"a reply of {nq} x k={k} results is over {self.MAX_LISTED} results listed; set packed=true "
                "(the SDKs do) or split the batch")

    def vectors_reply(self, n: int, dim: int) -> None:
        """Refuse, before reading, a Get whose n vectors of `dim` float32 could not be sent."""
        projected = n * dim * 4 + 32
        if projected > self.max_message_bytes:
            raise ResourceExhaustedError(
                f"{n} vectors of dimension {dim} take {projected} bytes, over the server's limit of "
                f"{self.max_message_bytes} (max_message_bytes); ask for at most "
                f"{(self.max_message_bytes - 32) // (4 * dim)} at a time")


def confined(root: str | None, path: str) -> Path:
    """`path` inside the snapshots directory `root`: a relative name without "..", whose resolved
    location (symbolic links followed) stays inside it. An admin key is a network credential,
    not a shell on the server: it may not write wherever the server's user can."""
    if root is None:
        raise InvalidArgumentError("this server has no snapshots directory (an in-memory server, no --snapshots)")
    relative = PurePath(path)
    if not path or relative.is_absolute() or ".." in relative.parts or relative.drive:
        raise InvalidArgumentError(f"a snapshot path is a relative name inside the server's snapshots directory, "
                                   f"without '..'; got {path!r}")
    base = Path(root)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = (base / relative).resolve()
    if not target.is_relative_to(base.resolve()):
        raise InvalidArgumentError(f"snapshot path {path!r} leads outside the snapshots directory")
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return target


def abort(context, error: CuratorError) -> None:
    """End a call with the engine error's status code, its class named in the trailing metadata
    (and a quota's or rate's limit, and a rate's retry-after)."""
    context.set_trailing_metadata(wire.trailers(error))
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

    def _collection(self, name: str, principal: Principal):
        """A collection the key may reach. One outside its scope is answered exactly as one that
        does not exist, and the existing ones named are only those in scope."""
        try:
            if not principal.may_reach(name):
                raise NotFoundError("")
            return self.db.collection(name)
        except NotFoundError:
            if principal.collections is None:
                raise
            existing = [n for n in self.db.list_collections() if principal.may_reach(n)]
            raise NotFoundError(f"unknown collection {name!r}; existing: {existing}") from None

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
    reader_ports = staticmethod(list)  # () -> the ports of the ready read replicas (server/replicas.py)

    def _info(self, col, principal: Principal) -> pb.CollectionInfo:
        info = self._counts(col, principal)
        info.reader_ports.extend(self.reader_ports())
        return info

    @staticmethod
    def _counts(col, principal: Principal) -> pb.CollectionInfo:
        """The collection's shape and counts; a tenant key's counts are its own tenants' (the
        vectors each may see, summed: one shared between two of them counts twice)."""
        if principal.admin:
            stats = col.stats()
            return pb.CollectionInfo(name=col.name, dim=col.dim, metric=col.metric, vectors=stats["vectors"],
                                     tenants=stats["tenants"], resident_vectors=stats.get("resident_vectors", 0),
                                     inactive_tenants=stats.get("inactive_tenants", 0),
                                     offloaded_tenants=stats.get("offloaded_tenants", 0),
                                     offloaded_vectors=stats.get("offloaded_vectors", 0))
        mine = set(col.tenants()) & principal.tenants
        vectors, tenants = sum(col.count(tenant=t) for t in mine), len(mine)
        return pb.CollectionInfo(name=col.name, dim=col.dim, metric=col.metric, vectors=vectors, tenants=tenants)

    @handler
    def Create(self, request, principal):
        principal.require_admin("creating a collection")
        try:
            options = json.loads(request.options_json) if request.options_json else {}
        except json.JSONDecodeError as error:
            raise InvalidArgumentError(f"options_json is not JSON: {error}") from None
        if not isinstance(options, dict):
            raise InvalidArgumentError("options_json must be a JSON object")
        principal.require_collection(request.name, "create")
        col = self.db.create_collection(request.name, int(request.dim), request.metric or "l2", **options)
        return self._info(col, principal)

    @handler
    def Describe(self, request, principal):
        return self._info(self._collection(request.name, principal), principal)

    @handler
    def List(self, request, principal):
        return pb.ListCollectionsResponse(names=[n for n in self.db.list_collections() if principal.may_reach(n)])

    @handler
    def Drop(self, request, principal):
        principal.require_admin("dropping a collection")
        principal.require_collection(request.name, "drop")
        self.db.drop_collection(request.name)
        return pb.Empty()


class TenantsService(_Base, rpc.TenantsServicer):
    @handler
    def Create(self, request, principal):
        principal.require_tenant(request.tenant)
        self._collection(request.collection, principal).create_tenant(request.tenant)
        return pb.Empty()

    @handler
    def List(self, request, principal):
        tenants = self._collection(request.name, principal).tenants()
        return pb.ListTenantsResponse(tenants=[t for t in tenants if principal.may_act_for(t)])

    @handler
    def Drop(self, request, principal):
        principal.require_tenant(request.tenant)
        self._collection(request.collection, principal).drop_tenant(request.tenant)
        return pb.Empty()

    @handler
    def Stats(self, request, principal):
        principal.require_tenant(request.tenant)
        count = self._collection(request.collection, principal).count(tenant=request.tenant)
        return pb.TenantStats(tenant=request.tenant, vectors=count)

    # Tenant states: a key acts for its own tenants only (require_tenant refuses any other name
    # the same way, whether it exists or not, so no other tenant's state is revealed).

    def _state(self, request, principal, change=None) -> pb.TenantState:
        principal.require_tenant(request.tenant)
        col = self._collection(request.collection, principal)
        if change is not None:
            getattr(col, change)(request.tenant)
        return pb.TenantState(tenant=request.tenant, state=col.tenant_state(request.tenant),
                              since_ns=col.tenant_since(request.tenant))

    @handler
    def State(self, request, principal):
        return self._state(request, principal)

    @handler
    def Deactivate(self, request, principal):
        return self._state(request, principal, "deactivate_tenant")

    @handler
    def Activate(self, request, principal):
        return self._state(request, principal, "activate_tenant")

    @handler
    def Offload(self, request, principal):
        return self._state(request, principal, "offload_tenant")


class VectorsService(_Base, rpc.VectorsServiceServicer):
    def __init__(self, db, keys: KeyRing, limits: Limits, probes: ProbeBudget | None = None):
        super().__init__(db, keys, limits)
        self.probes = probes or ProbeBudget()

    @handler
    def Insert(self, request, principal):
        principal.require_tenant(request.tenant)
        col = self._collection(request.collection, principal)
        vectors = wire.unpack(request.vectors)
        payloads = filters_wire.unpack_payloads(request.payloads) or None  # none given: keep (upsert)
        if not request.ids and not request.upsert:  # the server draws the ids: none to collide, none to tell
            self.limits.batch(vectors.shape[0], "vectors")
            drawn = col.insert(None, vectors, tenant=request.tenant, payloads=payloads)
            return pb.WriteResponse(changed=drawn.size, ids=drawn.tolist())
        ids = self._ids(request.ids)
        write = col.upsert if request.upsert else col.insert
        if principal.admin:
            write(ids, vectors, tenant=request.tenant, payloads=payloads)
            return pb.WriteResponse(changed=ids.size)
        # A tenant key learns nothing of ids it cannot see (server/probes.py): one message for any
        # collision, no id and no count in it, and a budget of collisions with others' ids.
        self.probes.check(principal.name)
        if request.upsert:
            self._not_taken(col, ids, principal)  # an upsert would otherwise overwrite or refuse them
        try:
            write(ids, vectors, tenant=request.tenant, payloads=payloads)
        except (AlreadyExistsError, PermissionDeniedError):
            self._not_taken(col, ids, principal)  # another tenant's ids, or written meanwhile
            if request.upsert:
                raise  # visible vectors another of the key's tenants owns: nothing hidden in that
            raise AlreadyExistsError(TAKEN) from None
        return pb.WriteResponse(changed=ids.size)

    def _not_taken(self, col, ids: np.ndarray, principal: Principal) -> None:
        """Refuse, as one collision, ids stored in the collection that the key's tenants cannot see."""
        if (col.contains(ids) & ~self._seen(col, ids, principal)).any():
            raise self.probes.taken(principal.name)

    @handler
    def SetPayloads(self, request, principal):
        col = self._collection(request.collection, principal)
        ids = self._ids(request.ids, principal, col)
        payloads = filters_wire.unpack_payloads(request.payloads)
        if len(payloads) not in (1, ids.size):
            raise InvalidArgumentError(f"{len(payloads)} payloads for {ids.size} ids; give one per id or one for all")
        col.set_payloads(ids, payloads[0] if len(payloads) == 1 else payloads, tenant=self._owner(request, principal))
        return pb.WriteResponse(changed=ids.size)

    @staticmethod
    def _owner(request, principal: Principal) -> str | None:
        """The tenant whose vectors a write changes: the one named, else the key's only tenant
        (None for an admin key that names none: not checked)."""
        if request.tenant:
            principal.require_tenant(request.tenant)
            return request.tenant
        if principal.admin:
            return None
        if len(principal.tenants) == 1:
            return next(iter(principal.tenants))
        raise InvalidArgumentError(f"key {principal.name!r} acts for several tenants: name the one that owns "
                                   "these vectors (tenant=)")

    @handler
    def Owned(self, request, principal):
        principal.require_tenant(request.tenant)
        col = self._collection(request.collection, principal)
        return pb.Flags(flags=col.owned(self._ids(request.ids), tenant=request.tenant).astype(np.uint8).tobytes())

    @handler
    def Owners(self, request, principal):
        col = self._collection(request.collection, principal)
        owners = col.owners(self._ids(request.ids, principal, col))
        return pb.ListTenantsResponse(tenants=[t if principal.may_act_for(t) else "" for t in owners])

    @handler
    def Transfer(self, request, principal):
        principal.require_admin("handing vectors to another tenant")
        col = self._collection(request.collection, principal)
        ids = self._ids(request.ids)
        col.transfer(ids, to=request.to, tenant=request.tenant or None)
        return pb.WriteResponse(changed=ids.size)

    @handler
    def GetPayloads(self, request, principal):
        col = self._collection(request.collection, principal)
        payloads = col.get_payloads(self._ids(request.ids, principal, col))
        return pb.PayloadsResponse(payloads=[filters_wire.pack_payload(p) for p in payloads])

    @handler
    def PayloadSchema(self, request, principal):
        principal.require_admin("reading the payload schema (it names every tenant's fields)")
        return pb.SchemaResponse(fields=self._collection(request.name, principal).payload_schema())

    @handler
    def Get(self, request, principal):
        col = self._collection(request.collection, principal)
        self.limits.vectors_reply(len(request.ids), col.dim)
        return pb.GetResponse(vectors=wire.pack(col.get(self._ids(request.ids, principal, col))))

    @handler
    def Delete(self, request, principal):
        principal.require_admin("deleting vectors for every tenant (revoke your tenant's access instead)")
        col = self._collection(request.collection, principal)
        col.delete(self._ids(request.ids))
        return pb.WriteResponse(changed=len(request.ids))

    @handler
    def Grant(self, request, principal):
        principal.require_tenant(request.tenant)
        col = self._collection(request.collection, principal)
        return pb.WriteResponse(changed=col.grant(self._ids(request.ids, principal, col), tenant=request.tenant))

    @handler
    def Revoke(self, request, principal):
        principal.require_tenant(request.tenant)
        col = self._collection(request.collection, principal)
        col.revoke(self._ids(request.ids, principal, col), tenant=request.tenant)
        return pb.WriteResponse(changed=len(request.ids))

    @handler
    def Count(self, request, principal):
        col = self._collection(request.collection, principal)
        if request.tenant:
            principal.require_tenant(request.tenant)
            return pb.CountResponse(count=col.count(tenant=request.tenant))
        principal.require_admin("counting every tenant's vectors")
        return pb.CountResponse(count=col.count())

    @handler
    def TenantsOf(self, request, principal):
        col = self._collection(request.collection, principal)
        self._ids([request.id], principal, col)
        return pb.ListTenantsResponse(tenants=[t for t in col.tenants_of(request.id) if principal.may_act_for(t)])

    @handler
    def Contains(self, request, principal):
        col = self._collection(request.collection, principal)
        ids = self._ids(request.ids)
        if principal.admin:
            found = col.contains(ids, archived=not request.skip_archived)
        else:
            found = self._seen(col, ids, principal)
        return pb.Flags(flags=found.astype(np.uint8).tobytes())

    @handler
    def VisibleTo(self, request, principal):
        principal.require_tenant(request.tenant)
        col = self._collection(request.collection, principal)
        return pb.Flags(flags=col.visible_to(self._ids(request.ids), tenant=request.tenant).astype(np.uint8).tobytes())

    @handler
    def Scroll(self, request, principal):
        col = self._collection(request.collection, principal)
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
        col = self._collection(request.collection, principal)
        col.train(wire.unpack(request.sample, "sample") if request.sample.data else None)
        return pb.Empty()


class SearchService(_Base, rpc.SearchServicer):
    rates = UNLIMITED  # the server's key rates (server/rates.py): each search on a stream is a read
    turns = NO_TURNS  # a key's heavy calls take turns (server/turns.py)

    def __init__(self, db, keys: KeyRing, limits: Limits, streams: OpenStreams, observe):
        super().__init__(db, keys, limits)
        self.streams, self.observe = streams, observe  # observe(method, code, seconds, tenant): metrics

    @staticmethod
    def _filter(request) -> dict | None:
        return filters_wire.unpack_filter(request.filter) if request.HasField("filter") else None

    def _turn(self, request, principal: Principal):
        """The key's turn for a call with a heavy filter (server/turns.py); light calls need none.
        Never on the polling thread: `_quick` takes no search with a filter."""
        if request.HasField("filter") and request.filter.ByteSize() > HEAVY_FILTER_BYTES:
            return self.turns.turn(principal)
        return contextlib.nullcontext()

    def _search(self, request, principal, now: bool = False, into: pb.SearchResponse | None = None
                ) -> pb.SearchResponse | None:
        """A search's answer (written into `into` where given: a stream reply's own field, which
        spares copying it there); with `now`, None where it would wait (`search_now`)."""
        tenant = self._tenant(request.tenant, principal)
        self.limits.k(request.k)
        col = self._collection(request.collection, principal)
        search = col.search_now if now else col.search
        with self._turn(request, principal):
            found = search(wire.unpack_one(request.query), k=int(request.k), tenant=tenant,
                           filter=self._filter(request), ef=request.ef or None)
        if found is None:
            return None
        response = pb.SearchResponse() if into is None else into
        response.ids.extend(found.ids.tolist())
        response.distances.extend(found.distances.tolist())
        response.plan = found.plan
        return response

    @handler
    def Search(self, request, principal):
        return self._search(request, principal)

    def SearchStream(self, requests, context):
        """One reply per request, errors in the reply; the key is checked once, when the stream opens."""
        yield from self._stream(requests, context, pb.SearchRequest, self._answer)

    def SearchGroups(self, requests, context):
        """One reply per group of searches, each search's answer or error in it, in order."""
        yield from self._stream(requests, context, pb.SearchGroup, self._answer_group)

    def _stream(self, requests, context, kind, answer):
        """The turns of a search stream whose requests are `kind`, each answered by `answer`. When
        grpcio lets `Exchange` drive the call, a reply and the next request travel in one batch,
        and a quick turn is answered on the polling thread (`_quick`)."""
        try:
            principal = self.keys.principal(context)
            self.streams.open(context, principal)
        except CuratorError as error:
            abort(context, error)
        try:
            exchange = Exchange.of(requests, functools.partial(self._quick, kind, answer, principal, context))
            if exchange is None:
                for request in requests:
                    yield answer(checked(request, context), principal, context)
                return
            request = checked(next(requests, None), context)
            while request is not None:
                message = exchange.send(answer(request, principal, context).SerializeToString())
                try:
                    request = None if message is None else kind.FromString(message)
                except DecodeError:
                    abort(context, InvalidArgumentError(f"a search stream message was not a {kind.DESCRIPTOR.name}"))
        finally:
            self.streams.close(context)

    def _quick(self, kind, answer, principal, context, message: bytes) -> bytes | None:
        """The reply to a stream request that cannot take long, or None to leave it to the
        handler's thread: tenants' searches without a filter, at no more than the default effort
        (bounded work; a filter may build a mask, and a search of every vector may build the graph),
        alone or in a group of at most QUICK_GROUP, and only if none need wait for anything (a
        write holding the collection): this runs on grpcio's polling thread, where a wait would
        stop every call. Answering a small group here spares the handler thread's wake-up, which
        on this VM costs more than the group's searches."""
        try:
            request = kind.FromString(message)
        except DecodeError:
            return None  # the handler says what is wrong with it
        searches = request.searches if kind is pb.SearchGroup else (request,)
        if not 1 <= len(searches) <= QUICK_GROUP:
            return None
        for search in searches:
            if not search.tenant or search.HasField("filter") or search.ef > QUICK_EF:
                return None
        reply = answer(request, principal, context, now=True)
        return None if reply is None else reply.SerializeToString()

    def _answer_group(self, group, principal, context, now: bool = False) -> pb.SearchGroupReply | None:
        """A group's replies in order (with `now`, None where one would wait). Tenants' searches
        without a filter that share collection, k and ef are searched as one engine batch."""
        searches = group.searches
        replies: list = [None] * len(searches)
        together: dict = {}
        if not now:
            for i, search in enumerate(searches):
                if search.tenant and not search.HasField("filter"):
                    together.setdefault((search.collection, search.k, search.ef), []).append(i)
        for rows in together.values():
            if len(rows) > 1:
                found = self._search_together([searches[i] for i in rows], principal, context)
                for i, reply in zip(rows, found or ()):
                    replies[i] = reply
        observed = None
        if now:  # counted only once the whole group is answered: else the handler's thread answers it again
            if not self.rates.try_take(principal, READS, len(searches)):
                return None  # over the key's rate: the handler answers them one by one
            observed = []
        for i, search in enumerate(searches):
            if replies[i] is None:
                replies[i] = self._answer(search, principal, context, now, "SearchGroups", observed)
                if replies[i] is None:
                    self.rates.give_back(principal, READS, len(searches))
                    return None
        for seen in observed or ():
            self.observe(*seen)
        return pb.SearchGroupReply(replies=replies)

    def _search_together(self, searches, principal, context) -> list | None:
        """Searches of one collection, k and ef as one engine batch; None if any of them fails
        (each is then answered alone, with its own error)."""
        if not self.rates.try_take(principal, READS, len(searches)):
            return None  # over the key's rate: each is answered alone, counted one by one
        self.streams.busy(context)
        start = time.perf_counter()
        try:
            for search in searches:
                self._tenant(search.tenant, principal)
            first = searches[0]
            self.limits.k(first.k)
            col = self._collection(first.collection, principal)
            queries = np.stack([wire.unpack_one(search.query) for search in searches])
            found = col.search_batch(queries, k=int(first.k), tenants=[search.tenant for search in searches],
                                     ef=first.ef or None)
        except (CuratorError, ValueError):  # ValueError: queries of different dimensions
            self.rates.give_back(principal, READS, len(searches))  # answered alone, each counted then
            self.streams.idle(context)
            return None
        counts = (found.ids >= 0).sum(axis=1).tolist()  # a batch pads with -1 where a tenant has fewer
        replies = [pb.SearchStreamReply(result=pb.SearchResponse(ids=ids[:n].tolist(), distances=d[:n].tolist(),
                                                                 plan=plan))
                   for ids, d, n, plan in zip(found.ids, found.distances, counts, found.plan)]
        seconds = (time.perf_counter() - start) / len(searches)
        for search in searches:
            self.observe("SearchGroups", grpc.StatusCode.OK, seconds, search.tenant)
        self.streams.idle(context)
        return replies

    def _answer(self, request, principal, context, now: bool = False,
                method: str = "SearchStream", observed: list | None = None) -> pb.SearchStreamReply | None:
        """One search of a stream: its result, or its error as a Failure (the stream goes on);
        with `now`, None where the search would wait. Given `observed`, its read was counted by the
        caller and its metrics go there."""
        self.streams.busy(context)
        start = time.perf_counter()
        try:
            if observed is None:
                self.rates.check(principal, READS)
            reply, code = pb.SearchStreamReply(), "OK"
            result = self._search(request, principal, now, into=reply.result)
            if result is None:
                if observed is None:
                    self.rates.give_back(principal, READS, 1)  # the handler's thread answers it, counting it then
                self.streams.idle(context)
                return None
        except CuratorError as error:
            reply, code = pb.SearchStreamReply(error=wire.failure(error)), error.code
        except Exception:  # a bug: log it, answer INTERNAL for this query, keep the stream
            log.exception("internal error in SearchStream")
            reply, code = pb.SearchStreamReply(error=pb.Failure(
                code="INTERNAL", message="internal error in SearchStream; see the server log")), "INTERNAL"
        seen = (method, grpc.StatusCode[code], time.perf_counter() - start, request.tenant)
        if observed is None:
            self.observe(*seen)
        else:
            observed.append(seen)
        self.streams.idle(context)
        return reply

    @handler
    def SearchBatch(self, request, principal):
        # Every size is checked before the work it drives: the reply's (it must fit one message)
        # and the tenants' (each name is checked; a request of many could hold millions).
        self.limits.k(request.k)
        queries = wire.unpack(request.queries, "queries")
        nq = queries.shape[0]
        self.limits.batch(nq, "queries")
        self.limits.batch_reply(nq, request.k)
        if not request.packed:
            self.limits.listed_reply(nq, request.k)
        if len(request.tenants) not in (0, 1, nq):
            raise InvalidArgumentError(f"{nq} queries but {len(request.tenants)} tenants; give one per query, "
                                       "one for all, or none")
        names = list(request.tenants)  # one per query, one for all, or none ("" or none: every vector)
        for name in set(names) or {""}:
            self._tenant(name, principal)
        tenants = (names[0] or None) if len(names) == 1 else ([name or None for name in names] or None)
        col = self._collection(request.collection, principal)
        with self._turn(request, principal):
            found = col.search_batch(queries, k=int(request.k), tenants=tenants, filter=self._filter(request),
                                     ef=request.ef or None)
        if request.packed:
            return pb.SearchBatchResponse(packed_ids=found.ids.astype("<i8").tobytes(),
                                          packed_distances=found.distances.astype("<f4").tobytes(), plans=found.plan)
        reply = pb.SearchBatchResponse(plans=found.plan)
        ids, distances = found.ids.ravel(), found.distances.ravel()
        for start in range(0, ids.size, LISTED_CHUNK):  # the GIL changes hands between chunks
            reply.ids.extend(ids[start : start + LISTED_CHUNK].tolist())
            reply.distances.extend(distances[start : start + LISTED_CHUNK].tolist())
        return reply


class AdminService(_Base, rpc.AdminServicer):
    def __init__(self, db, keys, limits, info: dict, snapshots: str | None = None):
        super().__init__(db, keys, limits)
        self.info, self.snapshots = info, snapshots

    @handler
    def Snapshot(self, request, principal):
        principal.require_admin("taking a snapshot")
        self.db.snapshot(confined(self.snapshots, request.path))
        return pb.Empty()

    @handler
    def ClusterStatus(self, request, principal):
        principal.require_admin("reading the cluster's status")
        cluster = getattr(self.db, "cluster", None)
        if cluster is None:
            raise NotFoundError("no cluster here: this server is not a cluster front (curator serve --ray)")
        status = cluster.status()
        return pb.ClusterStatusResponse(
            version=status["version"],
            nodes=[pb.ClusterStatusResponse.Node(**node) for node in status["nodes"]],
            shards=[pb.ClusterStatusResponse.Shard(
                number=shard["number"], wanted=shard["wanted"], tenants=shard["tenants"],
                copies=[pb.ClusterStatusResponse.Copy(**copy) for copy in shard["copies"]]) for shard in status["shards"]])

    @handler
    def ServerInfo(self, request, principal):
        return pb.ServerInfoResponse(auth=not self.keys.open, max_message_bytes=self.limits.max_message_bytes,
                                     max_batch=self.limits.max_batch, max_k=self.limits.max_k, **self.info)

