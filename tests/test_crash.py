"""Crash harness: a child writes batches, the parent kills it with SIGKILL at random moments,
reopens the data directory and checks that every acknowledged write is there, bit-exact, that
nothing that was never issued appears, and that the index agrees with what is stored.

`make test` runs CRASH_CYCLES (default 20) kill cycles; `make crash CYCLES=500` runs a soak."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.crash_workload import TENANTS, Model, Workload, open_collection, vectors_of

ROOT = Path(__file__).resolve().parent.parent
CYCLES = int(os.environ.get("CRASH_CYCLES", "20"))


def _log(path: Path) -> list[str]:
    return path.read_text().split("\n") if path.exists() else []


def _spawn(data: Path, seed: int, log: Path, durability: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.crash_workload", str(data), str(seed), str(log), durability],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def verify(col, model: Model) -> None:
    """The stored collection equals the model: ids, vectors, grants, counts and search."""
    index = col.index
    slot_ids = index.slot_ids[: index.n_slots]
    stored = sorted(slot_ids[slot_ids >= 0].tolist())
    assert stored == sorted(model.access), "the stored ids differ from the acknowledged writes"
    if not stored:
        return
    ids = np.array(stored, np.int64)
    np.testing.assert_array_equal(col.get(ids), vectors_of(ids))  # bit-exact
    for i in stored:
        assert set(col.tenants_of(i)) == model.access[i]
    for tenant in set(col.tenants()) | {t for who in model.access.values() for t in who}:
        mine = np.array(sorted(i for i, who in model.access.items() if tenant in who), np.int64)
        assert col.count(tenant=tenant) == mine.size
        index.tenancy.check(index.tenant_numbers[tenant])
        if mine.size:
            query = vectors_of(np.array([mine[0] + 0.5]))[0]
            got_ids, got = col.search(query, k=5, tenant=tenant, ef=1_000_000)
            truth = np.sort(((vectors_of(mine) - query) ** 2).sum(axis=1))[:5]
            np.testing.assert_allclose(got, truth, rtol=1e-4, atol=1e-3)
            assert set(got_ids.tolist()) <= set(mine.tolist())


def crash_cycles(tmp_path: Path, cycles: int, durability: str) -> dict:
    data, rng = tmp_path / "data", random.Random(1234)
    model = Model()
    stats = {"cycles": 0, "acked": 0, "in_flight_applied": 0, "in_flight_lost": 0}
    for cycle in range(cycles):
        log = tmp_path / f"log{cycle}"
        child = _spawn(data, cycle + 1, log, durability)
        deadline = time.time() + 60
        while "ready" not in _log(log):
            assert child.poll() is None, f"the writer died before it started: {child.stderr.read().decode()}"
            assert time.time() < deadline, "the writer did not start"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.05, 0.8))
        assert child.poll() is None, f"the writer failed on its own: {child.stderr.read().decode()[-2000:]}"
        child.send_signal(signal.SIGKILL)
        child.wait()
        lines = _log(log)
        acked = sum(line.startswith("ack ") for line in lines)
        begun = sum(line.startswith("begin ") for line in lines)
        workload = Workload(model, cycle + 1)
        for _ in range(acked):
            workload.next()
        expected = workload.model.copy()
        with_in_flight = None
        if begun > acked:  # one batch was issued and not acknowledged: all or nothing
            workload.next()
            with_in_flight = workload.model
        db, col = open_collection(str(data))
        try:
            slot_ids = col.index.slot_ids[: col.index.n_slots]
            stored = set(slot_ids[slot_ids >= 0].tolist())
            actual = Model.read(col) if with_in_flight is not None else expected
            if with_in_flight is not None and actual == with_in_flight:
                expected = with_in_flight
                stats["in_flight_applied"] += 1
            elif with_in_flight is not None:
                stats["in_flight_lost"] += 1
            assert stored == set(expected.access), (
                f"cycle {cycle}: {len(set(expected.access) - stored)} acknowledged ids missing, "
                f"{len(stored - set(expected.access))} never-issued ids present")
            verify(col, expected)
            assert set(col.tenants()) == expected.tenants, "the stored tenants differ from the acknowledged writes"
        finally:
            db.close()
        model = expected
        stats["cycles"] += 1
        stats["acked"] += acked
    return stats


def test_kill_9_loses_no_acknowledged_write(tmp_path):
    stats = crash_cycles(tmp_path, CYCLES, "sync")
    print(f"crash harness (sync): {stats}")
    assert stats["cycles"] == CYCLES and stats["acked"] > CYCLES


@pytest.mark.parametrize("durability", ["batch", "none"])
def test_kill_9_other_durability_modes(tmp_path, durability):
    """A killed process loses nothing acknowledged in these modes either (only power loss could)."""
    stats = crash_cycles(tmp_path, 3, durability)
    assert stats["cycles"] == 3


def test_tenant_list_is_what_the_model_says(tmp_path):
    """The harness itself: a clean run (no kill) leaves exactly the model's state."""
    db, col = open_collection(str(tmp_path / "d"))
    workload = Workload(Model(), 7)
    from tests.crash_workload import run
    for _ in range(200):
        run(col, workload.next())
    db.close()
    db, col = open_collection(str(tmp_path / "d"))
    verify(col, workload.model)
    assert set(col.tenants()) <= set(TENANTS)
    db.close()
