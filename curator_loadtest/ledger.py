"""What a load client knows was written: the acknowledged writes it must be able to read back.

Each client thread owns its own range of ids, so its ledger is exact without locks: no other
client touches those ids. A write that failed (timeout, error) may or may not have happened, so
its ids become uncertain and are left out of the read-back until a later write is acknowledged.
"""

import numpy as np


class Ledger:
    def __init__(self):
        self.rows: dict[int, int] = {}  # live id -> data set row of the vector last written to it
        self.tenants: dict[int, set[str]] = {}  # live id -> tenants acknowledged to see it
        self.owner: dict[int, str] = {}  # live id -> the tenant that inserted it (the only one that may upsert it)
        self.deleted: set[int] = set()  # acknowledged deletes (not written again since)
        self.uncertain: set[int] = set()

    def upserted(self, ids, rows, tenant: str) -> None:
        for id_, row in zip(ids, rows):
            self.rows[id_] = row
            self.tenants.setdefault(id_, set()).add(tenant)
            self.owner.setdefault(id_, tenant)
            self.deleted.discard(id_)
            self.uncertain.discard(id_)

    def granted(self, ids, tenant: str) -> None:
        for id_ in ids:
            if id_ in self.tenants:
                self.tenants[id_].add(tenant)

    def deleted_ids(self, ids) -> None:
        for id_ in ids:
            self.rows.pop(id_, None)
            self.tenants.pop(id_, None)
            self.owner.pop(id_, None)
            self.uncertain.discard(id_)
            self.deleted.add(id_)

    def failed(self, ids) -> None:
        """A write on these ids failed: its effect is unknown."""
        for id_ in ids:
            self.rows.pop(id_, None)
            self.tenants.pop(id_, None)
            self.owner.pop(id_, None)
            self.deleted.discard(id_)
            self.uncertain.add(id_)

    def writable_by(self, ids: np.ndarray, tenant: str) -> np.ndarray:
        """Those of `ids` an upsert by `tenant` may write: new ones, and live ones it owns (an
        uncertain id may exist, owned by anyone: left alone until a delete settles it)."""
        keep = [self.owner.get(i, tenant) == tenant and i not in self.uncertain for i in ids.tolist()]
        return ids[np.array(keep, bool)]

    def live(self) -> list[int]:
        return list(self.rows)

    def export(self) -> dict:
        """Plain arrays for the read-back (sent to the parent process)."""
        live = np.fromiter(self.rows, np.int64, len(self.rows))
        pairs = [(id_, t) for id_, ts in self.tenants.items() for t in ts]
        return {"live_ids": live, "live_rows": np.fromiter(self.rows.values(), np.int64, len(self.rows)),
                "deleted_ids": np.fromiter(self.deleted, np.int64, len(self.deleted)),
                "grant_ids": np.array([p[0] for p in pairs], np.int64), "grant_tenants": [p[1] for p in pairs],
                "uncertain": len(self.uncertain)}
