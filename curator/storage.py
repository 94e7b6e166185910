"""The data directory: RocksDB (through rocksdict) holding everything a database needs to reopen.

Keys are bytes; `STORAGE.md` next to this file documents the format. Every API write becomes one
RocksDB write batch (all or nothing), applied in the order the writes were acknowledged. The
in-memory index is derived state: it is rebuilt from these records when the directory is opened,
and the clustering tree is stored so that opening never re-trains.

Durability modes:
- "sync": the batch is fsynced before the write returns (the default). The batch is written in
  order while the writer holds its collection; the fsync runs after, outside anything a search
  needs, and one fsync covers every write waiting for it (group commit with no added delay);
- "batch": group commit: the write returns once a background fsync covering it has run; writes
  that arrive while one fsync runs share the next one (after waiting at most `group_delay`
  seconds more for company, 0 by default), so the delay is bounded by two fsyncs plus that;
- "none": the batch is in the write-ahead log but not fsynced (survives the process being
  killed, not the machine losing power).

This module knows records and bytes; it never looks inside the index beyond the arrays a
`Change` names. It is also the shelf of inactive tenants' evicted vectors (`states.py`): their
records are read back from here (`CollectionShelf`), and opening loads only the vectors some
active tenant sees. Offloaded tenants' archives are files beside the directory
(`<directory>-offloaded/<cid>/<tenant number>.npz`, `archive_path`): opening reads none of them,
only one small `X` record per offloaded tenant.
"""

import io
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
from rocksdict import AccessType, BlockBasedOptions, Checkpoint, Options, Rdict, WriteBatch, WriteOptions

from .errors import InvalidArgumentError, NotFoundError, StorageError
from .states import Manifest, Shelved

FORMAT = 1
DURABILITY = ("sync", "batch", "none")

_FORMAT_KEY = b"F"
_COLLECTION, _VECTOR, _ACCESS, _TENANT, _TREE, _PAYLOAD = b"C", b"V", b"A", b"T", b"R", b"P"
_INACTIVE = b"I"  # I + cid + tenant number: the tenant is inactive; value: its manifest (states.Manifest)
# O + cid + id: the id is in an offloaded tenant's archive; value: that tenant's number (u32 BE).
# X + cid + tenant number: the tenant is offloaded; value: JSON {"vectors": n, "payload_bytes": b} (its
# archive's size, and its payloads' for the quota tally).
# L + cid + tenant number: the leaves of its archived vectors (a states.Manifest), read when it is
# restored, never when opening.
_ARCHIVED, _OFFLOADED, _LEAVES = b"O", b"X", b"L"
_BIRTH = b"B"  # B + cid + tenant number: when the tenant came into being (ns since the epoch, u64 BE)
_CHUNK = 1 << 16  # records a scan turns into arrays at a time: bounded temporary Python objects
# Records other parts keep here through write_records / scan_records (STORAGE.md), besides the
# semantic cache's S and Y (cache/records.py): tenant quotas set through the API (`quotas.py`) and
# API keys' rates set through the API (the server's `rates.py`).
QUOTA, KEY_RATES = b"Q", b"K"
_NO_IDS = np.zeros(0, np.int64)


class DataDirectory:
    """One open data directory: its RocksDB, its write mode, and its collections' records."""

    def __init__(self, path: Path, db: Rdict, durability: str, group_delay: float):
        self.path = path
        self._db = db
        self.durability = durability
        self._write_options = WriteOptions()  # never fsynced in the write: `_GroupCommit` does it
        self._group = (_GroupCommit(db, group_delay if durability == "batch" else 0.0)
                       if durability in ("sync", "batch") else None)
        # Held while archive files and the records naming them change together (an offload, a
        # restore) and while a snapshot copies both: a snapshot never sees one without the other.
        self._archives_lock = threading.Lock()

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path, durability: str = "sync", group_delay: float = 0.0) -> "DataDirectory":
        if durability not in DURABILITY:
            raise InvalidArgumentError(f"unknown durability {durability!r}: expected one of {', '.join(DURABILITY)}")
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StorageError(f"{path} is a file, not a data directory")
        fresh = not path.exists() or not any(path.iterdir())
        if fresh:
            private_directory(path)
        else:
            check_directory(path)
        options = Options(raw_mode=True)
        options.create_if_missing(fresh)
        options.set_block_based_table_factory(_table_options())
        # Tables where deletions crowd (an offload deletes a tenant's records at once) are compacted
        # by themselves, so that opening does not step over their tombstones for long.
        options.add_compact_on_deletion_collector_factory(1024, 256, 0.5)
        try:
            # Named, the default column family takes these options when the directory exists too
            # (rocksdict otherwise reopens it with the options stored in it).
            db = Rdict(str(path), options, column_families={"default": options})
        except Exception as error:  # rocksdict raises plain Exception with RocksDB's status text
            raise _storage_error(error, path) from None
        if fresh:
            write_options = WriteOptions()
            write_options.sync = True
            batch = WriteBatch(raw_mode=True)
            batch.put(_FORMAT_KEY, json.dumps({"format": FORMAT, "engine": "curator"}).encode())
            db.write(batch, write_options)
        return cls(path, db, durability, group_delay)

    def close(self) -> None:
        if self._group is not None:
            self._group.close()
        self._db.flush_wal(True)
        self._db.close()

    # -- writing -------------------------------------------------------------------------------

    def commit(self, batch: WriteBatch) -> "_Ticket | None":
        """Write one batch atomically; returns a ticket to wait on for its fsync (None: no fsync)."""
        try:
            self._db.write(batch, self._write_options)
        except Exception as error:
            raise StorageError(f"write to {self.path} failed: {error}") from None
        return self._group.ticket() if self._group is not None else None

    def snapshot(self, target) -> None:
        """A consistent point-in-time copy of the whole directory (a RocksDB checkpoint)."""
        target = Path(target)
        if target.exists():
            raise InvalidArgumentError(f"snapshot target {target} already exists; choose a new path")
        with self._archives_lock:
            try:
                Checkpoint(self._db).create_checkpoint(str(target))
            except Exception as error:
                raise StorageError(f"snapshot to {target} failed: {error}") from None
            target.chmod(0o700)
            _copy_archives(self.archives, _archives_of(target))

    # -- collections ---------------------------------------------------------------------------

    def collections(self) -> dict[str, dict]:
        return {key[1:].decode(): json.loads(value) for key, value in self._scan(_COLLECTION)}

    def put_collection(self, name: str, settings: dict) -> None:
        batch = WriteBatch(raw_mode=True)
        batch.put(_COLLECTION + name.encode(), json.dumps(settings).encode())
        self._wait(self.commit(batch))

    def drop_collection(self, name: str, cid: int) -> None:
        batch = WriteBatch(raw_mode=True)
        batch.delete(_COLLECTION + name.encode())
        for kind in (_VECTOR, _ACCESS, _TENANT, _BIRTH, _TREE, _PAYLOAD, _INACTIVE, _ARCHIVED, _OFFLOADED, _LEAVES):
            batch.delete_range(_prefix(kind, cid), _prefix(kind, cid + 1))
        self._wait(self.commit(batch))
        shutil.rmtree(self.archives / str(cid), ignore_errors=True)  # its offloaded tenants' archives

    # -- offloaded tenants' archives -------------------------------------------------------------

    @property
    def archives(self) -> Path:
        return _archives_of(self.path)

    def archive_path(self, cid: int, t: int) -> Path:
        return self.archives / str(cid) / f"{t}.npz"

    def archived(self, cid: int, t: int, dim: int) -> tuple[Shelved, Manifest]:
        """An offloaded tenant's archived vectors (its alone: access list [t], owned by t), and
        the leaves they were in."""
        from .tenant_archive import TenantArchive

        try:
            archive = TenantArchive.load(self.archive_path(cid, t))
        except (NotFoundError, InvalidArgumentError) as error:
            raise StorageError(f"the archive of offloaded tenant {t} of collection {cid} cannot be read, so it "
                               f"cannot be restored: {error}") from None
        n = len(archive)
        rows = np.array([i for i, p in enumerate(archive.payloads) if p], np.int64)
        raw = self._db.get(_prefix(_LEAVES, cid) + t.to_bytes(4, "big"))
        return (Shelved(archive.ids, archive.vectors.reshape(n, dim), np.full(n, t, np.int32), np.ones(n, np.int64),
                        np.full(n, t, np.int32), rows, [archive.payloads[i] for i in rows.tolist()]),
                Manifest.empty() if raw is None else Manifest.decode(raw))

    def holders(self, cid: int, ids: np.ndarray) -> np.ndarray:
        """For each id, the offloaded tenant whose archive holds it (-1: none): one multi-get of
        `O` keys (bloom filters make an absent key cheap)."""
        if ids.size == 0:
            return np.zeros(0, np.int64)
        return np.fromiter((-1 if raw is None else int.from_bytes(raw, "big")
                            for raw in self._db.get(_keys(_ARCHIVED, cid, ids))), np.int64, ids.size)

    def _write_archive(self, cid: int, t: int, shelved: Shelved, index) -> None:
        """The archive file of a tenant being offloaded, written (atomically, 0600) before the
        batch that deletes its records from the live store."""
        from .tenant_archive import TenantArchive

        payloads = [{}] * shelved.ids.size
        for row, payload in zip(shelved.payload_rows.tolist(), shelved.payloads):
            payloads[row] = payload
        path = self.archive_path(cid, t)
        private_directory(self.archives)
        private_directory(path.parent)
        TenantArchive(index.tenant_names[t], None, index.dim, index.metric.label, shelved.ids, shelved.vectors,
                      np.ones(shelved.ids.size, bool), payloads).save(path)

    def load(self, cid: int, dim: int) -> dict:
        """Everything stored for one collection that belongs in memory, as arrays: the vectors
        some active tenant sees (the others' ids come as `evicted_ids`), their access lists and
        payloads, and every tenant's count of vectors (`tenant_counts`, evicted ones included).
        Every access list is read; only the resident vectors' rows and payloads are."""
        tenants = {int.from_bytes(k[5:9], "big"): v.decode() for k, v in self._scan(_prefix(_TENANT, cid))}
        names = [tenants.get(t) for t in range(max(tenants, default=-1) + 1)]
        births = {int.from_bytes(k[5:9], "big"): int.from_bytes(v, "big") for k, v in self._scan(_prefix(_BIRTH, cid))}
        inactive = [int.from_bytes(k[5:9], "big") for k, _ in self._scan(_prefix(_INACTIVE, cid))]
        offloaded = {int.from_bytes(k[5:9], "big"): (json.loads(v)["vectors"], json.loads(v).get("payload_bytes", 0))
                     for k, v in self._scan(_prefix(_OFFLOADED, cid))}
        id_parts, count_parts, tenant_parts = [_NO_IDS], [_NO_IDS], [np.zeros(0, np.int32)]
        for ids, rows in self._scan_chunks(_ACCESS, cid):
            id_parts.append(ids)
            count_parts.append(np.fromiter((len(r) // 4 for r in rows), np.int64, len(rows)))
            tenant_parts.append(np.frombuffer(b"".join(rows), "<i4"))
        access_ids, counts = np.concatenate(id_parts), np.concatenate(count_parts)
        pair_tenants = np.concatenate(tenant_parts).astype(np.int64)
        n_tenants = max(len(names), max(inactive, default=-1) + 1, max(offloaded, default=-1) + 1,
                        int(pair_tenants.max(initial=-1)) + 1)
        asleep = np.zeros(n_tenants, bool)
        asleep[inactive] = True
        asleep[list(offloaded)] = True
        pair_vector = np.repeat(np.arange(access_ids.size), counts)
        resident = np.zeros(access_ids.size, bool)
        resident[pair_vector[~asleep[pair_tenants]]] = True
        vectors = self._resident_rows(cid, dim, access_ids, resident)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        kept_pairs = resident[pair_vector]
        tree = self._db.get(_prefix(_TREE, cid))
        payload_ids, payloads = self._resident_payloads(cid, access_ids, resident)
        return {
            "payload_ids": payload_ids,
            "payloads": payloads,
            "ids": access_ids[resident],
            "vectors": vectors,
            "pair_ids": np.repeat(access_ids, counts)[kept_pairs],
            "pair_tenants": pair_tenants[kept_pairs],
            "owners": pair_tenants[starts[resident]].astype(np.int32),
            "tenant_names": names,
            "tenant_births": [births.get(t, 0) for t in range(len(names))],
            "tree": None if tree is None else _decode_arrays(tree),
            "evicted_ids": access_ids[~resident],
            "asleep": asleep,
            "tenant_counts": np.bincount(pair_tenants, minlength=n_tenants)
            + np.bincount(np.array(list(offloaded), np.int64), np.array([n for n, _ in offloaded.values()], np.float64),
                          n_tenants).astype(np.int64),
            "offloaded": offloaded,
        }

    def _resident_rows(self, cid: int, dim: int, ids: np.ndarray, resident: np.ndarray) -> np.ndarray:
        """The rows of the resident vectors: one scan of the V records when most are resident
        (rows of evicted ones dropped chunk by chunk), else one multi-get of theirs."""
        n = int(resident.sum())
        vectors = np.empty((n, dim), np.float32)
        if 2 * n < ids.size:
            wanted = ids[resident]
            for start in range(0, n, _CHUNK):
                part = wanted[start : start + _CHUNK]
                rows = self._db.get(_keys(_VECTOR, cid, part))
                if any(row is None for row in rows):
                    raise StorageError(f"{self.path}: collection {cid} has access lists without vectors")
                vectors[start : start + part.size] = np.frombuffer(b"".join(rows), "<f4").reshape(-1, dim)
            return vectors
        position = filled = 0
        for chunk_ids, rows in self._scan_chunks(_VECTOR, cid):
            expected = ids[position : position + chunk_ids.size]
            if not np.array_equal(chunk_ids, expected):
                raise StorageError(f"{self.path}: collection {cid} has vectors and access lists that do not match")
            keep = resident[position : position + chunk_ids.size]
            position += chunk_ids.size
            if keep.all():
                block = np.frombuffer(b"".join(rows), "<f4")
            else:
                block = np.frombuffer(b"".join(r for r, k in zip(rows, keep.tolist()) if k), "<f4")
            vectors[filled : filled + int(keep.sum())] = block.reshape(-1, dim)
            filled += int(keep.sum())
        if position != ids.size:
            raise StorageError(f"{self.path}: collection {cid} has vectors and access lists that do not match")
        return vectors

    def _resident_payloads(self, cid: int, ids: np.ndarray, resident: np.ndarray) -> tuple[np.ndarray, list]:
        """Ids and decoded payloads of the resident vectors that have one (others' are not decoded)."""
        id_parts, payloads = [_NO_IDS], []
        for chunk_ids, rows in self._scan_chunks(_PAYLOAD, cid):
            keep = _member(chunk_ids, ids, resident)
            id_parts.append(chunk_ids[keep])
            payloads.extend(json.loads(row) for row, k in zip(rows, keep.tolist()) if k)
        return np.concatenate(id_parts), payloads

    def shelf(self, cid: int, dim: int) -> "CollectionShelf":
        return CollectionShelf(self, cid, dim)

    def fetch(self, cid: int, ids: np.ndarray, dim: int) -> Shelved:
        """Evicted vectors read back (states.py): rows, access lists (owner first) and payloads of
        these ids, three multi-gets."""
        if ids.size == 0:
            return Shelved.empty(dim)
        rows = self._db.get(_keys(_VECTOR, cid, ids))
        lists = self._db.get(_keys(_ACCESS, cid, ids))
        if any(row is None for row in rows) or any(row is None for row in lists):
            raise StorageError(f"{self.path}: collection {cid} is missing records of evicted vectors")
        counts = np.fromiter((len(r) // 4 for r in lists), np.int64, len(lists))
        tenants = np.frombuffer(b"".join(lists), "<i4").astype(np.int32)
        owners = tenants[np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)]
        stored = self._db.get(_keys(_PAYLOAD, cid, ids))
        payload_rows = [i for i, row in enumerate(stored) if row is not None]
        return Shelved(np.asarray(ids, np.int64), np.frombuffer(b"".join(rows), "<f4").reshape(-1, dim).copy(),
                       tenants, counts, owners, np.array(payload_rows, np.int64),
                       [json.loads(stored[i]) for i in payload_rows])

    def manifest(self, cid: int, t: int) -> Manifest:
        raw = self._db.get(_inactive_key(cid, t))
        return Manifest.empty() if raw is None else Manifest.decode(raw)

    def evicted_payload_bytes(self, cid: int, n_tenants: int, ids: np.ndarray) -> np.ndarray:
        """Per tenant, the stored payload bytes of these evicted vectors it sees."""
        tally = np.zeros(n_tenants, np.int64)
        ids = np.sort(ids)
        for chunk_ids, rows in self._scan_chunks(_PAYLOAD, cid):
            keep = _member(chunk_ids, ids, np.ones(ids.size, bool))
            if keep.any():
                sizes = np.fromiter((len(r) for r in rows), np.int64, len(rows))[keep]
                lists = self._db.get(_keys(_ACCESS, cid, chunk_ids[keep]))
                counts = np.fromiter((len(r) // 4 for r in lists), np.int64, len(lists))
                np.add.at(tally, np.frombuffer(b"".join(lists), "<i4"), np.repeat(sizes, counts))
        return tally

    def record(self, cid: int, change, index) -> "_Ticket | None":
        """Persist what one write did (an index `Change`) as one atomic batch. An offload writes
        its archive file first; a restore removes it once the batch is durable."""
        if change.offloaded or change.restored:
            with self._archives_lock:
                return self._record(cid, change, index)
        return self._record(cid, change, index)

    def _record(self, cid: int, change, index) -> "_Ticket | None":
        for t, (shelved, _) in change.offloaded.items():
            self._write_archive(cid, t, shelved, index)
        batch = WriteBatch(raw_mode=True)
        if change.written.size:
            slots = index.ids.lookup(change.written)
            _put_all(batch, _keys(_VECTOR, cid, change.written), _rows(index.vectors[slots]))
        changed = np.concatenate([change.written, change.regranted])
        if changed.size:
            slots = index.ids.lookup(changed)
            tenants, origin = index.tenancy.access.gather(slots)
            bounds = np.searchsorted(origin, np.arange(slots.size + 1))
            tenants = _owner_first(tenants.astype(np.int32), bounds[:-1], origin, index.owner[slots])
            raw = tenants.tobytes()
            values = [raw[4 * a : 4 * b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
            _put_all(batch, _keys(_ACCESS, cid, changed), values)
        if change.payloads.size:
            stored = index.get_payloads(change.payloads)
            for key, payload in zip(_keys(_PAYLOAD, cid, change.payloads), stored):
                if payload:
                    batch.put(key, json.dumps(payload, separators=(",", ":")).encode())
                else:
                    batch.delete(key)
        deleted = change.deleted
        for key in _keys(_VECTOR, cid, deleted) + _keys(_ACCESS, cid, deleted) + _keys(_PAYLOAD, cid, deleted):
            batch.delete(key)
        for t in change.tenants_added:
            batch.put(_tenant_key(cid, t), index.tenant_names[t].encode())
            batch.put(_prefix(_BIRTH, cid) + t.to_bytes(4, "big"), index.births[t].to_bytes(8, "big"))
        for t in change.tenants_dropped:
            batch.delete(_tenant_key(cid, t))
            batch.delete(_prefix(_BIRTH, cid) + t.to_bytes(4, "big"))
        for t, manifest in change.slept.items():
            batch.put(_inactive_key(cid, t), manifest.encode())
        for t in change.woken + change.tenants_dropped:
            batch.delete(_inactive_key(cid, t))
        for t, (shelved, leaves) in change.offloaded.items():
            for key in (_keys(_VECTOR, cid, shelved.ids) + _keys(_ACCESS, cid, shelved.ids)
                        + _keys(_PAYLOAD, cid, shelved.ids)):
                batch.delete(key)
            number = t.to_bytes(4, "big")
            for key in _keys(_ARCHIVED, cid, shelved.ids):
                batch.put(key, number)
            batch.put(_prefix(_OFFLOADED, cid) + number, json.dumps(
                {"vectors": int(shelved.ids.size), "payload_bytes": index.archived_payload_bytes.get(t, 0)}).encode())
            batch.put(_prefix(_LEAVES, cid) + number, leaves.encode())
        for t, ids in change.restored.items():
            for key in _keys(_ARCHIVED, cid, ids):
                batch.delete(key)
            batch.delete(_prefix(_OFFLOADED, cid) + t.to_bytes(4, "big"))
            batch.delete(_prefix(_LEAVES, cid) + t.to_bytes(4, "big"))
        if change.retrained:
            tree = index.tree
            batch.put(_prefix(_TREE, cid), _encode_arrays(
                centroids=tree.centroids, parent=tree.parent, distortion=np.float64(tree.distortion),
                trained_count=np.int64(index.trained_count)))
        ticket = self.commit(batch)
        if change.restored:
            self._wait(ticket)  # the records are back for good before their archive goes
            for t in change.restored:
                self.archive_path(cid, t).unlink(missing_ok=True)
        return ticket

    # -- records of other parts (the semantic cache keeps its entries and settings here) --------

    def write_records(self, puts: list[tuple[bytes, bytes]], deletes: list[bytes] = ()) -> None:
        """Put and delete raw records in one atomic batch; returns once durable (per the mode)."""
        batch = WriteBatch(raw_mode=True)
        for key, value in puts:
            batch.put(key, value)
        for key in deletes:
            batch.delete(key)
        self._wait(self.commit(batch))

    def read_record(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def scan_records(self, prefix: bytes):
        """(key, value) of every record whose key starts with prefix, in key order."""
        return self._scan(prefix)

    @staticmethod
    def _wait(ticket) -> None:
        if ticket is not None:
            ticket.wait()

    def _scan(self, prefix: bytes):
        for key, value in self._db.items(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield key, value

    def _scan_chunks(self, kind: bytes, cid: int):
        """(ids, values) of one collection's records of a kind, in key order, _CHUNK at a time."""
        keys, values = [], []
        for key, value in self._scan(_prefix(kind, cid)):
            keys.append(key[5:])
            values.append(value)
            if len(keys) == _CHUNK:
                yield np.frombuffer(b"".join(keys), ">u8").astype(np.int64), values
                keys, values = [], []
        if keys:
            yield np.frombuffer(b"".join(keys), ">u8").astype(np.int64), values


class CollectionShelf:
    """Where one collection's evicted vectors wait with a data directory: their records, where
    they already are (states.py). Reads come from here; what the index hands over when it evicts
    or wakes is already stored, or stored by the write's record (`Change.slept`, `woken`)."""

    keeps_records = False

    def __init__(self, directory: DataDirectory, cid: int, dim: int):
        self._directory, self._cid, self._dim = directory, cid, dim

    def fetch(self, ids: np.ndarray) -> Shelved:
        return self._directory.fetch(self._cid, ids, self._dim)

    def manifest(self, t: int) -> Manifest:
        return self._directory.manifest(self._cid, t)

    def payload_bytes(self, n_tenants: int, ids: np.ndarray) -> np.ndarray:
        return self._directory.evicted_payload_bytes(self._cid, n_tenants, ids)

    def archived(self, t: int) -> tuple[Shelved, Manifest]:
        return self._directory.archived(self._cid, t, self._dim)

    def holders(self, ids: np.ndarray) -> np.ndarray:
        return self._directory.holders(self._cid, ids)

    def archive(self, t: int, shelved: Shelved, leaves: Manifest) -> None: ...  # the write's record writes the file

    def unarchive(self, t: int) -> None: ...  # the write's record removes the file

    def keep(self, shelved: Shelved) -> None: ...

    def forget(self, ids: np.ndarray) -> None: ...

    def put_manifest(self, t: int, manifest: Manifest) -> None: ...

    def drop_manifest(self, t: int) -> None: ...


def check_directory(path: Path) -> dict:
    """Validate an existing data directory without writing to it; returns its format record."""
    if not (path / "CURRENT").exists():
        raise StorageError(f"{path} is not a Curator data directory (it is not empty and holds no RocksDB); "
                           "it was left untouched")
    try:
        db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
    except Exception as error:
        raise _storage_error(error, path) from None
    try:
        raw = db.get(_FORMAT_KEY)
    finally:
        db.close()
    if raw is None:
        raise StorageError(f"{path} is a RocksDB directory but not Curator's (no format record); left untouched")
    record = json.loads(raw)
    if record.get("format", 0) > FORMAT:
        raise StorageError(f"{path} has storage format {record['format']}, newer than this Curator reads "
                           f"({FORMAT}); upgrade Curator. The directory was left untouched")
    return record


def restore(snapshot, target) -> None:
    """Make `target` a copy of a snapshot directory (which is checked first)."""
    snapshot, target = Path(snapshot), Path(target)
    check_directory(snapshot)
    if target.exists() and any(target.iterdir()):
        raise InvalidArgumentError(f"restore target {target} is not empty; restore into a new directory")
    private_directory(target)
    shutil.copytree(snapshot, target, dirs_exist_ok=True)
    target.chmod(0o700)
    _copy_archives(_archives_of(snapshot), _archives_of(target))


def _archives_of(path: Path) -> Path:
    """Where a data directory's offloaded tenants' archives are: beside it, `<path>-offloaded`."""
    path = Path(path).resolve()
    return path.with_name(path.name + "-offloaded")


def _copy_archives(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
        target.chmod(0o700)


def private_directory(path: Path) -> None:
    """Create `path` (and its parents) if missing; the directory itself readable by its owner
    only (0700), whatever the umask: it holds every tenant's vectors and payloads."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def _owner_first(tenants: np.ndarray, first: np.ndarray, origin: np.ndarray, owners: np.ndarray) -> np.ndarray:
    """Access lists (tenants grouped by `origin`, group g starting at first[g]) with each one's
    owner moved to its front: the A record's first number is the vector's owner."""
    at_owner = np.flatnonzero(tenants == owners[origin])  # the owner sees its vector: one per group
    at_owner = at_owner[np.searchsorted(origin[at_owner], np.arange(first.size))]
    tenants[at_owner] = tenants[first]
    tenants[first] = owners
    return tenants


class _GroupCommit:
    """Group commit: one background fsync of the write-ahead log covers every write before it."""

    def __init__(self, db: Rdict, delay: float):
        self._db, self._delay = db, delay
        self._cond = threading.Condition()
        self._written = self._synced = 0
        self._closing = False
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="curator-group-commit", daemon=True)
        self._thread.start()

    def ticket(self) -> "_Ticket":
        with self._cond:
            self._written += 1
            self._cond.notify_all()
            return _Ticket(self, self._written)

    def wait(self, number: int) -> None:
        with self._cond:
            while self._synced < number and self._error is None:
                self._cond.wait()
            if self._synced < number:
                raise StorageError(f"group commit fsync failed: {self._error}")

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._written == self._synced and not self._closing:
                    self._cond.wait()
                if self._written == self._synced:
                    return
            if self._delay:
                time.sleep(self._delay)  # let more writers join this fsync
            with self._cond:
                target = self._written
            try:
                self._db.flush_wal(True)
            except Exception as error:  # noqa: BLE001 - handed to every waiting writer
                with self._cond:
                    self._error = error
                    self._cond.notify_all()
                return
            with self._cond:
                self._synced = target
                self._cond.notify_all()


class _Ticket:
    __slots__ = ("_group", "_number")

    def __init__(self, group: _GroupCommit, number: int):
        self._group, self._number = group, number

    def wait(self) -> None:
        self._group.wait(self._number)


def _storage_error(error: Exception, path: Path) -> StorageError:
    text = str(error)
    if "lock" in text.lower():
        return StorageError(f"{path} is already open, in this or another process (one process per data "
                            f"directory): {text}")
    return StorageError(f"{path} cannot be opened, it looks damaged; it was left untouched: {text}")


def _table_options() -> BlockBasedOptions:
    """Bloom filters (10 bits a key, ~1.2 bytes) on the tables RocksDB writes from now on: a point
    read of an absent key (a vector without a payload, when a tenant wakes) then skips the tables
    that cannot hold it. Without them such a read lands on the data block after the key, which
    for keys between `I` and `R` is the tree's one large block, read again each time (measured:
    the P lookups of a 100-vector wake took 4.0 ms p50, 100 000 384-d vectors)."""
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)
    return table


def _prefix(kind: bytes, cid: int) -> bytes:
    return kind + cid.to_bytes(4, "big")


def _tenant_key(cid: int, t: int) -> bytes:
    return _prefix(_TENANT, cid) + t.to_bytes(4, "big")


def _inactive_key(cid: int, t: int) -> bytes:
    return _prefix(_INACTIVE, cid) + t.to_bytes(4, "big")


def _member(values: np.ndarray, sorted_ids: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """For each value, whether it is in `sorted_ids` with its flag set."""
    if sorted_ids.size == 0:
        return np.zeros(values.size, bool)
    at = np.minimum(np.searchsorted(sorted_ids, values), sorted_ids.size - 1)
    return (sorted_ids[at] == values) & flags[at]


def _keys(kind: bytes, cid: int, ids: np.ndarray) -> list[bytes]:
    """Record keys kind + collection + id (big-endian, so keys sort by id), built in one pass."""
    n = ids.size
    table = np.empty((n, 13), np.uint8)
    table[:, :5] = np.frombuffer(_prefix(kind, cid), np.uint8)
    table[:, 5:] = ids.astype(">u8").view(np.uint8).reshape(n, 8)
    raw = table.tobytes()
    return [raw[i : i + 13] for i in range(0, 13 * n, 13)]


def _rows(matrix: np.ndarray) -> list[bytes]:
    raw = np.ascontiguousarray(matrix).tobytes()
    width = matrix.shape[1] * matrix.itemsize
    return [raw[i : i + width] for i in range(0, len(raw), width)]


def _put_all(batch: WriteBatch, keys: list[bytes], values: list[bytes]) -> None:
    for key, value in zip(keys, values):  # rocksdict has no bulk put: one call per record
        batch.put(key, value)


def _encode_arrays(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _decode_arrays(raw: bytes) -> dict:
    with np.load(io.BytesIO(raw)) as data:
        return {name: data[name] for name in data.files}
