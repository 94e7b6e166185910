"""The blocking remote implementation of the API (`curator/api.py`) over the contract of `proto/`.

Numpy in, numpy out; every call has a deadline; calls that are safe to repeat are retried with
exponential backoff while the server is UNAVAILABLE; a failed call raises the exception class the
engine raised on the server.
"""

import random
import time
from collections.abc import Sequence

import grpc
import numpy as np

from curator.api import Collection, Database, SearchResult
from curator_proto import archive_wire, wire
from curator_proto.v1 import archive_pb2_grpc as archive_rpc
from curator_proto.v1 import curator_pb2_grpc as rpc

from . import archive, calls, limits_calls
from .cache import RemoteCache
from .calls import Call, CollectionCalls
from .coalesce import Coalescer
from .readers import ReaderDown, Readers, reader_down
from .stream import StreamPool

STUBS = {"collections": rpc.CollectionsStub, "tenants": rpc.TenantsStub, "vectors": rpc.VectorsServiceStub,
         "search": rpc.SearchStub, "admin": rpc.AdminStub, "cache": rpc.CacheStub, "limits": rpc.LimitsStub,
         "archive": archive_rpc.TenantArchiveStub}


def channel_options(max_message_bytes: int) -> list:
    return [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)]


def backoff(attempt: int) -> float:
    return min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())


def engine_error(error: grpc.RpcError) -> Exception:
    """The engine's exception for a failed call: by the class name the server sent, else by code;
    a quota's or rate's refusal carries its `limit` and `retry_after` (seconds) again."""
    # blocking calls give (key, value) pairs, grpc.aio a Metadata mapping
    return wire.from_trailers(error.code().name, error.trailing_metadata() or (), error.details())


class _Channel:
    def __init__(self, channel, api_key: str | None, timeout: float, retries: int, search_stream: bool = True,
                 coalesce: bool = True, metadata: tuple = (), reader: bool = False):
        self.channel = channel
        self.stubs = {name: stub(channel) for name, stub in STUBS.items()}
        self.metadata = ((("authorization", f"Bearer {api_key}"),) if api_key else ()) + tuple(metadata)
        self.reader = reader  # a read replica's: a call it cannot answer raises ReaderDown, not retried
        self.timeout, self.retries = timeout, retries
        self.streams = StreamPool(channel, self.metadata, timeout) if search_stream else None
        self.groups = (Coalescer(channel, self.metadata, self.streams.watchdog)
                       if search_stream and coalesce and self.streams.available else None)

    def search(self, call: Call, gather: bool = True):
        """A single search: with the searches other threads ask meanwhile, as one group (alone, on
        a SearchStream); without coalescing (or `gather` False), on this thread's SearchStream; as
        a unary call when neither can take it."""
        if gather and self.groups is not None and self.groups.available:
            reply = self.groups.search(call.request)
        else:
            reply = self._over_stream(call.request) if self.streams else None
        if reply is None:
            return self.run(call)
        return self._searched(call, reply)

    def _over_stream(self, request):
        """The reply over the calling thread's SearchStream, or None: make a unary call."""
        stream = self.streams.get()
        if stream is None:
            return None
        try:
            return stream.ask(request)
        except grpc.RpcError as error:
            self.streams.failed(stream, error)
            if stream.timed_out:
                raise wire.exception("DEADLINE_EXCEEDED", None, f"no reply within the {self.timeout} s deadline") from None
            return None

    @staticmethod
    def _searched(call: Call, reply):
        if reply.HasField("error"):
            raise wire.from_failure(reply.error)
        return call.parse(reply.result)

    def close(self) -> None:
        if self.groups:
            self.groups.close()
        if self.streams:
            self.streams.close()
        self.channel.close()

    def run(self, call: Call):
        method = getattr(self.stubs[call.service], call.method)
        attempts = self.retries + 1 if call.idempotent else 1
        for attempt in range(attempts):
            try:
                return call.parse(method(call.request, timeout=self.timeout, metadata=self.metadata))
            except grpc.RpcError as error:
                if self.reader and reader_down(error):
                    raise ReaderDown(error.details()) from None
                if error.code() == grpc.StatusCode.UNAVAILABLE and attempt + 1 < attempts:
                    time.sleep(backoff(attempt))
                    continue
                raise engine_error(error) from None

    def repeated(self, attempt):
        """`attempt()`, a whole stream that is safe to repeat, retried while the server is UNAVAILABLE."""
        for tries in range(self.retries + 1):
            try:
                return attempt()
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE and tries < self.retries:
                    time.sleep(backoff(tries))
                    continue
                raise engine_error(error) from None


class RemoteCollection(Collection):
    def __init__(self, channel: _Channel, info, readers: Readers):
        self._run, self._calls = channel.run, CollectionCalls(info)
        self._search, self._search_batch = readers.search, readers.run  # the server's, or a read replica's
        self.name, self.dim, self.metric = info.name, info.dim, info.metric

    def insert(self, ids, vectors, *, tenant: str, payloads: list[dict] | None = None) -> np.ndarray:
        return self._run(self._calls.insert(ids, vectors, tenant, payloads))

    def upsert(self, ids, vectors, *, tenant: str, payloads: list[dict] | None = None) -> None:
        self._run(self._calls.insert(ids, vectors, tenant, payloads, upsert=True))

    def set_payloads(self, ids, payloads: list[dict] | dict, *, tenant: str | None = None) -> None:
        self._run(self._calls.set_payloads(ids, payloads, tenant))

    def get_payloads(self, ids) -> list[dict]:
        return self._run(self._calls.get_payloads(ids))

    def payload_schema(self) -> dict[str, str]:
        return self._run(self._calls.payload_schema())

    def grant(self, ids, *, tenant: str) -> int:
        return self._run(self._calls.grant(ids, tenant))

    def revoke(self, ids, *, tenant: str) -> None:
        self._run(self._calls.revoke(ids, tenant))

    def delete(self, ids) -> None:
        self._run(self._calls.delete(ids))

    def get(self, ids):
        return self._run(self._calls.get(ids))

    def tenants_of(self, id_: int) -> list[str]:
        return self._run(self._calls.tenants_of(id_))

    def contains(self, ids, *, archived: bool = True):
        return self._run(self._calls.contains(ids, archived))

    def owned(self, ids, *, tenant: str):
        return self._run(self._calls.owned(ids, tenant))

    def visible_to(self, ids, *, tenant: str):
        return self._run(self._calls.visible_to(ids, tenant))

    def owners(self, ids) -> list[str]:
        return self._run(self._calls.owners(ids))

    def transfer(self, ids, *, to: str, tenant: str | None = None) -> None:
        self._run(self._calls.transfer(ids, to, tenant))

    def count(self, tenant: str | None = None) -> int:
        return self._run(self._calls.count(tenant))

    def scroll(self, *, tenant: str | None = None, after_id: int = -1, limit: int = 1000):
        return self._run(self._calls.scroll(tenant, after_id, limit))

    def tenants(self) -> list[str]:
        return self._run(self._calls.tenants())

    def create_tenant(self, tenant: str) -> None:
        self._run(self._calls.create_tenant(tenant))

    def drop_tenant(self, tenant: str) -> None:
        self._run(self._calls.drop_tenant(tenant))

    def tenant_since(self, tenant: str) -> int:
        return self._run(self._calls.tenant_since(tenant))

    def tenant_state(self, tenant: str) -> str:
        return self._run(self._calls.tenant_state(tenant))

    def deactivate_tenant(self, tenant: str) -> None:
        self._run(self._calls.tenant_state(tenant, "Deactivate"))

    def activate_tenant(self, tenant: str) -> None:
        self._run(self._calls.tenant_state(tenant, "Activate"))

    def offload_tenant(self, tenant: str) -> None:
        self._run(self._calls.tenant_state(tenant, "Offload"))

    def search(self, query, k: int = 10, *, tenant: str | None = None, filter: dict | None = None,
               ef: int | None = None) -> SearchResult:
        return self._search(self._calls.search(query, k, tenant, ef, filter))

    def search_batch(self, queries, k: int = 10, *, tenants: str | Sequence[str] | None = None,
                     filter: dict | None = None, ef: int | None = None) -> SearchResult:
        return self._search_batch(self._calls.search_batch(queries, k, tenants, ef, filter))

    def train(self, sample=None) -> None:
        self._run(self._calls.train(sample))

    def stats(self) -> dict:
        return self._run(self._calls.stats())


class RemoteDatabase(Database):
    def __init__(self, channel: _Channel, readers: Readers | None = None):
        self._channel = channel
        self._cache = RemoteCache(channel.run)
        self._readers = readers or Readers(channel, None, None)

    def _collection(self, info) -> "RemoteCollection":
        """A collection from its description, which also names the server's read replicas."""
        if self._readers.host is not None:
            self._readers.describe = lambda name=info.name: self._channel.run(calls.describe_collection(name))
            self._readers.update(info.reader_ports)
        return RemoteCollection(self._channel, info, self._readers)

    @property
    def cache(self) -> RemoteCache:
        return self._cache

    def create_collection(self, name: str, dim: int, metric: str = "l2", **options) -> Collection:
        return self._collection(self._channel.run(calls.create_collection(name, dim, metric, options)))

    def collection(self, name: str) -> Collection:
        return self._collection(self._channel.run(calls.describe_collection(name)))

    def list_collections(self) -> list[str]:
        return self._channel.run(calls.list_collections())

    def drop_collection(self, name: str) -> None:
        self._channel.run(calls.drop_collection(name))

    def snapshot(self, path) -> None:
        self._channel.run(calls.snapshot(path))

    def export_tenant(self, tenant: str, path=None, *, collection: str | None, cache: bool = True):
        channel, request = self._channel, archive.export_request(tenant, collection, cache)

        def export():
            assembler = archive_wire.Assembler()
            for chunk in channel.stubs["archive"].Export(request, timeout=archive.deadline(channel.timeout),
                                                         metadata=channel.metadata):
                assembler.add(chunk)
            return assembler.archive()

        result = channel.repeated(export)
        if path is not None:
            result.save(path)
        return result

    def import_tenant(self, source, *, tenant: str | None = None, collection: str | None = None,
                      cache: bool = True, skip_taken: bool = False):
        channel, loaded = self._channel, archive.source(source)
        first = [archive.import_chunks(loaded, tenant, collection, cache, skip_taken)]  # refused here, not sent

        def send():  # each attempt sends the whole archive again: an import is idempotent
            chunks = first.pop() if first else archive.import_chunks(loaded, tenant, collection, cache, skip_taken)
            return channel.stubs["archive"].Import(chunks, timeout=archive.deadline(channel.timeout),
                                                   metadata=channel.metadata)

        return archive_wire.report_from_wire(channel.repeated(send))

    def server_info(self) -> dict:
        return self._channel.run(calls.server_info())

    def reader_ports(self) -> list[int]:
        """The ports of the server's read replicas this client spreads its searches over (client/readers.py)."""
        return self._readers.ports()

    def set_quota(self, tenant: str | None, **limits):
        return self._channel.run(limits_calls.set_quota(tenant, limits))

    def quota(self, tenant: str | None):
        return self._channel.run(limits_calls.quota(tenant))

    def set_key_rates(self, name: str, **rates) -> dict:
        """Set rates of the API key named `name` (admin): reads_per_second, writes_per_second,
        burst, each a number or None (unlimited; for burst, one second's worth); persisted on the
        server, over its keys file. Returns the key's rates."""
        return self._channel.run(limits_calls.set_key_rates(name, rates))

    def key_rates(self, name: str | None = None) -> dict:
        """The rates of the API key named `name` (None: this client's own key)."""
        return self._channel.run(limits_calls.key_rates(name))

    def close(self) -> None:
        self._readers.close()
        self._channel.close()


def connect(address: str, *, api_key: str | None = None, timeout: float = 30.0, retries: int = 3,
            root_certificates: bytes | None = None, max_message_bytes: int = 64 << 20,
            search_stream: bool = True, coalesce: bool = True, readers: bool = True,
            metadata: tuple = ()) -> RemoteDatabase:
    """A Database served by a Curator server at `address` ("host:port").

    search_stream: send single searches over a stream kept open per thread (client/stream.py),
    about half the latency of a unary call; False makes every search a unary call.
    coalesce: send the single searches that threads ask at the same moment as one message
    (client/coalesce.py), so that many threads cost the server fewer messages; False sends each
    over its thread's stream.
    readers: spread searches over the server's read replicas, where it has them (`curator serve
    --readers N`; client/readers.py); False sends every call to `address`.
    metadata: (key, value) pairs sent with every call."""
    options = channel_options(max_message_bytes)

    def open_channel(target: str, **kwargs) -> _Channel:
        if root_certificates is not None:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates), options)
        else:
            channel = grpc.insecure_channel(target, options)
        return _Channel(channel, api_key, timeout, retries, search_stream, coalesce, metadata, **kwargs)

    primary = open_channel(address)
    host = address.rpartition(":")[0] if readers else None
    spread = Readers(primary, host, lambda target: open_channel(target, reader=True))
    if host is not None:
        spread.spread_groups()
    return RemoteDatabase(primary, spread)
