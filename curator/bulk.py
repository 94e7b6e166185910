"""Bulk import and export: a collection's vectors to and from Parquet, NumPy and JSON Lines files.

What a file holds, one row per vector (README, "Bulk import and export"):
- `id` int64 (absent on import: the row's position plus `first_id`);
- `vector` float32, `dim` values (bit-exact both ways);
- `tenant`, the owner (absent or null on import: the `tenant` argument);
- `grants`, the other tenants that may see it (a list of names; optional);
- `payload`, a JSON object (optional; absent or null: none).
Formats, by the file's suffix:
- `.parquet`: columns id int64, vector fixed_size_list<float32>[dim] (a plain list of floats is
  read too), tenant string, grants list<string>, payload string holding JSON (a struct column is
  read too). Read in record batches (`ParquetFile.iter_batches`), written one row group a batch.
- `.npy`: memory-mapped. A structured array with fields id <i8, vector <f4 (dim,), tenant,
  grants and payload (unicode; grants and payload as JSON text, "" for none); or, on import
  only, a plain 2-d array of vectors (ids from the row position, owner from `tenant`).
- `.npz` (numpy.savez, no pickles; memory-mapped unless compressed): arrays `ids` (n,) int64,
  `vectors` (n, dim) float32 and optionally `tenants`, `grants`, `payloads` (n,) unicode, grants
  and payloads as JSON text.
- `.jsonl` / `.ndjson`: one object a line {"id", "tenant", "grants", "payload", "vector"}; the
  vector's values are written as the doubles equal to the float32 values, so they read back
  bit-exact.
The NumPy writers hold the export in memory and write the file at the end (a .npy header names
the row count and the widest string first); the others stream. Every writer writes a temporary
file beside the target and renames it into place, so a file under the target's name is complete.

Import (`import_file`) writes through the public `Collection` API, embedded or remote alike, in
batches of `batch` rows (default 8 192, at most 16 MiB of vectors): per batch one insert per
owner, then one grant per granted tenant, the batch's rows checked before its first write. A
progress file (default: the input's path + ".progress") records, after each batch is
acknowledged, how many rows are in (and for JSON Lines the byte offset), with the input's size
and modification time. A rerun continues after the last recorded batch: the batch that was in
flight when the import stopped may be partly written, so it is written again with upsert (same
owner, same vector and payload: idempotent; only a vector's owner may overwrite it, and the file
names it) and grants (idempotent). Rows before it are never written again, rows after it were
never written: no duplicate, no gap. When every row is in, the progress file says so and a
rerun writes nothing. A changed input is refused (remove the progress file to start over).
The next batch is read in a thread while the current one is written.

Export (`export_collection`) reads through the public API too: the owner and grants of every
vector from each tenant's ids (`scroll`, `owned`; held in memory, 16 bytes a grant), then pages
of ids in ascending order with their vectors and payloads. It is not a point-in-time copy: a
write made during the export may or may not be in it (`Database.export_tenant` is, for one
tenant).

This module must never reach into the engine's internals: what it does, a client can do.
"""

import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidArgumentError

BATCH = 8192  # rows a write carries (one insert per owner, one grant per granted tenant)
BATCH_BYTES = 16 << 20  # at most this much of vectors an import's write (a server takes 64 MiB messages)
PROGRESS_FORMAT = "curator-import-progress"
SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".npy": "npy", ".npz": "npz", ".jsonl": "jsonl",
            ".ndjson": "jsonl"}


def file_format(path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidArgumentError(f"{path}: unknown format {suffix!r}; use one of {', '.join(sorted(SUFFIXES))}")
    return SUFFIXES[suffix]


@dataclass
class Rows:
    """A batch of rows read from a file, in file order."""

    ids: np.ndarray              # int64 (n,)
    vectors: np.ndarray          # float32 (n, dim)
    tenants: np.ndarray | None   # object (n,) of owner names (None entries: the default owner)
    grants: list | None          # n lists of tenant names (or None)
    payloads: list | None        # n dicts (or None)
    end: int                     # rows of the file up to the end of this batch
    position: int | None = None  # JSON Lines: byte offset after this batch


@dataclass
class Report:
    """What an import or export did."""

    path: str
    rows: int              # rows written in this run
    total: int             # rows in the file (import) or the collection (export)
    seconds: float
    resumed_at: int = 0    # the row this run started at
    done: bool = True      # every row is in (an import stopped by `limit_batches` is not)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self, verb: str) -> str:
        resumed = f", resumed at row {self.resumed_at}" if self.resumed_at else ""
        stopped = "" if self.done else f", stopped at row {self.resumed_at + self.rows} of {self.total}"
        return (f"{verb} {self.rows} vectors ({self.path}) in {self.seconds:.1f} s, "
                f"{self.rate:,.0f} vectors/s{resumed}{stopped}")


# ---------------------------------------------------------------------------------------------- reading

def count_rows(path) -> int:
    """Rows in a file (JSON Lines: non-blank lines, read once)."""
    kind = file_format(path)
    if kind == "parquet":
        return _pyarrow().parquet.ParquetFile(path).metadata.num_rows
    if kind == "npy":
        return np.load(path, mmap_mode="r").shape[0]
    if kind == "npz":
        vectors = _npz_arrays(path).get("vectors")
        if vectors is None:
            raise InvalidArgumentError(f"{path}: no 'vectors' array")
        return vectors.shape[0]
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def read_rows(path, *, start: int = 0, position: int | None = None, batch: int = BATCH, first_id: int = 0):
    """Batches of rows (`Rows`) from row `start` on (JSON Lines: from byte `position` when given,
    which must be where row `start` begins)."""
    if batch < 1:
        raise InvalidArgumentError(f"batch must be >= 1, got {batch}")
    kind = file_format(path)
    if not os.path.exists(path):
        raise InvalidArgumentError(f"{path}: no such file")
    reader = {"parquet": _read_parquet, "npy": _read_npy, "npz": _read_npz, "jsonl": _read_jsonl}[kind]
    if kind == "jsonl":
        return reader(path, start, position, batch, first_id)
    return reader(path, start, batch, first_id)


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise InvalidArgumentError("Parquet files need pyarrow: pip install 'curator-db[bulk]'") from None
    return pyarrow


def _read_parquet(path, start, batch, first_id):
    pa = _pyarrow()
    parquet = pa.parquet.ParquetFile(path)
    names = set(parquet.schema_arrow.names)
    if "vector" not in names:
        raise InvalidArgumentError(f"{path}: no 'vector' column (columns: {', '.join(sorted(names)) or 'none'})")
    columns = [c for c in ("id", "vector", "tenant", "grants", "payload") if c in names]
    # start at the row group holding row `start`, drop the rows before it from the first batch
    groups, skip, seen = [], 0, 0
    for g in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(g).num_rows
        if seen + rows > start:
            if not groups:
                skip = start - seen
            groups.append(g)
        seen += rows
    if not groups:
        return
    row, buffer, held = start, [], 0
    for record in parquet.iter_batches(batch_size=batch, row_groups=groups, columns=columns):
        if skip:
            take = min(skip, record.num_rows)
            record, skip = record.slice(take), skip - take
            if record.num_rows == 0:
                continue
        if not buffer and record.num_rows == batch:  # the usual case: one record batch, one batch
            yield _parquet_rows(path, pa.Table.from_batches([record]), row, first_id)
            row += batch
            continue
        buffer.append(record)
        held += record.num_rows
        while held >= batch:
            table = pa.Table.from_batches(buffer)
            yield _parquet_rows(path, table.slice(0, batch), row, first_id)
            row += batch
            rest = table.slice(batch)
            buffer, held = rest.to_batches(), rest.num_rows
    if held:
        yield _parquet_rows(path, pa.Table.from_batches(buffer), row, first_id)


def _parquet_rows(path, table, row, first_id) -> Rows:
    pa = _pyarrow()
    n = table.num_rows
    column = table.column("vector").combine_chunks()
    if column.null_count:
        raise InvalidArgumentError(f"{path}: row {row + _first_null(column)}: no vector")
    if pa.types.is_fixed_size_list(column.type):
        dim = column.type.list_size
    elif pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = np.diff(column.offsets.to_numpy())
        dim = int(lengths[0]) if n else 0
        if (lengths != dim).any():
            bad = int(np.flatnonzero(lengths != dim)[0])
            raise InvalidArgumentError(f"{path}: row {row + bad}: a vector of {lengths[bad]} values, "
                                       f"the rows before it have {dim}")
    else:
        raise InvalidArgumentError(f"{path}: column 'vector' is {column.type}, not a list of floats")
    values = column.flatten().to_numpy(zero_copy_only=False)
    vectors = values.astype(np.float32, copy=False).reshape(n, dim)
    names = table.column_names
    if "id" in names:
        ids = table.column("id").combine_chunks()
        if ids.null_count:
            raise InvalidArgumentError(f"{path}: row {row + _first_null(ids)}: no id")
        ids = ids.to_numpy().astype(np.int64, copy=False)
    else:
        ids = np.arange(first_id + row, first_id + row + n, dtype=np.int64)
    tenants = table.column("tenant").to_numpy(zero_copy_only=False) if "tenant" in names else None
    grants = table.column("grants").to_pylist() if "grants" in names else None
    payloads = None
    if "payload" in names:
        payload = table.column("payload")
        if pa.types.is_struct(payload.type):
            payloads = [{k: v for k, v in p.items() if v is not None} if p else {} for p in payload.to_pylist()]
        else:
            payloads = _json_objects(path, row, payload.to_pylist())
    return Rows(ids, vectors, tenants, grants, payloads, row + n)


def _first_null(array) -> int:
    return int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])


def _json_object(path, row, text):
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidArgumentError(f"{path}: row {row}: payload is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{path}: row {row}: payload must be a JSON object, got {type(value).__name__}")
    return value


def _json_objects(path, row, texts: list) -> list[dict]:
    """Payloads from their JSON texts, parsed as one array (one call instead of one a row: half the
    time); when that fails or is not one object a row, row by row to name the bad one."""
    try:
        values = json.loads("[" + ",".join(text or "{}" for text in texts) + "]")
        if len(values) == len(texts) and all(type(v) is dict for v in values):
            return values
    except ValueError:
        pass
    return [_json_object(path, row + i, text) for i, text in enumerate(texts)]


def _json_list(path, row, text):
    if text is None or text == "":
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidArgumentError(f"{path}: row {row}: grants are not JSON ({exc})") from None
    if not isinstance(value, list):
        raise InvalidArgumentError(f"{path}: row {row}: grants must be a list of tenant names")
    return value


def _numpy_rows(path, row, ids, vectors, tenants, grants, payloads, first_id) -> Rows:
    n = vectors.shape[0]
    if vectors.ndim != 2:
        raise InvalidArgumentError(f"{path}: vectors must be a 2-d array (n, dim), got shape {vectors.shape}")
    ids = (np.arange(first_id + row, first_id + row + n, dtype=np.int64) if ids is None
           else np.asarray(ids).astype(np.int64, copy=False))
    tenants = None if tenants is None else np.array([t or None for t in tenants.tolist()], dtype=object)
    grants = None if grants is None else [_json_list(path, row + i, g) for i, g in enumerate(grants.tolist())]
    payloads = None if payloads is None else _json_objects(path, row, payloads.tolist())
    return Rows(ids, np.ascontiguousarray(vectors, dtype=np.float32), tenants, grants, payloads, row + n)


def _read_npy(path, start, batch, first_id):
    array = np.load(path, mmap_mode="r")
    fields = array.dtype.names
    if fields is None and array.ndim != 2:
        raise InvalidArgumentError(f"{path}: a .npy holds a 2-d array of vectors or a structured array of rows, "
                                   f"got shape {array.shape}")
    if fields is not None and "vector" not in fields:
        raise InvalidArgumentError(f"{path}: no 'vector' field (fields: {', '.join(fields)})")
    for lo in range(start, array.shape[0], batch):
        part = array[lo:lo + batch]
        if fields is None:
            yield _numpy_rows(path, lo, None, part, None, None, None, first_id)
        else:
            get = lambda name: part[name] if name in fields else None  # noqa: E731
            yield _numpy_rows(path, lo, get("id"), part["vector"], get("tenant"), get("grants"), get("payload"),
                              first_id)


def _npz_arrays(path) -> dict:
    """The arrays of a .npz by name, each memory-mapped when stored uncompressed (numpy.savez)
    and read whole when compressed (numpy.savez_compressed)."""
    import zipfile

    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[:-4]
                version = None
                if info.compress_type == zipfile.ZIP_STORED:
                    f.seek(info.header_offset)
                    local = f.read(30)  # the local file header: its name and extra field lengths at 26 and 28
                    f.seek(info.header_offset + 30 + int.from_bytes(local[26:28], "little")
                           + int.from_bytes(local[28:30], "little"))
                    version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):  # compressed (or a rare header version): read whole
                    with archive.open(info) as member:
                        arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
                    continue
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(f)
                if dtype.hasobject:
                    raise InvalidArgumentError(f"{path}: '{name}' holds Python objects; store strings as unicode")
                arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                                         order="F" if fortran else "C") if np.prod(shape) else np.empty(shape, dtype)
    except (zipfile.BadZipFile, ValueError) as exc:
        if isinstance(exc, InvalidArgumentError):
            raise
        raise InvalidArgumentError(f"{path}: not a plain .npz ({exc})") from None
    return arrays


def _read_npz(path, start, batch, first_id):
    npz = _npz_arrays(path)
    if "vectors" not in npz:
        raise InvalidArgumentError(f"{path}: no 'vectors' array (arrays: {', '.join(npz) or 'none'})")
    vectors = npz["vectors"]
    n = vectors.shape[0] if vectors.ndim else 0
    optional = {name: npz.get(name) for name in ("ids", "tenants", "grants", "payloads")}
    for name, array in optional.items():
        if array is not None and array.shape[:1] != (n,):
            raise InvalidArgumentError(f"{path}: '{name}' has {array.shape[:1]} rows, 'vectors' {n}")
    for lo in range(start, n, batch):
        hi = lo + batch
        part = {k: None if v is None else v[lo:hi] for k, v in optional.items()}
        yield _numpy_rows(path, lo, part["ids"], vectors[lo:hi], part["tenants"], part["grants"], part["payloads"],
                          first_id)


def _read_jsonl(path, start, position, batch, first_id):
    with open(path, "rb") as f:
        row = 0
        if position is not None:
            f.seek(position)
            row = start
        offset = f.tell()
        records, first = [], row
        for line in f:
            offset += len(line)
            if not line.strip():
                continue
            if row < start:
                row += 1
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise InvalidArgumentError(f"{path}: row {row}: not JSON ({exc})") from None
            if not isinstance(record, dict) or "vector" not in record:
                raise InvalidArgumentError(f"{path}: row {row}: an object with a 'vector' is expected")
            records.append(record)
            row += 1
            if len(records) == batch:
                yield _jsonl_rows(path, records, first, first_id, offset)
                records, first = [], row
        if records:
            yield _jsonl_rows(path, records, first, first_id, offset)


def _jsonl_rows(path, records, row, first_id, offset) -> Rows:
    n = len(records)
    dims = {len(r["vector"]) for r in records}
    if len(dims) > 1:
        dim = len(records[0]["vector"])
        bad = next(i for i, r in enumerate(records) if len(r["vector"]) != dim)
        raise InvalidArgumentError(f"{path}: row {row + bad}: a vector of {len(records[bad]['vector'])} values, "
                                   f"the rows before it have {dim}")
    try:
        vectors = np.array([r["vector"] for r in records], dtype=np.float64).astype(np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{path}: rows {row}..{row + n - 1}: vectors must be lists of numbers ({exc})") \
            from None
    has = lambda key: any(key in r for r in records)  # noqa: E731
    if has("id"):
        missing = [i for i, r in enumerate(records) if r.get("id") is None]
        if missing:
            raise InvalidArgumentError(f"{path}: row {row + missing[0]}: no id")
        ids = np.array([r["id"] for r in records], dtype=np.int64)
    else:
        ids = np.arange(first_id + row, first_id + row + n, dtype=np.int64)
    tenants = np.array([r.get("tenant") for r in records], dtype=object) if has("tenant") else None
    grants = [r.get("grants") for r in records] if has("grants") else None
    payloads = None
    if has("payload"):
        payloads = [r.get("payload") or {} for r in records]
        bad = next((i for i, p in enumerate(payloads) if not isinstance(p, dict)), None)
        if bad is not None:
            raise InvalidArgumentError(f"{path}: row {row + bad}: payload must be a JSON object")
    return Rows(ids, vectors, tenants, grants, payloads, row + n, offset)


def _prefetched(iterator, depth: int = 2):
    """The iterator's items, read ahead in a thread (the next batch is parsed while one is written)."""
    slots: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def run():
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        slots.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(end)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            slots.put(exc)

    thread = threading.Thread(target=run, name="curator-bulk-read", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# ---------------------------------------------------------------------------------------------- import

def progress_path(path) -> Path:
    return Path(str(path) + ".progress")


def _identity(path) -> dict:
    stat = os.stat(path)
    return {"file": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_progress(progress: Path, path, collection: str) -> dict | None:
    if not progress.exists():
        return None
    try:
        record = json.loads(progress.read_text())
    except ValueError:
        raise InvalidArgumentError(f"{progress}: not a progress file; remove it to start over") from None
    if record.get("format") != PROGRESS_FORMAT:
        raise InvalidArgumentError(f"{progress}: not a progress file; remove it to start over")
    identity = _identity(path)
    if any(record.get(k) != identity[k] for k in ("size", "mtime_ns")):
        raise InvalidArgumentError(f"{path} changed since the import recorded in {progress} began; "
                                   f"remove {progress} to import it from the start")
    if record.get("collection") != collection:
        raise InvalidArgumentError(f"{progress} records an import into collection {record.get('collection')!r}, "
                                   f"not {collection!r}; remove it to import from the start")
    return record


def _write_progress(progress: Path, record: dict) -> None:
    temporary = progress.with_name(progress.name + ".tmp")
    with open(temporary, "w") as f:
        f.write(json.dumps(record))
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, progress)


def _groups(names: np.ndarray):
    """(name, row indices) per distinct name, or one (name, None) when every row has the same."""
    first = names[0]
    if (names == first).all():
        return [(first, None)]
    out = {}
    for i, name in enumerate(names.tolist()):
        out.setdefault(name, []).append(i)
    return [(name, np.asarray(rows)) for name, rows in out.items()]


def write_rows(collection, rows: Rows, *, tenant: str | None, upsert: bool) -> None:
    """One batch: an insert (or upsert) per owner, then a grant per granted tenant. The rows are
    checked before the first write, so a bad row leaves its batch unwritten."""
    owners = rows.tenants
    if owners is None or (tenant is not None and any(o is None for o in owners.tolist())):
        owners = np.full(rows.ids.size, tenant, dtype=object) if owners is None else \
            np.array([tenant if o is None else o for o in owners.tolist()], dtype=object)
    if any(o is None for o in owners.tolist()):
        raise InvalidArgumentError("rows without an owner: the file has no 'tenant' for them; give a tenant")
    granted: dict[str, list[int]] = {}
    for id_, names in zip(rows.ids.tolist(), rows.grants or ()):
        if isinstance(names, str) or not isinstance(names, (list, tuple, type(None))):
            raise InvalidArgumentError(f"id {id_}: grants must be a list of tenant names, got {names!r}")
        for name in names or ():
            granted.setdefault(name, []).append(id_)
    write = collection.upsert if upsert else collection.insert
    for owner, picked in _groups(owners):
        if picked is None:
            write(rows.ids, rows.vectors, tenant=owner, payloads=rows.payloads)
        else:
            payloads = None if rows.payloads is None else [rows.payloads[i] for i in picked]
            write(rows.ids[picked], rows.vectors[picked], tenant=owner, payloads=payloads)
    for name, ids in granted.items():
        collection.grant(np.asarray(ids, dtype=np.int64), tenant=name)


def _bar(total: int, initial: int, desc: str, show: bool | None):
    from tqdm import tqdm

    # show None: only on a terminal
    disable = (not sys.stderr.isatty()) if show is None else not show
    return tqdm(total=total, initial=initial, desc=desc, unit="vec", unit_scale=True, disable=disable,
                file=sys.stderr, dynamic_ncols=True)


def import_file(collection, path, *, tenant: str | None = None, batch: int | None = None, progress_file=None,
                resume: bool = True, upsert: bool = False, first_id: int = 0, show_progress: bool | None = None,
                limit_batches: int | None = None, stop: threading.Event | None = None) -> Report:
    """Import a file's rows into `collection` (see the module docstring).

    tenant: the owner of rows whose file names none. batch: rows a write carries (default BATCH,
    fewer past 512 dimensions: BATCH_BYTES of vectors, well under a server's message limit).
    progress_file: where progress is recorded (default: beside the input); resume False starts
    from the first row whatever it says.
    upsert: write every batch with upsert (ids that exist get the file's vector and payload; only
    their owner may do so) instead of insert (ids must be new). limit_batches: stop after that
    many batches, as an interruption would (tests and benchmarks). stop: once set, the import
    stops after the batch it is writing (`curator import` sets it on SIGINT and SIGTERM)."""
    path = str(path)
    file_format(path)
    batch = batch or max(1, min(BATCH, BATCH_BYTES // (4 * collection.dim)))
    if not os.path.exists(path):
        raise InvalidArgumentError(f"{path}: no such file")
    progress = Path(progress_file) if progress_file is not None else progress_path(path)
    record = _read_progress(progress, path, collection.name) if resume else None
    start = record["rows"] if record else 0
    position = record.get("position") if record else None
    total = count_rows(path)
    if record and record.get("done"):
        return Report(path, 0, total, 0.0, resumed_at=start)
    state = {"format": PROGRESS_FORMAT, **_identity(path), "collection": collection.name, "rows": start,
             "position": position, "done": False, "batch": batch}
    began = time.perf_counter()
    replay = record is not None  # the batch after the recorded one may be partly in
    written = batches = 0
    bar = _bar(total, start, f"import {Path(path).name}", show_progress)
    try:
        for rows in _prefetched(read_rows(path, start=start, position=position, batch=batch, first_id=first_id)):
            if rows.vectors.shape[1] != collection.dim:
                raise InvalidArgumentError(
                    f"{path}: rows from {rows.end - rows.ids.size}: vectors of dimension {rows.vectors.shape[1]}, "
                    f"collection {collection.name!r} holds dimension {collection.dim}")
            write_rows(collection, rows, tenant=tenant, upsert=upsert or replay)
            replay = False
            written += rows.ids.size
            batches += 1
            state.update(rows=rows.end, position=rows.position)
            _write_progress(progress, state)
            bar.update(rows.ids.size)
            stopped = stop is not None and stop.is_set()
            if (stopped or limit_batches is not None and batches >= limit_batches) and rows.end < total:
                return Report(path, written, total, time.perf_counter() - began, resumed_at=start, done=False)
        state["done"] = True
        _write_progress(progress, state)
    finally:
        bar.close()
    return Report(path, written, total, time.perf_counter() - began, resumed_at=start)


# ---------------------------------------------------------------------------------------------- export

def tenancy(collection, page: int = BATCH):
    """Every (id, tenant, owned) of the collection, sorted by id: three arrays, tenants as indices
    into the returned list of names."""
    names = sorted(collection.tenants())
    ids_parts, tenant_parts, owned_parts = [], [], []
    for index, name in enumerate(names):
        after = -1
        while True:
            ids, after = collection.scroll(tenant=name, after_id=after, limit=page)
            if ids.size:
                ids_parts.append(np.asarray(ids, dtype=np.int64))
                tenant_parts.append(np.full(ids.size, index, dtype=np.int32))
                owned_parts.append(np.asarray(collection.owned(ids, tenant=name), dtype=bool))
            if after == -1 or ids.size == 0:
                break
    if not ids_parts:
        return np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, bool), names
    ids, tenants, owned = np.concatenate(ids_parts), np.concatenate(tenant_parts), np.concatenate(owned_parts)
    order = np.argsort(ids, kind="stable")
    return ids[order], tenants[order], owned[order], names


def export_collection(collection, path, *, batch: int = BATCH, show_progress: bool | None = None) -> Report:
    """Write every vector of `collection` with its owner, grants and payload to `path` (the
    format by its suffix; see the module docstring)."""
    path = str(path)
    kind = file_format(path)
    began = time.perf_counter()
    grant_ids, grant_tenants, grant_owned, names = tenancy(collection, batch)
    name_array = np.array(names + [None], dtype=object)
    total = collection.count()
    writer = {"parquet": ParquetWriter, "npy": NpyWriter, "npz": NpzWriter, "jsonl": JsonlWriter}[kind](
        path, collection.dim)
    written = 0
    bar = _bar(total, 0, f"export {Path(path).name}", show_progress)
    try:
        after = -1
        while True:
            ids, after = collection.scroll(after_id=after, limit=batch)
            if ids.size == 0:
                break
            ids = np.asarray(ids, dtype=np.int64)
            vectors = np.asarray(collection.get(ids), dtype=np.float32)
            payloads = collection.get_payloads(ids)
            lo = np.searchsorted(grant_ids, ids, "left")
            hi = np.searchsorted(grant_ids, ids, "right")
            # most vectors have one tenant, their owner: read those at once, the shared ones row by row
            owners = name_array[grant_tenants[np.minimum(lo, grant_ids.size - 1)]] if grant_ids.size else \
                np.full(ids.size, None, dtype=object)
            grants = [[] for _ in range(ids.size)]
            for i in np.flatnonzero(hi - lo != 1).tolist():
                owner, others = None, []
                for j in range(lo[i], hi[i]):
                    if grant_owned[j] and owner is None:
                        owner = names[grant_tenants[j]]
                    else:
                        others.append(names[grant_tenants[j]])
                if owner is None and others:  # no owner recorded (it cannot happen): the first tenant
                    owner = others.pop(0)
                owners[i], grants[i] = owner, others
            writer.write(Rows(ids, vectors, owners, grants, payloads, written + ids.size))
            written += ids.size
            bar.update(ids.size)
            if after == -1:
                break
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    return Report(path, written, written, time.perf_counter() - began)


# ---------------------------------------------------------------------------------------------- writers

class _Writer:
    """Writes to a temporary file beside `path`, renamed into place by close()."""

    def __init__(self, path, dim: int):
        self.path, self.dim = Path(path), dim
        self.temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")

    def write(self, rows: Rows) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def close(self) -> None:
        self.finish()
        os.replace(self.temporary, self.path)

    def abort(self) -> None:
        try:
            self.finish()
        except Exception:  # noqa: BLE001 - the first error is the one to report
            pass
        self.temporary.unlink(missing_ok=True)


def _payload_text(payload) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False) if payload else ""


class ParquetWriter(_Writer):
    def __init__(self, path, dim: int):
        super().__init__(path, dim)
        pa = self.pa = _pyarrow()
        self.schema = pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32(), dim)),
                                 ("tenant", pa.string()), ("grants", pa.list_(pa.string())),
                                 ("payload", pa.string())])
        self.writer = pa.parquet.ParquetWriter(self.temporary, self.schema)

    def write(self, rows: Rows) -> None:
        pa = self.pa
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(rows.vectors.reshape(-1), pa.float32()), self.dim)
        table = pa.Table.from_arrays(
            [pa.array(rows.ids, pa.int64()), vectors, pa.array(rows.tenants.tolist(), pa.string()),
             pa.array(rows.grants, pa.list_(pa.string())),
             pa.array([_payload_text(p) or None for p in rows.payloads], pa.string())], schema=self.schema)
        self.writer.write_table(table)

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class JsonlWriter(_Writer):
    def __init__(self, path, dim: int):
        super().__init__(path, dim)
        self.file = open(self.temporary, "w", encoding="utf-8")

    def write(self, rows: Rows) -> None:
        # float64 of a float32 is exact, and json writes a double's shortest round-trip form
        vectors = rows.vectors.astype(np.float64).tolist()
        lines = []
        for id_, owner, grants, payload, vector in zip(rows.ids.tolist(), rows.tenants.tolist(), rows.grants,
                                                       rows.payloads, vectors):
            record = {"id": id_, "tenant": owner}
            if grants:
                record["grants"] = grants
            if payload:
                record["payload"] = payload
            record["vector"] = vector
            lines.append(json.dumps(record, separators=(",", ":"), ensure_ascii=False))
        self.file.write("\n".join(lines) + "\n")

    def finish(self) -> None:
        if not self.file.closed:
            self.file.close()


class _Collecting(_Writer):
    """The NumPy writers: rows held until close (the header needs the row count and string widths)."""

    def __init__(self, path, dim: int):
        super().__init__(path, dim)
        self.ids, self.vectors, self.tenants, self.grants, self.payloads = [], [], [], [], []

    def write(self, rows: Rows) -> None:
        self.ids.append(rows.ids)
        self.vectors.append(rows.vectors)
        self.tenants.extend(rows.tenants.tolist())
        self.grants.extend(json.dumps(g, ensure_ascii=False) if g else "" for g in rows.grants)
        self.payloads.extend(_payload_text(p) for p in rows.payloads)

    def columns(self):
        ids = np.concatenate(self.ids) if self.ids else np.empty(0, np.int64)
        vectors = np.concatenate(self.vectors) if self.vectors else np.empty((0, self.dim), np.float32)
        text = lambda values: np.array(values, dtype=str) if values else np.empty(0, "<U1")  # noqa: E731
        return ids, vectors, text(self.tenants), text(self.grants), text(self.payloads)


class NpzWriter(_Collecting):
    def finish(self) -> None:
        if self.ids is None:
            return
        ids, vectors, tenants, grants, payloads = self.columns()
        with open(self.temporary, "wb") as f:
            np.savez(f, ids=ids, vectors=vectors, tenants=tenants, grants=grants, payloads=payloads)
        self.ids = None


class NpyWriter(_Collecting):
    def finish(self) -> None:
        if self.ids is None:
            return
        ids, vectors, tenants, grants, payloads = self.columns()
        dtype = np.dtype([("id", "<i8"), ("vector", "<f4", (self.dim,)), ("tenant", tenants.dtype),
                          ("grants", grants.dtype), ("payload", payloads.dtype)])
        array = np.empty(ids.size, dtype)
        array["id"], array["vector"], array["tenant"], array["grants"], array["payload"] = (
            ids, vectors, tenants, grants, payloads)
        with open(self.temporary, "wb") as f:
            np.save(f, array)
        self.ids = None


# ---------------------------------------------------------------------------------------------- command

def command(args) -> int:
    """`curator import` / `curator export` (server/cli.py parses the arguments)."""
    import curator

    from .errors import CuratorError, NotFoundError

    verb = args.command
    if bool(args.server) == bool(args.data):
        print(f"curator {verb}: give --data DIR (embedded) or --server HOST:PORT", file=sys.stderr)
        return 2
    try:
        db = (curator.connect(args.server, api_key=args.api_key) if args.server
              else curator.open(args.data, durability=args.durability))
    except CuratorError as error:
        print(f"curator {verb}: {error}", file=sys.stderr)
        return 2
    try:
        if verb == "export":
            report = export_collection(db.collection(args.collection), args.file, batch=args.batch)
            print(report.summary("exported"), file=sys.stderr)
            return 0
        try:
            collection = db.collection(args.collection)
        except NotFoundError:
            if args.metric is None:
                raise NotFoundError(f"no collection {args.collection!r}; give --metric to create it with the "
                                    f"file's dimension") from None
            first = next(iter(read_rows(args.file, batch=1)), None)
            if first is None:
                raise InvalidArgumentError(f"{args.file}: no rows") from None
            collection = db.create_collection(args.collection, dim=first.vectors.shape[1], metric=args.metric)
            print(f"created collection {args.collection!r} (dimension {collection.dim}, {args.metric})",
                  file=sys.stderr)
        stop = threading.Event()
        report = _stoppable(stop, lambda: import_file(
            collection, args.file, tenant=args.tenant, batch=args.batch, progress_file=args.progress_file,
            resume=not args.restart, upsert=args.upsert, first_id=args.first_id, stop=stop))
        if not report.done:
            print(report.summary("imported") + "; run it again to resume", file=sys.stderr)
            return 130
        if report.rows == 0 and report.resumed_at:
            print(f"nothing to import: {args.file} is in already ({report.resumed_at} rows, as "
                  f"{args.progress_file or progress_path(args.file)} records; --restart imports it again)",
                  file=sys.stderr)
        else:
            print(report.summary("imported"), file=sys.stderr)
        return 0
    except (CuratorError, OSError) as error:
        print(f"curator {verb}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"curator {verb}: interrupted" + ("; run it again to resume" if verb == "import" else ""),
              file=sys.stderr)
        return 130
    finally:
        db.close()


def _stoppable(stop: threading.Event, run):
    """run() with SIGINT and SIGTERM setting `stop` (the import ends after the batch it is
    writing, its progress recorded); a second signal interrupts at once."""
    import signal

    def on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping after this batch (again to stop at once)", file=sys.stderr)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_arguments(commands) -> None:
    """The `import` and `export` subcommands, added to the `curator` command's subparsers."""
    for verb in ("import", "export"):
        parser = commands.add_parser(
            verb, help=("load vectors, owners, grants and payloads from a file (resumable)" if verb == "import"
                        else "write a collection's vectors, owners, grants and payloads to a file"),
            description="Formats by suffix: .parquet, .npy, .npz, .jsonl (README, 'Bulk import and export').")
        parser.add_argument("file")
        parser.add_argument("--collection", required=True)
        parser.add_argument("--data", default=None, help="the data directory (embedded)")
        parser.add_argument("--durability", choices=["sync", "batch", "none"], default="sync",
                            help="with --data (see curator.open)")
        parser.add_argument("--server", default=None, help="HOST:PORT of a Curator server")
        parser.add_argument("--api-key", default=None, help="with --server: an admin key, or a tenant's")
        parser.add_argument("--batch", type=int, default=None if verb == "import" else BATCH,
                            help=f"rows per write (default {BATCH}; an import's, fewer past 512 dimensions)")
        if verb == "import":
            parser.add_argument("--tenant", default=None, help="owner of the rows whose file names none")
            parser.add_argument("--metric", default=None,
                                help="create the collection with this metric when it does not exist")
            parser.add_argument("--progress-file", default=None, help="default: FILE.progress")
            parser.add_argument("--restart", action="store_true", help="ignore the progress file, start at row 0")
            parser.add_argument("--upsert", action="store_true",
                                help="overwrite ids that exist (their owner's rows only) instead of refusing them")
            parser.add_argument("--first-id", type=int, default=0, help="id of row 0 when the file has no ids")
