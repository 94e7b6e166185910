"""The searching threads' hand-off of the GIL (curator/handoff.py): a search coming out of its
compiled call waits for another thread that holds the GIL in its Python part, until that thread
enters its next call or has held the GIL for PATIENCE times its usual Python part; for one still
waking to take the GIL until it has it; after a wait for a waking thread that ran out it leaves
waking threads be for a while; and whatever the table says, results are those of a search alone."""

import threading

import numpy as np

import curator
from curator import handoff as H

MINUTE_US = 60e6  # a limit no test reaches: those waits end when the other slot enters its call


def a_table(limit_us: float, spinners: int = 1, used: int = 2, wake_us: float = H.WAKE_US) -> np.ndarray:
    table = H.table(limit_us, spinners, wake_us)
    table[H.SLOTS, H.USED] = used
    return table


def us(table, microseconds: float) -> int:
    return int(microseconds * table[H.SLOTS, H.RATE] / 1000)


def just_back(table, slot: int, usual_us: float = 10e6) -> None:
    """Slot `slot` came out of a compiled call and took the GIL a moment ago; its usual Python part
    is `usual_us` (10 s by default: a test's waits for it end when it enters its next call)."""
    now = H._read_cycles()
    table[slot, H.ENTERED], table[slot, H.LEFT] = now - 2, now - 1
    H.back(table, slot)
    table[slot, H.PYTHON] = us(table, usual_us)


def waking(table, slot: int) -> None:
    """Slot `slot` came out of its call long ago and has not taken the GIL since (asleep in take_gil)."""
    now = H._read_cycles()
    table[slot, H.ENTERED], table[slot, H.LEFT], table[slot, H.HELD] = now - 10**9, now - 10**9 + 1, 0


def waiting(table, slot: int) -> tuple[threading.Thread, list]:
    """Slot `slot` comes out of a compiled call in a thread of its own; returns once it spins."""
    waited = []
    thread = threading.Thread(target=lambda: waited.append(H.leave(table, slot)))
    H.enter(table, slot)
    thread.start()
    while not table[slot, H.SPINNING] and thread.is_alive():
        pass
    return thread, waited


def test_alone_a_search_never_waits():
    table = a_table(MINUTE_US)
    for _ in range(3):
        H.enter(table, 0)
        assert H.leave(table, 0) == 0
        H.back(table, 0)
    assert H.counts(table)["waits"] == 0


def test_a_thread_holding_the_gil_is_waited_for_until_it_enters_its_next_call():
    table = a_table(MINUTE_US)
    just_back(table, 1)
    thread, waited = waiting(table, 0)
    assert thread.is_alive() and table[0, H.SPINNING] == 1
    H.enter(table, 1)  # slot 1 enters its next compiled call: it has let go of the GIL
    thread.join()
    assert waited[0] > 0 and table[0, H.SPINNING] == 0
    assert H.counts(table)["waits"] == 1 and H.counts(table)["caught"] == 1
    assert table[0, H.SKIP] == 0 and table[0, H.MISSES] == 0


def test_a_holder_is_waited_for_patience_times_its_usual_python_part_and_no_backoff_follows():
    table = a_table(MINUTE_US)
    just_back(table, 1, usual_us=20_000)  # 20 ms usually: waited for 60 ms from when it took the GIL
    H.enter(table, 0)
    waited = H.leave(table, 0)
    assert us(table, 30_000) < waited < us(table, 1e6)
    assert H.counts(table) | {"mean_wait_us": 0} == {"waits": 1, "caught": 0, "mean_wait_us": 0}
    assert table[0, H.SKIP] == 0  # the next search waits again if a thread holds the GIL as briefly
    just_back(table, 1, usual_us=20_000)
    H.enter(table, 0)
    assert H.leave(table, 0) > 0 and H.counts(table)["waits"] == 2


def test_a_holder_whose_usual_python_part_is_over_the_limit_or_not_known_is_not_waited_for():
    for usual_us in (50.0, 0.0):
        table = a_table(45.0)
        just_back(table, 1, usual_us=usual_us)
        H.enter(table, 0)
        assert H.leave(table, 0) == 0 and H.counts(table)["waits"] == 0


def test_a_holder_past_its_patience_is_not_waited_for():
    table = a_table(MINUTE_US)
    just_back(table, 1, usual_us=1.0)
    threading.Event().wait(0.001)  # 1 ms with the GIL: past 3 x 1 us
    H.enter(table, 0)
    assert H.leave(table, 0) == 0


def test_a_thread_still_waking_to_take_the_gil_is_waited_for_however_long_it_has_been_out():
    table = a_table(MINUTE_US, wake_us=MINUTE_US)
    waking(table, 1)
    table[1, H.PYTHON] = us(table, 1.0)  # once it has the GIL, its Python part (1 us) is waited for
    thread, waited = waiting(table, 0)
    H.back(table, 1)
    thread.join()
    assert waited[0] > 0 and H.counts(table)["caught"] == 0 and table[0, H.SKIP] == 0
    table = a_table(MINUTE_US, wake_us=MINUTE_US)
    waking(table, 1)
    thread, waited = waiting(table, 0)
    H.enter(table, 1)
    thread.join()
    assert H.counts(table)["caught"] == 1


def test_a_wait_for_a_waking_thread_that_runs_out_leaves_waking_threads_be_but_not_holders():
    table = a_table(MINUTE_US, wake_us=1_000)  # it does not take the GIL within 1 ms
    waking(table, 1)
    H.enter(table, 0)
    assert H.leave(table, 0) > 0
    assert table[0, H.SKIP] == H.BACKOFF and H.counts(table)["caught"] == 0
    for skipped in range(H.BACKOFF - 1):
        H.enter(table, 0)
        assert H.leave(table, 0) == 0
    just_back(table, 1)  # now it holds the GIL: waited for even while waking threads are skipped
    thread, waited = waiting(table, 0)
    H.enter(table, 1)
    thread.join()
    assert waited[0] > 0 and H.counts(table)["waits"] == 2 and table[0, H.SKIP] == 0


def test_the_backoff_doubles_while_wake_waits_run_out_and_resets_when_one_succeeds():
    table = a_table(MINUTE_US, wake_us=100)
    for misses in (H.BACKOFF, 2 * H.BACKOFF):
        table[0, H.SKIP] = 0
        waking(table, 1)
        H.enter(table, 0)
        H.leave(table, 0)
        assert table[0, H.MISSES] == misses == table[0, H.SKIP]
    table[0, H.SKIP] = 0
    just_back(table, 1)
    thread, _ = waiting(table, 0)
    H.enter(table, 1)
    thread.join()
    assert table[0, H.MISSES] == 0 and table[0, H.SKIP] == 0


def test_no_wait_with_no_limit_or_when_as_many_threads_spin_as_may():
    for table in (a_table(0), a_table(MINUTE_US, spinners=0)):
        just_back(table, 1)
        H.enter(table, 0)
        assert H.leave(table, 0) == 0
    table = a_table(MINUTE_US, used=3)
    table[2, H.SPINNING] = 1  # slot 2 spins already, and one may
    just_back(table, 1)
    H.enter(table, 0)
    assert H.leave(table, 0) == 0


def test_the_usual_python_part_follows_shorter_parts_at_once_and_longer_ones_slowly():
    table = a_table(MINUTE_US)
    H.back(table, 0)
    threading.Event().wait(0.02)
    H.enter(table, 0)  # the first part is taken as it is
    first = table[0, H.PYTHON]
    assert us(table, 19_000) < first < us(table, 1e6)
    H.back(table, 0)
    H.enter(table, 0)  # a part of ~nothing: a quarter of the way down
    assert first * 0.7 < table[0, H.PYTHON] < first * 0.8
    down = table[0, H.PYTHON]
    H.back(table, 0)
    threading.Event().wait(0.2)
    H.enter(table, 0)  # ~10x longer: a 64th of the way up
    assert down < table[0, H.PYTHON] < down + (us(table, 1e6) - down) / 64


def test_threads_get_slots_of_their_own():
    slots = []
    threads = [threading.Thread(target=lambda: slots.append((H.slot(), H.slot()))) for _ in range(4)]
    for thread in threads:
        thread.start()
        thread.join()
    assert all(a == b for a, b in slots) and len({a for a, _ in slots}) == 4
    assert H.TABLE[H.SLOTS, H.USED] >= max(a for a, _ in slots) + 1


def test_two_threads_searching_get_what_one_search_alone_gets():
    rng = np.random.default_rng(7)
    db = curator.open(":memory:")
    col = db.create_collection("c", dim=16, metric="cosine", train_size=2_000)
    vectors = rng.standard_normal((4_000, 16)).astype(np.float32)
    col.insert(np.arange(4_000), vectors, tenant="a")
    col.grant(np.arange(0, 4_000, 3), tenant="b")
    col.train()
    queries = rng.standard_normal((200, 16)).astype(np.float32)
    tenants = ["a" if i % 2 else "b" for i in range(200)]
    alone = [col.search(q, k=10, tenant=t) for q, t in zip(queries, tenants)]
    together = [[None] * 200 for _ in range(2)]

    def run(j):
        for _ in range(5):
            for i in range(200):
                together[j][i] = col.search(queries[i], k=10, tenant=tenants[i])

    threads = [threading.Thread(target=run, args=(j,)) for j in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for j in range(2):
        for a, b in zip(alone, together[j]):
            np.testing.assert_array_equal(a.ids, b.ids)
            np.testing.assert_array_equal(a.distances, b.distances)
    db.close()
