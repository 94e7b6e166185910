"""Per-tenant archives through the SDKs (service TenantArchive): what the blocking and asyncio SDKs
send and how they read it, with no I/O of their own beyond files (`curator/tenant_archive.py`).

Export and Import are streams, not `Call`s: an export's chunks are assembled into a
`TenantArchive` in memory (then saved, if a path was given), and an import sends an archive, loaded
from its file or given in memory, as chunks of `archive_wire.CHUNK_BYTES`. Both are safe to repeat
(an export reads, an import is idempotent), so both are retried while the server is UNAVAILABLE.
Their deadline grows with the archive: ARCHIVE_TIMEOUT at least.
"""

from curator import tenant_archive as ta
from curator import validate
from curator.errors import InvalidArgumentError
from curator_proto import archive_wire
from curator_proto.v1 import archive_pb2 as pb

ARCHIVE_TIMEOUT = 600.0  # seconds: a stream of a whole tenant may take much longer than one call


def deadline(timeout: float) -> float:
    return max(timeout, ARCHIVE_TIMEOUT)


def export_request(tenant: str, collection: str | None, cache: bool) -> pb.ExportRequest:
    return pb.ExportRequest(tenant=validate.name(tenant, "tenant"), cache=bool(cache),
                            collection="" if collection is None else validate.name(collection, "collection name"),
                            max_chunk_bytes=archive_wire.CHUNK_BYTES)


def source(archive) -> ta.TenantArchive:
    """An archive given in memory, or loaded from its file (checked: format, version, checksum)."""
    return archive if isinstance(archive, ta.TenantArchive) else ta.TenantArchive.load(archive)


def import_chunks(archive: ta.TenantArchive, tenant: str | None, collection: str | None, cache: bool,
                  skip_taken: bool):
    """The chunks that import `archive` for `tenant` into `collection` (defaults: the archive's):
    the header names the target."""
    target = collection if collection is not None else archive.collection
    if target is None and len(archive):
        raise InvalidArgumentError("this archive has vectors: name the collection to import them into")
    archive = ta.TenantArchive(
        validate.name(tenant if tenant is not None else archive.tenant, "tenant"), target,
        archive.dim if target is not None else None, archive.metric if target is not None else None,
        archive.ids, archive.vectors, archive.owned, archive.payloads, archive.cache if cache else [],
        archive.created)
    return archive_wire.chunks(archive, archive_wire.CHUNK_BYTES, skip_taken)
