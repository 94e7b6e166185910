"""The searching threads' hand-off of the GIL (curator/handoff.py): a search coming out of its
compiled call waits for another thread that has just left its own, until that thread enters its
next one or the limit passes; after a wait that ran to its limit it leaves the next searches be;
and whatever the table says, results are those of a search alone."""

import threading

import numpy as np

import curator
from curator import handoff as H

MINUTE_US = 60e6  # a limit no test reaches: those waits end when the other slot enters its call


def a_table(limit_us: float, spinners: int = 1, used: int = 2, wake_us: float = H.WAKE_US) -> np.ndarray:
    table = H.table(limit_us, spinners, wake_us)
    table[H.SLOTS, H.USED] = used
    return table


def just_left(table, slot: int) -> None:
    """Slot `slot` came out of a compiled call a moment ago (its thread holds the GIL, as it were)."""
    now = H._read_cycles()
    table[slot, H.ENTERED], table[slot, H.LEFT], table[slot, H.HELD] = now - 1, now, 1


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
    assert H.counts(table)["waits"] == 0


def test_a_thread_just_out_of_its_call_is_waited_for_until_it_enters_the_next():
    table = a_table(MINUTE_US)
    just_left(table, 1)
    thread, waited = waiting(table, 0)
    assert thread.is_alive() and table[0, H.SPINNING] == 1
    H.enter(table, 1)  # slot 1 enters its next compiled call: it has let go of the GIL
    thread.join()
    assert waited[0] > 0 and table[0, H.SPINNING] == 0
    assert H.counts(table)["waits"] == 1 and H.counts(table)["caught"] == 1
    assert table[0, H.SKIP] == 0 and table[0, H.MISSES] == 0


def test_a_thread_still_waking_to_take_the_gil_is_waited_for_however_long_it_has_been_out():
    table = a_table(1.0, wake_us=MINUTE_US)  # 1 us: were it holding the GIL, its Python part would be over
    now = H._read_cycles()
    table[1, H.ENTERED], table[1, H.LEFT] = now - 10**9, now - 10**9 + 1  # out for ~0.4 s, not back yet
    thread, waited = waiting(table, 0)
    table[1, H.HELD] = 1  # it has the GIL now: its Python part (1 us) is waited for from here
    thread.join()
    assert waited[0] > 0 and H.counts(table)["caught"] == 0 and table[0, H.SKIP] == H.BACKOFF
    table = a_table(1.0, wake_us=MINUTE_US)
    table[1, H.ENTERED], table[1, H.LEFT] = now - 10**9, now - 10**9 + 1
    thread, waited = waiting(table, 0)
    H.enter(table, 1)
    thread.join()
    assert H.counts(table)["caught"] == 1


def test_a_wait_that_runs_to_its_limit_leaves_the_next_searches_be():
    table = a_table(200_000)  # 0.2 s: slot 1 never comes back
    just_left(table, 1)
    H.enter(table, 0)
    assert H.leave(table, 0) > 0
    assert H.counts(table) | {"mean_wait_us": 0} == {"waits": 1, "caught": 0, "mean_wait_us": 0}
    assert table[0, H.SKIP] == H.BACKOFF
    just_left(table, 1)
    for skipped in range(H.BACKOFF):
        H.enter(table, 0)
        assert H.leave(table, 0) == 0
    assert table[0, H.SKIP] == 0 and H.counts(table)["waits"] == 1


def test_the_backoff_doubles_while_waits_fail_and_resets_when_one_succeeds():
    table = a_table(MINUTE_US)
    table[0, H.MISSES] = H.BACKOFF
    just_left(table, 1)
    thread, _ = waiting(table, 0)
    H.enter(table, 1)
    thread.join()
    assert table[0, H.MISSES] == 0 and table[0, H.SKIP] == 0


def test_no_wait_with_no_limit_or_when_as_many_threads_spin_as_may():
    for table in (a_table(0), a_table(MINUTE_US, spinners=0)):
        just_left(table, 1)
        H.enter(table, 0)
        assert H.leave(table, 0) == 0
    table = a_table(MINUTE_US, used=3)
    table[2, H.SPINNING] = 1  # slot 2 spins already, and one may
    just_left(table, 1)
    H.enter(table, 0)
    assert H.leave(table, 0) == 0


def test_a_thread_long_out_of_its_call_is_not_waited_for():
    table = a_table(1.0)  # 1 us: the Python between the two calls below takes longer
    just_left(table, 1)
    threading.Event().wait(0.001)
    H.enter(table, 0)
    assert H.leave(table, 0) == 0


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
