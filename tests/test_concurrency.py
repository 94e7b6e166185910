"""Reads and writes of one collection from many threads at once, checked against a model.

Every write is a batch of B vectors that share one point (each batch its own point, far from the
others), so an exact search at a batch's point with k = B shows exactly which of its vectors the
tenant sees. While a writer inserts, grants, revokes, deletes, upserts and retrains (the tree is
also retrained in the background as the collection grows), readers search and check:
- atomic writes: a search sees all of a batch or none of it, never a half-applied write;
- after a write returned, every search that starts later sees it: a granted batch whole, a
  revoked or deleted one not at all.
Readers take their snapshot of what has returned before they search, so the check holds
whatever the interleaving."""

import threading

import numpy as np
import pytest

import curator
from tests.conftest import SMALL_TREE

B = 6  # vectors per write
DIM = 8
EXACT = 1_000_000  # ef: an exact search (>= 16 x the tenant's vectors, search.EXACT_EF)


class Model:
    """What the writer's returned writes promise, per (tenant, batch), with a version that is odd
    while a write to it runs: a reader checks only what did not change while it searched."""

    def __init__(self):
        self.lock = threading.Lock()
        self.visible: dict[tuple[str, int], bool] = {}
        self.version: dict[tuple[str, int], int] = {}

    def snapshot(self) -> tuple[dict, dict]:
        with self.lock:
            return dict(self.visible), dict(self.version)

    def begin(self, tenants, batch: int) -> None:
        with self.lock:
            for tenant in tenants:
                self.version[(tenant, batch)] = self.version.get((tenant, batch), 0) + 1

    def returned(self, tenants, batch: int, visible: bool) -> None:
        with self.lock:
            for tenant in tenants:
                self.visible[(tenant, batch)] = visible
                self.version[(tenant, batch)] += 1


def points(n: int, seed: int) -> np.ndarray:
    """n batch points, far apart (their nearest B neighbours are their own batch)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, DIM)) * 100).astype(np.float32)


def ids_of(batch: int) -> np.ndarray:
    return np.arange(batch * B, (batch + 1) * B, dtype=np.int64)


def write(col, model: Model, centre: np.ndarray, rng: np.random.Generator, n_batches: int) -> None:
    """Random writes over batches 0..n_batches-1, each announced to the model before it starts and
    recorded once it returned."""
    live: dict[int, set[str]] = {}  # batch -> tenants that see it

    def change(tenants, batch, visible, call):
        model.begin(tenants, batch)
        call()
        model.returned(tenants, batch, visible)

    for _ in range(160):
        batch = int(rng.integers(n_batches))
        vectors = np.repeat(centre[batch][None], B, axis=0)
        action = rng.choice(["insert", "grant", "revoke", "delete", "upsert", "train"], p=[.3, .2, .15, .1, .15, .1])
        tenant = str(rng.choice(["a", "b"]))
        if action == "train":
            if live:
                col.train()  # changes no one's view: readers check through it
        elif batch not in live:
            if action in ("insert", "upsert"):
                change([tenant], batch, True, lambda: getattr(col, action)(ids_of(batch), vectors, tenant=tenant))
                live[batch] = {tenant}
        elif action == "grant":
            change([tenant], batch, True, lambda: col.grant(ids_of(batch), tenant=tenant))
            live[batch].add(tenant)
        elif action == "upsert":  # by the batch's owner (only the owner overwrites): its view is unchanged
            owners = {t for t in live[batch] if col.owned(ids_of(batch)[:1], tenant=t)[0]}
            (owner,) = owners
            change([owner], batch, True, lambda: col.upsert(ids_of(batch), vectors, tenant=owner))
        elif action == "revoke":
            tenant = sorted(live[batch])[0]
            change([tenant], batch, False, lambda: col.revoke(ids_of(batch), tenant=tenant))
            live[batch].discard(tenant)
            if not live[batch]:  # its last tenant: the vectors are gone
                del live[batch]
        elif action == "delete":
            change(sorted(live.pop(batch)), batch, False, lambda: col.delete(ids_of(batch)))


def read(col, model: Model, centre: np.ndarray, rng: np.random.Generator, stop: threading.Event, checked: list):
    n_batches = centre.shape[0]
    while not stop.is_set():
        tenant = str(rng.choice(["a", "b"]))
        batches = rng.choice(n_batches, 4, replace=False)
        visible, before = model.snapshot()
        try:
            if rng.random() < 0.5:
                found = [col.search(centre[b], k=B, tenant=tenant, ef=EXACT).ids for b in batches]
            else:
                found = list(col.search_batch(centre[batches], k=B, tenants=tenant, ef=EXACT).ids)
        except curator.NotFoundError:
            continue  # the tenant does not exist yet (nothing granted to it so far)
        _, after = model.snapshot()
        for batch, ids in zip(batches.tolist(), found):
            mine = np.isin(ids, ids_of(batch)).sum()
            assert mine in (0, B), f"a search of {tenant} saw {mine} of batch {batch}'s {B} vectors"
            key = (tenant, batch)
            if before.get(key, 0) % 2 == 0 and before.get(key, 0) == after.get(key, 0):  # settled throughout
                expected = B if visible.get(key, False) else 0
                assert mine == expected, f"{tenant} saw {mine} of batch {batch}, the returned writes say {expected}"
                checked.append(key)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_searches_see_whole_writes_and_every_returned_write(tmp_path, seed):
    n_batches = 40
    centre = points(n_batches, seed)
    with curator.open(str(tmp_path / "data")) as db:
        col = db.create_collection("c", dim=DIM, **SMALL_TREE)
        model, stop, errors, checked = Model(), threading.Event(), [], []

        def reader(i):
            try:
                read(col, model, centre, np.random.default_rng([seed, i]), stop, checked)
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)
                stop.set()

        readers = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
        for thread in readers:
            thread.start()
        try:
            write(col, model, centre, np.random.default_rng(seed), n_batches)
        finally:
            stop.set()
            for thread in readers:
                thread.join()
        assert not errors, errors[0]
        assert len(checked) > 100  # the readers did check settled batches while the writes went on
        col.retraining.wait()
        visible, _ = model.snapshot()  # and at rest, the model holds exactly
        for (tenant, batch), shown in visible.items():
            ids = col.search(centre[batch], k=B, tenant=tenant, ef=EXACT).ids
            assert np.isin(ids, ids_of(batch)).sum() == (B if shown else 0)
