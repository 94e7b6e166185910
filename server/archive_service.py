"""Per-tenant archives over gRPC (service TenantArchive, proto/curator/v1/archive.proto): Export
streams one tenant's archive, read at one moment by the engine (`curator/tenant_archive.py`);
Import takes one chunk by chunk, each chunk of rows one batch of the engine's import.

A tenant key exports and imports only for its own tenants, in collections it may reach, and an
import meets ids it cannot see as an insert does (server/probes.py): one message without ids or
count, and a budget of such collisions. Skipping taken ids (skip_taken) would tell which ids others
use, so it needs an admin key.

Must never: send another tenant's name or vector, or tell a tenant key which ids others hold.
"""

import logging

import grpc

from curator import tenant_archive as ta
from curator.errors import AlreadyExistsError, CuratorError, InvalidArgumentError, PermissionDeniedError
from curator_proto import archive_wire
from curator_proto.v1 import archive_pb2_grpc as rpc

from .decoding import checked
from .probes import ProbeBudget
from .service import _Base, abort

log = logging.getLogger("curator.server")


class ArchiveService(_Base, rpc.TenantArchiveServicer):
    def __init__(self, db, keys, limits, probes: ProbeBudget | None = None):
        super().__init__(db, keys, limits)
        self.probes = probes or ProbeBudget()

    def Export(self, request, context):
        try:
            principal = self.keys.principal(context)
            principal.require_tenant(request.tenant)
            collection = None
            if request.collection:
                collection = self._collection(request.collection, principal).name
            archive = self.db.export_tenant(request.tenant, collection=collection, cache=request.cache)
            size = archive_wire.chunk_bytes(request.max_chunk_bytes, self.limits.max_message_bytes)
            yield from archive_wire.chunks(archive, size)
        except CuratorError as error:
            abort(context, error)
        except Exception:  # a bug: log it, answer INTERNAL, keep serving
            log.exception("internal error in Export")
            context.abort(grpc.StatusCode.INTERNAL, "internal error in Export; see the server log")

    def Import(self, requests, context):
        try:
            return archive_wire.report_to_wire(self._import(requests, context, self.keys.principal(context)))
        except CuratorError as error:
            abort(context, error)
        except Exception:
            log.exception("internal error in Import")
            context.abort(grpc.StatusCode.INTERNAL, "internal error in Import; see the server log")

    def _import(self, requests, context, principal) -> ta.ImportReport:
        requests = iter(requests)
        first = checked(next(requests, None), context)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgumentError("an archive stream starts with its header")
        header = archive_wire.header_from_wire(first.header)
        principal.require_tenant(header["tenant"])
        if first.header.skip_taken:
            principal.require_admin("skipping ids other tenants hold (skip_taken tells which ids they use)")
        collection = None
        if header["collection"] is not None:
            collection = self._collection(header["collection"], principal).name
        importer = ta.Importer(self.db, header["tenant"], collection, header["dim"], header["metric"],
                               first.header.skip_taken)
        rows = entries = 0
        for chunk in requests:
            part = checked(chunk, context).WhichOneof("part")
            if part == "rows":
                ids, vectors, _, payloads = archive_wire.rows_from_wire(chunk.rows, header["dim"] or 0)
                self.limits.batch(ids.size)
                self._rows(importer, principal, ids, vectors, payloads)
                rows += ids.size
            elif part == "cache":
                cache = archive_wire.cache_from_wire(chunk.cache)
                importer.cache(cache)
                entries += len(cache)
            else:
                raise InvalidArgumentError("an archive stream has one header, first")
        if rows != header["vectors"] or entries != header["cache_entries"]:
            raise InvalidArgumentError(f"the archive stream ended after {rows} of {header['vectors']} vectors and "
                                       f"{entries} of {header['cache_entries']} cache entries; what came is imported, "
                                       "send it again to finish")
        return importer.finish()

    def _rows(self, importer: ta.Importer, principal, ids, vectors, payloads) -> None:
        if principal.admin:
            importer.rows(ids, vectors, payloads)
            return
        self.probes.check(principal.name)
        col = importer.col
        if col is None:
            raise InvalidArgumentError("this archive has vectors: name the collection to import them into")
        # ids none of the key's tenants can see: one message for any of them, no id, no count
        if (col.contains(ids) & ~self._seen(col, ids, principal)).any():
            raise self.probes.taken(principal.name)
        try:
            importer.rows(ids, vectors, payloads)
        except (AlreadyExistsError, PermissionDeniedError):
            if (col.contains(ids) & ~self._seen(col, ids, principal)).any():  # taken meanwhile
                raise self.probes.taken(principal.name) from None
            raise
