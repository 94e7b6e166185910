"""Where the semantic cache keeps what is not in memory: entry bodies and its settings.

An entry record (`S` + entry id, u64 big-endian) holds the prompt and answer (read only on a
hit), the keys of its partition, its creation time, and its embedding (read only when a data
directory is opened, to rebuild the partitions). Settings (`Y` + name) hold the policies and the
category classifier as JSON. See curator/STORAGE.md. In memory, the same records live in a dict.
"""

import json
import struct
import threading

import numpy as np

ENTRY, SETTING = b"S", b"Y"


def entry_key(entry_id: int) -> bytes:
    return ENTRY + int(entry_id).to_bytes(8, "big")


def encode_entry(meta: dict, embedding: np.ndarray) -> bytes:
    header = json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode()
    return struct.pack("<I", len(header)) + header + np.ascontiguousarray(embedding, "<f4").tobytes()


def decode_entry(value: bytes, with_embedding: bool = False) -> tuple[dict, np.ndarray | None]:
    (length,) = struct.unpack_from("<I", value)
    meta = json.loads(value[4 : 4 + length])
    embedding = np.frombuffer(value, "<f4", offset=4 + length) if with_embedding else None
    return meta, embedding


class MemoryRecords:
    """The record interface of `DataDirectory` (write_records, read_record, scan_records) in a dict."""

    def __init__(self):
        self._records: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def write_records(self, puts, deletes=()) -> None:
        with self._lock:
            self._records.update(puts)
            for key in deletes:
                self._records.pop(key, None)

    def read_record(self, key: bytes) -> bytes | None:
        return self._records.get(key)

    def scan_records(self, prefix: bytes):
        with self._lock:
            items = sorted((k, v) for k, v in self._records.items() if k.startswith(prefix))
        return iter(items)
