"""Reading back every acknowledged write after a run: the live ids exist with the exact vector
last written to them, deleted ids are gone, and acknowledged grants are visible to their tenant.
Ids whose last write failed are uncertain and only counted."""

from collections import defaultdict

import numpy as np


def _batches(array: np.ndarray, size: int):
    for i in range(0, len(array), size):
        yield array[i : i + size]


def read_back(collection, ledgers: list[dict], vectors: np.ndarray, batch: int = 5000) -> dict:
    live = np.concatenate([l["live_ids"] for l in ledgers] or [np.empty(0, np.int64)])
    rows = np.concatenate([l["live_rows"] for l in ledgers] or [np.empty(0, np.int64)])
    deleted = np.concatenate([l["deleted_ids"] for l in ledgers] or [np.empty(0, np.int64)])
    missing, wrong_vector, resurrected, hidden = [], [], [], []
    for start in range(0, len(live), batch):
        ids, want = live[start : start + batch], rows[start : start + batch]
        present = collection.contains(ids)
        missing.extend(ids[~present].tolist())
        if present.any():
            got = collection.get(ids[present])
            same = (got.view(np.uint32) == vectors[want[present]].view(np.uint32)).all(axis=1)
            wrong_vector.extend(ids[present][~same].tolist())
    for ids in _batches(deleted, batch):
        resurrected.extend(ids[collection.contains(ids)].tolist())
    by_tenant = defaultdict(list)
    grants = 0
    for l in ledgers:
        for id_, tenant in zip(l["grant_ids"].tolist(), l["grant_tenants"]):
            by_tenant[tenant].append(id_)
            grants += 1
    for tenant, ids in by_tenant.items():
        for part in _batches(np.array(ids, np.int64), batch):
            hidden.extend((int(i), tenant) for i in part[~collection.visible_to(part, tenant=tenant)])
    ok = not (missing or wrong_vector or resurrected or hidden)
    return {"ok": ok, "live_checked": int(len(live)), "deleted_checked": int(len(deleted)), "grants_checked": grants,
            "uncertain": int(sum(l["uncertain"] for l in ledgers)), "vectors_match": not wrong_vector,
            "missing": missing[:20], "wrong_vector": wrong_vector[:20], "deleted_but_present": resurrected[:20],
            "grant_not_visible": hidden[:20],
            "failures": len(missing) + len(wrong_vector) + len(resurrected) + len(hidden)}
