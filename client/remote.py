"""The remote implementation of the API (`curator/api.py`) over the gRPC contract of `proto/`.

Numpy in, numpy out; every call has a deadline; calls that are safe to repeat are retried with
exponential backoff when the server is UNAVAILABLE; a failed call raises the same exception class
the engine raised on the server.
"""

import json
import random
import time
from collections.abc import Sequence

import grpc
import numpy as np

from curator import errors, validate
from curator.api import Collection, Database
from curator_proto import wire
from curator_proto.v1 import curator_pb2 as pb
from curator_proto.v1 import curator_pb2_grpc as rpc


class _Channel:
    """The stubs, credentials, deadline and retry policy shared by a database and its collections."""

    def __init__(self, address: str, api_key: str | None, timeout: float, retries: int,
                 root_certificates: bytes | None, max_message_bytes: int):
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if root_certificates is not None:
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates), options)
        else:
            self.channel = grpc.insecure_channel(address, options)
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout, self.retries = timeout, retries
        self.collections = rpc.CollectionsStub(self.channel)
        self.tenants = rpc.TenantsStub(self.channel)
        self.vectors = rpc.VectorsServiceStub(self.channel)
        self.search = rpc.SearchStub(self.channel)
        self.admin = rpc.AdminStub(self.channel)

    def call(self, method, request, idempotent: bool):
        attempts = self.retries + 1 if idempotent else 1
        for attempt in range(attempts):
            try:
                return method(request, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE and attempt + 1 < attempts:
                    time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
                    continue
                raise _engine_error(error) from None

    def close(self) -> None:
        self.channel.close()


def _engine_error(error: grpc.RpcError) -> Exception:
    """The engine's exception class for a failed call (from the trailing metadata, else the code)."""
    name = dict(error.trailing_metadata() or ()).get(wire.ERROR_KEY)
    cls = wire.ERROR_CLASSES.get(name) or wire.DEFAULT_BY_CODE.get(error.code().name)
    if cls is None:
        return errors.CuratorError(f"{error.code().name}: {error.details()}")
    return cls(error.details())


class RemoteCollection(Collection):
    def __init__(self, channel: _Channel, info: pb.CollectionInfo):
        self._c, self.name, self.dim, self.metric = channel, info.name, info.dim, info.metric

    def _ids(self, ids) -> np.ndarray:
        return validate.ids(ids)

    def _vectors(self, vectors) -> np.ndarray:
        return validate.vectors(vectors, self.dim)

    def insert(self, ids, vectors, *, tenant: str) -> None:
        self._c.call(self._c.vectors.Insert, pb.InsertRequest(
            collection=self.name, ids=self._ids(ids), vectors=wire.pack(self._vectors(vectors)), tenant=tenant), False)

    def upsert(self, ids, vectors, *, tenant: str) -> None:
        self._c.call(self._c.vectors.Insert, pb.InsertRequest(
            collection=self.name, ids=self._ids(ids), vectors=wire.pack(self._vectors(vectors)), tenant=tenant,
            upsert=True), True)

    def grant(self, ids, *, tenant: str) -> int:
        reply = self._c.call(self._c.vectors.Grant, pb.GrantRequest(collection=self.name, ids=self._ids(ids),
                                                                      tenant=tenant), True)
        return int(reply.changed)

    def revoke(self, ids, *, tenant: str) -> None:
        self._c.call(self._c.vectors.Revoke, pb.GrantRequest(collection=self.name, ids=self._ids(ids), tenant=tenant),
                     True)

    def delete(self, ids) -> None:
        self._c.call(self._c.vectors.Delete, pb.IdsRequest(collection=self.name, ids=self._ids(ids)), False)

    def get(self, ids) -> np.ndarray:
        reply = self._c.call(self._c.vectors.Get, pb.IdsRequest(collection=self.name, ids=self._ids(ids)), True)
        return wire.unpack(reply.vectors)

    def tenants_of(self, id_: int) -> list[str]:
        (id_,) = self._ids([id_])
        reply = self._c.call(self._c.vectors.TenantsOf, pb.TenantsOfRequest(collection=self.name, id=int(id_)), True)
        return sorted(reply.tenants)

    def contains(self, ids) -> np.ndarray:
        reply = self._c.call(self._c.vectors.Contains, pb.IdsRequest(collection=self.name, ids=self._ids(ids)), True)
        return np.frombuffer(reply.flags, np.uint8).astype(bool)

    def visible_to(self, ids, *, tenant: str) -> np.ndarray:
        reply = self._c.call(self._c.vectors.VisibleTo, pb.GrantRequest(collection=self.name, ids=self._ids(ids),
                                                                          tenant=tenant), True)
        return np.frombuffer(reply.flags, np.uint8).astype(bool)

    def count(self, tenant: str | None = None) -> int:
        reply = self._c.call(self._c.vectors.Count, pb.CountRequest(collection=self.name, tenant=tenant or ""), True)
        return int(reply.count)

    def scroll(self, *, tenant: str | None = None, after_id: int = -1, limit: int = 1000):
        reply = self._c.call(self._c.vectors.Scroll, pb.ScrollRequest(
            collection=self.name, tenant=tenant or "", after_id=after_id, limit=limit), True)
        return np.array(reply.ids, np.int64), int(reply.next_after_id)

    def tenants(self) -> list[str]:
        return sorted(self._c.call(self._c.tenants.List, pb.CollectionRef(name=self.name), True).tenants)

    def drop_tenant(self, tenant: str) -> None:
        self._c.call(self._c.tenants.Drop, pb.TenantRef(collection=self.name, tenant=tenant), False)

    def search(self, query, k: int = 10, *, tenant: str, ef: int | None = None):
        query = self._vectors(query)
        if query.shape[0] != 1:
            raise errors.InvalidArgumentError(f"search takes one query, got {query.shape[0]}; use search_batch")
        reply = self._c.call(self._c.search.Search, pb.SearchRequest(
            collection=self.name, query=wire.pack(query), k=validate.k(k), tenant=tenant,
            ef=validate.ef(ef, 0)), True)
        return np.array(reply.ids, np.int64), np.array(reply.distances, np.float32)

    def search_batch(self, queries, k: int = 10, *, tenants: str | Sequence[str], ef: int | None = None):
        queries = self._vectors(queries)
        k = validate.k(k)
        if isinstance(tenants, str):
            tenants = [tenants]  # one tenant for every query
        else:
            tenants = list(tenants)
            if len(tenants) != queries.shape[0]:
                raise errors.InvalidArgumentError(f"{queries.shape[0]} queries but {len(tenants)} tenants; "
                                                  "give one per query")
        reply = self._c.call(self._c.search.SearchBatch, pb.SearchBatchRequest(
            collection=self.name, queries=wire.pack(queries), k=k, tenants=tenants, ef=validate.ef(ef, 0)), True)
        shape = (queries.shape[0], k)
        return np.array(reply.ids, np.int64).reshape(shape), np.array(reply.distances, np.float32).reshape(shape)

    def train(self, sample=None) -> None:
        request = pb.TrainRequest(collection=self.name)
        if sample is not None:
            request.sample.CopyFrom(wire.pack(self._vectors(sample)))
        self._c.call(self._c.vectors.Train, request, True)

    def stats(self) -> dict:
        info = self._c.call(self._c.collections.Describe, pb.CollectionRef(name=self.name), True)
        return {"vectors": int(info.vectors), "tenants": int(info.tenants)}


class RemoteDatabase(Database):
    def __init__(self, channel: _Channel):
        self._c = channel

    def create_collection(self, name: str, dim: int, metric: str = "l2", **options) -> Collection:
        validate.name(name, "collection name")
        info = self._c.call(self._c.collections.Create, pb.CreateCollectionRequest(
            name=name, dim=validate.dim(dim), metric=str(metric), options_json=json.dumps(options)), False)
        return RemoteCollection(self._c, info)

    def collection(self, name: str) -> Collection:
        return RemoteCollection(self._c, self._c.call(self._c.collections.Describe, pb.CollectionRef(name=name), True))

    def list_collections(self) -> list[str]:
        return sorted(self._c.call(self._c.collections.List, pb.ListCollectionsRequest(), True).names)

    def drop_collection(self, name: str) -> None:
        self._c.call(self._c.collections.Drop, pb.CollectionRef(name=name), False)

    def snapshot(self, path) -> None:
        self._c.call(self._c.admin.Snapshot, pb.SnapshotRequest(path=str(path)), False)

    def server_info(self) -> dict:
        reply = self._c.call(self._c.admin.ServerInfo, pb.Empty(), True)
        return {f.name: getattr(reply, f.name) for f in reply.DESCRIPTOR.fields}

    def close(self) -> None:
        self._c.close()


def connect(address: str, *, api_key: str | None = None, timeout: float = 30.0, retries: int = 3,
            root_certificates: bytes | None = None, max_message_bytes: int = 64 << 20) -> RemoteDatabase:
    """A Database served by a Curator server at `address` ("host:port")."""
    return RemoteDatabase(_Channel(address, api_key, timeout, retries, root_certificates, max_message_bytes))
