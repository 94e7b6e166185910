"""Heavy calls of one key take turns: at most `per_key` of them run at once, the others wait.

A filter of thousands of values or conditions costs the server milliseconds of Python to decode
and key (and, the first time, to parse), holding the GIL, and a caller may send such calls as fast
as it likes, from as many threads as its share of workers allows. Two such callers kept the GIL
busy enough to push a neighbour's search p99 to 88-243 ms (benchmarks/neighbours.py). With the
heavy calls of one key taking turns, a key's heavy work is one thread's at a time: other threads
get the GIL within the switch interval, and the waiting calls hold a worker (within the key's
share, `admission.py`) but not the GIL.

Keys are known (the keys file), so one semaphore per key name is a bounded table. In open mode
there is one caller, the same admin for all, so there is no one to take turns with (`NO_TURNS`).

Must never: run on grpcio's polling thread (a turn may wait).
"""

import contextlib
import threading

from .auth import Principal

HEAVY_FILTER_BYTES = 4096  # a filter this large on the wire (about a thousand values) is heavy


class Turns:
    def __init__(self, per_key: int = 1):
        self.per_key = per_key
        self._lock = threading.Lock()
        self._turns: dict[str, threading.BoundedSemaphore] = {}

    @contextlib.contextmanager
    def turn(self, who: Principal):
        """Wait for one of the key's turns; hold it while the block runs."""
        with self._lock:
            turns = self._turns.get(who.name)
            if turns is None:
                turns = self._turns[who.name] = threading.BoundedSemaphore(self.per_key)
        with turns:
            yield


class NoTurns:
    """Every call at once (open mode, and a servicer built without a server: tests, tools)."""

    def turn(self, who: Principal):
        return contextlib.nullcontext()


NO_TURNS = NoTurns()
