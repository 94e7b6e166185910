"""Per-tenant archives: one tenant's part of a collection and its semantic-cache entries, as one
file or in memory, and back into a collection of the same dimension and metric, here or elsewhere.

What an archive holds, for one tenant (README, "Per-tenant backup"):
- of one collection (optional), every vector the tenant may see, ascending by id: the id, the
  vector (float32, bit-exact), its payload, and whether the tenant owns it; and the collection's
  name, dimension and metric;
- the tenant's semantic-cache entries (the cache is the database's, so they are not tied to the
  collection): category, embedding model, model-settings key, creation time, prompt, answer and
  the embedding as stored.
It must never name another tenant: a vector shared with others is archived without saying with
whom, and so is a vector the tenant sees but does not own.

The file (`TenantArchive.save` / `load`) is an uncompressed numpy `.npz`, written to a temporary
file beside it and renamed into place, mode 0600:
- `header`: uint8, UTF-8 JSON {format: "curator-tenant-archive", version: 1, tenant, collection,
  dim, metric, created (Unix seconds), vectors, owned, cache_entries, sha256};
- `ids` <i8 (n,), `vectors` <f4 (n, dim), `owned` bool (n,);
- `payloads`: uint8, compact UTF-8 JSON: an array of n objects, one per vector ({} for none);
- `cache`: uint8, UTF-8 JSON: an array of one object per cache entry {category, model, settings,
  created, prompt, answer, dim}, and where the entry has them (entries the HTTP gateway stored)
  `extra` (the JSON object kept beside the answer: model, finish reason, usage) and `expires` (Unix
  seconds: its own ttl's end); `cache_embeddings` <f4, the entries' embeddings one after another.
`sha256` is the digest of those six arrays' bytes in that order: a changed or truncated file is
refused, as is another format or version. Version 2 is version 1 with entries that may have
`extra` or `expires`; an archive is written as version 1 when none has, so that a Curator reading
only version 1 reads it, and as 2 otherwise (such a Curator refuses it, saying so, rather than
dropping the fields).

Reading (`read_rows`) runs holding the collection's shared lock (`EmbeddedCollection.tenant_rows`):
writes wait for it, reads go on, and the archive is the collection at one moment. It holds one
copy of the tenant's ids, vectors, owned flags and payloads (as dicts, the slow part: 50 000
128-d vectors with two-field payloads held the lock 20 ms, 15 of them for the payloads); the file
is written after the lock is let go. The cache entries are read just after, each (tenant,
category) at one moment.

Importing (`Importer`) writes batches of at most BATCH rows, each one write (all or nothing: an
insert where every id is new, else an upsert), for the importing tenant, by what the target
collection holds of each id:
- absent: inserted, owned by the importing tenant; a vector the archive's tenant only saw
  becomes the importing tenant's own copy;
- present and owned by the importing tenant: restored (the archived vector and payload);
- present, seen by the importing tenant but owned by another: left as it is (it sees it already);
- present and not seen by it: the id is taken by another tenant. The batch is refused
  (AlreadyExistsError), or with skip_taken those rows are skipped and counted.
An import is idempotent, so one stopped halfway resumes by running it again. Cache entries go in
through `SemanticCache.restore_entries` (an entry the tenant already holds is skipped).

An offloaded tenant's archive (`states.py`, README "Tenant states") is a file of this format too:
the vectors only that tenant saw, all owned by it, no collection name and no cache entries.

Copying (`copy`) is an export and an import without a file. Within one collection the ids
exist already, so the copy shares the vectors with the new tenant (a grant: stored once, owned
by whoever owned them) and copies the cache entries.
"""

import hashlib
import json
import os
import threading
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import validate
from .errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, StorageError
from .metric import Metric

FORMAT = "curator-tenant-archive"
VERSION = 2  # the newest this Curator writes and reads; it reads 1 too (entries without extra or expires)
VERSIONS = (1, 2)
BATCH = 8192  # rows an import writes at once (one write turn of the collection)
CONTENT = ("ids", "vectors", "owned", "payloads", "cache", "cache_embeddings")  # what sha256 covers, in order
MEMBERS = ("header",) + CONTENT
CACHE_FIELDS = ("category", "model", "settings", "created", "prompt", "answer")
CACHE_OPTIONAL = ("extra", "expires")  # of entries the gateway stored (store_chat's extra and ttl)


@dataclass
class CacheEntry:
    """One semantic-cache entry of the archived tenant (the tenant itself is not repeated)."""

    category: str
    model: str
    settings: str      # the key of the model settings the answer came from ("" for none)
    created: float     # Unix seconds
    prompt: str
    answer: str
    embedding: np.ndarray  # float32, as stored (unit length)
    extra: dict | None = None     # kept beside the answer (store_chat): model, finish reason, usage
    expires: float | None = None  # Unix seconds: the end of its own ttl (store_chat), None: the category's

    def meta(self) -> dict:
        meta = {name: getattr(self, name) for name in CACHE_FIELDS}
        return meta | {name: getattr(self, name) for name in CACHE_OPTIONAL if getattr(self, name) is not None}


@dataclass
class TenantArchive:
    """One tenant's vectors in one collection (none when `collection` is None) and its cache entries."""

    tenant: str
    collection: str | None
    dim: int | None
    metric: str | None
    ids: np.ndarray        # (n,) int64, ascending
    vectors: np.ndarray    # (n, dim) float32
    owned: np.ndarray      # (n,) bool
    payloads: list[dict]   # n dicts, {} for none
    cache: list[CacheEntry] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    def __len__(self) -> int:
        return int(self.ids.size)

    def header(self, sha256: str = "") -> dict:
        optional = any(e.extra is not None or e.expires is not None for e in self.cache)
        return {"format": FORMAT, "version": VERSION if optional else 1, "tenant": self.tenant, "collection": self.collection,
                "dim": self.dim, "metric": self.metric, "created": self.created, "vectors": len(self),
                "owned": int(np.count_nonzero(self.owned)), "cache_entries": len(self.cache), "sha256": sha256}

    def content(self) -> dict[str, np.ndarray]:
        """The arrays of the file but the header, as stored."""
        return {
            "ids": np.ascontiguousarray(self.ids, "<i8"),
            "vectors": np.ascontiguousarray(self.vectors, "<f4").reshape(len(self), self.dim or 0),
            "owned": np.ascontiguousarray(self.owned, bool),
            "payloads": _bytes_array(json_array(self.payloads)),
            "cache": _bytes_array(json_array(cache_metas(self.cache))),
            "cache_embeddings": np.concatenate([np.asarray(e.embedding, "<f4").ravel() for e in self.cache])
            if self.cache else np.zeros(0, "<f4"),
        }

    def save(self, path) -> None:
        """Write the archive to `path` atomically (a temporary file renamed into place, fsynced), mode
        0600; StorageError when it cannot be written."""
        path = Path(path)
        content = self.content()
        header = _bytes_array(json.dumps(self.header(digest(content)), ensure_ascii=False).encode())
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as out:
                    np.savez(out, header=header, **content)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, path)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
        except OSError as error:
            raise StorageError(f"cannot write the tenant archive {path}: {error}") from None

    @classmethod
    def load(cls, path) -> "TenantArchive":
        """Read an archive, refusing (InvalidArgumentError) one that is not a tenant archive, of
        another format version, or whose content does not match its checksum (NotFoundError: no
        file there)."""
        try:
            stored = np.load(path, allow_pickle=False)
            if not isinstance(stored, np.lib.npyio.NpzFile):
                raise ValueError("one array, not an .npz file")
            with stored:
                if set(stored.files) != set(MEMBERS):
                    raise InvalidArgumentError(f"{path} is not a Curator tenant archive: it holds "
                                               f"{sorted(stored.files)}, expected {sorted(MEMBERS)}")
                header = _header(stored["header"].tobytes(), path)
                content = {name: stored[name] for name in CONTENT}
        except FileNotFoundError:
            raise NotFoundError(f"no tenant archive at {path}") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            if isinstance(error, InvalidArgumentError):
                raise
            raise InvalidArgumentError(f"{path} is not a Curator tenant archive (an .npz file): {error}") from None
        if digest(content) != header.get("sha256"):
            raise InvalidArgumentError(f"{path} is damaged or was changed: its content does not match the "
                                       "sha256 in its header")
        return cls.from_content(header, content, str(path))

    @classmethod
    def from_content(cls, header: dict, content: dict, where: str = "archive") -> "TenantArchive":
        n, dim = header["vectors"], header["dim"] or 0
        ids, vectors, owned = content["ids"], content["vectors"], content["owned"]
        if ids.shape != (n,) or vectors.shape != (n, dim) or owned.shape != (n,):
            raise InvalidArgumentError(f"{where}: arrays of shapes {ids.shape}, {vectors.shape}, {owned.shape} "
                                       f"do not match the header's {n} vectors of dimension {dim}")
        payloads = parse_array(content["payloads"].tobytes(), n, f"{where}: payloads")
        cache = cache_entries(content["cache"].tobytes(), content["cache_embeddings"], header["cache_entries"], where)
        return cls(header["tenant"], header["collection"], header["dim"], header["metric"],
                   ids.astype(np.int64), vectors.astype(np.float32), owned.astype(bool), payloads, cache,
                   header["created"])

    def rows(self, start: int, stop: int) -> "TenantArchive":
        """Rows start..stop, without the cache entries (a view for a batch)."""
        return replace(self, ids=self.ids[start:stop], vectors=self.vectors[start:stop],
                       owned=self.owned[start:stop], payloads=self.payloads[start:stop], cache=[])


@dataclass
class ImportReport:
    """What an import (or copy) did. `inserted`: new vectors, owned by the importing tenant;
    `restored`: vectors it owned, overwritten with the archived ones; `shared`: vectors it sees
    but another owns, left as they were (a copy within one collection: granted); `skipped`: ids
    taken by other tenants (with skip_taken); cache entries added, and skipped (held already, or
    of a category not cacheable for the tenant)."""

    tenant: str
    collection: str | None
    inserted: int = 0
    restored: int = 0
    shared: int = 0
    skipped: int = 0
    cache_entries: int = 0
    cache_skipped: int = 0


# -- reading a tenant ---------------------------------------------------------------------------


def read_rows(index, tenant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """The ids `tenant` may see (ascending), their vectors, owned flags and payloads, from one
    state of the index: the caller holds the collection's lock (shared is enough)."""
    n = index.count(tenant)  # NotFoundError for an unknown tenant
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, index.dim), np.float32), np.zeros(0, bool), []
    ids, _ = index.scroll(tenant, -1, n)
    return ids, index.get(ids), index.owned(ids, tenant), index.get_payloads(ids)


def tenant_cache(cache, tenant: str) -> list[CacheEntry]:
    """The tenant's entries in a semantic cache, as an archive holds them."""
    return [CacheEntry(**{name: meta[name] for name in CACHE_FIELDS + CACHE_OPTIONAL if name in meta}, embedding=embedding)
            for meta, embedding in cache.tenant_entries(tenant)]


def export(db, tenant: str, path=None, *, collection: str | None, cache: bool = True) -> TenantArchive:
    """`Database.export_tenant` of the embedded database."""
    tenant = validate.name(tenant, "tenant")
    if collection is None:
        archive = TenantArchive(tenant, None, None, None, np.zeros(0, np.int64), np.zeros((0, 0), np.float32),
                                np.zeros(0, bool), [])
    else:
        col = db.collection(collection)
        ids, vectors, owned, payloads = col.tenant_rows(tenant)
        archive = TenantArchive(tenant, col.name, col.dim, col.metric, ids, vectors, owned, payloads)
    if cache:
        archive.cache = tenant_cache(db.cache, tenant)
    if path is not None:
        archive.save(path)
    return archive


# -- importing ------------------------------------------------------------------------------------


class Importer:
    """An import in progress: rows batch by batch, then cache entries (the server feeds it chunk
    by chunk, `import_archive` from an archive in memory)."""

    def __init__(self, db, tenant: str, collection: str | None, dim: int | None, metric: str | None,
                 skip_taken: bool = False):
        self.db, self.skip_taken = db, skip_taken
        self.tenant = validate.name(tenant, "tenant")
        self.report = ImportReport(self.tenant, collection)
        self.col = None
        if collection is not None:
            self.col = db.collection(collection)
            check_shape(self.col, dim, metric)

    def rows(self, ids: np.ndarray, vectors: np.ndarray, payloads: list[dict]) -> None:
        """One batch, all or nothing (see the module's docstring for what happens to each id)."""
        if ids.size == 0:
            return
        if self.col is None:
            raise InvalidArgumentError("this archive has vectors: name the collection to import them into")
        col, tenant = self.col, self.tenant
        seen = col.visible_to(ids, tenant=tenant)
        mine = col.owned(ids, tenant=tenant)
        absent = ~col.contains(ids)
        taken = ~absent & ~seen
        if taken.any() and not self.skip_taken:
            raise AlreadyExistsError(
                f"{int(taken.sum())} id(s) of the archive are taken by other tenants in collection {col.name!r}, "
                f"e.g. {ids[taken][:5].tolist()}; import into another collection, or skip them (skip_taken)")
        write = absent | mine
        if write.all():
            # one write either way; an insert, where it can be, checks the payloads once, not twice
            (col.insert if absent.all() else col.upsert)(ids, vectors, tenant=tenant, payloads=payloads)
        elif write.any():
            rows = np.flatnonzero(write)
            col.upsert(ids[rows], vectors[rows], tenant=tenant, payloads=[payloads[i] for i in rows.tolist()])
        report = self.report
        report.inserted += int(absent.sum())
        report.restored += int(mine.sum())
        report.shared += int((seen & ~mine).sum())
        report.skipped += int(taken.sum())

    def finish(self) -> ImportReport:
        """The report; the tenant is created if no row did (an empty tenant comes back too)."""
        if self.col is not None:
            try:
                self.col.create_tenant(self.tenant)
            except AlreadyExistsError:
                pass
        return self.report

    def cache(self, entries: list[CacheEntry]) -> None:
        if entries:
            added, skipped = self.db.cache.restore_entries(self.tenant, [(e.meta(), e.embedding) for e in entries])
            self.report.cache_entries += added
            self.report.cache_skipped += skipped


def check_shape(col, dim: int | None, metric: str | None) -> None:
    if dim is None:
        return
    if col.dim != dim or Metric.parse(col.metric) is not Metric.parse(metric):
        raise InvalidArgumentError(f"the archive's vectors have dimension {dim} and metric {metric!r}; collection "
                                   f"{col.name!r} has dimension {col.dim} and metric {col.metric!r}: import into a "
                                   "collection of the same dimension and metric")


def import_archive(db, source, *, tenant: str | None = None, collection: str | None = None, cache: bool = True,
                   skip_taken: bool = False) -> ImportReport:
    """`Database.import_tenant`, over any Database whose collections are embedded."""
    archive = source if isinstance(source, TenantArchive) else TenantArchive.load(source)
    target = collection if collection is not None else archive.collection
    if target is None and len(archive):
        raise InvalidArgumentError("this archive has vectors: name the collection to import them into")
    importer = Importer(db, tenant or archive.tenant, target, archive.dim if target is not None else None,
                        archive.metric, skip_taken)
    for start in range(0, len(archive), BATCH):
        batch = archive.rows(start, start + BATCH)
        importer.rows(batch.ids, batch.vectors, batch.payloads)
    if cache:
        importer.cache(archive.cache)
    return importer.finish()


def copy(db, tenant: str, to_tenant: str | None = None, *, collection: str | None, to_collection: str | None = None,
         to=None, cache: bool = True, skip_taken: bool = False) -> ImportReport:
    """`Database.copy_tenant`, over the Database API alone (embedded or remote alike)."""
    to_tenant = tenant if to_tenant is None else to_tenant
    target_db = db if to is None else to
    to_collection = collection if to_collection is None else to_collection
    if target_db is db and to_tenant == tenant and to_collection == collection:
        raise InvalidArgumentError(f"copying tenant {tenant!r} onto itself: name another tenant, collection or database")
    archive = db.export_tenant(tenant, collection=collection, cache=cache)
    if target_db is db and to_collection == collection and collection is not None:
        return _share(db, archive, to_tenant, cache)
    return target_db.import_tenant(archive, tenant=to_tenant, collection=to_collection, cache=cache,
                                   skip_taken=skip_taken)


def _share(db, archive: TenantArchive, to_tenant: str, cache: bool) -> ImportReport:
    """A copy within one collection: the ids exist, so the vectors are granted to `to_tenant`."""
    col = db.collection(archive.collection)
    report = ImportReport(to_tenant, archive.collection)
    try:
        col.create_tenant(to_tenant)
    except AlreadyExistsError:
        pass
    for start in range(0, len(archive), BATCH):
        ids = archive.ids[start : start + BATCH]
        ids = ids[col.contains(ids)]  # deleted since the export: nothing to share
        if ids.size:
            report.shared += col.grant(ids, tenant=to_tenant)
    if cache and archive.cache:
        cached = db.import_tenant(cache_only(archive), tenant=to_tenant)
        report.cache_entries, report.cache_skipped = cached.cache_entries, cached.cache_skipped
    return report


def cache_only(archive: TenantArchive) -> TenantArchive:
    """The archive's cache entries, without a collection."""
    return replace(archive, collection=None, dim=None, metric=None, ids=archive.ids[:0],
                   vectors=np.zeros((0, 0), np.float32), owned=archive.owned[:0], payloads=[])


# -- encoding -------------------------------------------------------------------------------------


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def json_array(values: list) -> bytes:
    """Compact UTF-8 JSON of a list, in one call (about 6x faster than an encoding per value)."""
    return _JSON.encode([value or {} for value in values]).encode()


def cache_metas(entries: list[CacheEntry]) -> list[dict]:
    return [entry.meta() | {"dim": int(entry.embedding.size)} for entry in entries]


def parse_array(data: bytes, n: int | None, what: str) -> list[dict]:
    """A JSON array of n objects (None: of any number)."""
    try:
        values = json.loads(data) if data else []
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidArgumentError(f"{what}: not JSON ({error})") from None
    if type(values) is not list or n is not None and len(values) != n:
        raise InvalidArgumentError(f"{what}: expected a JSON array of {n if n is not None else 'some'} objects")
    if not all(type(v) is dict for v in values):
        raise InvalidArgumentError(f"{what}: each element must be a JSON object")
    return values


def cache_entries(data: bytes, embeddings: np.ndarray, n: int | None, where: str = "archive") -> list[CacheEntry]:
    metas = parse_array(data, n, f"{where}: cache entries")
    embeddings = np.asarray(embeddings).ravel()
    try:
        dims = [meta.pop("dim") for meta in metas]
        if not all(type(d) is int for d in dims):
            raise ValueError("each entry's dim must be an integer")
        if any(d < 1 for d in dims) or sum(dims) != embeddings.size:
            raise ValueError(f"dimensions {sum(dims)} in all, {embeddings.size} embedding values")
        ends = np.cumsum(dims)
        entries = []
        for meta, end, d in zip(metas, ends.tolist(), dims):
            if not set(CACHE_FIELDS) <= set(meta) <= set(CACHE_FIELDS + CACHE_OPTIONAL):
                raise ValueError(f"an entry has fields {sorted(meta)}; expected {sorted(CACHE_FIELDS)} and "
                                 f"optionally {list(CACHE_OPTIONAL)}")
            entries.append(CacheEntry(**meta, embedding=embeddings[end - d : end].astype(np.float32)))
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidArgumentError(f"{where}: malformed cache entries ({error})") from None
    return entries


def digest(content: dict[str, np.ndarray]) -> str:
    sha = hashlib.sha256()
    for name in CONTENT:
        sha.update(np.ascontiguousarray(content[name]).data)
    return sha.hexdigest()


def _header(data: bytes, where) -> dict:
    try:
        header = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgumentError(f"{where} is not a Curator tenant archive: its header is not JSON") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise InvalidArgumentError(f"{where} is not a Curator tenant archive (format {FORMAT!r})")
    if header.get("version") not in VERSIONS:
        raise InvalidArgumentError(f"{where} is a tenant archive of format version {header.get('version')!r}; "
                                   f"this Curator reads versions {', '.join(map(str, VERSIONS))}")
    return checked_header(header, where)


def checked_header(header: dict, where="archive") -> dict:
    """The header's fields, of the types they must have (an archive may come from anywhere)."""
    expected = {"tenant": str, "collection": (str, type(None)), "dim": (int, type(None)), "metric": (str, type(None)),
                "created": (int, float), "vectors": int, "owned": int, "cache_entries": int}
    for name, kind in expected.items():
        if isinstance(header.get(name), bool) or not isinstance(header.get(name), kind):
            raise InvalidArgumentError(f"{where}: header field {name!r} is missing or of the wrong type")
    if min(header["vectors"], header["owned"], header["cache_entries"]) < 0 or header["dim"] is not None and (
            header["dim"] < 1 or header["metric"] is None):
        raise InvalidArgumentError(f"{where}: header counts or dimension out of range")
    return header


def _bytes_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8)

