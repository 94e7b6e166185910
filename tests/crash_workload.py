"""The crash harness's workload: a deterministic stream of write batches, and its plain model.

A child process (`python -m tests.crash_workload DIR SEED LOG`) opens a data directory, reads
its state into a `Model`, then runs batches from `Workload(model, seed)` forever, writing
"begin i" before batch i and "ack i" once the call returned. The parent, which kills the child
at a random moment, rebuilds the same batches from the same model and seed, so it knows exactly
which writes were acknowledged and which one may have been in flight.
"""

import sys
from dataclasses import dataclass, field

import numpy as np

DIM = 8
TENANTS = [f"t{i}" for i in range(6)]
OPTIONS = dict(branching=4, leaf_size=16, split_limit=8, train_size=64, kmeans_iterations=5, retrain_interval=0)


def vectors_of(ids: np.ndarray) -> np.ndarray:
    """The vector of each id: a pure function, so that anyone can check what was stored."""
    ids = np.asarray(ids, np.float64)
    return (np.sin(np.outer(ids, np.arange(1, DIM + 1)) * 0.618) * 10).astype(np.float32)


@dataclass
class Model:
    access: dict[int, set[str]] = field(default_factory=dict)  # who may see each live id
    tenants: set[str] = field(default_factory=set)  # tenants that exist (they outlive their grants)

    @classmethod
    def read(cls, col) -> "Model":
        slot_ids = col.index.slot_ids[: col.index.n_slots]
        access = {int(i): set(col.tenants_of(int(i))) for i in slot_ids[slot_ids >= 0].tolist()}
        return cls(access, set(col.tenants()))

    def apply(self, op) -> None:
        kind, ids, tenant = op
        if kind in ("insert", "grant"):
            self.tenants.add(tenant)
        if kind == "insert":
            for i in ids:
                self.access[i] = {tenant}
        elif kind == "grant":
            for i in ids:
                self.access[i].add(tenant)
        elif kind == "revoke":
            for i in ids:
                self.access[i].discard(tenant)
                if not self.access[i]:
                    del self.access[i]
        elif kind == "delete":
            for i in ids:
                del self.access[i]

    def copy(self) -> "Model":
        return Model({i: set(t) for i, t in self.access.items()}, set(self.tenants))


class Workload:
    def __init__(self, model: Model, seed: int):
        self.model = model.copy()
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.n = 0

    def next(self):
        """The next batch (kind, ids, tenant); the model moves on as if it was applied."""
        live = sorted(self.model.access)
        kind = "insert" if len(live) < 50 else self.rng.choice(["insert", "grant", "revoke", "delete"], p=[0.4, 0.3, 0.2, 0.1])
        tenant = str(self.rng.choice(TENANTS if kind != "revoke" else sorted(self.model.tenants)))
        if kind == "insert":
            size = int(self.rng.integers(1, 40))
            ids = [self.seed * 10_000_000 + self.n * 100 + j for j in range(size)]
        else:
            size = int(self.rng.integers(1, 20 if kind != "delete" else 8))
            ids = sorted(int(i) for i in self.rng.choice(live, min(size, len(live)), replace=False))
        self.n += 1
        op = (str(kind), ids, tenant)
        self.model.apply(op)
        return op


def run(col, op) -> None:
    kind, ids, tenant = op
    if kind == "insert":
        col.insert(ids, vectors_of(np.array(ids)), tenant=tenant)
    elif kind == "grant":
        col.grant(ids, tenant=tenant)
    elif kind == "revoke":
        col.revoke(ids, tenant=tenant)
    else:
        col.delete(ids)


def open_collection(path: str, durability: str = "sync"):
    import curator

    db = curator.open(path, durability=durability)
    if "c" not in db.list_collections():
        db.create_collection("c", dim=DIM, metric="l2", **OPTIONS)
    return db, db.collection("c")


def main(path: str, seed: int, log_path: str, durability: str) -> None:
    db, col = open_collection(path, durability)
    workload = Workload(Model.read(col), seed)
    with open(log_path, "a", buffering=1) as log:
        log.write("ready\n")
        while True:
            op = workload.next()
            log.write(f"begin {workload.n - 1}\n")
            run(col, op)
            log.write(f"ack {workload.n - 1}\n")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
