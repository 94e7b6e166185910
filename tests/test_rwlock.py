"""The collection lock's turns (curator/rwlock.py): neither a stream of writes nor a stream of reads
can keep the other side out."""

import threading

from curator.rwlock import ReadWriteLock


def test_a_reader_waits_for_at_most_one_write_while_eight_writers_take_turns():
    lock, stop, waited, reads = ReadWriteLock(), threading.Event(), [], [0]

    def writer():
        while not stop.is_set():
            with lock.exclusive():
                threading.Event().wait(0.0005)

    def reader():
        while reads[0] < 300:
            before = lock._writes
            with lock.shared():
                waited.append(lock._writes - before)  # writes that ended while it waited
                reads[0] += 1

    writers = [threading.Thread(target=writer) for _ in range(8)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in writers + readers:
        thread.start()
    for thread in readers:
        thread.join(60)
    stop.set()
    for thread in writers:
        thread.join()
    assert reads[0] >= 300, "readers starved by writers"
    assert max(waited) <= 1  # admitted by the first write that ended after it asked


def test_a_writer_gets_its_turn_among_readers_that_never_stop():
    lock, stop, writes = ReadWriteLock(), threading.Event(), [0]

    def reader():
        while not stop.is_set():
            with lock.shared():
                threading.Event().wait(0.0002)

    def writer():
        while writes[0] < 50:
            with lock.exclusive():
                assert lock._readers == 0
                writes[0] += 1

    readers = [threading.Thread(target=reader) for _ in range(6)]
    for thread in readers:
        thread.start()
    done = threading.Thread(target=writer)
    done.start()
    done.join(60)
    stop.set()
    for thread in readers:
        thread.join()
    assert writes[0] == 50, "a writer starved by readers"


def test_a_reader_that_must_not_wait_is_refused_while_a_write_runs_or_waits():
    lock = ReadWriteLock()
    lock.acquire_exclusive()
    assert not lock.acquire_shared(blocking=False)
    lock.release_exclusive()
    assert lock.acquire_shared(blocking=False)
    lock.release_shared()
