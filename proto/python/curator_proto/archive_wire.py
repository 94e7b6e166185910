"""Per-tenant archives on the wire (service TenantArchive, proto/curator/v1/archive.proto): a
`TenantArchive` to a stream of `ArchiveChunk`s and back, shared by the server and the SDKs.

The chunks carry the columns of the archive file (`curator/tenant_archive.py`): ids and vectors as
packed little-endian bytes, payloads and cache entries as JSON arrays (one per chunk). Rows are cut
into chunks of at most `max_bytes` (and BATCH rows, one write on import): whatever the payloads
weigh, a chunk stays within a message limit. Everything read is checked: a malformed chunk is InvalidArgumentError.
"""

import numpy as np

from curator import tenant_archive as ta
from curator.errors import InvalidArgumentError
from curator_proto.v1 import archive_pb2 as pb

CHUNK_BYTES = 4 << 20  # a chunk's default size: large enough to amortise a message, small enough to stream
SLACK = 1 << 10        # a message's own tags and lengths besides its fields


def chunk_bytes(asked: int, limit: int) -> int:
    """The size of chunks: the receiver's wish (0: the default) within the sender's message limit."""
    return max(SLACK * 2, min(asked or CHUNK_BYTES, limit) - SLACK)


def header_to_wire(archive: ta.TenantArchive, skip_taken: bool = False) -> pb.ArchiveHeader:
    return pb.ArchiveHeader(format=ta.FORMAT, version=archive.header()["version"], tenant=archive.tenant,
                            collection=archive.collection or "", dim=archive.dim or 0, metric=archive.metric or "",
                            created=archive.created, vectors=len(archive), owned=int(np.count_nonzero(archive.owned)),
                            cache_entries=len(archive.cache), skip_taken=skip_taken)


def header_from_wire(header: pb.ArchiveHeader) -> dict:
    if header.format != ta.FORMAT:
        raise InvalidArgumentError(f"an archive stream starts with a header of format {ta.FORMAT!r}; got "
                                   f"{header.format[:60]!r}")
    if header.version not in ta.VERSIONS:
        raise InvalidArgumentError(f"archive format version {header.version} is not known here; this Curator "
                                   f"reads versions {', '.join(map(str, ta.VERSIONS))}")
    return ta.checked_header({
        "tenant": header.tenant, "collection": header.collection or None, "dim": header.dim or None,
        "metric": header.metric or None, "created": header.created, "vectors": header.vectors,
        "owned": header.owned, "cache_entries": header.cache_entries})


def chunks(archive: ta.TenantArchive, max_bytes: int = CHUNK_BYTES, skip_taken: bool = False):
    """The archive as ArchiveChunks: its header, its rows, its cache entries."""
    yield pb.ArchiveChunk(header=header_to_wire(archive, skip_taken))
    n, dim = len(archive), archive.dim or 0
    ids = np.ascontiguousarray(archive.ids, "<i8")
    vectors = np.ascontiguousarray(archive.vectors, "<f4")
    owned = np.ascontiguousarray(archive.owned, np.uint8)

    def rows(start: int, stop: int):
        payloads = ta.json_array(archive.payloads[start:stop])
        return (stop - start) * (8 + 4 * dim + 1) + len(payloads), lambda: pb.ArchiveChunk(rows=pb.ArchiveRows(
            ids=ids[start:stop].tobytes(), vectors=vectors[start:stop].tobytes(),
            owned=owned[start:stop].tobytes(), payloads=payloads))

    yield from _cut(n, rows, _average(archive.payloads) + 8 + 4 * dim + 1, max_bytes)
    cache = archive.cache

    def entries(start: int, stop: int):
        metas = ta.json_array(ta.cache_metas(cache[start:stop]))
        embeddings = [np.asarray(e.embedding, "<f4").ravel() for e in cache[start:stop]]
        return len(metas) + 4 * sum(e.size for e in embeddings), lambda: pb.ArchiveChunk(cache=pb.ArchiveCache(
            entries=metas, embeddings=np.concatenate(embeddings).tobytes()))

    yield from _cut(len(cache), entries, 4 * max((e.embedding.size for e in cache), default=0) + 1_000, max_bytes)


def _average(payloads: list[dict]) -> float:
    """The JSON bytes of a payload, on average over a sample of at most 256."""
    sample = payloads[:: max(1, len(payloads) // 256)]
    return len(ta.json_array(sample)) / max(1, len(sample))


def _cut(n: int, encode, row_bytes: float, max_bytes: int):
    """Chunks of consecutive rows: at most BATCH, about max_bytes at the estimated `row_bytes`, and
    halved until they fit (a single row that does not goes alone). `encode(start, stop)` gives the
    bytes and a maker of the chunk."""
    per = max(1, min(ta.BATCH, int(max_bytes // row_bytes)))
    for start in range(0, n, per):
        yield from _fitted(start, min(n, start + per), encode, max_bytes)


def _fitted(start: int, stop: int, encode, max_bytes: int):
    size, make = encode(start, stop)
    if size <= max_bytes or stop - start == 1:
        yield make()
        return
    middle = (start + stop) // 2
    yield from _fitted(start, middle, encode, max_bytes)
    yield from _fitted(middle, stop, encode, max_bytes)


def rows_from_wire(rows: pb.ArchiveRows, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    if not dim:
        raise InvalidArgumentError("archive rows sent without a collection in the header")
    n, extra = divmod(len(rows.ids), 8)
    if extra or n == 0 or len(rows.vectors) != n * dim * 4 or len(rows.owned) != n:
        raise InvalidArgumentError(f"archive rows: {len(rows.ids)} bytes of ids, {len(rows.vectors)} of vectors and "
                                   f"{len(rows.owned)} of owned flags are not n int64, n x {dim} float32 and n bytes")
    ids = np.frombuffer(rows.ids, "<i8").astype(np.int64)
    vectors = np.frombuffer(rows.vectors, "<f4").reshape(n, dim).astype(np.float32)
    owned = np.frombuffer(rows.owned, np.uint8).astype(bool)
    return ids, vectors, owned, ta.parse_array(rows.payloads, n, "archive rows: payloads")


def cache_from_wire(cache: pb.ArchiveCache) -> list[ta.CacheEntry]:
    if len(cache.embeddings) % 4:
        raise InvalidArgumentError("archive cache entries: embeddings are not whole float32 values")
    return ta.cache_entries(cache.entries, np.frombuffer(cache.embeddings, "<f4"), None, "archive cache entries")


class Assembler:
    """Collects an exported stream of chunks into a TenantArchive."""

    def __init__(self):
        self.header = None
        self.rows, self.cache = [], []

    def add(self, chunk: pb.ArchiveChunk) -> None:
        part = chunk.WhichOneof("part")
        if (part == "header") != (self.header is None):
            raise InvalidArgumentError("an archive stream has one header, first")
        if part == "header":
            self.header = header_from_wire(chunk.header)
        elif part == "rows":
            self.rows.append(rows_from_wire(chunk.rows, self.header["dim"] or 0))
        elif part == "cache":
            self.cache += cache_from_wire(chunk.cache)

    def archive(self) -> ta.TenantArchive:
        header = self.header
        if header is None:
            raise InvalidArgumentError("the archive stream ended before its header")
        dim = header["dim"] or 0
        ids = np.concatenate([r[0] for r in self.rows]) if self.rows else np.zeros(0, np.int64)
        if ids.size != header["vectors"] or len(self.cache) != header["cache_entries"]:
            raise InvalidArgumentError(f"the archive stream ended after {ids.size} of {header['vectors']} vectors and "
                                       f"{len(self.cache)} of {header['cache_entries']} cache entries")
        return ta.TenantArchive(
            header["tenant"], header["collection"], header["dim"], header["metric"], ids,
            np.concatenate([r[1] for r in self.rows]) if self.rows else np.zeros((0, dim), np.float32),
            np.concatenate([r[2] for r in self.rows]) if self.rows else np.zeros(0, bool),
            [p for r in self.rows for p in r[3]], self.cache, header["created"])


def report_to_wire(report: ta.ImportReport) -> pb.ImportReply:
    return pb.ImportReply(tenant=report.tenant, collection=report.collection or "", inserted=report.inserted,
                          restored=report.restored, shared=report.shared, skipped=report.skipped,
                          cache_entries=report.cache_entries, cache_skipped=report.cache_skipped)


def report_from_wire(reply: pb.ImportReply) -> ta.ImportReport:
    return ta.ImportReport(reply.tenant, reply.collection or None, reply.inserted, reply.restored, reply.shared,
                           reply.skipped, reply.cache_entries, reply.cache_skipped)
