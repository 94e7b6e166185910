"""How far apart the machine's first two cores are: a cache line's round trip between them.

Two threads of one process searching side by side hand the GIL to each other at every search,
and each search's Python part then finds the objects both threads touch (their reference counts,
the collection's lock) in the other core's cache. On this virtual machine (2 vCPUs of an AMD EPYC)
the host places the two vCPUs sometimes on cores that share an L3 slice and sometimes not, and
moves them every few seconds: a line's round trip between them was 85-125 ns in the first case
and 330-380 ns in the second, and two searching threads made 1.72-1.89x one thread's searches in
the first and 1.18-1.25x in the second (14 three-second windows, curator/handoff.py). So the
embedded windows of benchmarks/capacity.py record it beside each figure.

`round_trip_ns()`: two processes pinned to CPUs 0 and 1 pass a counter back and forth through one
shared cache line, spinning in compiled loops; the mean time of a round trip.
"""

import multiprocessing
import os
import time
from multiprocessing import shared_memory

import numba
import numpy as np

from curator.handoff import load, store


@numba.njit(nogil=True, cache=True)
def _play(line, me, rounds):
    for r in range(rounds):
        turn = 2 * r + me
        while load(line, 0, 0) != turn:
            pass
        store(line, 0, 0, turn + 1)


def _other(name: str, rounds: int) -> None:
    os.sched_setaffinity(0, {1})
    memory = shared_memory.SharedMemory(name=name)
    try:
        line = np.ndarray((1, 8), np.int64, buffer=memory.buf)
        _play(line, 1, 0)  # compiled before it says it is ready
        line[0, 1] = 1
        _play(line, 1, rounds)
    finally:
        memory.close()


def round_trip_ns(rounds: int = 100_000) -> float | None:
    """Nanoseconds a cache line takes to go from CPU 0 to CPU 1 and back (None: fewer than 2 CPUs)."""
    if not hasattr(os, "sched_setaffinity") or not {0, 1} <= os.sched_getaffinity(0):
        return None
    memory = shared_memory.SharedMemory(create=True, size=64)
    mine = os.sched_getaffinity(0)
    try:
        line = np.ndarray((1, 8), np.int64, buffer=memory.buf)
        line[:] = 0
        _play(line, 1, 0)  # compiled before the clock starts
        other = multiprocessing.get_context("spawn").Process(target=_other, args=(memory.name, rounds))
        other.start()  # a fresh process: a fork of a benchmark's (threads, gRPC) is not safe
        os.sched_setaffinity(0, {0})
        while line[0, 1] != 1 and other.is_alive():
            time.sleep(0.001)
        if line[0, 1] != 1:  # it died before it could play
            other.join()
            return None
        started = time.perf_counter()
        _play(line, 0, rounds)
        seconds = time.perf_counter() - started
        other.join()
        return seconds / rounds * 1e9
    finally:
        os.sched_setaffinity(0, mine)
        memory.close()
        memory.unlink()
