"""The asyncio SDK: the same methods as `curator.connect`, each a coroutine, on grpc.aio.

    db = await curator_client.aio.connect("127.0.0.1:50051", api_key=...)
    col = await db.collection("docs")
    ids, dists = await col.search(query, k=10, tenant="alice")
"""

import asyncio
from collections.abc import Sequence

import grpc
import numpy as np

from curator import errors
from curator.api import SearchResult
from curator import tenant_archive
from curator_proto import archive_wire, wire
from curator_proto.v1 import curator_pb2 as pb

from . import archive, cache_calls, calls, limits_calls
from .aio_coalesce import AsyncCoalescer
from .aio_stream import AsyncSearchStream
from .calls import Call, CollectionCalls
from .readers import AsyncReaders, ReaderDown, reader_down
from .remote import STUBS, backoff, channel_options, engine_error


class _AsyncChannel:
    def __init__(self, channel: grpc.aio.Channel, api_key: str | None, timeout: float, retries: int,
                 search_stream: bool = True, coalesce: bool = True, metadata: tuple = (), reader: bool = False):
        self.channel = channel
        self.stubs = {name: stub(channel) for name, stub in STUBS.items()}
        self.metadata = ((("authorization", f"Bearer {api_key}"),) if api_key else ()) + tuple(metadata)
        self.reader = reader  # a read replica's: a call it cannot answer raises ReaderDown, not retried
        self.timeout, self.retries = timeout, retries
        self.stream = AsyncSearchStream(self.stubs["search"], self.metadata, timeout) if search_stream else None
        self.groups = (AsyncCoalescer(self.stubs["search"], self.metadata, timeout, self._alone)
                       if search_stream and coalesce else None)

    async def search(self, call: Call):
        """A single search: with those other coroutines ask meanwhile, as one group; else over the
        channel's SearchStream; as a unary call when neither can take it."""
        if self.groups is not None and self.groups.available:
            reply = await self.groups.search(call.request)
        else:
            reply = await self.stream.ask(call.request) if self.stream else None
        if reply is None:
            return await self.run(call)
        if reply.HasField("error"):
            raise wire.from_failure(reply.error)
        return call.parse(reply.result)

    async def _alone(self, request):
        """A lone search over the channel's SearchStream: its reply, or None (make a unary call)."""
        try:
            return await self.stream.ask(request)
        except errors.CuratorError as error:  # the deadline: an answer for the search it belongs to
            return pb.SearchStreamReply(error=wire.failure(error))

    async def close(self) -> None:
        if self.groups:
            self.groups.close()
        if self.stream:
            self.stream.close()
        await self.channel.close()

    async def run(self, call: Call):
        method = getattr(self.stubs[call.service], call.method)
        attempts = self.retries + 1 if call.idempotent else 1
        for attempt in range(attempts):
            try:
                return call.parse(await method(call.request, timeout=self.timeout, metadata=self.metadata))
            except grpc.aio.AioRpcError as error:
                if self.reader and reader_down(error):
                    raise ReaderDown(error.details()) from None
                if error.code() == grpc.StatusCode.UNAVAILABLE and attempt + 1 < attempts:
                    await asyncio.sleep(backoff(attempt))
                    continue
                raise engine_error(error) from None

    async def repeated(self, attempt):
        """`await attempt()`, a whole stream that is safe to repeat, retried while UNAVAILABLE."""
        for tries in range(self.retries + 1):
            try:
                return await attempt()
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE and tries < self.retries:
                    await asyncio.sleep(backoff(tries))
                    continue
                raise engine_error(error) from None


class AsyncRemoteCollection:
    def __init__(self, channel: _AsyncChannel, info, readers: AsyncReaders):
        self._run, self._calls = channel.run, CollectionCalls(info)
        self._search, self._search_batch = readers.search, readers.run  # the server's, or a read replica's
        self.name, self.dim, self.metric = info.name, info.dim, info.metric

    async def insert(self, ids, vectors, *, tenant: str, payloads: list[dict] | None = None) -> np.ndarray:
        return await self._run(self._calls.insert(ids, vectors, tenant, payloads))

    async def upsert(self, ids, vectors, *, tenant: str, payloads: list[dict] | None = None) -> None:
        await self._run(self._calls.insert(ids, vectors, tenant, payloads, upsert=True))

    async def set_payloads(self, ids, payloads: list[dict] | dict, *, tenant: str | None = None) -> None:
        await self._run(self._calls.set_payloads(ids, payloads, tenant))

    async def get_payloads(self, ids) -> list[dict]:
        return await self._run(self._calls.get_payloads(ids))

    async def payload_schema(self) -> dict[str, str]:
        return await self._run(self._calls.payload_schema())

    async def grant(self, ids, *, tenant: str) -> int:
        return await self._run(self._calls.grant(ids, tenant))

    async def revoke(self, ids, *, tenant: str) -> None:
        await self._run(self._calls.revoke(ids, tenant))

    async def delete(self, ids) -> None:
        await self._run(self._calls.delete(ids))

    async def get(self, ids):
        return await self._run(self._calls.get(ids))

    async def tenants_of(self, id_: int) -> list[str]:
        return await self._run(self._calls.tenants_of(id_))

    async def contains(self, ids, *, archived: bool = True):
        return await self._run(self._calls.contains(ids, archived))

    async def owned(self, ids, *, tenant: str):
        return await self._run(self._calls.owned(ids, tenant))

    async def visible_to(self, ids, *, tenant: str):
        return await self._run(self._calls.visible_to(ids, tenant))

    async def owners(self, ids) -> list[str]:
        return await self._run(self._calls.owners(ids))

    async def transfer(self, ids, *, to: str, tenant: str | None = None) -> None:
        await self._run(self._calls.transfer(ids, to, tenant))

    async def count(self, tenant: str | None = None) -> int:
        return await self._run(self._calls.count(tenant))

    async def scroll(self, *, tenant: str | None = None, after_id: int = -1, limit: int = 1000):
        return await self._run(self._calls.scroll(tenant, after_id, limit))

    async def tenants(self) -> list[str]:
        return await self._run(self._calls.tenants())

    async def create_tenant(self, tenant: str) -> None:
        await self._run(self._calls.create_tenant(tenant))

    async def drop_tenant(self, tenant: str) -> None:
        await self._run(self._calls.drop_tenant(tenant))

    async def tenant_since(self, tenant: str) -> int:
        return await self._run(self._calls.tenant_since(tenant))

    async def tenant_state(self, tenant: str) -> str:
        return await self._run(self._calls.tenant_state(tenant))

    async def deactivate_tenant(self, tenant: str) -> None:
        await self._run(self._calls.tenant_state(tenant, "Deactivate"))

    async def activate_tenant(self, tenant: str) -> None:
        await self._run(self._calls.tenant_state(tenant, "Activate"))

    async def offload_tenant(self, tenant: str) -> None:
        await self._run(self._calls.tenant_state(tenant, "Offload"))

    async def search(self, query, k: int = 10, *, tenant: str | None = None, filter: dict | None = None,
                     ef: int | None = None) -> SearchResult:
        return await self._search(self._calls.search(query, k, tenant, ef, filter))

    async def search_batch(self, queries, k: int = 10, *, tenants: str | Sequence[str] | None = None,
                           filter: dict | None = None, ef: int | None = None) -> SearchResult:
        return await self._search_batch(self._calls.search_batch(queries, k, tenants, ef, filter))

    async def train(self, sample=None) -> None:
        await self._run(self._calls.train(sample))

    async def stats(self) -> dict:
        return await self._run(self._calls.stats())


class AsyncRemoteCache:
    """`db.cache` of the asyncio SDK: the methods of `curator.cache.Cache`, each a coroutine."""

    def __init__(self, channel: _AsyncChannel):
        self._run = channel.run

    async def lookup(self, tenant, prompt=None, *, embedding=None, category=None, model_settings=None,
                     embedding_model=None):
        return await self._run(cache_calls.lookup(tenant, prompt, embedding, category, model_settings, embedding_model))

    async def store(self, tenant, prompt, answer, *, embedding=None, category=None, model_settings=None,
                    embedding_model=None) -> int:
        return await self._run(cache_calls.store(tenant, prompt, answer, embedding, category, model_settings,
                                                 embedding_model))

    async def complete(self, tenant, messages, *, category=None, params=None, embedding=None, embedding_model=None):
        return await self._run(cache_calls.complete(tenant, messages, category, params, embedding, embedding_model))

    async def invalidate(self, tenant, category=None) -> int:
        return await self._run(cache_calls.invalidate(tenant, category))

    async def feedback(self, tenant, entry_id, *, correct) -> None:
        await self._run(cache_calls.feedback(tenant, entry_id, correct))

    async def set_policy(self, category, tenant=None, **changes) -> dict:
        return await self._run(cache_calls.set_policy(category, tenant, changes))

    async def policy(self, category, tenant=None) -> dict:
        return await self._run(cache_calls.policy(category, tenant))

    async def train_classifier(self, examples, *, min_similarity=0.0) -> None:
        await self._run(cache_calls.train_classifier(examples, min_similarity))

    async def classify(self, prompt=None, *, embedding=None):
        return await self._run(cache_calls.classify(prompt, embedding))

    async def stats(self, tenant=None) -> dict:
        return await self._run(cache_calls.stats(tenant))


class AsyncRemoteDatabase:
    def __init__(self, channel: _AsyncChannel, readers: AsyncReaders | None = None):
        self._channel = channel
        self.cache = AsyncRemoteCache(channel)
        self._readers = readers or AsyncReaders(channel, None, None)

    def _collection(self, info) -> AsyncRemoteCollection:
        """A collection from its description, which also names the server's read replicas."""
        if self._readers.host is not None:
            self._readers.describe = lambda name=info.name: self._channel.run(calls.describe_collection(name))
            self._readers.update(info.reader_ports)
        return AsyncRemoteCollection(self._channel, info, self._readers)

    async def create_collection(self, name: str, dim: int, metric: str = "l2", **options) -> AsyncRemoteCollection:
        return self._collection(await self._channel.run(calls.create_collection(name, dim, metric, options)))

    async def collection(self, name: str) -> AsyncRemoteCollection:
        return self._collection(await self._channel.run(calls.describe_collection(name)))

    def reader_ports(self) -> list[int]:
        """The ports of the server's read replicas this client spreads its searches over."""
        return self._readers.ports()

    async def list_collections(self) -> list[str]:
        return await self._channel.run(calls.list_collections())

    async def drop_collection(self, name: str) -> None:
        await self._channel.run(calls.drop_collection(name))

    async def snapshot(self, path) -> None:
        await self._channel.run(calls.snapshot(path))

    async def export_tenant(self, tenant: str, path=None, *, collection: str | None, cache: bool = True):
        channel, request = self._channel, archive.export_request(tenant, collection, cache)

        async def export():
            assembler = archive_wire.Assembler()
            async for chunk in channel.stubs["archive"].Export(request, timeout=archive.deadline(channel.timeout),
                                                               metadata=channel.metadata):
                assembler.add(chunk)
            return assembler.archive()

        result = await channel.repeated(export)
        if path is not None:
            await asyncio.to_thread(result.save, path)
        return result

    async def import_tenant(self, source, *, tenant: str | None = None, collection: str | None = None,
                            cache: bool = True, skip_taken: bool = False):
        channel = self._channel
        loaded = source if isinstance(source, tenant_archive.TenantArchive) else \
            await asyncio.to_thread(archive.source, source)
        first = [archive.import_chunks(loaded, tenant, collection, cache, skip_taken)]  # refused here, not sent

        async def send():  # each attempt sends the whole archive again: an import is idempotent
            chunks = first.pop() if first else archive.import_chunks(loaded, tenant, collection, cache, skip_taken)
            return await channel.stubs["archive"].Import(chunks, timeout=archive.deadline(channel.timeout),
                                                         metadata=channel.metadata)

        return archive_wire.report_from_wire(await channel.repeated(send))

    async def copy_tenant(self, tenant: str, to_tenant: str | None = None, *, collection: str | None,
                          to_collection: str | None = None, to=None, cache: bool = True, skip_taken: bool = False):
        """`Database.copy_tenant` (curator/tenant_archive.py `copy`), each step awaited."""
        to_tenant, target = tenant if to_tenant is None else to_tenant, self if to is None else to
        to_collection = collection if to_collection is None else to_collection
        if target is self and to_tenant == tenant and to_collection == collection:
            raise errors.InvalidArgumentError(f"copying tenant {tenant!r} onto itself: name another tenant, "
                                              "collection or database")
        exported = await self.export_tenant(tenant, collection=collection, cache=cache)
        if target is not self or to_collection != collection or collection is None:
            return await target.import_tenant(exported, tenant=to_tenant, collection=to_collection, cache=cache,
                                              skip_taken=skip_taken)
        col = await self.collection(collection)  # one collection: share the vectors (see `copy`)
        report = tenant_archive.ImportReport(to_tenant, collection)
        try:
            await col.create_tenant(to_tenant)
        except errors.AlreadyExistsError:
            pass
        for start in range(0, len(exported), tenant_archive.BATCH):
            ids = exported.ids[start : start + tenant_archive.BATCH]
            ids = ids[await col.contains(ids)]
            if ids.size:
                report.shared += await col.grant(ids, tenant=to_tenant)
        if cache and exported.cache:
            cached = await self.import_tenant(tenant_archive.cache_only(exported), tenant=to_tenant)
            report.cache_entries, report.cache_skipped = cached.cache_entries, cached.cache_skipped
        return report

    async def server_info(self) -> dict:
        return await self._channel.run(calls.server_info())

    async def set_quota(self, tenant: str | None, **limits):
        return await self._channel.run(limits_calls.set_quota(tenant, limits))

    async def quota(self, tenant: str | None):
        return await self._channel.run(limits_calls.quota(tenant))

    async def set_key_rates(self, name: str, **rates) -> dict:
        return await self._channel.run(limits_calls.set_key_rates(name, rates))

    async def key_rates(self, name: str | None = None) -> dict:
        return await self._channel.run(limits_calls.key_rates(name))

    async def close(self) -> None:
        await self._readers.aclose()
        await self._channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


async def connect(address: str, *, api_key: str | None = None, timeout: float = 30.0, retries: int = 3,
                  root_certificates: bytes | None = None, max_message_bytes: int = 64 << 20,
                  search_stream: bool = True, coalesce: bool = True, readers: bool = True,
                  metadata: tuple = ()) -> AsyncRemoteDatabase:
    """As `curator.connect` (client/remote.py), its options included."""
    options = channel_options(max_message_bytes)

    def open_channel(target: str, **kwargs) -> _AsyncChannel:
        if root_certificates is not None:
            channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates), options)
        else:
            channel = grpc.aio.insecure_channel(target, options)
        return _AsyncChannel(channel, api_key, timeout, retries, search_stream, coalesce, metadata, **kwargs)

    primary = open_channel(address)
    host = address.rpartition(":")[0] if readers else None
    return AsyncRemoteDatabase(primary, AsyncReaders(primary, host, lambda target: open_channel(target, reader=True)))
